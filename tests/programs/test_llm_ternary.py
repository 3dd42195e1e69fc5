"""``python -m takane_kernels llm --ternary`` (takane_kernels.programs.llm_ternary), tiny shapes.

Timings are never asserted. Checked: the BitNet shapes (seven matrices per layer plus the
output projection), the random weights are canonical ternary, every mode's result agrees
with takane_kernels.reference (and a wrong result is caught), the table's structure and
arithmetic, the dispatch from ``llm --ternary`` with --json, the llama.cpp skip reason, and
that the TQ2_0 model file written for llama.cpp holds the shapes as TernaryWeights.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels.programs import llm, llm_ternary

TINY = dict(hidden=256, ffn=512, layers=1, heads=4, kv_heads=2, vocab=300)


def test_bitnet_shapes():
    shapes = llm_ternary.ternary_shapes(**llm_ternary.BITNET_2B4T)
    assert len(shapes) == 30 * 7 + 1
    assert shapes[-1] == ("output.weight", 128256, 2560)
    per_layer = {name.split(".", 2)[2]: (n, k) for name, n, k in shapes[:7]}
    assert per_layer == {"attn_q.weight": (2560, 2560), "attn_k.weight": (640, 2560), "attn_v.weight": (640, 2560),
                         "attn_output.weight": (2560, 2560), "ffn_gate.weight": (6912, 2560),
                         "ffn_up.weight": (6912, 2560), "ffn_down.weight": (2560, 6912)}
    assert llm_ternary.ternary_shapes(**{**TINY, "vocab": 0})[-1][0] == "blk.0.ffn_down.weight"


def test_random_ternary_is_canonical():
    w = llm_ternary.random_ternary(5, 100, np.random.default_rng(0))
    t = w.to_dense()
    assert set(np.unique(t)) <= {-1, 0, 1} and (t == 0).any() and (t == 1).any() and (t == -1).any()
    assert not np.any(w.sign & ~w.nonzero)
    assert not np.any(w.nonzero[:, -1] >> np.uint64(100 % 64))  # zero padding past K
    assert w.tensor_scale == pytest.approx(0.1)


def test_table_structure_and_results_match_reference():
    lines = []
    rep = llm_ternary.run(TINY, threads_list=(1, 2), tokens=2, prefill=4, prefill_modes=llm_ternary.MODES,
                          budget_s=0.2, dram_mb=8, log=lines.append)
    shapes = llm_ternary.ternary_shapes(**TINY)
    assert rep["matrices"] == len(shapes) == 8
    assert rep["params"] == sum(n * k for _, n, k in shapes)
    # 2 bits per weight (K padded to 64) and one float32 tensor scale per matrix
    assert rep["weight_bytes"] == sum(2 * n * -(-k // 64) * 8 + 4 for _, n, k in shapes)
    assert rep["tq_bytes"] == {"TQ2_0": sum(n * k // 256 * 66 for _, n, k in shapes),
                               "TQ1_0": sum(n * k // 256 * 54 for _, n, k in shapes)}
    assert [(r["mode"], r["threads"]) for r in rep["results"]] == [
        (m, t) for m in llm_ternary.MODES for t in (1, 2)]
    for r in rep["results"]:
        assert r["check"] == "within bound"
        assert r["weight_bytes"] == rep["weight_bytes"]
        assert r["decode_tok_s"] == pytest.approx(1 / r["decode_s"])
        assert r["pct_dram"] == pytest.approx(100 * r["decode_bytes_per_s"] / r["dram_bytes_per_s"])
        assert r["prefill_m"] == 4 and r["prefill_tok_s"] == pytest.approx(4 / r["prefill_s"])
        assert ("pct_int8_peak" in r) == (rep["int8_peak_macs_per_s"] is not None)
        assert r["decode_cpu_s"] > 0 and ("pct_dram_cpu" in r) == (r["threads"] == 1)
    assert set(rep["dram"]) == {"1", "2"}
    assert not rep["llama_cpp"]["available"] and "--llama-cpp" in rep["llama_cpp"]["reason"]
    assert len(lines) == 6
    out = io.StringIO()
    llm_ternary.print_report(rep, file=out)
    text = out.getvalue()
    for mode in llm_ternary.MODES:
        assert text.count(f"  {mode} ") == 2
    assert "llama.cpp: skipped" in text


def test_check_catches_a_wrong_result(monkeypatch):
    ws = [w for _, w in llm_ternary.random_weights(llm_ternary.ternary_shapes(**TINY))]
    real = tk.binary_weight_matmul
    monkeypatch.setattr(tk, "binary_weight_matmul", lambda x, w, **kw: real(x, w, **kw) + 1.0)
    with pytest.raises(AssertionError, match="error bound"):
        llm_ternary.check("int8_row", 1, ws)


def test_llm_ternary_flag_dispatch_json():
    out = io.StringIO()
    args = ["--ternary", "--hidden", "128", "--ffn", "256", "--layers", "1", "--heads", "2", "--kv-heads", "1",
            "--vocab", "0", "--threads", "1", "--modes", "int8_row", "--tokens", "2", "--prefill", "0",
            "--budget", "0.1", "--dram-mb", "8", "--json"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert llm.main(args) == 0
    rep = json.loads(out.getvalue())
    assert rep["matrices"] == 7 and [r["mode"] for r in rep["results"]] == ["int8_row"]
    assert "prefill_tok_s" not in rep["results"][0]


@pytest.mark.parametrize("fmt", ["TQ2_0", "TQ1_0"])
def test_tq_model_file(tmp_path, fmt):
    pytest.importorskip("gguf")
    from takane_kernels import gguf

    path = llm_ternary.write_tq_model(TINY, str(tmp_path / "m.gguf"), fmt=fmt)
    tensors = gguf.load(path)
    meta = gguf.load_metadata(path)
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 1
    assert len(meta["tokenizer.ggml.tokens"]) == TINY["vocab"]
    mats = {n: w for n, w in tensors.items() if isinstance(w, tk.TernaryWeights)}
    want = {"token_embd.weight": (300, 256)}
    want.update({n: (r, c) for n, r, c in llm.llama_shapes(256, 512, 1, 4, 2)})
    assert {n: (w.n, w.k) for n, w in mats.items()} == want
    assert "output.weight" not in tensors  # tied: llama.cpp uses token_embd as the output projection
    w = mats["blk.0.ffn_up.weight"]
    assert w.group_size == 256 and np.all(w.group_scale == np.float32(np.float16(1 / np.sqrt(256))))
    assert meta["general.file_type"] == {"TQ1_0": 36, "TQ2_0": 37}[fmt]
    if fmt == "TQ1_0":  # the same weights in both formats
        other = gguf.load(llm_ternary.write_tq_model(TINY, str(tmp_path / "m2.gguf"), fmt="TQ2_0"))
        assert all(other[n] == w for n, w in mats.items())
    with pytest.raises(ValueError, match="256"):
        llm_ternary.write_tq_model({**TINY, "ffn": 320}, str(tmp_path / "bad.gguf"), fmt=fmt)
    with pytest.raises(ValueError, match="fmt must be"):
        llm_ternary.write_tq_model(TINY, str(tmp_path / "bad.gguf"), fmt="Q2_0")


def test_llama_cpp_side_by_side_with_a_stand_in(tmp_path):
    """The llama.cpp path end to end (model written, llama-bench's JSON parsed, the ratios
    printed) with a stand-in llama-bench that prints fixed rates: the parsing, not llama.cpp."""
    pytest.importorskip("gguf")
    bin_dir = tmp_path / "llama" / "bin"
    bin_dir.mkdir(parents=True)
    exe = bin_dir / "llama-bench"
    exe.write_text("#!/bin/sh\ncat <<'J'\n[{\"n_threads\": 1, \"n_prompt\": 4, \"avg_ts\": 40.0, \"stddev_ts\": 1.0},"
                   " {\"n_threads\": 1, \"n_prompt\": 0, \"avg_ts\": 20.0, \"stddev_ts\": 1.0}]\nJ\n")
    exe.chmod(0o755)
    rep = llm_ternary.run(TINY, threads_list=(1,), modes=("int8_row",), tokens=2, prefill=4, budget_s=0.1,
                          dram_mb=8, llama_cpp=str(tmp_path / "llama"), workdir=str(tmp_path / "w"), log=lambda *a: None)
    lc = rep["llama_cpp"]
    assert lc["available"] and list(lc["formats"]) == ["TQ2_0", "TQ1_0"]
    for fmt, rec in lc["formats"].items():
        assert rec["bench"]["command"].endswith("--repack 0") and rec["model"].endswith(f"{fmt.lower()}.gguf")
        assert rec["bench"]["results"] == [{"threads": 1, "kind": "pp", "tok_s": 40.0, "stddev": 1.0},
                                           {"threads": 1, "kind": "tg", "tok_s": 20.0, "stddev": 1.0}]
        assert "cpu_s_per_token" in rec["cpu_1_thread"]
    out = io.StringIO()
    llm_ternary.print_report(rep, file=out)
    ours = rep["results"][0]
    for fmt in ("TQ2_0", "TQ1_0"):
        assert (f"int8_row vs llama.cpp {fmt}, 1 thread(s): decode {ours['decode_tok_s'] / 20.0:.2f}x per token, "
                f"prefill {ours['prefill_tok_s'] / 40.0:.2f}x") in out.getvalue()
