"""``python -m takane_kernels demo``: the 1-bit accuracy table, measured on real data.

A small MLP (64 -> 256 -> 256 -> 10) and a small conv net are trained in plain numpy on
scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1797 8x8 images,
shipped with the package, no download), one fixed stratified train/test split (75/25,
``random_state=0``), and evaluated on the held-out quarter in several precisions:

- ``fp32``: float32 weights, batch norm + ReLU (the 100% reference);
- ``w1a1_*``: every layer's weights ±1 with a per-row alpha = mean|w| (XNOR-Net), hidden
  activations ±1. The first layer reads the real pixels (1-bit weights, real input: the
  W1A-float kernel); its batch-normed output is binarized and fed to the W1A1 layers;
  the last layer's ±1 input times ±1 weights gives float logits. Binarization at
  threshold 0 (``naive``), at ``AdaptiveThreshold``'s 0.5 * EMA std (``adaptive``, the
  original rule) or at mean + 0.5 * std (``centred``, ``mean_factor=1``); the thresholds
  are updated every training step and used by the forward pass (the same rule in
  training and inference). Batch norm precedes each binarization (folded into the
  layer's scale and bias at inference); the ``nobn`` ablations drop it (plain biases),
  the ``nonorm`` ones drop the biases too (nothing but the threshold shifts the sign).
- ``w1af_*``: every layer's weights ±1, activations real (ReLU): post-training from the
  FP32 model with per-row alpha or OneBit's per-row x per-column scales, and OneBit
  with a short fine-tune;
- ``int8``: per-row symmetric int8 weights from the FP32 model (evaluated dequantized in
  numpy float32: a reference point for accuracy and memory, not run on our kernels).
- ``conv_*``: a small conv net (3x3 conv 1 -> 32 on the real pixels, 3x3 'valid' conv
  32 -> 64, linear 2304 -> 10; trained through im2col), FP32 and W1A1 with the three
  threshold rules. At inference the binary conv is ``binary_conv2d`` on the NHWC float
  map (binarized in the call with per-channel thresholds; no im2col); its packed output
  (64 channels: one word per position) is the last layer's packed input without repacking.

Training: Adam, cosine-decayed learning rate, batch 64; straight-through estimator for
every sign (gradient passed where |x - t| <= 1 for activations, |w| <= 1 for weights;
latent weights clipped to [-1, 1]). Inference of every binary variant runs through
``binary_linear`` / ``binary_weight_matmul`` and is checked layer by layer against
``takane_kernels.reference`` (bit-exact for W1A1, within the documented bound for
float), and end to end against a plain numpy float model of the same weights.

Needs scikit-learn (and matplotlib for the chart): ``pip install "takane-kernels[demo]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._ops import _ceil_f32

HIDDEN = 256
BATCH = 64
EPS = 1e-5
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str  # "fp32", "w1a1", "w1af", "int8"
    weights: str = "float"  # "float", "mean_abs", "onebit"
    threshold: str = "zero"  # "zero", "adaptive", "centred" (W1A1 only)
    bn: bool = True
    hidden_bias: bool = True  # without batch norm: learned biases before each sign (else fixed 0)
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

# (N, K) of each layer. conv: 3x3 'same' conv 1 -> 32 channels on the 8x8 image, 3x3
# 'valid' conv 32 -> 64 (6x6 positions), then a linear layer on the 6*6*64 = 2304 values.
SHAPES = {"mlp": [(HIDDEN, 64), (HIDDEN, HIDDEN), (10, HIDDEN)], "conv": [(32, 9), (64, 9 * 32), (10, 36 * 64)]}


def im2col_same(x):
    """(B, 64) 8x8 images -> (B*64, 9) zero-padded 3x3 patches, taps in (dy, dx) order."""
    img = np.pad(x.reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)))
    return np.stack([img[:, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)], axis=-1).reshape(-1, 9)


def im2col_valid(a, batch):
    """(B*64, C) rows of an 8x8xC map -> (B*36, 9*C) 'valid' 3x3 patches, (tap, channel)
    order with channels fastest — a conv as one matmul, and a per-channel threshold is
    the same vector tiled 9 times."""
    m = a.reshape(batch, 8, 8, -1)
    return np.concatenate([m[:, dy:dy + 6, dx:dx + 6] for dy in range(3) for dx in range(3)],
                          axis=-1).reshape(batch * 36, -1)


def col2im_valid(d, batch):
    """The transpose of im2col_valid: (B*36, 9*C) -> (B*64, C), overlapping taps summed."""
    c = d.shape[1] // 9
    taps = d.reshape(batch, 6, 6, 9, c)
    out = np.zeros((batch, 8, 8, c), d.dtype)
    for t in range(9):
        dy, dx = divmod(t, 3)
        out[:, dy:dy + 6, dx:dx + 6] += taps[:, :, :, t]
    return out.reshape(batch * 64, c)


def layer_input(arch, i, a, batch):
    """Layer i's input matrix from the previous layer's output rows (or the pixels)."""
    if arch == "mlp":
        return a
    if i == 0:
        return im2col_same(a)
    if i == 1:
        return im2col_valid(a, batch)
    return a.reshape(batch, -1)  # (B*36, 64) rows, or packed (B*36, 1) words -> one row per image


def layer_input_grad(arch, i, d, batch):
    if arch == "mlp":
        return d
    return col2im_valid(d, batch) if i == 1 else d.reshape(batch * 36, -1)


# ---- data ------------------------------------------------------------------------------

def load_data():
    """Digits, one fixed stratified split; pixels /16 then standardized with train stats."""
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


# ---- the network in numpy (training graph) --------------------------------------------

def _sign(a):
    return np.where(a >= 0, np.float32(1), np.float32(-1))


def _rank1(a, v):
    """First singular pair of a non-negative matrix by power iteration from v (warm start):
    returns sqrt(s)*u, sqrt(s)*v, v — OneBit's split of |W| ~ scale x in_scale."""
    for _ in range(3):
        u = a @ v
        u /= np.linalg.norm(u) + 1e-30
        v = a.T @ u
        s = np.linalg.norm(v) + 1e-30
        v /= s
    r = np.sqrt(s)
    return (r * u).astype(np.float32), (r * v).astype(np.float32), v


