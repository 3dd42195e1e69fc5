"""The ``torch.library`` custom ops (namespace ``takane``) and the registry of live modules.

The bottom layer of :mod:`takane_kernels.torch` (custom-op library -> modules -> QAT ->
convert): it imports no module class. ``BinaryLinear`` / ``BinaryConv2d`` go through these
ops under ``torch.compile``, ``torch.export`` or a dispatch mode, so tracers see one opaque
node with a fake-tensor shape function and no graph break. A module passes itself to its op
as an int key into a registry of live modules (its packed weights and bound C op are Python
objects, not tensors); the bias is passed as a tensor argument so ``load_state_dict`` keeps
working. The registry is per process: a graph exported with ``torch.export`` refers to the
modules by key, so it runs in the process that traced it, while those modules are alive —
it cannot be saved and loaded elsewhere.
"""

from __future__ import annotations

import itertools
import weakref

import numpy as np
import torch

import takane_kernels as tk

_MODULES: "dict[int, weakref.ref]" = {}  # key -> weak reference (removed when the module dies)
_NEXT_KEY = itertools.count(1)
# dtypes whose tensors numpy can view without a copy (float16/float64 are converted by the
# numpy ops themselves)
NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)


def register(module: torch.nn.Module) -> None:
    """Give the module a fresh registry key (at construction, and for every deep copy or
    unpickled copy). forward reads the plain int attribute, which torch.compile treats as a
    constant."""
    key = next(_NEXT_KEY)
    module.__dict__["_takane_key"] = key
    _MODULES[key] = weakref.ref(module, lambda _, key=key: _MODULES.pop(key, None))


def _module(key: int) -> torch.nn.Module:
    ref = _MODULES.get(key)  # (a plain dict of weak references: a WeakValueDictionary's get is
    m = None if ref is None else ref()  # Python code, several times slower on the op path)
    if m is None:
        raise RuntimeError(f"takane_kernels.torch: no live module with key {key} (the traced "
                           "graph outlived the module it was traced from, or runs in another process)")
    return m


def is_eager(x: torch.Tensor) -> bool:
    """True for a plain eager call: a plain tensor (no fake, functional or other subclass
    tensor), no torch.compile / torch.export tracing, no dispatch mode (e.g. a FLOP counter)
    watching. Then forward computes directly; the custom op's dispatch (a few µs a
    call: as much as a small layer's kernel) buys nothing there."""
    return (type(x) is torch.Tensor and not torch.compiler.is_compiling()
            and not torch._C._len_torch_dispatch_stack())


def check_cpu_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"{name} runs on the CPU: input is on {x.device}")


def as_numpy(x: torch.Tensor, name: str = "BinaryLinear") -> np.ndarray:
    """A numpy view of a CPU tensor's memory (no copy when it is contiguous and of a dtype
    numpy has; otherwise one contiguous float32 copy)."""
    check_cpu_tensor(x, name)
    x = x.detach()
    if x.dtype not in NUMPY_DTYPES:
        x = x.to(torch.float32)
    return x.contiguous().numpy()


def nhwc_view(x: torch.Tensor) -> np.ndarray:
    """NCHW tensor -> numpy NHWC array: a view when x is channels_last (NHWC in memory)."""
    x = x.detach()
    if x.dtype not in NUMPY_DTYPES:
        x = x.to(torch.float32)
    return x.permute(0, 2, 3, 1).contiguous().numpy()  # contiguous() is a no-op for channels_last


def out_hw(h, w, kernel, stride, dilation, pads):
    ho = (h + pads[0] + pads[1] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + pads[2] + pads[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return ho, wo


# The ops are defined with torch.library.Library and a CPU kernel, not the
# torch.library.custom_op decorator: the decorator's Python wrapper costs ~20 µs a call
# (measured on Zen 4), the plain dispatcher path ~2 µs. Inference only: no autograd kernel
# (the modules pass detached inputs).
_LIB = torch.library.Library("takane", "DEF")
_LIB.define("binary_linear(Tensor x, Tensor? bias, int key) -> Tensor")
# the out= form the modules use under torch.compile: the graph allocates `out` (the result,
# float32 x.shape[:-1] + (out_features,)) with its own C++ allocator; ~5 µs less a call
_LIB.define("binary_linear_out(Tensor x, Tensor? bias, int key, Tensor(a!) out) -> ()")
_LIB.define("binary_conv2d(Tensor x, Tensor? bias, int key) -> Tensor")
_LIB.define("binary_max_pool2d(Tensor x, int kh, int kw, int sh, int sw, int ph, int pw) -> Tensor")


def _binary_linear_op(x: torch.Tensor, bias: torch.Tensor | None, key: int) -> torch.Tensor:
    return _module(key)._compute(x, bias)  # (it checks x's shape: the op can be called directly)


def _binary_linear_out_op(x: torch.Tensor, bias: torch.Tensor | None, key: int, out: torch.Tensor) -> None:
    _module(key)._compute(x, bias, out)  # (it checks x's and out's shapes and out's dtype)


def _binary_linear_out_fake(x, bias, key, out):
    return None


def _binary_linear_fake(x, bias, key):
    return x.new_empty(tuple(x.shape[:-1]) + (_module(key).out_features,), dtype=torch.float32)


def _binary_conv2d_op(x: torch.Tensor, bias: torch.Tensor | None, key: int) -> torch.Tensor:
    return _module(key)._compute(x, bias)


def _binary_conv2d_fake(x, bias, key):
    m = _module(key)
    ho, wo = out_hw(x.shape[2], x.shape[3], m.kernel_size, m.stride, m.dilation, m.pads)
    return x.new_empty((x.shape[0], ho, wo, m.out_channels), dtype=torch.float32).permute(0, 3, 1, 2)


def _binary_max_pool2d_op(x: torch.Tensor, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int) -> torch.Tensor:
    xn = nhwc_view(x)
    c = xn.shape[3]
    bits = tk.binary_max_pool2d(xn, (kh, kw), stride=(sh, sw), padding=(ph, pw))
    y = torch.from_numpy(tk.unpack_bits(bits, c, np.float32)) if c else \
        torch.empty(bits.shape[:3] + (0,), dtype=torch.float32)
    return y.permute(0, 3, 1, 2)


def _binary_max_pool2d_fake(x, kh, kw, sh, sw, ph, pw):
    ho, wo = out_hw(x.shape[2], x.shape[3], (kh, kw), (sh, sw), (1, 1), (ph, ph, pw, pw))
    return x.new_empty((x.shape[0], ho, wo, x.shape[1]), dtype=torch.float32).permute(0, 3, 1, 2)


for _name, _impl, _fake in (("binary_linear", _binary_linear_op, _binary_linear_fake),
                            ("binary_linear_out", _binary_linear_out_op, _binary_linear_out_fake),
                            ("binary_conv2d", _binary_conv2d_op, _binary_conv2d_fake),
                            ("binary_max_pool2d", _binary_max_pool2d_op, _binary_max_pool2d_fake)):
    _LIB.impl(_name, _impl, "CPU")
    torch.library.register_fake(f"takane::{_name}", _fake, lib=_LIB)
