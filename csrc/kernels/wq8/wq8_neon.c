/*
 * wq8_neon.c — W1A8 microkernels for the neon kernel set: the portable kernel
 * (wq8_portable.h: int16 nibble tables, exact block sums) compiled for aarch64, where
 * Advanced SIMD is baseline.
 */
#define WQ8_NAME takane_q8_ukernel_neon
#include "wq8_portable.h"
