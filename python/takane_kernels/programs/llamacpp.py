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
# its output projection to the token embedding, Bonsai-8B does not. How the random weights are
# scaled (see _matrices): embed_rms, the embedding rows' RMS; out_scale, a factor on the
# matrices that write into the residual stream (attn_output, ffn_down); logit_std, the logits'
# spread (sets how peaked the next-token distributions are).
MODELS = {
    # tests and CI: untied, embedding-dominated residual stream (out_scale 0.3): a model much
    # less sensitive to activation-rounding noise than the random deep ones, on which the
    # KL-divergence thresholds are meaningful (see kl_check)
    "tiny": dict(layers=2, hidden=256, ffn=768, heads=4, kv_heads=2, head_dim=64, vocab=4096, tied=False,
                 embed_rms=1.0, out_scale=0.3, logit_std=3.0),
    # the same, tied: token_embd serves GET_ROWS and the output MUL_MAT from one CPU_TAKANE tensor
    "tiny-tied": dict(layers=2, hidden=256, ffn=768, heads=4, kv_heads=2, head_dim=64, vocab=4096, tied=True,
                      embed_rms=0.1, out_scale=1.0, logit_std=3.0),
    "bonsai-1.7b": dict(layers=28, hidden=2048, ffn=6144, heads=16, kv_heads=8, head_dim=128, vocab=151936,
                        tied=True, embed_rms=0.1, out_scale=1.0, logit_std=4.0),
    "bonsai-8b": dict(layers=36, hidden=4096, ffn=12288, heads=32, kv_heads=8, head_dim=128, vocab=151936,
                      tied=False, embed_rms=0.1, out_scale=1.0, logit_std=4.0),
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
    # Embedding rows of RMS embed_rms. With tied embeddings it must stay well below the layers'
    # contributions (each ~1): a residual stream dominated by the current token's own row would
    # give that token a logit sqrt(hidden) times the others' spread, and a model that only
    # repeats itself.
    out = [("token_embd.weight", cfg["vocab"], h, cfg["embed_rms"])]
    for i in range(cfg["layers"]):
        for nm, n, k in (("attn_q", q, h), ("attn_k", kv, h), ("attn_v", kv, h), ("attn_output", h, q),
                         ("ffn_gate", f, h), ("ffn_up", f, h), ("ffn_down", h, f)):
            a = cfg["out_scale"] if nm in ("attn_output", "ffn_down") else 1.0
            out.append((f"blk.{i}.{nm}.weight", n, k, a / math.sqrt(k)))
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
        # embedding rows (RMS embed_rms) . the normed state x gain -> std gain * embed_rms *
        # sqrt(h); untied, rows of ±1/sqrt(h) -> std gain.
        out_gain = cfg["logit_std"] / (cfg["embed_rms"] * math.sqrt(h)) if cfg["tied"] else cfg["logit_std"]
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
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, **kw)
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


