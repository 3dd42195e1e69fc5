"""The order of the C entry points' argument checks (csrc/src/internal.h, validate.c).

Every entry point validates through one set of helpers in a fixed order: dimensions, then
threads, then strides, then modes (threshold length, activations, group size), and --
unless the problem is empty -- pointers, padding bits and values. When an argument
breaks two rules, the status is the earlier rule's; an empty problem never reads its
pointers. Each row below breaks one or two rules on purpose and names the status the
C ABI has always returned for it (takane.h), so a change of that order shows here.
"""

from __future__ import annotations

import numpy as np
import pytest

from takane_kernels._takane import ffi, lib

NULL = ffi.NULL
BIG_K = 2**31  # TAKANE_MAX_K + 1

_f = np.zeros(4096, np.float32)
_u = np.zeros(4096, np.uint64)
_b = np.zeros(1 << 16, np.uint8)
_i = np.zeros(4096, np.int32)
F = ffi.from_buffer("float[]", _f)
U = ffi.from_buffer("uint64_t[]", _u)
B = ffi.from_buffer("uint8_t[]", _b)
I32 = ffi.from_buffer("int32_t[]", _i)
FOUT = ffi.from_buffer("float[]", np.zeros(4096, np.float32))
UOUT = ffi.from_buffer("uint64_t[]", np.zeros(4096, np.uint64))
SCRATCH = ffi.from_buffer("uint8_t[]", np.zeros(1 << 22, np.uint8))


