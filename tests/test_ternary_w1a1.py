"""W1.58A1 (issue 23): ``binary_matmul(x, w)`` with ternary weights and ±1 activations.

The op is exact integer arithmetic (int32 sums of t * a, t in {-1, 0, +1}, a = ±1), so
every result is compared exactly against ``reference.binary_matmul`` (float64 BLAS on the
unpacked values), which is itself checked against the most obvious numpy, on every ISA
(the ``on_isa`` fixture forces it and asserts it ran), with K at and around every word
edge, M and N around the tile edges, threads 1 and 2, and K >= 2^20 with extreme inputs.
"""

import numpy as np
import pytest

import takane_kernels as tk
from conftest import assert_ran
from takane_kernels import reference as ref
from takane_kernels._ops import TernaryMatmul

KS = [1, 63, 64, 65, 127, 128, 129, 511, 513, 4097]


def _ternary(rng, n, k):
    return tk.pack_ternary(rng.standard_normal((n, k)))  # absmean: about a third zeros


def test_reference_is_the_obvious_numpy():
    rng = np.random.default_rng(0)
    for k in (1, 65, 300):
        w = _ternary(rng, 7, k)
        x = rng.standard_normal((4, k))
        t = rng.standard_normal(k)
        obvious = np.where(x >= t, 1, -1) @ w.to_dense().astype(np.int64).T
        np.testing.assert_array_equal(ref.binary_matmul(x, w, threshold=t), obvious)


@pytest.mark.parametrize("k", KS)
def test_matches_reference_every_isa(on_isa, isa_name, k):
    rng = np.random.default_rng(k)
    for m, n in [(1, 1), (1, 37), (3, 64), (17, 65), (129, 9)]:
        w = _ternary(rng, n, k)
        x = rng.standard_normal((m, k)).astype(np.float32)
        want = ref.binary_matmul(x, w)
        for threads in (1, 2):
            y = tk.binary_matmul(x, w, threads=threads)
            assert_ran(isa_name)
            assert y.dtype == np.int32 and y.shape == (m, n)
            np.testing.assert_array_equal(y, want)
        # already packed activations, the same result
        np.testing.assert_array_equal(tk.binary_matmul(tk.pack_bits(x), w), want)
        assert_ran(isa_name)


def test_forms_of_x_and_out(on_isa, isa_name):
    rng = np.random.default_rng(1)
    k, n = 200, 33
    w = _ternary(rng, n, k)
    x = rng.standard_normal((2, 3, k))
    t = rng.standard_normal(k).astype(np.float32)  # per-channel threshold
    want = ref.binary_matmul(x, w, threshold=t)
    np.testing.assert_array_equal(tk.binary_matmul(x, w, threshold=t), want)  # float64, 3-D
    np.testing.assert_array_equal(tk.binary_matmul(x[0, 1], w, threshold=t), want[0, 1])  # 1-D -> 1-D
    np.testing.assert_array_equal(tk.binary_matmul(x[:, :, ::-1].copy()[:, :, ::-1], w, threshold=t), want)
    out = np.empty((2, 3, n), np.int32)
    assert tk.binary_matmul(x, w, threshold=t, out=out) is out
    np.testing.assert_array_equal(out, want)
    op = TernaryMatmul(w, threshold=t, threads=1)  # bound once
    np.testing.assert_array_equal(op(x), want)
    np.testing.assert_array_equal(tk.binary_matmul(x, w, k=k), ref.binary_matmul(x, w))
    assert_ran(isa_name)


