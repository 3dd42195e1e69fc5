#!/usr/bin/env bash
# aarch64 CI (DESIGN §7): the neon kernels and the scalar path on aarch64, run under
# qemu-user on an x86-64 Debian 12 host. From scratch it:
#  1. installs gcc-aarch64-linux-gnu and qemu-user with apt;
#  2. assembles an aarch64 CPython 3.11 root (build/aarch64/root) from Debian arm64
#     packages with `apt-get download` + `dpkg -x`. Nothing arm64 is installed on the
#     host (python3:arm64 would replace the host interpreter); arm64 is only added as a
#     foreign dpkg architecture so that apt can find the packages;
#  3. installs aarch64 wheels of numpy, cffi, pytest, hypothesis and gguf from PyPI with
#     `pip install --platform ... --only-binary=:all: --target build/aarch64/deps`;
#  4. cross-compiles the library, the cffi extension and the C kernel tests with
#     cmake/toolchains/aarch64-linux-gnu.cmake, and runs ctest under qemu-aarch64
#     (every supported ISA against scalar at every tile-edge shape);
#  5. assembles the package (build/aarch64/pkg/takane_kernels) and runs the whole pytest
#     suite under qemu-aarch64: every kernel test once per supported ISA (neon, scalar),
#     forced and checked with isa.last_used(), and TAKANE_EXPECT_ISA=neon asserts the
#     default pick. Child processes of the tests run under qemu too (TAKANE_TEST_EMULATOR).
#     Hypothesis runs its native "ci" example count: the emulated suite takes about a
#     minute, so nothing is thinned (HYPOTHESIS_PROFILE=emulated is there if it grows).
# The root and the wheels are reused when present (their stamp files match); delete
# build/aarch64 to start over. The build and the test run are always redone.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
step() { printf '\n===== aarch64: %s =====\n' "$*"; }
start=$SECONDS

OUT=$PWD/build/aarch64
ROOT=$OUT/root        # the aarch64 root: /usr/bin/python3.11, its stdlib, libc, ...
DEPS=$OUT/deps        # aarch64 wheels (pip --target)
PKG=$OUT/pkg          # the assembled takane_kernels package, first on PYTHONPATH
HOSTENV=$OUT/hostenv  # x86 venv with cffi, to generate the wrapper C at build time
mkdir -p "$OUT"

step "host tools (cross compiler, qemu-user, cmake)"
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v cmake >/dev/null || need+=(cmake)
command -v ninja >/dev/null || command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
aarch64-linux-gnu-gcc --version | head -1
qemu-aarch64 --version | head -1

# arm64 packages of the interpreter and of the shared libraries the tests load:
# libstdc++ for numpy's C++ parts, libffi for ctypes (test_isa loads the .so with it),
# zlib/expat/bz2/lzma/ssl/uuid/crypt for the stdlib modules pytest and hypothesis use.
ARM64_DEBS=(libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5
  libssl3 libuuid1 libcrypt1 python3.11-minimal libpython3.11-minimal
  libpython3.11-stdlib libpython3.11-dev)
