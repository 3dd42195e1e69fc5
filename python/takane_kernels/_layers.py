"""Layer ops: the W1A1 layer ``binary_linear`` and the W1A-float / W1A8 layer
``binary_weight_matmul`` — both :class:`Linear`, bound once and called many times.

Validate, convert, call the C library (through the boundary module ``_capi``). The float
epilogues are computed in C exactly as documented below, so ``takane_kernels.reference``
reproduces ``binary_linear`` bit for bit, and ``binary_weight_matmul`` within its stated
error bound.
"""

from __future__ import annotations

import math

import numpy as np

from . import _capi as C
from ._capi import F32, U64, Threshold, lib
from ._capi import NULL as _NULL, from_buffer as _from_buffer
from ._ternary import TernaryWeights
from ._weights import PackedWeights

__all__ = ["binary_linear", "binary_weight_matmul", "Linear"]

_ndarray, _empty = np.ndarray, np.empty
_from_buffer_type = C.ffi.typeof
_FLOAT_ARRAY = _from_buffer_type("float[]")
_plain_scalar = C.plain_scalar  # a cffi type, not a string to look up per call
_SCALARS = (int, float)
_lin_f32 = lib.takane_binary_linear_prepacked_f32
_lin_f32_bits = lib.takane_binary_linear_prepacked_f32_bits
_lin_u64 = lib.takane_binary_linear_prepacked
_lin_u64_bits = lib.takane_binary_linear_prepacked_bits
_wmm = lib.takane_binary_weight_matmul_prepacked_ex
_tmm = lib.takane_ternary_matmul_prepacked  # same arguments, a ternary handle (issue 23)
_WMM_MODES = ("f32", "q8_0", "int8_row")


