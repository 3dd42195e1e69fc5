"""Per-call cost of every op and module at small and medium sizes (issue 22: no per-call tax).

Batch 1, one thread, square layers N = K in (64, 256, 1024): the numpy API (the functions
and the bound op objects ``tk.Matmul`` / ``tk.Linear`` / ``tk.Conv2d``) against numpy float32
``x @ w.T``, and the PyTorch modules against ``nn.Linear`` / ``nn.Conv2d``, side by side in
one group per size. At 64x64 the kernel is a fraction of a microsecond, so the time is the
Python glue.

    python -m pytest bench/test_bench_overhead.py --benchmark-only --benchmark-columns=median,iqr,rounds

Run as a script it prints the issue-22 table instead (µs per call of this thread's CPU
time, best and median of interleaved rounds of warm loops, and the ratios to numpy /
nn.Linear from the same run: everything runs on the calling thread, so CPU time is the
figure a shared machine disturbs least); ``--compile`` adds the PyTorch modules under
``torch.compile`` against a compiled ``nn.Linear``; ``--cold`` adds the same calls with the
caches flushed (a 64 MiB buffer read) before each timed call:

    python bench/test_bench_overhead.py [--compile] [--cold]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

if __name__ == "__main__":  # one thread for numpy's BLAS too (read when numpy loads it)
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np
import pytest

import takane_kernels as tk

SIZES = (64, 256, 1024)
CONV = (1, 64, 14, 14)  # (N, C, H, W): a 3x3 QuickNet-style binary layer, C -> C, padding 1


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    return torch


def cases(size: int) -> dict:
    """name -> zero-argument callable, every member of one size's group."""
    rng = np.random.default_rng(size)
    w = rng.standard_normal((size, size)).astype(np.float32)
    x = rng.standard_normal((1, size)).astype(np.float32)
    pw, pwq = tk.pack_weights(w), tk.pack_weights(w, group_size=64)
    bound = hasattr(tk, "Linear")  # (the op objects; absent before issue 22)
    if bound:
        mm, lin = tk.Matmul(pw, threads=1), tk.Linear(pw, threads=1)
        wf, wq = tk.Linear(pw, activations="f32", threads=1), tk.Linear(pwq, activations="q8_0", threads=1)
    c = {
        "numpy f32 x @ w.T": lambda: x @ w.T,
        "binary_matmul": lambda: tk.binary_matmul(x, pw, threads=1),
        "Matmul": lambda: mm(x),
        "binary_linear": lambda: tk.binary_linear(x, pw, threads=1),
        "Linear w1a1": lambda: lin(x),
        "binary_weight_matmul f32": lambda: tk.binary_weight_matmul(x, pw, threads=1),
        "Linear f32": lambda: wf(x),
        "binary_weight_matmul q8_0": lambda: tk.binary_weight_matmul(x, pwq, activations="q8_0", threads=1),
        "Linear q8_0": lambda: wq(x),
    }
    if not bound:
        c = {name: fn for name, fn in c.items() if name[0].islower()}
    torch = _torch()
    if torch is not None:
        from takane_kernels.torch import BinaryLinear

        ln = torch.nn.Linear(size, size)
        xt = torch.from_numpy(x)
        mods = {mode: BinaryLinear.from_linear(ln, mode=mode, threads=1) for mode in ("w1a1", "w1a_float", "w1a8")}
        c["nn.Linear"] = lambda: ln(xt)
        c["BinaryLinear w1a1"] = lambda: mods["w1a1"](xt)
        c["BinaryLinear w1a_float"] = lambda: mods["w1a_float"](xt)
        c["BinaryLinear w1a8"] = lambda: mods["w1a8"](xt)
    return c


def conv_cases() -> dict:
    n, ch, h, wd = CONV
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, h, wd, ch)).astype(np.float32)
    pcw = tk.pack_conv_weights(rng.standard_normal((ch, 3, 3, ch)))
    c = {"binary_conv2d": lambda: tk.binary_conv2d(x, pcw, padding=1, threads=1)}
    if hasattr(tk, "Conv2d"):
        op = tk.Conv2d(pcw, padding=1, threads=1)
        c["Conv2d"] = lambda: op(x)
    torch = _torch()
    if torch is not None:
        from takane_kernels.torch import BinaryConv2d

        conv = torch.nn.Conv2d(ch, ch, 3, padding=1)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # channels_last memory
        bc = BinaryConv2d.from_conv2d(conv, threads=1)
        c["nn.Conv2d"] = lambda: conv(xt)
        c["BinaryConv2d"] = lambda: bc(xt)
    return c


