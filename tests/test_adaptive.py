"""AdaptiveThreshold: EMA statistics vs the reference twin, validation, state round trip, and
its thresholds fused into packing on every ISA."""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref

from conftest import assert_ran, plain_matmul


def test_initial_state_and_default_rule():
    at = tk.AdaptiveThreshold(4)
    np.testing.assert_array_equal(at.mean, 0.0)
    np.testing.assert_array_equal(at.std, 1.0)
    np.testing.assert_array_equal(at.threshold, 0.5)  # 0.5 * EMA std, the original rule
    assert (at.decay, at.std_factor, at.mean_factor, at.num_updates, at.channels) == (0.99, 0.5, 0.0, 0, 4)
    assert at.threshold.dtype == np.float64 and at.threshold.shape == (4,)


def test_one_update_by_hand():
    at = tk.AdaptiveThreshold(2, decay=0.75, std_factor=2.0, mean_factor=1.0)
    batch = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0], [7.0, 10.0]])
    at.update(batch)
    # batch mean (4, 10), population std (sqrt(5), 0)
    np.testing.assert_allclose(at.mean, [0.25 * 4, 0.25 * 10])
    np.testing.assert_allclose(at.std, [0.75 + 0.25 * np.sqrt(5), 0.75])
    np.testing.assert_allclose(at.threshold, at.mean + 2 * at.std)
    assert at.num_updates == 1


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_matches_reference_twin(decay):
    rng = np.random.default_rng(int(decay * 100))
    at = tk.AdaptiveThreshold(7, decay=decay, std_factor=0.7, mean_factor=-0.3)
    rt = ref.AdaptiveThreshold(7, decay=decay, std_factor=0.7, mean_factor=-0.3)
    for i in range(40):
        batch = rng.standard_normal((3, 5, 7)) * (1 + i % 4) + rng.standard_normal(7)
        at.update(batch)
        rt.update(batch)
        np.testing.assert_allclose(at.threshold, rt.threshold, rtol=1e-12, atol=1e-12)


def test_long_calibration_does_not_drift():
    """10^4 updates with an exactly known stationary answer: float64 state stays put."""
    at = tk.AdaptiveThreshold(3, decay=0.999)
    batch = np.array([[1.0, -2.0, 0.5], [3.0, -2.0, 1.5]])  # mean (2, -2, 1), std (1, 0, 0.5)
    for _ in range(10_000):
        at.update(batch)
    expect_mean = np.array([2.0, -2.0, 1.0]) * (1 - 0.999**10_000)
    expect_std = np.array([1.0, 0.0, 0.5]) + (1 - np.array([1.0, 0.0, 0.5])) * 0.999**10_000
    np.testing.assert_allclose(at.mean, expect_mean, rtol=1e-12)
    np.testing.assert_allclose(at.std, expect_std, rtol=1e-12)


def test_accepts_any_real_dtype_and_leading_dims():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 6, 5)) * 10).astype(np.int16)
    a = tk.AdaptiveThreshold(5).update(x)
    b = tk.AdaptiveThreshold(5).update(x.reshape(24, 5).astype(np.float64))
    np.testing.assert_array_equal(a.threshold, b.threshold)
    assert tk.AdaptiveThreshold(5).update(x.astype(np.float16)).num_updates == 1
    one = tk.AdaptiveThreshold(4, decay=0.0).update(np.arange(4))  # 1-D: a single sample
    np.testing.assert_array_equal(one.mean, [0, 1, 2, 3])
    np.testing.assert_array_equal(one.std, 0.0)


