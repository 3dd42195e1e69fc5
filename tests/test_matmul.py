"""W1A1 binary_matmul against the oracle: every ISA, every tile edge, exact."""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._shapes import TEST_K, TEST_MN

from conftest import assert_ran, plain_matmul

pytestmark = pytest.mark.usefixtures("on_isa")


@pytest.mark.parametrize("k", TEST_K)
def test_shape_grid_exact(isa_name, k):
    """Every M, N in TEST_MN at this K, float activations and packed activations."""
    rng = np.random.default_rng(k)
    big = max(TEST_MN)
    x_all = rng.standard_normal((big, k)).astype(np.float32)
    w_all = rng.standard_normal((big, k)).astype(np.float32)
    pw_all = tk.pack_weights(w_all)
    expected_all = ref.binary_matmul(x_all, ref.pack_weights(w_all))
    xbits_all = ref.pack_bits(x_all)
    for m in TEST_MN:
        for n in TEST_MN:
            pw = tk.PackedWeights(pw_all.bits[:n], k)
            y = tk.binary_matmul(x_all[:m], pw)
            assert y.shape == (m, n) and y.dtype == np.int32
            np.testing.assert_array_equal(y, expected_all[:m, :n], err_msg=f"m={m} n={n} k={k}")
            y2 = tk.binary_matmul(xbits_all[:m], pw_all.bits[:n], k=k)
            np.testing.assert_array_equal(y2, expected_all[:m, :n], err_msg=f"packed m={m} n={n} k={k}")
            if m and n:
                assert_ran(isa_name)


@pytest.mark.parametrize("k", (1, 64, 65, 4097))
def test_extreme_values_all_agree_all_disagree(isa_name, k):
    ones = np.ones((3, k), dtype=np.float32)
    pw = tk.pack_weights(np.concatenate([ones, -ones]))
    y = tk.binary_matmul(np.concatenate([ones, -ones]), pw)
    assert_ran(isa_name)
    np.testing.assert_array_equal(y[:3, :3], k)
    np.testing.assert_array_equal(y[:3, 3:], -k)
    np.testing.assert_array_equal(y[3:, 3:], k)


def test_matches_plainest_numpy(isa_name):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((13, 300))
    w = rng.standard_normal((21, 300))
    t = rng.standard_normal(300) * 0.3
    np.testing.assert_array_equal(tk.binary_matmul(x, tk.pack_weights(w), threshold=t), plain_matmul(x, w, t))
    assert_ran(isa_name)


def test_batch_dims_and_1d(isa_name):
    rng = np.random.default_rng(12)
    w = rng.standard_normal((10, 100))
    pw = tk.pack_weights(w)
    x = rng.standard_normal((2, 3, 4, 100)).astype(np.float32)
    y = tk.binary_matmul(x, pw)
    assert y.shape == (2, 3, 4, 10)
    np.testing.assert_array_equal(y, plain_matmul(x.reshape(-1, 100), w).reshape(2, 3, 4, 10))
    v = tk.binary_matmul(x[0, 0, 0], pw)
    assert v.shape == (10,)
    np.testing.assert_array_equal(v, y[0, 0, 0])
    packed = tk.pack_bits(x)
    np.testing.assert_array_equal(tk.binary_matmul(packed, pw), y)
    np.testing.assert_array_equal(tk.binary_matmul(packed[1, 2, 3], pw), y[1, 2, 3])
    assert_ran(isa_name)


def test_zero_size_dims(isa_name):
    pw = tk.pack_weights(np.ones((5, 70)))
    assert tk.binary_matmul(np.zeros((0, 70)), pw).shape == (0, 5)
    assert tk.binary_matmul(np.zeros((2, 0, 70)), pw).shape == (2, 0, 5)
    assert tk.binary_matmul(np.zeros((3, 70)), tk.pack_weights(np.ones((0, 70)))).shape == (3, 0)
    # K = 0: every dot product of empty rows is 0
    y = tk.binary_matmul(np.zeros((3, 0)), tk.pack_weights(np.ones((4, 0))))
    assert y.shape == (3, 4)
    np.testing.assert_array_equal(y, 0)
    assert_ran(isa_name)
    y = tk.binary_matmul(np.zeros((3, 0), dtype=np.uint64), np.zeros((4, 0), dtype=np.uint64), k=0)
    np.testing.assert_array_equal(y, np.zeros((3, 4)))


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_])
def test_input_dtypes(isa_name, dtype):
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((5, 90)) * 4).astype(dtype)
    w = rng.standard_normal((6, 90))
    pw = tk.pack_weights(w)
    for t in (0.0, 1, 0.5):
        np.testing.assert_array_equal(tk.binary_matmul(x, pw, threshold=t), plain_matmul(x, w, t))
        assert_ran(isa_name)


