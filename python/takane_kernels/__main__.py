"""``python -m takane_kernels``: what this build is, a self-check, and a quick timing.

1. version, ISAs compiled / supported / active;
2. a self-check of every supported ISA against ``takane_kernels.reference`` (exact) on
   every test K and tile-edge M, N — exits 1 if any result differs;
3. a timing table: takane (per ISA, packed and float activations) vs numpy float32
   ``x @ w.T`` on the same ±1 data, medians of several runs, speedups side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._shapes import TEST_K, TEST_MN


def self_check() -> bool:
    ok_all = True
    rng = np.random.default_rng(2026)
    for name in tk.isa.supported():
        checked = failed = 0
        with tk.isa.force(name):
            for k in TEST_K:
                x = rng.standard_normal((max(TEST_MN), k)).astype(np.float32)
                w = rng.standard_normal((max(TEST_MN), k)).astype(np.float32)
                t = rng.standard_normal(k).astype(np.float32) * 0.2
                expected = ref.binary_matmul(x, ref.pack_weights(w), threshold=t)
                pw = tk.pack_weights(w)
                for m in TEST_MN:
                    for n in TEST_MN:
                        y = tk.binary_matmul(x[:m], tk.PackedWeights(pw.bits[:n], k), threshold=t)
                        checked += 1
                        if not np.array_equal(y, expected[:m, :n]) or (m and n and tk.isa.last_used() != name):
                            failed += 1
        status = "OK" if failed == 0 else f"FAILED ({failed} mismatches)"
        print(f"  {name:7s} {checked} shapes (K in {TEST_K[0]}..{TEST_K[-1]}, M, N in 0..{max(TEST_MN)}): {status}")
        ok_all &= failed == 0
    return ok_all


def median_time(fn, repeat: int, budget_s: float) -> float:
    fn()  # warm up (page faults, caches, lazy init)
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return float(np.median(times))


def fmt_time(s: float) -> str:
    return f"{s * 1e3:9.3f} ms" if s >= 1e-3 else f"{s * 1e6:9.1f} us"


def timing(shapes, repeat: int) -> None:
    rng = np.random.default_rng(0)
    print(f"\nTiming: median of up to {repeat} runs; takane runs on 1 thread, numpy uses its BLAS "
          f"({os.cpu_count()} CPUs). bit-ops = 2*M*N*K.")
    header = f"  {'shape (M,N,K)':18s} {'member':34s} {'time':>12s} {'G bit-ops/s':>12s} {'vs numpy f32':>13s}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for m, n, k in shapes:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        xs = np.where(x >= 0, 1, -1).astype(np.float32)  # the same ±1 data, as floats
        ws = np.where(w >= 0, 1, -1).astype(np.float32)
        pw = tk.pack_weights(w)
        xb = tk.pack_bits(x)
        ops = 2.0 * m * n * k
        t_np = median_time(lambda: xs @ ws.T, repeat, 3.0)
        expected = xs @ ws.T  # exact: sums of ±1 below 2**24
        rows = [("numpy float32 x @ w.T", t_np)]
        for name in tk.isa.supported():
            with tk.isa.force(name):
                y = tk.binary_matmul(xb, pw)
                assert np.array_equal(y, expected), f"{name}: result differs from numpy"
                rows.append((f"takane {name} (packed x)", median_time(lambda: tk.binary_matmul(xb, pw), repeat, 3.0)))
                if name == tk.isa.supported()[0]:
                    rows.append((f"takane {name} (float x, packs too)",
                                 median_time(lambda: tk.binary_matmul(x, pw), repeat, 3.0)))
        label = f"({m},{n},{k})"
        for member, t in rows:
            print(f"  {label:18s} {member:34s} {fmt_time(t):>12s} {ops / t / 1e9:12.1f} {t_np / t:12.1f}x")
            label = ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m takane_kernels", description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=15, help="timed runs per member (median)")
    p.add_argument("--shape", type=int, nargs=3, action="append", metavar=("M", "N", "K"),
                   help="time this shape (repeatable); default: GEMV, (64,4096,4096), 1024^3")
    p.add_argument("--no-timing", action="store_true", help="only the self-check")
    args = p.parse_args(argv)

    print(f"takane_kernels {tk.__version__} (C library {tk.version_info()}, ABI {tk._lib.takane_abi_version()})")
    print(f"ISAs: compiled {', '.join(tk.isa.compiled())}; supported here {', '.join(tk.isa.supported())}; "
          f"active {tk.isa.active()}")
    print("\nSelf-check against takane_kernels.reference (exact int32):")
    ok = self_check()
    if not args.no_timing:
        timing(args.shape or [(1, 4096, 4096), (64, 4096, 4096), (1024, 1024, 1024)], args.repeat)
    if not ok:
        print("\nSELF-CHECK FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
