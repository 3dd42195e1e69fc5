"""Cold ternary decode on BitNet-2B4T's shapes (issue 23): a stack of whole transformer-layer
weight sets (q, k, v, o, gate, up, down; hidden 2560, FFN 6912, 5 KV heads of 128) over
300 MB, one token = one int8_row GEMV per matrix, against tk.isa.dram_bandwidth(threads)
measured in the same run, interleaved (7 rounds, medians). Bytes counted: 2 bits per weight
plus the group scales. One thread is timed in the thread's CPU time (time given to other
processes does not count, as the probe does); more threads in wall time.

    python bench/ternary_decode_bitnet.py [THREADS] [GROUP_SIZE]     (GROUP_SIZE 0: none)
"""
import os, sys, time, numpy as np, takane_kernels as tk
H, F, KV = 2560, 6912, 640
SHAPES = [(H, H), (KV, H), (KV, H), (H, H), (F, H), (F, H), (H, F)]  # (N, K)
rng = np.random.default_rng(0)
planes = []
for n, k in SHAPES:
    codes = rng.integers(-1, 2, size=(n, k))
    planes.append((np.packbits(codes > 0, axis=-1, bitorder="little").view("<u8").astype(np.uint64),
                   np.packbits(codes != 0, axis=-1, bitorder="little").view("<u8").astype(np.uint64), k))
per_layer = sum(n * k for n, k in SHAPES) * 2 / 8  # 2 bits per weight
nl = int(-(-300e6 // per_layer))
G = int(sys.argv[2]) if len(sys.argv) > 2 else 0
def mk(s, z, k):
    n = s.shape[0]
    kw = dict(group_scale=np.ones((n, -(-k // G)), np.float32), group_size=G) if G else dict(tensor_scale=0.8)
    tw = tk.TernaryWeights(s, z, k, **kw); tw._prepacked(); return tw
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
layers = [[tk.Linear(mk(s, z, k), activations="int8_row", threads=threads) for s, z, k in planes] for _ in range(nl)]
scale_bytes = sum(n * -(-k // G) * 4 for n, k in SHAPES) if G else 0
xs = {k: rng.standard_normal(k).astype(np.float32) for k in (H, F)}
tok, dram = [], []
for r in range(7):
    dram.append(tk.isa.dram_bandwidth(threads))
    clock = time.thread_time if threads == 1 else time.perf_counter  # 1 thread: CPU time (load)
    t = clock()
    for L in layers:
        for op, (n, k) in zip(L, SHAPES):
            op(xs[k])
    tok.append((clock() - t) / nl)
tb = np.median(tok); d = np.median(dram)
gbps = (per_layer + scale_bytes) / tb / 1e9
print(f"threads {threads} G {G}: {nl} layers, {tb*1e6:.0f} us/layer median (best {min(tok)*1e6:.0f}), "
      f"{gbps:.1f} GB/s = {gbps/(d/1e9)*100:.0f}% of DRAM probe {d/1e9:.1f} GB/s (median of {len(dram)}); load {os.getloadavg()}")
