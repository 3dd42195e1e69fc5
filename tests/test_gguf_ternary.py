"""GGUF ternary formats (issue 23): TQ2_0 / TQ1_0 import bit-exactly, TQ2_0 / TQ1_0 export, and the
refusal of types that cannot be decoded faithfully (PrismML's rotated PQ2_0 / PTQ1_0,
unknown; I2_S is read: tests/test_gguf_i2_s.py). Blocks are built by hand and decoded by the reference's element-by-element
decoders and, as a third source, the gguf package's own dequantizer."""

import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import takane_kernels as tk  # noqa: E402
from takane_kernels import gguf as tg  # noqa: E402
from takane_kernels import reference as ref  # noqa: E402

T = gguf.GGMLQuantizationType


def _write(path, name, raw, qtype):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor(name, raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tq2_0_bytes(rng, n, nb, codes=(0, 1, 2)):
    qs = np.zeros((n, nb, 64), np.uint8)  # four 2-bit codes per byte
    for lane in range(4):
        qs |= rng.choice(np.array(codes, np.uint8), size=(n, nb, 64)) << np.uint8(2 * lane)
    d = rng.uniform(-2, 2, (n, nb)).astype(np.float16)
    blocks = np.concatenate([qs, d.view(np.uint8).reshape(n, nb, 2)], axis=-1)
    return blocks.reshape(n, nb * 66)


def _check_against_reference(tw, raw, k, decode, qtype):
    n = raw.shape[0]
    for r in range(n):
        t, d = decode(raw[r], k)
        np.testing.assert_array_equal(tw.to_dense()[r], t)
        np.testing.assert_array_equal(tw.group_scale[r], d.astype(np.float32))
    # the gguf package's dequantizer: (code - 1) * d, elementwise
    deq = gguf.quants.dequantize(raw, qtype)
    expect = tw.to_dense().astype(np.float32) * np.repeat(tw.group_scale, 256, axis=1)
    np.testing.assert_array_equal(deq, expect)


@pytest.mark.parametrize("n,nb", [(1, 1), (3, 2), (17, 3)])
def test_tq2_0_import_bit_exact(tmp_path, n, nb):
    rng = np.random.default_rng(n * 10 + nb)
    raw = _tq2_0_bytes(rng, n, nb)
    _write(tmp_path / "m.gguf", "blk.0.ffn_up.weight", raw, T.TQ2_0)
    tw = tg.load(tmp_path / "m.gguf")["blk.0.ffn_up.weight"]
    assert isinstance(tw, tk.TernaryWeights) and (tw.n, tw.k, tw.group_size) == (n, 256 * nb, 256)
    _check_against_reference(tw, raw, 256 * nb, ref.decode_tq2_0, T.TQ2_0)


@pytest.mark.parametrize("n,nb", [(1, 1), (4, 2), (9, 3)])
def test_tq1_0_import_bit_exact(tmp_path, n, nb):
    rng = np.random.default_rng(n * 7 + nb)
    qs = rng.integers(0, 256, (n, nb, 52), dtype=np.uint8)  # every byte decodes to 5 (4) trits
    d = rng.uniform(-2, 2, (n, nb)).astype(np.float16)
    raw = np.concatenate([qs, d.view(np.uint8).reshape(n, nb, 2)], axis=-1).reshape(n, nb * 54)
    _write(tmp_path / "m.gguf", "w", raw, T.TQ1_0)
    tw = tg.load(tmp_path / "m.gguf")["w"]
    _check_against_reference(tw, raw, 256 * nb, ref.decode_tq1_0, T.TQ1_0)


def test_tq1_0_hand_checked_byte():
    # trits (2, 0, 1, 2, 2) most significant first: v = 2*81 + 0 + 9 + 6 + 2 = 179;
    # stored byte ceil(179 * 256 / 243) = 189
    blk = np.zeros(54, np.uint8)
    blk[0] = 189
    blk[52:54] = np.array([1.0], np.float16).view(np.uint8)
    t, d = ref.decode_tq1_0(blk, 256)
    assert list(t[[0, 32, 64, 96, 128]]) == [1, -1, 0, 1, 1] and d[0] == 1.0
    tw = tk._tq.from_tq1_0(blk[None], 256)
    np.testing.assert_array_equal(tw.to_dense()[0], t)


def test_tq2_0_hand_checked_layout():
    blk = np.full(66, 0b01010101, np.uint8)  # every code 1: weight 0
    blk[5] = 0b10_01_00_10  # byte 5 of chunk 0: elements 5 (+1), 37 (-1), 69 (0), 101 (+1)
    blk[32 + 7] = 0b00_01_01_01  # chunk 1, byte 7: element 128 + 96 + 7 = 231 is -1
    blk[64:66] = np.array([0.5], np.float16).view(np.uint8)
    tw = tk._tq.from_tq2_0(blk[None], 256)
    want = np.zeros(256, int)
    want[[5, 37, 101, 231]] = [1, -1, 1, -1]
    np.testing.assert_array_equal(tw.to_dense()[0], want)
    assert tw.group_scale[0, 0] == 0.5


def test_tq2_0_code_3_and_bad_scales_refused(tmp_path):
    rng = np.random.default_rng(0)
    raw = _tq2_0_bytes(rng, 2, 1)
    bad = raw.copy()
    bad[1, 10] |= 0b11  # element 10 of row 1 gets code 3 (+2)
    _write(tmp_path / "m.gguf", "w", bad, T.TQ2_0)
    with pytest.raises(ValueError, match=r"'w'.*row 1, column 10 has code 3"):
        tg.load(tmp_path / "m.gguf")
    bad = raw.copy()
    bad[0, 64:66] = np.array([np.inf], np.float16).view(np.uint8)
    _write(tmp_path / "m.gguf", "w", bad, T.TQ2_0)
    with pytest.raises(ValueError, match="not finite"):
        tg.load(tmp_path / "m.gguf")


def test_tq2_0_export_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 512))
    tw = tk.pack_ternary(w, group_size=256)
    gs16 = tw.group_scale.astype(np.float16).astype(np.float32)  # TQ2_0 stores fp16
    tw = tk.TernaryWeights(tw.sign, tw.nonzero, 512, group_scale=gs16, group_size=256)
    tg.save(tmp_path / "m.gguf", {"w": tw, "norm": np.ones(4, np.float32)}, arch="llama")
    back = tg.load(tmp_path / "m.gguf")
    assert back["w"] == tw
    raw = tk._tq.to_tq2_0(tw)
    for r in range(5):
        t, d = ref.decode_tq2_0(raw[r], 512)
        np.testing.assert_array_equal(t, tw.to_dense()[r])
        np.testing.assert_array_equal(d, gs16[r])
    # a per-tensor scale folds into the blocks' d (absmean weights: one scale per tensor)
    tt = tk.pack_ternary(w)
    raw = tk._tq.to_tq2_0(tt)
    np.testing.assert_array_equal(raw[:, 64:66].view(np.float16)[:, 0], np.float16(tt.tensor_scale))
    with pytest.raises(ValueError, match="multiple of 256"):
        tk._tq.to_tq2_0(tk.pack_ternary(rng.standard_normal((2, 320))))
    with pytest.raises(ValueError, match="in_scale"):
        tk._tq.to_tq2_0(tk.TernaryWeights(tw.sign, tw.nonzero, 512, in_scale=np.ones(512)))


