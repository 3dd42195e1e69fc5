"""Hostile and extreme inputs: each test is one row of the "bad input" table (docs/robustness.md).

Every public op must either compute the exact (integer) or bounded (float) answer, or
raise TypeError / ValueError naming the problem — never crash, hang, read out of bounds
or return a silently wrong number. The C entry points are also driven directly (through
the cffi ``lib``) with tiny buffers and absurd dimensions: validation must answer with a
status before any memory is touched. Large-K and 32-bit-overflow cases use zero pages
and row strides of 0, so no test allocates more than ~300 MB of real memory.
"""

from __future__ import annotations

import glob
import os
import sys
import zipfile

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref

from conftest import OPS, assert_ran, op_weights, plain_matmul

ffi, lib = tk._ffi, tk._lib
RNG = np.random.default_rng(7)
K = 70
W = RNG.standard_normal((5, K))
PW = tk.pack_weights(W)
X = RNG.standard_normal((3, K)).astype(np.float32)
I64_MAX = 2**63 - 1
# Under qemu (the CI's Haswell / Nehalem / aarch64 runs) the two tests that stream
# 2**26+ words per ISA take ~15-20 s each; they run natively and under ASan, and the
# index arithmetic they guard is the portable framework's (csrc/src), the same code on
# every ISA (kernels only see row pointers and a word count).
EMULATED = bool(os.environ.get("TAKANE_TEST_EMULATOR")) or os.environ.get("HYPOTHESIS_PROFILE") == "emulated"
heavy = pytest.mark.skipif(EMULATED, reason="streams 2**26+ words per ISA: run natively and in the asan job, not under qemu")


def all_ops(x, pw=PW, **kw):
    """Every op that takes real activations, as (name, callable) pairs."""
    return [
        ("pack_bits", lambda: tk.pack_bits(x, **kw)),
        ("binary_matmul", lambda: tk.binary_matmul(x, pw, **kw)),
        ("binary_matmul raw", lambda: tk.binary_matmul(x, pw.bits, k=pw.k, **kw)),
        ("binary_linear", lambda: tk.binary_linear(x, pw, **kw)),
        ("binary_linear bits", lambda: tk.binary_linear(x, pw, out_threshold=0.0, **kw)),
    ]


# ---- NaN and infinities ---------------------------------------------------------------

@pytest.mark.parametrize("where", ["first", "last", "tail_word", "every"])
def test_nan_activations(on_isa, where):
    """NaN has no sign: every binarizing op raises ValueError naming NaN, for every float
    dtype, wherever the NaN sits (first element, last, inside the partial tail word, all);
    W1A-float has no sign step: NaN propagates to exactly the rows that hold it."""
    pos = {"first": (0, 0), "last": (2, K - 1), "tail_word": (1, 64 + 3), "every": (slice(None), slice(None))}[where]
    for dtype in (np.float16, np.float32, np.float64):
        x = X.astype(dtype)
        x[pos] = np.nan
        for name, call in all_ops(x):
            with pytest.raises(ValueError, match="NaN"):
                call()
        y = tk.binary_weight_matmul(x, PW)
        rows_with_nan = np.isnan(x).any(axis=1)
        assert np.isnan(y[rows_with_nan]).all() and not np.isnan(y[~rows_with_nan]).any()
    with pytest.raises(ValueError, match="NaN"):  # a NaN in a non-contiguous view
        xv = np.repeat(X, 2, axis=1)
        xv[0, 2 * 69] = np.nan
        tk.binary_matmul(xv[:, ::2], PW)


@pytest.mark.parametrize("op", list(OPS))
def test_nan_in_every_op_of_the_table(on_isa, op):
    """Every op of the OPS table (conftest) on input with a NaN: the binarizing ops, Q8_0
    and int8_row (no block / row scale can be formed) raise ValueError; W1A-float propagates NaN to
    exactly the rows that hold it."""
    call, kind = OPS[op]
    ws = op_weights(np.random.default_rng(1), 9, K)
    x = X.copy()
    x[1, 64 + 3] = np.nan
    if kind == "f32":
        y = call(x, ws, None)
        assert np.isnan(y[1]).all() and not np.isnan(y[[0, 2]]).any()
    else:
        with pytest.raises(ValueError, match="NaN" if kind == "binary" else kind):
            call(x, ws, None)


