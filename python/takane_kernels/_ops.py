"""The public ops on the packed format: pack_bits / unpack_bits / pack_weights, and the
W1A1 product — :class:`Matmul` (bound once, called many times) and ``binary_matmul``.

Every op is validate -> convert -> call on top of the C boundary module ``_capi`` (the
threshold semantics are written down there).
"""

from __future__ import annotations

import math

import numpy as np

from . import _capi as C
from ._capi import F32, I32, U64, Threshold, ffi, lib
from ._ternary import TernaryWeights
from ._weights import PackedWeights

__all__ = ["pack_bits", "unpack_bits", "pack_weights", "binary_matmul", "Matmul", "TernaryMatmul"]


def pack_bits(a: object, threshold: object = 0.0) -> np.ndarray:
    """Binarize a real array (..., K) at ``threshold`` (scalar or (K,)) and pack it.

    Returns canonical uint64 bits (..., ceil(K/64)): bit 1 iff ``a >= threshold``, LSB
    first, zero padding. NaN raises ``ValueError``.
    """
    a = C.as_real_array(a, "a")
    k = a.shape[-1]
    C.check_k(k, "a.shape[-1]")
    w = C.words_for(k)
    out = np.empty(a.shape[:-1] + (w,), dtype=np.uint64)
    t = Threshold(threshold, k)
    rows, tptr, tlen = C.real_rows_for_c(a, t, k, "a")
    m = rows.shape[0]
    if m == 0 or k == 0:
        return out
    status = lib.takane_pack_f32(m, k, C.from_buffer("float[]", rows), k, tptr, tlen,
                                 C.from_buffer("uint64_t[]", out, require_writable=True), w)
    C.raise_status(status, "pack_bits: a")
    return out


def unpack_bits(bits: object, k: int, dtype: object = np.int8) -> np.ndarray:
    """Canonical packed bits (..., ceil(k/64)) -> a ±1 array (..., k) of ``dtype``."""
    k = C.check_k(k)
    bits = C.check_packed(bits, k, "bits")
    dt = np.dtype(dtype)
    if dt.kind not in "if":
        raise TypeError(f"dtype must be a signed integer or float dtype (to hold -1), got {dt}")
    as_bytes = np.ascontiguousarray(bits, dtype="<u8").view(np.uint8)
    b01 = np.unpackbits(as_bytes, axis=-1, count=k, bitorder="little")
    return (b01.astype(dt) * 2 - 1).astype(dt, copy=False)


