"""binary_conv2d / binary_max_pool2d against the numpy oracle on every ISA, exactly.

The reference (takane_kernels.reference) unpacks everything to ±1 and sums taps in
float64; the C path gathers packed taps and runs the W1A1 panel kernels. Integer results
(the dot products, visible through scale=None, no bias) and the float32 epilogue are
compared bit for bit. Shapes stay small: CI runs this file under SIMDe, qemu and valgrind.
"""

import functools

import numpy as np
import pytest
from hypothesis import given, strategies as st

import takane_kernels as tk
from takane_kernels import reference as ref

from conftest import assert_ran, count_example

pytestmark = pytest.mark.usefixtures("on_isa")


def weights(rng, cout, kh, kw, cin, scale=None):
    return tk.pack_conv_weights(rng.standard_normal((cout, kh, kw, cin)), scale=scale)


def plain_conv(x, w, stride, pads, dilation, groups, pad_value):
    """A third, plainest route: loops over output pixels with ±1 int64 arrays (for the
    few shapes below; the reference itself uses sliced einsum)."""
    cout, kh, kw, cin_g = w.shape
    n, h, wd, _ = x.shape
    pt, pb, pl, pr = pads
    ho = (h + pt + pb - dilation * (kh - 1) - 1) // stride + 1
    wo = (wd + pl + pr - dilation * (kw - 1) - 1) // stride + 1
    y = np.zeros((n, ho, wo, cout), dtype=np.int64)
    cog = cout // groups
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for o in range(cout):
                    g = o // cog
                    s = 0
                    for ky in range(kh):
                        for kx in range(kw):
                            iy, ix = oy * stride - pt + ky * dilation, ox * stride - pl + kx * dilation
                            if 0 <= iy < h and 0 <= ix < wd:
                                a = x[b, iy, ix, g * cin_g:(g + 1) * cin_g]
                            else:
                                a = np.full(cin_g, pad_value)
                            s += int(a @ w[o, ky, kx])
                    y[b, oy, ox, o] = s
    return y


@functools.lru_cache(maxsize=None)
def plain_case(cin, cout, pad_value):
    """(x, w, the plain loops' answer): computed once, shared by every ISA."""
    rng = np.random.default_rng(cin * 7 + cout + pad_value)
    x = rng.standard_normal((2, 5, 6, cin)).astype(np.float32)
    wr = rng.standard_normal((cout, 3, 3, cin))
    want = plain_conv(np.where(x >= 0, 1, -1), np.where(wr >= 0, 1, -1), 1, (1, 1, 1, 1), 1, 1, pad_value)
    return x, tk.pack_conv_weights(wr, scale=None), want.astype(np.float32)


@pytest.mark.parametrize("pad_value", [0, 1, -1])
@pytest.mark.parametrize("cin,cout", [(3, 5), (32, 8), (64, 16), (65, 9), (128, 17)])
def test_3x3_matches_plain_loops_and_reference(isa_name, cin, cout, pad_value):
    x, w, want = plain_case(cin, cout, pad_value)
    y = tk.binary_conv2d(tk.pack_bits(x), w, padding=1, pad_value=pad_value)
    assert_ran(isa_name)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(y, ref.binary_conv2d(x, w, padding=1, pad_value=pad_value))