def test_loaded_weights_run(tmp_path, on_isa):
    rng = np.random.default_rng(2)
    raw = _tq2_0_bytes(rng, 33, 2)
    _write(tmp_path / "m.gguf", "w", raw, T.TQ2_0)
    tw = tg.load(tmp_path / "m.gguf")["w"]
    x = rng.standard_normal((2, 512)).astype(np.float32)
    for mode in ("float32", "q8_0", "int8_row"):
        y = tk.binary_weight_matmul(x, tw, activations=mode)
        assert np.all(np.abs(y - ref.binary_weight_matmul(x, tw, activations=mode))
                      <= ref.binary_weight_matmul_error_bound(x, tw, activations=mode))


@pytest.mark.parametrize("raw_type,what", [(142, "PQ2_0.*Hadamard"), (143, "PTQ1_0.*Hadamard"),
                                           (200, "does not know")])
def test_foreign_types_refused_by_name(tmp_path, raw_type, what):
    raw = _tq2_0_bytes(np.random.default_rng(3), 2, 1)
    _write(tmp_path / "m.gguf", "blk.0.attn_q.weight", raw, T.TQ2_0)
    data = bytearray((tmp_path / "m.gguf").read_bytes())
    name = b"blk.0.attn_q.weight"
    at = data.index(name) + len(name)  # then n_dims (u32), dims (u64 each), type (u32)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, raw_type)
    (tmp_path / "m.gguf").write_bytes(bytes(data))
    for skip in ("error", "skip"):
        with pytest.raises(ValueError, match=rf"'blk.0.attn_q.weight' has GGML type {raw_type}: .*{what}"):
            tg.load(tmp_path / "m.gguf", unsupported=skip)


