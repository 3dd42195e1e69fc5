"""llama.cpp's GGUF Q1_0 blocks (tensor type 41) <-> PackedWeights with group scales.

A Q1_0 row of K weights (K % 128 == 0) is K/128 blocks of 18 bytes: ``d`` (IEEE fp16,
little-endian), then 16 bytes of signs, weight j of the block at bit j % 8 of byte j // 8,
bit 1 = +d, bit 0 = -d (ggml's ``block_q1_0`` / ``dequantize_row_q1_0``). The 16 sign bytes
read as two little-endian uint64 are exactly our canonical words, so both directions copy
the bits and convert only ``d`` — done in C (``takane_q1_0_to_bits`` /
``takane_bits_to_q1_0``), one pass, no Python loop.
"""

from __future__ import annotations

import numpy as np

from ._capi import check_k, ffi, lib, raise_status
from ._weights import PackedWeights

__all__ = ["from_q1_0", "to_q1_0", "Q1_0_BLOCK", "Q1_0_BLOCK_BYTES", "Q1_0_GGML_TYPE"]

Q1_0_BLOCK = 128  # weights per block (QK1_0)
Q1_0_BLOCK_BYTES = 18  # sizeof(block_q1_0): fp16 d + 16 sign bytes
Q1_0_GGML_TYPE = 41  # GGML_TYPE_Q1_0
FP16_OVERFLOW = 65520.0  # the smallest magnitude that rounds (to nearest even) to fp16 infinity


def _check_k128(k: int, what: str) -> int:
    if k % Q1_0_BLOCK:
        raise ValueError(f"{what}: Q1_0 needs K to be a multiple of {Q1_0_BLOCK}, got K={k}")
    return k // Q1_0_BLOCK


def _checked_rows(data: object, k: int, what: str) -> tuple[np.ndarray, int]:
    """``data`` as C-contiguous uint8 Q1_0 rows (N, k/128·18) and N; TypeError / ValueError
    as :func:`from_q1_0` documents."""
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy uint8 array of Q1_0 rows, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise TypeError(f"data must have dtype uint8 (Q1_0 block bytes), got {data.dtype}")
    nb = _check_k128(k, what)
    if data.ndim != 2 or data.shape[1] != nb * Q1_0_BLOCK_BYTES:
        raise ValueError(
            f"data has shape {data.shape}: expected (N, {nb * Q1_0_BLOCK_BYTES}) "
            f"(k/128 = {nb} blocks of {Q1_0_BLOCK_BYTES} bytes per row for k={k})"
        )
    if not data.flags.c_contiguous:  # cffi hands C contiguous buffers only: one copy
        data = np.ascontiguousarray(data)
    return data, data.shape[0]


def _raise_q1_0_status(st: int, data: np.ndarray, what: str) -> None:
    """Raise for a failed C conversion of the Q1_0 rows ``data``; a non-finite d is named."""
    if st == lib.TAKANE_ERR_NOT_FINITE:
        n, nb = data.shape[0], data.shape[1] // Q1_0_BLOCK_BYTES
        d = data.reshape(n, nb, Q1_0_BLOCK_BYTES)[:, :, :2].copy().view("<f2")[..., 0]
        r, b = np.argwhere(~np.isfinite(d))[0]
        raise ValueError(f"{what}: block scale d of row {r}, block {b} is {d[r, b]} (not finite)")
    if st == lib.TAKANE_ERR_OUT_OF_MEMORY:
        raise MemoryError(f"{what}: out of memory")
    raise_status(st, what)


