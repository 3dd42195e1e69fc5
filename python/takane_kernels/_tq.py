"""llama.cpp's ternary GGUF formats TQ2_0 (type 35) and TQ1_0 (type 34) <-> TernaryWeights,
and bitnet.cpp's I2_S (type 36) -> TernaryWeights.

Both hold a row of K weights (K a multiple of 256) as blocks of 256 ternary codes and one
fp16 scale d (the block's last 2 bytes), weight = (code - 1) * d. The codes map to the
canonical planes exactly; d becomes ``group_scale`` with ``group_size=256`` (fp16 -> float32
is exact). Layouts (llama.cpp ggml-common.h; docs/guide/ternary.md):

- TQ2_0, 66 bytes: ``qs[64]`` then d. Element j of the block: chunk c = j // 128, m = j % 32,
  l = (j % 128) // 32 -> bits 2l..2l+1 of qs[32c + m]. Code 3 (+2) is not ternary: refused.
- TQ1_0, 54 bytes: ``qs[48]``, ``qh[4]``, d. Trit n (n = 0 most significant) of a byte b is
  ((b * 3^n) mod 256) * 3 >> 8. Elements 0..159: byte m < 32, trit n -> 32n + m; 160..239:
  byte 32 + m (m < 16), trit n -> 160 + 16n + m; 240..255: qh[j], trit n -> 240 + 4n + j.

I2_S (bitnet.cpp's ``quantize_i2_s``, x86 build with ACT_PARALLEL, the default of its
``gemm-config.h``; /work/shared/research/onebit_llm_2026.md §4) is not per row: the N*K codes
of the whole tensor, row-major, are blocks of 128 in 32 bytes — element 32g + j of a block
at bits 6-2g..7-2g of byte j (MSB first, the opposite of TQ2_0), code 0/1/2 = -1/0/+1 —
followed by a 32-byte tail whose first 4 bytes are the one float32 scale of the tensor
(little-endian; the rest is padding). Weight = (code - 1) * scale: ``tensor_scale``. The
file does not record the build: an ARM build (64 codes in 16 bytes) or one without
ACT_PARALLEL (a 4-row interleave) writes the same type id with other layouts, which this
decoder cannot tell apart (whether a given published file is the x86 layout has not been
checked against the file itself here: no such file is stored on this machine).
"""

from __future__ import annotations

import numpy as np

from ._ternary import TernaryWeights

TQ_BLOCK = 256
TQ2_0_BYTES, TQ1_0_BYTES = 66, 54
TQ1_0_GGML_TYPE, TQ2_0_GGML_TYPE = 34, 35
I2_S_GGML_TYPE = 36  # bitnet.cpp's GGML_TYPE_I2_S
I2_S_BLOCK, I2_S_BLOCK_BYTES, I2_S_TAIL = 128, 32, 32  # x86: 128 codes in 32 bytes; fp32 scale + padding
_FP16_OVERFLOW = 65520.0


def _check_k(k: int, what: str) -> int:
    if k % TQ_BLOCK:
        raise ValueError(f"{what}: K={k} is not a multiple of {TQ_BLOCK} (the TQ block)")
    return k // TQ_BLOCK


