"""Embedding: the installed C ABI package (layout, exports, configs), the cffi declarations
against the header, and examples/c built against the installed package and run.

Everything here reads the *installed* package (``tk.get_include()`` and friends), so it
checks what a wheel or ``pip install`` really ships.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import takane_kernels as tk

REPO = pathlib.Path(__file__).resolve().parent.parent
HEADER_SRC = REPO / "csrc" / "include" / "takane" / "takane.h"
BUILD_FFI = REPO / "csrc" / "ffi" / "build_ffi.py"
EXAMPLE = REPO / "examples" / "c"
PKG = pathlib.Path(tk.get_include()).parent
ABI = tk._lib.TAKANE_ABI_VERSION
# .ci/aarch64.sh runs the suite under qemu-aarch64 (TAKANE_TEST_EMULATOR): there the C
# example is built with the cross toolchain for the emulated machine and run under the
# emulator (see _toolchain).
EMULATOR = shlex.split(os.environ.get("TAKANE_TEST_EMULATOR", ""))
EMULATED = bool(EMULATOR)
PY = EMULATOR + [sys.executable]  # this interpreter, as a child process


def _repo_file(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        pytest.skip(f"{path.relative_to(REPO)} is not here (installed-package run without the sources)")
    return path


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"none of {names} is installed")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def _toolchain() -> tuple[str, list[str]]:
    """The C compiler and extra CMake arguments that build for the machine this
    interpreter runs on: the host's, or under TAKANE_TEST_EMULATOR the cross toolchain."""
    if not EMULATED:
        return _tool("cc", "gcc"), []
    triple = f"{platform.machine()}-linux-gnu"
    toolchain = REPO / "cmake" / "toolchains" / f"{triple}.cmake"
    if not toolchain.is_file():
        pytest.skip(f"no CMake toolchain file for {triple}")
    return _tool(f"{triple}-gcc"), [f"-DCMAKE_TOOLCHAIN_FILE={toolchain}"]


# ---- layout -------------------------------------------------------------------------------


def test_installed_layout():
    lib = PKG / "lib"
    assert (PKG / "include" / "takane" / "takane.h").is_file()
    assert pathlib.Path(tk.get_library()) == lib / f"libtakane_kernels.so.{ABI}"
    assert pathlib.Path(tk.get_library()).is_file()
    assert pathlib.Path(tk.get_cmake_dir()) == lib / "cmake" / "takane_kernels"
    for f in ("takane_kernelsConfig.cmake", "takane_kernelsConfigVersion.cmake", "takane_kernelsTargets.cmake"):
        assert (lib / "cmake" / "takane_kernels" / f).is_file(), f
    assert (pathlib.Path(tk.get_pkgconfig_dir()) / "takane_kernels.pc").is_file()
    # exactly one copy of the library's code: the unversioned name is a symlink (plain
    # install) or a one-line GNU ld script naming the SONAME file (wheel), never an ELF copy
    elves = [p.name for p in lib.iterdir() if p.is_file() and not p.is_symlink() and p.read_bytes()[:4] == b"\x7fELF"]
    assert len(elves) == 1, f"more than one copy of the library in {lib}: {elves}"
    unversioned = lib / "libtakane_kernels.so"
    if unversioned.is_symlink():
        assert unversioned.resolve() == pathlib.Path(tk.get_library()).resolve()
    else:
        assert f"INPUT(libtakane_kernels.so.{ABI})" in unversioned.read_text()


def test_soname_carries_the_abi_version():
    readelf = _tool(f"{platform.machine()}-linux-gnu-readelf", "readelf")
    out = _run([readelf, "-d", tk.get_library()]).stdout
    assert re.search(rf"\(SONAME\)\s+Library soname: \[libtakane_kernels\.so\.{ABI}\]", out), out


def test_paths_and_command_line():
    py = PY + ["-m", "takane_kernels"]
    r = _run(py + ["--cflags", "--libs"])
    lib = tk.get_library_dir()
    assert r.stdout.split() == [f"-I{tk.get_include()}", f"-L{lib}", "-ltakane_kernels", f"-Wl,-rpath,{lib}"]
    r = _run(py + ["--cmake-dir"])
    assert r.stdout.strip() == tk.get_cmake_dir()
    r = _run(py + ["--pkgconfig-dir", "--library"])
    assert r.stdout.split() == [tk.get_pkgconfig_dir(), tk.get_library()]


