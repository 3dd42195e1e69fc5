"""Shared output of the table programs (demo, lm): the markdown table printed and written,
the JSON report, and the chart, all in ``--out``."""

from __future__ import annotations

import json
import os
import time


def pyplot(extra: str):
    """matplotlib.pyplot on the Agg backend, or None (and a note) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f'  (no PNG: matplotlib is missing; pip install "takane-kernels[{extra}]")')
        return None
    return plt


def save_figure(plt, fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timed_calls(fn, count: int, budget_s: float, min_calls: int) -> list[float]:
    """Seconds of up to ``count`` calls of ``fn``, stopping once ``budget_s`` is spent and
    ``min_calls`` are done."""
    times = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= min_calls:
            break
    return times


def write_report(out: str, table: str, report: dict, plot, png_name: str) -> None:
    """Print ``table``; write ``table.md``, ``results.json`` and ``png_name`` (drawn by
    ``plot(report, path)``, which returns whether it could draw: matplotlib is optional)
    into the directory ``out``; say what was written and the run's wall time."""
    print()
    print(table)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    png = plot(report, os.path.join(out, png_name))
    print(f"\nwritten: {os.path.join(out, 'table.md')}, results.json{', ' + png_name if png else ''} "
          f"({report['meta']['wall_s']:.0f} s)")
