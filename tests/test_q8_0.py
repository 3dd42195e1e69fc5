"""binary_weight_matmul with activations="q8_0" (W1A8) and with group scales in both
activation modes, on every ISA (forced and asserted): within the documented bound of the
float64 oracle (takane_kernels.reference), exact where every float step is exact, the
Q8_0 quantization bit-exact with llama.cpp's rules (ties away from zero, fp16 block
scales), batch- and thread-invariant, and clear errors for bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._takane import ffi, lib

from conftest import assert_ran, count_example

pytestmark = pytest.mark.usefixtures("on_isa")

# K: one block, a block +-1, a word +-1, two words +-1, 8 words +1 and the long case
Q8_K = (1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 513, 1000)
# N around the panel (8 rows) and the AVX-512 run of 4 panels (32 rows)
Q8_N = (1, 7, 8, 9, 31, 32, 33, 70)
# M around the row tiles (1: decode, 2: the AVX-512 prefill tile) and a taller batch
Q8_M = (1, 2, 3, 5)


def make_weights(rng, n, k, group_size=None, scale=True, in_scale=True):
    """±1 weights with optional row scale, column scale and group scales."""
    bits = tk.pack_bits(rng.standard_normal((n, k)))
    kw = {}
    if scale:
        kw["scale"] = (0.5 + rng.random(n)).astype(np.float32)
    if in_scale:
        kw["in_scale"] = (0.5 + rng.random(k)).astype(np.float32)
    if group_size:
        kw["group_scale"] = (0.25 + rng.random((n, -(-k // group_size)))).astype(np.float32)
        kw["group_size"] = group_size
    return tk.PackedWeights(bits, k, **kw)


def check(y, x, pw, bias, activations, msg=""):
    expected = ref.binary_weight_matmul(x, pw, bias=bias, activations=activations)
    bound = ref.binary_weight_matmul_error_bound(x, pw, bias=bias, activations=activations)
    assert y.dtype == np.float32 and y.shape == expected.shape
    err = np.abs(y.astype(np.float64) - expected)
    if err.size:
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert np.all(err <= bound), f"{msg}: error {err[worst]} > bound {bound[worst]} at {worst}"


@pytest.mark.parametrize("k", Q8_K)
@pytest.mark.parametrize("group_size", [None, 64, 128, 192])
def test_grid_within_bound(isa_name, k, group_size):
    rng = np.random.default_rng(k * 7 + (group_size or 0))
    big_n = max(Q8_N)
    pw = make_weights(rng, big_n, k, group_size)
    x = (rng.standard_normal((max(Q8_M), k)) * 3).astype(np.float32)
    bias = rng.standard_normal(big_n).astype(np.float32)
    for activations in ("q8_0", "float32"):
        # rows and columns are independent: one oracle call, sliced for every (m, n)
        expected = ref.binary_weight_matmul(x, pw, bias=bias, activations=activations)
        bound = ref.binary_weight_matmul_error_bound(x, pw, bias=bias, activations=activations)
        for n in Q8_N:
            sub = tk.PackedWeights(pw.bits[:n], k, scale=pw.scale[:n], in_scale=pw.in_scale,
                                   group_scale=None if group_size is None else pw.group_scale[:n],
                                   group_size=group_size)
            for m in Q8_M:
                y = tk.binary_weight_matmul(x[:m], sub, bias=bias[:n], activations=activations)
                assert_ran(isa_name)
                assert y.shape == (m, n) and y.dtype == np.float32
                err = np.abs(y.astype(np.float64) - expected[:m, :n])
                assert np.all(err <= bound[:m, :n]), (
                    f"{activations} m={m} n={n} k={k} G={group_size}: max err / bound "
                    f"{np.max(err / np.maximum(bound[:m, :n], 1e-300))}")


def pinned_blocks(rng, m, k, e):
    """Rows whose every 32-column block has max |x| = 127 * 2**e, so d = 2**e exactly
    (fp16-exact for the e used), x * (1/d) is exact, and q = round(x / 2**e): values are
    halves (ties), near-halves and integers, so the rounding rule is what is tested."""
    base = rng.integers(-126, 127, size=(m, k)).astype(np.float64)
    kind = rng.integers(0, 4, size=(m, k))
    frac = np.select([kind == 0, kind == 1, kind == 2], [0.5, -0.5, 0.49999997], 0.0)
    v = np.clip(base + frac, -126.5, 126.5)
    for c0 in range(0, k, 32):
        v[:, c0] = np.where(rng.random(m) < 0.5, 127.0, -127.0)
    return (v.astype(np.float32) * np.float32(2.0**e)).astype(np.float32)


@pytest.mark.parametrize("k", (32, 64, 100, 129, 513))
def test_exact_with_power_of_two_block_scales(isa_name, k):
    """d = 2**e, power-of-two row/group scales, small sums: every float step is exact, so
    y must equal the oracle bit for bit — any q off by one (a tie rounded to even, the
    x*id+0.5 trap at 0.49999997) or a wrong d would show."""
    rng = np.random.default_rng(k)
    m, n = 3, 37
    x = pinned_blocks(rng, m, k, -3)
    for group_size in (None, 64):
        kw = {"scale": np.exp2(rng.integers(-2, 3, n)).astype(np.float32)}
        if group_size:
            kw["group_scale"] = np.exp2(rng.integers(-2, 3, (n, -(-k // group_size)))).astype(np.float32)
            kw["group_size"] = group_size
        pw = tk.PackedWeights(tk.pack_bits(rng.standard_normal((n, k))), k, **kw)
        y = tk.binary_weight_matmul(x, pw, activations="q8_0")
        assert_ran(isa_name)
        expected = ref.binary_weight_matmul(x, pw, activations="q8_0")
        np.testing.assert_array_equal(y.astype(np.float64), expected)


def test_quantization_matches_the_rounding_rule(isa_name):
    """The oracle's q itself, against a plain per-element spelling of roundf, on the
    values that trap naive implementations; then the kernels through sums that isolate
    single elements (row c has +1 only at column c, so y_c - y_all_minus = 2 d q[c])."""
    v = np.array([0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997, -0.49999997, 126.5, -126.5, 127.0,
                  1.0000001, 0.0, -0.0, 3.4999998, 3.5], np.float32)
    x = np.zeros(32, np.float32)
    x[:len(v)] = v
    q, d = ref.quantize_q8_0(x[None])
    assert d[0, 0] == 1.0
    plain = [int(np.sign(t) * np.floor(abs(float(t)) + 0.5)) for t in x]
    assert q[0].tolist() == plain
    assert q[0, :9].tolist() == [1, -1, 2, 3, -3, 0, 0, 127, -127]
    # the kernels: rows e_c (+1 at c, -1 elsewhere) and all -1
    k = 32
    w = -np.ones((k + 1, k))
    for c in range(k):
        w[c, c] = 1.0
    pw = tk.PackedWeights(tk.pack_bits(w), k)
    y = tk.binary_weight_matmul(x, pw, activations="q8_0").astype(np.float64)
    assert_ran(isa_name)
    np.testing.assert_array_equal((y[:k] - y[k]) / 2, q[0].astype(np.float64))


def test_fp16_block_scales(isa_name):
    """Block scales are rounded to fp16 (nearest even), subnormal fp16 kept, and a scale
    that flushes to 0 zeroes its block; results match the oracle exactly on one block."""
    k = 32 * 6
    x = np.zeros(k, np.float32)
    x[160:192] = np.float32(1e-41)           # float32 subnormal: 1/d overflows to inf
    x[0:32] = np.float32(1.2345678)          # a d that fp16 rounds
    x[32:64] = np.float32(127 * 2.0**-20)    # d = 2^-20: an fp16 subnormal
    x[64:96] = np.float32(1e-9)              # d rounds to fp16 zero: the block vanishes
    x[96:128] = 0.0                          # an all-zero block: d = 0, id = 0
    x[128:160] = np.float32(60000.0)         # large but finite in fp16
    x[[5, 40, 70, 130]] *= -1
    pw = tk.PackedWeights(tk.pack_bits(np.random.default_rng(0).standard_normal((9, k))), k)
    y = tk.binary_weight_matmul(x, pw, activations="q8_0")
    assert_ran(isa_name)
    check(y, x, pw, None, "q8_0", "fp16 scales")
    _, d = ref.quantize_q8_0(x[None])
    assert d[0, 2] == 0 and d[0, 3] == 0 and d[0, 5] == 0 and 0 < d[0, 1] < 2.0**-14


@pytest.mark.parametrize("regime", ["panels", "gemm"])
def test_batch_and_thread_invariant(isa_name, regime, monkeypatch):
    """A row's result does not depend on its batch, the row tile or the thread split —
    within one regime: the panel kernels (decode, batched decode) and the prefill GEMM
    (sets that have one, from its M threshold on) sum in different orders (both within the
    bound), so the regime is forced here (TAKANE_Q8_GEMM_MIN_M)."""
    monkeypatch.setenv("TAKANE_Q8_GEMM_MIN_M", "1000000" if regime == "panels" else "2")
    rng = np.random.default_rng(5)
    pw = make_weights(rng, 200, 700, 128)
    x = (rng.standard_normal((7, 700)) * 2).astype(np.float32)
    for activations in ("q8_0", "float32"):
        full = tk.binary_weight_matmul(x, pw, activations=activations, threads=1)
        assert_ran(isa_name)
        two = tk.binary_weight_matmul(x, pw, activations=activations, threads=2)
        np.testing.assert_array_equal(full, two)
        if activations == "q8_0":  # the float path's K blocking depends on the row tile
            for i in range(7):
                if regime == "panels":
                    y = tk.binary_weight_matmul(x[i], pw, activations=activations)
                else:  # the GEMM starts at M = 2: row i with a neighbour
                    j = min(i, 5)
                    y = tk.binary_weight_matmul(x[j:j + 2], pw, activations=activations)[i - j]
                np.testing.assert_array_equal(y, full[i])


@pytest.mark.parametrize("m,n,k,group_size", [(1, 1030, 1100, None), (3, 520, 2048, 128), (8, 300, 1536, 64)])
def test_decode_split_over_threads_same_bits(isa_name, m, n, k, group_size, monkeypatch):
    """Decode and small batches big enough (m*n*k >= 2^20 MACs) that threads > 1 split the
    weights over several tasks, each covering every row: the rows' activation tables are
    then built once by the caller and shared by the tasks (wq8.c / wfloat.c). The results
    are those of one thread bit for bit, row by row alone too, with in_scale, row and group
    scales, and within the reference's bound. (The invariance test above stays below the
    parallel cut-off.)"""
    monkeypatch.setenv("TAKANE_Q8_GEMM_MIN_M", "1000000")  # the panel kernels at every m
    assert m * n * k >= 2**20
    rng = np.random.default_rng(m + n)
    pw = make_weights(rng, n, k, group_size)
    x = (rng.standard_normal((m, k)) * 2).astype(np.float32)
    for activations in ("q8_0", "float32"):
        one = tk.binary_weight_matmul(x, pw, activations=activations, threads=1)
        assert_ran(isa_name)
        check(one, x, pw, None, activations, f"{activations} m={m}")
        for threads in (2, 3, 8):
            np.testing.assert_array_equal(tk.binary_weight_matmul(x, pw, activations=activations, threads=threads),
                                          one, err_msg=f"{activations} threads={threads}")
            assert_ran(isa_name)
        if activations == "q8_0":  # a row alone: the float path's K blocking depends on the row tile
            for i in range(m):
                np.testing.assert_array_equal(tk.binary_weight_matmul(x[i], pw, activations=activations, threads=2),
                                              one[i], err_msg=f"row {i} alone")


def test_large_shape_threads(isa_name):
    """A GEMV and a prefill big enough for the threaded grid (weights split, rows split)."""
    rng = np.random.default_rng(6)
    pw = make_weights(rng, 300, 2048, 128)
    for m in (1, 24):
        x = rng.standard_normal((m, 2048)).astype(np.float32)
        bias = rng.standard_normal(300).astype(np.float32)
        for threads in (1, 2, 3):
            y = tk.binary_weight_matmul(x, pw, bias=bias, activations="q8_0", threads=threads)
            assert_ran(isa_name)
            check(y, x, pw, bias, "q8_0", f"m={m} threads={threads}")


finite_f32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@given(
    m=st.integers(1, 4), n=st.integers(1, 40), k=st.integers(1, 300),
    group=st.sampled_from([None, 64, 128, 256]), exponent=st.integers(-40, 10),
    zero_blocks=st.integers(0, 3), ties=st.booleans(), seed=st.integers(0, 2**32 - 1),
    activations=st.sampled_from(["q8_0", "float32"]),
)
def test_properties(isa_name, m, n, k, group, exponent, zero_blocks, ties, seed, activations):
    """Shapes, K tails (K % 32 != 0), group sizes, all-zero blocks, huge and tiny
    magnitudes (down to fp16-subnormal block scales), ties at .5."""
    count_example(isa_name)
    rng = np.random.default_rng(seed)
    if ties:
        x = (np.round(rng.standard_normal((m, k)) * 40) + 0.5).astype(np.float32)
    else:
        x = rng.standard_normal((m, k)).astype(np.float32)
    x = (x * np.float32(2.0**exponent)).astype(np.float32)
    for b in rng.integers(0, -(-k // 32), zero_blocks):
        x[:, 32 * b:32 * b + 32] = 0
    pw = make_weights(rng, n, k, group, scale=bool(seed & 1), in_scale=bool(seed & 2))
    bias = rng.standard_normal(n).astype(np.float32) if seed & 4 else None
    y = tk.binary_weight_matmul(x, pw, bias=bias, activations=activations)
    assert_ran(isa_name)
    check(y, x, pw, bias, activations, f"m={m} n={n} k={k} G={group} e={exponent}")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x_is_a_value_error(isa_name, bad):
    pw = make_weights(np.random.default_rng(1), 5, 100, 64)
    x = np.ones((2, 100), np.float32)
    x[1, 77] = bad
    y = np.full((2, 5), 7.0, np.float32)
    with pytest.raises(ValueError, match="q8_0"):
        tk.binary_weight_matmul(x, pw, activations="q8_0", out=y)
    assert np.all(y == 7.0)  # quantized before anything is written
    # the float path propagates instead (IEEE)
    assert not np.all(np.isfinite(tk.binary_weight_matmul(x, pw, activations="float32")[1]))


def test_overflowing_scale_is_a_value_error(isa_name):
    pw = tk.PackedWeights(tk.pack_bits(np.ones((3, 64))), 64, in_scale=np.full(64, 3e38, np.float32))
    with pytest.raises(ValueError, match="q8_0"):
        tk.binary_weight_matmul(np.full(64, 10, np.float32), pw, activations="q8_0")  # x * in_scale = inf
    pw = tk.PackedWeights(tk.pack_bits(np.ones((3, 64))), 64)
    with pytest.raises(ValueError, match="fp16"):  # max|x|/127 beyond fp16
        tk.binary_weight_matmul(np.full(64, 1e7, np.float32), pw, activations="q8_0")
    ok = tk.binary_weight_matmul(np.full(64, 8e6, np.float32), pw, activations="q8_0")
    assert_ran(isa_name)
    assert np.all(np.isfinite(ok))


@pytest.mark.parametrize("bad", ["int8", "Q8_0", "", None, 1, "float16"])
def test_unknown_activations(bad):
    pw = make_weights(np.random.default_rng(1), 5, 100)
    with pytest.raises(ValueError, match="activations"):
        tk.binary_weight_matmul(np.ones(100), pw, activations=bad)


def test_bias_errors_stay_bias_errors():
    pw = make_weights(np.random.default_rng(1), 5, 100)
    with pytest.raises(ValueError, match="bias"):
        tk.binary_weight_matmul(np.ones(100), pw, bias=np.array([1, 2, np.inf, 4, 5]), activations="q8_0")


# ---- the C entry points directly ------------------------------------------------------

def c_ex(x, bits, k, *, gs=None, group_size=0, mode=1, prepacked=True, threads=1, w_stride=None,
         handle=None):
    x = np.ascontiguousarray(x, np.float32)
    m, n = x.shape[0], bits.shape[0]
    y = np.zeros((m, n), np.float32)
    fp = lambda a: ffi.NULL if a is None else ffi.from_buffer("float[]", a)  # noqa: E731
    if prepacked:
        h = handle if handle is not None else tk.PackedWeights(bits, k)._prepacked()
        st = lib.takane_binary_weight_matmul_prepacked_ex(
            h, m, fp(x), k, ffi.NULL, ffi.NULL, fp(gs), group_size, ffi.NULL, mode, fp(y), n, threads)
    else:
        st = lib.takane_binary_weight_matmul_ex(
            m, n, k, fp(x), k, ffi.from_buffer("uint64_t[]", bits),
            bits.shape[1] if w_stride is None else w_stride, ffi.NULL, ffi.NULL, fp(gs), group_size,
            ffi.NULL, mode, fp(y), n, threads)
    return st, y


def test_canonical_entry_point_matches_prepacked(isa_name):
    rng = np.random.default_rng(3)
    k, n = 300, 45
    bits = tk.pack_bits(rng.standard_normal((n, k)))
    x = rng.standard_normal((3, k)).astype(np.float32)
    gs = (0.5 + rng.random((n, 3))).astype(np.float32)
    for mode in (lib.TAKANE_ACTIVATIONS_F32, lib.TAKANE_ACTIVATIONS_Q8_0):
        for g, size in ((None, 0), (gs, 128)):
            st_a, a = c_ex(x, bits, k, gs=g, group_size=size, mode=mode)
            assert st_a == lib.TAKANE_OK
            st_b, b = c_ex(x, bits, k, gs=g, group_size=size, mode=mode, prepacked=False)
            assert st_b == lib.TAKANE_OK
            assert_ran(isa_name)
            np.testing.assert_array_equal(a, b)


def test_c_statuses():
    rng = np.random.default_rng(4)
    bits = tk.pack_bits(rng.standard_normal((5, 200)))
    x = np.ones((1, 200), np.float32)
    gs = np.ones((5, 4), np.float32)
    for prepacked in (True, False):
        run = lambda **kw: c_ex(x, bits, 200, prepacked=prepacked, **kw)[0]  # noqa: E731
        assert run(mode=2) == lib.TAKANE_ERR_BAD_ACTIVATIONS
        assert run(mode=-1) == lib.TAKANE_ERR_BAD_ACTIVATIONS
        for size in (0, -64, 32, 96, 100):
            assert run(gs=gs, group_size=size) == lib.TAKANE_ERR_BAD_GROUP_SIZE
        assert run(group_size=64) == lib.TAKANE_ERR_BAD_GROUP_SIZE  # a size without scales
        for mode in (0, 1):
            bad = gs.copy()
            bad[4, 3] = np.nan
            assert run(gs=bad, group_size=64, mode=mode) == lib.TAKANE_ERR_NOT_FINITE
            bad[4, 3] = -np.inf
            assert run(gs=bad, group_size=64, mode=mode) == lib.TAKANE_ERR_NOT_FINITE
        xn = x.copy()
        xn[0, 3] = np.nan
        assert c_ex(xn, bits, 200, prepacked=prepacked)[0] == lib.TAKANE_ERR_NAN
        xn[0, 3] = np.inf
        assert c_ex(xn, bits, 200, prepacked=prepacked)[0] == lib.TAKANE_ERR_NOT_FINITE
        assert run(threads=-1) == lib.TAKANE_ERR_BAD_THREADS
    assert c_ex(x, bits, 200, prepacked=False, w_stride=-1)[0] == lib.TAKANE_ERR_BAD_STRIDE
    bad_pad = bits.copy()
    bad_pad[0, -1] |= np.uint64(1) << np.uint64(63)
    assert c_ex(x, bad_pad, 200, prepacked=False)[0] == lib.TAKANE_ERR_PADDING_BITS
    y = np.zeros((1, 5), np.float32)
    assert lib.takane_binary_weight_matmul_prepacked_ex(
        ffi.NULL, 1, ffi.from_buffer("float[]", x), 200, ffi.NULL, ffi.NULL, ffi.NULL, 0, ffi.NULL, 1,
        ffi.from_buffer("float[]", y), 5, 0) == lib.TAKANE_ERR_NULL_POINTER
    h = tk.PackedWeights(bits, 200)._prepacked()
    assert lib.takane_binary_weight_matmul_prepacked_ex(
        h, 1, ffi.NULL, 200, ffi.NULL, ffi.NULL, ffi.NULL, 0, ffi.NULL, 1,
        ffi.from_buffer("float[]", y), 5, 0) == lib.TAKANE_ERR_NULL_POINTER
    # empty problems are no-ops, whatever the pointers
    assert lib.takane_binary_weight_matmul_prepacked_ex(
        h, 0, ffi.NULL, 0, ffi.NULL, ffi.NULL, ffi.NULL, 0, ffi.NULL, 1, ffi.NULL, 0, 0) == lib.TAKANE_OK
    assert lib.takane_binary_weight_matmul_ex(
        0, 0, 0, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL, ffi.NULL, ffi.NULL, 0, ffi.NULL, 1, ffi.NULL, 0,
        0) == lib.TAKANE_OK


def test_c_impossible_batch_is_out_of_memory():
    """m rows whose quantized copy cannot exist (stride-0 x, 1-row buffers): an error
    before anything is read past the first row or written, never a wrapped size."""
    pw = tk.PackedWeights(tk.pack_bits(np.ones((3, 64))), 64)
    x = np.ones(64, np.float32)
    y = np.full(3, 5.0, np.float32)
    for m in (2**40, 2**58, 2**62):
        st = lib.takane_binary_weight_matmul_prepacked_ex(
            pw._prepacked(), m, ffi.from_buffer("float[]", x), 0, ffi.NULL, ffi.NULL, ffi.NULL, 0,
            ffi.NULL, lib.TAKANE_ACTIVATIONS_Q8_0, ffi.from_buffer("float[]", y), 3, 1)
        assert st == lib.TAKANE_ERR_OUT_OF_MEMORY
        assert np.all(y == 5.0)
