"""The public ops: thin numpy wrappers that validate, convert, and call the C library.

Threshold semantics (exact, whatever the dtypes): an element v becomes +1 iff v >= t as
real numbers. Inputs exactly representable in float32 (float16/32, bool, 8/16-bit ints)
go to the C kernels as float32 with each threshold rounded *up* to the nearest float32:
for a float32 v, ``v >= t  <=>  v >= ceil_f32(t)``, so the comparison stays exact. Wider
inputs (float64, 32/64-bit ints) are compared by numpy at their own precision and the
boolean result is packed by the same C kernels (as 0/1 against 0.5).
"""

from __future__ import annotations

import math

import numpy as np

from ._takane import ffi, lib
from ._weights import PackedWeights, check_group_size, check_k, check_packed, words_for
from . import isa as _isa

__all__ = ["pack_bits", "unpack_bits", "pack_weights", "binary_matmul"]

# dtypes whose every value is exactly a float32
_EXACT_IN_F32 = frozenset(np.dtype(t) for t in (np.float32, np.float16, np.bool_, np.int8, np.uint8, np.int16, np.uint16))
_F32_INF = np.float32(np.inf)
# numpy hands out these singleton dtype objects for its builtin types, so `is` compares
_U64 = np.dtype(np.uint64)
_F32 = np.dtype(np.float32)


def _raise_status(status: int, context: str) -> None:
    if status == lib.TAKANE_OK:
        return
    msg = ffi.string(lib.takane_status_string(status)).decode()
    if status == lib.TAKANE_ERR_OUT_OF_MEMORY:
        raise MemoryError(f"{context}: {msg}")
    if status == lib.TAKANE_ERR_ENV_ISA:
        import os

        raise ValueError(
            f"{context}: TAKANE_ISA={os.environ.get('TAKANE_ISA')!r} is unknown or not supported "
            f"here (supported: {', '.join(_isa.supported())}); unset it or call isa.force()"
        )
    raise ValueError(f"{context}: {msg}")


def _check_threads(threads: object) -> int:
    if threads is None:
        return 0
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(min(threads, 2**31 - 1))


def _plain_threads(threads: object) -> int:
    """threads as the C argument when it needs no validation (None -> 0, a plain int in
    [1, 2**31)), else -1: the general path then validates it and raises."""
    if threads is None:
        return 0
    return threads if threads.__class__ is int and 1 <= threads < 2**31 else -1


