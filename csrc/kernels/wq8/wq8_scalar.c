/*
 * wq8_scalar.c — portable W1A8 microkernels (runs on any target): see wq8_portable.h.
 * ISA and flags: baseline only.
 */
#define WQ8_NAME takane_q8_ukernel_scalar
#include "wq8_portable.h"
