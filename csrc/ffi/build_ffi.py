"""Generate the cffi API-mode wrapper C for takane_kernels._takane (run by CMake).

Usage: python build_ffi.py OUTPUT.c

cffi's cdef cannot run the C preprocessor, so the declarations are derived from the one
public header, csrc/include/takane/takane.h, by cdef_from_header(): comments, the
`extern "C"` guard, the visibility macro and every preprocessor line are dropped, except
the integer `#define TAKANE_* N` constants, which cffi understands. There is no second,
hand-kept copy of the prototypes to drift; the generated wrapper includes the real header,
so the C compiler checks every declaration against it (tests/test_embed.py checks that
the derived cdef holds every prototype of the header).
"""

import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
HEADER = HERE.parent / "include" / "takane" / "takane.h"


def cdef_from_header(text: str) -> str:
    """The declarations of takane.h in the preprocessor-free form cffi's cdef takes."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    # the C++ guard (extern "C" { ... }) and the block that defines TAKANE_API
    text = re.sub(r"#\s*ifdef\s+__cplusplus.*?#\s*endif", " ", text, flags=re.S)
    text = re.sub(r"#\s*if\s+defined\(TAKANE_BUILDING_LIBRARY\).*?#\s*endif", " ", text, flags=re.S)
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            m = re.fullmatch(r"#\s*define\s+(TAKANE_\w+)\s+(-?\d+)", stripped)
            if m:  # integer constants only: strings and function-like macros stay C-only
                out.append(f"#define {m.group(1)} {m.group(2)}")
            continue
        line = re.sub(r"\bTAKANE_API\b\s*", "", line)
        if line.strip():
            out.append(line.rstrip())
    return "\n".join(out) + "\n"


def main() -> None:
    import cffi

    out = pathlib.Path(sys.argv[1])
    ffi = cffi.FFI()
    ffi.cdef(cdef_from_header(HEADER.read_text()))
    ffi.set_source("takane_kernels._takane", '#include "takane/takane.h"\n')
    out.parent.mkdir(parents=True, exist_ok=True)
    ffi.emit_c_code(str(out))


if __name__ == "__main__":
    main()
