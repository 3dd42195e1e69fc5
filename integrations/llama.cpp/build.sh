#!/usr/bin/env bash
# llama.cpp with takane_kernels as its Q1_0 matmul: the ggml CPU extra buffer type "CPU_TAKANE"
# (ggml-cpu-takane.cpp, option GGML_CPU_TAKANE), built against the takane_kernels installed in
# the current Python (its CMake package; never a copy of our sources).
#
#   bash integrations/llama.cpp/build.sh DEST          llama-bench, llama-perplexity,
#                                                       llama-completion, llama-quantize (and
#                                                       llama-cli, see below) in DEST/bin
#   bash integrations/llama.cpp/build.sh DEST --wheel  also a llama-cpp-python wheel with the
#                                                       same patch, in DEST/wheel
#
# Python: $PYTHON, else python3 on PATH; it must import takane_kernels. The llama.cpp source is
# the one vendored by the llama-cpp-python sdist on PyPI, pinned (LLAMA_CPP_PYTHON_VERSION,
# default 0.3.36): the patch is made for that tree, and another version that it does not apply
# to fails here, naming the pinned one. Re-running is incremental (download, patch and the
# CMake cache are reused; ccache is used when installed). JOBS: parallel compile jobs (2).
#
# The binaries run either path: `-nr` (llama-completion, llama-perplexity) or `--repack 0`
# (llama-bench) turn every extra buffer type off, CPU_TAKANE included, so the same binary and
# file give stock llama.cpp's Q1_0 path. A separate stock build: bench/build_llamacpp.sh DEST2.
#
# llama-cli: in this llama.cpp it is the interactive chat client built on the server code
# (LLAMA_BUILD_SERVER; several more minutes of compiling); llama-completion is the one-shot
# prompt -> text tool the checks use. LLAMA_CLI=1 builds llama-cli too.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest="" wheel=0
for a in "$@"; do
    case "$a" in
        --wheel) wheel=1 ;;
        -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "build.sh: unknown option $a" >&2; exit 2 ;;
        *) [ -z "$dest" ] || { echo "build.sh: one DEST only" >&2; exit 2; }; dest=$a ;;
    esac
done
[ -n "$dest" ] || { echo "usage: bash integrations/llama.cpp/build.sh DEST [--wheel]" >&2; exit 2; }
pinned=0.3.36
version=${LLAMA_CPP_PYTHON_VERSION:-$pinned}
jobs=${JOBS:-2}
py=${PYTHON:-python3}

cmake_dir=$("$py" -c 'import takane_kernels; print(takane_kernels.get_cmake_dir())') || {
    echo "build.sh: $py cannot import takane_kernels: install it first (pip install .)" >&2; exit 1; }
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

# 1. The sdist (llama.cpp is vendored in it; there is no llama.cpp source package on PyPI).
src="$dest/src"
sdist="$src/llama_cpp_python-$version"
llama="$sdist/vendor/llama.cpp"
if [ ! -f "$llama/CMakeLists.txt" ]; then
    mkdir -p "$src"
    # --no-binary for this package only: with ":all:" pip would compile the build requirements
    # (cmake itself) from source just to read the sdist's metadata.
    "$py" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$src"
    tar xzf "$src/llama_cpp_python-$version.tar.gz" -C "$src"
fi

# 2. The patch (registration + CMake option), once; then our two source files, always (so an
# edit of them is picked up by an incremental rebuild).
patch_file="$here/ggml-cpu-takane.patch"
if (cd "$llama" && patch -p1 -R -s -f --dry-run <"$patch_file" >/dev/null 2>&1); then
    : # already applied
elif (cd "$llama" && patch -p1 -s -f --dry-run <"$patch_file" >/dev/null 2>&1); then
    (cd "$llama" && patch -p1 -s <"$patch_file")
else
    echo "build.sh: ERROR: $patch_file does not apply to the llama.cpp vendored by" \
        "llama-cpp-python==$version. It is made for llama-cpp-python==$pinned" \
        "(llama.cpp 0c1e570); use LLAMA_CPP_PYTHON_VERSION=$pinned (the default) or port the patch." >&2
    exit 1
fi
mkdir -p "$llama/ggml/src/ggml-cpu/takane"
for f in ggml-cpu-takane.cpp ggml-cpu-takane.h; do
    cmp -s "$here/$f" "$llama/ggml/src/ggml-cpu/takane/$f" || cp "$here/$f" "$llama/ggml/src/ggml-cpu/takane/$f"
done

# 3. Configure (every run: cheap, and keeps the options right) and build the tools.
# ccache keys on absolute paths unless given a base directory: with DEST as the base, a fresh
# DEST (or a CI checkout in another directory) still hits the cache.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$dest}
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cli=()
targets=(llama-bench llama-perplexity llama-completion llama-quantize)
if [ "${LLAMA_CLI:-0}" = 1 ]; then
    cli=(-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF)
    targets+=(llama-cli)
else
    cli=(-DLLAMA_BUILD_SERVER=OFF)
fi
# Static llama/ggml libraries (self-contained tools; libtakane_kernels.so is found through the
# build tree's RPATH, i.e. in the Python environment it was built against). GGML_NATIVE: tuned
# for this CPU, as a user building llama.cpp would (takane_kernels dispatches at run time).
cmake -S "$llama" -B "$dest/build" "${generator[@]}" -Wno-dev \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF "${cli[@]}" \
    -DGGML_CPU_TAKANE=ON -Dtakane_kernels_DIR="$cmake_dir" >"$dest/configure.log" ||
    { cat "$dest/configure.log" >&2; exit 1; }
cmake --build "$dest/build" -j "$jobs" --target "${targets[@]}"
mkdir -p "$dest/bin"
for t in "${targets[@]}"; do
    cp "$dest/build/bin/$t" "$dest/bin/$t"
done
"$dest/bin/llama-bench" --help >/dev/null # links and loads libtakane_kernels

# 4. Optionally the Python binding's wheel, from the same patched sdist tree.
if [ "$wheel" = 1 ]; then
    # libggml-cpu.so links libtakane_kernels.so from the Python environment: keep that
    # directory in the installed RPATH (CMAKE_INSTALL_RPATH_USE_LINK_PATH).
    CMAKE_ARGS="-DGGML_CPU_TAKANE=ON -Dtakane_kernels_DIR=$cmake_dir -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON" \
        CMAKE_BUILD_PARALLEL_LEVEL="$jobs" "$py" -m pip wheel --no-deps -w "$dest/wheel" "$sdist"
    ls "$dest/wheel"/llama_cpp_python-*.whl
fi

echo "llama.cpp with CPU_TAKANE: $dest/bin (stock path of the same binaries: -nr / --repack 0;" \
    "a separate stock build: bash bench/build_llamacpp.sh DEST2)"
