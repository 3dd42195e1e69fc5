"""One resident copy of TernaryWeights (as issue 21 did for PackedWeights): once the kernels
have built the C handle, the canonical sign / nonzero planes are released, and ``sign`` /
``nonzero`` are rebuilt from the handle (``takane_ternary_weights_get_planes``) — exactly,
on every ISA, from many threads — and everything that reads them behaves as before."""

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


def _ternary(n, k, seed=0, **kw):
    rng = np.random.default_rng(seed + 31 * n + k)
    return tk.pack_ternary(rng.standard_normal((n, k)), threshold=0.5, **kw)


def _plane_contract(a, want):
    """What sign / nonzero always gave: a C-contiguous read-only uint64 (N, ceil(K/64))
    array, here bit for bit ``want``."""
    assert a.dtype == np.uint64 and a.shape == want.shape
    assert a.flags.c_contiguous and not a.flags.writeable
    np.testing.assert_array_equal(a, want)


@pytest.mark.parametrize("n,k", SHAPES)
def test_planes_rebuilt_from_the_handle_bit_for_bit(on_isa, n, k):
    w = _ternary(n, k)
    sign, nz = w.sign.copy(), w.nonzero.copy()
    x = np.random.default_rng(1).standard_normal((2, k)).astype(np.float32)
    y = tk.binary_weight_matmul(x, w, activations="int8_row")  # builds the handle: the planes go
    assert w._sign is None and w._nonzero is None and w._handle is not None
    _plane_contract(w.sign, sign)
    _plane_contract(w.nonzero, nz)
    assert (w.n, w.k) == (n, k)
    for mode in ("float32", "q8_0", "int8_row"):
        got = tk.binary_weight_matmul(x, w, activations=mode)
        if mode == "int8_row":
            np.testing.assert_array_equal(got, y)
        assert np.all(np.abs(got - ref.binary_weight_matmul(x, w, activations=mode))
                      <= ref.binary_weight_matmul_error_bound(x, w, activations=mode))


def test_planes_are_freed_and_accounted():
    w = _ternary(300, 1000, group_size=256)
    logical = w.nbytes
    s, z = weakref.ref(w._sign), weakref.ref(w._nonzero)
    assert w._resident_nbytes() == logical  # the planes and the scales, no handle yet
    tk.binary_weight_matmul(np.ones(1000, np.float32), w, activations="int8_row")
    gc.collect()
    assert s() is None and z() is None  # the arrays themselves are gone, not only our references
    assert w.nbytes == logical  # the logical size is unchanged
    # the handle: 304 rows (panels of 8), 16 words, two planes; plus the group scales
    assert w._resident_nbytes() == 304 * 16 * 2 * 8 + 300 * 4 * 4
    a, b = w.sign, w.sign
    assert a is not b  # rebuilt on demand, never cached
    del a, b
    assert w._resident_nbytes() == 304 * 16 * 2 * 8 + 300 * 4 * 4


def test_arrays_the_user_passed_are_not_released_or_changed():
    t = _ternary(12, 130)
    sign, nz = t.sign.copy(), t.nonzero.copy()
    sign.flags.writeable = nz.flags.writeable = False
    w = tk.TernaryWeights(sign, nz, 130, tensor_scale=0.5)
    tk.binary_weight_matmul(np.ones(130, np.float32), w)
    assert w._sign is None
    np.testing.assert_array_equal(w.sign, sign)
    held = w.nonzero  # a rebuilt array a user holds stays valid
    tk.binary_weight_matmul(np.ones(130, np.float32), w)
    np.testing.assert_array_equal(held, nz)


def test_everything_that_reads_the_planes_after_release(tmp_path):
    rng = np.random.default_rng(5)
    w = tk.pack_ternary(rng.standard_normal((24, 512)), group_size=256)
    fresh = tk.TernaryWeights(w.sign, w.nonzero, 512, group_scale=w.group_scale, group_size=256)
    dense = fresh.to_dense()
    x = rng.standard_normal((3, 512)).astype(np.float32)
    tk.binary_weight_matmul(x, w, activations="int8_row")
    assert w._sign is None and fresh._sign is not None
    assert w == fresh and fresh == w
    assert w != tk.TernaryWeights(w.sign, w.nonzero, 512, group_scale=w.group_scale * 2, group_size=256)
    np.testing.assert_array_equal(w.to_dense(), dense)
    assert pickle.loads(pickle.dumps(w)) == fresh
    w.save(tmp_path / "w.npz")
    assert tk.TernaryWeights.load(tmp_path / "w.npz") == fresh
    np.testing.assert_array_equal(ref.binary_weight_matmul(x, w), ref.binary_weight_matmul(x, fresh))
    assert "nbytes=" in repr(w) and (w.n, w.k) == (24, 512)
    for mode in ("float32", "q8_0", "int8_row"):
        np.testing.assert_array_equal(tk.Linear(w, activations=mode)(x), tk.Linear(fresh, activations=mode)(x))


