"""Load time and peak memory of ``takane_kernels.gguf.load`` in a fresh process.

    python bench/gguf_load_rss.py FILE.gguf [--rounds 3]

Prints one JSON line: file_bytes, seconds (best and median of the rounds, each in a new
process), MB/s (file bytes / best seconds), the best process CPU time and MB per CPU second
(what a busy machine's wall clock hides), and peak_rss_ratio = (peak RSS during the load -
RSS peak after the imports) / file bytes — ru_maxrss of the child, which counts the pages of
the memory-mapped file too. ``-m takane_kernels llm --model bonsai-1.7b --out F.gguf`` writes
a Bonsai-1.7B-shaped Q1_0 file (246 MB) to measure. Used by bench/test_bench_formats.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time
import takane_kernels.gguf as tg
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
tensors = tg.load(sys.argv[1], unsupported="skip")
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "peak_growth_bytes": (peak - base) * 1024,
                  "tensors": len(tensors)}))
"""


def measure_once(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, path], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(path: str, rounds: int = 3) -> dict:
    size = os.path.getsize(path)
    runs = [measure_once(path) for _ in range(rounds)]
    secs = [r["seconds"] for r in runs]
    cpu = min(r["cpu_seconds"] for r in runs)
    growth = max(r["peak_growth_bytes"] for r in runs)
    return {"file_bytes": size, "best_s": min(secs), "median_s": statistics.median(secs),
            "MB_per_s": size / min(secs) / 1e6, "best_cpu_s": cpu, "MB_per_cpu_s": size / cpu / 1e6,
            "peak_rss_ratio": growth / size,
            "tensors": runs[0]["tensors"], "load_average": os.getloadavg()[0]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    print(json.dumps(measure(a.path, a.rounds)))
