"""Coverage-guided fuzz target (atheris) for ``PackedWeights.load``: untrusted bytes on disk.

The contract under test (README, "bad input"): for any file, ``load`` either returns a
valid ``PackedWeights`` — canonical bits with zero padding, finite float32 scales of the
right shapes, and it saves and loads back to an equal object and computes — or raises
``ValueError``. Any other exception (MemoryError, TypeError, OverflowError, ...) or a
crash of the process is a finding.

    python tests/fuzz/fuzz_load.py -max_total_time=30 CORPUS_DIR   # atheris/libFuzzer flags
    python tests/fuzz/fuzz_load.py --make-seeds DIR                   # valid files to start from

Crash inputs go to tests/fuzz/load_regressions/; tests/test_hostile.py replays every file
there through :func:`check_load_bytes` (pure Python, no atheris needed).
"""

from __future__ import annotations

import os
import sys
import tempfile

def check_load_bytes(data: bytes, path: str) -> str:
    """Load ``data`` as a file; return "ok" or "rejected", raise on a contract violation."""
    import numpy as np
    import takane_kernels as tk

    with open(path, "wb") as f:
        f.write(data)
    try:
        pw = tk.PackedWeights.load(path)
    except ValueError:
        return "rejected"
    # accepted: it must be a fully valid object
    bits = pw.bits
    assert bits.dtype == np.uint64 and bits.ndim == 2 and bits.flags.c_contiguous
    assert bits.shape[1] == (pw.k + 63) // 64 and 0 <= pw.k <= tk.MAX_K
    if pw.k % 64 and bits.size:
        assert not np.any(bits[:, -1] >> np.uint64(pw.k % 64)), "padding bits accepted"
    for v, length in ((pw.scale, pw.n), (pw.in_scale, pw.k)):
        assert v is None or (v.dtype == np.float32 and v.shape == (length,) and np.all(np.isfinite(v)))
    assert (pw.group_scale is None) == (pw.group_size is None)
    if pw.group_size is not None:  # format version 2
        g = pw.group_size
        assert isinstance(g, int) and g > 0 and g % 64 == 0
        gs = pw.group_scale
        assert gs.dtype == np.float32 and gs.shape == (pw.n, -(-pw.k // g)) and np.all(np.isfinite(gs))
    pw.save(path)
    assert tk.PackedWeights.load(path) == pw
    if pw.n and pw.k <= 1 << 16:
        x = np.ones((1, pw.k), dtype=np.float32)
        expected = pw.k - 2 * np.bitwise_count(~bits[:, : pw.k // 64]).sum(axis=1, dtype=np.int64)
        if pw.k % 64:
            valid = np.uint64((1 << (pw.k % 64)) - 1)
            expected = expected - 2 * np.bitwise_count(~bits[:, -1] & valid).astype(np.int64)
        np.testing.assert_array_equal(tk.binary_matmul(x, pw)[0], expected)
    return "ok"


def make_seeds(directory: str) -> list[str]:
    """A few small valid files (every optional array, k at word edges, empty shapes)."""
    import numpy as np
    import takane_kernels as tk

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (n, k, kw) in enumerate([
        (3, 70, {}), (2, 64, {"scale": None}), (1, 1, {"in_scale": np.ones(1)}),
        (0, 5, {}), (4, 0, {"scale": None}), (2, 129, {"in_scale": np.arange(129.0)}),
        (3, 200, {"group_size": 128}), (2, 64, {"group_size": 64, "in_scale": np.ones(64)}),  # version 2
    ]):
        pw = tk.pack_weights(rng.standard_normal((n, k)), **kw)
        p = os.path.join(directory, f"seed{i}.npz")
        pw.save(p)
        paths.append(p)
    return paths


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[1] == "--make-seeds":
        print("\n".join(make_seeds(argv[2])))
        return
    import atheris

    # coverage feedback from the loader, numpy's .npy/.npz readers and zipfile only
    # (instrument_all() would also work, but takes ~25 s to rewrite everything loaded)
    with atheris.instrument_imports(include=["takane_kernels", "numpy.lib", "zipfile"]):
        import zipfile  # noqa: F401
        import numpy.lib.format  # noqa: F401
        import takane_kernels  # noqa: F401

    tmp = tempfile.mkdtemp(prefix="takane-fuzz-load-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path = os.path.join(tmp, "w.npz")

    def one_input(data: bytes) -> None:
        check_load_bytes(data, path)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
