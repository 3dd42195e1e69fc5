"""binary_weight_matmul (W1A-float) on every ISA: within the documented float32 error bound
of the float64 oracle everywhere, and exact where every partial sum is representable."""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._shapes import TEST_K, TEST_MN

from conftest import assert_ran

pytestmark = pytest.mark.usefixtures("on_isa")

# activation rows around every kernel's row tile (scalar 2, AVX2/AVX-512 4)
TEST_M = (0, 1, 2, 3, 4, 5, 8, 9)


def assert_within_bound(y, x, pw, bias=None, err_msg=""):
    expected = ref.binary_weight_matmul(x, pw, bias=bias)
    bound = ref.binary_weight_matmul_error_bound(x, pw, bias=bias)
    assert y.dtype == np.float32 and y.shape == expected.shape
    err = np.abs(y.astype(np.float64) - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), f"{err_msg}: error {err[worst]} > bound {bound[worst]} at {worst}"


def onebit_weights(rng, n, k):
    w = rng.standard_normal((n, k)) * (0.5 + rng.random(n))[:, None] * (0.5 + rng.random(k))
    return tk.pack_weights(w, scale="onebit")


@pytest.mark.parametrize("k", TEST_K)
def test_shape_grid_within_bound(isa_name, k):
    """Every M around the row tile, every N around every panel width (4, 8, 16)."""
    rng = np.random.default_rng(k)
    big_m, big_n = max(TEST_M), max(TEST_MN)
    x = rng.standard_normal((big_m, k)).astype(np.float32)
    pw = onebit_weights(rng, big_n, k)
    bias = rng.standard_normal(big_n)
    expected = ref.binary_weight_matmul(x, pw, bias=bias)
    bound = ref.binary_weight_matmul_error_bound(x, pw, bias=bias)
    for m in TEST_M:
        for n in TEST_MN:
            sub = tk.PackedWeights(pw.bits[:n], k, scale=pw.scale[:n], in_scale=pw.in_scale)
            y = tk.binary_weight_matmul(x[:m], sub, bias=bias[:n])
            assert y.shape == (m, n) and y.dtype == np.float32
            err = np.abs(y - expected[:m, :n])
            assert np.all(err <= bound[:m, :n]), f"m={m} n={n} k={k}: max err {err.max()}"
            if m and n:
                assert_ran(isa_name)


@pytest.mark.parametrize("k", TEST_K)
def test_exact_when_partial_sums_are_representable(isa_name, k):
    """Small-integer activations, power-of-two scales: every float32 partial sum is exact,
    so the result must equal the float64 oracle bit for bit (a single wrong sign, a
    dropped or doubled column, a misplaced tail would show)."""
    rng = np.random.default_rng(100 + k)
    m, n = 9, 33
    x = rng.integers(-16, 17, size=(m, k)).astype(np.float32)
    w = rng.standard_normal((n, k))
    in_scale = 2.0 ** rng.integers(-2, 3, size=k)
    scale = 2.0 ** rng.integers(-3, 4, size=n)
    bias = rng.integers(-50, 51, size=n).astype(np.float64)
    for kw in ({}, {"in_scale": in_scale}, {"scale": scale}, {"scale": scale, "in_scale": in_scale}):
        pw = tk.pack_weights(w, scale=kw.get("scale"), in_scale=kw.get("in_scale"))
        for b in (None, bias):
            y = tk.binary_weight_matmul(x, pw, bias=b)
            assert_ran(isa_name)
            np.testing.assert_array_equal(y, ref.binary_weight_matmul(x, pw, bias=b), err_msg=f"k={k} {sorted(kw)}")


def test_extreme_sign_patterns(isa_name):
    """All +1 and all -1 rows, alternating patterns: exact sums of exact inputs."""
    k = 4097
    x = np.ones((3, k), np.float32)
    x[1] = np.arange(k) % 7
    x[2] = -(np.arange(k) % 5)
    rows = np.stack([np.ones(k), -np.ones(k), np.where(np.arange(k) % 2, 1.0, -1.0), np.where(np.arange(k) % 3, 1.0, -1.0)])
    pw = tk.pack_weights(rows, scale=None)
    y = tk.binary_weight_matmul(x, pw)
    assert_ran(isa_name)
    np.testing.assert_array_equal(y, x.astype(np.float64) @ np.where(rows >= 0, 1.0, -1.0).T)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int8, np.int64, np.uint8, np.bool_])
def test_input_dtypes(isa_name, dtype):
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((5, 90)) * 4).astype(dtype)
    pw = onebit_weights(rng, 6, 90)
    y = tk.binary_weight_matmul(x, pw)
    assert_ran(isa_name)
    assert_within_bound(y, x, pw, err_msg=str(dtype))


