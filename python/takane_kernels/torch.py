"""PyTorch modules on the bit-packed kernels, for CPU inference (extra ``torch``).

``BinaryLinear.from_linear(linear, mode="w1a1" | "w1a_float")`` replaces an ``nn.Linear``
with 1-bit weights kept packed (a :class:`takane_kernels.PackedWeights`, 32x smaller than
float32). Nothing is converted per call: the packed weights (and their re-tiled copy,
built once on first use) stay with the module, a contiguous CPU float32 input reaches the
kernels as a numpy view of the tensor's memory (``Tensor.numpy()`` shares it), and the
result is written straight into a new tensor's memory (``out=``). Inference only: no
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

import itertools
import weakref

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "takane_kernels.torch needs PyTorch. For CPU inference install the CPU build, e.g. "
        "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    ) from e

import takane_kernels as tk
from takane_kernels._ops import _ceil_f32

__all__ = ["BinaryLinear", "BinaryConv2d", "BinaryMaxPool2d"]

MODES = ("w1a1", "w1a_float", "w1a8")
_DEFAULT_SCALE = {"w1a1": "mean_abs", "w1a_float": "onebit", "w1a8": "mean_abs"}
_ACTIVATIONS = {"w1a_float": "float32", "w1a8": "q8_0"}  # binary_weight_matmul's activations=
# dtypes whose tensors numpy can view without a copy (the kernels accept all three;
# binary_weight_matmul converts float16/float64 to float32 itself)
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor's memory (no copy when it is contiguous and of a dtype
    numpy has; otherwise one contiguous float32 copy)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"BinaryLinear: input must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"BinaryLinear runs on the CPU: input is on {x.device}")
    x = x.detach()
    if x.dtype not in _NUMPY_DTYPES:
        x = x.to(torch.float32)
    return x.contiguous().numpy()


def _init_threshold_bias(module: nn.Module, threshold, bias, n: int) -> None:
    """The inference modules' common state: the activation threshold (a scalar as given, or a
    float64 array; tensors detached to numpy), the bias as an owned float32 CPU buffer of
    shape (n,), and the module's registry key for its custom op."""
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.detach().cpu().numpy()
    module.threshold = threshold if np.ndim(threshold) == 0 else np.array(threshold, dtype=np.float64)
    if bias is not None:
        bias = torch.as_tensor(bias).detach().to("cpu", torch.float32).contiguous().clone()
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    module.register_buffer("bias", bias)
    _register(module)


