"""Layer benchmarks: one group per op and shape, members side by side (DESIGN §8).

W1A-float (``binary_weight_matmul``, OneBit-style weights): takane per supported ISA on
one thread (and the best ISA on the default thread count), against numpy float32 ``x @ w.T + bias`` with the unpacked float weights
``sign(W) * scale ⊗ in_scale`` (the same layer in float32; numpy uses its BLAS threads).
``extra_info`` records the bytes of the packed layer (bits + scales + bias) next to
float32's. Each takane result is checked against the float64 oracle within the
documented error bound.

W1A1 layer (``binary_linear``): plain ``binary_matmul`` (int32 out), then
``binary_linear`` with float output (scale), with activation scale and bias, and with
binarized output, all from float activations on the best ISA, one thread — the
epilogue's overhead is the ratio of their medians — plus numpy float32 on the same ±1
data for scale.

    python -m pytest bench/test_bench_layers.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._shapes import BENCH_SHAPES

SHAPE_IDS = [f"{m}x{n}x{k}" for m, n, k in BENCH_SHAPES]
BEST = tk.isa.supported()[0]
_cache = {}  # every shape's data stays (well under 1 GB): the parametrization varies shape fastest


def f32_data(shape):
    key = ("f32", shape)
    if key not in _cache:
        m, n, k = shape
        rng = np.random.default_rng(m * 7 + n * 3 + k)
        w = rng.standard_normal((n, k)).astype(np.float32)
        pw = tk.pack_weights(w, scale="onebit")
        # the same layer with float32 weights, for numpy
        wf = (np.where(w >= 0, 1.0, -1.0) * np.outer(pw.scale, pw.in_scale)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        _cache[key] = dict(x=x, pw=pw, wf=wf, bias=bias)
    return _cache[key]


def linear_data(shape):
    key = ("linear", shape)
    if key not in _cache:
        m, n, k = shape
        rng = np.random.default_rng(m * 5 + n * 11 + k)
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        _cache[key] = dict(
            x=x, pw=tk.pack_weights(w), bias=rng.standard_normal(n).astype(np.float32),
            xs=np.where(x >= 0, 1, -1).astype(np.float32), ws=np.where(w >= 0, 1, -1).astype(np.float32),
            t=rng.standard_normal(n).astype(np.float32),
        )
    return _cache[key]


def record(benchmark, shape, isa=None, **info):
    m, n, k = shape
    benchmark.extra_info.update(shape=list(shape), isa=isa, threads=1 if isa else None, **info)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["G_weight_ops_per_s"] = 2.0 * m * n * k / stats.stats.median / 1e9


def check_within_bound(y, d, rows=4):
    """Against the float64 oracle on a few rows (the oracle is slow on the big shapes)."""
    x = d["x"][:rows]
    expected = ref.binary_weight_matmul(x, d["pw"], bias=d["bias"])
    bound = ref.binary_weight_matmul_error_bound(x, d["pw"], bias=d["bias"])
    assert np.all(np.abs(y[:rows] - expected) <= bound)


# Members of a group run back to back (shape is the outer parameter): on a shared machine
# the ratios inside a group are what can be compared.

THREADS = tk.default_threads()
WFLOAT_MEMBERS = ["numpy float32 x @ w.T + bias"] + [f"takane {name}" for name in tk.isa.supported()]
if THREADS > 1:
    WFLOAT_MEMBERS.append(f"takane {BEST} {THREADS} threads")


@pytest.mark.parametrize("member", WFLOAT_MEMBERS)
@pytest.mark.parametrize("shape", BENCH_SHAPES, ids=SHAPE_IDS)
def test_f32(benchmark, shape, member):
    benchmark.group = f"W1A-float {shape}"
    d = f32_data(shape)
    layer_bytes = dict(float32_layer_bytes=d["wf"].nbytes + d["bias"].nbytes, packed_layer_bytes=d["pw"].nbytes + d["bias"].nbytes)
    if member.startswith("numpy"):
        def layer(x, wf, bias):
            return x @ wf.T + bias

        y = benchmark(layer, d["x"], d["wf"], d["bias"])
        record(benchmark, shape, **layer_bytes)
        # numpy's float32 GEMM rounds differently: loose agreement only (a sanity check)
        exact = ref.binary_weight_matmul(d["x"][:4], d["pw"], bias=d["bias"])
        np.testing.assert_allclose(y[:4], exact, rtol=1e-3, atol=1e-3 * np.abs(exact).max())
        return
    threads = THREADS if member.endswith("threads") else 1
    isa_name = member.split()[1]
    with tk.isa.force(isa_name):
        y = benchmark(tk.binary_weight_matmul, d["x"], d["pw"], bias=d["bias"], threads=threads)
        assert tk.isa.last_used() == isa_name
    record(benchmark, shape, isa_name, **layer_bytes)
    benchmark.extra_info["threads"] = threads
    check_within_bound(y, d)


# ---- W1A1 layer: epilogue overhead -----------------------------------------------------------

LINEAR_MEMBERS = {
    "binary_matmul int32": lambda d: tk.binary_matmul(d["x"], d["pw"], threads=1),
    "binary_linear float (scale)": lambda d: tk.binary_linear(d["x"], d["pw"], threads=1),
    "binary_linear float (scale, beta, bias)": lambda d: tk.binary_linear(
        d["x"], d["pw"], bias=d["bias"], activation_scale=True, threads=1),
    "binary_linear bits (scale, bias, per-channel out_threshold)": lambda d: tk.binary_linear(
        d["x"], d["pw"], bias=d["bias"], out_threshold=d["t"], threads=1),
    "numpy float32 (same ±1 data)": None,
}


@pytest.mark.parametrize("member", list(LINEAR_MEMBERS))
@pytest.mark.parametrize("shape", BENCH_SHAPES, ids=SHAPE_IDS)
def test_linear(benchmark, shape, member):
    benchmark.group = f"W1A1 layer {shape}"
    d = linear_data(shape)
    rows = slice(0, 4)
    fn = LINEAR_MEMBERS[member]
    if fn is None:
        y = benchmark(np.matmul, d["xs"], d["ws"].T)
        record(benchmark, shape)
        np.testing.assert_array_equal(y[rows], d["xs"][rows] @ d["ws"].T)
        return
    with tk.isa.force(BEST):
        y = benchmark(fn, d)
        assert tk.isa.last_used() == BEST
    record(benchmark, shape, BEST)
    x = d["x"][rows]
    if member.startswith("binary_matmul"):
        np.testing.assert_array_equal(y[rows], (d["xs"][rows] @ d["ws"].T).astype(np.int32))
    elif "bits" in member:
        np.testing.assert_array_equal(y[rows], ref.binary_linear(x, d["pw"], bias=d["bias"], out_threshold=d["t"]))
    elif "beta" in member:  # beta: a float64 sum in kernel order, within 1 ulp of numpy's
        np.testing.assert_allclose(y[rows], ref.binary_linear(x, d["pw"], bias=d["bias"], activation_scale=True),
                                   rtol=3 * 2.0**-24)
    else:
        np.testing.assert_array_equal(y[rows], ref.binary_linear(x, d["pw"]))
