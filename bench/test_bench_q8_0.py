"""1-bit LLM layer benchmarks: W1A8 (activations="q8_0") and W1A-float with group scales
(G = 128), decode (GEMV) warm and cold, batched decode (M = 1..16 sharing one cold weight
stream) and prefill (M = 64..512, N = 4096 and 11008; the W1A8 GEMM and, as a same-run
"before", the panel kernels), against numpy float32 (DESIGN §8, §9; issue 21).

Warm: the same call repeated (the weights stay in L2/L3). Cold (DESIGN §8): a stack of
layers of the same shape whose weights (bits + group scales) total >= 256 MB is run
back to back once per round — what decoding a model does — so every layer's weights come
from DRAM. ``extra_info`` records GB/s of weight bytes and the percentage of the DRAM read
bandwidth measured in the same session with the same thread count (the C streaming read of
tk.isa.dram_bandwidth over a 256 MB buffer, one reader per thread); prefill records G MAC/s
and the percentage of the int8 VPDPBUSD peak (tk.isa.peak_int8, same session, per thread).

    python -m pytest bench/test_bench_q8_0.py --benchmark-only --benchmark-columns=median,iqr,rounds

With --benchmark-disable (CI) every member runs once on a 16 MB stack, as a smoke test.
"""

import contextlib

import numpy as np
import pytest

try:  # numpy's BLAS on one thread, for per-core ratios (threadpoolctl comes with scikit-learn)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - then numpy runs on its default threads (recorded)
    threadpool_limits = None

import takane_kernels as tk
from takane_kernels import reference as ref

BEST = tk.isa.supported()[0]
G = 128
GEMV_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (N, K): attention, MLP up, MLP down
_cache = {}


def cold_mb(config):
    return 16 if config.getoption("benchmark_disable") else 256