def test_infinite_activations(on_isa, isa_name):
    """±inf have a sign: +inf -> +1, -inf -> -1, exactly, for every binarizing op; mean |x|
    (activation_scale) is then infinite: ValueError; W1A-float propagates ±inf / NaN."""
    x = X.copy()
    x[0, :10] = np.inf
    x[1, 60:70] = -np.inf
    x[2, :] = np.inf
    x[2, 1::2] = -np.inf
    for dtype in (np.float16, np.float32, np.float64):
        xd = x.astype(dtype)
        np.testing.assert_array_equal(tk.binary_matmul(xd, PW), plain_matmul(xd, W))
        assert_ran(isa_name)
        np.testing.assert_array_equal(tk.pack_bits(xd), ref.pack_bits(xd))
        np.testing.assert_array_equal(tk.binary_linear(xd, PW), ref.binary_linear(xd, PW))
        with pytest.raises(ValueError, match="not finite|infinite"):
            tk.binary_linear(xd, PW, activation_scale=True)
    y = tk.binary_weight_matmul(x, PW)
    assert not np.isfinite(y).any()  # +inf and -inf meet in every row: inf or NaN, never finite


def test_infinite_and_extreme_thresholds(on_isa, isa_name):
    """threshold = +inf: only +inf inputs give +1; -inf: everything gives +1; a float64
    threshold beyond the float32 range still compares exactly; NaN thresholds raise."""
    x = X.copy()
    x[0, 0] = np.inf
    for t in (np.inf, -np.inf, 1e300, -1e300, np.float64(np.finfo(np.float32).max) * 2):
        np.testing.assert_array_equal(tk.binary_matmul(x, PW, threshold=t), plain_matmul(x, W, t))
        assert_ran(isa_name)
    per_channel = np.where(np.arange(K) % 2, np.inf, -np.inf)
    np.testing.assert_array_equal(tk.binary_matmul(x, PW, threshold=per_channel), plain_matmul(x, W, per_channel))
    for bad in (np.nan, np.where(np.arange(K) == 69, np.nan, 0.0)):
        for name, call in all_ops(X, threshold=bad):
            with pytest.raises(ValueError, match="threshold contains NaN"):
                call()


def test_non_finite_scales_and_bias():
    """Scales and biases must be finite: ValueError when packing, and from the layers."""
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(ValueError, match="finite"):
            tk.pack_weights(W, scale=np.full(5, bad))
        with pytest.raises(ValueError, match="finite"):
            tk.pack_weights(W, in_scale=np.full(K, bad))
        with pytest.raises(ValueError, match="finite"):
            tk.binary_linear(X, PW, bias=np.full(5, bad))
        with pytest.raises(ValueError, match="finite"):
            tk.binary_weight_matmul(X, PW, bias=np.full(5, bad))
    with pytest.raises(ValueError, match="finite"):  # finite float64, infinite in float32
        tk.binary_linear(X, PW, bias=np.full(5, 1e300))


# ---- empty and extreme dimensions ---------------------------------------------------------

def test_zero_k(on_isa):
    """K = 0: every dot product is 0 (empty sum); layers give bias (or 0) exactly."""
    pw0 = tk.pack_weights(np.zeros((4, 0)), scale=np.full(4, 2.0))
    x0 = np.zeros((3, 0), np.float32)
    bias = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(tk.binary_matmul(x0, pw0), np.zeros((3, 4), np.int32))
    np.testing.assert_array_equal(tk.binary_matmul(np.zeros((3, 0), np.uint64), pw0.bits, k=0), np.zeros((3, 4)))
    assert tk.pack_bits(x0).shape == (3, 0)
    np.testing.assert_array_equal(tk.binary_linear(x0, pw0, bias=bias), np.broadcast_to(bias, (3, 4)))
    np.testing.assert_array_equal(tk.binary_linear(x0, pw0, activation_scale=True), np.zeros((3, 4)))
    np.testing.assert_array_equal(tk.binary_weight_matmul(x0, pw0, bias=bias), np.broadcast_to(bias, (3, 4)))