# ---- pytest-benchmark ------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES, ids=[f"{s}x{s}" for s in SIZES])
@pytest.mark.parametrize("member", list(cases(64)))
def test_overhead(benchmark, size, member):
    fn = cases(size).get(member)
    if fn is None:
        pytest.skip("needs torch")
    benchmark.group = f"overhead {size}x{size} batch 1"
    benchmark.extra_info.update(size=size, threads=1)
    torch = _torch()
    if torch is not None:
        with torch.no_grad():
            benchmark(fn)
    else:
        benchmark(fn)


@pytest.mark.parametrize("member", ["binary_conv2d", "Conv2d", "nn.Conv2d", "BinaryConv2d"])
def test_overhead_conv(benchmark, member):
    fn = conv_cases().get(member)
    if fn is None:
        pytest.skip("needs torch")
    benchmark.group = f"overhead conv {CONV} 3x3 batch 1"
    torch = _torch()
    if torch is not None:
        with torch.no_grad():
            benchmark(fn)
    else:
        benchmark(fn)


# ---- the issue-22 table -----------------------------------------------------------------------

def loop_us(fns: dict, calls: int = 2000, repeats: int = 15) -> dict:
    """name -> (best, median) over `repeats` loops of `calls` warm calls, in µs of this
    thread's CPU time per call. The members take turns loop by loop, so a noisy neighbour
    slows them all alike; on a shared machine the best loop is the steadiest figure (the
    median is printed too)."""
    for fn in fns.values():
        for _ in range(200):
            fn()
    per = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.thread_time_ns()
            for _ in range(calls):
                fn()
            per[name].append((time.thread_time_ns() - t0) / calls * 1e-3)
    return {name: (min(v), statistics.median(v)) for name, v in per.items()}


def cold_median_us(fn, calls: int = 200) -> float:
    """Median µs of single calls, each after reading a 64 MiB buffer (caches flushed)."""
    flush = np.ones(2**24, dtype=np.float32)
    per = []
    for _ in range(calls):
        flush.sum()
        t0 = time.perf_counter()
        fn()
        per.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(per)


def compile_cases(size: int) -> dict:
    """nn.Linear and BinaryLinear (each mode) under torch.compile (inductor), one size."""
    torch = _torch()
    from takane_kernels.torch import BinaryLinear

    # each BinaryLinear's registry key is a constant of its graph: past dynamo's recompile
    # limit (8 per function) further modules would run eagerly, so start afresh per size
    torch._dynamo.reset()
    ln = torch.nn.Linear(size, size)
    xt = torch.from_numpy(np.random.default_rng(size).standard_normal((1, size)).astype(np.float32))
    c = {"nn.Linear compiled": torch.compile(ln)}
    for mode in ("w1a1", "w1a_float", "w1a8"):
        c[f"BinaryLinear {mode} compiled"] = torch.compile(BinaryLinear.from_linear(ln, mode=mode, threads=1))
    for fn in c.values():  # compile now, not in the first timed loop
        fn(xt)
    return {name: (lambda fn=fn: fn(xt)) for name, fn in c.items()}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cold = "--cold" in argv
    torch = _torch()
    ctx = torch.no_grad() if torch is not None else None
    if ctx is not None:
        ctx.__enter__()
    rows = {}
    for size in SIZES:
        rows[f"{size}x{size}"] = loop_us(cases(size), calls=2000 if size < 1024 else 300)
    rows[f"conv {CONV[1]}ch {CONV[2]}x{CONV[3]}"] = loop_us(conv_cases(), calls=200)
    if "--compile" in argv and torch is not None:
        for size in SIZES:
            rows[f"torch.compile {size}x{size}"] = loop_us(compile_cases(size), calls=500)
    print(f"isa {tk.isa.active()}, batch 1, 1 thread, warm: µs of CPU time per call, best and median loop, "
          "and the best's ratio to numpy f32 (numpy API) or nn.Linear / nn.Conv2d (modules); "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end")
    for label, r in rows.items():
        print(f"\n{label}")
        base_np = r.get("numpy f32 x @ w.T", (None,))[0]
        base_t = (r.get("nn.Linear") or r.get("nn.Conv2d") or r.get("nn.Linear compiled") or (None,))[0]
        for name, (best, med) in r.items():
            base = base_t if ("Binary" in name or name.startswith("nn.")) else base_np
            ratio = f"{best / base:5.2f}x" if base else ""
            print(f"  {name:28s} {best:9.2f} {med:9.2f} µs  {ratio}")
    if cold:
        print("\ncold (caches flushed before each call), median µs")
        for size in SIZES:
            for name, fn in cases(size).items():
                print(f"  {size}x{size} {name:28s} {cold_median_us(fn):9.2f} µs")
    if ctx is not None:
        ctx.__exit__(None, None, None)


if __name__ == "__main__":
    main()
