"""PackedWeights: immutability, validation, persistence."""

import numpy as np
import pytest

import takane_kernels as tk


def make(k=70, n=5, **kw):
    rng = np.random.default_rng(k)
    return tk.pack_weights(rng.standard_normal((n, k)), **kw)


def test_attributes():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 70))
    pw = tk.pack_weights(w)
    assert (pw.n, pw.k, pw.bits.shape, pw.bits.dtype) == (5, 70, (5, 2), np.uint64)
    np.testing.assert_allclose(pw.scale, np.abs(w).mean(axis=1), rtol=1e-6)
    assert pw.scale.dtype == np.float32 and pw.in_scale is None
    assert pw.nbytes == 5 * 2 * 8 + 5 * 4
    assert tk.pack_weights(w, scale=None).scale is None
    assert "n=5" in repr(pw)


def test_immutable():
    pw = make()
    with pytest.raises(ValueError):
        pw.bits[0, 0] = 1
    with pytest.raises(ValueError):
        pw.scale[0] = 1
    with pytest.raises(AttributeError):
        pw.k = 3
    src = pw.bits.copy()
    pw2 = tk.PackedWeights(src, 70)
    src[0, 0] ^= np.uint64(1)  # the caller's array is copied, not shared
    assert pw2.bits[0, 0] == pw.bits[0, 0]


@pytest.mark.parametrize("kw", [{}, {"scale": None}, {"in_scale": np.linspace(0.5, 2, 70)}])
def test_save_load_roundtrip(tmp_path, kw):
    pw = make(**kw)
    path = tmp_path / "w.npz"
    pw.save(path)
    back = tk.PackedWeights.load(path)
    assert back == pw
    assert back.bits.flags.writeable is False


def test_load_rejects_corrupt_files(tmp_path):
    pw = make()
    path = tmp_path / "w.npz"
    pw.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable PackedWeights file"):
        tk.PackedWeights.load(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a readable PackedWeights file"):
        tk.PackedWeights.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", bits=pw.bits)
    with pytest.raises(ValueError, match="format tag missing"):
        tk.PackedWeights.load(tmp_path / "other.npz")
    np.savez(tmp_path / "v9.npz", format=np.array("takane_kernels.PackedWeights"), format_version=9, k=70, bits=pw.bits)
    with pytest.raises(ValueError, match="format version"):
        tk.PackedWeights.load(tmp_path / "v9.npz")
    bad = pw.bits.copy()
    bad[0, -1] |= np.uint64(1) << np.uint64(63)
    np.savez(tmp_path / "pad.npz", format=np.array("takane_kernels.PackedWeights"), format_version=1, k=70, bits=bad)
    with pytest.raises(ValueError, match="padding"):
        tk.PackedWeights.load(tmp_path / "pad.npz")
    with pytest.raises(ValueError, match="not a readable"):
        tk.PackedWeights.load(tmp_path / "missing.npz")


def test_pickle_and_copy_keep_values_not_the_c_handle():
    import copy
    import pickle

    pw = make(in_scale=np.linspace(1, 2, 70))
    x = np.random.default_rng(0).standard_normal((3, 70))
    y = tk.binary_matmul(x, pw)  # builds the prepacked handle
    for clone in (pickle.loads(pickle.dumps(pw)), copy.copy(pw), copy.deepcopy(pw)):
        assert clone == pw
        np.testing.assert_array_equal(tk.binary_matmul(x, clone), y)
