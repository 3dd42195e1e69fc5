"""Ternary weights (issue 23): TernaryWeights, pack_ternary, persistence, and
binary_weight_matmul / Linear on them for float32, q8_0 and int8_row activations, on every
ISA, against takane_kernels.reference (docs/guide/ternary.md is the contract)."""

import pickle

import numpy as np
import pytest

import takane_kernels as tk
from conftest import assert_ran
from takane_kernels import reference as ref

MODES = ("float32", "q8_0", "int8_row")


def _dense_planes(t):
    """Planes of an int (N, K) {-1, 0, 1} array by the plainest route: bit by bit."""
    n, k = t.shape
    sign = np.zeros((n, -(-k // 64)), np.uint64)
    nz = np.zeros_like(sign)
    for r in range(n):
        for c in range(k):
            if t[r, c]:
                nz[r, c // 64] |= np.uint64(1 << (c % 64))
            if t[r, c] > 0:
                sign[r, c // 64] |= np.uint64(1 << (c % 64))
    return sign, nz


# ---- the container ----------------------------------------------------------------------

def test_planes_hand_checked():
    t = np.array([[1, 0, -1, 1, 0], [0, 0, 0, 0, -1]])
    sign, nz = _dense_planes(t)
    assert sign[0, 0] == 0b01001 and nz[0, 0] == 0b01101 and sign[1, 0] == 0 and nz[1, 0] == 0b10000
    tw = tk.TernaryWeights(sign, nz, 5)
    np.testing.assert_array_equal(tw.to_dense(), t)
    np.testing.assert_array_equal(ref.unpack_ternary(tw), t)
    assert (tw.n, tw.k, tw.nbytes) == (2, 5, 32)


def test_constructor_refuses_non_canonical_planes():
    sign = np.array([[0b10]], np.uint64)
    with pytest.raises(ValueError, match="zero weight has sign 0"):
        tk.TernaryWeights(sign, np.array([[0b01]], np.uint64), 5)
    with pytest.raises(ValueError, match="padding"):
        tk.TernaryWeights(np.zeros((1, 1), np.uint64), np.array([[1 << 5]], np.uint64), 5)
    with pytest.raises(ValueError, match="both are"):
        tk.TernaryWeights(np.zeros((1, 1), np.uint64), np.zeros((2, 1), np.uint64), 5)
    with pytest.raises(TypeError, match="uint64"):
        tk.TernaryWeights(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.uint64), 5)
    with pytest.raises(ValueError, match="finite"):
        tk.TernaryWeights(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 5, tensor_scale=np.inf)
    with pytest.raises(ValueError, match="together"):
        tk.TernaryWeights(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 5, group_size=64)


def test_absmean_rule_hand_checked():
    # mean |w| = 8 / 8 = 1 exactly; round half to even: 0.5 -> 0, -0.5 -> 0, 1.5 -> 2 -> 1
    w = np.array([[0.5, 1.5, -2.0, 0.0], [-0.5, 0.51, -0.99, 2.0]])
    tw = tk.pack_ternary(w, eps=0.0)
    np.testing.assert_array_equal(tw.to_dense(), [[0, 1, -1, 0], [0, 1, -1, 1]])
    assert tw.tensor_scale == 1.0 and tw.scale is None and tw.group_scale is None
    assert tw == ref.pack_ternary(w, eps=0.0)
    # per row-group of 64: each group's own mean |w|
    w = np.concatenate([np.full((1, 64), 0.25), np.full((1, 64), -3.0)], axis=1)
    w[0, 0] = 0.1  # 0.1 / mean(0.1, 63 x 0.25) < 1/2: zero
    tw = tk.pack_ternary(w, group_size=64)
    np.testing.assert_array_equal(tw.to_dense()[0], [0] + [1] * 63 + [-1] * 64)
    np.testing.assert_allclose(tw.group_scale, [[(0.1 + 63 * 0.25) / 64, 3.0]], rtol=1e-7)


def test_threshold_rule_hand_checked():
    w = np.array([[0.5, -0.1, 2.0, -0.3], [0.05, 0.0, -0.05, 0.02]])
    tw = tk.pack_ternary(w, threshold=0.2)
    np.testing.assert_array_equal(tw.to_dense(), [[1, 0, 1, -1], [0, 0, 0, 0]])
    np.testing.assert_allclose(tw.scale, [(0.5 + 2.0 + 0.3) / 3, 0.0], rtol=1e-7)
    assert tw == ref.pack_ternary(w, threshold=0.2)


@pytest.mark.parametrize("kw", [dict(), dict(group_size=64), dict(group_size=128), dict(threshold=0.0),
                                dict(threshold=0.7), dict(threshold=0.5, group_size=64), dict(eps=0.0)])
@pytest.mark.parametrize("shape", [(7, 200), (1, 64), (9, 1), (3, 0), (0, 9)])
def test_pack_ternary_matches_the_reference(kw, shape):
    if shape[1] == 0 and "group_size" in kw:
        kw = {}
    w = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    assert tk.pack_ternary(w, **kw) == ref.pack_ternary(w, **kw)


def test_pack_ternary_errors():
    with pytest.raises(ValueError, match="2-D"):
        tk.pack_ternary(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        tk.pack_ternary(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match=">= 0"):
        tk.pack_ternary(np.ones((2, 2)), threshold=-1)
    with pytest.raises(ValueError, match="multiple of 64"):
        tk.pack_ternary(np.ones((2, 2)), group_size=32)


def _full(rng, n=11, k=300):
    w = rng.standard_normal((n, k))
    t = tk.pack_ternary(w, threshold=0.6)
    return tk.TernaryWeights(t.sign, t.nonzero, k, scale=rng.uniform(-2, 2, n), in_scale=rng.uniform(0.5, 2, k),
                             group_scale=rng.uniform(0.1, 1, (n, 3)), group_size=128, tensor_scale=0.5)


def test_save_load_pickle_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    for tw in (_full(rng), tk.pack_ternary(rng.standard_normal((5, 70))), tk.pack_ternary(np.zeros((2, 0)))):
        tw.save(tmp_path / "w.npz")
        back = tk.TernaryWeights.load(tmp_path / "w.npz")
        assert back == tw and back.tensor_scale == tw.tensor_scale
        assert pickle.loads(pickle.dumps(tw)) == tw


def test_load_refuses_bad_files(tmp_path):
    tw = tk.pack_ternary(np.random.default_rng(0).standard_normal((3, 70)))
    tw.save(tmp_path / "w.npz")
    data = dict(np.load(tmp_path / "w.npz"))

    def write(**changes):
        d = {**data, **changes}
        with open(tmp_path / "bad.npz", "wb") as f:
            np.savez(f, **{key: v for key, v in d.items() if v is not None})
        return tmp_path / "bad.npz"

    with pytest.raises(ValueError, match="version"):
        tk.TernaryWeights.load(write(format_version=np.array(2)))
    with pytest.raises(ValueError, match="not a TernaryWeights file"):
        tk.TernaryWeights.load(write(format=np.array("takane_kernels.PackedWeights")))
    with pytest.raises(ValueError, match="missing array 'nonzero'"):
        tk.TernaryWeights.load(write(nonzero=None))
    bad_sign = data["sign"] | ~data["nonzero"] & np.uint64(1)
    with pytest.raises(ValueError, match="sign 0"):
        tk.TernaryWeights.load(write(sign=bad_sign))
    with pytest.raises(ValueError, match="float32"):
        tk.TernaryWeights.load(write(tensor_scale=np.array(1.0)))
    with pytest.raises(ValueError, match="unexpected"):
        tk.TernaryWeights.load(write(bits=data["sign"]))
    with pytest.raises(ValueError, match="not a readable"):
        (tmp_path / "junk").write_bytes(b"PK\x03\x04junk")
        tk.TernaryWeights.load(tmp_path / "junk")


# ---- the ops on every ISA ------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 5, 64), (3, 17, 300), (2, 64, 1024), (4, 70, 64 * 9 + 3), (1, 130, 4096),
                                   (2, 3, 0)])
def test_matmul_within_the_bound(on_isa, isa_name, mode, shape):
    m, n, k = shape
    rng = np.random.default_rng(k + n)
    x = rng.standard_normal((m, k)).astype(np.float32) * 3
    bias = rng.standard_normal(n).astype(np.float32)
    weights = [tk.pack_ternary(rng.standard_normal((n, k))), tk.pack_ternary(rng.standard_normal((n, k)), threshold=1.0)]
    if k:
        weights += [tk.pack_ternary(rng.standard_normal((n, k)), group_size=128), _full(rng, n, k) if k == 300 else
                    tk.pack_ternary(rng.standard_normal((n, k)), threshold=0.3, group_size=64)]
    for tw in weights:
        for b in (None, bias):
            y = tk.binary_weight_matmul(x, tw, activations=mode, bias=b)
            if n and k:
                assert_ran(isa_name)
            want = ref.binary_weight_matmul(x, tw, activations=mode, bias=b)
            bound = ref.binary_weight_matmul_error_bound(x, tw, activations=mode, bias=b)
            assert y.dtype == np.float32 and y.shape == (m, n)
            assert np.all(np.abs(y - want) <= bound), (tw, np.abs(y - want).max())
            np.testing.assert_array_equal(tk.Linear(tw, activations=mode, bias=b)(x), y)


def test_integer_sums_exact(on_isa, isa_name):
    """int8_row with integer x of max |x| 127: q = x, d = 1, so y = t @ x exactly (|D| < 2^24);
    q8_0 with blocks of max 127 likewise; float32 on small integers too."""
    rng = np.random.default_rng(5)
    n, k = 37, 64 * 13 + 5
    t = rng.integers(-1, 2, (n, k))
    sign, nz = _dense_planes(t)
    tw = tk.TernaryWeights(sign, nz, k)
    x = rng.integers(-127, 128, (3, k)).astype(np.float32)
    nb = -(-k // 32)
    for b in range(nb):  # every Q8_0 block holds a 127 (the last may be partial)
        x[:, b * 32] = 127
    want = x.astype(np.int64) @ t.T
    for mode in MODES:
        y = tk.binary_weight_matmul(x, tw, activations=mode)
        assert_ran(isa_name)
        np.testing.assert_array_equal(y, want.astype(np.float32), err_msg=mode)


def test_int8_row_bit_identical_to_scalar(on_isa, isa_name):
    """The int8_row quantizer (SIMD in the AVX-512 set) rounds like the portable one: the
    integer sums are exact, so without group scales every ISA gives the scalar set's bits —
    with in_scale, halfway products (x = 0.5 + j at amax 127: round half to even) and tails
    of every length mod 16."""
    rng = np.random.default_rng(9)
    for k in (1, 15, 16, 17, 100, 64 * 5 + 7):
        t = rng.integers(-1, 2, (11, k))
        sign, nz = _dense_planes(t)
        tw = tk.TernaryWeights(sign, nz, k, in_scale=rng.uniform(0.5, 2, k).astype(np.float32))
        x = rng.standard_normal((3, k)).astype(np.float32)
        x[2] = (np.arange(k) % 20 - 10 + 0.5).astype(np.float32)
        x[2, 0] = 127.0
        tw2 = tk.TernaryWeights(sign, nz, k)
        for w in (tw, tw2):
            y = tk.binary_weight_matmul(x, w, activations="int8_row")
            assert_ran(isa_name)
            with tk.isa.force("scalar"):
                y0 = tk.binary_weight_matmul(x, w, activations="int8_row")
            np.testing.assert_array_equal(y, y0, err_msg=str(k))
            assert np.all(np.abs(y - ref.binary_weight_matmul(x, w, activations="int8_row"))
                          <= ref.binary_weight_matmul_error_bound(x, w, activations="int8_row"))


@pytest.mark.parametrize("group_size", [64, 128, 256, 64 * 13])
def test_grouped_integer_sums_exact(on_isa, isa_name, group_size):
    """int8_row with group scales (TQ2_0-style groups; the AVX-512 set applies them in the
    kernel): power-of-two scales and q = x make every product and partial sum exact, so
    y = sum_g g[j][g] * D_g exactly — rows past the last full panel (n = 37) and a partial
    last group (k = 64 * 13 + 5) included."""
    rng = np.random.default_rng(group_size)
    n, k = 37, 64 * 13 + 5
    t = rng.integers(-1, 2, (n, k))
    sign, nz = _dense_planes(t)
    ng = -(-k // group_size)
    gs = (2.0 ** rng.integers(-2, 3, (n, ng))).astype(np.float32)
    tw = tk.TernaryWeights(sign, nz, k, group_scale=gs, group_size=group_size)
    x = rng.integers(-127, 128, (3, k)).astype(np.float32)
    x[:, 0] = 127  # max |x| = 127: d = 1, q = x
    want = np.zeros((3, n))
    for g in range(ng):
        sl = slice(g * group_size, (g + 1) * group_size)
        want += (x[:, sl].astype(np.int64) @ t[:, sl].T) * gs[:, g]
    y = tk.binary_weight_matmul(x, tw, activations="int8_row")
    assert_ran(isa_name)
    np.testing.assert_array_equal(y, want.astype(np.float32))
    y2 = tk.binary_weight_matmul(x, tw, activations="int8_row", threads=2)
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("k", [2**20, 2**21 + 64 * 3 + 1])
def test_no_overflow_at_large_k(on_isa, isa_name, k):
    """Extreme int8 activations (every q = ±127, matching the weight's sign) at K = 2^20 and
    past one int32 chunk of the kernels (2^21 columns): D = 127 * K exactly, then one
    rounding to float32."""
    t = np.ones((2, k), np.int8)
    t[1, ::2] = -1
    words = -(-k // 64)
    ones = np.full(words, ~np.uint64(0), np.uint64)
    if k % 64:
        ones[-1] = np.uint64((1 << (k % 64)) - 1)
    alt = np.full(words, np.uint64(0xAAAAAAAAAAAAAAAA), np.uint64) & ones  # odd columns +1
    sign = np.stack([ones, alt])
    nz = np.stack([ones, ones])
    tw = tk.TernaryWeights(sign, nz, k)
    x = np.full((1, k), 127.0, np.float32)
    x[0, ::2] = -127.0  # row 1's signs: every product +127 * 127 / 127
    x2 = np.where(np.arange(k) % 2 == 0, -127.0, 127.0).astype(np.float32)
    d0 = int((x2 > 0).sum() - (x2 < 0).sum()) * 127
    for mode in ("int8_row", "q8_0"):
        y = tk.binary_weight_matmul(x, tw, activations=mode)
        assert_ran(isa_name)
        np.testing.assert_array_equal(y[0], np.float32([d0, 127 * k]), err_msg=mode)
    # group scales of 1: groups of 2^20 columns (one int32 sum per group in the kernel) and
    # one group of all words (past one int32 chunk at the larger k: the chunked path); the
    # group sums 127 * 2^20 are exact in float32, so only the last add rounds, as above
    for group_size in (2**20, words * 64):
        tg = tk.TernaryWeights(sign, nz, k, group_scale=np.ones((2, -(-k // group_size)), np.float32),
                               group_size=group_size)
        y = tk.binary_weight_matmul(x, tg, activations="int8_row")
        assert_ran(isa_name)
        np.testing.assert_array_equal(y[0], np.float32([d0, 127 * k]), err_msg=str(group_size))


def test_nan_and_inf(on_isa, isa_name):
    rng = np.random.default_rng(2)
    tw = tk.pack_ternary(rng.standard_normal((9, 200)), threshold=0.0)
    x = rng.standard_normal((3, 200)).astype(np.float32)
    x[1, 70] = np.nan
    y = tk.binary_weight_matmul(x, tw)
    assert np.isnan(y[1]).all() and not np.isnan(y[[0, 2]]).any()
    for mode in ("q8_0", "int8_row"):
        with pytest.raises(ValueError, match=mode):
            tk.binary_weight_matmul(x, tw, activations=mode)
        xi = np.where(np.isnan(x), np.inf, x).astype(np.float32)
        with pytest.raises(ValueError, match=mode):
            tk.binary_weight_matmul(xi, tw, activations=mode)
    # a zero weight does not see the NaN (0 * NaN is not formed)
    t = np.zeros((2, 64), int)
    t[0, 5] = 1
    sign, nz = _dense_planes(t)
    y = tk.binary_weight_matmul(np.where(np.arange(64) == 6, np.nan, 1.0).astype(np.float32)[None], tk.TernaryWeights(sign, nz, 64))
    np.testing.assert_array_equal(y, [[1.0, 0.0]])


def test_mode_and_type_errors():
    rng = np.random.default_rng(0)
    tw = tk.pack_ternary(rng.standard_normal((4, 64)))
    pw = tk.pack_weights(rng.standard_normal((4, 64)))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="int8_row.*TernaryWeights"):
        tk.binary_weight_matmul(x, pw, activations="int8_row")
    with pytest.raises(ValueError, match="weight-only mode"):
        tk.Linear(tw)
    with pytest.raises(ValueError, match="activations must be"):
        tk.binary_weight_matmul(x, tw, activations="int4")
    with pytest.raises(TypeError, match="TernaryWeights"):
        tk.binary_weight_matmul(x, np.zeros((4, 1), np.uint64))
    with pytest.raises(ValueError, match="last dimension"):
        tk.binary_weight_matmul(x[:, :10], tw)
    with pytest.raises(ValueError, match="bias must be finite"):
        tk.binary_weight_matmul(x, tw, bias=[np.inf, 0, 0, 0])


def test_general_path_batch_dtypes_out(on_isa):
    rng = np.random.default_rng(4)
    tw = tk.pack_ternary(rng.standard_normal((6, 100)), group_size=64)
    x = rng.standard_normal((2, 3, 100))
    for mode in MODES:
        y = tk.binary_weight_matmul(x, tw, activations=mode)
        want = ref.binary_weight_matmul(x.astype(np.float32), tw, activations=mode)
        bound = ref.binary_weight_matmul_error_bound(x.astype(np.float32), tw, activations=mode)
        assert y.shape == (2, 3, 6) and np.all(np.abs(y - want) <= bound)
        out = np.empty((2, 3, 6), np.float32)
        assert tk.binary_weight_matmul(x[..., ::1], tw, activations=mode, out=out) is out
        np.testing.assert_array_equal(out, y)
        np.testing.assert_array_equal(tk.binary_weight_matmul(np.asfortranarray(x[0]), tw, activations=mode), y[0])


def test_threads_give_the_same_result(on_isa):
    rng = np.random.default_rng(6)
    tw = tk.pack_ternary(rng.standard_normal((300, 1024)), group_size=128)
    x = rng.standard_normal((5, 1024)).astype(np.float32)
    for mode in MODES:
        y1 = tk.binary_weight_matmul(x, tw, activations=mode, threads=1)
        for threads in (2, 3, 8):
            np.testing.assert_array_equal(tk.binary_weight_matmul(x, tw, activations=mode, threads=threads), y1)
        # a row's result does not depend on the batch
        np.testing.assert_array_equal(tk.binary_weight_matmul(x[2:3], tw, activations=mode), y1[2:3])


# ---- group scales in the kernel on every set (dot_i8_groups: scalar, AVX2, AVX-512, NEON) ----

@pytest.mark.parametrize("n,k,group_size", [(37, 64 * 13 + 5, 256), (8, 256, 64), (21, 2560, 256),
                                            (9, 700, 192), (3, 100, 1024)])
def test_grouped_int8_row_order_and_scales_exact(on_isa, isa_name, n, k, group_size):
    """int8_row with group scales, where every product float(S_g) * g is exact (scales of
    8 significant bits, |S_g| < 2^16): the kernel's result is then the float32 sum of the
    products in group order from 0, whatever the set (one FMA or two roundings give the
    same bits) — so this checks the order, each row's and group's scale (rows past N in
    the last panel, a partial last group) and the row factor d bit for bit on every ISA."""
    rng = np.random.default_rng(n * 1000 + k + group_size)
    t = rng.integers(-1, 2, (n, k))
    sign, nz = _dense_planes(t)
    ng = -(-k // group_size)
    gs = (rng.integers(-255, 256, (n, ng)) * 2.0 ** rng.integers(-12, -4, (n, ng))).astype(np.float32)
    tw = tk.TernaryWeights(sign, nz, k, group_scale=gs, group_size=group_size)
    x = rng.integers(-127, 128, (4, k)).astype(np.float32)
    x[:, 0] = 127  # max |x| = 127: d = 1, q = x
    want = np.zeros((4, n), np.float32)
    for g in range(ng):
        sl = slice(g * group_size, (g + 1) * group_size)
        s = x[:, sl].astype(np.int64) @ t[:, sl].T
        assert np.all(np.abs(s) < 2**16)
        want = (want + (s * gs[:, g].astype(np.float64)).astype(np.float32)).astype(np.float32)
    for threads in (1, 2):
        y = tk.binary_weight_matmul(x, tw, activations="int8_row", threads=threads)
        assert_ran(isa_name)
        np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32), err_msg=f"threads={threads}")


def test_grouped_int8_row_simd_sets_agree(on_isa, isa_name):
    """Full-precision group scales: within the reference's bound on every ISA, and the SIMD
    sets' kernels (one FMA per group: AVX2, AVX-512, NEON) give each other's bits."""
    rng = np.random.default_rng(4)
    n, k = 45, 2560
    tw = tk.pack_ternary(rng.standard_normal((n, k)), group_size=256)
    x = rng.standard_normal((3, k)).astype(np.float32)
    simd = [i for i in ("avx512", "avx2", "neon") if i in tk.isa.supported()]
    if "emulated with SIMDe" in tk.version_info():
        # the SIMDe test build compiles the avx512 file without -mfma, so its FMA intrinsic
        # rounds twice (a multiply, then an add): the contract allows that, bit identity with
        # the hardware FMA of the avx2 set is a property of real AVX-512 builds only
        simd = [i for i in simd if i != "avx512"]
    others = {}
    if isa_name in simd:
        for other in simd:
            with tk.isa.force(other):
                others[other] = tk.binary_weight_matmul(x, tw, activations="int8_row")
    y = tk.binary_weight_matmul(x, tw, activations="int8_row")
    assert_ran(isa_name)
    assert np.all(np.abs(y - ref.binary_weight_matmul(x, tw, activations="int8_row"))
                  <= ref.binary_weight_matmul_error_bound(x, tw, activations="int8_row"))
    for other, y2 in others.items():
        np.testing.assert_array_equal(y.view(np.uint32), y2.view(np.uint32), err_msg=other)