def from_q1_0(data: object, k: int) -> PackedWeights:
    """Q1_0 rows ``data`` uint8 (N, k/128·18) -> :class:`PackedWeights` (N, k) with
    ``group_size=128`` and ``group_scale`` = float32(d) (exact).

    The bits are copied unchanged. ``k % 128 != 0``, a row length other than k/128·18
    bytes or an infinite / NaN ``d`` -> ``ValueError``; not a uint8 array -> ``TypeError``.
    """
    k = check_k(k)
    nb = _check_k128(k, "from_q1_0")
    data, n = _checked_rows(data, k, "from_q1_0")
    bits = np.empty((n, k // 64), dtype=np.uint64)
    gs = np.empty((n, nb), dtype=np.float32)
    if n and nb:
        st = lib.takane_q1_0_to_bits(
            n, k, ffi.from_buffer("uint8_t[]", data), nb * Q1_0_BLOCK_BYTES,
            ffi.from_buffer("uint64_t[]", bits, require_writable=True), bits.shape[1],
            ffi.from_buffer("float[]", gs, require_writable=True), nb,
        )
        _raise_q1_0_status(st, data, "from_q1_0")
    if not (n and nb):  # empty: the constructor's checks and shapes
        return PackedWeights(bits, k, group_scale=gs, group_size=Q1_0_BLOCK)
    return PackedWeights._adopt(bits, k, gs, Q1_0_BLOCK)  # made and checked by the C call above


def _from_q1_0_prepacked(data: object, k: int) -> PackedWeights:
    """As :func:`from_q1_0` (same checks, equal result), but the weights hold only the C
    handle, built straight from the Q1_0 bytes (``takane_weights_from_q1_0``: panels plus
    float32 block scales, ~1.11x the Q1_0 bytes): no canonical rows or row-major scales
    exist at any time, so loading a model never holds a second full copy of it (``bits`` /
    ``group_scale`` are rebuilt from the handle on access, as for any prepared weights).
    ``data`` may be a read-only view of a memory-mapped file: it is only read."""
    k = check_k(k)
    data, n = _checked_rows(data, k, "from_q1_0")
    if not (n and k):  # empty: no handle to carry the scales (see PackedWeights' invariant)
        return from_q1_0(data, k)
    out = ffi.new("takane_weights **")
    st = lib.takane_weights_from_q1_0(n, k, ffi.from_buffer("uint8_t[]", data), data.shape[1], ffi.NULL, 0, out)
    _raise_q1_0_status(st, data, "from_q1_0")
    # the handle carries the signs and the group scales: PackedWeights' invariant holds
    # with no rows or row-major scales at all (what _prepacked() leaves behind)
    return PackedWeights._adopt(None, k, None, Q1_0_BLOCK, handle=ffi.gc(out[0], lib.takane_weights_free), n=n)


def _block_scales(w: PackedWeights, nb: int) -> np.ndarray | None:
    """The float32 (N, K/128) scale of each Q1_0 block of ``w``, or None (all 1)."""
    g = None
    if w.group_size is not None:
        if w.group_size % Q1_0_BLOCK:
            raise ValueError(
                f"to_q1_0: group_size {w.group_size} is not a multiple of {Q1_0_BLOCK}, so a "
                f"Q1_0 block would span two groups with different scales"
            )
        g = np.repeat(w.group_scale, w.group_size // Q1_0_BLOCK, axis=1)[:, :nb]
    if w.scale is not None:  # fold the row scale in: one float32 product per block
        s = w.scale[:, None]
        with np.errstate(over="ignore"):  # an overflow to inf is reported by the C call
            g = np.broadcast_to(s, (w.n, nb)) if g is None else g * s
    return None if g is None else np.ascontiguousarray(g, dtype=np.float32)


def to_q1_0(w: object) -> np.ndarray:
    """:class:`PackedWeights` (N, K) -> Q1_0 rows uint8 (N, K/128·18); the bits copied
    unchanged, ``d`` = the block's scale rounded to fp16 (to nearest, ties to even).

    The block scale is ``group_scale[n, k // G]`` when ``group_size`` G is a multiple of
    128 (each group spans G/128 blocks), times the row ``scale[n]`` if there is one (the
    float32 product, then rounded to fp16), and 1 when neither is present. ``K % 128 != 0``,
    a group size that is not a multiple of 128, an ``in_scale`` (Q1_0 has no per-column
    factor) or a scale that overflows fp16 (|d| >= 65520) -> ``ValueError``.
    """
    if not isinstance(w, PackedWeights):
        raise TypeError(f"w must be a takane_kernels.PackedWeights, got {type(w).__name__}")
    nb = _check_k128(w.k, "to_q1_0")
    if w.in_scale is not None:
        raise ValueError("to_q1_0: Q1_0 has no per-input-column scale; these weights have an in_scale")
    g = _block_scales(w, nb)
    out = np.empty((w.n, nb * Q1_0_BLOCK_BYTES), dtype=np.uint8)
    if w.n and nb:
        bits = w.bits  # (rebuilt from the kernels' copy if the weights hold only that)
        st = lib.takane_bits_to_q1_0(
            w.n, w.k, ffi.from_buffer("uint64_t[]", bits), bits.shape[1],
            ffi.NULL if g is None else ffi.from_buffer("float[]", g), nb,
            ffi.from_buffer("uint8_t[]", out, require_writable=True), out.shape[1],
        )
        if st == lib.TAKANE_ERR_NOT_FINITE:
            bad = np.argwhere(~(np.abs(g) < FP16_OVERFLOW))[0]
            raise ValueError(
                f"to_q1_0: the block scale of row {bad[0]}, block {bad[1]} is {g[bad[0], bad[1]]}, "
                f"which overflows fp16 (|d| >= {FP16_OVERFLOW:g}) or is not finite"
            )
        raise_status(st, "to_q1_0")
    return out