class Linear:
    """A linear layer on 1-bit weights, bound once: ``Linear(w, ...)(x)``.

    ``activations`` names the mode (one vocabulary across the library):

    - ``"w1a1"`` (default): binary activations, :func:`binary_linear` — ``threshold``,
      ``activation_scale``, ``bias`` and ``out_threshold`` as there;
    - ``"f32"`` (alias ``"float32"``): real activations, :func:`binary_weight_matmul`;
    - ``"q8_0"``: activations quantized to llama.cpp's Q8_0 blocks (W1A8),
      ``binary_weight_matmul(..., activations="q8_0")``;
    - ``"int8_row"`` (``w`` a :class:`TernaryWeights` only): BitNet b1.58's per-row
      absmax int8 activations (docs/guide/ternary.md).

    ``w``: a :class:`PackedWeights`, or for the weight-only modes a :class:`TernaryWeights`.

    Everything that does not change between calls is validated and converted here, once:
    the weights' re-tiled C copy and scale pointers, the threshold (rounded up to float32),
    the bias and ``out_threshold`` (as float32), ``threads``. A call ``op(x, out=None)``
    with C-contiguous aligned float32 (or, W1A1, packed uint64) x of 1 or 2 dimensions
    goes to the C kernel in a few Python steps; any other x takes the general path with
    every check of the function. ``op(x)`` returns exactly what the function returns for
    the same arguments. Immutable; safe to share between threads.
    """

    __slots__ = ("weights", "activations", "k", "n", "_kw", "_handle", "_t", "_threads", "_act_scale",
                 "_bias", "_bptr", "_sptr", "_tout", "_optr", "_olen", "_ylen", "_ydtype", "_yctype", "_ws", "_u64", "_nk", "_cf32",
                 "_fk", "_y1", "_cfxy", "_wfn")

    def __init__(self, w, *, activations="w1a1", threshold=0.0, bias=None, activation_scale=False,
                 out_threshold=None, threads=None, _op="Linear", _modes=C.ACTIVATION_MODES):
        mode = C.activation_mode(activations, _modes, f"{_op}: activations",
                                 None if _modes is C.ACTIVATION_MODES else ("float32", "q8_0", "int8_row"))
        ternary = isinstance(w, TernaryWeights)
        if not isinstance(w, PackedWeights) and not ternary:
            raise TypeError(f"{_op}: w must be a PackedWeights (from pack_weights) or a TernaryWeights "
                            f"(from pack_ternary), got {type(w).__name__}")
        if ternary and mode == "w1a1":
            raise ValueError(f"{_op}: TernaryWeights need a weight-only mode: activations='float32', 'q8_0' "
                             "or 'int8_row' (a ternary W1A1 layer is not implemented; binary_matmul(x, w) gives its "
                             "exact integer sums, W1.58A1)")
        if mode == "int8_row" and not ternary:
            raise ValueError(f"{_op}: activations='int8_row' (BitNet b1.58's per-row int8) takes TernaryWeights "
                             "(pack_ternary); 1-bit weights take 'float32' or 'q8_0'")
        if mode == "w1a1":
            if w.in_scale is not None:
                raise ValueError(
                    f"{_op}: w has an in_scale (per-input-column scale), which a W1A1 layer cannot apply to "
                    "binarized activations; use binary_weight_matmul for OneBit-style weights")
            if w.group_size is not None:  # (not group_scale: it may be rebuilt)
                raise ValueError(
                    f"{_op}: w has group scales (group_size={w.group_size}), which the W1A1 layer's integer "
                    "epilogue does not apply; use binary_weight_matmul (activations='float32' or 'q8_0')")
            self._act_scale = C.check_bool(activation_scale, "activation_scale")
        else:
            if activation_scale is not False or out_threshold is not None:
                raise ValueError(f"{_op}: activation_scale and out_threshold apply to activations='w1a1' only")
            self._act_scale = False
        self._threads = C.check_threads(threads)
        self.weights, self.activations = w, mode
        n, k = self.n, self.k = w.n, w.k
        self._kw = C.words_for(k)
        self._t = Threshold(threshold, k)
        if mode != "w1a1" and not self._t.zero:
            raise ValueError(f"{_op}: threshold applies to activations='w1a1' only")
        e = C.Epilogue(bias, out_threshold, n, "one per output channel N")
        self._bias, self._bptr, self._tout, self._optr, self._olen = e.bias, e.bptr, e.tout, e.optr, e.olen
        self._ylen, self._ydtype, self._yctype = e.ylast, e.ydtype, e.yctype
        self._sptr = C.ptr("float[]", w._row_scale if ternary else w.scale)
        self._wfn = _tmm if ternary else _wmm
        self._handle = w._prepacked()  # the panel layout, built once per weights object
        if mode != "w1a1":  # (in_scale, group_scale, group_size, C activations value)
            # a PackedWeights handle that carries the group scales takes none per call
            # (PackedWeights._prepacked); a ternary handle takes them per call
            gs = None if not ternary and w._carries_group_scale else w.group_scale
            self._ws = (C.ptr("float[]", w.in_scale), C.ptr("float[]", gs),
                        w.group_size if gs is not None else 0, C.C_ACTIVATIONS[mode])
        else:
            self._ws = None
        self._u64 = self._ws is None and self._t.zero and not self._act_scale  # packed x: the fast path
        self._nk = n > 0 and k > 0
        self._cf32 = self._bind_f32()
        # the common call's constants: K of an x it takes (-1, matching no x, when the layer is
        # empty: those calls take the general path), the 1-D result's shape, and the C call on
        # x and y themselves (the two pointers taken inside: one Python frame fewer)
        self._fk = k if self._nk else -1
        self._y1 = (self._ylen,)
        self._cfxy = self._bind_f32(arrays=True)

    def __repr__(self) -> str:
        return f"Linear(n={self.n}, k={self.k}, activations={self.activations!r})"

    @property
    def out_features(self) -> int:
        """Elements of the last axis of a result: N, or ceil(N/64) words with out_threshold."""
        return self._ylen

    def __call__(self, x, out=None) -> np.ndarray:
        """float32 (..., N), or with ``out_threshold`` packed uint64 (..., ceil(N/64))."""
        # The common call first, in the fewest steps: float32 x of (M, K) or (K,), no out=.
        # Anything else (and every failed check here) takes the paths below.
        if x.__class__ is _ndarray and x.dtype is F32 and out is None:
            shape = x.shape
            nd = len(shape)
            if nd == 2:
                m, kx = shape
                yshape = (m, self._ylen)
            else:
                m, kx, yshape = 1, (shape[0] if nd == 1 else None), self._y1
            if kx == self._fk and m:
                flags = x.flags
                if flags.c_contiguous and flags.aligned:
                    y = _empty(yshape, self._ydtype)
                    status = self._cfxy(m, x, y)
                    if status:
                        self._fail(status, x)
                    return y
        if x.__class__ is _ndarray:  # packed x, or out= given
            shape = x.shape
            nd = len(shape)
            if nd == 2 or nd == 1:
                dt = x.dtype
                f32 = dt is F32 and shape[-1] == self.k
                if f32 or (dt is U64 and shape[-1] == self._kw and self._u64):
                    flags = x.flags
                    m = shape[0] if nd == 2 else 1
                    if flags.c_contiguous and flags.aligned and m and self._nk:
                        yshape = (m, self._ylen) if nd == 2 else (self._ylen,)
                        y = _empty(yshape, self._ydtype) if out is None else C.ready_out(out, yshape, self._ydtype, x)
                        if y is not None:
                            yptr = _from_buffer(self._yctype, y)
                            if f32:
                                status = self._cf32(m, _from_buffer("float[]", x), yptr, self._bptr)
                            else:
                                status = self._run_u64(m, _from_buffer("uint64_t[]", x), yptr, self._bptr, _NULL)
                            if status:
                                self._fail(status, x)
                            return y
        return self._general(x, out)

    def _bind_f32(self, arrays=False):
        """The float32-input C call with every constant bound: ``_cf32(m, xptr, yptr, bptr)``
        (the torch modules call it with tensor memory) or, ``arrays=True``, ``_cfxy(m, x, y)``
        on C-contiguous aligned arrays with the layer's bias (a call's fast path: the two
        pointers are taken inside, so the call is one Python frame above C)."""
        h, k, n, ylen, threads = self._handle, self.k, self.n, self._ylen, self._threads
        tptr, tlen, act, sptr, optr, olen = self._t.ptr, self._t.len, self._act_scale, self._sptr, self._optr, self._olen
        fb, fa, ya, b = _from_buffer, _FLOAT_ARRAY, _from_buffer_type(self._yctype), self._bptr
        if self._ws is not None:
            ins, gs, g, mode = self._ws
            wfn = self._wfn
            if arrays:
                return lambda m, x, y: wfn(h, m, fb(fa, x), k, ins, sptr, gs, g, b, mode, fb(ya, y), n, threads)
            return lambda m, xp, yp, bp: wfn(h, m, xp, k, ins, sptr, gs, g, bp, mode, yp, n, threads)
        if self._tout is None:
            if arrays:
                return lambda m, x, y: _lin_f32(h, m, fb(fa, x), k, tptr, tlen, act, sptr, b, fb(ya, y), ylen, threads)
            return lambda m, xp, yp, bp: _lin_f32(h, m, xp, k, tptr, tlen, act, sptr, bp, yp, ylen, threads)
        if arrays:
            return lambda m, x, y: _lin_f32_bits(h, m, fb(fa, x), k, tptr, tlen, act, sptr, b, optr, olen, fb(ya, y),
                                                 ylen, threads)
        return lambda m, xp, yp, bp: _lin_f32_bits(h, m, xp, k, tptr, tlen, act, sptr, bp, optr, olen, yp, ylen,
                                                   threads)

    # -- the C calls: x and y as pointers (the torch modules call these with tensor memory) --
    def _run_f32(self, m, xptr, yptr, bptr, tptr=None, tlen=0):
        """y = layer(x) for m C-contiguous float32 rows at xptr. ``bptr``: the bias."""
        if tptr is None:
            tptr, tlen = self._t.ptr, self._t.len
        if self._ws is not None:
            ins, gs, g, act = self._ws
            return self._wfn(self._handle, m, xptr, self.k, ins, self._sptr, gs, g, bptr, act, yptr, self.n,
                             self._threads)
        if self._tout is None:
            return _lin_f32(self._handle, m, xptr, self.k, tptr, tlen, self._act_scale, self._sptr, bptr,
                            yptr, self._ylen, self._threads)
        return _lin_f32_bits(self._handle, m, xptr, self.k, tptr, tlen, self._act_scale, self._sptr, bptr,
                             self._optr, self._olen, yptr, self._ylen, self._threads)

    def _run_u64(self, m, xptr, yptr, bptr, rsptr):
        """y = layer(x) for m packed rows at xptr (W1A1). ``rsptr``: per-row beta or NULL."""
        if self._tout is None:
            return _lin_u64(self._handle, m, xptr, self._kw, self._sptr, bptr, rsptr, yptr, self._ylen,
                            self._threads)
        return _lin_u64_bits(self._handle, m, xptr, self._kw, self._sptr, bptr, rsptr, self._optr, self._olen,
                             yptr, self._ylen, self._threads)

    def _general(self, x, out):
        if self._ws is not None:
            return self._general_weight_only(x, out)
        op, k, kw, n = "binary_linear", self.k, self._kw, self.n
        x, packed = C.check_activations(x, self._t, k, kw)
        if packed and self._act_scale:
            raise ValueError("activation_scale needs the real activations (mean |x|); x is already packed (uint64)")
        shape = x.shape[:-1] + (self._ylen,)
        y = C.out_array(out, shape, self._ydtype)
        if out is not None and np.may_share_memory(out, x):
            x = x.copy()  # the kernels read x while writing y: never let them alias
        m = math.prod(x.shape[:-1])
        if m == 0 or n == 0:
            return y
        yptr = _from_buffer(self._yctype, y, require_writable=True)
        row_scale = None
        if not packed:
            rows, tptr, tlen = C.real_rows_for_c(x, self._t, k, "x")
            if self._act_scale and x.dtype not in C.EXACT_IN_F32:
                # Wide inputs were compared by numpy (rows are 0/1): beta comes from the real
                # values, in float64, and the 0/1 rows are packed for the packed-x entry.
                beta = np.abs(x.reshape(m, k).astype(np.float64)).sum(axis=1) / k if k else np.zeros(m)
                row_scale = np.ascontiguousarray(beta, dtype=np.float32)
                if not np.all(np.isfinite(row_scale)):
                    raise ValueError(f"{op}: x has values whose mean |x| (activation_scale) is not finite in float32")
                packed_rows = np.empty((m, kw), dtype=np.uint64)
                if k:
                    C.raise_status(lib.takane_pack_f32(m, k, _from_buffer("float[]", rows), k, C.HALF_PTR, 1,
                                                       _from_buffer("uint64_t[]", packed_rows), kw), f"{op}: x")
                x, packed = packed_rows, True
        if packed:
            xr = np.require(x, requirements="CA").reshape(m, kw)  # C-contiguous and aligned
            status = self._run_u64(m, C.ptr("uint64_t[]", xr), yptr, self._bptr, C.ptr("float[]", row_scale))
        else:
            status = self._run_f32(m, C.ptr("float[]", rows), yptr, self._bptr, tptr, tlen)
        if status:
            self._fail(status, x)
        return y

    def _general_weight_only(self, x, out):
        k, n = self.k, self.n
        x = C.as_real_array(x, "x")
        if x.shape[-1] != k:
            raise ValueError(f"x has shape {x.shape} but w has k={k}: the last dimension of x must be {k}")
        shape = x.shape[:-1] + (n,)
        y = C.out_array(out, shape, F32)
        m = math.prod(x.shape[:-1])
        if m == 0 or n == 0:
            return y
        rows = np.require(x, np.float32, "CA").reshape(m, k)  # C-contiguous and aligned
        if out is not None and np.may_share_memory(out, rows):
            rows = rows.copy()  # the kernels read x while writing y: never let them alias
        status = self._run_f32(m, C.ptr("float[]", rows), _from_buffer("float[]", y, require_writable=True),
                               self._bptr)
        if status:
            self._fail(status, x)
        return y

    def _fail(self, status, x=None):
        """Raise the error a failed C call stands for, naming the argument."""
        bias = self._bias
        if self._ws is not None:
            op = "binary_weight_matmul"
            if status == lib.TAKANE_ERR_NOT_FINITE or status == lib.TAKANE_ERR_NAN:
                # scales are finite by construction: the bias, or (q8_0) x * in_scale
                if bias is not None and not np.isfinite(bias).all():
                    raise ValueError("bias must be finite (after rounding to float32)")
                if self.activations == "int8_row":
                    raise ValueError(f"{op}: x contains NaN or ±inf, or x * in_scale overflows float32: "
                                     "activations='int8_row' cannot form a row scale")
                raise ValueError(
                    f"{op}: x contains NaN or ±inf, x * in_scale overflows float32, or a block's "
                    "max |x| / 127 overflows fp16 (|x| > 127 * 65504): activations='q8_0' cannot form "
                    "a block scale")
            C.raise_status(status, op)
        op = "binary_linear"
        if status == lib.TAKANE_ERR_PADDING_BITS and x is not None and x.dtype == np.uint64:
            C.check_packed(x, self.k, "x")  # raises, naming x (the handle's padding was checked at creation)
        if status == lib.TAKANE_ERR_NOT_FINITE:
            if bias is not None and not np.all(np.isfinite(bias)):
                raise ValueError("bias must be finite (after rounding to float32)")
            raise ValueError(f"{op}: x has an infinite value, so its mean |x| (activation_scale) is not finite")
        if status == lib.TAKANE_ERR_NAN and self._tout is not None and np.isnan(self._tout).any():
            raise ValueError("out_threshold contains NaN (NaN has no sign)")
        C.raise_status(status, f"{op}: x" if status == lib.TAKANE_ERR_NAN else op)


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
    For many calls with the same weights and constants, bind them once: :class:`Linear`.
    """
    if (w.__class__ is PackedWeights and bias is None and threshold.__class__ in _SCALARS
            and (threads is None or threads.__class__ is int)):
        if out_threshold is None and activation_scale is False:  # the common call: a short key
            key = ("w1a1", threshold, threads)
        elif _plain_scalar(out_threshold) and activation_scale.__class__ is bool:
            key = ("w1a1", threshold, activation_scale, out_threshold, threads)
        else:
            key = None
        if key is not None:
            op = w._bound.get(key) or C.bound_op(
                w, key, Linear, w, activations="w1a1", threshold=threshold, activation_scale=activation_scale,
                out_threshold=out_threshold, threads=threads, _op="binary_linear")
            return op.__call__(x, out)  # (a method call: cheaper than calling the instance)
    return Linear(w, activations="w1a1", threshold=threshold, bias=bias, activation_scale=activation_scale,
                  out_threshold=out_threshold, threads=threads, _op="binary_linear")(x, out)


def binary_weight_matmul(x, w, *, bias=None, activations="float32", out=None, threads=None) -> np.ndarray:
    """W1A-float / W1A8 layer: real activations times ±1 weights with row, column and group scales.

    ``y = ((x * w.in_scale) @ (sign(W) * w.group_scale).T) * w.scale + bias`` as float32
    (..., N), where ``sign(W)`` is the ±1 matrix in ``w.bits``, ``w.in_scale`` (K,) /
    ``w.scale`` (N,) are skipped when ``None`` (``pack_weights(w, scale="onebit")`` sets
    both) and ``w.group_scale`` (N, ceil(K/G)) multiplies column k of row n by
    ``group_scale[n, k // w.group_size]`` (``pack_weights(w, group_size=G)``). ``x`` is
    real (..., K): float32, or float16/float64/int/bool converted to float32 first.

    ``activations="float32"``: accumulation is float32 (lookup tables over groups of
    activations, in a kernel-specific order); NaN and infinities in x propagate as in IEEE
    arithmetic. Error bound, for every kernel, barring overflow/underflow: with u = 2⁻²⁴
    and γ(j) = j·u / (1 − j·u),

        |y[i, n] − exact[i, n]| <= γ(K + 4) · |scale[n]| · Σ_k |xs[i, k] · g[n, k // G]| + γ(2) · |bias[n]|

    with ``xs = x * in_scale``. ``activations="q8_0"`` (W1A8): each row of xs is quantized
    in blocks of 32 exactly as llama.cpp's ``quantize_row_q8_0_ref`` (int8 q, block scale d
    rounded to float16; a partial last block is zero-padded), the integer block sums
    S_b = Σ q·sign(W) are exact, and ``y = scale · Σ_b d_b · g[n, 32b // G] · S_b + bias``
    is accumulated in float32 within γ(nb + 4) · |scale[n]| · Σ_b |d_b · g · S_b| + γ(2)·|bias[n]|
    (nb = ceil(K/32)). NaN or ±inf in x, an x * in_scale that overflows, or a block whose
    max |x| / 127 overflows float16 (|x| > 127 · 65504) is a ``ValueError`` with "q8_0":
    no block scale can be formed.

    ``exact`` is the real-number value of the formula on the float32 inputs (and, for
    "q8_0", on q and d): ``reference.binary_weight_matmul(..., activations=)`` computes it
    in float64 and ``reference.binary_weight_matmul_error_bound`` this bound. When every
    partial sum is exactly representable (e.g. small-integer x, power-of-two scales) y is
    exact. ``threads``: how many threads may share the work (None = the default).

    ``w`` may be a :class:`TernaryWeights` ({-1, 0, +1} weights, :func:`pack_ternary`):
    then sign(W) above is the ternary matrix, ``w.scale`` is ``fl(scale * tensor_scale)``,
    the bounds gain one rounding (γ(K + 5), γ(nb + 5)), and ``activations="int8_row"``
    (BitNet b1.58's per-row absmax int8) is also accepted; docs/guide/ternary.md states
    its definition and bound.
    """
    if bias is None and (w.__class__ is PackedWeights or w.__class__ is TernaryWeights) and (
            activations.__class__ is str and (threads is None or threads.__class__ is int)):
        key = ("wmm", activations, threads)
        op = w._bound.get(key) or C.bound_op(w, key, Linear, w, activations=activations, threads=threads,
                                             _op="binary_weight_matmul", _modes=_WMM_MODES)
        return op.__call__(x, out)
    return Linear(w, activations=activations, bias=bias, threads=threads, _op="binary_weight_matmul",
                  _modes=_WMM_MODES)(x, out)
