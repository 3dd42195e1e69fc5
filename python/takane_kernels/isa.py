"""Which instruction set the kernels run on: query, and force for tests/benchmarks.

An ISA is *supported* when it was compiled into the library and this CPU and OS can run
it (CPUID + XGETBV). The environment variable ``TAKANE_ISA=scalar|avx2|avx512|neon`` is
read once, on first use; naming an unknown or unsupported ISA makes compute calls raise
until :func:`force` is called. Forcing is process-wide (it is not per thread).
"""

from __future__ import annotations

from ._capi import ffi, lib

#: ISA names indexed by their ``takane_isa`` value.
NAMES = ("scalar", "avx2", "avx512", "neon")

__all__ = ["NAMES", "compiled", "supported", "active", "last_used", "force", "peak", "kernels",
           "peak_int8", "dram_bandwidth"]


def _from_mask(mask: int) -> list[str]:
    # Best first, the order the dispatcher prefers them in.
    order = ("avx512", "avx2", "neon", "scalar")
    return [name for name in order if mask & (1 << NAMES.index(name))]


def compiled() -> list[str]:
    """ISAs whose kernels were compiled into this build, best first."""
    return _from_mask(lib.takane_isa_compiled())


def supported() -> list[str]:
    """Compiled ISAs this CPU and OS can run, best first (always includes ``"scalar"``)."""
    return _from_mask(lib.takane_isa_supported())


def active() -> str:
    """The ISA compute calls dispatch to now."""
    return NAMES[lib.takane_isa_active()]


def last_used() -> str | None:
    """The ISA the calling thread's most recent successful compute call ran on."""
    isa = lib.takane_isa_last_used()
    return None if isa == lib.TAKANE_ISA_AUTO else NAMES[isa]


def _isa_value(name: str) -> int:
    if not isinstance(name, str):
        raise TypeError(f"ISA name must be a str, got {type(name).__name__}")
    out = ffi.new("takane_isa *")
    if lib.takane_isa_from_name(name.encode(), out) != lib.TAKANE_OK:
        raise ValueError(f"unknown ISA {name!r}; known: {', '.join(NAMES)} or 'auto'")
    return out[0]


class force:
    """Force the kernels onto one ISA (``"auto"`` returns to the best supported).

    Takes effect immediately; used as a context manager it restores the previous ISA on
    exit::

        with takane_kernels.isa.force("scalar"):
            y = takane_kernels.binary_matmul(x, w)
    """

    def __init__(self, name: str) -> None:
        value = _isa_value(name)
        self._previous = lib.takane_isa_active()
        status = lib.takane_isa_force(value)
        if status == lib.TAKANE_ERR_ISA_UNSUPPORTED:
            raise ValueError(
                f"ISA {name!r} is not supported here "
                f"(compiled: {', '.join(compiled())}; supported: {', '.join(supported())})"
            )
        if status != lib.TAKANE_OK:  # pragma: no cover - every other status is unreachable
            raise RuntimeError(ffi.string(lib.takane_status_string(status)).decode())
        self.name = active()

    def __enter__(self) -> "force":
        return self

    def __exit__(self, *exc: object) -> None:
        lib.takane_isa_force(self._previous)

    def __repr__(self) -> str:
        return f"isa.force({self.name!r})"


def peak(name: str | None = None, seconds: float = 0.2) -> float:
    """Measured XOR+popcount peak of ISA ``name`` (default: the active one) on one core,
    in bit-MACs per second: the higher of a register-resident loop of the kernels' own
    instruction sequence and the panel microkernel on L1-resident data, best of repeated
    runs over about ``seconds``. Benchmarks divide by it."""
    return _probe(lib.takane_probe_peak, name, seconds, "is not supported here")


def _probe(fn, name: str | None, seconds: float, unsupported: str) -> float:
    """Run a C peak probe on ISA ``name`` (None: the active one)."""
    value = lib.TAKANE_ISA_AUTO if name is None else _isa_value(name)
    out = ffi.new("double *")
    status = fn(value, float(seconds), out)
    if status == lib.TAKANE_ERR_ISA_UNSUPPORTED:
        raise ValueError(f"ISA {name!r} {unsupported} (supported: {', '.join(supported())})")
    if status != lib.TAKANE_OK:  # pragma: no cover
        raise RuntimeError(ffi.string(lib.takane_status_string(status)).decode())
    return float(out[0])


def kernels(name: str | None = None) -> dict[str, str]:
    """Which code each op of ISA ``name``'s kernel set runs (default: the active ISA), e.g.
    ``{"matmul": "neon", "pack": "neon", "linear": "scalar", "wfloat": "scalar",
    "q8_0": "neon+sdot"}``: a set uses the portable (``"scalar"``) kernels of an op it has
    none of its own for, and a variant chosen at run time is named after a ``+``. Ops:
    ``matmul`` (W1A1 products), ``pack`` (binarization), ``linear`` (W1A1 layer epilogues),
    ``wfloat`` (W1A-float), ``q8_0`` (W1A8)."""
    value = lib.takane_isa_active() if name is None else _isa_value(name)
    text = lib.takane_isa_kernels(value)
    if text == ffi.NULL:
        raise ValueError(f"ISA {name!r} is not compiled into this build (compiled: {', '.join(compiled())})")
    return dict(pair.split("=", 1) for pair in ffi.string(text).decode().split())


def peak_int8(name: str | None = None, seconds: float = 0.2) -> float:
    """Measured int8 multiply-accumulate peak of ISA ``name`` (default: the active one) on
    one core, in MACs per second: a register-resident loop of the instruction the W1A8
    prefill GEMM uses (AVX-512 VNNI ``VPDPBUSD``; AVX2 ``VPMADDUBSW``), best of repeated
    runs over about ``seconds`` of this thread's CPU time. ValueError for an ISA without an
    int8 GEMM (its probe)."""
    return _probe(lib.takane_probe_peak_int8, name, seconds, "has no int8 peak probe here")


_dram_buffers: dict = {}


def dram_bandwidth(threads: int = 1, mb: int = 256, repeat: int = 3, *, buf=None) -> float:
    """Measured streaming read bandwidth of main memory in bytes per second with ``threads``
    threads: a C loop on each thread reads its own contiguous part of a ``mb`` MiB buffer
    (>= 256 MiB: far beyond the last-level cache; allocated and written once per size, then
    kept), all started together, timed to the slowest (one thread: its CPU time, so time
    given to other processes does not count); the best of ``repeat`` passes. The
    figure "% of DRAM" is computed against (a numpy sum split over Python threads
    under-reads at 2 threads). ``buf``: read this C-contiguous array instead (``mb`` unused)."""
    import numpy as np

    if int(threads) < 1 or int(repeat) < 1 or int(mb) < 1:
        raise ValueError(f"threads, mb and repeat must be >= 1 (got {threads}, {mb}, {repeat})")
    if buf is not None:
        buf = np.ascontiguousarray(buf)
    else:
        buf = _dram_buffers.get(int(mb))
    if buf is None:
        buf = np.ones(int(mb) * 2**20 // 8, dtype=np.int64)  # written: the pages exist
        _dram_buffers.clear()
        _dram_buffers[int(mb)] = buf
    out = ffi.new("double *")
    status = lib.takane_probe_dram_bandwidth(ffi.from_buffer(buf), buf.nbytes, int(threads),
                                             int(repeat), out)
    if status != lib.TAKANE_OK:
        raise ValueError(ffi.string(lib.takane_status_string(status)).decode())
    return float(out[0])
