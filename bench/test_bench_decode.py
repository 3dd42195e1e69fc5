"""Cold W1A1 GEMV (decode) benchmarks: weights streaming from DRAM (DESIGN §8, cold).

Each group is one weight shape, run as a stack of layers whose weights together are >= 256 MB
(each its own PackedWeights, so nothing stays in the 32 MB-class caches between layers); one
benchmark round is one "token": every layer once, M = 1. Members: ``binary_matmul`` with packed
activations and ``binary_linear`` with float activations (binarized in the call, row-scale
epilogue) on the best ISA with 1 and 2 threads, each supported ISA on 1 thread, and the DRAM read
bandwidth itself (the C probe tk.isa.dram_bandwidth over a 256 MB buffer, 1 and 2 threads) as members of the same
group, so the ratio is measured under the same machine load. ``extra_info``: ``weight_GB_per_s``
(bytes of the re-tiled weights streamed per second), ``dram_GB_per_s`` (measured right before
the member, same thread count) and ``pct_dram``. Each takane member's first layer is checked
against numpy once.

    python -m pytest bench/test_bench_decode.py --benchmark-only --benchmark-columns=median,iqr,rounds

With ``--benchmark-disable`` (CI) the stacks have 2 layers: the code paths run, nothing is timed.
"""

import numpy as np
import pytest

import takane_kernels as tk

STACK_BYTES = 256 * 2**20
SHAPES = [(4096, 4096), (11008, 4096), (2048, 5632)]  # (N, K): square, LLaMA-7B FFN up, 1B FFN down
BEST = tk.isa.supported()[0]

_stack = {}
_dram_buf = {}


def dram_buf():
    if "buf" not in _dram_buf:
        _dram_buf["buf"] = np.ones(STACK_BYTES // 8, dtype=np.int64)
    return _dram_buf["buf"]


def stack(shape, layers):
    key = (shape, layers)
    if key not in _stack:
        _stack.clear()  # one stack in memory at a time
        n, k = shape
        rng = np.random.default_rng(n + k)
        ws = []
        for _ in range(layers):
            bits = rng.integers(0, 2**64 - 1, size=(n, (k + 63) // 64), dtype=np.uint64, endpoint=True)
            ws.append(tk.PackedWeights(bits, k, scale=rng.uniform(0.5, 1.5, n).astype(np.float32)))
        x = rng.standard_normal(k).astype(np.float32)
        _stack[key] = (ws, x, tk.pack_bits(x))
    return _stack[key]


MEMBERS = ["takane-1-thread", "takane-2-threads", "linear-1-thread", "linear-2-threads"]
MEMBERS += [f"takane-{isa}" for isa in tk.isa.supported() if isa != BEST]
MEMBERS += ["dram-read-1-thread", "dram-read-2-threads"]
CASES = [(shape, member) for shape in SHAPES for member in MEMBERS]


@pytest.mark.parametrize("shape,member", CASES, ids=[f"{n}x{k}-{mem}" for (n, k), mem in CASES])
def test_decode_cold(benchmark, shape, member):
    n, k = shape
    benchmark.group = f"W1A1 decode GEMV, cold: stack of {n}x{k} layers >= 256 MB"
    threads = 2 if member.endswith("2-threads") else 1
    info = benchmark.extra_info
    if member.startswith("dram-read"):
        buf = dram_buf()

        def read():
            return tk.isa.dram_bandwidth(threads, buf=buf, repeat=1)

        benchmark(read)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None:
            info["dram_GB_per_s"] = buf.nbytes / stats.stats.median / 1e9
        info.update(threads=threads, bytes=buf.nbytes)
        return
    disabled = getattr(benchmark, "disabled", False)
    layer_bytes = n * ((k + 63) // 64) * 8
    layers = 2 if disabled else -(-STACK_BYTES // layer_bytes)
    ws, x, xb = stack(shape, layers)
    isa = member[len("takane-"):] if member[len("takane-"):] in tk.isa.NAMES else BEST
    linear = member.startswith("linear")
    with tk.isa.force(isa):
        for w in ws:
            w._prepacked()  # handles built outside the timing
        if linear:
            def token():
                for w in ws:
                    tk.binary_linear(x, w, threads=threads)
        else:
            def token():
                for w in ws:
                    tk.binary_matmul(xb, w, threads=threads)
        token()
        dram = None if disabled else tk.isa.dram_bandwidth(threads, buf=dram_buf(), repeat=3)
        benchmark(token)
        assert tk.isa.last_used() == isa
        y = tk.binary_matmul(xb, ws[0], threads=threads)
    signs_x = np.where(x >= 0, 1, -1).astype(np.float32)
    signs_w = tk.unpack_bits(ws[0].bits, k).astype(np.float32)
    np.testing.assert_array_equal(y, (signs_w @ signs_x).astype(np.int32))
    info.update(shape=[1, n, k], isa=isa, threads=threads, layers=layers, weight_bytes=layer_bytes * layers)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and dram:
        gbs = layer_bytes * layers / stats.stats.median / 1e9
        info.update(weight_GB_per_s=gbs, dram_GB_per_s=dram / 1e9, pct_dram=100 * gbs / (dram / 1e9))
