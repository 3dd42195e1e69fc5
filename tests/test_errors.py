"""Bad input raises TypeError/ValueError naming the argument: never a crash or a wrong answer."""

import numpy as np
import pytest

import takane_kernels as tk

RNG = np.random.default_rng(0)
W = RNG.standard_normal((5, 70))
PW = tk.pack_weights(W)
X = RNG.standard_normal((3, 70)).astype(np.float32)


def with_padding_bit(bits):
    bad = bits.copy()
    bad[..., -1] |= np.uint64(1) << np.uint64(63)  # k = 70: bit 6 of word 1 is the last valid one
    return bad


def test_nan_in_activations(isa_name):
    with tk.isa.force(isa_name):
        for dtype in (np.float32, np.float16, np.float64):
            x = X.astype(dtype)
            x[1, 69] = np.nan
            with pytest.raises(ValueError, match="NaN"):
                tk.binary_matmul(x, PW)
            with pytest.raises(ValueError, match="NaN"):
                tk.pack_bits(x)


def test_nan_threshold_and_weights():
    with pytest.raises(ValueError, match="threshold.*NaN"):
        tk.binary_matmul(X, PW, threshold=np.nan)
    t = np.zeros(70)
    t[5] = np.nan
    with pytest.raises(ValueError, match="threshold.*NaN"):
        tk.pack_bits(X, threshold=t)
    w = W.copy()
    w[0, 0] = np.nan
    with pytest.raises(ValueError, match="w contains NaN"):
        tk.pack_weights(w)


def test_k_mismatch():
    with pytest.raises(ValueError, match=r"x has shape \(3, 71\).*k=70"):
        tk.binary_matmul(np.zeros((3, 71)), PW)
    with pytest.raises(ValueError, match="last dimension must be ceil"):
        tk.binary_matmul(np.zeros((3, 3), dtype=np.uint64), PW)
    with pytest.raises(ValueError, match="k=64 does not match"):
        tk.binary_matmul(X, PW, k=64)
    with pytest.raises(ValueError, match="ceil"):
        tk.binary_matmul(X, PW.bits, k=200)


def test_raw_weights_need_k_and_uint64():
    with pytest.raises(ValueError, match="pass k="):
        tk.binary_matmul(X, PW.bits)
    with pytest.raises(TypeError, match="uint64"):
        tk.binary_matmul(X, PW.bits.astype(np.int64), k=70)
    with pytest.raises(TypeError, match="uint64"):
        tk.binary_matmul(X, PW.bits.view(np.float64), k=70)
    with pytest.raises(TypeError, match="PackedWeights"):
        tk.binary_matmul(X, [[1, 2]], k=70)
    with pytest.raises(ValueError, match="2-D"):
        tk.binary_matmul(X, PW.bits[0], k=70)


def test_nonzero_padding_bits_rejected():
    with pytest.raises(ValueError, match="w has non-zero padding"):
        tk.binary_matmul(X, with_padding_bit(PW.bits), k=70)
    xbits = tk.pack_bits(X)
    with pytest.raises(ValueError, match="x has non-zero padding"):
        tk.binary_matmul(with_padding_bit(xbits), PW)
    with pytest.raises(ValueError, match="bits has non-zero padding"):
        tk.unpack_bits(with_padding_bit(xbits), 70)
    with pytest.raises(ValueError, match="bits has non-zero padding"):
        tk.PackedWeights(with_padding_bit(PW.bits), 70)


def test_bad_out():
    with pytest.raises(ValueError, match=r"out has shape \(3, 4\), expected \(3, 5\)"):
        tk.binary_matmul(X, PW, out=np.empty((3, 4), np.int32))
    with pytest.raises(TypeError, match="out must have dtype int32"):
        tk.binary_matmul(X, PW, out=np.empty((3, 5), np.int64))
    with pytest.raises(TypeError, match="out must be a numpy array"):
        tk.binary_matmul(X, PW, out=[[0] * 5] * 3)
    ro = np.empty((3, 5), np.int32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        tk.binary_matmul(X, PW, out=ro)
    with pytest.raises(ValueError, match="C-contiguous"):
        tk.binary_matmul(X, PW, out=np.empty((5, 3), np.int32).T)


def test_ndim_and_dtypes():
    with pytest.raises(ValueError, match="at least 1 dimension"):
        tk.binary_matmul(np.float32(1.0), PW)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        tk.pack_bits(np.float32(1.0))
    with pytest.raises(TypeError, match="real"):
        tk.binary_matmul(X.astype(np.complex64), PW)
    with pytest.raises(TypeError, match="real"):
        tk.pack_bits(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="dtype must be a signed"):
        tk.unpack_bits(tk.pack_bits(X), 70, dtype=np.uint8)
    with pytest.raises(ValueError, match="2-D"):
        tk.pack_weights(np.ones(5))


def test_threshold_shape_and_packed_x():
    with pytest.raises(ValueError, match=r"threshold must be a scalar or have shape \(70,\)"):
        tk.binary_matmul(X, PW, threshold=np.zeros(69))
    with pytest.raises(TypeError, match="threshold"):
        tk.binary_matmul(X, PW, threshold="0")
    with pytest.raises(ValueError, match="already packed"):
        tk.binary_matmul(tk.pack_bits(X), PW, threshold=0.5)


def test_threads_validation():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        tk.binary_matmul(X, PW, threads=0)
    with pytest.raises(TypeError, match="threads"):
        tk.binary_matmul(X, PW, threads=1.5)
    with pytest.raises(TypeError, match="threads"):
        tk.binary_matmul(X, PW, threads=True)


def test_k_range():
    with pytest.raises(ValueError, match="out of range"):
        tk.unpack_bits(np.zeros((1, 1), np.uint64), -1)
    with pytest.raises(ValueError, match="out of range"):
        tk.PackedWeights(np.zeros((1, 0), np.uint64), 2**31)
    with pytest.raises(TypeError, match="k must be an int"):
        tk.unpack_bits(np.zeros((1, 1), np.uint64), 3.0)


def test_unknown_isa():
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        tk.isa.force("sse9")
    with pytest.raises(TypeError):
        tk.isa.force(2)
    missing = [n for n in tk.isa.NAMES if n not in tk.isa.supported()]
    for name in missing:  # on x86 at least "neon"; elsewhere the x86 sets
        before = tk.isa.active()
        with pytest.raises(ValueError, match="not supported here"):
            tk.isa.force(name)
        assert tk.isa.active() == before
    assert missing, "every ISA supported at once is impossible: x86 and NEON exclude each other"


def test_pack_weights_scale_arguments():
    with pytest.raises(ValueError, match="scale must be 'mean_abs'"):
        tk.pack_weights(W, scale="max")
    with pytest.raises(ValueError, match=r"scale must have shape \(5,\)"):
        tk.pack_weights(W, scale=np.ones(4))
    with pytest.raises(ValueError, match=r"in_scale must have shape \(70,\)"):
        tk.pack_weights(W, in_scale=np.ones(5))
    with pytest.raises(ValueError, match="finite"):
        tk.pack_weights(W, scale=np.full(5, np.inf))