def test_cmake_root_entry_point():
    """scikit-build-core sets <name>_ROOT from cmake.root entry points; ours names the
    package directory, under which find_package finds lib/cmake/takane_kernels."""
    try:
        importlib.metadata.distribution("takane-kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("takane_kernels is on the path without pip metadata (.ci/aarch64.sh assembles it by hand)")
    eps = importlib.metadata.entry_points(group="cmake.root")
    ep = [e for e in eps if e.name == "takane_kernels"]
    assert len(ep) == 1 and ep[0].value == "takane_kernels"
    assert pathlib.Path(ep[0].load().__path__[0]).resolve() == PKG.resolve()


def test_pkgconfig_file_is_relocatable():
    pc = (pathlib.Path(tk.get_pkgconfig_dir()) / "takane_kernels.pc").read_text()
    assert "prefix=${pcfiledir}/../.." in pc
    assert re.search(r"^Version: " + re.escape(tk.__version__) + "$", pc, re.M)
    assert re.search(rf"^abi_version={ABI}$", pc, re.M)
    assert str(PKG) not in pc  # no absolute path baked in


# ---- exports and declarations -------------------------------------------------------------


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", " ", text, flags=re.S))


def parse_declarations(text: str) -> dict:
    """The C declarations of a header, normalised: {"macros": {name: value} for integer
    #defines named TAKANE_*, "decls": [declaration, ...] in file order} — every typedef,
    enum and prototype, with TAKANE_API dropped and whitespace canonicalised."""
    text = _strip_comments(text)
    macros = dict(re.findall(r"^\s*#\s*define\s+(TAKANE_\w+)\s+(-?\d+)\s*$", text, flags=re.M))
    text = re.sub(r"#\s*ifdef\s+__cplusplus.*?#\s*endif", " ", text, flags=re.S)  # extern "C" { }
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r"\bTAKANE_API\b", " ", text)
    decls = []
    for stmt in text.split(";"):  # no ';' inside braces in these headers: enums use ','
        stmt = " ".join(stmt.split())
        stmt = re.sub(r"\s*([(),*{}=])\s*", r"\1", stmt)
        if stmt:
            decls.append(stmt)
    return {"macros": macros, "decls": decls}


def _function_name(decl: str) -> str | None:
    if decl.startswith("typedef"):
        return None
    m = re.search(r"(\w+)\(", decl)
    return m.group(1) if m else None


def header_functions(text: str) -> list[str]:
    return [f for f in map(_function_name, parse_declarations(text)["decls"]) if f]


def test_parser_sees_every_prototype():
    """The drift test below is only as good as its parser: every TAKANE_API in the header
    is one function it extracted."""
    text = HEADER_SRC.read_text() if HEADER_SRC.exists() else (PKG / "include/takane/takane.h").read_text()
    funcs = header_functions(text)
    assert len(funcs) == len(re.findall(r"\bTAKANE_API\b", _strip_comments(text))) - 2  # 2 in #define TAKANE_API
    assert len(set(funcs)) == len(funcs)
    assert {"takane_abi_version", "takane_binary_matmul", "takane_pack_f32", "takane_binary_linear",
            "takane_binary_weight_matmul"} <= set(funcs)


