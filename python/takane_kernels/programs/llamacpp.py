"""llama.cpp end to end on takane_kernels (``python -m takane_kernels llm --model ...``).

Two jobs, both reached through ``llm``'s options:

- **a model file**: ``llm --model bonsai-1.7b --out FILE.gguf`` writes a Qwen3-architecture GGUF
  with the shapes of PrismML's Bonsai-1.7B (``bonsai-8b``: Bonsai-8B; ``tiny``: a two-layer
  model for tests and CI), every weight matrix Q1_0 (through :func:`takane_kernels.gguf.save`),
  norms F32, and a synthetic SentencePiece-style vocabulary llama.cpp tokenizes. The weights
  are random, but scaled so that the model's next-token distributions are far from uniform
  (each matrix keeps its input's RMS; the output norm sets the logits' spread), so that an
  agreement check between two implementations is meaningful. Reproducible from ``--seed``.
- **the side-by-side**: ``llm --model NAME --llama-cpp DEST`` (DEST from
  ``integrations/llama.cpp/build.sh``) runs, on one model file and one binary,
  ``llama-bench`` pp and tg with ``--repack 1`` (CPU_TAKANE: takane_kernels) and ``--repack 0``
  (stock llama.cpp: every extra buffer type off) at each thread count, the weight GB/s per
  token against the DRAM bandwidth measured in the same run, and correctness:
  ``llama-perplexity --kl-divergence`` of takane against stock on a generated text, and greedy
  generation (``llama-completion``) of a few prompts on both paths.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping

import numpy as np

import takane_kernels as tk

Q1_0_BLOCK = 128
Q1_0_BLOCK_BYTES = 18

# name -> shapes. Bonsai-1.7B / -8B are Qwen3 models (head dim 128, QK-norm); Bonsai-1.7B ties
# its output projection to the token embedding, Bonsai-8B does not.
MODELS = {
    "tiny": dict(layers=2, hidden=256, ffn=768, heads=4, kv_heads=2, head_dim=64, vocab=4096, tied=True,
                 logit_std=3.0),
    "bonsai-1.7b": dict(layers=28, hidden=2048, ffn=6144, heads=16, kv_heads=8, head_dim=128, vocab=151936,
                        tied=True, logit_std=4.0),
    "bonsai-8b": dict(layers=36, hidden=4096, ffn=12288, heads=32, kv_heads=8, head_dim=128, vocab=151936,
                      tied=False, logit_std=4.0),
}

PROMPTS = ("The quick brown fox", "def main(argv):", "In the beginning the universe was")


# ---- the model file ----------------------------------------------------------------------------

def vocabulary(n: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style ("llama") vocabulary of n pieces: <unk>, <s>, </s>, the 256 byte
    tokens <0xXX> (so any text tokenizes, by byte fallback), then unique synthetic pieces —
    printable ASCII characters, each with the word-start marker U+2581 too, then lower-case
    letter pairs, triples, ... with and without the marker — so that ordinary text tokenizes to
    ~2-3 characters per token. Scores fall with the index (SentencePiece merges the best-scored
    pair first); token types: 2 unknown, 3 control, 6 byte, 1 normal."""
    if n < 259 + 2:
        raise ValueError(f"a vocabulary needs at least 261 pieces, got {n}")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    seen = set(tokens)

    def pieces():
        yield "\u2581"
        for c in map(chr, range(33, 127)):
            yield c
            yield "\u2581" + c
        for length in itertools.count(2):
            for t in itertools.product("etaoinshrdlucmfwypvbgkjqxz", repeat=length):
                s = "".join(t)
                yield s
                yield "\u2581" + s

    for p in pieces():
        if len(tokens) == n:
            break
        if p not in seen:
            seen.add(p)
            tokens.append(p)
            types.append(1)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(n - 259)]
    return tokens, scores, types


def _config(name: str) -> dict:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(MODELS)}")
    return dict(MODELS[name])


