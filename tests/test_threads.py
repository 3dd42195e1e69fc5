"""The prepacked path's blocking and threads: tile and block edges, both work splits,
concurrent callers, fork() after threaded use, TAKANE_NUM_THREADS."""

import concurrent.futures
import multiprocessing
import os
import shlex
import subprocess
import sys
import threading

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref

from conftest import assert_ran, assert_same, every_op, op_weights



def problem(m, n, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    return x, w


# (m, n, k): big enough (m*n*k >= 2**23) that threads=2 really splits the work.
SPLITS = [
    (64, 520, 4097),  # many rows: split over rows; k > 31 words: AVX2 byte-count flushes
    (5, 4093, 2049),  # few rows: split over weight panels; n not a multiple of the panel
    (1, 8191, 1025),  # GEMV
    (33, 1000, 4097),  # n past one L2 block of panels at this k
]


@pytest.mark.parametrize("shape", SPLITS, ids=[f"{m}x{n}x{k}" for m, n, k in SPLITS])
def test_threads_and_blocks_match_reference(on_isa, isa_name, shape):
    m, n, k = shape
    x, w = problem(m, n, k, seed=m + n + k)
    pw = tk.pack_weights(w)
    expected = ref.binary_matmul(x, ref.pack_weights(w))
    xb = tk.pack_bits(x)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(tk.binary_matmul(xb, pw, threads=threads), expected, err_msg=f"packed t={threads}")
        assert_ran(isa_name)
        np.testing.assert_array_equal(tk.binary_matmul(x, pw, threads=threads), expected, err_msg=f"float t={threads}")
        assert_ran(isa_name)
    # the canonical-rows path (raw weights) agrees too
    np.testing.assert_array_equal(tk.binary_matmul(xb, pw.bits, k=k), expected)


# Decode GEMV (M = 1): the single-stream gemv kernel over many weight tasks (~64 KiB each,
# whole 64-column words with an epilogue), odd word counts (k % 128 past 64: the unrolled
# loop's tail), N off every panel and word edge; threads 2 and 3 split the panels.
GEMV = [(1, 2053, 4097), (1, 1031, 1985)]


@pytest.mark.parametrize("shape", GEMV, ids=[f"{m}x{n}x{k}" for m, n, k in GEMV])
def test_gemv_tasks_match_reference(on_isa, isa_name, shape):
    m, n, k = shape
    x, w = problem(m, n, k, seed=n + k)
    pw, rpw = tk.pack_weights(w), ref.pack_weights(w)
    bias = np.linspace(-3, 3, n).astype(np.float32)
    expected = ref.binary_matmul(x, rpw)
    lin = ref.binary_linear(x, rpw, bias=bias)
    bits = ref.pack_bits(lin, 0.5)  # out_threshold's documented meaning
    xb = tk.pack_bits(x)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(tk.binary_matmul(xb, pw, threads=threads), expected, err_msg=f"packed t={threads}")
        assert_ran(isa_name)
        np.testing.assert_array_equal(tk.binary_matmul(x[0], pw, threads=threads), expected[0], err_msg=f"1-D float t={threads}")
        assert_ran(isa_name)
        np.testing.assert_array_equal(tk.binary_linear(x, pw, bias=bias, threads=threads), lin, err_msg=f"linear t={threads}")
        assert_ran(isa_name)
        np.testing.assert_array_equal(tk.binary_linear(x, pw, bias=bias, out_threshold=0.5, threads=threads), bits,
                                      err_msg=f"linear bits t={threads}")
        assert_ran(isa_name)


def test_concurrent_callers_share_weights(on_isa, isa_name):
    x, w = problem(48, 700, 2049, seed=1)
    pw = tk.pack_weights(w)
    xs = [x[i::4] for i in range(4)] * 2  # 8 calls, 4 distinct inputs
    serial = [tk.binary_matmul(xi, pw, threads=1) for xi in xs]

    def call(i):
        with tk.isa.force(isa_name):  # force is process-wide: re-assert inside the thread
            return tk.binary_matmul(xs[i], pw, threads=2), tk.isa.last_used()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    for (y, used), expected in zip(results, serial):
        np.testing.assert_array_equal(y, expected)
        assert used == isa_name


def _child_matmul(args):
    x, bits, k, isa_name = args
    with tk.isa.force(isa_name):
        return tk.binary_matmul(x, tk.PackedWeights(bits, k), threads=2)


def test_fork_after_threaded_use_does_not_hang(on_isa, isa_name):
    x, w = problem(40, 600, 1025, seed=2)
    pw = tk.pack_weights(w)
    expected = tk.binary_matmul(x, pw, threads=2)  # the parent's pool now has workers
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_child_matmul, ((x, pw.bits, pw.k, isa_name),))
        y = result.get(timeout=120)  # a hang fails here instead of blocking forever
    np.testing.assert_array_equal(y, expected)


