"""Quantization-aware training in PyTorch: SignQuantizer, QuantLinear, QuantConv2d.

Re-exported by :mod:`takane_kernels.torch` (docs/guide/pytorch.md); :mod:`.convert` turns
a trained model into the inference modules of :mod:`.modules`. Training-time modules keep latent
float weights and binarize them (and, with a :class:`SignQuantizer`, their inputs) in the
forward pass, with a straight-through estimator (STE) for the backward pass; ``convert``
turns a trained model into one that runs on the packed kernels and gives the same eval-mode
outputs (exactly where the arithmetic is integer, within a stated float bound otherwise).

Bit convention (docs/guide/bit-format.md): a value ``x`` with threshold ``t`` becomes ``+1`` iff ``x >= t``.
The seed's ``TakaneSignQuantizer`` returns ``torch.sign(x - t)``, which is ``0`` at exact
equality ``x == t``; ours returns ``+1`` there (as the kernels do). Away from ties the two are
identical. NaN has no sign: the training modules pass NaN through (as ``torch.sign`` does, so
a NaN shows up in the loss instead of silently becoming ``-1``), ``update_ema`` refuses a
batch whose statistics are not finite (it would poison the running statistics for good), and
the converted kernels raise ``ValueError`` on NaN.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import takane_kernels as tk
from .. import _capi as C

__all__ = ["SignQuantizer", "Int8RowQuantizer", "QuantLinear", "QuantConv2d", "binarize", "ternarize"]

STE_VARIANTS = ("seed", "clip", "identity")
THRESHOLD_KINDS = ("adaptive", "fixed", "learned")
LINEAR_SCALES = (None, "mean_abs", "onebit", "group", "ternary")
INT8_ROW_FLOOR = 1e-5  # the kernels' floor on a row's max |x| (docs/guide/ternary.md, int8_row)
CONV_SCALES = (None, "mean_abs")


_finite_real = C.real_scalar
_positive_int = C.positive_int


def _check_ste(ste: object, name: str = "ste") -> str:
    if ste not in STE_VARIANTS:
        raise ValueError(f"{name} must be one of {STE_VARIANTS}, got {ste!r}")
    return ste


class _BinarizeSTE(torch.autograd.Function):
    """Forward: ``+1`` where ``x >= t``, ``-1`` elsewhere (NaN stays NaN), in ``x``'s dtype.

    Backward, by ``ste``: ``"seed"`` passes the gradient but zeroes it where ``|grad| > 1``
    (the seed's ``TakaneSTE``: it clips on the gradient's magnitude, not the input's);
    ``"clip"`` zeroes it where ``|x - t| > 1`` (the usual STE, BinaryConnect / XNOR-Net);
    ``"identity"`` passes it unchanged. ``t`` (broadcastable to ``x``) gets minus the
    gradient of ``x`` summed to its shape, so a learned threshold trains (ReActNet's RSign).
    """

    @staticmethod
    def forward(ctx, x, t, ste):
        ctx.ste = ste
        ctx.t_shape = t.shape
        ctx.t_dtype = t.dtype
        if ste == "clip":
            ctx.save_for_backward(x, t)
        # 2·[x >= t] − 1 in place: about half the time of torch.where(x >= t, 1, -1)
        out = (x >= t).to(x.dtype).mul_(2).sub_(1)
        return out.masked_fill_(torch.isnan(x), float("nan"))

    @staticmethod
    def backward(ctx, g):
        if ctx.ste == "seed":
            gx = torch.where(g.abs() > 1, torch.zeros_like(g), g)
        elif ctx.ste == "clip":
            x, t = ctx.saved_tensors
            gx = torch.where((x - t).abs() > 1, torch.zeros_like(g), g)
        else:
            gx = g
        gt = None
        if ctx.needs_input_grad[1]:
            gt = (-gx).sum_to_size(ctx.t_shape).to(ctx.t_dtype)
        return gx, gt, None


def binarize(x: torch.Tensor, t, ste: str = "clip") -> torch.Tensor:
    """``+1`` where ``x >= t`` else ``-1`` (NaN stays NaN), with the ``ste`` backward."""
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(float(t), dtype=x.dtype, device=x.device)
    return _BinarizeSTE.apply(x, t, _check_ste(ste))


class _RoundClipSTE(torch.autograd.Function):
    """Forward: ``clamp(round(v), lo, hi)`` (round half to even, as the kernels and
    ``tk.pack_ternary``). Backward, by ``ste``: ``"identity"`` passes the gradient (BitNet
    b1.58's ``x + (quant(x) - x).detach()``); ``"clip"`` zeroes it where ``v`` lies outside
    ``[lo - 1/2, hi + 1/2]`` (beyond the last rounding bucket); ``"seed"`` zeroes it where
    ``|grad| > 1`` (as :class:`_BinarizeSTE`)."""

    @staticmethod
    def forward(ctx, v, lo, hi, ste):
        ctx.ste, ctx.lo, ctx.hi = ste, lo, hi
        if ste == "clip":
            ctx.save_for_backward(v)
        return torch.round(v).clamp_(lo, hi)

    @staticmethod
    def backward(ctx, g):
        if ctx.ste == "seed":
            return torch.where(g.abs() > 1, torch.zeros_like(g), g), None, None, None
        if ctx.ste == "clip":
            (v,) = ctx.saved_tensors
            out = (v < ctx.lo - 0.5) | (v > ctx.hi + 0.5)
            return torch.where(out, torch.zeros_like(g), g), None, None, None
        return g, None, None, None


def ternarize(w: torch.Tensor, eps: float = 1e-5, ste: str = "identity") -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58's absmean weight quantizer: ``(t, gamma)`` with ``gamma = mean |w|``
    (over the whole tensor, detached) and ``t = RoundClip(w / (gamma + eps), -1, 1)`` in
    ``{-1, 0, +1}``, each step one op in ``w``'s dtype (float32: ``fl(gamma + eps)``, then the
    correctly rounded quotient, then round half to even). The effective weight is
    ``t * gamma``. Backward: the ``ste`` of the rounding on ``w / (gamma + eps)`` (default
    ``"identity"``, so ``d(t * gamma)/dw = gamma / (gamma + eps)`` ≈ 1, BitNet's STE; no
    gradient through ``gamma``). ``eps`` > 0 (so the quotient is always defined)."""
    gamma = w.detach().abs().mean() if w.numel() else w.new_zeros(())
    t = _RoundClipSTE.apply(w / (gamma + eps), -1.0, 1.0, ste)
    return t, gamma


class Int8RowQuantizer(nn.Module):
    """BitNet b1.58's per-token absmax int8 activation quantizer, with an STE backward.

    For each row (the last dimension, "per token") of a float32 input ``x``, in float32
    exactly as the ``int8_row`` kernels and ``takane_kernels.reference.quantize_int8_row``:
    ``a = max(max |x|, 1e-5)``, ``q = RoundClip(x * fl(127 / a), -128, 127)`` (product
    rounded to float32, round half to even) and ``d = fl(a / 127)``: ``quantize``
    returns ``(q, d)`` (``q`` integer-valued float32 (..., K), ``d`` (...)). ``forward``
    returns the fake-quantized ``q * d[..., None]``; a ternary :class:`QuantLinear` uses
    ``q`` and ``d`` separately (its integer dot product is then exact). Backward: the
    identity through the rounding (``dq/dx = 127 / a``, ``a`` treated as a constant, BitNet's
    STE). A non-float32 input is computed in float32. NaN or ±inf in a row propagates NaN
    into that row (the converted kernel raises ``ValueError`` instead). No parameters or
    buffers: the state dict is empty.
    """

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
            what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"Int8RowQuantizer: input must be a floating-point tensor (..., K), got {what}")
        x = x.to(torch.float32)
        if x.shape[-1]:
            a = x.detach().abs().amax(dim=-1).clamp_min(INT8_ROW_FLOOR)
        else:
            a = x.new_full(x.shape[:-1], INT8_ROW_FLOOR)
        # fl(127 / a) correctly rounded, as the kernels and the reference compute it: a Python
        # number divided by a tensor is reciprocal(a) * 127 in PyTorch (two roundings, a
        # different float32 for ~1 row in 4), which moves q by one wherever x * inv lies
        # next to a half -- a tensor numerator gives the true division.
        inv = torch.full_like(a, 127.0) / a
        q = _RoundClipSTE.apply(x * inv.unsqueeze(-1), -128.0, 127.0, "identity")
        return q, a / 127.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, d = self.quantize(x)
        return q * d.unsqueeze(-1)


class SignQuantizer(nn.Module):
    """Binarizes activations to ±1 per channel at a threshold, with an STE backward.

    ``threshold="adaptive"`` (the seed's ``TakaneSignQuantizer``): float32 buffers
    ``ema_mean`` (init 0) and ``ema_std`` (init 1); in training mode each forward first calls
    :meth:`update_ema` with the batch, then binarizes at
    ``mean_factor * ema_mean + std_factor * ema_std`` (default 0.5 · EMA std). The state dict
    is exactly ``{ema_mean, ema_std}``, so the seed's state dict loads as is.
    ``"fixed"``: a float32 buffer ``threshold`` (channels,) set to ``value``.
    ``"learned"``: a parameter ``threshold`` (channels,) initialised to ``value`` and trained
    through the STE (ReActNet's RSign, with our ``x >= t`` convention).

    ``channel_dim``: ``-1`` for (..., channels) inputs (the seed's (batch, channels)), ``1`` for
    NCHW images (statistics over N, H, W). ``ste``: ``"seed"``, ``"clip"`` or ``"identity"``
    (see ``binarize`` in this module). Output: ±1 in the input's dtype; ``+1`` where ``x >= t`` (the
    seed's ``torch.sign`` gives 0 at exact ties).
    """

    def __init__(self, channels: int, *, threshold: str = "adaptive", value=0.0, decay: float = 0.99,
                 std_factor: float = 0.5, mean_factor: float = 0.0, ddof: int = 1, eps: float = 1e-8,
                 ste: str = "seed", channel_dim: int = -1):
        super().__init__()
        self.channels = _positive_int(channels, "channels")
        if threshold not in THRESHOLD_KINDS:
            raise ValueError(f"threshold must be one of {THRESHOLD_KINDS}, got {threshold!r}")
        self.kind = threshold
        self.decay = _finite_real(decay, "decay")
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {self.decay}")
        self.std_factor = _finite_real(std_factor, "std_factor")
        self.mean_factor = _finite_real(mean_factor, "mean_factor")
        if isinstance(ddof, (bool, np.bool_)) or not isinstance(ddof, numbers.Integral) or ddof < 0:
            raise ValueError(f"ddof must be an int >= 0, got {ddof!r}")
        self.ddof = int(ddof)
        self.eps = _finite_real(eps, "eps")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        self.ste = _check_ste(ste)
        if channel_dim not in (-1, 1):
            raise ValueError(f"channel_dim must be -1 (channels last) or 1 (NCHW), got {channel_dim!r}")
        self.channel_dim = channel_dim
        if self.kind == "adaptive":
            self.register_buffer("ema_mean", torch.zeros(self.channels))
            self.register_buffer("ema_std", torch.ones(self.channels))
        else:
            v = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
            if v.ndim == 0:
                v = v.expand(self.channels)
            if v.shape != (self.channels,):
                raise ValueError(f"value must be a scalar or have shape ({self.channels},), got {tuple(v.shape)}")
            if not torch.isfinite(v).all():
                raise ValueError("value must be finite")
            v = v.to(torch.float32).clone()
            if self.kind == "fixed":
                self.register_buffer("threshold", v)
            else:
                self.threshold = nn.Parameter(v)

    # ---- input checks ----------------------------------------------------------------------
    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"SignQuantizer: input must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"SignQuantizer: input must be floating point, got {x.dtype}")
        need = 1 if self.channel_dim == -1 else 2
        if x.ndim < need or x.shape[self.channel_dim] != self.channels:
            where = "(..., C)" if self.channel_dim == -1 else "(N, C, ...)"
            raise ValueError(f"SignQuantizer: input has shape {tuple(x.shape)}, expected {where} "
                             f"with C = channels = {self.channels}")

    @torch.no_grad()
    def update_ema(self, x: torch.Tensor) -> None:
        """Fold one batch's per-channel statistics into ``ema_mean`` / ``ema_std``.

        Over every dimension but ``channel_dim``: ``mean`` and ``std`` (``correction=ddof``)
        plus ``eps``, then ``ema <- decay * ema + (1 - decay) * stat`` in float32 — for a
        float32 (batch, channels) input and the defaults, the seed's ``update_ema`` exactly.
        A zero-variance channel gets ``std = eps`` (nothing divides by it). Raises
        ``ValueError`` when a channel has no more than ``ddof`` samples (the statistic is
        undefined: torch would give NaN) or the statistics are not finite (NaN/inf in the
        batch), leaving the buffers unchanged.
        """
        if self.kind != "adaptive":
            raise RuntimeError(f"update_ema: this quantizer's threshold is {self.kind!r}, not 'adaptive'")
        self._check_input(x)
        cd = self.channel_dim % x.ndim
        dims = [d for d in range(x.ndim) if d != cd]
        samples = x.numel() // x.shape[cd]  # (no generator: dynamo traces this without a break)
        if samples <= self.ddof:
            raise ValueError(f"update_ema: a batch of shape {tuple(x.shape)} has {samples} sample(s) per "
                             f"channel; the std with ddof={self.ddof} needs more than {self.ddof}")
        mean = x.mean(dim=dims) if dims else x.clone()
        std = x.std(dim=dims, correction=self.ddof) + self.eps if dims else torch.full_like(x, self.eps)
        mean = mean.to(self.ema_mean.dtype)
        std = std.to(self.ema_std.dtype)
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("update_ema: the batch's statistics are not finite (NaN or infinite "
                             "values in the batch); the running statistics were not changed")
        self.ema_mean.copy_(self.decay * self.ema_mean + (1 - self.decay) * mean)
        self.ema_std.copy_(self.decay * self.ema_std + (1 - self.decay) * std)

    def current_threshold(self) -> torch.Tensor:
        """The per-channel threshold (channels,) used by the forward pass (float32)."""
        if self.kind == "adaptive":
            t = self.std_factor * self.ema_std  # the seed's 0.5 * ema_std, bit for bit
            if self.mean_factor != 0.0:
                t = self.mean_factor * self.ema_mean + t
            return t
        return self.threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.training and self.kind == "adaptive":
            self.update_ema(x)
        t = self.current_threshold()
        if self.channel_dim == 1:
            t = t.view((self.channels,) + (1,) * (x.ndim - 2))
        return _BinarizeSTE.apply(x, t, self.ste)

    # ---- numpy AdaptiveThreshold interchange ----------------------------------------------
    def to_adaptive_threshold(self) -> tk.AdaptiveThreshold:
        """The same running statistics as a numpy :class:`takane_kernels.AdaptiveThreshold`
        (float32 buffers widened to float64 exactly; same decay, factors, ddof, eps)."""
        if self.kind != "adaptive":
            raise ValueError(f"to_adaptive_threshold: this quantizer's threshold is {self.kind!r}")
        return tk.AdaptiveThreshold.from_quantizer_buffers(
            self.ema_mean.detach().cpu().numpy(), self.ema_std.detach().cpu().numpy(), decay=self.decay,
            std_factor=self.std_factor, mean_factor=self.mean_factor, ddof=self.ddof, eps=self.eps)

    @classmethod
    def from_adaptive_threshold(cls, at: tk.AdaptiveThreshold, **kwargs) -> "SignQuantizer":
        """An adaptive quantizer with ``at``'s hyperparameters and statistics (rounded to the
        float32 buffers); ``kwargs`` set ``ste`` and ``channel_dim``."""
        if not isinstance(at, tk.AdaptiveThreshold):
            raise TypeError(f"from_adaptive_threshold needs an AdaptiveThreshold, got {type(at).__name__}")
        bad = set(kwargs) - {"ste", "channel_dim"}
        if bad:
            raise TypeError(f"from_adaptive_threshold: unexpected keywords {sorted(bad)}")
        q = cls(at.channels, threshold="adaptive", decay=at.decay, std_factor=at.std_factor,
                mean_factor=at.mean_factor, ddof=at.ddof, eps=at.eps, **kwargs)
        buffers = at.quantizer_buffers()
        q.load_state_dict({name: torch.from_numpy(v) for name, v in buffers.items()})
        return q

    def extra_repr(self) -> str:
        s = f"{self.channels}, threshold={self.kind!r}, ste={self.ste!r}, channel_dim={self.channel_dim}"
        if self.kind == "adaptive":
            s += (f", decay={self.decay}, std_factor={self.std_factor}, mean_factor={self.mean_factor}, "
                  f"ddof={self.ddof}, eps={self.eps}")
        return s


def _check_input_quantizer(q) -> nn.Module | None:
    if q is not None and not isinstance(q, nn.Module):
        raise TypeError(f"input_quantizer must be an nn.Module (e.g. a SignQuantizer) or None, got {type(q).__name__}")
    return q


def _onebit_init(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OneBit's SVID initialisation of the value vectors, as ``pack_weights(scale="onebit")``."""
    pw = tk.pack_weights(w.detach().to("cpu", torch.float32).numpy(), scale="onebit")
    return torch.from_numpy(pw.scale.copy()), torch.from_numpy(pw.in_scale.copy())


class QuantLinear(nn.Linear):
    """``nn.Linear`` with latent float weights binarized in the forward pass (``w >= 0`` → +1).

    ``y = (x' @ (sign(W) * G).T) * s + bias`` with ``x'`` the input after ``input_quantizer``
    (a :class:`SignQuantizer` for W1A1; ``None`` keeps it real: weight-only) and, by ``scale``:

    - ``None``: no scale;
    - ``"mean_abs"``: ``s[n]`` = mean |W[n]| of the latent weights (XNOR-Net's alpha,
      recomputed every forward, gradients flow through it);
    - ``"onebit"``: OneBit, ``x' * in_s`` then ``* s`` with parameters ``weight_scale`` (N,) and
      ``input_scale`` (K,) initialised by SVID of |W| and trained;
    - ``"group"``: ``G[n, k]`` = mean |W| of row n's group ``k // group_size`` (a partial last
      group averages its real elements) — llama.cpp Q1_0 style; ``group_size`` a positive
      multiple of 64.
    - ``"ternary"``: BitNet b1.58 — the weights are ternarized, not binarized, by
      :func:`ternarize` (``t = RoundClip(W / (mean|W| + eps), -1, 1)``, ``eps`` =
      ``ternary_eps``), and ``s`` = mean |W| over the whole tensor (detached). The input
      quantizer is ``None`` (W1.58A-float: ``y = (x @ t.T) * s + bias``) or an
      :class:`Int8RowQuantizer` (W1.58A8: ``y = (q @ t.T) * (d * s) + bias`` with the
      quantizer's integer ``q`` and row scale ``d``; the dot product is an exact integer in
      float32 for K <= 2**17). ``weight_ste`` then applies to the rounding, and its default
      is ``"identity"`` (BitNet's STE).

    ``weight_ste``: the weights' STE (default ``"clip"``: no gradient where ``|w| > 1``).
    Each step above is one float32 op, in the order the kernels use, so ``convert`` can
    reproduce it: a W1A1 layer's ±1 dot product is an exact integer and the converted
    layer's output is bit-identical.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, scale="mean_abs",
                 group_size: int | None = None, input_quantizer: nn.Module | None = None,
                 weight_ste: str | None = None, ternary_eps: float = 1e-5, device=None, dtype=None):
        if scale not in LINEAR_SCALES:
            raise ValueError(f"scale must be one of {LINEAR_SCALES}, got {scale!r}")
        if scale == "ternary":
            if input_quantizer is not None and not isinstance(input_quantizer, Int8RowQuantizer):
                raise ValueError(f"scale='ternary' takes input_quantizer=None (float activations) or an "
                                 f"Int8RowQuantizer (BitNet's int8 activations), got {type(input_quantizer).__name__} "
                                 "(ternary weights with ±1 activations have no kernel)")
        elif isinstance(input_quantizer, Int8RowQuantizer):
            raise ValueError(f"an Int8RowQuantizer needs scale='ternary' (1-bit weights have no int8_row kernel: "
                             f"use mode 'w1a8' via convert(activations='q8_0')), got scale={scale!r}")
        ternary_eps = _finite_real(ternary_eps, "ternary_eps")
        if not ternary_eps > 0:
            raise ValueError(f"ternary_eps must be > 0 (W / (mean|W| + eps) must be defined), got {ternary_eps}")
        self.ternary_eps = ternary_eps  # (used by scale="ternary" only)
        if (scale == "group") != (group_size is not None):
            raise ValueError("group_size goes with scale='group' (and only with it)")
        if group_size is not None:
            group_size = C.check_group_size(group_size)
            if in_features < 1:
                raise ValueError("scale='group' needs in_features >= 1")
        self.scale = scale
        self.group_size = group_size
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if weight_ste is None:
            weight_ste = "identity" if scale == "ternary" else "clip"
        self.weight_ste = _check_ste(weight_ste, "weight_ste")
        self.input_quantizer = _check_input_quantizer(input_quantizer)
        if scale == "onebit":
            s, ins = _onebit_init(self.weight)
            self.weight_scale = nn.Parameter(s.to(self.weight.device, self.weight.dtype))
            self.input_scale = nn.Parameter(ins.to(self.weight.device, self.weight.dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "QuantLinear":
        """A QuantLinear starting from a (pre-trained) ``nn.Linear``'s weights and bias."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, **kwargs)
        with torch.no_grad():
            q.weight.copy_(linear.weight)
            if linear.bias is not None:
                q.bias.copy_(linear.bias)
        q.reset_scales()
        return q

    def reset_scales(self) -> None:
        """Re-initialise OneBit's value vectors from the current latent weights (SVID)."""
        if self.scale == "onebit":
            s, ins = _onebit_init(self.weight)
            with torch.no_grad():
                self.weight_scale.copy_(s)
                self.input_scale.copy_(ins)

    def group_scales(self) -> torch.Tensor:
        """(N, ceil(K/group_size)) mean |W| per row and group (``scale="group"``)."""
        n, k = self.weight.shape
        g = self.group_size
        groups = -(-k // g)
        a = F.pad(self.weight.abs(), (0, groups * g - k)).view(n, groups, g).sum(dim=2)
        counts = torch.full((groups,), float(g), dtype=a.dtype, device=a.device)
        counts[-1] = k - (groups - 1) * g
        return a / counts

    def ternary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``scale="ternary"``: ``(t, gamma)`` of :func:`ternarize` — the ternary values the
        forward uses (with the STE) and the 0-d per-tensor scale mean |W| (detached)."""
        if self.scale != "ternary":
            raise ValueError(f"ternary_weight: this QuantLinear's scale is {self.scale!r}, not 'ternary'")
        return ternarize(self.weight, self.ternary_eps, self.weight_ste)

    def row_scale(self) -> torch.Tensor | None:
        """The (N,) output scale the forward applies (None for none)."""
        if self.scale == "ternary":
            return self.ternary_weight()[1].expand(self.out_features)
        if self.scale == "mean_abs":  # K = 0: 0, as pack_weights (the mean of nothing is NaN)
            return self.weight.abs().mean(dim=1) if self.in_features else self.weight.new_zeros(self.out_features)
        if self.scale == "onebit":
            return self.weight_scale
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == "ternary":
            return self._ternary_forward(x)
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        self._check_input(x)
        wb = binarize(self.weight, 0.0, self.weight_ste)
        if self.scale == "onebit":
            x = x * self.input_scale
        if self.scale == "group":
            wb = wb * self.group_scales().repeat_interleave(self.group_size, dim=1)[:, :self.in_features]
        return self._epilogue(F.linear(x, wb))

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"QuantLinear: input has shape {shape}, expected (..., {self.in_features})")

    def _ternary_forward(self, x: torch.Tensor) -> torch.Tensor:
        # One float32 op per step, so that convert()'s TernaryWeights (t, tensor_scale gamma)
        # reproduce it within the documented bound: W1.58A8 computes the exact integer
        # q @ t.T, then * fl(d * gamma), then + bias; W1.58A-float x @ t.T, * gamma, + bias.
        self._check_input(x)
        t, gamma = self.ternary_weight()
        if self.input_quantizer is None:
            y = F.linear(x, t) * gamma
        else:
            q, d = self.input_quantizer.quantize(x)
            y = F.linear(q, t) * (d.unsqueeze(-1) * gamma)
        return y + self.bias if self.bias is not None else y

    def _epilogue(self, y: torch.Tensor) -> torch.Tensor:
        # one float32 op per step, like the kernels: (y * s) + bias, no fused multiply-add
        s = self.row_scale()
        if s is not None:
            y = y * s
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", scale={self.scale!r}, weight_ste={self.weight_ste!r}"
        if self.scale == "ternary":
            s += f", ternary_eps={self.ternary_eps}"
        return s + (f", group_size={self.group_size}" if self.group_size else "")


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` (NCHW) with latent float weights binarized in the forward pass.

    ``y = conv(pad(x'), sign(W)) * s + bias`` with ``x'`` the input after ``input_quantizer``
    (a :class:`SignQuantizer` with ``channel_dim=1`` for W1A1), ``s[c]`` the mean |W| of
    output channel ``c`` (``scale="mean_abs"``, XNOR-Net) or none (``scale=None``).
    ``pad_value`` is what a tap outside the image is: ``0`` contributes nothing
    (PyTorch's zero padding), ``+1`` / ``-1`` a ±1 activation (binary CNNs that pad the
    binarized input, e.g. Larq's ``pad_values=1``). ``padding``: int, pair, ``"valid"`` or
    ``"same"`` (stride 1; an odd total puts the extra row/column at the bottom/right, as
    PyTorch does). With a SignQuantizer the convolution sums ±1 products (exact integers in
    float32) and the epilogue is ``(y * s) + bias``, two float32 ops — the order of
    ``binary_conv2d``'s epilogue, so :func:`convert` reproduces it bit for bit.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, pad_value: int = 0, scale="mean_abs",
                 input_quantizer: nn.Module | None = None, weight_ste: str = "clip", device=None, dtype=None):
        if scale not in CONV_SCALES:
            raise ValueError(f"scale must be one of {CONV_SCALES} for QuantConv2d, got {scale!r}")
        if isinstance(pad_value, bool) or pad_value not in (0, 1, -1):
            raise ValueError(f"pad_value must be 0, +1 or -1, got {pad_value!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode="zeros", device=device, dtype=dtype)
        self.scale = scale
        self.pad_value = int(pad_value)
        self.weight_ste = _check_ste(weight_ste, "weight_ste")
        self.input_quantizer = _check_input_quantizer(input_quantizer)
        if isinstance(input_quantizer, SignQuantizer) and input_quantizer.channel_dim != 1:
            raise ValueError("QuantConv2d's SignQuantizer must have channel_dim=1 (NCHW)")

    def explicit_padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) taps added around the image."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            (kh, kw), (dh, dw) = self.kernel_size, self.dilation
            th, tw = dh * (kh - 1), dw * (kw - 1)
            return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        ph, pw = C.check_pair(self.padding, "padding", lo=0)
        return (pw, pw, ph, ph)

    def row_scale(self) -> torch.Tensor | None:
        return self.weight.abs().mean(dim=(1, 2, 3)) if self.scale == "mean_abs" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"QuantConv2d: input has shape {shape}, expected NCHW (N, {self.in_channels}, H, W)")
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        wb = binarize(self.weight, 0.0, self.weight_ste)
        pads = self.explicit_padding()
        if any(pads):  # explicit padding: one code path for 0 and ±1 taps
            x = F.pad(x, pads, value=float(self.pad_value))
        return self._epilogue(F.conv2d(x, wb, None, self.stride, 0, self.dilation, self.groups))

    def _epilogue(self, y: torch.Tensor) -> torch.Tensor:
        # one float32 op per step, like binary_conv2d: (y * s) + bias, no fused multiply-add
        s = self.row_scale()
        if s is not None:
            y = y * s.view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pad_value={self.pad_value}, scale={self.scale!r}, weight_ste={self.weight_ste!r}"
