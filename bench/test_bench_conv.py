"""Convolution benchmarks: one group per QuickNet binary layer, members side by side.

3x3, stride 1, padding 1, batch 1, packed NHWC input: takane ``binary_conv2d`` per
supported ISA on one thread (one-padding, the fastest form), then on the best ISA: zero
padding, float input (binarized in the call), binarized output, and 2 threads; PyTorch's
float32 ``conv2d`` (NCHW, 1 thread) on the same ±1 data when torch is installed. The
chain group runs QuickNet's 16 binary layers (4 sections x 4 layers, 1.85 G bit-MACs)
through packed outputs. ``extra_info`` records G bit-MACs/s.

    python -m pytest bench/test_bench_conv.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref

# (H = W, C_in = C_out): QuickNet's four sections, and QuickNetSmall's 32-channel one
LAYERS = [(56, 64), (28, 128), (14, 256), (7, 512), (56, 32)]
IDS = [f"{hw}x{hw}x{c}" for hw, c in LAYERS]
BEST = tk.isa.supported()[0]
_cache = {}


def data(layer):
    if layer not in _cache:
        hw, c = layer
        rng = np.random.default_rng(hw * c)
        w = rng.standard_normal((c, 3, 3, c)).astype(np.float32)
        xf = rng.standard_normal((1, hw, hw, c)).astype(np.float32)
        _cache[layer] = dict(w=w, pw=tk.pack_conv_weights(w), xf=xf, xb=tk.pack_bits(xf))
    return _cache[layer]


MEMBERS = [f"takane {n} 1 thread" for n in tk.isa.supported()] + [
    f"takane {BEST} pad 0", f"takane {BEST} float x", f"takane {BEST} bits out", f"takane {BEST} 2 threads",
    "torch float32 conv2d 1 thread",
]


@pytest.mark.parametrize("member", MEMBERS)
@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_conv_layer(benchmark, layer, member):
    hw, c = layer
    benchmark.group = f"binary conv 3x3 {hw}x{hw}x{c}->{c}"
    d = data(layer)
    bitmacs = hw * hw * c * 9 * c
    if member.startswith("torch"):
        torch = pytest.importorskip("torch", reason="PyTorch is not installed")
        xt = torch.from_numpy(np.where(d["xf"] >= 0, 1.0, -1.0).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
        wt = torch.from_numpy(np.where(d["w"] >= 0, 1.0, -1.0).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                benchmark(torch.nn.functional.conv2d, xt, wt, padding=1)
        finally:
            torch.set_num_threads(prev)
    else:
        isa_name = member.split()[1]
        kw = dict(padding=1, pad_value=1, threads=1)
        x = d["xb"]
        if member.endswith("pad 0"):
            kw["pad_value"] = 0
        elif member.endswith("float x"):
            x, kw["pad_value"] = d["xf"], 0
        elif member.endswith("bits out"):
            kw.update(pad_value=0, out_threshold=0.0)
        elif member.endswith("2 threads"):
            kw["threads"] = 2
        with tk.isa.force(isa_name):
            y = benchmark(tk.binary_conv2d, x, d["pw"], **kw)
            assert tk.isa.last_used() == isa_name
        if layer == (7, 512) or hw * c <= 56 * 32:  # the reference is slow: check the small ones
            kw.pop("threads")
            np.testing.assert_array_equal(y, ref.binary_conv2d(x, d["pw"], **kw))
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["G_bitmacs_per_s"] = bitmacs / stats.stats.median / 1e9


@pytest.mark.parametrize("member", [f"takane {n} 1 thread" for n in tk.isa.supported()] + [f"takane {BEST} 2 threads"])
def test_quicknet_chain(benchmark, member):
    benchmark.group = "QuickNet 16 binary layers, chained through packed outputs"
    rng = np.random.default_rng(7)
    layers = [(tk.pack_bits(rng.standard_normal((1, hw, hw, c))), tk.pack_conv_weights(rng.standard_normal((c, 3, 3, c))))
              for hw, c in LAYERS[:4]]
    threads = 2 if member.endswith("2 threads") else 1

    def quicknet():
        for x, pw in layers:
            for _ in range(4):
                x = tk.binary_conv2d(x, pw, padding=1, pad_value=0, out_threshold=0.0, threads=threads)
        return x

    with tk.isa.force(member.split()[1]):
        benchmark(quicknet)
