"""Converters: np.packbits byte layout (both bit orders) and the opposite polarity (Larq)."""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels._shapes import TEST_K


@pytest.mark.parametrize("k", (0,) + TEST_K)
@pytest.mark.parametrize("bitorder", ["big", "little"])
def test_packbits_round_trip_matches_numpy(k, bitorder):
    rng = np.random.default_rng(k)
    v = rng.standard_normal((3, 2, k))
    t = rng.standard_normal(k) * 0.3
    ours = tk.pack_bits(v, t)
    theirs = np.packbits(v >= t, axis=-1, bitorder=bitorder)
    np.testing.assert_array_equal(tk.from_packbits(theirs, k, bitorder=bitorder), ours)
    np.testing.assert_array_equal(tk.to_packbits(ours, k, bitorder=bitorder), theirs)
    assert tk.to_packbits(ours, k, bitorder=bitorder).dtype == np.uint8
    # the documented one-liner equivalent
    np.testing.assert_array_equal(
        tk.pack_bits(np.unpackbits(theirs, axis=-1, count=k, bitorder=bitorder), 0.5), ours
    )


def test_packbits_default_is_numpys_big_endian():
    v = np.array([1.0, -1, -1, -1, -1, -1, -1, -1, 1])  # element 0 set: big order -> 0x80
    b = np.packbits(v >= 0)
    assert b.tolist() == [0x80, 0x80]
    np.testing.assert_array_equal(tk.from_packbits(b, 9), tk.pack_bits(v))
    assert tk.pack_bits(v).tolist() == [0b1_0000_0001]


def test_packbits_validation():
    with pytest.raises(TypeError, match="uint8"):
        tk.from_packbits(np.zeros(2, np.int8), 9)
    with pytest.raises(TypeError, match="numpy uint8 array"):
        tk.from_packbits([0, 0], 9)
    with pytest.raises(ValueError, match=r"ceil\(k/8\) = 2"):
        tk.from_packbits(np.zeros(3, np.uint8), 9)
    with pytest.raises(ValueError, match="padding"):
        tk.from_packbits(np.array([0, 0x40], np.uint8), 9)  # big order: bit 1 of byte 1 is element 9
    with pytest.raises(ValueError, match="padding"):
        tk.from_packbits(np.array([0, 0x02], np.uint8), 9, bitorder="little")
    with pytest.raises(ValueError, match="bitorder"):
        tk.from_packbits(np.zeros(2, np.uint8), 9, bitorder="middle")
    with pytest.raises(ValueError, match="padding"):
        tk.to_packbits(np.array([1 << 20], np.uint64), 9)
    with pytest.raises(TypeError, match="uint64"):
        tk.to_packbits(np.zeros(1, np.int64), 9)


@pytest.mark.parametrize("k", (0,) + TEST_K)
def test_flip_polarity(k):
    rng = np.random.default_rng(k + 1)
    v = rng.standard_normal((4, k))
    v[0, : k // 2] = 0.0  # zero is +1 in both conventions (Larq: bit set iff negative)
    ours = tk.pack_bits(v)  # bit 1 iff v >= 0
    larq = tk.pack_bits(np.where(v < 0, 1.0, -1.0))  # bit 1 iff v < 0
    np.testing.assert_array_equal(tk.flip_polarity(larq, k), ours)
    np.testing.assert_array_equal(tk.flip_polarity(ours, k), larq)
    np.testing.assert_array_equal(tk.flip_polarity(tk.flip_polarity(ours, k), k), ours)
    np.testing.assert_array_equal(tk.unpack_bits(tk.flip_polarity(ours, k), k), -tk.unpack_bits(ours, k))
    np.testing.assert_array_equal(tk.flip_polarity(larq, k), tk.pack_bits(tk.unpack_bits(larq, k) < 0, 0.5))


def test_larq_int32_words_recipe():
    """The docstring's recipe for Larq Compute Engine's int32 words (bit set = negative)."""
    rng = np.random.default_rng(5)
    k = 70
    v = rng.standard_normal((3, k))
    neg = np.zeros((3, 96), bool)
    neg[:, :k] = v < 0
    lce = np.packbits(neg, axis=-1, bitorder="little").view("<i4")  # (3, ceil(k/32)) int32
    assert lce.shape == (3, 3)
    got = tk.flip_polarity(tk.from_packbits(lce.view(np.uint8)[..., : (k + 7) // 8], k, bitorder="little"), k)
    np.testing.assert_array_equal(got, tk.pack_bits(v))


def test_flip_validation():
    with pytest.raises(ValueError, match="padding"):
        tk.flip_polarity(np.array([1 << 63], np.uint64), 9)
    with pytest.raises(ValueError, match="ceil"):
        tk.flip_polarity(np.zeros((2, 3), np.uint64), 9)
