"""TernaryWeights: an immutable {-1, 0, +1} weight matrix as two canonical bit planes, with
scales; ``pack_ternary`` makes one from real weights (BitNet b1.58's absmean rule or an
explicit threshold). The contract is docs/guide/ternary.md.

A container like ``PackedWeights`` (validation checks the format only); the ops
(``binary_weight_matmul``, ``Linear``) take it wherever they take weights for a
weight-only layer, through its C handle (``takane_ternary_weights_create``).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

from ._capi import check_k, check_packed, owned_vector, real_scalar, ternary_handle, ternary_handle_planes
from ._weights import (PackedWeights, _check_group_scale, format_arrays, loaded_bits, loaded_int, read_npz,
                       save_npz_atomic)

__all__ = ["TernaryWeights", "pack_ternary"]

FORMAT_NAME = "takane_kernels.TernaryWeights"
FORMAT_VERSION = 1
_HANDLE_LOCK = threading.Lock()


def _rebuild(sign, nonzero, k, scale, in_scale, group_scale, group_size, tensor_scale):
    return TernaryWeights(sign, nonzero, k, scale=scale, in_scale=in_scale, group_scale=group_scale,
                          group_size=group_size, tensor_scale=tensor_scale)


def _plane(bits: object, k: int, name: str) -> np.ndarray:
    bits = check_packed(bits, k, name)
    if bits.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, ceil(K/64)), got shape {bits.shape}")
    owned = np.array(bits, dtype=np.uint64, order="C")
    owned.flags.writeable = False
    return owned


class TernaryWeights:
    """Ternary weights (N, K) in {-1, 0, +1}: two canonical bit planes plus float32 scales.

    ``sign`` and ``nonzero`` (N, ceil(K/64)) uint64 (bit c % 64 of word c // 64, LSB first,
    zero padding): +1 is sign 1 / nonzero 1, -1 is sign 0 / nonzero 1, 0 is sign 0 /
    nonzero 0 (a set sign bit on a zero weight is refused: the planes are canonical).
    Scales as :class:`~takane_kernels.PackedWeights` — ``scale`` (N,), ``in_scale`` (K,), ``group_scale``
    (N, ceil(K/group_size)) with ``group_size`` a positive multiple of 64 — plus
    ``tensor_scale``, one float for the whole matrix. The effective weight is
    ``t[n, k] * scale[n] * in_scale[k] * group_scale[n, k // group_size] * tensor_scale``,
    each factor 1 when absent. Immutable (private read-only copies). Made by
    :func:`pack_ternary`; see docs/guide/ternary.md.

    One resident copy of the planes (as :class:`~takane_kernels.PackedWeights` keeps one of
    its signs): once a kernel has built the C library's re-tiled layout (the handle, on the
    first op call), the canonical planes are dropped and ``sign`` / ``nonzero`` rebuild them
    from the handle on each access (new read-only arrays, exact — hold on to them rather
    than reading them in a loop). Saving, pickling, equality, ``to_dense``, the GGUF export
    and the torch state dict go through them and are unchanged.
    """

    # Invariant: _sign and _nonzero (canonical planes, owned, read-only; both or neither) or
    # _handle (the re-tiled C copy) is set, possibly both. _prepacked() sets _handle before it
    # clears the planes, and none is set back, so a reader that finds the planes None always
    # finds the handle.
    __slots__ = ("_sign", "_nonzero", "_k", "_n", "_scale", "_in_scale", "_group_scale", "_group_size",
                 "_tensor_scale", "_row_scale", "_handle", "_bound", "__weakref__")

    def __init__(self, sign: np.ndarray, nonzero: np.ndarray, k: int, *, scale: object = None,
                 in_scale: object = None, group_scale: object = None, group_size: object = None,
                 tensor_scale: object = None):
        k = check_k(k)
        s = _plane(sign, k, "sign")
        z = _plane(nonzero, k, "nonzero")
        if s.shape != z.shape:
            raise ValueError(f"sign has shape {s.shape} but nonzero has {z.shape}: both are (N, ceil(K/64))")
        if np.any(s & ~z):
            raise ValueError("sign has a bit set where nonzero is 0: a zero weight has sign 0 (canonical planes)")
        self._sign, self._nonzero, self._k = s, z, k
        n = self._n = s.shape[0]
        self._scale = owned_vector(scale, n, "scale", "one per output row N")
        self._in_scale = owned_vector(in_scale, k, "in_scale", "one per input column K")
        self._group_scale, self._group_size = _check_group_scale(group_scale, n, k, group_size)
        if tensor_scale is not None:
            v = np.float32(real_scalar(tensor_scale, "tensor_scale"))
            if not np.isfinite(v):
                raise ValueError(f"tensor_scale={tensor_scale!r} overflows float32")
            tensor_scale = float(v)
        self._tensor_scale = tensor_scale
        self._row_scale = self._combined_row_scale()
        self._handle = None
        self._bound = {}

    def _combined_row_scale(self) -> np.ndarray | None:
        """The one float32 row factor the kernels apply: fl(scale * tensor_scale) (one rounding,
        counted in the documented bounds), scale, tensor_scale broadcast, or None."""
        if self._tensor_scale is None:
            return self._scale
        n = self._n
        base = self._scale if self._scale is not None else np.ones(n, np.float32)
        with np.errstate(over="ignore"):
            r = (base * np.float32(self._tensor_scale)).astype(np.float32)
        if not np.all(np.isfinite(r)):
            raise ValueError("scale * tensor_scale overflows float32")
        r.flags.writeable = False
        return r

    def _prepacked(self):
        """The C library's re-tiled copy of the planes (built once, on first use); from then
        on it is the only copy the weights keep (the canonical planes are dropped)."""
        handle = self._handle
        if handle is None:
            with _HANDLE_LOCK:
                if self._handle is None:
                    self._handle = ternary_handle(self._sign, self._nonzero, self._k)
                    # after the handle is set: see the invariant above
                    self._sign = self._nonzero = None
                handle = self._handle
        return handle

    def _w1a1_planes(self):
        """W1A1 weights (2N, K) whose products give this matrix's with ±1 activations: rows
        u_n (bit = t >= 0) then v_n (bit = t > 0). Since t = (u + v) / 2 for the ±1 values
        (+1: u = v = +1; -1: u = v = -1; 0: u = +1, v = -1), sum_c t[c] a[c] =
        (u.a + v.a) / 2 exactly, two XOR + popcount products in one W1A1 call.
        Built on first use and kept (2 more bits per weight, plus the W1A1 kernels' re-tiled copy)."""
        planes = self._bound.get("w1a1_planes")
        if planes is None:
            sign, nonzero = self._planes()  # the kept planes or a rebuild (one resident copy)
            k, kw = self._k, sign.shape[1]
            mask = np.full(kw, ~np.uint64(0), np.uint64)
            if k % 64:  # padding bits stay 0
                mask[-1] = np.uint64((1 << (k % 64)) - 1)
            u = ~(nonzero & ~sign) & mask
            planes = PackedWeights(np.concatenate([u, sign]), k, scale=None)
            with _HANDLE_LOCK:
                planes = self._bound.setdefault("w1a1_planes", planes)
        return planes

    def _planes(self) -> tuple[np.ndarray, np.ndarray]:
        """(sign, nonzero): the kept planes, or both rebuilt from the handle that replaced
        them (one C call for the pair; the invariant above: the handle is set first)."""
        s, z = self._sign, self._nonzero
        if s is not None and z is not None:
            return s, z
        h = self._handle
        if h is None:  # unreachable with ordered stores; the lock makes it so everywhere
            with _HANDLE_LOCK:
                s, z, h = self._sign, self._nonzero, self._handle
            if s is not None:
                return s, z
        return ternary_handle_planes(h, self._n, -(-self._k // 64))

    sign = property(lambda self: self._planes()[0],
                    doc="(N, ceil(K/64)) uint64 sign plane (1 = +1), read-only (rebuilt from the C "
                        "library's copy, a new array, once the kernels have prepared the weights)")
    nonzero = property(lambda self: self._planes()[1],
                       doc="(N, ceil(K/64)) uint64 nonzero plane, read-only (rebuilt like sign)")
    k = property(lambda self: self._k, doc="K, the number of inputs")
    n = property(lambda self: self._n, doc="N, the number of outputs")
    scale = property(lambda self: self._scale, doc="(N,) float32 per-row scale, or None")
    in_scale = property(lambda self: self._in_scale, doc="(K,) float32 per-column scale, or None")
    group_scale = property(lambda self: self._group_scale,
                           doc="(N, ceil(K/group_size)) float32 per-row-and-group scale, or None")
    group_size = property(lambda self: self._group_size, doc="columns per group_scale entry, or None")
    tensor_scale = property(lambda self: self._tensor_scale,
                            doc="the per-tensor scale (a float exactly representable in float32), or None")

    @property
    def nbytes(self) -> int:
        """Bytes of both canonical planes plus scales (the logical size, however stored)."""
        return 2 * self._n * -(-self._k // 64) * 8 + sum(
            a.nbytes for a in (self._scale, self._in_scale, self._group_scale)
            if a is not None) + (4 if self._tensor_scale is not None else 0)

    def _resident_nbytes(self) -> int:
        """Bytes these weights hold now: the canonical planes while kept, the C handle once
        built (its panels: N rounded up to the panel height 8, two words per row and
        weight word; the layout of csrc/kernels/ternary/ternary_kernel.h), the scales. The
        accounting behind "one resident copy", for tests and the llm program."""
        with _HANDLE_LOCK:  # one consistent snapshot while _prepacked() may be releasing
            s, z, h = self._sign, self._nonzero, self._handle
        kw = -(-self._k // 64)
        handle = 0 if h is None or not kw else -(-self._n // 8) * 8 * kw * 2 * 8
        return handle + sum(a.nbytes for a in (s, z, self._scale, self._in_scale, self._group_scale)
                            if a is not None) + (4 if self._tensor_scale is not None else 0)

    def to_dense(self) -> np.ndarray:
        """The ternary values t as an int8 (N, K) array (scales not applied)."""
        idx = np.arange(self._k)
        word, bit = idx // 64, (idx % 64).astype(np.uint64)
        sign, nonzero = self._planes()
        s = (sign[:, word] >> bit) & np.uint64(1)
        z = (nonzero[:, word] >> bit) & np.uint64(1)
        return (z.astype(np.int8) * (2 * s.astype(np.int8) - 1)).astype(np.int8)

    def __repr__(self) -> str:
        return (f"TernaryWeights(n={self.n}, k={self.k}, scale={'yes' if self._scale is not None else 'None'}, "
                f"in_scale={'yes' if self._in_scale is not None else 'None'}, group_size={self._group_size}, "
                f"tensor_scale={self._tensor_scale}, nbytes={self.nbytes})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TernaryWeights):
            return NotImplemented

        def same(a, b):
            return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))

        if self is other:
            return True
        if self._k != other._k or self._n != other._n:
            return False
        (s, z), (os_, oz) = self._planes(), other._planes()
        return (np.array_equal(s, os_) and np.array_equal(z, oz) and same(self._scale, other._scale)
                and same(self._in_scale, other._in_scale) and self._group_size == other._group_size
                and same(self._group_scale, other._group_scale) and self._tensor_scale == other._tensor_scale)

    __hash__ = None

    def __reduce__(self):
        # the arrays only: the C handle is a cache, rebuilt on first use
        return (_rebuild, (*self._planes(), self._k, self._scale, self._in_scale, self._group_scale,
                           self._group_size, self._tensor_scale))

    # ---- persistence ------------------------------------------------------------------
    # Format version 1: an uncompressed .npz (no pickles) holding exactly these arrays:
    #   format          0-d str   "takane_kernels.TernaryWeights"
    #   format_version  0-d int64 1
    #   k               0-d int64 K
    #   sign, nonzero   (N, ceil(K/64)) uint64, canonical planes (sign only where nonzero)
    #   scale (N,), in_scale (K,), tensor_scale 0-d: float32, finite, each only if present
    #   group_size 0-d int64 + group_scale (N, ceil(K/G)) float32: together or not at all
    # Written atomically (temporary file renamed into place), like PackedWeights.
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` exactly (no extension is added), atomically."""
        grouped = self._group_scale is not None
        sign, nonzero = self._planes()
        ts = None if self._tensor_scale is None else np.array(self._tensor_scale, dtype=np.float32)
        arrays = format_arrays(FORMAT_NAME, FORMAT_VERSION, k=np.array(self._k, dtype=np.int64),
                               sign=sign, nonzero=nonzero, scale=self._scale,
                               in_scale=self._in_scale,
                               group_size=np.array(self._group_size, dtype=np.int64) if grouped else None,
                               group_scale=self._group_scale, tensor_scale=ts)
        save_npz_atomic(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TernaryWeights":
        """Read a file written by :meth:`save`, validating everything (ValueError if not)."""
        name = repr(os.fspath(path))
        allowed = {"format", "format_version", "k", "sign", "nonzero", "scale", "in_scale", "group_size",
                   "group_scale", "tensor_scale"}
        data = read_npz(path, allowed, "TernaryWeights")
        tag = data.get("format")
        if tag is None or tag.shape != () or tag.dtype.kind != "U" or str(tag) != FORMAT_NAME:
            raise ValueError(f"{name} is not a TernaryWeights file (format tag missing)")
        version = data.get("format_version")
        if version is None or version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
            raise ValueError(f"{name}: unsupported TernaryWeights format version {version!r} "
                             f"(this library reads version {FORMAT_VERSION})")
        for key in ("k", "sign", "nonzero"):
            if key not in data:
                raise ValueError(f"{name}: missing array {key!r}")
        if ("group_size" in data) != ("group_scale" in data):
            raise ValueError(f"{name}: group_size and group_scale must come together")
        k = loaded_int(data, "k", name)
        group_size = loaded_int(data, "group_size", name) if "group_size" in data else None
        for key in ("scale", "in_scale", "group_scale", "tensor_scale"):
            if key in data and data[key].dtype != np.float32:
                raise ValueError(f"{name}: {key} must be float32, got {data[key].dtype}")
        ts = data.get("tensor_scale")
        if ts is not None and ts.shape != ():
            raise ValueError(f"{name}: tensor_scale must be a float32 scalar")
        try:
            return cls(loaded_bits({"bits": data["sign"]}, 2, name), loaded_bits({"bits": data["nonzero"]}, 2, name),
                       k, scale=data.get("scale"), in_scale=data.get("in_scale"),
                       group_scale=data.get("group_scale"), group_size=group_size,
                       tensor_scale=None if ts is None else float(ts))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: invalid TernaryWeights data: {e}") from e


def _planes(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical sign / nonzero planes of an (N, K) array of {-1, 0, +1}."""
    n, k = t.shape
    words = -(-k // 64)
    pad = np.zeros((n, words * 64), dtype=bool)

    def pack(mask):
        pad[:, :k] = mask
        return np.ascontiguousarray(np.packbits(pad, axis=-1, bitorder="little")).view("<u8").astype(np.uint64)

    return pack(t > 0), pack(t != 0)


def pack_ternary(w, *, threshold=None, group_size=None, eps=1e-5) -> TernaryWeights:
    """Ternary weights from a real (N, K) matrix ``w`` (docs/guide/ternary.md).

    ``threshold=None`` (BitNet b1.58's absmean rule): with γ = mean |w| over the tensor
    (``group_size=None``: ``tensor_scale = γ``) or over each row's runs of ``group_size``
    columns (``group_scale``), ``t = RoundClip(w / (γ + eps), -1, 1)`` (round half to
    even, float64). ``threshold=t >= 0``: ``t = sign(w)`` where ``|w| > t``, else 0, and
    the scale of each row (or row and group) is the mean |w| over its nonzero weights (0
    if none): ``scale`` (or ``group_scale``). ``eps`` >= 0 is used by the absmean rule only.
    """
    a = np.asarray(w)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"w must be a real array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"w must be 2-D (N, K), got shape {a.shape}")
    w64 = a.astype(np.float64)
    if not np.all(np.isfinite(w64)):
        raise ValueError("w must be finite")
    n, k = w64.shape
    eps = real_scalar(eps, "eps")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if group_size is not None:
        from ._capi import check_group_size

        group_size = check_group_size(group_size)
    ng = -(-k // group_size) if group_size else 1
    if threshold is None:
        if group_size is None:
            gamma = float(np.abs(w64).mean()) if w64.size else 0.0
            t = np.clip(np.rint(w64 / (gamma + eps)), -1, 1) if gamma + eps > 0 else np.zeros_like(w64)
            sign, nz = _planes(t)
            return TernaryWeights(sign, nz, k, tensor_scale=gamma)
        t = np.zeros_like(w64)
        gs = np.zeros((n, ng))
        for g in range(ng):
            cols = slice(g * group_size, min(k, (g + 1) * group_size))
            gamma = np.abs(w64[:, cols]).mean(axis=1)
            gs[:, g] = gamma
            den = (gamma + eps)[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                t[:, cols] = np.where(den > 0, np.clip(np.rint(w64[:, cols] / np.where(den > 0, den, 1)), -1, 1), 0)
        sign, nz = _planes(t)
        return TernaryWeights(sign, nz, k, group_scale=gs, group_size=group_size)
    thr = real_scalar(threshold, "threshold")
    if thr < 0 or math.isnan(thr):
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    keep = np.abs(w64) > thr
    t = np.where(keep, np.sign(w64), 0.0)
    absw = np.where(keep, np.abs(w64), 0.0)

    def mean_kept(cols):
        cnt = keep[:, cols].sum(axis=1)
        return np.where(cnt > 0, absw[:, cols].sum(axis=1) / np.maximum(cnt, 1), 0.0)

    sign, nz = _planes(t)
    if group_size is None:
        return TernaryWeights(sign, nz, k, scale=mean_kept(slice(0, k)))
    gs = np.stack([mean_kept(slice(g * group_size, min(k, (g + 1) * group_size))) for g in range(ng)], axis=1) \
        if ng else np.zeros((n, 0))
    return TernaryWeights(sign, nz, k, group_scale=gs, group_size=group_size)
