"""Ternary-weight benchmarks (issue 23): decode GEMV 1 x N x K, warm and cold, of ternary
weights (BitNet b1.58 absmean, one scale per tensor) with int8_row (W1.58A8), q8_0 and
float32 activations, beside the 1-bit W1A8 / W1A-float paths (G = 128) and numpy float32 on
the same shapes, in one run (DESIGN §8).

Warm: the same call repeated. Cold: a stack of layers of the same shape totalling >= 256 MB
run back to back once per round (every layer's weights from DRAM). ``extra_info`` records
the weight bytes (ternary: both planes, 2 bits per weight), GB/s of them, and the percentage
of tk.isa.dram_bandwidth measured in the same session with the same thread count.

    python -m pytest bench/test_bench_ternary.py --benchmark-only --benchmark-columns=median,iqr,rounds

Prefill (``test_ternary_prefill``): M = 32 .. 256 rows of int8_row activations against one
BitNet-2B4T matrix, warm; ``extra_info`` records G MAC/s and % of ``tk.isa.peak_int8()``.

With --benchmark-disable (CI) every member runs once on a 16 MB stack, as a smoke test.
"""

import contextlib

import numpy as np
import pytest

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

import takane_kernels as tk
from takane_kernels import reference as ref

BEST = tk.isa.supported()[0]
SHAPES = [(2048, 2048), (4096, 4096), (6912, 2560)]  # (N, K); 6912 x 2560: BitNet-2B4T's FFN up
THREADS = [1, 2] if tk.default_threads() > 1 else [1]
_cache = {}


def cold_mb(config):
    return 16 if config.getoption("benchmark_disable") else 256


