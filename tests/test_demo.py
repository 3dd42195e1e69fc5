"""The accuracy demo (``python -m takane_kernels demo``), reduced: one seed, two epochs.

Checks that the pipeline trains every variant, that the binary networks' inference on
the kernels agrees with ``takane_kernels.reference`` on every ISA (W1A1 bit-exact, float
within its bound), that the checker itself catches a wrong bit, that the memory column
is the packed size, and that the command writes its table, JSON and chart.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason='the demo needs scikit-learn: pip install "takane-kernels[demo]"')

import takane_kernels as tk  # noqa: E402
from takane_kernels import _demo  # noqa: E402
from takane_kernels import reference as ref  # noqa: E402

from conftest import assert_ran  # noqa: E402


@pytest.fixture(scope="module")
def reduced():
    return _demo.run(seeds=1, epochs=2, ft_epochs=1, time_budget=0.0, log=lambda *a: None, return_models=True)


def test_every_variant_trains_and_beats_chance(reduced):
    report, _ = reduced
    rows = {r["key"]: r for r in report["rows"]}
    assert set(rows) == {v.key for v in _demo.VARIANTS}
    assert report["meta"]["train"] + report["meta"]["test"] == 1797  # the whole digits set, split once
    assert rows["fp32"]["acc_mean"] > 0.85  # digits: an MLP passes 85% within two epochs
    assert rows["conv_fp32"]["acc_mean"] > 0.85  # one epoch
    for key in ("w1a1_naive", "w1a1_adaptive", "w1a1_centred", "w1af_ft_onebit", "int8", "conv_w1a1_adaptive"):
        assert rows[key]["acc_mean"] > 0.5, key  # ten classes: chance is 10%
    for r in rows.values():
        fp32 = rows["conv_fp32" if r["arch"] == "conv" else "fp32"]
        assert r["rel_fp32"] == pytest.approx(r["acc_mean"] / fp32["acc_mean"])
        assert len(r["acc"]) == 1 and r["acc_std"] == 0.0


def test_kernels_agree_with_numpy_float_model(reduced):
    report, _ = reduced
    for r in report["rows"]:
        if r["agree_numpy"] is not None:  # trained nets: same weights as plain numpy float math
            assert r["agree_numpy"] >= 0.99, r["key"]
        want = {"w1a1": "bit-exact + bound", "w1af": "within bound"}.get(r["kind"], "numpy")
        assert r["check"] == want, r["key"]


def test_binary_models_match_reference_on_every_isa(reduced, on_isa, isa_name):
    _, models = reduced
    x = _demo.load_data()[2][:97]
    for key, model in models.items():
        if model.kind == "w1a1":
            assert model.check_reference(x) == "bit-exact + bound"
            assert_ran(isa_name)
            if model.arch == "conv":  # the conv's patches: model.check_reference covers them
                continue
            # and the whole forward is the reference's, bit for bit, given the same first layer
            (w1, b1), (w2, b2), (w3, b3) = model.layers
            t1, t2 = model.thresholds
            h = tk.binary_weight_matmul(x, w1, bias=b1)
            y = tk.binary_linear(tk.binary_linear(h, w2, threshold=t1, bias=b2, out_threshold=t2), w3, bias=b3)
            assert_ran(isa_name)
            y_ref = ref.binary_linear(ref.binary_linear(h, w2, threshold=t1, bias=b2, out_threshold=t2), w3, bias=b3)
            np.testing.assert_array_equal(y, y_ref)
        elif model.kind == "w1af":
            assert model.check_reference(x) == "within bound"
            assert_ran(isa_name)
            logits = model.forward(x)
            assert (logits.argmax(1) == model.forward(x, lib=ref).argmax(1)).mean() >= 0.98


def test_reference_check_catches_a_wrong_bit(reduced, monkeypatch):
    _, models = reduced
    model = models["w1a1_adaptive"]
    x = _demo.load_data()[2][:64]
    real = ref.binary_linear

    def one_bit_off(*args, **kwargs):
        y = real(*args, **kwargs)
        if y.dtype == np.uint64:
            y = y.copy()
            y[3, 0] ^= np.uint64(1)
        return y

    monkeypatch.setattr(ref, "binary_linear", one_bit_off)
    with pytest.raises(AssertionError, match="layer 2"):
        model.check_reference(x)


def test_weight_bytes_are_bits_plus_scales(reduced):
    report, models = reduced
    rows = {r["key"]: r for r in report["rows"]}
    words = [1, 4, 4]  # ceil(K/64) for K = 64, 256, 256
    n = [256, 256, 10]
    bits = sum(8 * w * r for w, r in zip(words, n))
    assert rows["fp32"]["weight_bytes"] == 4 * (64 * 256 + 256 * 256 + 256 * 10)
    assert rows["w1a1_naive"]["weight_bytes"] == bits + 4 * sum(n)  # + per-row alpha
    assert rows["w1af_ft_onebit"]["weight_bytes"] == bits + 4 * sum(n) + 4 * (64 + 256 + 256)  # + in_scale
    assert rows["int8"]["weight_bytes"] == 64 * 256 + 256 * 256 + 256 * 10 + 4 * sum(n)
    assert all(isinstance(w, tk.PackedWeights) for w, _ in models["w1a1_naive"].layers)
    # conv: K = 9, 9 * 32, 36 * 64 -> 1, 5, 36 words; N = 32, 64, 10
    assert rows["conv_w1a1_naive"]["weight_bytes"] == 8 * (32 * 1 + 64 * 5 + 10 * 36) + 4 * (32 + 64 + 10)
    assert rows["conv_fp32"]["weight_bytes"] == 4 * (32 * 9 + 64 * 288 + 10 * 2304)


def test_conv_patches_are_the_convolution():
    """im2col_valid + matmul is the 3x3 'valid' convolution, and col2im_valid its transpose."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2 * 64, 3)).astype(np.float32)  # two 8x8 maps, 3 channels
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)  # (out, dy, dx, in)
    y = (_demo.im2col_valid(a, 2) @ w.reshape(4, -1).T).reshape(2, 6, 6, 4)
    m = a.reshape(2, 8, 8, 3)
    direct = np.zeros((2, 6, 6, 4))
    for i in range(6):
        for j in range(6):
            direct[:, i, j] = np.einsum("byxc,oyxc->bo", m[:, i:i + 3, j:j + 3], w)
    np.testing.assert_allclose(y, direct, rtol=1e-5, atol=1e-5)
    d = rng.standard_normal((2 * 36, 27))
    lhs = np.sum(_demo.im2col_valid(a, 2) * d)  # <P a, d> == <a, P^T d>
    np.testing.assert_allclose(lhs, np.sum(a * _demo.col2im_valid(d, 2)), rtol=1e-6)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    p = _demo.im2col_same(x).reshape(8, 8, 9)
    assert p[0, 0, 0] == 0 and p[0, 0, 4] == x[0, 0] and p[7, 7, 8] == 0 and p[3, 4, 8] == x[0, 4 * 8 + 5]


def test_command_writes_table_json_and_chart(tmp_path, capsys):
    from takane_kernels.__main__ import main

    out = tmp_path / "demo"
    assert main(["demo", "--seeds", "1", "--epochs", "1", "--ft-epochs", "1", "--no-timing", "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(_demo.VARIANTS) + 1
    assert "W1A1 adaptive (t = 0.5·EMA std)" in table and "vs FP32" in table
    report = json.loads((out / "results.json").read_text())
    assert report["meta"]["seeds"] == 1 and len(report["rows"]) == len(_demo.VARIANTS)
    png = out / "accuracy.png"
    if png.exists():  # matplotlib is part of the demo extra, but the table does not need it
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "table.md" in capsys.readouterr().out