@pytest.mark.parametrize("m, n", [(0, 5), (3, 0), (0, 0)])
def test_zero_m_or_n(on_isa, m, n):
    """M or N = 0: empty results of the right shape and dtype, for every op and layout."""
    pw = tk.pack_weights(RNG.standard_normal((n, K)))
    x = RNG.standard_normal((m, K)).astype(np.float32)
    xb = tk.pack_bits(x)
    assert xb.shape == (m, 2)
    for y, dtype, last in (
        (tk.binary_matmul(x, pw), np.int32, n), (tk.binary_matmul(xb, pw), np.int32, n),
        (tk.binary_matmul(xb, pw.bits, k=K), np.int32, n), (tk.binary_linear(x, pw), np.float32, n),
        (tk.binary_linear(x, pw, out_threshold=0.0), np.uint64, (n + 63) // 64),
        (tk.binary_weight_matmul(x, pw), np.float32, n),
    ):
        assert y.shape == (m, last) and y.dtype == dtype
    x4 = np.zeros((2, 0, 3, K), np.float32)  # a zero batch dim in the middle
    assert tk.binary_matmul(x4, PW).shape == (2, 0, 3, 5)


@heavy
def test_k_at_max_exact(isa_name, on_isa):
    """K = TAKANE_MAX_K = 2**31 - 1, the largest K whose dot products fit int32: exact at
    both ends of the range (all bits equal: +K; all differ: -K, where 2 * popcount
    overflows int32 if computed narrowly). Zero pages keep the all-equal case free."""
    k = tk.MAX_K
    kw = (k + 63) // 64
    w = np.zeros((1, kw), np.uint64)  # calloc'd: untouched zero pages
    x = np.zeros((2, kw), np.uint64)
    x[1] = ~np.uint64(0)
    x[1, -1] = np.uint64((1 << (k % 64)) - 1)  # padding bit stays 0
    y = tk.binary_matmul(x, w, k=k)
    assert_ran(isa_name)
    np.testing.assert_array_equal(y, [[k], [-k]])
    del x
    with pytest.raises(ValueError, match="out of range"):
        tk.binary_matmul(np.zeros((1, kw), np.uint64), w, k=k + 1)
    with pytest.raises(ValueError, match="out of range"):
        tk.pack_bits(np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (1, k + 1), (0, 0)))


# ---- the C ABI: absurd dimensions against tiny buffers ---------------------------------------

def _u64(n=4):
    a = ffi.new("uint64_t[]", n)
    return a


