"""bitnet.cpp's I2_S GGUF tensors (type 36, x86 layout; issue 23) import bit-exactly into
TernaryWeights with the per-tensor float32 scale as ``tensor_scale``.

The layout, from /work/shared/research/onebit_llm_2026.md §4 (bitnet.cpp's quantize_i2_s,
x86 with ACT_PARALLEL): the N*K codes of the tensor, row-major, in blocks of 128 codes in
32 bytes — element 32g + j of a block at bits 6-2g..7-2g of byte j, code 0/1/2 = -1/0/+1 —
then a 32-byte tail whose first 4 bytes are the float32 scale. The gguf package cannot
write (or read) type 36, so the files here come from a GGUF writer written from the GGUF v3
spec with struct and a numpy encoder of the layout above (tests/fuzz/fuzz_gguf.py, shared
with the fuzz target's seeds and oracle), and
the expected values from an element-by-element decoder; neither shares code with the
library."""

import pathlib
import struct
import sys

import numpy as np
import pytest

pytest.importorskip("gguf")

import takane_kernels as tk  # noqa: E402
from takane_kernels import gguf as tg  # noqa: E402
from takane_kernels import reference as ref  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent / "fuzz"))
from fuzz_gguf import encode_i2_s, write_gguf  # noqa: E402  (test code: the spec's writer and encoder)

I2_S, F32 = 36, 0


