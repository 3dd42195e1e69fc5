"""Ternary prefill on BitNet-2B4T's shapes (issue 23): M activation rows (int8_row, BitNet's
per-token int8) through one transformer layer's matrices (q, k, v, o, gate, up, down; hidden
2560, FFN 6912, 5 KV heads of 128) plus 1/30 of the 128,256 x 2560 output projection, with
group scales of 256 as `llm --ternary` builds them (0: one scale per tensor). One thread,
the calling thread's CPU time (time given to other processes does not count), best of 5
(3 for the output projection), warm; G MAC/s per matrix and for the layer against
tk.isa.peak_int8() of the same run, and the prefill tokens/s of 30 such layers.

    python bench/ternary_prefill_bitnet.py [M,M,...] [GROUP_SIZE]     (default 128 256)
"""
import sys, time, numpy as np, takane_kernels as tk
H, F, KV, VOCAB = 2560, 6912, 640, 128256
SHAPES = {"q": (H, H), "k": (KV, H), "v": (KV, H), "o": (H, H), "gate": (F, H), "up": (F, H), "down": (H, F),
          "output": (VOCAB, H)}  # (N, K)
ms = [int(a) for a in sys.argv[1].split(",")] if len(sys.argv) > 1 else [128]
G = int(sys.argv[2]) if len(sys.argv) > 2 else 256
rng = np.random.default_rng(0)
peak = tk.isa.peak_int8()
print(f"{tk.isa.active()}, int8 peak {peak / 1e9:.0f} GMAC/s (tk.isa.peak_int8), group size {G or 'none'}")
for m in ms:
    tot_t = tot_mac = 0.0
    for name, (n, k) in SHAPES.items():
        codes = rng.integers(-1, 2, size=(n, k))
        s = np.packbits(codes > 0, axis=-1, bitorder="little").view("<u8").astype(np.uint64)
        z = np.packbits(codes != 0, axis=-1, bitorder="little").view("<u8").astype(np.uint64)
        kw = dict(group_scale=np.full((n, -(-k // G)), 0.8, np.float32), group_size=G) if G else dict(tensor_scale=0.8)
        op = tk.Linear(tk.TernaryWeights(s, z, k, **kw), activations="int8_row", threads=1)
        x = rng.standard_normal((m, k)).astype(np.float32)
        op(x)
        best = float("inf")
        for _ in range(3 if name == "output" else 5):
            t0 = time.thread_time()
            op(x)
            best = min(best, time.thread_time() - t0)
        share = 1 / 30 if name == "output" else 1.0
        tot_t += share * best
        tot_mac += share * m * n * k
        print(f"  M={m} {name:6s} {n}x{k}: {best * 1e3:7.2f} ms {m * n * k / best / 1e9:4.0f} GMAC/s "
              f"{100 * m * n * k / best / peak:3.0f}% of peak")
    print(f"M={m}: layer {tot_t * 1e3:.2f} ms CPU, {tot_mac / tot_t / 1e9:.0f} GMAC/s = "
          f"{100 * tot_mac / tot_t / peak:.0f}% of the int8 peak; prefill {m / (30 * tot_t):.1f} tokens/s (1 core)")
