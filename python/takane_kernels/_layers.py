"""Layer ops: the W1A1 layer ``binary_linear`` and the W1A-float ``binary_weight_matmul``.

Thin numpy wrappers like ``_ops``: validate, convert, call the C library. The float
epilogues are computed in C exactly as documented below, so ``takane_kernels.reference``
reproduces ``binary_linear`` bit for bit, and ``binary_weight_matmul`` within its stated
error bound.
"""

from __future__ import annotations

import math

import numpy as np

from ._ops import (
    _EXACT_IN_F32, _HALF, _as_real_array, _ceil_f32, _check_threads, _check_x, _plain_threads,
    _raise_status, _real_rows_for_c, _threshold64,
)
from ._takane import ffi, lib
from ._weights import PackedWeights, check_packed, real_vector, words_for

__all__ = ["binary_linear", "binary_weight_matmul"]

def _require_weights(w: object, op: str) -> PackedWeights:
    if not isinstance(w, PackedWeights):
        raise TypeError(f"{op}: w must be a PackedWeights (from pack_weights), got {type(w).__name__}")
    return w


def _vector_f32(v: object, length: int, name: str, what: str) -> np.ndarray | None:
    """None, or v as a float32 C-contiguous (length,) array. Finiteness is checked by the
    C library (TAKANE_ERR_NOT_FINITE), which is cheaper than a numpy pass per call."""
    if v is None:
        return None
    a = real_vector(v, length, name, what)
    if a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned:
        return a
    with np.errstate(over="ignore"):  # overflow to inf: the C library reports it
        return np.require(a, np.float32, "CA")  # C-contiguous and aligned


def _out_threshold_f32(t: object, n: int) -> np.ndarray:
    """out_threshold as float32 (1,) or (n,), each value rounded *up* to float32: for a
    float32 y, y >= t  <=>  y >= ceil_f32(t), so the comparison stays exact. A NaN in
    a float32 array is left to the C library (TAKANE_ERR_NAN)."""
    if isinstance(t, np.ndarray) and t.dtype == np.float32 and t.shape in ((), (n,)):
        return np.require(t, requirements="CA").reshape(-1)  # already float32: nothing to round
    if isinstance(t, float):  # Python and numpy float64 scalars
        if t != t:
            raise ValueError("out_threshold contains NaN (NaN has no sign)")
        with np.errstate(over="ignore"):
            f = np.float32(t)
        if float(f) < t:
            f = np.nextafter(f, np.float32(np.inf))
        return np.array([f], dtype=np.float32)
    return _ceil_f32(_threshold64(t, n, "out_threshold", "output channel"))


def _out_array(out: object, shape: tuple, dtype: np.dtype) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.aligned:
        raise ValueError("out is not aligned to its dtype (the C kernels write it in place)")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def _ptr(ctype: str, a: np.ndarray | None, writable: bool = False):
    if a is None or a.size == 0:
        return ffi.NULL
    return ffi.from_buffer(ctype, a, require_writable=writable)


_F32 = np.dtype(np.float32)
_U64 = np.dtype(np.uint64)
_NULL = ffi.NULL
_from_buffer = ffi.from_buffer


def _plain_f32(v: object, length: int) -> bool:
    """v is a float32 (length,) array the C library can read as it is."""
    return (v.__class__ is np.ndarray and v.dtype is _F32 and v.shape == (length,)
            and v.flags.c_contiguous and v.flags.aligned)


