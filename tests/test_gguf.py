"""takane_kernels.gguf: GGUF files in and out (Q1_0 <-> PackedWeights, F32/F16 <-> numpy),
files written by the `gguf` package itself, hostile files, and llama.cpp loading ours.

The llama.cpp test runs when TAKANE_LLAMA_CPP names a llama.cpp build directory (with
bin/llama-bench; bench/build_llamacpp.sh makes one) and is skipped with that reason otherwise.
"""

from __future__ import annotations

import os
import pathlib
import struct
import subprocess
import tracemalloc

import numpy as np
import pytest

import takane_kernels as tk

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed (pip install '.[gguf]')")
import takane_kernels.gguf as tg  # noqa: E402

from test_q1_0 import ggml_dequantize, q1_0_bytes  # noqa: E402

Q1_0 = gguf.GGMLQuantizationType.Q1_0
VT = gguf.GGUFValueType


def sample_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "blk.0.attn_q.weight": tk.from_q1_0(q1_0_bytes(rng, 6, 256), 256),
        "blk.0.ffn_down.weight": tk.pack_weights(rng.standard_normal((3, 384)), group_size=128),
        "output_norm.weight": rng.standard_normal(256).astype(np.float32),
        "token_embd.weight": rng.standard_normal((7, 256)).astype(np.float16),
        "t4d": rng.standard_normal((2, 3, 1, 5)).astype(np.float32),
    }


def assert_same(a: dict, b: dict):
    assert list(a) == list(b)
    for name in a:
        if isinstance(a[name], tk.PackedWeights):
            assert b[name] == a[name], name
        else:
            assert b[name].dtype == a[name].dtype and b[name].shape == a[name].shape, name
            np.testing.assert_array_equal(b[name], a[name])


