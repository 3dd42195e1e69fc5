"""Where the C library and its header are installed, for embedders."""

from __future__ import annotations

import importlib.resources


def _pkg_path(*parts: str) -> str:
    root = importlib.resources.files("takane_kernels")
    path = root.joinpath(*parts)
    return str(path)


def get_include() -> str:
    """Directory to add to the include path: it contains ``takane/takane.h``."""
    return _pkg_path("include")


def get_library() -> str:
    """Full path of the shared library ``libtakane_kernels.so``."""
    return _pkg_path("lib", "libtakane_kernels.so")
