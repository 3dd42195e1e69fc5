"""W1A8 regimes side by side on a shared machine (issue 21): prefill GEMM vs the panel kernels
vs numpy float32, batched decode from a cold stack, and the machine limits, in one run.

    python bench/q8_0_regimes.py prefill [--rounds 4]
    python bench/q8_0_regimes.py batched [--ms 1,2,4,8,16] [--rounds 3]

Every member runs once per round, rounds interleaved, and the best round counts (other jobs
only ever slow a run down). One-thread members are timed in this thread's CPU time
(``time.thread_time``: time the scheduler gives to other processes does not count; memory
stalls do), two-thread members in wall time. "% of peak" is against tk.isa.peak_int8() and
"% of DRAM" against tk.isa.dram_bandwidth(), both measured in the same run (best of 3).
The pytest-benchmark groups in test_bench_q8_0.py time the same members with wall clocks.
"""

import argparse
import os
import time

import numpy as np

import takane_kernels as tk

G = 128


def layer(rng, n, k):
    bits = rng.integers(0, 2**64, size=(n, k // 64), dtype=np.uint64)
    gs = (0.5 + rng.random((n, k // G))).astype(np.float32)
    pw = tk.PackedWeights(bits, k, group_scale=gs, group_size=G)
    pw._prepacked()
    return pw


def timed(f, wall=False):
    clock = time.perf_counter if wall else time.thread_time
    t0 = clock()
    f()
    return clock() - t0


def regime(path):
    """Force the W1A8 regime for the next calls (None: the library's choice)."""
    if path is None:
        os.environ.pop("TAKANE_Q8_GEMM_MIN_M", None)
    else:
        os.environ["TAKANE_Q8_GEMM_MIN_M"] = "2" if path == "gemm" else "1000000"


def limits():
    dram = {t: max(tk.isa.dram_bandwidth(t, repeat=1) for _ in range(3)) for t in (1, 2)}
    peak = {}
    for isa in tk.isa.supported():
        try:
            peak[isa] = max(tk.isa.peak_int8(isa, 0.1) for _ in range(3))
        except ValueError:
            pass
    print(f"DRAM read (C probe): 1 thread {dram[1] / 1e9:.1f} GB/s, 2 threads {dram[2] / 1e9:.1f} GB/s; "
          + ", ".join(f"{isa} int8 peak {p / 1e9:.0f} G MAC/s" for isa, p in peak.items()), flush=True)
    return dram, peak


def prefill(rounds):
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    _, peak = limits()
    best_isa = tk.isa.supported()[0]
    for m, n, k in [(64, 4096, 4096), (256, 4096, 4096), (512, 4096, 4096), (64, 11008, 4096),
                    (256, 11008, 4096)]:
        pw = layer(rng, n, k)
        wf = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        members = [("gemm", best_isa, "gemm", 1), ("gemm 2 threads", best_isa, "gemm", 2),
                   ("panels", best_isa, "panels", 1)]
        if "avx2" in peak and best_isa != "avx2":
            members += [("avx2 gemm", "avx2", "gemm", 1), ("avx2 panels", "avx2", "panels", 1)]
        best = {}
        for _ in range(rounds):
            for isa in peak:  # re-probed every round: the best of all rounds counts
                peak[isa] = max(peak[isa], tk.isa.peak_int8(isa, 0.05))
            for name, isa, path, threads in members:
                regime(path)
                with tk.isa.force(isa):
                    s = timed(lambda: tk.binary_weight_matmul(x, pw, activations="q8_0", threads=threads),
                              wall=threads > 1)
                best[name] = min(best.get(name, 1e9), s)
            with threadpool_limits(1):
                best["numpy"] = min(best.get("numpy", 1e9), timed(lambda: x @ wf.T))
        regime(None)
        macs = m * n * k
        line = (f"prefill {m}x{n}x{k}: {best_isa} GEMM {best['gemm'] * 1e3:.2f} ms = "
                f"{macs / best['gemm'] / 1e9:.0f} G MAC/s")
        if best_isa in peak:
            line += f" = {100 * macs / best['gemm'] / peak[best_isa]:.0f}% of its int8 peak"
        line += (f"; {best['numpy'] / best['gemm']:.2f}x numpy f32 1 thread ({best['numpy'] * 1e3:.1f} ms); "
                 f"{best['panels'] / best['gemm']:.2f}x the panel kernels ({best['panels'] * 1e3:.2f} ms); "
                 f"2 threads (wall) {best['gemm'] / best['gemm 2 threads']:.2f}x")
        if "avx2 gemm" in best:
            line += (f"; avx2 GEMM {best['avx2 gemm'] * 1e3:.1f} ms = "
                     f"{100 * macs / best['avx2 gemm'] / peak['avx2']:.0f}% of the avx2 peak, "
                     f"{best['avx2 panels'] / best['avx2 gemm']:.2f}x the avx2 panel kernel")
        print(line, flush=True)


def batched(ms, rounds, threads):
    rng = np.random.default_rng(0)
    n = k = 4096
    dram, _ = limits()
    one = n * k // 8 + n * (k // G) * 4
    layers = [layer(rng, n, k) for _ in range(-(-256 * 2**20 // one))]
    xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in ms}
    outs = {m: np.empty((m, n), np.float32) for m in ms}
    best = {}
    for _ in range(rounds):
        for m in ms:
            def token():
                for pw in layers:
                    tk.binary_weight_matmul(xs[m], pw, activations="q8_0", out=outs[m], threads=threads)
            best[m] = min(best.get(m, 1e9), timed(token, wall=threads > 1))
    total = one * len(layers)
    for m in ms:
        s = best[m]
        print(f"cold stack of {len(layers)} x {n}x{k} (G={G}), {threads} thread(s), M={m}: "
              f"{s / len(layers) * 1e6:.0f} us/layer, {total / s / 1e9:.1f} GB/s = "
              f"{100 * total / s / dram[threads]:.0f}% of DRAM, {s / best[ms[0]]:.2f}x M={ms[0]}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["prefill", "batched"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--ms", default="1,2,4,8,16")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.what == "prefill":
        prefill(a.rounds)
    else:
        batched([int(v) for v in a.ms.split(",")], a.rounds, a.threads)


if __name__ == "__main__":
    main()
