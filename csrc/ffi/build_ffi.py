"""Generate the cffi API-mode wrapper C for takane_kernels._takane (run by CMake).

Usage: python build_ffi.py OUTPUT.c

The declarations come from takane_cdef.h, a preprocessor-free copy of the prototypes in
csrc/include/takane/takane.h (cffi's cdef cannot run the preprocessor). The generated C
includes the real header, so the C compiler checks every declaration against it.
"""

import pathlib
import sys

import cffi

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    ffi = cffi.FFI()
    ffi.cdef((HERE / "takane_cdef.h").read_text())
    ffi.set_source("takane_kernels._takane", '#include "takane/takane.h"\n')
    out.parent.mkdir(parents=True, exist_ok=True)
    ffi.emit_c_code(str(out))


if __name__ == "__main__":
    main()