GEOMETRIES = [
    # (kh, kw, stride, padding, dilation, groups, h, w)
    (1, 1, 1, 0, 1, 1, 4, 5),        # the matmul path (no gather)
    (1, 1, 2, 0, 1, 1, 5, 5),
    (1, 1, 1, 1, 1, 1, 3, 3),        # 1x1 with padding: every border pixel is pure padding
    (3, 3, 1, 1, 1, 1, 7, 7),
    (3, 3, 2, 1, 1, 1, 7, 8),
    (3, 3, 1, "same", 2, 1, 6, 6),
    (3, 3, 1, "valid", 1, 1, 5, 6),
    (5, 5, 1, 2, 1, 1, 6, 6),
    (5, 5, 2, "valid", 1, 1, 9, 9),
    (3, 1, 1, (1, 0), 1, 1, 5, 4),   # non-square
    (2, 3, 2, (0, 1), (1, 2), 1, 6, 7),
    (4, 4, 1, "same", 1, 1, 5, 5),   # even kernel: 'same' pads more at the end
    (3, 3, 1, 1, 1, 2, 4, 4),        # groups
    (3, 3, 2, 1, 1, 4, 5, 5),
    (5, 5, 1, 2, 1, 1, 2, 3),        # image smaller than the kernel, padded
    (3, 3, 1, 1, 1, 1, 1, 1),
]


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("cin_g", [32, 64, 70])
def test_geometry_grid_exact(isa_name, geo, cin_g):
    kh, kw, stride, padding, dilation, groups, h, wd = geo
    rng = np.random.default_rng(hash((geo, cin_g)) % 2**32)
    cout = 8 * groups + groups  # groups of 9: not a panel multiple
    cin = cin_g * groups
    w = weights(rng, cout, kh, kw, cin_g)
    x = rng.standard_normal((2, h, wd, cin)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    for pad_value in (0, 1, -1):
        kw_args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, pad_value=pad_value)
        want = ref.binary_conv2d(x, w, bias=bias, **kw_args)
        got = tk.binary_conv2d(tk.pack_bits(x), w, bias=bias, **kw_args)
        assert_ran(isa_name)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(tk.binary_conv2d(x, w, bias=bias, **kw_args), want)  # float input
        assert_ran(isa_name)


@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_bits_output_residual_thresholds(isa_name, pad_value):
    rng = np.random.default_rng(3 + pad_value)
    cin, cout = 40, 70
    w = weights(rng, cout, 3, 3, cin, scale="mean_abs")
    x = rng.standard_normal((3, 6, 5, cin)).astype(np.float32)
    t_in = rng.standard_normal(cin).astype(np.float32) * 0.3
    bias = rng.standard_normal(cout).astype(np.float32)
    res = rng.standard_normal((3, 6, 5, cout)).astype(np.float32)
    t_out = rng.standard_normal(cout).astype(np.float32)
    for kwargs in ({}, dict(residual=res), dict(out_threshold=0.5), dict(out_threshold=t_out),
                   dict(residual=res, out_threshold=t_out), dict(bias=bias, residual=res, out_threshold=-0.25)):
        want = ref.binary_conv2d(x, w, padding=1, pad_value=pad_value, threshold=t_in, **kwargs)
        got = tk.binary_conv2d(x, w, padding=1, pad_value=pad_value, threshold=t_in, **kwargs)
        assert_ran(isa_name)
        np.testing.assert_array_equal(got, want)
        if "out_threshold" in kwargs:
            assert got.dtype == np.uint64 and got.shape == (3, 6, 5, 2)
            assert not np.any(got[..., -1] >> np.uint64(6))  # padding bits zero


def test_out_and_threads(isa_name):
    rng = np.random.default_rng(11)
    w = weights(rng, 64, 3, 3, 64, scale="mean_abs")
    x = tk.pack_bits(rng.standard_normal((2, 12, 12, 64)))
    want = ref.binary_conv2d(x, w, padding=1, stride=2)
    out = np.full(want.shape, np.nan, dtype=np.float32)
    for threads in (1, 2, 3):
        out[...] = np.nan
        r = tk.binary_conv2d(x, w, padding=1, stride=2, out=out, threads=threads)
        assert r is out
        np.testing.assert_array_equal(out, want)
    bits = tk.binary_conv2d(x, w, padding=1, out_threshold=0.0, threads=2)
    np.testing.assert_array_equal(bits, ref.binary_conv2d(x, w, padding=1, out_threshold=0.0))
    assert_ran(isa_name)


