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

from ._weights import PackedWeights

__all__ = [
    "pack_bits", "unpack_bits", "pack_weights", "binary_matmul",
    "matmul_unpacked", "matmul_popcount", "PackedWeights",
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


def pack_weights(w, *, scale="mean_abs", in_scale=None):
    w = _real(w, "w")
    if w.ndim != 2:
        raise ValueError("w must be 2-D")
    if isinstance(scale, str):
        if scale != "mean_abs":
            raise ValueError(scale)
        scale = np.abs(w.astype(np.float64)).mean(axis=1) if w.shape[1] else np.zeros(w.shape[0])
    return PackedWeights(pack_bits(w), w.shape[1], scale=scale, in_scale=in_scale)


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
    """sign(x) @ sign(w).T exactly, int32 (..., N); see takane_kernels.binary_matmul."""
    if isinstance(w, PackedWeights):
        wbits, k = w.bits, w.k
    else:
        if k is None:
            raise ValueError("raw w needs k=")
        wbits = np.asarray(w)
    x = np.asarray(x)
    xbits = x if x.dtype == np.uint64 else pack_bits(x, threshold)
    batch = xbits.shape[:-1]
    y = matmul_unpacked(xbits.reshape(-1, xbits.shape[-1]), wbits, k).reshape(batch + (wbits.shape[0],))
    if out is not None:
        out[...] = y
        return out
    return y