class BinaryLinear(nn.Module):
    """A linear layer with ±1 weights packed 64 per word, run by takane_kernels' C kernels.

    Build it with :meth:`from_linear`, or directly from a :class:`~takane_kernels.PackedWeights`
    (e.g. one loaded with ``PackedWeights.load``). ``threshold`` (``"w1a1"`` only) is the
    activation threshold: a scalar or one per input feature (e.g.
    ``AdaptiveThreshold.threshold``). ``threads`` caps the kernels' threads (``None``: the
    library default).
    """

    def __init__(self, weights: tk.PackedWeights, mode: str = "w1a1", *, bias=None, threshold=0.0,
                 activation_scale: bool = False, threads: int | None = None):
        super().__init__()
        if not isinstance(weights, tk.PackedWeights):
            raise TypeError(f"weights must be a takane_kernels.PackedWeights, got {type(weights).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "w1a1" and weights.in_scale is not None:
            raise ValueError("mode 'w1a1' cannot apply an in_scale (per-input scale) to binary "
                             "activations: use mode 'w1a_float' or 'w1a8' for these weights")
        if mode == "w1a1" and weights.group_scale is not None:
            raise ValueError("mode 'w1a1' does not apply group scales: use mode 'w1a_float' or "
                             "'w1a8' for these weights")
        if mode != "w1a1" and (activation_scale or not _is_zero(threshold)):
            raise ValueError("threshold and activation_scale apply to mode 'w1a1' only")
        self.weights = weights
        self.mode = mode
        self.in_features = weights.k
        self.out_features = weights.n
        self.activation_scale = bool(activation_scale)
        self.threads = threads
        _init_threshold_bias(self, threshold, bias, weights.n)

    def __setstate__(self, state):  # a copy gets its own registry key
        super().__setstate__(state)
        _register(self)

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
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if group_size is not None and mode == "w1a1":
            raise ValueError("group_size: mode 'w1a1' does not apply group scales (use 'w1a_float' or 'w1a8')")
        if isinstance(scale, str) and scale == "default":
            scale = "mean_abs" if group_size is not None else _DEFAULT_SCALE[mode]
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
        if mode == "w1a1":
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
        _check_cpu_tensor(x, "BinaryLinear")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"BinaryLinear: input has shape {tuple(x.shape)}, expected (..., {self.in_features})")
        if _eager(x):
            return self._compute(x.detach(), None if self.bias is None else self.bias.detach())
        # through the registered custom op: torch.compile / torch.export see one opaque node
        return torch.ops.takane.binary_linear(x.detach(), self.bias, self._takane_key)

    def _compute(self, x: torch.Tensor, bias) -> torch.Tensor:
        xn = _as_numpy(x)
        if xn.ndim < 1 or xn.shape[-1] != self.in_features:
            raise ValueError(f"BinaryLinear: input has shape {tuple(xn.shape)}, expected (..., {self.in_features})")
        y = torch.empty(xn.shape[:-1] + (self.out_features,), dtype=torch.float32)
        bias = None if bias is None else bias.numpy()  # a view of the buffer
        if self.mode == "w1a1":
            t = self._threshold_f32() if xn.dtype == np.float32 and np.ndim(self.threshold) else self.threshold
            tk.binary_linear(xn, self.weights, threshold=t, bias=bias,
                             activation_scale=self.activation_scale, out=y.numpy(), threads=self.threads)
        elif self.mode == "w1a_float":
            tk.binary_weight_matmul(xn, self.weights, bias=bias, out=y.numpy(), threads=self.threads)
        else:
            tk.binary_weight_matmul(xn, self.weights, bias=bias, activations="q8_0", out=y.numpy(),
                                    threads=self.threads)
        return y

    def _threshold_f32(self) -> np.ndarray:
        """The per-feature threshold rounded up to float32, computed once: for float32
        activations ``x >= t`` and ``x >= ceil_f32(t)`` are the same bits, and
        ``binary_linear`` takes a float32 (K,) threshold as is, where a float64 one costs a
        rounding pass on every call (~20 µs, as much as a small layer's kernel). The cache is
        valid while ``self.threshold`` is the same, read-only array: it is made read-only
        here, so a new threshold is assigned, never written in place."""
        t = self.threshold
        cached = self.__dict__.get("_t32")
        if cached is None or cached[0] is not t or t.flags.writeable:
            t.setflags(write=False)
            cached = (t, _ceil_f32(t))
            self.__dict__["_t32"] = cached
        return cached[1]

    # state_dict() carries the packed weights as "_extra_state": plain tensors and ints,
    # so torch.load(..., weights_only=True) reads it back. Version 2 adds group_scale and
    # group_size (None when absent); version 1 states (no group scales) still load.
    def get_extra_state(self) -> dict:
        w = self.weights
        return {
            "format": "takane_kernels.BinaryLinear", "version": 2, "mode": self.mode, "k": w.k,
            "bits": torch.from_numpy(w.bits.view(np.int64).copy()),  # uint64 bit patterns
            "scale": None if w.scale is None else torch.from_numpy(w.scale.copy()),
            "in_scale": None if w.in_scale is None else torch.from_numpy(w.in_scale.copy()),
            "group_scale": None if w.group_scale is None else torch.from_numpy(w.group_scale.copy()),
            "group_size": w.group_size,
            # the activation threshold is part of what a W1A1 layer computes (e.g. a trained
            # SignQuantizer's): float64, a 0-d scalar or (K,); optional when loading
            "threshold": torch.as_tensor(np.asarray(self.threshold, dtype=np.float64)).clone(),
        }

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != "takane_kernels.BinaryLinear":
            raise ValueError("not a takane_kernels.BinaryLinear state")
        if state.get("version") not in (1, 2):
            raise ValueError(f"unsupported BinaryLinear state version {state.get('version')!r}")
        if state["mode"] != self.mode:
            raise ValueError(f"state is for mode {state['mode']!r}, this module is {self.mode!r}")
        bits = state["bits"].detach().cpu().numpy().view(np.uint64)
        keys = ("scale", "in_scale") + (("group_scale",) if state["version"] == 2 else ())
        opt = {key: None if state[key] is None else state[key].detach().cpu().numpy() for key in keys}
        if state["version"] == 2:
            opt["group_size"] = state["group_size"]
        weights = tk.PackedWeights(bits, int(state["k"]), **opt)  # validates the format
        if (weights.n, weights.k) != (self.out_features, self.in_features):
            raise ValueError(f"state holds ({weights.n}, {weights.k}) weights, this module "
                             f"({self.out_features}, {self.in_features})")
        if state.get("threshold") is not None:
            t = state["threshold"].detach().cpu().numpy().astype(np.float64)
            if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape != (weights.k,)) or not np.all(np.isfinite(t)):
                raise ValueError(f"state's threshold must be finite, a scalar or ({weights.k},), got shape {t.shape}")
            self.threshold = float(t) if t.ndim == 0 else t
        self.weights = weights

    def extra_repr(self) -> str:
        group = "" if self.weights.group_size is None else f", group_size={self.weights.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode!r}, "
                f"bias={self.bias is not None}{group}, packed_bytes={self.weights.nbytes}")