def _matrices(cfg: dict) -> list[tuple[str, int, int, float]]:
    """(name, N, K, block scale d) of every Q1_0 matrix, in file order. d ~ 1/sqrt(K): a matrix
    of ±d keeps its input's RMS, so the residual stream neither vanishes nor explodes."""
    h, f, hd = cfg["hidden"], cfg["ffn"], cfg["head_dim"]
    q, kv = cfg["heads"] * hd, cfg["kv_heads"] * hd
    out = [("token_embd.weight", cfg["vocab"], h, 1.0)]  # embedding rows of RMS ~1
    for i in range(cfg["layers"]):
        for nm, n, k in (("attn_q", q, h), ("attn_k", kv, h), ("attn_v", kv, h), ("attn_output", h, q),
                         ("ffn_gate", f, h), ("ffn_up", f, h), ("ffn_down", h, f)):
            out.append((f"blk.{i}.{nm}.weight", n, k, 1.0 / math.sqrt(k)))
    if not cfg["tied"]:
        out.append(("output.weight", cfg["vocab"], h, 1.0 / math.sqrt(h)))
    return out


class _LazyTensors(Mapping):
    """name -> tensor, each made when asked for (seeded by its index), so that writing a multi-GB
    model never holds more than one float or bit matrix besides the writer's Q1_0 bytes."""

    def __init__(self, cfg: dict, seed: int):
        self.cfg, self.seed = cfg, seed
        self.mats = {name: (i, n, k, d) for i, (name, n, k, d) in enumerate(_matrices(cfg))}
        h, hd = cfg["hidden"], cfg["head_dim"]
        # The output norm's gain sets the logits' spread to logit_std: tied, the logits are
        # embedding rows (RMS ~1) . the normed state x gain -> std gain * sqrt(h); untied, rows of
        # ±1/sqrt(h) -> std gain.
        out_gain = cfg["logit_std"] / math.sqrt(h) if cfg["tied"] else cfg["logit_std"]
        self.norms = {"output_norm.weight": (h, out_gain)}
        for i in range(cfg["layers"]):
            self.norms[f"blk.{i}.attn_norm.weight"] = (h, 1.0)
            self.norms[f"blk.{i}.ffn_norm.weight"] = (h, 1.0)
            self.norms[f"blk.{i}.attn_q_norm.weight"] = (hd, 1.0)
            self.norms[f"blk.{i}.attn_k_norm.weight"] = (hd, 1.0)
        self.order = list(self.mats)[:1] + list(self.norms) + list(self.mats)[1:]

    def __len__(self):
        return len(self.order)

    def __iter__(self):
        return iter(self.order)

    def __getitem__(self, name):
        if name in self.norms:
            n, gain = self.norms[name]
            rng = np.random.default_rng([self.seed, 1, self.order.index(name)])
            return (gain * rng.uniform(0.8, 1.2, n)).astype(np.float32)
        i, n, k, d = self.mats[name]
        rng = np.random.default_rng([self.seed, 0, i])
        bits = rng.integers(0, 2**64 - 1, size=(n, k // 64), dtype=np.uint64, endpoint=True)
        gs = (d * rng.uniform(0.5, 1.5, size=(n, k // Q1_0_BLOCK))).astype(np.float32)
        return tk.PackedWeights(bits, k, group_scale=gs, group_size=Q1_0_BLOCK)


def write_model(name: str, out: str, *, seed: int = 0, log=print) -> dict:
    """Write model `name` (see MODELS) as a Qwen3 GGUF file at `out`; returns its description."""
    from takane_kernels import gguf

    cfg = _config(name)
    tokens, scores, types = vocabulary(cfg["vocab"])
    arch = "qwen3"
    meta = {
        "general.name": f"takane synthetic {name} (random 1-bit weights)",
        f"{arch}.block_count": cfg["layers"],
        f"{arch}.context_length": 4096,
        f"{arch}.embedding_length": cfg["hidden"],
        f"{arch}.feed_forward_length": cfg["ffn"],
        f"{arch}.attention.head_count": cfg["heads"],
        f"{arch}.attention.head_count_kv": cfg["kv_heads"],
        f"{arch}.attention.key_length": cfg["head_dim"],
        f"{arch}.attention.value_length": cfg["head_dim"],
        f"{arch}.rope.freq_base": 1000000.0,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.asarray(scores, dtype=np.float32),
        "tokenizer.ggml.token_type": np.asarray(types, dtype=np.int32),
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    gguf.save(out, _LazyTensors(cfg, seed), arch=arch, metadata=meta)
    info = model_info(name)
    log(f"wrote {out}: {name}, {info['params'] / 1e6:.1f}M weights, {os.path.getsize(out) / 1e6:.1f} MB, "
        f"{time.perf_counter() - t0:.0f} s")
    return info


def model_info(name: str) -> dict:
    """Weights and the Q1_0 bytes one generated token reads: every matrix a MUL_MAT uses once per
    token (the layers and the output projection — with tied embeddings that is the embedding
    matrix itself); the embedding lookup reads one row, counted as such."""
    cfg = _config(name)
    mats = _matrices(cfg)
    q1 = lambda n, k: n * (k // Q1_0_BLOCK) * Q1_0_BLOCK_BYTES  # noqa: E731
    params = sum(n * k for _, n, k, _ in mats)
    per_token = sum(q1(n, k) for nm, n, k, _ in mats if nm != "token_embd.weight")
    emb = mats[0]
    per_token += q1(1, emb[2])  # the looked-up row
    if cfg["tied"]:
        per_token += q1(emb[1], emb[2])  # the output projection reads the whole embedding
    return {"name": name, **cfg, "params": params, "bytes_per_token": per_token,
            "q1_0_bytes": sum(q1(n, k) for _, n, k, _ in mats)}


# ---- the side-by-side ----------------------------------------------------------------------------

def _exe(dest: str, tool: str) -> str:
    path = os.path.join(dest, "bin", tool)
    if not os.access(path, os.X_OK):
        raise SystemExit(f"{path} not found: build it with bash integrations/llama.cpp/build.sh {dest}")
    return path


def _run(cmd, timeout=3600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc


def llama_bench(dest: str, model: str, threads, *, pp: int, tg: int, reps: int) -> dict:
    """llama-bench pp`pp` and tg`tg` at each thread count, --repack 1 (takane) and 0 (stock), one
    process: {(repack, threads, "pp"|"tg"): {"tok_s", "stddev"}} plus the command."""
    cmd = [_exe(dest, "llama-bench"), "-m", model, "-p", str(pp), "-n", str(tg), "-t",
           ",".join(map(str, threads)), "--repack", "1,0", "-r", str(reps), "-o", "json"]
    runs = json.loads(_run(cmd).stdout)
    out = {}
    for r in runs:
        kind = "pp" if r["n_prompt"] else "tg"
        out[(bool(r["repack"]), int(r["n_threads"]), kind)] = {"tok_s": float(r["avg_ts"]),
                                                                 "stddev": float(r["stddev_ts"])}
    return {"results": out, "command": " ".join(cmd)}


def corpus_text(min_chars: int) -> str:
    """Text to score: the source of Python's standard library modules, concatenated, in a fixed
    order (deterministic for one Python version; any text works, the check compares two runs)."""
    import inspect

    import argparse, collections, difflib, json as js, textwrap, typing  # noqa: E401
    parts, n = [], 0
    for mod in (textwrap, argparse, difflib, collections, typing, js):
        src = inspect.getsource(mod)
        parts.append(src)
        n += len(src)
        if n >= min_chars:
            break
    return "".join(parts)[:min_chars]


def base_entropy(path: str) -> tuple[float, int, int]:
    """(mean entropy in nats, tokens, vocab) of the distributions in a llama-perplexity
    --kl-divergence-base file: per scored token, log-probabilities stored as uint16 steps above
    a minimum (two float32 header words: step, minimum log-probability; a 0 means "below")."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:8] != b"_logits_":
        raise ValueError(f"{path}: not a llama-perplexity logits file")
    n_ctx, n_vocab, n_chunk = np.frombuffer(data, np.int32, 3, 8)
    off = 20 + int(n_chunk) * int(n_ctx) * 4
    nv = 2 * ((int(n_vocab) + 1) // 2) + 4
    recs = np.frombuffer(data, np.uint16, offset=off).reshape(-1, nv)
    ent = []
    for r in recs:
        scale, lo = np.frombuffer(r[:4].tobytes(), np.float32)
        q = r[4:4 + int(n_vocab)].astype(np.float64)
        logp = np.where(q > 0, lo + scale * q, -np.inf)
        p = np.exp(logp)
        p /= p.sum()
        ent.append(float(-(p[p > 0] * np.log(p[p > 0])).sum()))
    return float(np.mean(ent)), len(ent), int(n_vocab)


def kl_check(dest: str, model: str, workdir: str, *, threads: int, ctx: int, min_tokens: int) -> dict:
    """llama-perplexity on a generated text: stock (-nr) writes its logits, takane is compared
    with them. Scored tokens = chunks * (ctx/2 - 1) >= min_tokens."""
    chunks = math.ceil(min_tokens / (ctx // 2 - 1))
    text = os.path.join(workdir, "kl-text.txt")
    with open(text, "w") as fh:
        fh.write(corpus_text(chunks * ctx * 4))  # ~4 characters per token is an overestimate
    base = os.path.join(workdir, "kl-base.bin")
    ppl = _exe(dest, "llama-perplexity")
    common = ["-m", model, "-f", text, "-c", str(ctx), "--chunks", str(chunks), "-t", str(threads), "-b", str(ctx)]
    cmd_base = [ppl, *common, "-nr", "--kl-divergence-base", base]
    t0 = time.perf_counter()
    p_base = _run(cmd_base)
    t_base = time.perf_counter() - t0
    cmd_kl = [ppl, *common, "--kl-divergence-base", base, "--kl-divergence"]
    t0 = time.perf_counter()
    p_kl = _run(cmd_kl)
    t_kl = time.perf_counter() - t0
    log = p_kl.stdout + p_kl.stderr
    num = r"([-+0-9.eE]+)"

    def grab(pattern):
        m = re.search(pattern, log)
        if not m:
            raise RuntimeError(f"no {pattern!r} in llama-perplexity's output:\n{log[-3000:]}")
        return float(m.group(1))

    ent, n_tok, n_vocab = base_entropy(base)
    return {
        "mean_kld": grab(r"Mean\s+KLD:\s*" + num),
        "max_kld": grab(r"Maximum KLD:\s*" + num),
        "same_top_pct": grab(r"Same top p:\s*" + num),
        "ppl_stock": grab(r"Mean PPL\(base\)\s*:\s*" + num),
        "ppl_takane": grab(r"Mean PPL\(Q\)\s*:\s*" + num),
        "tokens": n_tok, "mean_entropy": ent, "log_vocab": math.log(n_vocab),
        "takane_used": "CPU_TAKANE" in log, "stock_used_takane": "CPU_TAKANE" in (p_base.stdout + p_base.stderr),
        "seconds_stock": t_base, "seconds_takane": t_kl,
        "commands": [" ".join(cmd_base), " ".join(cmd_kl)],
    }


def greedy(dest: str, model: str, prompt: str, *, takane: bool, threads: int, n: int = 64) -> tuple[str, bool]:
    """(generated text, whether CPU_TAKANE held weights) of llama-completion's greedy decoding."""
    cmd = [_exe(dest, "llama-completion"), "-m", model, "-p", prompt, "-n", str(n), "--temp", "0", "--top-k", "1",
           "--ignore-eos", "-no-cnv", "--no-display-prompt", "-t", str(threads), "-s", "1", "--no-warmup",
           "-v"]  # -v: the load log (which buffer types hold weights) goes to stderr
    if not takane:
        cmd.append("-nr")
    proc = _run(cmd, stdin=subprocess.DEVNULL)
    return proc.stdout, "CPU_TAKANE" in proc.stderr


def greedy_check(dest: str, model: str, *, threads: int, prompts=PROMPTS, n: int = 64) -> list[dict]:
    out = []
    for p in prompts:
        stock, s_used = greedy(dest, model, p, takane=False, threads=threads, n=n)
        ours, t_used = greedy(dest, model, p, takane=True, threads=threads, n=n)
        out.append({"prompt": p, "identical": stock == ours, "stock": stock, "takane": ours,
                    "takane_used": t_used, "stock_used_takane": s_used})
    return out


def side_by_side(dest: str, name: str, *, model_path: str | None = None, threads=(1, 2), pp: int = 512,
                 tg: int = 128, reps: int = 2, kl_tokens: int = 4096, kl_ctx: int = 512, workdir: str | None = None,
                 checks: bool = True, log=print) -> dict:
    from .llm import dram_bandwidth

    workdir = workdir or os.path.join("build", "llamacpp-side-by-side")
    os.makedirs(workdir, exist_ok=True)
    model = model_path or os.path.join(workdir, f"{name}.gguf")
    if not os.path.exists(model):
        write_model(name, model, log=log)
    info = model_info(name)
    rep = {"model": info, "file": model, "dest": dest, "threads": list(threads), "dram": {}}
    log(f"llama-bench pp{pp} / tg{tg}, --repack 1 (takane) vs 0 (stock), threads {list(threads)} ...")
    for t in threads:  # the bandwidth each thread count can draw, measured in this run
        rep["dram"][t] = dram_bandwidth(t)
    bench = llama_bench(dest, model, threads, pp=pp, tg=tg, reps=reps)
    rep["bench_command"] = bench["command"]
    rows = []
    for t in threads:
        for kind in ("tg", "pp"):
            ours, stock = bench["results"][(True, t, kind)], bench["results"][(False, t, kind)]
            row = {"threads": t, "test": f"{kind}{tg if kind == 'tg' else pp}", "takane_tok_s": ours["tok_s"],
                   "stock_tok_s": stock["tok_s"], "ratio": ours["tok_s"] / stock["tok_s"]}
            if kind == "tg":
                row["takane_gb_s"] = info["bytes_per_token"] * ours["tok_s"] / 1e9
                row["stock_gb_s"] = info["bytes_per_token"] * stock["tok_s"] / 1e9
                row["dram_gb_s"] = rep["dram"][t] / 1e9
                row["takane_pct_dram"] = 100 * row["takane_gb_s"] / row["dram_gb_s"]
            rows.append(row)
    rep["bench"] = rows
    if checks:
        t = max(threads)
        log(f"llama-perplexity --kl-divergence, >= {kl_tokens} tokens, stock (-nr) then takane ...")
        rep["kl"] = kl_check(dest, model, workdir, threads=t, ctx=kl_ctx, min_tokens=kl_tokens)
        log("llama-completion greedy, 64 tokens per prompt, stock and takane ...")
        rep["greedy"] = greedy_check(dest, model, threads=t)
    return rep


def print_side_by_side(rep: dict, file=None) -> None:
    p = lambda *a: print(*a, file=file or sys.stdout)  # noqa: E731
    m = rep["model"]
    p(f"\nllama.cpp end to end, {m['name']} shape ({m['layers']} layers, hidden {m['hidden']}, FFN {m['ffn']}, "
      f"{m['heads']}/{m['kv_heads']} heads, vocab {m['vocab']}, {'tied' if m['tied'] else 'untied'} embeddings; "
      f"{m['params'] / 1e9:.2f}B weights, Q1_0 {m['q1_0_bytes'] / 1e9:.2f} GB; "
      f"{m['bytes_per_token'] / 1e6:.0f} MB read per token): {rep['file']}")
    p(f"  one binary ({rep['dest']}), one file: CPU_TAKANE (--repack 1) vs stock llama.cpp Q1_0 (--repack 0)")
    head = f"  {'test':8s} {'thr':>3s} {'takane tok/s':>12s} {'stock tok/s':>11s} {'ratio':>6s} {'GB/s takane':>11s} " \
           f"{'GB/s stock':>10s} {'DRAM GB/s':>9s} {'% DRAM':>6s}"
    p(head)
    p("  " + "-" * (len(head) - 2))
    for r in rep["bench"]:
        bw = (f"{r['takane_gb_s']:11.1f} {r['stock_gb_s']:10.1f} {r['dram_gb_s']:9.1f} {r['takane_pct_dram']:5.0f}%"
              if "takane_gb_s" in r else f"{'-':>11s} {'-':>10s} {'-':>9s} {'-':>6s}")
        p(f"  {r['test']:8s} {r['threads']:3d} {r['takane_tok_s']:12.1f} {r['stock_tok_s']:11.1f} {r['ratio']:5.2f}x {bw}")
    p(f"  command: {rep['bench_command']}")
    p("  GB/s: Q1_0 bytes of every matrix a token multiplies (embedding: one row) x tok/s; DRAM: numpy read, same run")
    if "kl" in rep:
        k = rep["kl"]
        p(f"\n  correctness, llama-perplexity over {k['tokens']} tokens: mean KL(stock || takane) = {k['mean_kld']:.3g} "
          f"nats (max {k['max_kld']:.3g}), same top-1 token {k['same_top_pct']:.2f}%, PPL stock {k['ppl_stock']:.4f} "
          f"vs takane {k['ppl_takane']:.4f}")
        p(f"  the stock distributions' mean entropy: {k['mean_entropy']:.2f} nats (uniform: {k['log_vocab']:.2f}); "
          f"CPU_TAKANE held weights: takane run {k['takane_used']}, stock run {k['stock_used_takane']}")
        for c in k["commands"]:
            p(f"  command: {c}")
    if "greedy" in rep:
        same = sum(g["identical"] for g in rep["greedy"])
        p(f"\n  greedy generation, 64 tokens: {same}/{len(rep['greedy'])} prompts identical (stock vs takane)")
        for g in rep["greedy"]:
            p(f"    {g['prompt']!r}: {'identical' if g['identical'] else 'DIFFERENT'}")
