"""PyTorch modules on the bit-packed kernels, for CPU inference (extra ``torch``).

The middle layer of :mod:`takane_kernels.torch` (custom-op library -> modules -> QAT ->
convert).

``BinaryLinear.from_linear(linear, mode="w1a1" | "w1a_float")`` replaces an ``nn.Linear``
with 1-bit weights kept packed (a :class:`takane_kernels.PackedWeights`, 32x smaller than
float32). Nothing is converted per call: each module holds a bound op
(:class:`takane_kernels.Linear` / :class:`takane_kernels.Conv2d`: weights, thresholds and
scales validated and converted once, rebuilt when one of them is assigned anew), a
contiguous CPU float32 input reaches the C kernel as a pointer to the tensor's memory
(``data_ptr()``), and the result is written straight into a new tensor's memory — the
only allocation of a call. Inference only: no
autograd (inputs that require grad are detached), CPU tensors only. ``state_dict()`` holds
the bias and the packed weights (as ``_extra_state``), so ``torch.save`` / ``torch.load``
(also with ``weights_only=True``) and ``load_state_dict`` work as for any module.

Modes (``y`` has shape ``(..., out_features)``, float32):

- ``"w1a1"`` — binary activations and weights, :func:`takane_kernels.binary_linear`:
  ``y = (float32(sign(x - threshold) @ sign(W).T) * scale) * beta + bias`` with
  ``scale`` the per-row mean |W| (XNOR-Net's alpha; ``scale=None`` drops it) and ``beta``
  the mean |x| of each input row when ``activation_scale=True``. Bit-exact against
  ``takane_kernels.reference.binary_linear``.
- ``"w1a_float"`` — 1-bit weights, real activations,
  :func:`takane_kernels.binary_weight_matmul`: ``y = ((x * in_scale) @ sign(W).T) * scale + bias``
  with OneBit's rank-1 factors of |W| by default (``scale="onebit"``) or the per-row
  mean |W| (``scale="mean_abs"``); float32 within the bound
  ``takane_kernels.reference.binary_weight_matmul_error_bound``.
- ``"w1a8"`` — 1-bit weights, activations quantized per block of 32 to int8 (llama.cpp's
  Q8_0, ``binary_weight_matmul(..., activations="q8_0")``): the layer of llama.cpp's Q1_0 x
  Q8_0 models. Within ``reference.binary_weight_matmul_error_bound(..., activations="q8_0")``.

Group scales (one scale per row and group of G inputs):
``from_linear(linear, mode, group_size=128)`` packs them (the mean |W| of each group), and
``BinaryLinear.from_q1_0(data, k)`` builds a layer from llama.cpp Q1_0 blocks (the bits
copied, ``group_size=128``), as do the PackedWeights of :func:`takane_kernels.gguf.load`:
``BinaryLinear(takane_kernels.gguf.load(path)["blk.0.attn_q.weight"], "w1a8")``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import takane_kernels as tk
from .. import _capi as C
from ._library import as_numpy, check_cpu_tensor, is_eager, nhwc_view, out_hw, register

__all__ = ["BinaryLinear", "BinaryConv2d", "BinaryMaxPool2d", "KernelModule", "MODES"]

# BinaryLinear's modes; "w1a_float" and "w1a8" are the public aliases of the library-wide
# names "f32" and "q8_0" (accepted too)
MODES = ("w1a1", "w1a_float", "w1a8", "int8_row")
_DEFAULT_SCALE = {"w1a1": "mean_abs", "f32": "onebit", "q8_0": "mean_abs"}
_F32 = torch.float32
_cast = C.ffi.cast
_FLOAT_P = C.ffi.typeof("float *")  # (a cffi type: no string to parse per cast)
_CL = torch.channels_last


def _canonical(mode: object) -> str:
    return C.activation_mode(mode, what="mode")


def _check_mode(mode: object) -> str:
    if mode not in MODES and mode not in ("f32", "q8_0"):
        raise ValueError(f"mode must be one of {MODES}, got {mode!r} (also accepted: 'f32', 'q8_0')")
    return _canonical(mode)


def _check_weights(weights, kmode: str) -> None:
    """The weights a mode runs: ``PackedWeights`` for every mode but ``"int8_row"``,
    ``TernaryWeights`` for the weight-only ones (``"w1a_float"``, ``"w1a8"``, ``"int8_row"``)."""
    if not isinstance(weights, (tk.PackedWeights, tk.TernaryWeights)):
        raise TypeError(f"weights must be a takane_kernels.PackedWeights or TernaryWeights, "
                        f"got {type(weights).__name__}")
    ternary = isinstance(weights, tk.TernaryWeights)
    if ternary and kmode == "w1a1":
        raise ValueError("TernaryWeights need a weight-only mode: 'w1a_float', 'w1a8' or 'int8_row' "
                         "(a ternary W1A1 layer is not implemented)")
    if kmode == "int8_row" and not ternary:
        raise ValueError("mode 'int8_row' (BitNet b1.58's per-token int8 activations) takes TernaryWeights "
                         "(takane_kernels.pack_ternary); 1-bit weights take 'w1a1', 'w1a_float' or 'w1a8'")


def _is_zero(t) -> bool:
    return np.ndim(t) == 0 and float(t) == 0.0


class KernelModule(nn.Module):
    """Base class of the inference modules: a registry key for the custom op, the
    activation ``threshold`` and ``bias`` state, a bound C op (``kernel_op``) rebuilt when
    the weights, threshold or ``threads`` are assigned anew, and ``forward``'s choice
    between computing directly (plain eager calls) and the ``takane::`` custom op (under
    torch.compile / torch.export / a dispatch mode). Subclasses define ``_op_name``,
    ``_make_op()`` and ``_compute(x, bias)``."""

    _op_name = ""
    _out_op_name = ""  # the op's out= form (result allocated by the caller), if it has one
    _rebuild_on = frozenset({"weights", "threshold", "threads", "activation_scale"})

    def __init__(self):
        super().__init__()
        register(self)

    def __setattr__(self, name, value):
        if name in self._rebuild_on:
            if name == "threshold":
                value = _threshold_state(value)
            self.__dict__.pop("_kop", None)
            self.__dict__[name] = value
            return
        super().__setattr__(name, value)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_kop", None)  # C handles and pointers: rebuilt on first use
        state.pop("_bseen", None)
        return state

    def __setstate__(self, state):  # a copy gets its own registry key
        super().__setstate__(state)
        register(self)

    @property
    def kernel_op(self):
        """The bound op (built on first use, and again after a constant is reassigned)."""
        op = self.__dict__.get("_kop")
        if op is None:
            op = self.__dict__["_kop"] = self._make_op()
        return op

    def _init_bias(self, bias, n: int) -> None:
        if bias is not None:
            bias = torch.as_tensor(bias).detach().to("cpu", torch.float32).contiguous().clone()
            if bias.shape != (n,):
                raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
        self.register_buffer("bias", bias)

    def _bias_ptr(self, bias, n: int):
        """float * to a float32 contiguous (n,) CPU bias tensor's memory, NULL for None, or
        None when the bias needs the general path (another dtype, layout or shape). The
        check is made once per bias tensor and memory address (load_state_dict copies into
        the same memory; .to(), .double() or an assignment bring a new tensor)."""
        if bias is None:
            return C.NULL
        seen = self.__dict__.get("_bseen")
        if seen is not None and seen[0] is bias and seen[1] == bias.data_ptr():
            return seen[2]
        if bias.dtype is _F32 and tuple(bias.shape) == (n,) and bias.is_contiguous() and bias.is_cpu:
            ptr = _cast(_FLOAT_P, bias.data_ptr())
            self.__dict__["_bseen"] = (bias, bias.data_ptr(), ptr)
            return ptr
        return None

    def _load_threshold(self, state: dict, k: int) -> None:
        """The activation threshold of a saved state (optional: a state saved without it
        keeps the module's own): float64, finite, a scalar or (k,)."""
        if state.get("threshold") is None:
            return
        t = state["threshold"].detach().cpu().numpy().astype(np.float64)
        if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape != (k,)) or not np.all(np.isfinite(t)):
            raise ValueError(f"state's threshold must be finite, a scalar or ({k},), got shape {t.shape}")
        self.threshold = float(t) if t.ndim == 0 else t

    def _dispatch(self, x):
        bias = self._buffers["bias"]
        if is_eager(x):
            return self._compute(x, bias)
        # through the registered custom op: torch.compile / torch.export see one opaque node
        if self._out_op_name:
            # the out= form: the compiled graph allocates the result itself (inductor's
            # empty_strided, a C++ call) and the op returns nothing, so a call pays no
            # Python allocation and no result travelling back through the dispatcher
            y = x.new_empty(self._out_shape(x), dtype=_F32)
            getattr(torch.ops.takane, self._out_op_name)(x.detach(), bias, self._takane_key, y)
            return y
        return getattr(torch.ops.takane, self._op_name)(x.detach(), bias, self._takane_key)