def pack_weights(w: object, *, scale: object = "mean_abs", in_scale: object = None,
                 group_size: int | None = None) -> PackedWeights:
    """Real weights (N, K) -> :class:`PackedWeights` (bit = ``w >= 0``).

    ``scale``: ``"mean_abs"`` (per-row mean |w|, XNOR-Net's alpha), ``"onebit"``, ``None``,
    or an (N,) array. ``in_scale``: ``None`` or a (K,) array.

    ``group_size=G`` (a positive multiple of 64, typically 128 as in llama.cpp's Q1_0)
    replaces the row scale by group scales: ``group_scale[n, g]`` is the mean |w| of row
    n's columns ``[g*G, (g+1)*G)`` (a partial last group averages its real elements), and
    ``scale`` must be ``"mean_abs"``.

    ``"onebit"`` is OneBit's initialisation (sign-value-independent decomposition):
    ``|W| ≈ scale ⊗ in_scale``, the rank-1 factorisation from the first singular triplet
    (σ, u, v) of |W|, split evenly as ``scale = √σ·u``, ``in_scale = √σ·v`` (both ≥ 0), so
    that ``W ≈ sign(W) ⊙ (scale ⊗ in_scale)`` — the W1A-float layer of
    :func:`binary_weight_matmul`. ``in_scale`` must then be left ``None``.
    """
    w = C.as_real_array(w, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (N, K), got shape {w.shape}")
    if w.dtype.kind == "f" and np.isnan(w).any():
        raise ValueError("w contains NaN (NaN has no sign)")
    if group_size is not None:
        g = C.check_group_size(group_size)
        if not (isinstance(scale, str) and scale == "mean_abs"):
            raise ValueError(f"group_size computes group scales (mean |w| per group): scale must be "
                             f"'mean_abs', got {scale!r}")
        n, k = w.shape
        ngroups = -(-k // g)
        sums = np.zeros((n, ngroups))
        for j in range(ngroups):  # float64 sums, one group of columns at a time
            sums[:, j] = np.abs(w[:, j * g:(j + 1) * g].astype(np.float64)).sum(axis=1)
        counts = np.minimum(g, k - np.arange(ngroups) * g)
        return PackedWeights(pack_bits(w), k, in_scale=in_scale, group_scale=sums / counts,
                             group_size=g)
    if isinstance(scale, str):
        n, k = w.shape
        if scale == "mean_abs":
            scale = np.abs(w).mean(axis=1, dtype=np.float64) if k else np.zeros(n)
        elif scale == "onebit":
            if in_scale is not None:
                raise ValueError("scale='onebit' computes in_scale too: leave in_scale=None")
            scale, in_scale = _onebit_factors(w)
        else:
            raise ValueError(f"scale must be 'mean_abs', 'onebit', None or an (N,) array, got {scale!r}")
    return PackedWeights(pack_bits(w), w.shape[1], scale=scale, in_scale=in_scale)


def _onebit_factors(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(√σ·u, √σ·v) for the first singular triplet (σ, u, v) of |w|, by power iteration.

    |w| is non-negative, so its first singular vectors can be taken non-negative
    (Perron-Frobenius) and power iteration on |w|ᵀ|w| from the positive all-ones start
    converges to them, at rate (σ2/σ1)² per step: a handful of steps for real weight
    matrices, whose |W| is dominated by its mean. Products are float64, taken over row
    blocks so a large float32 matrix is never copied whole. Stops when v moves by less
    than 1e-12 (or after 1000 steps: with σ1 ≈ σ2 any vector of that subspace is an
    equally good rank-1 factor).
    """
    if w.dtype.kind == "f" and not np.all(np.isfinite(w)):
        raise ValueError("w must be finite for scale='onebit'")
    n, k = w.shape
    a = np.abs(w) if w.dtype.kind == "f" else np.abs(w.astype(np.float64))
    if n == 0 or k == 0 or not a.any():
        return np.zeros(n), np.zeros(k)
    block = max(1, 2**22 // k)  # rows per float64 block: 32 MiB at most

    def matvec(v):  # |w| @ v
        return np.concatenate([a[i:i + block].astype(np.float64) @ v for i in range(0, n, block)])

    def rmatvec(u):  # |w|.T @ u
        return sum(a[i:i + block].astype(np.float64).T @ u[i:i + block] for i in range(0, n, block))

    v = np.full(k, 1.0 / np.sqrt(k))
    for _ in range(1000):
        u = matvec(v)
        u /= np.linalg.norm(u)
        v_new = rmatvec(u)
        sigma = float(np.linalg.norm(v_new))
        v_new /= sigma
        moved = float(np.linalg.norm(v_new - v))
        v = v_new
        if moved <= 1e-12:
            break
    u = matvec(v) / sigma  # u consistent with the final v (|w| v = σ u)
    root = np.sqrt(sigma)
    # entries are >= 0 up to rounding: clip the tiny negatives rounding can leave
    return np.maximum(root * u, 0.0), np.maximum(root * v, 0.0)


def resolve_weights(w: object, k: object):
    """(canonical bits or None, n, k, prepacked handle or None) of a PackedWeights (its
    handle only: the weights keep one copy) or raw bits (no handle)."""
    if isinstance(w, PackedWeights):
        if k is not None and C.check_k(k) != w.k:
            raise ValueError(f"k={k} does not match the PackedWeights' k={w.k}")
        return None, w.n, w.k, w._prepacked()
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w must be a PackedWeights or a canonical uint64 array, got {type(w).__name__}")
    if k is None:
        raise ValueError("w is a raw packed array: pass k= (the unpacked row length)")
    k = C.check_k(k)
    C.check_packed(w, k, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (N, ceil(K/64)), got shape {w.shape}")
    return np.require(w, requirements="CA"), w.shape[0], k, None  # C-contiguous and aligned


_matmul_u64 = lib.takane_binary_matmul_prepacked
_matmul_f32 = lib.takane_binary_matmul_prepacked_f32
_from_buffer = ffi.from_buffer
_ndarray, _empty = np.ndarray, np.empty
_SCALARS = (int, float)


class Matmul:
    """``binary_matmul`` bound to its weights and constants: ``Matmul(w, threshold=t)(x)``
    is ``binary_matmul(x, w, threshold=t)``.

    Everything that does not change between calls — the weights (their re-tiled C copy),
    the threshold (validated, rounded up to float32 once), ``threads`` — is checked and
    converted here, once; a call ``op(x, out=None)`` with C-contiguous aligned float32 (or
    packed uint64) x of 1 or 2 dimensions goes to the C kernel in a few Python steps. Any
    other x (other dtypes, views, more dimensions, empty) takes the general path, with
    every check of :func:`binary_matmul`. Immutable; safe to share between threads.
    """

    __slots__ = ("weights", "k", "n", "_bits", "_handle", "_t", "_threads", "_kw")

    def __init__(self, w, *, threshold=0.0, k=None, threads=None):
        bits, n, k, handle = resolve_weights(w, k)
        self.weights = w
        self.k, self.n = k, n
        self._bits, self._handle, self._kw = bits, handle, C.words_for(k)
        self._threads = C.check_threads(threads)
        self._t = Threshold(threshold, k)

    def __repr__(self) -> str:
        return f"Matmul(n={self.n}, k={self.k})"

    def __call__(self, x, out=None) -> np.ndarray:
        """int32 (..., N): the exact ±1 dot products of x's rows with the weights' rows."""
        if x.__class__ is _ndarray and self._handle is not None:
            shape = x.shape
            nd = len(shape)
            if nd == 2 or nd == 1:
                dt = x.dtype
                f32 = dt is F32 and shape[-1] == self.k
                if f32 or (dt is U64 and shape[-1] == self._kw and self._t.zero):
                    flags = x.flags
                    n = self.n
                    m = shape[0] if nd == 2 else 1
                    if flags.c_contiguous and flags.aligned and m and n and shape[-1]:
                        yshape = (m, n) if nd == 2 else (n,)
                        y = _empty(yshape, I32) if out is None else C.ready_out(out, yshape, I32, x)
                        if y is not None:
                            if f32:
                                t = self._t
                                status = _matmul_f32(self._handle, m, _from_buffer("float[]", x), self.k, t.ptr, t.len,
                                                     _from_buffer("int32_t[]", y), n, self._threads)
                            else:
                                status = _matmul_u64(self._handle, m, _from_buffer("uint64_t[]", x), self._kw,
                                                     _from_buffer("int32_t[]", y), n, self._threads)
                            if status:
                                self._fail(status, x)
                            return y
        return self._general(x, out)

    def _general(self, x, out):
        k, kw, n, t = self.k, self._kw, self.n, self._t
        x, packed = C.check_activations(x, t, k, kw)
        shape = x.shape[:-1] + (n,)
        y = C.out_array(out, shape, I32)
        if out is not None and np.may_share_memory(out, x):
            x = x.copy()  # the kernels read x while writing y: never let them alias
        m = math.prod(x.shape[:-1])
        if m == 0 or n == 0:
            return y
        yptr = _from_buffer("int32_t[]", y, require_writable=True)
        handle, threads = self._handle, self._threads
        if packed:
            xptr = C.ptr("uint64_t[]", np.require(x, requirements="CA").reshape(m, kw))
            if handle is not None:
                status = lib.takane_binary_matmul_prepacked(handle, m, xptr, kw, yptr, n, threads)
            else:
                status = lib.takane_binary_matmul(m, n, k, xptr, kw, C.ptr("uint64_t[]", self._bits), kw, yptr, n,
                                                  threads)
        else:
            rows, tptr, tlen = C.real_rows_for_c(x, t, k, "x")
            xptr = C.ptr("float[]", rows)
            if handle is not None:
                status = lib.takane_binary_matmul_prepacked_f32(handle, m, xptr, k, tptr, tlen, yptr, n, threads)
            else:
                status = lib.takane_binary_matmul_f32(m, n, k, xptr, k, tptr, tlen, C.ptr("uint64_t[]", self._bits),
                                                      kw, yptr, n, threads)
        if status:
            self._fail(status, x)
        return y

    def _fail(self, status, x):
        if status == lib.TAKANE_ERR_PADDING_BITS:
            if x.dtype == np.uint64:
                C.check_packed(x, self.k, "x")  # raises if it is x's padding, else it was w's
            if self._bits is not None:  # (a handle's padding was checked when it was made)
                C.check_packed(self._bits, self.k, "w")
        C.raise_status(status, "binary_matmul: x" if status == lib.TAKANE_ERR_NAN else "binary_matmul")


class TernaryMatmul:
    """``binary_matmul`` with :class:`TernaryWeights` (W1.58A1): int32 (..., N), the exact
    sums ``sum_c t[n, c] * sign(x)[c]`` for t in {-1, 0, +1}.

    It falls out of the W1A1 kernels: with u = (t >= 0) and v = (t > 0) as ±1 rows,
    t = (u + v) / 2, so one W1A1 product against the 2N rows [u; v]
    (``TernaryWeights._w1a1_planes``) gives ``(u.a + v.a) / 2`` — both terms have the
    parity of K, so the halving is exact and is done without forming the sum (no overflow
    for any K the W1A1 op accepts). Scales are not applied, as ``binary_matmul`` does not
    apply a PackedWeights' scales."""

    __slots__ = ("weights", "k", "n", "_op")

    def __init__(self, w, *, threshold=0.0, k=None, threads=None):
        if k is not None and C.check_k(k) != w.k:
            raise ValueError(f"k={k} does not match the TernaryWeights' k={w.k}")
        self.weights, self.k, self.n = w, w.k, w.n
        self._op = Matmul(w._w1a1_planes(), threshold=threshold, threads=threads)

    def __repr__(self) -> str:
        return f"TernaryMatmul(n={self.n}, k={self.k})"

    def __call__(self, x, out=None) -> np.ndarray:
        r = self._op(x)  # (..., 2N): u.a then v.a
        n = self.n
        y = C.out_array(out, r.shape[:-1] + (n,), I32)
        a, b = r[..., :n], r[..., n:]
        np.right_shift(a, 1, out=y)  # floor halves: a + b = 2 (a >> 1) + 2 (b >> 1) + 2 (a & 1)
        y += b >> 1
        y += a & 1
        return y


def binary_matmul(x, w, *, threshold=0.0, k=None, out=None, threads=None) -> np.ndarray:
    """Exact ±1 products ``sign(x) @ sign(w).T`` as int32 (..., N) via XOR + popcount.

    ``x``: real (..., K), binarized as ``x >= threshold`` (scalar or (K,)) inside the
    call, or canonical packed uint64 (..., ceil(K/64)). ``w``: a :class:`PackedWeights`
    (fast path: re-tiled once for the kernels, kept with the object) or a canonical
    uint64 (N, ceil(K/64)) array with ``k=``, or a :class:`TernaryWeights` (W1.58A1: the
    exact int32 sums ``sign(x) @ t.T`` for t in {-1, 0, +1}, scales not applied; run by the
    W1A1 kernels on 2N rows, see the ternary guide). Leading dims of x are kept.
    ``threads``: at most this many threads (default: env TAKANE_NUM_THREADS, else the
    CPUs available); small problems run on the calling thread. For many calls with the
    same weights and threshold, bind them once: :class:`Matmul`.
    """
    if w.__class__ is TernaryWeights:
        if threshold.__class__ in _SCALARS and (threads is None or threads.__class__ is int):
            key = ("w1.58a1", threshold, threads, k)
            op = w._bound.get(key) or C.bound_op(w, key, TernaryMatmul, w, threshold=threshold, k=k, threads=threads)
            return op.__call__(x, out)
        return TernaryMatmul(w, threshold=threshold, k=k, threads=threads)(x, out)
    if k is None and w.__class__ is PackedWeights and threshold.__class__ in _SCALARS and (
            threads is None or threads.__class__ is int):
        key = ("matmul", threshold, threads)
        op = w._bound.get(key) or C.bound_op(w, key, Matmul, w, threshold=threshold, threads=threads)
        return op.__call__(x, out)  # (a method call: cheaper than calling the instance)
    return Matmul(w, threshold=threshold, k=k, threads=threads)(x, out)
