"""The correctness oracle: the library's functions in plain numpy, written independently.

Nothing here calls the C library or shares code with ``_ops``: packing uses
``np.packbits``, unpacking uses shifts, and the matmul has two routes that are checked
against each other — unpack to ±1 and multiply (float64 products of ±1 are exact for
K < 2**53), and ``K - 2*popcount(x XOR w)`` with ``np.bitwise_count``. Slow on purpose:
use it on small shapes. Comparisons ``v >= t`` are done in float64 (exact for every
float16/32/64 and every int up to 2**53).
"""

from __future__ import annotations

import numpy as np

from ._ternary import TernaryWeights
from ._weights import PackedWeights

__all__ = [
    "pack_bits", "unpack_bits", "pack_weights", "binary_matmul",
    "matmul_unpacked", "matmul_popcount", "PackedWeights",
    "binary_linear", "binary_weight_matmul", "binary_weight_matmul_error_bound", "AdaptiveThreshold",
    "quantize_q8_0",
    "TernaryWeights", "pack_ternary", "unpack_ternary", "quantize_int8_row", "decode_tq2_0", "decode_tq1_0",
    "binary_conv2d", "binary_max_pool2d", "pack_conv_weights",
]


def _real(x, name):
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be real, got {a.dtype}")
    if a.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension")
    return a


def _binarize(a, threshold):
    a64 = a.astype(np.float64)
    t = np.asarray(threshold, dtype=np.float64)
    if t.shape not in ((), (a.shape[-1],)):
        raise ValueError(f"threshold shape {t.shape} does not fit K={a.shape[-1]}")
    if np.isnan(a64).any() or np.isnan(t).any():
        raise ValueError("NaN has no sign")
    return a64 >= t