def test_zero_size_and_all_zero_weights():
    rng = np.random.default_rng(2)
    w = _ternary(rng, 5, 70)
    assert tk.binary_matmul(np.zeros((0, 70), np.float32), w).shape == (0, 5)
    w0 = _ternary(rng, 0, 70)
    assert tk.binary_matmul(np.ones((3, 70), np.float32), w0).shape == (3, 0)
    wk0 = tk.TernaryWeights(np.zeros((4, 0), np.uint64), np.zeros((4, 0), np.uint64), 0)
    np.testing.assert_array_equal(tk.binary_matmul(np.ones((2, 0), np.float32), wk0), np.zeros((2, 4), np.int32))
    zero = tk.TernaryWeights(np.zeros((3, 2), np.uint64), np.zeros((3, 2), np.uint64), 100)
    np.testing.assert_array_equal(tk.binary_matmul(rng.standard_normal((4, 100)), zero), np.zeros((4, 3), np.int32))


def test_scales_are_not_applied():
    """As binary_matmul with a PackedWeights: the integer sums only (scales belong to a layer)."""
    rng = np.random.default_rng(3)
    w = _ternary(rng, 6, 256)
    scaled = tk.TernaryWeights(w.sign, w.nonzero, 256, scale=np.full(6, 3.0), in_scale=np.full(256, 2.0),
                               group_scale=np.full((6, 2), 5.0), group_size=128, tensor_scale=7.0)
    x = rng.standard_normal((2, 256))
    np.testing.assert_array_equal(tk.binary_matmul(x, scaled), tk.binary_matmul(x, w))


def test_errors():
    rng = np.random.default_rng(4)
    w = _ternary(rng, 4, 100)
    with pytest.raises(ValueError, match="k=99 does not match the TernaryWeights' k=100"):
        tk.binary_matmul(np.ones((1, 100)), w, k=99)
    with pytest.raises(ValueError, match="100"):
        tk.binary_matmul(np.ones((1, 99), np.float32), w)
    with pytest.raises(ValueError, match="binary_matmul: x"):
        tk.binary_matmul(np.array([[1.0] * 50 + [np.nan] * 50], np.float32), w)
    bits = tk.pack_bits(np.ones((1, 100)))
    with pytest.raises(ValueError, match="threshold"):
        tk.binary_matmul(bits, w, threshold=0.5)
    bad = bits.copy()
    bad[0, -1] |= np.uint64(1) << np.uint64(63)  # a padding bit past K = 100
    with pytest.raises(ValueError, match="padding"):
        tk.binary_matmul(bad, w)
    with pytest.raises(TypeError, match="int32"):
        tk.binary_matmul(np.ones((2, 100)), w, out=np.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        tk.binary_matmul(np.ones((2, 100)), w, out=np.empty((2, 5), np.int32))
    with pytest.raises(ValueError, match="threads"):
        tk.binary_matmul(np.ones((2, 100)), w, threads=0)


@pytest.mark.parametrize("k", [2**20, 2**21 + 64 * 3 + 1])
def test_exact_at_large_k(on_isa, isa_name, k):
    """Extreme sums at K >= 2^20: every product +1 (row 0: t = sign(x) everywhere, sum K),
    every product -1 (row 1, sum -K), every other weight zero (row 2, sum K / 2 rounded
    up), all zero (row 3) — exact int32, for K odd and even."""
    x = np.where(np.arange(k) % 3 == 0, -1.0, 1.0).astype(np.float32)
    s = np.where(x > 0, 1, -1).astype(np.int8)
    t = np.stack([s, -s, np.where(np.arange(k) % 2 == 0, s, 0), np.zeros(k, np.int8)])
    words = -(-k // 64)

    def plane(mask):
        padded = np.zeros((4, words * 64), bool)
        padded[:, :k] = mask
        return np.packbits(padded, axis=-1, bitorder="little").view("<u8")

    w = tk.TernaryWeights(plane(t > 0), plane(t != 0), k)
    want = np.array([k, -k, (k + 1) // 2, 0], np.int32)
    for threads in (1, 2):
        np.testing.assert_array_equal(tk.binary_matmul(x, w, threads=threads), want)
        assert_ran(isa_name)
    np.testing.assert_array_equal(tk.binary_matmul(tk.pack_bits(x[None]), w)[0], want)