def _is_zero(t) -> bool:
    return np.ndim(t) == 0 and float(t) == 0.0


# ---- binary CNN modules (DESIGN.md §10) and the torch.library custom ops --------------------
#
# The modules call registered custom ops (namespace "takane"), so torch.compile and
# torch.export trace a model that uses them as single opaque nodes with fake-tensor
# shape functions, without graph breaks. A module passes itself to its op as an int key
# into a registry of live modules (its packed weights and geometry are Python objects,
# not tensors); bias tensors are passed as arguments so load_state_dict keeps working.

_MODULES: "weakref.WeakValueDictionary[int, nn.Module]" = weakref.WeakValueDictionary()
_NEXT_KEY = itertools.count(1)


def _register(module: nn.Module) -> None:
    """Give the module a fresh registry key (at construction, and for every deep copy or
    unpickled copy, via __setstate__). forward reads the plain int attribute, which
    torch.compile treats as a constant."""
    key = next(_NEXT_KEY)
    module.__dict__["_takane_key"] = key
    _MODULES[key] = module


class _Registered(nn.Module):
    def __setstate__(self, state):
        super().__setstate__(state)
        _register(self)


def _module(key: int) -> nn.Module:
    m = _MODULES.get(key)
    if m is None:
        raise RuntimeError(f"takane_kernels.torch: no live module with key {key} (the traced "
                           "graph outlived the module it was traced from)")
    return m


def _eager(x: torch.Tensor) -> bool:
    """True for a plain eager call: a plain tensor (no fake, functional or other subclass
    tensor), no torch.compile / torch.export tracing, no dispatch mode (e.g. a FLOP counter)
    watching. Then forward computes directly; the custom op's dispatch (~15 µs a call,
    measured on Zen 4: as much as a small layer's kernel) buys nothing there. Otherwise the
    call goes through the registered op, so tracers see one opaque node."""
    return (type(x) is torch.Tensor and not torch.compiler.is_compiling()
            and not torch._C._len_torch_dispatch_stack())


def _check_cpu_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"{name} runs on the CPU: input is on {x.device}")


