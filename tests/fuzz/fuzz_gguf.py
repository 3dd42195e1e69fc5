"""Coverage-guided fuzz target (atheris) for ``takane_kernels.gguf.load`` / ``load_metadata``.

The contract under test (README, "bad input"): for any file, ``load`` either returns valid
tensors — PackedWeights with finite group scales (group_size 128) that convert back to the
same Q1_0 bytes, float32/float16 arrays — or raises ``ValueError``; the same for
``load_metadata``; bitnet.cpp's I2_S tensors (files from this module's own GGUF writer among
the seeds) decode to TernaryWeights that this module's own encoder turns back into the
tensor's bytes. Any other exception (MemoryError, IndexError, KeyError, ...), a hang or a
crash is a finding.

    python tests/fuzz/fuzz_gguf.py -max_total_time=30 CORPUS_DIR   # atheris/libFuzzer flags
    python tests/fuzz/fuzz_gguf.py --make-seeds DIR                  # valid files to start from

Crash inputs go to tests/fuzz/gguf_regressions/; tests/test_gguf.py replays every file there
through :func:`check_gguf_bytes` (pure Python, no atheris needed).
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile

I2_S_TYPE, GGUF_ALIGN = 36, 32  # bitnet.cpp's GGML_TYPE_I2_S; general.alignment's default


def _gguf_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def write_gguf(path: str, tensors) -> None:
    """A GGUF v3 file written with struct from the spec (the gguf package cannot write type
    36): general.architecture = "bitnet-25" and ``tensors``, a list of (name, dims ne (GGUF
    order: ne[0] = K), ggml type, raw bytes), each at the next 32-byte aligned offset."""
    kv = _gguf_string(b"general.architecture") + struct.pack("<I", 8) + _gguf_string(b"bitnet-25")
    infos, data = b"", b""
    for name, dims, gtype, raw in tensors:
        data += b"\0" * (-len(data) % GGUF_ALIGN)
        infos += (_gguf_string(name.encode()) + struct.pack("<I", len(dims))
                  + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", gtype, len(data)))
        data += bytes(raw)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 1) + kv + infos
    head += b"\0" * (-len(head) % GGUF_ALIGN)
    with open(path, "wb") as f:
        f.write(head + data)


def encode_i2_s(codes, scale: float, tail_fill: int = 0xA5) -> bytes:
    """codes (N, K) in {0, 1, 2} (K % 128 == 0) -> the bytes of an I2_S tensor, written
    from the layout in /work/shared/research/onebit_llm_2026.md §4 (bitnet.cpp x86): the
    codes of the whole tensor in blocks of 128 in 32 bytes, element 32g + j of a block at
    bits 6-2g..7-2g of byte j; then the float32 scale and 28 bytes of padding (never read)."""
    import numpy as np

    blocks = np.asarray(codes).reshape(-1, 4, 32).astype(np.uint8)  # (block, g, j)
    packed = (blocks[:, 0] << 6) | (blocks[:, 1] << 4) | (blocks[:, 2] << 2) | blocks[:, 3]
    return packed.astype(np.uint8).tobytes() + struct.pack("<f", scale) + bytes([tail_fill]) * 28


def check_gguf_bytes(data: bytes, path: str) -> str:
    """Load ``data`` as a GGUF file; return "ok" or "rejected", raise on a contract violation."""
    import numpy as np
    import takane_kernels as tk
    import takane_kernels.gguf as tg

    with open(path, "wb") as f:
        f.write(data)
    try:
        tensors = tg.load(path, unsupported="skip")
    except ValueError:
        tensors = None
    try:
        meta = tg.load_metadata(path)
    except ValueError:
        meta = None
    if tensors is None:
        return "rejected"
    assert meta is not None, "tensors loaded from a file whose metadata is unreadable"
    for name, t in tensors.items():
        assert isinstance(name, str)
        if isinstance(t, tk.PackedWeights):
            assert t.group_size == 128 and t.k % 128 == 0 and t.scale is None and t.in_scale is None
            assert t.group_scale.dtype == np.float32 and np.all(np.isfinite(t.group_scale))
            assert tk.from_q1_0(tk.to_q1_0(t), t.k) == t  # fp16 values convert back exactly
        elif isinstance(t, tk.TernaryWeights) and t.tensor_scale is not None:  # I2_S (issue 23)
            assert t.group_size is None and t.k % 128 == 0 and t.scale is None and t.in_scale is None
            assert np.isfinite(t.tensor_scale) and not np.any(t.sign & ~t.nonzero)
            # re-encoded by this file's own encoder: the tensor's bytes in the file exactly
            # (the 28 padding bytes of the tail aside)
            raw = _tensor_bytes(data, name)
            # (no rows: the empty matrix directly, as to_dense() costs O(K) even then)
            dense = t.to_dense() if t.n else np.zeros((0, t.k), np.int8)
            mine = encode_i2_s(dense.astype(np.int16) + 1, t.tensor_scale)
            assert raw[:-28] == mine[:-28], "I2_S decoded into something that does not encode back"
        elif isinstance(t, tk.TernaryWeights):  # TQ2_0 / TQ1_0 (issue 23)
            assert t.group_size == 256 and t.k % 256 == 0 and t.scale is None and t.in_scale is None
            assert t.group_scale.dtype == np.float32 and np.all(np.isfinite(t.group_scale))
            assert not np.any(t.sign & ~t.nonzero)  # canonical planes
            assert tk._tq.from_tq2_0(tk._tq.to_tq2_0(t), t.k) == t  # fp16 scales convert back exactly
            assert tk._tq.from_tq1_0(tk._tq.to_tq1_0(t), t.k) == t  # and through TQ1_0's trits
        else:
            assert isinstance(t, np.ndarray) and t.dtype in (np.float32, np.float16) and 1 <= t.ndim <= 4
    return "ok"


def _tensor_bytes(data: bytes, name: str) -> bytes:
    """The bytes of tensor ``name`` of a GGUF file that loaded: its offset and size from the
    tensor infos, parsed here with struct (v3, little-endian, string-free metadata values
    skipped by type), not by the library."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    _magic, _version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    at = 24
    align = GGUF_ALIGN

    def string(at):
        n = struct.unpack_from("<Q", data, at)[0]
        return data[at + 8:at + 8 + n], at + 8 + n

    def value(at, vtype):
        if vtype == 8:
            return string(at)
        if vtype == 9:
            sub, count = struct.unpack_from("<IQ", data, at)
            at += 12
            out = []
            for _ in range(count):
                v, at = value(at, sub)
                out.append(v)
            return out, at
        return data[at:at + sizes[vtype]], at + sizes[vtype]

    for _ in range(n_kv):
        key, at = string(at)
        vtype = struct.unpack_from("<I", data, at)[0]
        v, at = value(at + 4, vtype)
        if key == b"general.alignment":
            align = struct.unpack("<I", v)[0]
    infos = []
    for _ in range(n_tensors):
        tname, at = string(at)
        n_dims = struct.unpack_from("<I", data, at)[0]
        dims = struct.unpack_from(f"<{n_dims}Q", data, at + 4)
        gtype, offset = struct.unpack_from("<IQ", data, at + 4 + 8 * n_dims)
        at += 4 + 8 * n_dims + 12
        infos.append((tname.decode(), dims, gtype, offset))
    start = at + (-at % align)
    for tname, dims, gtype, offset in infos:
        if tname == name:
            assert gtype == I2_S_TYPE
            n_elems = 1
            for d in dims:
                n_elems *= d
            return data[start + offset:start + offset + n_elems // 4 + 32]
    raise AssertionError(f"tensor {name!r} loaded but is not in the file")


def make_seeds(directory: str) -> list[str]:
    """A few small valid files: Q1_0, TQ2_0, TQ1_0, F32, F16 tensors and every metadata kind."""
    import numpy as np
    import takane_kernels as tk
    import takane_kernels.gguf as tg

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (n, k) in enumerate([(2, 128), (1, 256), (0, 128), (3, 384)]):
        t = {"w": tk.pack_weights(rng.standard_normal((n, k)), group_size=128),
             "f": rng.standard_normal(i + 1).astype(np.float32),
             "h": rng.standard_normal((2, i + 1)).astype(np.float16)}
        meta = {"a.u": i, "a.s": "text", "a.f": 0.5, "a.b": True, "a.l": [1, 2], "a.t": ["x", "y"]}
        p = os.path.join(directory, f"seed{i}.gguf")
        tg.save(p, t, arch="llama", metadata=meta)
        paths.append(p)
    # ternary: TQ2_0 through save(), TQ1_0 as raw blocks (bytes of any value decode to trits)
    import gguf

    p = os.path.join(directory, "seed-tq2_0.gguf")
    tg.save(p, {"t": tk.pack_ternary(rng.standard_normal((3, 512)), group_size=256)}, arch="llama")
    paths.append(p)
    p = os.path.join(directory, "seed-tq1_0.gguf")
    raw = rng.integers(0, 256, (2, 54), dtype=np.uint8)
    raw[:, 52:] = np.array([0.5], np.float16).view(np.uint8)
    w = gguf.GGUFWriter(p, "llama")
    w.add_tensor("t", raw, raw_dtype=gguf.GGMLQuantizationType.TQ1_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    paths.append(p)
    # I2_S (bitnet.cpp, type 36): two tensors and an F32 one, from this file's own writer
    p = os.path.join(directory, "seed-i2_s.gguf")
    write_gguf(p, [("a", [128, 2], I2_S_TYPE, encode_i2_s(rng.integers(0, 3, (2, 128)), 0.5)),
                   ("n", [3], 0, np.ones(3, "<f4").tobytes()),
                   ("b", [256, 1], I2_S_TYPE, encode_i2_s(rng.integers(0, 3, (1, 256)), -1.25))])
    paths.append(p)
    return paths


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[1] == "--make-seeds":
        print("\n".join(make_seeds(argv[2])))
        return
    import atheris

    with atheris.instrument_imports(include=["takane_kernels", "gguf"]):
        import gguf  # noqa: F401
        import takane_kernels.gguf  # noqa: F401

    tmp = tempfile.mkdtemp(prefix="takane-fuzz-gguf-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path = os.path.join(tmp, "f.gguf")

    def one_input(data: bytes) -> None:
        check_gguf_bytes(data, path)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
