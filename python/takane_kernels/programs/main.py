"""The main job (``python -m takane_kernels``): what this build is, a self-check, and a quick timing.

1. version, ISAs compiled / supported / active;
2. a self-check of every supported ISA against ``takane_kernels.reference`` (exact) on
   every test K and tile-edge M, N — exits 1 if any result differs;
3. a timing table over the benchmark shapes: takane on the best ISA (1 thread and the
   default thread count; packed and float activations) vs numpy float32 ``x @ w.T`` on
   the same ±1 data and vs NumKong / faiss-cpu when installed (extra ``bench``), with
   % of the measured XOR+popcount peak. ``--json`` for machines, ``--plot FILE.png``;
4. a convolution table: QuickNet's binary 3x3 layers (``binary_conv2d``, batch 1) per
   thread count, with zero padding / float input / binarized output beside the packed
   one-padding time, PyTorch's float32 conv2d (1 thread) when torch is installed, and
   QuickNet's 16 binary layers chained through packed outputs.
5. (default shapes only) a short 1-bit LLM decode section: the linear layers of a
   1B-class decoder token by token against DRAM bandwidth (``takane_kernels.programs.llm``).

For embedders, ``--cflags``, ``--libs``, ``--cmake-dir``, ``--pkgconfig-dir``,
``--includedir``, ``--libdir`` and ``--library`` print the paths of the C library
installed in the package and exit (see docs/guide/c-abi.md).

``python -m takane_kernels demo [--seeds 5 --epochs 60 --out DIR]`` instead trains and
measures the 1-bit accuracy table (``takane_kernels.programs.demo``; extra ``demo``).

``python -m takane_kernels llm [--gguf PATH] [--threads 1 2] [--json]`` times the linear
layers of a 1-bit LLM, decode and prefill, against DRAM bandwidth and llama.cpp
(``takane_kernels.programs.llm``).

``python -m takane_kernels lm [--seeds 3 --out DIR]`` trains a small byte-level language
model and measures the 1-bit accuracy / memory / latency table on it (``takane_kernels.programs.lm``;
extra ``lm``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import numpy as np

import takane_kernels as tk
from takane_kernels import reference as ref
from takane_kernels._shapes import TEST_K, TEST_MN
from takane_kernels.programs._report import timed_calls


def self_check() -> bool:
    ok_all = True
    rng = np.random.default_rng(2026)
    for name in tk.isa.supported():
        checked = failed = 0
        with tk.isa.force(name):
            for k in TEST_K:
                x = rng.standard_normal((max(TEST_MN), k)).astype(np.float32)
                w = rng.standard_normal((max(TEST_MN), k)).astype(np.float32)
                t = rng.standard_normal(k).astype(np.float32) * 0.2
                expected = ref.binary_matmul(x, ref.pack_weights(w), threshold=t)
                pw = tk.pack_weights(w)
                for m in TEST_MN:
                    for n in TEST_MN:
                        y = tk.binary_matmul(x[:m], tk.PackedWeights(pw.bits[:n], k), threshold=t)
                        checked += 1
                        if not np.array_equal(y, expected[:m, :n]) or (m and n and tk.isa.last_used() != name):
                            failed += 1
        status = "OK" if failed == 0 else f"FAILED ({failed} mismatches)"
        print(f"  {name:7s} {checked} shapes (K in {TEST_K[0]}..{TEST_K[-1]}, M, N in 0..{max(TEST_MN)}): {status}")
        ok_all &= failed == 0
    return ok_all


def median_time(fn, repeat: int, budget_s: float) -> float:
    fn()  # warm up (page faults, caches, lazy init, thread pool start)
    return float(np.median(timed_calls(fn, repeat, budget_s, 3)))


def fmt_time(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def measure(shapes, repeat: int, budget_s: float, threads_list) -> dict:
    """Time takane (best ISA, each thread count), numpy float32 and installed peers side
    by side on each shape; every member's result is checked against numpy's."""
    from takane_kernels.programs import peers as _peers

    isa_name = tk.isa.active()
    peak = tk.isa.peak(isa_name, seconds=0.3)
    rng = np.random.default_rng(0)
    rows = []
    for m, n, k in shapes:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        xs = np.where(x >= 0, 1, -1).astype(np.float32)  # the same ±1 data, as floats
        ws = np.where(w >= 0, 1, -1).astype(np.float32)
        pw = tk.pack_weights(w)
        xb = tk.pack_bits(x)
        expected = xs @ ws.T  # exact: sums of ±1 below 2**24
        bitmacs = float(m) * n * k
        rec = {"shape": [m, n, k], "isa": isa_name, "peak_bitmacs_per_s_1core": peak}
        # numpy goes last: OpenBLAS's idle threads busy-wait for a while after a call and
        # would take the second core from takane's worker; the pause lets them park.
        time.sleep(0.3)
        for threads in threads_list:
            y = tk.binary_matmul(xb, pw, threads=threads)
            assert np.array_equal(y, expected), "takane result differs from numpy"
            t = median_time(lambda: tk.binary_matmul(xb, pw, threads=threads), repeat, budget_s)
            tf = median_time(lambda: tk.binary_matmul(x, pw, threads=threads), repeat, budget_s)
            rec[f"takane_t{threads}_s"] = t
            rec[f"takane_t{threads}_float_x_s"] = tf
            rec[f"takane_t{threads}_pct_peak"] = 100.0 * bitmacs / t / (peak * threads)
        for name, (run, to_dot) in _peers.available(xb, pw.bits, k).items():
            assert np.array_equal(to_dot(run()), expected), f"{name} result differs"
            rec[f"{name}_s"] = median_time(run, repeat, budget_s)
        rec["numpy_f32_s"] = median_time(lambda: xs @ ws.T, repeat, budget_s)
        rec["bitmacs"] = bitmacs
        rows.append(rec)
    return {"isa": isa_name, "peak_bitmacs_per_s_1core": peak, "threads": list(threads_list), "results": rows}


def print_table(report: dict) -> None:
    peak = report["peak_bitmacs_per_s_1core"]
    print(f"\nTiming on {report['isa']} (median of repeated runs; measured 1-core XOR+popcount peak "
          f"{peak / 1e9:.0f} G bit-MACs/s). Packed activations unless noted; numpy float32 runs "
          f"x @ w.T on the same ±1 data with its own BLAS threads.")
    peers = [p for p in ("numkong", "faiss") if any(f"{p}_s" in r for r in report["results"])]
    head = f"  {'shape (M,N,K)':17s} {'thr':>3s} {'takane':>11s} {'G bMAC/s':>9s} {'% peak':>7s} {'float x':>11s} {'numpy f32':>11s} {'vs numpy':>9s}"
    for p in peers:
        head += f" {p:>11s} {'vs ' + p:>11s}"
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in report["results"]:
        m, n, k = r["shape"]
        label = f"({m},{n},{k})"
        for threads in report["threads"]:
            t = r[f"takane_t{threads}_s"]
            line = (f"  {label:17s} {threads:3d} {fmt_time(t):>11s} {r['bitmacs'] / t / 1e9:9.0f} "
                    f"{r[f'takane_t{threads}_pct_peak']:6.0f}% {fmt_time(r[f'takane_t{threads}_float_x_s']):>11s} "
                    f"{fmt_time(r['numpy_f32_s']):>11s} {r['numpy_f32_s'] / t:8.1f}x")
            for p in peers:
                tp = r.get(f"{p}_s")
                line += f" {fmt_time(tp):>11s} {tp / t:10.2f}x" if tp else f" {'-':>11s} {'-':>11s}"
            print(line)
            label = ""
    if not peers:
        print("  (peers: pip install 'takane-kernels[bench]' adds NumKong and faiss-cpu columns)")


# QuickNet's binary layers: 3x3, stride 1, padding 1, (H = W, C_in = C_out); the last is
# QuickNetSmall's first section. Each 64+ channel layer is 115.6 M bit-MACs.
CONV_LAYERS = ((56, 64), (28, 128), (14, 256), (7, 512), (56, 32))


def measure_conv(repeat: int, budget_s: float, threads_list) -> dict:
    """binary_conv2d on QuickNet's layers, checked exactly against the reference once per
    layer; PyTorch float32 conv2d on one thread when torch is installed."""
    try:
        import torch
    except ImportError:
        torch = None
    isa_name = tk.isa.active()
    peak = tk.isa.peak(isa_name, seconds=0.3)
    rng = np.random.default_rng(1)
    rows = []
    for hw, c in CONV_LAYERS:
        w = rng.standard_normal((c, 3, 3, c)).astype(np.float32)
        pw = tk.pack_conv_weights(w)
        xf = rng.standard_normal((1, hw, hw, c)).astype(np.float32)
        xb = tk.pack_bits(xf)
        assert np.array_equal(tk.binary_conv2d(xb, pw, padding=1), ref.binary_conv2d(xb, pw, padding=1))
        bitmacs = float(hw * hw * c * 9 * c)
        rec = {"layer": [hw, c], "bitmacs": bitmacs}
        for threads in threads_list:
            def run(x=xb, **kw):
                return tk.binary_conv2d(x, pw, padding=1, threads=threads, **kw)
            t = median_time(lambda: run(pad_value=1), repeat, budget_s)
            rec[f"t{threads}_s"] = t
            rec[f"t{threads}_pct_peak"] = 100.0 * bitmacs / t / (peak * threads)
            if threads == 1:
                rec["pad0_s"] = median_time(lambda: run(pad_value=0), repeat, budget_s)
                rec["float_x_s"] = median_time(lambda: run(xf, pad_value=0), repeat, budget_s)
                rec["bits_out_s"] = median_time(lambda: run(pad_value=0, out_threshold=0.0), repeat, budget_s)
        if torch is not None:
            prev = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                xt = torch.from_numpy(xf).permute(0, 3, 1, 2).contiguous()
                wt = torch.from_numpy(np.where(w >= 0, 1.0, -1.0).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
                with torch.inference_mode():
                    rec["torch_f32_t1_s"] = median_time(lambda: torch.nn.functional.conv2d(xt, wt, padding=1),
                                                        max(3, repeat // 3), budget_s)
            finally:
                torch.set_num_threads(prev)
        rows.append(rec)
    chain = {}
    for threads in threads_list:
        layers = []
        for hw, c in CONV_LAYERS[:4]:
            pw = tk.pack_conv_weights(rng.standard_normal((c, 3, 3, c)).astype(np.float32))
            layers.append((tk.pack_bits(rng.standard_normal((1, hw, hw, c))), pw))

        def quicknet(threads=threads):
            for x, pw in layers:  # 4 sections x 4 layers, chained through packed outputs
                for _ in range(4):
                    x = tk.binary_conv2d(x, pw, padding=1, pad_value=0, out_threshold=0.0, threads=threads)
        chain[threads] = median_time(quicknet, max(3, repeat // 3), budget_s * 2)
    return {"isa": isa_name, "peak_bitmacs_per_s_1core": peak, "threads": list(threads_list),
            "results": rows, "quicknet16_s": chain}


def print_conv_table(report: dict) -> None:
    peak = report["peak_bitmacs_per_s_1core"]
    print(f"\nConvolution on {report['isa']}: QuickNet's binary 3x3 layers, batch 1, packed input, "
          f"one-padding (peak {peak / 1e9:.0f} G bit-MACs/s); pad 0 / float x / bits out: 1 thread, "
          f"zero padding, relative to the one-padding time.")
    has_torch = any("torch_f32_t1_s" in r for r in report["results"])
    head = f"  {'layer':13s} {'thr':>3s} {'takane':>10s} {'% peak':>7s} {'pad 0':>6s} {'float x':>8s} {'bits out':>8s}"
    if has_torch:
        head += f" {'torch f32 1t':>12s} {'vs torch':>9s}"
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in report["results"]:
        hw, c = r["layer"]
        label = f"{hw}²x{c}->{c}"
        for threads in report["threads"]:
            t = r[f"t{threads}_s"]
            line = f"  {label:13s} {threads:3d} {fmt_time(t):>10s} {r[f't{threads}_pct_peak']:6.0f}%"
            if threads == 1:
                t1 = r["t1_s"]
                line += f" {r['pad0_s'] / t1:5.2f}x {r['float_x_s'] / t1:7.2f}x {r['bits_out_s'] / t1:7.2f}x"
                if has_torch:
                    line += f" {fmt_time(r['torch_f32_t1_s']):>12s} {r['torch_f32_t1_s'] / t1:8.1f}x"
            print(line)
            label = ""
    for threads, t in report["quicknet16_s"].items():
        print(f"  QuickNet's 16 binary layers chained (1.85 G bit-MACs), {threads} thread(s): {fmt_time(t)}")
    if not has_torch:
        print("  (PyTorch not installed: no torch float32 conv2d column)")


def plot(report: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'takane-kernels[bench]'")
    res = report["results"]
    labels = ["x".join(map(str, r["shape"])) for r in res]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / (len(report["threads"]) + 1)
    xs = np.arange(len(res))
    for i, threads in enumerate(report["threads"]):
        ax.bar(xs + i * width, [r["bitmacs"] / r[f"takane_t{threads}_s"] / 1e9 for r in res], width,
               label=f"takane {report['isa']}, {threads} thread{'s' if threads > 1 else ''}")
    for name in ("numkong", "faiss"):
        if all(f"{name}_s" in r for r in res):
            i += 1
            ax.bar(xs + i * width, [r["bitmacs"] / r[f"{name}_s"] / 1e9 for r in res], width, label=name)
    ax.axhline(report["peak_bitmacs_per_s_1core"] / 1e9, color="k", ls="--", lw=1,
               label="measured 1-core XOR+popcount peak")
    ax.set_xticks(xs + width * (len(report["threads"]) - 1) / 2, labels, rotation=15)
    ax.set_ylabel("G bit-MACs/s (M*N*K / time)")
    ax.set_title("takane_kernels W1A1 matmul")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot written to {path}")


_EMBED_FLAGS = [
    ("--cflags", "compiler flags for takane/takane.h (-I...)"),
    ("--libs", "linker flags for libtakane_kernels (-L... -ltakane_kernels, rpath)"),
    ("--cmake-dir", "directory for -Dtakane_kernels_DIR= (find_package)"),
    ("--pkgconfig-dir", "directory to add to PKG_CONFIG_PATH (takane_kernels.pc)"),
    ("--includedir", "the include directory"),
    ("--libdir", "the directory of the shared library"),
    ("--library", "the shared library file (its SONAME), to dlopen or link by path"),
]


def _embed_value(flag: str) -> str:
    from takane_kernels import _paths

    return {
        "--cflags": _paths.cflags, "--libs": _paths.libs, "--cmake-dir": _paths.get_cmake_dir,
        "--pkgconfig-dir": _paths.get_pkgconfig_dir, "--includedir": _paths.get_include,
        "--libdir": _paths.get_library_dir, "--library": _paths.get_library,
    }[flag]()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the accuracy demo has its own flags (python -m takane_kernels demo --help)
        from takane_kernels.programs.demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["llm"]:  # the 1-bit LLM decode benchmark (python -m takane_kernels llm --help)
        from takane_kernels.programs.llm import main as llm_main

        return llm_main(argv[1:])
    if argv[:1] == ["lm"]:  # the 1-bit language-model table (python -m takane_kernels lm --help)
        from takane_kernels.programs.lm import main as lm_main

        return lm_main(argv[1:])
    from takane_kernels._shapes import BENCH_SHAPES

    p = argparse.ArgumentParser(prog="python -m takane_kernels", description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=15, help="timed runs per member (median)")
    p.add_argument("--budget", type=float, default=0.6, help="seconds per member at most (>= 3 runs)")
    p.add_argument("--shape", type=int, nargs=3, action="append", metavar=("M", "N", "K"),
                   help="time this shape (repeatable); default: the benchmark shapes")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts to time (default: 1 and the default thread count)")
    p.add_argument("--no-timing", action="store_true", help="only the self-check")
    p.add_argument("--json", action="store_true", help="print the results as JSON (no table)")
    p.add_argument("--plot", metavar="FILE.png", help="draw G bit-MACs/s per shape against the peak")
    emb = p.add_argument_group("embedding (print and exit; several print on one line, in this order)")
    for flag, what in _EMBED_FLAGS:
        emb.add_argument(flag, action="store_true", help=what)
    args = p.parse_args(argv)
    embed = [_embed_value(flag) for flag, _ in _EMBED_FLAGS if getattr(args, flag[2:].replace("-", "_"))]
    if embed:
        print(" ".join(embed))
        return 0

    out = sys.stderr if args.json else sys.stdout
    print(f"takane_kernels {tk.__version__} (C library {tk.version_info()}, ABI {tk._lib.takane_abi_version()})", file=out)
    print(f"ISAs: compiled {', '.join(tk.isa.compiled())}; supported here {', '.join(tk.isa.supported())}; "
          f"active {tk.isa.active()}; default threads {tk.default_threads()}", file=out)
    print("\nSelf-check against takane_kernels.reference (exact int32):", file=out)
    with contextlib.redirect_stdout(out):
        ok = self_check()
    if not args.no_timing:
        threads = args.threads or sorted({1, tk.default_threads()})
        report = measure([tuple(s) for s in args.shape] if args.shape else BENCH_SHAPES, args.repeat, args.budget, threads)
        report["self_check_ok"] = ok
        conv = measure_conv(args.repeat, args.budget / 2, threads)
        report["conv"] = conv
        if not args.json:
            print_table(report)
            print_conv_table(conv)
        if not args.shape:  # the default run also shows the LLM decode section
            from takane_kernels.programs.llm import main_job_section

            report["llm"] = main_job_section(threads, json_out=args.json)
        if args.json:
            print(json.dumps(report, indent=1))
        if args.plot:
            with contextlib.redirect_stdout(out):
                plot(report, args.plot)
    if not ok:
        print("\nSELF-CHECK FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