def pack_bits(a, threshold=0.0):
    """(..., K) real -> (..., ceil(K/64)) uint64, bit 1 iff a >= threshold, LSB first."""
    a = _real(a, "a")
    ge = _binarize(a, threshold)
    k = a.shape[-1]
    words = -(-k // 64)
    padded = np.zeros(a.shape[:-1] + (words * 64,), dtype=bool)
    padded[..., :k] = ge
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(as_bytes).view("<u8").astype(np.uint64)


def unpack_bits(bits, k, dtype=np.int8):
    """(..., ceil(k/64)) uint64 -> (..., k) of ±1."""
    bits = np.asarray(bits)
    if bits.dtype != np.uint64 or bits.shape[-1] != -(-k // 64):
        raise ValueError("bits must be canonical uint64 (..., ceil(k/64))")
    idx = np.arange(k)
    b01 = (bits[..., idx // 64] >> (idx % 64).astype(np.uint64)) & np.uint64(1)
    if k % 64 and np.any(bits[..., -1] >> np.uint64(k % 64)):
        raise ValueError("non-zero padding bits")
    return (b01.astype(np.int64) * 2 - 1).astype(dtype)


def pack_weights(w, *, scale="mean_abs", in_scale=None, group_size=None):
    """The oracle's :func:`takane_kernels.pack_weights`: the same signs and scales, computed
    in float64 with plain numpy (``"mean_abs"``: per-row mean of |w|; ``"onebit"``: the
    rank-1 SVD of |w|; ``group_size=G``: the mean of |w| over each run of G columns)."""
    w = _real(w, "w")
    if w.ndim != 2:
        raise ValueError("w must be 2-D")
    if group_size is not None:
        if scale != "mean_abs":
            raise ValueError("group_size needs scale='mean_abs'")
        n, k = w.shape
        groups = [np.abs(w[:, c:c + group_size].astype(np.float64)).mean(axis=1)
                  for c in range(0, k, group_size)]
        g = np.stack(groups, axis=1) if groups else np.zeros((n, 0))
        return PackedWeights(pack_bits(w), k, in_scale=in_scale, group_scale=g, group_size=group_size)
    if isinstance(scale, str):
        if scale == "mean_abs":
            scale = np.abs(w.astype(np.float64)).mean(axis=1) if w.shape[1] else np.zeros(w.shape[0])
        elif scale == "onebit":
            if in_scale is not None:
                raise ValueError("onebit computes in_scale")
            scale, in_scale = _onebit_svd(w)
        else:
            raise ValueError(scale)
    return PackedWeights(pack_bits(w), w.shape[1], scale=scale, in_scale=in_scale)


def _onebit_svd(w):
    """OneBit's SVID: first singular triplet of |W| by LAPACK's full SVD, split as √σ."""
    a = np.abs(w.astype(np.float64))
    if a.size == 0 or not a.any():
        return np.zeros(w.shape[0]), np.zeros(w.shape[1])
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    u0, v0 = u[:, 0], vt[0]
    if u0.sum() < 0:  # the singular pair is defined up to a common sign: take it >= 0
        u0, v0 = -u0, -v0
    return np.sqrt(s[0]) * u0, np.sqrt(s[0]) * v0


def matmul_unpacked(xbits, wbits, k):
    """Route 1: unpack both to ±1 and multiply (float64 BLAS: exact for k < 2**53)."""
    xs = unpack_bits(xbits, k, np.float64)
    ws = unpack_bits(wbits, k, np.float64)
    return np.rint(xs @ ws.T).astype(np.int32)


def matmul_popcount(xbits, wbits, k):
    """Route 2: k - 2 * popcount(x XOR w), row by row."""
    xbits = np.asarray(xbits).reshape(-1, np.shape(wbits)[1])
    y = np.empty((xbits.shape[0], np.shape(wbits)[0]), dtype=np.int64)
    for i, row in enumerate(xbits):
        y[i] = k - 2 * np.bitwise_count(row[None, :] ^ wbits).sum(axis=1, dtype=np.int64)
    return y.astype(np.int32)


def binary_matmul(x, w, *, threshold=0.0, k=None, out=None, threads=None):
    """sign(x) @ sign(w).T exactly, int32 (..., N); see takane_kernels.binary_matmul. With
    TernaryWeights (W1.58A1): the ±1 activations times the {-1, 0, +1} values, float64 BLAS
    (exact for K < 2**53), no scales."""
    if isinstance(w, TernaryWeights):
        if k is not None and k != w.k:
            raise ValueError("k does not match the TernaryWeights")
        x = np.asarray(x)
        xbits = x if x.dtype == np.uint64 else pack_bits(x, threshold)
        batch = xbits.shape[:-1]
        xs = unpack_bits(xbits.reshape(-1, xbits.shape[-1]), w.k, np.float64)
        y = np.rint(xs @ unpack_ternary(w).T).astype(np.int32).reshape(batch + (w.n,))
        if out is not None:
            out[...] = y
            return out
        return y
    if isinstance(w, PackedWeights):
        wbits, k = w.bits, w.k
    else:
        if k is None:
            raise ValueError("raw w needs k=")
        wbits = np.asarray(w)
    x = np.asarray(x)
    xbits = x if x.dtype == np.uint64 else pack_bits(x, threshold)
    batch = xbits.shape[:-1]
    rows = xbits.reshape(int(np.prod(batch, dtype=np.int64)), xbits.shape[-1])  # (-1, 0) is ambiguous
    y = matmul_unpacked(rows, wbits, k).reshape(batch + (wbits.shape[0],))
    if out is not None:
        out[...] = y
        return out
    return y


def _result(y, out_threshold, out):
    """A layer's float32 y, or the packed bits of ``y >= out_threshold``; written into
    ``out`` when given."""
    result = y if out_threshold is None else pack_bits(y, out_threshold)
    if out is not None:
        out[...] = result
        return out
    return result


def binary_linear(x, w, *, threshold=0.0, bias=None, activation_scale=False, out_threshold=None, out=None,
                  threads=None):
    """The W1A1 layer, spelled out in numpy float32 steps (see takane_kernels.binary_linear).

    y = ((float32(d) * scale) * beta) + bias, one float32 rounding per step, with
    d = sign(x) @ sign(w).T exact and beta = float32(mean |x| in float64); with
    out_threshold, the canonical bits of y >= out_threshold (compared exactly).
    """
    x = np.asarray(x)
    d = binary_matmul(x, w, threshold=threshold)
    y = d.astype(np.float32)
    if w.scale is not None:
        y = y * w.scale.astype(np.float32)
    if activation_scale:
        if x.dtype == np.uint64:
            raise ValueError("activation_scale needs real x")
        k = x.shape[-1]
        beta = np.abs(x.astype(np.float64)).sum(axis=-1) / k if k else np.zeros(x.shape[:-1])
        y = y * beta.astype(np.float32)[..., None]
    if bias is not None:
        y = y + np.asarray(bias).astype(np.float32)
    return _result(y, out_threshold, out)


def quantize_q8_0(xs):
    """llama.cpp's quantize_row_q8_0_ref on float32 rows (..., K), in float32 arithmetic.

    Blocks of 32 along the last axis (a partial last block is zero-padded). Per block:
    amax = max |x|, d = amax / 127 (float32 division), id = 1 / d (0 when d == 0), and
    q = roundf(x * id) with the product rounded to float32 and ties rounded away from
    zero (C's roundf; numpy's round is half-to-even, so it is spelled out in float64,
    where |v| + 0.5 is exact). Returns (q (..., nb*32) int8, d (..., nb) float32) where d
    is already rounded through fp16, the value the dot products use afterwards.
    NaN or ±inf (no block scale can be formed) or a d beyond fp16's range -> ValueError.
    When fp16(d) is 0 the block contributes nothing whatever q is; q is then reported 0.
    """
    xs = np.asarray(xs)
    if xs.dtype != np.float32:
        raise TypeError(f"quantize_q8_0 takes float32, got {xs.dtype}")
    if not np.all(np.isfinite(xs)):
        raise ValueError("q8_0 activations must be finite (NaN or inf: no block scale)")
    k = xs.shape[-1]
    nb = -(-k // 32)
    padded = np.zeros(xs.shape[:-1] + (nb * 32,), dtype=np.float32)
    padded[..., :k] = xs
    blocks = padded.reshape(xs.shape[:-1] + (nb, 32))
    amax = np.abs(blocks).max(axis=-1, initial=np.float32(0))
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
        v = (blocks * inv[..., None]).astype(np.float32)
        d16 = d.astype(np.float16).astype(np.float32)
    if not np.all(np.isfinite(d16)):
        raise ValueError("q8_0: a block's scale max|x|/127 overflows fp16 (|x| > 127 * 65504)")
    v64 = v.astype(np.float64)
    q = np.where(np.isfinite(v64), np.sign(v64) * np.floor(np.abs(v64) + 0.5), 0.0)
    q[d16 == 0] = 0
    return q.astype(np.int8).reshape(xs.shape[:-1] + (nb * 32,)), d16


def _activations(activations, w=None):
    modes = ("float32", "q8_0", "int8_row") if isinstance(w, TernaryWeights) else ("float32", "q8_0")
    if activations not in modes:
        raise ValueError(f"activations must be one of {modes}, got {activations!r}")
    return activations


# ---- ternary weights (docs/guide/ternary.md) -------------------------------------------

def _ternary_planes(t):
    """Canonical (sign, nonzero) planes of an (N, K) {-1, 0, +1} array, word by word with
    shifts (not np.packbits)."""
    n, k = t.shape
    words = -(-k // 64)
    sign = np.zeros((n, words), dtype=np.uint64)
    nz = np.zeros((n, words), dtype=np.uint64)
    for c in range(k):
        bit = np.uint64(1) << np.uint64(c % 64)
        sign[:, c // 64] |= np.where(t[:, c] > 0, bit, np.uint64(0))
        nz[:, c // 64] |= np.where(t[:, c] != 0, bit, np.uint64(0))
    return sign, nz


def pack_ternary(w, *, threshold=None, group_size=None, eps=1e-5):
    """The oracle's :func:`takane_kernels.pack_ternary`: absmean (BitNet b1.58: γ = mean |w|
    per tensor or per row-group, t = clip(round-half-even(w / (γ + eps)), -1, 1)) or an
    explicit threshold (t = sign(w) where |w| > threshold; scale = mean |w| of the kept
    weights per row or row-group), in float64, element by element per group."""
    w = _real(w, "w").astype(np.float64)
    n, k = w.shape
    groups = [(0, k)] if group_size is None else [(c, min(k, c + group_size)) for c in range(0, k, group_size)]
    t = np.zeros((n, k))
    per = np.zeros((n, len(groups)))
    if threshold is None and group_size is None:
        gamma = np.abs(w).sum() / w.size if w.size else 0.0
        if gamma + eps > 0:
            t = np.clip(np.round(w / (gamma + eps)), -1, 1)
        sign, nz = _ternary_planes(t)
        return TernaryWeights(sign, nz, k, tensor_scale=gamma)
    for r in range(n):
        for g, (c0, c1) in enumerate(groups):
            seg = w[r, c0:c1]
            if threshold is None:
                gamma = np.abs(seg).sum() / len(seg) if len(seg) else 0.0
                per[r, g] = gamma
                if gamma + eps > 0:
                    t[r, c0:c1] = np.clip(np.round(seg / (gamma + eps)), -1, 1)
            else:
                kept = np.abs(seg) > threshold
                t[r, c0:c1] = np.sign(seg) * kept
                per[r, g] = np.abs(seg[kept]).sum() / kept.sum() if kept.any() else 0.0
    sign, nz = _ternary_planes(t)
    if group_size is None:
        return TernaryWeights(sign, nz, k, scale=per[:, 0])
    return TernaryWeights(sign, nz, k, group_scale=per, group_size=group_size)


def unpack_ternary(w):
    """The {-1, 0, +1} values of TernaryWeights as float64 (N, K) (scales not applied)."""
    k = w.k
    sign = unpack_bits(w.sign, k, np.float64)  # +1 / -1
    nz = (unpack_bits(w.nonzero, k, np.float64) + 1) / 2  # 1 / 0
    return sign * nz  # a zero weight: its sign bit 0 reads as -1, times nonzero 0


def _fp16_value(lo, hi):
    """The value of little-endian fp16 bytes, from the definition (sign, exponent, mantissa)."""
    h = int(lo) | int(hi) << 8
    e, m = (h >> 10) & 31, h & 1023
    if e == 31:
        v = np.inf if m == 0 else np.nan
    else:
        v = (1024 + m) * 2.0 ** (e - 25) if e else m * 2.0**-24
    return -v if h & 0x8000 else v


def decode_tq2_0(row, k):
    """One TQ2_0 row (bytes, K/256 blocks of 66) -> (codes - 1 as int (K,), d per block as
    float64), element by element from llama.cpp's layout: element j of a block is bits
    2 * ((j % 128) // 32) of byte 32 * (j // 128) + j % 32; d is the fp16 in bytes 64, 65."""
    row = np.asarray(row, dtype=np.uint8)
    t = np.zeros(k, dtype=np.int64)
    d = np.zeros(k // 256)
    for b in range(k // 256):
        blk = row[66 * b:66 * b + 66]
        for j in range(256):
            byte = blk[32 * (j // 128) + j % 32]
            t[256 * b + j] = ((int(byte) >> (2 * ((j % 128) // 32))) & 3) - 1
        d[b] = _fp16_value(blk[64], blk[65])
    return t, d


def decode_tq1_0(row, k):
    """One TQ1_0 row (bytes, K/256 blocks of 54) -> (codes - 1 (K,), d per block), by
    llama.cpp's rule: trit n of byte b is ((b * 3^n) mod 256) * 3 // 256; qs[0..31] give
    elements 32 n + m, qs[32..47] 160 + 16 n + m, qh[0..3] 240 + 4 n + j; d = fp16 at 52."""
    row = np.asarray(row, dtype=np.uint8)
    t = np.zeros(k, dtype=np.int64)
    d = np.zeros(k // 256)

    def trit(byte, n):
        return ((int(byte) * 3**n) % 256) * 3 // 256

    for b in range(k // 256):
        blk = row[54 * b:54 * b + 54]
        base = 256 * b
        for m in range(32):
            for n in range(5):
                t[base + 32 * n + m] = trit(blk[m], n) - 1
        for m in range(16):
            for n in range(5):
                t[base + 160 + 16 * n + m] = trit(blk[32 + m], n) - 1
        for j in range(4):
            for n in range(4):
                t[base + 240 + 4 * n + j] = trit(blk[48 + j], n) - 1
        d[b] = _fp16_value(blk[52], blk[53])
    return t, d


def quantize_int8_row(xs):
    """BitNet b1.58's per-row absmax int8 on float32 rows (..., K), in float32 arithmetic:
    a = max(max |xs|, 1e-5), q = clip(round-half-even(xs * (127 / a)), -128, 127) (the
    quotient and the product rounded to float32), d = a / 127 (float32). Returns
    (q int8 (..., K), d float32 (...)). NaN or ±inf -> ValueError."""
    xs = np.asarray(xs)
    if xs.dtype != np.float32:
        raise TypeError(f"quantize_int8_row takes float32, got {xs.dtype}")
    if not np.all(np.isfinite(xs)):
        raise ValueError("int8_row activations must be finite (NaN or inf: no row scale)")
    amax = np.abs(xs).max(axis=-1, initial=np.float32(0))
    a = np.maximum(amax, np.float32(1e-5)).astype(np.float32)
    inv = (np.float32(127) / a).astype(np.float32)
    v = (xs * inv[..., None]).astype(np.float32)
    q = np.clip(np.rint(v.astype(np.float64)), -128, 127).astype(np.int8)
    return q, (a / np.float32(127)).astype(np.float32)


def _ternary_terms(x, w, activations):
    """(M, N, terms) float64 exact terms whose sum, times scale * tensor_scale, is the
    ternary product: f32: xs * t * g per column; q8_0: d_b * g * S_b per block; int8_row:
    d * g * D_g per group (S_b, D_g exact integer sums)."""
    n, k = w.n, w.k
    if k == 0:  # every sum is empty
        return np.zeros((np.asarray(x).shape[0], n, 1))
    t = unpack_ternary(w)
    xs = np.asarray(x).astype(np.float32)
    if w.in_scale is not None:
        xs = (xs * w.in_scale.astype(np.float32)).astype(np.float32)
    g = _group_factor(w, np.arange(k))  # (N, K)
    if activations == "float32":
        x64 = np.asarray(x).astype(np.float64)
        if w.in_scale is not None:
            x64 = x64 * w.in_scale.astype(np.float64)
        return x64[:, None, :] * (t * g)[None, :, :]
    if activations == "q8_0":
        q, d = quantize_q8_0(xs)
        nb = d.shape[-1]
        tp = np.zeros((n, nb * 32))
        tp[:, :k] = t
        s_int = np.einsum("mbk,nbk->mnb", q.astype(np.float64).reshape(-1, nb, 32), tp.reshape(n, nb, 32))
        gb = _group_factor(w, np.arange(nb) * 32)
        return d.reshape(-1, nb)[:, None, :] * gb[None, :, :] * s_int
    q, d = quantize_int8_row(xs)
    size = w.group_size or max(k, 1)
    starts = list(range(0, k, size)) or [0]
    terms = []
    for c0 in starts:
        c1 = min(k, c0 + size)
        dg = q[:, c0:c1].astype(np.int64) @ t[:, c0:c1].astype(np.int64).T  # exact integers
        gg = _group_factor(w, [c0])[:, 0] if k else np.ones(n)
        terms.append(d.astype(np.float64)[:, None] * gg[None, :] * dg.astype(np.float64))
    return np.stack(terms, axis=-1)


def _ternary_row_scale(w):
    s = np.ones(w.n) if w.scale is None else w.scale.astype(np.float64)
    return s * (1.0 if w.tensor_scale is None else float(w.tensor_scale))


def _ternary_matmul(x, w, bias, activations, bound):
    x = np.asarray(x)
    batch = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1]) if x.shape[-1] else np.zeros((int(np.prod(batch)), 0))
    n = w.n
    if rows.shape[0] == 0 or n == 0:
        return np.zeros(batch + (n,))
    terms = _ternary_terms(rows, w, activations)
    s = _ternary_row_scale(w)
    if not bound:
        y = terms.sum(axis=-1) * s
        if bias is not None:
            y = y + np.asarray(bias).astype(np.float64)
        return y.reshape(batch + (n,))
    u = 2.0**-24
    j = {"float32": w.k, "q8_0": -(-w.k // 32), "int8_row": -(-w.k // (w.group_size or max(w.k, 1)))}[activations]
    j = max(j, 1) + 5
    y = (j * u / (1 - j * u)) * np.abs(terms).sum(axis=-1) * np.abs(s)
    if bias is not None:
        y = y + (2 * u / (1 - 2 * u)) * np.abs(np.asarray(bias).astype(np.float64))
    return y.reshape(batch + (n,))


def _group_factor(w, cols):
    """(N, len(cols)) float64: group_scale[n, col // G] for each column index, or ones."""
    if w.group_scale is None:
        return np.ones((w.n, len(cols)))
    return w.group_scale.astype(np.float64)[:, np.asarray(cols) // w.group_size]


def _q8_terms(x, w):
    """(M, N, nb) float64 terms d_b * g[n, 32b // G] * S_b (exact products of exact
    values: S_b is an integer sum) for rows x (M, K), and the scaled rows' blocks."""
    xs = np.asarray(x).astype(np.float32)
    if w.in_scale is not None:
        xs = (xs * w.in_scale.astype(np.float32)).astype(np.float32)
    q, d = quantize_q8_0(xs)
    nb = d.shape[-1]
    signs = np.zeros((w.n, nb * 32))
    signs[:, :w.k] = unpack_bits(w.bits, w.k, np.float64)
    qb = q.astype(np.float64).reshape(-1, nb, 32)
    sb = signs.reshape(-1, nb, 32)
    s_int = np.einsum("mbk,nbk->mnb", qb, sb)  # |S_b| <= 32 * 127: exact in float64
    g = _group_factor(w, np.arange(nb) * 32)
    return d.reshape(-1, nb)[:, None, :] * g[None, :, :] * s_int


def binary_weight_matmul(x, w, *, bias=None, activations="float32", out=None, threads=None):
    """The exact value (float64) that binary_weight_matmul approximates within
    binary_weight_matmul_error_bound.

    float32: ((x * in_scale) @ (sign(W) * group_scale).T) * scale + bias, all in float64.
    q8_0: the rows x * in_scale (rounded to float32) quantized by quantize_q8_0, then
    scale[n] * sum_b d_b * group_scale[n, 32b // G] * S_b + bias[n] with
    S_b = sum over block b of q[k] * sign(W)[n, k] (exact integers), in float64.

    TernaryWeights: the same with the ternary matrix in place of sign(W), the row factor
    scale * tensor_scale, and also activations="int8_row" (quantize_int8_row, then
    scale * d * sum_G group_scale * D_G with D_G exact integer sums per group)."""
    _activations(activations, w)
    if isinstance(w, TernaryWeights):
        y = _ternary_matmul(x, w, bias, activations, bound=False)
        if out is not None:
            out[...] = y
            return out
        return y
    x = np.asarray(x)
    batch = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1]) if x.shape[-1] else np.zeros((int(np.prod(batch)), 0))
    if activations == "q8_0":
        y = _q8_terms(rows, w).sum(axis=-1) if rows.size else np.zeros((rows.shape[0], w.n))
    else:
        x64 = rows.astype(np.float64)
        signs = unpack_bits(w.bits, w.k, np.float64) * _group_factor(w, np.arange(w.k))
        if w.in_scale is not None:
            x64 = x64 * w.in_scale.astype(np.float64)
        y = x64 @ signs.T
    if w.scale is not None:
        y = y * w.scale.astype(np.float64)
    if bias is not None:
        y = y + np.asarray(bias).astype(np.float64)
    y = y.reshape(batch + (w.n,))
    if out is not None:
        out[...] = y
        return out
    return y


def binary_weight_matmul_error_bound(x, w, bias=None, activations="float32"):
    """The documented bound on |binary_weight_matmul - exact| per output, float64 (..., N)::

        float32: gamma(K + 3) * |scale[n]| * sum_k |x[k] * in_scale[k]| + gamma(2) * |bias[n]|,
                 with group scales gamma(K + 4) * |scale[n]| * sum_k |x[k] * in_scale[k] * g[n, k // G]|
                 + gamma(2) * |bias[n]|
        q8_0:    gamma(nb + 4) * |scale[n]| * sum_b |d_b * g[n, 32b // G] * S_b|
                 + gamma(2) * |bias[n]|   (nb = ceil(K / 32) blocks; the quantization itself
                 is exact, it is part of the definition of the exact value)

    with u = 2**-24, gamma(j) = j u / (1 - j u), g = group_scale (1 when absent): every
    product and sum of a kernel is one float32 rounding, in any order (K terms per row, a
    group-scale and a row-scale product and the bias add; for q8_0 one term per block).

    TernaryWeights: gamma(j + 5) * |scale * tensor_scale| * sum |terms| + gamma(2) * |bias|,
    j = K (float32), nb = ceil(K / 32) (q8_0) or ceil(K / group_size) groups (int8_row, 1
    without group scales), the terms those of the exact value (docs/guide/ternary.md)."""
    _activations(activations, w)
    if isinstance(w, TernaryWeights):
        return _ternary_matmul(x, w, bias, activations, bound=True)
    u = 2.0**-24

    def gamma(j):
        return j * u / (1 - j * u)

    x = np.asarray(x)
    batch = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1]) if x.shape[-1] else np.zeros((int(np.prod(batch)), 0))
    n = w.n
    if activations == "q8_0":
        nb = -(-w.k // 32)
        total = np.abs(_q8_terms(rows, w)).sum(axis=-1) if rows.size else np.zeros((rows.shape[0], n))
        bound = gamma(nb + 4) * total
    else:
        x64 = rows.astype(np.float64)
        if w.in_scale is not None:
            x64 = x64 * w.in_scale.astype(np.float64)
        total = np.abs(x64) @ np.abs(_group_factor(w, np.arange(w.k))).T
        # one more rounding (the group-scale product) when there are group scales
        bound = gamma(w.k + (4 if w.group_scale is not None else 3)) * total
    if w.scale is not None:
        bound = bound * np.abs(w.scale.astype(np.float64))
    if bias is not None:
        bound = bound + gamma(2) * np.abs(np.asarray(bias).astype(np.float64))
    return bound.reshape(batch + (n,))


class AdaptiveThreshold:
    """EMA of per-channel mean and std (sum of squares / (n - ddof), plus eps), channel by
    channel with math.fsum; ddof=0, eps=0 is the population std, ddof=1, eps=1e-8 the seed's."""

    def __init__(self, channels, *, decay=0.99, std_factor=0.5, mean_factor=0.0, ddof=0, eps=0.0):
        self.channels = int(channels)
        self.decay, self.std_factor, self.mean_factor = float(decay), float(std_factor), float(mean_factor)
        self.ddof, self.eps = int(ddof), float(eps)
        self.mean = [0.0] * self.channels
        self.std = [1.0] * self.channels

    def update(self, batch):
        import math

        rows = np.asarray(batch).astype(np.float64).reshape(-1, self.channels)
        n = rows.shape[0]
        for c in range(self.channels):
            col = [float(v) for v in rows[:, c]]
            mu = math.fsum(col) / n
            sd = math.sqrt(math.fsum((v - mu) ** 2 for v in col) / (n - self.ddof)) + self.eps
            self.mean[c] += (1.0 - self.decay) * (mu - self.mean[c])
            self.std[c] += (1.0 - self.decay) * (sd - self.std[c])
        return self

    @property
    def threshold(self):
        return np.array([self.mean_factor * m + self.std_factor * s for m, s in zip(self.mean, self.std)])



# ---- convolution (docs/guide/convolution.md) -------------------------------------------------------


def _pair_ref(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _pads_ref(padding, kernel, dilation, stride):
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("padding='same' needs stride 1")
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = _pair_ref(padding)
    return ph, ph, pw, pw


def binary_conv2d(x, w, *, stride=1, padding=0, dilation=1, groups=1, pad_value=0, threshold=0.0,
                  bias=None, residual=None, out_threshold=None, out=None, threads=None):
    """The binary convolution spelled out: unpack everything to ±1 (0 for pad_value 0
    padding), pad the image, sum over taps with float64 einsum (exact: |dot| < 2**53),
    then the float32 epilogue steps. NHWC; w a PackedConvWeights (OHWI bits)."""
    cout, kh, kw, _ = w.bits.shape
    cin_g = w.in_channels
    cin = cin_g * groups
    x = np.asarray(x)
    xs = unpack_bits(x, cin, np.float64) if x.dtype == np.uint64 else \
        np.where(_binarize(x, threshold), 1.0, -1.0)
    ws = unpack_bits(w.bits, cin_g, np.float64)  # (cout, kh, kw, cin_g)
    sh, sw = _pair_ref(stride)
    dh, dw = _pair_ref(dilation)
    pt, pb, pl, pr = _pads_ref(padding, (kh, kw), (dh, dw), (sh, sw))
    n, h, wd, _ = xs.shape
    xp = np.full((n, h + pt + pb, wd + pl + pr, cin), float(pad_value))
    xp[:, pt:pt + h, pl:pl + wd, :] = xs
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError("the padded input is smaller than the kernel")
    dot = np.zeros((n, ho, wo, cout))
    cog = cout // groups
    for g in range(groups):
        for ky in range(kh):
            for kx in range(kw):
                patch = xp[:, ky * dh:ky * dh + (ho - 1) * sh + 1:sh, kx * dw:kx * dw + (wo - 1) * sw + 1:sw,
                           g * cin_g:(g + 1) * cin_g]
                dot[..., g * cog:(g + 1) * cog] += np.einsum("nhwc,oc->nhwo", patch, ws[g * cog:(g + 1) * cog, ky, kx])
    y = np.rint(dot).astype(np.int32).astype(np.float32)
    if w.scale is not None:
        y = y * w.scale.astype(np.float32)
    if bias is not None:
        y = y + np.asarray(bias).astype(np.float32)
    if residual is not None:
        y = y + np.asarray(residual).astype(np.float32)
    return _result(y, out_threshold, out)


def binary_max_pool2d(x, kernel_size, *, stride=None, padding=0, channels=None, out=None, threads=None):
    """Max of ±1 values over each window (padded taps ignored), unpacked and repacked."""
    x = np.asarray(x)
    if x.dtype == np.uint64:
        c = x.shape[-1] * 64 if channels is None else channels
        v = unpack_bits(x, c, np.int64)
    else:
        v = np.where(_binarize(x, 0.0), 1, -1)
        c = x.shape[-1]
    kh, kw = _pair_ref(kernel_size)
    sh, sw = (kh, kw) if stride is None else _pair_ref(stride)
    ph, pw = _pair_ref(padding)
    n, h, wd, _ = v.shape
    vp = np.full((n, h + 2 * ph, wd + 2 * pw, c), -2, dtype=np.int64)  # below any ±1: ignored
    vp[:, ph:ph + h, pw:pw + wd] = v
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    m = np.full((n, ho, wo, c), -2, dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            m = np.maximum(m, vp[:, ky:ky + (ho - 1) * sh + 1:sh, kx:kx + (wo - 1) * sw + 1:sw])
    result = pack_bits(m, 0.0)
    if out is not None:
        out[...] = result
        return out
    return result


def pack_conv_weights(w, *, scale="mean_abs"):
    """OHWI real weights -> PackedConvWeights, bits by this module's pack_bits."""
    from ._conv import PackedConvWeights  # the container only: it computes nothing

    w = _real(w, "w")
    if w.ndim != 4:
        raise ValueError("w must be 4-D (Cout, KH, KW, Cin)")
    if isinstance(scale, str):
        if scale != "mean_abs":
            raise ValueError(scale)
        scale = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1).mean(axis=1)
    return PackedConvWeights(pack_bits(w), w.shape[3], scale=scale)
