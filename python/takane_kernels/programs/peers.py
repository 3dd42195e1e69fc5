"""Installable peers for side-by-side timing (optional extra ``bench``): NumKong's packed
u1 Hamming GEMM and faiss-cpu's Hamming table. Each adapter takes canonical packed bits
(the byte layout both peers read is the same LSB-first order) and returns a callable
whose result converts to our int32 dot products with ``k - 2 * hamming``.
Missing packages simply yield no adapter."""

from __future__ import annotations

import numpy as np


def _numkong(xbits, wbits, k):
    try:
        import numkong as nk
    except ImportError:
        return None
    xu8 = np.ascontiguousarray(xbits).view(np.uint8)
    packed = nk.hammings_pack(np.ascontiguousarray(wbits).view(np.uint8))
    run = lambda: nk.hammings_packed(xu8, packed)  # noqa: E731
    to_dot = lambda h: (k - 2 * np.asarray(h).astype(np.int64)).astype(np.int32)  # noqa: E731
    return run, to_dot


def _faiss(xbits, wbits, k):
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(1)  # compare one core with one core
    xu8 = np.ascontiguousarray(xbits).view(np.uint8)
    wu8 = np.ascontiguousarray(wbits).view(np.uint8)
    dis = np.empty((xu8.shape[0], wu8.shape[0]), dtype=np.int32)
    args = (faiss.swig_ptr(xu8), faiss.swig_ptr(wu8), xu8.shape[0], wu8.shape[0], xu8.shape[1], faiss.swig_ptr(dis))

    # args holds raw pointers into xu8 / wu8, which may be the only references to their
    # arrays (e.g. a PackedWeights' .bits, rebuilt per access once the kernels hold the
    # weights): the default argument keeps them alive as long as run is.
    def run(_keep=(xu8, wu8)):
        faiss.hammings(*args)
        return dis
    to_dot = lambda h: (k - 2 * h.astype(np.int64)).astype(np.int32)  # noqa: E731
    return run, to_dot


PEERS = {"numkong": _numkong, "faiss": _faiss}


def available(xbits: np.ndarray, wbits: np.ndarray, k: int) -> dict:
    """name -> (run, to_dot) for every installed peer, prepared for these operands."""
    out = {}
    for name, make in PEERS.items():
        adapter = make(xbits, wbits, k)
        if adapter is not None:
            out[name] = adapter
    return out
