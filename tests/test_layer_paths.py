"""The two C paths of each layer op agree, on every ISA, at every thread count.

The Python API runs binary_linear / binary_weight_matmul on a PackedWeights' prepacked
handle (the *_prepacked entry points, threaded); embedders may call the canonical-row
entry points with raw packed weights instead. Both are public C ABI, so both are held
to the oracle here: W1A1 bit for bit, W1A-float within the documented bound (the two
sum in different orders, K-blocked vs not). Results must also not depend on how the
work is split across threads (rows or weight panels, both task grids are exercised)."""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._takane import ffi, lib

from conftest import assert_ran

pytestmark = pytest.mark.usefixtures("on_isa")

NULL = ffi.NULL


def fptr(a):
    return NULL if a is None else ffi.from_buffer("float[]", a)


def canonical_linear(x, pw, bias, out_threshold, activation_scale=False):
    """binary_linear through the canonical-row C entry points (raw packed weights)."""
    m, k, n, kw = x.shape[0], pw.k, pw.n, (pw.k + 63) // 64
    wp, sp, bp = ffi.from_buffer("uint64_t[]", pw.bits), fptr(pw.scale), fptr(bias)
    if out_threshold is None:
        y = np.full((m, n), np.nan, dtype=np.float32)
        yp = ffi.from_buffer("float[]", y, require_writable=True)
    else:
        y = np.full((m, (n + 63) // 64), 0xDEAD, dtype=np.uint64)
        yp = ffi.from_buffer("uint64_t[]", y, require_writable=True)
        t = np.asarray(out_threshold, dtype=np.float32).reshape(-1)
    if x.dtype == np.uint64:
        xp = ffi.from_buffer("uint64_t[]", x)
        if out_threshold is None:
            st = lib.takane_binary_linear(m, n, k, xp, kw, wp, kw, sp, bp, NULL, yp, n, 1)
        else:
            st = lib.takane_binary_linear_bits(m, n, k, xp, kw, wp, kw, sp, bp, NULL, fptr(t), t.size, yp,
                                               y.shape[1], 1)
    else:
        xp, a = ffi.from_buffer("float[]", x), int(activation_scale)
        if out_threshold is None:
            st = lib.takane_binary_linear_f32(m, n, k, xp, k, NULL, 0, a, wp, kw, sp, bp, yp, n, 1)
        else:
            st = lib.takane_binary_linear_f32_bits(m, n, k, xp, k, NULL, 0, a, wp, kw, sp, bp, fptr(t), t.size,
                                                   yp, y.shape[1], 1)
    assert st == lib.TAKANE_OK, ffi.string(lib.takane_status_string(st))
    return y


@pytest.mark.parametrize("m,n,k", [(1, 33, 129), (9, 17, 513), (65, 40, 200), (3, 300, 1000)])
@pytest.mark.parametrize("out", ["float", "bits"])
def test_linear_canonical_equals_prepacked(isa_name, m, n, k, out):
    rng = np.random.default_rng(m * 1000 + n + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    pw = tk.pack_weights(rng.standard_normal((n, k)), scale="mean_abs")
    bias = rng.standard_normal(n).astype(np.float32)
    t_out = rng.standard_normal(n).astype(np.float32) if out == "bits" else None
    for xin, act in ((x, False), (x, True), (tk.pack_bits(x), False)):
        fast = tk.binary_linear(xin, pw, bias=bias, out_threshold=t_out, activation_scale=act)
        assert_ran(isa_name)
        slow = canonical_linear(xin, pw, bias, t_out, act)
        assert_ran(isa_name)
        np.testing.assert_array_equal(fast, slow)
        expected = ref.binary_linear(xin, pw, bias=bias, out_threshold=t_out, activation_scale=act)
        np.testing.assert_array_equal(fast, expected)


@pytest.mark.parametrize("m,n,k", [(1, 33, 129), (5, 17, 4097), (9, 40, 700)])
def test_f32_canonical_and_prepacked_within_bound(isa_name, m, n, k):
    rng = np.random.default_rng(m + n + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    pw = tk.pack_weights(rng.standard_normal((n, k)), scale="onebit")
    bias = rng.standard_normal(n).astype(np.float32)
    expected = ref.binary_weight_matmul(x, pw, bias=bias)
    bound = ref.binary_weight_matmul_error_bound(x, pw, bias=bias)
    fast = tk.binary_weight_matmul(x, pw, bias=bias)
    assert_ran(isa_name)
    slow = np.full((m, n), np.nan, dtype=np.float32)
    kw = (k + 63) // 64
    st = lib.takane_binary_weight_matmul(m, n, k, ffi.from_buffer("float[]", x), k,
                                         ffi.from_buffer("uint64_t[]", pw.bits), kw, fptr(pw.in_scale),
                                         fptr(pw.scale), fptr(bias), ffi.from_buffer("float[]", slow), n, 1)
    assert st == lib.TAKANE_OK
    assert_ran(isa_name)
    for name, y in (("prepacked", fast), ("canonical", slow)):
        err = np.abs(y.astype(np.float64) - expected)
        assert np.all(err <= bound), f"{name}: max excess {(err - bound).max()}"


# (m, n, k) above the C parallel cut-offs: few rows split the weights, many rows split rows
THREADED = [(2, 700, 1100), (64, 300, 400)]


@pytest.mark.parametrize("m,n,k", THREADED)
def test_f32_same_bits_for_every_thread_count(isa_name, m, n, k):
    rng = np.random.default_rng(m)
    x = rng.standard_normal((m, k)).astype(np.float32)
    pw = tk.pack_weights(rng.standard_normal((n, k)), scale="onebit")
    first = tk.binary_weight_matmul(x, pw, threads=1)
    for threads in (2, 3, 8):
        np.testing.assert_array_equal(tk.binary_weight_matmul(x, pw, threads=threads), first)
        assert_ran(isa_name)
    # and one row alone gives that row's bits (no dependence on the batch around it)
    np.testing.assert_array_equal(tk.binary_weight_matmul(x[m // 2], pw, threads=2), first[m // 2])
    err = np.abs(first.astype(np.float64) - ref.binary_weight_matmul(x, pw))
    assert np.all(err <= ref.binary_weight_matmul_error_bound(x, pw))


# above the W1A1 framework's parallel cut-off (2**23 bit-MACs): few rows split the
# weights (tasks then own whole 64-column output words: n = 1000 ends mid-word), many
# rows split rows; 64 rows also take the integer-threshold epilogue (>= 32 rows)
LINEAR_THREADED = [(2, 1000, 4500), (64, 300, 500)]


@pytest.mark.parametrize("m,n,k", LINEAR_THREADED)
def test_linear_same_bits_for_every_thread_count(isa_name, m, n, k):
    rng = np.random.default_rng(m + 1)
    x = rng.standard_normal((m, k)).astype(np.float32)
    pw = tk.pack_weights(rng.standard_normal((n, k)), scale="mean_abs")
    bias = rng.standard_normal(n).astype(np.float32)
    t_col = (rng.standard_normal(n) * 20).astype(np.float32)
    cases = [dict(activation_scale=True), dict(bias=bias), dict(bias=bias, out_threshold=t_col),
             dict(bias=bias, out_threshold=t_col, activation_scale=True), dict(out_threshold=1.5)]
    for kw in cases:
        expected = ref.binary_linear(x, pw, **kw)
        for threads in (1, 2, 3, 8):
            y = tk.binary_linear(x, pw, threads=threads, **kw)
            np.testing.assert_array_equal(y, expected, err_msg=f"{kw} threads={threads}")
            assert_ran(isa_name)


def test_linear_fast_path_equals_general_path(isa_name):
    """binary_linear's lean Python path (plain float32 / packed arrays) and the general
    one (taken here because out= is given) call the same C entry points identically."""
    rng = np.random.default_rng(21)
    n, k = 70, 300
    pw = tk.pack_weights(rng.standard_normal((n, k)))
    x = rng.standard_normal((5, k)).astype(np.float32)
    t = rng.standard_normal(k).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    t_out = rng.standard_normal(n).astype(np.float32)
    for xin, kw in ((x, dict(threshold=t, bias=bias)), (x[0], dict(activation_scale=True)),
                    (x, dict(bias=bias, out_threshold=t_out)), (tk.pack_bits(x), dict(bias=bias)),
                    (tk.pack_bits(x[1]), dict(out_threshold=t_out))):
        fast = tk.binary_linear(xin, pw, **kw)
        assert_ran(isa_name)
        out = np.empty_like(fast)
        general = tk.binary_linear(xin, pw, out=out, **kw)
        assert general is out
        np.testing.assert_array_equal(fast, general)
        np.testing.assert_array_equal(fast, ref.binary_linear(xin, pw, **kw))
    # errors found by the C call on the lean path still get the general path's messages
    bad_t = t.copy()
    bad_t[7] = np.nan
    with pytest.raises(ValueError, match="threshold contains NaN"):
        tk.binary_linear(x, pw, threshold=bad_t)
    bad_bias = bias.copy()
    bad_bias[3] = np.inf
    with pytest.raises(ValueError, match="bias must be finite"):
        tk.binary_linear(x, pw, bias=bad_bias)
    bad_x = x.copy()
    bad_x[2, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tk.binary_linear(bad_x, pw)


def test_prepacked_layer_entry_points_validate_before_touching_memory():
    """The C ABI's handle-taking layer entry points: NULL handle, negative m, negative
    threads, short y strides and NULL buffers are errors, not crashes."""
    pw = tk.pack_weights(np.ones((3, 70)))
    h = pw._prepacked()
    x = ffi.new("float[]", 2 * 70)
    xb = ffi.new("uint64_t[]", 2 * 2)
    y = ffi.new("float[]", 2 * 3)
    yb = ffi.new("uint64_t[]", 2)
    t = ffi.new("float[]", [0.0])
    calls = {
        "linear": lambda hh, m, yy, ys, thr: lib.takane_binary_linear_prepacked(hh, m, xb, 2, NULL, NULL, NULL, yy, ys, thr),
        "linear_f32": lambda hh, m, yy, ys, thr: lib.takane_binary_linear_prepacked_f32(
            hh, m, x, 70, NULL, 0, 0, NULL, NULL, yy, ys, thr),
        "linear_bits": lambda hh, m, yy, ys, thr: lib.takane_binary_linear_prepacked_bits(
            hh, m, xb, 2, NULL, NULL, NULL, t, 1, yb if yy != NULL else NULL, ys, thr),
        "linear_f32_bits": lambda hh, m, yy, ys, thr: lib.takane_binary_linear_prepacked_f32_bits(
            hh, m, x, 70, NULL, 0, 0, NULL, NULL, t, 1, yb if yy != NULL else NULL, ys, thr),
        "weight_matmul": lambda hh, m, yy, ys, thr: lib.takane_binary_weight_matmul_prepacked(
            hh, m, x, 70, NULL, NULL, NULL, yy, ys, thr),
    }
    for name, call in calls.items():
        bits = name.endswith("bits")
        ys = 1 if bits else 3
        assert call(h, 2, y, ys, 1) == lib.TAKANE_OK, name
        assert call(NULL, 2, y, ys, 1) == lib.TAKANE_ERR_NULL_POINTER, name
        assert call(h, -1, y, ys, 1) == lib.TAKANE_ERR_NEGATIVE_DIMENSION, name
        assert call(h, 2, y, ys, -1) == lib.TAKANE_ERR_BAD_THREADS, name
        assert call(h, 2, y, ys - 1, 1) == lib.TAKANE_ERR_BAD_STRIDE, name
        assert call(h, 2, NULL, ys, 1) == lib.TAKANE_ERR_NULL_POINTER, name
