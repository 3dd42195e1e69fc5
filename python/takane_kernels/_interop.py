"""Converters between the canonical packed format and other 1-bit layouts.

Canonical (docs/guide/bit-format.md): uint64 words, element c of a row at bit c % 64 of word c // 64,
bit 1 = +1, zero padding. Each converter is the equivalent of a numpy one-liner (given in
its docstring) and validates its input like every function that takes packed data.
"""

from __future__ import annotations

import numpy as np

from ._capi import check_k, check_packed, words_for

__all__ = ["from_packbits", "to_packbits", "flip_polarity"]

# byte -> the same byte with its 8 bits in reverse order ("big" <-> "little" bit order)
_BITREV = np.array([int(f"{b:08b}"[::-1], 2) for b in range(256)], dtype=np.uint8)


def _bitorder(bitorder: object) -> str:
    if bitorder not in ("big", "little"):
        raise ValueError(f"bitorder must be 'big' or 'little' (as in np.packbits), got {bitorder!r}")
    return bitorder


def from_packbits(b: object, k: int, *, bitorder: str = "big") -> np.ndarray:
    """``np.packbits`` bytes (..., ceil(k/8)) uint8 -> canonical bits (..., ceil(k/64)).

    Bit set = +1. The same as
    ``pack_bits(np.unpackbits(b, axis=-1, count=k, bitorder=bitorder), 0.5)``, so
    ``from_packbits(np.packbits(v >= t, axis=-1), v.shape[-1]) == pack_bits(v, t)``.
    Bits past k in the last byte must be 0 (np.packbits writes them so).
    """
    k = check_k(k)
    bitorder = _bitorder(bitorder)
    if not isinstance(b, np.ndarray):
        raise TypeError(f"b must be a numpy uint8 array, got {type(b).__name__}")
    if b.dtype != np.uint8:
        raise TypeError(f"b must have dtype uint8 (np.packbits output), got {b.dtype}")
    nbytes = (k + 7) // 8
    if b.ndim < 1 or b.shape[-1] != nbytes:
        raise ValueError(f"b has shape {b.shape}: its last dimension must be ceil(k/8) = {nbytes} bytes for k={k}")
    little = b if bitorder == "little" else _BITREV[b]  # now bit j of byte i is element 8i + j
    if k % 8 and nbytes and np.any(little[..., -1] >> np.uint8(k % 8)):
        raise ValueError(f"b has non-zero padding bits (bit positions >= k={k} in the last byte)")
    padded = np.zeros(b.shape[:-1] + (words_for(k) * 8,), dtype=np.uint8)
    padded[..., :nbytes] = little
    return padded.view("<u8").astype(np.uint64)


def to_packbits(bits: object, k: int, *, bitorder: str = "big") -> np.ndarray:
    """Canonical bits (..., ceil(k/64)) -> ``np.packbits`` bytes (..., ceil(k/8)) uint8.

    The same as ``np.packbits(unpack_bits(bits, k) > 0, axis=-1, bitorder=bitorder)``.
    """
    k = check_k(k)
    bitorder = _bitorder(bitorder)
    bits = check_packed(bits, k, "bits")
    little = np.ascontiguousarray(bits, dtype="<u8").view(np.uint8)[..., : (k + 7) // 8]
    return np.array(little) if bitorder == "little" else _BITREV[little]


def flip_polarity(bits: object, k: int) -> np.ndarray:
    """Swap polarity: bit 1 = −1 (Larq Compute Engine's convention) <-> bit 1 = +1 (ours).

    Inverts the k valid bits of every row and keeps the padding 0; its own inverse. The
    same as ``pack_bits(unpack_bits(bits, k) < 0, 0.5)``, i.e. ``bits ^ mask`` with
    ``mask`` all ones over the k valid bits. For LCE's int32
    words (..., ceil(k/32)), whose bytes are LSB-first like ours:
    ``flip_polarity(from_packbits(lce.view(np.uint8)[..., :(k + 7) // 8], k, bitorder="little"), k)``.
    """
    k = check_k(k)
    bits = check_packed(bits, k, "bits")
    mask = np.full(words_for(k), np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    if k % 64:
        mask[-1] = np.uint64((1 << (k % 64)) - 1)
    return np.bitwise_xor(bits, mask)