def _derived_cdef(header_text: str) -> str:
    """What csrc/ffi/build_ffi.py hands cffi for this header text."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("takane_build_ffi", _repo_file(BUILD_FFI))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.cdef_from_header(header_text)


def test_cffi_declarations_match_the_header():
    """The cdef is derived from takane.h at build time: it must hold every declaration and
    integer constant of the header, in order, and nothing else."""
    text = _repo_file(HEADER_SRC).read_text()
    header = parse_declarations(text)
    cdef = parse_declarations(_derived_cdef(text))
    h, c = header["decls"], cdef["decls"]
    for i, (a, b) in enumerate(zip(h, c)):
        assert a == b, f"declaration {i} differs:\n  takane.h:  {a}\n  cdef:      {b}"
    assert len(h) == len(c), f"takane.h has {len(h)} declarations, the cdef {len(c)}"
    assert cdef["macros"] == header["macros"]
    assert "TAKANE_ABI_VERSION" in cdef["macros"]
    assert all(hasattr(tk._lib, name) for name in map(_function_name, c) if name)  # built from it


def test_installed_header_is_the_source_header():
    assert (PKG / "include" / "takane" / "takane.h").read_text() == _repo_file(HEADER_SRC).read_text()


def test_bindings_expose_every_header_function():
    funcs = header_functions((PKG / "include" / "takane" / "takane.h").read_text())
    missing = [f for f in funcs if not hasattr(tk._lib, f)]
    assert not missing, f"in takane.h but not in the cffi module: {missing}"


def test_library_exports_only_the_header_functions():
    """nm -D: every defined dynamic symbol is a takane_* function of the header, and every
    header function is exported."""
    nm = _tool(f"{platform.machine()}-linux-gnu-nm", "nm")
    out = _run([nm, "-D", "--defined-only", tk.get_library()]).stdout
    symbols = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert symbols, out
    stray = sorted(s for s in symbols if not s.startswith("takane_"))
    assert not stray, f"non-takane_ symbols exported: {stray}"
    funcs = set(header_functions((PKG / "include" / "takane" / "takane.h").read_text()))
    assert symbols == funcs, f"exported, not in header: {sorted(symbols - funcs)}; in header, not exported: {sorted(funcs - symbols)}"


# ---- examples/c against the installed package ----------------------------------------------

EXPECTED_OUTPUT = re.compile(
    # the version string may carry a build note, e.g. "0.2.0 (test build: avx512 kernels
    # emulated with SIMDe)" in the SIMDe CI build
    rf"takane_kernels {re.escape(tk.__version__)}\S*(?: \([^)]*\))? \(ABI {ABI}\), ISA \w+: "
    r"5x37x200 W1A1 matmul, W1A8 and conv match their naive loops; Q1_0 round trip exact")


def _check_example(exe: pathlib.Path, libdir: str | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # found via rpath
    if EMULATED and libdir:  # a plain install's .pc has no rpath (.ci/aarch64.sh's package)
        env["LD_LIBRARY_PATH"] = libdir
    r = _run(EMULATOR + [str(exe)], env=env)
    assert EXPECTED_OUTPUT.fullmatch(r.stdout.strip()), r.stdout


def _cmake_build(tmp_path: pathlib.Path, *defines: str) -> pathlib.Path:
    cmake = _tool("cmake")
    src = _repo_file(EXAMPLE)
    build = tmp_path / "build"
    _, cross = _toolchain()
    _run([cmake, "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *cross, *defines])
    _run([cmake, "--build", str(build)])
    return build / "takane_example"


def test_c_example_cmake_find_package(tmp_path):
    """README: cmake -S examples/c -B build -Dtakane_kernels_DIR=$(python -m takane_kernels --cmake-dir)"""
    _check_example(_cmake_build(tmp_path, f"-Dtakane_kernels_DIR={tk.get_cmake_dir()}"))


@pytest.mark.skipif(EMULATED, reason="cross build: the toolchain file confines find_package "
                    "searches to the target sysroot, so a <name>_ROOT outside it is not searched")
def test_c_example_cmake_root(tmp_path):
    """As a scikit-build-core project depending on takane-kernels sees it: takane_kernels_ROOT
    set to the package directory (the cmake.root entry point)."""
    _check_example(_cmake_build(tmp_path, f"-Dtakane_kernels_ROOT={PKG}"))


def test_c_example_pkg_config_one_liner(tmp_path):
    """README: cc example.c $(PKG_CONFIG_PATH=... pkg-config --cflags --libs takane_kernels)"""
    _tool("pkg-config")
    cc, _ = _toolchain()
    src = _repo_file(EXAMPLE / "example.c")
    exe = tmp_path / "takane_example"
    py = " ".join(f'"{a}"' for a in PY)
    cmd = (f'"{cc}" -Wall -Werror "{src}" $(PKG_CONFIG_PATH="$({py} -m takane_kernels --pkgconfig-dir)" '
           f'pkg-config --cflags --libs takane_kernels) -o "{exe}"')
    _run(["sh", "-c", cmd])
    _check_example(exe, tk.get_library_dir())


def test_c_example_python_flags(tmp_path):
    cc, _ = _toolchain()
    exe = tmp_path / "takane_example"
    flags = _run(PY + ["-m", "takane_kernels", "--cflags", "--libs"]).stdout.split()
    _run([cc, str(_repo_file(EXAMPLE / "example.c")), *flags, "-o", str(exe)])
    _check_example(exe)


def test_moved_install_tree_still_builds(tmp_path):
    """Both configs are relocatable: copy include/ and lib/ elsewhere, build from the copy,
    and the program runs against the copy."""
    cc, _ = _toolchain()
    _tool("pkg-config")
    moved = tmp_path / "moved"
    shutil.copytree(PKG / "include", moved / "include")
    shutil.copytree(PKG / "lib", moved / "lib", symlinks=True)
    env = dict(os.environ, PKG_CONFIG_PATH=str(moved / "lib" / "pkgconfig"))
    flags = _run(["pkg-config", "--cflags", "--libs", "takane_kernels"], env=env).stdout.split()
    assert all(str(PKG) not in f for f in flags) and any(str(moved) in f for f in flags), flags
    exe = tmp_path / "pc_example"
    _run([cc, str(_repo_file(EXAMPLE / "example.c")), *flags, "-o", str(exe)])
    _check_example(exe, str(moved / "lib"))
    exe = _cmake_build(tmp_path, f"-Dtakane_kernels_DIR={moved / 'lib' / 'cmake' / 'takane_kernels'}")
    _check_example(exe)
    readelf = _tool(f"{platform.machine()}-linux-gnu-readelf", "readelf")
    dynamic = _run([readelf, "-d", str(exe)]).stdout
    assert str(moved) in dynamic and str(PKG) not in dynamic, dynamic


def test_every_public_function_is_documented():
    """Each block of prototypes (separated by blank lines) in the installed header starts
    with a comment, so no entry point is declared without its contract."""
    text = (PKG / "include" / "takane" / "takane.h").read_text()
    undocumented = []
    for block in re.split(r"\n\s*\n", text):
        first = block.find("TAKANE_API ")
        if first < 0 or block.lstrip().startswith("#"):
            continue
        if "/*" not in block[:first]:
            undocumented += re.findall(r"TAKANE_API[^;(]*?\b(takane_\w+)\s*\(", block)
    assert not undocumented, f"prototypes without a comment block above them: {undocumented}"


# Each computing op of the Python API and the C entry points it is built on: embedders get
# the same kernels. (pack_weights' scales, unpack_bits, the packbits converters and
# AdaptiveThreshold are numpy on top of these.)
PYTHON_OPS_IN_C = {
    "pack_bits": ["takane_pack_f32"],
    "pack_weights": ["takane_pack_f32", "takane_weights_create", "takane_weights_free"],
    "binary_matmul": ["takane_binary_matmul", "takane_binary_matmul_f32",
                      "takane_binary_matmul_prepacked", "takane_binary_matmul_prepacked_f32"],
    "binary_linear": ["takane_binary_linear", "takane_binary_linear_f32",
                      "takane_binary_linear_bits", "takane_binary_linear_f32_bits"],
    "binary_weight_matmul": ["takane_binary_weight_matmul"],
}


def test_every_python_op_has_its_c_entry_points():
    funcs = set(header_functions((PKG / "include" / "takane" / "takane.h").read_text()))
    for op, entry_points in PYTHON_OPS_IN_C.items():
        assert callable(getattr(tk, op))
        missing = [f for f in entry_points if f not in funcs]
        assert not missing, f"tk.{op}: no C entry point {missing} in takane.h"


def test_example_catches_a_header_library_mismatch(tmp_path):
    """Compiled against a header that claims another ABI, the example refuses to run:
    takane_abi_version() (the library's) differs from the header's TAKANE_ABI_VERSION."""
    cc, _ = _toolchain()
    inc = tmp_path / "include"
    shutil.copytree(PKG / "include", inc)
    h = inc / "takane" / "takane.h"
    text, n = re.subn(rf"#define TAKANE_ABI_VERSION {ABI}\b", f"#define TAKANE_ABI_VERSION {ABI + 1}", h.read_text())
    assert n == 1
    h.write_text(text)
    exe = tmp_path / "mismatch"
    lib = tk.get_library_dir()
    _run([cc, f"-I{inc}", str(_repo_file(EXAMPLE / "example.c")), f"-L{lib}", "-ltakane_kernels",
          f"-Wl,-rpath,{lib}", "-o", str(exe)])
    r = subprocess.run(EMULATOR + [str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"ABI mismatch: header {ABI + 1}, library {ABI}" in r.stderr
