"""The bit format (DESIGN §2), through the C-backed packers, on every ISA."""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._shapes import TEST_K

from conftest import assert_ran, plain_signs

pytestmark = pytest.mark.usefixtures("on_isa")


def test_polarity_and_lsb_first_order(isa_name):
    a = -np.ones(130, dtype=np.float32)
    for j in (0, 5, 63, 64, 100, 129):
        a[j] = 1.0
    bits = tk.pack_bits(a)
    assert_ran(isa_name)
    assert bits.dtype == np.uint64 and bits.shape == (3,) and bits.flags.c_contiguous
    assert bits.tolist() == [(1 << 0) | (1 << 5) | (1 << 63), (1 << 0) | (1 << 36), 1 << 1]


@pytest.mark.parametrize("k", TEST_K)
def test_padding_bits_are_zero_and_roundtrip(isa_name, k):
    a = np.ones((3, k), dtype=np.float32)  # all +1: every valid bit set, padding must stay 0
    bits = tk.pack_bits(a)
    assert_ran(isa_name)
    words = -(-k // 64)
    assert bits.shape == (3, words)
    assert bin(int(bits[0, -1])).count("1") == (k % 64 or 64)
    rng = np.random.default_rng(k)
    b = rng.standard_normal((2, 5, k)).astype(np.float32)
    packed = tk.pack_bits(b)
    np.testing.assert_array_equal(packed, ref.pack_bits(b))
    np.testing.assert_array_equal(tk.unpack_bits(packed, k), plain_signs(b))


def test_zero_and_negative_zero_are_plus_one(isa_name):
    a = np.array([0.0, -0.0, -1e-45, 1e-45, -np.inf, np.inf], dtype=np.float32)
    assert tk.unpack_bits(tk.pack_bits(a), 6).tolist() == [1, 1, -1, 1, -1, 1]
    assert_ran(isa_name)


@pytest.mark.parametrize("k", (1, 63, 64, 65, 129))
def test_values_equal_to_threshold_are_plus_one(isa_name, k):
    rng = np.random.default_rng(k)
    t = rng.standard_normal(k).astype(np.float32)
    a = np.stack([t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)])
    got = tk.unpack_bits(tk.pack_bits(a, threshold=t), k)
    assert_ran(isa_name)
    assert (got[0] == 1).all() and (got[1] == -1).all() and (got[2] == 1).all()


def test_float64_threshold_is_exact_for_float32_input(isa_name):
    # 0.1 is not a float32: float32(0.1) > 0.1, the float32 just below is < 0.1
    below = np.nextafter(np.float32(0.1), np.float32(0))
    a = np.array([np.float32(0.1), below], dtype=np.float32)
    assert tk.unpack_bits(tk.pack_bits(a, threshold=0.1), 2).tolist() == [1, -1]
    # a threshold between two float32 values, given per channel in float64
    t = np.array([np.float64(np.float32(1.0)) + 2.0**-30] * 2)
    a = np.array([1.0, np.nextafter(np.float32(1.0), np.float32(2))], dtype=np.float32)
    assert tk.unpack_bits(tk.pack_bits(a, threshold=t), 2).tolist() == [-1, 1]
    assert_ran(isa_name)


@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.bool_]
)
def test_every_real_dtype(isa_name, dtype):
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((4, 77)) * 50).astype(dtype)
    for t in (0.0, 0.5, 3, -2.25):
        np.testing.assert_array_equal(tk.pack_bits(a, threshold=t), ref.pack_bits(a, threshold=t))
        assert_ran(isa_name)


def test_float64_input_beyond_float32_precision(isa_name):
    # 1 + 2**-40 >= 1 + 2**-41 in float64, but both round to 1.0f in float32
    a = np.array([1 + 2.0**-40, 1.0, -1e-300], dtype=np.float64)
    assert tk.unpack_bits(tk.pack_bits(a, threshold=1 + 2.0**-41), 3).tolist() == [1, -1, -1]
    assert tk.unpack_bits(tk.pack_bits(a), 3)[2] == -1  # -1e-300 is negative, not -0.0
    assert_ran(isa_name)


def test_batch_dims_and_non_contiguous(isa_name):
    rng = np.random.default_rng(5)
    base = rng.standard_normal((6, 4, 200)).astype(np.float32)
    view = base[::2, :, 3:150:2]  # non-contiguous in every axis
    np.testing.assert_array_equal(tk.pack_bits(view), ref.pack_bits(view))
    assert_ran(isa_name)
    assert tk.pack_bits(np.zeros((0, 5, 70))).shape == (0, 5, 2)
    assert tk.pack_bits(np.zeros((3, 0))).shape == (3, 0)
