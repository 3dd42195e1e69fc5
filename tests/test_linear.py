"""binary_linear (W1A1 layer) against the oracle on every ISA: float output bit-exact,
binarized output exact on both epilogue paths (float compare, integer thresholds)."""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._shapes import TEST_K, TEST_MN

from conftest import assert_ran, plain_matmul

pytestmark = pytest.mark.usefixtures("on_isa")

# rows at and around tile edges, the C epilogue's switch to integer thresholds (32 rows)
# and its 64-row blocks
TEST_M = (0, 1, 2, 3, 5, 7, 8, 9, 17, 31, 32, 33, 65)


def dyadic(rng, shape):
    """Values k/8 with |k| <= 64: every float32 sum of a few thousand is exact, so
    mean |x| and the epilogue are exactly reproducible in any order."""
    return (rng.integers(-64, 65, size=shape) / 8).astype(np.float32)


def signed_scales(rng, n):
    """Per-row scales of both signs, including zeros and a -0.0 (the comparison flips)."""
    s = rng.standard_normal(n).astype(np.float32)
    s[::5] = 0.0
    s[1::7] = -0.0
    return s


@pytest.mark.parametrize("k", TEST_K)
def test_float_output_grid_exact(isa_name, k):
    rng = np.random.default_rng(k)
    big_m, big_n = max(TEST_M), max(TEST_MN)
    x = rng.standard_normal((big_m, k)).astype(np.float32)
    w = rng.standard_normal((big_n, k))
    bias = rng.standard_normal(big_n)
    pw = tk.pack_weights(w)
    expected = ref.binary_linear(x, pw, bias=bias)
    for m in TEST_M:
        for n in TEST_MN:
            sub = tk.PackedWeights(pw.bits[:n], k, scale=pw.scale[:n])
            y = tk.binary_linear(x[:m], sub, bias=bias[:n])
            assert y.shape == (m, n) and y.dtype == np.float32
            np.testing.assert_array_equal(y, expected[:m, :n], err_msg=f"m={m} n={n} k={k}")
            if m and n:
                assert_ran(isa_name)


@pytest.mark.parametrize("k", TEST_K)
def test_bits_output_grid_exact(isa_name, k):
    """Both C paths (float compare below 32 rows, integer thresholds from 32) against
    pack_bits of the reference float result, with signed/zero scales and thresholds
    placed exactly on attained values (the >= boundary)."""
    rng = np.random.default_rng(1000 + k)
    big_m, big_n = max(TEST_M), max(TEST_MN)
    x = rng.standard_normal((big_m, k)).astype(np.float32)
    w = rng.standard_normal((big_n, k))
    scale = signed_scales(rng, big_n)
    pw = tk.pack_weights(w, scale=scale)
    bias = rng.standard_normal(big_n).astype(np.float32)
    y_ref = ref.binary_linear(x, pw, bias=bias)
    t = rng.standard_normal(big_n).astype(np.float32)
    t[::3] = y_ref[big_m // 2, ::3]  # attained exactly by one row
    for t_out in (t, np.float32(0.0), 0.25):
        expected = ref.binary_linear(x, pw, bias=bias, out_threshold=t_out)
        np.testing.assert_array_equal(expected, ref.pack_bits(y_ref, t_out))  # the oracle's own consistency
        for m in TEST_M:
            for n in TEST_MN:
                sub = tk.PackedWeights(pw.bits[:n], k, scale=scale[:n])
                tn = t_out[:n] if np.ndim(t_out) else t_out
                yb = tk.binary_linear(x[:m], sub, bias=bias[:n], out_threshold=tn)
                assert yb.shape == (m, (n + 63) // 64) and yb.dtype == np.uint64
                np.testing.assert_array_equal(yb, ref.pack_bits(y_ref[:m, :n], tn), err_msg=f"m={m} n={n} k={k}")
                if m and n:
                    assert_ran(isa_name)


@pytest.mark.parametrize("m", (1, 3, 8, 40))
def test_integer_thresholds_at_extremes(isa_name, m):
    """Scales spanning tiny to huge, exactly zero, negative; thresholds at ±inf, ±max, and
    exactly at every attainable value for a small k: every dot product value is hit."""
    k = 9  # dot products take the 10 values -9, -7, ..., 9
    rng = np.random.default_rng(m)
    n = 64
    scale = np.array([1e-30, -1e-30, 3e30, -3e30, 0.0, -0.0, 1.0, -1.0] * 8, dtype=np.float32)
    w = rng.standard_normal((n, k))
    pw = tk.pack_weights(w, scale=scale)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y_ref = ref.binary_linear(x, pw)
    for t in (np.inf, -np.inf, 3e38, -3e38, 0.0, -0.0, 1e-30, 2e-30):
        np.testing.assert_array_equal(tk.binary_linear(x, pw, out_threshold=t), ref.pack_bits(y_ref, t), err_msg=f"t={t}")
    dots = np.arange(-k, k + 1, 2, dtype=np.float32)
    for d in dots:  # a threshold equal to each attainable value of each column
        t = (d * scale).astype(np.float32)
        np.testing.assert_array_equal(tk.binary_linear(x, pw, out_threshold=t), ref.pack_bits(y_ref, t), err_msg=f"d={d}")
        bias = np.full(n, 0.5, np.float32)
        y_b = ref.binary_linear(x, pw, bias=bias)
        t_b = (d * scale + bias).astype(np.float32)
        np.testing.assert_array_equal(tk.binary_linear(x, pw, bias=bias, out_threshold=t_b), ref.pack_bits(y_b, t_b))
    assert_ran(isa_name)


def test_rounding_boundaries_of_the_float_expression(isa_name):
    """Large k and scales whose products round: the integer path must reproduce the float
    rounding of ((float)d * s) + b, not the real-number crossing (t - b) / s."""
    rng = np.random.default_rng(5)
    k, n, m = 4097, 96, 40  # >= 32 rows: the integer path
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k))
    scale = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    bias = (rng.standard_normal(n) * 1e3).astype(np.float32)
    pw = tk.pack_weights(w, scale=scale)
    y_ref = ref.binary_linear(x, pw, bias=bias)
    for row in range(0, m, 5):
        t = y_ref[row]
        for tt in (t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))):
            np.testing.assert_array_equal(tk.binary_linear(x, pw, bias=bias, out_threshold=tt),
                                          ref.pack_bits(y_ref, tt))
    assert_ran(isa_name)


