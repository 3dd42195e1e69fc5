"""Where a decode token's time goes in ``python -m takane_kernels llm`` (issue 21, threads and
small matrices): the token's calls split by matrix kind (attn_q, attn_k, ..., ffn_down), per
mode and thread count, side by side.

    python bench/decode_breakdown.py [--modes w1a1,q8_0,float32] [--threads 1,2] [--rounds 5]
                                     [--tokens 5] [--json]

The model is the ``llm`` program's (hidden 2048, FFN 5632, 22 layers, 32/4 heads: 154
matrices of 64 KB-1.4 MB, random signs, group size 128), every weight streaming from DRAM as
in real decoding. Each (mode, threads) member runs ``--tokens`` tokens per round, rounds
interleaved, so every member sees the same machine; per kind the median over all tokens of
the summed call times counts. Reported per kind and member:

- wall µs per call, and the caller thread's CPU µs per call (``time.thread_time_ns``: time the
  scheduler gave to other processes does not count, so on a loaded machine the 1-thread CPU
  figure is the trustworthy one; for 2 threads it is the caller's share only);
- GB/s of the kind's weight bytes (wall), and the 2-thread speedup of that kind;
- "loop": the token's wall time not spent inside the calls (the Python loop and the timing
  itself), median over tokens;
- "fixed": the per-call cost of a call on an 8 x 128 matrix (warm, 1 thread): what every one
  of the 154 calls pays whatever its size (Python op, argument checks, C dispatch).

The load average is printed next to the table: on a shared 2-vCPU machine 2-thread wall
figures are only meaningful when it is below ~2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

import takane_kernels as tk
from takane_kernels.programs import llm

KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def kind_of(name: str) -> str:
    """The matrix kind of an llm weight name ("blk.3.ffn_up.weight" -> "ffn_up")."""
    return name.split(".")[-2]


def fixed_cost_us(mode: str, calls: int = 2000, rounds: int = 5) -> float:
    """Best per-call wall µs of one mode on an 8 x 128 matrix (warm, 1 thread)."""
    (_, w), = llm.random_weights([("x", 8, 128)])
    (w,), _ = llm.prepare_mode(mode, [("x", w)])
    fn = llm._layer_fn(mode, 1)
    x = np.ones(128, dtype=np.float32)
    fn(x, w)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn(x, w)
        best = min(best, (time.perf_counter_ns() - t0) / calls / 1e3)
    return best


def breakdown(weights, modes, threads_list, rounds: int, tokens: int) -> dict:
    """Per (mode, threads): per kind the median per-token wall / caller-CPU ns summed over
    that kind's calls, the token's wall ns, and the kind's weight bytes."""
    names = [kind_of(n) for n, _ in weights]
    prepared = {mode: llm.prepare_mode(mode, weights)[0] for mode in modes}
    rng = np.random.default_rng(1)
    xs = {k: rng.standard_normal(k).astype(np.float32) for k in sorted({w.k for _, w in weights})}
    members = [(mode, t) for mode in modes for t in threads_list]
    wall = {m: defaultdict(list) for m in members}
    cpu = {m: defaultdict(list) for m in members}
    token_ns = {m: [] for m in members}
    loop_ns = {m: [] for m in members}  # per token: wall time outside the calls
    for mode, t in members:  # warm-up: every handle built, every page faulted, the pool started
        fn = llm._layer_fn(mode, t)
        for w in prepared[mode]:
            fn(xs[w.k], w)
    clock, cclock = time.perf_counter_ns, time.thread_time_ns
    for _ in range(rounds):
        for member in members:
            mode, t = member
            fn = llm._layer_fn(mode, t)
            plan = [(kind, xs[w.k], w) for kind, w in zip(names, prepared[mode])]
            for _ in range(tokens):
                kw, kc = defaultdict(int), defaultdict(int)
                t_tok = clock()
                for kind, x, w in plan:
                    a, c = clock(), cclock()
                    fn(x, w)
                    kc[kind] += cclock() - c
                    kw[kind] += clock() - a
                token_ns[member].append(clock() - t_tok)
                loop_ns[member].append(token_ns[member][-1] - sum(kw.values()))
                for kind in kw:
                    wall[member][kind].append(kw[kind])
                    cpu[member][kind].append(kc[kind])
    out = {}
    for mode, t in members:
        ws = prepared[mode]
        kinds = {}
        for kind in KINDS:
            sel = [w for n, w in zip(names, ws) if n == kind]
            if not sel:
                continue
            kinds[kind] = {"calls": len(sel), "bytes": sum(w.nbytes for w in sel),
                           "wall_ns": float(np.median(wall[(mode, t)][kind])),
                           "cpu_ns": float(np.median(cpu[(mode, t)][kind]))}
        tok = float(np.median(token_ns[(mode, t)]))
        out[f"{mode}/{t}"] = {"mode": mode, "threads": t, "token_ns": tok, "loop_ns": float(np.median(loop_ns[(mode, t)])),
                              "kinds": kinds}
    return out


def print_table(res: dict, fixed: dict, file=sys.stdout) -> None:
    p = lambda *a: print(*a, file=file)  # noqa: E731
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    p(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load[0] != "?" else "load average: n/a")
    for key, r in res.items():
        base = res.get(f"{r['mode']}/1")
        p(f"\n{r['mode']} {r['threads']} thread(s): token {r['token_ns'] / 1e6:.2f} ms (median), "
          f"loop outside the calls {r['loop_ns'] / 1e3:.0f} us, fixed per-call cost (8x128, 1 thr) "
          f"{fixed[r['mode']]:.1f} us x {sum(v['calls'] for v in r['kinds'].values())} calls")
        p(f"  {'kind':12s} {'calls':>5s} {'MB':>6s} {'wall us/call':>12s} {'cpu us/call':>11s} {'GB/s':>6s}"
          + (f" {'vs 1 thr':>8s}" if base is not None and r["threads"] != 1 else ""))
        for kind, v in r["kinds"].items():
            line = (f"  {kind:12s} {v['calls']:5d} {v['bytes'] / 1e6:6.2f} {v['wall_ns'] / v['calls'] / 1e3:12.1f} "
                    f"{v['cpu_ns'] / v['calls'] / 1e3:11.1f} {v['bytes'] / v['wall_ns']:6.1f}")
            if base is not None and r["threads"] != 1:
                line += f" {base['kinds'][kind]['wall_ns'] / v['wall_ns']:7.2f}x"
            p(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default=",".join(llm.MODES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    modes = a.modes.split(",")
    for m in modes:
        if m not in llm.MODES:
            ap.error(f"--modes: {m!r} is not one of {llm.MODES}")
    threads = [int(t) for t in a.threads.split(",")]
    weights = llm.random_weights(llm.llama_shapes(a.hidden, a.ffn, a.layers, 32, 4))
    res = breakdown(weights, modes, threads, a.rounds, a.tokens)
    fixed = {m: fixed_cost_us(m) for m in modes}
    if a.json:
        json.dump({"isa": tk.isa.active(), "loadavg": list(os.getloadavg()), "fixed_us": fixed, "results": res},
                  sys.stdout, indent=1)
        print()
    else:
        print(f"isa {tk.isa.active()}, {len(weights)} matrices")
        print_table(res, fixed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