def test_big_enough_to_thread_and_split_columns(isa_name):
    """7x7x256 -> 256: few rows, so the tasks split the output channels too."""
    rng = np.random.default_rng(5)
    w = weights(rng, 256, 3, 3, 256)
    x = tk.pack_bits(rng.standard_normal((1, 7, 7, 256)))
    for out_threshold in (None, 0.0):
        want = ref.binary_conv2d(x, w, padding=1, out_threshold=out_threshold)
        got = tk.binary_conv2d(x, w, padding=1, out_threshold=out_threshold, threads=2)
        assert_ran(isa_name)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cfg", [
    dict(k=(3, 3), stride=1, padding=1, dilation=1), dict(k=(3, 3), stride=2, padding=1, dilation=(2, 1)),
    dict(k=(1, 3), stride=(1, 2), padding=(0, 2), dilation=1), dict(k=(5, 2), stride=1, padding="valid", dilation=1),
])
@pytest.mark.parametrize("cin", [32, 64])
def test_wide_outputs_stacked_rows_path(isa_name, cfg, cin):
    """Output rows of >= 8 pixels (ZSTACK_MIN_WO) with 32 or whole-word channels and dilation_w 1 take
    the z-stack path (windows of stacked input rows, column-major tap order; at 32
    channels two stacked pixels per word); tasks that start or end mid-row (threads=2)
    and blocks that split a row (W > 64) included."""
    rng = np.random.default_rng(12)
    w = weights(rng, 24, *cfg["k"], cin, scale="mean_abs")
    for shape, threads in (((2, 5, 40, cin), 1), ((1, 5, 150, cin), 1), ((1, 9, 70, cin), 2)):
        x = tk.pack_bits(rng.standard_normal(shape))
        for pad_value in (0, 1, -1):
            kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], pad_value=pad_value)
            for out_threshold in (None, 0.5):
                want = ref.binary_conv2d(x, w, out_threshold=out_threshold, **kw)
                got = tk.binary_conv2d(x, w, out_threshold=out_threshold, threads=threads, **kw)
                assert_ran(isa_name)
                np.testing.assert_array_equal(got, want)


def test_wide_row_few_pixels_splits_columns(isa_name):
    """One output row of 24 pixels, 512 channels: the z-stack path with the output
    channels split between tasks (whole 64-column words for the bits)."""
    rng = np.random.default_rng(13)
    w = weights(rng, 512, 1, 3, 256, scale="mean_abs")
    x = tk.pack_bits(rng.standard_normal((1, 1, 24, 256)))
    for out_threshold in (None, 0.0):
        want = ref.binary_conv2d(x, w, padding=(0, 1), out_threshold=out_threshold)
        got = tk.binary_conv2d(x, w, padding=(0, 1), out_threshold=out_threshold, threads=2)
        assert_ran(isa_name)
        np.testing.assert_array_equal(got, want)


def test_threaded_groups_and_float_input(isa_name):
    """Enough work to use the thread pool (>= 2**23 bit-MACs) with groups, float input
    and per-channel thresholds: the row-split tasks and the threaded packing pass."""
    rng = np.random.default_rng(6)
    w = weights(rng, 64, 3, 3, 64)
    x = rng.standard_normal((1, 16, 16, 128)).astype(np.float32)
    t = rng.standard_normal(128).astype(np.float32) * 0.2
    for out_threshold in (None, 0.0):
        want = ref.binary_conv2d(x, w, padding=1, groups=2, threshold=t, out_threshold=out_threshold)
        got = tk.binary_conv2d(x, w, padding=1, groups=2, threshold=t, out_threshold=out_threshold, threads=2)
        assert_ran(isa_name)
        np.testing.assert_array_equal(got, want)


@given(st.data())
def test_property_random_geometry(isa_name, data):
    count_example(isa_name)
    d = data.draw
    kh, kw = d(st.integers(1, 4)), d(st.integers(1, 4))
    sh, sw = d(st.integers(1, 3)), d(st.integers(1, 3))
    dh, dw = d(st.integers(1, 2)), d(st.integers(1, 2))
    ph, pw = d(st.integers(0, 3)), d(st.integers(0, 3))
    groups = d(st.sampled_from([1, 1, 2, 3]))
    cin_g = d(st.sampled_from([1, 5, 31, 32, 33, 63, 64, 65, 96, 128]))
    cout = groups * d(st.integers(1, 12))
    h = d(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 7))
    wd = d(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 7))
    n = d(st.integers(1, 2))
    pad_value = d(st.sampled_from([0, 1, -1]))
    out_threshold = d(st.sampled_from([None, 0.0, 1.5]))
    seed = d(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    w = weights(rng, cout, kh, kw, cin_g, scale=d(st.sampled_from([None, "mean_abs"])))
    x = tk.pack_bits(rng.standard_normal((n, h, wd, cin_g * groups)))
    kwargs = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups, pad_value=pad_value,
                  out_threshold=out_threshold)
    got = tk.binary_conv2d(x, w, **kwargs)
    assert_ran(isa_name)
    np.testing.assert_array_equal(got, ref.binary_conv2d(x, w, **kwargs))


