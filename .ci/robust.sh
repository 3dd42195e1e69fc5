#!/usr/bin/env bash
# Robustness jobs (issue #7), run by .ci/run as three steps; each fails on any report.
#   bash .ci/robust.sh asan              C core + cffi extension built with
#        -fsanitize=address,undefined -fno-sanitize-recover=undefined, the WHOLE test
#        suite with the ASan runtime preloaded (DESIGN §7). Zero reports is checked
#        mechanically: the extension must contain ASan instrumentation, pytest must exit
#        0 (UBSan aborts on its first report), and the log must hold no sanitizer report.
#   bash .ci/robust.sh valgrind          memcheck on the plain build (.venv), scalar and
#        AVX2 kernels (valgrind 3.19 has no AVX-512 and hides it from CPUID, so the
#        library picks avx2 by itself), suppressions limited to CPython / ld.so frames
#        (tests/valgrind-python.supp), --error-exitcode and a grep of the per-process
#        logs. Subset (valgrind is ~30-50x slower): see VALGRIND_TESTS below.
#   bash .ci/robust.sh fuzz [SECONDS]    libFuzzer target for the raw packed-array C
#        entry points (clang, ASan+UBSan) and the atheris targets for PackedWeights.load
#        and takane_kernels.gguf.load,
#        SECONDS each (default 15; ~1 min in all with the clang build), after replaying
#        saved crash inputs. Prints executions. Longer local runs: bash .ci/robust.sh fuzz 600
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Valgrind subset, both ISAs each (~2.5 min on a loaded 2-core machine): the hostile
# inputs, the packed bit format, W1A-float and binary_linear on their tile-edge grids
# (float output; the binarized-output grid is left to the asan job), 8 threads x every
# op, fork() (mid-flight on avx2), and the property tests (hypothesis "emulated"
# profile). Left out: tests that stream 2**31-bit rows or 2**32-element products, the
# big thread-split shapes (minutes under valgrind; the asan job runs them), and timing
# or subprocess-spawning tests (meaningless / not followed under valgrind).
VALGRIND_TESTS=(tests/test_hostile.py tests/test_bitformat.py tests/test_linear.py
  tests/test_f32.py tests/test_threads.py tests/test_properties.py tests/test_conv.py
  tests/test_conv_errors.py tests/test_byot.py)
VALGRIND_DESELECT="not test_k_at_max_exact and not test_dimension_products_past_32_bits"
VALGRIND_DESELECT+=" and not test_threads_and_blocks_match_reference and not test_bits_output_grid_exact"
VALGRIND_DESELECT+=" and not test_num_threads_env_and_default and not test_peak_probe"
VALGRIND_DESELECT+=" and not test_geometry_grid_exact and not test_big_enough_to_thread_and_split_columns"
VALGRIND_DESELECT+=" and not (test_fork_while_parent_threads_are_busy and scalar)"