@pytest.mark.parametrize("k", (1, 63, 64, 65, 513, 4097))
def test_activation_scale_exact_on_dyadic_inputs(isa_name, k):
    rng = np.random.default_rng(k + 7)
    x = dyadic(rng, (70, k))
    w = rng.standard_normal((21, k))
    pw = tk.pack_weights(w)
    bias = rng.standard_normal(21)
    expected = ref.binary_linear(x, pw, bias=bias, activation_scale=True)
    np.testing.assert_array_equal(tk.binary_linear(x, pw, bias=bias, activation_scale=True), expected)
    assert_ran(isa_name)
    t = rng.standard_normal(21)
    for m in (3, 70):  # one block of rows, and two (blocks are 64 rows)
        np.testing.assert_array_equal(
            tk.binary_linear(x[:m], pw, bias=bias, activation_scale=True, out_threshold=t),
            ref.binary_linear(x[:m], pw, bias=bias, activation_scale=True, out_threshold=t),
        )


def test_activation_scale_on_random_floats(isa_name):
    """beta is a float64 sum in a kernel-specific order rounded to float32: within 1 ulp of
    the reference's; the bits output equals pack_bits of the same call's float output."""
    rng = np.random.default_rng(9)
    k = 1000
    x = rng.standard_normal((20, k)).astype(np.float32)
    pw = tk.pack_weights(rng.standard_normal((50, k)))
    y = tk.binary_linear(x, pw, activation_scale=True)
    assert_ran(isa_name)
    y_ref = ref.binary_linear(x, pw, activation_scale=True)
    # a 1-ulp difference in beta moves y by at most ~2 ulp (two float32 roundings follow)
    np.testing.assert_allclose(y, y_ref, rtol=3 * 2.0**-24, atol=0)
    t = rng.standard_normal(50).astype(np.float32)
    np.testing.assert_array_equal(tk.binary_linear(x, pw, activation_scale=True, out_threshold=t), tk.pack_bits(y, t))


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_])
def test_input_dtypes(isa_name, dtype):
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((9, 90)) * 4).astype(dtype)
    pw = tk.pack_weights(rng.standard_normal((6, 90)))
    bias = rng.standard_normal(6)
    for t in (0.0, 1, 0.5):
        for act in (False, True):
            expected = ref.binary_linear(x, pw, threshold=t, bias=bias, activation_scale=act)
            got = tk.binary_linear(x, pw, threshold=t, bias=bias, activation_scale=act)
            if act and dtype in (np.float64, np.int64, np.int32):
                # beta summed in float64 then rounded: may differ from numpy's pairwise sum by 1 ulp
                np.testing.assert_allclose(got, expected, rtol=3 * 2.0**-24)
            else:
                np.testing.assert_array_equal(got, expected)
            assert_ran(isa_name)