def _logits_file(path: str):
    """A llama-perplexity logits file (--kl-divergence-base FILE, written by a plain run): returns
    (n_vocab, records uint16 (tokens, nv)). Per scored token: two float32 words (step, minimum
    log-probability), padding, then n_vocab log-probabilities as uint16 steps above the minimum
    (0: at or below it; the minimum is max - 16 nats or the smallest logit)."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if head[:8] != b"_logits_":
        raise ValueError(f"{path}: not a llama-perplexity logits file")
    n_ctx, n_vocab, n_chunk = np.frombuffer(head, np.int32, 3, 8)
    nv = 2 * ((int(n_vocab) + 1) // 2) + 4
    recs = np.memmap(path, np.uint16, "r", offset=20 + int(n_chunk) * int(n_ctx) * 4)
    return int(n_vocab), recs.reshape(-1, nv)


def _log_probs(recs: np.ndarray, n_vocab: int) -> np.ndarray:
    """Decoded, renormalized log-probabilities (float64) of a block of records."""
    hdr = np.ascontiguousarray(recs[:, :4]).view(np.float32)  # (rows, 2): step, minimum
    q = recs[:, 4:4 + n_vocab].astype(np.float64)
    logp = hdr[:, 1:2].astype(np.float64) + hdr[:, 0:1].astype(np.float64) * q
    m = logp.max(axis=1, keepdims=True)
    return logp - (m + np.log(np.exp(logp - m).sum(axis=1, keepdims=True)))


def compare_logits(base_path: str, test_path: str, block: int = 32) -> dict:
    """KL(base || test) per token, same top-1 token, and the base's entropy, from two logits
    files of the same text. Computed here rather than read from llama-perplexity's
    --kl-divergence summary: that summary goes through llama.cpp's asynchronous logger, which
    can lose the last lines at exit (llama.cpp issue 22142), while the files are written directly.
    A top-1 "match" also counts a test argmax whose base log-probability equals the base maximum
    (a tie at the files' 2.4e-4-nat resolution)."""
    n_vocab, a = _logits_file(base_path)
    n2, b = _logits_file(test_path)
    if n_vocab != n2 or a.shape != b.shape:
        raise ValueError(f"{base_path} and {test_path} do not hold the same tokens")
    kl, same, ent = [], 0, []
    for i in range(0, a.shape[0], block):
        la, lb = _log_probs(a[i:i + block], n_vocab), _log_probs(b[i:i + block], n_vocab)
        pa = np.exp(la)
        kl.append((pa * (la - lb)).sum(axis=1))
        ent.append(-(pa * la).sum(axis=1))
        top_b = lb.argmax(axis=1)
        same += int((la[np.arange(len(la)), top_b] >= la.max(axis=1)).sum())
    kl, ent = np.concatenate(kl), np.concatenate(ent)
    return {"tokens": int(a.shape[0]), "mean_kld": float(kl.mean()), "max_kld": float(kl.max()),
            "same_top_pct": 100.0 * same / a.shape[0], "mean_entropy": float(ent.mean()),
            "log_vocab": math.log(n_vocab)}


def kl_check(dest: str, model: str, workdir: str, *, threads: int, ctx: int, min_tokens: int,
             baseline: bool = True) -> dict:
    """llama-perplexity on a generated text, stock (-nr) and takane, each writing its logits
    (--kl-divergence-base FILE); compared by compare_logits. Scored tokens = chunks * (ctx/2 - 1)
    >= min_tokens.

    baseline: also stock with flash attention off (-nr -fa off; the default runs use it on),
    compared with stock: how far llama.cpp moves from itself under a change of float summation
    order alone. Two implementations of Q1_0 x Q8_0 that agree to float rounding (as takane and
    stock do, ~1e-7 relative per product) still diverge end to end, because every later Q8_0
    quantization of activations (and the f16 KV cache) rounds a few perturbed values the other
    way: a perturbation d much smaller than a quantization step s grows to ~sqrt(d * s) at each
    quantized layer input, until it reaches the quantization noise itself. The baseline shows the
    size of that effect for the model at hand."""
    chunks = math.ceil(min_tokens / (ctx // 2 - 1))
    text = os.path.join(workdir, "kl-text.txt")
    with open(text, "w") as fh:
        fh.write(corpus_text(chunks * ctx * 4))  # ~4 characters per token is an overestimate
    ppl = _exe(dest, "llama-perplexity")
    # -v: the load log, which names the buffer types holding weights (CPU_TAKANE or not)
    common = ["-m", model, "-f", text, "-c", str(ctx), "--chunks", str(chunks), "-t", str(threads), "-b", str(ctx),
              "-v"]
    out = {"commands": [], "seconds": {}}
    used = {}
    extra = {"stock": ["-nr"], "takane": [], "stock-fa-off": ["-nr", "-fa", "off"]}
    for path in ("stock", "takane") + (("stock-fa-off",) if baseline else ()):
        logits = os.path.join(workdir, f"kl-{path}.bin")
        cmd = [ppl, *common, "--kl-divergence-base", logits] + extra[path]
        t0 = time.perf_counter()
        proc = _run(cmd)
        out["seconds"][path] = time.perf_counter() - t0
        out["commands"].append(" ".join(cmd))
        used[path] = "CPU_TAKANE model buffer" in proc.stderr + proc.stdout
    out.update(compare_logits(os.path.join(workdir, "kl-stock.bin"), os.path.join(workdir, "kl-takane.bin")))
    if out["tokens"] < min_tokens:
        raise RuntimeError(f"the text gave {out['tokens']} scored tokens, fewer than {min_tokens}")
    if baseline:
        b = compare_logits(os.path.join(workdir, "kl-stock.bin"), os.path.join(workdir, "kl-stock-fa-off.bin"))
        out["baseline"] = {"what": "stock (flash attention on) vs stock -fa off", "mean_kld": b["mean_kld"],
                           "max_kld": b["max_kld"], "same_top_pct": b["same_top_pct"]}
    out["takane_used"], out["stock_used_takane"] = used["takane"], used["stock"]
    for path in used:  # ~n_vocab * 2 bytes per token each: not kept
        os.remove(os.path.join(workdir, f"kl-{path}.bin"))
    return out


def greedy(dest: str, model: str, prompt: str, *, takane: bool, threads: int, n: int = 64,
           extra=()) -> tuple[str, bool]:
    """(generated text, whether CPU_TAKANE held weights) of llama-completion's greedy decoding
    of n tokens. The text goes through llama.cpp's asynchronous logger, which can drop the last
    lines at exit (llama.cpp issue 22142; often on a busy machine): 16 more tokens than asked
    are generated, so that a lost tail costs only those, and a run whose closing timing lines
    are missing is repeated up to 10 times, then taken as it is (compare texts up to the
    shorter one, as greedy_check does)."""
    cmd = [_exe(dest, "llama-completion"), "-m", model, "-p", prompt, "-n", str(n + 16), "--temp", "0",
           "--top-k", "1", "--ignore-eos", "-no-cnv", "--no-display-prompt", "-t", str(threads), "-s", "1",
           "--no-warmup", "-v", *extra]  # -v: the load log (which buffer types hold weights) goes to stderr
    if not takane:
        cmd.append("-nr")
    for _ in range(10):
        proc = _run(cmd, stdin=subprocess.DEVNULL)
        if "total time" in proc.stderr:
            break
    return proc.stdout, "CPU_TAKANE model buffer" in proc.stderr


def _common_prefix(a: str, b: str) -> int:
    return next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))


def greedy_check(dest: str, model: str, *, threads: int, prompts=PROMPTS, n: int = 64, baseline: bool = True) -> list[dict]:
    """Greedy generation of n tokens per prompt, stock and takane, compared as text (common
    prefix in characters when they differ). baseline: also stock with flash attention off, to
    show whether the prompt sits on a near-tie that llama.cpp itself flips under a change of
    float summation order."""
    out = []
    for p in prompts:
        stock, s_used = greedy(dest, model, p, takane=False, threads=threads, n=n)
        ours, t_used = greedy(dest, model, p, takane=True, threads=threads, n=n)
        m = min(len(stock), len(ours))  # compared characters (see greedy: a lost log tail)
        rec = {"prompt": p, "identical": stock[:m] == ours[:m], "common_prefix": _common_prefix(stock, ours),
               "chars": m, "stock": stock, "takane": ours, "takane_used": t_used, "stock_used_takane": s_used}
        if baseline:
            fa_off, _ = greedy(dest, model, p, takane=False, threads=threads, n=n, extra=("-fa", "off"))
            mb = min(len(stock), len(fa_off))
            rec["baseline_identical"] = fa_off[:mb] == stock[:mb]
            rec["baseline_common_prefix"] = _common_prefix(stock, fa_off)
        out.append(rec)
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
    rep["loadavg_before"] = os.getloadavg()[0]
    bench = llama_bench(dest, model, threads, pp=pp, tg=tg, reps=reps)
    rep["loadavg_after"] = os.getloadavg()[0]
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
    if "loadavg_before" in rep:
        p(f"  1-minute load average before / after: {rep['loadavg_before']:.1f} / {rep['loadavg_after']:.1f} "
          f"on {os.cpu_count()} CPUs (other work on the machine slows both paths, unevenly)")
    p("  GB/s: Q1_0 bytes of every matrix a token multiplies (embedding: one row) x tok/s; DRAM: numpy read, same run")
    if "kl" in rep:
        k = rep["kl"]
        p(f"\n  correctness, llama-perplexity logits over {k['tokens']} tokens: mean KL(stock || takane) = "
          f"{k['mean_kld']:.3g} nats (max {k['max_kld']:.3g}), same top-1 token {k['same_top_pct']:.2f}% "
          f"(perplexity runs: stock {k['seconds']['stock']:.0f} s, takane {k['seconds']['takane']:.0f} s)")
        if "baseline" in k:
            b = k["baseline"]
            p(f"  for scale, llama.cpp against itself ({b['what']}): mean KL {b['mean_kld']:.3g} nats "
              f"(max {b['max_kld']:.3g}), same top-1 {b['same_top_pct']:.2f}%")
        p(f"  the stock distributions' mean entropy: {k['mean_entropy']:.2f} nats (uniform: {k['log_vocab']:.2f}); "
          f"CPU_TAKANE held weights: takane run {k['takane_used']}, stock run {k['stock_used_takane']}")
        for c in k["commands"]:
            p(f"  command: {c}")
    if "greedy" in rep:
        same = sum(g["identical"] for g in rep["greedy"])
        p(f"\n  greedy generation, 64 tokens: {same}/{len(rep['greedy'])} prompts identical (stock vs takane)")
        for g in rep["greedy"]:
            base = ""
            if "baseline_identical" in g:
                base = ("; stock vs stock -fa off: " + ("identical" if g["baseline_identical"] else
                        f"differ after {g['baseline_common_prefix']} characters"))
            p(f"    {g['prompt']!r}: " + ("identical" if g["identical"] else
              f"differ after {g['common_prefix']} of {g['chars']} characters") + base)
