"""W1A8 regimes side by side on a shared machine (issue 21): prefill GEMM vs the panel kernels
vs numpy float32, batched decode from a cold stack, and the machine limits, in one run.

    python bench/q8_0_regimes.py prefill [--rounds 4]
    python bench/q8_0_regimes.py batched [--ms 1,2,4,8,16] [--rounds 3] [--modes q8_0,float32,w1a1]
    python bench/q8_0_regimes.py gemv [--rounds 4]
    python bench/q8_0_regimes.py decode [--rounds 3]     (1 and 2 threads, every mode)

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


def batched(ms, rounds, threads, modes=("q8_0",)):
    """Batched decode from a cold stack (>= 256 MB): M activation rows share each weight
    load. q8_0 and float32 on 4096 x 4096 layers with G = 128 scales; W1A1 (binary_matmul,
    M packed activation rows) on a stack of its own of the same signs without scales (1 bit
    per weight). Each mode's ratios are against its own first M."""
    rng = np.random.default_rng(0)
    n = k = 4096
    dram, _ = limits()
    one = n * k // 8 + n * (k // G) * 4
    layers = [layer(rng, n, k) for _ in range(-(-256 * 2**20 // one))]
    w1a1 = []
    if "w1a1" in modes:
        w1a1 = [tk.PackedWeights(layers[i % len(layers)].bits, k) for i in range(-(-256 * 2**20 // (n * k // 8)))]
        for w in w1a1:
            w._prepacked()
    xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in ms}
    xbs = {m: tk.pack_bits(x) for m, x in xs.items()}
    outs = {m: np.empty((m, n), np.float32) for m in ms}
    outi = {m: np.empty((m, n), np.int32) for m in ms}
    best = {}
    for _ in range(rounds):
        for mode in modes:
            for m in ms:
                def token():
                    if mode == "w1a1":
                        for w in w1a1:
                            tk.binary_matmul(xbs[m], w, out=outi[m], threads=threads)
                    else:
                        for pw in layers:
                            tk.binary_weight_matmul(xs[m], pw, activations=mode, out=outs[m], threads=threads)
                best[mode, m] = min(best.get((mode, m), 1e9), timed(token, wall=threads > 1))
    for mode in modes:
        count, nbytes = (len(w1a1), n * k // 8) if mode == "w1a1" else (len(layers), one)
        total = nbytes * count
        for m in ms:
            s = best[mode, m]
            print(f"cold stack of {count} x {n}x{k} ({'no scales' if mode == 'w1a1' else f'G={G}'}), {mode}, "
                  f"{threads} thread(s), M={m}: {s / count * 1e6:.0f} us/layer, {total / s / 1e9:.1f} GB/s = "
                  f"{100 * total / s / dram[threads]:.0f}% of DRAM, {s / best[mode, ms[0]]:.2f}x M={ms[0]}",
                  flush=True)


def q1_0_handle(pw):
    """A C handle made by takane_weights_from_q1_0: it carries its group scales (stored
    panel-major, in the kernels' lane order), so calls pass none."""
    from takane_kernels._takane import ffi, lib

    q = tk.to_q1_0(pw)
    out = ffi.new("takane_weights **")
    st = lib.takane_weights_from_q1_0(pw.n, pw.k, ffi.from_buffer("uint8_t[]", q), q.shape[1], ffi.NULL, 0, out)
    assert st == lib.TAKANE_OK, st
    return ffi.gc(out[0], lib.takane_weights_free)


def gemv(rounds, calls=200):
    """Warm decode GEMV 1x4096x4096 (G = 128), 1 thread, W1A8 and W1A-float: PackedWeights
    (its handle carries the group scales panel-major since takane_weights_create_grouped;
    before, it passed them row-major per call), the row-major scales passed per call with a
    signs-only handle (C call), and a Q1_0 handle (panel-major, read without transposition)."""
    from takane_kernels._takane import ffi, lib

    rng = np.random.default_rng(0)
    n = k = 4096
    pw = layer(rng, n, k)
    h = q1_0_handle(pw)
    x = rng.standard_normal((1, k)).astype(np.float32)
    y = np.empty((1, n), np.float32)
    xp, yp = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y)
    modes = {"q8_0": lib.TAKANE_ACTIVATIONS_Q8_0, "float32": lib.TAKANE_ACTIVATIONS_F32}

    def handle_call(mode):
        for _ in range(calls):
            lib.takane_binary_weight_matmul_prepacked_ex(h, 1, xp, k, ffi.NULL, ffi.NULL, ffi.NULL, 0,
                                                         ffi.NULL, modes[mode], yp, n, 1)

    def caller_call(mode):
        for _ in range(calls):
            tk.binary_weight_matmul(x, pw, activations=mode, out=y, threads=1)

    # a handle of the signs only (takane_weights_create), the row-major scales passed per
    # call: what PackedWeights did before its handles carried their group scales
    from takane_kernels._capi import weights_handle
    hc, gp = weights_handle(pw.bits, k), ffi.from_buffer("float[]", pw.group_scale)

    def caller_c(mode):  # the same without the Python wrapper
        for _ in range(calls):
            lib.takane_binary_weight_matmul_prepacked_ex(hc, 1, xp, k, ffi.NULL, ffi.NULL, gp, G,
                                                         ffi.NULL, modes[mode], yp, n, 1)

    best = {}
    for _ in range(rounds):
        for mode in modes:
            for member, f in (("PackedWeights", caller_call), ("caller scales, C call", caller_c),
                              ("handle scales (from_q1_0)", handle_call)):
                best[mode, member] = min(best.get((mode, member), 1e9), timed(lambda: f(mode)) / calls)
    for mode in modes:
        print(f"warm GEMV 1x{n}x{k} {mode} G={G}, 1 thread ({tk.isa.supported()[0]}), best of {rounds} "
              f"rounds of {calls} calls, CPU time: "
              + "; ".join(f"{member} {s * 1e6:.1f} us" for (md, member), s in best.items() if md == mode), flush=True)


def decode(rounds):
    """Cold decode (M = 1), a >= 256 MB stack of 4096 x 4096 layers with G = 128, in every
    mode, on 1 thread (CPU time) and 2 threads (wall time), each against the C probe's DRAM
    bandwidth for the same thread count measured in the same run: W1A1 (packed activations,
    1 bit per weight), W1A8 and W1A-float with the caller's row-major group scales
    (PackedWeights before takane_weights_create_grouped; its handles carry them panel-major
    since) and W1A8 from Q1_0 handles (panel-major scales)."""
    from takane_kernels._takane import ffi, lib

    rng = np.random.default_rng(0)
    n = k = 4096
    dram, _ = limits()
    grouped = n * k // 8 + n * (k // G) * 4
    nl = -(-256 * 2**20 // grouped)
    layers = [layer(rng, n, k) for _ in range(nl)]
    # W1A1 streams 1 bit per weight: a stack of its own, >= 256 MB too
    w1a1 = [tk.PackedWeights(layers[i % nl].bits, k) for i in range(-(-256 * 2**20 // (n * k // 8)))]
    for w in w1a1:
        w._prepacked()
    handles = [q1_0_handle(pw) for pw in layers]
    x = rng.standard_normal((1, k)).astype(np.float32)
    xb = tk.pack_bits(x)
    y = np.empty((1, n), np.float32)
    yi = np.empty((1, n), np.int32)
    xp, yp = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y)

    def run(mode, threads):
        if mode == "w1a1":
            for w in w1a1:
                tk.binary_matmul(xb, w, out=yi, threads=threads)
        elif mode == "q8_0 (Q1_0 handles)":
            for h in handles:
                lib.takane_binary_weight_matmul_prepacked_ex(h, 1, xp, k, ffi.NULL, ffi.NULL, ffi.NULL, 0,
                                                             ffi.NULL, lib.TAKANE_ACTIVATIONS_Q8_0, yp, n, threads)
        else:
            for pw in layers:
                tk.binary_weight_matmul(x, pw, activations=mode, out=y, threads=threads)

    nbytes = {"w1a1": n * k // 8, "q8_0": grouped, "q8_0 (Q1_0 handles)": grouped, "float32": grouped}
    count = {mode: len(w1a1) if mode == "w1a1" else nl for mode in nbytes}
    best = {}
    for _ in range(rounds):
        for t in dram:  # re-probed every round: the best of all rounds counts
            dram[t] = max(dram[t], tk.isa.dram_bandwidth(t, repeat=1))
        for mode in nbytes:
            for threads in (1, 2):
                best[mode, threads] = min(best.get((mode, threads), 1e9), timed(lambda: run(mode, threads),
                                                                                wall=threads > 1))
    print(f"DRAM read, best of the rounds: 1 thread {dram[1] / 1e9:.1f} GB/s, 2 threads {dram[2] / 1e9:.1f} GB/s")
    for mode, b in nbytes.items():
        c = count[mode]
        line = f"cold decode, {c} x {n}x{k} (G={G}), {mode}:"
        for threads in (1, 2):
            s = best[mode, threads]
            line += (f" {threads} thread(s) {s / c * 1e6:.0f} us/layer, {b * c / s / 1e9:.1f} GB/s = "
                     f"{100 * b * c / s / dram[threads]:.0f}% of DRAM;")
        print(line + f" 2 threads {best[mode, 1] / best[mode, 2]:.2f}x 1 thread", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["prefill", "batched", "gemv", "decode"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--ms", default="1,2,4,8,16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", default="q8_0", help="batched: comma-separated, of q8_0, float32, w1a1")
    a = p.parse_args()
    if a.what == "prefill":
        prefill(a.rounds)
    elif a.what == "gemv":
        gemv(a.rounds)
    elif a.what == "decode":
        decode(a.rounds)
    else:
        modes = a.modes.split(",")
        bad = set(modes) - {"q8_0", "float32", "w1a1"}
        if bad:
            p.error(f"--modes: unknown {sorted(bad)} (q8_0, float32, w1a1)")
        batched([int(v) for v in a.ms.split(",")], a.rounds, a.threads, modes)


if __name__ == "__main__":
    main()