step "aarch64 CPython 3.11 root from Debian arm64 packages (apt-get download + dpkg -x)"
stamp="${ARM64_DEBS[*]}"
if [ -x "$ROOT/usr/bin/python3.11" ] && [ "$(cat "$ROOT/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "reusing $ROOT"
else
  rm -rf "$ROOT" "$OUT/debs"
  mkdir -p "$OUT/debs"
  fetch() { (cd "$OUT/debs" && apt-get download -q "${ARM64_DEBS[@]/%/:arm64}" 2>&1 |
    grep -v 'unsandboxed as root' || true); }
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64 # lets apt see arm64 packages; installs nothing
    apt-get update -qq
  fi
  fetch
  # a stale package list names versions the mirror no longer has: refresh and retry once
  if [ "$(ls "$OUT"/debs/*.deb 2>/dev/null | wc -l)" -ne ${#ARM64_DEBS[@]} ]; then
    apt-get update -qq
    rm -f "$OUT"/debs/*.deb
    fetch
  fi
  [ "$(ls "$OUT"/debs/*.deb | wc -l)" -eq ${#ARM64_DEBS[@]} ] ||
    { echo "apt-get download did not fetch all of: ${ARM64_DEBS[*]}" >&2; exit 1; }
  for deb in "$OUT"/debs/*.deb; do dpkg -x "$deb" "$ROOT"; done
  rm -rf "$OUT/debs"
  echo "$stamp" >"$ROOT/.stamp"
fi
export QEMU_LD_PREFIX=$ROOT # the aarch64 ELF loader and libc come from the root
PY_A64=("qemu-aarch64" "$ROOT/usr/bin/python3.11")
export PYTHONNOUSERSITE=1   # never pick up the host user's x86 site-packages
"${PY_A64[@]}" -c 'import platform, sys; print("target python", sys.version.split()[0], platform.machine())'

step "aarch64 wheels: numpy, cffi, pytest, hypothesis, gguf (pip --platform --target)"
[ -x "$HOSTENV/bin/pip" ] || python3 -m venv "$HOSTENV"
# gguf (pure Python; with pyyaml, requests, tqdm): tests/test_gguf.py and the README's example
reqs=("numpy>=2.0" "cffi>=1.17" "pytest>=7" "hypothesis>=6" "gguf>=0.19")
if [ -d "$DEPS" ] && [ "$(cat "$DEPS/.stamp" 2>/dev/null)" = "${reqs[*]}" ]; then
  echo "reusing $DEPS"
else
  rm -rf "$DEPS"
  "$HOSTENV/bin/pip" install -q --target "$DEPS" --only-binary=:all: \
    --implementation cp --python-version 3.11 --abi cp311 \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 "${reqs[@]}"
  echo "${reqs[*]}" >"$DEPS/.stamp"
fi
cffi_version=$(cd "$DEPS" && ls -d cffi-*.dist-info | sed 's/^cffi-\(.*\)\.dist-info$/\1/')
echo "cffi $cffi_version, $(cd "$DEPS" && ls -d numpy-*.dist-info | sed 's/\.dist-info$//')"

step "cross build: library, cffi extension, C kernel tests"
# The wrapper C is generated on the host by the same cffi version the target imports.
"$HOSTENV/bin/python" -c "import cffi, sys; sys.exit(cffi.__version__ != '$cffi_version')" 2>/dev/null ||
  "$HOSTENV/bin/pip" install -q "cffi==$cffi_version"
ext_suffix=$("${PY_A64[@]}" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
inc=$ROOT/usr/include
for h in python3.11/Python.h aarch64-linux-gnu/python3.11/pyconfig.h; do
  [ -f "$inc/$h" ] || { echo "missing $inc/$h (libpython3.11-dev:arm64)" >&2; exit 1; }
done
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
rm -rf "$OUT/cmake"
cmake -S . -B "$OUT/cmake" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/toolchains/aarch64-linux-gnu.cmake" \
  -DTAKANE_BUILD_TESTS=ON -DTAKANE_BUILD_PYTHON_EXT=ON \
  -DPython_EXECUTABLE="$HOSTENV/bin/python" \
  -DTAKANE_PYTHON_INCLUDE_DIRS="$inc/python3.11;$inc" \
  -DTAKANE_PYTHON_EXT_SUFFIX="$ext_suffix" >/dev/null
cmake --build "$OUT/cmake" -j2 >/dev/null
file -b "$OUT/cmake/_takane$ext_suffix" | cut -d, -f1-2
# Only aarch64 code was built: the neon kernel files are in, no x86 kernel file is.
objs=$(cd "$OUT/cmake" && find . -name '*.c.o' -path '*kernels*' -printf '%f\n' | sort | tr '\n' ' ')
echo "kernel objects: $objs"
case " $objs " in *" matmul_neon.c.o "*) ;; *) echo "neon kernels not built" >&2; exit 1 ;; esac
case "$objs" in *avx*) echo "x86 kernels built for aarch64" >&2; exit 1 ;; esac

step "C kernel tests under qemu-aarch64 (ctest, CMAKE_CROSSCOMPILING_EMULATOR)"
ctest --test-dir "$OUT/cmake" --output-on-failure -V | grep -E '^[0-9]+: |tests passed|Failed|FAILED|Exception'

step "assemble the package"
rm -rf "$PKG"
mkdir -p "$PKG/takane_kernels"
(cd python && find takane_kernels -name '*.py' -exec cp --parents {} "$PKG/" \;) # with subpackages
cp "$OUT/cmake/_takane$ext_suffix" "$PKG/takane_kernels/"
cmake --install "$OUT/cmake" --prefix "$PKG/takane_kernels" >/dev/null # lib/, include/
export PYTHONPATH=$PKG:$DEPS
"${PY_A64[@]}" -c 'import takane_kernels as tk; print("takane", tk.version_info(), "compiled:", tk.isa.compiled(), "supported:", tk.isa.supported(), "active:", tk.isa.active())'

step "whole test suite under qemu-aarch64: neon and scalar forced per test, neon by default"
env -u TAKANE_ISA TAKANE_EXPECT_ISA=neon HYPOTHESIS_PROFILE=ci \
  TAKANE_TEST_EMULATOR=qemu-aarch64 \
  "${PY_A64[@]}" -m pytest tests -q -p no:cacheprovider \
  --ignore-glob='tests/test_torch*.py' --ignore=tests/programs/test_demo.py --ignore=tests/programs/test_lm.py # training / torch: native runs only

step "W1A8 on plain NEON: tests/test_q8_0.py under qemu-aarch64 -cpu cortex-a53 (no SDOT)"
# the default qemu CPU reports the dot-product extension, so the suite above ran the SDOT
# kernel; an ARMv8.0 core makes wq8_neon.c take its AND + SADDLP path
env -u TAKANE_ISA TAKANE_EXPECT_ISA=neon HYPOTHESIS_PROFILE=emulated QEMU_CPU=cortex-a53 \
  TAKANE_TEST_EMULATOR=qemu-aarch64 \
  "${PY_A64[@]}" -m pytest tests/test_q8_0.py -q -p no:cacheprovider

step "passed in $((SECONDS - start)) s"
