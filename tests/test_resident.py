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
    # the handle (panels of TAKANE_PANEL_ROWS = 8 rows: 304 rows here) and the scales, no
    # second copy of the signs
    assert held == 304 * 16 * 8 + (logical - words)
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