def test_packed_input_and_chaining(isa_name):
    """Layer 1 emits bits, layer 2 consumes them: the same as the reference chain."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((10, 300)).astype(np.float32)
    w1, w2 = rng.standard_normal((130, 300)), rng.standard_normal((7, 130))
    pw1, pw2 = tk.pack_weights(w1), tk.pack_weights(w2, scale=signed_scales(rng, 7))
    at = tk.AdaptiveThreshold(300).update(x)
    t_mid = rng.standard_normal(130) * 0.1
    h = tk.binary_linear(x, pw1, threshold=at.threshold, bias=np.ones(130), out_threshold=t_mid)
    assert h.shape == (10, 3) and h.dtype == np.uint64
    h_ref = ref.binary_linear(x, pw1, threshold=at.threshold, bias=np.ones(130), out_threshold=t_mid)
    np.testing.assert_array_equal(h, h_ref)
    y = tk.binary_linear(h, pw2, bias=np.arange(7.0))
    np.testing.assert_array_equal(y, ref.binary_linear(h_ref, pw2, bias=np.arange(7.0)))
    assert_ran(isa_name)
    # packed input == the same real input
    np.testing.assert_array_equal(tk.binary_linear(tk.pack_bits(x), pw1), tk.binary_linear(x, pw1))


def test_wide_input_with_activation_scale_uses_real_values(isa_name):
    """float64 inputs are binarized by numpy; beta must still come from the real values."""
    rng = np.random.default_rng(22)
    x = dyadic(rng, (12, 200)).astype(np.float64) * 3
    pw = tk.pack_weights(rng.standard_normal((33, 200)))
    np.testing.assert_array_equal(tk.binary_linear(x, pw, activation_scale=True),
                                  ref.binary_linear(x, pw, activation_scale=True))
    t = rng.standard_normal(33)
    np.testing.assert_array_equal(tk.binary_linear(x, pw, activation_scale=True, out_threshold=t),
                                  ref.binary_linear(x, pw, activation_scale=True, out_threshold=t))
    assert_ran(isa_name)


def test_scale_none_and_batch_dims(isa_name):
    rng = np.random.default_rng(23)
    w = rng.standard_normal((10, 100))
    pw = tk.pack_weights(w, scale=None)
    x = rng.standard_normal((2, 3, 4, 100)).astype(np.float32)
    y = tk.binary_linear(x, pw)
    assert y.shape == (2, 3, 4, 10)
    np.testing.assert_array_equal(y, plain_matmul(x.reshape(-1, 100), w).reshape(2, 3, 4, 10).astype(np.float32))
    v = tk.binary_linear(x[0, 0, 0], pw, out_threshold=0)
    assert v.shape == (1,)
    np.testing.assert_array_equal(v, tk.pack_bits(y[0, 0, 0]))
    assert_ran(isa_name)


def test_zero_size_dims(isa_name):
    pw = tk.pack_weights(np.ones((5, 70)))
    assert tk.binary_linear(np.zeros((0, 70)), pw).shape == (0, 5)
    assert tk.binary_linear(np.zeros((2, 0, 70)), pw, out_threshold=0).shape == (2, 0, 1)
    assert tk.binary_linear(np.zeros((3, 70)), tk.pack_weights(np.ones((0, 70)))).shape == (3, 0)
    assert tk.binary_linear(np.zeros((3, 70)), tk.pack_weights(np.ones((0, 70))), out_threshold=0).shape == (3, 0)
    # K = 0: dot products 0, beta = mean of nothing = 0, so y = bias
    pw0 = tk.pack_weights(np.ones((4, 0)), scale=np.arange(4.0))
    bias = np.array([1.0, -2.0, 0.0, 3.5])
    for act in (False, True):
        y = tk.binary_linear(np.zeros((3, 0), np.float32), pw0, bias=bias, activation_scale=act)
        assert_ran(isa_name)
        np.testing.assert_array_equal(y, np.broadcast_to(bias.astype(np.float32), (3, 4)))
        yb = tk.binary_linear(np.zeros((9, 0), np.float32), pw0, bias=bias, activation_scale=act, out_threshold=0.0)
        np.testing.assert_array_equal(yb, np.full((9, 1), 0b1101, np.uint64))
    np.testing.assert_array_equal(tk.binary_linear(np.zeros((2, 0), np.uint64), pw0, bias=bias),
                                  np.broadcast_to(bias.astype(np.float32), (2, 4)))


def test_out_argument_and_aliasing(isa_name):
    rng = np.random.default_rng(24)
    x = rng.standard_normal((2, 4, 65)).astype(np.float32)
    pw = tk.pack_weights(rng.standard_normal((7, 65)))
    out = np.full((2, 4, 7), 12345, dtype=np.float32)
    assert tk.binary_linear(x, pw, out=out) is out
    np.testing.assert_array_equal(out, ref.binary_linear(x, pw))
    outb = np.full((2, 4, 1), 99, dtype=np.uint64)
    assert tk.binary_linear(x, pw, out_threshold=0.5, out=outb) is outb
    np.testing.assert_array_equal(outb, ref.binary_linear(x, pw, out_threshold=0.5))
    # out's memory is also x's
    buf = rng.standard_normal((70, 64)).astype(np.float32)
    pw64 = tk.pack_weights(rng.standard_normal((64, 64)))
    expected = tk.binary_linear(buf.copy(), pw64)
    np.testing.assert_array_equal(tk.binary_linear(buf, pw64, out=buf), expected)
    assert_ran(isa_name)


def test_threads_argument(isa_name):
    rng = np.random.default_rng(25)
    x = rng.standard_normal((9, 130))
    pw = tk.pack_weights(rng.standard_normal((11, 130)))
    expected = ref.binary_linear(x, pw)
    for threads in (None, 1, 2, 64):
        np.testing.assert_array_equal(tk.binary_linear(x, pw, threads=threads), expected)
        assert_ran(isa_name)
