"""The oracle itself, checked against the plainest numpy expressions."""

import numpy as np
import pytest

from takane_kernels import reference as ref
from takane_kernels._shapes import TEST_K

from conftest import plain_matmul, plain_signs


@pytest.mark.parametrize("k", TEST_K)
def test_reference_matmul_matches_plain_numpy(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((9, k))
    w = rng.standard_normal((7, k))
    x[0, : min(k, 5)] = 0.0  # exactly the threshold: +1
    expected = plain_matmul(x, w)
    pw = ref.pack_weights(w)
    got = ref.binary_matmul(x, pw)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("k", TEST_K)
def test_reference_routes_agree(k):
    rng = np.random.default_rng(100 + k)
    xb = ref.pack_bits(rng.standard_normal((5, k)))
    wb = ref.pack_bits(rng.standard_normal((6, k)))
    np.testing.assert_array_equal(ref.matmul_unpacked(xb, wb, k), ref.matmul_popcount(xb, wb, k))


def test_reference_pack_is_the_documented_layout():
    # element j of a row is bit j % 64 of word j // 64, bit 1 = +1
    k = 130
    a = -np.ones((1, k))
    for j in (0, 5, 63, 64, 100, 129):
        a[0, j] = 1.0
    expected = [(1 << 0) | (1 << 5) | (1 << 63), (1 << 0) | (1 << 36), 1 << 1]
    np.testing.assert_array_equal(ref.pack_bits(a), np.array([expected], dtype=np.uint64))


@pytest.mark.parametrize("k", TEST_K)
def test_reference_unpack_roundtrip(k):
    rng = np.random.default_rng(k)
    a = rng.standard_normal((3, k))
    np.testing.assert_array_equal(ref.unpack_bits(ref.pack_bits(a), k), plain_signs(a))


def test_reference_per_channel_threshold():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 70))
    t = rng.standard_normal(70)
    w = rng.standard_normal((3, 70))
    np.testing.assert_array_equal(ref.binary_matmul(x, ref.pack_weights(w), threshold=t), plain_matmul(x, w, t))
