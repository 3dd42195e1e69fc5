"""Binary convolution for binary CNNs: PackedConvWeights, binary_conv2d, binary_max_pool2d.

Layout is NHWC with channels packed per pixel (docs/guide/convolution.md): a packed activation is
uint64 (N, H, W, ceil(C/64)), each pixel's channels in the canonical bit format. Weights
are OHWI (Cout, KH, KW, Cin / groups) — from PyTorch's OIHW ``w.permute(0, 2, 3, 1)``.
An NCHW array becomes NHWC with :func:`nchw_to_nhwc` (one copy), and back with
:func:`nhwc_to_nchw` (a view).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

from . import _capi as C
from ._capi import F32, U64, Threshold, lib
from ._capi import NULL as _NULL, from_buffer as _from_buffer
from ._ops import pack_bits
from ._weights import format_arrays, loaded_bits, loaded_int, read_npz, save_npz_atomic

__all__ = [
    "PackedConvWeights", "pack_conv_weights", "binary_conv2d", "binary_max_pool2d",
    "conv2d_output_size", "nchw_to_nhwc", "nhwc_to_nchw", "Conv2d",
]

FORMAT_NAME = "takane_kernels.PackedConvWeights"
FORMAT_VERSION = 1
_DIM_MAX = C.DIM_MAX
_LOCK = threading.Lock()
_int, _pair = C.check_int, C.check_pair


def _rebuild(bits, in_channels, scale):
    return PackedConvWeights(bits, in_channels, scale=scale)


class PackedConvWeights:
    """±1 convolution weights, OHWI, packed per tap along the input channels.

    ``bits`` (Cout, KH, KW, ceil(Cin/64)) uint64 canonical (bit 1 = +1, LSB first, zero
    padding); ``in_channels`` is the weight tensor's Cin — per group: a convolution with
    ``groups=g`` has Cin * g input channels; ``scale`` (Cout,) float32 or None.
    Immutable (read-only private copies); equality by value; pickles without its C
    handles, which are built on first use (one per ``groups`` value).
    """

    __slots__ = ("_bits", "_cin", "_scale", "_handles", "_bound", "__weakref__")

    def __init__(self, bits: np.ndarray, in_channels: int, *, scale: object = None):
        cin = _int(in_channels, "in_channels")
        bits = C.check_packed(bits, cin, "bits")
        if bits.ndim != 4:
            raise ValueError(f"bits must be 4-D (Cout, KH, KW, ceil(Cin/64)), got shape {bits.shape}")
        cout, kh, kw, _ = bits.shape
        if min(cout, kh, kw) < 1 or max(cout, kh, kw) > _DIM_MAX:
            raise ValueError(f"bits has shape {bits.shape}: Cout, KH and KW must be in [1, {_DIM_MAX}]")
        if kh * kw * cin > _DIM_MAX:
            raise ValueError(f"KH*KW*Cin = {kh * kw * cin} exceeds 2**31 - 1 (dot products are int32)")
        owned = np.array(bits, dtype=np.uint64, order="C")
        owned.flags.writeable = False
        self._bits = owned
        self._cin = cin
        self._scale = C.owned_vector(scale, cout, "scale", "one per output channel")
        self._handles = {}
        self._bound = {}  # bound ops of binary_conv2d (_capi.bound_op)

    def _handle(self, groups: int):
        h = self._handles.get(groups)
        if h is None:
            with _LOCK:
                h = self._handles.get(groups)
                if h is None:
                    h = C.conv_weights_handle(self._bits, self._cin, groups)
                    self._handles[groups] = h
        return h

    bits = property(lambda self: self._bits, doc="(Cout, KH, KW, ceil(Cin/64)) uint64, read-only")
    in_channels = property(lambda self: self._cin, doc="Cin of the weight tensor (per group)")
    out_channels = property(lambda self: self._bits.shape[0], doc="Cout")
    kernel_size = property(lambda self: tuple(self._bits.shape[1:3]), doc="(KH, KW)")
    scale = property(lambda self: self._scale, doc="(Cout,) float32 per-channel scale, or None")

    @property
    def nbytes(self) -> int:
        return self._bits.nbytes + (self._scale.nbytes if self._scale is not None else 0)

    def __repr__(self) -> str:
        kh, kw = self.kernel_size
        return (f"PackedConvWeights(out_channels={self.out_channels}, in_channels={self.in_channels}, "
                f"kernel_size=({kh}, {kw}), scale={'yes' if self._scale is not None else 'None'})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackedConvWeights):
            return NotImplemented
        same_scale = (self._scale is None and other._scale is None) or (
            self._scale is not None and other._scale is not None and np.array_equal(self._scale, other._scale))
        return self._cin == other._cin and self._bits.shape == other._bits.shape and \
            np.array_equal(self._bits, other._bits) and same_scale

    __hash__ = None

    def __reduce__(self):
        return (_rebuild, (self._bits, self._cin, self._scale))

    # On-disk format, version 1: an uncompressed .npz (no pickles) holding exactly
    #   format "takane_kernels.PackedConvWeights", format_version 1, in_channels (0-d int64),
    #   bits (Cout, KH, KW, ceil(Cin/64)) uint64 canonical, and scale (Cout,) float32 if any.
    # Written atomically (temporary file + rename); read with the hardening of
    # PackedWeights.load: every malformed, truncated or hostile file is a ValueError.
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` exactly (no extension is added), atomically."""
        save_npz_atomic(path, format_arrays(FORMAT_NAME, FORMAT_VERSION, in_channels=np.array(self._cin, dtype=np.int64),
                                            bits=self._bits, scale=self._scale))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PackedConvWeights":
        """Read a file written by :meth:`save`, validating everything (ValueError if not)."""
        name = repr(os.fspath(path))
        allowed = {"format", "format_version", "in_channels", "bits", "scale"}
        data = read_npz(path, allowed, "PackedConvWeights")
        tag = data.get("format")
        if tag is None or tag.shape != () or tag.dtype.kind != "U" or str(tag) != FORMAT_NAME:
            raise ValueError(f"{name} is not a PackedConvWeights file (format tag missing)")
        version = data.get("format_version")
        if version is None or version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
            raise ValueError(f"{name}: unsupported PackedConvWeights format version {version!r}")
        for key in ("in_channels", "bits"):
            if key not in data:
                raise ValueError(f"{name}: missing array {key!r}")
        cin = loaded_int(data, "in_channels", name)
        bits = loaded_bits(data, 4, name)
        if "scale" in data and data["scale"].dtype != np.float32:
            raise ValueError(f"{name}: scale must be float32, got {data['scale'].dtype}")
        try:
            return cls(bits, int(cin), scale=data.get("scale"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: invalid PackedConvWeights data: {e}") from e


def pack_conv_weights(w: object, *, scale: object = "mean_abs") -> PackedConvWeights:
    """Real OHWI weights (Cout, KH, KW, Cin) -> :class:`PackedConvWeights` (bit = ``w >= 0``).

    ``scale``: ``"mean_abs"`` (per output channel mean |w| over KH*KW*Cin, XNOR-Net's
    alpha), ``None``, or a (Cout,) array. From PyTorch's OIHW: ``w.permute(0, 2, 3, 1)``.
    """
    w = C.as_real_array(w, "w")
    if w.ndim != 4:
        raise ValueError(f"w must be 4-D (Cout, KH, KW, Cin) (OHWI), got shape {w.shape}")
    if w.size == 0:
        raise ValueError(f"w has an empty dimension: shape {w.shape}")
    if w.dtype.kind == "f" and np.isnan(w).any():
        raise ValueError("w contains NaN (NaN has no sign)")
    if isinstance(scale, str):
        if scale != "mean_abs":
            raise ValueError(f"scale must be 'mean_abs', None or a (Cout,) array, got {scale!r}")
        scale = np.abs(w.reshape(w.shape[0], -1)).mean(axis=1, dtype=np.float64)
    return PackedConvWeights(pack_bits(w), w.shape[3], scale=scale)


def nchw_to_nhwc(x: object) -> np.ndarray:
    """An NCHW array as a C-contiguous NHWC array (one copy; none if it already is, e.g.
    a channels_last tensor's ``.numpy()`` transposed)."""
    a = np.asarray(x)
    if a.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {a.shape}")
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nhwc_to_nchw(x: object) -> np.ndarray:
    """An NHWC array as NCHW (a view, no copy)."""
    a = np.asarray(x)
    if a.ndim != 4:
        raise ValueError(f"x must be 4-D (N, H, W, C), got shape {a.shape}")
    return a.transpose(0, 3, 1, 2)


def _padding(padding: object, kernel: tuple[int, int], dilation: tuple[int, int], stride: tuple[int, int]):
    """(top, bottom, left, right) from an int, a pair, 'valid' or 'same' (stride 1)."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' needs stride 1 (as in PyTorch)")
            out = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)  # PyTorch: the extra pixel of an odd total goes last
                out += [total // 2, total - total // 2]
            return out[0], out[1], out[2], out[3]
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = _pair(padding, "padding", lo=0)
    return ph, ph, pw, pw


_geometry = C.conv_geometry


def _output_hw(h, w, kernel, stride, dilation, pads):
    eh = dilation[0] * (kernel[0] - 1) + 1
    ew = dilation[1] * (kernel[1] - 1) + 1
    ph, pw = h + pads[0] + pads[1], w + pads[2] + pads[3]
    if ph < eh or pw < ew:
        raise ValueError(
            f"the padded input ({ph}x{pw}) is smaller than the dilated kernel ({eh}x{ew})")
    return (ph - eh) // stride[0] + 1, (pw - ew) // stride[1] + 1


def conv2d_output_size(in_hw, kernel_size, *, stride=1, padding=0, dilation=1) -> tuple[int, int]:
    """(Ho, Wo) of a convolution / pooling over an (H, W) image."""
    h, w = _pair(tuple(in_hw), "in_hw")
    kernel = _pair(kernel_size, "kernel_size")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    return _output_hw(h, w, kernel, stride, dilation, _padding(padding, kernel, dilation, stride))


def _check_x4(x: object, name: str = "x") -> np.ndarray:
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D NHWC (N, H, W, C or ceil(C/64) words), got shape {x.shape}")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"{name} has shape {x.shape}: an image needs H, W >= 1")
    if max(x.shape[:3]) > _DIM_MAX:
        raise ValueError(f"{name} has shape {x.shape}: N, H, W must be <= 2**31 - 1")
    return x


def _f32_nhwc(a: object, shape: tuple, name: str) -> np.ndarray | None:
    if a is None:
        return None
    a = C.as_real_array(a, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (N, Ho, Wo, Cout), got {a.shape}")
    return np.require(a, np.float32, "CA")


_conv_f32 = lib.takane_binary_conv2d_f32
_conv_f32_bits = lib.takane_binary_conv2d_f32_bits
_conv_u64 = lib.takane_binary_conv2d
_conv_u64_bits = lib.takane_binary_conv2d_bits


class Conv2d:
    """``binary_conv2d`` bound to its weights and constants:
    ``Conv2d(w, stride=s, padding=p, threshold=t, ...)(x)`` is
    ``binary_conv2d(x, w, stride=s, padding=p, threshold=t, ...)``.

    The geometry, the weights' C handle (per ``groups``), the threshold (scalar or per
    input channel, rounded up to float32 once), the bias and ``out_threshold`` are
    validated and converted here, once; a call ``op(x, out=None, residual=None)`` with a
    C-contiguous aligned float32 (or packed uint64) NHWC x costs a few Python steps above
    the kernel. Any other x takes the general path, with every check of the function.
    Immutable; safe to share between threads.
    """

    __slots__ = ("weights", "groups", "stride", "dilation", "pads", "pad_value", "in_channels", "out_channels",
                 "kernel_size", "_threads", "_t", "_bias", "_bptr", "_sptr", "_tout", "_optr", "_olen", "_ylast",
                 "_ydtype", "_yctype", "_handle", "_geos", "_cw")

    def __init__(self, w, *, stride=1, padding=0, dilation=1, groups=1, pad_value=0, threshold=0.0, bias=None,
                 out_threshold=None, threads=None):
        if not isinstance(w, PackedConvWeights):
            raise TypeError(f"binary_conv2d: w must be a PackedConvWeights (from pack_conv_weights), "
                            f"got {type(w).__name__}")
        self._threads = C.check_threads(threads)
        self.groups = groups = C.check_int(groups, "groups")
        cout = w.out_channels
        if cout % groups:
            raise ValueError(f"groups={groups} does not divide out_channels={cout}")
        cin = w.in_channels * groups
        if isinstance(pad_value, (bool, np.bool_)) or not isinstance(pad_value, (int, np.integer, float)) \
                or pad_value not in (0, 1, -1):
            raise ValueError(f"pad_value must be 0, +1 or -1, got {pad_value!r}")
        self.weights, self.in_channels, self.out_channels = w, cin, cout
        self.kernel_size = w.kernel_size
        self.stride, self.dilation = C.check_pair(stride, "stride"), C.check_pair(dilation, "dilation")
        self.pads = _padding(padding, self.kernel_size, self.dilation, self.stride)
        self.pad_value = int(pad_value)
        self._t = Threshold(threshold, cin)
        e = C.Epilogue(bias, out_threshold, cout, "one per output channel")
        self._bias, self._bptr, self._tout, self._optr, self._olen = e.bias, e.bptr, e.tout, e.optr, e.olen
        self._ylast, self._ydtype, self._yctype = e.ylast, e.ydtype, e.yctype
        self._sptr = C.ptr("float[]", w.scale)
        self._cw = C.words_for(cin)
        self._handle = w._handle(groups)
        self._geos = {}  # (n, h, w) -> (geometry, Ho, Wo): read-only once made

    def __repr__(self) -> str:
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, pads={self.pads}, groups={self.groups})")

    def output_shape(self, n: int, h: int, w: int) -> tuple[int, int, int, int]:
        """The result's shape for an (n, h, w, ...) input."""
        return (n,) + self._geometry(n, h, w)[1:] + (self._ylast,)

    def _geometry(self, n, h, w):
        key = (n, h, w)
        g = self._geos.get(key)
        if g is None:
            ho, wo = _output_hw(h, w, self.kernel_size, self.stride, self.dilation, self.pads)
            g = (C.conv_geometry(n, h, w, self.stride, self.dilation, self.pads, self.pad_value), ho, wo)
            if len(self._geos) > 64:
                self._geos = {}
            self._geos[key] = g
        return g

    def __call__(self, x, out=None, residual=None) -> np.ndarray:
        """float32 (N, Ho, Wo, Cout), or with ``out_threshold`` packed (N, Ho, Wo, ceil(Cout/64))."""
        if x.__class__ is np.ndarray and residual is None:
            shape = x.shape
            if len(shape) == 4:
                dt = x.dtype
                f32 = dt is F32 and shape[3] == self.in_channels
                if (f32 or (dt is U64 and shape[3] == self._cw and self._t.zero)) and x.flags.c_contiguous \
                        and x.flags.aligned and shape[0] and shape[1] and shape[2]:
                    g = self._geos.get((shape[0], shape[1], shape[2]))
                    if g is not None:
                        yshape = (shape[0], g[1], g[2], self._ylast)
                        y = np.empty(yshape, self._ydtype) if out is None else C.ready_out(out, yshape, self._ydtype, x)
                        if y is not None:
                            yptr = _from_buffer(self._yctype, y)
                            if f32:
                                st = self._run_f32(g[0], _from_buffer("float[]", x), yptr, self._bptr, _NULL)
                            else:
                                st = self._run_u64(g[0], _from_buffer("uint64_t[]", x), yptr, self._bptr, _NULL)
                            if st:
                                self._fail(st, x)
                            return y
        return self._general(x, out, residual)

    def _run_f32(self, geo, xptr, yptr, bptr, rptr, tptr=None, tlen=0):
        if tptr is None:
            tptr, tlen = self._t.ptr, self._t.len
        if self._tout is None:
            return _conv_f32(self._handle, geo, xptr, tptr, tlen, self._sptr, bptr, rptr, yptr, self._threads)
        return _conv_f32_bits(self._handle, geo, xptr, tptr, tlen, self._sptr, bptr, rptr, self._optr, self._olen,
                              yptr, self._threads)

    def _run_u64(self, geo, xptr, yptr, bptr, rptr):
        if self._tout is None:
            return _conv_u64(self._handle, geo, xptr, self._sptr, bptr, rptr, yptr, self._threads)
        return _conv_u64_bits(self._handle, geo, xptr, self._sptr, bptr, rptr, self._optr, self._olen, yptr,
                              self._threads)

    def _general(self, x, out, residual):
        cin, cout = self.in_channels, self.out_channels
        x = _check_x4(x)
        n, h, wi = x.shape[:3]
        packed = x.dtype == np.uint64
        if packed:
            self._t.require_zero_for_packed()
            if x.shape[3] != self._cw:
                raise ValueError(f"packed x has shape {x.shape}: its last dimension must be ceil(Cin/64) = "
                                 f"{self._cw} words for Cin={cin}")
        else:
            x = C.as_real_array(x, "x")
            if x.shape[3] != cin:
                raise ValueError(f"x has shape {x.shape} but the weights take Cin={cin} channels "
                                 f"(in_channels={self.weights.in_channels} x groups={self.groups})")
        geo, ho, wo = self._geometry(n, h, wi)
        y = C.out_array(out, (n, ho, wo, self._ylast), self._ydtype)
        res = _f32_nhwc(residual, (n, ho, wo, cout), "residual")
        if res is not None and np.may_share_memory(res, y):
            res = res.copy()
        if n == 0:
            return y
        yp = _from_buffer(self._yctype, y, require_writable=True)
        rp = C.ptr("float[]", res)
        if packed:
            xr = np.require(x, requirements="CA")
            if np.may_share_memory(xr, y):
                xr = xr.copy()
            st = self._run_u64(geo, _from_buffer("uint64_t[]", xr), yp, self._bptr, rp)
        else:
            rows, tptr, tlen = C.real_rows_for_c(x, self._t, cin, "x")
            if np.may_share_memory(rows, y):
                rows = rows.copy()
            st = self._run_f32(geo, _from_buffer("float[]", rows), yp, self._bptr, rp, tptr, tlen)
        if st:
            self._fail(st, x)
        return y

    def _fail(self, st, x=None):
        if st == lib.TAKANE_ERR_PADDING_BITS and x is not None and x.dtype == np.uint64 \
                and not C.padding_is_zero(x, self.in_channels):
            raise ValueError(f"x has non-zero padding bits (channel positions >= Cin={self.in_channels} "
                             "in the last word)")
        if st == lib.TAKANE_ERR_NOT_FINITE:
            raise ValueError("binary_conv2d: bias must be finite")
        C.raise_status(st, "binary_conv2d: x" if st == lib.TAKANE_ERR_NAN else "binary_conv2d")


def binary_conv2d(x, w, *, stride=1, padding=0, dilation=1, groups=1, pad_value=0, threshold=0.0,
                  bias=None, residual=None, out_threshold=None, out=None, threads=None) -> np.ndarray:
    """Binary 2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``), NHWC.

    ``x``: real (N, H, W, Cin) binarized as ``x >= threshold`` (a scalar or one per input
    channel, (Cin,)) inside the call, or packed uint64 (N, H, W, ceil(Cin/64)).
    ``w``: :class:`PackedConvWeights` (Cout, KH, KW, Cin/groups).
    ``stride``, ``dilation``: int or pair; ``padding``: int, pair (h, w), ``"valid"`` or
    ``"same"`` (stride 1). ``pad_value``: what a tap outside the image is — 0 (contributes
    nothing: true zero padding, exact), +1 or -1.
    Returns float32 (N, Ho, Wo, Cout) ``((float32(dot) * scale) + bias) + residual`` (each
    step rounded to float32; absent terms skipped), or with ``out_threshold`` (scalar or
    (Cout,)) the packed bits uint64 (N, Ho, Wo, ceil(Cout/64)) of ``result >= out_threshold``.
    For many calls with the same weights and constants, bind them once: :class:`Conv2d`.
    """
    if (bias is None and w.__class__ is PackedConvWeights and C.plain_scalar(threshold)
            and C.plain_scalar(out_threshold) and C.plain_scalar(threads) and _hashable(stride, padding, dilation)
            and C.plain_scalar(groups) and C.plain_scalar(pad_value)):
        key = (stride, padding, dilation, groups, pad_value, threshold, out_threshold, threads)
        op = C.bound_op(w, key, Conv2d, w, stride=stride, padding=padding, dilation=dilation, groups=groups,
                        pad_value=pad_value, threshold=threshold, out_threshold=out_threshold, threads=threads)
        return op.__call__(x, out, residual)
    return Conv2d(w, stride=stride, padding=padding, dilation=dilation, groups=groups, pad_value=pad_value,
                  threshold=threshold, bias=bias, out_threshold=out_threshold, threads=threads)(x, out, residual)


def _hashable(*values) -> bool:
    """ints, strs and tuples of ints (the geometry arguments as a cache key)."""
    for v in values:
        if v.__class__ is tuple:
            if not all(e.__class__ is int for e in v):
                return False
        elif v.__class__ not in (int, str):
            return False
    return True


def binary_max_pool2d(x, kernel_size, *, stride=None, padding=0, channels=None, out=None, threads=None) -> np.ndarray:
    """Max pooling of ±1 activations: a bitwise OR of packed NHWC bits over each window.

    ``x``: packed uint64 (N, H, W, ceil(C/64)) — ``channels`` (C) lets the call check the
    padding bits (default: 64 per word, nothing to check) — or real (N, H, W, C),
    binarized at 0 first. ``stride``
    defaults to ``kernel_size``; ``padding`` int or pair, at most half the kernel (taps
    in the padding are ignored). Returns packed uint64 (N, Ho, Wo, ceil(C/64)).
    """
    nthreads = C.check_threads(threads)
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else _pair(stride, "stride")
    if isinstance(padding, str):
        raise ValueError(f"binary_max_pool2d: padding must be an int or a pair, got {padding!r}")
    ph, pw = _pair(padding, "padding", lo=0)
    if ph > kernel[0] // 2 or pw > kernel[1] // 2:
        raise ValueError(f"padding ({ph}, {pw}) must be at most half the kernel {kernel} (as in PyTorch)")
    x = _check_x4(x)
    if x.dtype == np.uint64:
        c = x.shape[3] * 64 if channels is None else _int(channels, "channels")
        if C.words_for(c) != x.shape[3]:
            raise ValueError(f"x has shape {x.shape}: channels={c} needs {C.words_for(c)} words per pixel")
        xb = np.require(x, requirements="CA")
    else:
        x = C.as_real_array(x, "x")
        c = x.shape[3]
        if channels is not None and _int(channels, "channels") != c:
            raise ValueError(f"channels={channels} but x has {c}")
        xb = pack_bits(x)
    n, h, wi = x.shape[:3]
    pads = (ph, ph, pw, pw)
    ho, wo = _output_hw(h, wi, kernel, stride, (1, 1), pads)
    y = C.out_array(out, (n, ho, wo, C.words_for(c)), np.dtype(np.uint64))
    if n == 0:
        return y
    if np.may_share_memory(xb, y):
        xb = xb.copy()
    geo = _geometry(n, h, wi, stride, (1, 1), pads, 0)
    st = lib.takane_binary_max_pool2d(geo, c, kernel[0], kernel[1], _from_buffer("uint64_t[]", xb),
                                      _from_buffer("uint64_t[]", y, require_writable=True), nthreads)
    if st == lib.TAKANE_ERR_PADDING_BITS:
        raise ValueError(f"x has non-zero padding bits (channel positions >= channels={c} in the last word)")
    C.raise_status(st, "binary_max_pool2d")
    return y