class Net:
    """Three layers of SHAPES[arch] (the conv net's are matmuls on im2col patches). Hidden
    layers: linear (no bias when batch-normed) -> BN -> activation (ReLU, or sign at a
    threshold); last layer linear with bias."""

    def __init__(self, v: Variant, rng):
        self.v = v
        shapes = SHAPES[v.arch]
        self.W, self.b, self.g, self.beta, self.rm, self.rv = [], [], [], [], [], []
        for n, k in shapes:
            bound = np.sqrt(6.0 / k)
            self.W.append(rng.uniform(-bound, bound, (n, k)).astype(np.float32))
            self.b.append(np.zeros(n, np.float32))
            self.g.append(np.ones(n, np.float32))
            self.beta.append(np.zeros(n, np.float32))
            self.rm.append(np.zeros(n, np.float32))
            self.rv.append(np.ones(n, np.float32))
        if v.kind == "w1a1":
            for i in range(len(self.W)):
                np.clip(self.W[i], -1, 1, out=self.W[i])
        self.at = None
        if v.kind == "w1a1" and v.threshold != "zero":
            mf = 1.0 if v.threshold == "centred" else 0.0
            self.at = [tk.AdaptiveThreshold(n, mean_factor=mf) for n, _ in shapes[:-1]]
        self._pv = [np.ones(k) for _, k in shapes]  # power-iteration warm starts

    @property
    def depth(self):
        return len(self.W)

    def params(self):
        ps = [("W", i) for i in range(self.depth)] + [("b", self.depth - 1)]
        for i in range(self.depth - 1):
            ps += [("g", i), ("beta", i)] if self.v.bn else [("b", i)] if self.v.hidden_bias else []
        return ps

    def weff(self, i):
        """The weights the forward pass uses, and the per-element scale of the STE mask."""
        w = self.W[i]
        if self.v.weights == "float":
            return w
        if self.v.weights == "mean_abs":
            return _sign(w) * np.abs(w).mean(1, keepdims=True)
        s, r, self._pv[i] = _rank1(np.abs(w).astype(np.float64), self._pv[i])
        return _sign(w) * np.outer(s, r)

    def threshold(self, i, h, train):
        if self.at is None:
            return 0.0
        if train:
            self.at[i].update(h)
        return self.at[i].threshold

    def forward(self, x, train=False):
        cache = []
        a = x
        for i in range(self.depth):
            we = self.weff(i)
            a = layer_input(self.v.arch, i, a, len(x))
            z = a @ we.T
            last = i == self.depth - 1
            c = {"a": a, "we": we}
            if last or not self.v.bn:
                z = z + self.b[i]
            if not last:
                if self.v.bn:
                    if train:
                        mu, var = z.mean(0), z.var(0)
                        self.rm[i] = BN_MOMENTUM * self.rm[i] + (1 - BN_MOMENTUM) * mu
                        self.rv[i] = BN_MOMENTUM * self.rv[i] + (1 - BN_MOMENTUM) * var
                    else:
                        mu, var = self.rm[i], self.rv[i]
                    inv = 1.0 / np.sqrt(var + EPS)
                    zh = (z - mu) * inv
                    h = self.g[i] * zh + self.beta[i]
                    c.update(zh=zh, inv=inv)
                else:
                    h = z
                if self.v.kind == "w1a1":
                    t = self.threshold(i, h, train)
                    a = np.where(h >= t, np.float32(1), np.float32(-1))
                    c["ste"] = np.abs(h - t) <= 1
                else:
                    a = np.maximum(h, 0)
                    c["ste"] = h > 0
            else:
                a = z
            cache.append(c)
        return a, cache

    def backward(self, dlogits, cache):
        grads = {}
        d = dlogits
        batch = len(dlogits)
        for i in reversed(range(self.depth)):
            c = cache[i]
            last = i == self.depth - 1
            if not last:
                dh = d * c["ste"]
                if self.v.bn:
                    grads[("beta", i)] = dh.sum(0)
                    grads[("g", i)] = (dh * c["zh"]).sum(0)
                    dzh = dh * self.g[i]
                    m = dzh.shape[0]
                    d = c["inv"] / m * (m * dzh - dzh.sum(0) - c["zh"] * (dzh * c["zh"]).sum(0))
                else:
                    d = dh
            if last or not self.v.bn:
                grads[("b", i)] = d.sum(0)
            dwe = d.T @ c["a"]
            if self.v.weights != "float":
                dwe = dwe * (np.abs(self.W[i]) <= 1)  # STE for sign(w)
            grads[("W", i)] = dwe
            if i:
                d = layer_input_grad(self.v.arch, i, d @ c["we"], batch)
        return grads