def test_non_contiguous_inputs(isa_name):
    rng = np.random.default_rng(14)
    xb = rng.standard_normal((10, 400)).astype(np.float32)
    wb = rng.standard_normal((12, 400))
    x = xb[::2, ::3]  # (5, 134)
    w = wb[1::2, ::3]
    pw = tk.pack_weights(w)
    expected = plain_matmul(x, w)
    np.testing.assert_array_equal(tk.binary_matmul(x, pw), expected)
    xbits = np.asfortranarray(tk.pack_bits(x))
    wbits = np.asfortranarray(pw.bits)
    np.testing.assert_array_equal(tk.binary_matmul(xbits, wbits, k=134), expected)
    assert_ran(isa_name)


def test_out_argument(isa_name):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 4, 65)).astype(np.float32)
    w = rng.standard_normal((7, 65))
    pw = tk.pack_weights(w)
    out = np.full((2, 4, 7), 12345, dtype=np.int32)
    y = tk.binary_matmul(x, pw, out=out)
    assert y is out
    np.testing.assert_array_equal(out, plain_matmul(x.reshape(-1, 65), w).reshape(2, 4, 7))
    assert_ran(isa_name)


def test_out_aliasing_an_input_is_safe(isa_name):
    # out's memory is also x's: the result must equal the non-aliased result
    rng = np.random.default_rng(16)
    buf = np.zeros((70, 64), dtype=np.int32)
    x = buf.view(np.float32)
    x[...] = rng.standard_normal(x.shape)
    pw = tk.pack_weights(rng.standard_normal((64, 64)))
    expected = tk.binary_matmul(x.copy(), pw)
    got = tk.binary_matmul(x, pw, out=buf)
    np.testing.assert_array_equal(got, expected)
    assert_ran(isa_name)


def test_threads_argument(isa_name):
    rng = np.random.default_rng(17)
    x = rng.standard_normal((9, 130))
    w = rng.standard_normal((11, 130))
    pw = tk.pack_weights(w)
    for threads in (None, 1, 2, 64):
        np.testing.assert_array_equal(tk.binary_matmul(x, pw, threads=threads), plain_matmul(x, w))
        assert_ran(isa_name)


def test_scale_is_ignored_by_binary_matmul(isa_name):
    rng = np.random.default_rng(18)
    w = rng.standard_normal((4, 70))
    x = rng.standard_normal((3, 70))
    a = tk.binary_matmul(x, tk.pack_weights(w, scale="mean_abs"))
    b = tk.binary_matmul(x, tk.pack_weights(w, scale=None))
    np.testing.assert_array_equal(a, b)
    assert_ran(isa_name)


@pytest.mark.parametrize("k", (32767, 32768, 32833, 40000))
def test_long_rows(isa_name, k):
    """Rows past 512 words take the AVX2 kernel's non-split tiles and many byte-count
    flushes; every M remainder of the 4-row tile and a partial panel."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((7, k)).astype(np.float32)
    w = rng.standard_normal((19, k)).astype(np.float32)
    pw = tk.pack_weights(w)
    expected = ref.binary_matmul(x, ref.pack_weights(w))
    for m in (1, 2, 3, 4, 5, 7):
        np.testing.assert_array_equal(tk.binary_matmul(x[:m], pw), expected[:m])
        assert_ran(isa_name)


@pytest.mark.parametrize("k", (1, 63, 64, 65, 130, 1000, 4097))
def test_small_batch_decode_exact(isa_name, k):
    """M = 1..17 activation rows against prepacked weights (the small-batch decode path,
    gemv_m on AVX-512, which streams each weight panel once for up to 8 rows and splits
    9..16 rows into two chunks; 17 rows go back to the panel tile): ragged N across the
    64-panel call and the L2 block, threads 1 and 2, exact against the oracle."""
    rng = np.random.default_rng(k + 7)
    x = rng.standard_normal((17, k)).astype(np.float32)
    xbits = tk.pack_bits(x)
    for n in (1, 7, 9, 65, 600):
        w = rng.standard_normal((n, k)).astype(np.float32)
        pw = tk.pack_weights(w)
        expected = ref.binary_matmul(x, ref.pack_weights(w))
        for m in range(1, 18):
            for threads in (1, 2):
                y = tk.binary_matmul(xbits[:m], pw, threads=threads)
                np.testing.assert_array_equal(y, expected[:m], err_msg=f"m={m} n={n} k={k} t={threads}")
                yf = tk.binary_matmul(x[:m], pw, threads=threads)
                np.testing.assert_array_equal(yf, expected[:m], err_msg=f"float m={m} n={n} k={k} t={threads}")
    assert_ran(isa_name)