def test_gguf_export_after_release_writes_the_same_bytes(tmp_path):
    from takane_kernels import gguf as tg

    rng = np.random.default_rng(13)
    w = tk.pack_ternary(rng.standard_normal((12, 512)), group_size=256)
    tg.save(tmp_path / "a.gguf", {"w": w}, arch="llama")
    tk.binary_weight_matmul(np.ones((2, 512), np.float32), w, activations="int8_row")
    assert w._sign is None
    tg.save(tmp_path / "b.gguf", {"w": w}, arch="llama")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    loaded = tg.load(tmp_path / "b.gguf")["w"]
    tk.binary_weight_matmul(np.ones(512, np.float32), loaded, activations="int8_row")
    assert loaded._sign is None
    np.testing.assert_array_equal(loaded.to_dense(), w.to_dense())


def test_torch_state_dict_after_release():
    torch = pytest.importorskip("torch")
    from takane_kernels.torch import BinaryLinear

    rng = np.random.default_rng(12)
    w = tk.pack_ternary(rng.standard_normal((10, 256)), group_size=256)
    layer = BinaryLinear(w, mode="int8_row")
    x = torch.from_numpy(rng.standard_normal((2, 256)).astype(np.float32))
    y = layer(x)
    assert w._sign is None  # the layer's call built the handle
    state = layer.state_dict()
    twin = BinaryLinear(tk.pack_ternary(rng.standard_normal((10, 256)), group_size=256), mode="int8_row")
    twin.load_state_dict(state)
    assert twin.weights == w
    torch.testing.assert_close(twin(x), y, rtol=0, atol=0)


def test_release_races_with_readers():
    """Threads reading the planes while others build the handle: every read is exact, and
    the planes end up released."""
    errors = []
    for seed in range(4):
        w = _ternary(40, 300, seed)
        want_s, want_z = w.sign.copy(), w.nonzero.copy()
        x = np.ones((2, 300), np.float32)
        start = threading.Barrier(6)

        def reader():
            start.wait()
            for _ in range(50):
                if not (np.array_equal(w.sign, want_s) and np.array_equal(w.nonzero, want_z)):
                    errors.append("planes")
                if not np.array_equal(w.to_dense() != 0, nonzero_dense):
                    errors.append("to_dense")

        def caller():
            start.wait()
            for _ in range(20):
                tk.binary_weight_matmul(x, w, activations="int8_row")
                if not np.array_equal(w.sign, want_s):
                    errors.append("sign after a call")
                w._resident_nbytes()

        nonzero_dense = w.to_dense() != 0
        threads = [threading.Thread(target=reader) for _ in range(3)] + [
            threading.Thread(target=caller) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert w._sign is None and w._nonzero is None
    assert not errors


def test_get_planes_checks_its_arguments():
    from takane_kernels._capi import ternary_handle
    from takane_kernels._takane import ffi, lib

    w = _ternary(10, 130)
    h = ternary_handle(w.sign, w.nonzero, 130)
    s = np.zeros((10, 3), np.uint64)
    z = np.zeros((10, 3), np.uint64)
    ps, pz = ffi.from_buffer("uint64_t[]", s), ffi.from_buffer("uint64_t[]", z)
    get = lib.takane_ternary_weights_get_planes
    assert get(ffi.NULL, 0, 1, ps, pz, 3) == lib.TAKANE_ERR_NULL_POINTER
    assert get(h, -1, 1, ps, pz, 3) == lib.TAKANE_ERR_NEGATIVE_DIMENSION
    assert get(h, 2, 1, ps, pz, 3) == lib.TAKANE_ERR_BAD_STRIDE
    assert get(h, 0, 11, ps, pz, 3) == lib.TAKANE_ERR_BAD_STRIDE
    assert get(h, 0, 2, ps, pz, 2) == lib.TAKANE_ERR_BAD_STRIDE
    assert get(h, 0, 1, ps, ffi.NULL, 3) == lib.TAKANE_ERR_NULL_POINTER
    assert get(h, 3, 3, ffi.NULL, ffi.NULL, 3) == lib.TAKANE_OK  # an empty range writes nothing
    # rows 4..8 into a strided pair of buffers: the rest stays untouched
    wide_s, wide_z = np.full((4, 5), 7, np.uint64), np.full((4, 5), 7, np.uint64)
    assert get(h, 4, 8, ffi.from_buffer("uint64_t[]", wide_s), ffi.from_buffer("uint64_t[]", wide_z), 5) == 0
    np.testing.assert_array_equal(wide_s[:, :3], w.sign[4:8])
    np.testing.assert_array_equal(wide_z[:, :3], w.nonzero[4:8])
    assert (wide_s[:, 3:] == 7).all() and (wide_z[:, 3:] == 7).all()
