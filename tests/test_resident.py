"""One resident copy (issue 21): once the kernels have built a PackedWeights' C handle,
the canonical rows — and the row-major group scales, which the handle carries — are
released, and ``bits`` / ``group_scale`` are rebuilt from the handle — exactly, on every
ISA, from many threads — and everything that reads them behaves as before."""

from __future__ import annotations

import gc
import pickle
import threading
import weakref

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref

SHAPES = [(1, 1), (5, 70), (8, 64), (9, 128), (17, 200), (33, 1000), (3, 0), (0, 64)]


def _signs(n, k, seed=0):
    return np.random.default_rng(seed + 31 * n + k).standard_normal((n, k))


def _canonical_ref(w):
    """A weak reference to the canonical array the weights hold now."""
    assert w._bits is not None
    return weakref.ref(w._bits)


@pytest.mark.parametrize("n,k", SHAPES)
def test_bits_rebuilt_from_the_handle_bit_for_bit(on_isa, n, k):
    w = tk.pack_weights(_signs(n, k))
    original = w.bits.copy()
    x = np.random.default_rng(1).standard_normal((2, k)).astype(np.float32)
    tk.binary_matmul(np.ones((1, 64), np.float32), tk.pack_weights(np.ones((1, 64))))  # something ran on_isa
    y = tk.binary_matmul(x, w)  # builds the handle: the canonical rows go
    assert w._bits is None and w._handle is not None
    again = w.bits
    assert again.dtype == np.uint64 and again.shape == original.shape and not again.flags.writeable
    np.testing.assert_array_equal(again, original)
    np.testing.assert_array_equal(tk.binary_matmul(x, w), y)
    np.testing.assert_array_equal(y, ref.binary_matmul(x, w))


def test_canonical_copy_is_freed_and_accounted():
    w = tk.pack_weights(_signs(300, 1000), group_size=128)
    logical = w.nbytes
    canonical = _canonical_ref(w)
    scales = weakref.ref(w._group_scale)
    words = 300 * 16 * 8
    assert w._resident_nbytes() == logical  # the canonical rows and the scales, no handle yet
    tk.binary_weight_matmul(np.ones(1000, np.float32), w)
    gc.collect()
    assert canonical() is None  # the array itself is gone, not only our reference
    assert scales() is None and w._group_scale is None
    held = w._resident_nbytes()
    assert w.nbytes == logical  # the logical size is unchanged
    # the handle (panels of TAKANE_PANEL_ROWS = 8 rows: 304 rows here, and the group scales
    # it carries, ceil(1000/128) = 8 per row, panel-major) and the scales the Python object
    # keeps for its users (group_scale), no second copy of the signs
    # it carries, ceil(1000/128) = 8 per row, panel-major) only: no second copy of the signs,
    # nor of the scales (the row-major group_scale array is released too)
    assert logical - words == 300 * 8 * 4  # pack_weights(group_size=...): group scales only
    assert held == 304 * 16 * 8 + 304 * 8 * 4
    b1, b2 = w.bits, w.bits
    assert b1 is not b2  # rebuilt on demand, never cached
    g1, g2 = w.group_scale, w.group_scale
    assert g1 is not g2
    del b1, b2, g1, g2
    assert w._resident_nbytes() == held


def test_arrays_the_user_passed_are_not_released_or_changed():
    src = tk.pack_bits(_signs(12, 130))
    src.flags.writeable = False
    w = tk.PackedWeights(src, 130)
    tk.binary_matmul(np.ones(130, np.float32), w)
    assert w._bits is None
    np.testing.assert_array_equal(w.bits, src)  # the user's array is theirs, untouched
    held = w.bits  # a rebuilt array a user holds stays valid
    tk.binary_matmul(np.ones(130, np.float32), w)
    np.testing.assert_array_equal(held, src)


def test_everything_that_reads_the_rows_after_release(tmp_path):
    rng = np.random.default_rng(5)
    w = tk.pack_weights(rng.standard_normal((24, 256)), group_size=128)
    fresh = tk.PackedWeights(w.bits, 256, group_scale=w.group_scale, group_size=128)
    q = tk.to_q1_0(fresh)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    tk.binary_weight_matmul(x, w)
    assert w._bits is None and fresh._bits is not None
    assert w == fresh and fresh == w
    np.testing.assert_array_equal(tk.to_q1_0(w), q)
    assert pickle.loads(pickle.dumps(w)) == fresh
    w.save(tmp_path / "w.npz")
    assert tk.PackedWeights.load(tmp_path / "w.npz") == fresh
    np.testing.assert_array_equal(ref.binary_weight_matmul(x, w), ref.binary_weight_matmul(x, fresh))
    assert "nbytes=" in repr(w) and (w.n, w.k) == (24, 256)
    op = tk.Matmul(w)  # a bound op on released weights keeps no canonical copy either
    assert op._bits is None
    np.testing.assert_array_equal(op(x), ref.binary_matmul(x, fresh))


