"""``python -m takane_kernels lm``: the seed's Memory / Latency / Accuracy table on a small
1-bit language model, trained and evaluated on this machine.

Data: the running interpreter's standard-library ``*.py`` sources, read as bytes
(``sysconfig.get_paths()["stdlib"]``, sorted relative paths; directories named
``site-packages``, ``dist-packages``, ``test``, ``tests`` and ``__pycache__`` left out). A
file goes to validation when the first byte of the SHA-256 of its relative path (POSIX
separators) is below 26 (about 10% of the files), to training otherwise: a split by file,
stable across runs and machines for the same Python version. Files are concatenated in path
order. The corpus size, file counts and a SHA-256 over (path, content) are recorded, so runs
on another Python version are recognisably different. No network.

Model: a byte-level decoder-only transformer (vocabulary 256, pre-norm RMSNorm, rotary
positions, causal multi-head attention, a GELU MLP of 4x width, untied float embedding and
output head, no biases). Variants (every linear layer of the blocks is 1-bit unless
stated; the embedding, the head and the norms stay float32 and are counted in the bytes):

1. ``fp32``: trained from scratch in PyTorch (the reference; evaluated in PyTorch float32).
   ``fp32_ft`` (a control, not 1-bit): the FP32 model given the fine-tune of 4 and 5 (same
   steps, learning rate and distillation from the FP32 model), so that what the extra steps
   alone buy is visible next to the 1-bit fine-tunes.
2. ``ptq_naive``: post-training sign(W) x per-row mean |W| (``QuantLinear(scale="mean_abs")``
   from the FP32 weights, no retraining).
3. ``ptq_group`` / ``ptq_onebit``: post-training group scales (Q1_0 style, one mean |W| per
   128 weights) and OneBit row x column scales (SVID initialisation), no retraining.
4. ``qat_onebit``: OneBit quantization-aware fine-tune from the FP32 model (straight-through
   estimator on the weight sign, row and column scales trained), loss = cross-entropy +
   KL divergence to the FP32 model's logits (distillation, weight 1).
5. ``w1a1_naive`` / ``w1a1_adaptive`` / ``w1a1_centred``: the seed's method. Weights ±1
   (per-row mean |W|) everywhere; the *inputs* of the MLP blocks' two linear layers
   binarized by a ``SignQuantizer`` at 0 (naive), at 0.5 · EMA std (the seed's adaptive
   threshold) or at EMA mean + 0.5 · EMA std (centred), with the seed's straight-through
   estimator; attention's four linear layers keep float inputs (W1A-float). Fine-tuned from
   the FP32 model exactly as 4 (same steps, learning rate, distillation). At inference the
   MLP layers are W1A1 ``binary_linear``.
6. ``qat_onebit_q8``: the model of 4 with q8_0 activations (``BinaryLinear`` mode ``w1a8``).
7. ``qat_ternary``: BitNet b1.58 (W1.58A8), the format the published "1-bit" LLMs use:
   every block linear ``QuantLinear(scale="ternary")`` (absmean ternary weights, one
   mean |W| per tensor) with an ``Int8RowQuantizer`` on its input (per-token absmax int8),
   BitNet's identity straight-through estimators, fine-tuned from the FP32 model exactly as
   4 (same steps, learning rate, distillation). At inference ``BinaryLinear`` mode
   ``int8_row`` on ``TernaryWeights`` (2 bits per weight: the "1-bit layers" bytes).

Training uses ``takane_kernels.torch``'s ``QuantLinear`` / ``SignQuantizer``; inference of
every 1-bit variant runs on ``convert()``-ed models (``BinaryLinear``: our kernels), and every
1-bit layer's output is checked during the run against ``takane_kernels.reference`` on every
ISA the machine supports (W1A1 bit-exact; float, q8_0 and int8_row within
``reference.binary_weight_matmul_error_bound``) and against the training module it came from
(W1A1 bit-identical; float and int8_row within ``linear_error_bound``).

Metrics, mean ± std over seeds (each seed: initialisation, batch order, fine-tunes):
validation next-byte top-1 accuracy and bits per byte (perplexity = 2^bpb), each also as a
fraction of FP32's; bytes of the 1-bit layers (bits + float32 scales, ``PackedWeights.nbytes``)
and of the whole model against FP32 and FP16; latency of one decode step (batch 1, KV
cache, position 128) and of a 128-token prefill of the whole model, our kernels for the block
linears (one thread) against the same model in PyTorch float32 (one thread), medians measured
alternately. Needs the ``lm`` extra (PyTorch CPU, matplotlib).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import os
import sys
import sysconfig
import time
from dataclasses import dataclass

import numpy as np

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels.programs._report import pyplot, save_figure, write_report

VOCAB = 256
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "__pycache__"})
VAL_HASH_BELOW = 26  # first SHA-256 byte of the relative path < 26: validation (~10% of files)
LINEAR_NAMES = ("q", "k", "v", "o", "fc1", "fc2")
MLP_NAMES = ("fc1", "fc2")
GROUP_SIZE = 128


@dataclass(frozen=True)
class Config:
    """Model and run sizes. The defaults are the full run (README table)."""

    layers: int = 4
    width: int = 256
    heads: int = 4
    context: int = 128
    batch: int = 8
    steps: int = 500  # FP32 training steps
    ft_steps: int = 100  # every fine-tune (4, 5 and 7)
    lr: float = 2e-3
    ft_lr: float = 1e-3
    seeds: int = 3
    eval_windows: int = 256  # validation windows of `context` bytes (each predicts `context` bytes)
    check_windows: int = 2  # windows whose every 1-bit layer is checked on every ISA
    threads: int = 2  # torch threads for training and evaluation
    time_budget: float = 2.0  # seconds per latency cell (alternating rounds)
    prefill: int = 128


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    item: str  # the numbering
    source: str  # "train" | "ptq" | "finetune" | "reuse" | "control"
    scale: str | None = None  # QuantLinear scale for every block linear
    act: str | None = None  # SignQuantizer on the MLP inputs: "zero" | "adaptive" | "centred"
    activations: str = "float32"  # convert(): "float32" | "q8_0"
    reuse: str | None = None  # the trained variant whose model this one converts differently
    int8_inputs: bool = False  # an Int8RowQuantizer on every block linear's input (scale "ternary")

    @property
    def mode(self) -> str:
        if self.scale is None:
            return "PyTorch float32"
        if self.scale == "ternary":
            return "w1.58a8 (int8_row)" if self.int8_inputs else "w1.58a_float"
        lin = "w1a8" if self.activations == "q8_0" else "w1a_float"
        return f"{lin} attn + w1a1 MLP" if self.act else lin


VARIANTS = [
    Variant("fp32", "FP32 (PyTorch)", "1", "train"),
    Variant("fp32_ft", "FP32 + the fine-tune of 4 and 5 (control: the same extra steps, float)", "1",
            "control"),
    Variant("ptq_naive", "naive post-training 1-bit: sign(W)·mean|W| per row", "2", "ptq", "mean_abs"),
    Variant("ptq_group", "post-training group scales (G = 128, Q1_0 style)", "3", "ptq", "group"),
    Variant("ptq_onebit", "post-training OneBit row × column scales (SVID)", "3", "ptq", "onebit"),
    Variant("qat_onebit", "OneBit QAT fine-tune + distillation", "4", "finetune", "onebit"),
    Variant("w1a1_naive", "seed's method, MLP inputs sign at 0 (naive)", "5", "finetune", "mean_abs", "zero"),
    Variant("w1a1_adaptive", "seed's method, MLP inputs at 0.5·EMA std (adaptive)", "5", "finetune",
            "mean_abs", "adaptive"),
    Variant("w1a1_centred", "seed's method, MLP inputs at mean + 0.5·EMA std (centred)", "5", "finetune",
            "mean_abs", "centred"),
    Variant("qat_onebit_q8", "OneBit QAT fine-tune, q8_0 activations (W1A8)", "6", "reuse", "onebit",
            activations="q8_0", reuse="qat_onebit"),
    Variant("qat_ternary", "BitNet b1.58 QAT fine-tune: ternary absmean weights, per-token int8 activations "
            "(W1.58A8) + distillation", "7", "finetune", "ternary", int8_inputs=True),
]


# ---- data --------------------------------------------------------------------------------

def stdlib_files(root: str | None = None) -> list[str]:
    """Sorted POSIX relative paths of the stdlib ``*.py`` files (see the module docstring)."""
    root = root or sysconfig.get_paths()["stdlib"]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        rel = os.path.relpath(dirpath, root)
        for f in filenames:
            if f.endswith(".py"):
                found.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return sorted(found)


def is_validation(rel: str) -> bool:
    return hashlib.sha256(rel.encode()).digest()[0] < VAL_HASH_BELOW


def load_corpus(root: str | None = None):
    """(train bytes, validation bytes, metadata) as uint8 arrays; see the module docstring."""
    root = root or sysconfig.get_paths()["stdlib"]
    parts = {"train": [], "val": []}
    digest = hashlib.sha256()
    files = stdlib_files(root)
    for rel in files:
        with open(os.path.join(root, *rel.split("/")), "rb") as f:
            data = f.read()
        digest.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        parts["val" if is_validation(rel) else "train"].append(data)
    train = np.frombuffer(b"".join(parts["train"]), dtype=np.uint8)
    val = np.frombuffer(b"".join(parts["val"]), dtype=np.uint8)
    if len(train) < 1 << 16 or len(val) < 1 << 14:
        raise RuntimeError(f"the stdlib corpus at {root} is too small ({len(train)} / {len(val)} bytes)")
    meta = {"root": root, "python": sys.version.split()[0], "files": len(files),
            "train_files": len(parts["train"]), "val_files": len(parts["val"]),
            "train_bytes": int(len(train)), "val_bytes": int(len(val)), "sha256": digest.hexdigest()}
    return train, val, meta


# ---- model -------------------------------------------------------------------------------

def _torch():
    import torch  # the lm extra; imported lazily so `python -m takane_kernels` works without it

    return torch


def build_model(cfg: Config):
    """A fresh FP32 model (``nn.Module``) for ``cfg``."""
    torch = _torch()
    import torch.nn.functional as F
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg.width
            self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
            self.fc1 = nn.Linear(d, 4 * d, bias=False)
            self.fc2 = nn.Linear(4 * d, d, bias=False)

        def forward(self, x, cos, sin, cache=None, pos=0):
            b, t, d = x.shape
            h, hd = cfg.heads, d // cfg.heads
            a = self.norm1(x)
            q, k, v = (lin(a).view(b, t, h, hd).transpose(1, 2) for lin in (self.q, self.k, self.v))
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            if cache is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # cache: (2, b, h, maxlen, hd); this call writes positions pos .. pos + t - 1
                if pos and t > 1:
                    raise ValueError("a multi-token call with a KV cache must start at position 0")
                cache[0, :, :, pos:pos + t] = k
                cache[1, :, :, pos:pos + t] = v
                y = F.scaled_dot_product_attention(q, cache[0, :, :, :pos + t], cache[1, :, :, :pos + t],
                                                   is_causal=t > 1)
            x = x + self.o(y.transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = cfg
            self.embed = nn.Embedding(VOCAB, cfg.width)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.norm = RMSNorm(cfg.width)
            self.head = nn.Linear(cfg.width, VOCAB, bias=False)
            hd = cfg.width // cfg.heads
            inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            ang = torch.arange(max(4 * cfg.context, 2 * cfg.prefill), dtype=torch.float32)[:, None] * inv[None]
            self.register_buffer("cos", ang.cos(), persistent=False)
            self.register_buffer("sin", ang.sin(), persistent=False)
            for name, p in self.named_parameters():
                if p.ndim == 2:  # GPT-2 style: N(0, 0.02), residual projections / sqrt(2 layers)
                    std = 0.02 / math.sqrt(2 * cfg.layers) if name.endswith(("o.weight", "fc2.weight")) else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx, cache=None, pos=0):
            t = idx.shape[1]
            cos, sin = self.cos[pos:pos + t], self.sin[pos:pos + t]
            x = self.embed(idx)
            for i, blk in enumerate(self.blocks):
                x = blk(x, cos, sin, None if cache is None else cache[i], pos)
            return self.head(self.norm(x))

        def new_cache(self, batch=1, length=None):
            hd = cfg.width // cfg.heads
            return torch.zeros(cfg.layers, 2, batch, cfg.heads, length or 2 * cfg.context, hd)

    return LM()


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return _torch().cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def quantize(fp32_model, v: Variant):
    """A copy of the FP32 model with every block linear a ``QuantLinear`` for variant ``v``
    (the FP32 weights as latent weights; SignQuantizers on the MLP inputs for the seed's
    method; an ``Int8RowQuantizer`` on every block linear for BitNet b1.58)."""
    from takane_kernels.torch import Int8RowQuantizer, QuantLinear, SignQuantizer

    def quantizer(channels):
        if v.act == "zero":
            return SignQuantizer(channels, threshold="fixed", value=0.0)
        if v.act == "adaptive":
            return SignQuantizer(channels)  # 0.5 · EMA std, the seed's TakaneSignQuantizer
        if v.act == "centred":
            return SignQuantizer(channels, mean_factor=1.0)
        raise ValueError(f"unknown activation rule {v.act!r}")

    model = copy.deepcopy(fp32_model)
    for blk in model.blocks:
        for name in LINEAR_NAMES:
            lin = getattr(blk, name)
            kw = {"scale": v.scale}
            if v.scale == "group":
                kw["group_size"] = GROUP_SIZE
            if v.act is not None and name in MLP_NAMES:
                kw["input_quantizer"] = quantizer(lin.in_features)
            if v.int8_inputs:
                kw["input_quantizer"] = Int8RowQuantizer()
            setattr(blk, name, QuantLinear.from_linear(lin, **kw))
    return model.eval()


def calibrate_thresholds(model, x) -> None:
    """Start every adaptive ``SignQuantizer``'s EMA at its inputs' statistics on ``x`` (one
    no-grad training-mode forward with decay 0, in model order, so each quantizer sees the
    inputs the already-calibrated ones before it produce) instead of the buffers' 0 / 1: with
    decay 0.99 a short fine-tune would otherwise still carry ~e^(-steps/100) of the arbitrary
    initial threshold."""
    torch = _torch()
    from takane_kernels.torch import SignQuantizer

    qs = [m for m in model.modules() if isinstance(m, SignQuantizer) and m.kind == "adaptive"]
    decays = [q.decay for q in qs]
    try:
        for q in qs:
            q.decay = 0.0
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for q, dcy in zip(qs, decays):
            q.decay = dcy
        model.eval()


# ---- training and evaluation -------------------------------------------------------------

def train(model, data: np.ndarray, cfg: Config, steps: int, lr: float, seed: int, teacher=None, log=print,
          tag=""):
    """AdamW (betas 0.9/0.95, no weight decay), linear warm-up over min(100, steps/10) steps,
    cosine decay to 10%, gradient norm clipped at 1, random windows of ``context + 1`` bytes.
    With ``teacher``: + KL(teacher || model) on the logits (distillation). Returns the mean
    loss of the first and last 10% of the steps (None for 0 steps)."""
    torch = _torch()
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    tokens = torch.from_numpy(data)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warm = max(1, min(100, steps // 10))

    def factor(s):
        return min(1.0, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    offsets = torch.arange(cfg.context + 1)
    losses = []
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, len(tokens) - cfg.context - 1, (cfg.batch,), generator=g)
        chunk = tokens[starts[:, None] + offsets].long()
        x, y = chunk[:, :-1], chunk[:, 1:]
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        if teacher is not None:
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(x), -1).reshape(-1, VOCAB)
            loss = loss + F.kl_div(F.log_softmax(logits, -1).reshape(-1, VOCAB), t_logp, log_target=True,
                                   reduction="batchmean")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{tag}: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, steps // 4) == 0:
            log(f"    {tag} step {step + 1}/{steps} loss {np.mean(losses[-20:]):.3f} "
                f"({(time.perf_counter() - t0) / (step + 1) * 1e3:.0f} ms/step)")
    model.eval()
    if not losses:
        return None
    tenth = max(1, steps // 10)
    return float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:]))


def eval_windows(val: np.ndarray, cfg: Config, windows: int) -> np.ndarray:
    """(windows, context + 1) uint8: windows at evenly spaced starts over the validation bytes."""
    starts = np.linspace(0, len(val) - cfg.context - 1, windows).astype(np.int64)
    return val[starts[:, None] + np.arange(cfg.context + 1)]


def evaluate(model, chunks: np.ndarray, batch: int = 32) -> tuple[float, float]:
    """(top-1 accuracy, bits per byte) of next-byte prediction at every position of every
    window (context 1 .. context bytes)."""
    torch = _torch()
    import torch.nn.functional as F

    nll, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for i in range(0, len(chunks), batch):
            c = torch.from_numpy(chunks[i:i + batch].astype(np.int64))
            x, y = c[:, :-1], c[:, 1:]
            logits = model(x).reshape(-1, VOCAB)
            nll += F.cross_entropy(logits, y.reshape(-1), reduction="sum").item()
            correct += int((logits.argmax(-1) == y.reshape(-1)).sum())
            count += y.numel()
    return correct / count, nll / count / math.log(2)


# ---- checks against the reference --------------------------------------------------------

def binary_layers(model):
    from takane_kernels.torch import BinaryLinear

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BinaryLinear)]


def check_layers(deployed, trained, chunks: np.ndarray) -> dict:
    """Every 1-bit layer of ``deployed`` (a converted model) on the inputs it sees for
    ``chunks``, on every supported ISA (forced, and asserted to have run): W1A1 outputs equal
    ``reference.binary_linear``'s bit for bit and the training module's; float, q8_0 and
    int8_row outputs within ``reference.binary_weight_matmul_error_bound`` of the reference,
    and float and int8_row within ``linear_error_bound`` of the training module. Raises AssertionError otherwise."""
    torch = _torch()
    from takane_kernels.torch import linear_error_bound

    inputs = {}
    hooks = [m.register_forward_hook(lambda m, a, out, name=name: inputs.__setitem__(name, a[0].detach().clone()))
             for name, m in binary_layers(deployed)]
    try:
        with torch.inference_mode():
            deployed(torch.from_numpy(chunks[:, :-1].astype(np.int64)))
    finally:
        for h in hooks:
            h.remove()
    isas = tk.isa.supported()
    counts = {"w1a1": 0, "w1a_float": 0, "w1a8": 0, "int8_row": 0}
    worst = 0.0  # largest |kernel - reference| / bound over the float layers
    for name, layer in binary_layers(deployed):
        x = inputs[name].reshape(-1, layer.in_features).contiguous()
        xn = x.numpy()
        w = layer.weights
        with torch.inference_mode():
            y_train = trained.get_submodule(name)(x).numpy()
        acts = layer_activations(layer)
        if layer.mode == "w1a1":
            y_ref = ref.binary_linear(xn, w, threshold=layer.threshold, bias=None)
        else:
            y_ref = ref.binary_weight_matmul(xn, w, activations=acts)
            bound = ref.binary_weight_matmul_error_bound(xn, w, activations=acts)
        for isa in isas:
            with tk.isa.force(isa), torch.inference_mode():
                y = layer(x).numpy()
                ran = tk.isa.last_used()
            if ran != isa:
                raise AssertionError(f"{name}: forced {isa}, the kernels ran {ran}")
            if layer.mode == "w1a1":
                if not np.array_equal(y, y_ref):
                    raise AssertionError(f"{name} ({isa}): W1A1 output differs from reference.binary_linear")
                if not np.array_equal(y, y_train):
                    raise AssertionError(f"{name} ({isa}): W1A1 output differs from the training module's")
            else:
                err = np.abs(y.astype(np.float64) - y_ref)
                if not np.all(err <= bound):
                    raise AssertionError(f"{name} ({isa}): {layer.mode} output outside the reference bound")
                worst = max(worst, float(np.max(err / np.maximum(bound, 1e-300))))
                if layer.mode in ("w1a_float", "int8_row") and not np.all(
                        np.abs(y.astype(np.float64) - y_train) <= linear_error_bound(x, layer)):
                    raise AssertionError(f"{name} ({isa}): output outside linear_error_bound of the training module")
        counts[layer.mode] += 1
    return {"isas": isas, "layers": counts, "rows": int(len(chunks) * (chunks.shape[1] - 1)),
            "worst_err_over_bound": worst}


def layer_activations(layer) -> str:
    """The ``activations=`` of ``reference.binary_weight_matmul`` for a converted layer."""
    return {"w1a8": "q8_0", "int8_row": "int8_row"}.get(layer.mode, "float32")


# ---- memory and latency ------------------------------------------------------------------

def model_bytes(model) -> dict:
    """Bytes of the 1-bit layers (packed bits + float32 scales), of the W1A1 thresholds
    (float32 per input), of the float parameters (embedding, head, norms: float32) and total."""
    layers = binary_layers(model)
    one_bit = sum(m.weights.nbytes for _, m in layers)
    thresholds = sum(4 * np.size(m.threshold) for _, m in layers if m.mode == "w1a1" and np.ndim(m.threshold))
    floats = sum(4 * p.numel() for p in model.parameters())
    return {"one_bit": int(one_bit), "thresholds": int(thresholds), "float": int(floats),
            "total": int(one_bit + thresholds + floats)}


def _median_time(fn, budget_s: float, min_runs: int = 5) -> float:
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _alternate(fns, budget_s: float, rounds: int = 5):
    times = [[] for _ in fns]
    for _ in range(rounds):
        for t, fn in zip(times, fns):
            t.append(_median_time(fn, budget_s / rounds / len(fns)))
    return [float(np.median(t)) for t in times]


def latency(models: dict, fp32_key: str, cfg: Config, prompt: np.ndarray, budget_s: float) -> dict:
    """Per model: (decode step, prefill) medians, one thread, each alternated with the FP32
    model's in the same rounds. Decode: one token at position ``prefill`` with a KV cache
    holding the prompt; prefill: the ``prefill``-byte prompt into an empty cache."""
    torch = _torch()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = {}
    for key, m in models.items():
        for _, layer in binary_layers(m):
            saved[id(layer)] = layer.threads
            layer.threads = 1
    try:
        p = torch.from_numpy(prompt[None, :cfg.prefill].astype(np.int64))
        tok = torch.from_numpy(prompt[None, cfg.prefill:cfg.prefill + 1].astype(np.int64))

        def runners(m):
            cache = m.new_cache(1, cfg.prefill + 1)
            with torch.inference_mode():
                m(p, cache, 0)

            def decode():
                with torch.inference_mode():
                    m(tok, cache, cfg.prefill)

            def prefill():
                with torch.inference_mode():
                    m(p, cache, 0)

            return decode, prefill

        ref_decode, ref_prefill = runners(models[fp32_key])
        out = {}
        for key, m in models.items():
            if key == fp32_key:
                continue
            decode, prefill = runners(m)
            d_ours, d_fp = _alternate([decode, ref_decode], budget_s)
            p_ours, p_fp = _alternate([prefill, ref_prefill], budget_s)
            out[key] = {"decode_s": d_ours, "decode_fp32_s": d_fp, "prefill_s": p_ours, "prefill_fp32_s": p_fp}
        return out
    finally:
        torch.set_num_threads(prev_threads)
        for key, m in models.items():
            for _, layer in binary_layers(m):
                layer.threads = saved[id(layer)]


# ---- the experiment ----------------------------------------------------------------------

def run(cfg: Config = Config(), variants=None, timing: bool = True, log=print, return_models: bool = False):
    """Train, convert, check and measure; the report (JSON-able), and with ``return_models``
    also the seed-0 models {key: (trained, deployed)}."""
    torch = _torch()
    from takane_kernels.torch import convert

    log = log or (lambda *a: None)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    chosen = [v for v in VARIANTS if variants is None or v.key in variants or v.key == "fp32"]
    needed = {v.reuse for v in chosen if v.reuse}
    chosen = [v for v in VARIANTS if v in chosen or v.key in needed]
    train_data, val, corpus = load_corpus()
    train_data = np.array(train_data)  # writable, for torch.from_numpy
    chunks = eval_windows(val, cfg, cfg.eval_windows)
    check_chunks = eval_windows(val, cfg, max(1, cfg.check_windows))
    calib = eval_windows(train_data, cfg, cfg.batch)[:, :-1]  # threshold calibration windows
    log(f"  corpus: {corpus['files']} stdlib files of Python {corpus['python']}, "
        f"{corpus['train_bytes']:,} train / {corpus['val_bytes']:,} validation bytes "
        f"({corpus['val_files']} files), sha256 {corpus['sha256'][:16]}")
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    acc = {v.key: [] for v in chosen}
    bpb = {v.key: [] for v in chosen}
    checks, losses, models, train_s = {}, {v.key: [] for v in chosen}, {}, {v.key: [] for v in chosen}
    try:
        for seed in range(cfg.seeds):
            torch.manual_seed(seed)
            fp32 = build_model(cfg)
            t0 = time.perf_counter()
            losses["fp32"].append(train(fp32, train_data, cfg, cfg.steps, cfg.lr, seed, log=log, tag=f"seed {seed} fp32"))
            train_s["fp32"].append(time.perf_counter() - t0)
            trained = {}
            for v in chosen:
                # each fine-tune's seed from the variant's place in the full list, not in the
                # chosen subset: `--variants X` reproduces X's row of a full run exactly
                i = VARIANTS.index(v)
                t0 = time.perf_counter()
                if v.key == "fp32":
                    q, deployed = fp32, fp32
                elif v.source == "control":
                    q = deployed = copy.deepcopy(fp32)
                    torch.manual_seed(1000 * seed + i)
                    losses[v.key].append(train(q, train_data, cfg, cfg.ft_steps, cfg.ft_lr, 1000 * seed + i,
                                               teacher=fp32, log=log, tag=f"seed {seed} {v.key}"))
                    train_s[v.key].append(time.perf_counter() - t0)
                else:
                    if v.source == "reuse":
                        q = trained[v.reuse]
                    else:
                        q = quantize(fp32, v)
                        if v.act is not None:
                            calibrate_thresholds(q, torch.from_numpy(calib.astype(np.int64)))
                        if v.source == "finetune":
                            torch.manual_seed(1000 * seed + i)
                            losses[v.key].append(train(q, train_data, cfg, cfg.ft_steps, cfg.ft_lr, 1000 * seed + i,
                                                       teacher=fp32, log=log, tag=f"seed {seed} {v.key}"))
                    trained[v.key] = q
                    train_s[v.key].append(time.perf_counter() - t0)
                    deployed = convert(q, activations=v.activations)
                    checks[v.key] = dict(check_layers(deployed, q, check_chunks), seeds=seed + 1)
                a, b = evaluate(deployed, chunks)
                acc[v.key].append(a)
                bpb[v.key].append(b)
                if seed == 0:
                    models[v.key] = (q, deployed)
                log(f"  seed {seed} {v.key:14s} accuracy {a:.4f}  bits/byte {b:.3f}  "
                    f"({time.perf_counter() - t0:.1f} s)")
    finally:
        torch.set_num_threads(prev_threads)
    fp32_bytes = 4 * sum(p.numel() for p in models["fp32"][0].parameters())
    rows = []
    for v in chosen:
        a, b = np.array(acc[v.key]), np.array(bpb[v.key])
        mem = model_bytes(models[v.key][1])
        rows.append({
            "key": v.key, "item": v.item, "label": v.label, "mode": v.mode,
            "acc": a.tolist(), "acc_mean": float(a.mean()), "acc_std": float(a.std()),
            "acc_rel_fp32": float(a.mean() / np.mean(acc["fp32"])),
            "bpb": b.tolist(), "bpb_mean": float(b.mean()), "bpb_std": float(b.std()),
            "bpb_rel_fp32": float(b.mean() / np.mean(bpb["fp32"])),
            "perplexity": float(2 ** b.mean()),
            "bytes": mem, "fp32_bytes": int(fp32_bytes), "fp16_bytes": int(fp32_bytes // 2),
            "check": checks.get(v.key), "train_loss_first_last": losses[v.key],
            "train_s": train_s[v.key],
        })
    if timing:
        t0 = time.perf_counter()
        prompt = val[:cfg.prefill + 1]
        timed = {v.key: models[v.key][1] for v in chosen if v.key == "fp32" or v.scale is not None}
        lat = latency(timed, "fp32", cfg, prompt, cfg.time_budget)
        for r in rows:
            r.update(lat.get(r["key"], {}))
        log(f"  latency measured ({time.perf_counter() - t0:.0f} s)")
    meta = {"config": cfg.__dict__, "corpus": corpus, "isa": tk.isa.active(), "isas_checked": tk.isa.supported(),
            "torch": torch.__version__, "version": tk.__version__, "wall_s": time.perf_counter() - t_start,
            "params": int(fp32_bytes // 4), "eval_bytes": int(len(chunks) * cfg.context),
            "loadavg_start_end": [load_start, os.getloadavg()[0]], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    report = {"meta": meta, "rows": rows}
    return (report, models) if return_models else report


# ---- output ------------------------------------------------------------------------------

def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} µs"


def _ratio(a: float, b: float) -> str:
    return f"1/{b / a:.1f}" if a < b else f"{a / b:.2f}"


def markdown(report) -> str:
    m = report["meta"]
    c = m["config"]
    seeds = c["seeds"]
    timed = any("decode_s" in r for r in report["rows"])
    head = (f"| # | variant | inference | next-byte top-1 accuracy (mean ± std, {seeds} seed{'s' if seeds > 1 else ''}) "
            "| vs FP32 | bits/byte | vs FP32 | perplexity | 1-bit layers, bytes | whole model, bytes | vs FP32 | vs FP16 |")
    sep = "|---|---|---|---|---|---|---|---|---|---|---|---|"
    if timed:
        head += f" decode step: ours / PyTorch f32 | prefill {c['prefill']}: ours / PyTorch f32 |"
        sep += "---|---|"
    out = [head, sep]
    for r in report["rows"]:
        b = r["bytes"]
        fp32 = b["one_bit"] == 0
        line = (f"| {r['item']} | {r['label'].replace('|', chr(92) + '|')} | {r['mode']} | {100 * r['acc_mean']:.2f}% ± {100 * r['acc_std']:.2f} "
                f"| {100 * r['acc_rel_fp32']:.1f}% | {r['bpb_mean']:.3f} ± {r['bpb_std']:.3f} "
                f"| {r['bpb_rel_fp32']:.2f}x | {r['perplexity']:.2f} "
                f"| {'—' if fp32 else format(b['one_bit'], ',')} | {b['total']:,} "
                f"| {_ratio(b['total'], r['fp32_bytes'])} | {_ratio(b['total'], r['fp16_bytes'])} |")
        if timed:
            if "decode_s" in r:
                line += (f" {_ms(r['decode_s'])} / {_ms(r['decode_fp32_s'])} ({r['decode_fp32_s'] / r['decode_s']:.2f}x) "
                         f"| {_ms(r['prefill_s'])} / {_ms(r['prefill_fp32_s'])} "
                         f"({r['prefill_fp32_s'] / r['prefill_s']:.2f}x) |")
            else:
                line += " (reference) | (reference) |" if r["key"] == "fp32" else " — | — |"
        out.append(line)
    cp = m["corpus"]
    blin = 12 * c["width"] ** 2 * c["layers"]
    out += ["", (
        f"Byte-level decoder-only transformer: {c['layers']} layer{'s' if c['layers'] > 1 else ''}, width {c['width']}, {c['heads']} heads, "
        f"MLP {4 * c['width']} (GELU), RMSNorm, rotary positions, context {c['context']}, "
        f"{m['params']:,} parameters ({blin:,} in the block linears; float32 embedding, head and norms "
        f"{m['params'] - blin:,}). Data: the {cp['files']} standard-library `.py` files of Python {cp['python']} "
        f"(tests excluded), split by file: {cp['train_bytes']:,} training bytes ({cp['train_files']} files), "
        f"{cp['val_bytes']:,} validation bytes ({cp['val_files']} files; sha256 {cp['sha256'][:12]}…). "
        f"FP32: {c['steps']} steps of {c['batch']} × {c['context']} bytes, AdamW, lr {c['lr']:g}, cosine; every "
        f"fine-tune (4, 5, 7 and the FP32 control): {c['ft_steps']} steps from the FP32 model, lr {c['ft_lr']:g}, cross-entropy + KL to the "
        f"FP32 logits, straight-through estimators (weights: clipped at |w| ≤ 1; activations: the seed's; 7, "
        f"BitNet b1.58: identity through both roundings, ternary weights counted in the 1-bit layers' bytes at 2 bits). "
        f"Evaluated on {c['eval_windows']} validation windows ({m['eval_bytes']:,} predicted bytes, "
        f"contexts 1–{c['context']}); 1-bit variants on our kernels (`convert()` → `BinaryLinear`), every 1-bit "
        f"layer checked against `takane_kernels.reference` on {', '.join(m['isas_checked'])} (W1A1 bit-exact, "
        f"float/q8_0/int8_row within the documented bound) and against its training module. Bytes: 1-bit layers = packed "
        f"bits + float32 scales; whole model adds the float32 embedding, head, norms and the W1A1 thresholds; "
        f"FP16 = every parameter in 2 bytes." + (
            f" Latency: whole model, batch 1, {m['isa']}, one thread each (our kernels for the block linears, "
            "PyTorch for the rest; PyTorch float32 for the reference), medians, measured alternately; decode = "
            f"one token at position {c['prefill']} with a KV cache." if timed else "") +
        f" Wall time {m['wall_s']:.0f} s."
    )]
    return "\n".join(out)


def plot(report, path):
    plt = pyplot("lm")
    if plt is None:
        return None
    rows = report["rows"]
    timed = any("decode_s" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(14 if timed else 8, 5.5), squeeze=False)
    ax = axes[0, 0]
    markers = "os^vD<>Pp*Xh"
    for j, r in enumerate(rows):  # variants of equal size overlap: a legend, not annotations
        color = "#555555" if r["bytes"]["one_bit"] == 0 else "#c44e52" if r["key"].startswith("w1a1") else "#4c72b0"
        ax.errorbar(r["bytes"]["total"] / 1e6, 100 * r["acc_mean"], yerr=100 * r["acc_std"], fmt=markers[j % 12],
                    color=color, capsize=3, alpha=0.85, label=f"{r['item']} {r['key']}")
    ax.set_xscale("log")
    ax.legend(fontsize=7, loc="best")
    seeds = report["meta"]["config"]["seeds"]
    ax.set_xlabel("whole-model bytes (MB, log; embedding and head float32)")
    ax.set_ylabel(f"validation next-byte top-1 accuracy, % (mean ± std, {seeds} seed{'s' if seeds > 1 else ''})")
    ax.set_title("1-bit byte-level LM on the Python stdlib: accuracy vs memory", fontsize=10)
    if timed:
        ax2 = axes[0, 1]
        timed_rows = [r for r in rows if "decode_s" in r]
        ys = np.arange(len(timed_rows))[::-1]
        ax2.barh(ys + 0.2, [r["decode_fp32_s"] / r["decode_s"] for r in timed_rows], 0.4, label="decode step",
                 color="#dd8452")
        ax2.barh(ys - 0.2, [r["prefill_fp32_s"] / r["prefill_s"] for r in timed_rows], 0.4,
                 label=f"prefill {report['meta']['config']['prefill']}",
                 color="#55a868")
        ax2.axvline(1.0, color="k", lw=1, ls="--")
        ax2.set_yticks(ys, [f"{r['item']} {r['key']}" for r in timed_rows], fontsize=8)
        ax2.set_xlabel("PyTorch float32 time / ours (> 1: ours faster), one thread")
        ax2.set_title(f"whole-model latency, {report['meta']['isa']}", fontsize=10)
        ax2.legend(fontsize=8)
    return save_figure(plt, fig, path)


def main(argv=None) -> int:

    d = Config()
    p = argparse.ArgumentParser(prog="python -m takane_kernels lm",
                                description="Train a small byte-level language model on the Python standard "
                                            "library and measure the 1-bit table (accuracy, bits/byte, memory, "
                                            "latency on our kernels vs PyTorch float32).")
    for name, help_ in (("seeds", "training seeds"), ("steps", "FP32 training steps"),
                        ("ft_steps", "fine-tune steps (variants 4, 5, 7)"), ("layers", "transformer blocks"),
                        ("width", "model width"), ("heads", "attention heads"), ("context", "context bytes"),
                        ("batch", "windows per training step"), ("eval_windows", "validation windows"),
                        ("check_windows", "windows whose 1-bit layers are checked on every ISA"),
                        ("threads", "torch threads for training and evaluation"),
                        ("prefill", "prefill length for the latency (the decode step follows it)")):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                       help=f"{help_} (default {getattr(d, name)})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"FP32 learning rate (default {d.lr:g})")
    p.add_argument("--ft-lr", type=float, default=d.ft_lr, help=f"fine-tune learning rate (default {d.ft_lr:g})")
    p.add_argument("--time-budget", type=float, default=d.time_budget,
                   help=f"seconds per latency measurement pair (default {d.time_budget:g})")
    p.add_argument("--no-timing", action="store_true", help="skip the latency columns")
    p.add_argument("--variants", nargs="+", choices=[v.key for v in VARIANTS], metavar="KEY",
                   help="only these variants (fp32 and the variants they reuse always run; default all: "
                        + ", ".join(v.key for v in VARIANTS) + ")")
    p.add_argument("--out", default=os.path.join("build", "lm"),
                   help="directory for table.md, results.json and lm.png (default build/lm)")
    args = p.parse_args(argv)
    cfg = Config(**{k: getattr(args, k) for k in d.__dict__})
    for k in ("seeds", "steps", "layers", "width", "heads", "context", "batch", "eval_windows", "threads", "prefill"):
        if getattr(cfg, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    if cfg.ft_steps < 0 or cfg.check_windows < 1:
        p.error("--ft-steps must be >= 0 and --check-windows >= 1")
    if cfg.width % cfg.heads or (cfg.width // cfg.heads) % 2:
        p.error("--width must split into --heads heads of even size (rotary positions)")
    try:
        import torch  # noqa: F401
    except ImportError:
        print('python -m takane_kernels lm needs PyTorch: pip install "takane-kernels[lm]" '
              "(CPU build first: see docs/guide/pytorch.md)", file=sys.stderr)
        return 2
    print(f"takane_kernels {tk.__version__} lm: {cfg.layers} layers x {cfg.width}, {cfg.seeds} seed(s), "
          f"{cfg.steps} + {cfg.ft_steps} steps, ISA {tk.isa.active()} (checked: {', '.join(tk.isa.supported())})")
    report = run(cfg, variants=args.variants, timing=not args.no_timing)
    write_report(args.out, markdown(report), report, plot, "lm.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
