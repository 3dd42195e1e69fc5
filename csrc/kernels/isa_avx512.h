/*
 * isa_avx512.h — the one include for *_avx512.c files.
 *
 * Normal builds compile those files with -mavx512f -mavx512bw -mavx512vl
 * -mavx512vpopcntdq and use the real intrinsics. The test-only CMake option
 * TAKANE_AVX512_EMULATION compiles the same source against SIMDe's portable
 * implementations of the same intrinsics (Debian libsimde-dev), so the kernels' logic —
 * tiles, masks, tails — is checked against the oracle on machines without AVX-512.
 * It checks the code we wrote, not the silicon; real-hardware runs still matter.
 */
#ifndef TAKANE_ISA_AVX512_H
#define TAKANE_ISA_AVX512_H
#ifdef TAKANE_AVX512_EMULATION
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#else
#include <immintrin.h>
#endif
#endif