def test_c_validation_before_touching_memory():
    """Every entry point answers absurd arguments with a status, with 1-element buffers:
    negative dims, K past TAKANE_MAX_K (by one and by 2**62), strides that make output
    rows overlap, negative threads, bad threshold lengths, NULL operands."""
    x, w, y, f = _u64(), _u64(), ffi.new("int32_t[]", 4), ffi.new("float[]", 4)
    yf, bits = ffi.new("float[]", 4), _u64()
    S = lib
    big = 2**62
    cases = [
        # (status expected, call)
        (S.TAKANE_ERR_NEGATIVE_DIMENSION, lambda: S.takane_binary_matmul(-1, 1, 1, x, 1, w, 1, y, 1, 1)),
        (S.TAKANE_ERR_NEGATIVE_DIMENSION, lambda: S.takane_binary_matmul(1, -1, 1, x, 1, w, 1, y, 1, 1)),
        (S.TAKANE_ERR_NEGATIVE_DIMENSION, lambda: S.takane_binary_matmul(1, 1, -1, x, 1, w, 1, y, 1, 1)),
        (S.TAKANE_ERR_K_TOO_LARGE, lambda: S.takane_binary_matmul(1, 1, tk.MAX_K + 1, x, 1, w, 1, y, 1, 1)),
        (S.TAKANE_ERR_K_TOO_LARGE, lambda: S.takane_binary_matmul(big, big, big, x, 1, w, 1, y, 1, 1)),
        (S.TAKANE_ERR_K_TOO_LARGE, lambda: S.takane_binary_matmul_f32(1, 1, I64_MAX, f, 1, f, 1, w, 1, y, 1, 1)),
        (S.TAKANE_ERR_K_TOO_LARGE, lambda: S.takane_pack_f32(1, tk.MAX_K + 1, f, 1, f, 1, bits, 1)),
        (S.TAKANE_ERR_BAD_STRIDE, lambda: S.takane_binary_matmul(big, big, 64, x, 1, w, 1, y, big - 1, 1)),
        (S.TAKANE_ERR_BAD_STRIDE, lambda: S.takane_binary_matmul(2, 2, 64, x, -1, w, 1, y, 2, 1)),
        (S.TAKANE_ERR_BAD_STRIDE, lambda: S.takane_pack_f32(big, 65, f, 65, f, 1, bits, 1)),
        (S.TAKANE_ERR_BAD_THREADS, lambda: S.takane_binary_matmul(1, 1, 1, x, 1, w, 1, y, 1, -1)),
        (S.TAKANE_ERR_BAD_THRESHOLD_LEN, lambda: S.takane_binary_matmul_f32(1, 1, 3, f, 3, f, 2, w, 1, y, 1, 1)),
        (S.TAKANE_ERR_BAD_THRESHOLD_LEN, lambda: S.takane_pack_f32(1, 3, f, 3, f, -1, bits, 1)),
        (S.TAKANE_ERR_NULL_POINTER, lambda: S.takane_binary_matmul(big, big, 1, ffi.NULL, 1, w, 1, y, big, 1)),
        (S.TAKANE_ERR_NULL_POINTER, lambda: S.takane_binary_matmul(1, 1, 1, x, 1, w, 1, ffi.NULL, 1, 1)),
        (S.TAKANE_ERR_NULL_POINTER, lambda: S.takane_binary_weight_matmul(1, 1, 1, ffi.NULL, 1, w, 1, ffi.NULL, ffi.NULL, ffi.NULL, yf, 1, 1)),
        (S.TAKANE_ERR_K_TOO_LARGE, lambda: S.takane_binary_weight_matmul(1, 1, big, f, 1, w, 1, ffi.NULL, ffi.NULL, ffi.NULL, yf, 1, 1)),
        (S.TAKANE_ERR_K_TOO_LARGE, lambda: S.takane_binary_linear(1, 1, big, x, 1, w, 1, ffi.NULL, ffi.NULL, ffi.NULL, yf, 1, 1)),
        (S.TAKANE_ERR_NEGATIVE_DIMENSION, lambda: S.takane_binary_linear_bits(-big, 1, 1, x, 1, w, 1, ffi.NULL, ffi.NULL, ffi.NULL, f, 1, bits, 1, 1)),
        (S.TAKANE_ERR_NEGATIVE_DIMENSION, lambda: S.takane_check_padding(-1, 64, x, 1)),
        (S.TAKANE_ERR_BAD_STRIDE, lambda: S.takane_check_padding(2, 65, x, -1)),
    ]
    for i, (expected, call) in enumerate(cases):
        assert call() == expected, f"case {i}"
    # zero-size problems are valid no-ops whatever the other dims (no pointer is read)
    assert S.takane_binary_matmul(0, big, tk.MAX_K, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL, 0, 1) == S.TAKANE_OK
    assert S.takane_binary_matmul(big, 0, tk.MAX_K, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL, 0, 1) == S.TAKANE_OK
    assert S.takane_pack_f32(0, tk.MAX_K, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL, 0) == S.TAKANE_OK


def test_c_weights_handle_with_absurd_sizes():
    """takane_weights_create: K past the max, negative dims and NULL are statuses; a
    size whose panels cannot be allocated (n*kw*64 bytes beyond the address space) is
    TAKANE_ERR_OUT_OF_MEMORY, with *out left NULL — read from a 1-row buffer with a row
    stride of 0, so no input memory is the problem."""
    out = ffi.new("takane_weights **")
    w = _u64()
    assert lib.takane_weights_create(1, tk.MAX_K + 1, w, 1, out) == lib.TAKANE_ERR_K_TOO_LARGE and out[0] == ffi.NULL
    assert lib.takane_weights_create(-1, 64, w, 1, out) == lib.TAKANE_ERR_NEGATIVE_DIMENSION
    assert lib.takane_weights_create(1, 64, ffi.NULL, 1, out) == lib.TAKANE_ERR_NULL_POINTER
    assert lib.takane_weights_create(1, 64, w, 1, ffi.NULL) == lib.TAKANE_ERR_NULL_POINTER
    # K a multiple of 64 (no padding bits to scan, so nothing past w[0] is read even
    # though the contract would let create read one row of kw words):
    # 2**58 rows of one word: 2**61 bytes of panels, which malloc refuses
    assert lib.takane_weights_create(2**58, 64, w, 0, out) == lib.TAKANE_ERR_OUT_OF_MEMORY and out[0] == ffi.NULL
    # 2**40 rows of 2**25 - 1 words: past the address space, refused before any malloc
    assert lib.takane_weights_create(2**40, 2**31 - 64, w, 0, out) == lib.TAKANE_ERR_OUT_OF_MEMORY
    assert lib.takane_binary_matmul_prepacked(ffi.NULL, 1, w, 1, ffi.new("int32_t[]", 1), 1, 1) == lib.TAKANE_ERR_NULL_POINTER


