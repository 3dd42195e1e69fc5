"""Layer ops: bad input raises TypeError/ValueError naming the argument; the C entry points
return the documented status for every invalid argument (never crash, never write)."""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import _ffi as ffi, _lib as lib

RNG = np.random.default_rng(0)
W = RNG.standard_normal((5, 70))
PW = tk.pack_weights(W)
PW1 = tk.pack_weights(W, scale="onebit")
X = RNG.standard_normal((3, 70)).astype(np.float32)


def test_weights_must_be_packed_weights():
    for op in (tk.binary_linear, tk.binary_weight_matmul):
        with pytest.raises(TypeError, match="w must be a PackedWeights"):
            op(X, PW.bits)
        with pytest.raises(TypeError, match="w must be a PackedWeights"):
            op(X, W)
    with pytest.raises(ValueError, match="in_scale.*binary_weight_matmul"):
        tk.binary_linear(X, PW1)


def test_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"x has shape \(3, 71\).*k=70"):
        tk.binary_linear(np.zeros((3, 71)), PW)
    with pytest.raises(ValueError, match=r"x has shape \(3, 71\).*k=70"):
        tk.binary_weight_matmul(np.zeros((3, 71)), PW1)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        tk.binary_linear(np.float32(1), PW)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        tk.binary_weight_matmul(np.float32(1), PW1)
    with pytest.raises(TypeError, match="real"):
        tk.binary_weight_matmul(X.astype(np.complex64), PW1)
    with pytest.raises(TypeError, match="real"):
        tk.binary_linear(X.astype(np.complex64), PW)
    with pytest.raises(ValueError, match="last dimension must be ceil"):
        tk.binary_linear(np.zeros((3, 3), np.uint64), PW)
    bad = tk.pack_bits(X)
    bad[0, -1] |= np.uint64(1) << np.uint64(63)
    with pytest.raises(ValueError, match="x has non-zero padding"):
        tk.binary_linear(bad, PW)


def test_bias_and_thresholds():
    for op, pw in ((tk.binary_linear, PW), (tk.binary_weight_matmul, PW1)):
        with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
            op(X, pw, bias=np.zeros(4))
        with pytest.raises(ValueError, match="bias must be finite"):
            op(X, pw, bias=np.array([0, 0, np.inf, 0, 0]))
        with pytest.raises(ValueError, match="bias must be finite"):
            op(X, pw, bias=np.array([0, 0, 1e300, 0, 0]))  # overflows float32
        with pytest.raises(TypeError, match="bias must be a real array"):
            op(X, pw, bias=np.array(["a"] * 5))
    with pytest.raises(ValueError, match=r"out_threshold must be a scalar or have shape \(5,\)"):
        tk.binary_linear(X, PW, out_threshold=np.zeros(70))
    with pytest.raises(ValueError, match="out_threshold contains NaN"):
        tk.binary_linear(X, PW, out_threshold=np.nan)
    with pytest.raises(TypeError, match="out_threshold"):
        tk.binary_linear(X, PW, out_threshold="0")
    with pytest.raises(ValueError, match=r"threshold must be a scalar or have shape \(70,\)"):
        tk.binary_linear(X, PW, threshold=np.zeros(5))
    with pytest.raises(ValueError, match="threshold.*NaN"):
        tk.binary_linear(X, PW, threshold=np.nan)
    with pytest.raises(ValueError, match="already packed"):
        tk.binary_linear(tk.pack_bits(X), PW, threshold=0.5)
    with pytest.raises(ValueError, match="activation_scale needs the real activations"):
        tk.binary_linear(tk.pack_bits(X), PW, activation_scale=True)
    with pytest.raises(TypeError, match="activation_scale must be a bool"):
        tk.binary_linear(X, PW, activation_scale=1)


def test_nan_and_inf_activations(isa_name):
    with tk.isa.force(isa_name):
        for dtype in (np.float32, np.float16, np.float64):
            x = X.astype(dtype)
            x[1, 69] = np.nan
            with pytest.raises(ValueError, match="NaN"):
                tk.binary_linear(x, PW)
            with pytest.raises(ValueError, match="NaN"):
                tk.binary_linear(x, PW, out_threshold=0)
            x[1, 69] = np.inf
            tk.binary_linear(x, PW)  # inf has a sign: fine without activation_scale
            with pytest.raises(ValueError, match=r"infinite|not finite"):
                tk.binary_linear(x, PW, activation_scale=True)
            with pytest.raises(ValueError, match=r"infinite|not finite"):
                tk.binary_linear(x, PW, activation_scale=True, out_threshold=0)


