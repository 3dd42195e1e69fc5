"""AdaptiveThreshold: per-channel binarization thresholds calibrated from running statistics."""

from __future__ import annotations

import numbers

import numpy as np

from . import _capi as C

__all__ = ["AdaptiveThreshold"]

_HYPER = ("decay", "std_factor", "mean_factor")
_STATS = ("ddof", "eps")  # optional in a loaded state (older states: ddof 0, eps 0)


_real_scalar = C.real_scalar


def _channels(value: object) -> int:
    return C.positive_int(value, "channels")


def _decay(value: object) -> float:
    d = _real_scalar(value, "decay")
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {d}")
    return d


def _ddof(value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"ddof must be an int >= 0, got {value!r}")
    return int(value)


def _eps(value: object) -> float:
    e = _real_scalar(value, "eps")
    if e < 0:
        raise ValueError(f"eps must be >= 0, got {e}")
    return e


class AdaptiveThreshold:
    """Per-channel thresholds from an EMA of each channel's mean and standard deviation.

    The sign quantizer's adaptive threshold: calibrate on a few batches of activations,
    then binarize at ``threshold`` (shape (channels,), float64) — it plugs straight into
    ``pack_bits``, ``binary_matmul`` and ``binary_linear`` (``threshold=at.threshold``),
    where the per-channel comparison is fused into packing. Each ``update(batch)`` with
    batch (..., channels) takes the batch's per-channel mean and standard deviation over
    all leading dimensions, ``batch_std = sqrt(sum((x - mean)**2) / (n - ddof)) + eps``, and
    folds them in::

        mean <- decay * mean + (1 - decay) * batch_mean
        std  <- decay * std  + (1 - decay) * batch_std

    ``ddof=0, eps=0`` (the default) is the population std; ``ddof=1, eps=1e-8`` is the seed's
    ``TakaneSignQuantizer`` (PyTorch's unbiased ``std`` plus 1e-8), whose running statistics
    :meth:`quantizer_buffers` / :meth:`from_quantizer_buffers` exchange with
    ``takane_kernels.torch.SignQuantizer`` (buffers ``ema_mean``, ``ema_std``).

    starting from mean 0, std 1. ``threshold = mean_factor * mean + std_factor * std``
    (defaults: 0.5 · EMA std, the original rule). All state and statistics are float64,
    so long calibrations do not drift. ``state_dict()`` / ``load_state_dict()`` save and
    restore everything, validated.
    """

    __slots__ = ("_channels", "_decay", "_std_factor", "_mean_factor", "_ddof", "_eps", "_mean", "_std", "_updates")

    def __init__(self, channels: int, *, decay: float = 0.99, std_factor: float = 0.5, mean_factor: float = 0.0,
                 ddof: int = 0, eps: float = 0.0):
        self._channels = _channels(channels)
        self._decay = _decay(decay)
        self._std_factor = _real_scalar(std_factor, "std_factor")
        self._mean_factor = _real_scalar(mean_factor, "mean_factor")
        self._ddof = _ddof(ddof)
        self._eps = _eps(eps)
        self._mean = np.zeros(self._channels)
        self._std = np.ones(self._channels)
        self._updates = 0

    channels = property(lambda self: self._channels, doc="number of channels (last dim of a batch)")
    decay = property(lambda self: self._decay, doc="EMA decay in [0, 1]")
    std_factor = property(lambda self: self._std_factor)
    mean_factor = property(lambda self: self._mean_factor)
    ddof = property(lambda self: self._ddof, doc="delta degrees of freedom of the batch std")
    eps = property(lambda self: self._eps, doc="added to each batch std")
    num_updates = property(lambda self: self._updates, doc="batches folded in so far")
    mean = property(lambda self: self._mean.copy(), doc="EMA of the per-channel mean (float64 copy)")
    std = property(lambda self: self._std.copy(), doc="EMA of the per-channel std (float64 copy)")

    @property
    def threshold(self) -> np.ndarray:
        """``mean_factor * mean + std_factor * std``, float64 (channels,) (a new array)."""
        return self._mean_factor * self._mean + self._std_factor * self._std

    @property
    def threshold_f32(self) -> np.ndarray:
        """``threshold`` rounded *up* to float32, (channels,) float32 (a new array).

        For float32 (or narrower) activations ``v >= t`` exactly when
        ``v >= threshold_f32``, so it gives the same bits as ``threshold`` while sparing
        every call the rounding pass (a few microseconds at batch 1): compute it once after
        calibration and pass it as ``threshold=``. (float64 activations are compared at
        their own precision: give them ``threshold``.)"""
        return C.ceil_f32(self.threshold)

    def update(self, batch: object) -> "AdaptiveThreshold":
        """Fold one calibration batch (..., channels) into the running statistics."""
        a = np.asarray(batch)
        if a.dtype.kind not in "fiub":
            raise TypeError(f"batch must be a real array, got dtype {a.dtype}")
        if a.ndim < 1 or a.shape[-1] != self._channels:
            raise ValueError(f"batch has shape {a.shape}: its last dimension must be channels={self._channels}")
        rows = a.reshape(-1, self._channels).astype(np.float64)
        if rows.shape[0] == 0:
            raise ValueError(f"batch of shape {a.shape} has no samples: its statistics are undefined")
        if rows.shape[0] <= self._ddof:
            raise ValueError(f"batch of shape {a.shape} has {rows.shape[0]} sample(s) per channel; "
                             f"the std with ddof={self._ddof} needs more than {self._ddof}")
        if not np.all(np.isfinite(rows)):
            raise ValueError("batch contains NaN or infinite values")
        batch_mean = rows.mean(axis=0)
        # two-pass
        batch_std = np.sqrt(np.sum(np.square(rows - batch_mean), axis=0) / (rows.shape[0] - self._ddof)) + self._eps
        d = self._decay
        self._mean = d * self._mean + (1.0 - d) * batch_mean
        self._std = d * self._std + (1.0 - d) * batch_std
        self._updates += 1
        return self

    def quantizer_buffers(self) -> dict:
        """The state as ``takane_kernels.torch.SignQuantizer``'s buffers: ``{"ema_mean",
        "ema_std"}`` float32 (channels,) numpy arrays (rounded to nearest from float64).
        ``{k: torch.from_numpy(v) for k, v in ...items()}`` loads into the quantizer (or the
        seed's ``TakaneSignQuantizer``) with ``load_state_dict``."""
        return {"ema_mean": self._mean.astype(np.float32), "ema_std": self._std.astype(np.float32)}

    @classmethod
    def from_quantizer_buffers(cls, ema_mean: object, ema_std: object, *, decay: float = 0.99,
                               std_factor: float = 0.5, mean_factor: float = 0.0, ddof: int = 1,
                               eps: float = 1e-8) -> "AdaptiveThreshold":
        """An AdaptiveThreshold holding a SignQuantizer's (or the seed's) ``ema_mean`` /
        ``ema_std`` buffers (any real (channels,) arrays; CPU tensors work), widened to
        float64 exactly. The statistics default to the seed's (``ddof=1, eps=1e-8``), so
        further ``update`` calls continue its rule; ``num_updates`` starts at 0 (the buffers
        do not count their updates)."""
        arrays = []
        for name, v in (("ema_mean", ema_mean), ("ema_std", ema_std)):
            a = np.asarray(v)
            if a.dtype.kind not in "fiu" or a.ndim != 1:
                raise ValueError(f"{name} must be a real 1-D array, got {a.dtype} {a.shape}")
            arrays.append(a.astype(np.float64))
        if arrays[0].shape != arrays[1].shape:
            raise ValueError(f"ema_mean {arrays[0].shape} and ema_std {arrays[1].shape} differ in shape")
        at = cls(arrays[0].shape[0], decay=decay, std_factor=std_factor, mean_factor=mean_factor, ddof=ddof, eps=eps)
        state = at.state_dict()
        state.update(mean=arrays[0], std=arrays[1])
        at.load_state_dict(state)  # validates: finite, std >= 0
        return at

    def state_dict(self) -> dict:
        """Everything needed to restore this object: hyperparameters, state, update count."""
        return {
            "channels": self._channels,
            "decay": self._decay,
            "std_factor": self._std_factor,
            "mean_factor": self._mean_factor,
            "ddof": self._ddof,
            "eps": self._eps,
            "mean": self._mean.copy(),
            "std": self._std.copy(),
            "num_updates": self._updates,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` output; validates before changing anything."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        expected = {"channels", "mean", "std", "num_updates", *_HYPER}
        if not expected <= set(state) <= expected | set(_STATS):
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected - set(_STATS))
            raise ValueError(f"state keys do not match (missing {missing}, unexpected {extra})")
        if _channels(state["channels"]) != self._channels:
            raise ValueError(f"state is for {state['channels']} channels, this object has {self._channels}")
        decay = _decay(state["decay"])
        std_factor = _real_scalar(state["std_factor"], "std_factor")
        mean_factor = _real_scalar(state["mean_factor"], "mean_factor")
        ddof = _ddof(state.get("ddof", 0))
        eps = _eps(state.get("eps", 0.0))
        arrays = {}
        for key in ("mean", "std"):
            v = np.asarray(state[key])
            if v.dtype.kind not in "fiu" or v.shape != (self._channels,):
                raise ValueError(f"state[{key!r}] must be a real array of shape ({self._channels},), got {v.dtype} {v.shape}")
            v = v.astype(np.float64)
            if not np.all(np.isfinite(v)):
                raise ValueError(f"state[{key!r}] must be finite")
            arrays[key] = v
        if np.any(arrays["std"] < 0):
            raise ValueError("state['std'] must be >= 0")
        updates = state["num_updates"]
        if isinstance(updates, (bool, np.bool_)) or not isinstance(updates, numbers.Integral) or updates < 0:
            raise ValueError(f"state['num_updates'] must be an int >= 0, got {updates!r}")
        self._decay, self._std_factor, self._mean_factor = decay, std_factor, mean_factor
        self._ddof, self._eps = ddof, eps
        self._mean, self._std, self._updates = arrays["mean"], arrays["std"], int(updates)

    def __repr__(self) -> str:
        return (
            f"AdaptiveThreshold(channels={self._channels}, decay={self._decay}, std_factor={self._std_factor}, "
            f"mean_factor={self._mean_factor}, ddof={self._ddof}, eps={self._eps}, num_updates={self._updates})"
        )
