"""gguf.load builds each Q1_0 tensor's C handle straight from the file's bytes (issue 21):
the loaded weights hold no canonical rows or row-major scales at any time, and are equal —
bits, scales, every op's results bit for bit, on every ISA — to weights made the old way
(from_q1_0: canonical rows, the handle built from them on first use)."""

import pickle

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import takane_kernels as tk  # noqa: E402
import takane_kernels.gguf as tg  # noqa: E402
from takane_kernels import _q1_0  # noqa: E402
from test_q1_0 import q1_0_bytes  # noqa: E402

Q1_0 = gguf.GGMLQuantizationType.Q1_0


def _write(path, tensors):
    w = gguf.GGUFWriter(str(path), "llama")
    for name, q in tensors.items():
        w.add_tensor(name, q, raw_dtype=Q1_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _shapes():  # rows not a multiple of 8 (the panels' padding), one and several blocks
    return [(1, 128), (7, 256), (9, 384), (40, 1024)]


def test_loaded_q1_0_holds_only_the_handle(tmp_path):
    rng = np.random.default_rng(0)
    qs = {f"w{i}": q1_0_bytes(rng, n, k) for i, (n, k) in enumerate(_shapes())}
    _write(tmp_path / "m.gguf", qs)
    got = tg.load(tmp_path / "m.gguf")
    for name, q in qs.items():
        w = got[name]
        k = q.shape[1] // 18 * 128
        # no canonical copy exists: the handle is the weights' only storage
        assert w._bits is None and w._group_scale is None and w._handle is not None
        assert w._resident_nbytes() == tk._capi.handle_nbytes(w._handle)
        old = tk.from_q1_0(q, k)
        assert old._bits is not None  # the old route keeps rows until first use
        assert w == old and (w.n, w.k, w.group_size) == (old.n, old.k, 128)
        np.testing.assert_array_equal(w.bits, old.bits)
        np.testing.assert_array_equal(w.group_scale, old.group_scale)
        assert tk.to_q1_0(w).tobytes() == q.tobytes()  # bytes back unchanged
        assert pickle.loads(pickle.dumps(w)) == old


def test_loaded_q1_0_results_bit_identical(tmp_path, on_isa):
    """Every op on the handle made from the Q1_0 bytes gives the same bits as on the handle
    made from canonical rows + group scales (the old load route), on the forced ISA."""
    rng = np.random.default_rng(1)
    qs = {f"w{i}": q1_0_bytes(rng, n, k, d=rng.uniform(-2, 2, (n, k // 128)).astype(np.float16))
          for i, (n, k) in enumerate(_shapes())}
    _write(tmp_path / "m.gguf", qs)
    got = tg.load(tmp_path / "m.gguf")
    for name, q in qs.items():
        k = q.shape[1] // 18 * 128
        w, old = got[name], tk.from_q1_0(q, k)
        for m in (1, 3, 8):
            x = rng.standard_normal((m, k)).astype(np.float32)
            for mode in ("float32", "q8_0"):
                np.testing.assert_array_equal(tk.binary_weight_matmul(x, w, activations=mode),
                                              tk.binary_weight_matmul(x, old, activations=mode))
            np.testing.assert_array_equal(tk.binary_matmul(x, w), tk.binary_matmul(x, old))


def test_prepacked_import_checks_like_from_q1_0():
    rng = np.random.default_rng(2)
    q = q1_0_bytes(rng, 3, 256)
    strided = np.zeros((3, 2 * q.shape[1]), np.uint8)[:, ::2]
    strided[...] = q
    ro = q.copy()
    ro.flags.writeable = False  # a read-only view of a mapped file is the loader's input
    for data in (strided, ro):
        assert _q1_0._from_q1_0_prepacked(data, 256) == tk.from_q1_0(q, 256)
    w = _q1_0._from_q1_0_prepacked(np.zeros((0, 36), np.uint8), 256)  # no rows: the plain route
    assert (w.n, w.k, w.group_scale.shape) == (0, 256, (0, 2))
    bad = q.copy()
    bad[1, 18:20] = np.array([np.inf], "<f2").view(np.uint8)
    with pytest.raises(ValueError, match="row 1, block 1 is inf"):
        _q1_0._from_q1_0_prepacked(bad, 256)
    with pytest.raises(ValueError, match="multiple of 128"):
        _q1_0._from_q1_0_prepacked(q, 200)
    with pytest.raises(ValueError, match="expected"):
        _q1_0._from_q1_0_prepacked(q[:, :18], 256)
    with pytest.raises(TypeError, match="uint8"):
        _q1_0._from_q1_0_prepacked(q.astype(np.int8), 256)


def test_load_names_the_tensor_with_a_non_finite_scale(tmp_path):
    q = q1_0_bytes(np.random.default_rng(3), 2, 128)
    q[0, :2] = np.array([np.nan], "<f2").view(np.uint8)
    _write(tmp_path / "m.gguf", {"blk.3.ffn_up.weight": q})
    with pytest.raises(ValueError, match=r"'blk.3.ffn_up.weight': from_q1_0: block scale d of row 0, block 0"):
        tg.load(tmp_path / "m.gguf")
