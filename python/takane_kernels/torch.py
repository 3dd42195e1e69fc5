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

Group scales (one scale per row and group of G inputs, DESIGN §9):
``from_linear(linear, mode, group_size=128)`` packs them (the mean |W| of each group), and
``BinaryLinear.from_q1_0(data, k)`` builds a layer from llama.cpp Q1_0 blocks (the bits
copied, ``group_size=128``), as do the PackedWeights of :func:`takane_kernels.gguf.load`:
``BinaryLinear(takane_kernels.gguf.load(path)["blk.0.attn_q.weight"], "w1a8")``.
"""

from __future__ import annotations

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

__all__ = ["BinaryLinear"]

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
        if isinstance(threshold, torch.Tensor):
            threshold = threshold.detach().cpu().numpy()
        self.threshold = threshold if np.ndim(threshold) == 0 else np.array(threshold, dtype=np.float64)
        if bias is not None:
            bias = torch.as_tensor(bias).detach().to("cpu", torch.float32).contiguous().clone()
            if bias.shape != (weights.n,):
                raise ValueError(f"bias must have shape ({weights.n},), got {tuple(bias.shape)}")
        self.register_buffer("bias", bias)

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

    # dynamo must not trace into the numpy/cffi call (it fails building a guard on the cffi
    # lib object): under torch.compile each BinaryLinear is one graph break, run eagerly
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = _as_numpy(x)
        if xn.ndim < 1 or xn.shape[-1] != self.in_features:
            raise ValueError(f"BinaryLinear: input has shape {tuple(xn.shape)}, expected (..., {self.in_features})")
        y = torch.empty(xn.shape[:-1] + (self.out_features,), dtype=torch.float32)
        bias = None if self.bias is None else self.bias.numpy()  # a view of the buffer
        if self.mode == "w1a1":
            tk.binary_linear(xn, self.weights, threshold=self.threshold, bias=bias,
                             activation_scale=self.activation_scale, out=y.numpy(), threads=self.threads)
        elif self.mode == "w1a_float":
            tk.binary_weight_matmul(xn, self.weights, bias=bias, out=y.numpy(), threads=self.threads)
        else:
            tk.binary_weight_matmul(xn, self.weights, bias=bias, activations="q8_0", out=y.numpy(),
                                    threads=self.threads)
        return y

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


from ._torch_qat import QuantConv2d, QuantLinear, SignQuantizer, convert, linear_error_bound  # noqa: E402,F401
__all__ += ["SignQuantizer", "QuantLinear", "QuantConv2d", "convert", "linear_error_bound"]  # quantization-aware training
