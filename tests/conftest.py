"""Shared test machinery: every kernel test runs once per ISA this machine supports.

A test that takes ``isa_name`` is parametrized over ``takane_kernels.isa.supported()``
(ids ``isa=avx2`` ...); the ``on_isa`` fixture forces that ISA for the test's duration,
checks it took, and at the end asserts that the test's compute calls on this thread ran
that ISA's kernels (``isa.last_used()``), so a test can not pass on a different kernel
than the one it names. ``OPS`` is the one table of every compute op that the hostile-input,
property, thread and fork tests iterate. The terminal summary counts outcomes per ISA.
"""

from __future__ import annotations

import collections
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import takane_kernels as tk

SUPPORTED = tk.isa.supported()
# TAKANE_TEST_ISAS=scalar,avx2 narrows the per-ISA parametrization (valgrind has no
# AVX-512: .ci/run runs its subset with the avx512 parameter left out). Unknown or
# unsupported names are an error, so a typo cannot silently test nothing.
if os.environ.get("TAKANE_TEST_ISAS"):
    _wanted = os.environ["TAKANE_TEST_ISAS"].split(",")
    if not set(_wanted) <= set(SUPPORTED):
        raise pytest.UsageError(f"TAKANE_TEST_ISAS={_wanted}: supported here are {SUPPORTED}")
    SUPPORTED = [n for n in SUPPORTED if n in _wanted]

# Hypothesis examples run, per (test, ISA): property tests call count_example(isa_name)
# once per example, and the terminal summary reports the totals.
EXAMPLES: collections.Counter = collections.Counter()


def count_example(isa_name: str) -> None:
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("[")[0].split("::")[-1]
    EXAMPLES[(test, isa_name)] += 1

settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("emulated", max_examples=12, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_generate_tests(metafunc):
    if "isa_name" in metafunc.fixturenames:
        metafunc.parametrize("isa_name", SUPPORTED, ids=[f"isa={n}" for n in SUPPORTED])


def _sentinel_isa(isa_name: str) -> str | None:
    """An ISA other than isa_name that this machine runs (None if there is only one)."""
    others = [n for n in tk.isa.supported() if n != isa_name]
    return others[-1] if others else None


def _tiny_compute() -> None:
    tk.binary_matmul(np.ones((1, 64), np.float32), _TINY)


@pytest.fixture
def on_isa(isa_name):
    """Force isa_name for the test; afterwards the last compute call on this thread must
    have run it. (A compute on another ISA first marks the start: a test that computes
    nothing on this thread is not failed for it.)"""
    before = tk.isa.active()
    sentinel = _sentinel_isa(isa_name)
    if sentinel is not None:
        with tk.isa.force(sentinel):
            _tiny_compute()
    with tk.isa.force(isa_name):
        assert tk.isa.active() == isa_name
        yield isa_name
        used = tk.isa.last_used()
    assert used in (isa_name, sentinel), f"the test forced {isa_name} but its last compute ran {used}"
    assert tk.isa.active() == before  # the force was undone (the default need not be in TAKANE_TEST_ISAS)


_TINY = tk.pack_weights(np.ones((1, 64)))


def assert_ran(isa_name: str) -> None:
    """The last compute call on this thread really ran the named kernel set."""
    assert tk.isa.last_used() == isa_name, f"expected the {isa_name} kernels, ran {tk.isa.last_used()}"


def plain_signs(x, t=0.0):
    """The plainest possible binarization: +1 where x >= t, else -1 (exact in float64)."""
    return np.where(np.asarray(x, dtype=np.float64) >= np.asarray(t, dtype=np.float64), 1, -1)


def plain_matmul(x, w, t=0.0):
    """np.where(x >= t, 1, -1) @ np.where(w >= 0, 1, -1).T in int64."""
    return plain_signs(x, t).astype(np.int64) @ plain_signs(w).astype(np.int64).T


def pytest_terminal_summary(terminalreporter):
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for outcome in ("passed", "failed", "skipped", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            m = re.search(r"isa=(\w+)", getattr(rep, "nodeid", ""))
            if m and getattr(rep, "when", "call") in ("call", "setup"):
                if outcome == "passed" and rep.when != "call":
                    continue
                counts[m.group(1)][outcome] += 1
    if EXAMPLES:
        terminalreporter.write_sep("-", "hypothesis examples per ISA")
        for test in sorted({t for t, _ in EXAMPLES}):
            per = ", ".join(f"{isa}={EXAMPLES[(test, isa)]}" for isa in SUPPORTED if (test, isa) in EXAMPLES)
            terminalreporter.write_line(f"{test}: {per}")
        totals = collections.Counter()
        for (_, isa), c in EXAMPLES.items():
            totals[isa] += c
        terminalreporter.write_line("total: " + ", ".join(f"{isa}={totals[isa]}" for isa in SUPPORTED if isa in totals))
    if counts:
        terminalreporter.write_sep("-", "per-ISA results")
        for name in sorted(counts):
            parts = ", ".join(f"{v} {k}" for k, v in sorted(counts[name].items()))
            terminalreporter.write_line(f"isa={name}: {parts}")
        terminalreporter.write_line(f"active by default: {tk.isa.active()}; supported: {', '.join(SUPPORTED)}")


# ---- OPS: one table of every compute op -------------------------------------------------------
#
# Each entry is name -> (call, kind). call(x, ws, threads) runs the op on float32
# activations x (M, K) with the weights of `op_weights(rng, n, k)`; kind says what the op
# does with a non-finite input and how its result is compared:
#   "binary": binarizes x (NaN is a ValueError), integer-exact result;
#   "f32":    real activations (NaN propagates), float result within the documented bound;
#   "q8_0":   Q8_0 activations (NaN / inf is a ValueError), float result within its bound;
#   "int8_row": BitNet's per-row int8 activations (ternary weights; NaN / inf is a
#             ValueError naming the mode), float result within its bound.
# A new op, weight format or activation mode adds one entry here (docs/architecture.md);
# the hostile-input, property, thread and fork tests then cover it.

def op_weights(rng, n: int, k: int) -> dict:
    """The weights every OPS entry needs, for an (N, K) layer."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    group = 64 if k else None
    return {
        "w": w,
        "pw": tk.pack_weights(w),  # W1A1: row scale
        "onebit": tk.pack_weights(w, scale="onebit"),  # W1A-float: row and column scales
        "group": tk.pack_weights(w, group_size=group) if group else tk.pack_weights(w),  # Q1_0-style
        # a (3, 1) convolution over an (M, 1) image with K channels: N output channels
        "conv": tk.pack_conv_weights(rng.standard_normal((n, 3, 1, k))) if n and k else None,
        "bias": rng.standard_normal(n).astype(np.float32),
        # ternary (issue 23): BitNet's absmean per tensor; per row-group of 64; and every
        # scale at once on threshold-0 planes (no zero weight, so NaN reaches every output)
        "tern": tk.pack_ternary(w),
        "tern_group": tk.pack_ternary(w, group_size=64) if k else tk.pack_ternary(w),
        "tern_full": _tern_full(rng, w),
    }


def _tern_full(rng, w):
    t = tk.pack_ternary(w, threshold=0.0)
    n, k = w.shape
    return tk.TernaryWeights(t.sign, t.nonzero, k, scale=rng.uniform(-2, 2, n), in_scale=rng.uniform(0.5, 2, k),
                             group_scale=rng.uniform(0.1, 1, (n, -(-k // 128))), group_size=128, tensor_scale=0.75)


def _img(x):
    return x.reshape(1, x.shape[0], 1, x.shape[1])


OPS = {
    "pack_bits": (lambda x, ws, threads: tk.pack_bits(x), "binary"),
    "binary_matmul": (lambda x, ws, threads: tk.binary_matmul(x, ws["pw"], threads=threads), "binary"),
    "binary_matmul packed": (lambda x, ws, threads: tk.binary_matmul(tk.pack_bits(x), ws["pw"], threads=threads),
                             "binary"),
    "binary_matmul raw": (lambda x, ws, threads: tk.binary_matmul(tk.pack_bits(x), ws["pw"].bits, k=ws["pw"].k,
                                                                  threads=threads), "binary"),
    "Matmul threshold": (lambda x, ws, threads: tk.Matmul(ws["pw"], threshold=np.linspace(-1, 1, x.shape[1]),
                                                          threads=threads)(x), "binary"),
    "binary_linear": (lambda x, ws, threads: tk.binary_linear(x, ws["pw"], bias=ws["bias"], activation_scale=True,
                                                              threads=threads), "binary"),
    "binary_linear bits": (lambda x, ws, threads: tk.binary_linear(x, ws["pw"], bias=ws["bias"], out_threshold=0.0,
                                                                   threads=threads), "binary"),
    "binary_weight_matmul f32": (lambda x, ws, threads: tk.binary_weight_matmul(x, ws["onebit"], bias=ws["bias"],
                                                                                threads=threads), "f32"),
    "binary_weight_matmul q8_0": (lambda x, ws, threads: tk.binary_weight_matmul(
        x, ws["group"], bias=ws["bias"], activations="q8_0", threads=threads), "q8_0"),
    "binary_weight_matmul ternary f32": (lambda x, ws, threads: tk.binary_weight_matmul(
        x, ws["tern_full"], bias=ws["bias"], threads=threads), "f32"),
    "binary_weight_matmul ternary q8_0": (lambda x, ws, threads: tk.binary_weight_matmul(
        x, ws["tern_group"], bias=ws["bias"], activations="q8_0", threads=threads), "q8_0"),
    "binary_weight_matmul ternary int8_row": (lambda x, ws, threads: tk.binary_weight_matmul(
        x, ws["tern_full"], bias=ws["bias"], activations="int8_row", threads=threads), "int8_row"),
    "Linear ternary int8_row": (lambda x, ws, threads: tk.Linear(ws["tern"], activations="int8_row",
                                                                 threads=threads)(x), "int8_row"),
    "W1.58A1 binary_matmul": (lambda x, ws, threads: tk.binary_matmul(x, ws["tern_full"], threads=threads), "binary"),
    "binary_conv2d": (lambda x, ws, threads: tk.binary_conv2d(_img(x), ws["conv"], padding=(1, 0), bias=ws["bias"],
                                                              threads=threads), "binary"),
    "binary_conv2d bits": (lambda x, ws, threads: tk.binary_conv2d(_img(x), ws["conv"], padding=(1, 0),
                                                                   out_threshold=0.0, threads=threads), "binary"),
}


def op_reference(name: str, x, ws):
    """The oracle's result for OPS[name] (takane_kernels.reference), and the bound (None: exact)."""
    from takane_kernels import reference as ref

    if name == "pack_bits":
        return ref.pack_bits(x), None
    if name.startswith("binary_matmul"):
        return ref.binary_matmul(x, ws["pw"]), None
    if name == "Matmul threshold":
        return ref.binary_matmul(x, ws["pw"], threshold=np.linspace(-1, 1, x.shape[1])), None
    if name == "binary_linear":
        return ref.binary_linear(x, ws["pw"], bias=ws["bias"], activation_scale=True), None
    if name == "binary_linear bits":
        return ref.binary_linear(x, ws["pw"], bias=ws["bias"], out_threshold=0.0), None
    if name == "binary_weight_matmul f32":
        return (ref.binary_weight_matmul(x, ws["onebit"], bias=ws["bias"]),
                ref.binary_weight_matmul_error_bound(x, ws["onebit"], bias=ws["bias"]))
    if name == "binary_weight_matmul q8_0":
        return (ref.binary_weight_matmul(x, ws["group"], bias=ws["bias"], activations="q8_0"),
                ref.binary_weight_matmul_error_bound(x, ws["group"], bias=ws["bias"], activations="q8_0"))
    if name.startswith("binary_weight_matmul ternary "):
        mode = name.split()[-1]
        w = ws["tern_group"] if mode == "q8_0" else ws["tern_full"]
        act = "float32" if mode == "f32" else mode
        return (ref.binary_weight_matmul(x, w, bias=ws["bias"], activations=act),
                ref.binary_weight_matmul_error_bound(x, w, bias=ws["bias"], activations=act))
    if name == "Linear ternary int8_row":
        return (ref.binary_weight_matmul(x, ws["tern"], activations="int8_row"),
                ref.binary_weight_matmul_error_bound(x, ws["tern"], activations="int8_row"))
    if name == "W1.58A1 binary_matmul":
        return ref.binary_matmul(x, ws["tern_full"]), None
    if name == "binary_conv2d":
        return ref.binary_conv2d(_img(x), ws["conv"], padding=(1, 0), bias=ws["bias"]), None
    if name == "binary_conv2d bits":
        return ref.binary_conv2d(_img(x), ws["conv"], padding=(1, 0), out_threshold=0.0), None
    raise KeyError(name)


def every_op(x, ws, threads) -> dict:
    """Every OPS entry once: name -> result."""
    return {name: call(x, ws, threads) for name, (call, _) in OPS.items()}


def assert_same(got: dict, expected: dict, where: str) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{where}: {name}")
