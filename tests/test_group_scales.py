"""Group scales on PackedWeights (DESIGN §9) and the q8_0 reference quantizer.

The kernels' tests (W1A-float / W1A8 against the reference) live with the kernels; this file
checks the container, its persistence and the oracle itself against plainer models.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("k", [0, 1, 64, 127, 128, 129, 300])
@pytest.mark.parametrize("g", [64, 128, 192])
def test_pack_weights_group_scale_is_mean_abs_per_group(k, g):
    w = _rng(k).standard_normal((5, k)).astype(np.float32)
    pw = tk.pack_weights(w, group_size=g)
    assert pw.group_size == g and pw.scale is None
    assert pw.group_scale.shape == (5, -(-k // g)) and pw.group_scale.dtype == np.float32
    for n in range(5):
        for j in range(pw.group_scale.shape[1]):
            part = w[n, j * g:(j + 1) * g].astype(np.float64)  # the partial last group: its real elements
            assert pw.group_scale[n, j] == np.float32(np.abs(part).mean())
    assert pw == ref.pack_weights(w, group_size=g)
    assert pw.nbytes == pw.bits.nbytes + pw.group_scale.nbytes


def test_group_scale_validation():
    bits = tk.pack_bits(np.ones((3, 130)))
    ok = np.ones((3, 3), np.float32)
    tk.PackedWeights(bits, 130, group_scale=ok, group_size=64)
    with pytest.raises(ValueError, match="both or neither"):
        tk.PackedWeights(bits, 130, group_scale=ok)
    with pytest.raises(ValueError, match="both or neither"):
        tk.PackedWeights(bits, 130, group_size=64)
    for bad in (0, -64, 32, 100):
        with pytest.raises(ValueError, match="multiple of 64"):
            tk.PackedWeights(bits, 130, group_scale=ok, group_size=bad)
    for bad in (64.0, True, "64"):
        with pytest.raises(TypeError):
            tk.PackedWeights(bits, 130, group_scale=ok, group_size=bad)
    with pytest.raises(ValueError, match="shape"):
        tk.PackedWeights(bits, 130, group_scale=np.ones((3, 2)), group_size=64)
    with pytest.raises(ValueError, match="finite"):
        tk.PackedWeights(bits, 130, group_scale=np.full((3, 3), np.inf), group_size=64)
    with pytest.raises(TypeError):
        tk.PackedWeights(bits, 130, group_scale=np.ones((3, 3), complex), group_size=64)
    with pytest.raises(ValueError, match="mean_abs"):
        tk.pack_weights(np.ones((3, 130)), scale="onebit", group_size=64)
    with pytest.raises(ValueError, match="mean_abs"):
        tk.pack_weights(np.ones((3, 130)), scale=None, group_size=64)


def test_group_scale_is_a_private_read_only_copy():
    gs = np.ones((2, 1), np.float32)
    pw = tk.PackedWeights(tk.pack_bits(np.ones((2, 64))), 64, group_scale=gs, group_size=64)
    gs[0, 0] = 5
    assert pw.group_scale[0, 0] == 1 and not pw.group_scale.flags.writeable
    other = tk.PackedWeights(pw.bits, 64, group_scale=gs, group_size=64)
    assert other != pw and pickle.loads(pickle.dumps(pw)) == pw


def test_save_load_version_2_and_version_1(tmp_path):
    w = _rng(1).standard_normal((4, 200))
    grouped = tk.pack_weights(w, group_size=128, in_scale=np.linspace(1, 2, 200))
    grouped.save(tmp_path / "g.npz")
    with np.load(tmp_path / "g.npz") as z:
        assert int(z["format_version"]) == 2 and int(z["group_size"]) == 128
        assert z["group_scale"].dtype == np.float32
    assert tk.PackedWeights.load(tmp_path / "g.npz") == grouped
    plain = tk.pack_weights(w)  # no group scales: still written as version 1
    plain.save(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as z:
        assert int(z["format_version"]) == 1 and "group_scale" not in z.files
    assert tk.PackedWeights.load(tmp_path / "p.npz") == plain


@pytest.mark.parametrize("change, match", [
    ({"format_version": np.int64(1)}, "unexpected arrays"),  # group arrays in a version-1 file
    ({"group_size": None}, "together"),
    ({"group_size": np.int64(96)}, "multiple of 64"),
    ({"group_size": np.float64(128)}, "integer"),
    ({"group_scale": np.ones((4, 2))}, "float32"),
    ({"group_scale": np.ones((4, 3), np.float32)}, "shape"),
    ({"group_scale": np.full((4, 2), np.nan, np.float32)}, "finite"),
])
def test_invalid_version_2_files(tmp_path, change, match):
    pw = tk.pack_weights(_rng(2).standard_normal((4, 200)), group_size=128)
    arrays = {"format": np.array("takane_kernels.PackedWeights"), "format_version": np.int64(2),
              "k": np.int64(200), "bits": pw.bits, "group_size": np.int64(128),
              "group_scale": pw.group_scale}
    for key, v in change.items():
        if v is None:
            del arrays[key]
        else:
            arrays[key] = v
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        tk.PackedWeights.load(tmp_path / "bad.npz")


def _f32(v):
    """Round a Python float to float32 (struct: independent of numpy)."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


