"""Property tests (hypothesis) per ISA: random shapes, thresholds and dtypes, exact."""

import numpy as np
from hypothesis import given, strategies as st

import takane_kernels as tk
from takane_kernels import reference as ref

from conftest import assert_ran, plain_matmul

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int32, np.uint8, np.bool_]


@st.composite
def problems(draw):
    m = draw(st.integers(0, 12))
    n = draw(st.integers(0, 12))
    k = draw(st.one_of(st.integers(0, 200), st.sampled_from([255, 256, 257, 511, 512, 513, 1025])))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    per_channel = draw(st.booleans())
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * 3).astype(dtype)
    w = rng.standard_normal((n, k))
    if per_channel:
        t = rng.standard_normal(k).astype(draw(st.sampled_from([np.float32, np.float64])))
        if m and k:  # thresholds equal to some inputs: the >= boundary
            t[: k // 2] = x[0, : k // 2]
    else:
        t = draw(st.sampled_from([0.0, 0.5, -1.0, 1e-30, 2.0]))
    return x, w, t


@given(problems())
def test_binary_matmul_property(isa_name, problem):
    x, w, t = problem
    with tk.isa.force(isa_name):
        pw = tk.pack_weights(w)
        y = tk.binary_matmul(x, pw, threshold=t)
        if y.size:
            assert_ran(isa_name)
        np.testing.assert_array_equal(y, plain_matmul(x, w, t))
        np.testing.assert_array_equal(tk.pack_bits(x, threshold=t), ref.pack_bits(x, threshold=t))
        xb = tk.pack_bits(x, threshold=t)
        np.testing.assert_array_equal(tk.binary_matmul(xb, pw.bits, k=w.shape[1]), y)
