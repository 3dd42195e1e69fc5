"""``python -m takane_kernels demo``: the 1-bit accuracy table, measured on real data.

A small MLP (64 -> 256 -> 256 -> 10) and a small conv net are trained in PyTorch with
``takane_kernels.torch``'s quantization-aware modules (``QuantLinear``, ``QuantConv2d``,
``SignQuantizer``) on scikit-learn's handwritten digits (``sklearn.datasets.load_digits``:
1797 8x8 images, shipped with the package, no download), one fixed stratified train/test
split (75/25, ``random_state=0``), then turned by ``convert`` into models running on the
kernels, and evaluated on the held-out quarter in several precisions:

- ``fp32``: float32 weights, batch norm + ReLU (the 100% reference; ``nn.Linear``);
- ``w1a1_*``: every layer a ``QuantLinear`` (weights ±1 with a per-row alpha = mean|w|,
  XNOR-Net), hidden activations ±1 by each next layer's ``SignQuantizer``. The first layer
  reads the real pixels (no input quantizer: the W1A-float kernel); the last layer's ±1
  input times ±1 weights gives float logits. Binarization at threshold 0 (``naive``: a
  fixed threshold), at the adaptive 0.5 * EMA std (``adaptive``, the original rule) or at
  mean + 0.5 * std (``centred``, ``mean_factor=1``); the EMA is updated by every training
  batch and used by that batch (the same rule in training and inference). Batch norm
  precedes each binarization (``convert`` folds it with the next threshold into an integer
  threshold per channel); the ``nobn`` ablations drop it (plain biases), the ``nonorm``
  ones drop the biases too (nothing but the threshold shifts the sign).
- ``w1af_*``: every layer's weights ±1, activations real (ReLU): post-training from the
  FP32 model (batch norm fused into the weights first) with per-row alpha or OneBit's
  per-row x per-column scales (``QuantLinear.from_linear``), and OneBit with a short
  fine-tune (the OneBit vectors trained too);
- ``int8``: per-row symmetric int8 weights from the fused FP32 model (evaluated
  dequantized in PyTorch float32: a reference point for accuracy and memory, not run on
  our kernels).
- ``conv_*``: a small conv net (3x3 conv 1 -> 32 on the real pixels, 3x3 'valid' conv
  32 -> 64, then the linear 2304 -> 10 as a 6x6 conv on the 6x6 map), FP32 and W1A1 with
  the three threshold rules. ``convert`` turns the binary convolutions into
  ``BinaryConv2d`` (``binary_conv2d``, no im2col); the first one reads real pixels, and a
  weight-only ``QuantConv2d`` has no kernel (``convert`` refuses it), so it runs as
  im2col patches (``F.unfold``) through a W1A-float ``BinaryLinear`` (:class:`PatchConv`).

Training: ``torch.optim.Adam``, cosine-decayed learning rate, batch 64, one thread and
``torch.use_deterministic_algorithms`` (accuracies are the same in repeated runs of a
seed); straight-through estimator for every sign (``ste="clip"``: gradient where
|x - t| <= 1 for activations, |w| <= 1 for weights; latent weights clipped to [-1, 1]).
Inference of every binary variant runs on the kernels through the converted modules
(``BinaryLinear`` / ``BinaryConv2d``) and is checked layer by layer against
``takane_kernels.reference`` (bit-exact for W1A1, within the documented bound for float),
and against the training model: after the float first layer, the converted W1A1 network
is bit-identical to it (``convert``'s guarantee, checked in every run).

Needs scikit-learn, PyTorch (and matplotlib for the chart): ``pip install "takane-kernels[demo]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels.programs._report import pyplot, save_figure, write_report

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # the CLI says what to install (run); the module still imports
    torch = F = nn = None

HIDDEN = 256
BATCH = 64
EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch's convention: running = 0.9 * running + 0.1 * batch


def _need_torch():
    if torch is None:
        raise SystemExit('the demo needs PyTorch (CPU build: pip install torch --index-url '
                         'https://download.pytorch.org/whl/cpu) and pip install "takane-kernels[demo]"')


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str  # "fp32", "w1a1", "w1af", "int8"
    weights: str = "float"  # "float", "mean_abs", "onebit"
    threshold: str = "zero"  # "zero", "adaptive", "centred" (W1A1 only)
    bn: bool = True
    hidden_bias: bool = True  # without batch norm: learned biases before each sign (else none)
    source: str = "train"  # "train" (from scratch), "ptq" (from fp32), "finetune" (from fp32)
    ablation: bool = False
    arch: str = "mlp"  # "mlp" or "conv"

    @property
    def fp32_key(self):
        """The FP32 row this variant is measured against (same architecture)."""
        return "fp32" if self.arch == "mlp" else "conv_fp32"


VARIANTS = [
    Variant("fp32", "FP32 (BN + ReLU)", "fp32"),
    Variant("w1a1_naive", "W1A1 naive sign (t = 0)", "w1a1", "mean_abs", "zero"),
    Variant("w1a1_adaptive", "W1A1 adaptive (t = 0.5·EMA std)", "w1a1", "mean_abs", "adaptive"),
    Variant("w1a1_centred", "W1A1 centred adaptive (t = mean + 0.5·std)", "w1a1", "mean_abs", "centred", ablation=True),
    Variant("w1af_ptq_alpha", "W1A-float post-training, per-row α", "w1af", "mean_abs", source="ptq"),
    Variant("w1af_ptq_onebit", "W1A-float post-training, OneBit row×column scales", "w1af", "onebit", source="ptq"),
    Variant("w1af_ft_onebit", "W1A-float OneBit + fine-tune", "w1af", "onebit", source="finetune"),
    Variant("int8", "int8 weights per row (post-training), float activations", "int8", source="ptq"),
    Variant("w1a1_naive_nobn", "W1A1 naive sign, no batch norm", "w1a1", "mean_abs", "zero", bn=False, ablation=True),
    Variant("w1a1_adaptive_nobn", "W1A1 adaptive, no batch norm", "w1a1", "mean_abs", "adaptive", bn=False, ablation=True),
    Variant("w1a1_centred_nobn", "W1A1 centred adaptive, no batch norm", "w1a1", "mean_abs", "centred", bn=False,
            ablation=True),
    Variant("w1a1_naive_nonorm", "W1A1 naive sign, no batch norm, no bias", "w1a1", "mean_abs", "zero", bn=False,
            hidden_bias=False, ablation=True),
    Variant("w1a1_adaptive_nonorm", "W1A1 adaptive, no batch norm, no bias", "w1a1", "mean_abs", "adaptive",
            bn=False, hidden_bias=False, ablation=True),
    Variant("w1a1_centred_nonorm", "W1A1 centred adaptive, no batch norm, no bias", "w1a1", "mean_abs", "centred",
            bn=False, hidden_bias=False, ablation=True),
    Variant("conv_fp32", "Conv FP32 (BN + ReLU)", "fp32", arch="conv"),
    Variant("conv_w1a1_naive", "Conv W1A1 naive sign (t = 0)", "w1a1", "mean_abs", "zero", arch="conv"),
    Variant("conv_w1a1_adaptive", "Conv W1A1 adaptive (t = 0.5·EMA std)", "w1a1", "mean_abs", "adaptive", arch="conv"),
    Variant("conv_w1a1_centred", "Conv W1A1 centred adaptive (t = mean + 0.5·std)", "w1a1", "mean_abs", "centred",
            arch="conv", ablation=True),
]


# ---- data ------------------------------------------------------------------------------

def load_data():
    """Digits, one fixed stratified split; pixels /16 then standardized with train stats.
    numpy: x (n, 64) float32, y (n,) int64."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit('the demo needs scikit-learn: pip install "takane-kernels[demo]"') from None
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.25, stratify=y, random_state=0)
    mu, sd = xtr.mean(0), xtr.std(0)
    sd = np.where(sd > 1e-3, sd, 1.0)
    f = lambda a: ((a - mu) / sd).astype(np.float32)  # noqa: E731
    return f(xtr), ytr.astype(np.int64), f(xte), yte.astype(np.int64)