apt_need() { # install Debian packages for missing commands/files: "cmd-or-path:package" ...
  local need=()
  for spec in "$@"; do
    local what=${spec%%:*} pkg=${spec##*:}
    if [[ $what == /* ]]; then [ -e "$what" ] || need+=("$pkg"); else command -v "$what" >/dev/null || need+=("$pkg"); fi
  done
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

venv() { # the plain build of the README test command (.ci/run step 1), made if missing
  [ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q ".[test]"; }
}

case "${1:-}" in
asan)
  python3 -m venv .venv-asan
  san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  # Every kernel set must run under the sanitizers: on a CPU without AVX-512 the avx512
  # kernels are compiled against SIMDe (as in the emulated step) so they run too.
  emu=()
  if ! grep -qw avx512_vpopcntdq /proc/cpuinfo || [ -n "${TAKANE_ASAN_EMULATE_AVX512:-}" ]; then
    apt_need /usr/include/simde/x86/avx512.h:libsimde-dev
    emu=(-C cmake.define.TAKANE_AVX512_EMULATION=ON); echo "asan: avx512 kernels emulated with SIMDe"
  fi
  # .[test] only: no PyTorch under ASan (the training tests run natively in .ci/run step 1)
  .venv-asan/bin/pip install -q ".[test]" -C build-dir=build/asan "${emu[@]}" -C cmake.build-type=RelWithDebInfo \
    -C "cmake.define.CMAKE_C_FLAGS=$san" \
    -C "cmake.define.CMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined" \
    -C "cmake.define.CMAKE_MODULE_LINKER_FLAGS=-fsanitize=address,undefined"
  ext=$(.venv-asan/bin/python -c "import importlib.util as u; print(u.find_spec('takane_kernels._takane').origin)" 2>/dev/null || true)
  [ -n "$ext" ] || ext=$(ls .venv-asan/lib/python3*/site-packages/takane_kernels/_takane*.so)
  mkdir -p build/asan
  nm "$ext" > build/asan/ext-symbols.txt  # (not piped into grep -q: SIGPIPE + pipefail)
  grep -q __asan_report_load8 build/asan/ext-symbols.txt || { echo "$ext is not ASan-instrumented"; exit 1; }
  grep -q __ubsan_handle build/asan/ext-symbols.txt || { echo "$ext is not UBSan-instrumented"; exit 1; }
  log=build/asan/pytest.log
  # allocator_may_return_null: tests ask for impossible sizes (2**61 bytes) on purpose and
  # expect TAKANE_ERR_OUT_OF_MEMORY / ValueError from a NULL malloc, not an ASan abort.
  # Leak checking is off: CPython itself does not free everything at exit.
  # libstdc++ is preloaded with the runtime: otherwise ASan's __cxa_throw interceptor finds
  # no real __cxa_throw and aborts the first C++ exception thrown by an extension
  # (matplotlib's ft2font, imported by the demo test). Reports also go to files
  # (log_path): pytest's fd capture would swallow them when the process aborts.
  rm -f build/asan/report.*
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)" \
    ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:log_path=$PWD/build/asan/report \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$PWD/build/asan/report \
    .venv-asan/bin/python -m pytest tests -q -p no:cacheprovider 2>&1 | tee "$log"
  # (the report files also hold the expected "failed to allocate" warnings of the
  # impossible-size tests: only errors count)
  if grep -nE "ERROR: AddressSanitizer|runtime error:|UndefinedBehaviorSanitizer|ERROR: LeakSanitizer" \
      "$log" build/asan/report.* 2>/dev/null; then
    echo "sanitizer reports found (above)"; exit 1
  fi
  LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 .venv-asan/bin/python -c \
    "import takane_kernels as tk; print('asan: kernel sets tested:', tk.isa.supported())"
  echo "asan+ubsan: whole suite passed, 0 sanitizer reports"
  ;;
valgrind)
  apt_need valgrind:valgrind
  venv
  rm -rf build/valgrind && mkdir -p build/valgrind
  start=$SECONDS
  rc=0
  # --fair-sched=yes: valgrind runs one thread at a time, and the pool's workers spin
  # briefly (threads.c) before sleeping; with the default scheduler a spinning thread
  # keeps the CPU for whole timeslices and the 8-thread tests crawl.
  # TAKANE_HUGE_SLABS=0: every weight handle a malloc block of its own (csrc/src/alloc.c),
  # so memcheck sees each one's bounds (inside a slab an overrun reads a neighbour).
  TAKANE_HUGE_SLABS=0 PYTHONMALLOC=malloc TAKANE_ISA=avx2 TAKANE_TEST_ISAS=avx2,scalar HYPOTHESIS_PROFILE=emulated \
    valgrind --suppressions=tests/valgrind-python.supp --error-exitcode=99 --num-callers=30 \
    --fair-sched=yes --log-file=build/valgrind/memcheck.%p.log \
    .venv/bin/python -m pytest "${VALGRIND_TESTS[@]}" -k "$VALGRIND_DESELECT" -q -p no:cacheprovider \
    --durations=12 || rc=$?
  echo "valgrind: $((SECONDS - start)) s, pytest/valgrind exit status $rc"
  # Every process valgrind followed wrote a log: the interpreter (exit status above),
  # forked workers, and forks that exec'd a program (not followed past the exec). Any
  # error report in any of them fails the step, as does a non-zero error summary.
  errors='ERROR SUMMARY: [1-9]|Invalid (read|write|free)|uninitialised|Conditional jump|Mismatched free|Syscall param|overlap|terminating with default action of signal (4|6|7|8|11) '
  bad=$(grep -lE "$errors" build/valgrind/memcheck.*.log || true)
  if [ "$rc" -ne 0 ] || [ -n "$bad" ]; then
    for f in $bad; do echo "== $f"; cat "$f"; done
    echo "valgrind: errors reported or tests failed"; exit 1
  fi
  echo "valgrind: 0 errors in $(grep -l 'ERROR SUMMARY: 0 errors' build/valgrind/memcheck.*.log | wc -l) processes" \
    "that ran to exit, $(grep -hoE 'suppressed: [0-9]+' build/valgrind/memcheck.*.log | awk '{s+=$2} END {print s+0}') suppressed (CPython/ld.so)"
  ;;
fuzz)
  secs=${2:-15}
  apt_need clang:clang /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a:libclang-rt-14-dev
  venv
  .venv/bin/pip install -q atheris
  CC=clang cmake -S tests/fuzz -B build/fuzz -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build/fuzz -j2 >/dev/null
  mkdir -p build/fuzz/packed-corpus build/fuzz/load-corpus build/fuzz/gguf-corpus build/fuzz/ternary-corpus
  # saved C crash inputs first: each must now pass (libFuzzer runs file arguments once);
  # the load target's (tests/fuzz/load_regressions/) are replayed by the test suite
  for f in tests/fuzz/packed_regressions/*; do
    if [ -e "$f" ]; then build/fuzz/fuzz_packed "$f"; fi
  done
  for f in tests/fuzz/ternary_regressions/*; do
    if [ -e "$f" ]; then build/fuzz/fuzz_ternary "$f"; fi
  done
  .venv/bin/python tests/fuzz/fuzz_load.py --make-seeds build/fuzz/load-corpus >/dev/null
  .venv/bin/python tests/fuzz/fuzz_gguf.py --make-seeds build/fuzz/gguf-corpus >/dev/null
  (cd build/fuzz && ./fuzz_packed -max_total_time="$secs" -print_final_stats=1 packed-corpus 2>&1 |
    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)|^Done|ERROR|check failed")
  (cd build/fuzz && ./fuzz_ternary -max_total_time="$secs" -print_final_stats=1 ternary-corpus 2>&1 |
    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)|^Done|ERROR|check failed")
  (cd build/fuzz && ../../.venv/bin/python ../../tests/fuzz/fuzz_load.py -max_total_time="$secs" \
    -print_final_stats=1 load-corpus 2>&1 |
    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)|^Done|ERROR|Error|Traceback")
  (cd build/fuzz && ../../.venv/bin/python ../../tests/fuzz/fuzz_gguf.py -max_total_time="$secs" \
    -print_final_stats=1 gguf-corpus 2>&1 |
    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)|^Done|ERROR|Error|Traceback")
  if ls build/fuzz/crash-* build/fuzz/timeout-* build/fuzz/oom-* 2>/dev/null; then
    echo "fuzz: crash inputs above (copy them to tests/fuzz/*_regressions/ with a fix)"; exit 1
  fi
  echo "fuzz: no crashes ($secs s per target)"
  ;;
*)
  echo "usage: $0 asan|valgrind|fuzz [seconds]" >&2; exit 2 ;;
esac
