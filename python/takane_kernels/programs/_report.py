"""Shared output of the table programs (demo, lm): the markdown table printed and written,
the JSON report, and the chart, all in ``--out``."""

from __future__ import annotations

import json
import os


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