@torch.library.custom_op("takane::binary_linear", mutates_args=())
def _binary_linear_op(x: torch.Tensor, bias: torch.Tensor | None, key: int) -> torch.Tensor:
    return _module(key)._compute(x, bias)


@_binary_linear_op.register_fake
def _(x, bias, key):
    return x.new_empty(tuple(x.shape[:-1]) + (_module(key).out_features,), dtype=torch.float32)


def _out_hw(h, w, kernel, stride, dilation, pads):
    ho = (h + pads[0] + pads[1] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + pads[2] + pads[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return ho, wo


def _nhwc_view(x: torch.Tensor) -> np.ndarray:
    """NCHW tensor -> numpy NHWC array: a view when x is channels_last (NHWC in memory)."""
    x = x.detach()
    if x.dtype not in _NUMPY_DTYPES:
        x = x.to(torch.float32)
    return x.permute(0, 2, 3, 1).contiguous().numpy()  # contiguous() is a no-op for channels_last


@torch.library.custom_op("takane::binary_conv2d", mutates_args=())
def _binary_conv2d_op(x: torch.Tensor, bias: torch.Tensor | None, key: int) -> torch.Tensor:
    return _module(key)._compute(x, bias)


@_binary_conv2d_op.register_fake
def _(x, bias, key):
    m = _module(key)
    ho, wo = _out_hw(x.shape[2], x.shape[3], m.kernel_size, m.stride, m.dilation, m.pads)
    return x.new_empty((x.shape[0], ho, wo, m.out_channels), dtype=torch.float32).permute(0, 3, 1, 2)


class BinaryConv2d(_Registered):
    """A 2-D convolution with ±1 weights and ±1 activations on the packed NHWC kernels.

    NCHW float tensors in and out, as ``nn.Conv2d``: the input is binarized at
    ``threshold`` (a scalar or one per input channel) inside the kernels; the output is
    float32 ``(float32(dot) * scale + bias)`` (scale: the per-channel mean |W| unless
    ``scale=None``), in channels_last memory layout (NCHW shape, NHWC strides: no
    transpose copy). A ``channels_last`` input is read without a copy; any other layout
    costs one NHWC copy. ``pad_value``: 0 (true zero padding, as nn.Conv2d), +1 or -1.
    Inference only (no autograd), CPU only.
    """

    def __init__(self, weights: "tk.PackedConvWeights", *, stride=1, padding=0, dilation=1, groups=1,
                 pad_value=0, bias=None, threshold=0.0, threads: int | None = None):
        super().__init__()
        if not isinstance(weights, tk.PackedConvWeights):
            raise TypeError(f"weights must be a takane_kernels.PackedConvWeights, got {type(weights).__name__}")
        from ._conv import _pair, _padding, _int

        self.weights = weights
        self.groups = _int(groups, "groups")
        if weights.out_channels % self.groups:
            raise ValueError(f"groups={groups} does not divide out_channels={weights.out_channels}")
        self.in_channels = weights.in_channels * self.groups
        self.out_channels = weights.out_channels
        self.kernel_size = weights.kernel_size
        self.stride, self.dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
        self.padding = padding
        self.pads = _padding(padding, self.kernel_size, self.dilation, self.stride)
        if pad_value not in (0, 1, -1) or isinstance(pad_value, bool):
            raise ValueError(f"pad_value must be 0, +1 or -1, got {pad_value!r}")
        self.pad_value = int(pad_value)
        self.threads = threads
        _init_threshold_bias(self, threshold, bias, self.out_channels)

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
        _check_cpu_tensor(x, "BinaryConv2d")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"BinaryConv2d: input has shape {tuple(x.shape)}, expected (N, {self.in_channels}, H, W)")
        if _eager(x):
            return self._compute(x.detach(), None if self.bias is None else self.bias.detach())
        return torch.ops.takane.binary_conv2d(x.detach(), self.bias, self._takane_key)

    def _compute(self, x: torch.Tensor, bias) -> torch.Tensor:
        xn = _nhwc_view(x)
        n, h, w, _ = xn.shape
        ho, wo = _out_hw(h, w, self.kernel_size, self.stride, self.dilation, self.pads)
        y = torch.empty((n, max(ho, 0), max(wo, 0), self.out_channels), dtype=torch.float32)
        tk.binary_conv2d(xn, self.weights, stride=self.stride, padding=self.padding, dilation=self.dilation,
                         groups=self.groups, pad_value=self.pad_value, threshold=self.threshold,
                         bias=None if bias is None else bias.numpy(), out=y.numpy(), threads=self.threads)
        return y.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory

    def get_extra_state(self) -> dict:
        w = self.weights
        return {
            "format": "takane_kernels.BinaryConv2d", "version": 1, "in_channels": w.in_channels,
            "bits": torch.from_numpy(w.bits.view(np.int64).copy()),
            "scale": None if w.scale is None else torch.from_numpy(w.scale.copy()),
            # the input threshold (e.g. a converted SignQuantizer's): float64, 0-d or (Cin,);
            # optional when loading (a state saved without it keeps the module's own)
            "threshold": torch.as_tensor(np.asarray(self.threshold, dtype=np.float64)).clone(),
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
        if state.get("threshold") is not None:
            t = state["threshold"].detach().cpu().numpy().astype(np.float64)
            if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape != (self.in_channels,)) or not np.all(np.isfinite(t)):
                raise ValueError(f"state's threshold must be finite, a scalar or ({self.in_channels},), got shape {t.shape}")
            self.threshold = float(t) if t.ndim == 0 else t
        self.weights = weights

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, dilation={self.dilation}, groups={self.groups}, "
                f"pad_value={self.pad_value}, bias={self.bias is not None}")