def _check_x(x: object, threshold: object, k: int, kw: int) -> tuple[np.ndarray, bool]:
    """(x as an array, packed?): canonical packed uint64 (..., kw) — then the threshold
    must be 0; its padding bits are checked by the C call — or real (..., k)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have at least 1 dimension, got shape {x.shape}")
    if x.dtype == np.uint64:
        if not (threshold.__class__ in (int, float) and threshold == 0) and np.any(np.asarray(threshold) != 0):
            raise ValueError("threshold applies to real x only; x is already packed (uint64)")
        if x.shape[-1] != kw:
            check_packed(x, k, "x")  # raises: wrong number of words
        return x, True
    x = _as_real_array(x, "x")
    if x.shape[-1] != k:
        raise ValueError(f"x has shape {x.shape} but w has k={k}: the last dimension of x must be {k}")
    return x, False


def _as_real_array(x: object, name: str) -> np.ndarray:
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real (float, int or bool) array, got dtype {a.dtype}")
    if a.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension (..., K), got shape {a.shape}")
    return a


def _threshold64(threshold: object, k: int, name: str = "threshold", per: str = "input channel") -> np.ndarray:
    """Validated threshold as float64: shape () or (k,) (one per `per`)."""
    t = np.asarray(threshold)
    if t.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real scalar or array, got dtype {t.dtype}")
    if t.shape not in ((), (k,)):
        raise ValueError(f"{name} must be a scalar or have shape ({k},) (one per {per}), got {t.shape}")
    t = t.astype(np.float64)
    if np.isnan(t).any():
        raise ValueError(f"{name} contains NaN (NaN has no sign)")
    return t


def _ceil_f32(t64: np.ndarray) -> np.ndarray:
    """Smallest float32 >= each value (exact threshold for float32 inputs)."""
    with np.errstate(over="ignore"):
        t32 = np.atleast_1d(t64.astype(np.float32))
    low = t32.astype(np.float64) < np.atleast_1d(t64)
    if low.any():
        t32[low] = np.nextafter(t32[low], _F32_INF)
    return np.ascontiguousarray(t32)


_HALF = np.array([0.5], dtype=np.float32)
_ZERO = np.array([0.0], dtype=np.float32)


def _scalar_threshold_f32(t: float) -> np.ndarray:
    """ceil_f32 of one Python scalar, without numpy array machinery (hot path)."""
    if t == 0:
        return _ZERO
    if t != t:
        raise ValueError("threshold contains NaN (NaN has no sign)")
    return _ceil_f32(np.asarray(float(t)))


def _real_rows_for_c(x: np.ndarray, threshold: object, k: int, name: str):
    """(x as C-contiguous float32 2-D rows, float32 threshold array) for the C kernels."""
    m = math.prod(x.shape[:-1])
    if x.dtype in _EXACT_IN_F32:
        if threshold.__class__ in (float, int):
            t32 = _scalar_threshold_f32(threshold)
        elif (threshold.__class__ is np.ndarray and threshold.dtype is _F32
              and threshold.shape in ((k,), ())):
            # float32 thresholds are their own ceil_f32: no rounding pass per call
            if np.isnan(threshold).any():
                raise ValueError("threshold contains NaN (NaN has no sign)")
            t32 = np.require(threshold, requirements="CA").reshape(-1)  # C reads float*: aligned
        else:
            t32 = _ceil_f32(_threshold64(threshold, k))
        # C reads float32 rows: C-contiguous and aligned (a misaligned view is copied)
        rows = x if x.dtype is _F32 and x.flags.c_contiguous and x.flags.aligned else np.require(x, np.float32, "CA")
        return rows.reshape(m, k), t32
    # Wider dtypes: compare at their own precision here, pack the 0/1 result in C.
    t64 = _threshold64(threshold, k)
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise ValueError(f"{name} contains NaN (NaN has no sign)")
    ge = np.greater_equal(x, t64)
    return np.ascontiguousarray(ge, dtype=np.float32).reshape(m, k), _HALF


def _check_out(out: object, shape: tuple, name: str = "out") -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.dtype != np.int32:
        raise TypeError(f"{name} must have dtype int32, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}, expected {shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.aligned:
        raise ValueError(f"{name} is not aligned to its dtype (the C kernels write it in place)")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def pack_bits(a: object, threshold: object = 0.0) -> np.ndarray:
    """Binarize a real array (..., K) at ``threshold`` (scalar or (K,)) and pack it.

    Returns canonical uint64 bits (..., ceil(K/64)): bit 1 iff ``a >= threshold``, LSB
    first, zero padding. NaN raises ``ValueError``.
    """
    a = _as_real_array(a, "a")
    k = a.shape[-1]
    check_k(k, "a.shape[-1]")
    w = words_for(k)
    out = np.empty(a.shape[:-1] + (w,), dtype=np.uint64)
    rows, t = _real_rows_for_c(a, threshold, k, "a")
    m = rows.shape[0]
    if m == 0 or k == 0:
        return out
    status = lib.takane_pack_f32(
        m, k, ffi.from_buffer("float[]", rows), k, ffi.from_buffer("float[]", t), t.size,
        ffi.from_buffer("uint64_t[]", out, require_writable=True), w,
    )
    _raise_status(status, "pack_bits: a")
    return out


def unpack_bits(bits: object, k: int, dtype: object = np.int8) -> np.ndarray:
    """Canonical packed bits (..., ceil(k/64)) -> a ±1 array (..., k) of ``dtype``."""
    k = check_k(k)
    bits = check_packed(bits, k, "bits")
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
    w = _as_real_array(w, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (N, K), got shape {w.shape}")
    if w.dtype.kind == "f" and np.isnan(w).any():
        raise ValueError("w contains NaN (NaN has no sign)")
    if group_size is not None:
        g = check_group_size(group_size)
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


def _resolve_weights(w: object, k: object):
    """(canonical bits, k, prepacked handle or None)."""
    if isinstance(w, PackedWeights):
        if k is not None and check_k(k) != w.k:
            raise ValueError(f"k={k} does not match the PackedWeights' k={w.k}")
        return w.bits, w.k, w._prepacked()
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w must be a PackedWeights or a canonical uint64 array, got {type(w).__name__}")
    if k is None:
        raise ValueError("w is a raw packed array: pass k= (the unpacked row length)")
    k = check_k(k)
    check_packed(w, k, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (N, ceil(K/64)), got shape {w.shape}")
    return np.require(w, requirements="CA"), k, None  # C-contiguous and aligned




_from_buffer = ffi.from_buffer
_prepacked_u64 = lib.takane_binary_matmul_prepacked
_prepacked_f32 = lib.takane_binary_matmul_prepacked_f32
_NULL = ffi.NULL


def _fast_matmul(x: np.ndarray, w: PackedWeights, threshold, nthreads: int):
    """The common call — PackedWeights, C-contiguous 1-D/2-D float32 or packed x, scalar
    zero threshold, no out, threads None or a plain int >= 1 (nthreads: 0 or that int)
    — with the fewest Python steps (per-call overhead is what a batch-1 decode loop
    pays). Returns None to defer to the general path, which then also produces any
    error message."""
    shape = x.shape
    if len(shape) > 2 or threshold.__class__ not in (float, int) or threshold != 0 or not x.flags.c_contiguous or not x.flags.aligned:
        return None
    dt = x.dtype
    bits = w.bits
    n, kw = bits.shape
    kx = shape[-1]
    if dt is _F32:
        if kx != w.k:
            return None
    elif dt is not _U64 or kx != kw:
        return None
    m = shape[0] if len(shape) == 2 else 1
    if m == 0 or n == 0 or kx == 0:
        return None  # empty problems: the general path handles them
    y = np.empty((m, n) if len(shape) == 2 else (n,), dtype=np.int32)
    if dt is _F32:  # threshold NULL: 0 for every channel
        status = _prepacked_f32(w._prepacked(), m, _from_buffer("float[]", x), kx, _NULL, 0, _from_buffer("int32_t[]", y), n, nthreads)
    else:
        status = _prepacked_u64(w._prepacked(), m, _from_buffer("uint64_t[]", x), kx, _from_buffer("int32_t[]", y), n, nthreads)
    if status:
        if status == lib.TAKANE_ERR_PADDING_BITS:
            check_packed(x, w.k, "x")  # raises, naming x
        _raise_status(status, "binary_matmul: x" if status == lib.TAKANE_ERR_NAN else "binary_matmul")
    return y


def binary_matmul(x, w, *, threshold=0.0, k=None, out=None, threads=None) -> np.ndarray:
    """Exact ±1 products ``sign(x) @ sign(w).T`` as int32 (..., N) via XOR + popcount.

    ``x``: real (..., K), binarized as ``x >= threshold`` (scalar or (K,)) inside the
    call, or canonical packed uint64 (..., ceil(K/64)). ``w``: a :class:`PackedWeights`
    (fast path: re-tiled once for the kernels, kept with the object) or a canonical
    uint64 (N, ceil(K/64)) array with ``k=``. Leading dims of x are kept.
    ``threads``: at most this many threads (default: env TAKANE_NUM_THREADS, else the
    CPUs available); small problems run on the calling thread.
    """
    if out is None and k is None and type(w) is PackedWeights and type(x) is np.ndarray:
        nthreads = _plain_threads(threads)
        y = _fast_matmul(x, w, threshold, nthreads) if nthreads >= 0 else None
        if y is not None:
            return y
    wbits, k, handle = _resolve_weights(w, k)
    nthreads = _check_threads(threads)
    n, kw = wbits.shape
    x, packed = _check_x(x, threshold, k, kw)  # padding: the C call checks it, named below
    shape = x.shape[:-1] + (n,)
    y = np.empty(shape, dtype=np.int32) if out is None else _check_out(out, shape)
    if out is not None and np.may_share_memory(out, x):
        x = x.copy()  # the kernels read x while writing y: never let them alias
    m = math.prod(x.shape[:-1])
    if m == 0 or n == 0:
        return y
    yptr = ffi.from_buffer("int32_t[]", y, require_writable=True)
    if packed:
        xr = np.require(x, requirements="CA").reshape(m, kw)  # C-contiguous and aligned
        xptr = ffi.from_buffer("uint64_t[]", xr) if kw else ffi.NULL
        if handle is not None:
            status = lib.takane_binary_matmul_prepacked(handle, m, xptr, kw, yptr, n, nthreads)
        else:
            wptr = ffi.from_buffer("uint64_t[]", wbits) if kw else ffi.NULL
            status = lib.takane_binary_matmul(m, n, k, xptr, kw, wptr, kw, yptr, n, nthreads)
    else:
        rows, t = _real_rows_for_c(x, threshold, k, "x")
        xptr = ffi.from_buffer("float[]", rows) if k else ffi.NULL
        tptr = ffi.from_buffer("float[]", t)
        if handle is not None:
            status = lib.takane_binary_matmul_prepacked_f32(handle, m, xptr, k, tptr, t.size, yptr, n, nthreads)
        else:
            wptr = ffi.from_buffer("uint64_t[]", wbits) if kw else ffi.NULL
            status = lib.takane_binary_matmul_f32(m, n, k, xptr, k, tptr, t.size, wptr, kw, yptr, n, nthreads)
    if status == lib.TAKANE_ERR_PADDING_BITS:
        check_packed(x, k, "x")  # raises if it is x's padding, else it was w's
        check_packed(wbits, k, "w")
    _raise_status(status, "binary_matmul: x" if status == lib.TAKANE_ERR_NAN else "binary_matmul")
    return y