@heavy
def test_dimension_products_past_32_bits(on_isa, isa_name):
    """m*k and n*k beyond 2**32 (index arithmetic that wrapped in 32 bits would read the
    wrong row or out of bounds): row strides of 0 make every row the same 1025-word row,
    so the exact answer is one dot product repeated. Through the cffi lib directly: the
    Python wrappers copy non-contiguous views, which would need 34 GB here."""
    k = 2**16 + 1  # (2**16 + 1)**2 > 2**32
    kw = (k + 63) // 64
    big = k
    xrow = RNG.integers(0, 2**63, size=kw, dtype=np.uint64)
    wrow = RNG.integers(0, 2**63, size=kw, dtype=np.uint64)
    xrow[-1] &= np.uint64(1)  # k % 64 == 1: one valid bit in the last word
    wrow[-1] &= np.uint64(1)
    dot = k - 2 * int(np.bitwise_count(xrow ^ wrow).sum())
    xp, wp = ffi.from_buffer("uint64_t[]", xrow), ffi.from_buffer("uint64_t[]", wrow)
    # n * k > 2**32: one x row against `big` identical weight rows
    y = np.full(big + 1, -7, np.int32)
    assert lib.takane_binary_matmul(1, big, k, xp, kw, wp, 0, ffi.from_buffer("int32_t[]", y), big, 2) == 0
    assert_ran(isa_name)
    assert (y[:big] == dot).all() and y[big] == -7
    # m * k > 2**32: `big` identical x rows against one weight row, canonical and prepacked
    y = np.full(big + 1, -7, np.int32)
    assert lib.takane_binary_matmul(big, 1, k, xp, 0, wp, kw, ffi.from_buffer("int32_t[]", y), 1, 2) == 0
    assert (y[:big] == dot).all() and y[big] == -7
    handle = tk.PackedWeights(wrow[None, :], k)._prepacked()
    y = np.full(big + 1, -7, np.int32)
    assert lib.takane_binary_matmul_prepacked(handle, big, xp, 0, ffi.from_buffer("int32_t[]", y), 1, 2) == 0
    assert_ran(isa_name)
    assert (y[:big] == dot).all() and y[big] == -7


# ---- buffers: alignment, read-only, aliasing --------------------------------------------------