def as_input(x, arch):
    """numpy (n, 64) pixels -> the network's input tensor: (n, 64), or NCHW (n, 1, 8, 8)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t if arch == "mlp" else t.view(-1, 1, 8, 8)


# ---- the networks (training modules) ---------------------------------------------------

def _quantizer(v: Variant, channels: int, channel_dim: int = -1):
    from takane_kernels.torch import SignQuantizer
    if v.threshold == "zero":
        return SignQuantizer(channels, threshold="fixed", value=0.0, ste="clip", channel_dim=channel_dim)
    # the seed's statistics (unbiased std + 1e-8, decay 0.99), threshold std_factor * EMA std
    return SignQuantizer(channels, threshold="adaptive", std_factor=0.5,
                         mean_factor=1.0 if v.threshold == "centred" else 0.0, ste="clip", channel_dim=channel_dim)


def _init(model: nn.Module, clip: bool) -> nn.Module:
    """He-uniform weights U(-sqrt(6/K), sqrt(6/K)) (K inputs per output), zero biases;
    binary networks' latent weights clipped to [-1, 1] (where the weight STE passes)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                bound = math.sqrt(6.0 / m.weight[0].numel())
                m.weight.uniform_(-bound, bound)
                if clip:
                    m.weight.clamp_(-1, 1)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def build_mlp(v: Variant) -> nn.Sequential:
    """64 -> 256 -> 256 -> 10. Hidden layers: linear (no bias when batch-normed) -> BN ->
    ReLU (float) or, W1A1, the next layer's SignQuantizer; last layer linear with bias."""
    from takane_kernels.torch import QuantLinear
    dims = [64, HIDDEN, HIDDEN, 10]
    layers = []
    for i in range(3):
        k, n = dims[i], dims[i + 1]
        last = i == 2
        bias = last or (not v.bn and v.hidden_bias)
        if v.kind == "fp32":
            layers.append(nn.Linear(k, n, bias=bias))
        else:
            iq = _quantizer(v, k) if v.kind == "w1a1" and i > 0 else None
            layers.append(QuantLinear(k, n, bias=bias, scale=v.weights, input_quantizer=iq))
        if not last:
            if v.bn:
                layers.append(nn.BatchNorm1d(n, eps=EPS, momentum=BN_MOMENTUM))
            if v.kind != "w1a1":
                layers.append(nn.ReLU())
    return _init(nn.Sequential(*layers), clip=v.kind != "fp32")