def _planes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical planes of (N, K) codes in {0, 1, 2} (K % 64 == 0)."""
    n, k = codes.shape

    def pack(mask):
        return np.ascontiguousarray(np.packbits(mask, axis=-1, bitorder="little")).view("<u8").reshape(n, k // 64)

    return pack(codes == 2).astype(np.uint64), pack(codes != 1).astype(np.uint64)


def _scales(raw: np.ndarray, n: int, nb: int, what: str) -> np.ndarray:
    d = np.ascontiguousarray(raw).view("<f2").reshape(n, nb).astype(np.float32)
    if not np.all(np.isfinite(d)):
        r, b = np.argwhere(~np.isfinite(d))[0]
        raise ValueError(f"{what}: row {r}, block {b}: the scale d is fp16 {d[r, b]} (not finite)")
    return d


def _import(q: np.ndarray, k: int, what: str, nbytes: int, decode) -> TernaryWeights:
    """TQ rows (N, K/256 * nbytes) uint8 -> TernaryWeights (group_size 256): the shape checks
    and the scales (the last 2 bytes of a block in both formats) shared by TQ2_0 and TQ1_0;
    ``decode(blocks (N, nb, nbytes))`` gives the codes (N, nb, 256) in {0, 1, 2}."""
    nb = _check_k(k, what)
    q = np.asarray(q, dtype=np.uint8)
    n = q.shape[0]
    if q.shape != (n, nb * nbytes):
        raise ValueError(f"{what}: rows must be (N, {nb * nbytes}) bytes for K={k}, got {q.shape}")
    blocks = q.reshape(n, nb, nbytes)
    sign, nz = _planes(decode(blocks).reshape(n, k))
    return TernaryWeights(sign, nz, k, group_scale=_scales(blocks[:, :, -2:], n, nb, what), group_size=TQ_BLOCK)


def _tq2_0_decode(blocks: np.ndarray) -> np.ndarray:
    n, nb = blocks.shape[:2]
    qs = blocks[:, :, :64].reshape(n, nb, 2, 1, 32)
    codes = ((qs >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)) & np.uint8(3)).reshape(n, nb * TQ_BLOCK)
    if np.any(codes == 3):
        r, c = np.argwhere(codes == 3)[0]
        raise ValueError(f"TQ2_0: row {r}, column {c} has code 3 (+2), which is not a ternary weight")
    return codes


def _tq1_0_decode(blocks: np.ndarray) -> np.ndarray:
    n, nb = blocks.shape[:2]

    def trits(b, count):  # (..., bytes) -> (..., count, bytes): trit n of every byte
        pw = np.array([1, 3, 9, 27, 81][:count], np.uint8).reshape((1,) * (b.ndim - 1) + (count, 1))
        v = (b[..., None, :] * pw).astype(np.uint8)  # mod 256
        return (v.astype(np.uint16) * 3 >> 8).astype(np.uint8)

    return np.concatenate([trits(blocks[:, :, :32], 5).reshape(n, nb, 160),
                           trits(blocks[:, :, 32:48], 5).reshape(n, nb, 80),
                           trits(blocks[:, :, 48:52], 4).reshape(n, nb, 16)], axis=-1)


def from_tq2_0(q: np.ndarray, k: int) -> TernaryWeights:
    """TQ2_0 rows (N, K/256 * 66) uint8 -> TernaryWeights (group_size 256)."""
    return _import(q, k, "TQ2_0", TQ2_0_BYTES, _tq2_0_decode)


def from_tq1_0(q: np.ndarray, k: int) -> TernaryWeights:
    """TQ1_0 rows (N, K/256 * 54) uint8 -> TernaryWeights (group_size 256)."""
    return _import(q, k, "TQ1_0", TQ1_0_BYTES, _tq1_0_decode)


def _block_scales(w: TernaryWeights, what: str) -> np.ndarray:
    """float32 (N, K/256): the fp16-to-be scale d of each 256-block of ``w`` (the checks and
    the folding of scales shared by TQ2_0 and TQ1_0, whose blocks carry the same d)."""
    if not isinstance(w, TernaryWeights):
        raise TypeError(f"w must be a takane_kernels.TernaryWeights, got {type(w).__name__}")
    nb = _check_k(w.k, what)
    if w.in_scale is not None:
        raise ValueError(f"{what}: {what[3:].upper()} has no per-input-column scale; these weights have an in_scale")
    d = np.ones((w.n, nb), np.float32)
    if w.group_scale is not None:
        if w.group_size % TQ_BLOCK:
            raise ValueError(f"{what}: group_size={w.group_size} is not a multiple of {TQ_BLOCK}")
        d = np.repeat(w.group_scale, w.group_size // TQ_BLOCK, axis=1)[:, :nb].astype(np.float32)
    if w._row_scale is not None:  # fl(scale * tensor_scale), as the kernels use it
        d = (d * w._row_scale[:, None]).astype(np.float32)
    if not np.all(np.abs(d) < _FP16_OVERFLOW):
        r, b = np.argwhere(~(np.abs(d) < _FP16_OVERFLOW))[0]
        raise ValueError(f"{what}: row {r}, block {b}: scale {d[r, b]} overflows fp16 (|d| >= 65520)")
    return d


def _export(w: TernaryWeights, what: str, nbytes: int, code_bytes) -> np.ndarray:
    """(N, K/256 * nbytes) uint8: per block, ``code_bytes(codes (N, nb, 256) in {0, 1, 2})``
    (N, nb, nbytes - 2) then d as little-endian fp16 (both formats put d last)."""
    d = _block_scales(w, what)
    n, nb = d.shape
    if n == 0:  # no rows: no bytes (to_dense() would still cost O(K) for nothing)
        return np.empty((0, nb * nbytes), np.uint8)
    codes = (w.to_dense().astype(np.int16) + 1).astype(np.uint8).reshape(n, nb, TQ_BLOCK)
    out = np.empty((n, nb, nbytes), np.uint8)
    out[:, :, :-2] = code_bytes(codes)
    out[:, :, -2:] = d.astype("<f2").view(np.uint8).reshape(n, nb, 2)
    return out.reshape(n, nb * nbytes)


def _tq2_0_codes(codes: np.ndarray) -> np.ndarray:
    n, nb = codes.shape[:2]
    c = codes.reshape(n, nb, 2, 4, 32)  # chunk, lane l (bits 2l..2l+1), byte m
    qs = np.zeros((n, nb, 2, 32), np.uint8)
    for lane in range(4):
        qs |= c[:, :, :, lane, :] << np.uint8(2 * lane)
    return qs.reshape(n, nb, 64)


def _tq1_0_codes(codes: np.ndarray) -> np.ndarray:
    """The 52 code bytes of TQ1_0 blocks (llama.cpp's quantize_row_tq1_0_ref): a byte holds
    trits c_0..c_4 (c_0 first in the block's element order) as v = sum c_n 3^(4-n) < 243,
    stored as ceil(v * 256 / 243) so that trit n is ((byte * 3^n) mod 256) * 3 >> 8; the
    last 4 bytes hold 4 trits each, v = 3 * sum c_n 3^(3-n) (the fifth trit 0)."""
    n, nb = codes.shape[:2]
    pw = np.array([81, 27, 9, 3, 1], np.uint16)

    def pack(c, count):  # (n, nb, count trits, bytes) -> (n, nb, bytes)
        v = np.einsum("abtj,t->abj", c.astype(np.uint16), pw[5 - count:]) * (3 if count == 4 else 1)
        return ((v * 256 + 242) // 243).astype(np.uint8)

    return np.concatenate([pack(codes[:, :, :160].reshape(n, nb, 5, 32), 5),
                           pack(codes[:, :, 160:240].reshape(n, nb, 5, 16), 5),
                           pack(codes[:, :, 240:].reshape(n, nb, 4, 4), 4)], axis=-1)


def to_tq2_0(w: TernaryWeights) -> np.ndarray:
    """TernaryWeights (N, K) -> TQ2_0 rows uint8 (N, K/256 * 66).

    The block scale is ``group_scale[n, k // G]`` (G a multiple of 256), times ``scale[n]``
    and ``tensor_scale`` when present (the float32 product), rounded to fp16 (to nearest,
    ties to even); 1 when there is no scale. K % 256 != 0, a group size that is not a
    multiple of 256, an ``in_scale`` or a scale that overflows fp16 -> ``ValueError``."""
    return _export(w, "to_tq2_0", TQ2_0_BYTES, _tq2_0_codes)


def to_tq1_0(w: TernaryWeights) -> np.ndarray:
    """TernaryWeights (N, K) -> TQ1_0 rows uint8 (N, K/256 * 54) (1.6875 bits per weight),
    the block scale and the errors as :func:`to_tq2_0`."""
    return _export(w, "to_tq1_0", TQ1_0_BYTES, _tq1_0_codes)


def i2_s_nbytes(n_elements: int) -> int:
    """Bytes of an I2_S tensor of ``n_elements`` weights: 2 bits each plus the 32-byte tail
    (bitnet.cpp's ggml_nbytes for the type)."""
    return n_elements // 4 + I2_S_TAIL


def from_i2_s(raw: np.ndarray, n: int, k: int) -> TernaryWeights:
    """The bytes of an I2_S tensor of N rows of K weights (1-D uint8, N*K/4 + 32) ->
    TernaryWeights (N, K) with ``tensor_scale`` = the stored float32 scale (module docstring
    for the layout). K % 128 != 0, K = 0 with rows, a wrong length, a code 3 or a scale that is
    not finite -> ``ValueError``."""
    if k % I2_S_BLOCK:
        raise ValueError(f"I2_S: K={k} is not a multiple of {I2_S_BLOCK} (the x86 I2_S block)")
    if k == 0 and n:  # its rows would cost memory (a row scale each) that no byte of the file pays for
        raise ValueError(f"I2_S: a tensor of {n} rows and K=0 holds no weights")
    raw = np.asarray(raw, dtype=np.uint8)
    ncodes = n * k // 4
    if raw.shape != (ncodes + I2_S_TAIL,):
        raise ValueError(f"I2_S: a ({n}, {k}) tensor is {ncodes + I2_S_TAIL} bytes, got shape {raw.shape}")
    scale = float(raw[ncodes:ncodes + 4].view("<f4")[0])
    if not np.isfinite(scale):
        raise ValueError(f"I2_S: the tensor scale is {scale} (not finite)")
    blocks = raw[:ncodes].reshape(-1, 1, I2_S_BLOCK_BYTES)  # (blocks, group g, byte j)
    codes = (blocks >> np.array([6, 4, 2, 0], np.uint8).reshape(1, 4, 1)) & np.uint8(3)
    codes = codes.reshape(n, k)
    if np.any(codes == 3):
        r, c = np.argwhere(codes == 3)[0]
        raise ValueError(f"I2_S: row {r}, column {c} has code 3, which is not a ternary weight")
    sign, nz = _planes(codes)
    return TernaryWeights(sign, nz, k, tensor_scale=scale)