def random_layer(rng, n, k):
    """A packed layer with group scales, straight from random words (no float matrix)."""
    kw = -(-k // 64)
    bits = rng.integers(0, 2**64, size=(n, kw), dtype=np.uint64)
    if k % 64:
        bits[:, -1] &= np.uint64((1 << (k % 64)) - 1)
    gs = (0.5 + rng.random((n, -(-k // G)))).astype(np.float32)
    pw = tk.PackedWeights(bits, k, group_scale=gs, group_size=G)
    pw._prepacked()  # build the handle outside the timing
    return pw


def layer_bytes(pw):
    return pw.bits.nbytes + pw.group_scale.nbytes


def stack(n, k, mb):
    key = ("stack", n, k, mb)
    if key not in _cache:
        rng = np.random.default_rng(n + k)
        first = random_layer(rng, n, k)
        count = max(2, -(-mb * 2**20 // layer_bytes(first)))
        _cache[key] = [first] + [random_layer(rng, n, k) for _ in range(count - 1)]
    return _cache[key]


def dram_gbps(threads, mb=256):
    """Streaming read bandwidth (GB/s) of a >= 256 MB buffer on `threads` threads: the C
    probe (tk.isa.dram_bandwidth: one reader thread per part, started together, best of 3).
    A numpy sum split over Python threads under-read at 2 threads (issue 21)."""
    key = ("dram", threads)
    if key not in _cache:
        _cache[key] = tk.isa.dram_bandwidth(threads, mb=mb) / 1e9
    return _cache[key]


def int8_peak():
    """The int8 VPDPBUSD peak of the best ISA on one core (MAC/s), or None without one."""
    if "peak" not in _cache:
        try:
            _cache["peak"] = tk.isa.peak_int8(BEST, seconds=0.2)
        except ValueError:
            _cache["peak"] = None
    return _cache["peak"]


@contextlib.contextmanager
def q8_path(path):
    """'gemm' / 'panels' forces the W1A8 regime (env TAKANE_Q8_GEMM_MIN_M, read per call):
    before/after of the prefill GEMM in one run; None keeps the library's choice."""
    import os
    old = os.environ.get("TAKANE_Q8_GEMM_MIN_M")
    if path is not None:
        os.environ["TAKANE_Q8_GEMM_MIN_M"] = "2" if path == "gemm" else "1000000"
    try:
        yield
    finally:
        if path is not None:
            if old is None:
                os.environ.pop("TAKANE_Q8_GEMM_MIN_M", None)
            else:
                os.environ["TAKANE_Q8_GEMM_MIN_M"] = old


def one_blas_thread():
    return threadpool_limits(1) if threadpool_limits else contextlib.nullcontext()


def record(benchmark, **info):
    benchmark.extra_info.update(info)


def per_round_seconds(benchmark):
    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(stats, "stats", None) is None:
        return None
    return stats.stats.median


def check(y, x, pw, activations):
    expected = ref.binary_weight_matmul(x, pw, activations=activations)
    bound = ref.binary_weight_matmul_error_bound(x, pw, activations=activations)
    assert np.all(np.abs(y - expected) <= bound)


THREADS = [1, 2] if tk.default_threads() > 1 else [1]
GEMV_MEMBERS = [f"takane q8_0 {isa} 1 thread" for isa in tk.isa.supported()]
GEMV_MEMBERS += [f"takane q8_0 {BEST} {t} threads" for t in THREADS if t > 1]
GEMV_MEMBERS += [f"takane float32 {BEST} {t} thread{'s' if t > 1 else ''}" for t in THREADS]
GEMV_MEMBERS += ["numpy float32 w @ x (1 thread)"]


def parse(member):
    parts = member.split()
    return parts[1], parts[2], int(parts[3])


@pytest.mark.parametrize("member", GEMV_MEMBERS)
@pytest.mark.parametrize("shape", GEMV_SHAPES, ids=[f"1x{n}x{k}" for n, k in GEMV_SHAPES])
def test_gemv_warm(benchmark, shape, member):
    n, k = shape
    benchmark.group = f"decode GEMV warm 1x{n}x{k} (G={G})"
    pw = stack(n, k, 1)[0]
    x = np.random.default_rng(1).standard_normal(k).astype(np.float32)
    if member.startswith("numpy"):
        wf = (ref.unpack_bits(pw.bits, k, np.float32)
              * np.repeat(pw.group_scale, G, axis=1)[:, :k]).astype(np.float32)
        with one_blas_thread():
            benchmark(np.matmul, wf, x)
        record(benchmark, weight_bytes=wf.nbytes, blas_threads=1 if threadpool_limits else "default")
        return
    activations, isa_name, threads = parse(member)
    with tk.isa.force(isa_name):
        y = benchmark(tk.binary_weight_matmul, x, pw, activations=activations, threads=threads)
        assert tk.isa.last_used() == isa_name
    check(y[:64], x, tk.PackedWeights(pw.bits[:64], k, group_scale=pw.group_scale[:64], group_size=G),
          activations)
    sec = per_round_seconds(benchmark)
    record(benchmark, isa=isa_name, threads=threads, weight_bytes=layer_bytes(pw),
           GBps=layer_bytes(pw) / sec / 1e9 if sec else None)


COLD_MEMBERS = [f"takane {a} {BEST} {t} thread{'s' if t > 1 else ''}" for a in ("q8_0", "float32")
                for t in THREADS]
COLD_MEMBERS += [f"takane q8_0 {isa} 1 thread" for isa in tk.isa.supported()[1:]]


@pytest.mark.parametrize("member", COLD_MEMBERS)
@pytest.mark.parametrize("shape", GEMV_SHAPES, ids=[f"1x{n}x{k}" for n, k in GEMV_SHAPES])
def test_gemv_cold(benchmark, request, shape, member):
    """One round = every layer of a >= 256 MB stack once (weights from DRAM)."""
    n, k = shape
    benchmark.group = f"decode GEMV cold 1x{n}x{k} (G={G}, stack of >= {cold_mb(request.config)} MB)"
    layers = stack(n, k, cold_mb(request.config))
    x = np.random.default_rng(2).standard_normal(k).astype(np.float32)
    activations, isa_name, threads = parse(member)
    out = np.empty(n, np.float32)

    def token():
        for pw in layers:
            tk.binary_weight_matmul(x, pw, activations=activations, out=out, threads=threads)

    with tk.isa.force(isa_name):
        benchmark.pedantic(token, rounds=1 if request.config.getoption("benchmark_disable") else 7,
                           warmup_rounds=1)
        assert tk.isa.last_used() == isa_name
    total = sum(layer_bytes(pw) for pw in layers)
    sec = per_round_seconds(benchmark)
    dram = dram_gbps(threads)
    gbps = total / sec / 1e9 if sec else None
    record(benchmark, isa=isa_name, threads=threads, layers=len(layers), stack_bytes=total,
           us_per_layer=sec / len(layers) * 1e6 if sec else None, GBps=gbps, dram_GBps=dram,
           pct_of_dram=100 * gbps / dram if gbps else None)


PREFILL = [(64, 4096), (256, 4096), (512, 4096), (256, 11008)]  # (M, N), K = 4096
PREFILL_MEMBERS = ["numpy float32 x @ w.T (1 thread)"]
PREFILL_MEMBERS += [f"takane q8_0 {BEST} {t} thread{'s' if t > 1 else ''}" for t in THREADS]
PREFILL_MEMBERS += [f"takane q8_0 {BEST} 1 thread panels"]  # the pre-GEMM kernels, same run
PREFILL_MEMBERS += [f"takane float32 {BEST} 1 thread"]


@pytest.mark.parametrize("member", PREFILL_MEMBERS)
@pytest.mark.parametrize("m,n", PREFILL, ids=[f"{m}x{n}x4096" for m, n in PREFILL])
def test_prefill(benchmark, m, n, member):
    k = 4096
    benchmark.group = f"prefill {m}x{n}x{k} (G={G})"
    pw = stack(n, k, 1)[0]
    x = np.random.default_rng(3).standard_normal((m, k)).astype(np.float32)
    if member.startswith("numpy"):
        wf = (ref.unpack_bits(pw.bits, k, np.float32) * np.repeat(pw.group_scale, G, axis=1)).astype(np.float32)
        with one_blas_thread():
            benchmark(np.matmul, x, wf.T)
        record(benchmark, blas_threads=1 if threadpool_limits else "default")
    else:
        activations, isa_name, threads = parse(member)
        path = "panels" if member.endswith("panels") else None
        with tk.isa.force(isa_name), q8_path(path):
            y = benchmark(tk.binary_weight_matmul, x, pw, activations=activations, threads=threads)
            assert tk.isa.last_used() == isa_name
        check(y[:2, :64], x[:2], tk.PackedWeights(pw.bits[:64], k, group_scale=pw.group_scale[:64], group_size=G),
              activations)
        record(benchmark, isa=isa_name, threads=threads, path=path or "default")
    sec = per_round_seconds(benchmark)
    macs = m * n * k / sec if sec else None
    record(benchmark, G_weight_MACs_per_s=macs / 1e9 if macs else None)
    if macs and not member.startswith("numpy") and "q8_0" in member and int8_peak():
        peak = int8_peak()
        record(benchmark, int8_peak_G_MACs_per_s=peak / 1e9,
               pct_of_int8_peak=100 * macs / peak / (threads if not member.startswith("numpy") else 1))


BATCH_M = [1, 2, 4, 8, 16]
BATCH_MEMBERS = [f"takane {a} {BEST} {t} thread{'s' if t > 1 else ''}" for a in ("q8_0", "float32")
                 for t in THREADS]


@pytest.mark.parametrize("m", BATCH_M, ids=[f"M={m}" for m in BATCH_M])
@pytest.mark.parametrize("member", BATCH_MEMBERS)
def test_batched_decode_cold(benchmark, request, member, m):
    """M sequences sharing one weight stream (batched / speculative decode), cold stack of
    4096x4096 G = 128 layers: ``x_M1`` is the time over the same member's M = 1 time (the
    target: q8_0 M = 8 <= 2.0x, M = 16 <= 3.5x; float32 M = 8 <= 3x)."""
    n = k = 4096
    benchmark.group = f"batched decode cold {member} (4096x4096, G={G})"
    layers = stack(n, k, cold_mb(request.config))
    x = np.random.default_rng(4).standard_normal((m, k)).astype(np.float32)
    activations, isa_name, threads = parse(member)
    out = np.empty((m, n), np.float32)

    def token():
        for pw in layers:
            tk.binary_weight_matmul(x, pw, activations=activations, out=out, threads=threads)

    with tk.isa.force(isa_name):
        benchmark.pedantic(token, rounds=1 if request.config.getoption("benchmark_disable") else 5,
                           warmup_rounds=1)
        assert tk.isa.last_used() == isa_name
    sec = per_round_seconds(benchmark)
    total = sum(layer_bytes(pw) for pw in layers)
    info = dict(isa=isa_name, threads=threads, m=m, layers=len(layers),
                us_per_layer=sec / len(layers) * 1e6 if sec else None)
    if sec:
        _cache[("batch", member, m)] = sec
        base = _cache.get(("batch", member, 1))
        dram = dram_gbps(threads)
        info.update(GBps=total / sec / 1e9, pct_of_dram=100 * total / sec / 1e9 / dram,
                    x_M1=sec / base if base else None,
                    G_weight_MACs_per_s=m * n * k * len(layers) / sec / 1e9)
    record(benchmark, **info)