@pytest.mark.parametrize("k,stride,padding", [(2, None, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), (1, 1)), (1, 1, 0)])
@pytest.mark.parametrize("c", [5, 64, 100])
def test_max_pool_matches_reference(isa_name, k, stride, padding, c):
    rng = np.random.default_rng(c)
    x = rng.standard_normal((2, 7, 6, c)).astype(np.float32)
    want = ref.binary_max_pool2d(x, k, stride=stride, padding=padding)
    got = tk.binary_max_pool2d(tk.pack_bits(x), k, stride=stride, padding=padding, channels=c)
    assert_ran(isa_name)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(tk.binary_max_pool2d(x, k, stride=stride, padding=padding), want)


def test_chained_layers_through_packed_outputs(isa_name):
    """conv -> bits -> pool -> conv: the next layer's input is the previous one's output."""
    rng = np.random.default_rng(9)
    w1, w2 = weights(rng, 64, 3, 3, 32, "mean_abs"), weights(rng, 32, 3, 3, 64, "mean_abs")
    x = rng.standard_normal((1, 8, 8, 32)).astype(np.float32)
    a = tk.binary_conv2d(x, w1, padding=1, out_threshold=0.0)
    a = tk.binary_max_pool2d(a, 2, channels=64)
    y = tk.binary_conv2d(a, w2, padding=1)
    assert_ran(isa_name)
    ra = ref.binary_conv2d(x, w1, padding=1, out_threshold=0.0)
    ra = ref.binary_max_pool2d(ra, 2, channels=64)
    np.testing.assert_array_equal(y, ref.binary_conv2d(ra, w2, padding=1))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int8, np.int32, np.bool_])
def test_input_dtypes_and_views(isa_name, dtype):
    """Every real dtype is binarized exactly (float32-exact dtypes in C, wider ones
    compared at their own precision); non-contiguous views are copied."""
    rng = np.random.default_rng(8)
    w = weights(rng, 8, 3, 3, 20)
    x = (rng.standard_normal((2, 5, 7, 20)) * 3).astype(dtype)[:, :, ::-1]
    t = rng.standard_normal(20) * 0.5
    got = tk.binary_conv2d(x, w, padding=1, threshold=t)
    assert_ran(isa_name)
    np.testing.assert_array_equal(got, ref.binary_conv2d(x, w, padding=1, threshold=t))


@pytest.mark.parametrize("cin", [32, 40, 64])
@pytest.mark.parametrize("cout", [16, 32, 48, 96])
def test_fused_epilogue_shapes(isa_name, cin, cout):
    """Output channels a multiple of 16, one group, no residual: the kernel sets with a
    fused panel epilogue (avx512's panel_epi) write y / the bits straight from the
    popcount registers. Every path into it — z-stack rows (wide), gathered pixels
    (narrow, stride 2), 1x1 pixel rows — with zero-padding border corrections folded into
    the row bases, negative and zero scales, bias, scalar and per-channel output
    thresholds, an output word that is part padding (cout % 64), and column splits."""
    rng = np.random.default_rng(cin * 1000 + cout)
    scale = rng.standard_normal(cout)
    scale[::5] = 0.0
    w3 = weights(rng, cout, 3, 3, cin, scale=scale)
    w1 = weights(rng, cout, 1, 1, cin, scale=scale)
    bias = rng.standard_normal(cout).astype(np.float32) * 4
    t_out = rng.standard_normal(cout).astype(np.float32) * 4
    cases = [(w3, (1, 6, 20, cin), dict(padding=1)), (w3, (2, 7, 5, cin), dict(padding=1, stride=2)),
             (w1, (1, 3, 9, cin), dict())]
    for w, shape, geo in cases:
        x = tk.pack_bits(rng.standard_normal(shape))
        for pad_value in (0, 1):
            for extra in (dict(), dict(bias=bias), dict(out_threshold=0.5), dict(bias=bias, out_threshold=t_out)):
                kw = dict(geo, pad_value=pad_value, **extra)
                want = ref.binary_conv2d(x, w, **kw)
                for threads in (1, 2):
                    got = tk.binary_conv2d(x, w, threads=threads, **kw)
                    assert_ran(isa_name)
                    np.testing.assert_array_equal(got, want)
