"""Coverage-guided fuzz target (atheris) for ``takane_kernels.gguf.load`` / ``load_metadata``.

The contract under test (README, "bad input"): for any file, ``load`` either returns valid
tensors — PackedWeights with finite group scales (group_size 128) that convert back to the
same Q1_0 bytes, float32/float16 arrays — or raises ``ValueError``; the same for
``load_metadata``. Any other exception (MemoryError, IndexError, KeyError, ...), a hang or a
crash is a finding.

    python tests/fuzz/fuzz_gguf.py -max_total_time=30 CORPUS_DIR   # atheris/libFuzzer flags
    python tests/fuzz/fuzz_gguf.py --make-seeds DIR                  # valid files to start from

Crash inputs go to tests/fuzz/gguf_regressions/; tests/test_gguf.py replays every file there
through :func:`check_gguf_bytes` (pure Python, no atheris needed).
"""

from __future__ import annotations

import os
import sys
import tempfile


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
        elif isinstance(t, tk.TernaryWeights):  # TQ2_0 / TQ1_0 (issue 23)
            assert t.group_size == 256 and t.k % 256 == 0 and t.scale is None and t.in_scale is None
            assert t.group_scale.dtype == np.float32 and np.all(np.isfinite(t.group_scale))
            assert not np.any(t.sign & ~t.nonzero)  # canonical planes
            assert tk._tq.from_tq2_0(tk._tq.to_tq2_0(t), t.k) == t  # fp16 scales convert back exactly
        else:
            assert isinstance(t, np.ndarray) and t.dtype in (np.float32, np.float16) and 1 <= t.ndim <= 4
    return "ok"


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