@torch.library.custom_op("takane::binary_max_pool2d", mutates_args=())
def _binary_max_pool2d_op(x: torch.Tensor, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int) -> torch.Tensor:
    xn = _nhwc_view(x)
    c = xn.shape[3]
    bits = tk.binary_max_pool2d(xn, (kh, kw), stride=(sh, sw), padding=(ph, pw))
    y = torch.from_numpy(tk.unpack_bits(bits, c, np.float32)) if c else \
        torch.empty(bits.shape[:3] + (0,), dtype=torch.float32)
    return y.permute(0, 3, 1, 2)


@_binary_max_pool2d_op.register_fake
def _(x, kh, kw, sh, sw, ph, pw):
    ho, wo = _out_hw(x.shape[2], x.shape[3], (kh, kw), (sh, sw), (1, 1), (ph, ph, pw, pw))
    return x.new_empty((x.shape[0], ho, wo, x.shape[1]), dtype=torch.float32).permute(0, 3, 1, 2)


class BinaryMaxPool2d(nn.Module):
    """Max pooling of binarized activations: ``sign(max_pool2d(x))`` with sign(v) = +1 iff
    v >= 0, computed as a bitwise OR of the packed signs. NCHW in, ±1 float32 NCHW out
    (channels_last memory). ``padding`` at most half the kernel; padded taps ignored."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        from ._conv import _pair

        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = _pair(padding, "padding", lo=0)
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(f"padding {self.padding} must be at most half the kernel {self.kernel_size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_cpu_tensor(x, "BinaryMaxPool2d")
        if x.ndim != 4:
            raise ValueError(f"BinaryMaxPool2d: input must be 4-D NCHW, got shape {tuple(x.shape)}")
        return torch.ops.takane.binary_max_pool2d(x.detach(), *self.kernel_size, *self.stride, *self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


from ._torch_qat import QuantConv2d, QuantLinear, SignQuantizer, convert, linear_error_bound  # noqa: E402,F401
__all__ += ["SignQuantizer", "QuantLinear", "QuantConv2d", "convert", "linear_error_bound"]  # quantization-aware training