def test_save_load_round_trip(tmp_path):
    t = sample_tensors()
    meta = {"llama.block_count": 1, "llama.attention.layer_norm_rms_epsilon": 1e-5,
            "tokenizer.ggml.tokens": ["<unk>", "<s>", "a"], "tokenizer.ggml.scores": [0.0, -1.5, 2],
            "tokenizer.ggml.token_type": [2, 3, 1], "general.name": "tiny", "flag": True,
            "neg": -3, "big": 2**40, "u16": np.uint16(7), "f64": (0.1, VT.FLOAT64),
            "arr64": np.arange(3, dtype=np.int64), "bools": [True, False, True],
            "strs": np.array(["x", "yz"])}
    tg.save(tmp_path / "m.gguf", t, arch="llama", metadata=meta)
    back = tg.load(tmp_path / "m.gguf")
    # float32 group scales are stored as fp16 (Q1_0's d): the same bits, the scales rounded
    down = t["blk.0.ffn_down.weight"]
    assert back["blk.0.ffn_down.weight"] == tk.PackedWeights(
        down.bits, down.k, group_scale=down.group_scale.astype(np.float16), group_size=128)
    assert back["blk.0.ffn_down.weight"] != down
    t["blk.0.ffn_down.weight"] = back["blk.0.ffn_down.weight"]
    assert_same(t, back)
    got = tg.load_metadata(tmp_path / "m.gguf")
    assert got["general.architecture"] == "llama" and got["general.name"] == "tiny"
    assert got["llama.block_count"] == 1 and got["flag"] is True and got["neg"] == -3 and got["big"] == 2**40
    assert got["tokenizer.ggml.tokens"] == ["<unk>", "<s>", "a"]
    np.testing.assert_array_equal(got["tokenizer.ggml.scores"], np.float32([0, -1.5, 2]))
    assert got["tokenizer.ggml.scores"].dtype == np.float32
    assert got["tokenizer.ggml.token_type"].dtype == np.int32 and got["arr64"].dtype == np.int64
    assert got["f64"] == 0.1 and got["u16"] == 7
    # the GGUF types llama.cpp checks strictly: ints are UINT32, floats FLOAT32
    typed = tg.load_metadata(tmp_path / "m.gguf", typed=True)
    assert typed["llama.block_count"] == (1, VT.UINT32)
    assert typed["llama.attention.layer_norm_rms_epsilon"][1] == VT.FLOAT32
    assert typed["neg"] == (-3, VT.INT32) and typed["big"] == (2**40, VT.INT64)
    assert typed["u16"] == (7, VT.UINT16) and typed["f64"] == (0.1, VT.FLOAT64)
    assert typed["tokenizer.ggml.token_type"] == ([2, 3, 1], VT.INT32)
    assert typed["bools"] == ([True, False, True], VT.BOOL) and typed["strs"] == (["x", "yz"], VT.STRING)
    # typed metadata rewrites the same file
    tg.save(tmp_path / "m2.gguf", back, arch="llama", metadata=typed)
    assert (tmp_path / "m2.gguf").read_bytes() == (tmp_path / "m.gguf").read_bytes()
    # and the file really holds Q1_0 (type 41) with GGUF's ne = [K, N]
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    info = {t.name: t for t in r.tensors}
    assert info["blk.0.attn_q.weight"].tensor_type == Q1_0 == 41
    assert info["blk.0.attn_q.weight"].shape.tolist() == [256, 6]
    assert info["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert info["t4d"].shape.tolist() == [5, 1, 3, 2]


def test_bytes_ours_bytes_identical(tmp_path):
    """A file written by the gguf package (as converters write them): load it, save it back
    with its typed metadata, and the two files are byte for byte the same."""
    rng = np.random.default_rng(1)
    q = q1_0_bytes(rng, 4, 384)
    w = gguf.GGUFWriter(tmp_path / "a.gguf", "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_string("general.name", "x")
    w.add_int32("odd.signed", 5)
    w.add_array("tokenizer.ggml.tokens", ["a", "b"])
    w.add_key_value("odd.u8s", [1, 2, 255], VT.ARRAY, sub_type=VT.UINT8)
    w.add_tensor("w", q, raw_dtype=Q1_0)
    w.add_tensor("n", rng.standard_normal(3).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tensors = tg.load(tmp_path / "a.gguf")
    assert tk.to_q1_0(tensors["w"]).tobytes() == q.tobytes()
    np.testing.assert_array_equal(tensors["w"].group_scale, q.reshape(4, 3, 18)[:, :, :2].copy().view("<f2")[..., 0])
    meta = tg.load_metadata(tmp_path / "a.gguf", typed=True)
    tg.save(tmp_path / "b.gguf", tensors, arch="llama", metadata=meta)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_q1_0_written_by_the_gguf_package_loads_as_ggml_dequantizes_it(tmp_path):
    rng = np.random.default_rng(2)
    q = q1_0_bytes(rng, 5, 256)
    w = gguf.GGUFWriter(tmp_path / "c.gguf", "llama")
    w.add_tensor("blk.0.ffn_up.weight", q, raw_dtype=Q1_0)  # byte shape (5, 36) -> ne [256, 5]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    pw = tg.load(tmp_path / "c.gguf")["blk.0.ffn_up.weight"]
    assert (pw.n, pw.k, pw.group_size) == (5, 256, 128)
    dense = tk.unpack_bits(pw.bits, pw.k) * np.repeat(pw.group_scale, 128, axis=1)
    np.testing.assert_array_equal(dense, ggml_dequantize(q, 256))


def test_unsupported_types_error_or_skip(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "q.gguf", "llama")
    w.add_tensor("q40", np.zeros((2, 18), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.add_tensor("ok", np.ones(4, np.float32))
    w.add_tensor("i32", np.ones(4, np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="'q40' has type Q4_0"):
        tg.load(tmp_path / "q.gguf")
    assert list(tg.load(tmp_path / "q.gguf", unsupported="skip")) == ["ok"]
    with pytest.raises(ValueError, match="unsupported"):
        tg.load(tmp_path / "q.gguf", unsupported="raw")


def test_save_input_errors(tmp_path):
    pw = sample_tensors()["blk.0.attn_q.weight"]
    p = tmp_path / "e.gguf"
    with pytest.raises(ValueError, match="arch"):
        tg.save(p, {}, arch="")
    with pytest.raises(TypeError):
        tg.save(p, [pw], arch="llama")
    with pytest.raises(TypeError, match="float32 or float16"):
        tg.save(p, {"a": np.ones(3)}, arch="llama")
    with pytest.raises(ValueError, match="dimensions"):
        tg.save(p, {"a": np.ones((1,) * 5, np.float32)}, arch="llama")
    with pytest.raises(ValueError, match="dimensions"):
        tg.save(p, {"a": np.array(1, np.float32)}, arch="llama")
    with pytest.raises(ValueError, match="63 bytes"):
        tg.save(p, {"x" * 64: pw}, arch="llama")
    with pytest.raises(TypeError, match="PackedWeights or a numpy array"):
        tg.save(p, {"a": [1.0]}, arch="llama")
    with pytest.raises(ValueError, match="multiple of 128"):
        tg.save(p, {"a": tk.pack_weights(np.ones((2, 100)))}, arch="llama")
    with pytest.raises(ValueError, match="disagrees"):
        tg.save(p, {}, arch="llama", metadata={"general.architecture": "qwen2"})
    for bad, err in (({"k": object()}, TypeError), ({"k": []}, ValueError), ({"k": [1, "a"]}, TypeError),
                     ({"k": 2**64}, ValueError), ({1: 2}, TypeError), ({"k": np.ones((2, 2))}, ValueError),
                     ({"k": ([1], VT.ARRAY)}, ValueError), ({"k": np.complex64(1)}, TypeError)):
        with pytest.raises(err):
            tg.save(p, {}, arch="llama", metadata=bad)
    assert not p.exists() and not list(tmp_path.iterdir())  # nothing half-written


# ---- hostile files ------------------------------------------------------------------------

def _small_file(tmp_path) -> bytes:
    rng = np.random.default_rng(3)
    tg.save(tmp_path / "s.gguf", {"w": tk.from_q1_0(q1_0_bytes(rng, 2, 128), 128),
                                  "v": np.arange(4, dtype=np.float32)},
            arch="llama", metadata={"a.u32": 5, "a.str": "hello", "a.arr": [1, 2, 3], "a.sarr": ["x", "yz"]})
    return (tmp_path / "s.gguf").read_bytes()


def _offsets(path):
    """Byte offsets of the fields we corrupt, located with the gguf package's reader."""
    r = gguf.GGUFReader(path)
    out = {"data": r.data_offset}
    for key in ("a.u32", "a.str", "a.arr", "a.sarr"):
        f = r.fields[key]
        out[key] = f.offset  # start of the key's length prefix
        out[key + ".value"] = f.offset + 8 + len(key) + 4  # after key and value type
    for t in r.tensors:
        f = t.field
        name_end = f.offset + 8 + len(t.name)
        out[t.name + ".ndims"] = name_end
        out[t.name + ".dims"] = name_end + 4
        nd = len(t.shape)
        out[t.name + ".type"] = name_end + 4 + 8 * nd
        out[t.name + ".offset"] = name_end + 4 + 8 * nd + 4
    out["counts"] = 8  # tensor_count, then kv_count (uint64 each)
    return out


def _patch(data: bytes, at: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, at, value)
    return bytes(b)


def _rejected(tmp_path, data: bytes, match: str | None = None, name="h.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    tracemalloc.start()
    try:
        for fn in (tg.load, tg.load_metadata):
            with pytest.raises(ValueError, match=match) if fn is tg.load else _maybe_raises():
                fn(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes allocated for a {len(data)}-byte file"


class _maybe_raises:
    """load_metadata may succeed when only tensor data is bad; if it raises, ValueError."""

    def __enter__(self):
        return self

    def __exit__(self, tp, e, tb):
        return tp is None or issubclass(tp, ValueError)


def test_truncated_at_every_length_is_rejected(tmp_path):
    data = _small_file(tmp_path)
    full = tg.load(tmp_path / "s.gguf")
    r = gguf.GGUFReader(tmp_path / "s.gguf")
    end = max(t.data_offset + t.n_bytes for t in r.tensors)  # after it: the last tensor's padding
    assert 0 < len(data) - end < 32
    for cut in range(len(data)):
        p = tmp_path / "t.gguf"
        p.write_bytes(data[:cut])
        if cut >= end:  # only alignment padding missing: every byte of every tensor is there
            assert_same(full, tg.load(p))
            continue
        with pytest.raises(ValueError):
            tg.load(p)


def test_lying_headers_are_rejected_without_allocating(tmp_path):
    data = _small_file(tmp_path)
    off = _offsets(tmp_path / "s.gguf")
    cases = {
        "tensor count 2**63": _patch(data, off["counts"], "<Q", 2**63),
        "kv count 2**62": _patch(data, off["counts"] + 8, "<Q", 2**62),
        "string length 2**62": _patch(data, off["a.str.value"], "<Q", 2**62),
        "key length 2**61": _patch(data, off["a.u32"], "<Q", 2**61),
        "array length 2**60": _patch(data, off["a.arr.value"] + 4, "<Q", 2**60),
        "array length one too many": _patch(data, off["a.arr.value"] + 4, "<Q", 10**6),
        "string array length 2**59": _patch(data, off["a.sarr.value"] + 4, "<Q", 2**59),
        "tensor n_dims 2**31": _patch(data, off["w.ndims"], "<I", 2**31),
        "tensor dims 2**40 x 2**40": _patch(_patch(data, off["w.dims"], "<Q", 2**40), off["w.dims"] + 8, "<Q", 2**40),
        "tensor dims wrapping 64 bits": _patch(_patch(data, off["w.dims"], "<Q", 2**63), off["w.dims"] + 8, "<Q", 2),
        "tensor rows beyond the data": _patch(data, off["w.dims"] + 8, "<Q", 1000),
        "tensor ne0 not a block multiple": _patch(data, off["w.dims"], "<Q", 100),
        "tensor offset past the end": _patch(data, off["w.offset"], "<Q", 2**50),
        "tensor offset misaligned": _patch(data, off["v.offset"], "<Q", 1),
        "tensors overlapping": _patch(data, off["v.offset"], "<Q", 0),
        "unknown tensor type 99": _patch(data, off["w.type"], "<I", 99),
        "Q1_0 claimed for F32 data": _patch(data, off["v.type"], "<I", 41),
        "unknown value type 77": _patch(data, off["a.u32.value"] - 4, "<I", 77),
        "unknown array element type": _patch(data, off["a.arr.value"], "<I", 1234),
        "bad magic": b"GGUX" + data[4:],
        "version 1": _patch(data, 4, "<I", 1),
    }
    for what, bad in cases.items():
        try:
            _rejected(tmp_path, bad)
        except BaseException as e:
            raise AssertionError(f"case {what!r}") from e
    _rejected(tmp_path, b"")


def test_wrong_contents_are_rejected(tmp_path):
    rng = np.random.default_rng(4)
    q = q1_0_bytes(rng, 2, 256)
    q[1, 18:20] = np.array([0x7E00], "<u2").view(np.uint8)  # d = NaN in row 1, block 1
    p = tmp_path / "nan.gguf"
    w = gguf.GGUFWriter(p, "llama")
    w.add_tensor("w", q, raw_dtype=Q1_0)
    w.add_uint32("general.alignment", 32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="'w'.*row 1, block 1.*not finite"):
        tg.load(p)
    # a 3-D Q1_0 tensor is not a weight matrix
    w = gguf.GGUFWriter(tmp_path / "3d.gguf", "llama")
    w.add_tensor("w3", q1_0_bytes(rng, 4, 128).reshape(2, 2, 18), raw_dtype=Q1_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="2-D"):
        tg.load(tmp_path / "3d.gguf")
    # invalid UTF-8 in a key, duplicate keys / tensor names, bad alignment, big-endian files
    data = _small_file(tmp_path)
    off = _offsets(tmp_path / "s.gguf")
    _rejected(tmp_path, data[: off["a.str"] + 8] + b"\xff" + data[off["a.str"] + 9:])
    dup = data.replace(b"a.str", b"a.u32", 1)
    _rejected(tmp_path, dup)
    assert data.count(b"\x01\x00\x00\x00\x00\x00\x00\x00v") == 1
    _rejected(tmp_path, data.replace(b"\x01\x00\x00\x00\x00\x00\x00\x00v", b"\x01\x00\x00\x00\x00\x00\x00\x00w"))
    big = b"GGUF" + struct.pack(">I", 3) + data[8:]
    _rejected(tmp_path, big)
    w = gguf.GGUFWriter(tmp_path / "al.gguf", "llama")
    w.add_uint32("general.alignment", 24)
    w.add_tensor("v", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="alignment"):
        tg.load(tmp_path / "al.gguf")


def test_fuzz_gguf_regressions(tmp_path):
    """Replays tests/fuzz/gguf_regressions/ (inputs the atheris target found) through the
    same contract check: ValueError or a fully valid result."""
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent / "fuzz"))
    from fuzz_gguf import check_gguf_bytes, make_seeds

    seeds = make_seeds(str(tmp_path / "seeds"))
    assert seeds
    for path in seeds + sorted((pathlib.Path(__file__).parent / "fuzz" / "gguf_regressions").glob("*")):
        data = pathlib.Path(path).read_bytes()
        assert check_gguf_bytes(data, str(tmp_path / "f.gguf")) in ("ok", "rejected")
        if path in seeds:  # valid files load; half of one does not
            assert check_gguf_bytes(data, str(tmp_path / "f.gguf")) == "ok"
            assert check_gguf_bytes(data[: len(data) // 2], str(tmp_path / "f.gguf")) == "rejected"


# ---- llama.cpp reads what we write ---------------------------------------------------------

def tiny_llama(seed=0, n_embd=128, n_ff=256, n_layer=2, n_head=2, n_head_kv=1):
    """The tensors and metadata of a complete, tiny Llama model: Q1_0 projections with
    group scales, F32 norms and embeddings, an SPM vocabulary of 259 + 5 tokens."""
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁a", "▁b", "a", "b", "▁"]
    types = [2, 3, 3] + [6] * 256 + [1] * 5
    n_vocab = len(tokens)
    head_dim = n_embd // n_head

    def q1(n, k):  # group scales that are fp16 values already (Q1_0's d), so they round-trip
        return tk.from_q1_0(tk.to_q1_0(tk.pack_weights(rng.standard_normal((n, k)), group_size=128)), k)

    t = {"token_embd.weight": (rng.standard_normal((n_vocab, n_embd)) * 0.1).astype(np.float32)}
    for i in range(n_layer):
        t[f"blk.{i}.attn_norm.weight"] = np.ones(n_embd, np.float32)
        t[f"blk.{i}.attn_q.weight"] = q1(n_embd, n_embd)
        t[f"blk.{i}.attn_k.weight"] = q1(head_dim * n_head_kv, n_embd)
        t[f"blk.{i}.attn_v.weight"] = q1(head_dim * n_head_kv, n_embd)
        t[f"blk.{i}.attn_output.weight"] = q1(n_embd, n_embd)
        t[f"blk.{i}.ffn_norm.weight"] = np.ones(n_embd, np.float32)
        t[f"blk.{i}.ffn_gate.weight"] = q1(n_ff, n_embd)
        t[f"blk.{i}.ffn_up.weight"] = q1(n_ff, n_embd)
        t[f"blk.{i}.ffn_down.weight"] = q1(n_embd, n_ff)
    t["output_norm.weight"] = np.ones(n_embd, np.float32)
    t["output.weight"] = q1(n_vocab, n_embd)
    meta = {
        "general.name": "takane tiny llama", "general.file_type": 40,  # LLAMA_FTYPE_MOSTLY_Q1_0
        "llama.context_length": 256, "llama.embedding_length": n_embd, "llama.block_count": n_layer,
        "llama.feed_forward_length": n_ff, "llama.rope.dimension_count": head_dim,
        "llama.attention.head_count": n_head, "llama.attention.head_count_kv": n_head_kv,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": n_vocab,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * n_vocab, "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    return t, meta


def _llama_cpp(tool: str = "llama-bench") -> pathlib.Path:
    root = os.environ.get("TAKANE_LLAMA_CPP")
    if not root:
        pytest.skip("TAKANE_LLAMA_CPP is not set (a llama.cpp build directory; bench/build_llamacpp.sh)")
    exe = pathlib.Path(root) / "bin" / tool
    if not exe.is_file():
        pytest.skip(f"TAKANE_LLAMA_CPP={root} has no bin/{tool}")
    return exe


def test_llama_cpp_runs_a_model_we_wrote(tmp_path):
    bench = _llama_cpp()
    t, meta = tiny_llama()
    path = tmp_path / "tiny-q1_0.gguf"
    tg.save(path, t, arch="llama", metadata=meta)
    assert tg.load(path)["blk.0.attn_q.weight"] == t["blk.0.attn_q.weight"]
    r = subprocess.run([str(bench), "-m", str(path), "-p", "16", "-n", "4", "-t", "1", "-r", "1", "-o", "json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    runs = json.loads(r.stdout)
    assert {(x["n_prompt"], x["n_gen"]) for x in runs} == {(16, 0), (0, 4)}
    assert all(x["avg_ts"] > 0 for x in runs)
    assert all("Q1_0" in x["model_type"] for x in runs), [x["model_type"] for x in runs]


def test_llama_cpp_dequantizes_ours_and_quantizes_like_ours(tmp_path):
    """Both directions through ggml's own code (llama-quantize): our Q1_0 file dequantized
    by ggml to F32 equals our effective weights exactly; F32 weights quantized by ggml to
    Q1_0 (llama.cpp-written Q1_0) load in ours with the bits of pack_bits and the d of
    ggml's quantize_row_q1_0_ref (fp16 of the float32 sum of |w| over the block / 128)."""
    quantize = _llama_cpp("llama-quantize")
    t, meta = tiny_llama(seed=1)
    ours, f32, back = tmp_path / "q1.gguf", tmp_path / "f32.gguf", tmp_path / "rq.gguf"
    tg.save(ours, t, arch="llama", metadata=meta)
    for src, dst, ftype in ((ours, f32, "F32"), (f32, back, "Q1_0")):
        r = subprocess.run([str(quantize), "--allow-requantize", str(src), str(dst), ftype],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    dense = tg.load(f32, unsupported="skip")
    requant = tg.load(back, unsupported="skip")
    checked = 0
    for name, w in t.items():
        if not isinstance(w, tk.PackedWeights):
            continue
        expect = tk.unpack_bits(w.bits, w.k).astype(np.float32) * np.repeat(w.group_scale, 128, axis=1)
        np.testing.assert_array_equal(dense[name], expect)  # ggml's dequantize_row_q1_0
        if isinstance(requant.get(name), tk.PackedWeights):
            n, k = dense[name].shape
            blocks = np.abs(dense[name]).reshape(n, k // 128, 128)
            d = np.cumsum(blocks, axis=-1, dtype=np.float32)[..., -1] / np.float32(128)  # ggml's order
            assert requant[name] == tk.PackedWeights(tk.pack_bits(dense[name]), k,
                                                      group_scale=d.astype(np.float16), group_size=128)
            checked += 1
    assert checked >= 14  # every projection (llama.cpp keeps output.weight at higher precision)