def test_num_threads_env_and_default():
    assert tk.default_threads() >= 1
    code = "import takane_kernels as tk; print(tk.default_threads())"
    emulator = shlex.split(os.environ.get("TAKANE_TEST_EMULATOR", ""))
    for value, expected in (("3", "3"), ("1", "1")):
        env = dict(os.environ, TAKANE_NUM_THREADS=value)
        r = subprocess.run(emulator + [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == expected
    env = dict(os.environ, TAKANE_NUM_THREADS="junk")
    r = subprocess.run(emulator + [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and int(r.stdout) == len(os.sched_getaffinity(0))


def test_prepacked_handle_is_reused_and_sized():
    pw = tk.pack_weights(np.ones((20, 130)))
    h = pw._prepacked()
    assert pw._prepacked() is h
    n, k, nbytes = tk._ffi.new("int64_t *"), tk._ffi.new("int64_t *"), tk._ffi.new("int64_t *")
    assert tk._lib.takane_weights_info(h, n, k, nbytes) == 0
    assert (n[0], k[0], nbytes[0]) == (20, 130, 3 * 3 * 8 * 8)  # 3 panels x 3 words x 8 rows


def test_peak_probe():
    for name in tk.isa.supported():
        assert tk.isa.peak(name, seconds=0.01) > 1e8  # any CPU XOR-popcounts > 0.1 G bits/s
    with pytest.raises(ValueError, match="unknown ISA"):
        tk.isa.peak("sse9")


# ---- every op at once, and fork() in the middle of threaded work -----------------------------

def test_eight_threads_call_every_op_at_once(on_isa, isa_name):
    """8 Python threads released together by a barrier call every op of the OPS table
    (conftest) on shared weights (and each asks for threads=2, so 16 requests meet the
    pool, and W1A8's thread-local scratch is used from many threads): every result equals
    the serial one, bit for bit (the float ops too: one kernel, one summation order)."""
    rng = np.random.default_rng(11)
    k = 1100
    ws = op_weights(rng, 300, k)
    xs = [rng.standard_normal((40 + i, k)).astype(np.float32) for i in range(8)]
    serial = [every_op(x, ws, threads=1) for x in xs]
    barrier = threading.Barrier(8)

    def worker(i):
        with tk.isa.force(isa_name):  # force is process-wide: re-assert inside the thread
            barrier.wait(timeout=60)
            results = [every_op(xs[i], ws, threads=2) for _ in range(3)]
            return results, tk.isa.last_used()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(worker, range(8), timeout=300))
    for i, (results, used) in enumerate(outcomes):
        assert used == isa_name
        for r in results:
            assert_same(r, serial[i], f"thread {i}")


def _child_every_op(args):
    x, ws, isa_name = args
    with tk.isa.force(isa_name):
        return every_op(x, ws, threads=2)


def test_fork_while_parent_threads_are_busy(on_isa, isa_name):
    """fork() (multiprocessing's fork start method) while another parent thread is in the
    middle of threaded products: the child inherits the pool's state mid-flight, yet
    every op of the OPS table works in it (with threads=2, so it needs its own workers)
    and gives the parent's results; a hang fails at the timeout instead of blocking the suite."""
    rng = np.random.default_rng(12)
    k = 2049
    ws = op_weights(rng, 500, k)
    pw = ws["pw"]
    x = rng.standard_normal((48, k)).astype(np.float32)
    expected = every_op(x, ws, threads=2)
    stop = threading.Event()
    calls = [0]

    def busy():
        with tk.isa.force(isa_name):
            while not stop.is_set():
                tk.binary_matmul(x, pw, threads=2)
                tk.binary_weight_matmul(x, ws["group"], activations="q8_0", threads=2)
                calls[0] += 1

    t = threading.Thread(target=busy, daemon=True)
    t.start()
    try:
        ctx = multiprocessing.get_context("fork")
        for _ in range(4):
            with ctx.Pool(1) as pool:
                got = pool.apply_async(_child_every_op, ((x, ws, isa_name),)).get(timeout=120)
            assert_same(got, expected, "forked child")
    finally:
        stop.set()
        t.join(timeout=60)
    assert not t.is_alive() and calls[0] > 0
    assert_same(every_op(x, ws, threads=2), expected, "parent after the forks")
