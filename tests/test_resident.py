"""One resident copy (issue 21): once the kernels have built a PackedWeights' C handle,
the canonical rows are released and ``bits`` is rebuilt from the handle — exactly, on every
ISA, from many threads — and everything that reads the rows behaves as before."""

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
    words = 300 * 16 * 8
    assert w._resident_nbytes() == logical  # the canonical rows and the scales, no handle yet
    tk.binary_weight_matmul(np.ones(1000, np.float32), w)
    gc.collect()
    assert canonical() is None  # the array itself is gone, not only our reference
    held = w._resident_nbytes()
    assert w.nbytes == logical  # the logical size is unchanged
    # the handle (panels of TAKANE_PANEL_ROWS = 8 rows: 304 rows here, and the group scales
    # it carries, ceil(1000/128) = 8 per row, panel-major) and the scales the Python object
    # keeps for its users (group_scale), no second copy of the signs
    assert held == 304 * 16 * 8 + 304 * 8 * 4 + (logical - words)
    b1, b2 = w.bits, w.bits
    assert b1 is not b2  # rebuilt on demand, never cached
    del b1, b2
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
    # the handle: 16 rows of panels (5 words each) and of carried scales (3 per row); the
    # Python-side group_scale (kept for users) counted once more in nbytes
    assert w._resident_nbytes() == 16 * 5 * 8 + 16 * 3 * 4 + gs.nbytes
    np.testing.assert_array_equal(w.bits, bits)
    np.testing.assert_array_equal(w.group_scale, gs)
    # the W1A1 path reads the signs only, as before
    x = rng.standard_normal((2, k)).astype(np.float32)
    np.testing.assert_array_equal(tk.binary_matmul(x, w), ref.binary_matmul(x, w))
