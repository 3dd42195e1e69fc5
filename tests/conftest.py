"""Shared test machinery: every kernel test runs once per ISA this machine supports.

A test that takes ``isa_name`` is parametrized over ``takane_kernels.isa.supported()``
(ids ``isa=avx2`` ...); the ``on_isa`` fixture forces that ISA for the test's duration
and checks it took. Tests assert ``isa.last_used()`` after compute calls, so a test can
not pass on a different kernel than the one it names. The terminal summary counts
outcomes per ISA.
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


@pytest.fixture
def on_isa(isa_name):
    with tk.isa.force(isa_name):
        assert tk.isa.active() == isa_name
        yield isa_name
    assert tk.isa.active() != "" and tk.isa.active() in SUPPORTED


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