def build_conv(v: Variant) -> nn.Sequential:
    """3x3 conv 1 -> 32 ('same', zero padding) -> BN -> 3x3 conv 32 -> 64 ('valid', 6x6)
    -> BN -> 6x6 conv 64 -> 10 (the linear 2304 -> 10 on the 6x6x64 map) -> flatten.
    W1A1: each conv after the first binarizes its input per channel (SignQuantizer with
    channel_dim=1), so convert() folds each BN with the next threshold."""
    from takane_kernels.torch import QuantConv2d
    fp = v.kind == "fp32"

    def conv(cin, cout, k, padding, bias, quantize):
        if fp:
            return nn.Conv2d(cin, cout, k, padding=padding, bias=bias)
        iq = _quantizer(v, cin, channel_dim=1) if quantize else None
        return QuantConv2d(cin, cout, k, padding=padding, bias=bias, scale="mean_abs", input_quantizer=iq)

    layers = [conv(1, 32, 3, 1, False, False), nn.BatchNorm2d(32, eps=EPS, momentum=BN_MOMENTUM)]
    layers += [nn.ReLU()] if fp else []
    layers += [conv(32, 64, 3, 0, False, True), nn.BatchNorm2d(64, eps=EPS, momentum=BN_MOMENTUM)]
    layers += [nn.ReLU()] if fp else []
    layers += [conv(64, 10, 6, 0, True, True), nn.Flatten()]
    return _init(nn.Sequential(*layers), clip=not fp)


def build(v: Variant) -> nn.Sequential:
    return build_mlp(v) if v.arch == "mlp" else build_conv(v)


