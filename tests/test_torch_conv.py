"""takane_kernels.torch: BinaryConv2d / BinaryMaxPool2d against the reference and PyTorch,
zero-copy channels_last input, state_dict, and the torch.library custom ops under
torch.compile(fullgraph=True) and torch.export (BinaryLinear included).

Skipped (with the reason) when PyTorch is not installed; with TAKANE_REQUIRE_TORCH=1 (CI)
a missing torch is an error instead.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("TAKANE_REQUIRE_TORCH") == "1":
    import torch  # noqa: F401 - must be importable in CI
else:
    pytest.importorskip("torch", reason="PyTorch is not installed (optional extra 'torch'; "
                        "CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import takane_kernels as tk  # noqa: E402
from takane_kernels import reference as ref  # noqa: E402
from takane_kernels.torch import BinaryConv2d, BinaryLinear, BinaryMaxPool2d  # noqa: E402

from conftest import assert_ran  # noqa: E402


def _x(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _sign(t):
    return torch.where(t >= 0, 1.0, -1.0)


@pytest.mark.parametrize("cfg", [
    dict(k=3, padding=1), dict(k=3, padding=1, stride=2), dict(k=1), dict(k=(3, 1), padding="same"),
    dict(k=3, padding=2, dilation=2, groups=2), dict(k=5, padding="valid", bias=False),
])
def test_matches_pytorch_float_conv_on_signs(on_isa, cfg):
    """pad_value 0 is nn.Conv2d's zero padding: conv2d(sign(x), sign(W)) * scale + bias
    (compared exactly against the reference and to float tolerance against PyTorch)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 12, cfg["k"], stride=cfg.get("stride", 1), padding=cfg.get("padding", 0),
                     dilation=cfg.get("dilation", 1), groups=cfg.get("groups", 1), bias=cfg.get("bias", True))
    m = BinaryConv2d.from_conv2d(conv)
    x = _x((2, 16, 9, 8))
    y = m(x)
    assert_ran(on_isa)
    xn = x.permute(0, 2, 3, 1).numpy()
    want = ref.binary_conv2d(xn, m.weights, stride=m.stride, padding=m.padding, dilation=m.dilation,
                             groups=m.groups, bias=None if conv.bias is None else conv.bias.detach().numpy())
    np.testing.assert_array_equal(y.permute(0, 2, 3, 1).numpy(), want)
    scale = torch.from_numpy(m.weights.scale.copy())
    torch_y = F.conv2d(_sign(x), _sign(conv.weight.detach()), None, conv.stride, conv.padding, conv.dilation,
                       conv.groups) * scale[:, None, None]
    if conv.bias is not None:
        torch_y = torch_y + conv.bias.detach()[:, None, None]
    torch.testing.assert_close(y, torch_y, rtol=1e-5, atol=1e-4)
    assert y.shape == torch_y.shape and y.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_input_is_not_copied(monkeypatch):
    conv = nn.Conv2d(64, 64, 3, padding=1)
    m = BinaryConv2d.from_conv2d(conv, threshold=0.1)
    x = _x((1, 64, 6, 6)).to(memory_format=torch.channels_last)
    seen = []
    op = m.kernel_op
    real = type(op)._run_f32

    def spy(self, geo, xptr, *a):
        seen.append(int(tk._ffi.cast("uintptr_t", xptr)))
        return real(self, geo, xptr, *a)

    monkeypatch.setattr(type(op), "_run_f32", spy)
    y = m(x)
    monkeypatch.undo()
    assert seen[0] == x.data_ptr()
    torch.testing.assert_close(m(x.contiguous()), y, rtol=0, atol=0)  # NCHW: one copy, same result


def test_per_channel_threshold_pad_values_and_state_dict(tmp_path):
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    t = torch.linspace(-0.5, 0.5, 8)
    x = _x((1, 8, 5, 5))
    for pv in (0, 1, -1):
        m = BinaryConv2d.from_conv2d(conv, threshold=t, pad_value=pv)
        want = ref.binary_conv2d(x.permute(0, 2, 3, 1).numpy(), m.weights, padding=1, pad_value=pv,
                                 threshold=t.numpy(), bias=conv.bias.detach().numpy())
        np.testing.assert_array_equal(m(x).permute(0, 2, 3, 1).numpy(), want)
    torch.save(m.state_dict(), tmp_path / "s.pt")
    other = BinaryConv2d.from_conv2d(nn.Conv2d(8, 8, 3, padding=1), threshold=t, pad_value=-1)
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert other.weights == m.weights and torch.equal(other(x), m(x))
    with pytest.raises(ValueError, match="state holds"):
        BinaryConv2d.from_conv2d(nn.Conv2d(8, 4, 3)).load_state_dict(m.state_dict())


def test_copies_are_independent_modules():
    import copy
    import gc
    import pickle

    m = BinaryConv2d.from_conv2d(nn.Conv2d(8, 4, 3))
    x = _x((1, 8, 5, 5))
    want = m(x)
    c1, c2 = copy.deepcopy(m), pickle.loads(pickle.dumps(m))
    assert len({m._takane_key, c1._takane_key, c2._takane_key}) == 3
    del m
    gc.collect()
    assert torch.equal(c1(x), want) and torch.equal(c2(x), want)


def test_max_pool_is_sign_of_max_pool():
    x = _x((2, 70, 7, 6))
    for k, s, p in ((2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 1))):
        y = BinaryMaxPool2d(k, s, p)(x)
        torch.testing.assert_close(y, _sign(F.max_pool2d(x, k, s, p)), rtol=0, atol=0)


def test_errors():
    m = BinaryConv2d.from_conv2d(nn.Conv2d(8, 4, 3))
    with pytest.raises(ValueError, match=r"\(N, 8, H, W\)"):
        m(torch.zeros(1, 7, 5, 5))
    with pytest.raises(ValueError, match="CPU"):
        m(torch.zeros(1, 8, 5, 5, device="meta"))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m(np.zeros((1, 8, 5, 5), np.float32))
    with pytest.raises(ValueError, match="smaller"):
        m(torch.zeros(1, 8, 2, 2))
    with pytest.raises(ValueError, match="padding_mode"):
        BinaryConv2d.from_conv2d(nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        BinaryConv2d.from_conv2d(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="pad_value"):
        BinaryConv2d.from_conv2d(nn.Conv2d(8, 4, 3), pad_value=2)
    with pytest.raises(ValueError, match="half the kernel"):
        BinaryMaxPool2d(2, padding=2)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv1 = BinaryConv2d.from_conv2d(nn.Conv2d(8, 16, 3, padding=1))
        self.pool = BinaryMaxPool2d(2)
        self.conv2 = BinaryConv2d.from_conv2d(nn.Conv2d(16, 16, 3, padding=1, bias=False), pad_value=1)
        self.fc = BinaryLinear.from_linear(nn.Linear(16 * 4 * 4, 10))

    def forward(self, x):
        x = self.pool(self.conv1(x))
        x = self.conv2(x)
        return self.fc(torch.flatten(x, 1))


def test_torch_compile_fullgraph_and_export():
    net = _Net().eval()
    x = _x((2, 8, 8, 8))
    want = net(x)
    compiled = torch.compile(net, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled(x), want, rtol=0, atol=0)
    ep = torch.export.export(net, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"takane.binary_conv2d.default", "takane.binary_max_pool2d.default",
            "takane.binary_linear_out.default"} <= targets
    torch.testing.assert_close(ep.module()(x), want, rtol=0, atol=0)
    torch.library.opcheck(torch.ops.takane.binary_max_pool2d.default, (x, 2, 2, 2, 2, 0, 0))
