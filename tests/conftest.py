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
    if counts:
        terminalreporter.write_sep("-", "per-ISA results")
        for name in sorted(counts):
            parts = ", ".join(f"{v} {k}" for k, v in sorted(counts[name].items()))
            terminalreporter.write_line(f"isa={name}: {parts}")
        terminalreporter.write_line(f"active by default: {tk.isa.active()}; supported: {', '.join(SUPPORTED)}")
