"""``python -m takane_kernels llm --ternary``: the linear layers of a ternary (BitNet b1.58) LLM.

The matrices of a decoder of BitNet b1.58 2B4T's shapes (30 layers, hidden 2560, FFN 6912,
20 heads / 5 KV heads, so k and v are 2560 -> 640; the output projection vocab 128,256 x
2560), with random ternary weights (``TernaryWeights``, one ``tensor_scale`` per matrix as
BitNet's absmean quantizer makes), run token by token (decode, M = 1: every weight streams
from DRAM, the stack is ~0.6 GB) and as a prefill (M = 128 tokens per call) in the
activation modes the library has for ternary weights: ``int8_row`` (BitNet's per-token
absmax int8, W1.58A8), ``q8_0`` (llama.cpp's Q8_0 blocks) and ``float32``.

The model's resident memory is measured as the RSS growth once every C handle is built
(``TernaryWeights`` then hold their planes once, in the handles), as the 1-bit table does.
Reported per mode and thread count: tokens/s of the linear-layer work alone, the weight GB/s
(2 bits per weight, both planes, plus the scales: ``TernaryWeights.nbytes``) against the
DRAM read bandwidth measured in the same run with the same thread count (the probe ``llm``
uses, ``takane_kernels.isa.dram_bandwidth``), and the prefill's int8 MAC rate against the
int8 peak probe (``takane_kernels.isa.peak_int8``, one core, times the thread count).

With a llama.cpp build (``--llama-cpp DIR`` with ``bin/llama-bench``), the same shapes as two
GGUF models, every matrix TQ2_0 in one and TQ1_0 in the other (the same weights, written by
``takane_kernels.gguf.save``), run by ``llama-bench`` (tg and pp128), side by side. The model is the ``llama`` architecture: its
linear layers are exactly these seven matrices per layer plus the tied output projection,
which llama.cpp multiplies once per token; BitNet's own architecture adds only elementwise
work (sub-norms, squared ReLU) that llama.cpp does outside the matmuls. llama-bench times
the whole model (attention, norms, RoPE, sampling-free), so its per-token time is an upper
bound for its linear layers: at the short contexts used the extra work is small, and it
counts against llama.cpp, which the report says.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping

import numpy as np

import takane_kernels as tk
from takane_kernels.programs import llm

MODES = ("int8_row", "q8_0", "float32")
BITNET_2B4T = dict(hidden=2560, ffn=6912, layers=30, heads=20, kv_heads=5, vocab=128256)
TQ_FORMATS = {"TQ2_0": 66, "TQ1_0": 54}  # llama.cpp's ternary types: bytes per 256 weights
CHECK_ROWS = 4096  # the reference check runs on at most this many rows of a matrix


def ternary_shapes(hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, vocab: int):
    """(name, N, K) of every matrix a token multiplies, in model order: the decoder's seven
    per layer, then the output projection (vocab x hidden) when vocab > 0."""
    shapes = llm.llama_shapes(hidden, ffn, layers, heads, kv_heads)
    return shapes + ([("output.weight", vocab, hidden)] if vocab else [])


def random_ternary(n: int, k: int, rng: np.random.Generator) -> tk.TernaryWeights:
    """Random ternary (N, K): about half the weights zero, the rest ±1 (canonical planes,
    zero padding), tensor_scale 1/sqrt(K) (a matrix that keeps its input's RMS)."""
    kw = -(-k // 64)
    nz = rng.integers(0, 2**64 - 1, size=(n, kw), dtype=np.uint64, endpoint=True)
    if k % 64:
        nz[:, -1] &= np.uint64((1 << (k % 64)) - 1)
    sign = rng.integers(0, 2**64 - 1, size=(n, kw), dtype=np.uint64, endpoint=True) & nz
    return tk.TernaryWeights(sign, nz, k, tensor_scale=1.0 / math.sqrt(k))


def random_weights(shapes, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(name, random_ternary(n, k, rng)) for name, n, k in shapes]


def _rows(w: tk.TernaryWeights, rows: int) -> tk.TernaryWeights:
    """The first `rows` rows of w (same tensor scale), for a reference check of a big matrix."""
    if w.n <= rows:
        return w
    return tk.TernaryWeights(w.sign[:rows], w.nonzero[:rows], w.k, tensor_scale=w.tensor_scale)


def check(mode: str, threads: int, ws) -> str:
    """Every distinct shape's first matrix (at most CHECK_ROWS rows of it), decode and a
    3-row prefill, against takane_kernels.reference within its documented bound."""
    from takane_kernels import reference as ref

    rng = np.random.default_rng(7)
    seen = set()
    for w in ws:
        if (w.n, w.k) in seen:
            continue
        seen.add((w.n, w.k))
        v = _rows(w, CHECK_ROWS)
        for m in (1, 3):
            x = rng.standard_normal((m, v.k)).astype(np.float32)
            y = tk.binary_weight_matmul(x, v, activations=mode, threads=threads)
            exact = ref.binary_weight_matmul(x, v, activations=mode)
            bound = ref.binary_weight_matmul_error_bound(x, v, activations=mode)
            if y.shape != exact.shape or not np.all(np.abs(y.astype(np.float64) - exact) <= bound):
                raise AssertionError(f"{mode}, {threads} thread(s), {v.n}x{v.k}, M={m}: result outside the "
                                     f"reference's error bound")
    return "within bound"


def run_mode(mode: str, ws, threads: int, *, tokens: int, prefill: int, budget_s: float) -> dict:
    rec = {"mode": mode, "threads": threads, "check": check(mode, threads, ws)}
    rng = np.random.default_rng(1)
    ks = sorted({w.k for w in ws})
    xs = {k: rng.standard_normal(k).astype(np.float32) for k in ks}

    def token():
        for w in ws:
            tk.binary_weight_matmul(xs[w.k], w, activations=mode, threads=threads)

    cpu = []

    def token_cpu():  # the process's CPU time too: on a loaded host, wall time counts others' slices
        c0 = time.process_time()
        token()
        cpu.append(time.process_time() - c0)

    token()  # warm-up: every handle built, every page faulted, the pool started
    times = llm._time_passes(token_cpu, tokens, budget_s)
    nbytes = sum(w.nbytes for w in ws)
    t = float(np.median(times))
    rec.update(weight_bytes=nbytes, decode_s=t, decode_times_s=times, decode_tok_s=1.0 / t,
               decode_bytes_per_s=nbytes / t, decode_cpu_s=float(np.median(cpu)))
    if prefill:
        xm = {k: rng.standard_normal((prefill, k)).astype(np.float32) for k in ks}

        def pass_():
            for w in ws:
                tk.binary_weight_matmul(xm[w.k], w, activations=mode, threads=threads)

        pt = float(np.median(llm._time_passes(pass_, 2, budget_s)))
        macs = prefill * sum(w.n * w.k for w in ws)
        rec.update(prefill_m=prefill, prefill_s=pt, prefill_tok_s=prefill / pt, prefill_macs_per_s=macs / pt)
    return rec


def int8_peak() -> float | None:
    """One core's measured int8 MAC peak (VPDPBUSD / VPMADDUBSW loop), or None without one."""
    try:
        return tk.isa.peak_int8()
    except ValueError:
        return None


# ---- llama.cpp: the same shapes as a TQ2_0 / TQ1_0 model---------------------------------------

class _Model(Mapping):
    """name -> tensor of a llama-architecture GGUF model, each made when written (seeded by its
    index): the token embedding (tied: also the output projection) and every layer matrix as
    TernaryWeights (written TQ2_0 or TQ1_0), the norms float32."""

    def __init__(self, cfg: dict, seed: int):
        self.cfg, self.seed = cfg, seed
        self.mats = {"token_embd.weight": (cfg["vocab"], cfg["hidden"])}
        self.mats.update({name: (n, k) for name, n, k in
                          llm.llama_shapes(cfg["hidden"], cfg["ffn"], cfg["layers"], cfg["heads"], cfg["kv_heads"])})
        self.norms = ["output_norm.weight"] + [f"blk.{i}.{nm}_norm.weight" for i in range(cfg["layers"])
                                               for nm in ("attn", "ffn")]
        self.order = list(self.mats) + self.norms

    def __len__(self):
        return len(self.order)

    def __iter__(self):
        return iter(self.order)

    def __getitem__(self, name):
        rng = np.random.default_rng([self.seed, self.order.index(name)])
        if name in self.mats:
            n, k = self.mats[name]
            w = random_ternary(n, k, rng)
            # TQ2_0 / TQ1_0 have one fp16 scale per 256 weights: the per-tensor scale in every block
            return tk.TernaryWeights(w.sign, w.nonzero, k, group_scale=np.full((n, k // 256), w.tensor_scale,
                                                                               np.float32), group_size=256)
        return rng.uniform(0.8, 1.2, self.cfg["hidden"]).astype(np.float32)


def write_tq_model(cfg: dict, out: str, seed: int = 0, fmt: str = "TQ2_0") -> str:
    """A llama-architecture GGUF of shapes `cfg` with `fmt` (TQ2_0 or TQ1_0) matrices and tied
    embeddings; the same weights for either format (the same seed)."""
    from takane_kernels import gguf
    from takane_kernels.programs.llamacpp import vocabulary

    if fmt not in TQ_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(TQ_FORMATS)}, got {fmt!r}")
    if cfg["hidden"] % 256 or cfg["ffn"] % 256:
        raise ValueError(f"{fmt} needs hidden and ffn multiples of 256 (its block)")
    tokens, scores, types = vocabulary(cfg["vocab"])
    a = "llama"
    meta = {
        "general.name": f"takane synthetic ternary (random {fmt} weights, BitNet-2B4T-style shapes)",
        "general.file_type": {"TQ1_0": 36, "TQ2_0": 37}[fmt],  # LLAMA_FTYPE_MOSTLY_TQ1_0 / _TQ2_0
        f"{a}.block_count": cfg["layers"], f"{a}.context_length": 4096, f"{a}.embedding_length": cfg["hidden"],
        f"{a}.feed_forward_length": cfg["ffn"], f"{a}.attention.head_count": cfg["heads"],
        f"{a}.attention.head_count_kv": cfg["kv_heads"], f"{a}.rope.freq_base": 500000.0,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.asarray(scores, dtype=np.float32),
        "tokenizer.ggml.token_type": np.asarray(types, dtype=np.int32),
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    gguf.save(out, _Model(cfg, seed), arch=a, metadata=meta, ternary=fmt)
    return out


def run_llama_bench(path: str, model: str, threads, *, prefill: int, tokens: int, reps: int = 2,
                    timeout: float = 3600.0) -> dict:
    """llama-bench tg`tokens` (and pp`prefill`) of `model` at each thread count, stock CPU
    path (``--repack 0`` where the build knows the option: TQ2_0 / TQ1_0 have no repacked layout)."""
    exe = os.path.join(path, "bin", "llama-bench")
    cmd = [exe, "-m", model, "-p", str(prefill), "-n", str(tokens), "-t", ",".join(map(str, threads)),
           "-r", str(reps), "-o", "json"]
    proc = subprocess.run(cmd + ["--repack", "0"], capture_output=True, text=True, errors="replace", timeout=timeout)
    if proc.returncode != 0:  # a build without --repack
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    else:
        cmd = cmd + ["--repack", "0"]
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-800:], "command": " ".join(cmd)}
    out = {"command": " ".join(cmd), "results": []}
    for r in json.loads(proc.stdout):
        out["results"].append({"threads": int(r["n_threads"]), "kind": "pp" if r["n_prompt"] else "tg",
                               "tok_s": float(r["avg_ts"]), "stddev": float(r["stddev_ts"])})
    return out


def llama_cpu_per_token(path: str, model: str, *, short: int = 4, long: int = 20, timeout: float = 3600.0) -> dict:
    """llama.cpp's CPU seconds per generated token on 1 thread, which load from other processes
    does not inflate: the CPU time of two llama-bench tg runs (``getrusage`` of the children)
    of `short` and `long` tokens, differenced, so that loading the model and the warm-up
    cancel. One thread only: with more, ggml's threads spin at barriers and their CPU time is
    not work."""
    import resource

    exe = os.path.join(path, "bin", "llama-bench")
    cpu = {}
    for n in (short, long):
        cmd = [exe, "-m", model, "-p", "0", "-n", str(n), "-t", "1", "-r", "1", "-o", "json", "--repack", "0"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout).strip()[-800:], "command": " ".join(cmd)}
        cpu[n] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"cpu_s_per_token": (cpu[long] - cpu[short]) / (long - short), "cpu_s": cpu,
            "command": f"{exe} -m {model} -p 0 -n {short}|{long} -t 1 -r 1 --repack 0 (CPU time differenced)"}


