"""Property tests (hypothesis) per ISA: random shapes, thresholds and dtypes, exact."""

import numpy as np
from hypothesis import given, strategies as st

import takane_kernels as tk
from takane_kernels import reference as ref

from conftest import OPS, assert_ran, count_example, op_reference, op_weights, plain_matmul

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int32, np.uint8, np.bool_]


@st.composite
def problems(draw):
    m = draw(st.integers(0, 12))
    n = draw(st.integers(0, 12))
    k = draw(st.one_of(st.integers(0, 200), st.sampled_from([255, 256, 257, 511, 512, 513, 1025])))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    per_channel = draw(st.booleans())
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * 3).astype(dtype)
    w = rng.standard_normal((n, k))
    if per_channel:
        t = rng.standard_normal(k).astype(draw(st.sampled_from([np.float32, np.float64])))
        if m and k:  # thresholds equal to some inputs: the >= boundary
            t[: k // 2] = x[0, : k // 2]
    else:
        t = draw(st.sampled_from([0.0, 0.5, -1.0, 1e-30, 2.0]))
    return x, w, t


@given(problems())
def test_binary_matmul_property(isa_name, problem):
    x, w, t = problem
    count_example(isa_name)
    with tk.isa.force(isa_name):
        pw = tk.pack_weights(w)
        y = tk.binary_matmul(x, pw, threshold=t)
        if y.size:
            assert_ran(isa_name)
        np.testing.assert_array_equal(y, plain_matmul(x, w, t))
        np.testing.assert_array_equal(tk.pack_bits(x, threshold=t), ref.pack_bits(x, threshold=t))
        xb = tk.pack_bits(x, threshold=t)
        np.testing.assert_array_equal(tk.binary_matmul(xb, pw.bits, k=w.shape[1]), y)


# ---- memory layouts, batch dims and out= reuse, for every op ---------------------------------

@st.composite
def layouts(draw, a):
    """A view holding a's values (m, k) in another layout: leading batch dims (a
    factorisation of m), a strided slice of a bigger buffer, a contiguous view at an
    element offset, Fortran order, or a byte offset that breaks dtype alignment."""
    m, k = a.shape
    kind = draw(st.sampled_from(["plain", "batch", "strided", "offset", "fortran", "misaligned"]))
    if kind == "batch":
        d = draw(st.sampled_from([d for d in range(1, max(m, 1) + 1) if m % d == 0] if m else [1, 2]))
        shape = draw(st.sampled_from([(d, m // d if m else 0), (1, d, m // d if m else 0), (d, 1, m // d if m else 0)]))
        return a.reshape(shape + (k,))
    if kind == "strided":
        big = np.zeros((2 * m + 1, 3 * k + 2), a.dtype)
        v = big[1::2, 2::3][:m, :k]
        v[...] = a
        return v
    if kind == "offset":
        buf = np.zeros(a.size + 3, a.dtype)
        v = buf[3:].reshape(m, k)
        v[...] = a
        return v
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "misaligned" and a.dtype.itemsize > 1:
        raw = np.zeros(a.nbytes + 64, np.uint8)
        start = (-raw.ctypes.data) % 64 + draw(st.integers(1, a.dtype.itemsize - 1))
        v = raw[start:start + a.nbytes].view(a.dtype).reshape(m, k)
        v[...] = a
        return v
    return a


def _garbage(shape, dtype, rng):
    """A reusable out= buffer full of junk (results must overwrite every element)."""
    return rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8).view(dtype).reshape(shape)


@st.composite
def layout_problems(draw):
    m = draw(st.integers(0, 12))
    n = draw(st.one_of(st.integers(0, 12), st.sampled_from([31, 32, 33, 64, 65])))
    k = draw(st.one_of(st.integers(0, 130), st.sampled_from([255, 256, 257, 513])))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.integers(-24, 25, size=(m, k)) / 8).astype(dtype)  # many ties with thresholds
    t = draw(st.sampled_from([0.0, 0.5, -1.0])) if draw(st.booleans()) else (rng.integers(-8, 9, size=k) / 4)
    pw = tk.pack_weights(rng.standard_normal((n, k)), scale=draw(st.sampled_from(["mean_abs", None])))
    xv = draw(layouts(x))
    xbv = draw(layouts(ref.pack_bits(x, threshold=t)))
    x2 = (rng.integers(-24, 25, size=(m, k)) / 8).astype(dtype)  # a second input for out= reuse
    return x, xv, xbv, x2, t, pw, rng


@given(layout_problems())
def test_every_op_on_views_batches_and_reused_out(isa_name, problem):
    """Every op gives the oracle's result, bit for bit, whatever the layout of its input
    (views, batch dims, offsets, misalignment), and writes a reused out= completely."""
    count_example(isa_name)
    x, xv, xbv, x2, t, pw, rng = problem
    m, k = x.shape
    n = pw.n
    batch = xv.shape[:-1]
    bbatch = xbv.shape[:-1]
    with tk.isa.force(isa_name):
        exp = ref.binary_matmul(x, pw, threshold=t)
        np.testing.assert_array_equal(tk.binary_matmul(xv, pw, threshold=t).reshape(m, n), exp)
        if m and n:
            assert_ran(isa_name)
        np.testing.assert_array_equal(tk.binary_matmul(xbv, pw).reshape(m, n), exp)
        np.testing.assert_array_equal(tk.binary_matmul(xbv, pw.bits, k=k).reshape(m, n), exp)
        np.testing.assert_array_equal(tk.pack_bits(xv, threshold=t).reshape(m, (k + 63) // 64), ref.pack_bits(x, threshold=t))
        np.testing.assert_array_equal(tk.unpack_bits(xbv, k).reshape(m, k), np.where(x >= t, 1, -1))
        # out= reused for two different inputs: the second result fully replaces the first
        out = _garbage(batch + (n,), np.int32, rng)
        assert tk.binary_matmul(xv, pw, threshold=t, out=out) is out
        np.testing.assert_array_equal(out.reshape(m, n), exp)
        assert tk.binary_matmul(x2, pw, threshold=t, out=out.reshape(m, n)) is not None
        np.testing.assert_array_equal(out.reshape(m, n), ref.binary_matmul(x2, pw, threshold=t))
        # the layers, with the same views and a reused out=
        yl = _garbage(batch + (n,), np.float32, rng)
        tk.binary_linear(xv, pw, threshold=t, out=yl)
        np.testing.assert_array_equal(yl.reshape(m, n), ref.binary_linear(x, pw, threshold=t))
        tk.binary_linear(x2, pw, threshold=t, out=yl.reshape(m, n))
        np.testing.assert_array_equal(yl.reshape(m, n), ref.binary_linear(x2, pw, threshold=t))
        yb = _garbage(bbatch + ((n + 63) // 64,), np.uint64, rng)
        tk.binary_linear(xbv, pw, out_threshold=0.0, out=yb)
        np.testing.assert_array_equal(yb.reshape(m, (n + 63) // 64), ref.binary_linear(ref.pack_bits(x, threshold=t), pw, out_threshold=0.0))
        yw = _garbage(batch + (n,), np.float32, rng)  # W1A-float: within its documented bound
        tk.binary_weight_matmul(xv, pw, out=yw)
        if m and n:
            assert_ran(isa_name)
        err = np.abs(yw.reshape(m, n) - ref.binary_weight_matmul(x, pw))
        assert np.all(err <= ref.binary_weight_matmul_error_bound(x, pw))


@st.composite
def packed_bits(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m = draw(st.integers(0, 6))
    k = draw(st.one_of(st.integers(0, 200), st.sampled_from([511, 512, 513])))
    v = rng.integers(0, 2, size=(m, k)).astype(bool)
    return v, k


@given(packed_bits(), st.sampled_from(["big", "little"]))
def test_unpack_and_converters_round_trip(isa_name, problem, bitorder):
    """unpack_bits inverts pack_bits; from_packbits/to_packbits match np.packbits in
    either bit order; flip_polarity is an involution that keeps the padding zero."""
    count_example(isa_name)
    v, k = problem
    with tk.isa.force(isa_name):
        bits = tk.pack_bits(v, threshold=0.5)
        if v.size:
            assert_ran(isa_name)
    np.testing.assert_array_equal(tk.unpack_bits(bits, k), np.where(v, 1, -1))
    nb = np.packbits(v, axis=-1, bitorder=bitorder)
    np.testing.assert_array_equal(tk.from_packbits(nb, k, bitorder=bitorder), bits)
    np.testing.assert_array_equal(tk.to_packbits(bits, k, bitorder=bitorder), nb)
    flipped = tk.flip_polarity(bits, k)
    np.testing.assert_array_equal(tk.unpack_bits(flipped, k), np.where(v, -1, 1))
    np.testing.assert_array_equal(tk.flip_polarity(flipped, k), bits)


@given(st.integers(0, 9), st.integers(0, 40), st.sampled_from([1, 63, 64, 65, 127, 129, 200]),
       st.integers(0, 2**32 - 1), st.sampled_from(sorted(OPS)))
def test_every_op_of_the_table_matches_the_reference(isa_name, m, n, k, seed, op):
    """Every op of the OPS table (conftest) on random shapes gives the oracle's result:
    bit for bit for the integer ops, within the documented bound for the float ones."""
    count_example(isa_name)
    rng = np.random.default_rng(seed)
    ws = op_weights(rng, n, k)
    if op.startswith("binary_conv2d") and (ws["conv"] is None or m == 0):
        return  # a convolution has at least one output channel, an image at least one row
    x = rng.standard_normal((m, k)).astype(np.float32)
    call, _ = OPS[op]
    with tk.isa.force(isa_name):
        got = call(x, ws, None)
        if m and n and op != "pack_bits":
            assert_ran(isa_name)
    want, bound = op_reference(op, x, ws)
    if bound is None:
        np.testing.assert_array_equal(got, want)
    else:
        assert got.shape == want.shape and np.all(np.abs(got - want) <= bound)
