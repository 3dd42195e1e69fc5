"""``python -m takane_kernels llm``: the linear layers of a 1-bit LLM, decode and prefill.

The matrices of a Llama-shaped decoder — by default a 1B-class shape (hidden 2048, FFN 5632,
22 layers of q, k, v, o, gate, up, down; grouped-query attention widths as TinyLlama-1.1B:
32 heads, 4 KV heads, so k and v are 2048 -> 256) with random ±1 weights and group scales
(group_size 128), or the Q1_0 tensors of a GGUF file (``--gguf PATH``) — run

- token by token (decode, M = 1): every matrix once per token, in model order, the matrices
  of a layer that share an input (q/k/v, gate/up) as one call on their stacked rows
  (``fuse_plan``: 88 calls per token for the 154 matrices, results identical). The stack
  (~150 MB of 1-bit weights) far exceeds the caches, so each token streams every weight
  from DRAM, the regime of real decoding (docs/performance.md, cold);
- as a prefill (M = 128 tokens per call, one pass over the stack),

for three activation modes: ``w1a1`` (``binary_linear``: activations binarized, XNOR +
popcount, row scale), ``q8_0`` (``binary_weight_matmul(..., activations="q8_0")``: llama.cpp's
Q1_0 x Q8_0 arithmetic) and ``float32`` (``binary_weight_matmul``), on each thread count.

Reported: tokens/s of the linear-layer work alone (no attention, norms or sampling), the GB/s
of weight bytes each mode streams against the DRAM read bandwidth measured in the same run
with the same thread count, the weight memory against fp16/fp32, the resident memory of each
model measured as RSS growth (one copy of the signs, the kernels' panels, plus scales), and
llama.cpp's Q1_0 side by side when a build is found (``--llama-cpp DIR`` or env
``TAKANE_LLAMA_CPP``, made by ``bench/build_llamacpp.sh``): its ``takane-ggml-q1-matmul`` runs the same matrix shapes as one
ggml graph of Q1_0 matmuls per token, as llama.cpp runs a model's linear layers.

DRAM bandwidth: numpy's int64 ``sum`` over a 256 MB buffer, split in contiguous slices over
that many Python threads (numpy releases the GIL in the reduction). int64, not float: an int64
sum runs at ~2x DRAM speed from L2 on this class of machine, so it measures memory, while
numpy's float64 pairwise sum is close to compute-bound. numpy rather than a C entry point: no
ABI surface for a measurement; the README compares it with a plain AVX-512 read loop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import takane_kernels as tk
from takane_kernels.programs._report import timed_calls

MODES = ("w1a1", "q8_0", "float32")
GROUP_SIZE = 128
Q1_0_BYTES_PER_BLOCK = 18  # fp16 d + 16 bytes of signs per 128 weights


def llama_shapes(hidden: int, ffn: int, layers: int, heads: int, kv_heads: int) -> list[tuple[str, int, int]]:
    """(name, N, K) of every linear layer of a Llama decoder, in model order."""
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden {hidden} must split into {heads} heads, and heads into {kv_heads} KV heads")
    kv = hidden // heads * kv_heads
    per_layer = [("attn_q", hidden, hidden), ("attn_k", kv, hidden), ("attn_v", kv, hidden),
                 ("attn_output", hidden, hidden), ("ffn_gate", ffn, hidden), ("ffn_up", ffn, hidden),
                 ("ffn_down", hidden, ffn)]
    return [(f"blk.{i}.{name}.weight", n, k) for i in range(layers) for name, n, k in per_layer]


def dram_bandwidth(threads: int, mb: int = 256, repeat: int = 5, buf: np.ndarray | None = None) -> float:
    """Streaming read bandwidth in bytes/s with `threads` threads: the library's C probe
    (takane_kernels.isa.dram_bandwidth: one reader thread per part, started together, the
    best of `repeat` passes). A numpy sum split over Python threads under-read at 2 threads."""
    return tk.isa.dram_bandwidth(threads, mb=mb, repeat=repeat, buf=buf)


def random_weights(shapes, seed: int = 0):
    """Random ±1 bits (zero padding) and positive group scales for each (name, N, K)."""
    rng = np.random.default_rng(seed)
    out = []
    for name, n, k in shapes:
        kw = (k + 63) // 64
        bits = rng.integers(0, 2**64 - 1, size=(n, kw), dtype=np.uint64, endpoint=True)
        if k % 64:
            bits[:, -1] &= np.uint64((1 << (k % 64)) - 1)
        gs = (rng.uniform(0.5, 1.5, size=(n, -(-k // GROUP_SIZE))) * 0.02).astype(np.float32)
        out.append((name, tk.PackedWeights(bits, k, group_scale=gs, group_size=GROUP_SIZE)))
    return out


def _row_scaled(w: tk.PackedWeights) -> tk.PackedWeights:
    """The same signs with one scale per row (mean of its group scales): what the W1A1 layer
    (integer dot, then a row scale) and a build without group-scale kernels can run."""
    scale = None if w.group_scale is None else w.group_scale.mean(axis=1).astype(np.float32)
    return tk.PackedWeights(w.bits, w.k, scale=scale if scale is not None else w.scale)


def _layer_fn(mode: str, threads: int):
    if mode == "w1a1":
        return lambda x, w: tk.binary_linear(x, w, threads=threads)
    if mode == "q8_0":
        return lambda x, w: tk.binary_weight_matmul(x, w, activations="q8_0", threads=threads)
    return lambda x, w: tk.binary_weight_matmul(x, w, threads=threads)


def prepare_mode(mode: str, weights):
    """(the weights this mode runs, a note saying which scales they carry)."""
    if mode == "w1a1":
        return [_row_scaled(w) for _, w in weights], "row scales (the W1A1 integer dot takes no group scales)"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return [w for _, w in weights], "group scales" if weights[0][1].group_scale is not None else "as loaded"


# Matrices of one decoder layer that multiply the same input, fused into one call per token
# (FUSED_GROUPS): attention's q, k, v all read the normed hidden state, the FFN's gate and up
# both read the normed attention output. One call per group instead of one per matrix: the
# small k and v (64 KB each at the default shape) no longer pay a call of their own and too
# little work to be split across threads; the fused matrix is big enough to split; q8_0
# quantizes the shared activations once; and a token makes 88 calls instead of 154. The
# results are those of the separate calls bit for bit: every kernel computes each output row
# from that row's weights and scales and the input alone (y[:, rows of q] = x @ q.T).
FUSED_GROUPS = (("attn_q", "attn_k", "attn_v"), ("ffn_gate", "ffn_up"))


def _kind(name: str) -> str:
    return name.rsplit(".", 2)[-2] if name.count(".") >= 2 else name


def _fusable(ws) -> bool:
    """Weights whose rows can be stacked into one PackedWeights: the same K, no input
    scales, and the same kind of row / group scales (and group size)."""
    a = ws[0]
    return all(w.__class__ is tk.PackedWeights and w.k == a.k and w.in_scale is None
               and (w.scale is None) == (a.scale is None) and (w.group_scale is None) == (a.group_scale is None)
               and w.group_size == a.group_size for w in ws)


def _stack(ws) -> tk.PackedWeights:
    """The rows of ws stacked in order, as one PackedWeights (scales stacked alike)."""
    a = ws[0]
    cat = lambda arrs: None if arrs[0] is None else np.concatenate(arrs)  # noqa: E731
    return tk.PackedWeights(np.concatenate([w.bits for w in ws]), a.k, scale=cat([w.scale for w in ws]),
                            group_scale=cat([w.group_scale for w in ws]), group_size=a.group_size)


def fuse_plan(names, ws):
    """The decode plan: [(weights of one call, [(name, first row, end row), ...])], in model
    order. Consecutive matrices of a FUSED_GROUPS group (same layer, same input) that can be
    stacked become one call; every other matrix is a call of its own."""
    plan, i = [], 0
    while i < len(ws):
        for group in FUSED_GROUPS:
            j = i + len(group)
            if (j <= len(ws) and tuple(_kind(n) for n in names[i:j]) == group
                    and len({n.rsplit(".", 2)[0] for n in names[i:j]}) == 1 and _fusable(ws[i:j])):
                bounds = np.cumsum([0] + [w.n for w in ws[i:j]])
                plan.append((_stack(ws[i:j]), [(n, int(b0), int(b1))
                                               for n, b0, b1 in zip(names[i:j], bounds[:-1], bounds[1:])]))
                i = j
                break
        else:
            plan.append((ws[i], [(names[i], 0, ws[i].n)]))
            i += 1
    return plan


def _streamed_bytes(ws) -> int:
    """Weight bytes one pass reads: the bits (as re-tiled in the handle) and the scales used."""
    return sum(w.nbytes for w in ws)  # PackedWeights.nbytes: canonical bits + scales


def _sign_bytes(w: tk.PackedWeights) -> int:
    """Bytes of w's 1-bit rows, (N, ceil(K/64)) words (without rebuilding them: the weights
    may hold only the kernels' copy)."""
    return w.n * -(-w.k // 64) * 8


def rss_bytes() -> int | None:
    """This process's resident set size now (Linux /proc/self/statm), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _malloc_trim() -> bool:
    """Ask glibc to return the free memory of its heap to the OS (malloc_trim(0)); False
    where there is no glibc. The canonical rows a weight releases once its C handle exists
    are freed, but glibc keeps such freed blocks in its heap (its mmap threshold rises after
    the first large free), so RSS growth alone counts them as if the model held them."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # 1 if it released memory, 0 if none was free
        return True
    except (OSError, AttributeError):
        return False


def resident(label: str, ws, rss_before: int | None) -> dict:
    """The measured RSS growth since ``rss_before`` of a model whose weights ``ws`` are
    prepared (every C handle built, so each holds its one resident copy), next to its 1-bit
    + scale bytes; and the growth once glibc has returned its free heap memory to the OS
    (``rss_growth_trimmed``: what the process really holds; None without glibc). None growth
    where RSS cannot be read."""
    for w in ws:
        w._prepacked()
    now = rss_bytes()
    growth = None if now is None or rss_before is None else now - rss_before
    trimmed = None
    if growth is not None and _malloc_trim():
        trimmed = rss_bytes() - rss_before
    payload = sum(w.nbytes for w in ws)
    return {"model": label, "rss_growth": growth, "bytes_1bit_scales": payload,
            "ratio": None if growth is None or not payload else growth / payload,
            "rss_growth_trimmed": trimmed,
            "ratio_trimmed": None if trimmed is None or not payload else trimmed / payload,
            "held_bytes": sum(w._resident_nbytes() for w in ws)}


def _fmt_resident(r: dict, what: str) -> str:
    """The printed resident-memory figure of ``resident()``'s record."""
    if r["rss_growth"] is None:
        return "not measured (no /proc/self/statm)"
    out = (f"{_fmt_bytes(r['rss_growth'])} = {r['ratio']:.2f}x its {what} "
           f"({_fmt_bytes(r['bytes_1bit_scales'])})")
    if r.get("rss_growth_trimmed") is not None:
        out += (f"; {_fmt_bytes(r['rss_growth_trimmed'])} = {r['ratio_trimmed']:.2f}x once glibc returned "
                f"its free heap (malloc_trim)")
    return out + f"; held by the weights {_fmt_bytes(r['held_bytes'])}"


def check_layer(mode: str, fn, x: np.ndarray, w: tk.PackedWeights) -> str:
    """The timed call's result on one layer against takane_kernels.reference: bit-exact for
    W1A1, within the documented error bound for the float modes. Raises AssertionError."""
    from takane_kernels import reference as ref

    y = fn(x, w)
    if mode == "w1a1":
        if not np.array_equal(y, ref.binary_linear(x, w)):
            raise AssertionError(f"{mode}: result differs from takane_kernels.reference")
        return "exact"
    act = "q8_0" if mode == "q8_0" else "float32"
    exact = ref.binary_weight_matmul(x, w, activations=act)
    bound = ref.binary_weight_matmul_error_bound(x, w, activations=act)
    if not np.all(np.abs(y.astype(np.float64) - exact) <= bound):
        raise AssertionError(f"{mode}: result outside the reference's error bound")
    return "within bound"


def _time_passes(run, count: int, budget_s: float) -> list[float]:
    return timed_calls(run, count, budget_s, 2)


def run_mode(mode: str, ws, note: str, threads: int, *, tokens: int, prefill: int, budget_s: float,
             seed: int = 1, calls=None) -> dict:
    """Decode (and prefill) of the weights ws on `threads` threads: one call per matrix, or
    per entry of ``calls`` (fuse_plan of ws: matrices that share an input as one call)."""
    rec = {"mode": mode, "threads": threads, "note": note}
    fn = _layer_fn(mode, threads)
    rng = np.random.default_rng(seed)
    ks = sorted({w.k for w in ws})
    xs = {k: rng.standard_normal(k).astype(np.float32) for k in ks}
    if calls is None:
        calls = [(w, [("", 0, w.n)]) for w in ws]
    rec["calls_per_token"] = len(calls)
    # each call's outputs, as the next layers would take them: views of the fused result
    plan = [(xs[w.k], w, [slice(b0, b1) for _, b0, b1 in parts] if len(parts) > 1 else None)
            for w, parts in calls]

    def token():
        for x, w, parts in plan:
            y = fn(x, w)
            if parts is not None:
                for p in parts:
                    y[..., p]

    token()  # warm-up: builds every handle, faults every page, starts the pool
    rec["check"] = check_layer(mode, fn, *plan[0][:2])
    times = _time_passes(token, tokens, budget_s)
    nbytes = _streamed_bytes(ws)
    t = float(np.median(times))
    rec.update(weight_bytes=nbytes, decode_s=t, decode_times_s=times, decode_tok_s=1.0 / t,
               decode_bytes_per_s=nbytes / t)
    if prefill:
        xm = {k: rng.standard_normal((prefill, k)).astype(np.float32) for k in ks}
        pplan = [(xm[w.k], w) for w, _ in calls]

        def pass_():
            for x, w in pplan:
                fn(x, w)

        ptimes = _time_passes(pass_, 2, budget_s / 2)
        pt = float(np.median(ptimes))
        rec.update(prefill_m=prefill, prefill_s=pt, prefill_tok_s=prefill / pt)
    return rec


def llama_cpp_dir(option: str | None) -> tuple[str | None, str]:
    """The llama.cpp build to compare with, or (None, why not)."""
    path = option or os.environ.get("TAKANE_LLAMA_CPP")
    if not path:
        return None, "no llama.cpp build given (--llama-cpp DIR or env TAKANE_LLAMA_CPP; bench/build_llamacpp.sh makes one)"
    exe = os.path.join(path, "bin", "takane-ggml-q1-matmul")
    if not os.access(exe, os.X_OK):
        return None, f"{exe} not found (build it with bench/build_llamacpp.sh {path})"
    return path, ""


def _shape_args(shapes) -> tuple[int, list[str]]:
    """The ggml program's -l LAYERS and per-layer N x K list: repeated layers are folded."""
    mats = [f"{n}x{k}" for _, n, k in shapes]
    for per in range(1, len(mats) + 1):
        if len(mats) % per == 0 and mats == mats[:per] * (len(mats) // per):
            return len(mats) // per, mats[:per]
    return 1, mats  # pragma: no cover - per = len(mats) always matches


def run_llama_cpp(path: str, shapes, threads: int, m: int, reps: int, timeout: float = 600.0) -> dict:
    """llama.cpp's Q1_0 x Q8_0 matmuls of the same shapes: one ggml graph per token."""
    exe = os.path.join(path, "bin", "takane-ggml-q1-matmul")
    layers, mats = _shape_args(shapes)
    cmd = [exe, "-t", str(threads), "-m", str(m), "-r", str(reps), "-l", str(layers), *mats]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-500:], "command": " ".join(cmd)}
    out = json.loads(proc.stdout)
    out["command"] = " ".join(cmd)
    return out


