"""Weight handles on transparent huge pages, and resident memory (issue 21).

The C library puts every weight handle's memory in huge-page-advised mappings: blocks below
2 MiB share 2 MiB-aligned slabs (csrc/src/alloc.c; its own tests are tests/c/test_alloc.c),
so the small matrices of an LLM (64 KB-1.8 MB each) sit on huge pages too. Checked here
through /proc/self/smaps on Linux: the mapping holding each handle is advised (VmFlags
``hg``) and, where the kernel's THP mode is ``always`` or ``madvise``, backed by huge pages
(AnonHugePages > 0); TAKANE_HUGE_SLABS=0 gives plain heap blocks. And the canonical arrays a
PackedWeights drops once its handle exists go back to the OS (their own memory maps), so a
loaded model's RSS growth stays close to what its weights hold.
"""

from __future__ import annotations

import ctypes
import mmap
import gc
import json
import os
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import _weights
from takane_kernels._capi import ffi
from takane_kernels import reference as ref

# (N, K) of the llm program's default model (hidden 2048, FFN 5632, KV width 256): its
# handles hold 80 KB (k, v), 640 KB (q, o) and 1.76 MB (gate, up, down) with group scales
LLM_SHAPES = [(256, 2048), (2048, 2048), (5632, 2048), (2048, 5632)]
GROUP = 128


def _thp_mode() -> str | None:
    """The bracketed word of /sys/kernel/mm/transparent_hugepage/enabled, or None."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def _asan_runtime_loaded() -> bool:
    """An AddressSanitizer build of the library (then every block is a plain aligned_alloc,
    so ASan sees its bounds) runs with the ASan runtime in the process."""
    try:
        return hasattr(ctypes.CDLL(None), "__asan_init")
    except OSError:
        return False


def _slabs_expected() -> str | None:
    """None if handles should be in huge-page slabs here, else why not."""
    if not sys.platform.startswith("linux"):
        return "transparent huge pages are a Linux feature (elsewhere handles are plain aligned_alloc blocks)"
    if os.environ.get("TAKANE_HUGE_SLABS") == "0":
        return "TAKANE_HUGE_SLABS=0 turns the slabs off"
    if _asan_runtime_loaded():
        return "an AddressSanitizer build allocates every handle on its own (slabs would hide overruns)"
    return None


def _vmas() -> list[dict]:
    """Every mapping of this process from /proc/self/smaps: lo, hi, flags and the kB fields."""
    out, cur = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if not parts[0].endswith(":"):  # "lo-hi perms offset dev inode [path]"
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur = {"lo": lo, "hi": hi, "flags": []}
                out.append(cur)
            elif parts[0] == "VmFlags:":
                cur["flags"] = parts[1:]
            elif len(parts) >= 2 and parts[1].isdigit():
                cur[parts[0][:-1]] = int(parts[1])
    return out


def _vma_of(addr: int, vmas: list[dict]) -> dict | None:
    return next((v for v in vmas if v["lo"] <= addr < v["hi"]), None)


def _advice_shows() -> bool:
    """Whether MADV_HUGEPAGE given here shows in /proc/self/smaps ("hg" in VmFlags): an
    anonymous mapping of our own is advised and looked up. qemu-user (CI's Haswell,
    Nehalem and aarch64 runs) accepts the call, ignores it and lists its own mappings, so
    there nothing advised can be seen, the library's blocks included."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    m = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
        view = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(view)
        del view  # the buffer export must end before the mapping is closed
        v = _vma_of(addr, _vmas())
        return v is not None and "hg" in v["flags"]
    finally:
        m.close()


