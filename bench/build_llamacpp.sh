#!/usr/bin/env bash
# Build llama.cpp (CPU only, Release) as a benchmark PEER — never a dependency, never in the
# default CI run. Source: the llama-cpp-python sdist on PyPI, which vendors llama.cpp (there is no
# llama.cpp binary on PyPI). Builds llama-bench, test-backend-ops, llama-quantize and our own
# bench/llamacpp_q1_matmul.c (times ggml's Q1_0 x Q8_0 matmuls of an LLM stack; our code, linked
# against ggml) into DEST/bin. Takes ~10-20 min on 2 shared cores.
#
#   bash bench/build_llamacpp.sh [DEST]          (default DEST: build/llamacpp)
#   export TAKANE_LLAMA_CPP=DEST                  (how bench/ and `python -m takane_kernels llm`
#                                                  find it; or their --llama-cpp option)
#
# While it builds, DEST/BUILDING exists (others wait for DEST/bin/llama-bench). Re-running is
# incremental: the download and configure steps are skipped when already done.
# LLAMA_CPP_PYTHON_VERSION pins the sdist (default below: the version the README numbers used).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=${1:-build/llamacpp}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
jobs=${JOBS:-$(nproc)}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
touch "$dest/BUILDING"
trap 'rm -f "$dest/BUILDING"' EXIT

src="$dest/src"
llama="$src/llama_cpp_python-$version/vendor/llama.cpp"
if [ ! -f "$llama/CMakeLists.txt" ]; then
    mkdir -p "$src"
    # --no-binary only for this package: with ":all:" pip would also compile the build
    # requirements (cmake itself, ~10 min) from source just to read the sdist's metadata.
    python3 -m pip download --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$version" -d "$src"
    tar xzf "$src/llama_cpp_python-$version.tar.gz" -C "$src"
fi

generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
if [ ! -f "$dest/build/CMakeCache.txt" ]; then
    # Static libraries: the binaries in DEST/bin are self-contained and our program links the
    # .a files directly. GGML_NATIVE: tuned for this CPU, as a user building it would.
    cmake -S "$llama" -B "$dest/build" "${generator[@]}" \
        -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
        -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
        -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF
fi
cmake --build "$dest/build" -j "$jobs" --target llama-bench test-backend-ops llama-quantize

mkdir -p "$dest/bin"
for t in llama-bench test-backend-ops llama-quantize; do
    cp "$(find "$dest/build/bin" -maxdepth 1 -name "$t" -type f | head -1)" "$dest/bin/$t"
done

# Our timing program: ggml's CPU backend, Q1_0 weights x f32 activations (ggml quantizes them to
# Q8_0 inside the matmul, as in a real model), the same stack of shapes our `llm` program runs.
libs=()
for l in ggml ggml-cpu ggml-base; do
    libs+=("$(find "$dest/build" -name "lib$l.a" | head -1)")
done
cc -O2 -std=c11 -o "$dest/bin/takane-ggml-q1-matmul" "$here/llamacpp_q1_matmul.c" \
    -I"$llama/ggml/include" "${libs[@]}" -fopenmp -lstdc++ -lm -lpthread
echo "llama.cpp peer ready: export TAKANE_LLAMA_CPP=$dest"