# ---- the table -------------------------------------------------------------------------------

def run(cfg: dict, *, threads_list=(1, 2), modes=MODES, tokens: int = 8, prefill: int = 128,
        prefill_modes=("int8_row",), budget_s: float = 3.0, dram_mb: int = 256, llama_cpp: str | None = None,
        workdir: str = "build/llm-ternary", llama_tokens: int = 16, log=print) -> dict:
    shapes = ternary_shapes(**cfg)
    rss_before = llm.rss_bytes()
    weights = random_weights(shapes)
    ws = [w for _, w in weights]
    # resident memory, measured like the 1-bit table's: RSS growth of the model once every
    # handle is built (the planes then live only in the handles: TernaryWeights keeps one copy)
    resident = llm.resident("BitNet-2B4T shapes, prepared", ws, rss_before)
    params = sum(n * k for _, n, k in shapes)
    peak = int8_peak() if prefill else None
    report = {"isa": tk.isa.active(), "shapes": dict(cfg), "matrices": len(shapes), "params": params,
              "weight_bytes": sum(w.nbytes for w in ws),
              "tq_bytes": {f: sum(n * k // 256 * b for _, n, k in shapes) for f, b in TQ_FORMATS.items()},
              "tokens": tokens, "prefill_m": prefill, "int8_peak_macs_per_s": peak, "resident": resident,
              "dram": {}, "results": []}
    buf = np.ones(dram_mb * 2**20 // 8, dtype=np.int64)
    for mode in modes:
        for threads in threads_list:
            bw = llm.dram_bandwidth(threads, buf=buf)  # right before the run, same thread count
            rec = run_mode(mode, ws, threads, tokens=tokens, prefill=prefill if mode in prefill_modes else 0,
                           budget_s=budget_s)
            rec["dram_bytes_per_s"] = bw
            rec["pct_dram"] = 100.0 * rec["decode_bytes_per_s"] / bw
            if threads == 1:  # one thread: its CPU time per token, as the probe's (tk.isa.dram_bandwidth(1))
                rec["pct_dram_cpu"] = 100.0 * rec["weight_bytes"] / rec["decode_cpu_s"] / bw
            if "prefill_macs_per_s" in rec and peak:
                rec["pct_int8_peak"] = 100.0 * rec["prefill_macs_per_s"] / (peak * threads)
            report["results"].append(rec)
            log(f"  {mode:8s} {threads} thread(s): {rec['decode_s'] * 1e3:.2f} ms/token")
    for threads in threads_list:
        report["dram"][str(threads)] = llm.dram_bandwidth(threads, buf=buf)
    del buf, weights, ws
    lc = {"available": False, "path": llama_cpp}
    if not llama_cpp:
        lc["reason"] = "no llama.cpp build given (--llama-cpp DIR with bin/llama-bench)"
    elif not os.access(os.path.join(llama_cpp, "bin", "llama-bench"), os.X_OK):
        lc["reason"] = f"{os.path.join(llama_cpp, 'bin', 'llama-bench')} not found"
    elif cfg["hidden"] % 256 or cfg["ffn"] % 256:
        lc["reason"] = "TQ2_0 / TQ1_0 need hidden and ffn multiples of 256"
    else:
        lc["available"] = True
        lc["formats"] = {}
        for fmt in TQ_FORMATS:  # the same weights in both of llama.cpp's ternary types
            model = os.path.join(workdir, "ternary-{layers}x{hidden}-{ffn}-{heads}-{kv_heads}-{vocab}-".format(**cfg)
                                 + f"{fmt.lower()}.gguf")
            if not os.path.exists(model):
                log(f"  writing {model} ...")
                write_tq_model(cfg, model, fmt=fmt)
            rec = {"model": model,
                   "bench": run_llama_bench(llama_cpp, model, threads_list, prefill=prefill, tokens=llama_tokens)}
            if 1 in threads_list:
                rec["cpu_1_thread"] = llama_cpu_per_token(llama_cpp, model)
            lc["formats"][fmt] = rec
            log(f"  llama.cpp {fmt}: done")
    report["llama_cpp"] = lc
    return report


def print_report(report: dict, file=None) -> None:
    p = lambda *a: print(*a, file=file or sys.stdout)  # noqa: E731
    c = report["shapes"]
    p(f"\nTernary LLM linear layers on {report['isa']}: {c['layers']} layers, hidden {c['hidden']}, FFN {c['ffn']}, "
      f"heads {c['heads']}/{c['kv_heads']}, vocab {c['vocab']} (output projection timed): {report['matrices']} "
      f"matrices, {report['params'] / 1e6:.1f}M weights; {report['weight_bytes'] / 1e6:.1f} MB as 2-bit planes + "
      f"scales (" + ", ".join(f"{f}: {b / 1e6:.1f} MB" for f, b in report["tq_bytes"].items()) + ")")
    r = report.get("resident")
    if r:
        p(f"  resident, measured (RSS growth), {r['model']}: {llm._fmt_resident(r, '2-bit planes + scale bytes')}")
    head = (f"  {'mode':16s} {'thr':>3s} {'ms/token':>9s} {'tok/s':>7s} {'weights GB/s':>12s} {'DRAM GB/s':>9s} "
            f"{'% DRAM':>7s} {'prefill tok/s':>13s} {'% int8 peak':>11s} {'CPU ms/token':>12s} {'% DRAM (CPU)':>12s}")
    p(head)
    p("  " + "-" * (len(head) - 2))
    for r in sorted(report["results"], key=lambda r: (r["threads"], MODES.index(r["mode"]))):
        pre = f"{r['prefill_tok_s']:13.1f}" if "prefill_tok_s" in r else f"{'-':>13s}"
        pk = f"{r['pct_int8_peak']:10.0f}%" if "pct_int8_peak" in r else f"{'-':>11s}"
        p(f"  {r['mode']:16s} {r['threads']:3d} {r['decode_s'] * 1e3:9.2f} {r['decode_tok_s']:7.2f} "
          f"{r['decode_bytes_per_s'] / 1e9:12.1f} {r['dram_bytes_per_s'] / 1e9:9.1f} {r['pct_dram']:6.0f}% {pre} {pk} "
          f"{r['decode_cpu_s'] * 1e3:12.2f} " + (f"{r['pct_dram_cpu']:11.0f}%" if "pct_dram_cpu" in r else f"{'-':>12s}"))
    lc = report["llama_cpp"]
    if not lc["available"]:
        p(f"  llama.cpp: skipped: {lc['reason']}")
    for fmt, rec in lc.get("formats", {}).items():
        _print_llama_cpp(report, fmt, rec, p)
    if lc.get("formats"):
        p("  llama.cpp: llama-bench of a llama-architecture model of the same shapes, every matrix "
          f"{' / '.join(lc['formats'])} (the same weights; token embedding tied as the output projection); its "
          "time covers the whole model (attention, norms, RoPE too), so the ratios above are upper bounds for "
          "ours vs its linear layers alone")
    if report.get("int8_peak_macs_per_s"):
        p(f"  int8 peak (tk.isa.peak_int8, one core): {report['int8_peak_macs_per_s'] / 1e9:.0f} GMAC/s; "
          "% int8 peak = prefill MAC/s / (peak x threads)")
    p("  CPU ms/token: the process's CPU time per token (all its threads); % DRAM (CPU): 1 thread, bytes per "
      "CPU second against the probe, which also times one thread's CPU time — the figure that load from "
      "other processes does not distort")
    p("  weights GB/s counts both bit planes (2 bits per weight) and the scales; % DRAM against "
      "tk.isa.dram_bandwidth measured just before each row with the same thread count")


def _print_llama_cpp(report: dict, fmt: str, rec: dict, p) -> None:
    """The rows of one llama.cpp format: per thread count its tg / pp rates, GB/s of its own
    bytes (TQ2_0 2.06, TQ1_0 1.69 bits per weight) and int8_row's ratio to it."""
    if "error" in rec["bench"]:
        p(f"  llama.cpp {fmt}: error: {rec['bench']['error']}")
        return
    nbytes = report["tq_bytes"][fmt]
    res = rec["bench"]["results"]
    ours = {r["threads"]: r for r in report["results"] if r["mode"] == "int8_row"}
    for threads in sorted({r["threads"] for r in res}):
        tg = next((r for r in res if r["threads"] == threads and r["kind"] == "tg"), None)
        pp = next((r for r in res if r["threads"] == threads and r["kind"] == "pp"), None)
        if tg is None:
            continue
        dram = report["dram"].get(str(threads))
        gbs = nbytes * tg["tok_s"]
        pre = f"{pp['tok_s']:13.1f}" if pp else f"{'-':>13s}"
        p(f"  {'llama.cpp ' + fmt:16s} {threads:3d} {1e3 / tg['tok_s']:9.2f} {tg['tok_s']:7.2f} {gbs / 1e9:12.1f} "
          f"{dram / 1e9:9.1f} {100 * gbs / dram:6.0f}% {pre} {'-':>11s}")
        if threads in ours:
            p(f"    int8_row vs llama.cpp {fmt}, {threads} thread(s): decode "
              f"{ours[threads]['decode_tok_s'] / tg['tok_s']:.2f}x per token"
              + (f", prefill {ours[threads]['prefill_tok_s'] / pp['tok_s']:.2f}x"
                 if pp and "prefill_tok_s" in ours[threads] else ""))
    cpu = rec.get("cpu_1_thread", {})
    if cpu.get("cpu_s_per_token", 0) > 0 and 1 in ours:
        lt = cpu["cpu_s_per_token"]
        p(f"  llama.cpp {fmt}, 1 thread, CPU time: {lt * 1e3:.2f} ms/token = "
          f"{100 * nbytes / lt / report['dram']['1']:.0f}% DRAM (CPU); int8_row vs llama.cpp "
          f"{fmt} by CPU time: {lt / ours[1]['decode_cpu_s']:.2f}x per token")
    elif "error" in cpu:
        p(f"  llama.cpp {fmt} CPU time: error: {cpu['error']}")
    p(f"  llama.cpp {fmt}: {rec['bench']['command']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m takane_kernels llm --ternary",
                                description="The ternary (BitNet b1.58) LLM linear-layer table")
    p.add_argument("--ternary", action="store_true", help=argparse.SUPPRESS)
    for key, val in BITNET_2B4T.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=val, help=f"default {val} (BitNet b1.58 2B4T)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--prefill-modes", nargs="*", choices=MODES, default=["int8_row"],
                   help="modes timed as a prefill too (default int8_row)")
    p.add_argument("--tokens", type=int, default=8, help="decode tokens timed per mode (median)")
    p.add_argument("--prefill", type=int, default=128, help="prefill rows M (0: none)")
    p.add_argument("--budget", type=float, default=3.0, help="seconds per mode and phase at most (>= 2 runs)")
    p.add_argument("--dram-mb", type=int, default=256)
    p.add_argument("--llama-cpp", metavar="DIR", help="a llama.cpp build with bin/llama-bench: TQ2_0 and TQ1_0 side by side")
    p.add_argument("--llama-tokens", type=int, default=16, help="llama-bench tg tokens")
    p.add_argument("--workdir", default="build/llm-ternary", help="where the TQ2_0 / TQ1_0 model files are written (kept)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    cfg = {k: getattr(a, k) for k in BITNET_2B4T}
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    report = run(cfg, threads_list=a.threads, modes=a.modes, tokens=a.tokens, prefill=a.prefill,
                 prefill_modes=a.prefill_modes, budget_s=a.budget, dram_mb=a.dram_mb, llama_cpp=a.llama_cpp,
                 workdir=a.workdir, llama_tokens=a.llama_tokens, log=log)
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0