def ternary_layer(rng, n, k):
    """Random ternary planes (about 1/3 zeros, as BitNet's absmean gives) and a tensor scale."""
    codes = rng.integers(-1, 2, size=(n, k))
    kw = -(-k // 64)
    pad = np.zeros((n, kw * 64), bool)

    def plane(mask):
        pad[:, :k] = mask
        return np.ascontiguousarray(np.packbits(pad, axis=-1, bitorder="little")).view("<u8").astype(np.uint64)

    tw = tk.TernaryWeights(plane(codes > 0), plane(codes != 0), k, tensor_scale=0.8)
    tw._prepacked()
    return tw


def binary_layer(rng, n, k):
    kw = -(-k // 64)
    bits = rng.integers(0, 2**64, size=(n, kw), dtype=np.uint64)
    pw = tk.PackedWeights(bits, k, group_scale=(0.5 + rng.random((n, -(-k // 128)))).astype(np.float32),
                          group_size=128)
    pw._prepacked()
    return pw


def nbytes(w):
    if isinstance(w, tk.TernaryWeights):
        return w.sign.nbytes + w.nonzero.nbytes
    return w.bits.nbytes + w.group_scale.nbytes


def layers(kind, n, k, mb):
    key = (kind, n, k, mb)
    if key not in _cache:
        rng = np.random.default_rng(n + k)
        make = ternary_layer if kind == "ternary" else binary_layer
        first = make(rng, n, k)
        count = max(2, -(-mb * 2**20 // nbytes(first)))
        _cache[key] = [first] + [make(rng, n, k) for _ in range(count - 1)]
    return _cache[key]


def dram_gbps(threads):
    key = ("dram", threads)
    if key not in _cache:
        _cache[key] = tk.isa.dram_bandwidth(threads) / 1e9
    return _cache[key]


def median(benchmark):
    stats = getattr(benchmark, "stats", None)
    return None if stats is None or getattr(stats, "stats", None) is None else stats.stats.median


MEMBERS = [f"ternary int8_row {isa} 1" for isa in tk.isa.supported()]
MEMBERS += [f"ternary int8_row {BEST} {t}" for t in THREADS if t > 1]
MEMBERS += [f"ternary q8_0 {BEST} 1", f"ternary float32 {BEST} 1", f"binary q8_0 {BEST} 1",
            f"binary float32 {BEST} 1", "numpy float32 - 1"]


@pytest.mark.parametrize("member", MEMBERS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"1x{n}x{k}" for n, k in SHAPES])
def test_ternary_gemv_warm(benchmark, shape, member):
    n, k = shape
    benchmark.group = f"ternary decode GEMV warm 1x{n}x{k}"
    kind, act, isa_name, threads = member.split()
    threads = int(threads)
    x = np.random.default_rng(1).standard_normal(k).astype(np.float32)
    if kind == "numpy":
        w = np.random.default_rng(2).standard_normal((n, k)).astype(np.float32)
        with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
            benchmark(np.matmul, w, x)
        benchmark.extra_info.update(weight_bytes=w.nbytes)
        return
    w = layers(kind, n, k, 1)[0]
    op = tk.Linear(w, activations=act, threads=threads)
    with tk.isa.force(isa_name):
        y = benchmark(op, x)
        assert tk.isa.last_used() == isa_name
    if kind == "ternary":  # a corner of the result against the oracle
        sub = tk.TernaryWeights(w.sign[:16], w.nonzero[:16], k, tensor_scale=w.tensor_scale)
        assert np.all(np.abs(y[:16] - ref.binary_weight_matmul(x, sub, activations=act))
                      <= ref.binary_weight_matmul_error_bound(x, sub, activations=act))
    sec = median(benchmark)
    benchmark.extra_info.update(isa=isa_name, threads=threads, weight_bytes=nbytes(w),
                                GBps=nbytes(w) / sec / 1e9 if sec else None)


COLD = [f"ternary int8_row {BEST} {t}" for t in THREADS] + [f"binary q8_0 {BEST} {t}" for t in THREADS]


@pytest.mark.parametrize("member", COLD)
@pytest.mark.parametrize("shape", SHAPES[1:], ids=[f"1x{n}x{k}" for n, k in SHAPES[1:]])
def test_ternary_gemv_cold(benchmark, request, shape, member):
    n, k = shape
    benchmark.group = f"ternary decode GEMV cold 1x{n}x{k} (stack of >= {cold_mb(request.config)} MB)"
    kind, act, isa_name, threads = member.split()
    threads = int(threads)
    stack = layers(kind, n, k, cold_mb(request.config))
    ops = [tk.Linear(w, activations=act, threads=threads) for w in stack]
    x = np.random.default_rng(3).standard_normal(k).astype(np.float32)
    out = np.empty(n, np.float32)

    def token():
        for op in ops:
            op(x, out)

    with tk.isa.force(isa_name):
        benchmark.pedantic(token, rounds=1 if request.config.getoption("benchmark_disable") else 7, warmup_rounds=1)
        assert tk.isa.last_used() == isa_name
    total = sum(nbytes(w) for w in stack)
    sec = median(benchmark)
    gbps = total / sec / 1e9 if sec else None
    dram = dram_gbps(threads)
    benchmark.extra_info.update(isa=isa_name, threads=threads, layers=len(stack), stack_bytes=total,
                                us_per_layer=sec / len(stack) * 1e6 if sec else None, GBps=gbps, dram_GBps=dram,
                                pct_of_dram=100 * gbps / dram if gbps else None)


# ---- W1.58A1: ternary weights, ±1 activations (binary_matmul with TernaryWeights) -------------
#
# Beside the W1A1 product on the same shape (1-bit weights) and the W1.58A8 one (int8_row),
# 1 thread, M = 1 (decode) and 128 (prefill), warm. W1.58A1 runs the W1A1 kernels on 2N rows
# (docs/guide/ternary.md), so about 2x W1A1 is the expectation. For load-independent figures
# time the calling thread's CPU: --benchmark-timer time.thread_time (threads=1 runs on it).

W1_58A1_SHAPES = [(1, 2560, 2560), (128, 2560, 2560), (1, 6912, 2560), (128, 6912, 2560)]  # (M, N, K)
W1_58A1_MEMBERS = ["W1.58A1 real", "W1.58A1 packed", "W1A1 real", "W1A1 packed", "W1.58A8 int8_row"]


@pytest.mark.parametrize("member", W1_58A1_MEMBERS)
@pytest.mark.parametrize("shape", W1_58A1_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in W1_58A1_SHAPES])
def test_ternary_w1a1(benchmark, shape, member):
    m, n, k = shape
    benchmark.group = f"W1.58A1 vs W1A1 vs W1.58A8 {m}x{n}x{k} 1 thread"
    x = np.random.default_rng(3).standard_normal((m, k)).astype(np.float32)
    tw = layers("ternary", n, k, 1)[0]
    if member.startswith("W1.58A1"):
        tw._w1a1_planes()._prepacked()  # built once, as a bound op keeps it
        arg = tk.pack_bits(x) if member.endswith("packed") else x
        y = benchmark(tk.binary_matmul, arg, tw, threads=1)
        sub = tk.TernaryWeights(tw.sign[:16], tw.nonzero[:16], k)
        np.testing.assert_array_equal(y[:, :16], ref.binary_matmul(x, sub))
    elif member.startswith("W1A1"):
        pw = layers("binary", n, k, 1)[0]
        op = tk.Matmul(pw, threads=1)
        benchmark(op, tk.pack_bits(x) if member.endswith("packed") else x)
    else:
        benchmark(tk.Linear(tw, activations="int8_row", threads=1), x)
    benchmark.extra_info.update(isa=BEST, threads=1, m=m, weight_bytes=nbytes(tw))


# ---- prefill: M activation rows at once (the int8_row GEMM from M = 8 on AVX-512) ---------

# BitNet-2B4T's matrices (N, K): q / o, k / v, FFN gate / up, FFN down
PREFILL_SHAPES = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]
PREFILL = [(m, s) for s in PREFILL_SHAPES for m in ((32, 64, 128, 256) if s in PREFILL_SHAPES[::2] else (128,))]
PREFILL_MEMBERS = [f"ternary int8_row {isa} 1" for isa in tk.isa.supported()]
PREFILL_MEMBERS += [f"ternary int8_row {BEST} {t}" for t in THREADS if t > 1]


def int8_peak():
    if "peak" not in _cache:
        _cache["peak"] = tk.isa.peak_int8()
    return _cache["peak"]


@pytest.mark.parametrize("member", PREFILL_MEMBERS)
@pytest.mark.parametrize("m,shape", PREFILL, ids=[f"{m}x{n}x{k}" for m, (n, k) in PREFILL])
def test_ternary_prefill(benchmark, m, shape, member):
    """M x N x K int8_row (BitNet's per-token int8) against one ternary layer, warm;
    extra_info: G MAC/s and % of the int8 peak (tk.isa.peak_int8, one core, x threads)."""
    n, k = shape
    benchmark.group = f"ternary prefill {m}x{n}x{k} int8_row"
    _, act, isa_name, threads = member.split()
    threads = int(threads)
    w = layers("ternary", n, k, 1)[0]
    x = np.random.default_rng(3).standard_normal((m, k)).astype(np.float32)
    op = tk.Linear(w, activations=act, threads=threads)
    with tk.isa.force(isa_name):
        y = benchmark(op, x)
        assert tk.isa.last_used() == isa_name
    sub = tk.TernaryWeights(w.sign[:16], w.nonzero[:16], k, tensor_scale=w.tensor_scale)
    assert np.all(np.abs(y[:, :16] - ref.binary_weight_matmul(x, sub, activations=act))
                  <= ref.binary_weight_matmul_error_bound(x, sub, activations=act))
    sec = median(benchmark)
    peak = int8_peak()
    gmacs = m * n * k / sec / 1e9 if sec else None
    benchmark.extra_info.update(isa=isa_name, threads=threads, GMACps=gmacs,
                                pct_int8_peak=100 * gmacs * 1e9 / (peak * threads) if gmacs and peak else None)