def test_validation():
    with pytest.raises(TypeError, match="channels must be an int"):
        tk.AdaptiveThreshold(3.0)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        tk.AdaptiveThreshold(0)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        tk.AdaptiveThreshold(3, decay=1.5)
    with pytest.raises(ValueError, match="std_factor must be finite"):
        tk.AdaptiveThreshold(3, std_factor=np.nan)
    with pytest.raises(TypeError, match="mean_factor must be a real number"):
        tk.AdaptiveThreshold(3, mean_factor="0")
    at = tk.AdaptiveThreshold(3)
    with pytest.raises(ValueError, match=r"batch has shape \(2, 4\).*channels=3"):
        at.update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="no samples"):
        at.update(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        at.update(np.array([[1.0, np.nan, 2.0]]))
    with pytest.raises(TypeError, match="real"):
        at.update(np.array([["a", "b", "c"]]))
    assert at.num_updates == 0 and np.all(at.std == 1)  # failed updates changed nothing


def test_state_dict_round_trip_and_validation():
    rng = np.random.default_rng(2)
    at = tk.AdaptiveThreshold(4, decay=0.8, std_factor=1.5, mean_factor=0.25)
    for _ in range(5):
        at.update(rng.standard_normal((10, 4)))
    state = at.state_dict()
    state["mean"][0] = 1e9  # a copy: the object is unaffected
    assert at.mean[0] != 1e9
    state = at.state_dict()
    other = tk.AdaptiveThreshold(4)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.threshold, at.threshold)
    assert (other.decay, other.std_factor, other.mean_factor, other.num_updates) == (0.8, 1.5, 0.25, 5)
    with pytest.raises(ValueError, match="state is for 4 channels"):
        tk.AdaptiveThreshold(5).load_state_dict(state)
    for key, value, message in [
        ("mean", np.zeros(3), r"shape \(4,\)"),
        ("std", np.array([1.0, -1.0, 1.0, 1.0]), ">= 0"),
        ("std", np.array([1.0, np.inf, 1.0, 1.0]), "finite"),
        ("decay", 2.0, "decay"),
        ("num_updates", -1, "num_updates"),
    ]:
        bad = dict(state, **{key: value})
        with pytest.raises(ValueError, match=message):
            other.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({k: v for k, v in state.items() if k != "std"})
    with pytest.raises(ValueError, match="unexpected"):
        other.load_state_dict(dict(state, extra=1))
    np.testing.assert_array_equal(other.threshold, at.threshold)  # failed loads changed nothing


def test_thresholds_plug_into_packing_and_layers(isa_name):
    rng = np.random.default_rng(3)
    k = 129
    x = rng.standard_normal((9, k)).astype(np.float32) * 2 + 0.3
    at = tk.AdaptiveThreshold(k, decay=0.5, mean_factor=1.0)
    for _ in range(3):
        at.update(rng.standard_normal((16, k)) * 2 + 0.3)
    t = at.threshold
    x[0, :5] = t[:5].astype(np.float32)  # on the boundary, rounded to float32 (x is float32)
    w = rng.standard_normal((7, k))
    pw = tk.pack_weights(w)
    with tk.isa.force(isa_name):
        np.testing.assert_array_equal(tk.pack_bits(x, t), ref.pack_bits(x, t))
        assert_ran(isa_name)
        np.testing.assert_array_equal(tk.binary_matmul(x, pw, threshold=t), plain_matmul(x, w, t))
        assert_ran(isa_name)
        np.testing.assert_array_equal(tk.binary_linear(x, pw, threshold=t), ref.binary_linear(x, pw, threshold=t))
        assert_ran(isa_name)


def test_threshold_f32_gives_the_same_bits_as_threshold(isa_name):
    """threshold_f32 = ceil_f32(threshold): for float32 activations, including values on
    both float32 neighbours of every threshold, the bits are those of the float64 rule."""
    rng = np.random.default_rng(4)
    k = 200
    at = tk.AdaptiveThreshold(k, decay=0.7)
    at.update(rng.standard_normal((32, k)) * 3 + 0.1)
    t, t32 = at.threshold, at.threshold_f32
    assert t32.dtype == np.float32 and t32.shape == (k,)
    assert np.all(t32.astype(np.float64) >= t) and np.all(np.nextafter(t32, -np.inf).astype(np.float64) < t)
    x = rng.standard_normal((6, k)).astype(np.float32) * 3
    x[0], x[1] = t32, np.nextafter(t32, -np.inf)  # just at and just below each threshold
    pw = tk.pack_weights(rng.standard_normal((9, k)))
    with tk.isa.force(isa_name):
        np.testing.assert_array_equal(tk.pack_bits(x, t32), ref.pack_bits(x, t))
        np.testing.assert_array_equal(tk.binary_linear(x, pw, threshold=t32), ref.binary_linear(x, pw, threshold=t))
        assert_ran(isa_name)
    # and float32 threshold arrays still reject NaN
    bad = t32.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tk.binary_matmul(x, pw, threshold=bad)


