"""takane_kernels.torch: BinaryLinear against the reference, zero-copy, errors.

Skipped (with the reason) when PyTorch is not installed; with TAKANE_REQUIRE_TORCH=1 (CI)
a missing torch is an error instead, so these tests cannot silently not run.
"""

from __future__ import annotations

import os
import pathlib
import re

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
from takane_kernels.torch import BinaryLinear  # noqa: E402

from conftest import assert_ran  # noqa: E402


def _linear(k, n, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    return lin


def _x(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _signs(t):
    return torch.where(t >= 0, 1.0, -1.0)


@pytest.mark.parametrize("k,n", [(1, 1), (63, 65), (129, 64), (513, 130)])
def test_w1a1_bit_exact(on_isa, k, n):
    lin = _linear(k, n)
    m = BinaryLinear.from_linear(lin, mode="w1a1")
    x = _x((33, k))
    y = m(x)
    assert_ran(on_isa)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == (33, n)
    w = lin.weight.detach().numpy()
    expected = ref.binary_linear(x.numpy(), ref.pack_weights(w), bias=lin.bias.detach().numpy())
    assert np.array_equal(y.numpy(), expected)
    # and the plain torch formula: sign(x) @ sign(W).T * mean|W| + bias (all float32 steps;
    # a ±1 dot product is exact in float32 for these K)
    alpha = lin.weight.detach().abs().mean(dim=1)
    plain = (_signs(x) @ _signs(lin.weight.detach()).T) * alpha + lin.bias.detach()
    torch.testing.assert_close(y, plain, rtol=1e-6, atol=1e-6)


def test_w1a1_threshold_activation_scale_no_bias(on_isa):
    k, n = 200, 70
    lin = _linear(k, n, bias=False)
    at = tk.AdaptiveThreshold(k)
    x = _x((4, 9, k))  # leading batch dims are kept
    at.update(x.reshape(-1, k).numpy())
    m = BinaryLinear.from_linear(lin, mode="w1a1", threshold=torch.from_numpy(at.threshold),
                                 activation_scale=True, scale=None)
    y = m(x)
    assert_ran(on_isa)
    assert y.shape == (4, 9, n)
    pw = ref.pack_weights(lin.weight.detach().numpy(), scale=None)
    expected = ref.binary_linear(x.numpy(), pw, threshold=at.threshold, activation_scale=True)
    assert np.array_equal(y.numpy(), expected)


@pytest.mark.parametrize("scale", ["onebit", "mean_abs"])
def test_w1a_float_within_bound(on_isa, scale):
    k, n = 300, 97
    lin = _linear(k, n)
    m = BinaryLinear.from_linear(lin, mode="w1a_float", scale=scale)
    x = _x((17, k))
    y = m(x)
    assert_ran(on_isa)
    assert y.shape == (17, n) and y.dtype == torch.float32
    pw = ref.pack_weights(lin.weight.detach().numpy(), scale=scale)
    assert (pw.in_scale is not None) == (scale == "onebit")
    b = lin.bias.detach().numpy()
    exact = ref.binary_weight_matmul(x.numpy(), pw, bias=b)
    bound = ref.binary_weight_matmul_error_bound(x.numpy(), pw, bias=b)
    assert (np.abs(y.numpy() - exact) <= bound).all()
    # the plain torch formula in float64: ((x * in_scale) @ sign(W).T) * scale + bias
    xs = x.double() * (torch.tensor(pw.in_scale, dtype=torch.float64) if pw.in_scale is not None else 1.0)
    plain = (xs @ _signs(lin.weight.detach()).double().T) * torch.tensor(pw.scale, dtype=torch.float64) + lin.bias.detach().double()
    assert (torch.abs(y.double() - plain) <= torch.from_numpy(bound).double() * 1.01 + 1e-30).all()


def test_default_scales_follow_the_mode():
    lin = _linear(64, 8)
    assert BinaryLinear.from_linear(lin, mode="w1a1").weights.in_scale is None
    assert BinaryLinear.from_linear(lin, mode="w1a_float").weights.in_scale is not None  # onebit
    m = BinaryLinear.from_linear(lin, mode="w1a1")
    assert m.in_features == 64 and m.out_features == 8
    assert "mode='w1a1'" in repr(m) and "packed_bytes=" in repr(m)
    assert m.weights.nbytes < lin.weight.numel() * 4 / 4  # bits + scales, far below float32


def test_zero_copy_weights_inputs_outputs(monkeypatch):
    """Weights stay one PackedWeights behind one bound op (never re-packed or re-bound per
    call); the C kernel gets pointers to the input tensor's memory and writes into the
    output tensor's memory."""
    lin = _linear(128, 40)
    for mode in ("w1a1", "w1a_float", "w1a8"):
        m = BinaryLinear.from_linear(lin, mode=mode)
        op = m.kernel_op
        assert op.weights is m.weights
        seen = []
        real = op._cf32

        def spy(mm, xptr, yptr, bptr):
            seen.append((int(tk._ffi.cast("uintptr_t", xptr)), int(tk._ffi.cast("uintptr_t", yptr))))
            return real(mm, xptr, yptr, bptr)

        monkeypatch.setattr(op, "_cf32", spy)
        monkeypatch.setattr(tk, "pack_weights", lambda *a, **k: pytest.fail("re-packed in forward"))
        x = _x((5, 128))
        y1 = m(x)
        y2 = m(x)
        monkeypatch.undo()
        assert m.kernel_op is op and len(seen) == 2
        for (xp, yp), y in zip(seen, (y1, y2)):
            assert xp == x.data_ptr() and yp == y.data_ptr()
        assert torch.equal(y1, y2)


def test_input_conversions():
    lin = _linear(96, 20)
    m = BinaryLinear.from_linear(lin, mode="w1a1")
    x = _x((6, 96))
    y = m(x)
    assert torch.equal(m(x.double()), y)  # float64 viewed, compared at its own precision
    assert torch.equal(m(x.T.contiguous().T), y)  # non-contiguous: one copy
    xg = x.clone().requires_grad_(True)
    yg = m(xg)
    assert torch.equal(yg, y) and not yg.requires_grad
    with torch.inference_mode():
        assert torch.equal(m(x), y)
    assert torch.equal(m(x[0]), y[0])  # 1-D input gives 1-D output
    assert m(torch.empty(0, 96)).shape == (0, 20)
    bf = x.to(torch.bfloat16)
    assert torch.equal(m(bf), m(bf.float()))
    mf = BinaryLinear.from_linear(lin, mode="w1a_float")
    torch.testing.assert_close(mf(x.half()), mf(x.half().float()))


def test_in_a_sequential_model_and_threads():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    x = _x((8, 256))
    packed = nn.Sequential(BinaryLinear.from_linear(model[0], mode="w1a_float"), nn.ReLU(),
                           BinaryLinear.from_linear(model[2], mode="w1a_float", threads=1))
    y = packed(x)
    h = ref.binary_weight_matmul(x.numpy(), ref.pack_weights(model[0].weight.detach().numpy(), scale="onebit"),
                                 bias=model[0].bias.detach().numpy())
    h = np.maximum(h, 0)
    pw2 = ref.pack_weights(model[2].weight.detach().numpy(), scale="onebit")
    b2 = model[2].bias.detach().numpy()
    bound = ref.binary_weight_matmul_error_bound(h, pw2, bias=b2)
    # the first layer's rounding feeds the second: allow its bound propagated loosely
    assert y.shape == (8, 10)
    assert np.allclose(y.numpy(), ref.binary_weight_matmul(h, pw2, bias=b2), rtol=1e-4, atol=1e-4 + bound.max())


def test_packed_weights_round_trip(tmp_path):
    lin = _linear(70, 12)
    m = BinaryLinear.from_linear(lin, mode="w1a1")
    m.weights.save(tmp_path / "w.npz")
    m2 = BinaryLinear(tk.PackedWeights.load(tmp_path / "w.npz"), "w1a1", bias=m.bias)
    x = _x((3, 70))
    assert torch.equal(m(x), m2(x))


def test_state_dict_round_trip(tmp_path):
    for mode in ("w1a1", "w1a_float"):
        m = BinaryLinear.from_linear(_linear(130, 33, seed=4), mode=mode)
        torch.save(m.state_dict(), tmp_path / "m.pt")
        state = torch.load(tmp_path / "m.pt", weights_only=True)
        assert set(state) == {"bias", "_extra_state"}
        other = BinaryLinear.from_linear(_linear(130, 33, seed=5), mode=mode)  # different weights
        x = _x((4, 130))
        assert not torch.equal(other(x), m(x))
        other.load_state_dict(state)
        assert other.weights == m.weights
        assert torch.equal(other(x), m(x))
    wrong = BinaryLinear.from_linear(_linear(130, 34), mode="w1a_float")
    with pytest.raises(ValueError, match="34"):
        wrong.load_state_dict(state)
    with pytest.raises(ValueError, match="mode"):
        BinaryLinear.from_linear(_linear(130, 33), mode="w1a1").load_state_dict(state)


def test_errors():
    lin = _linear(64, 8)
    m = BinaryLinear.from_linear(lin)
    with pytest.raises(ValueError, match=r"\(\.\.\., 64\)"):
        m(torch.zeros(2, 63))
    with pytest.raises(ValueError, match="CPU"):
        m(torch.zeros(2, 64, device="meta"))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m(np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="mode"):
        BinaryLinear.from_linear(lin, mode="w2a2")
    with pytest.raises(TypeError, match="nn.Linear"):
        BinaryLinear.from_linear(nn.Conv1d(1, 1, 1))
    with pytest.raises(ValueError, match="w1a_float"):
        BinaryLinear.from_linear(lin, mode="w1a1", scale="onebit")  # in_scale: not W1A1
    with pytest.raises(ValueError, match="apply to mode .w1a1. only"):
        BinaryLinear.from_linear(lin, mode="w1a_float", threshold=0.5)
    with pytest.raises(ValueError, match="bias"):
        BinaryLinear(m.weights, bias=torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        m(torch.full((1, 64), float("nan")))


def test_docs_torch_example_runs(tmp_path, monkeypatch):
    readme = pathlib.Path(__file__).resolve().parent.parent / "docs" / "guide" / "pytorch.md"
    if not readme.is_file():
        pytest.skip("docs/ is not next to tests/ (installed-package run)")
    blocks = re.findall(r"```python torch\n(.*?)```", readme.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/guide/pytorch.md's 'Use from PyTorch' example (```python torch) is missing"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(readme), "exec"), {})
    assert tk.PackedWeights.load(tmp_path / "layer.npz").n == 256


# ---- group scales, W1A8 (q8_0 activations) and Q1_0 weights -----------------------------

def _q1_0_bytes(n, k, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 256, (n, k // 128, 18), dtype=np.uint8)
    q[:, :, :2] = rng.uniform(0.01, 0.2, (n, k // 128, 1)).astype("<f2").view(np.uint8)
    return q.reshape(n, -1)


def test_from_linear_group_size_packs_group_scales():
    lin = _linear(300, 20)
    w = lin.weight.detach().numpy()
    for mode in ("w1a_float", "w1a8"):
        m = BinaryLinear.from_linear(lin, mode=mode, group_size=128)
        assert m.weights == tk.pack_weights(w, group_size=128)
        assert m.weights.group_size == 128 and m.weights.scale is None and m.weights.in_scale is None
        assert "group_size=128" in repr(m)
    assert BinaryLinear.from_linear(lin, mode="w1a8").weights == tk.pack_weights(w)  # row mean |W|
    with pytest.raises(ValueError, match="w1a1"):
        BinaryLinear.from_linear(lin, mode="w1a1", group_size=128)
    with pytest.raises(ValueError, match="group scales"):
        BinaryLinear(tk.pack_weights(w, group_size=128), "w1a1")
    with pytest.raises(ValueError, match="mean_abs"):
        BinaryLinear.from_linear(lin, mode="w1a_float", scale="onebit", group_size=128)
    with pytest.raises(ValueError, match="multiple of 64"):
        BinaryLinear.from_linear(lin, mode="w1a8", group_size=100)
    with pytest.raises(ValueError, match="apply to mode .w1a1. only"):
        BinaryLinear.from_linear(lin, mode="w1a8", threshold=0.5)


@pytest.mark.parametrize("group_size", [None, 128, 192])
def test_w1a8_within_the_q8_0_bound(on_isa, group_size):
    k, n = 300, 41
    lin = _linear(k, n, seed=7)
    m = BinaryLinear.from_linear(lin, mode="w1a8", group_size=group_size)
    x = _x((5, k), seed=8)
    y = m(x)
    assert_ran(on_isa)
    assert y.shape == (5, n) and y.dtype == torch.float32
    b = lin.bias.detach().numpy()
    exact = ref.binary_weight_matmul(x.numpy(), m.weights, bias=b, activations="q8_0")
    bound = ref.binary_weight_matmul_error_bound(x.numpy(), m.weights, bias=b, activations="q8_0")
    assert (np.abs(y.numpy() - exact) <= bound).all()
    with pytest.raises(ValueError, match="NaN|finite"):
        m(torch.full((1, k), float("nan")))


def test_w1a_float_with_group_scales_within_bound(on_isa):
    lin = _linear(256, 30, seed=9)
    m = BinaryLinear.from_linear(lin, mode="w1a_float", group_size=128)
    x = _x((3, 256), seed=10)
    y = m(x)
    assert_ran(on_isa)
    b = lin.bias.detach().numpy()
    exact = ref.binary_weight_matmul(x.numpy(), m.weights, bias=b)
    assert (np.abs(y.numpy() - exact) <= ref.binary_weight_matmul_error_bound(x.numpy(), m.weights, bias=b)).all()


def test_from_q1_0_builds_the_layer_llama_cpp_would_run():
    q = _q1_0_bytes(24, 256)
    for data in (q, torch.from_numpy(q)):
        m = BinaryLinear.from_q1_0(data, 256, bias=torch.ones(24))
        assert m.mode == "w1a8" and (m.in_features, m.out_features) == (256, 24)
        assert m.weights == tk.from_q1_0(q, 256)
        assert m.to_q1_0().tobytes() == q.tobytes()  # the blocks come back byte for byte
    assert BinaryLinear.from_q1_0(q, 256, mode="w1a_float").mode == "w1a_float"
    # the effective weights are ggml's dequantize_row_q1_0: ±d per block
    d = q.reshape(24, 2, 18)[:, :, :2].copy().view("<f2")[..., 0].astype(np.float32)
    dense = tk.unpack_bits(m.weights.bits, 256) * np.repeat(d, 128, axis=1)
    signs = np.unpackbits(q.reshape(24, 2, 18)[:, :, 2:], axis=-1, bitorder="little").reshape(24, 256)
    np.testing.assert_array_equal(dense, np.where(signs == 1, 1, -1) * np.repeat(d, 128, axis=1))
    with pytest.raises(ValueError, match="w1a8"):
        BinaryLinear.from_q1_0(q, 256, mode="w1a1")
    with pytest.raises(TypeError, match="uint8"):
        BinaryLinear.from_q1_0(torch.from_numpy(q).to(torch.int16), 256)
    with pytest.raises(ValueError, match="multiple of 128"):
        BinaryLinear.from_q1_0(q, 200)


def test_state_dict_with_group_scales_and_version_1_states(tmp_path):
    m = BinaryLinear.from_q1_0(_q1_0_bytes(16, 384, seed=3), 384, bias=torch.zeros(16))
    torch.save(m.state_dict(), tmp_path / "g.pt")
    state = torch.load(tmp_path / "g.pt", weights_only=True)
    assert state["_extra_state"]["version"] == 2 and state["_extra_state"]["group_size"] == 128
    other = BinaryLinear.from_q1_0(_q1_0_bytes(16, 384, seed=4), 384, bias=torch.zeros(16))
    assert other.weights != m.weights
    other.load_state_dict(state)
    assert other.weights == m.weights
    # a version-1 state (written before group scales existed) still loads
    old = BinaryLinear.from_linear(_linear(100, 9), mode="w1a_float")
    v1 = old.state_dict()
    extra = dict(v1["_extra_state"])
    del extra["group_scale"], extra["group_size"]
    extra["version"] = 1
    v1["_extra_state"] = extra
    fresh = BinaryLinear.from_linear(_linear(100, 9, seed=2), mode="w1a_float")
    fresh.load_state_dict(v1)
    assert fresh.weights == old.weights
    extra["version"] = 4  # (3 is a ternary layer's state: test_torch_ternary.py)
    with pytest.raises(ValueError, match="version 4"):
        fresh.load_state_dict(v1)


def test_eager_calls_skip_the_op_dispatch_but_tracers_see_the_op(monkeypatch):
    """A plain eager call computes directly (no custom-op dispatch: a few µs a call); a dispatch
    mode (here one that records ops), like torch.compile / torch.export, sees the registered
    op. Both give identical results, with and without bias, in every mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import takane_kernels.torch as tt
    import takane_kernels.torch._library  # noqa: F401 - the custom ops' module

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    x = torch.randn(3, 128)
    for bias in (True, False):
        lin = nn.Linear(128, 64, bias=bias)
        for mode in ("w1a1", "w1a_float", "w1a8"):
            m = BinaryLinear.from_linear(lin, mode=mode)
            calls = []
            lookup = tt._library._module  # only the op's implementation looks the module up by key
            monkeypatch.setattr(tt._library, "_module", lambda key: calls.append(key) or lookup(key))
            eager = m(x)
            assert calls == []  # no op dispatch on the eager path
            with Record() as rec:
                traced = m(x)
            assert calls == [m._takane_key] and any("takane.binary_linear" in op for op in rec.ops)
            direct = torch.ops.takane.binary_linear(x, m.bias, m._takane_key)
            monkeypatch.undo()
            assert torch.equal(eager, traced) and torch.equal(eager, direct)


def test_per_feature_threshold_is_rounded_once_and_follows_reassignment():
    """A W1A1 layer with one threshold per input feature rounds it up to float32 once (the
    same bits for float32 input); assigning a new threshold takes effect, writing into the
    old one in place is refused (it would leave the cached copy stale), float64 input
    compares against the float64 threshold itself, and a deep copy keeps working."""
    import copy

    torch.manual_seed(0)
    lin = nn.Linear(96, 32)
    t = np.linspace(-0.5, 0.5, 96) + 1e-9  # not float32 values: rounding matters
    m = BinaryLinear.from_linear(lin, mode="w1a1", threshold=t)
    x32 = torch.from_numpy(np.float32(t)[None, :].repeat(4, 0)) + torch.randn(4, 96) * (torch.rand(4, 96) < 0.5)

    def expected(x, thr):
        xs = torch.where(torch.from_numpy(x.numpy() >= thr), 1.0, -1.0)
        ws = torch.where(lin.weight >= 0, 1.0, -1.0)
        return (xs @ ws.T * lin.weight.abs().mean(dim=1) + lin.bias).detach()

    for _ in range(2):  # the second call uses the cached float32 threshold
        assert torch.allclose(m(x32), expected(x32, t), atol=1e-5)
    x64 = x32.double() + 1e-12
    assert torch.allclose(m(x64), expected(x64, t), atol=1e-5)
    with pytest.raises(ValueError, match="read-only"):
        m.threshold[0] = 5.0
    m.threshold = t + 0.25
    assert torch.allclose(m(x32), expected(x32, t + 0.25), atol=1e-5)
    c = copy.deepcopy(m)
    c.threshold = t - 0.25
    assert torch.allclose(c(x32), expected(x32, t - 0.25), atol=1e-5)
    assert torch.allclose(m(x32), expected(x32, t + 0.25), atol=1e-5)


def test_the_custom_op_finds_live_modules_only():
    """The takane:: op finds its module in a per-process registry of live modules (weak
    references): a module that is gone is a clear error, never another module's weights."""
    import gc

    torch.manual_seed(3)
    m = BinaryLinear.from_linear(nn.Linear(64, 8))
    key, x = m._takane_key, torch.randn(2, 64)
    assert torch.equal(torch.ops.takane.binary_linear(x, m.bias, key), m(x))
    del m
    gc.collect()
    with pytest.raises(RuntimeError, match="no live module"):
        torch.ops.takane.binary_linear(x, None, key)
    with pytest.raises(RuntimeError, match="no live module"):
        torch.ops.takane.binary_linear_out(x, None, key, torch.empty(2, 8))


@pytest.mark.parametrize("mode", ["w1a1", "w1a_float", "w1a8"])
def test_the_out_form_of_the_custom_op(mode):
    """binary_linear_out (what a compiled graph calls: it allocates the result itself)
    writes exactly the module's result into out, on the fast path and the general one
    (float64 or strided x, a strided out, batch dims), and passes torch's op checks."""
    torch.manual_seed(5)
    m = BinaryLinear.from_linear(nn.Linear(96, 24), mode=mode)
    key = m._takane_key
    for x in (torch.randn(3, 96), torch.randn(96), torch.randn(2, 3, 96), torch.randn(3, 96, dtype=torch.float64),
              torch.randn(96, 3).t(), torch.randn(0, 96)):
        want = m(x)
        out = torch.full(want.shape, float("nan"))
        torch.ops.takane.binary_linear_out(x, m.bias, key, out)
        assert torch.equal(out, want)
        strided = torch.full(want.shape + (2,), float("nan"))[..., 0]
        torch.ops.takane.binary_linear_out(x, m.bias, key, strided)
        assert torch.equal(strided, want)
    with pytest.raises(ValueError, match="out must be a CPU float32 tensor of shape"):
        torch.ops.takane.binary_linear_out(torch.randn(3, 96), m.bias, key, torch.empty(2, 24))
    with pytest.raises(ValueError, match="out must be a CPU float32 tensor of shape"):
        torch.ops.takane.binary_linear_out(torch.randn(3, 96), m.bias, key, torch.empty(3, 24, dtype=torch.float64))
    for op in (torch.ops.takane.binary_linear, lambda x, b, k: torch.ops.takane.binary_linear_out(
            x, b, k, torch.empty(3, 24))):
        with pytest.raises(ValueError, match=r"input has shape \(3, 95\), expected \(\.\.\., 96\)"):
            op(torch.randn(3, 95), m.bias, key)
    torch.library.opcheck(torch.ops.takane.binary_linear_out.default, (torch.randn(3, 96), m.bias, key,
                                                                       torch.empty(3, 24)))
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    x = torch.randn(5, 96)
    assert torch.equal(compiled(x), m(x))