def _fast_linear(x: np.ndarray, w: PackedWeights, threshold, bias, activation_scale, out_threshold,
                 nthreads: int):
    """binary_linear's common call with the fewest Python steps (a batch-1 network pays
    this per layer): 1-D/2-D C-contiguous aligned float32 or packed x, threshold 0 or a
    float32 (K,) array, bias None or float32 (N,), out_threshold None or float32 (N,),
    activation_scale a bool, no out. Returns None to defer to the general path — also on
    any error status, so that the general path produces the message (its checks run
    first, the C call then repeats; errors are not the hot path)."""
    shape = x.shape
    if (len(shape) > 2 or not x.flags.c_contiguous or not x.flags.aligned or w.in_scale is not None
            or w.group_scale is not None or activation_scale.__class__ is not bool):
        return None
    n, k = w.n, w.k
    kw = (k + 63) >> 6
    dt = x.dtype
    if dt is _F32:
        if shape[-1] != k:
            return None
        if threshold.__class__ in (float, int) and threshold == 0:
            tptr, tlen = _NULL, 0
        elif _plain_f32(threshold, k):
            tptr, tlen = _from_buffer("float[]", threshold), k
        else:
            return None
    elif dt is _U64:
        if shape[-1] != kw or activation_scale or threshold.__class__ not in (float, int) or threshold != 0:
            return None
    else:
        return None
    if bias is not None and not _plain_f32(bias, n):
        return None
    if out_threshold is not None and not _plain_f32(out_threshold, n):
        return None
    m = shape[0] if len(shape) == 2 else 1
    if m == 0 or n == 0 or k == 0:
        return None
    handle = w._prepacked()
    sptr = _NULL if w.scale is None else _from_buffer("float[]", w.scale)
    bptr = _NULL if bias is None else _from_buffer("float[]", bias)
    if out_threshold is None:
        ylen = n
        y = np.empty((m, n) if len(shape) == 2 else (n,), dtype=np.float32)
        yptr = _from_buffer("float[]", y)
    else:
        ylen = (n + 63) >> 6
        y = np.empty((m, ylen) if len(shape) == 2 else (ylen,), dtype=np.uint64)
        yptr = _from_buffer("uint64_t[]", y)
        optr = _from_buffer("float[]", out_threshold)
    if dt is _F32:
        xptr = _from_buffer("float[]", x)
        if out_threshold is None:
            status = lib.takane_binary_linear_prepacked_f32(handle, m, xptr, k, tptr, tlen, activation_scale,
                                                            sptr, bptr, yptr, ylen, nthreads)
        else:
            status = lib.takane_binary_linear_prepacked_f32_bits(handle, m, xptr, k, tptr, tlen, activation_scale,
                                                                 sptr, bptr, optr, n, yptr, ylen, nthreads)
    else:
        xptr = _from_buffer("uint64_t[]", x)
        if out_threshold is None:
            status = lib.takane_binary_linear_prepacked(handle, m, xptr, kw, sptr, bptr, _NULL, yptr, ylen, nthreads)
        else:
            status = lib.takane_binary_linear_prepacked_bits(handle, m, xptr, kw, sptr, bptr, _NULL, optr, n, yptr,
                                                             ylen, nthreads)
    return y if status == 0 else None