def _softmax_xent(logits, y):
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
    p[np.arange(len(y)), y] -= 1
    return loss, (p / len(y)).astype(np.float32)


def train(net: Net, xtr, ytr, epochs, lr, rng):
    params = net.params()
    m = {p: 0.0 for p in params}
    v = {p: 0.0 for p in params}
    b1, b2 = 0.9, 0.999
    steps = epochs * (len(xtr) // BATCH)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(xtr))
        for j in range(len(xtr) // BATCH):
            idx = order[j * BATCH:(j + 1) * BATCH]
            logits, cache = net.forward(xtr[idx], train=True)
            _, dl = _softmax_xent(logits, ytr[idx])
            grads = net.backward(dl, cache)
            step += 1
            lr_t = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
            for p in params:
                g = grads[p]
                m[p] = b1 * m[p] + (1 - b1) * g
                v[p] = b2 * v[p] + (1 - b2) * g * g
                mh, vh = m[p] / (1 - b1**step), v[p] / (1 - b2**step)
                arr = getattr(net, p[0])[p[1]]
                arr -= (lr_t * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
                if p[0] == "W" and net.v.weights != "float":
                    np.clip(arr, -1, 1, out=arr)
    return net


def calibrate(net: Net, xtr):
    """Continue the thresholds' EMA over one pass of training batches in inference mode
    (batch norm on its running statistics), as inference will see them."""
    if net.at is None:
        return
    for j in range(0, len(xtr), BATCH):
        a = xtr[j:j + BATCH]
        for i in range(net.depth - 1):
            z = layer_input(net.v.arch, i, a, len(xtr[j:j + BATCH])) @ net.weff(i).T
            h = (z - net.rm[i]) / np.sqrt(net.rv[i] + EPS) * net.g[i] + net.beta[i] if net.v.bn else z + net.b[i]
            net.at[i].update(h)
            a = np.where(h >= net.at[i].threshold, np.float32(1), np.float32(-1))


# ---- inference models on the kernels ---------------------------------------------------

def _fold(net: Net, i):
    """(row factor, bias) with which batch norm (inference) folds into layer i's output."""
    if i == net.depth - 1 or not net.v.bn:
        return np.ones(net.W[i].shape[0], np.float64), net.b[i].astype(np.float64)
    f = net.g[i].astype(np.float64) / np.sqrt(net.rv[i].astype(np.float64) + EPS)
    return f, net.beta[i] - f * net.rm[i]


@dataclass
class Model:
    """A network ready for inference: folded weights and the forward on our kernels."""
    kind: str
    layers: list  # per layer: (PackedWeights or float32 array, bias float32)
    thresholds: list = field(default_factory=list)  # W1A1: layer 2's input and output thresholds
    arch: str = "mlp"
    conv2: object = None  # conv W1A1: layer 2 as a PackedConvWeights (OHWI) for binary_conv2d

    def weight_bytes(self):
        if self.kind == "int8":
            return sum(w.size + 4 * w.shape[0] for w, _ in self.layers)  # int8 + a float32 scale per row
        return sum(w.nbytes for w, _ in self.layers)

    def _in(self, i, a, batch):
        return layer_input(self.arch, i, a, batch)

    def forward(self, x, lib=tk, threads=None):
        """Logits, float32. ``lib=reference`` runs the same network on the oracle;
        ``threads`` caps the kernels' threads (our ops only)."""
        kw = {} if threads is None else {"threads": threads}
        (w1, b1), (w2, b2), (w3, b3) = self.layers
        m = len(x)
        if self.kind in ("fp32", "int8"):
            h = np.maximum(self._in(0, x, m) @ w1.T + b1, 0)
            h = np.maximum(self._in(1, h, m) @ w2.T + b2, 0)
            return self._in(2, h, m) @ w3.T + b3
        if self.kind == "w1af":
            h = np.maximum(lib.binary_weight_matmul(self._in(0, x, m), w1, bias=b1, **kw), 0)
            h = np.maximum(lib.binary_weight_matmul(self._in(1, h, m), w2, bias=b2, **kw), 0)
            return lib.binary_weight_matmul(self._in(2, h, m), w3, bias=b3, **kw)
        t1, t2 = self.thresholds
        h = lib.binary_weight_matmul(self._in(0, x, m), w1, bias=b1, **kw)  # real pixels x 1-bit weights
        if self.conv2 is not None:  # NHWC map -> binary_conv2d (binarized inside), packed out
            bits = lib.binary_conv2d(h.reshape(m, 8, 8, -1), self.conv2, threshold=t1, bias=b2,
                                     out_threshold=t2, **kw).reshape(m, -1)
            return lib.binary_linear(bits, w3, bias=b3, **kw)  # packed in, float logits
        bits = lib.binary_linear(self._in(1, h, m), w2, threshold=t1, bias=b2, out_threshold=t2, **kw)  # packed out
        return lib.binary_linear(self._in(2, bits, m), w3, bias=b3, **kw)  # packed in, float logits

    def check_reference(self, x):
        """Each layer's kernel output vs the reference on the same input: W1A1 bit-exact,
        float within binary_weight_matmul_error_bound. Returns a short description."""
        if self.kind in ("fp32", "int8"):
            return "numpy"
        m = len(x)

        def float_layer(i, a):
            w, b = self.layers[i]
            a = self._in(i, a, m)
            y = tk.binary_weight_matmul(a, w, bias=b)
            if not np.all(np.abs(y - ref.binary_weight_matmul(a, w, bias=b))
                          <= ref.binary_weight_matmul_error_bound(a, w, bias=b)):
                raise AssertionError(f"layer {i + 1}: binary_weight_matmul outside the reference bound")
            return y

        if self.kind == "w1af":
            h = x
            for i in range(3):
                h = float_layer(i, h)
                h = np.maximum(h, 0) if i < 2 else h
            return "within bound"
        (_, _), (w2, b2), (w3, b3) = self.layers
        t1, t2 = self.thresholds
        if self.conv2 is not None:
            h = float_layer(0, x).reshape(m, 8, 8, -1)
            bits = tk.binary_conv2d(h, self.conv2, threshold=t1, bias=b2, out_threshold=t2)
            if not np.array_equal(bits, ref.binary_conv2d(h, self.conv2, threshold=t1, bias=b2, out_threshold=t2)):
                raise AssertionError("layer 2: binary_conv2d bits differ from the reference")
            # and the same layer as a matmul on im2col patches (how it was trained)
            if not np.array_equal(bits.reshape(m * 36, -1), ref.binary_linear(
                    self._in(1, h.reshape(m * 64, -1), m), w2, threshold=np.tile(t1, 9) if np.ndim(t1) else t1, bias=b2,
                    out_threshold=t2)):
                raise AssertionError("layer 2: binary_conv2d differs from binary_linear on im2col patches")
            bits = bits.reshape(m, -1)
            y = tk.binary_linear(bits, w3, bias=b3)
            if not np.array_equal(y, ref.binary_linear(bits, w3, bias=b3)):
                raise AssertionError("layer 3: binary_linear logits differ from the reference")
            return "bit-exact + bound"
        h = self._in(1, float_layer(0, x), m)
        bits = tk.binary_linear(h, w2, threshold=t1, bias=b2, out_threshold=t2)
        if not np.array_equal(bits, ref.binary_linear(h, w2, threshold=t1, bias=b2, out_threshold=t2)):
            raise AssertionError("layer 2: binary_linear bits differ from the reference")
        bits = self._in(2, bits, m)
        y = tk.binary_linear(bits, w3, bias=b3)
        if not np.array_equal(y, ref.binary_linear(bits, w3, bias=b3)):
            raise AssertionError("layer 3: binary_linear logits differ from the reference")
        return "bit-exact + bound"


def build_model(net: Net, v: Variant, fp32_net: Net | None = None) -> Model:
    src = net if v.source in ("train", "finetune") else fp32_net
    layers, thresholds = [], []
    for i in range(src.depth):
        f, bias = _fold(src, i)
        w = src.W[i]
        bias32 = bias.astype(np.float32)
        if v.kind == "fp32":
            layers.append(((w * f[:, None]).astype(np.float32), bias32))
        elif v.kind == "int8":
            wf = w.astype(np.float64) * f[:, None]
            s = np.abs(wf).max(1, keepdims=True) / 127.0
            s[s == 0] = 1.0
            q = np.clip(np.round(wf / s), -127, 127)
            layers.append(((q * s).astype(np.float32), bias32))
        elif v.source == "ptq":  # W1A-float from the folded FP32 weights
            layers.append((tk.pack_weights(w * f[:, None], scale=v.weights), bias32))
        else:  # trained binary weights: sign(W) with the training-time scales, BN folded in
            if v.weights == "mean_abs":
                pw = tk.pack_weights(w, scale=np.abs(w.astype(np.float64)).mean(1) * f)
            else:
                ob = tk.pack_weights(w, scale="onebit")
                pw = tk.PackedWeights(ob.bits, ob.k, scale=ob.scale * f, in_scale=ob.in_scale)
            layers.append((pw, bias32))
        if v.kind == "w1a1" and i < src.depth - 1:
            thresholds.append(src.at[i].threshold if src.at is not None else 0.0)
    if v.kind == "w1a1" and src.at is not None:
        # both thresholds as the smallest float32 >= each float64 value (threshold_f32): the
        # values compared (layer 1's output, layer 2's y) are float32, so y >= t is the same,
        # and a float32 array skips a rounding pass per call
        thresholds = [_ceil_f32(np.asarray(t, dtype=np.float64)) for t in thresholds]
    conv2 = None
    if v.kind == "w1a1" and v.arch == "conv":
        # layer 2's (64, 9*32) rows are (tap, channel) with channels fastest: the OHWI order
        w2 = layers[1][0]
        signs = tk.unpack_bits(w2.bits, w2.k).reshape(w2.n, 3, 3, -1)
        conv2 = tk.PackedConvWeights(tk.pack_bits(signs), signs.shape[3], scale=w2.scale)
    return Model(v.kind, layers, thresholds, v.arch, conv2)


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

def _one_blas_thread():
    """Training multiplies small matrices: BLAS threads only add overhead (and spin on a
    shared machine). threadpoolctl comes with scikit-learn; without it, nothing changes."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _train_seed(seed, chosen, xtr, ytr, xte, yte, epochs, ft_epochs, lr_fp, lr_bin, acc, agree, checks, models, log):
    fp32 = {}
    for v in chosen:
        rng = np.random.default_rng(1000 * seed + 17)
        t0 = time.perf_counter()
        if v.source == "train":
            net = train(Net(v, rng), xtr, ytr, epochs[v.arch], lr_fp if v.kind == "fp32" else lr_bin, rng)
            calibrate(net, xtr)
            if v.kind == "fp32":
                fp32[v.arch] = net
        elif v.source == "finetune":
            net = Net(v, rng)
            for name in ("W", "b", "g", "beta", "rm", "rv"):
                setattr(net, name, [a.copy() for a in getattr(fp32[v.arch], name)])
            for w in net.W:
                np.clip(w, -1, 1, out=w)
            net = train(net, xtr, ytr, ft_epochs, lr_fp, rng)
        else:
            net = None
        model = build_model(net, v, fp32.get(v.arch))
        pred = model.forward(xte).argmax(1)
        acc[v.key].append(float((pred == yte).mean()))
        checks[v.key] = model.check_reference(xte)
        # the same weights as a plain numpy float model (training graph, inference mode)
        if net is not None and v.kind != "int8":
            agree[v.key].append(float((net.forward(xte)[0].argmax(1) == pred).mean()))
        if seed == 0:
            models[v.key] = model
        log(f"  seed {seed} {v.key:20s} test accuracy {acc[v.key][-1]:.4f}  ({time.perf_counter() - t0:.1f} s)")


def run(seeds=5, epochs=60, ft_epochs=None, conv_epochs=None, lr_fp=3e-3, lr_bin=1e-2, variants=None, timing=True, time_budget=0.25,
        log=print, return_models=False):
    """Train and evaluate the variants; the report (JSON-able), and with ``return_models``
    also the seed-0 inference models by key."""
    xtr, ytr, xte, yte = load_data()
    ft_epochs = max(1, epochs // 4) if ft_epochs is None else ft_epochs
    conv_epochs = max(1, epochs // 4) if conv_epochs is None else conv_epochs
    chosen = [v for v in VARIANTS if variants is None or v.key in variants]
    keys = {v.key for v in chosen}
    keys |= {v.fp32_key for v in chosen} | {"fp32"}  # the rows every row is relative to
    chosen = [v for v in VARIANTS if v.key in keys]
    acc = {v.key: [] for v in chosen}
    agree = {v.key: [] for v in chosen}
    checks, models = {}, {}
    t_start = time.perf_counter()
    with _one_blas_thread():
        for seed in range(seeds):
            _train_seed(seed, chosen, xtr, ytr, xte, yte, {"mlp": epochs, "conv": conv_epochs}, ft_epochs, lr_fp,
                        lr_bin, acc, agree, checks, models, log)
    rows = []
    for v in chosen:
        a = np.array(acc[v.key])
        rows.append({
            "key": v.key, "label": v.label, "kind": v.kind, "arch": v.arch, "ablation": v.ablation,
            "acc_mean": float(a.mean()), "acc_std": float(a.std()), "acc": a.tolist(),
            "rel_fp32": float(a.mean() / np.mean(acc[v.fp32_key])),
            "weight_bytes": models[v.key].weight_bytes(),
            "fp32_weight_bytes": models[v.fp32_key].weight_bytes(),
            "check": checks[v.key],
            "agree_numpy": float(np.mean(agree[v.key])) if agree[v.key] else None,
        })
    if timing:
        x1, x256 = xte[:1], np.ascontiguousarray(np.resize(xte, (256, xte.shape[1])))
        # One thread each (threads=1 for our layer ops; numpy's BLAS threads busy-wait on a
        # shared machine). Rounds alternate the two, medians of medians.
        with _one_blas_thread():
            for v, r in zip(chosen, rows):
                mdl, fp = models[v.key], models[v.fp32_key]
                if mdl.kind in ("w1a1", "w1af", "fp32"):
                    for b, xb in (("t1", x1), ("t256", x256)):
                        r[b], r["np_" + b] = side_by_side(
                            [lambda: mdl.forward(xb, threads=1), lambda: fp.forward(xb)], time_budget)
    meta = {
        "seeds": seeds, "epochs": epochs, "ft_epochs": ft_epochs, "conv_epochs": conv_epochs, "lr_fp32": lr_fp,
        "lr_binary": lr_bin,
        "batch": BATCH, "train": int(len(xtr)), "test": int(len(xte)), "isa": tk.isa.active(),
        "wall_s": time.perf_counter() - t_start,
        "version": tk.__version__,
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
        "| batch 1: ours / numpy f32 | batch 256: ours / numpy f32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lab = f"*{r['label']}*" if r["ablation"] else r["label"]
        mem = f"{r['weight_bytes']:,}"
        rel_mem = f"1/{r['fp32_weight_bytes'] / r['weight_bytes']:.1f}" if r["kind"] != "fp32" else "1"
        if "t1" in r and r["kind"] != "fp32":
            l1 = f"{_us(r['t1'])} / {_us(r['np_t1'])} ({r['np_t1'] / r['t1']:.2f}x)"
            l256 = f"{_us(r['t256'])} / {_us(r['np_t256'])} ({r['np_t256'] / r['t256']:.2f}x)"
        elif "t1" in r:
            l1, l256 = f"{_us(r['np_t1'])} (numpy)", f"{_us(r['np_t256'])} (numpy)"
        else:
            l1 = l256 = "—"
        out.append(f"| {lab} | {100 * r['acc_mean']:.2f}% ± {100 * r['acc_std']:.2f} | {100 * r['rel_fp32']:.1f}% "
                   f"| {mem} | {rel_mem} | {l1} | {l256} |")
    out.append("")
    out.append(
        f"Digits (sklearn `load_digits`), {m['train']} train / {m['test']} test images (fixed stratified split), "
        f"MLP 64→256→256→10, {_n(m['epochs'], 'epoch')} from scratch (OneBit fine-tune: {_n(m['ft_epochs'], 'epoch')} "
        f"from the FP32 model), Adam (learning rate {m['lr_fp32']:g} for FP32 and the fine-tune, {m['lr_binary']:g} for "
        f"binary training from scratch; cosine decay), batch {m['batch']}, {_n(m['seeds'], 'seed')} (initialisation "
        "and batch order). "
        "Every binary variant binarizes the weights of all three layers (first and last included: 8-bit "
        "or float first/last layers, the usual BNN practice, would cost more bytes); W1A1 "
        "variants binarize both hidden activations, the first layer reads real pixels and the last layer "
        "gives float logits. Batch norm (folded at inference) precedes each binarization except in the "
        "*no batch norm* ablations (italic; a learned bias instead, or nothing). Straight-through estimator "
        "(gradient where |x − t| ≤ 1; weights: where |w| ≤ 1, latent weights clipped to [−1, 1]); W1A1 "
        "thresholds updated by `AdaptiveThreshold.update` at every training step and used by that step. "
        f"Conv: 3×3 conv 1→32 on the real pixels (zero padding; W1A-float kernel on im2col patches), 3×3 conv "
        f"32→64 ('valid', 6×6 positions; at inference `binary_conv2d` on the NHWC float map, binarized in "
        f"the call with per-channel thresholds, no im2col; checked against the reference and against "
        f"`binary_linear` on the im2col patches it was trained as; its packed output, one 64-bit word per "
        f"position, is the last layer's packed input as is), linear 2304→10; {_n(m['conv_epochs'], 'epoch')}; relative columns against the Conv FP32 row. "
        "Weight bytes: bits + float32 scales (`PackedWeights.nbytes`; int8: 1 byte per weight + a float32 "
        "per row); per-channel biases and thresholds not counted. Latency: whole network forward, "
        f"median, our kernels ({m['isa']}; one thread) against the FP32 "
        "network in numpy float32 limited to one BLAS thread, measured alternately in one run; int8 is evaluated "
        "dequantized in numpy (not timed). Inference of every binary variant checked against "
        "`takane_kernels.reference` layer by layer: W1A1 bit-exact, float within its documented bound."
    )
    return "\n".join(out)


def plot(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('  (no PNG: matplotlib is missing; pip install "takane-kernels[demo]")')
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
            ratio = [r["np_" + b] / r[b] if b in r else 0.0 for r in rows]
            ax2.barh(ys + (0.2 if j == 0 else -0.2), ratio, height=0.4, label=lab,
                     color="#dd8452" if j == 0 else "#55a868")
        ax2.axvline(1.0, color="k", lw=1, ls="--")
        ax2.set_yticks(ys, [""] * len(rows))
        ax2.set_xlabel("numpy float32 FP32 network time / ours (> 1: ours faster)")
        ax2.set_title(f"whole-network latency, {report['meta']['isa']}, one thread each", fontsize=10)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m takane_kernels demo",
                                description="Train small 1-bit networks on sklearn's digits and measure the accuracy "
                                            "table (accuracy, weight bytes, latency on our kernels vs numpy float32).")
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
    table = markdown(report)
    print()
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    png = plot(report, os.path.join(args.out, "accuracy.png"))
    print(f"\nwritten: {os.path.join(args.out, 'table.md')}, results.json{', accuracy.png' if png else ''} "
          f"({report['meta']['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