def test_nan_and_inf_propagate(isa_name):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((4, 100)).astype(np.float32)
    x[1, 50] = np.nan
    x[2, 7] = np.inf
    pw = tk.pack_weights(rng.standard_normal((9, 100)), scale=None)
    y = tk.binary_weight_matmul(x, pw)
    assert_ran(isa_name)
    assert np.all(np.isnan(y[1]))  # every output includes every activation (weights are ±1)
    signs = tk.unpack_bits(pw.bits, 100)[:, 7]  # column 7's sign in each output row
    np.testing.assert_array_equal(y[2], np.inf * signs)
    assert np.all(np.isfinite(y[[0, 3]]))


def test_batch_dims_1d_and_zero_sizes(isa_name):
    rng = np.random.default_rng(15)
    pw = onebit_weights(rng, 10, 100)
    x = rng.standard_normal((2, 3, 4, 100)).astype(np.float32)
    y = tk.binary_weight_matmul(x, pw)
    assert y.shape == (2, 3, 4, 10)
    assert_within_bound(y, x, pw)
    np.testing.assert_array_equal(tk.binary_weight_matmul(x[1, 2, 3], pw), y[1, 2, 3])
    assert tk.binary_weight_matmul(np.zeros((0, 100)), pw).shape == (0, 10)
    assert tk.binary_weight_matmul(np.zeros((3, 100)), tk.pack_weights(np.ones((0, 100)))).shape == (3, 0)
    pw0 = tk.pack_weights(np.ones((4, 0)), scale=np.arange(4.0))
    bias = np.array([1.0, -2.0, 0.0, 3.5])
    y0 = tk.binary_weight_matmul(np.zeros((3, 0)), pw0, bias=bias)  # K = 0: empty sums, y = bias
    assert_ran(isa_name)
    np.testing.assert_array_equal(y0, np.broadcast_to(bias.astype(np.float32), (3, 4)))


def test_out_argument_and_aliasing(isa_name):
    rng = np.random.default_rng(16)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    pw = onebit_weights(rng, 64, 64)
    out = np.full((3, 64), 7.0, np.float32)
    assert tk.binary_weight_matmul(x, pw, out=out) is out
    assert_within_bound(out, x, pw)
    expected = tk.binary_weight_matmul(x.copy(), pw)
    np.testing.assert_array_equal(tk.binary_weight_matmul(x, pw, out=x), expected)  # out is x itself
    assert_ran(isa_name)


def test_same_result_for_any_row_blocking(isa_name):
    """A row's result does not depend on which other rows share its kernel tile."""
    rng = np.random.default_rng(17)
    x = rng.standard_normal((11, 515)).astype(np.float32)
    pw = onebit_weights(rng, 37, 515)
    full = tk.binary_weight_matmul(x, pw)
    for i in range(11):
        np.testing.assert_array_equal(tk.binary_weight_matmul(x[i], pw), full[i])
    assert_ran(isa_name)


def test_threads_argument(isa_name):
    rng = np.random.default_rng(18)
    x = rng.standard_normal((5, 130))
    pw = onebit_weights(rng, 11, 130)
    first = tk.binary_weight_matmul(x, pw)
    for threads in (None, 1, 2, 64):
        np.testing.assert_array_equal(tk.binary_weight_matmul(x, pw, threads=threads), first)
        assert_ran(isa_name)


def test_onebit_layer_approximates_the_float_layer(isa_name):
    """End to end: OneBit weights reproduce x @ (sign(W) * scale ⊗ in_scale).T, and that
    matrix is the best rank-1 sign-value approximation the SVD gives."""
    rng = np.random.default_rng(19)
    w = rng.standard_normal((48, 200)) * np.outer(1 + rng.random(48), 1 + rng.random(200))
    pw = tk.pack_weights(w, scale="onebit")
    approx = np.where(w >= 0, 1.0, -1.0) * np.outer(pw.scale, pw.in_scale)
    x = rng.standard_normal((6, 200)).astype(np.float32)
    y = tk.binary_weight_matmul(x, pw)
    assert_ran(isa_name)
    np.testing.assert_allclose(y, x.astype(np.float64) @ approx.T, rtol=1e-4, atol=1e-3)
    # the factorisation is closer to |W| than the XNOR-Net mean-abs scaling
    mean_abs = np.where(w >= 0, 1.0, -1.0) * np.abs(w).mean(axis=1, keepdims=True)
    assert np.linalg.norm(w - approx) < np.linalg.norm(w - mean_abs)


# ---- decode (M = 1) with group scales: the paired-tile kernel (gemv_groups_pair) ------------