def _misaligned(a: np.ndarray, offset: int = 1) -> np.ndarray:
    """A copy of `a` at `offset` bytes past an aligned address: not aligned to its dtype."""
    raw = np.zeros(a.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    v = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    v[...] = a
    assert not v.flags.aligned
    return v


def test_misaligned_buffers(on_isa, isa_name):
    """Inputs at addresses not aligned to their dtype (views into a byte buffer) give the
    same results as aligned copies — the wrappers copy them, because a misaligned
    float*/uint64_t* is undefined behaviour in C (UBSan caught the first version of
    this test) — and a misaligned out= is rejected."""
    xb = tk.pack_bits(X)
    bias = RNG.standard_normal(5).astype(np.float32)
    ot = RNG.standard_normal(5).astype(np.float32)
    mx, mxb, mw = _misaligned(X, 1), _misaligned(xb, 3), _misaligned(PW.bits, 5)
    mbias, mot = _misaligned(bias, 2), _misaligned(ot, 2)
    np.testing.assert_array_equal(tk.binary_matmul(mx, PW), tk.binary_matmul(X, PW))
    assert_ran(isa_name)
    np.testing.assert_array_equal(tk.binary_matmul(mxb, PW), tk.binary_matmul(xb, PW))
    np.testing.assert_array_equal(tk.binary_matmul(mxb, mw, k=K), tk.binary_matmul(xb, PW))
    np.testing.assert_array_equal(tk.binary_matmul(mx, mw, k=K, threshold=_misaligned(np.zeros(K, np.float32))),
                                  tk.binary_matmul(X, PW))
    np.testing.assert_array_equal(tk.pack_bits(mx), xb)
    np.testing.assert_array_equal(tk.binary_linear(mx, PW, bias=mbias), tk.binary_linear(X, PW, bias=bias))
    np.testing.assert_array_equal(tk.binary_linear(mxb, PW, out_threshold=mot), tk.binary_linear(xb, PW, out_threshold=ot))
    np.testing.assert_array_equal(tk.binary_weight_matmul(mx, PW, bias=mbias), tk.binary_weight_matmul(X, PW, bias=bias))
    assert_ran(isa_name)
    assert tk.PackedWeights(mw, K, scale=PW.scale) == PW
    for call, dtype in ((lambda o: tk.binary_matmul(X, PW, out=o), np.int32),
                        (lambda o: tk.binary_linear(X, PW, out=o), np.float32),
                        (lambda o: tk.binary_weight_matmul(X, PW, out=o), np.float32)):
        with pytest.raises(ValueError, match="not aligned"):
            call(_misaligned(np.zeros((3, 5), dtype)))


def test_read_only_buffers(on_isa, isa_name):
    """Read-only inputs (weights, activations, thresholds, a read-only memory map) are
    fine and are never written; a read-only out= is a ValueError for every op."""
    x = X.copy()
    x.flags.writeable = False
    bits = PW.bits  # already read-only
    t = np.zeros(K, np.float32)
    t.flags.writeable = False
    xb = tk.pack_bits(X)
    xb.flags.writeable = False
    np.testing.assert_array_equal(tk.binary_matmul(x, bits, k=K, threshold=t), plain_matmul(X, W))
    assert_ran(isa_name)
    np.testing.assert_array_equal(tk.binary_matmul(xb, PW), plain_matmul(X, W))
    tk.binary_linear(x, PW, threshold=t)
    tk.binary_weight_matmul(x, PW)
    np.testing.assert_array_equal(x, X)
    for call, dtype in ((lambda o: tk.binary_matmul(X, PW, out=o), np.int32),
                        (lambda o: tk.binary_linear(X, PW, out=o), np.float32),
                        (lambda o: tk.binary_weight_matmul(X, PW, out=o), np.float32)):
        ro = np.zeros((3, 5), dtype)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            call(ro)


def test_out_aliasing_inputs(on_isa, isa_name):
    """out= sharing memory with x (the same bytes, or shifted by a few elements) gives
    exactly the result of the non-aliased call, for every op that takes out=."""
    rng = np.random.default_rng(3)
    for shift in (0, 1, 7):
        # binary_matmul: int32 out over float32 x's memory
        buf = np.zeros(64 * 40 + shift + 8, np.float32)
        x = buf[shift:shift + 64 * 40].reshape(40, 64)
        x[...] = rng.standard_normal(x.shape)
        pw = tk.pack_weights(rng.standard_normal((64, 64)))
        expected = tk.binary_matmul(x.copy(), pw)
        out = buf.view(np.int32)[:40 * 64].reshape(40, 64)
        np.testing.assert_array_equal(tk.binary_matmul(x, pw, out=out), expected)
        assert_ran(isa_name)
        # the layers: float32 out over float32 x
        for op in (tk.binary_linear, tk.binary_weight_matmul):
            buf = np.zeros(64 * 40 + shift + 8, np.float32)
            x = buf[shift:shift + 64 * 40].reshape(40, 64)
            x[...] = rng.standard_normal(x.shape)
            expected = op(x.copy(), pw)
            out = buf[:40 * 64].reshape(40, 64)
            np.testing.assert_array_equal(op(x, pw, out=out), expected)
            assert_ran(isa_name)
    # packed x and packed out of binary_linear(out_threshold=...) share memory
    xb = tk.pack_bits(rng.standard_normal((40, 128)))
    pw = tk.pack_weights(rng.standard_normal((128, 128)))
    expected = tk.binary_linear(xb.copy(), pw, out_threshold=0.0)
    np.testing.assert_array_equal(tk.binary_linear(xb, pw, out_threshold=0.0, out=xb), expected)


# ---- raw packed arrays: padding bits and dtypes ------------------------------------------------

@pytest.mark.parametrize("k", [1, 63, 65, 70, 127, 129])
def test_garbage_padding_bits(on_isa, k):
    """Any single non-zero padding bit (the first and the last padding position, in the
    first and the last row) is rejected by every op that reads raw packed arrays, from
    Python (ValueError naming the argument) and from C (TAKANE_ERR_PADDING_BITS)."""
    kw = (k + 63) // 64
    w = tk.pack_weights(RNG.standard_normal((9, k)))
    xb = tk.pack_bits(RNG.standard_normal((4, k)))
    for row in (0, -1):
        for bit in (k % 64, 63):
            bad_x, bad_w = xb.copy(), w.bits.copy()
            bad_x[row, -1] |= np.uint64(1) << np.uint64(bit)
            bad_w[row, -1] |= np.uint64(1) << np.uint64(bit)
            with pytest.raises(ValueError, match="x has non-zero padding"):
                tk.binary_matmul(bad_x, w)
            with pytest.raises(ValueError, match="x has non-zero padding"):
                tk.binary_matmul(bad_x, w.bits, k=k)
            with pytest.raises(ValueError, match="w has non-zero padding"):
                tk.binary_matmul(xb, bad_w, k=k)
            with pytest.raises(ValueError, match="non-zero padding"):
                tk.binary_linear(bad_x, w)
            with pytest.raises(ValueError, match="non-zero padding"):
                tk.PackedWeights(bad_w, k)
            with pytest.raises(ValueError, match="non-zero padding"):
                tk.unpack_bits(bad_x, k)
            y = ffi.new("int32_t[]", 4 * 9)
            assert lib.takane_binary_matmul(4, 9, k, ffi.from_buffer("uint64_t[]", bad_x), kw,
                                            ffi.from_buffer("uint64_t[]", w.bits), kw, y, 9, 1) == lib.TAKANE_ERR_PADDING_BITS
            out = ffi.new("takane_weights **")
            assert lib.takane_weights_create(9, k, ffi.from_buffer("uint64_t[]", bad_w), kw, out) == lib.TAKANE_ERR_PADDING_BITS


def test_wrong_dtypes_for_packed_arrays():
    """Packed bits must be uint64: int64 or float64 bits (same bytes, other dtype) raise
    TypeError as weights; as x an int64/float64 array is real-valued activations, so
    its last dimension (words) does not match K and ValueError names the shapes."""
    xb = tk.pack_bits(X)
    for dtype in (np.int64, np.float64, np.uint32, np.int8):
        with pytest.raises(TypeError, match="uint64"):
            tk.binary_matmul(X, PW.bits.view(np.uint8).view(dtype) if dtype != np.int8 else PW.bits.view(dtype), k=K)
        with pytest.raises(TypeError, match="uint64"):
            tk.unpack_bits(xb.view(np.uint8).view(dtype) if dtype != np.int8 else xb.view(dtype), K)
        with pytest.raises(TypeError, match="uint64"):
            tk.PackedWeights(PW.bits.view(dtype), K)
    for dtype in (np.int64, np.float64):
        with pytest.raises(ValueError, match=r"x has shape \(3, 2\).*k=70"):
            tk.binary_matmul(xb.view(dtype), PW)
    with pytest.raises(TypeError, match="real"):
        tk.binary_matmul(X.astype(np.complex128), PW)
    with pytest.raises(TypeError, match="real"):
        tk.binary_weight_matmul(np.array([["a"] * K]), PW)
    with pytest.raises(TypeError, match="real"):
        tk.binary_linear(np.full((1, K), None, dtype=object), PW)


# ---- saved weights: truncated, corrupted, hostile headers ---------------------------------------

def _npz_with_member(path, name, payload: bytes, compress=zipfile.ZIP_STORED):
    pw = tk.pack_weights(W)
    pw.save(path)
    with zipfile.ZipFile(path, "a", compression=compress) as zf:
        zf.writestr(name, payload)


def _npy_header(shape, descr="<u8"):
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def test_hostile_saved_weights(tmp_path):
    """Truncated and bit-flipped files are covered by tests/test_persistence.py; here the
    hostile ones: a .npy header declaring 2**41 elements (the reader would allocate 16 TB:
    MemoryError before the fix), a zip member that is not a .npy (AttributeError before),
    an unsupported zip version (NotImplementedError before), a compressed member (a
    decompression bomb needs one), an encrypted member flag, a bare .npy — every one
    is a ValueError, quickly."""
    cases = {}
    p = tmp_path / "huge.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("format.npy", _npy_header((), "<U28") + "takane_kernels.PackedWeights".encode("utf-32-le"))
        zf.writestr("bits.npy", _npy_header((2**40, 2)) + b"\0" * 64)
    cases[p] = "not a readable"
    p = tmp_path / "raw.npz"
    _npz_with_member(p, "scale", b"not an array")
    cases[p] = "not .npy arrays|unexpected"
    p = tmp_path / "deflated.npz"
    pw = tk.pack_weights(W)
    with open(p, "wb") as f:
        np.savez_compressed(f, format=np.array("takane_kernels.PackedWeights"), format_version=np.int64(1),
                            k=np.int64(K), bits=pw.bits)
    cases[p] = "compressed"
    p = tmp_path / "encrypted.npz"
    pw.save(p)
    data = bytearray(p.read_bytes())
    data[6] |= 1  # general purpose flag bit 0 of the first local header: "encrypted"
    cdir = data.rfind(b"PK\x01\x02")
    while cdir != -1:  # and in every central directory entry
        data[cdir + 8] |= 1
        cdir = data.rfind(b"PK\x01\x02", 0, cdir)
    p.write_bytes(bytes(data))
    cases[p] = "not a readable"
    p = tmp_path / "bare.npz"
    np.save(p.with_suffix(".npy"), np.zeros(3))
    os.replace(p.with_suffix(".npy"), p)
    cases[p] = "not an .npz"
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message):
            tk.PackedWeights.load(path)


