"""Format conversion benchmarks: GGUF Q1_0 in and out, and loading a GGUF file.

One group per shape (an LLM FFN matrix, 11008 x 4096 as Q1_0: 6.3 MB), members side by
side: ``from_q1_0`` (C copy into a new PackedWeights), ``to_q1_0`` (C copy), and the plain
numpy equivalent of the import (strided-view copies of the sign bytes and of d, float16 ->
float32; no PackedWeights) for scale. ``gguf_load`` reads a file of four such matrices
(25 MB) with ``takane_kernels.gguf.load``. Every result is checked once against the other
route (bytes identical after a round trip).

    python -m pytest bench/test_bench_formats.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""

import numpy as np
import pytest

import takane_kernels as tk

N, K = 11008, 4096
_cache = {}


def q1_0_data():
    if "q" not in _cache:
        rng = np.random.default_rng(0)
        q = rng.integers(0, 256, (N, K // 128, 18), dtype=np.uint8)
        q[:, :, :2] = rng.uniform(0.01, 1, (N, K // 128, 1)).astype("<f2").view(np.uint8)
        _cache["q"] = q.reshape(N, -1)
        _cache["w"] = tk.from_q1_0(_cache["q"], K)
    return _cache["q"], _cache["w"]


def numpy_import(q):
    b = q.reshape(N, K // 128, 18)
    bits = np.ascontiguousarray(b[:, :, 2:]).view("<u8").reshape(N, K // 64)
    d = np.ascontiguousarray(b[:, :, :2]).view("<f2")[..., 0].astype(np.float32)
    return bits, d


@pytest.mark.benchmark(group=f"q1_0 {N}x{K}")
def test_from_q1_0(benchmark):
    q, w = q1_0_data()
    got = benchmark(tk.from_q1_0, q, K)
    assert got == w
    bits, d = numpy_import(q)
    assert np.array_equal(got.bits, bits) and np.array_equal(got.group_scale, d)
    benchmark.extra_info["q1_0_bytes"] = q.nbytes


@pytest.mark.benchmark(group=f"q1_0 {N}x{K}")
def test_numpy_strided_import(benchmark):
    q, w = q1_0_data()
    bits, d = benchmark(numpy_import, q)
    assert np.array_equal(bits, w.bits)


@pytest.mark.benchmark(group=f"q1_0 {N}x{K}")
def test_to_q1_0(benchmark):
    q, w = q1_0_data()
    out = benchmark(tk.to_q1_0, w)
    assert out.tobytes() == q.tobytes()


@pytest.mark.benchmark(group="gguf load")
def test_gguf_load(benchmark, tmp_path):
    tg = pytest.importorskip("takane_kernels.gguf", reason="the gguf extra is not installed")
    q, w = q1_0_data()
    tensors = {f"blk.{i}.ffn_up.weight": w for i in range(4)}
    path = tmp_path / "m.gguf"
    tg.save(path, tensors, arch="llama")
    got = benchmark(tg.load, path)
    assert all(got[name] == w for name in tensors)
    benchmark.extra_info["file_bytes"] = path.stat().st_size