def binary_linear(x, w, *, threshold=0.0, bias=None, activation_scale=False, out_threshold=None,
                  out=None, threads=None) -> np.ndarray:
    """W1A1 layer: binarized activations times ±1 weights, scaled, biased — fused in C.

    With ``d = binary_matmul(x, w, threshold=threshold)`` (exact int32 dot products), the
    float32 result is, evaluated in this order with each step rounded to float32::

        y = ((float32(d) * w.scale) * beta) + bias

    where ``w.scale`` is the weights' per-row scale (XNOR-Net's α, e.g.
    ``pack_weights(w, scale="mean_abs")``; skipped if ``None``), ``beta`` is the mean |x| of
    each row of real activations (skipped unless ``activation_scale=True``; computed in
    the same pass that packs the row, summed in float64 and rounded once to float32), and
    ``bias`` an optional (N,) array (rounded to float32). ``numpy`` float32 arithmetic in
    the same order gives the same bits (``reference.binary_linear`` does exactly that).

    ``out_threshold`` (a scalar or one per output channel, shape (N,)) returns instead
    the canonical packed bits of ``y >= out_threshold`` — shape (..., ceil(N/64)) uint64,
    ready to be the next binary layer's packed input. The comparison is exact (as
    ``pack_bits(y, out_threshold)`` would make it); without ``beta`` and from 32 rows on,
    it runs on the integer dot products against per-column integer thresholds derived in
    C from that same float expression (a negative scale flips the comparison), so no float
    is formed per element; either way the bits are the same.

    ``x``: real (..., K) (binarized at ``threshold``, scalar or (K,), as in
    :func:`binary_matmul`) or canonical packed uint64 (..., ceil(K/64)) — then
    ``activation_scale`` is not available. ``w``: a :class:`PackedWeights` without
    ``in_scale`` (that is the W1A-float format: see :func:`binary_weight_matmul`).
    ``threads``: how many threads may share the matrix product (None = the default).
    """
    if out is None and type(w) is PackedWeights and type(x) is np.ndarray:
        nthreads = _plain_threads(threads)
        y = _fast_linear(x, w, threshold, bias, activation_scale, out_threshold, nthreads) if nthreads >= 0 else None
        if y is not None:
            return y
    op = "binary_linear"
    w = _require_weights(w, op)
    if w.in_scale is not None:
        raise ValueError(
            f"{op}: w has an in_scale (per-input-column scale), which a W1A1 layer cannot apply to "
            "binarized activations; use binary_weight_matmul for OneBit-style weights"
        )
    if w.group_scale is not None:
        raise ValueError(
            f"{op}: w has group scales (group_size={w.group_size}), which the W1A1 layer's integer "
            "epilogue does not apply; use binary_weight_matmul (activations='float32' or 'q8_0')"
        )
    if not isinstance(activation_scale, (bool, np.bool_)):
        raise TypeError(f"activation_scale must be a bool, got {type(activation_scale).__name__}")
    nthreads = _check_threads(threads)
    n, k, kw = w.n, w.k, words_for(w.k)
    x, packed = _check_x(x, threshold, k, kw)  # padding: the C call checks it, named below
    if packed and activation_scale:
        raise ValueError("activation_scale needs the real activations (mean |x|); x is already packed (uint64)")
    bias32 = _vector_f32(bias, n, "bias", "one per output channel N")
    if out_threshold is None:
        shape, dtype, t_out = x.shape[:-1] + (n,), np.dtype(np.float32), None
    else:
        t_out = _out_threshold_f32(out_threshold, n)
        shape, dtype = x.shape[:-1] + (words_for(n),), np.dtype(np.uint64)
    y = _out_array(out, shape, dtype)
    if out is not None and np.may_share_memory(out, x):
        x = x.copy()  # the kernels read x while writing y: never let them alias
    m = math.prod(x.shape[:-1])
    if m == 0 or n == 0:
        return y
    ylen = shape[-1]
    handle = w._prepacked()  # the panel layout, built once per PackedWeights
    sptr = _ptr("float[]", w.scale)
    bptr = _ptr("float[]", bias32)
    yptr = ffi.from_buffer("float[]" if t_out is None else "uint64_t[]", y, require_writable=True)
    row_scale = None
    if not packed:
        rows, t = _real_rows_for_c(x, threshold, k, "x")
        if activation_scale and x.dtype not in _EXACT_IN_F32:
            # Wide inputs were compared by numpy (rows are 0/1): beta comes from the real
            # values, in float64, and the 0/1 rows are packed for the packed-x entry.
            beta = np.abs(x.reshape(m, k).astype(np.float64)).sum(axis=1) / k if k else np.zeros(m)
            row_scale = np.ascontiguousarray(beta, dtype=np.float32)
            if not np.all(np.isfinite(row_scale)):
                raise ValueError(f"{op}: x has values whose mean |x| (activation_scale) is not finite in float32")
            packed_rows = np.empty((m, kw), dtype=np.uint64)
            if k:
                _raise_status(lib.takane_pack_f32(m, k, ffi.from_buffer("float[]", rows), k,
                                                  ffi.from_buffer("float[]", _HALF), 1,
                                                  ffi.from_buffer("uint64_t[]", packed_rows, require_writable=True), kw),
                              f"{op}: x")
            x, packed = packed_rows, True
    if packed:
        xr = np.require(x, requirements="CA").reshape(m, kw)  # C-contiguous and aligned
        xptr, rsptr = _ptr("uint64_t[]", xr), _ptr("float[]", row_scale)
        if t_out is None:
            status = lib.takane_binary_linear_prepacked(handle, m, xptr, kw, sptr, bptr, rsptr, yptr, ylen, nthreads)
        else:
            status = lib.takane_binary_linear_prepacked_bits(handle, m, xptr, kw, sptr, bptr, rsptr,
                                                             ffi.from_buffer("float[]", t_out), t_out.size, yptr, ylen,
                                                             nthreads)
    else:
        xptr, tptr = _ptr("float[]", rows), ffi.from_buffer("float[]", t)
        if t_out is None:
            status = lib.takane_binary_linear_prepacked_f32(handle, m, xptr, k, tptr, t.size, int(activation_scale),
                                                            sptr, bptr, yptr, ylen, nthreads)
        else:
            status = lib.takane_binary_linear_prepacked_f32_bits(handle, m, xptr, k, tptr, t.size,
                                                                 int(activation_scale), sptr, bptr,
                                                                 ffi.from_buffer("float[]", t_out), t_out.size,
                                                                 yptr, ylen, nthreads)
    if status == lib.TAKANE_ERR_PADDING_BITS and packed:
        check_packed(x, k, "x")  # raises, naming x (the handle's padding was checked at creation)
    if status == lib.TAKANE_ERR_NOT_FINITE:
        if bias32 is not None and not np.all(np.isfinite(bias32)):
            raise ValueError("bias must be finite (after rounding to float32)")
        raise ValueError(f"{op}: x has an infinite value, so its mean |x| (activation_scale) is not finite")
    if status == lib.TAKANE_ERR_NAN and t_out is not None and np.isnan(t_out).any():
        raise ValueError("out_threshold contains NaN (NaN has no sign)")
    _raise_status(status, f"{op}: x" if status == lib.TAKANE_ERR_NAN else op)
    return y