def run_llama_bench(path: str, gguf_path: str, threads: int, tokens: int = 16, timeout: float = 900.0) -> dict:
    """llama.cpp's own benchmark on the whole model file (attention, norms and sampling
    included, so an upper bound for its linear layers): token generation rate."""
    cmd = [os.path.join(path, "bin", "llama-bench"), "-m", gguf_path, "-p", "0", "-n", str(tokens),
           "-t", str(threads), "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"threads": threads, "error": (proc.stderr or proc.stdout).strip()[-500:], "command": " ".join(cmd)}
    runs = json.loads(proc.stdout)
    return {"threads": threads, "tok_s": float(runs[0]["avg_ts"]), "command": " ".join(cmd)}


def memory_table(shapes, weights) -> list[dict]:
    params = sum(n * k for _, n, k in shapes)
    bits = sum(_sign_bytes(w) for _, w in weights)
    group = sum(_sign_bytes(w) + (0 if w.group_scale is None else w.group_scale.nbytes) for _, w in weights)
    rows = sum(_sign_bytes(w) + w.n * 4 for _, w in weights)
    q1 = sum(n * -(-k // 128) * Q1_0_BYTES_PER_BLOCK for _, n, k in shapes)
    table = [("fp32", params * 4), ("fp16", params * 2), ("Q1_0 (llama.cpp)", q1),
             (f"1-bit + group scales (G={GROUP_SIZE})", group), ("1-bit + row scale", rows), ("1-bit signs only", bits)]
    return [{"format": f, "bytes": b, "vs_fp16": params * 2 / b, "vs_fp32": params * 4 / b} for f, b in table]


def run(*, shapes=None, weights=None, threads_list=(1, 2), modes=MODES, tokens: int = 8, prefill: int = 128,
        budget_s: float = 3.0, dram_mb: int = 256, llama_cpp: str | None = None, log=print,
        rss_before: int | None = None, fuse: bool = True) -> dict:
    """``rss_before``: the RSS before ``weights`` were made (by the caller), for the
    measured resident memory of the loaded model (made here when ``weights`` is None).
    ``fuse``: the matrices of a layer that share an input (q/k/v, gate/up) run as one call
    each token (fuse_plan; the stacked copies are made per mode and thread count, outside
    the timing); False: one call per matrix."""
    if weights is None:
        rss_before = rss_bytes()
        weights = random_weights(shapes)
    shapes = [(name, w.n, w.k) for name, w in weights]
    names = [name for name, _ in weights]
    params = sum(n * k for _, n, k in shapes)
    report = {"fused": fuse, "isa": tk.isa.active(), "matrices": len(shapes), "params": params, "group_size": GROUP_SIZE,
              "tokens": tokens, "prefill_m": prefill, "dram_mb": dram_mb, "memory": memory_table(shapes, weights),
              "dram": {}, "results": []}
    # resident memory, measured: RSS growth of the loaded model once prepared, and of each
    # mode's own copy (w1a1 runs row-scaled weights made from the loaded ones)
    report["resident"] = [resident("as loaded (group scales)", [w for _, w in weights], rss_before)]
    buf = np.ones(dram_mb * 2**20 // 8, dtype=np.int64)
    for mode in modes:
        # the previous mode's stacked copies were freed but glibc may keep them in its heap,
        # where this mode's copy would reuse them unseen: a baseline without them
        _malloc_trim()
        before = rss_bytes()
        ws, note = prepare_mode(mode, weights)
        if any(w is not v for w, (_, v) in zip(ws, weights)):
            report["resident"].append(resident(f"{mode} ({note.split(' (')[0]})", ws, before))
        calls = fuse_plan(names, ws) if fuse else None  # stacked once per mode, not timed
        for threads in threads_list:
            # the bandwidth is measured right before each run, with the same thread count
            bw = dram_bandwidth(threads, buf=buf)
            rec = run_mode(mode, ws, note, threads, tokens=tokens, prefill=prefill, budget_s=budget_s,
                           calls=calls)
            rec["dram_bytes_per_s"] = bw
            rec["pct_dram"] = 100.0 * rec["decode_bytes_per_s"] / bw
            report["results"].append(rec)
            log(f"  {mode:8s} {threads} thread(s): " + f"{rec['decode_s'] * 1e3:.2f} ms/token")
        del ws, calls  # the mode's handles (re-tiled copies) go before the next mode builds its own
    for threads in threads_list:
        report["dram"][str(threads)] = dram_bandwidth(threads, buf=buf)
    del buf
    if any(k % 128 for _, _, k in shapes):
        path, why = None, "Q1_0 needs K % 128 == 0 in every matrix (blocks of 128 weights)"
    else:
        path, why = llama_cpp_dir(llama_cpp)
    report["llama_cpp"] = {"available": path is not None, "reason": why, "path": path, "results": []}
    if path:
        for threads in threads_list:
            rec = {"threads": threads, "decode": run_llama_cpp(path, shapes, threads, 1, max(tokens, 3))}
            if prefill:
                rec["prefill"] = run_llama_cpp(path, shapes, threads, prefill, 2)
            report["llama_cpp"]["results"].append(rec)
            log(f"  llama.cpp Q1_0 {threads} thread(s): done")
    return report


def _fmt_bytes(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB"


def print_report(report: dict, file=None) -> None:
    p = lambda *a: print(*a, file=file or sys.stdout)  # noqa: E731
    p(f"\n1-bit LLM linear layers on {report['isa']}: {report['matrices']} matrices, "
      f"{report['params'] / 1e6:.1f}M weights (decode M = 1, weights streaming from DRAM"
      + (f"; prefill M = {report['prefill_m']})" if report["prefill_m"] else ")"))
    p(f"  {'weights':34s} {'memory':>10s} {'vs fp16':>8s} {'vs fp32':>8s}")
    for r in report["memory"]:
        p(f"  {r['format']:34s} {_fmt_bytes(r['bytes']):>10s} {r['vs_fp16']:7.1f}x {r['vs_fp32']:7.1f}x")
    for r in report.get("resident", []):
        p(f"  resident, measured (RSS growth), {r['model']}: {_fmt_resident(r, '1-bit + scale bytes')}")
    head = (f"  {'mode':16s} {'thr':>3s} {'ms/token':>9s} {'tok/s':>7s} {'weights GB/s':>12s} {'DRAM GB/s':>9s} "
            f"{'% DRAM':>7s} {'prefill tok/s':>13s}")
    p("\n" + head)
    p("  " + "-" * (len(head) - 2))
    lc = {r["threads"]: r for r in report.get("llama_cpp", {}).get("results", [])}
    for r in sorted(report["results"], key=lambda r: (r["threads"], MODES.index(r["mode"]))):
        pre = f"{r['prefill_tok_s']:13.1f}" if "prefill_tok_s" in r else f"{'-':>13s}"
        p(f"  {r['mode']:16s} {r['threads']:3d} {r['decode_s'] * 1e3:9.2f} {r['decode_tok_s']:7.1f} "
          f"{r['decode_bytes_per_s'] / 1e9:12.1f} {r['dram_bytes_per_s'] / 1e9:9.1f} {r['pct_dram']:6.0f}% {pre}")
    for threads, r in lc.items():
        d = r["decode"]
        if "error" in d:
            p(f"  {'llama.cpp Q1_0':16s} {threads:3d}   error: {d['error']}")
            continue
        pre = r.get("prefill", {})
        pre_s = f"{pre['m'] / pre['median_s']:13.1f}" if "median_s" in pre else f"{'-':>13s}"
        dram = report["dram"].get(str(threads))
        p(f"  {'llama.cpp Q1_0':16s} {threads:3d} {d['median_s'] * 1e3:9.2f} {1 / d['median_s']:7.1f} "
          f"{d['weight_bytes'] / d['median_s'] / 1e9:12.1f} {dram / 1e9:9.1f} "
          f"{100 * d['weight_bytes'] / d['median_s'] / dram:6.0f}% {pre_s}")
    for b in report.get("llama_cpp", {}).get("llama_bench", []):
        p(f"  llama-bench, whole model (attention etc. included), {b['threads']} thread(s): "
          + (f"{b['tok_s']:.1f} tok/s" if "tok_s" in b else f"error: {b['error']}"))
    notes = sorted({f"{r['mode']}: {r['note']}" for r in report["results"]})
    for n in notes:
        p(f"  note: {n}")
    cpt = {r["calls_per_token"] for r in report["results"] if "calls_per_token" in r}
    if report.get("fused") and cpt:
        p(f"  note: decode runs the matrices that share an input (q/k/v, gate/up) as one call: "
          f"{'/'.join(map(str, sorted(cpt)))} calls per token for {report['matrices']} matrices")
    if not report.get("llama_cpp", {}).get("available"):
        p(f"  llama.cpp: skipped: {report.get('llama_cpp', {}).get('reason', 'not run')}")
    else:
        p("  llama.cpp: ggml graph of Q1_0 x f32 matmuls (activations quantized to Q8_0 inside), same shapes, "
          "random signs; weights GB/s counts Q1_0 bytes")


def main_job_section(threads_list, *, json_out: bool, file=None) -> dict:
    """The short version run by ``python -m takane_kernels``: the default 1B-class stack,
    decode only (5 tokens per mode), each thread count; a few seconds."""
    log = (lambda *a: None) if json_out else (lambda *a: print(*a, file=file or sys.stdout))
    log("\n1-bit LLM decode (python -m takane_kernels llm for prefill, --gguf, and the full run):")
    before = rss_bytes()
    weights = random_weights(llama_shapes(2048, 5632, 22, 32, 4))
    report = run(weights=weights, threads_list=threads_list, tokens=5, prefill=0, budget_s=1.0, log=lambda *a: None,
                 rss_before=before)
    report["source"] = "random: hidden 2048, ffn 5632, layers 22, heads 32/4"
    if not json_out:
        print_report(report, file=file)
    return report


def _gguf_weights(path: str, log=print):
    """The matrices a model multiplies per token, from a GGUF file's Q1_0 tensors. token_embd
    is a lookup (a token reads one row), not a GEMV: it is left out — unless the file has no
    output.weight, in which case llama.cpp uses token_embd as the output projection too (tied
    embeddings) and it is timed once, as that projection."""
    try:
        from takane_kernels import gguf
    except ImportError as e:
        raise SystemExit(f"--gguf needs takane_kernels.gguf (pip install 'takane-kernels[gguf]'): {e}")
    # other tensor types (embeddings, norms in other formats) are not ours to time
    tensors = gguf.load(path, unsupported="skip")
    weights = [(name, w) for name, w in tensors.items() if isinstance(w, tk.PackedWeights)]
    if not weights:
        raise SystemExit(f"{path}: no Q1_0 tensors")
    if "output.weight" in tensors:
        weights = [(n, w) for n, w in weights if n != "token_embd.weight"]
    elif any(n == "token_embd.weight" for n, _ in weights):
        log("  note: no output.weight: token_embd is timed once per token as the (tied) output projection")
    return weights


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--ternary" in argv:  # the ternary (BitNet b1.58) table has its own options: llm_ternary.py
        from .llm_ternary import main as ternary_main

        return ternary_main(argv)
    from . import llamacpp

    p = argparse.ArgumentParser(prog="python -m takane_kernels llm", description=__doc__.split("\n")[0])
    g = p.add_argument_group("the layer benchmark (default): a Llama decoder's linear layers on takane_kernels")
    g.add_argument("--hidden", type=int, default=2048, help="model width: K of q/k/v/o/gate/up, N of down (default 2048)")
    g.add_argument("--ffn", type=int, default=5632, help="FFN width: N of gate/up, K of down (default 5632)")
    g.add_argument("--layers", type=int, default=22, help="decoder layers (default 22)")
    g.add_argument("--heads", type=int, default=32, help="attention heads (default 32)")
    g.add_argument("--kv-heads", type=int, default=4,
                   help="key/value heads (grouped-query attention: k and v are hidden*kv/heads wide; default 4)")
    g.add_argument("--gguf", metavar="PATH",
                   help="time the Q1_0 matrices of this GGUF file instead (extra gguf); token_embd counts as a "
                        "lookup, or as the output projection when the file ties it")
    g.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and 2)")
    g.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="activation modes: w1a1 (binarized), q8_0 (llama.cpp's W1A8), float32 (default: all)")
    g.add_argument("--tokens", type=int, default=8, help="decode tokens timed per mode (median)")
    g.add_argument("--prefill", type=int, default=128, help="prefill rows M (0: no prefill)")
    g.add_argument("--budget", type=float, default=3.0, help="seconds per mode and phase at most (>= 2 runs)")
    g.add_argument("--dram-mb", type=int, default=256, help="buffer of the DRAM bandwidth measurement (MB)")
    g.add_argument("--llama-cpp", metavar="DIR",
                   help="llama.cpp build: without --model, the Q1_0 peer of bench/build_llamacpp.sh (default: env "
                        "TAKANE_LLAMA_CPP); with --model, a CPU_TAKANE build of integrations/llama.cpp/build.sh "
                        "(default: env TAKANE_LLAMA_CPP_TAKANE) for the end-to-end side-by-side")
    g.add_argument("--json", action="store_true", help="print the report as JSON")
    g.add_argument("--ternary", action="store_true",
                   help="the ternary table instead: BitNet b1.58 2B4T's shapes, int8_row / q8_0 / float32, llama.cpp "
                        "TQ2_0 side by side (python -m takane_kernels llm --ternary --help)")
    e = p.add_argument_group("llama.cpp end to end (--model)")
    e.add_argument("--model", choices=list(llamacpp.MODELS),
                   help="a Qwen3 model of this shape with random 1-bit weights: bonsai-1.7b / bonsai-8b "
                        "(PrismML's Bonsai shapes), tiny (tests). With --out: write it as GGUF; with --llama-cpp: "
                        "llama.cpp on takane_kernels (CPU_TAKANE) vs stock on it")
    e.add_argument("--out", metavar="FILE.gguf", help="write the --model's GGUF file here and exit")
    e.add_argument("--model-file", metavar="FILE.gguf",
                   help="side-by-side: use this file (written by --out with the same --model) instead of writing "
                        "one into --workdir")
    e.add_argument("--seed", type=int, default=0, help="random seed of the model's weights (default 0)")
    e.add_argument("--workdir", default="build/llamacpp-side-by-side",
                   help="side-by-side: model file, KL text and logits go here (default build/llamacpp-side-by-side)")
    e.add_argument("--pp", type=int, default=512, help="side-by-side: llama-bench prompt tokens (default 512)")
    e.add_argument("--tg", type=int, default=128, help="side-by-side: llama-bench generated tokens (default 128)")
    e.add_argument("--reps", type=int, default=2, help="side-by-side: llama-bench repetitions (default 2)")
    e.add_argument("--kl-tokens", type=int, default=4096,
                   help="side-by-side: tokens scored by the KL-divergence check, at least (default 4096)")
    e.add_argument("--no-checks", action="store_true",
                   help="side-by-side: speed only (no KL divergence, no greedy generation)")
    args = p.parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if args.model:
        if args.out:
            llamacpp.write_model(args.model, args.out, seed=args.seed, log=log)
            return 0
        dest = args.llama_cpp or os.environ.get("TAKANE_LLAMA_CPP_TAKANE")
        if not dest:
            p.error("--model needs --out FILE.gguf, or --llama-cpp DEST (integrations/llama.cpp/build.sh DEST)")
        rep = llamacpp.side_by_side(dest, args.model, model_path=args.model_file, threads=args.threads or [1, 2],
                                    pp=args.pp, tg=args.tg, reps=args.reps, kl_tokens=args.kl_tokens,
                                    workdir=args.workdir, checks=not args.no_checks, log=log)
        if args.json:
            print(json.dumps(rep, indent=1, default=str))
        else:
            llamacpp.print_side_by_side(rep)
        return 0
    if args.out:
        p.error("--out writes a --model's file: give --model too")
    before = rss_bytes()
    if args.gguf:
        weights = _gguf_weights(args.gguf, log=log)
    else:
        weights = random_weights(llama_shapes(args.hidden, args.ffn, args.layers, args.heads, args.kv_heads))
    report = run(weights=weights, threads_list=args.threads or [1, 2], modes=args.modes, tokens=args.tokens,
                 prefill=args.prefill, budget_s=args.budget, dram_mb=args.dram_mb, llama_cpp=args.llama_cpp, log=log,
                 rss_before=before)
    if args.gguf and report["llama_cpp"]["available"]:
        report["llama_cpp"]["llama_bench"] = [run_llama_bench(report["llama_cpp"]["path"], args.gguf, t)
                                              for t in args.threads or [1, 2]]
    report["source"] = args.gguf or (f"random: hidden {args.hidden}, ffn {args.ffn}, layers {args.layers}, "
                                     f"heads {args.heads}/{args.kv_heads}")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0