def test_q1_0_adopted_weights_release_too():
    w = tk.pack_weights(_signs(16, 384), group_size=128)
    q = tk.to_q1_0(w)
    back = tk.from_q1_0(q, 384)
    canonical = _canonical_ref(back)
    tk.binary_weight_matmul(np.ones(384, np.float32), back, activations="q8_0")
    gc.collect()
    assert canonical() is None
    np.testing.assert_array_equal(back.bits, w.bits)
    np.testing.assert_array_equal(tk.to_q1_0(back), q)


def test_release_races_with_readers():
    """Threads reading bits while others build the handle: every read is exact."""
    errors = []
    for seed in range(4):
        w = tk.pack_weights(_signs(40, 300, seed))
        want = tk.PackedWeights(w.bits, 300).bits.copy()
        x = np.ones((2, 300), np.float32)
        start = threading.Barrier(6)

        def reader():
            start.wait()
            for _ in range(50):
                if not np.array_equal(w.bits, want):
                    errors.append("bits")

        def caller():
            start.wait()
            for _ in range(20):
                tk.binary_matmul(x, w)
                if not np.array_equal(w.bits, want):
                    errors.append("bits after a call")

        threads = [threading.Thread(target=reader) for _ in range(3)] + [
            threading.Thread(target=caller) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert w._bits is None
    assert not errors


# ---- handles that carry the group scales (takane_weights_create_grouped) ----------------------

def _per_call(x, w, mode, threads):
    """The path before carried scales: a handle of the signs only, the row-major group
    scales passed with every call (takane_binary_weight_matmul_prepacked_ex)."""
    from takane_kernels._capi import weights_handle
    from takane_kernels._takane import ffi, lib

    h = weights_handle(w.bits, w.k)
    m = x.shape[0]
    y = np.full((m, w.n), np.nan, np.float32)
    f = lambda a: ffi.NULL if a is None or a.size == 0 else ffi.from_buffer("float[]", a)  # noqa: E731
    act = lib.TAKANE_ACTIVATIONS_Q8_0 if mode == "q8_0" else lib.TAKANE_ACTIVATIONS_F32
    st = lib.takane_binary_weight_matmul_prepacked_ex(
        h, m, f(x), w.k, f(w.in_scale), f(w.scale), f(w.group_scale), w.group_size, ffi.NULL, act,
        ffi.from_buffer("float[]", y), w.n, threads)
    assert st == lib.TAKANE_OK
    return y


@pytest.mark.parametrize("mode", ["float32", "q8_0"])
@pytest.mark.parametrize("n,k,g", [(1, 64, 64), (7, 65, 64), (9, 200, 128), (17, 513, 192), (37, 1100, 256),
                                   (8, 4096, 128), (33, 1000, 128), (5, 130, 1024)])
def test_carried_group_scales_same_bits_as_per_call(on_isa, mode, n, k, g):
    """PackedWeights with group scales hand them to the C handle once; every call on it
    gives the bits the per-call row-major scales gave, on every ISA: padded last panels (n
    not a multiple of 8), partial words and groups, panel and GEMM row tiles (m), threads."""
    rng = np.random.default_rng(n * 7919 + k + g)
    ng = -(-k // g)
    w = tk.PackedWeights(tk.pack_bits(rng.standard_normal((n, k))), k,
                         scale=rng.uniform(0.5, 2, n).astype(np.float32),
                         in_scale=rng.uniform(0.5, 2, k).astype(np.float32),
                         group_scale=rng.uniform(-2, 2, (n, ng)).astype(np.float32), group_size=g)
    for m in (1, 3, 21, 70):
        x = rng.standard_normal((m, k)).astype(np.float32)
        for threads in (1, 2):
            y = tk.binary_weight_matmul(x, w, activations=mode, threads=threads)
            assert w._bits is None and w._carries_group_scale
            np.testing.assert_array_equal(y.view(np.uint32), _per_call(x, w, mode, threads).view(np.uint32))
        np.testing.assert_array_equal(tk.Linear(w, activations=mode)(x[0]).view(np.uint32),
                                      _per_call(x[:1], w, mode, 1)[0].view(np.uint32))
    # and within the documented bound of the oracle
    assert (np.abs(y - ref.binary_weight_matmul(x, w, activations=mode))
            <= ref.binary_weight_matmul_error_bound(x, w, activations=mode)).all()


def test_carried_group_scales_accounting_and_rows():
    rng = np.random.default_rng(3)
    n, k, g = 13, 300, 128
    w = tk.pack_weights(rng.standard_normal((n, k)), group_size=g)
    bits, gs = w.bits.copy(), w.group_scale.copy()
    tk.binary_weight_matmul(np.ones(k, np.float32), w)
    # the handle only: 16 rows of panels (5 words each) and of carried scales (3 per row)
    assert w._resident_nbytes() == 16 * 5 * 8 + 16 * 3 * 4
    np.testing.assert_array_equal(w.bits, bits)
    np.testing.assert_array_equal(w.group_scale, gs)
    # the W1A1 path reads the signs only, as before
    x = rng.standard_normal((2, k)).astype(np.float32)
    np.testing.assert_array_equal(tk.binary_matmul(x, w), ref.binary_matmul(x, w))


# ---- the row-major group scales released too (takane_weights_get_group_scales) -----------

def _group_scale_contract(a, want):
    """What group_scale always gave: an owned, C-contiguous, read-only float32 (N, ng)
    array, here bit for bit ``want``."""
    assert a.dtype == np.float32 and a.shape == want.shape
    assert a.flags.c_contiguous and not a.flags.writeable
    np.testing.assert_array_equal(a.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("n,k,g", [(1, 1, 64), (5, 70, 64), (9, 128, 128), (17, 200, 192), (33, 1000, 128),
                                   (3, 0, 64), (0, 64, 64), (4, 130, 1024)])
def test_group_scale_rebuilt_from_the_handle_bit_for_bit(on_isa, n, k, g):
    rng = np.random.default_rng(n * 31 + k + g)
    gs = rng.standard_normal((n, -(-k // g))).astype(np.float32)
    if gs.size > 2:
        gs.flat[1], gs.flat[2] = -0.0, np.float32(1e-42)  # the sign of zero, a subnormal
    w = tk.PackedWeights(tk.pack_bits(_signs(n, k)), k, group_scale=gs, group_size=g,
                         scale=rng.uniform(0.5, 2, n).astype(np.float32))
    before = w.group_scale
    _group_scale_contract(before, gs)
    logical = w.nbytes
    x = rng.standard_normal((2, k)).astype(np.float32)
    y = tk.binary_weight_matmul(x, w)  # builds the handle
    assert w._bits is None
    # released exactly when the handle carries them (rows and columns); an empty array stays
    assert (w._group_scale is None) == (gs.size > 0)
    _group_scale_contract(w.group_scale, gs)
    assert w.nbytes == logical and w.group_size == g
    np.testing.assert_array_equal(tk.binary_weight_matmul(x, w), y)
    np.testing.assert_array_equal(ref.binary_weight_matmul(x, w), ref.binary_weight_matmul(x, tk.PackedWeights(
        w.bits, k, group_scale=gs, group_size=g, scale=w.scale)))


def test_group_scale_after_release_everywhere(tmp_path):
    """Everything that reads group_scale — equality, pickling, save/load, to_q1_0, the
    reference, Linear built after the release, the torch state dict — sees the same values."""
    rng = np.random.default_rng(8)
    n, k = 24, 384
    w = tk.pack_weights(rng.standard_normal((n, k)), group_size=128)
    fresh = tk.PackedWeights(w.bits, k, group_scale=w.group_scale, group_size=128)
    gs = fresh.group_scale
    x = rng.standard_normal((3, k)).astype(np.float32)
    tk.binary_weight_matmul(x, w, activations="q8_0")
    assert w._group_scale is None and fresh._group_scale is not None
    assert w == fresh and fresh == w
    assert w != tk.PackedWeights(w.bits, k, group_scale=gs * 2, group_size=128)
    back = pickle.loads(pickle.dumps(w))
    assert back == fresh
    _group_scale_contract(back.group_scale, gs)
    w.save(tmp_path / "w.npz")
    loaded = tk.PackedWeights.load(tmp_path / "w.npz")
    assert loaded == fresh
    _group_scale_contract(loaded.group_scale, gs)
    np.testing.assert_array_equal(tk.to_q1_0(w), tk.to_q1_0(fresh))
    np.testing.assert_array_equal(ref.binary_weight_matmul(x, w), ref.binary_weight_matmul(x, fresh))
    for mode in ("float32", "q8_0"):
        np.testing.assert_array_equal(tk.Linear(w, activations=mode)(x), tk.Linear(fresh, activations=mode)(x))
    assert "group_size=128" in repr(w)


def test_q1_0_adopted_weights_release_their_scales():
    w = tk.pack_weights(_signs(16, 384), group_size=128)
    q = tk.to_q1_0(w)
    back = tk.from_q1_0(q, 384)
    gs = back.group_scale.copy()
    scales = weakref.ref(back._group_scale)
    tk.binary_weight_matmul(np.ones(384, np.float32), back, activations="q8_0")
    gc.collect()
    assert scales() is None
    _group_scale_contract(back.group_scale, gs)
    np.testing.assert_array_equal(tk.to_q1_0(back), q)
    # held: the handle only (16 rows, 6 words, 3 scales per row)
    assert back._resident_nbytes() == 16 * 6 * 8 + 16 * 3 * 4


def test_exact_accounting_with_every_scale():
    rng = np.random.default_rng(11)
    n, k, g = 21, 700, 192
    w = tk.PackedWeights(tk.pack_bits(rng.standard_normal((n, k))), k,
                         scale=rng.uniform(0.5, 2, n).astype(np.float32),
                         in_scale=rng.uniform(0.5, 2, k).astype(np.float32),
                         group_scale=rng.uniform(-2, 2, (n, 4)).astype(np.float32), group_size=g)
    assert w.nbytes == n * 11 * 8 + n * 4 + k * 4 + n * 4 * 4
    assert w._resident_nbytes() == w.nbytes  # nothing built yet: the arrays themselves
    tk.binary_weight_matmul(np.ones(k, np.float32), w)
    # the handle (24 rows: 11 words and 4 carried scales each) + scale + in_scale, once each
    assert w._resident_nbytes() == 24 * 11 * 8 + 24 * 4 * 4 + n * 4 + k * 4


def test_group_scale_release_races_with_readers():
    """Threads reading group_scale (and bits) while others build the handle: every read
    is exact, and the scales end up released."""
    errors = []
    for seed in range(4):
        w = tk.pack_weights(_signs(40, 300, seed), group_size=64)
        want_gs, want_bits = w.group_scale.copy(), w.bits.copy()
        x = np.ones((2, 300), np.float32)
        start = threading.Barrier(6)

        def reader():
            start.wait()
            for _ in range(50):
                g = w.group_scale
                if g.dtype != np.float32 or g.flags.writeable or not np.array_equal(g.view(np.uint32),
                                                                                     want_gs.view(np.uint32)):
                    errors.append("group_scale")
                if not np.array_equal(w.bits, want_bits):
                    errors.append("bits")

        def caller():
            start.wait()
            for _ in range(20):
                tk.binary_weight_matmul(x, w, activations="q8_0")
                if not np.array_equal(w.group_scale, want_gs):
                    errors.append("group_scale after a call")
                w._resident_nbytes()

        threads = [threading.Thread(target=reader) for _ in range(3)] + [
            threading.Thread(target=caller) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert w._bits is None and w._group_scale is None
    assert not errors


def test_torch_state_dict_after_release():
    torch = pytest.importorskip("torch")
    from takane_kernels.torch import BinaryLinear

    rng = np.random.default_rng(12)
    w = tk.pack_weights(rng.standard_normal((10, 256)), group_size=128)
    gs = w.group_scale.copy()
    layer = BinaryLinear(w, mode="q8_0")
    x = torch.from_numpy(rng.standard_normal((2, 256)).astype(np.float32))
    y = layer(x)
    assert w._group_scale is None  # the layer's call built the handle
    state = layer.state_dict()
    twin = BinaryLinear(tk.pack_weights(rng.standard_normal((10, 256)), group_size=128), mode="q8_0")
    twin.load_state_dict(state)
    _group_scale_contract(twin.weights.group_scale, gs)
    assert twin.weights == w
    torch.testing.assert_close(twin(x), y, rtol=0, atol=0)


def test_gguf_loaded_weights_release_and_save_the_same_bytes(tmp_path):
    from takane_kernels import gguf as tg

    rng = np.random.default_rng(13)
    w = tk.pack_weights(rng.standard_normal((12, 384)), group_size=128)
    tg.save(tmp_path / "a.gguf", {"w": w}, arch="llama")
    loaded = tg.load(tmp_path / "a.gguf")["w"]
    # gguf.load builds the handle from the Q1_0 bytes: nothing row-major is ever held
    assert loaded._bits is None and loaded._group_scale is None and loaded._handle is not None
    gs = loaded.group_scale.copy()
    tk.binary_weight_matmul(np.ones((2, 384), np.float32), loaded, activations="q8_0")
    _group_scale_contract(loaded.group_scale, gs)
    tg.save(tmp_path / "b.gguf", {"w": loaded}, arch="llama")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