def _threshold_state(threshold):
    """The stored activation threshold: a scalar as given, or a read-only float64 array
    (so it is reassigned, never written in place: the bound op holds its float32 copy)."""
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.detach().cpu().numpy()
    if np.ndim(threshold) == 0:
        return threshold
    t = np.array(threshold, dtype=np.float64)
    t.flags.writeable = False
    return t


class BinaryLinear(KernelModule):
    """A linear layer with ±1 weights packed 64 per word, run by takane_kernels' C kernels.

    Build it with :meth:`from_linear`, or directly from a :class:`~takane_kernels.PackedWeights`
    (e.g. one loaded with ``PackedWeights.load``). ``mode``: ``"w1a1"``, ``"w1a_float"``
    (alias of ``"f32"``) or ``"w1a8"`` (alias of ``"q8_0"``). ``weights`` may also be a
    :class:`~takane_kernels.TernaryWeights` ({-1, 0, +1}, docs/guide/ternary.md) with mode
    ``"w1a_float"``, ``"w1a8"`` or ``"int8_row"`` (BitNet b1.58's per-token absmax int8
    activations: W1.58A8), e.g. from :func:`~takane_kernels.torch.convert` of a
    ``QuantLinear(scale="ternary")``. ``threshold`` (``"w1a1"``
    only) is the activation threshold: a scalar or one per input feature (e.g.
    ``AdaptiveThreshold.threshold``). ``threads`` caps the kernels' threads (``None``: the
    library default).
    """

    _op_name = "binary_linear"
    _out_op_name = "binary_linear_out"

    def __init__(self, weights: tk.PackedWeights, mode: str = "w1a1", *, bias=None, threshold=0.0,
                 activation_scale: bool = False, threads: int | None = None):
        super().__init__()
        kmode = _check_mode(mode)
        _check_weights(weights, kmode)
        if kmode == "w1a1" and weights.in_scale is not None:
            raise ValueError("mode 'w1a1' cannot apply an in_scale (per-input scale) to binary "
                             "activations: use mode 'w1a_float' or 'w1a8' for these weights")
        if kmode == "w1a1" and weights.group_size is not None:  # (group_scale may be rebuilt)
            raise ValueError("mode 'w1a1' does not apply group scales: use mode 'w1a_float' or "
                             "'w1a8' for these weights")
        if kmode != "w1a1" and (activation_scale or not _is_zero(threshold)):
            raise ValueError("threshold and activation_scale apply to mode 'w1a1' only")
        self.weights = weights
        self.mode = mode
        self.__dict__["_kmode"] = kmode
        self.in_features = weights.k
        self.out_features = weights.n
        self.activation_scale = bool(activation_scale)
        self.threads = threads
        self.threshold = threshold
        self._init_bias(bias, weights.n)
        self.kernel_op  # validate threshold and threads now: errors at construction

    def _make_op(self):
        if self._kmode == "w1a1":
            return tk.Linear(self.weights, activations="w1a1", threshold=self.threshold,
                             activation_scale=self.activation_scale, threads=self.threads)
        return tk.Linear(self.weights, activations=self._kmode, threads=self.threads)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str = "w1a1", *, scale="default", threshold=0.0,
                    activation_scale: bool = False, threads: int | None = None,
                    group_size: int | None = None) -> "BinaryLinear":
        """Pack an ``nn.Linear``'s weights (bit = ``w >= 0``) and keep its bias.

        ``scale``: ``"mean_abs"``, ``"onebit"`` (``"w1a_float"`` only), ``None`` or an
        array, as in :func:`takane_kernels.pack_weights`; ``"default"`` is ``"mean_abs"``
        for ``"w1a1"`` and ``"w1a8"``, ``"onebit"`` for ``"w1a_float"``.
        ``group_size`` (``"w1a_float"`` / ``"w1a8"``; e.g. 128, a multiple of 64): one scale per
        row and group of that many inputs, the group's mean |W|, instead of a row scale
        (``scale`` must then be ``"default"`` or ``"mean_abs"``).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        if group_size is not None and _check_mode(mode) == "w1a1":
            raise ValueError("group_size: mode 'w1a1' does not apply group scales (use 'w1a_float' or 'w1a8')")
        if isinstance(scale, str) and scale == "default":
            scale = "mean_abs" if group_size is not None else _DEFAULT_SCALE[_canonical(mode)]
        w = linear.weight.detach().to("cpu", torch.float32).numpy()
        weights = tk.pack_weights(w, scale=scale, group_size=group_size)
        return cls(weights, mode, bias=linear.bias, threshold=threshold,
                   activation_scale=activation_scale, threads=threads)

    @classmethod
    def from_q1_0(cls, data, k: int, mode: str = "w1a8", *, bias=None,
                  threads: int | None = None) -> "BinaryLinear":
        """A layer from llama.cpp GGUF Q1_0 blocks: ``data`` uint8 (out_features, k/128·18)
        (a numpy array or a CPU uint8 tensor; e.g. a GGUF tensor's bytes), ``k`` =
        in_features (a multiple of 128). The bits are copied unchanged and each block's fp16
        ``d`` becomes the group scale (:func:`takane_kernels.from_q1_0`). ``mode``:
        ``"w1a8"`` (llama.cpp's Q1_0 x Q8_0) or ``"w1a_float"``."""
        if _check_mode(mode) == "w1a1":
            raise ValueError("from_q1_0: Q1_0 weights carry group scales; use mode 'w1a8' or 'w1a_float'")
        if isinstance(data, torch.Tensor):
            if data.dtype != torch.uint8 or data.device.type != "cpu":
                raise TypeError(f"from_q1_0: data must be a CPU uint8 tensor, got {data.dtype} on {data.device}")
            data = data.detach().contiguous().numpy()
        return cls(tk.from_q1_0(data, k), mode, bias=bias, threads=threads)

    def to_q1_0(self) -> np.ndarray:
        """The weights as llama.cpp Q1_0 blocks, uint8 (out_features, in_features/128·18)
        (:func:`takane_kernels.to_q1_0`: group scales rounded to fp16)."""
        return tk.to_q1_0(self.weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.__class__ is not torch.Tensor or not x.is_cpu:
            check_cpu_tensor(x, "BinaryLinear")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"BinaryLinear: input has shape {tuple(x.shape)}, expected (..., {self.in_features})")
        return self._dispatch(x)

    def _compute(self, x: torch.Tensor, bias, out: torch.Tensor | None = None) -> torch.Tensor:
        """The layer on a CPU tensor: float32 contiguous input and bias go to the C kernel
        as pointers to the tensors' memory; anything else through the numpy op. ``out``:
        a CPU float32 tensor of the result's shape to write (the custom op's out= form).
        Checks x's last dimension itself (the custom ops reach here without forward)."""
        d = self.__dict__
        op = d.get("_kop") or self.kernel_op
        n, k = d["out_features"], d["in_features"]
        shape = x.shape
        nd = len(shape)
        if nd == 2:
            m, kx = shape
        elif nd == 1:
            m, kx = 1, shape[0]
        else:
            m, kx = (x.numel() // k if k else 0), (shape[-1] if nd else -1)
        if kx == k and x.dtype is _F32 and m and n and x.is_contiguous():
            bptr = self._bias_ptr(bias, n)
            if bptr is not None:
                if out is None:
                    y = torch.empty(m, n, dtype=_F32) if nd == 2 else (
                        torch.empty(n, dtype=_F32) if nd == 1 else torch.empty(*shape[:-1], n, dtype=_F32))
                    # (sizes as arguments: torch.empty parses a Size + tuple ~1.3 µs slower)
                else:  # (the out shape compared element-wise: cheaper than building a Size)
                    os = out.shape
                    fits = (len(os) == 2 and os[0] == m and os[1] == n) if nd == 2 else os == shape[:-1] + (n,)
                    y = out if fits and out.dtype is _F32 and out.is_cpu and out.is_contiguous() else None
                if y is not None and not op._cf32(m, _cast(_FLOAT_P, x.data_ptr()), _cast(_FLOAT_P, y.data_ptr()),
                                                  bptr):
                    return y
        # general path (other dtypes, layouts, empty shapes; errors): the numpy op, on views
        xn = as_numpy(x)
        if xn.ndim < 1 or xn.shape[-1] != k:
            raise ValueError(f"BinaryLinear: input has shape {tuple(xn.shape)}, expected (..., {k})")
        if out is not None and (out.dtype != _F32 or tuple(out.shape) != xn.shape[:-1] + (n,) or not out.is_cpu):
            raise ValueError(f"BinaryLinear: out must be a CPU float32 tensor of shape {xn.shape[:-1] + (n,)}, "
                             f"got {out.dtype} {tuple(out.shape)} on {out.device}")
        y = torch.empty(xn.shape[:-1] + (n,), dtype=_F32)
        b = None if bias is None else bias.detach().cpu().numpy()
        if self._kmode == "w1a1":
            tk.binary_linear(xn, self.weights, threshold=self.threshold, bias=b,
                             activation_scale=self.activation_scale, out=y.numpy(), threads=self.threads)
        else:
            tk.binary_weight_matmul(xn, self.weights, bias=b, activations=self._kmode, out=y.numpy(),
                                    threads=self.threads)
        return y if out is None else out.copy_(y)

    def _out_shape(self, x):
        return tuple(x.shape[:-1]) + (self.out_features,)

    # state_dict() carries the packed weights as "_extra_state": plain tensors and ints,
    # so torch.load(..., weights_only=True) reads it back. Version 2 adds group_scale and
    # group_size (None when absent); version 1 states (no group scales) still load.
    # Version 3 is TernaryWeights ("sign", "nonzero", "tensor_scale"; no "bits"); a
    # PackedWeights layer still writes version 2, so older readers load it.
    def get_extra_state(self) -> dict:
        w = self.weights
        if isinstance(w, tk.TernaryWeights):
            def opt(a):
                return None if a is None else torch.from_numpy(a.copy())

            return {
                "format": "takane_kernels.BinaryLinear", "version": 3, "mode": self.mode, "k": w.k,
                "sign": torch.from_numpy(w.sign.view(np.int64).copy()),
                "nonzero": torch.from_numpy(w.nonzero.view(np.int64).copy()),
                "scale": opt(w.scale), "in_scale": opt(w.in_scale), "group_scale": opt(w.group_scale),
                "group_size": w.group_size,
                "tensor_scale": None if w.tensor_scale is None else torch.tensor(w.tensor_scale, dtype=torch.float32),
            }
        return {
            "format": "takane_kernels.BinaryLinear", "version": 2, "mode": self.mode, "k": w.k,
            "bits": torch.from_numpy(w.bits.view(np.int64).copy()),  # uint64 bit patterns
            "scale": None if w.scale is None else torch.from_numpy(w.scale.copy()),
            "in_scale": None if w.in_scale is None else torch.from_numpy(w.in_scale.copy()),
            "group_scale": None if w.group_scale is None else torch.from_numpy(w.group_scale.copy()),
            "group_size": w.group_size,
            # the activation threshold is part of what a W1A1 layer computes (e.g. a trained
            # SignQuantizer's): float64, a 0-d scalar or (K,); optional when loading
            "threshold": torch.from_numpy(np.array(self.threshold, dtype=np.float64)),
        }

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != "takane_kernels.BinaryLinear":
            raise ValueError("not a takane_kernels.BinaryLinear state")
        if state.get("version") not in (1, 2, 3):
            raise ValueError(f"unsupported BinaryLinear state version {state.get('version')!r}")
        if _canonical(state["mode"]) != self._kmode:
            raise ValueError(f"state is for mode {state['mode']!r}, this module is {self.mode!r}")
        if state["version"] == 3:
            missing = {"k", "sign", "nonzero", "scale", "in_scale", "group_scale", "group_size",
                       "tensor_scale"} - set(state)
            if missing:
                raise ValueError(f"BinaryLinear state version 3 (ternary weights) lacks {sorted(missing)}")

            def arr(key):
                return None if state[key] is None else state[key].detach().cpu().numpy()

            ts = state["tensor_scale"]
            weights = tk.TernaryWeights(arr("sign").view(np.uint64), arr("nonzero").view(np.uint64), int(state["k"]),
                                        scale=arr("scale"), in_scale=arr("in_scale"), group_scale=arr("group_scale"),
                                        group_size=state["group_size"], tensor_scale=None if ts is None else float(ts))
            self._set_loaded(weights)
            return
        bits = state["bits"].detach().cpu().numpy().view(np.uint64)
        keys = ("scale", "in_scale") + (("group_scale",) if state["version"] == 2 else ())
        opt = {key: None if state[key] is None else state[key].detach().cpu().numpy() for key in keys}
        if state["version"] == 2:
            opt["group_size"] = state["group_size"]
        weights = tk.PackedWeights(bits, int(state["k"]), **opt)  # validates the format
        self._load_threshold(state, weights.k)
        self._set_loaded(weights)

    def _set_loaded(self, weights) -> None:
        _check_weights(weights, self._kmode)  # (a state's weights must suit this module's mode)
        if (weights.n, weights.k) != (self.out_features, self.in_features):
            raise ValueError(f"state holds ({weights.n}, {weights.k}) weights, this module "
                             f"({self.out_features}, {self.in_features})")
        self.weights = weights

    def extra_repr(self) -> str:
        group = "" if self.weights.group_size is None else f", group_size={self.weights.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode!r}, "
                f"bias={self.bias is not None}{group}, packed_bytes={self.weights.nbytes}")



class BinaryConv2d(KernelModule):
    """A 2-D convolution with ±1 weights and ±1 activations on the packed NHWC kernels.

    NCHW float tensors in and out, as ``nn.Conv2d``: the input is binarized at
    ``threshold`` (a scalar or one per input channel) inside the kernels; the output is
    float32 ``(float32(dot) * scale + bias)`` (scale: the per-channel mean |W| unless
    ``scale=None``), in channels_last memory layout (NCHW shape, NHWC strides: no
    transpose copy). A ``channels_last`` input is read without a copy; any other layout
    costs one NHWC copy. ``pad_value``: 0 (true zero padding, as nn.Conv2d), +1 or -1.
    Inference only (no autograd), CPU only.
    """

    _op_name = "binary_conv2d"

    def __init__(self, weights: "tk.PackedConvWeights", *, stride=1, padding=0, dilation=1, groups=1,
                 pad_value=0, bias=None, threshold=0.0, threads: int | None = None):
        super().__init__()
        if not isinstance(weights, tk.PackedConvWeights):
            raise TypeError(f"weights must be a takane_kernels.PackedConvWeights, got {type(weights).__name__}")
        if pad_value not in (0, 1, -1) or isinstance(pad_value, bool):
            raise ValueError(f"pad_value must be 0, +1 or -1, got {pad_value!r}")
        op = tk.Conv2d(weights, stride=stride, padding=padding, dilation=dilation, groups=groups,
                       pad_value=pad_value, threshold=threshold, threads=threads)  # validates all
        self.weights = weights
        self.groups = op.groups
        self.in_channels, self.out_channels, self.kernel_size = op.in_channels, op.out_channels, op.kernel_size
        self.stride, self.dilation = op.stride, op.dilation
        self.padding = padding
        self.pads = op.pads
        self.pad_value = op.pad_value
        self.threads = threads
        self.threshold = threshold
        self.__dict__["_kop"] = op
        self._init_bias(bias, self.out_channels)

    def _make_op(self):
        return tk.Conv2d(self.weights, stride=self.stride, padding=self.padding, dilation=self.dilation,
                         groups=self.groups, pad_value=self.pad_value, threshold=self.threshold,
                         threads=self.threads)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, *, threshold=0.0, pad_value=0, scale="mean_abs",
                    threads: int | None = None) -> "BinaryConv2d":
        """Pack an ``nn.Conv2d``'s weights (bit = ``w >= 0``, OIHW -> OHWI) and keep its
        bias, stride, padding, dilation and groups. ``padding_mode`` must be ``"zeros"``
        (``pad_value`` says what a padded tap is; 0 is nn.Conv2d's own meaning)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv2d needs an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
        w = conv.weight.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy()
        weights = tk.pack_conv_weights(w, scale=scale)
        return cls(weights, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                   groups=conv.groups, pad_value=pad_value, bias=conv.bias, threshold=threshold,
                   threads=threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_cpu_tensor(x, "BinaryConv2d")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"BinaryConv2d: input has shape {tuple(x.shape)}, expected (N, {self.in_channels}, H, W)")
        return self._dispatch(x)

    def _compute(self, x: torch.Tensor, bias) -> torch.Tensor:
        op = self.kernel_op
        n, _, h, w = x.shape
        cout = op.out_channels
        if x.dtype is _F32 and n and h and w:
            bptr = self._bias_ptr(bias, cout)
            if bptr is not None:
                # NHWC memory: a channels_last tensor as it is, anything else copied once
                xl = x if x.is_contiguous(memory_format=_CL) else x.detach().permute(0, 2, 3, 1).contiguous()
                geo, ho, wo = op._geometry(n, h, w)
                y = torch.empty((n, ho, wo, cout), dtype=_F32)
                st = op._run_f32(geo, _cast(_FLOAT_P, xl.data_ptr()), _cast(_FLOAT_P, y.data_ptr()), bptr, C.NULL)
                if not st:
                    return y.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory
        xn = nhwc_view(x)  # general path (other dtypes, empty images; errors): the numpy op
        ho, wo = out_hw(h, w, self.kernel_size, self.stride, self.dilation, self.pads)
        y = torch.empty((n, max(ho, 0), max(wo, 0), cout), dtype=_F32)
        tk.binary_conv2d(xn, self.weights, stride=self.stride, padding=self.padding, dilation=self.dilation,
                         groups=self.groups, pad_value=self.pad_value, threshold=self.threshold,
                         bias=None if bias is None else bias.detach().cpu().numpy(), out=y.numpy(),
                         threads=self.threads)
        return y.permute(0, 3, 1, 2)

    def get_extra_state(self) -> dict:
        w = self.weights  # always PackedConvWeights (checked in __init__)
        return {
            "format": "takane_kernels.BinaryConv2d", "version": 1, "in_channels": w.in_channels,
            "bits": torch.from_numpy(w.bits.view(np.int64).copy()),
            "scale": None if w.scale is None else torch.from_numpy(w.scale.copy()),
            # the input threshold (e.g. a converted SignQuantizer's): float64, 0-d or (Cin,);
            # optional when loading (a state saved without it keeps the module's own)
            "threshold": torch.from_numpy(np.array(self.threshold, dtype=np.float64)),
        }

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != "takane_kernels.BinaryConv2d":
            raise ValueError("not a takane_kernels.BinaryConv2d state")
        if state.get("version") != 1:
            raise ValueError(f"unsupported BinaryConv2d state version {state.get('version')!r}")
        bits = state["bits"].detach().cpu().numpy().view(np.uint64)
        scale = None if state["scale"] is None else state["scale"].detach().cpu().numpy()
        weights = tk.PackedConvWeights(bits, int(state["in_channels"]), scale=scale)
        if weights.bits.shape != self.weights.bits.shape or weights.in_channels != self.weights.in_channels:
            raise ValueError(f"state holds {weights!r}, this module {self.weights!r}")
        self._load_threshold(state, self.in_channels)
        self.weights = weights

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, dilation={self.dilation}, groups={self.groups}, "
                f"pad_value={self.pad_value}, bias={self.bias is not None}")


class BinaryMaxPool2d(nn.Module):
    """Max pooling of binarized activations: ``sign(max_pool2d(x))`` with sign(v) = +1 iff
    v >= 0, computed as a bitwise OR of the packed signs. NCHW in, ±1 float32 NCHW out
    (channels_last memory). ``padding`` at most half the kernel; padded taps ignored."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = C.check_pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else C.check_pair(stride, "stride")
        self.padding = C.check_pair(padding, "padding", lo=0)
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(f"padding {self.padding} must be at most half the kernel {self.kernel_size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_cpu_tensor(x, "BinaryMaxPool2d")
        if x.ndim != 4:
            raise ValueError(f"BinaryMaxPool2d: input must be 4-D NCHW, got shape {tuple(x.shape)}")
        return torch.ops.takane.binary_max_pool2d(x.detach(), *self.kernel_size, *self.stride, *self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
