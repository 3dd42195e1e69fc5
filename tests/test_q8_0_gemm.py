"""The W1A8 prefill GEMM (issue 21: a VPDPBUSD register tile on weights expanded once per
strip, csrc/kernels/wq8/wq8_gemm_<isa>.c) and the batched paths, on every ISA (forced and
asserted; a set without a GEMM runs its panel kernel, which must give the same answers):
within the documented bound of the float64 oracle for K in {128, 256, 4096} and tails, M at
and around the 6-row tile, N at and around the 8- (AVX2) and 48-column (AVX-512) strips, with and without group
scales; the GEMM is forced for every M >= 2 through TAKANE_Q8_GEMM_MIN_M. Also the machine
probes (int8 peak, DRAM bandwidth): values only, no timing asserts."""

import numpy as np
import pytest

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._capi import weights_handle
from takane_kernels._takane import ffi, lib

from conftest import assert_ran

pytestmark = pytest.mark.usefixtures("on_isa")

GEMM_K = (128, 256, 4096, 65, 1000)
GEMM_M = (2, 5, 6, 7, 12, 13, 19)
GEMM_N = (1, 8, 31, 32, 33, 47, 48, 49, 70, 97)  # around the 8-, 32- and 48-column strips


def make(rng, n, k, group_size):
    bits = tk.pack_bits(rng.standard_normal((n, k)))
    kw = {"scale": (0.5 + rng.random(n)).astype(np.float32)}
    if group_size:
        kw["group_scale"] = (0.25 + rng.random((n, -(-k // group_size)))).astype(np.float32)
        kw["group_size"] = group_size
    return tk.PackedWeights(bits, k, **kw)


@pytest.fixture(params=["gemm", "panels"])
def path(request, monkeypatch):
    """The GEMM from M = 2 on, or never (the panel kernels): both must meet the bound."""
    monkeypatch.setenv("TAKANE_Q8_GEMM_MIN_M", "2" if request.param == "gemm" else "1000000")
    return request.param


@pytest.mark.parametrize("k", GEMM_K)
@pytest.mark.parametrize("group_size", [None, 128, 192])
def test_gemm_grid_within_bound(isa_name, path, k, group_size):
    rng = np.random.default_rng(k + (group_size or 0))
    pw = make(rng, max(GEMM_N), k, group_size)
    x = (rng.standard_normal((max(GEMM_M), k)) * 3).astype(np.float32)
    bias = rng.standard_normal(max(GEMM_N)).astype(np.float32)
    expected = ref.binary_weight_matmul(x, pw, bias=bias, activations="q8_0")
    bound = ref.binary_weight_matmul_error_bound(x, pw, bias=bias, activations="q8_0")
    for n in GEMM_N:
        sub = tk.PackedWeights(pw.bits[:n], k, scale=pw.scale[:n],
                               group_scale=None if group_size is None else pw.group_scale[:n],
                               group_size=group_size)
        for m in GEMM_M:
            for threads in (1, 2):
                y = tk.binary_weight_matmul(x[:m], sub, bias=bias[:n], activations="q8_0",
                                            threads=threads)
                assert_ran(isa_name)
                err = np.abs(y.astype(np.float64) - expected[:m, :n])
                assert np.all(err <= bound[:m, :n]), (
                    f"{path} m={m} n={n} k={k} G={group_size} threads={threads}: max err/bound "
                    f"{np.max(err / np.maximum(bound[:m, :n], 1e-300))}")


def test_gemm_big_prefill_threads(isa_name, path):
    """A prefill big enough to split strips over threads; rows independent of the batch."""
    rng = np.random.default_rng(11)
    pw = make(rng, 300, 2048, 128)
    x = rng.standard_normal((40, 2048)).astype(np.float32)
    expected = ref.binary_weight_matmul(x, pw, activations="q8_0")
    bound = ref.binary_weight_matmul_error_bound(x, pw, activations="q8_0")
    ys = [tk.binary_weight_matmul(x, pw, activations="q8_0", threads=t) for t in (1, 2, 3)]
    assert_ran(isa_name)
    for y in ys:
        assert np.all(np.abs(y - expected) <= bound)
        np.testing.assert_array_equal(y, ys[0])  # the thread split does not change a value


def test_gemm_exact_with_power_of_two_scales(isa_name, path):
    """d = 2**e, power-of-two group scales: every float step is exact, so the GEMM's
    integer block sums must equal the oracle's bit for bit."""
    rng = np.random.default_rng(3)
    m, n, k = 9, 45, 512
    base = rng.integers(-126, 127, size=(m, k)).astype(np.float32)
    base[:, ::32] = 127.0
    x = (base * np.float32(0.125)).astype(np.float32)
    gs = np.exp2(rng.integers(-2, 3, (n, k // 128))).astype(np.float32)
    pw = tk.PackedWeights(tk.pack_bits(rng.standard_normal((n, k))), k, group_scale=gs, group_size=128)
    y = tk.binary_weight_matmul(x, pw, activations="q8_0")
    assert_ran(isa_name)
    np.testing.assert_array_equal(y.astype(np.float64), ref.binary_weight_matmul(x, pw, activations="q8_0"))


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_gemm_non_finite_group_scale(isa_name, path, bad):
    """A NaN / infinite group scale (possible through the C ABI) is TAKANE_ERR_NOT_FINITE."""
    rng = np.random.default_rng(4)
    m, n, k = 8, 40, 256
    h = tk.PackedWeights(tk.pack_bits(rng.standard_normal((n, k))), k)._prepacked()
    x = rng.standard_normal((m, k)).astype(np.float32)
    gs = np.ones((n, 2), np.float32)
    gs[37, 1] = bad
    y = np.zeros((m, n), np.float32)
    st = lib.takane_binary_weight_matmul_prepacked_ex(
        h, m, ffi.from_buffer("float[]", x), k, ffi.NULL, ffi.NULL, ffi.from_buffer("float[]", gs),
        128, ffi.NULL, lib.TAKANE_ACTIVATIONS_Q8_0, ffi.from_buffer("float[]", y), n, 1)
    assert st == lib.TAKANE_ERR_NOT_FINITE
    assert_ran(isa_name)


def test_probes(isa_name):
    """The int8 peak (where the set has a probe) and the DRAM read bandwidth are positive
    rates; bad arguments are errors."""
    try:
        rate = tk.isa.peak_int8(isa_name, seconds=0.01)
    except ValueError:
        rate = None  # a set without an int8 GEMM
    assert rate is None or rate > 0
    if isa_name == "avx512":
        assert rate is not None
    assert tk.isa.dram_bandwidth(1, mb=8, repeat=1) > 0
    assert tk.isa.dram_bandwidth(2, mb=8, repeat=1) > 0
    with pytest.raises(ValueError):
        tk.isa.dram_bandwidth(0)


@pytest.mark.parametrize("m", [15, 16, 17, 70, 130])
def test_rows_entry_point_matches_the_threaded_run(isa_name, m):
    """takane_matmul_q8_0_rows (one calling thread, activations in row chunks) gives the
    library's threaded run bit for bit, also past one chunk: no tail chunk may fall into
    the other regime."""
    rng = np.random.default_rng(m)
    n, k = 72, 512
    gs = (0.5 + rng.random((n, k // 128))).astype(np.float32)
    pw = tk.PackedWeights(tk.pack_bits(rng.standard_normal((n, k))), k, group_scale=gs, group_size=128)
    x = rng.standard_normal((m, k)).astype(np.float32)
    expected = tk.binary_weight_matmul(x, pw, activations="q8_0", threads=2)
    q = np.zeros((m, k // 32 * 34), np.uint8)
    assert lib.takane_quantize_q8_0(m, k, ffi.from_buffer("float[]", x), k,
                                    ffi.from_buffer("uint8_t[]", q), q.shape[1]) == lib.TAKANE_OK
    # the PackedWeights' own handle (carries the group scales: none passed) and a
    # signs-only handle with the row-major scales passed per call
    for h, g, gsize in ((pw._prepacked(), ffi.NULL, 0),
                        (weights_handle(pw.bits, k), ffi.from_buffer("float[]", gs), 128)):
        size = lib.takane_matmul_q8_0_scratch_size(h, m)
        scratch = np.zeros(size, np.uint8)
        y = np.zeros((m, n), np.float32)
        for r0, r1 in ((0, n), (0, 40), (40, n)):  # two "threads" writing disjoint ranges
            st = lib.takane_matmul_q8_0_rows(
                h, r0, r1, m, ffi.from_buffer("uint8_t[]", q), q.shape[1], ffi.NULL, g, gsize, ffi.NULL,
                ffi.from_buffer("float[]", y), n, ffi.from_buffer("uint8_t[]", scratch), size)
            assert st == lib.TAKANE_OK
            assert_ran(isa_name)
            np.testing.assert_array_equal(y, expected)