def _q8_model(row):
    """quantize_row_q8_0_ref one value at a time with Python floats rounded to float32."""
    k = len(row)
    nb = -(-k // 32)
    vals = [float(v) for v in row] + [0.0] * (nb * 32 - k)
    q, d16 = [], []
    for b in range(nb):
        blk = vals[b * 32:(b + 1) * 32]
        amax = max(abs(v) for v in blk)
        d = _f32(amax / 127.0)  # one float32 division: float64 quotient rounded once is the same
        inv = _f32(1.0 / d) if d else 0.0
        for v in blk:
            p = _f32(v * inv)
            q.append(int(abs(p) + 0.5) * (1 if p >= 0 else -1))  # roundf: half away from zero
        d16.append(float(np.float16(d)))
    return q, d16


@pytest.mark.parametrize("k", [1, 31, 32, 33, 100])
def test_quantize_q8_0_matches_a_scalar_model(k):
    rng = _rng(k)
    x = (rng.standard_normal((3, k)) * rng.choice([1e-3, 1, 50], size=(3, 1))).astype(np.float32)
    x[0, : min(k, 32)] = 0  # an all-zero block: d = 0, q = 0
    if k > 2:
        x[1, 1] = -x[1, 2]  # ties between elements
    q, d = ref.quantize_q8_0(x)
    for r in range(3):
        mq, md = _q8_model(x[r])
        assert q[r].tolist() == mq and d[r].tolist() == md


def test_quantize_q8_0_rounds_half_away_from_zero():
    # amax 127 -> d = 1, id = 1: q = roundf(x) exactly, where numpy's round would give 0, 2, -2
    x = np.zeros(32, np.float32)
    x[:5] = [127, 0.5, 2.5, -2.5, 0.49999997]
    q, d = ref.quantize_q8_0(x)
    assert d.tolist() == [1.0] and q[:5].tolist() == [127, 1, 3, -3, 0]


def test_quantize_q8_0_rejects_what_has_no_block_scale():
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="finite"):
            ref.quantize_q8_0(np.array([1, bad], np.float32))
    with pytest.raises(ValueError, match="fp16"):
        ref.quantize_q8_0(np.array([1e7], np.float32))
    with pytest.raises(TypeError):
        ref.quantize_q8_0(np.ones(3))


def test_reference_group_scales_equal_a_dense_product():
    rng = _rng(3)
    w = rng.standard_normal((6, 300))
    pw = tk.pack_weights(w, group_size=128, in_scale=rng.uniform(0.5, 2, 300))
    x = rng.standard_normal((2, 300))
    dense = np.where(w >= 0, 1.0, -1.0) * np.repeat(pw.group_scale.astype(np.float64), 128, axis=1)[:, :300]
    expect = (x * pw.in_scale) @ dense.T
    np.testing.assert_allclose(ref.binary_weight_matmul(x, pw), expect, rtol=1e-12)
    # q8_0 on activations that quantize exactly (a block's max is 127, the rest integers)
    xi = rng.integers(-127, 128, size=(2, 300)).astype(np.float32)
    xi[:, ::32] = 127
    pw_plain = tk.PackedWeights(pw.bits, 300, group_scale=pw.group_scale, group_size=128)
    got = ref.binary_weight_matmul(xi, pw_plain, activations="q8_0")
    np.testing.assert_allclose(got, xi.astype(np.float64) @ dense.T, rtol=1e-12)
    assert np.all(ref.binary_weight_matmul_error_bound(x, pw) > 0)
    assert np.all(ref.binary_weight_matmul_error_bound(xi, pw_plain, activations="q8_0") > 0)
    with pytest.raises(ValueError, match="activations"):
        ref.binary_weight_matmul(x, pw, activations="int8")


def test_w1a1_layer_refuses_group_scales():
    pw = tk.pack_weights(_rng(4).standard_normal((3, 128)), group_size=64)
    for x in (np.ones((2, 128), np.float32), tk.pack_bits(np.ones((2, 128)))):
        with pytest.raises(ValueError, match="group scales"):
            tk.binary_linear(x, pw)
