"""The bound ops (tk.Matmul, tk.Linear, tk.Conv2d): the same results as the functions on
every path (the short one and the general one), the same checks, and their vocabulary."""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref

RNG = np.random.default_rng(5)
K, N = 130, 37
W = RNG.standard_normal((N, K)).astype(np.float32)
PW = tk.pack_weights(W)
PWG = tk.pack_weights(W, group_size=64)
X = RNG.standard_normal((4, K)).astype(np.float32)


def inputs():
    """x in every shape the ops take: the short path's and the general path's."""
    return [X, X[0], X.astype(np.float64), X.astype(np.float16), X[:, ::1][::2], X.reshape(2, 2, K),
            np.asfortranarray(X), X.tolist()]


def test_matmul_equals_the_function(on_isa):
    t = np.linspace(-0.5, 0.5, K)
    for threshold in (0.0, 0.25, t):
        op = tk.Matmul(PW, threshold=threshold, threads=1)
        for x in inputs():
            np.testing.assert_array_equal(op(x), tk.binary_matmul(x, PW, threshold=threshold))
    op = tk.Matmul(PW)
    xb = tk.pack_bits(X)
    np.testing.assert_array_equal(op(xb), ref.binary_matmul(X, PW))
    raw = tk.Matmul(PW.bits, k=K)
    np.testing.assert_array_equal(raw(X), ref.binary_matmul(X, PW))
    out = np.empty((4, N), np.int32)
    assert op(X, out=out) is out
    np.testing.assert_array_equal(out, ref.binary_matmul(X, PW))


def test_linear_equals_the_function_in_every_mode(on_isa):
    bias = RNG.standard_normal(N)
    for kw in (dict(), dict(bias=bias, activation_scale=True), dict(out_threshold=0.0, threshold=0.1)):
        op = tk.Linear(PW, **kw)
        for x in inputs():
            np.testing.assert_array_equal(op(x), tk.binary_linear(x, PW, **kw))
        np.testing.assert_array_equal(op(X), ref.binary_linear(X, PW, **kw))
    for mode, alias, w in (("f32", "float32", PW), ("q8_0", "q8_0", PWG)):
        op = tk.Linear(w, activations=mode, bias=bias)
        assert op.activations == mode and tk.Linear(w, activations=alias).activations == mode
        for x in inputs():
            np.testing.assert_array_equal(op(x), tk.binary_weight_matmul(x, w, bias=bias, activations=alias))
    assert tk.Linear(PW, activations="w1a_float").activations == "f32"
    assert tk.Linear(PWG, activations="w1a8").activations == "q8_0"
    xb = tk.pack_bits(X)
    np.testing.assert_array_equal(tk.Linear(PW)(xb), ref.binary_linear(X, PW))


def test_conv2d_equals_the_function(on_isa):
    cw = tk.pack_conv_weights(RNG.standard_normal((8, 3, 3, 70)))
    x = RNG.standard_normal((2, 6, 5, 70)).astype(np.float32)
    t = np.linspace(-0.3, 0.3, 70)
    for kw in (dict(padding=1), dict(padding="same", threshold=t, bias=np.arange(8.0)),
               dict(stride=2, out_threshold=0.5), dict(padding=(1, 0), pad_value=-1)):
        op = tk.Conv2d(cw, **kw)
        for xi in (x, x.astype(np.float64), x[:, ::-1]):
            np.testing.assert_array_equal(op(xi), tk.binary_conv2d(xi, cw, **kw))
        np.testing.assert_array_equal(op(x), ref.binary_conv2d(x, cw, **kw))
        assert op(x).shape == op.output_shape(2, 6, 5)
    op = tk.Conv2d(cw, padding=1)
    res = RNG.standard_normal(op.output_shape(2, 6, 5)).astype(np.float32)
    np.testing.assert_array_equal(op(x, residual=res), ref.binary_conv2d(x, cw, padding=1, residual=res))
    np.testing.assert_array_equal(op(tk.pack_bits(x)), ref.binary_conv2d(x, cw, padding=1))


def test_constants_are_checked_once_at_binding():
    with pytest.raises(ValueError, match="threshold contains NaN"):
        tk.Matmul(PW, threshold=np.nan)
    with pytest.raises(ValueError, match=r"threshold must be a scalar or have shape \(130,\)"):
        tk.Linear(PW, threshold=np.zeros(3))
    with pytest.raises(TypeError, match="threads must be an int"):
        tk.Linear(PW, threads=1.5)
    with pytest.raises(ValueError, match="bias must have shape"):
        tk.Linear(PW, bias=np.zeros(3))
    with pytest.raises(ValueError, match="activations must be one of"):
        tk.Linear(PW, activations="int4")
    with pytest.raises(ValueError, match="threshold applies to activations='w1a1' only"):
        tk.Linear(PW, activations="f32", threshold=0.5)
    with pytest.raises(ValueError, match="activation_scale and out_threshold"):
        tk.Linear(PW, activations="q8_0", out_threshold=0.0)
    with pytest.raises(ValueError, match="group scales"):
        tk.Linear(PWG)
    with pytest.raises(ValueError, match="activations must be one of 'float32', 'q8_0', 'int8_row', got 'w1a1'"):
        tk.binary_weight_matmul(X, PW, activations="w1a1")
    with pytest.raises(TypeError, match="PackedConvWeights"):
        tk.Conv2d(PW)
    with pytest.raises(ValueError, match="groups=3 does not divide"):
        tk.Conv2d(tk.pack_conv_weights(RNG.standard_normal((8, 3, 3, 4))), groups=3)


def test_calls_still_check_their_input():
    op = tk.Linear(PW)
    with pytest.raises(TypeError, match="x must be a real"):
        op(np.array(["a"] * K))
    with pytest.raises(ValueError, match="the last dimension of x must be 130"):
        op(X[:, :-1])
    with pytest.raises(ValueError, match="x: NaN"):
        op(np.full(K, np.nan, np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        op(X, out=np.empty((4, N), np.float64))
    with pytest.raises(ValueError, match="out has shape"):
        op(X, out=np.empty((3, N), np.float32))
    with pytest.raises(ValueError, match="threshold applies to real x only"):
        tk.Linear(PW, threshold=0.5)(tk.pack_bits(X))
    with pytest.raises(ValueError, match="activation_scale needs the real activations"):
        tk.Linear(PW, activation_scale=True)(tk.pack_bits(X))
    bad = tk.pack_bits(X)
    bad[0, -1] |= np.uint64(1) << np.uint64(63)
    with pytest.raises(ValueError, match="x has non-zero padding bits"):
        tk.Matmul(PW)(bad)
    buf = np.zeros(K + N, np.float32)  # out overlapping x: x is copied before the kernel writes
    buf[:K] = X[0]
    got = op(buf[:K], out=buf[:N])
    assert got is not None
    np.testing.assert_array_equal(buf[:N], ref.binary_linear(X[0], PW))


def test_function_calls_reuse_one_bound_op_per_constants():
    pw = tk.pack_weights(W)
    for _ in range(3):
        tk.binary_linear(X, pw)
        tk.binary_matmul(X, pw, threshold=0.5)
        tk.binary_weight_matmul(X, pw)
    assert len(pw._bound) == 3
    op = next(iter(pw._bound.values()))
    assert op.weights == pw  # a weak proxy: no reference cycle keeps the weights alive