def _grouped(rng, n, k, g, magnitudes=False):
    ng = -(-k // g)
    gs = rng.uniform(-2, 2, (n, ng))
    if magnitudes:  # scales spanning 2^-40 .. 2^40, products far from 1 in both directions
        gs = gs * 2.0 ** rng.integers(-40, 41, (n, ng))
    return tk.PackedWeights(tk.pack_bits(rng.standard_normal((n, k))), k,
                            scale=rng.uniform(0.5, 2, n).astype(np.float32),
                            in_scale=rng.uniform(0.5, 2, k).astype(np.float32),
                            group_scale=gs.astype(np.float32), group_size=g)


def _c_call(x, w, threads, group_scale=None):
    """The C call with the caller's row-major group scales (a signs-only handle)."""
    from takane_kernels._capi import weights_handle
    from takane_kernels._takane import ffi, lib

    h = weights_handle(w.bits, w.k)
    gs = w.group_scale if group_scale is None else group_scale
    y = np.full((x.shape[0], w.n), np.nan, np.float32)
    f = lambda a: ffi.NULL if a is None or a.size == 0 else ffi.from_buffer("float[]", a)  # noqa: E731
    st = lib.takane_binary_weight_matmul_prepacked_ex(
        h, x.shape[0], f(x), w.k, f(w.in_scale), f(w.scale), f(gs), w.group_size, ffi.NULL,
        lib.TAKANE_ACTIVATIONS_F32, ffi.from_buffer("float[]", y), w.n, threads)
    return st, y


# n: one partial tile, odd and even numbers of 16-row tiles, partial last tiles, tiles whose
# second 8-row panel is missing (n % 16 in 1..8)
@pytest.mark.parametrize("n", [1, 8, 15, 16, 17, 24, 31, 32, 33, 40, 48, 63, 64, 65, 100])
@pytest.mark.parametrize("k,g", [(64, 64), (65, 64), (200, 128), (513, 192), (1100, 256)])
def test_decode_with_group_scales(isa_name, n, k, g):
    """M = 1 with group scales (decode): within the bound of the oracle; bit-identical to
    the same row in a batch (whose rows go through the one-tile kernels), on 1 and 2
    threads, and with the scales carried by the handle or passed row-major per call."""
    rng = np.random.default_rng(n * 1009 + k + g)
    w = _grouped(rng, n, k, g)
    x = rng.standard_normal((3, k)).astype(np.float32)
    batch = tk.binary_weight_matmul(x, w, threads=1)
    for i in range(3):
        for threads in (1, 2):
            y = tk.binary_weight_matmul(x[i:i + 1], w, threads=threads)
            np.testing.assert_array_equal(y[0].view(np.uint32), batch[i].view(np.uint32))
            st, yc = _c_call(x[i:i + 1], w, threads)
            assert st == 0
            np.testing.assert_array_equal(yc[0].view(np.uint32), batch[i].view(np.uint32))
    assert_ran(isa_name)
    assert_within_bound(batch, x, w)


@pytest.mark.parametrize("n", [16, 33, 64])
def test_decode_with_group_scales_adversarial_magnitudes(isa_name, n):
    """Activations from 1e-20 to 1e20 with cancelling pairs, scales from 2^-40 to 2^40: the
    decode result stays within the documented bound (it depends on sum |x|, not on the
    result, so a cancelled sum must still be near its exact value)."""
    rng = np.random.default_rng(n)
    k, g = 1024, 128
    w = _grouped(rng, n, k, g, magnitudes=True)
    x = (rng.standard_normal(k) * 10.0 ** rng.integers(-20, 21, k)).astype(np.float32)
    x[1::2] = -x[::2]  # exact cancellation against equal weight signs
    x[:8] = [3e20, -3e20, 1e-20, 1.0, 2.0 ** -24, 1.0, -1.0, 7e19]  # finite products: no overflow
    y = tk.binary_weight_matmul(x[None], w)
    assert_ran(isa_name)
    assert np.isfinite(y).all()
    assert_within_bound(y, x[None], w)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("row", [3, 20, 40])  # first tile, second tile of a pair, an unpaired tile
def test_decode_non_finite_group_scale(isa_name, bad, row):
    rng = np.random.default_rng(5)
    w = _grouped(rng, 45, 256, 128)
    gs = np.array(w.group_scale)
    gs[row, 1] = bad
    st, _ = _c_call(rng.standard_normal((1, 256)).astype(np.float32), w, 1, group_scale=gs)
    from takane_kernels._takane import lib
    assert st == lib.TAKANE_ERR_NOT_FINITE
    assert_ran(isa_name)
