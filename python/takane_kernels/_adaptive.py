"""AdaptiveThreshold: per-channel binarization thresholds calibrated from running statistics."""

from __future__ import annotations

import numbers

import numpy as np

from ._ops import _ceil_f32

__all__ = ["AdaptiveThreshold"]

_HYPER = ("decay", "std_factor", "mean_factor")


def _real_scalar(value: object, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _channels(value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"channels must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"channels must be >= 1, got {value}")
    return int(value)


def _decay(value: object) -> float:
    d = _real_scalar(value, "decay")
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {d}")
    return d


class AdaptiveThreshold:
    """Per-channel thresholds from an EMA of each channel's mean and standard deviation.

    The sign quantizer's adaptive threshold: calibrate on a few batches of activations,
    then binarize at ``threshold`` (shape (channels,), float64) — it plugs straight into
    ``pack_bits``, ``binary_matmul`` and ``binary_linear`` (``threshold=at.threshold``),
    where the per-channel comparison is fused into packing. Each ``update(batch)`` with
    batch (..., channels) takes the batch's per-channel mean and population standard
    deviation (ddof=0) over all leading dimensions, and folds them in::

        mean <- decay * mean + (1 - decay) * batch_mean
        std  <- decay * std  + (1 - decay) * batch_std

    starting from mean 0, std 1. ``threshold = mean_factor * mean + std_factor * std``
    (defaults: 0.5 · EMA std, the original rule). All state and statistics are float64,
    so long calibrations do not drift. ``state_dict()`` / ``load_state_dict()`` save and
    restore everything, validated.
    """

    __slots__ = ("_channels", "_decay", "_std_factor", "_mean_factor", "_mean", "_std", "_updates")

    def __init__(self, channels: int, *, decay: float = 0.99, std_factor: float = 0.5, mean_factor: float = 0.0):
        self._channels = _channels(channels)
        self._decay = _decay(decay)
        self._std_factor = _real_scalar(std_factor, "std_factor")
        self._mean_factor = _real_scalar(mean_factor, "mean_factor")
        self._mean = np.zeros(self._channels)
        self._std = np.ones(self._channels)
        self._updates = 0

    channels = property(lambda self: self._channels, doc="number of channels (last dim of a batch)")
    decay = property(lambda self: self._decay, doc="EMA decay in [0, 1]")
    std_factor = property(lambda self: self._std_factor)
    mean_factor = property(lambda self: self._mean_factor)
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
        return _ceil_f32(self.threshold)

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
        if not np.all(np.isfinite(rows)):
            raise ValueError("batch contains NaN or infinite values")
        batch_mean = rows.mean(axis=0)
        batch_std = np.sqrt(np.mean(np.square(rows - batch_mean), axis=0))  # two-pass, ddof=0
        d = self._decay
        self._mean = d * self._mean + (1.0 - d) * batch_mean
        self._std = d * self._std + (1.0 - d) * batch_std
        self._updates += 1
        return self

    def state_dict(self) -> dict:
        """Everything needed to restore this object: hyperparameters, state, update count."""
        return {
            "channels": self._channels,
            "decay": self._decay,
            "std_factor": self._std_factor,
            "mean_factor": self._mean_factor,
            "mean": self._mean.copy(),
            "std": self._std.copy(),
            "num_updates": self._updates,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` output; validates before changing anything."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        expected = {"channels", "mean", "std", "num_updates", *_HYPER}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"state keys do not match (missing {missing}, unexpected {extra})")
        if _channels(state["channels"]) != self._channels:
            raise ValueError(f"state is for {state['channels']} channels, this object has {self._channels}")
        decay = _decay(state["decay"])
        std_factor = _real_scalar(state["std_factor"], "std_factor")
        mean_factor = _real_scalar(state["mean_factor"], "mean_factor")
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
        self._mean, self._std, self._updates = arrays["mean"], arrays["std"], int(updates)

    def __repr__(self) -> str:
        return (
            f"AdaptiveThreshold(channels={self._channels}, decay={self._decay}, std_factor={self._std_factor}, "
            f"mean_factor={self._mean_factor}, num_updates={self._updates})"
        )
