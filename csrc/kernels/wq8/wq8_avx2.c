/*
 * wq8_avx2.c — W1A8 microkernels for the avx2 kernel set: the portable kernel
 * (wq8_portable.h: int16 nibble tables, exact block sums) compiled with the AVX2 flags.
 * ISA and flags: AVX2 + FMA + POPCNT (the flags of every *_avx2.c file).
 */
#define WQ8_NAME takane_q8_ukernel_avx2
#include "wq8_portable.h"
