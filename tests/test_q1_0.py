"""GGUF Q1_0 blocks (llama.cpp type 41) <-> PackedWeights with group scales (DESIGN §9).

The oracle for the layout is a plain model of ggml's ``dequantize_row_q1_0`` (llama.cpp
ggml-quants.c): weight j of a block = +d if bit (qs[j/8] >> (j%8)) & 1 else -d, with d the
block's little-endian fp16. The fp16 rounding oracle is numpy's ``astype(float16)``
(IEEE round to nearest even, as ggml's GGML_FP32_TO_FP16).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import takane_kernels as tk
from takane_kernels import reference as ref

ffi, lib = tk._ffi, tk._lib


def q1_0_bytes(rng, n, k, d=None):
    """Random Q1_0 rows: random sign bytes, d finite fp16 (random unless given)."""
    nb = k // 128
    q = rng.integers(0, 256, (n, nb, 18), dtype=np.uint8)
    if d is None:
        h = rng.integers(0, 2**16, (n, nb), dtype=np.uint16)
        h[(h & 0x7C00) == 0x7C00] &= np.uint16(0x83FF)  # exponent 31 (inf/NaN) -> finite
        d = h.view(np.float16)
    q[:, :, :2] = np.asarray(d, dtype="<f2").reshape(n, nb, 1).view(np.uint8)
    return q.reshape(n, nb * 18)


def ggml_dequantize(q, k):
    """dequantize_row_q1_0, element by element as ggml writes it (float32)."""
    n = q.shape[0]
    out = np.empty((n, k), dtype=np.float32)
    for r in range(n):
        for i in range(k // 128):
            blk = q[r, i * 18:(i + 1) * 18]
            d = np.float32(blk[:2].copy().view("<f2")[0])
            for j in range(128):
                bit = (int(blk[2 + j // 8]) >> (j % 8)) & 1
                out[r, i * 128 + j] = d if bit else -d
    return out


def effective(w):
    """sign(W) * group_scale (and the other factors), float64, from the container."""
    s = tk.unpack_bits(w.bits, w.k).astype(np.float64)
    if w.group_scale is not None:
        s = s * np.repeat(w.group_scale.astype(np.float64), w.group_size, axis=1)[:, : w.k]
    if w.scale is not None:
        s = s * w.scale[:, None]
    return s


@pytest.mark.parametrize("n,k", [(1, 128), (3, 256), (2, 640)])
def test_layout_is_ggml_dequantize_row_q1_0(n, k):
    q = q1_0_bytes(np.random.default_rng(k), n, k)
    w = tk.from_q1_0(q, k)
    assert (w.n, w.k, w.group_size) == (n, k, 128) and w.scale is None and w.in_scale is None
    assert w.group_scale.dtype == np.float32 and w.group_scale.shape == (n, k // 128)
    np.testing.assert_array_equal(effective(w), ggml_dequantize(q, k).astype(np.float64))
    # the reference computes with exactly these weights: x @ dequantized.T in float64
    x = np.random.default_rng(1).standard_normal((2, k)).astype(np.float32)
    np.testing.assert_allclose(ref.binary_weight_matmul(x, w), x.astype(np.float64) @ ggml_dequantize(q, k).T,
                               rtol=1e-12, atol=1e-12)


@given(n=st.integers(0, 5), nb=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_round_trip_bytes_ours_bytes_identical(n, nb, seed):
    k = nb * 128
    q = q1_0_bytes(np.random.default_rng(seed), n, k)
    w = tk.from_q1_0(q, k)
    back = tk.to_q1_0(w)
    assert back.dtype == np.uint8 and back.shape == q.shape
    assert back.tobytes() == q.tobytes()  # every d (subnormals, -0.0) and every sign bit


def test_round_trip_through_packed_weights_file_and_pickle(tmp_path):
    import pickle

    q = q1_0_bytes(np.random.default_rng(5), 4, 384)
    w = tk.from_q1_0(q, 384)
    w.save(tmp_path / "w.npz")
    for again in (tk.PackedWeights.load(tmp_path / "w.npz"), pickle.loads(pickle.dumps(w))):
        assert again == w and tk.to_q1_0(again).tobytes() == q.tobytes()


def test_to_q1_0_rounds_to_fp16_like_ieee():
    """d = fp16(group scale), nearest-even, over random float32 bit patterns of every
    magnitude fp16 can hold (normal, subnormal, underflow to 0) plus the edges."""
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    vals = raw.view(np.float32)
    vals = vals[np.isfinite(vals) & (np.abs(vals) < 65504)]
    f16 = np.float16
    edges = np.array([
        0.0, -0.0, 65504.0, -65504.0, np.nextafter(np.float32(65520.0), np.float32(0)),
        2.0**-24, 2.0**-25, np.nextafter(np.float32(2.0**-25), np.float32(1)), 2.0**-26, 1e-30,
        2.0**-14, np.float32(2.0**-14) - np.float32(2.0**-25),  # rounds up into the normals
        1 + 2.0**-11, 1 + 3 * 2.0**-11,  # exact ties: to even (down, up)
        3 * 2.0**-25, 5 * 2.0**-25,  # subnormal ties
    ], dtype=np.float32)
    g = np.concatenate([edges, vals, rng.standard_normal(500).astype(np.float32) * 1e-6]).astype(np.float32)
    g = g[: len(g) // 2 * 2].reshape(-1, 2)  # rows of 2 blocks: K = 256
    w = tk.PackedWeights(tk.pack_bits(np.ones((g.shape[0], 256))), 256, group_scale=g, group_size=128)
    q = tk.to_q1_0(w).reshape(g.shape[0], 2, 18)
    d = q[:, :, :2].copy().view("<u2")[..., 0]
    np.testing.assert_array_equal(d, g.astype(f16).view(np.uint16))


@pytest.mark.parametrize("bad", [65520.0, -65520.0, 1e6, np.finfo(np.float32).max])
def test_to_q1_0_rejects_scales_that_overflow_fp16(bad):
    g = np.ones((2, 2), np.float32)
    g[1, 0] = bad
    w = tk.PackedWeights(tk.pack_bits(np.ones((2, 256))), 256, group_scale=g, group_size=128)
    with pytest.raises(ValueError, match="row 1, block 0.*overflows fp16"):
        tk.to_q1_0(w)


def test_to_q1_0_scales_it_can_represent():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 512)).astype(np.float32)
    # group size 256: each group scale covers two Q1_0 blocks, exactly
    g256 = tk.pack_weights(w, group_size=256)
    q = tk.to_q1_0(g256)
    back = tk.from_q1_0(q, 512)
    np.testing.assert_array_equal(back.bits, g256.bits)
    np.testing.assert_array_equal(back.group_scale,
                                  np.repeat(g256.group_scale, 2, axis=1).astype(np.float16).astype(np.float32))
    # a row scale is folded into d: fp16(float32(group_scale * scale)); alone it fills every block
    rows = tk.pack_weights(w)  # per-row mean |w|
    d = tk.from_q1_0(tk.to_q1_0(rows), 512).group_scale
    np.testing.assert_array_equal(d, np.repeat(rows.scale[:, None], 4, axis=1).astype(np.float16).astype(np.float32))
    both = tk.PackedWeights(g256.bits, 512, scale=np.float32([2, 0.5, -1]), group_scale=g256.group_scale,
                            group_size=256)
    d = tk.from_q1_0(tk.to_q1_0(both), 512).group_scale
    expect = np.repeat(g256.group_scale, 2, axis=1) * np.float32([2, 0.5, -1])[:, None]
    np.testing.assert_array_equal(d, expect.astype(np.float32).astype(np.float16).astype(np.float32))
    # no scale at all: d = 1
    plain = tk.PackedWeights(g256.bits, 512)
    q = tk.to_q1_0(plain).reshape(3, 4, 18)
    assert np.all(q[:, :, :2].copy().view("<f2") == 1.0)
    np.testing.assert_array_equal(tk.from_q1_0(q.reshape(3, -1), 512).bits, g256.bits)


def test_to_q1_0_refuses_what_q1_0_cannot_hold():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((2, 256))
    with pytest.raises(ValueError, match="multiple of 128"):
        tk.to_q1_0(tk.pack_weights(w, group_size=64))
    with pytest.raises(ValueError, match="in_scale"):
        tk.to_q1_0(tk.pack_weights(w, in_scale=np.ones(256)))
    with pytest.raises(ValueError, match="multiple of 128"):
        tk.to_q1_0(tk.pack_weights(rng.standard_normal((2, 192))))
    with pytest.raises(ValueError, match="overflows fp16"):  # a float32 product that overflows
        tk.to_q1_0(tk.PackedWeights(tk.pack_bits(w), 256, scale=np.float32([3e38, 1]),
                                    group_scale=np.full((2, 2), 10, np.float32), group_size=128))
    with pytest.raises(TypeError):
        tk.to_q1_0(w)


def test_from_q1_0_input_errors():
    rng = np.random.default_rng(8)
    q = q1_0_bytes(rng, 2, 256)
    with pytest.raises(TypeError, match="numpy uint8"):
        tk.from_q1_0(q.tolist(), 256)
    with pytest.raises(TypeError, match="uint8"):
        tk.from_q1_0(q.view(np.int8), 256)
    with pytest.raises(ValueError, match="multiple of 128"):
        tk.from_q1_0(q, 200)
    with pytest.raises(ValueError, match="expected"):
        tk.from_q1_0(q, 128)
    with pytest.raises(ValueError, match="expected"):
        tk.from_q1_0(q.reshape(-1), 256)
    with pytest.raises(TypeError):
        tk.from_q1_0(q, 256.0)
    with pytest.raises(ValueError):
        tk.from_q1_0(q, -128)


@pytest.mark.parametrize("bits16", [0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF])
def test_from_q1_0_rejects_non_finite_d(bits16):
    q = q1_0_bytes(np.random.default_rng(9), 3, 384)
    q[2, 18:20] = np.array([bits16], "<u2").view(np.uint8)
    with pytest.raises(ValueError, match="row 2, block 1.*not finite"):
        tk.from_q1_0(q, 384)


def test_from_q1_0_reads_views_without_changing_them():
    rng = np.random.default_rng(10)
    big = q1_0_bytes(rng, 6, 256)
    expect = [tk.from_q1_0(np.ascontiguousarray(v), 256) for v in (big[::2], big[::-1])]
    wide = np.zeros((6, 36 + 7), np.uint8)
    wide[:, 3:39] = big
    for view, e in ((big[::2], expect[0]), (big[::-1], expect[1])):
        assert tk.from_q1_0(view, 256) == e
    assert tk.from_q1_0(wide[:, 3:39], 256) == tk.from_q1_0(big, 256)
    ro = big.copy()
    ro.flags.writeable = False
    assert tk.from_q1_0(ro, 256) == tk.from_q1_0(big, 256)
    # Fortran order (column-major): last axis not unit-stride
    assert tk.from_q1_0(np.asfortranarray(big), 256) == tk.from_q1_0(big, 256)


def test_empty_shapes():
    for n, k in ((0, 256), (3, 0), (0, 0)):
        w = tk.from_q1_0(np.zeros((n, k // 128 * 18), np.uint8), k)
        assert (w.n, w.k) == (n, k) and w.group_scale.shape == (n, k // 128)
        assert tk.to_q1_0(w).shape == (n, k // 128 * 18)


# ---- the C entry points directly --------------------------------------------------------

def _u8(a):
    return ffi.from_buffer("uint8_t[]", a)


def _u64(a):
    return ffi.from_buffer("uint64_t[]", a)


def _f32(a):
    return ffi.from_buffer("float[]", a)


def test_c_q1_0_validation_before_touching_memory():
    one8, one64, onef = np.zeros(1, np.uint8), np.zeros(1, np.uint64), np.zeros(1, np.float32)
    imp = lib.takane_q1_0_to_bits
    exp = lib.takane_bits_to_q1_0
    assert imp(-1, 128, _u8(one8), 18, _u64(one64), 2, _f32(onef), 1) == lib.TAKANE_ERR_NEGATIVE_DIMENSION
    assert imp(1, -128, _u8(one8), 18, _u64(one64), 2, _f32(onef), 1) == lib.TAKANE_ERR_NEGATIVE_DIMENSION
    assert imp(1, 2**31 + 127, _u8(one8), 18, _u64(one64), 2, _f32(onef), 1) == lib.TAKANE_ERR_K_TOO_LARGE
    for k in (64, 100, 129, 2**31 - 1):
        assert imp(1, k, _u8(one8), 0, _u64(one64), 0, _f32(onef), 0) == lib.TAKANE_ERR_BAD_GROUP_SIZE
        assert exp(1, k, _u64(one64), 0, _f32(onef), 0, _u8(one8), 0) == lib.TAKANE_ERR_BAD_GROUP_SIZE
    assert imp(2**62, 128, _u8(one8), -1, _u64(one64), 2, _f32(onef), 1) == lib.TAKANE_ERR_BAD_STRIDE
    assert imp(2**62, 128, _u8(one8), 0, _u64(one64), 1, _f32(onef), 1) == lib.TAKANE_ERR_BAD_STRIDE  # rows overlap
    assert imp(2**62, 128, _u8(one8), 0, _u64(one64), 2, _f32(onef), 0) == lib.TAKANE_ERR_BAD_STRIDE
    assert exp(2**62, 128, _u64(one64), 0, _f32(onef), 0, _u8(one8), 17) == lib.TAKANE_ERR_BAD_STRIDE
    assert exp(2**62, 128, _u64(one64), -2, _f32(onef), 0, _u8(one8), 18) == lib.TAKANE_ERR_BAD_STRIDE
    assert imp(1, 128, ffi.NULL, 18, _u64(one64), 2, _f32(onef), 1) == lib.TAKANE_ERR_NULL_POINTER
    assert imp(1, 128, _u8(one8), 18, ffi.NULL, 2, _f32(onef), 1) == lib.TAKANE_ERR_NULL_POINTER
    assert exp(1, 128, ffi.NULL, 2, _f32(onef), 1, _u8(one8), 18) == lib.TAKANE_ERR_NULL_POINTER
    assert exp(1, 128, _u64(one64), 2, _f32(onef), 1, ffi.NULL, 18) == lib.TAKANE_ERR_NULL_POINTER
    # zero-size problems are no-ops, NULL allowed
    for n, k in ((0, 128), (5, 0)):
        assert imp(n, k, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL, 0) == lib.TAKANE_OK
        assert exp(n, k, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL, 0) == lib.TAKANE_OK
    assert b"multiple" in ffi.string(lib.takane_status_string(lib.TAKANE_ERR_BAD_GROUP_SIZE))


def test_c_q1_0_strides_null_scales_and_untouched_outputs_on_error():
    rng = np.random.default_rng(11)
    n, k = 3, 256
    q = q1_0_bytes(rng, n, k)
    padded = np.zeros((n, 40), np.uint8)
    padded[:, :36] = q
    bits = np.full((n, 5), 7, np.uint64)  # row stride 5 words, 1 slack word
    gs = np.full((n, 3), 9, np.float32)
    assert lib.takane_q1_0_to_bits(n, k, _u8(padded), 40, _u64(bits), 5, _f32(gs), 3) == lib.TAKANE_OK
    w = tk.from_q1_0(q, k)
    np.testing.assert_array_equal(bits[:, :4], w.bits)
    np.testing.assert_array_equal(bits[:, 4], 7)
    np.testing.assert_array_equal(gs[:, :2], w.group_scale)
    np.testing.assert_array_equal(gs[:, 2], 9)
    # stride 0 input: every row the same; NULL group_scale: scales not written
    bits0 = np.zeros((n, 4), np.uint64)
    assert lib.takane_q1_0_to_bits(n, k, _u8(q), 0, _u64(bits0), 4, ffi.NULL, 0) == lib.TAKANE_OK
    np.testing.assert_array_equal(bits0, np.repeat(w.bits[:1], n, axis=0))
    # export with strides and a NULL scale (d = 1.0)
    out = np.full((n, 40), 0xEE, np.uint8)
    assert lib.takane_bits_to_q1_0(n, k, _u64(bits), 5, ffi.NULL, 0, _u8(out), 40) == lib.TAKANE_OK
    np.testing.assert_array_equal(out[:, 36:], 0xEE)
    blocks = out[:, :36].reshape(n, 2, 18)
    assert np.all(blocks[:, :, :2].copy().view("<f2") == 1.0)
    np.testing.assert_array_equal(blocks[:, :, 2:], q.reshape(n, 2, 18)[:, :, 2:])
    # errors leave every output untouched
    bad = q.copy()
    bad[2, 18:20] = np.array([0x7C00], "<u2").view(np.uint8)
    bits[:] = 7
    gs[:] = 9
    assert lib.takane_q1_0_to_bits(n, k, _u8(bad), 36, _u64(bits), 5, _f32(gs), 3) == lib.TAKANE_ERR_NOT_FINITE
    assert np.all(bits == 7) and np.all(gs == 9)
    g = np.ones((n, 2), np.float32)
    g[2, 1] = np.nan
    out[:] = 0xEE
    assert lib.takane_bits_to_q1_0(n, k, _u64(bits), 5, _f32(g), 2, _u8(out), 40) == lib.TAKANE_ERR_NOT_FINITE
    assert np.all(out == 0xEE)


def test_w1a_float_on_q1_0_weights_matches_the_dequantized_product(isa_name, on_isa):
    """The kernels compute with Q1_0 weights as ggml dequantizes them."""
    from conftest import assert_ran

    q = q1_0_bytes(np.random.default_rng(12), 5, 384, d=np.linspace(-2, 3, 15).reshape(5, 3))
    w = tk.from_q1_0(q, 384)
    x = np.random.default_rng(13).standard_normal((3, 384)).astype(np.float32)
    y = tk.binary_weight_matmul(x, w)
    assert_ran(isa_name)
    exact = ref.binary_weight_matmul(x, w)
    np.testing.assert_allclose(exact, x.astype(np.float64) @ ggml_dequantize(q, 384).T.astype(np.float64),
                               rtol=1e-12, atol=1e-12)
    assert np.all(np.abs(y - exact) <= ref.binary_weight_matmul_error_bound(x, w))


def test_every_finite_fp16_and_every_midpoint():
    """All 63488 finite fp16 values of d survive import and export unchanged, and every
    float32 midpoint between neighbouring fp16 values rounds to the even one (as numpy)."""
    h = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    h = h[(h & 0x7C00) != 0x7C00]  # finite
    d = h.view(np.float16)
    q = q1_0_bytes(np.random.default_rng(14), len(h) // 2, 256, d=d.reshape(-1, 2))
    w = tk.from_q1_0(q, 256)
    np.testing.assert_array_equal(w.group_scale.reshape(-1), d.astype(np.float32))
    assert tk.to_q1_0(w).tobytes() == q.tobytes()
    # midpoints of positive neighbours (exact in float32: fp16 has 11 significant bits)
    pos = np.sort(d[(d > 0)].astype(np.float32))
    mid = (pos[:-1] + (pos[1:] - pos[:-1]) / np.float32(2)).astype(np.float32)
    assert np.all((mid > pos[:-1]) & (mid < pos[1:]))
    g = np.concatenate([mid, -mid, [np.float32(65504 + 8)]]).astype(np.float32)  # 65512 < 65520: rounds to 65504
    g = g[: len(g) // 2 * 2].reshape(-1, 2)
    w = tk.PackedWeights(np.zeros((g.shape[0], 4), np.uint64), 256, group_scale=g, group_size=128)
    got = tk.to_q1_0(w).reshape(-1, 2, 18)[:, :, :2].copy().view("<u2")[..., 0]
    np.testing.assert_array_equal(got, g.astype(np.float16).view(np.uint16))


def test_from_q1_0_result_owns_read_only_arrays():
    """from_q1_0 adopts the arrays the C conversion made (no second copy): they must be as
    private and read-only as the constructor's, and equal to what the constructor builds."""
    rng = np.random.default_rng(7)
    w = tk.pack_weights(rng.standard_normal((5, 256)), group_size=128)
    q = tk.to_q1_0(w)
    got = tk.from_q1_0(q, 256)
    assert not got.bits.flags.writeable and not got.group_scale.flags.writeable
    assert got == tk.PackedWeights(got.bits.copy(), 256, group_scale=got.group_scale.copy(), group_size=128)
    q[:] = 0  # the source buffer is not referenced
    assert got.bits.any()