def fuse_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """A copy (eval mode) with every BatchNorm folded into the Linear / Conv2d before it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
    mods = list(copy.deepcopy(model).eval())
    out, i = [], 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(nxt, nn.BatchNorm1d) and isinstance(m, nn.Linear):
            m, i = fuse_linear_bn_eval(m, nxt), i + 1
        elif isinstance(nxt, nn.BatchNorm2d) and isinstance(m, nn.Conv2d):
            m, i = fuse_conv_bn_eval(m, nxt), i + 1
        out.append(m)
        i += 1
    return nn.Sequential(*out).eval()


def from_fp32(v: Variant, fp32: nn.Sequential) -> nn.Sequential:
    """The post-training (W1A-float, int8) and fine-tune (OneBit, BN kept) models of an
    FP32 MLP: every nn.Linear replaced, ReLUs kept."""
    from takane_kernels.torch import QuantLinear
    src = fp32 if v.source == "finetune" else fuse_batchnorm(fp32)
    mods = []
    for m in copy.deepcopy(src):
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                if v.kind == "int8":  # per-row symmetric int8, kept dequantized
                    w = m.weight.double()
                    s = w.abs().amax(dim=1, keepdim=True) / 127.0
                    s[s == 0] = 1.0
                    m.weight.copy_((torch.clamp(torch.round(w / s), -127, 127) * s).float())
                else:
                    if v.source == "finetune":
                        m.weight.clamp_(-1, 1)  # where the weight STE passes
                    m = QuantLinear.from_linear(m, scale=v.weights)  # OneBit: SVID-initialised vectors
        mods.append(m)
    return nn.Sequential(*mods)


# ---- training ----------------------------------------------------------------------------

def train(model: nn.Module, xtr, ytr, epochs: int, lr: float, gen) -> nn.Module:
    """Adam, learning rate lr * 0.5 * (1 + cos(pi * step / steps)) at step 1..steps, batch 64
    (batch order from ``gen``); binary layers' latent weights clipped to [-1, 1] per step."""
    from takane_kernels.torch import QuantConv2d, QuantLinear
    per_epoch = len(xtr) // BATCH
    steps = epochs * per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s + 1, steps) / steps)))
    latent = [m.weight for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for j in range(per_epoch):
            idx = order[j * BATCH:(j + 1) * BATCH]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for w in latent:
                    w.clamp_(-1, 1)
    return model.eval()


@torch.no_grad() if torch is not None else (lambda f: f)
def calibrate(model: nn.Module, xtr) -> None:
    """Continue the adaptive thresholds' EMA over one pass of training batches with the
    rest of the network in inference mode (batch norm on its running statistics), as
    inference will see them."""
    from takane_kernels.torch import SignQuantizer
    qs = [m for m in model.modules() if isinstance(m, SignQuantizer) and m.kind == "adaptive"]
    if not qs:
        return
    model.eval()
    for q in qs:
        q.train()  # update_ema on each batch, then binarize at the updated threshold
    for j in range(0, len(xtr), BATCH):
        model(xtr[j:j + BATCH])
    model.eval()


# ---- inference on the kernels ------------------------------------------------------------

class PatchConv(nn.Module if nn is not None else object):
    """A weight-only (real input) ``QuantConv2d`` on the kernels: im2col patches
    (``F.unfold``) through a W1A-float ``BinaryLinear``. ``convert`` has no route for it
    (the library's convolution kernel binarizes its input). The patch order of ``unfold``
    is (channel, dy, dx), the order of the OIHW weights flattened per output channel, so
    the layer computes the training forward's convolution within the W1A-float bound.
    Output: NCHW shape, channels_last memory (what ``BinaryConv2d`` reads without a copy).
    """

    def __init__(self, q, threads=None):
        super().__init__()
        from takane_kernels.torch import BinaryLinear
        if q.input_quantizer is not None or q.stride != (1, 1) or q.dilation != (1, 1) or q.groups != 1 \
                or q.pad_value != 0:
            raise ValueError("PatchConv: a weight-only QuantConv2d with stride 1, dilation 1, groups 1, zero padding")
        left, right, top, bottom = q.explicit_padding()
        if left != right or top != bottom:
            raise ValueError("PatchConv: symmetric padding only")
        self.kernel_size, self.padding = q.kernel_size, (top, left)
        w = q.weight.detach().to("cpu", torch.float32).reshape(q.out_channels, -1).numpy()
        with torch.no_grad():
            scale = None if q.row_scale() is None else q.row_scale().detach().float().numpy().copy()
        self.linear = BinaryLinear(tk.PackedWeights(tk.pack_bits(w), w.shape[1], scale=scale), "w1a_float",
                                   bias=q.bias, threads=threads)

    def forward(self, x):
        n, _, h, w = x.shape
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
        cols = F.unfold(x, self.kernel_size, padding=self.padding).transpose(1, 2)  # (N, L, C*KH*KW)
        return self.linear(cols).view(n, ho, wo, -1).permute(0, 3, 1, 2)


def deploy(model: nn.Sequential, threads=None) -> nn.Sequential:
    """The trained model on the kernels: ``convert`` (W1A1 QuantLinear / QuantConv2d ->
    BinaryLinear / BinaryConv2d, BN folded into integer thresholds; weight-only QuantLinear
    -> W1A-float BinaryLinear), the weight-only first conv as :class:`PatchConv`."""
    from takane_kernels.torch import QuantConv2d, convert
    m = copy.deepcopy(model).eval()
    for i, layer in enumerate(m):
        if isinstance(layer, QuantConv2d) and layer.input_quantizer is None:
            m[i] = PatchConv(layer, threads)
    return convert(m, threads=threads)


def kernel_layers(model: nn.Module) -> list:
    from takane_kernels.torch import BinaryConv2d, BinaryLinear
    return [m for m in model.modules() if isinstance(m, (BinaryLinear, BinaryConv2d))]


def check_reference(deployed: nn.Module, x) -> str:
    """Every kernel layer's output on its actual input (captured by forward hooks) against
    ``takane_kernels.reference``: W1A1 linear and binary convolution bit-exact, W1A-float
    within ``binary_weight_matmul_error_bound``. Raises AssertionError naming the layer;
    returns a short description."""
    from takane_kernels.torch import BinaryConv2d
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0].detach(), out.detach())))
             for m in kernel_layers(deployed)]
    try:
        with torch.no_grad():
            deployed(x)
    finally:
        for h in hooks:
            h.remove()
    exact = False
    for i, (m, xin, y) in enumerate(seen, 1):
        bias = None if m.bias is None else m.bias.numpy()
        if isinstance(m, BinaryConv2d):
            xn = xin.permute(0, 2, 3, 1).contiguous().numpy()  # NHWC, as the kernels read it
            want = ref.binary_conv2d(xn, m.weights, stride=m.stride, padding=m.padding, dilation=m.dilation,
                                     groups=m.groups, pad_value=m.pad_value, threshold=m.threshold, bias=bias)
            if not np.array_equal(y.permute(0, 2, 3, 1).numpy(), want):
                raise AssertionError(f"layer {i}: BinaryConv2d differs from reference.binary_conv2d")
            exact = True
        elif m.mode == "w1a1":
            xn = xin.contiguous().numpy()
            want = ref.binary_linear(xn, m.weights, threshold=m.threshold, bias=bias,
                                     activation_scale=m.activation_scale)
            if not np.array_equal(y.numpy(), want):
                raise AssertionError(f"layer {i}: BinaryLinear (w1a1) differs from reference.binary_linear")
            exact = True
        else:  # "w1a_float" (deploy converts with float32 activations: no "w1a8" layer)
            xn = xin.contiguous().numpy()
            err = np.abs(y.numpy().astype(np.float64) - ref.binary_weight_matmul(xn, m.weights, bias=bias))
            if not np.all(err <= ref.binary_weight_matmul_error_bound(xn, m.weights, bias=bias)):
                raise AssertionError(f"layer {i}: BinaryLinear ({m.mode}) outside the reference bound")
    return "bit-exact + bound" if exact else "within bound"


