"""Format conversion benchmarks: GGUF Q1_0 in and out, and loading a GGUF file.

One group per shape (an LLM FFN matrix, 11008 x 4096 as Q1_0: 6.3 MB), members side by
side: ``from_q1_0`` (C copy into a new PackedWeights), ``to_q1_0`` (C copy), and the plain
numpy equivalent of the import (strided-view copies of the sign bytes and of d, float16 ->
float32; no PackedWeights) for scale. ``gguf_load`` reads a file of four such matrices
(25 MB) with ``takane_kernels.gguf.load``. Every result is checked once against the other
route (bytes identical after a round trip). ``gguf_load_model`` loads a Bonsai-1.7B-shaped
Q1_0 file (246 MB, written by ``python -m takane_kernels llm --model bonsai-1.7b --out``)
in a fresh process per round (bench/gguf_load_rss.py): MB/s (wall and per CPU second) and
the peak RSS growth over the file size (issue 21's targets: >= 300 MB/s, <= 1.3x).

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


@pytest.mark.benchmark(group="gguf load model")
def test_gguf_load_model(benchmark, tmp_path_factory):
    """A whole Bonsai-1.7B-shaped Q1_0 file, each round in a new process (load time and
    peak memory as a user's program sees them; issue 21)."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    pytest.importorskip("takane_kernels.gguf", reason="the gguf extra is not installed")
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from gguf_load_rss import measure_once

    path = str(tmp_path_factory.mktemp("gguf") / "bonsai-1.7b.gguf")
    subprocess.run([sys.executable, "-m", "takane_kernels", "llm", "--model", "bonsai-1.7b", "--out", path],
                   check=True, capture_output=True)
    runs = []
    benchmark.pedantic(lambda: runs.append(measure_once(path)), rounds=3, iterations=1)
    size = os.path.getsize(path)
    assert all(r["tensors"] == runs[0]["tensors"] > 0 for r in runs)
    best = min(r["seconds"] for r in runs)
    cpu = min(r["cpu_seconds"] for r in runs)
    benchmark.extra_info.update({
        "file_bytes": size, "load_s_best": best, "MB_per_s": size / best / 1e6, "cpu_s_best": cpu,
        "MB_per_cpu_s": size / cpu / 1e6,
        "peak_rss_ratio": max(r["peak_growth_bytes"] for r in runs) / size,
        "load_average": os.getloadavg()[0], "runs": json.dumps(runs)})
