"""Decode with weight handles on huge-page slabs vs plain heap blocks, in one process.

    python bench/huge_slabs_ab.py [--modes w1a1 q8_0] [--threads 1 2] [--tokens 40]

Builds the llm program's default model (1B-class: 154 matrices, 151 MB of signs and group
scales; ``python -m takane_kernels llm``) twice per mode, as that program decodes it (the
q/k/v and gate/up matrices stacked into one call each: 88 calls per token): one copy's
handles made with TAKANE_HUGE_SLABS=0 (every handle a malloc block of its own, 4 KiB
pages), the other's with the slabs on (csrc/src/alloc.c: every handle in 2 MiB-aligned
MADV_HUGEPAGE memory). Then decodes tokens alternating between the copies (which goes first
alternates too) and prints, per mode and thread count, the median ms per token of each,
the median of the paired ratios slabs / plain, the huge-page bytes each copy's handles got
(AnonHugePages growth while it was built) and the load average before and after. One JSON
line per (mode, threads) with ``--json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time

import numpy as np

import takane_kernels as tk
from takane_kernels.programs import llm


def anon_huge_bytes() -> int:
    """AnonHugePages of this process (/proc/self/smaps_rollup), 0 where unknown."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _clone(w: tk.PackedWeights) -> tk.PackedWeights:
    """A copy with a handle of its own (built later, under the current environment)."""
    return tk.PackedWeights(w.bits, w.k, scale=w.scale, in_scale=w.in_scale, group_scale=w.group_scale,
                            group_size=w.group_size)


def build_copy(mode: str, names, weights, slabs: bool):
    """The decode plan of one copy, every handle built with TAKANE_HUGE_SLABS set for it."""
    os.environ["TAKANE_HUGE_SLABS"] = "1" if slabs else "0"
    try:
        huge0 = anon_huge_bytes()
        ws, _ = llm.prepare_mode(mode, list(zip(names, weights)))
        ws = [_clone(w) for w in ws] if mode != "w1a1" else ws  # w1a1's are new already
        calls = llm.fuse_plan(names, ws)
        for w, _ in calls:
            w._prepacked()
        return calls, anon_huge_bytes() - huge0
    finally:
        os.environ.pop("TAKANE_HUGE_SLABS", None)


def token_fn(mode: str, threads: int, calls):
    fn = llm._layer_fn(mode, threads)
    rng = np.random.default_rng(1)
    xs = {k: rng.standard_normal(k).astype(np.float32) for k in sorted({w.k for w, _ in calls})}
    plan = [(xs[w.k], w) for w, _ in calls]

    def token():
        for x, w in plan:
            fn(x, w)

    return token


def ab(mode: str, threads_list, tokens: int, names, weights) -> list[dict]:
    plain, huge_plain = build_copy(mode, names, weights, slabs=False)
    slab, huge_slab = build_copy(mode, names, weights, slabs=True)
    out = []
    for threads in threads_list:
        runs = {"plain": token_fn(mode, threads, plain), "slabs": token_fn(mode, threads, slab)}
        for f in runs.values():  # warm-up: pages faulted, pool started
            f(), f()
        load0 = os.getloadavg()
        times = {"plain": [], "slabs": []}
        for i in range(tokens):
            order = ("plain", "slabs") if i % 2 == 0 else ("slabs", "plain")
            for label in order:
                t0 = time.perf_counter()
                runs[label]()
                times[label].append(time.perf_counter() - t0)
        ratios = [s / p for s, p in zip(times["slabs"], times["plain"])]
        rec = {"mode": mode, "threads": threads, "tokens_each": tokens,
               "plain_ms": 1e3 * statistics.median(times["plain"]),
               "slabs_ms": 1e3 * statistics.median(times["slabs"]),
               "paired_ratio_median": statistics.median(ratios),
               "huge_bytes_plain": huge_plain, "huge_bytes_slabs": huge_slab,
               "load_before": load0, "load_after": os.getloadavg(), "isa": tk.isa.active()}
        rec["faster_pct"] = 100.0 * (1.0 - rec["slabs_ms"] / rec["plain_ms"])
        out.append(rec)
    del plain, slab
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["w1a1", "q8_0"], choices=llm.MODES)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--tokens", type=int, default=40, help="tokens per copy (default 40)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    named = llm.random_weights(llm.llama_shapes(2048, 5632, 22, 32, 4))
    names, weights = [n for n, _ in named], [w for _, w in named]
    for mode in a.modes:
        for r in ab(mode, a.threads, a.tokens, names, weights):
            if a.json:
                print(json.dumps(r))
                continue
            print(f"{r['mode']:8s} {r['threads']} thread(s): plain {r['plain_ms']:.2f} ms/token, slabs "
                  f"{r['slabs_ms']:.2f} ms/token ({r['faster_pct']:+.1f}% faster; paired ratio median "
                  f"{r['paired_ratio_median']:.3f}); huge pages: plain {r['huge_bytes_plain'] / 1e6:.0f} MB, "
                  f"slabs {r['huge_bytes_slabs'] / 1e6:.0f} MB; load {r['load_before'][0]:.2f} -> "
                  f"{r['load_after'][0]:.2f}; {r['tokens_each']} tokens each, {r['isa']}", flush=True)


if __name__ == "__main__":
    main()