def handle(n: int, k: int):
    out = ffi.new("takane_weights **")
    assert lib.takane_weights_create(n, k, U, (k + 63) // 64, out) == lib.TAKANE_OK
    return ffi.gc(out[0], lib.takane_weights_free)


H = handle(3, 128)


def mm(m=2, n=3, k=65, x=U, xs=2, w=U, ws=2, y=I32, ys=3, threads=0):
    return lib.takane_binary_matmul(m, n, k, x, xs, w, ws, y, ys, threads)


def pack(rows=2, k=65, x=F, xs=65, t=NULL, tl=0, bits=UOUT, bs=2):
    return lib.takane_pack_f32(rows, k, x, xs, t, tl, bits, bs)


def mmp(h=H, m=2, x=U, xs=2, y=I32, ys=3, threads=0):
    return lib.takane_binary_matmul_prepacked(h, m, x, xs, y, ys, threads)


def lin_bits(m=2, n=65, k=64, ot=F, otl=1, y=UOUT, ys=2, threads=0):
    return lib.takane_binary_linear_bits(m, n, k, U, 1, U, 1, NULL, NULL, NULL, ot, otl, y, ys,
                                         threads)


def wmm_ex(m=2, n=3, k=128, ws=2, gs=NULL, g=0, act=lib.TAKANE_ACTIVATIONS_F32, y=FOUT, ys=3):
    return lib.takane_binary_weight_matmul_ex(m, n, k, F, 128, U, ws, NULL, NULL, gs, g, NULL,
                                              act, y, ys, 0)


def q8_rows(h=H, r0=0, r1=3, m=2, qs=136, ys=3, gs=NULL, g=0, y=FOUT):
    return lib.takane_matmul_q8_0_rows(h, r0, r1, m, B, qs, NULL, gs, g, NULL, y, ys, SCRATCH,
                                       1 << 22)


def q1_to_bits(n=2, k=128, qs=18, bs=2, gs=NULL, gss=0):
    return lib.takane_q1_0_to_bits(n, k, B, qs, UOUT, bs, gs, gss)


S = lib
CASES = {
    # dimensions first: negative before too large, both before threads and strides
    "mm negative m and k too large": (lambda: mm(m=-1, k=BIG_K), S.TAKANE_ERR_NEGATIVE_DIMENSION),
    "mm k too large and bad threads": (lambda: mm(k=BIG_K, threads=-1), S.TAKANE_ERR_K_TOO_LARGE),
    "mm bad threads and bad stride": (lambda: mm(threads=-1, ys=-1), S.TAKANE_ERR_BAD_THREADS),
    "mm output rows overlap": (lambda: mm(ys=2), S.TAKANE_ERR_BAD_STRIDE),
    "mm one output row, short stride": (lambda: mm(m=1, ys=0), S.TAKANE_OK),
    "mm input stride 0 (shared row)": (lambda: mm(xs=0), S.TAKANE_OK),
    "mm negative input stride and NULL y": (lambda: mm(ws=-1, y=NULL), S.TAKANE_ERR_BAD_STRIDE),
    "mm empty problem, NULL pointers": (lambda: mm(m=0, x=NULL, w=NULL, y=NULL), S.TAKANE_OK),
    "mm NULL y": (lambda: mm(y=NULL), S.TAKANE_ERR_NULL_POINTER),
    "mm k == 0, NULL x and w": (lambda: mm(k=0, x=NULL, w=NULL), S.TAKANE_OK),
    "pack threshold length before the empty check": (lambda: pack(rows=0, t=F, tl=2), S.TAKANE_ERR_BAD_THRESHOLD_LEN),
    "pack bits rows overlap": (lambda: pack(bs=1), S.TAKANE_ERR_BAD_STRIDE),
    "pack bad stride before threshold length": (lambda: pack(bs=1, t=F, tl=2), S.TAKANE_ERR_BAD_STRIDE),
    "prepacked NULL handle before negative m": (lambda: mmp(h=NULL, m=-1), S.TAKANE_ERR_NULL_POINTER),
    "prepacked negative m": (lambda: mmp(m=-1), S.TAKANE_ERR_NEGATIVE_DIMENSION),
    "prepacked bad threads before bad stride": (lambda: mmp(threads=-1, ys=1), S.TAKANE_ERR_BAD_THREADS),
    "prepacked empty batch, NULL x and y": (lambda: mmp(m=0, x=NULL, y=NULL), S.TAKANE_OK),
    "linear bits: output stride in words": (lambda: lin_bits(ys=1), S.TAKANE_ERR_BAD_STRIDE),
    "linear bits: NULL out_threshold": (lambda: lin_bits(ot=NULL), S.TAKANE_ERR_NULL_POINTER),
    "linear bits: out_threshold length": (lambda: lin_bits(otl=2), S.TAKANE_ERR_BAD_THRESHOLD_LEN),
    "linear bits: NULL y before out_threshold": (lambda: lin_bits(y=NULL, otl=2), S.TAKANE_ERR_NULL_POINTER),
    "ex: activations mode before the empty check": (lambda: wmm_ex(m=0, act=7), S.TAKANE_ERR_BAD_ACTIVATIONS),
    "ex: activations before the weight stride": (lambda: wmm_ex(act=7, ws=-1), S.TAKANE_ERR_BAD_ACTIVATIONS),
    "ex: group size not a multiple of 64": (lambda: wmm_ex(gs=F, g=32), S.TAKANE_ERR_BAD_GROUP_SIZE),
    "ex: group size without group scales": (lambda: wmm_ex(g=64), S.TAKANE_ERR_BAD_GROUP_SIZE),
    "ex: group size before the weight stride": (lambda: wmm_ex(g=64, ws=-1), S.TAKANE_ERR_BAD_GROUP_SIZE),
    "ex: weight stride": (lambda: wmm_ex(ws=-1), S.TAKANE_ERR_BAD_STRIDE),
    "q8 rows: NULL handle": (lambda: q8_rows(h=NULL, m=-1), S.TAKANE_ERR_NULL_POINTER),
    "q8 rows: negative m before the range": (lambda: q8_rows(m=-1, r1=9), S.TAKANE_ERR_NEGATIVE_DIMENSION),
    "q8 rows: negative r0": (lambda: q8_rows(r0=-1), S.TAKANE_ERR_NEGATIVE_DIMENSION),
    "q8 rows: range past n": (lambda: q8_rows(r1=4), S.TAKANE_ERR_BAD_STRIDE),
    "q8 rows: reversed range": (lambda: q8_rows(r0=2, r1=1), S.TAKANE_ERR_BAD_STRIDE),
    "q8 rows: Q8_0 rows overlap": (lambda: q8_rows(qs=135), S.TAKANE_ERR_BAD_STRIDE),
    "q8 rows: output rows overlap": (lambda: q8_rows(ys=2), S.TAKANE_ERR_BAD_STRIDE),
    "q8 rows: stride before group size": (lambda: q8_rows(ys=2, g=64), S.TAKANE_ERR_BAD_STRIDE),
    "q8 rows: group size": (lambda: q8_rows(g=64), S.TAKANE_ERR_BAD_GROUP_SIZE),
    "q8 rows: empty range, NULL y": (lambda: q8_rows(r0=1, r1=1, y=NULL), S.TAKANE_OK),
    "dequantize: rows overlap": (lambda: lib.takane_weights_dequantize_rows(H, 0, 2, FOUT, 127), S.TAKANE_ERR_BAD_STRIDE),
    "dequantize: one row, short stride": (lambda: lib.takane_weights_dequantize_rows(H, 0, 1, FOUT, 0), S.TAKANE_OK),
    "get bits: range past n": (lambda: lib.takane_weights_get_bits(H, 0, 4, UOUT, 2), S.TAKANE_ERR_BAD_STRIDE),
    "get bits: rows overlap": (lambda: lib.takane_weights_get_bits(H, 0, 2, UOUT, 1), S.TAKANE_ERR_BAD_STRIDE),
    "quantize q8_0: rows overlap": (lambda: lib.takane_quantize_q8_0(2, 64, F, 64, B, 67), S.TAKANE_ERR_BAD_STRIDE),
    "quantize q8_0: negative x stride": (lambda: lib.takane_quantize_q8_0(2, 64, F, -1, B, 68), S.TAKANE_ERR_BAD_STRIDE),
    "q1_0 to bits: k too large before block": (lambda: q1_to_bits(k=BIG_K + 1), S.TAKANE_ERR_K_TOO_LARGE),
    "q1_0 to bits: k not whole blocks": (lambda: q1_to_bits(k=64), S.TAKANE_ERR_BAD_GROUP_SIZE),
    "q1_0 to bits: negative scale stride": (lambda: q1_to_bits(gss=-1), S.TAKANE_ERR_BAD_STRIDE),
    "q1_0 to bits: bits rows overlap": (lambda: q1_to_bits(bs=1), S.TAKANE_ERR_BAD_STRIDE),
    "q1_0 to bits: scale rows overlap": (lambda: q1_to_bits(gs=FOUT, gss=0), S.TAKANE_ERR_BAD_STRIDE),
    "q1_0 to bits: no scales, stride unused": (lambda: q1_to_bits(gss=0), S.TAKANE_OK),
    "q1_0 size: negative n": (lambda: lib.takane_weights_q1_0_size(-1, 64, ffi.new("int64_t *")), S.TAKANE_ERR_NEGATIVE_DIMENSION),
    "from q1_0: Q1_0 rows overlap": (lambda: lib.takane_weights_from_q1_0(2, 128, B, 17, NULL, 0, ffi.new("takane_weights **")), S.TAKANE_ERR_BAD_STRIDE),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_status_and_check_order(case):
    call, want = CASES[case]
    got = call()
    assert got == want, f"{case}: {ffi.string(lib.takane_status_string(got)).decode()}"


def test_conv_threads_checked_after_geometry():
    g = ffi.new("takane_conv2d_geometry *")
    g.batch, g.in_h, g.in_w = 1, 4, 4
    g.stride_h = g.stride_w = g.dilation_h = g.dilation_w = 1
    out = ffi.new("takane_conv_weights **")
    assert lib.takane_conv_weights_create(16, 3, 3, 64, 1, U, out) == lib.TAKANE_OK
    h = ffi.gc(out[0], lib.takane_conv_weights_free)
    y = FOUT
    assert lib.takane_binary_conv2d(h, g, U, NULL, NULL, NULL, y, -1) == lib.TAKANE_ERR_BAD_THREADS
    g.stride_h = 0  # geometry first
    assert lib.takane_binary_conv2d(h, g, U, NULL, NULL, NULL, y, -1) == lib.TAKANE_ERR_BAD_GEOMETRY
    g.stride_h = 1
    assert lib.takane_binary_conv2d(h, g, U, NULL, NULL, NULL, y, 1) == lib.TAKANE_OK
    assert lib.takane_binary_max_pool2d(g, 64, 2, 2, U, UOUT, -1) == lib.TAKANE_ERR_BAD_THREADS
