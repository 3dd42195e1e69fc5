"""PackedWeights.save / load: the documented format, round trips, and every way a file can
be wrong — truncated anywhere, corrupted, wrong types, extra or missing arrays."""

import io
import os
import zipfile

import numpy as np
import pytest

import takane_kernels as tk

TAG = np.array("takane_kernels.PackedWeights")


def make(**kw):
    rng = np.random.default_rng(3)
    return tk.pack_weights(rng.standard_normal((6, 70)), **kw)


@pytest.mark.parametrize("kw", [{}, {"scale": None}, {"scale": "onebit"}, {"scale": None, "in_scale": np.linspace(0.5, 2, 70)}])
def test_round_trip(tmp_path, kw):
    pw = make(**kw)
    path = tmp_path / "weights.bin"  # any name: nothing is appended
    pw.save(path)
    assert os.listdir(tmp_path) == ["weights.bin"]  # no temporary file left behind
    back = tk.PackedWeights.load(path)
    assert back == pw and back.k == pw.k and back.n == pw.n
    for a, b in ((back.scale, pw.scale), (back.in_scale, pw.in_scale)):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == np.float32
            np.testing.assert_array_equal(a, b)
    assert tk.PackedWeights.load(str(path)) == pw  # str paths too


def test_empty_shapes_round_trip(tmp_path):
    for pw in (tk.PackedWeights(np.zeros((0, 2), np.uint64), 100), tk.PackedWeights(np.zeros((3, 0), np.uint64), 0)):
        pw.save(tmp_path / "e.npz")
        assert tk.PackedWeights.load(tmp_path / "e.npz") == pw


def test_documented_layout(tmp_path):
    """The file is a plain .npz with exactly the documented arrays and dtypes."""
    pw = make(scale="onebit")
    pw.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["bits", "format", "format_version", "in_scale", "k", "scale"]
        assert str(z["format"]) == "takane_kernels.PackedWeights"
        assert z["format_version"].dtype == np.int64 and int(z["format_version"]) == 1
        assert z["k"].dtype == np.int64 and int(z["k"]) == 70
        assert z["bits"].dtype == np.uint64 and z["bits"].shape == (6, 2)
        assert z["scale"].dtype == np.float32 and z["in_scale"].dtype == np.float32
    with zipfile.ZipFile(tmp_path / "w.npz") as zf:  # uncompressed members
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())


def test_truncated_at_every_length_is_rejected(tmp_path):
    pw = make(scale="onebit")
    pw.save(tmp_path / "w.npz")
    data = (tmp_path / "w.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    for length in sorted(set(range(0, len(data), max(1, len(data) // 97))) | {len(data) - 1, 1, 22}):
        cut.write_bytes(data[:length])
        with pytest.raises(ValueError, match="not a readable PackedWeights file|PackedWeights"):
            tk.PackedWeights.load(cut)


def test_corrupted_payload_is_rejected(tmp_path):
    pw = make()
    pw.save(tmp_path / "w.npz")
    data = bytearray((tmp_path / "w.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "w.npz") as zf:
        info = zf.getinfo("bits.npy")
    # flip one bit inside the bits array's data (past its local header and .npy header)
    pos = info.header_offset + 30 + len(info.filename) + info.compress_size - 3
    data[pos] ^= 0x10
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a readable PackedWeights file"):
        tk.PackedWeights.load(tmp_path / "bad.npz")  # the zip's CRC-32 catches it


def save_raw(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def good_arrays(pw):
    return dict(format=TAG, format_version=np.int64(1), k=np.int64(pw.k), bits=pw.bits, scale=pw.scale)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": np.array("something.else")}, "format tag missing"),
        ({"format": np.array(["takane_kernels.PackedWeights"] * 2)}, "format tag missing"),
        ({"format_version": np.int64(3)}, "format version"),
        ({"format_version": np.float64(1.0)}, "format version"),
        ({"k": np.float64(70)}, "k must be an integer"),
        ({"k": np.int64(129)}, "ceil"),
        ({"k": np.int64(-1)}, "out of range"),
        ({"bits": None}, "missing array 'bits'"),
        ({"k": None}, "missing array 'k'"),
        ({"bits": np.zeros((6, 2), np.int64)}, "2-D uint64"),
        ({"bits": np.zeros(12, np.uint64)}, "2-D uint64"),
        ({"scale": np.ones(6, np.float64)}, "scale must be float32"),
        ({"scale": np.ones(5, np.float32)}, r"shape \(6,\)"),
        ({"scale": np.array([1, np.inf, 1, 1, 1, 1], np.float32)}, "finite"),
        ({"in_scale": np.ones(69, np.float32)}, r"shape \(70,\)"),
        ({"extra": np.ones(3)}, "unexpected arrays"),
    ],
)
def test_invalid_contents_are_rejected(tmp_path, change, message):
    pw = make()
    arrays = good_arrays(pw)
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    save_raw(tmp_path / "w.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        tk.PackedWeights.load(tmp_path / "w.npz")


def test_padding_bits_rejected(tmp_path):
    pw = make()
    bad = pw.bits.copy()
    bad[0, -1] |= np.uint64(1) << np.uint64(63)  # k = 70: position 127 is padding
    save_raw(tmp_path / "w.npz", **{**good_arrays(pw), "bits": bad})
    with pytest.raises(ValueError, match="padding"):
        tk.PackedWeights.load(tmp_path / "w.npz")


def test_not_an_npz_at_all(tmp_path):
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not a readable PackedWeights file.*npz"):
        tk.PackedWeights.load(tmp_path / "single.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a readable"):
        tk.PackedWeights.load(tmp_path / "text.npz")
    with pytest.raises(ValueError, match="not a readable"):
        tk.PackedWeights.load(tmp_path)  # a directory
    with pytest.raises(ValueError, match="not a readable"):
        tk.PackedWeights.load(tmp_path / "missing.npz")
    buf = io.BytesIO()
    np.savez(buf, data=np.array([object()], dtype=object))  # pickled member
    (tmp_path / "pickle.npz").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="not a readable"):
        tk.PackedWeights.load(tmp_path / "pickle.npz")


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    pw = make()
    target = tmp_path / "w.npz"
    pw.save(target)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        make(scale=None).save(target)
    assert target.read_bytes() == before  # the old file is intact
    assert os.listdir(tmp_path) == ["w.npz"]