def _grouped(n: int, k: int, seed: int) -> tk.PackedWeights:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**64 - 1, size=(n, -(-k // 64)), dtype=np.uint64, endpoint=True)
    gs = rng.uniform(0.5, 1.5, size=(n, -(-k // GROUP))).astype(np.float32)
    return tk.PackedWeights(bits, k, group_scale=gs, group_size=GROUP)


def _check_against_oracle(w: tk.PackedWeights, x: np.ndarray) -> np.ndarray:
    """binary_weight_matmul on w within the oracle's documented bound; the result."""
    y = tk.binary_weight_matmul(x, w)
    assert (np.abs(y - ref.binary_weight_matmul(x, w)) <= ref.binary_weight_matmul_error_bound(x, w)).all()
    return y


def _handle_address(w: tk.PackedWeights) -> int:
    """Where w's handle block starts: a handle with group scales is one block, its struct
    first (byot.c, TAKANE_STORAGE_BLOCK), so the handle pointer is the block."""
    return int(ffi.cast("uintptr_t", w._prepacked()))


needs_linux_smaps = pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps (Linux)")


@needs_linux_smaps
def test_small_handles_sit_in_huge_page_mappings():
    why = _slabs_expected()
    if why:
        pytest.skip(why)
    mode = _thp_mode()
    if mode not in ("always", "madvise"):
        pytest.skip(f"transparent huge pages are {mode or 'not available'} on this kernel "
                    "(/sys/kernel/mm/transparent_hugepage/enabled): nothing can be backed by them")
    if not _advice_shows():
        pytest.skip("MADV_HUGEPAGE does not show in /proc/self/smaps here (an emulator such as "
                    "qemu-user accepts and ignores it): the handles' advice cannot be seen")
    # three copies of the llm model's layer shapes: ~13 MB, several 2 MiB pages per slab
    ws = [_grouped(n, k, seed) for seed in range(3) for n, k in LLM_SHAPES]
    addrs = [_handle_address(w) for w in ws]
    vmas = _vmas()
    holding = []
    for w, a in zip(ws, addrs):
        nbytes = tk._capi.handle_nbytes(w._handle)
        assert nbytes < 2 << 20  # each one a small block: a slab's, not a mapping of its own
        assert a % 64 == 0
        v = _vma_of(a, vmas)
        assert v is not None, f"handle at {a:#x} is in no mapping"
        assert a + nbytes <= v["hi"], "a handle block crosses the end of its mapping"
        # "hg": the mapping was advised MADV_HUGEPAGE (a plain heap block would not be)
        assert "hg" in v["flags"], f"handle of {w.n}x{w.k} at {a:#x} is not in a huge-page-advised mapping: {v}"
        if v not in holding:
            holding.append(v)
    huge_kb = sum(v.get("AnonHugePages", 0) for v in holding)
    assert huge_kb > 0, (f"THP mode [{mode}], but the {len(holding)} slab mapping(s) holding the handles have "
                         f"no AnonHugePages: {holding}")
    # and the kernels still read them right (the suite runs every op on slab handles; one here)
    for w in ws[:len(LLM_SHAPES)]:
        _check_against_oracle(w, np.random.default_rng(9).standard_normal((2, w.k)).astype(np.float32))


def _run_child(code: str, env_extra: dict) -> dict:
    """Run code in a fresh interpreter (under TAKANE_TEST_EMULATOR when the suite runs
    emulated: .ci/aarch64.sh's host cannot exec the aarch64 interpreter itself); its last
    stdout line, as JSON."""
    env = dict(os.environ, **env_extra)
    cmd = shlex.split(os.environ.get("TAKANE_TEST_EMULATOR", "")) + [sys.executable, "-c", textwrap.dedent(code)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


_CHILD_ADVISED = """
    import json, sys
    sys.path.insert(0, {testdir!r})
    import test_hugepages as t
    w = t._grouped(2048, 2048, 0)
    v = t._vma_of(t._handle_address(w), t._vmas())
    print(json.dumps({{"advised": "hg" in v["flags"]}}))
"""


@needs_linux_smaps
def test_huge_slabs_env_switch_gives_plain_blocks():
    """TAKANE_HUGE_SLABS=0 (what the valgrind run sets, so memcheck sees each block): the
    handle is an ordinary heap block, in no advised mapping; results are the same bits."""
    why = _slabs_expected()
    if why:
        pytest.skip(why)
    if not _advice_shows():
        pytest.skip("MADV_HUGEPAGE does not show in /proc/self/smaps here (an emulator such as "
                    "qemu-user accepts and ignores it): the handles' advice cannot be seen")
    code = _CHILD_ADVISED.format(testdir=os.path.dirname(os.path.abspath(__file__)))
    assert _run_child(code, {"TAKANE_HUGE_SLABS": "0"}) == {"advised": False}
    assert _run_child(code, {"TAKANE_HUGE_SLABS": "1"}) == {"advised": True}


def test_releasable_copy_is_a_plain_copy():
    """The owned arrays of a PackedWeights in their own memory maps behave as numpy copies:
    same values and casts, C-contiguous, independent of the source, read-only once owned,
    and pickle / equality / the kernels see nothing different."""
    rng = np.random.default_rng(3)
    big = rng.integers(0, 2**64 - 1, size=(300, 32), dtype=np.uint64, endpoint=True)  # 76.8 KB
    assert big.nbytes >= _weights._RELEASABLE_MIN_BYTES
    c = _weights._releasable_copy(big[:, ::-1].T.T, np.uint64)  # a non-contiguous source
    assert c.flags.c_contiguous and c.dtype == np.uint64
    np.testing.assert_array_equal(c, big[:, ::-1])
    gs = rng.uniform(-3, 3, size=(300, 64))  # float64 -> float32, numpy's rounding
    np.testing.assert_array_equal(_weights._releasable_copy(gs, np.float32), np.array(gs, dtype=np.float32))
    small = np.arange(10, dtype=np.uint64)
    np.testing.assert_array_equal(_weights._releasable_copy(small, np.uint64), small)

    w = tk.PackedWeights(big, 2048, group_scale=gs[:, :16], group_size=128)
    big[0, 0] ^= np.uint64(1)  # the weights own a copy
    assert int(w.bits[0, 0]) == int(big[0, 0] ^ np.uint64(1))
    assert not w.bits.flags.writeable and not w.group_scale.flags.writeable
    with pytest.raises(ValueError):
        w.bits[0, 0] = 0
    import pickle
    w2 = pickle.loads(pickle.dumps(w))
    assert w2 == w
    _check_against_oracle(w, rng.standard_normal((2, 2048)).astype(np.float32))
    assert w._bits is None and w == w2  # the handle replaced the copy; equality by value


_CHILD_RSS = """
    import gc, json
    from takane_kernels.programs import llm

    def model(layers):
        ws = llm.random_weights(llm.llama_shapes(2048, 5632, layers, 32, 4))
        for _, w in ws:
            w._prepacked()
        return ws

    warm = model(1)  # code pages and first-use allocations before the baseline
    del warm
    gc.collect()
    before = llm.rss_bytes()
    ws = model(22)
    print(json.dumps({"growth": llm.rss_bytes() - before, "held": sum(w._resident_nbytes() for _, w in ws)}))
"""


@needs_linux_smaps
def test_model_rss_growth_close_to_what_the_weights_hold():
    """The llm program's default model (1B-class, 151 MB of signs and group scales), built
    as the program builds it (random rows and scales, a PackedWeights each, then every
    handle): RSS growth <= 1.1x the bytes the weights hold, + 4 MiB for the slabs' partly
    used huge pages and the generator's temporaries (measured ~1.02x). Before the canonical
    copies had their own memory maps, glibc kept them resident after the handles replaced
    them (~1.46x here). A fresh process, so nothing else moves its RSS; ~0.5 s."""
    if _asan_runtime_loaded():
        pytest.skip("AddressSanitizer's allocator keeps freed memory in quarantine: RSS says nothing there")
    if os.environ.get("TAKANE_TEST_EMULATOR"):
        pytest.skip("under an emulator the child's RSS counts the emulator's own code cache")
    r = _run_child(_CHILD_RSS, {})
    assert r["held"] > 150e6
    assert r["growth"] <= 1.1 * r["held"] + (4 << 20), (
        f"RSS grew {r['growth'] / 1e6:.1f} MB for {r['held'] / 1e6:.1f} MB of weights ({r['growth'] / r['held']:.2f}x)")


def test_many_small_handles_created_and_freed_stay_correct():
    """Handles of many sizes created and dropped in a mixed order (freed space reused by the
    next ones; slabs unmapped when empty): every one still multiplies right, on its own and
    after its neighbours went."""
    rng = np.random.default_rng(5)
    live = []
    for i in range(60):
        n, k = int(rng.integers(1, 700)), int(rng.integers(1, 3000))
        signs = rng.standard_normal((n, k))
        w = tk.pack_weights(signs, group_size=128) if i % 2 else tk.pack_weights(signs)
        x = rng.standard_normal((3, k)).astype(np.float32)
        live.append((w, x, _check_against_oracle(w, x)))
        if rng.random() < 0.4:
            live.pop(int(rng.integers(0, len(live))))
            gc.collect()
    assert live
    for w, x, y in live:  # the same call on the same handle: the same bits
        np.testing.assert_array_equal(tk.binary_weight_matmul(x, w).view(np.uint32), y.view(np.uint32))