def decode_i2_s_slowly(raw: bytes, n: int, k: int) -> tuple[np.ndarray, float]:
    """Element by element: the ternary value of every weight, and the scale."""
    t = np.empty(n * k, np.int8)
    for i in range(n * k):
        block, within = divmod(i, 128)
        g, j = divmod(within, 32)
        t[i] = ((raw[32 * block + j] >> (6 - 2 * g)) & 3) - 1
    return t.reshape(n, k), struct.unpack_from("<f", raw, n * k // 4)[0]


@pytest.mark.parametrize("n,k", [(1, 128), (4, 256), (3, 384), (5, 2560)])
def test_i2_s_import_bit_exact(tmp_path, n, k):
    rng = np.random.default_rng(n * 1000 + k)
    codes = rng.integers(0, 3, (n, k))
    scale = float(np.float32(rng.uniform(0.1, 3)))
    raw = encode_i2_s(codes, scale)
    assert len(raw) == n * k // 4 + 32
    write_gguf(tmp_path / "m.gguf", [("blk.0.ffn_down.weight", [k, n], I2_S, raw),
                                     ("output_norm.weight", [7], F32, np.arange(7, dtype="<f4").tobytes())])
    got = tg.load(tmp_path / "m.gguf")
    assert list(got) == ["blk.0.ffn_down.weight", "output_norm.weight"]  # file order
    tw = got["blk.0.ffn_down.weight"]
    assert isinstance(tw, tk.TernaryWeights) and (tw.n, tw.k) == (n, k)
    assert tw.group_size is None and tw.scale is None and tw.in_scale is None
    t, s = decode_i2_s_slowly(raw, n, k)
    np.testing.assert_array_equal(tw.to_dense(), t)
    np.testing.assert_array_equal(t, codes - 1)
    assert tw.tensor_scale == s == scale
    assert not np.any(tw.sign & ~tw.nonzero)  # canonical planes
    np.testing.assert_array_equal(got["output_norm.weight"], np.arange(7, dtype=np.float32))


def test_i2_s_hand_checked_block(tmp_path):
    # byte 0 = 0b10_01_00_10: element 0 code 2 (+1), 32 code 1 (0), 64 code 0 (-1), 96 code 2 (+1)
    raw = bytearray([0b01010101] * 32)  # every other element: code 1 (0)
    raw[0] = 0b10010010
    raw += struct.pack("<f", 0.75) + bytes(28)
    write_gguf(tmp_path / "m.gguf", [("w", [128, 1], I2_S, raw)])
    tw = tg.load(tmp_path / "m.gguf")["w"]
    expect = np.zeros(128, np.int8)
    expect[[0, 32, 64, 96]] = [1, 0, -1, 1]
    np.testing.assert_array_equal(tw.to_dense()[0], expect)
    assert tw.tensor_scale == 0.75


def test_loaded_i2_s_runs(tmp_path, on_isa):
    rng = np.random.default_rng(7)
    n, k = 33, 512
    write_gguf(tmp_path / "m.gguf", [("w", [k, n], I2_S, encode_i2_s(rng.integers(0, 3, (n, k)), 1.5))])
    tw = tg.load(tmp_path / "m.gguf")["w"]
    x = rng.standard_normal((2, k)).astype(np.float32)
    for mode in ("float32", "q8_0", "int8_row"):
        y = tk.binary_weight_matmul(x, tw, activations=mode)
        assert np.all(np.abs(y - ref.binary_weight_matmul(x, tw, activations=mode))
                      <= ref.binary_weight_matmul_error_bound(x, tw, activations=mode))


def _refused(tmp_path, tensors, match):
    write_gguf(tmp_path / "bad.gguf", tensors)
    for unsupported in ("error", "skip"):  # I2_S is read, never skipped
        with pytest.raises(ValueError, match=match):
            tg.load(tmp_path / "bad.gguf", unsupported=unsupported)


def test_i2_s_code_3_refused(tmp_path):
    codes = np.ones((2, 128), np.int64)
    raw = bytearray(encode_i2_s(codes, 1.0))
    raw[32 + 5] |= 0b11 << 4  # row 1, element 32 + 5: code 3 is not ternary
    _refused(tmp_path, [("blk.1.attn_k.weight", [128, 2], I2_S, raw)],
             r"'blk.1.attn_k.weight': I2_S: row 1, column 37 has code 3")


@pytest.mark.parametrize("scale", [float("inf"), float("-inf"), float("nan")])
def test_i2_s_non_finite_scale_refused(tmp_path, scale):
    raw = encode_i2_s(np.ones((1, 128), np.int64), scale)
    _refused(tmp_path, [("w", [128, 1], I2_S, raw)], r"'w': I2_S: the tensor scale is .* \(not finite\)")


def test_i2_s_bad_shapes_refused(tmp_path):
    _refused(tmp_path, [("w", [64, 2], I2_S, bytes(64 * 2 // 4 + 32))], "ne0=64, not a multiple of its type's block of 128")
    _refused(tmp_path, [("w", [256], I2_S, bytes(256 // 4 + 32))], "I2_S tensor 'w' has shape \\[256\\]: .*2-D")
    _refused(tmp_path, [("w", [128, 2, 2], I2_S, bytes(512 // 4 + 32))], "I2_S tensor 'w' has shape \\[128, 2, 2\\]")


def test_i2_s_truncated_or_overlapping_refused(tmp_path):
    raw = encode_i2_s(np.ones((4, 256), np.int64), 1.0)
    for cut in (1, 32, len(raw) - 1):  # the tail or the codes missing
        write_gguf(tmp_path / "t.gguf", [("w", [256, 4], I2_S, raw)])
        data = (tmp_path / "t.gguf").read_bytes()
        (tmp_path / "t.gguf").write_bytes(data[:len(data) - cut])
        with pytest.raises(ValueError, match="past the end|not a readable GGUF"):
            tg.load(tmp_path / "t.gguf")
    # two tensors declared at the same offset
    write_gguf(tmp_path / "o.gguf", [("a", [256, 4], I2_S, raw), ("b", [256, 4], I2_S, raw)])
    data = bytearray((tmp_path / "o.gguf").read_bytes())
    at = data.index(b"b" + struct.pack("<I", 2)) + 1 + 4 + 16 + 4  # b's offset field
    struct.pack_into("<Q", data, at, 0)
    (tmp_path / "o.gguf").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="overlap"):
        tg.load(tmp_path / "o.gguf")


def test_i2_s_duplicate_name_refused(tmp_path):
    raw = encode_i2_s(np.ones((1, 128), np.int64), 1.0)
    _refused(tmp_path, [("w", [128, 1], I2_S, raw), ("w", [128, 1], I2_S, raw)], "duplicated tensor")
    _refused(tmp_path, [("w", [4], F32, bytes(16)), ("w", [128, 1], I2_S, raw)], "duplicated tensor")


@pytest.mark.parametrize("gtype,raw", [(F32, bytes(32)), (I2_S, encode_i2_s(np.ones((1, 128), np.int64), 1.0))])
def test_tensor_offset_that_wraps_64_bits_refused(tmp_path, gtype, raw):
    """Offset 2**64 - 32 wraps (in the stock reader's uint64 sum) to 32 bytes before the
    data section, an aligned place inside the header: refused, not read as tensor bytes."""
    dims = [8] if gtype == F32 else [128, 1]
    write_gguf(tmp_path / "w.gguf", [("w", dims, gtype, raw)])
    data = bytearray((tmp_path / "w.gguf").read_bytes())
    at = data.index(b"w" + struct.pack("<I", len(dims))) + 1 + 4 + 8 * len(dims) + 4
    struct.pack_into("<Q", data, at, 2**64 - 32)
    (tmp_path / "w.gguf").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="past the end"):
        tg.load(tmp_path / "w.gguf")
