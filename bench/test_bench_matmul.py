"""W1A1 matmul benchmarks: one group per shape, members side by side (DESIGN §8).

Members: takane per supported ISA on 1 thread (packed activations), takane on the best
ISA with float activations (binarized and packed inside the call), takane on the best
ISA with 2 threads, numpy float32 ``x @ w.T`` on the same ±1 data, the reference oracle
on the smaller shapes, and NumKong / faiss-cpu when installed (extra ``bench``). Each
member's result is checked once, after timing, against numpy's (exact: sums of ±1 in
float32 are exact below 2**24). ``extra_info`` holds G bit-MACs/s (M*N*K per second),
weight bytes/s and % of the measured 1-core XOR+popcount peak of the member's ISA.
Compare ratios within one run; absolute times drift on shared machines.

    python -m pytest bench --benchmark-only --benchmark-columns=median,iqr,rounds
"""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels.programs import peers as _peers
from takane_kernels import reference as ref
from takane_kernels._shapes import BENCH_SHAPES

REFERENCE_MAX_MACS = 2**30  # the oracle unpacks to float64: keep it to the smaller shapes
REFERENCE_MAX_WEIGHTS = 2**22
BEST = tk.isa.supported()[0]

_data_cache = {}
_peaks = {}


def peak(isa_name):
    if isa_name not in _peaks:
        _peaks[isa_name] = tk.isa.peak(isa_name, seconds=0.1)
    return _peaks[isa_name]


def data(shape):
    if shape not in _data_cache:
        m, n, k = shape
        rng = np.random.default_rng(m * 7 + n * 3 + k)
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        xs = np.where(x >= 0, 1, -1).astype(np.float32)
        ws = np.where(w >= 0, 1, -1).astype(np.float32)
        _data_cache.clear()  # hold one shape at a time
        _data_cache[shape] = dict(x=x, xs=xs, ws=ws, pw=tk.pack_weights(w), xb=tk.pack_bits(x), expected=None)
    return _data_cache[shape]


def expected(d):
    if d["expected"] is None:
        d["expected"] = (d["xs"] @ d["ws"].T).astype(np.int32)
    return d["expected"]


def record(benchmark, shape, isa=None, threads=None):
    m, n, k = shape
    info = benchmark.extra_info
    info.update(shape=list(shape), isa=isa, threads=threads)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:  # None with --benchmark-disable
        median = stats.stats.median
        info["G_bitmacs_per_s"] = m * n * k / median / 1e9
        info["weight_GB_per_s"] = n * ((k + 63) // 64) * 8 / median / 1e9
        if isa:
            info["pct_of_peak"] = 100.0 * m * n * k / median / (peak(isa) * (threads or 1))


def _members(shape):
    m, n, k = shape
    out = [f"takane-{isa}" for isa in tk.isa.supported()] + ["takane-float-x", "takane-2-threads", "numpy-f32"]
    if m * n * k <= REFERENCE_MAX_MACS and n * k <= REFERENCE_MAX_WEIGHTS:
        out.append("reference")
    return out + [f"peer-{p}" for p in sorted(_peers.PEERS)]


# One test, (shape, member) pairs in shape-major order: a group's members run back to
# back, so the ratios inside a group are measured under the same machine load.
CASES = [(shape, member) for shape in BENCH_SHAPES for member in _members(shape)]


@pytest.mark.parametrize("shape,member", CASES, ids=[f"{m}x{n}x{k}-{mem}" for (m, n, k), mem in CASES])
def test_matmul(benchmark, shape, member):
    benchmark.group = f"W1A1 matmul {shape}"
    d = data(shape)
    isa, threads = None, None
    if member.startswith("peer-"):
        adapters = _peers.available(d["xb"], d["pw"].bits, shape[2])
        name = member[len("peer-"):]
        if name not in adapters:
            pytest.skip(f"{name} is not installed (pip install 'takane-kernels[bench]')")
        run, to_dot = adapters[name]
        y = to_dot(benchmark(run))
    elif member == "numpy-f32":
        y = benchmark(np.matmul, d["xs"], d["ws"].T)
    elif member == "reference":
        y = benchmark(ref.binary_matmul, d["xb"], d["pw"])
    else:
        isa = member[len("takane-"):] if member.startswith("takane-") and member[7:] in tk.isa.NAMES else BEST
        threads = 2 if member == "takane-2-threads" else 1
        x = d["x"] if member == "takane-float-x" else d["xb"]
        with tk.isa.force(isa):
            y = benchmark(tk.binary_matmul, x, d["pw"], threads=threads)
            assert tk.isa.last_used() == isa
    record(benchmark, shape, isa, threads)
    np.testing.assert_array_equal(y, expected(d))
