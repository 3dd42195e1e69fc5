"""Property tests (hypothesis) per ISA for the layer ops: random shapes, dtypes, scales of
both signs, biases, thresholds on attained values; binary_linear exact, W1A-float within
its bound (and exact on integer data)."""

import numpy as np
from hypothesis import given, strategies as st

import takane_kernels as tk
from takane_kernels import reference as ref

from conftest import assert_ran, count_example

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int32, np.uint8, np.bool_]
KS = st.one_of(st.integers(0, 200), st.sampled_from([255, 256, 257, 511, 512, 513, 1025]))


@st.composite
def linear_problems(draw):
    m = draw(st.integers(0, 20))
    n = draw(st.one_of(st.integers(0, 12), st.sampled_from([63, 64, 65, 130])))
    k = draw(KS)
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # multiples of 1/8: sums of |x| are exact in any order, so beta is exactly reproducible
    x = (rng.integers(-40, 41, size=(m, k)) / (8 if np.dtype(dtype).kind == "f" else 1)).astype(dtype)
    w = rng.standard_normal((n, k))
    scale_kind = draw(st.sampled_from(["mean_abs", "none", "signed"]))
    if scale_kind == "signed":
        scale = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, size=n)
        scale[rng.random(n) < 0.2] = 0.0
    else:
        scale = None if scale_kind == "none" else "mean_abs"
    pw = tk.pack_weights(w, scale=scale)
    bias = rng.standard_normal(n) * 5 if draw(st.booleans()) else None
    threshold = draw(st.sampled_from([0.0, 0.5, -1.0, 2.0]))
    act = draw(st.booleans())
    out_kind = draw(st.sampled_from(["float", "scalar", "per_channel", "attained"]))
    out_t = None
    if out_kind == "scalar":
        out_t = draw(st.sampled_from([0.0, -0.5, 1.0, 1e-3]))
    elif out_kind != "float":
        out_t = rng.standard_normal(n)
        if out_kind == "attained" and m and n:
            y = ref.binary_linear(x, pw, threshold=threshold, bias=bias, activation_scale=act)
            out_t = y[rng.integers(0, m, size=n), np.arange(n)]
    return x, pw, dict(threshold=threshold, bias=bias, activation_scale=act, out_threshold=out_t)


@given(linear_problems())
def test_binary_linear_property(isa_name, problem):
    x, pw, kw = problem
    count_example(isa_name)
    with tk.isa.force(isa_name):
        y = tk.binary_linear(x, pw, **kw)
        if y.size:
            assert_ran(isa_name)
        if kw["out_threshold"] is not None:  # the bits are pack_bits of the float output
            yf = tk.binary_linear(x, pw, **dict(kw, out_threshold=None))
            np.testing.assert_array_equal(y, tk.pack_bits(yf, kw["out_threshold"]))
    np.testing.assert_array_equal(y, ref.binary_linear(x, pw, **kw))


@st.composite
def f32_problems(draw):
    m = draw(st.integers(0, 10))
    n = draw(st.integers(0, 40))
    k = draw(KS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    integer = draw(st.booleans())
    if integer:  # exact partial sums: small integers, power-of-two scales
        x = rng.integers(-9, 10, size=(m, k)).astype(draw(st.sampled_from([np.float32, np.int16, np.float64])))
        in_scale = 2.0 ** rng.integers(-2, 3, size=k) if draw(st.booleans()) else None
        scale = 2.0 ** rng.integers(-2, 3, size=n) if draw(st.booleans()) else None
        bias = rng.integers(-9, 10, size=n).astype(float) if draw(st.booleans()) else None
        pw = tk.pack_weights(rng.standard_normal((n, k)), scale=scale, in_scale=in_scale)
    else:
        x = (rng.standard_normal((m, k)) * 10.0 ** rng.integers(-3, 4)).astype(draw(st.sampled_from(DTYPES[:3])))
        pw = tk.pack_weights(rng.standard_normal((n, k)), scale="onebit")
        bias = rng.standard_normal(n) if draw(st.booleans()) else None
    return x, pw, bias, integer


@given(f32_problems())
def test_binary_weight_matmul_property(isa_name, problem):
    x, pw, bias, integer = problem
    count_example(isa_name)
    with tk.isa.force(isa_name):
        y = tk.binary_weight_matmul(x, pw, bias=bias)
        if y.size:
            assert_ran(isa_name)
    expected = ref.binary_weight_matmul(x, pw, bias=bias)
    if integer:
        np.testing.assert_array_equal(y, expected)
    else:
        assert np.all(np.abs(y - expected) <= ref.binary_weight_matmul_error_bound(x, pw, bias=bias))
