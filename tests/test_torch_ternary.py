"""takane_kernels.torch ternary (BitNet b1.58) training and conversion: ``ternarize`` /
``Int8RowQuantizer`` against the formulas, their straight-through gradients,
``QuantLinear(scale="ternary")`` → ``convert()`` → ``BinaryLinear`` on ``TernaryWeights`` on
every ISA, state dicts, torch.compile, and the refused configurations.

Skipped (with the reason) when PyTorch is not installed; with TAKANE_REQUIRE_TORCH=1 (CI)
a missing torch is an error instead. Nothing in here skips otherwise.
"""

from __future__ import annotations

import io
import textwrap
import os

import numpy as np
import pytest

if os.environ.get("TAKANE_REQUIRE_TORCH") == "1":
    import torch  # noqa: F401 - must be importable in CI
else:
    pytest.importorskip("torch", reason="PyTorch is not installed (optional extra 'torch'; "
                        "CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import takane_kernels as tk  # noqa: E402
from takane_kernels import reference as ref  # noqa: E402
from takane_kernels.torch import (BinaryLinear, Int8RowQuantizer, QuantLinear, SignQuantizer,  # noqa: E402
                                  convert, linear_error_bound, ternarize)

from conftest import assert_ran  # noqa: E402


def _x(shape, seed, scale=1.0):
    return torch.from_numpy((np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32))


def _ternary_formula(w: np.ndarray, eps: float, gamma: np.float32) -> np.ndarray:
    """RoundClip(w / (gamma + eps), -1, 1) in float32 numpy: one correctly rounded op per step."""
    den = np.float32(gamma) + np.float32(eps)
    return np.clip(np.rint((w / den).astype(np.float32)), -1, 1)


# ---- the quantizers against their formulas -------------------------------------------------

@pytest.mark.parametrize("shape,eps", [((7, 33), 1e-5), ((64, 300), 1e-5), ((5, 4), 0.25)])
def test_ternarize_is_the_absmean_formula(shape, eps):
    w = _x(shape, seed=shape[1], scale=0.02)
    w[0, :3] = torch.tensor([0.0, 1e-9, -1e-9])
    t, gamma = ternarize(w, eps)
    wn = w.numpy()
    assert gamma.dtype == torch.float32 and gamma.shape == ()
    assert abs(float(gamma) - np.abs(wn.astype(np.float64)).mean()) <= 1e-6 * float(gamma)
    assert np.array_equal(t.numpy(), _ternary_formula(wn, eps, gamma.numpy()))
    assert set(np.unique(t.numpy())) <= {-1.0, 0.0, 1.0}
    # the library's float64 packer agrees except within float32 rounding of the 1/2 boundary
    tw = tk.pack_ternary(wn, eps=eps)
    ratio = np.abs(wn.astype(np.float64)) / (np.abs(wn.astype(np.float64)).mean() + eps)
    away = np.abs(ratio - 0.5) > 1e-5
    assert np.array_equal(tw.to_dense()[away], t.numpy()[away].astype(np.int8))
    assert away.mean() > 0.99


def test_ternarize_rounds_half_to_even_at_the_boundary():
    # mean |w| = 1.5 and eps = 0.5: the divisor is exactly 2, so 1 -> 0.5 (an exact tie, round
    # half to even: 0) and 3 -> 1.5 (-> 2, clipped to 1); pack_ternary (float64) agrees
    w = torch.tensor([[1.0, 3.0, -1.0, -1.0]])
    t, gamma = ternarize(w, 0.5)
    assert float(gamma) == 1.5
    assert t.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert tk.pack_ternary(w.numpy(), eps=0.5).to_dense().tolist() == [[0, 1, 0, 0]]


@pytest.mark.parametrize("shape", [(1, 1), (4, 17), (3, 5, 64), (2, 1000)])
def test_int8_row_quantizer_matches_the_reference_bit_for_bit(shape):
    x = _x(shape, seed=sum(shape), scale=5.0)
    x.view(-1, shape[-1])[0, 0] = 0.0
    if len(shape) > 1 and shape[-1] > 1:
        x.view(-1, shape[-1])[-1] = 0.0  # an all-zero row: the 1e-5 floor
    q, d = Int8RowQuantizer().quantize(x)
    qr, dr = ref.quantize_int8_row(x.numpy())
    assert np.array_equal(q.numpy(), qr.astype(np.float32)) and np.array_equal(d.numpy(), dr)
    # the formula, written out: a = max(max|x|, 1e-5), q = RoundClip(x * fl(127 / a)), d = fl(a / 127)
    xn = x.numpy()
    a = np.maximum(np.abs(xn).max(axis=-1), np.float32(1e-5)).astype(np.float32)
    qf = np.clip(np.rint((xn * (np.float32(127) / a)[..., None]).astype(np.float32)), -128, 127)
    assert np.array_equal(q.numpy(), qf) and np.array_equal(d.numpy(), (a / np.float32(127)).astype(np.float32))
    assert torch.equal(Int8RowQuantizer()(x), q * d.unsqueeze(-1))


def test_int8_row_quantizer_ties_round_half_to_even():
    # max |x| = 127: inv = 1, so x itself is rounded: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5]])
    q, d = Int8RowQuantizer().quantize(x)
    assert q.tolist() == [[127.0, 0.0, 2.0, 2.0, -0.0, -2.0]] and float(d) == 1.0


# ---- straight-through gradients -----------------------------------------------------------

def _rows_where_one_rounding_of_127_over_a_moves_q():
    """Rows [a, v] (max |x| = a) where fl(127 / a) and fl(fl(1 / a) * 127) differ and
    x * inv lands on different sides of a half: q differs by one unless 127 / a is the
    correctly rounded quotient (PyTorch computes `number / tensor` as reciprocal * number)."""
    rng = np.random.default_rng(7)
    a = rng.uniform(0.05, 50.0, 20000).astype(np.float32)
    inv = np.float32(127) / a
    two = (np.float32(1) / a) * np.float32(127)
    rows = []
    for ai, i1, i2 in zip(a[inv != two], inv[inv != two], two[inv != two]):
        for n in range(1, 120):
            v0 = np.float32((n + 0.5) / float(i1))
            for v in (v0, np.nextafter(v0, np.float32(0)), np.nextafter(v0, np.float32(np.inf))):
                if v < ai and np.rint(v * i1) != np.rint(v * i2):
                    rows.append((ai, v))
        if len(rows) >= 64:
            break
    return np.array(rows, dtype=np.float32)


def test_int8_row_quantizer_divides_127_by_a_correctly_rounded():
    x = _rows_where_one_rounding_of_127_over_a_moves_q()
    assert len(x) >= 16  # the construction found rows that separate the two roundings
    q, d = Int8RowQuantizer().quantize(torch.from_numpy(x))
    rq, rd = ref.quantize_int8_row(x)
    assert np.array_equal(d.numpy(), rd)
    assert np.array_equal(q.numpy(), rq)


def test_ternary_weight_gradient_is_straight_through():
    torch.manual_seed(0)
    q = QuantLinear(16, 4, bias=False, scale="ternary")
    x = _x((3, 16), seed=1)
    q(x).sum().backward()
    with torch.no_grad():
        t, gamma = q.ternary_weight()
    # y = (x @ t.T) * gamma; dt/dw = 1 / (gamma + eps) (identity STE): dL/dw = gamma/(gamma+eps) * sum_m x
    expect = (x.sum(0)[None, :].expand(4, 16) * gamma / (gamma + q.ternary_eps)).numpy()
    assert np.allclose(q.weight.grad.numpy(), expect, rtol=1e-5, atol=0)
    assert q.weight.grad.abs().min() > 0  # every weight gets a gradient, zeros included


def test_ternary_clip_ste_zeroes_gradients_outside_the_buckets():
    q = QuantLinear(4, 1, bias=False, scale="ternary", weight_ste="clip", ternary_eps=1e-5)
    with torch.no_grad():
        q.weight.copy_(torch.tensor([[0.1, 0.1, 0.1, 5.0]]))  # gamma = 1.325: 5 / 1.325 > 1.5
    q(torch.ones(1, 4)).sum().backward()
    g = q.weight.grad[0]
    assert g[3] == 0 and (g[:3] != 0).all()


def test_int8_row_activation_gradient_is_straight_through():
    torch.manual_seed(2)
    q = QuantLinear(32, 8, scale="ternary", input_quantizer=Int8RowQuantizer())
    x = _x((5, 32), seed=3).requires_grad_()
    q(x).sum().backward()
    with torch.no_grad():
        t, gamma = q.ternary_weight()
        _, d = q.input_quantizer.quantize(x)
        a = x.abs().amax(-1).clamp_min(1e-5)
    # y = (q @ t.T) * d * gamma; dq/dx = 127 / a: dL/dx = (127 / a) * d * gamma * t.sum(0) ≈ gamma * t.sum(0)
    expect = ((127.0 / a) * d)[:, None] * gamma * t.sum(0)[None, :]
    assert torch.allclose(x.grad, expect, rtol=1e-5, atol=1e-7)
    assert torch.allclose(x.grad, (gamma * t.sum(0)).expand(5, 32), rtol=1e-5, atol=1e-7)
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0 and q.bias.grad is not None


def test_ternary_training_reduces_a_loss():
    torch.manual_seed(4)
    teacher = nn.Linear(64, 16)
    q = QuantLinear.from_linear(nn.Linear(64, 16), scale="ternary", input_quantizer=Int8RowQuantizer())
    opt = torch.optim.Adam(q.parameters(), lr=3e-3)
    x = _x((256, 64), seed=5)
    with torch.no_grad():
        target = teacher(x)
    losses = []
    for _ in range(60):
        loss = ((q(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---- convert() ----------------------------------------------------------------------------

@pytest.mark.parametrize("k,n", [(1, 1), (63, 65), (129, 64), (1000, 33)])
@pytest.mark.parametrize("act", ["int8_row", "float32"])
@pytest.mark.parametrize("bias", [True, False])
def test_convert_ternary_within_bound(on_isa, k, n, act, bias):
    torch.manual_seed(k + n)
    iq = Int8RowQuantizer() if act == "int8_row" else None
    q = QuantLinear(k, n, bias, scale="ternary", input_quantizer=iq).eval()
    b = convert(q)
    assert isinstance(b, BinaryLinear) and isinstance(b.weights, tk.TernaryWeights)
    assert b.mode == ("int8_row" if act == "int8_row" else "w1a_float")
    with torch.no_grad():
        t, gamma = q.ternary_weight()
    assert np.array_equal(b.weights.to_dense(), t.numpy().astype(np.int8))  # the forward's own values
    assert b.weights.tensor_scale == float(gamma)
    x = _x((3, 7, k), seed=k, scale=3.0)
    x[0, 0] = 0.0  # a zero row (the int8 floor)
    y = b(x)
    assert_ran(on_isa)
    with torch.no_grad():
        y_train = q(x)
    err = np.abs(y.numpy().astype(np.float64) - y_train.numpy())
    assert (err <= linear_error_bound(x, b)).all()
    bn = None if not bias else q.bias.detach().numpy()
    acts = "int8_row" if act == "int8_row" else "float32"
    exact = ref.binary_weight_matmul(x.numpy(), b.weights, bias=bn, activations=acts)
    assert (np.abs(y.numpy() - exact) <= ref.binary_weight_matmul_error_bound(
        x.numpy(), b.weights, bias=bn, activations=acts)).all()


def test_convert_ternary_q8_0_and_sequential(on_isa):
    torch.manual_seed(9)
    model = nn.Sequential(QuantLinear(96, 64, scale="ternary", input_quantizer=Int8RowQuantizer()), nn.GELU(),
                          QuantLinear(64, 10, scale="ternary"))
    x = _x((4, 96), seed=10)
    d = convert(model, activations="q8_0")
    assert [m.mode for m in d if isinstance(m, BinaryLinear)] == ["int8_row", "w1a8"]  # the model's own quantizer wins
    y = d(x)
    assert_ran(on_isa)
    h = d[1](d[0](x))
    exact = ref.binary_weight_matmul(h.numpy(), d[2].weights, bias=d[2].bias.numpy(), activations="q8_0")
    assert (np.abs(y.numpy() - exact) <= ref.binary_weight_matmul_error_bound(
        h.numpy(), d[2].weights, bias=d[2].bias.numpy(), activations="q8_0")).all()
    assert isinstance(model[0], QuantLinear)  # the model itself is unchanged


def test_convert_ternary_nan_weights_refused():
    q = QuantLinear(8, 2, scale="ternary")
    with torch.no_grad():
        q.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        convert(q)


def test_converted_int8_row_layer_refuses_nan_input():
    b = convert(QuantLinear(8, 2, scale="ternary", input_quantizer=Int8RowQuantizer()))
    x = torch.ones(2, 8)
    x[1, 3] = float("nan")
    with pytest.raises(ValueError):
        b(x)


# ---- state dict, pickling, torch.compile ----------------------------------------------------

def test_ternary_binary_linear_state_dict_round_trip():
    torch.manual_seed(11)
    b = convert(QuantLinear(130, 20, scale="ternary", input_quantizer=Int8RowQuantizer()))
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["_extra_state"]["version"] == 3
    other = BinaryLinear(tk.pack_ternary(np.ones((20, 130), np.float32)), "int8_row", bias=torch.zeros(20))
    other.load_state_dict(state)
    assert other.weights == b.weights
    x = _x((5, 130), seed=12)
    assert torch.equal(other(x), b(x))
    # into a layer of another shape, or a 1-bit W1A1 layer: refused
    with pytest.raises(ValueError, match="state holds"):
        BinaryLinear(tk.pack_ternary(np.ones((3, 130), np.float32)), "int8_row", bias=torch.zeros(3)).load_state_dict(
            {"bias": torch.zeros(3), "_extra_state": state["_extra_state"]})
    w1a1 = BinaryLinear(tk.pack_weights(np.ones((20, 130), np.float32)), "w1a1", bias=torch.zeros(20))
    with pytest.raises(ValueError, match="mode"):
        w1a1.load_state_dict(state)
    # a version-3 state without its planes: a clear error, not a KeyError
    broken = {k: v for k, v in state["_extra_state"].items() if k != "nonzero"}
    with pytest.raises(ValueError, match="lacks.*nonzero"):
        other.set_extra_state(broken)
    # a 1-bit layer still writes version 2
    assert BinaryLinear(tk.pack_weights(np.ones((2, 64), np.float32)), "w1a8").get_extra_state()["version"] == 2


def test_torch_compile_of_a_converted_ternary_model():
    torch.manual_seed(13)
    model = nn.Sequential(QuantLinear(64, 48, scale="ternary", input_quantizer=Int8RowQuantizer()), nn.ReLU(),
                          QuantLinear(48, 8, scale="ternary"))
    d = convert(model)
    x = _x((6, 64), seed=14)
    eager = d(x)
    compiled = torch.compile(d, fullgraph=True)
    assert torch.equal(compiled(x), eager)


# ---- refused configurations -----------------------------------------------------------------

def test_bad_ternary_configurations_are_refused_clearly():
    with pytest.raises(ValueError, match="Int8RowQuantizer needs scale='ternary'"):
        QuantLinear(8, 2, scale="mean_abs", input_quantizer=Int8RowQuantizer())
    with pytest.raises(ValueError, match="ternary.*SignQuantizer|SignQuantizer"):
        QuantLinear(8, 2, scale="ternary", input_quantizer=SignQuantizer(8))
    with pytest.raises(ValueError, match="group_size"):
        QuantLinear(128, 2, scale="ternary", group_size=64)
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ternary_eps"):
            QuantLinear(8, 2, scale="ternary", ternary_eps=eps)
    with pytest.raises(ValueError, match="weight_ste"):
        QuantLinear(8, 2, scale="ternary", weight_ste="round")
    with pytest.raises(ValueError, match="not 'ternary'"):
        QuantLinear(8, 2).ternary_weight()
    with pytest.raises(TypeError, match="floating-point"):
        Int8RowQuantizer().quantize(torch.ones(3, 4, dtype=torch.int64))
    tw = tk.pack_ternary(np.ones((2, 64), np.float32))
    with pytest.raises(ValueError, match="weight-only mode"):
        BinaryLinear(tw, "w1a1")
    with pytest.raises(ValueError, match="takes TernaryWeights"):
        BinaryLinear(tk.pack_weights(np.ones((2, 64), np.float32)), "int8_row")
    with pytest.raises(TypeError, match="PackedWeights or TernaryWeights"):
        BinaryLinear(np.ones((2, 1), np.uint64), "w1a8")
    with pytest.raises(ValueError, match="expected"):
        QuantLinear(8, 2, scale="ternary")(torch.ones(3, 7))


def test_pytorch_guide_ternary_example_runs(tmp_path, monkeypatch):
    """docs/guide/pytorch.md's ternary training example (```python torch-ternary) runs as written."""
    import pathlib
    import re

    page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "guide" / "pytorch.md"
    if not page.is_file():
        pytest.skip("docs/ is not next to tests/ (installed-package run)")
    blocks = re.findall(r"```python torch-ternary\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/guide/pytorch.md's ternary example (```python torch-ternary) is missing"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(textwrap.dedent(blocks[0]), str(page), "exec"), namespace)
    # (the float teacher's outputs have variance ~1/3)
    assert namespace["deployed"].mode == "int8_row" and namespace["loss"].item() < 0.1
