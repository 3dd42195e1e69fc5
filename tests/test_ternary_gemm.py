"""The ternary int8_row prefill GEMM (issue 23; csrc/kernels/ternary/ternary_gemm_<isa>.c,
the loops in csrc/src/ternary.c): from M = 8 rows a set with a GEMM (AVX-512) expands the
weights to bytes once per strip and runs a VPDPBUSD register tile; below it, and on the other
sets, the panel kernels run. Every row's quantization is independent of the other rows, so
one call on M rows must give bit for bit what M one-row calls (the panel kernels) give — on
every ISA (where a set has no GEMM both sides are panel kernels, and the test still checks
them against the reference) — and stay within the reference's bound."""

import numpy as np
import pytest

import takane_kernels as tk
from conftest import assert_ran
from takane_kernels import reference as ref

# at or past the GEMM's crossover (min_m = 8 on AVX-512), past one row block (96) and ragged
# against the tile's 4 rows
MS = (8, 19, 101)


def _rows_one_by_one(x, tw, **kw):
    """The same op one row per call: M = 1 always runs the panel kernels."""
    return np.vstack([tk.binary_weight_matmul(x[i:i + 1], tw, activations="int8_row", **kw)
                      for i in range(x.shape[0])])


def _planes(t):
    """Planes of an int (N, K) {-1, 0, 1} array with numpy's bit packing (little bit order:
    column c is bit c % 64 of word c // 64)."""
    def plane(b):
        pad = np.zeros((t.shape[0], -(-t.shape[1] // 64) * 64), np.uint8)
        pad[:, :t.shape[1]] = b
        return np.packbits(pad, axis=1, bitorder="little").view("<u8").astype(np.uint64)
    return plane(t > 0), plane(t != 0)


def _weights(rng, n, k):
    """Ungrouped, absmean (tensor scale) and threshold packing, in_scale, and group sizes
    64 .. 64 * 13 (partial last groups where k is ragged)."""
    w = rng.standard_normal((n, k))
    out = [tk.pack_ternary(w), tk.pack_ternary(w, threshold=0.7)]
    for g in (64, 128, 256, 64 * 13):
        if g <= 64 * -(-k // 64):
            out.append(tk.pack_ternary(w, threshold=0.3, group_size=g))
    t = tk.pack_ternary(w, threshold=0.5)
    out.append(tk.TernaryWeights(t.sign, t.nonzero, k, in_scale=rng.uniform(0.5, 2, k).astype(np.float32),
                                 scale=rng.uniform(0.5, 2, n).astype(np.float32)))
    return out


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("n,k", [(1, 64), (47, 300), (49, 64 * 9 + 3), (130, 1000), (100, 64 * 40)])
def test_gemm_bit_identical_to_panels(on_isa, isa_name, m, n, k):
    rng = np.random.default_rng(m * 1000 + n + k)
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for tw in _weights(rng, n, k):
        for b in (None, bias):
            y = tk.binary_weight_matmul(x, tw, activations="int8_row", bias=b)
            assert_ran(isa_name)
            np.testing.assert_array_equal(y, _rows_one_by_one(x, tw, bias=b), err_msg=repr(tw))
            np.testing.assert_array_equal(
                tk.binary_weight_matmul(x, tw, activations="int8_row", bias=b, threads=2), y)
            want = ref.binary_weight_matmul(x, tw, activations="int8_row", bias=b)
            bound = ref.binary_weight_matmul_error_bound(x, tw, activations="int8_row", bias=b)
            assert np.all(np.abs(y - want) <= bound), (tw, np.abs(y - want).max())


@pytest.mark.parametrize("group_size", [None, 64, 256, 64 * 13])
def test_gemm_integer_sums_exact(on_isa, isa_name, group_size):
    """Integer x with max |x| = 127 per row: q = x, d = 1; power-of-two group scales keep
    every product and partial sum exact, so y = sum_g g * (x @ t.T over g) exactly — ragged
    n (rows past the last strip) and k (a partial last group)."""
    rng = np.random.default_rng(7 if group_size is None else group_size)
    n, k, m = 53, 64 * 13 + 5, 37
    t = rng.integers(-1, 2, (n, k))
    sign, nz = _planes(t)
    x = rng.integers(-127, 128, (m, k)).astype(np.float32)
    x[:, 3] = 127
    if group_size is None:
        tw = tk.TernaryWeights(sign, nz, k)
        want = x.astype(np.int64) @ t.T
    else:
        ng = -(-k // group_size)
        gs = (2.0 ** rng.integers(-2, 3, (n, ng))).astype(np.float32)
        tw = tk.TernaryWeights(sign, nz, k, group_scale=gs, group_size=group_size)
        want = np.zeros((m, n))
        for g in range(ng):
            sl = slice(g * group_size, (g + 1) * group_size)
            want += (x[:, sl].astype(np.int64) @ t[:, sl].T) * gs[:, g]
    for threads in (1, 2):
        y = tk.binary_weight_matmul(x, tw, activations="int8_row", threads=threads)
        assert_ran(isa_name)
        np.testing.assert_array_equal(y, want.astype(np.float32))


def test_gemm_extreme_activations_at_the_chunk_bound(on_isa, isa_name):
    """Every product 127 (q = ±127 matching the weight's sign) at M = 16: a group of 2^21
    columns is the largest the GEMM sums in one int32 (2^16 blocks of 32 =
    TAKANE_TERNARY_CHUNK_BLOCKS, worst |partial| of (t + 1) q: 254 * 2^21 < 2^31); without
    groups K = 2^21 + 193 is past it (the panel kernels' chunked path serves it). The group
    sums are exact in float32; only the final add rounds."""
    k, m = 2**21 + 64 * 3 + 1, 16
    t = np.where(np.arange(k) % 2 == 0, -1, 1).astype(np.int8)
    words = -(-k // 64)
    ones = np.full(words, ~np.uint64(0), np.uint64)
    ones[-1] = np.uint64((1 << (k % 64)) - 1)
    alt = np.full(words, np.uint64(0xAAAAAAAAAAAAAAAA), np.uint64) & ones  # odd columns +1
    sign, nz = alt[None], ones[None]
    x = np.broadcast_to(t.astype(np.float32) * 127.0, (m, k))
    for group_size in (2**21, None):
        if group_size is None:
            tw = tk.TernaryWeights(sign, nz, k)
        else:
            tw = tk.TernaryWeights(sign, nz, k, group_scale=np.ones((1, -(-k // group_size)), np.float32),
                                   group_size=group_size)
        y = tk.binary_weight_matmul(x, tw, activations="int8_row")
        assert_ran(isa_name)
        np.testing.assert_array_equal(y, np.full((m, 1), np.float32(127 * k)), err_msg=str(group_size))
