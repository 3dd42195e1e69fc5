"""The accuracy demo (``python -m takane_kernels demo``), reduced: one seed, two epochs.

Checks that the pipeline trains every variant in PyTorch (``takane_kernels.torch``'s
quantization-aware modules), that the converted binary networks' inference on the kernels
agrees with ``takane_kernels.reference`` on every ISA (W1A1 bit-exact, float within its
bound) and with the training model, that the checker itself catches a wrong value, that
a seed's accuracies are reproducible, that the memory column is the packed size, and that
the command writes its table, JSON and chart.

Skipped (with the reason) when PyTorch or scikit-learn is not installed; with
TAKANE_REQUIRE_TORCH=1 (CI) a missing torch is an error instead.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

if os.environ.get("TAKANE_REQUIRE_TORCH") == "1":
    import torch  # noqa: F401 - must be importable in CI
else:
    pytest.importorskip("torch", reason="PyTorch is not installed (the demo trains with it: extra 'demo'; "
                        "CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)")
pytest.importorskip("sklearn", reason='the demo needs scikit-learn: pip install "takane-kernels[demo]"')

import torch  # noqa: E402
from torch import nn  # noqa: E402

from takane_kernels.programs import demo as _demo  # noqa: E402
from takane_kernels import reference as ref  # noqa: E402
from takane_kernels.torch import BinaryConv2d, BinaryLinear, QuantConv2d  # noqa: E402

from conftest import assert_ran  # noqa: E402

pytestmark = pytest.mark.slow  # a program or a training run: deselect with -m 'not slow'


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
        if r["kind"] in ("w1a1", "w1af", "fp32"):  # timed (one sample each with budget 0)
            assert r["pt_t1"] > 0 and r["pt_t256"] > 0
            assert r["kind"] == "fp32" or (r["t1"] > 0 and r["t256"] > 0)


def test_binary_rows_run_on_the_kernels_and_agree_with_training(reduced):
    report, models = reduced
    for r in report["rows"]:
        model, deployed = models[r["key"]]
        want = {"w1a1": "bit-exact + bound", "w1af": "within bound"}.get(r["kind"], "PyTorch")
        assert r["check"] == want, r["key"]
        if r["kind"] in ("w1a1", "w1af"):
            layers = _demo.kernel_layers(deployed)
            assert len(layers) == 3, r["key"]  # every layer on the kernels
            assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in deployed.modules()), r["key"]
            # the converted model predicts as the training model (W1A1: a first-layer float
            # rounding may flip a value sitting at a threshold, so not always bit-identical)
            assert r["agree_training"] >= 0.97, r["key"]
        else:
            assert deployed is None and r["agree_training"] is None
    conv = models["conv_w1a1_adaptive"][1]
    assert isinstance(conv[0], _demo.PatchConv)
    assert [type(m) for m in _demo.kernel_layers(conv)] == [BinaryLinear, BinaryConv2d, BinaryConv2d]


def test_binary_models_match_reference_on_every_isa(reduced, on_isa, isa_name):
    _, models = reduced
    data = _demo.load_data()
    for key, (model, deployed) in models.items():
        if deployed is None:
            continue
        arch = "conv" if key.startswith("conv") else "mlp"
        x = _demo.as_input(data[2][:97], arch)
        kind = "within bound" if key.startswith("w1af") else "bit-exact + bound"
        assert _demo.check_reference(deployed, x) == kind, key
        assert_ran(isa_name)
        with torch.no_grad():
            if kind == "bit-exact + bound":  # after the float first layer: the training model's logits exactly
                assert _demo.check_training_match(model, deployed, x), key
            else:
                assert (deployed(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.97, key


def test_reference_check_catches_a_wrong_value(reduced, monkeypatch):
    _, models = reduced
    _, deployed = models["w1a1_adaptive"]
    x = _demo.as_input(_demo.load_data()[2][:64], "mlp")
    real = ref.binary_linear

    def one_off(*args, **kwargs):
        y = real(*args, **kwargs).copy()
        y[3, 0] += 2  # one dot product off by one ±1 pair
        return y

    monkeypatch.setattr(ref, "binary_linear", one_off)
    with pytest.raises(AssertionError, match="layer 2"):
        _demo.check_reference(deployed, x)


def test_a_seed_is_reproducible():
    kw = dict(seeds=1, epochs=1, ft_epochs=1, variants=["w1a1_adaptive"], timing=False, log=lambda *a: None)
    threads = torch.get_num_threads()
    a, b = _demo.run(**kw), _demo.run(**kw)
    assert [r["acc"] for r in a["rows"]] == [r["acc"] for r in b["rows"]]
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()


def test_weight_bytes_are_bits_plus_scales(reduced):
    report, models = reduced
    rows = {r["key"]: r for r in report["rows"]}
    words = [1, 4, 4]  # ceil(K/64) for K = 64, 256, 256
    n = [256, 256, 10]
    bits = sum(8 * w * r for w, r in zip(words, n))
    assert rows["fp32"]["weight_bytes"] == 4 * (64 * 256 + 256 * 256 + 256 * 10)
    # batch norm folded: the middle layer's scale goes into its integer thresholds
    assert rows["w1a1_naive"]["weight_bytes"] == bits + 4 * (256 + 10)
    assert rows["w1a1_naive_nobn"]["weight_bytes"] == bits + 4 * sum(n)  # + per-row alpha
    assert rows["w1af_ft_onebit"]["weight_bytes"] == bits + 4 * sum(n) + 4 * (64 + 256 + 256)  # + in_scale
    assert rows["int8"]["weight_bytes"] == 64 * 256 + 256 * 256 + 256 * 10 + 4 * sum(n)
    # conv: 9 patch taps (1 word) x 32; 3x3 taps of 32 channels (1 word each) x 64, folded
    # (no scale); 6x6 taps of 64 channels x 10 + scale
    assert rows["conv_w1a1_naive"]["weight_bytes"] == 8 * (32 * 1 + 64 * 9 + 10 * 36) + 4 * (32 + 10)
    assert rows["conv_fp32"]["weight_bytes"] == 4 * (32 * 9 + 64 * 288 + 10 * 2304)
    assert sum(m.weights.nbytes for m in _demo.kernel_layers(models["w1a1_naive"][1])) == rows["w1a1_naive"][
        "weight_bytes"]


def test_patch_conv_is_the_weight_only_convolution():
    """PatchConv (unfold + W1A-float BinaryLinear) computes the QuantConv2d's forward
    within the kernel's bound, in NCHW shape / channels_last memory; other geometries
    are refused."""
    torch.manual_seed(3)
    q = QuantConv2d(3, 8, 3, padding=1, bias=True).eval()
    x = torch.randn(2, 3, 7, 5)
    pc = _demo.PatchConv(q)
    with torch.no_grad():
        want, got = q(x), pc(x)
    assert got.shape == want.shape == (2, 8, 7, 5)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stride 1"):
        _demo.PatchConv(QuantConv2d(3, 8, 3, stride=2))
    with pytest.raises(ValueError, match="weight-only"):
        _demo.PatchConv(QuantConv2d(3, 8, 3, input_quantizer=_demo._quantizer(_demo.VARIANTS[1], 3, 1)))


def test_fused_fp32_network_is_the_eval_network(reduced):
    _, models = reduced
    for key in ("fp32", "conv_fp32"):
        model = models[key][0]
        x = _demo.as_input(_demo.load_data()[2][:50], "conv" if key.startswith("conv") else "mlp")
        fused = _demo.fuse_batchnorm(model)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
        with torch.no_grad():
            torch.testing.assert_close(fused(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_command_writes_table_json_and_chart(tmp_path, capsys):
    from takane_kernels.__main__ import main

    out = tmp_path / "demo"
    assert main(["demo", "--seeds", "1", "--epochs", "1", "--ft-epochs", "1", "--no-timing", "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(_demo.VARIANTS) + 1
    assert "W1A1 adaptive (t = 0.5·EMA std)" in table and "vs FP32" in table and "PyTorch" in table
    report = json.loads((out / "results.json").read_text())
    assert report["meta"]["seeds"] == 1 and len(report["rows"]) == len(_demo.VARIANTS)
    png = out / "accuracy.png"
    if png.exists():  # matplotlib is part of the demo extra, but the table does not need it
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "table.md" in capsys.readouterr().out


def test_without_torch_the_command_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(_demo, "torch", None)
    with pytest.raises(SystemExit, match="needs PyTorch"):
        _demo.main(["--seeds", "1", "--epochs", "1", "--no-timing", "--out", str(tmp_path)])