REGRESSIONS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "fuzz", "load_regressions", "*")))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[os.path.basename(p) for p in REGRESSIONS])
def test_fuzz_load_regressions(path, tmp_path):
    """Every input the load fuzzer (tests/fuzz/fuzz_load.py) ever crashed on: now a clean
    ValueError (or a valid object), through the fuzzer's own contract check."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
    try:
        from fuzz_load import check_load_bytes
    finally:
        sys.path.pop(0)
    with open(path, "rb") as f:
        assert check_load_bytes(f.read(), str(tmp_path / "w.npz")) in ("ok", "rejected")


def test_fuzz_load_regressions_exist():
    assert len(REGRESSIONS) >= 2  # the two crashes found so far must stay guarded


# ---- threads ---------------------------------------------------------------------------------

def test_threads_far_beyond_cores(on_isa, isa_name):
    """threads= far more than the CPUs (and the int32 maximum) computes the same result;
    threads=0, negative, bool or float raise."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((70, 1100)).astype(np.float32)
    pw = tk.pack_weights(rng.standard_normal((300, 1100)))
    expected = tk.binary_matmul(x, pw, threads=1)
    for threads in (os.cpu_count() * 4, 64, 2**31 - 1, 2**40):
        np.testing.assert_array_equal(tk.binary_matmul(x, pw, threads=threads), expected)
        assert_ran(isa_name)
        np.testing.assert_array_equal(tk.binary_linear(x, pw, threads=threads), tk.binary_linear(x, pw, threads=1))
        np.testing.assert_array_equal(tk.binary_weight_matmul(x, pw, threads=threads),
                                      tk.binary_weight_matmul(x, pw, threads=1))
    for bad in (0, -1):
        with pytest.raises(ValueError, match="threads"):
            tk.binary_matmul(x, pw, threads=bad)
    for bad in (True, 2.0, "2"):
        with pytest.raises(TypeError, match="threads"):
            tk.binary_matmul(x, pw, threads=bad)


def test_bad_input_table_names_existing_tests():
    """Every row of the "Bad input" table (docs/robustness.md) names at least one test, and
    every test it names exists (file and function)."""
    import ast
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    page = os.path.join(root, "docs", "robustness.md")
    if not os.path.exists(page):  # an installed-package run without the source tree
        pytest.fail("docs/robustness.md not found next to tests/")
    text = open(page, encoding="utf-8").read()
    section = text.split("# Robustness: bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| bad input")]
    assert len(rows) >= 20
    defined: dict[str, set] = {}
    for row in rows:
        names = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row.rsplit("|", 2)[-2])
        assert names, f"row without a test: {row}"
        for path, func in names:
            if path not in defined:
                tree = ast.parse(open(os.path.join(root, path), encoding="utf-8").read())
                defined[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert func in defined[path], f"{path}::{func} (docs/robustness.md bad-input table) does not exist"