@pytest.mark.parametrize("fmt,ftype", [("TQ2_0", 37), ("TQ1_0", 36)])  # LLAMA_FTYPE_MOSTLY_TQ2_0 / _TQ1_0
def test_llama_cpp_runs_a_tq_model_we_wrote(tmp_path, fmt, ftype):
    """llama.cpp loads and runs a tiny Llama whose projections we wrote as TQ2_0 / TQ1_0 (runs
    when TAKANE_LLAMA_CPP names a llama.cpp build; skipped with that reason otherwise)."""
    import json
    import subprocess

    from test_gguf import _llama_cpp, tiny_llama

    bench = _llama_cpp()
    t, meta = tiny_llama(n_embd=256, n_ff=512)
    rng = np.random.default_rng(5)
    for name, w in list(t.items()):
        if isinstance(w, tk.PackedWeights):  # same shapes, ternary weights with fp16 block scales
            tw = tk.pack_ternary(rng.standard_normal((w.n, w.k)), group_size=256)
            t[name] = tk._tq.from_tq2_0(tk._tq.to_tq2_0(tw), w.k)
    meta["general.file_type"] = ftype
    path = tmp_path / f"tiny-{fmt.lower()}.gguf"
    tg.save(path, t, arch="llama", metadata=meta, ternary=fmt)
    assert tg.load(path)["blk.0.ffn_up.weight"] == t["blk.0.ffn_up.weight"]
    r = subprocess.run([str(bench), "-m", str(path), "-p", "16", "-n", "4", "-t", "1", "-r", "1", "-o", "json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads(r.stdout)
    assert all(x["avg_ts"] > 0 for x in runs) and all(fmt in x["model_type"] for x in runs), runs


def _fp16_blocks(rng, n, k):
    """Ternary weights whose block scales are fp16 values (what a TQ file can hold exactly)."""
    tw = tk.pack_ternary(rng.standard_normal((n, k)), group_size=256)
    gs16 = tw.group_scale.astype(np.float16).astype(np.float32)
    return tk.TernaryWeights(tw.sign, tw.nonzero, k, group_scale=gs16, group_size=256)


def test_tq1_0_export_round_trip(tmp_path):
    """to_tq1_0 -> our importer is the identity; the gguf package's own TQ1_0 dequantizer reads
    the same weights and its quantizer writes the same bytes from them (an independent
    implementation of llama.cpp's quantize_row_tq1_0_ref / dequantize_row_tq1_0)."""
    from gguf import quants

    rng = np.random.default_rng(11)
    tw = _fp16_blocks(rng, 6, 768)
    tw = tk.TernaryWeights(tw.sign, tw.nonzero, 768, group_scale=tw.group_scale, group_size=256)
    raw = tk._tq.to_tq1_0(tw)
    assert raw.shape == (6, 3 * 54) and raw.dtype == np.uint8
    assert tk._tq.from_tq1_0(raw, 768) == tw
    dense = tw.to_dense() * np.repeat(tw.group_scale, 256, axis=1)
    np.testing.assert_array_equal(quants.dequantize(raw, T.TQ1_0), dense)
    np.testing.assert_array_equal(quants.quantize(dense.astype(np.float32), T.TQ1_0), raw)
    for r in range(6):  # and the reference's independent decoder
        t, d = ref.decode_tq1_0(raw[r], 768)
        np.testing.assert_array_equal(t, tw.to_dense()[r])
        np.testing.assert_array_equal(d, tw.group_scale[r])
    # every code in every position: all-zero, all -1, all +1 rows and a row cycling -1, 0, +1
    codes = np.stack([np.zeros(256), -np.ones(256), np.ones(256), np.arange(256) % 3 - 1]).astype(np.int8)
    tw = tk.pack_ternary(codes.astype(np.float32), threshold=0.5)
    assert np.array_equal(tw.to_dense(), codes)
    assert tk._tq.from_tq1_0(tk._tq.to_tq1_0(tw), 256).to_dense().tolist() == codes.tolist()
    # through gguf.save / load, with a per-tensor scale folded into the blocks' d
    tt = tk.pack_ternary(rng.standard_normal((3, 512)))
    tg.save(tmp_path / "m.gguf", {"w": tt}, arch="llama", ternary="TQ1_0")
    back = tg.load(tmp_path / "m.gguf")["w"]
    assert back.k == 512 and np.array_equal(back.to_dense(), tt.to_dense())
    np.testing.assert_array_equal(back.group_scale, np.float32(np.float16(tt.tensor_scale)))
    assert tg.load_metadata(tmp_path / "m.gguf")["general.architecture"] == "llama"


def test_tq1_0_export_errors_and_empty():
    rng = np.random.default_rng(12)
    with pytest.raises(ValueError, match="to_tq1_0.*multiple of 256"):
        tk._tq.to_tq1_0(tk.pack_ternary(rng.standard_normal((2, 320))))
    tw = _fp16_blocks(rng, 2, 512)
    with pytest.raises(ValueError, match="TQ1_0 has no per-input-column scale"):
        tk._tq.to_tq1_0(tk.TernaryWeights(tw.sign, tw.nonzero, 512, in_scale=np.ones(512)))
    with pytest.raises(ValueError, match="overflows fp16"):
        tk._tq.to_tq1_0(tk.TernaryWeights(tw.sign, tw.nonzero, 512, group_scale=tw.group_scale * 1e5, group_size=256))
    with pytest.raises(TypeError, match="TernaryWeights"):
        tk._tq.to_tq1_0(tk.pack_weights(rng.standard_normal((2, 256))))
    with pytest.raises(ValueError, match="ternary must be 'TQ2_0' or 'TQ1_0'"):
        tg.save("unused.gguf", {"w": tw}, arch="llama", ternary="Q2_0")
    k = 587202816  # no rows: no bytes, in O(1) memory for any K (as to_tq2_0)
    empty = tk.TernaryWeights(np.zeros((0, k // 64), np.uint64), np.zeros((0, k // 64), np.uint64), k)
    assert tk._tq.to_tq1_0(empty).shape == (0, k // 256 * 54)


def test_tq2_0_of_an_empty_matrix_costs_nothing_for_any_k():
    """A file's (0, K) TQ tensor loads in O(1) memory; writing it back must not cost O(K)
    either (the fuzz target found to_tq2_0 allocating 4.4 GB for K = 587202816, N = 0)."""
    import tracemalloc

    k = 587202816
    tw = tk.TernaryWeights(np.zeros((0, k // 64), np.uint64), np.zeros((0, k // 64), np.uint64), k,
                           group_scale=np.zeros((0, k // 256), np.float32), group_size=256)
    tracemalloc.start()
    try:
        q = tk._tq.to_tq2_0(tw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert q.shape == (0, k // 256 * 66) and peak < 1 << 20

