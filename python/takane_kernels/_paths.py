"""Where the C library, its header and its build configs are installed, for embedders.

The package directory holds the same layout as ``cmake --install`` under a prefix::

    include/takane/takane.h
    lib/libtakane_kernels.so.<ABI>     the shared library (its SONAME)
    lib/libtakane_kernels.so           for ``-ltakane_kernels`` (in a wheel: a linker script)
    lib/cmake/takane_kernels/          find_package(takane_kernels CONFIG)
    lib/pkgconfig/takane_kernels.pc    pkg-config takane_kernels
"""

from __future__ import annotations

import importlib.resources


def _pkg_path(*parts: str) -> str:
    root = importlib.resources.files("takane_kernels")
    path = root.joinpath(*parts)
    return str(path)


def get_include() -> str:
    """Directory to add to the include path: it contains ``takane/takane.h``."""
    return _pkg_path("include")


def get_library_dir() -> str:
    """Directory of the shared library (for ``-L`` and an rpath)."""
    return _pkg_path("lib")


def get_library() -> str:
    """Full path of the shared library to load (``dlopen``/``ctypes``) or link by path:
    ``lib/libtakane_kernels.so.<ABI>``, the file named by its SONAME."""
    from ._capi import lib

    return _pkg_path("lib", f"libtakane_kernels.so.{lib.TAKANE_ABI_VERSION}")


def get_cmake_dir() -> str:
    """Directory holding ``takane_kernelsConfig.cmake``: pass it as ``-Dtakane_kernels_DIR=``
    (or the package directory as ``CMAKE_PREFIX_PATH``) to ``find_package(takane_kernels)``."""
    return _pkg_path("lib", "cmake", "takane_kernels")


def get_pkgconfig_dir() -> str:
    """Directory holding ``takane_kernels.pc``: add it to ``PKG_CONFIG_PATH``."""
    return _pkg_path("lib", "pkgconfig")


def cflags() -> str:
    """Compiler flags for the header: ``-I<include>``."""
    return f"-I{get_include()}"


def libs() -> str:
    """Linker flags: ``-L<lib> -ltakane_kernels`` plus an rpath to that directory (the
    package directory is never on the loader's default path)."""
    d = get_library_dir()
    return f"-L{d} -ltakane_kernels -Wl,-rpath,{d}"
