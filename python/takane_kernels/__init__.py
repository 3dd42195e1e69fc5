"""takane_kernels: bit-packed 1-bit (±1) matmul kernels for CPU inference.

Weights that are ±1 are packed 64 to a uint64 word (bit 1 = +1, LSB first, zero
padding); products are XOR + popcount in C, on the best instruction set this CPU has.
"""

from . import isa, reference
from ._ops import Matmul, binary_matmul, pack_bits, pack_weights, unpack_bits
from ._paths import get_cmake_dir, get_include, get_library, get_library_dir, get_pkgconfig_dir
from ._capi import ffi as _ffi, lib as _lib
from ._capi import MAX_K
from ._weights import PackedWeights
from ._ternary import TernaryWeights, pack_ternary
from ._layers import Linear, binary_linear, binary_weight_matmul
from ._adaptive import AdaptiveThreshold
from ._interop import flip_polarity, from_packbits, to_packbits
from ._q1_0 import from_q1_0, to_q1_0
from ._conv import (Conv2d, PackedConvWeights, binary_conv2d, binary_max_pool2d, conv2d_output_size,
                    nchw_to_nhwc, nhwc_to_nchw, pack_conv_weights)

__version__ = "0.2.0"

if _lib.takane_abi_version() != _lib.TAKANE_ABI_VERSION:  # pragma: no cover
    raise ImportError("takane_kernels: C library ABI does not match the bindings")

__all__ = [
    "binary_matmul", "pack_bits", "unpack_bits", "pack_weights", "PackedWeights",
    "isa", "reference", "get_include", "get_library", "get_library_dir", "get_cmake_dir",
    "get_pkgconfig_dir", "MAX_K", "__version__", "version_info",
    "default_threads",
    "binary_linear", "binary_weight_matmul", "AdaptiveThreshold",
    "from_packbits", "to_packbits", "flip_polarity",
    "from_q1_0", "to_q1_0",
    "PackedConvWeights", "pack_conv_weights", "binary_conv2d", "binary_max_pool2d",
    "conv2d_output_size", "nchw_to_nhwc", "nhwc_to_nchw",
    "Matmul", "Linear", "Conv2d",
    "TernaryWeights", "pack_ternary",
]


def default_threads() -> int:
    """Threads a call may use when ``threads=None``: env TAKANE_NUM_THREADS (read once),
    else the CPUs available to this process. Small problems still run on one thread."""
    return int(_lib.takane_default_threads())


def version_info() -> str:
    """The C library's version string (with build notes)."""
    return _ffi.string(_lib.takane_version_string()).decode()
