"""``python -m takane_kernels llm`` (takane_kernels.programs.llm), on tiny shapes.

The program's numbers are timings (never asserted); what is checked: the Llama shapes, the
memory table's arithmetic, the bytes each mode streams, that every timed mode's first layer
agrees with the reference, the JSON output, the q8_0 guard, and that the llama.cpp peer is
skipped with a reason when absent.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels.programs import llm as _llm

pytestmark = pytest.mark.slow  # a program or a training run: deselect with -m 'not slow'

TINY = ["--hidden", "128", "--ffn", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2"]


def test_llama_shapes_are_tinyllama_widths():
    shapes = _llm.llama_shapes(2048, 5632, 22, 32, 4)
    assert len(shapes) == 22 * 7
    by_kind = {name.split(".", 2)[2]: (n, k) for name, n, k in shapes[:7]}
    assert by_kind == {"attn_q.weight": (2048, 2048), "attn_k.weight": (256, 2048), "attn_v.weight": (256, 2048),
                       "attn_output.weight": (2048, 2048), "ffn_gate.weight": (5632, 2048),
                       "ffn_up.weight": (5632, 2048), "ffn_down.weight": (2048, 5632)}
    assert sum(n * k for _, n, k in shapes) == 22 * (2 * 2048 * 2048 + 2 * 256 * 2048 + 3 * 5632 * 2048)
    with pytest.raises(ValueError, match="heads"):
        _llm.llama_shapes(100, 200, 1, 3, 1)
    with pytest.raises(ValueError, match="KV heads"):
        _llm.llama_shapes(128, 200, 1, 4, 3)


def test_shape_args_fold_repeated_layers():
    shapes = _llm.llama_shapes(128, 192, 3, 4, 2)
    layers, mats = _llm._shape_args(shapes)
    assert layers == 3 and mats == ["128x128", "64x128", "64x128", "128x128", "192x128", "192x128", "128x192"]
    assert _llm._shape_args([("a", 8, 64), ("b", 16, 64)]) == (1, ["8x64", "16x64"])


def test_memory_table_and_streamed_bytes():
    shapes = [("a", 16, 256), ("b", 8, 128)]
    weights = _llm.random_weights(shapes)
    params = 16 * 256 + 8 * 128
    table = {r["format"]: r["bytes"] for r in _llm.memory_table(shapes, weights)}
    assert table["fp32"] == 4 * params and table["fp16"] == 2 * params
    assert table["Q1_0 (llama.cpp)"] == (16 * 2 + 8 * 1) * 18  # 18 bytes per 128 weights
    assert table["1-bit signs only"] == params // 8
    assert table["1-bit + group scales (G=128)"] == params // 8 + (16 * 2 + 8 * 1) * 4
    assert table["1-bit + row scale"] == params // 8 + (16 + 8) * 4
    for _, w in weights:
        assert w.group_size == 128 and w.group_scale.shape == (w.n, -(-w.k // 128))
        assert np.all(w.group_scale > 0)
    rows = [_llm._row_scaled(w) for _, w in weights]
    assert _llm._streamed_bytes(rows) == table["1-bit + row scale"]
    for (_, w), r in zip(weights, rows):
        np.testing.assert_array_equal(r.bits, w.bits)
        np.testing.assert_allclose(r.scale, w.group_scale.mean(axis=1), rtol=1e-6)


def test_padding_bits_are_zero_for_any_k():
    (_, w), = _llm.random_weights([("a", 5, 100)])
    assert int(np.max(w.bits[:, -1] >> np.uint64(36))) == 0  # bits 36..63 of the last word are padding


def test_q8_0_runs_on_the_group_scaled_weights():
    weights = _llm.random_weights([("a", 16, 128)])
    ws, note = _llm.prepare_mode("q8_0", weights)
    x = np.ones(128, dtype=np.float32)
    assert note == "group scales" and ws[0] is weights[0][1]
    assert tk.binary_weight_matmul(x, ws[0], activations="q8_0").shape == (16,)


def test_every_timed_mode_checks_its_first_layer():
    weights = _llm.random_weights(_llm.llama_shapes(128, 192, 1, 4, 2))
    for mode in _llm.MODES:
        ws, note = _llm.prepare_mode(mode, weights)
        rec = _llm.run_mode(mode, ws, note, 1, tokens=2, prefill=3, budget_s=0.1)
        assert rec["check"] == "exact" if mode == "w1a1" else rec["check"] == "within bound"
        assert rec["weight_bytes"] == _llm._streamed_bytes(ws)
        assert rec["decode_s"] > 0 and rec["prefill_s"] > 0 and rec["prefill_m"] == 3


def test_check_catches_a_wrong_result(monkeypatch):
    weights = _llm.random_weights([("a", 16, 128)])
    ws, note = _llm.prepare_mode("w1a1", weights)
    real = tk.binary_linear
    monkeypatch.setattr(tk, "binary_linear", lambda x, w, **kw: real(x, w, **kw) + np.float32(1))
    with pytest.raises(AssertionError, match="w1a1"):
        _llm.run_mode("w1a1", ws, note, 1, tokens=1, prefill=0, budget_s=0.1)


def test_gguf_option_times_the_q1_0_tensors(monkeypatch, capsys, tmp_path):
    """--gguf PATH: the PackedWeights (Q1_0 tensors) of a file written by takane_kernels.gguf,
    in file order; F32/F16 arrays are left out."""
    from takane_kernels import gguf

    weights = dict(_llm.random_weights([("blk.0.attn_q.weight", 16, 128), ("blk.0.ffn_down.weight", 8, 256)]))
    path = tmp_path / "model.gguf"
    gguf.save(path, {"token_embd.weight": np.zeros((4, 128), np.float32), **weights}, arch="llama")
    monkeypatch.delenv("TAKANE_LLAMA_CPP", raising=False)
    for mode, check in (("w1a1", "exact"), ("q8_0", "within bound")):
        assert _llm.main(["--gguf", str(path), "--threads", "1", "--modes", mode, "--tokens", "1", "--prefill",
                          "0", "--budget", "0.1", "--dram-mb", "8", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["source"] == str(path) and report["matrices"] == 2
        assert report["params"] == 16 * 128 + 8 * 256
        (rec,) = report["results"]
        assert rec["check"] == check
    empty = tmp_path / "empty.gguf"
    gguf.save(empty, {"token_embd.weight": np.zeros((4, 128), np.float32)}, arch="llama")
    with pytest.raises(SystemExit, match="no Q1_0 tensors"):
        _llm.main(["--gguf", str(empty), "--threads", "1"])


def test_gguf_option_treats_token_embd_as_a_lookup(monkeypatch, capsys, tmp_path):
    """A Q1_0 token_embd is a lookup: left out when the file has output.weight; with tied
    embeddings (no output.weight) it is timed once, as the output projection."""
    from takane_kernels import gguf

    w = dict(_llm.random_weights([("token_embd.weight", 64, 128), ("blk.0.attn_q.weight", 16, 128),
                                  ("output.weight", 64, 128)]))
    monkeypatch.delenv("TAKANE_LLAMA_CPP", raising=False)
    args = ["--threads", "1", "--modes", "q8_0", "--tokens", "1", "--prefill", "0", "--budget", "0.1",
            "--dram-mb", "8", "--json"]
    for names, matrices in ((("token_embd.weight", "blk.0.attn_q.weight", "output.weight"), 2),
                            (("token_embd.weight", "blk.0.attn_q.weight"), 2)):
        path = tmp_path / f"m{len(names)}.gguf"
        gguf.save(path, {n: w[n] for n in names}, arch="llama")
        assert _llm.main(["--gguf", str(path), *args]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["matrices"] == matrices and report["params"] == 64 * 128 + 16 * 128


def test_every_llm_option_has_a_help_text():
    import argparse

    captured = {}
    real = argparse.ArgumentParser.parse_args

    def grab(self, *a, **kw):
        captured["p"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(SystemExit):
            _llm.main([])
    finally:
        argparse.ArgumentParser.parse_args = real
    for action in captured["p"]._actions:
        assert action.help, action.option_strings


def test_model_option_writes_a_qwen3_gguf(tmp_path):
    """llm --model tiny --out FILE: a Qwen3 GGUF llama.cpp can load — Q1_0 matrices, F32 norms,
    the metadata keys of the architecture and a SentencePiece vocabulary with byte fallback."""
    from takane_kernels import gguf
    from takane_kernels.programs import llamacpp

    out = tmp_path / "tiny.gguf"
    assert _llm.main(["--model", "tiny", "--out", str(out)]) == 0
    tensors, meta = gguf.load(out), gguf.load_metadata(out)
    cfg = llamacpp.MODELS["tiny"]
    assert meta["general.architecture"] == "qwen3" and meta["qwen3.block_count"] == cfg["layers"]
    assert meta["qwen3.attention.key_length"] == cfg["head_dim"]
    assert tensors["token_embd.weight"].n == cfg["vocab"] and tensors["token_embd.weight"].k == cfg["hidden"]
    assert tensors["blk.1.ffn_down.weight"].k == cfg["ffn"] and "output.weight" in tensors
    assert tensors["output_norm.weight"].dtype == np.float32
    toks = meta["tokenizer.ggml.tokens"]
    assert len(toks) == cfg["vocab"] == len(set(toks)) and toks[3] == "<0x00>" and toks[258] == "<0xFF>"
    info = llamacpp.model_info("bonsai-1.7b")  # shapes only, nothing written
    assert info["params"] == 151936 * 2048 + 28 * (2048 * 2048 * 2 + 1024 * 2048 * 2 + 3 * 6144 * 2048)
    # tied: a token reads every layer, the whole embedding (output projection) and one row more
    assert info["bytes_per_token"] == info["q1_0_bytes"] + 2048 // 128 * 18


# under user-mode qemu (.ci/aarch64.sh) the host cannot exec the aarch64 interpreter itself
EMULATOR = shlex.split(os.environ.get("TAKANE_TEST_EMULATOR", ""))


def run_cli(*args, env_update=None):
    env = {k: v for k, v in os.environ.items() if k != "TAKANE_LLAMA_CPP"}
    env.update(env_update or {})
    proc = subprocess.run([*EMULATOR, sys.executable, "-m", "takane_kernels", "llm", *TINY, "--tokens", "2", "--prefill", "4",
                           "--budget", "0.2", "--dram-mb", "8", "--json", *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_cli_json_report():
    report, _ = run_cli("--threads", "1", "2")
    assert report["matrices"] == 14 and report["params"] == 2 * (2 * 128 * 128 + 2 * 64 * 128 + 3 * 256 * 128)
    assert {(r["mode"], r["threads"]) for r in report["results"]} == {(m, t) for m in _llm.MODES for t in (1, 2)}
    for r in report["results"]:
        assert r["dram_bytes_per_s"] > 0
        assert r["decode_bytes_per_s"] == pytest.approx(r["weight_bytes"] / r["decode_s"])
        assert r["pct_dram"] == pytest.approx(100 * r["decode_bytes_per_s"] / r["dram_bytes_per_s"])
        assert r["prefill_tok_s"] == pytest.approx(4 / r["prefill_s"])
    assert set(report["dram"]) == {"1", "2"}
    assert report["llama_cpp"]["available"] is False
    assert "TAKANE_LLAMA_CPP" in report["llama_cpp"]["reason"]
    # resident memory: measured per model (the loaded one, w1a1's row-scaled copy); the
    # weights hold one copy of the signs (the handle) plus scales
    loaded, rows = report["resident"]
    assert loaded["model"].startswith("as loaded") and rows["model"].startswith("w1a1")
    for r in (loaded, rows):
        assert r["bytes_1bit_scales"] > 0 and r["held_bytes"] < 1.1 * r["bytes_1bit_scales"]
        if sys.platform.startswith("linux"):  # RSS from /proc (a number, never asserted against)
            assert isinstance(r["rss_growth"], int)
        if r["rss_growth_trimmed"] is not None:  # glibc: the growth once its free heap went back
            assert isinstance(r["rss_growth_trimmed"], int)
            assert r["ratio_trimmed"] == pytest.approx(r["rss_growth_trimmed"] / r["bytes_1bit_scales"])


def test_llama_cpp_needs_whole_q1_0_blocks(tmp_path):
    report = _llm.run(weights=_llm.random_weights([("a", 8, 192)]), threads_list=[1], modes=["w1a1"], tokens=1,
                      prefill=0, budget_s=0.1, dram_mb=8, llama_cpp=str(tmp_path), log=lambda *a: None)
    assert not report["llama_cpp"]["available"] and "128" in report["llama_cpp"]["reason"]


def test_cli_table_and_missing_llama_cpp(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TAKANE_LLAMA_CPP"}
    env["TAKANE_LLAMA_CPP"] = str(tmp_path)
    proc = subprocess.run([*EMULATOR, sys.executable, "-m", "takane_kernels", "llm", *TINY, "--threads", "1", "--modes", "w1a1",
                           "--tokens", "2", "--prefill", "0", "--budget", "0.2", "--dram-mb", "8"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "% DRAM" in proc.stdout and "vs fp16" in proc.stdout
    assert "llama.cpp: skipped" in proc.stdout and "takane-ggml-q1-matmul not found" in proc.stdout


@pytest.mark.skipif(not os.environ.get("TAKANE_LLAMA_CPP"), reason="no llama.cpp peer (env TAKANE_LLAMA_CPP; bench/build_llamacpp.sh)")
def test_llama_cpp_peer_runs_the_same_shapes():
    report, _ = run_cli("--threads", "1", "--modes", "w1a1", env_update={"TAKANE_LLAMA_CPP": os.environ["TAKANE_LLAMA_CPP"]})
    lc = report["llama_cpp"]
    assert lc["available"]
    (rec,) = lc["results"]
    assert "error" not in rec["decode"], rec["decode"]
    assert rec["decode"]["matrices"] == 14 and rec["decode"]["median_s"] > 0
    assert rec["decode"]["weight_bytes"] == sum(n * (k // 128) * 18 for _, n, k in _llm.llama_shapes(128, 256, 2, 4, 2))


def _separate_and_fused(mode, names, weights, threads, x_by_k):
    """Each matrix's result from its own call, and the same rows cut from fuse_plan's calls."""
    ws, _ = _llm.prepare_mode(mode, list(zip(names, weights)))
    fn = _llm._layer_fn(mode, threads)
    separate = {n: fn(x_by_k[w.k], w) for n, w in zip(names, ws)}
    fused = {}
    for w, parts in _llm.fuse_plan(names, ws):
        y = fn(x_by_k[w.k], w)
        for n, b0, b1 in parts:
            fused[n] = y[..., b0:b1]
    return separate, fused


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", _llm.MODES)
def test_fused_calls_give_the_separate_results_bit_for_bit(mode, threads, isa_name, on_isa):
    # odd shapes: K not a multiple of 64 (nor of the group size 128), N not a multiple of 8
    # (a panel) or 64 (a W1A1 output word), batched rows too (prefill); the last layer's
    # stacked gate/up (12002 x 1400) is above every mode's threshold for splitting a call
    # across threads, so with threads=2 the fused call is split where the separate ones are not
    rng = np.random.default_rng(7)
    names, shapes = [], []
    for layer, (n_q, n_kv, n_ff, k) in enumerate([(37, 5, 70, 200), (64, 8, 129, 448), (300, 40, 6001, 1400)]):
        for kind, n, kk in [("attn_q", n_q, k), ("attn_k", n_kv, k), ("attn_v", n_kv, k), ("attn_output", k, n_q),
                            ("ffn_gate", n_ff, k), ("ffn_up", n_ff, k), ("ffn_down", k, n_ff)]:
            names.append(f"blk.{layer}.{kind}.weight")
            shapes.append((names[-1], n, kk))
    weights = [w for _, w in _llm.random_weights(shapes, seed=3)]
    for m in ((), (3,)):
        x_by_k = {k: rng.standard_normal(m + (k,)).astype(np.float32) for k in {w.k for w in weights}}
        separate, fused = _separate_and_fused(mode, names, weights, threads, x_by_k)
        assert separate.keys() == fused.keys() == set(names)
        for n in names:
            assert fused[n].shape == separate[n].shape
            assert np.array_equal(fused[n], separate[n]), n


def test_fuse_plan_groups_only_matrices_that_share_an_input():
    shapes = _llm.llama_shapes(128, 192, 2, 4, 2)
    weights = _llm.random_weights(shapes)
    names = [n for n, _ in weights]
    ws = [w for _, w in weights]
    plan = _llm.fuse_plan(names, ws)
    kinds = [tuple(n.split(".")[2] for n, _, _ in parts) for _, parts in plan]
    assert kinds == [("attn_q", "attn_k", "attn_v"), ("attn_output",), ("ffn_gate", "ffn_up"), ("ffn_down",)] * 2
    for w, parts in plan:
        assert parts[0][1] == 0 and parts[-1][2] == w.n
        assert all(a[2] == b[1] for a, b in zip(parts, parts[1:]))
    # a group whose members differ in K, scales or layer is not stacked
    odd = _llm.random_weights([("blk.0.attn_q.weight", 8, 128), ("blk.0.attn_k.weight", 8, 192),
                               ("blk.0.attn_v.weight", 8, 128), ("blk.1.ffn_gate.weight", 8, 128),
                               ("blk.2.ffn_up.weight", 8, 128)])
    plan = _llm.fuse_plan([n for n, _ in odd], [w for _, w in odd])
    assert [len(parts) for _, parts in plan] == [1] * 5
    row = _llm._row_scaled(ws[0])
    assert len(_llm.fuse_plan(names[:3], [row] + ws[1:3])) == 3  # row scale vs group scales


def test_run_reports_the_calls_per_token():
    weights = _llm.random_weights(_llm.llama_shapes(128, 192, 2, 4, 2))
    for fuse, calls in ((True, 8), (False, 14)):
        rep = _llm.run(weights=weights, threads_list=(1,), modes=("q8_0",), tokens=1, prefill=0, budget_s=0.05,
                       dram_mb=8, log=lambda *a: None, fuse=fuse)
        assert rep["fused"] is fuse and rep["results"][0]["calls_per_token"] == calls
