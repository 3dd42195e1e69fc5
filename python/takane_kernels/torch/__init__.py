"""PyTorch on the bit-packed kernels (extra ``torch``): inference modules and training.

Layers, each importing only those before it: ``_library`` (the ``takane::`` custom ops
and the registry of live modules) -> ``modules`` (``BinaryLinear``, ``BinaryConv2d``,
``BinaryMaxPool2d`` on one base class) -> ``qat`` (``SignQuantizer``, ``Int8RowQuantizer``,
``QuantLinear``, ``QuantConv2d``) -> ``convert`` (``convert``, ``linear_error_bound``). Everything public
is re-exported here: ``from takane_kernels.torch import BinaryLinear, convert``.
See docs/guide/pytorch.md.
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "takane_kernels.torch needs PyTorch. For CPU inference install the CPU build, e.g. "
        "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    ) from e

from .modules import MODES, BinaryConv2d, BinaryLinear, BinaryMaxPool2d
from .qat import Int8RowQuantizer, QuantConv2d, QuantLinear, SignQuantizer, ternarize
from .convert import convert, linear_error_bound

__all__ = ["BinaryLinear", "BinaryConv2d", "BinaryMaxPool2d",
           "SignQuantizer", "Int8RowQuantizer", "QuantLinear", "QuantConv2d", "ternarize", "convert",
           "linear_error_bound"]