def binary_weight_matmul(x, w, *, bias=None, out=None, threads=None) -> np.ndarray:
    """W1A-float (OneBit-style) layer: real activations times ±1 weights with two scales.

    ``y = ((x * w.in_scale) @ sign(W).T) * w.scale + bias`` as float32 (..., N), where
    ``sign(W)`` is the ±1 matrix in ``w.bits`` and ``w.in_scale`` (K,) / ``w.scale`` (N,)
    are skipped when ``None`` (``pack_weights(w, scale="onebit")`` sets both). ``x`` is
    real (..., K): float32, or float16/float64/int/bool converted to float32 first.
    NaN and infinities in x propagate as in IEEE arithmetic.

    Accumulation is float32 (lookup tables over groups of activations, in a
    kernel-specific order). Error bound, for every kernel, barring overflow/underflow:
    with u = 2⁻²⁴ and γ(j) = j·u / (1 − j·u),

        |y[i, n] − exact[i, n]| <= γ(K + 3) · |scale[n]| · Σ_k |x[i, k] · in_scale[k]| + γ(2) · |bias[n]|

    where ``exact`` is the real-number value of the formula on x as given and the stored
    float32 scales (``reference.binary_weight_matmul`` computes it in float64, and
    ``reference.binary_weight_matmul_error_bound`` this bound). When every partial sum
    is exactly representable (e.g. small-integer x, power-of-two scales) y is exact.
    ``threads``: how many threads may share the work (None = the default).
    """
    op = "binary_weight_matmul"
    w = _require_weights(w, op)
    if w.group_scale is not None:  # the group-scale kernels land with the q8_0 work (issue 12)
        raise ValueError(f"{op}: group scales are not supported by this build yet")
    nthreads = _check_threads(threads)
    n, k = w.n, w.k
    x = _as_real_array(x, "x")
    if x.shape[-1] != k:
        raise ValueError(f"x has shape {x.shape} but w has k={k}: the last dimension of x must be {k}")
    bias32 = _vector_f32(bias, n, "bias", "one per output channel N")
    shape = x.shape[:-1] + (n,)
    y = _out_array(out, shape, np.dtype(np.float32))
    m = math.prod(x.shape[:-1])
    if m == 0 or n == 0:
        return y
    rows = np.require(x, np.float32, "CA").reshape(m, k)  # C-contiguous and aligned
    if out is not None and np.may_share_memory(out, rows):
        rows = rows.copy()  # the kernels read x while writing y: never let them alias
    status = lib.takane_binary_weight_matmul_prepacked(
        w._prepacked(), m, _ptr("float[]", rows), k, _ptr("float[]", w.in_scale), _ptr("float[]", w.scale),
        _ptr("float[]", bias32), ffi.from_buffer("float[]", y, require_writable=True), n, nthreads,
    )
    if status == lib.TAKANE_ERR_NOT_FINITE:  # scales are finite by construction: the bias
        raise ValueError("bias must be finite (after rounding to float32)")
    _raise_status(status, op)
    return y

