"""The "bring your own threads" C entry points (takane.h, last section), called through cffi.

They are for C embedders (llama.cpp's ggml buffer type is the first); the tests drive them
the way a runtime's worker threads would: quantize activations into llama.cpp's block_q8_0
rows, build a handle from Q1_0 bytes (in library or caller memory), compute output-column
ranges with caller scratch, and compare with the numpy oracle on every ISA.

The Q8_0 check is against an independent numpy transcription of llama.cpp's
quantize_row_q8_0_ref (written here from its arithmetic), byte for byte.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._capi import grouped_weights_handle, handle_group_scales, weights_handle
from takane_kernels._takane import ffi, lib

from conftest import assert_ran

Q8_BYTES = 34


def ggml_quantize_q8_0_ref(x: np.ndarray) -> np.ndarray:
    """(rows, K) float32 -> (rows, ceil(K/32) * 34) uint8: block_q8_0 as llama.cpp's
    quantize_row_q8_0_ref writes it (zero-padded last block): d = amax / 127, id = 1/d or 0,
    q = roundf(x * id) (float32 product, ties away from zero), d stored as fp16 (RNE)."""
    rows, k = x.shape
    nb = -(-k // 32)
    xp = np.zeros((rows, nb * 32), np.float32)
    xp[:, :k] = x
    blocks = xp.reshape(rows, nb, 32)
    amax = np.abs(blocks).max(axis=-1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        idv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
        v = (blocks * idv[..., None]).astype(np.float32).astype(np.float64)
    v = np.where(np.isfinite(v), v, 0.0)  # undefined in C (inf -> int8); d is fp16 0 there
    q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)
    out = np.zeros((rows, nb, Q8_BYTES), np.uint8)
    out[:, :, :2] = d.astype("<f2").view(np.uint8).reshape(rows, nb, 2)
    out[:, :, 2:] = q.view(np.uint8)
    return out.reshape(rows, nb * Q8_BYTES)


def quantize(x: np.ndarray) -> tuple[np.ndarray, int]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, k = x.shape
    nb = -(-k // 32)
    q = np.full((rows, nb * Q8_BYTES), 0xAB, np.uint8)  # poison: every byte must be written
    st = lib.takane_quantize_q8_0(rows, k, ffi.from_buffer("float[]", x), k,
                                  ffi.from_buffer("uint8_t[]", q), nb * Q8_BYTES)
    return q, st


def q1_0_handle(q1: np.ndarray, n: int, k: int, caller_memory: bool):
    """A handle from Q1_0 rows; with caller_memory, inside a 64-aligned numpy buffer that
    the returned tuple keeps alive."""
    size = ffi.new("int64_t *")
    assert lib.takane_weights_q1_0_size(n, k, size) == lib.TAKANE_OK
    out = ffi.new("takane_weights **")
    if caller_memory:
        raw = np.zeros(size[0] + 64, np.uint8)
        off = (-raw.ctypes.data) % 64
        mem = raw[off:off + size[0]]
        st = lib.takane_weights_from_q1_0(n, k, ffi.from_buffer("uint8_t[]", q1), q1.shape[1],
                                          ffi.from_buffer("uint8_t[]", mem), size[0], out)
        assert st == lib.TAKANE_OK
        assert int(ffi.cast("uintptr_t", out[0])) == mem.ctypes.data  # the handle is the memory
        return out[0], (raw, mem), size[0]
    st = lib.takane_weights_from_q1_0(n, k, ffi.from_buffer("uint8_t[]", q1), q1.shape[1],
                                      ffi.NULL, 0, out)
    assert st == lib.TAKANE_OK
    return ffi.gc(out[0], lib.takane_weights_free), None, size[0]


def rows_product(h, n, qa, m, r0, r1, y, scratch=None, scale=None, bias=None, group_scale=None,
                 group_size=0):
    need = lib.takane_matmul_q8_0_scratch_size(h, m)
    if scratch is None:
        scratch = np.zeros(max(need, 1), np.uint8)
    f = lambda a: ffi.NULL if a is None else ffi.from_buffer("float[]", a)  # noqa: E731
    return lib.takane_matmul_q8_0_rows(h, r0, r1, m, ffi.from_buffer("uint8_t[]", qa),
                                       qa.shape[1] if qa.ndim == 2 else 0, f(scale),
                                       f(group_scale), group_size, f(bias),
                                       ffi.from_buffer("float[]", y), n,
                                       ffi.from_buffer("uint8_t[]", scratch), scratch.nbytes)


def random_q1_0(rng, n, k):
    w = tk.pack_weights(rng.standard_normal((n, k)).astype(np.float32), group_size=128)
    return w, tk.to_q1_0(w)


# ---- quantizer ---------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 31, 32, 33, 64, 100, 128, 4096])
def test_quantize_matches_llamacpp_reference(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((5, k)).astype(np.float32) * np.float32(3)
    x[1] = 0                                             # all-zero blocks: d = 0, q = 0
    x[2] *= np.float32(1e-7)                             # d an fp16 subnormal (or 0), id finite
    x[3] = np.round(x[3] * 4) / 4                        # exact halves: roundf ties
    x[4] *= np.float32(1e5)                              # large but finite scales
    q, st = quantize(x)
    assert st == lib.TAKANE_OK
    np.testing.assert_array_equal(q, ggml_quantize_q8_0_ref(x))


def test_quantize_ties_and_tiny_blocks():
    # a block whose products hit exact .5 ties: amax 127 -> id = 1, x = k + 0.5
    x = np.zeros((3, 32), np.float32)
    x[0, 0] = 127
    x[0, 1:] = np.arange(31) - 15 + 0.5
    x[1, :] = 1e-40                                       # subnormal float32: id overflows to inf
    x[2, 0], x[2, 1] = 3e-8, -1e-8                        # fp16(d) == 0 but id finite: q kept
    q, st = quantize(x)
    assert st == lib.TAKANE_OK
    np.testing.assert_array_equal(q, ggml_quantize_q8_0_ref(x))
    assert q[1, 2:].max() == 0 and q[2, 2:].view(np.int8)[0] == 127


def test_quantize_reports_nan_and_inf_after_writing_every_block():
    x = np.ones((2, 64), np.float32)
    x[0, 40] = np.nan
    x[1, 3] = np.inf
    q, st = quantize(x[:1])
    assert st == lib.TAKANE_ERR_NAN
    assert (q[0, 34 + 2:].view(np.int8) == 0).all()      # the NaN block: q = 0
    np.testing.assert_array_equal(q[0, :34], ggml_quantize_q8_0_ref(x[:1, :32])[0])
    q, st = quantize(x[1:])
    assert st == lib.TAKANE_ERR_NOT_FINITE
    np.testing.assert_array_equal(q[0, 34:], ggml_quantize_q8_0_ref(x[1:, 32:])[0])


def test_quantize_argument_errors():
    x = np.zeros((2, 64), np.float32)
    q = np.zeros((2, 68), np.uint8)
    fx, fq = ffi.from_buffer("float[]", x), ffi.from_buffer("uint8_t[]", q)
    assert lib.takane_quantize_q8_0(-1, 64, fx, 64, fq, 68) == lib.TAKANE_ERR_NEGATIVE_DIMENSION
    assert lib.takane_quantize_q8_0(2, 64, fx, 64, fq, 67) == lib.TAKANE_ERR_BAD_STRIDE
    assert lib.takane_quantize_q8_0(2, 64, ffi.NULL, 64, fq, 68) == lib.TAKANE_ERR_NULL_POINTER
    assert lib.takane_quantize_q8_0(0, 64, ffi.NULL, 64, ffi.NULL, 68) == lib.TAKANE_OK


# ---- handles from Q1_0 -------------------------------------------------------------------

@pytest.mark.parametrize("caller_memory", [False, True], ids=["library", "caller"])
@pytest.mark.parametrize("n,k", [(1, 128), (7, 256), (8, 128), (33, 384), (20, 2048)])
def test_q1_0_handle_holds_the_q1_0_weights(n, k, caller_memory):
    rng = np.random.default_rng(n * k)
    w, q1 = random_q1_0(rng, n, k)
    h, keep, size = q1_0_handle(q1, n, k, caller_memory)
    info = [ffi.new("int64_t *") for _ in range(3)]
    assert lib.takane_weights_info(h, *info) == lib.TAKANE_OK
    assert (info[0][0], info[1][0]) == (n, k)
    panels = -(-n // 8) * 8 * k // 8                      # rows padded to whole panels of 8
    # signs + float32 block scales, kept panel-major (the kernels' lane order) for whole
    # panels of rows too (the padding rows' scales are 0)
    assert info[2][0] == panels + -(-n // 8) * 8 * (k // 128) * 4
    assert info[2][0] <= size <= info[2][0] + 64 + 128      # + the header and alignment
    y = np.full((n, k), np.nan, np.float32)
    assert lib.takane_weights_dequantize_rows(h, 0, n, ffi.from_buffer("float[]", y), k) == lib.TAKANE_OK
    back = tk.from_q1_0(q1, k)
    expect = ref.unpack_bits(back.bits, k, np.float32) * np.repeat(back.group_scale, 128, axis=1)
    np.testing.assert_array_equal(y, expect)
    if n > 2:                                              # a middle range, written at row 0
        y2 = np.zeros((2, k), np.float32)
        assert lib.takane_weights_dequantize_rows(h, 1, 3, ffi.from_buffer("float[]", y2), k) == 0
        np.testing.assert_array_equal(y2, expect[1:3])
    lib.takane_weights_free(h) if caller_memory else None  # frees nothing of caller memory
    if caller_memory:
        assert lib.takane_weights_dequantize_rows(h, 0, 1, ffi.from_buffer("float[]", y), k) == 0


def test_q1_0_handle_errors():
    out = ffi.new("takane_weights **")
    size = ffi.new("int64_t *")
    assert lib.takane_weights_q1_0_size(4, 100, size) == lib.TAKANE_ERR_BAD_GROUP_SIZE
    q1 = np.zeros((2, 18), np.uint8)
    q1[1, 1] = 0x7C                                       # d = fp16 infinity
    fq = ffi.from_buffer("uint8_t[]", q1)
    assert lib.takane_weights_from_q1_0(2, 128, fq, 18, ffi.NULL, 0, out) == lib.TAKANE_ERR_NOT_FINITE
    assert out[0] == ffi.NULL
    assert lib.takane_weights_from_q1_0(2, 128, fq, 17, ffi.NULL, 0, out) == lib.TAKANE_ERR_BAD_STRIDE
    assert lib.takane_weights_q1_0_size(2, 128, size) == lib.TAKANE_OK
    mem = np.zeros(size[0] + 128, np.uint8)
    off = (-mem.ctypes.data) % 64
    q1[1, 1] = 0
    small = ffi.from_buffer("uint8_t[]", mem[off:])
    assert lib.takane_weights_from_q1_0(2, 128, fq, 18, small, size[0] - 1, out) == lib.TAKANE_ERR_BAD_STRIDE
    odd = ffi.from_buffer("uint8_t[]", mem[off + 8:])     # not 64-byte aligned
    assert lib.takane_weights_from_q1_0(2, 128, fq, 18, odd, size[0], out) == lib.TAKANE_ERR_BAD_STRIDE
    assert lib.takane_weights_from_q1_0(2, 128, fq, 18, small, size[0], out) == lib.TAKANE_OK


# ---- the row-range product -----------------------------------------------------------------

def splits(n, parts):
    """Unaligned and aligned cuts of [0, n), including empty ranges."""
    cuts = sorted({0, n, *[(n * i) // parts for i in range(parts)], min(n, 3), min(n, 8)})
    return list(zip(cuts[:-1], cuts[1:])) + [(n // 2, n // 2)]


@pytest.mark.parametrize("m", [1, 2, 3, 5, 16, 17, 33])
@pytest.mark.parametrize("n,k", [(1, 128), (9, 256), (40, 384), (67, 1024)])
def test_rows_match_reference_and_library(on_isa, m, n, k):
    rng = np.random.default_rng(1000 * m + n + k)
    w, q1 = random_q1_0(rng, n, k)
    wq = tk.from_q1_0(q1, k)                              # the same weights as PackedWeights
    h, keep, _ = q1_0_handle(q1, n, k, caller_memory=m % 2 == 1)
    x = rng.standard_normal((m, k)).astype(np.float32)
    qa, st = quantize(x)
    assert st == lib.TAKANE_OK
    scale = rng.uniform(0.5, 2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = np.full((m, n), np.nan, np.float32)
    for r0, r1 in splits(n, 3):                           # threads' shares, any order
        assert rows_product(h, n, qa, m, r0, r1, y, scale=scale, bias=bias) == lib.TAKANE_OK
        assert_ran(on_isa)
    assert not np.isnan(y).any()
    wq_scaled = tk.PackedWeights(wq.bits, k, scale=scale, group_scale=wq.group_scale, group_size=128)
    exact = ref.binary_weight_matmul(x, wq_scaled, bias=bias, activations="q8_0")
    bound = ref.binary_weight_matmul_error_bound(x, wq_scaled, bias=bias, activations="q8_0")
    assert (np.abs(y - exact) <= bound).all()
    # the library's own threaded path computes the same columns with the same kernel
    lib_y = tk.binary_weight_matmul(x, wq_scaled, bias=bias, activations="q8_0", threads=1)
    np.testing.assert_array_equal(y, lib_y)


@pytest.mark.parametrize("k", [65, 100, 200])
def test_rows_with_a_canonical_handle_and_explicit_group_scales(on_isa, k):
    # a handle from canonical bits (any k, a zero block pads the row to whole words)
    rng = np.random.default_rng(k)
    n, m = 19, 3
    w = tk.pack_weights(rng.standard_normal((n, k)), group_size=64)
    h = weights_handle(w.bits, k)  # no scales of its own (takane_weights_create)
    x = rng.standard_normal((m, k)).astype(np.float32)
    qa, st = quantize(x)
    assert st == lib.TAKANE_OK
    y = np.zeros((m, n), np.float32)
    gs = np.ascontiguousarray(w.group_scale, np.float32)
    assert rows_product(h, n, qa, m, 0, n, y, group_scale=gs, group_size=64) == lib.TAKANE_OK
    assert_ran(on_isa)
    exact = ref.binary_weight_matmul(x, w, activations="q8_0")
    assert (np.abs(y - exact) <= ref.binary_weight_matmul_error_bound(x, w, activations="q8_0")).all()
    # the PackedWeights' own handle carries the same scales (takane_weights_create_grouped):
    # the same bits with none passed, and a call's own scales refused
    carried = w._prepacked()
    y2 = np.full((m, n), np.nan, np.float32)
    assert rows_product(carried, n, qa, m, 0, 8, y2) == lib.TAKANE_OK
    assert rows_product(carried, n, qa, m, 8, n, y2) == lib.TAKANE_OK
    assert_ran(on_isa)
    np.testing.assert_array_equal(y2.view(np.uint32), y.view(np.uint32))
    assert rows_product(carried, n, qa, m, 0, n, y2, group_scale=gs, group_size=64) == lib.TAKANE_ERR_BAD_GROUP_SIZE


def test_rows_errors(on_isa):
    rng = np.random.default_rng(5)
    n, k, m = 16, 256, 2
    _, q1 = random_q1_0(rng, n, k)
    h, keep, _ = q1_0_handle(q1, n, k, caller_memory=False)
    qa, _ = quantize(rng.standard_normal((m, k)).astype(np.float32))
    y = np.zeros((m, n), np.float32)
    need = lib.takane_matmul_q8_0_scratch_size(h, m)
    assert need > 0 and lib.takane_matmul_q8_0_scratch_size(h, 0) == 0
    small = np.zeros(need - 1, np.uint8)
    assert rows_product(h, n, qa, m, 0, n, y, scratch=small) == lib.TAKANE_ERR_OUT_OF_MEMORY
    assert rows_product(h, n, qa, m, 4, 2, y) == lib.TAKANE_ERR_BAD_STRIDE
    assert rows_product(h, n, qa, m, 0, n + 1, y) == lib.TAKANE_ERR_BAD_STRIDE
    assert rows_product(h, n, qa, m, -1, 2, y) == lib.TAKANE_ERR_NEGATIVE_DIMENSION
    gs = np.ones((n, 2), np.float32)                      # the handle carries its own scales
    assert rows_product(h, n, qa, m, 0, n, y, group_scale=gs, group_size=128) == lib.TAKANE_ERR_BAD_GROUP_SIZE
    assert rows_product(h, n, qa, 0, 0, n, y) == lib.TAKANE_OK
    # a NaN block scale in the handle is reported
    q1[3, 0:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
    out = ffi.new("takane_weights **")
    assert lib.takane_weights_from_q1_0(n, k, ffi.from_buffer("uint8_t[]", q1), q1.shape[1],
                                        ffi.NULL, 0, out) == lib.TAKANE_ERR_NOT_FINITE


@pytest.mark.parametrize("n", [24, 5, 21, 37])  # the handle's scales are panel-major: whole,
def test_prepacked_entry_points_apply_a_q1_0_handles_scales(on_isa, n):  # padded, lone panels
    rng = np.random.default_rng(9 + n)
    k, m = 512, 3
    w, q1 = random_q1_0(rng, n, k)
    wq = tk.from_q1_0(q1, k)
    h, keep, _ = q1_0_handle(q1, n, k, caller_memory=False)
    x = rng.standard_normal((m, k)).astype(np.float32)
    fx = ffi.from_buffer("float[]", x)
    for mode, name in ((lib.TAKANE_ACTIVATIONS_Q8_0, "q8_0"), (lib.TAKANE_ACTIVATIONS_F32, "float32")):
        y = np.zeros((m, n), np.float32)
        st = lib.takane_binary_weight_matmul_prepacked_ex(h, m, fx, k, ffi.NULL, ffi.NULL, ffi.NULL, 0,
                                                          ffi.NULL, mode, ffi.from_buffer("float[]", y), n, 1)
        assert st == lib.TAKANE_OK
        assert_ran(on_isa)
        exact = ref.binary_weight_matmul(x, wq, activations=name)
        assert (np.abs(y - exact) <= ref.binary_weight_matmul_error_bound(x, wq, activations=name)).all()
    gs = np.ones((n, 4), np.float32)
    st = lib.takane_binary_weight_matmul_prepacked_ex(h, m, fx, k, ffi.NULL, ffi.NULL,
                                                      ffi.from_buffer("float[]", gs), 128, ffi.NULL,
                                                      lib.TAKANE_ACTIVATIONS_Q8_0,
                                                      ffi.from_buffer("float[]", y), n, 1)
    assert st == lib.TAKANE_ERR_BAD_GROUP_SIZE
    y = np.zeros((m, n), np.float32)
    st = lib.takane_binary_weight_matmul_prepacked(h, m, fx, k, ffi.NULL, ffi.NULL, ffi.NULL,
                                                   ffi.from_buffer("float[]", y), n, 1)
    assert st == lib.TAKANE_OK
    exact = ref.binary_weight_matmul(x, wq)
    assert (np.abs(y - exact) <= ref.binary_weight_matmul_error_bound(x, wq)).all()


def test_rows_from_concurrent_threads(on_isa):
    """Worker threads (cffi releases the GIL) each own a column range and a scratch."""
    rng = np.random.default_rng(11)
    n, k, m = 203, 1024, 4
    _, q1 = random_q1_0(rng, n, k)
    h, keep, _ = q1_0_handle(q1, n, k, caller_memory=True)
    qa, _ = quantize(rng.standard_normal((m, k)).astype(np.float32))
    expect = np.zeros((m, n), np.float32)
    assert rows_product(h, n, qa, m, 0, n, expect) == lib.TAKANE_OK
    y = np.full((m, n), np.nan, np.float32)
    shares = [(0, 64), (64, 120), (120, 200), (200, 203)]
    results = []

    def work(r0, r1):
        for _ in range(20):
            results.append(rows_product(h, n, qa, m, r0, r1, y))

    threads = [threading.Thread(target=work, args=s) for s in shares]
    with tk.isa.force(on_isa):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [lib.TAKANE_OK] * 80
    np.testing.assert_array_equal(y, expect)


@pytest.mark.parametrize("n,k", [(1, 1), (9, 65), (33, 384)])
def test_get_bits_returns_the_canonical_rows(n, k):
    rng = np.random.default_rng(n + k)
    w = tk.pack_weights(rng.standard_normal((n, k)))
    h = w._prepacked()
    kw = -(-k // 64)
    out = np.full((n, kw), 0xFFFF, np.uint64)
    assert lib.takane_weights_get_bits(h, 0, n, ffi.from_buffer("uint64_t[]", out), kw) == lib.TAKANE_OK
    np.testing.assert_array_equal(out, w.bits)
    if n > 2:
        part = np.zeros((2, kw), np.uint64)
        assert lib.takane_weights_get_bits(h, 1, 3, ffi.from_buffer("uint64_t[]", part), kw) == 0
        np.testing.assert_array_equal(part, w.bits[1:3])
    assert lib.takane_weights_get_bits(h, 0, n + 1, ffi.from_buffer("uint64_t[]", out), kw) == lib.TAKANE_ERR_BAD_STRIDE
    if n > 1:
        assert lib.takane_weights_get_bits(h, 0, n, ffi.from_buffer("uint64_t[]", out), kw - 1) == lib.TAKANE_ERR_BAD_STRIDE


def get_group_scales(h, r0, r1, out, stride):
    return lib.takane_weights_get_group_scales(h, r0, r1, ffi.NULL if out is None else ffi.from_buffer("float[]", out),
                                               stride)


@pytest.mark.parametrize("n,k,g", [(1, 1, 64), (9, 65, 64), (8, 200, 128), (33, 384, 192), (17, 1100, 256)])
def test_get_group_scales_returns_the_carried_scales(n, k, g):
    """takane_weights_get_group_scales gives back the row-major scales a grouped handle was
    built from, bit for bit (a -0, a subnormal), for the whole range and sub-ranges at a
    padded stride whose padding it leaves alone."""
    rng = np.random.default_rng(n * k + g)
    bits = tk.pack_weights(rng.standard_normal((n, k))).bits
    ng = -(-k // g)
    gs = rng.standard_normal((n, ng)).astype(np.float32)
    gs.flat[0] = -0.0
    gs.flat[-1] = np.float32(1e-42)
    h = grouped_weights_handle(bits, k, gs, g)
    back = handle_group_scales(h, n, ng)
    assert back.dtype == np.float32 and back.shape == (n, ng) and not back.flags.writeable
    np.testing.assert_array_equal(back.view(np.uint32), gs.view(np.uint32))
    for r0, r1 in [(0, n), (n // 2, n), (n - 1, n), (0, min(n, 8))]:
        out = np.full((r1 - r0, ng + 3), 99.0, np.float32)
        assert get_group_scales(h, r0, r1, out, ng + 3) == lib.TAKANE_OK
        np.testing.assert_array_equal(out[:, :ng].view(np.uint32), gs[r0:r1].view(np.uint32))
        assert (out[:, ng:] == 99.0).all()
    out = np.zeros((n, ng), np.float32)
    assert get_group_scales(h, 0, n + 1, out, ng) == lib.TAKANE_ERR_BAD_STRIDE
    assert get_group_scales(h, -1, n, out, ng) == lib.TAKANE_ERR_NEGATIVE_DIMENSION
    assert get_group_scales(h, 0, n, out, -1) == lib.TAKANE_ERR_BAD_STRIDE
    assert get_group_scales(h, 0, n, None, ng) == (lib.TAKANE_ERR_NULL_POINTER if n else lib.TAKANE_OK)
    assert get_group_scales(h, 0, 0, None, ng) == lib.TAKANE_OK
    assert get_group_scales(ffi.NULL, 0, 1, out, ng) == lib.TAKANE_ERR_NULL_POINTER
    if n > 1:
        assert get_group_scales(h, 0, n, out, ng - 1) == lib.TAKANE_ERR_BAD_STRIDE


def test_get_group_scales_without_scales_and_of_q1_0_handles():
    rng = np.random.default_rng(4)
    n, k = 13, 256
    w, q1 = random_q1_0(rng, n, k)
    # a handle without scales: takane_weights_create's, and an empty grouped one
    plain = weights_handle(w.bits, k)
    out = np.zeros((n, 2), np.float32)
    assert get_group_scales(plain, 0, n, out, 2) == lib.TAKANE_ERR_BAD_GROUP_SIZE
    assert get_group_scales(plain, 0, n + 1, out, 2) == lib.TAKANE_ERR_BAD_STRIDE  # the range first
    empty = grouped_weights_handle(np.zeros((0, 4), np.uint64), k, np.zeros((0, 2), np.float32), 128)
    assert get_group_scales(empty, 0, 0, out, 2) == lib.TAKANE_ERR_BAD_GROUP_SIZE
    # Q1_0 handles (own block and caller memory): the fp16 block scales as float32
    want = tk.from_q1_0(q1, k).group_scale
    for caller_memory in (False, True):
        h, keep, _ = q1_0_handle(q1, n, k, caller_memory=caller_memory)
        np.testing.assert_array_equal(handle_group_scales(h, n, k // 128).view(np.uint32), want.view(np.uint32))


def test_get_bits_of_a_q1_0_handle_are_its_signs():
    rng = np.random.default_rng(3)
    n, k = 13, 256
    w, q1 = random_q1_0(rng, n, k)
    h, keep, _ = q1_0_handle(q1, n, k, caller_memory=True)
    out = np.zeros((n, k // 64), np.uint64)
    assert lib.takane_weights_get_bits(h, 0, n, ffi.from_buffer("uint64_t[]", out), k // 64) == 0
    np.testing.assert_array_equal(out, tk.from_q1_0(q1, k).bits)