def test_bad_out():
    for op, pw in ((tk.binary_linear, PW), (tk.binary_weight_matmul, PW1)):
        with pytest.raises(ValueError, match=r"out has shape \(3, 4\), expected \(3, 5\)"):
            op(X, pw, out=np.empty((3, 4), np.float32))
        with pytest.raises(TypeError, match="out must have dtype float32"):
            op(X, pw, out=np.empty((3, 5), np.float64))
        with pytest.raises(TypeError, match="out must be a numpy array"):
            op(X, pw, out=[[0.0] * 5] * 3)
        ro = np.empty((3, 5), np.float32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            op(X, pw, out=ro)
        with pytest.raises(ValueError, match="C-contiguous"):
            op(X, pw, out=np.empty((5, 3), np.float32).T)
    with pytest.raises(TypeError, match="out must have dtype uint64"):
        tk.binary_linear(X, PW, out_threshold=0, out=np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected \(3, 1\)"):
        tk.binary_linear(X, PW, out_threshold=0, out=np.empty((3, 5), np.uint64))


def test_threads_validation():
    for op, pw in ((tk.binary_linear, PW), (tk.binary_weight_matmul, PW1)):
        with pytest.raises(ValueError, match="threads must be >= 1"):
            op(X, pw, threads=0)
        with pytest.raises(TypeError, match="threads"):
            op(X, pw, threads=1.5)


def test_onebit_arguments():
    with pytest.raises(ValueError, match="leave in_scale=None"):
        tk.pack_weights(W, scale="onebit", in_scale=np.ones(70))
    with pytest.raises(ValueError, match="'mean_abs', 'onebit'"):
        tk.pack_weights(W, scale="svd")
    w = W.copy()
    w[0, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        tk.pack_weights(w, scale="onebit")
    z = tk.pack_weights(np.zeros((3, 4)), scale="onebit")  # |W| = 0: zero factors, not NaN
    np.testing.assert_array_equal(z.scale, 0)
    np.testing.assert_array_equal(z.in_scale, 0)


# ---- the C ABI directly ------------------------------------------------------------------

def f32(a):
    return ffi.from_buffer("float[]", a)


def u64(a):
    return ffi.from_buffer("uint64_t[]", a)


def test_c_binary_weight_matmul_statuses():
    x = np.ones((2, 70), np.float32)
    w = PW1.bits.copy()
    y = np.full((2, 5), 7.0, np.float32)
    call = lib.takane_binary_weight_matmul
    args = dict(m=2, n=5, k=70, x=f32(x), xs=70, w=u64(w), ws=2, c=ffi.NULL, s=ffi.NULL, b=ffi.NULL, y=f32(y), ys=5, t=1)

    def run(**change):
        a = dict(args, **change)
        return call(a["m"], a["n"], a["k"], a["x"], a["xs"], a["w"], a["ws"], a["c"], a["s"], a["b"], a["y"], a["ys"], a["t"])

    assert run(m=-1) == lib.TAKANE_ERR_NEGATIVE_DIMENSION
    assert run(k=2**31) == lib.TAKANE_ERR_K_TOO_LARGE
    assert run(t=-1) == lib.TAKANE_ERR_BAD_THREADS
    assert run(ys=4) == lib.TAKANE_ERR_BAD_STRIDE
    assert run(xs=-1) == lib.TAKANE_ERR_BAD_STRIDE
    assert run(x=ffi.NULL) == lib.TAKANE_ERR_NULL_POINTER
    assert run(y=ffi.NULL) == lib.TAKANE_ERR_NULL_POINTER
    bad = w.copy()
    bad[0, 1] |= np.uint64(1) << np.uint64(10)
    assert run(w=u64(bad)) == lib.TAKANE_ERR_PADDING_BITS
    nonfinite = np.ones(70, np.float32)
    nonfinite[3] = np.inf
    assert run(c=f32(nonfinite)) == lib.TAKANE_ERR_NOT_FINITE
    assert run(s=f32(np.array([1, 1, np.nan, 1, 1], np.float32))) == lib.TAKANE_ERR_NOT_FINITE
    assert run(b=f32(np.array([1, 1, 1, 1, -np.inf], np.float32))) == lib.TAKANE_ERR_NOT_FINITE
    np.testing.assert_array_equal(y, 7.0)  # no failed call wrote anything
    assert run(m=0, x=ffi.NULL, y=ffi.NULL) == lib.TAKANE_OK  # empty problems are no-ops
    assert run(k=0, x=ffi.NULL, w=ffi.NULL) == lib.TAKANE_OK
    np.testing.assert_array_equal(y, 0.0)
    assert b"NaN or infinite" in ffi.string(lib.takane_status_string(lib.TAKANE_ERR_NOT_FINITE))


def test_c_binary_linear_statuses():
    xb = tk.pack_bits(X)
    y = np.full((3, 5), 7.0, np.float32)
    yb = np.full((3, 1), 7, np.uint64)
    t = np.zeros(5, np.float32)
    ok = lib.TAKANE_OK
    assert lib.takane_binary_linear(3, 5, 70, u64(xb), 2, u64(PW.bits), 2, ffi.NULL, ffi.NULL, ffi.NULL, f32(y), 5, 0) == ok
    assert lib.takane_binary_linear(3, 5, 70, u64(xb), 2, u64(PW.bits), 2, ffi.NULL, ffi.NULL,
                                    f32(np.array([1, np.inf, 1], np.float32)), f32(y), 5, 0) == lib.TAKANE_ERR_NOT_FINITE
    bad = xb.copy()
    bad[2, 1] |= np.uint64(1) << np.uint64(40)
    assert lib.takane_binary_linear(3, 5, 70, u64(bad), 2, u64(PW.bits), 2, ffi.NULL, ffi.NULL, ffi.NULL,
                                    f32(y), 5, 0) == lib.TAKANE_ERR_PADDING_BITS
    # bits outputs: out_threshold required, length 1 or n, no NaN; row stride in words
    assert lib.takane_binary_linear_bits(3, 5, 70, u64(xb), 2, u64(PW.bits), 2, ffi.NULL, ffi.NULL, ffi.NULL,
                                         ffi.NULL, 0, u64(yb), 1, 0) == lib.TAKANE_ERR_NULL_POINTER
    assert lib.takane_binary_linear_bits(3, 5, 70, u64(xb), 2, u64(PW.bits), 2, ffi.NULL, ffi.NULL, ffi.NULL,
                                         f32(t), 4, u64(yb), 1, 0) == lib.TAKANE_ERR_BAD_THRESHOLD_LEN
    tn = t.copy()
    tn[2] = np.nan
    assert lib.takane_binary_linear_bits(3, 5, 70, u64(xb), 2, u64(PW.bits), 2, ffi.NULL, ffi.NULL, ffi.NULL,
                                         f32(tn), 5, u64(yb), 1, 0) == lib.TAKANE_ERR_NAN
    assert lib.takane_binary_linear_f32_bits(3, 5, 70, f32(X), 70, ffi.NULL, 0, 1, u64(PW.bits), 2, ffi.NULL,
                                             ffi.NULL, f32(t), 1, u64(yb), 0, 0) == lib.TAKANE_ERR_BAD_STRIDE
    assert lib.takane_binary_linear_f32(3, 5, 70, f32(X), 70, f32(t), 3, 0, u64(PW.bits), 2, ffi.NULL, ffi.NULL,
                                        f32(y), 5, 0) == lib.TAKANE_ERR_BAD_THRESHOLD_LEN
    assert lib.takane_binary_linear_f32(3, 5, 70, f32(X), 70, ffi.NULL, 0, 0, u64(PW.bits), 2,
                                        f32(np.array([1, 1, 1, 1, np.nan], np.float32)), ffi.NULL, f32(y), 5, 0) \
        == lib.TAKANE_ERR_NOT_FINITE
    assert lib.takane_binary_linear_f32(3, 5, 70, f32(X), 70, ffi.NULL, 0, 0, u64(PW.bits), 2, ffi.NULL, ffi.NULL,
                                        f32(y), 5, -2) == lib.TAKANE_ERR_BAD_THREADS
    np.testing.assert_array_equal(yb, 7)
    xi = X.copy()
    xi[0, 0] = np.inf
    assert lib.takane_binary_linear_f32(3, 5, 70, f32(xi), 70, ffi.NULL, 0, 1, u64(PW.bits), 2, ffi.NULL, ffi.NULL,
                                        f32(y), 5, 0) == lib.TAKANE_ERR_NOT_FINITE
