"""``convert``: a trained quantization-aware model (:mod:`.qat`) as one running on the
packed kernels (:mod:`.modules`), with the same eval-mode outputs — exactly where the
arithmetic is integer, within :func:`linear_error_bound` otherwise.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

import takane_kernels as tk
from takane_kernels import reference as ref

from .modules import BinaryConv2d, BinaryLinear
from .qat import Int8RowQuantizer, QuantConv2d, QuantLinear, SignQuantizer

__all__ = ["convert", "linear_error_bound"]

ACTIVATIONS = ("float32", "q8_0")


def _np32(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to("cpu", torch.float32).numpy().copy()


def _flip_columns(bits: np.ndarray, flip_in) -> np.ndarray:
    """bits with the weight bits of the inputs marked in ``flip_in`` (bool (K,)) inverted
    in every row: the layer then computes the same dot products on those inputs negated."""
    if flip_in is None or not flip_in.any():
        return bits
    mask = tk.pack_bits(flip_in[None, :].astype(np.float32), 0.5)[0]
    return bits ^ mask


def _convert_ternary(q: QuantLinear, activations: str, threads) -> nn.Module:
    """A ``QuantLinear(scale="ternary")`` as a ``BinaryLinear`` on ``TernaryWeights``: the
    very ternary values and per-tensor scale its forward uses (``ternary_weight()``, float32,
    so the planes and ``tensor_scale`` are those of the training model, not a float64
    re-derivation), mode ``"int8_row"`` with an :class:`Int8RowQuantizer` input (whatever
    ``activations`` says: the model's own quantizer), else ``"w1a_float"`` / ``"w1a8"``."""
    with torch.no_grad():
        t, gamma = q.ternary_weight()
    t = t.to("cpu", torch.float32).numpy()
    gamma = float(gamma.to(torch.float32))
    if np.isnan(t).any() or not np.isfinite(gamma):
        raise ValueError("convert: a ternary QuantLinear's weights are not finite (NaN or inf)")
    # canonical planes: sign bit iff t = +1, nonzero bit iff t != 0 (so sign implies nonzero)
    weights = tk.TernaryWeights(tk.pack_bits(t, 0.5), tk.pack_bits(np.abs(t), 0.5), q.in_features,
                                tensor_scale=gamma)
    if isinstance(q.input_quantizer, Int8RowQuantizer):
        mode = "int8_row"
    else:
        mode = "w1a_float" if activations == "float32" else "w1a8"
    return BinaryLinear(weights, mode, bias=q.bias, threads=threads)


def _convert_linear(q: QuantLinear, activations: str, threads, threshold=None, flip_in=None) -> nn.Module:
    if q.scale == "ternary":
        return _convert_ternary(q, activations, threads)
    w = q.weight.detach().to("cpu", torch.float32).numpy()
    if np.isnan(w).any():
        raise ValueError("convert: a QuantLinear's weights contain NaN (NaN has no sign)")
    bits = _flip_columns(tk.pack_bits(w), flip_in)  # bit = w >= 0, the forward's binarize(W, 0)
    with torch.no_grad():
        scale = _np32(q.row_scale())
        extra = {}
        if q.scale == "onebit":
            extra["in_scale"] = _np32(q.input_scale)
        if q.scale == "group":
            extra = {"group_scale": _np32(q.group_scales()), "group_size": q.group_size}
    weights = tk.PackedWeights(bits, q.in_features, scale=scale, **extra)
    iq = q.input_quantizer
    if iq is not None and not isinstance(iq, SignQuantizer):
        raise ValueError(f"convert: a QuantLinear's input_quantizer must be a SignQuantizer or None, "
                         f"got {type(iq).__name__}")
    if iq is not None and iq.channel_dim != -1:
        raise ValueError("convert: a QuantLinear's SignQuantizer must have channel_dim=-1")
    if iq is not None and q.scale in (None, "mean_abs"):
        # W1A1: the kernel binarizes at the same float32 thresholds (x >= t) and computes
        # (float32(dot) * scale) + bias, the forward's ops exactly.
        if threshold is None:
            threshold = iq.current_threshold().detach().to("cpu", torch.float32).numpy().copy()
        return BinaryLinear(weights, "w1a1", bias=q.bias, threshold=threshold, threads=threads)
    mode = "w1a_float" if activations == "float32" else "w1a8"
    layer = BinaryLinear(weights, mode, bias=q.bias, threads=threads)
    if iq is None:
        return layer
    # ±1 inputs with per-input (OneBit) or group scales: no W1A1 integer epilogue applies
    # them, so the quantizer (eval mode: x >= t, exact) feeds the float kernel.
    sign = copy.deepcopy(iq).eval()
    return nn.Sequential(sign, layer)


def _convert_conv(q: QuantConv2d, activations: str, threads, threshold=None, bits=None, bias=None,
                  scale="row") -> nn.Module:
    """A W1A1 ``QuantConv2d`` (a ``SignQuantizer`` with ``channel_dim=1``) as a ``BinaryConv2d``.

    The training forward's eval path is: binarize x at the quantizer's float32 thresholds
    (x >= t), pad the ±1 image with ``pad_value``, a float32 convolution of ±1 values (every
    partial sum an integer of magnitude <= KH*KW*Cin/groups < 2**24: exact), then ``y * s``
    and ``+ bias`` as two float32 ops. ``binary_conv2d`` computes the same integer dot and
    ``((float32(dot) * scale) + bias)``, no FMA, with ``s`` taken from the very tensor the
    forward uses (``row_scale()``), so the outputs are bit-identical. ``threshold`` overrides
    the quantizer's (0 when the input arrives from a BatchNorm fold); ``bits``, ``bias`` and
    ``scale=None`` are the fold's replacements.
    """
    iq = q.input_quantizer
    if iq is None:
        raise NotImplementedError(
            "convert: a weight-only QuantConv2d (no input_quantizer) needs a float-activation "
            "convolution kernel, which takane_kernels does not have (binary_conv2d binarizes its "
            "input); give it a SignQuantizer(channels, channel_dim=1) input quantizer (W1A1)")
    if not isinstance(iq, SignQuantizer) or iq.channel_dim != 1:
        raise ValueError(f"convert: a QuantConv2d's input_quantizer must be a SignQuantizer with "
                         f"channel_dim=1 or None, got {type(iq).__name__}")
    # (activations= is about float inputs: a W1A1 layer binarizes them, as for QuantLinear)
    w = q.weight.detach().to("cpu", torch.float32)
    if torch.isnan(w).any():
        raise ValueError("convert: a QuantConv2d's weights contain NaN (NaN has no sign)")
    # bit = w >= 0, the forward's binarize(W, 0); OIHW -> OHWI, the kernels' layout
    if bits is None:
        bits = tk.pack_conv_weights(w.permute(0, 2, 3, 1).numpy(), scale=None).bits
        bias = q.bias
    with torch.no_grad():
        if scale == "row":
            scale = _np32(q.row_scale())
        if threshold is None:
            threshold = iq.current_threshold().detach().to("cpu", torch.float32).numpy().copy()
    weights = tk.PackedConvWeights(bits, q.in_channels // q.groups, scale=scale)
    return BinaryConv2d(weights, stride=q.stride, padding=q.padding, dilation=q.dilation, groups=q.groups,
                            pad_value=q.pad_value, bias=bias, threshold=threshold, threads=threads)


def _is_w1a1(q) -> bool:
    """A QuantLinear that converts to a plain W1A1 BinaryLinear."""
    return (isinstance(q, QuantLinear) and isinstance(q.input_quantizer, SignQuantizer)
            and q.input_quantizer.channel_dim == -1 and q.scale in (None, "mean_abs"))


def _is_w1a1_conv(q) -> bool:
    """A QuantConv2d that converts to a W1A1 BinaryConv2d."""
    return (isinstance(q, QuantConv2d) and isinstance(q.input_quantizer, SignQuantizer)
            and q.input_quantizer.channel_dim == 1)


_FOLD_MAX_K = 2**24 - 2  # dot - T stays an exact float32 integer: |dot - T| <= 2K + 2 < 2**25, even


def _fold_batchnorm(qa: QuantLinear, bn: nn.BatchNorm1d, qb: QuantLinear, threads, threshold=None,
                    flip_in=None) -> nn.Module | None:
    """``qa`` (W1A1) → ``bn`` → ``qb``'s SignQuantizer, as one W1A1 layer whose output is
    ``dot' - T`` (an exact float32 integer) and which ``qb`` then binarizes at 0.

    The dot product of ±1 vectors of length K only takes the K + 1 values
    ``-K, -K + 2, ..., K``. For each, the training model's own eval-mode modules (``qa``'s
    epilogue, ``bn``, ``qb``'s quantizer — every op elementwise per channel) give the bit the
    next layer sees; per channel that bit is monotone in the dot (every float op here is
    monotone), so it is ``dot >= T`` (or, for a negative slope, ``dot <= T``: the row's
    weight bits are inverted, ``-dot >= -T``). The folded layer therefore feeds ``qb`` the
    very bits the training model computes, ties and float rounding included, with scale and
    BatchNorm gone. ``threshold`` overrides ``qa``'s input threshold (0 when ``qa`` itself
    follows a fold; with ``flip_in``, the inputs whose bits a BatchNorm fold before ``qa``
    inverted: see :func:`_fold_batchnorm_into_input`). Returns None (no fold) when an
    assumption fails: BatchNorm without running statistics, K too large, non-finite values
    or a non-monotone bit pattern.
    """
    if not (isinstance(bn, nn.BatchNorm1d) and bn.track_running_stats and bn.running_mean is not None
            and bn.num_features == qa.out_features and _is_w1a1(qb) and qb.in_features == qa.out_features
            and not bn.training and not qa.training and not qb.training):
        return None
    k, n = qa.in_features, qa.out_features

    def seen(d):  # (r,) dot values -> (r, N): the bit qb sees
        return qb.input_quantizer(bn(qa._epilogue(d[:, None].expand(-1, n).contiguous())))

    found = _fold_thresholds(k, n, 2, seen)
    if found is None:
        return None
    flip, bias = found
    w = qa.weight.detach().to("cpu", torch.float32).numpy()
    if np.isnan(w).any():
        return None
    bits = _flip_columns(tk.pack_bits(w), flip_in)
    f = flip.numpy()
    if f.any():  # invert those rows' bits (not the sign of w: -0.0 would still pack as +1)
        ones = tk.pack_bits(np.ones((1, k), np.float32))[0]
        bits[f] = bits[f] ^ ones
    if threshold is None:
        threshold = qa.input_quantizer.current_threshold().detach().to("cpu", torch.float32).numpy().copy()
    return BinaryLinear(tk.PackedWeights(bits, k), "w1a1", bias=bias, threshold=threshold, threads=threads)


def _f32_keys(f: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the order of the values (-0.0 just below +0.0; no NaN)."""
    i = np.ascontiguousarray(f, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF) - 1, i)


def _keys_f32(keys: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_f32_keys`."""
    bits = np.where(keys < 0, (-(keys + 1)) | 0x80000000, keys).astype(np.uint32)
    return bits.view(np.float32)


def _fold_batchnorm_into_input(bn: nn.BatchNorm1d, qb: QuantLinear):
    """``bn`` → ``qb``'s SignQuantizer as float32 thresholds on ``bn``'s *input*: returns
    ``(T, flip)`` — per input channel, the threshold (float32 (K,)) and whether the bit
    falls with the input (then ``qb``'s weight bits of that input are inverted) — or None.

    ``bn`` in eval mode is one affine map per channel and the quantizer one comparison, each
    float op monotone, so the bit ``qb`` sees is monotone in ``bn``'s input y: ``y >= T`` or,
    for a negative slope, ``y < T`` (= ``-(±1 of y >= T)``: the inverted weight bits). T is
    found by bisection over the float32 values in order, running the training model's own
    eval-mode modules (``bn``, the quantizer) on them, so ties and rounding are theirs; it is
    then checked on both sides and at random values in batches of several sizes, and the
    fold is declined (None) if anything disagrees, a channel's bit does not change over
    [-inf, +inf] (e.g. a zero BatchNorm weight) or the modules are not in eval mode. NaN
    stays an error: the W1A1 kernel refuses it, as the quantizer's NaN would be refused.
    """
    if not (isinstance(bn, nn.BatchNorm1d) and bn.track_running_stats and bn.running_mean is not None
            and _is_w1a1(qb) and qb.in_features == bn.num_features and not bn.training and not qb.training
            and not qb.input_quantizer.training):
        return None
    c = bn.num_features

    def bits(y: np.ndarray) -> np.ndarray:  # (r, C) float32 -> (r, C) bool: the bit qb sees
        with torch.no_grad():
            return (qb.input_quantizer(bn(torch.from_numpy(np.ascontiguousarray(y, np.float32)))) > 0).numpy()

    inf = np.full((1, c), np.inf, np.float32)
    hi_bit, lo_bit = bits(inf)[0], bits(-inf)[0]
    flip = lo_bit & ~hi_bit
    if not (flip | (hi_bit & ~lo_bit)).all():
        return None  # a channel's bit is constant (or NaN): keep the BatchNorm

    def rising(y):  # 1 from T upwards, in every channel
        return bits(y) ^ flip

    lo = _f32_keys(-inf[0])  # rising(lo) = 0
    hi = _f32_keys(inf[0])  # rising(hi) = 1
    while (hi - lo > 1).any():
        mid = (lo + hi) // 2
        up = rising(_keys_f32(mid)[None, :])[0]
        hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
    t = _keys_f32(hi)
    below = _keys_f32(hi - 1)
    rng = np.random.default_rng(0)
    scale = np.where(np.isfinite(t) & (t != 0), np.abs(t), 1.0).astype(np.float32)
    for rows in (1, 2, 33):
        if not (rising(np.repeat(t[None], rows, 0)).all() and not rising(np.repeat(below[None], rows, 0)).any()):
            return None
        with np.errstate(over="ignore"):
            y = (rng.standard_normal((rows * 8, c)) * scale * 2).astype(np.float32)
        if not np.array_equal(rising(y), y >= t):
            return None
    return t, flip


def _fold_thresholds(k: int, n: int, step: int, seen):
    """The fold's per-channel integer threshold, shared by the linear and the conv fold.

    ``seen(d)`` runs the training model's eval-mode ops on the float32 dot values ``d`` (r,)
    and returns the next quantizer's output for them as (r, N). The
    candidate dots are ``-k, -k + step, ..., k`` (step 2: every dot of ±1 vectors of length
    k; step 1 when zero padding makes fewer taps, of either parity, contribute). Returns
    ``(flip, bias)`` — per channel, whether the row's weight bits are inverted (bit falls
    with the dot) and the float32 bias making the output ``dot - T`` (or ``-dot + T``), an
    exact integer the next layer binarizes at 0 — or None when the premises fail.
    """
    if k > _FOLD_MAX_K or n == 0:
        return None
    d = torch.arange(-k, k + 1, step, dtype=torch.float32)  # the possible dot products
    count = d.numel()
    rows = max(1, 2**22 // n)
    bits_seen = []
    with torch.no_grad():
        for i in range(0, count, rows):
            z = seen(d[i:i + rows])
            if torch.isnan(z).any():
                return None
            bits_seen.append(z > 0)
    v = torch.cat(bits_seen)  # (count, N): the next layer's bit for each dot value
    rising = (v[1:] >= v[:-1]).all(dim=0)
    falling = (v[1:] <= v[:-1]).all(dim=0)
    if not bool((rising | falling).all()):
        return None
    idx = torch.arange(count)
    first = torch.where(v, idx[:, None], count).min(dim=0).values  # count: never
    last = torch.where(v, idx[:, None], -1).max(dim=0).values
    flip = ~rising  # strictly falling somewhere: bit = dot <= d[last]
    t_rise = (-k + step * first).to(torch.float32)  # bit = dot >= t_rise (k + step: never)
    t_fall = (-k + step * last).to(torch.float32)  # (-k - step: never)
    return flip, torch.where(flip, t_fall, -t_rise)  # output dot - t_rise, or -dot + t_fall


def _fold_batchnorm_conv(qa: QuantConv2d, bn: nn.BatchNorm2d, qb: QuantConv2d, threads,
                         threshold=None) -> nn.Module | None:
    """The conv twin of :func:`_fold_batchnorm`: ``qa`` (W1A1) → ``BatchNorm2d`` → ``qb``
    (W1A1) as a ``BinaryConv2d`` outputting ``dot - T`` per channel, binarized at 0 by ``qb``.

    ``qb`` pads its *binarized* input (with its own ``pad_value``), so its padding is
    unaffected. With zero padding, border outputs sum fewer taps, so every integer in
    ``[-K, K]`` (K = KH·KW·Cin/groups) is a candidate dot, not only those of K's parity.
    PyTorch's CPU BatchNorm rounds differently by layout (one ``x * a + b`` loop for NCHW
    images, another for 1x1 images, another for channels_last; an exact tie came out as
    -3e-8 in the NCHW loop and 0 in the 1x1 one here), so the eval-mode ops run on the dot
    values in each of those three layouts, and the fold is declined (the BatchNorm kept)
    unless all three give the same bits — then the folded bits are those of the training
    forward whatever the input's spatial size and memory layout. (Within one layout the rounding does not depend
    on the position — PyTorch's NCHW loop applies one vector formula to main part and tail
    alike; a test checks it on a shifted crop.)
    """
    if not (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_mean is not None
            and bn.num_features == qa.out_channels and _is_w1a1_conv(qb) and qb.in_channels == qa.out_channels
            and not bn.training and not qa.training and not qb.training):
        return None
    kh, kw = qa.kernel_size
    k, n = kh * kw * (qa.in_channels // qa.groups), qa.out_channels
    step = 1 if qa.pad_value == 0 and any(qa.explicit_padding()) else 2

    def seen(d):
        y = d.view(1, 1, -1, 1).expand(1, n, -1, 1).contiguous()  # (1, C, D, 1): NCHW, D-pixel image
        z = qb.input_quantizer(bn(qa._epilogue(y)))[0, :, :, 0].T
        y1 = d.view(-1, 1, 1, 1).expand(-1, n, 1, 1).contiguous()  # (D, C, 1, 1): 1x1 images
        z1 = qb.input_quantizer(bn(qa._epilogue(y1)))[:, :, 0, 0]
        ycl = y.expand(1, n, -1, 2).contiguous(memory_format=torch.channels_last)
        zcl = qb.input_quantizer(bn(qa._epilogue(ycl)))[0, :, :, 0].T
        if not (torch.equal(z > 0, z1 > 0) and torch.equal(z > 0, zcl > 0)):
            return torch.full_like(z, float("nan"))  # the layouts disagree: no fold
        return z

    found = _fold_thresholds(k, n, step, seen)
    if found is None:
        return None
    flip, bias = found
    w = qa.weight.detach().to("cpu", torch.float32)
    if torch.isnan(w).any():
        return None
    w = w.permute(0, 2, 3, 1).numpy()
    bits = tk.pack_conv_weights(w, scale=None).bits.copy()  # (the packed weights are read-only)
    f = flip.numpy()
    if f.any():  # invert those output channels' bits: dot' = -dot (a ±1 pad tap flips too, 0 stays 0)
        ones = tk.pack_conv_weights(np.ones((1,) + w.shape[1:], np.float32), scale=None).bits[0]
        bits[f] = bits[f] ^ ones
    return _convert_conv(qa, "float32", threads, threshold=threshold, bits=bits, bias=bias, scale=None)


def _convert(module: nn.Module, activations: str, threads, fold: bool) -> nn.Module:
    if isinstance(module, QuantLinear):
        return _convert_linear(module, activations, threads)
    if isinstance(module, QuantConv2d):
        return _convert_conv(module, activations, threads)
    names = list(module._modules)
    # layers whose input now arrives changed by a fold: name -> (threshold, inverted inputs)
    # (dot - T from a W1A1 fold: binarize at 0; a BatchNorm folded into the thresholds)
    overrides: dict = {}
    for i, name in enumerate(names):
        child = module._modules[name]
        if child is None:
            continue
        threshold, flip_in = overrides.get(name, (None, None))
        seq = fold and isinstance(module, nn.Sequential)
        if seq and i + 2 < len(names) and (_is_w1a1(child) or _is_w1a1_conv(child)):
            bn, nxt = module._modules[names[i + 1]], module._modules[names[i + 2]]
            if _is_w1a1(child):
                folded = _fold_batchnorm(child, bn, nxt, threads, threshold, flip_in)
            else:
                folded = _fold_batchnorm_conv(child, bn, nxt, threads, threshold)
            if folded is not None:
                module._modules[name] = folded
                module._modules[names[i + 1]] = nn.Identity()
                overrides[names[i + 2]] = (0.0, None)
                continue
        if seq and i + 1 < len(names) and isinstance(child, nn.BatchNorm1d) and names[i + 1] not in overrides:
            found = _fold_batchnorm_into_input(child, module._modules[names[i + 1]])
            if found is not None:
                module._modules[name] = nn.Identity()
                overrides[names[i + 1]] = found
                continue
        if threshold is not None and isinstance(child, QuantConv2d):
            new = _convert_conv(child, activations, threads, threshold=threshold)
        elif threshold is not None:
            new = _convert_linear(child, activations, threads, threshold=threshold, flip_in=flip_in)
        else:
            new = _convert(child, activations, threads, fold)
        if new is not child:
            module._modules[name] = new
    return module


def convert(model: nn.Module, *, activations: str = "float32", fold_batchnorm: bool = True,
            threads: int | None = None) -> nn.Module:
    """A copy of ``model`` for inference on the kernels, in eval mode (``model`` is unchanged).

    Every :class:`QuantLinear` becomes a :class:`~takane_kernels.torch.BinaryLinear`:

    - with a :class:`SignQuantizer` input (W1A1) and ``scale`` ``None`` / ``"mean_abs"``:
      mode ``"w1a1"`` at the quantizer's current float32 thresholds — outputs bit-identical
      to the training model's eval outputs;
    - without one (weight-only): mode ``"w1a_float"`` (``activations="q8_0"``: ``"w1a8"``),
      same scales (``mean_abs`` and ``group`` computed from the latent weights as the forward
      does, OneBit's trained vectors) — within :func:`linear_error_bound` of the training
      model's eval outputs for ``"float32"``;
    - a SignQuantizer input with ``"onebit"`` / ``"group"`` scales: the quantizer (eval mode,
      exact) followed by a ``"w1a_float"`` layer (the W1A1 kernel has no per-input or group
      scales), within the same bound;
    - ``scale="ternary"`` (BitNet b1.58): a layer on :class:`~takane_kernels.TernaryWeights`
      holding the forward's own ternary values and mean |W| (``tensor_scale``); with an
      :class:`Int8RowQuantizer` input mode ``"int8_row"`` (W1.58A8: the kernels quantize
      each row exactly as the quantizer does, so the integer dot products are equal),
      without one ``"w1a_float"`` (or ``"w1a8"`` for ``activations="q8_0"``) — within
      :func:`linear_error_bound` of the training model's eval outputs (``"q8_0"`` aside).

    In an ``nn.Sequential``, a W1A1 ``QuantLinear`` → ``BatchNorm1d`` → W1A1 ``QuantLinear``
    run is folded (``fold_batchnorm=True``): the BatchNorm, the first layer's scale and bias and
    the second layer's threshold become one integer threshold per channel (the first layer
    outputs ``dot - T``, the BatchNorm becomes ``nn.Identity``, the second binarizes at 0),
    computed from the training model's own eval-mode ops for every possible dot product, so
    the bits the second layer sees — and the model's outputs — are unchanged, bit for bit.
    Any other ``BatchNorm1d`` directly followed by a W1A1 ``QuantLinear`` (e.g. after a
    weight-only layer) folds into that layer's float32 thresholds on the BatchNorm's input
    (found by bisection over the float32 values with the model's own eval-mode BatchNorm and
    quantizer; a negative BatchNorm weight inverts that input's weight bits), so the layer
    sees the very bits the training model computes from the same input; it is declined (the
    BatchNorm kept) where a channel's bit cannot change or a check disagrees.
    Everything else (other BatchNorms, activations, a standalone SignQuantizer, ...) is kept
    as is, so its eval output is unchanged; a BatchNorm after a W1A1 layer sees bit-identical
    inputs.
    Every :class:`QuantConv2d` with a :class:`SignQuantizer` input (``channel_dim=1``, W1A1)
    becomes a :class:`~takane_kernels.torch.BinaryConv2d` with the quantizer's current float32
    thresholds, the same ``pad_value``, stride, padding, dilation and groups, the forward's
    own float32 mean |W| scale (or none) and bias — outputs bit-identical to the training
    model's eval outputs on every ISA (NCHW shape, channels_last memory). A W1A1
    ``QuantConv2d`` → ``BatchNorm2d`` → W1A1 ``QuantConv2d`` run is folded like the linear one
    (with zero padding every integer dot in ``[-K, K]`` is a candidate; the fold is declined,
    the BatchNorm kept, if PyTorch's layout-specific BatchNorm loops would give different
    bits). A weight-only ``QuantConv2d`` (no input quantizer) raises ``NotImplementedError``:
    the library has no convolution kernel for float activations.

    The guarantees are for float32 models (PyTorch's default; the kernels compute in float32):
    a model trained in another dtype converts with its parameters rounded to float32.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert needs an nn.Module, got {type(model).__name__}")
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    model = copy.deepcopy(model).cpu().eval()  # folding evaluates the eval-mode ops
    return _convert(model, activations, threads, bool(fold_batchnorm)).eval()


def linear_error_bound(x, layer: nn.Module) -> np.ndarray:
    """|converted − training| bound (float64, (..., N)) for a weight-only converted linear
    layer's output on input ``x``: twice ``reference.binary_weight_matmul_error_bound`` (each
    of the two float32 evaluations — the kernel's and PyTorch's at its default float32 matmul
    precision — is within that bound of the exact value). For a ternary ``"int8_row"`` layer
    the bound is that of ``activations="int8_row"``: both sides quantize ``x`` to the same
    integers, the training forward's dot product is exact (K <= 2**17) and its epilogue
    ``fl(fl(D * fl(d * gamma)) + bias)`` is within γ(3)·|gamma·d·D| + u·|bias| of the exact
    value, inside that bound."""
    if isinstance(layer, nn.Sequential) and len(layer) == 2:
        x = layer[0](torch.as_tensor(x))
        layer = layer[1]
    if not isinstance(layer, BinaryLinear):
        raise TypeError(f"linear_error_bound needs a converted BinaryLinear, got {type(layer).__name__}")
    xn = np.asarray(torch.as_tensor(x).detach().cpu().numpy(), dtype=np.float32)
    bias = None if layer.bias is None else layer.bias.numpy()
    acts = "int8_row" if layer.mode == "int8_row" else "float32"
    return 2.0 * ref.binary_weight_matmul_error_bound(xn, layer.weights, bias=bias, activations=acts)