def test_seed_statistics_ddof1_eps():
    """ddof=1, eps=1e-8: the seed's rule (PyTorch's unbiased std + 1e-8), by hand and
    against the reference twin."""
    at = tk.AdaptiveThreshold(2, decay=0.75, ddof=1, eps=1e-8)
    batch = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0], [7.0, 10.0]])
    at.update(batch)
    # unbiased std (sqrt(20/3), 0), plus eps: a zero-variance channel gets exactly eps
    np.testing.assert_allclose(at.std, [0.75 + 0.25 * (np.sqrt(20 / 3) + 1e-8), 0.75 + 0.25 * 1e-8], rtol=1e-15)
    np.testing.assert_allclose(at.mean, [0.25 * 4, 0.25 * 10])
    assert (at.ddof, at.eps) == (1, 1e-8)
    rng = np.random.default_rng(5)
    a = tk.AdaptiveThreshold(6, ddof=1, eps=1e-8, mean_factor=0.5)
    r = ref.AdaptiveThreshold(6, ddof=1, eps=1e-8, mean_factor=0.5)
    for i in range(20):
        b = rng.standard_normal((2 + i % 3, 6)) * (1 + i % 5)
        a.update(b)
        r.update(b)
        np.testing.assert_allclose(a.threshold, r.threshold, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="ddof=1 needs more than 1"):
        a.update(np.zeros((1, 6)))  # one sample: the unbiased std is undefined
    assert a.num_updates == 20
    with pytest.raises(ValueError, match="ddof must be an int >= 0"):
        tk.AdaptiveThreshold(3, ddof=-1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        tk.AdaptiveThreshold(3, eps=-1e-8)
    assert "ddof=1" in repr(a)


def test_quantizer_buffers_round_trip_and_old_states():
    rng = np.random.default_rng(6)
    at = tk.AdaptiveThreshold(5, ddof=1, eps=1e-8, decay=0.9)
    for _ in range(4):
        at.update(rng.standard_normal((8, 5)))
    buf = at.quantizer_buffers()
    assert set(buf) == {"ema_mean", "ema_std"}
    assert all(v.dtype == np.float32 and v.shape == (5,) for v in buf.values())
    np.testing.assert_array_equal(buf["ema_std"], at.std.astype(np.float32))
    back = tk.AdaptiveThreshold.from_quantizer_buffers(buf["ema_mean"], buf["ema_std"], decay=0.9)
    assert (back.ddof, back.eps, back.decay, back.num_updates) == (1, 1e-8, 0.9, 0)
    np.testing.assert_array_equal(back.std, buf["ema_std"].astype(np.float64))  # widened exactly
    np.testing.assert_allclose(back.threshold, at.threshold, rtol=1e-7)  # float32 rounding only
    with pytest.raises(ValueError, match="differ in shape"):
        tk.AdaptiveThreshold.from_quantizer_buffers(np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        tk.AdaptiveThreshold.from_quantizer_buffers(np.zeros(3), np.array([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match=">= 0"):
        tk.AdaptiveThreshold.from_quantizer_buffers(np.zeros(3), -np.ones(3))
    # a state saved before ddof/eps existed loads as the population rule
    old = {k: v for k, v in at.state_dict().items() if k not in ("ddof", "eps")}
    other = tk.AdaptiveThreshold(5, ddof=1, eps=1e-8)
    other.load_state_dict(old)
    assert (other.ddof, other.eps) == (0, 0.0)
    np.testing.assert_array_equal(other.std, at.std)
