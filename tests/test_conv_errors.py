"""Hostile input to the convolution API: clear ValueError/TypeError in Python, a status
in C, never a crash; PackedConvWeights persistence and its hardening."""

import pickle
import zipfile

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import _ffi as ffi, _lib as lib

RNG = np.random.default_rng(0)
W = tk.pack_conv_weights(RNG.standard_normal((8, 3, 3, 16)))
X = RNG.standard_normal((1, 5, 5, 16)).astype(np.float32)
XB = tk.pack_bits(X)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(padding="full"), ValueError, "padding must be"),
    (dict(padding=(1, 2, 3)), ValueError, "pair"),
    (dict(padding=-1), ValueError, "out of range"),
    (dict(padding="same", stride=2), ValueError, "stride 1"),
    (dict(stride=0), ValueError, "out of range"),
    (dict(stride=1.5), TypeError, "int"),
    (dict(dilation=(1, 0)), ValueError, "out of range"),
    (dict(groups=3), ValueError, "does not divide"),
    (dict(groups=2), ValueError, "Cin=32"),          # weights take 16 per group: x must have 32
    (dict(pad_value=2), ValueError, "pad_value"),
    (dict(pad_value=True), ValueError, "pad_value"),
    (dict(threshold=[0.0, 1.0]), ValueError, "threshold"),
    (dict(threshold=np.full(16, np.nan)), ValueError, "NaN"),
    (dict(bias=np.zeros(7)), ValueError, "bias"),
    (dict(bias=np.full(8, np.inf)), ValueError, "finite"),
    (dict(out_threshold=np.nan), ValueError, "NaN"),
    (dict(out_threshold=np.zeros(3)), ValueError, "out_threshold"),
    (dict(residual=np.zeros((1, 5, 5, 7), np.float32)), ValueError, "residual"),
    (dict(out=np.zeros((1, 3, 3, 8), np.float64)), TypeError, "dtype"),
    (dict(out=np.zeros((1, 3, 3, 9), np.float32)), ValueError, "shape"),
    (dict(threads=0), ValueError, "threads"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tk.binary_conv2d(X, W, **kwargs)


def test_bad_x_and_w():
    with pytest.raises(TypeError, match="PackedConvWeights"):
        tk.binary_conv2d(X, np.zeros((8, 3, 3, 1), np.uint64))
    with pytest.raises(ValueError, match="4-D"):
        tk.binary_conv2d(X[0], W)
    with pytest.raises(ValueError, match="Cin=16"):
        tk.binary_conv2d(X[..., :15], W)
    with pytest.raises(ValueError, match="words"):
        tk.binary_conv2d(np.zeros((1, 5, 5, 2), np.uint64), W)
    with pytest.raises(ValueError, match="NaN"):
        bad = X.copy()
        bad[0, 2, 2, 3] = np.nan
        tk.binary_conv2d(bad, W)
    with pytest.raises(TypeError, match="real"):
        tk.binary_conv2d(X.astype(complex), W)
    with pytest.raises(ValueError, match="padding bits"):
        bad = XB.copy()
        bad[0, 0, 0, 0] |= np.uint64(1) << np.uint64(20)
        tk.binary_conv2d(bad, W)
    with pytest.raises(ValueError, match="threshold applies to real x only"):
        tk.binary_conv2d(XB, W, threshold=0.5)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        tk.binary_conv2d(X[:, :2], W)                     # 2 rows < 3 taps, no padding
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        tk.binary_conv2d(X, W, padding=1, dilation=4)
    with pytest.raises(ValueError, match="H, W >= 1"):
        tk.binary_conv2d(np.zeros((1, 0, 5, 16), np.float32), W, padding=1)
    assert tk.binary_conv2d(np.zeros((0, 5, 5, 16), np.float32), W).shape == (0, 3, 3, 8)


def test_out_read_only_misaligned_and_aliasing():
    out = np.zeros((1, 3, 3, 8), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        tk.binary_conv2d(X, W, out=out)
    raw = np.zeros(1 * 3 * 3 * 8 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(1, 3, 3, 8)
    with pytest.raises(ValueError, match="aligned"):
        tk.binary_conv2d(X, W, out=raw)
    # a misaligned or read-only x is fine (copied / only read)
    xm = np.zeros(X.nbytes + 1, np.uint8)[1:].view(np.float32).reshape(X.shape)
    xm[...] = X
    xm.flags.writeable = False
    np.testing.assert_array_equal(tk.binary_conv2d(xm, W), tk.binary_conv2d(X, W))
    # residual aliasing out: the result is as if residual were read first
    res = RNG.standard_normal((1, 3, 3, 8)).astype(np.float32)
    want = tk.binary_conv2d(X, W, residual=res)
    tk.binary_conv2d(X, W, residual=res, out=res)
    np.testing.assert_array_equal(res, want)


def test_max_pool_bad_arguments():
    with pytest.raises(ValueError, match="half the kernel"):
        tk.binary_max_pool2d(XB, 2, padding=2)
    with pytest.raises(ValueError, match="int or a pair"):
        tk.binary_max_pool2d(XB, 2, padding="same")
    with pytest.raises(ValueError, match="out of range"):
        tk.binary_max_pool2d(XB, 0)
    with pytest.raises(ValueError, match="smaller than"):
        tk.binary_max_pool2d(XB, 6)
    with pytest.raises(ValueError, match="padding bits"):
        bad = XB.copy()
        bad[0, 1, 1, 0] |= np.uint64(1) << np.uint64(40)
        tk.binary_max_pool2d(bad, 2, channels=16)
    with pytest.raises(ValueError, match="words per pixel"):
        tk.binary_max_pool2d(XB, 2, channels=65)
    with pytest.raises(ValueError, match="4-D"):
        tk.binary_max_pool2d(XB[0], 2)


def test_pack_conv_weights_errors():
    with pytest.raises(ValueError, match="4-D"):
        tk.pack_conv_weights(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        tk.pack_conv_weights(np.full((1, 1, 1, 1), np.nan))
    with pytest.raises(ValueError, match="empty"):
        tk.pack_conv_weights(np.zeros((0, 3, 3, 4)))
    with pytest.raises(ValueError, match="scale"):
        tk.pack_conv_weights(np.zeros((2, 1, 1, 4)), scale="median")
    with pytest.raises(ValueError, match="finite"):
        tk.pack_conv_weights(np.zeros((2, 1, 1, 4)), scale=[1.0, np.inf])
    with pytest.raises(ValueError, match="padding"):
        tk.PackedConvWeights(np.full((1, 1, 1, 1), 2**63, np.uint64), 5)
    with pytest.raises(ValueError, match="4-D"):
        tk.PackedConvWeights(np.zeros((1, 1), np.uint64), 64)


def test_c_status_on_hostile_geometry():
    h = W._handle(1)
    g = ffi.new("takane_conv2d_geometry *")
    y = np.zeros(64, np.float32)
    x = np.zeros(64, np.uint64)
    yp, xp = ffi.from_buffer("float[]", y), ffi.from_buffer("uint64_t[]", x)

    def run(**fields):
        base = dict(batch=1, in_h=3, in_w=3, stride_h=1, stride_w=1, dilation_h=1, dilation_w=1,
                    pad_top=0, pad_bottom=0, pad_left=0, pad_right=0, pad_value=0)
        base.update(fields)
        for k, v in base.items():
            setattr(g, k, v)
        return lib.takane_binary_conv2d(h, g, xp, ffi.NULL, ffi.NULL, ffi.NULL, yp, 1)

    assert run() == lib.TAKANE_OK
    big = 2**62
    assert run(batch=-1) == lib.TAKANE_ERR_NEGATIVE_DIMENSION
    assert run(in_h=big) == lib.TAKANE_ERR_BAD_GEOMETRY
    assert run(stride_w=0) == lib.TAKANE_ERR_BAD_GEOMETRY
    assert run(dilation_h=big) == lib.TAKANE_ERR_BAD_GEOMETRY
    assert run(pad_left=-1) == lib.TAKANE_ERR_BAD_GEOMETRY
    assert run(pad_value=5) == lib.TAKANE_ERR_BAD_GEOMETRY
    assert run(in_h=2) == lib.TAKANE_ERR_BAD_GEOMETRY  # smaller than the kernel
    assert run(batch=2**31 - 1, in_h=2**31 - 1, in_w=2**31 - 1) == lib.TAKANE_ERR_BAD_GEOMETRY  # no such buffer
    assert lib.takane_binary_conv2d(ffi.NULL, g, xp, ffi.NULL, ffi.NULL, ffi.NULL, yp, 1) == lib.TAKANE_ERR_NULL_POINTER
    assert lib.takane_binary_conv2d(h, ffi.NULL, xp, ffi.NULL, ffi.NULL, ffi.NULL, yp, 1) == lib.TAKANE_ERR_NULL_POINTER
    run()
    assert lib.takane_binary_conv2d(h, g, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, yp, 1) == lib.TAKANE_ERR_NULL_POINTER
    assert lib.takane_binary_conv2d(h, g, xp, ffi.NULL, ffi.NULL, ffi.NULL, yp, -1) == lib.TAKANE_ERR_BAD_THREADS
    t = ffi.new("float[]", [0.0, 0.0])
    yb = ffi.from_buffer("uint64_t[]", x)
    assert lib.takane_binary_conv2d_bits(h, g, xp, ffi.NULL, ffi.NULL, ffi.NULL, t, 2, yb, 1) == \
        lib.TAKANE_ERR_BAD_THRESHOLD_LEN
    out = ffi.new("takane_conv_weights **")
    wb = ffi.from_buffer("uint64_t[]", x)
    assert lib.takane_conv_weights_create(4, 3, 3, 16, 3, wb, out) == lib.TAKANE_ERR_BAD_GEOMETRY
    assert lib.takane_conv_weights_create(4, 0, 3, 16, 1, wb, out) == lib.TAKANE_ERR_BAD_GEOMETRY
    assert lib.takane_conv_weights_create(4, -1, 3, 16, 1, wb, out) == lib.TAKANE_ERR_NEGATIVE_DIMENSION
    assert lib.takane_conv_weights_create(1, 2**20, 2**20, 16, 1, wb, out) == lib.TAKANE_ERR_K_TOO_LARGE
    assert lib.takane_conv_weights_create(1, 1, 1, 16, 1, ffi.NULL, out) == lib.TAKANE_ERR_NULL_POINTER
    assert lib.takane_binary_max_pool2d(g, 16, 2, 2, xp, yb, 1) == lib.TAKANE_OK
    g.dilation_h = 2
    assert lib.takane_binary_max_pool2d(g, 16, 2, 2, xp, yb, 1) == lib.TAKANE_ERR_BAD_GEOMETRY


# ---- persistence -------------------------------------------------------------------------


def test_roundtrip_equality_pickle(tmp_path):
    for scale in (None, "mean_abs"):
        w = tk.pack_conv_weights(RNG.standard_normal((5, 3, 2, 70)), scale=scale)
        p = tmp_path / "w.tkc"
        w.save(p)
        back = tk.PackedConvWeights.load(p)
        assert back == w and back.kernel_size == (3, 2) and back.in_channels == 70
        assert pickle.loads(pickle.dumps(w)) == w
        x = tk.pack_bits(RNG.standard_normal((1, 4, 4, 70)))
        np.testing.assert_array_equal(tk.binary_conv2d(x, back, padding=1), tk.binary_conv2d(x, w, padding=1))
    assert w != tk.pack_conv_weights(RNG.standard_normal((5, 3, 2, 70)))
    with pytest.raises(ValueError):
        w.bits[0, 0, 0, 0] = 1  # read-only
    with pytest.raises(AttributeError):
        w.scale = None


def test_load_rejects_truncated_corrupt_and_hostile_files(tmp_path):
    w = tk.pack_conv_weights(RNG.standard_normal((4, 3, 3, 8)))
    good = tmp_path / "good"
    w.save(good)
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "garbage": b"PK\x03\x04" + bytes(range(256)) * 4,
        "npy": b"\x93NUMPY" + bytes(100),
    }
    corrupt = bytearray(data)
    corrupt[len(corrupt) * 3 // 5] ^= 0xFF  # inside the bits member: its CRC-32 fails
    cases["flipped"] = bytes(corrupt)
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(ValueError):
            tk.PackedConvWeights.load(p)

    def npz(path, compress=False, **arrays):
        (np.savez_compressed if compress else np.savez)(path, **arrays)
        return path

    base = dict(format=np.array("takane_kernels.PackedConvWeights"), format_version=np.array(1),
                in_channels=np.array(8), bits=w.bits)
    hostile = [
        dict(base, format=np.array("takane_kernels.PackedWeights")),
        dict(base, format_version=np.array(2)),
        dict(base, in_channels=np.array(0)),
        dict(base, in_channels=np.array(100)),                           # words mismatch
        dict(base, bits=w.bits.astype(np.int64)),
        dict(base, bits=np.full((1, 1, 1, 1), 2**63, np.uint64)),        # padding bits
        dict(base, scale=np.zeros(4, np.float64)),
        dict(base, scale=np.array([1, np.nan, 1, 1], np.float32)),
        dict(base, extra=np.zeros(1)),
        {k: v for k, v in base.items() if k != "bits"},
        dict(base, bits=np.zeros((1, 0, 3, 1), np.uint64)),                # empty kernel
    ]
    for i, arrays in enumerate(hostile):
        with pytest.raises(ValueError):
            tk.PackedConvWeights.load(npz(tmp_path / f"h{i}.npz", **arrays))
    with pytest.raises(ValueError, match="compressed"):
        tk.PackedConvWeights.load(npz(tmp_path / "c.npz", compress=True, **base))
    with zipfile.ZipFile(tmp_path / "p.npz", "w") as z:
        z.writestr("bits.npy", b"not an npy")
    with pytest.raises(ValueError):
        tk.PackedConvWeights.load(tmp_path / "p.npz")