def check_training_match(model: nn.Module, deployed: nn.Module, x) -> bool:
    """W1A1: fed the same first-layer output, the rest of the converted network gives the
    training model's eval logits bit for bit (convert's guarantee; the first layer is
    W1A-float, within its bound, so a value at a threshold may binarize differently)."""
    with torch.no_grad():
        h = deployed[0](x)
        return bool(torch.equal(deployed[1:](h), model.eval()[1:](h)))


def weight_bytes(v: Variant, model: nn.Module, deployed: nn.Module | None) -> int:
    """Bytes of the weights inference uses: packed bits + float32 scales (``nbytes``) of the
    kernel layers; float32 4 per weight (BN fused); int8 1 per weight + a float32 per row."""
    if deployed is not None:
        return sum(m.weights.nbytes for m in kernel_layers(deployed))
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if v.kind == "int8":
        return sum(w.numel() + 4 * w.shape[0] for w in ws)
    return sum(4 * w.numel() for w in ws)


# ---- timing ------------------------------------------------------------------------------

def median_time(fn, budget_s=0.25, repeat=200):
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat and (len(times) < 5 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def side_by_side(fns, budget_s, rounds=3):
    """Median time of each function, measured in alternating rounds (drift hits all)."""
    times = [[] for _ in fns]
    for _ in range(rounds):
        for t, fn in zip(times, fns):
            t.append(median_time(fn, budget_s / rounds))
    return [float(np.median(t)) for t in times]



# ---- the experiment ----------------------------------------------------------------------

@contextlib.contextmanager
def _one_thread_deterministic():
    """Training multiplies small matrices: extra threads only add overhead (and spin on a
    shared machine); one thread and deterministic algorithms make each seed's accuracies
    reproducible. numpy's BLAS (the reference checks) limited too when threadpoolctl (a
    scikit-learn dependency) is there. Restores the previous settings."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        from threadpoolctl import threadpool_limits
        blas = threadpool_limits(1)
    except ImportError:  # pragma: no cover
        blas = contextlib.nullcontext()
    try:
        with blas:
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def _train_seed(seed, chosen, data, epochs, ft_epochs, lr_fp, lr_bin, acc, agree, checks, models, log):
    (xtr_np, ytr_np, xte_np, yte_np) = data
    ytr, yte = torch.from_numpy(ytr_np), torch.from_numpy(yte_np)
    fp32 = {}
    for v in chosen:
        xtr, xte = as_input(xtr_np, v.arch), as_input(xte_np, v.arch)
        torch.manual_seed(1000 * seed + 17)  # initialisation
        gen = torch.Generator().manual_seed(1000 * seed + 17)  # batch order
        t0 = time.perf_counter()
        if v.source == "train":
            model = train(build(v), xtr, ytr, epochs[v.arch], lr_fp if v.kind == "fp32" else lr_bin, gen)
            calibrate(model, xtr)
            if v.kind == "fp32":
                fp32[v.arch] = model
        elif v.source == "finetune":
            model = train(from_fp32(v, fp32[v.arch]), xtr, ytr, ft_epochs, lr_fp, gen)
        else:
            model = from_fp32(v, fp32[v.arch]).eval()
        model.eval()
        with torch.no_grad():
            train_pred = model(xte).argmax(1)
        deployed = deploy(model, threads=1) if v.kind in ("w1a1", "w1af") else None
        if deployed is not None:
            with torch.no_grad():
                pred = deployed(xte).argmax(1)
            checks[v.key] = check_reference(deployed, xte)
            if v.kind == "w1a1" and not check_training_match(model, deployed, xte):
                raise AssertionError(f"{v.key}: the converted W1A1 layers differ from the training model's")
            agree[v.key].append(int((pred == train_pred).sum()) / len(yte))  # exact fractions of 450
        else:
            pred = train_pred
            checks[v.key] = "PyTorch"
        acc[v.key].append(int((pred == yte).sum()) / len(yte))
        if seed == 0:
            models[v.key] = (model, deployed)
        log(f"  seed {seed} {v.key:20s} test accuracy {acc[v.key][-1]:.4f}  ({time.perf_counter() - t0:.1f} s)")


def run(seeds=5, epochs=60, ft_epochs=None, conv_epochs=None, lr_fp=3e-3, lr_bin=1e-2, variants=None, timing=True,
        time_budget=0.25, log=print, return_models=False):
    """Train and evaluate the variants; the report (JSON-able), and with ``return_models``
    also the seed-0 models by key: (training model in eval mode, converted model or None)."""
    _need_torch()
    data = load_data()
    xtr, _, xte, _ = data
    ft_epochs = max(1, epochs // 4) if ft_epochs is None else ft_epochs
    conv_epochs = max(1, epochs // 4) if conv_epochs is None else conv_epochs
    chosen = [v for v in VARIANTS if variants is None or v.key in variants]
    keys = {v.key for v in chosen}
    keys |= {v.fp32_key for v in chosen} | {"fp32"}  # the rows every row is relative to
    chosen = [v for v in VARIANTS if v.key in keys]
    acc = {v.key: [] for v in chosen}
    agree = {v.key: [] for v in chosen}
    checks, models = {}, {}
    t_start, cpu_start = time.perf_counter(), time.process_time()
    with _one_thread_deterministic():
        for seed in range(seeds):
            _train_seed(seed, chosen, data, {"mlp": epochs, "conv": conv_epochs}, ft_epochs, lr_fp, lr_bin, acc,
                        agree, checks, models, log)
    rows = []
    for v in chosen:
        a = np.array(acc[v.key])
        model, deployed = models[v.key]
        fp_model = models[v.fp32_key][0]
        rows.append({
            "key": v.key, "label": v.label, "kind": v.kind, "arch": v.arch, "ablation": v.ablation,
            "acc_mean": float(a.mean()), "acc_std": float(a.std()), "acc": a.tolist(),
            "rel_fp32": float(a.mean() / np.mean(acc[v.fp32_key])),
            "weight_bytes": weight_bytes(v, model, deployed),
            "fp32_weight_bytes": weight_bytes(VARIANTS[0], fp_model, None),
            "check": checks[v.key],
            "agree_training": float(np.mean(agree[v.key])) if agree[v.key] else None,
        })
    if timing:
        # One thread each: our kernel layers were converted with threads=1, PyTorch's own
        # ops (the FP32 baseline, and what the converted model keeps in PyTorch) run with
        # torch.set_num_threads(1). Rounds alternate the two, medians of medians.
        with _one_thread_deterministic(), torch.no_grad():
            for v, r in zip(chosen, rows):
                _, ours = models[v.key]
                fp = fuse_batchnorm(models[v.fp32_key][0])  # the FP32 network, batch norm folded
                if v.kind not in ("w1a1", "w1af", "fp32"):
                    continue
                for b, n in (("t1", 1), ("t256", 256)):
                    xb = as_input(np.ascontiguousarray(np.resize(xte, (n, xte.shape[1]))), v.arch)
                    if ours is None:
                        r["pt_" + b] = side_by_side([lambda: fp(xb)], time_budget)[0]
                    else:
                        r[b], r["pt_" + b] = side_by_side([lambda: ours(xb), lambda: fp(xb)], time_budget)
    meta = {
        "seeds": seeds, "epochs": epochs, "ft_epochs": ft_epochs, "conv_epochs": conv_epochs, "lr_fp32": lr_fp,
        "lr_binary": lr_bin, "batch": BATCH, "train": int(len(xtr)), "test": int(len(xte)), "isa": tk.isa.active(),
        "wall_s": time.perf_counter() - t_start, "cpu_s": time.process_time() - cpu_start,
        "version": tk.__version__, "torch": torch.__version__,
    }
    report = {"meta": meta, "rows": rows}
    return (report, models) if return_models else report

def _n(k, word):
    return f"{k} {word}{'' if k == 1 else 's'}"


def _us(s):
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def markdown(report) -> str:
    m = report["meta"]
    out = [
        f"| variant | test accuracy (mean ± std, {m['seeds']} seeds) | vs FP32 | weight bytes | vs FP32 bytes "
        "| batch 1: ours / PyTorch f32 | batch 256: ours / PyTorch f32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lab = f"*{r['label']}*" if r["ablation"] else r["label"]
        mem = f"{r['weight_bytes']:,}"
        rel_mem = f"1/{r['fp32_weight_bytes'] / r['weight_bytes']:.1f}" if r["kind"] != "fp32" else "1"
        if "t1" in r and r["kind"] != "fp32":
            l1 = f"{_us(r['t1'])} / {_us(r['pt_t1'])} ({r['pt_t1'] / r['t1']:.2f}x)"
            l256 = f"{_us(r['t256'])} / {_us(r['pt_t256'])} ({r['pt_t256'] / r['t256']:.2f}x)"
        elif "pt_t1" in r:
            l1, l256 = f"{_us(r['pt_t1'])} (PyTorch)", f"{_us(r['pt_t256'])} (PyTorch)"
        else:
            l1 = l256 = "—"
        out.append(f"| {lab} | {100 * r['acc_mean']:.2f}% ± {100 * r['acc_std']:.2f} | {100 * r['rel_fp32']:.1f}% "
                   f"| {mem} | {rel_mem} | {l1} | {l256} |")
    out.append("")
    out.append(
        f"Digits (sklearn `load_digits`), {m['train']} train / {m['test']} test images (fixed stratified split), "
        f"MLP 64→256→256→10, {_n(m['epochs'], 'epoch')} from scratch (OneBit fine-tune: {_n(m['ft_epochs'], 'epoch')} "
        f"from the FP32 model), trained in PyTorch with `takane_kernels.torch`'s `QuantLinear` / `QuantConv2d` / "
        f"`SignQuantizer` (`torch.optim.Adam`, learning rate {m['lr_fp32']:g} for FP32 and the fine-tune, "
        f"{m['lr_binary']:g} for binary training from scratch; cosine decay), batch {m['batch']}, "
        f"{_n(m['seeds'], 'seed')} (initialisation and batch order; one thread, deterministic algorithms), then "
        "`convert`ed to modules on our kernels. "
        "Every binary variant binarizes the weights of all three layers (first and last included: 8-bit "
        "or float first/last layers, the usual BNN practice, would cost more bytes); W1A1 "
        "variants binarize both hidden activations, the first layer reads real pixels (W1A-float kernel) and the "
        "last layer gives float logits. Batch norm precedes each binarization except in the "
        "*no batch norm* ablations (italic; a learned bias instead, or nothing); `convert` folds it, with the "
        "layer's scale and bias and the next threshold, into one integer threshold per channel. Straight-through "
        "estimator (`ste=\"clip\"`: gradient where |x − t| ≤ 1; weights: where |w| ≤ 1, latent weights clipped to "
        "[−1, 1]); adaptive thresholds: `SignQuantizer`'s EMA (decay 0.99, unbiased std + 1e-8) updated by every "
        "training batch and used by it. W1A-float post-training: batch norm fused into the FP32 weights, then "
        "`QuantLinear.from_linear`; the OneBit fine-tune trains the OneBit scale vectors too. "
        "Conv: 3×3 conv 1→32 on the real pixels (zero padding; a weight-only `QuantConv2d`, which `convert` cannot "
        "take — no float-activation convolution kernel — so it runs as `F.unfold` patches through a W1A-float "
        "`BinaryLinear`), 3×3 conv 32→64 ('valid', 6×6 positions) and the linear 2304→10 as a 6×6 conv, both "
        f"`BinaryConv2d` (`binary_conv2d`, no im2col); {_n(m['conv_epochs'], 'epoch')}; relative columns against "
        "the Conv FP32 row. "
        "Weight bytes: bits + float32 scales of the layers inference runs (`nbytes`; a folded layer has no scale; "
        "binary convolutions pack each tap's input channels in whole 64-bit words; int8: 1 byte per weight + a "
        "float32 per row); per-channel biases and thresholds not counted. Latency: whole network forward, "
        f"median, the converted model (our kernels, {m['isa']}, one thread; plus the PyTorch ops it keeps) against "
        "the FP32 network in PyTorch float32 (batch norm fused, one thread), measured alternately in one run; "
        "int8 is evaluated dequantized in PyTorch (not timed). Inference of every binary variant checked against "
        "`takane_kernels.reference` layer by layer (W1A1 bit-exact, float within its documented bound) and, "
        "for W1A1, against the training model: given the same first-layer output, bit-identical logits."
    )
    return "\n".join(out)


def plot(report, path):
    plt = pyplot("demo")
    if plt is None:
        return None
    rows = report["rows"]
    timed = any("t1" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(13 if timed else 9, 5.5), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2] if timed else [1]})
    ax = axes[0, 0]
    ys = np.arange(len(rows))[::-1]
    colors = ["#555555" if r["kind"] == "fp32" else "#c44e52" if r["kind"] == "w1a1" else
              "#4c72b0" if r["kind"] == "w1af" else "#8c8c8c" for r in rows]
    acc = np.array([100 * r["acc_mean"] for r in rows])
    std = np.array([100 * r["acc_std"] for r in rows])
    bars = ax.barh(ys, acc, xerr=std, color=colors, capsize=2)
    for bar, r in zip(bars, rows):
        if r["ablation"]:
            bar.set_hatch("//")
            bar.set_edgecolor("white")
    for y, a, e, r in zip(ys, acc, std, rows):
        ax.text(a + e + 1, y, f"{a:.1f}% ({100 * r['rel_fp32']:.0f}% of FP32)", va="center", fontsize=8)
    ax.set_yticks(ys, [r["label"] for r in rows], fontsize=8)
    ax.set_xlim(0, 125)
    ax.set_xlabel(f"test accuracy, mean ± std over {report['meta']['seeds']} seeds (hatched: ablations)")
    ax.set_title("1-bit MLP and conv net on sklearn digits, inference on takane_kernels", fontsize=10)
    if timed:
        ax2 = axes[0, 1]
        for j, (b, lab) in enumerate((("t1", "batch 1"), ("t256", "batch 256"))):
            ratio = [r["pt_" + b] / r[b] if b in r else 0.0 for r in rows]
            ax2.barh(ys + (0.2 if j == 0 else -0.2), ratio, height=0.4, label=lab,
                     color="#dd8452" if j == 0 else "#55a868")
        ax2.axvline(1.0, color="k", lw=1, ls="--")
        ax2.set_yticks(ys, [""] * len(rows))
        ax2.set_xlabel("PyTorch float32 FP32 network time / ours (> 1: ours faster)")
        ax2.set_title(f"whole-network latency, {report['meta']['isa']}, one thread each", fontsize=10)
        ax2.legend(fontsize=8)
    return save_figure(plt, fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m takane_kernels demo",
                                description="Train small 1-bit networks on sklearn's digits and measure the accuracy "
                                            "table (accuracy, weight bytes, latency on our kernels vs PyTorch float32).")
    p.add_argument("--seeds", type=int, default=5, help="training seeds per variant (default 5)")
    p.add_argument("--epochs", type=int, default=60, help="training epochs from scratch (default 60)")
    p.add_argument("--ft-epochs", type=int, default=None, help="OneBit fine-tune epochs (default epochs/4)")
    p.add_argument("--conv-epochs", type=int, default=None, help="conv net training epochs (default epochs/4)")
    p.add_argument("--out", default=os.path.join("build", "demo"), help="directory for table.md, "
                   "results.json and accuracy.png (default build/demo)")
    p.add_argument("--no-timing", action="store_true", help="skip the latency columns")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be >= 1")
    print(f"takane_kernels {tk.__version__} demo: {_n(args.seeds, 'seed')} x {_n(args.epochs, 'epoch')}, ISA {tk.isa.active()}")
    report = run(args.seeds, args.epochs, args.ft_epochs, args.conv_epochs, timing=not args.no_timing)
    write_report(args.out, markdown(report), report, plot, "accuracy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
