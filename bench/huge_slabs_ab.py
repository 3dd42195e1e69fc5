"""Decode with weight handles on huge-page slabs vs plain heap blocks, in one process.

    python bench/huge_slabs_ab.py [--modes w1a1 q8_0] [--threads 1 2] [--tokens 40]

Builds the llm program's default model (1B-class: 154 matrices, 151 MB of signs and group
scales; ``python -m takane_kernels llm``) twice per mode, as that program decodes it (the
q/k/v and gate/up matrices stacked into one call each: 88 calls per token): one copy's
handles made with TAKANE_HUGE_SLABS=0 (every handle a malloc block of its own, 4 KiB
pages), the other's with the slabs on (csrc/src/alloc.c: every handle in 2 MiB-aligned
MADV_HUGEPAGE memory), and a third, "big2m", as the library was before the slabs: huge
pages only for handles of 2 MiB or more (here the fused gate/up ones; built with the slabs
on for those and off for the rest — before, such a handle had a mapping of its own with its
last partial 2 MiB in 4 KiB pages, here it is all huge pages). Then decodes tokens rotating
between the copies (which goes first rotates too) and prints, per mode and thread count, the
median ms per token of each, the medians of the paired ratios slabs / plain and slabs /
big2m, the huge-page bytes each copy's handles got (AnonHugePages growth while it was
built) and the load average before and after. One JSON line per (mode, threads) with
``--json``.
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


POLICIES = {"plain": lambda nbytes: False, "big2m": lambda nbytes: nbytes >= 2 << 20,
            "slabs": lambda nbytes: True}


def build_copy(mode: str, names, weights, policy: str):
    """The decode plan of one copy, each handle built with TAKANE_HUGE_SLABS set by the
    policy for its size (the handle's bytes: the weights' nbytes, within its panel padding)."""
    try:
        huge0 = anon_huge_bytes()
        ws, _ = llm.prepare_mode(mode, list(zip(names, weights)))
        ws = [_clone(w) for w in ws] if mode != "w1a1" else ws  # w1a1's are new already
        calls = llm.fuse_plan(names, ws)
        for w, _ in calls:
            os.environ["TAKANE_HUGE_SLABS"] = "1" if POLICIES[policy](w.nbytes) else "0"
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
    copies = {p: build_copy(mode, names, weights, p) for p in POLICIES}
    labels = list(copies)
    out = []
    for threads in threads_list:
        runs = {p: token_fn(mode, threads, calls) for p, (calls, _) in copies.items()}
        for f in runs.values():  # warm-up: pages faulted, pool started
            f(), f()
        load0 = os.getloadavg()
        times = {p: [] for p in labels}
        for i in range(tokens):
            for label in labels[i % 3:] + labels[:i % 3]:
                t0 = time.perf_counter()
                runs[label]()
                times[label].append(time.perf_counter() - t0)
        rec = {"mode": mode, "threads": threads, "tokens_each": tokens, "isa": tk.isa.active()}
        for p in labels:
            rec[f"{p}_ms"] = 1e3 * statistics.median(times[p])
            rec[f"huge_bytes_{p}"] = copies[p][1]
        for p in ("plain", "big2m"):
            rec[f"slabs_vs_{p}_paired_median"] = statistics.median(s / b for s, b in zip(times["slabs"], times[p]))
            rec[f"faster_than_{p}_pct"] = 100.0 * (1.0 - rec["slabs_ms"] / rec[f"{p}_ms"])
        rec.update(load_before=load0, load_after=os.getloadavg())
        out.append(rec)
    del copies, runs
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
            print(f"{r['mode']:8s} {r['threads']} thread(s), ms/token: plain {r['plain_ms']:.2f}, big2m "
                  f"{r['big2m_ms']:.2f}, slabs {r['slabs_ms']:.2f}; slabs {r['faster_than_plain_pct']:+.1f}% "
                  f"faster than plain (paired ratio median {r['slabs_vs_plain_paired_median']:.3f}), "
                  f"{r['faster_than_big2m_pct']:+.1f}% than big2m ({r['slabs_vs_big2m_paired_median']:.3f}); "
                  f"huge pages MB: " + "/".join(f"{r[f'huge_bytes_{p}'] / 1e6:.0f}" for p in POLICIES)
                  + f"; load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}; {r['tokens_each']} tokens "
                  f"each, {r['isa']}", flush=True)


if __name__ == "__main__":
    main()
