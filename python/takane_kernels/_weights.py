"""PackedWeights: an immutable ±1 weight matrix in the canonical bit format, with scales.

This is a container, shared by the C-backed ops and the reference: validation here only
checks the format (shape, dtype, zero padding), it computes nothing.
"""

from __future__ import annotations

import mmap
import os
import threading
import zipfile

import numpy as np

from ._capi import (MAX_K, check_group_size, check_k, check_packed, grouped_weights_handle, handle_bits,
                    handle_group_scales, handle_nbytes, owned_vector, weights_handle)

FORMAT_NAME = "takane_kernels.PackedWeights"
FORMAT_VERSION = 2  # written when the weights carry group scales; version 1 otherwise
READ_VERSIONS = (1, 2)


_HANDLE_LOCK = threading.Lock()

# The canonical rows and row-major group scales a PackedWeights owns live only until the C
# handle replaces them (_prepacked). From the C library's heap (numpy's malloc), glibc keeps
# such freed blocks resident: after the first large free it raises its mmap threshold to
# that size, so later arrays of a model's sizes come from the brk heap, whose free holes
# (pinned by small live allocations between them) stay in RSS until malloc_trim. A loaded
# 1B-class model then measured 1.56x its bytes in RSS growth instead of ~1.0x. Arrays of
# at least this size therefore get an anonymous private memory map of their own, unmapped
# the moment the array is released: resident memory follows what the weights hold.
_RELEASABLE_MIN_BYTES = 64 * 1024


def _releasable_copy(a: np.ndarray, dtype) -> np.ndarray:
    """An owned C-contiguous copy of ``a`` as ``dtype`` (numpy's unsafe cast, as
    ``np.array(a, dtype)``), in memory returned to the OS when the copy is freed: its own
    anonymous mapping when it has at least _RELEASABLE_MIN_BYTES (page-aligned; at most one
    page of rounding) and the platform has mmap.MAP_PRIVATE, else a plain numpy copy."""
    dtype = np.dtype(dtype)
    nbytes = a.size * dtype.itemsize
    if nbytes < _RELEASABLE_MIN_BYTES or not hasattr(mmap, "MAP_PRIVATE"):
        return np.array(a, dtype=dtype, order="C")
    # fileno -1: an anonymous mapping (CPython adds MAP_ANONYMOUS); MAP_PRIVATE so a forked
    # child gets a copy-on-write copy, as with heap memory (the default would be shared)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    out = np.frombuffer(buf, dtype=dtype, count=a.size).reshape(a.shape)  # keeps buf alive
    np.copyto(out, a, casting="unsafe")
    return out


def _check_group_scale(v: object, n: int, k: int, group_size: object) -> tuple[np.ndarray | None, int | None]:
    if v is None and group_size is None:
        return None, None
    if v is None or group_size is None:
        raise ValueError("group_scale and group_size come together: pass both or neither")
    g = check_group_size(group_size)
    a = np.asarray(v)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"group_scale must be a real array, got dtype {a.dtype}")
    shape = (n, -(-k // g))
    if a.shape != shape:
        raise ValueError(f"group_scale must have shape {shape} (N, ceil(K/group_size)) for "
                         f"N={n}, K={k}, group_size={g}; got {a.shape}")
    a = _releasable_copy(a, np.float32)  # owned copy
    if not np.all(np.isfinite(a)):
        raise ValueError("group_scale must be finite")
    a.flags.writeable = False
    return a, g


def format_arrays(name: str, version: int, **arrays) -> dict:
    """The arrays of a file format: its tag and version, then ``arrays`` minus the Nones."""
    out = {"format": np.array(name), "format_version": np.array(version, dtype=np.int64)}
    out.update((key, a) for key, a in arrays.items() if a is not None)
    return out


def loaded_int(data: dict, key: str, name: str) -> int:
    """An integer scalar array of a loaded file, as an int (ValueError naming the file)."""
    v = data[key]
    if v.shape != () or v.dtype.kind not in "iu":
        raise ValueError(f"{name}: {key} must be an integer scalar")
    return int(v)


def loaded_bits(data: dict, ndim: int, name: str) -> np.ndarray:
    """The uint64 ``bits`` array of a loaded file, of ``ndim`` dimensions."""
    bits = data["bits"]
    if bits.dtype != np.uint64 or bits.ndim != ndim:
        raise ValueError(f"{name}: bits must be a {ndim}-D uint64 array, got {bits.dtype} {bits.shape}")
    return bits


def save_npz_atomic(path: str | os.PathLike, arrays: dict) -> None:
    """Write ``arrays`` as an uncompressed .npz to exactly ``path``, through a temporary
    file renamed into place (a crash never leaves a half-written file)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_npz(path: str | os.PathLike, allowed: set, kind: str) -> dict:
    """The arrays of a file written by save_npz_atomic, as {name: ndarray}, or ValueError.

    Hardened for hostile files: a bare .npy is refused before numpy reads it whole; members
    must be stored (uncompressed: memory stays bounded by the file's size, no decompression
    bombs) and named in ``allowed`` (checked before anything is read); every exception
    zipfile/numpy raise on hostile bytes (NotImplementedError for an unknown zip version,
    RuntimeError for an encrypted member, MemoryError/OverflowError for absurd .npy headers,
    ...) means a corrupt file, reported as ValueError naming ``kind``."""
    name = repr(os.fspath(path))
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise ValueError("not an .npz archive (no zip header; a single .npy array?)")
        z = np.load(path, allow_pickle=False)
        with z:
            packed = [i.filename for i in z.zip.infolist() if i.compress_type != zipfile.ZIP_STORED]
            if packed:
                raise ValueError(f"compressed members {packed} ({kind} files are uncompressed)")
            if set(z.files) - allowed:
                raise ValueError(f"unexpected arrays {sorted(set(z.files) - allowed)} in a {kind} file")
            data = {key: z[key] for key in z.files}
        raw = sorted(key for key, v in data.items() if not isinstance(v, np.ndarray))
        if raw:  # NpzFile hands back the bytes of a member that is not a .npy array
            raise ValueError(f"members {raw} are not .npy arrays")
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise ValueError(f"{name} is not a readable {kind} file: {type(e).__name__}: {e}") from e
    return data


def _rebuild(bits, k, scale, in_scale, group_scale=None, group_size=None):
    return PackedWeights(bits, k, scale=scale, in_scale=in_scale, group_scale=group_scale,
                         group_size=group_size)


class PackedWeights:
    """±1 weights (N, K) packed 64 per uint64 word, plus optional float32 scales.

    ``bits`` (N, ceil(K/64)) uint64 is canonical (bit 1 = +1, LSB first, zero padding);
    ``scale`` (N,) is the per-output-row scale, ``in_scale`` (K,) the per-input-column
    scale, ``group_scale`` (N, ceil(K/group_size)) one scale per row and group of
    ``group_size`` consecutive columns (a positive multiple of 64; llama.cpp's Q1_0 uses
    128). The effective weight is
    ``sign(W)[n, k] * scale[n] * in_scale[k] * group_scale[n, k // group_size]``, each
    factor 1 when absent. Instances are immutable: the arrays are private read-only copies.

    One resident copy of the signs and group scales: once a kernel has built the C
    library's re-tiled layout (the handle, on the first op call), the canonical rows are
    dropped and ``bits`` rebuilds them from the handle on each access (a new read-only
    array, exact — hold on to it rather than reading ``bits`` in a loop). The handle of
    weights with group scales carries them, and their row-major array is dropped too:
    ``group_scale`` then rebuilds it the same way (a new read-only float32 array, bit for
    bit the same values). Saving, pickling, ``to_q1_0`` and equality go through ``bits``
    and ``group_scale`` and are unchanged.
    """

    # Invariant: _bits (canonical rows, owned, read-only) or _handle (the re-tiled C copy)
    # is set, possibly both; likewise, for weights with group scales (_group_size set),
    # _group_scale (row-major, owned, read-only) or a _handle that carries them. _prepacked()
    # sets _handle before it clears _bits and _group_scale, and none is set back, so a reader
    # that finds _bits or _group_scale None always finds the handle. Weights with group
    # scales but no rows or columns (an empty array; the C handle then carries none) keep
    # _group_scale.
    __slots__ = ("_bits", "_k", "_n", "_scale", "_in_scale", "_group_scale", "_group_size", "_handle", "_bound",
                 "__weakref__")

    def __init__(self, bits: np.ndarray, k: int, *, scale: object = None, in_scale: object = None,
                 group_scale: object = None, group_size: object = None):
        k = check_k(k)
        bits = check_packed(bits, k, "bits")
        if bits.ndim != 2:
            raise ValueError(f"bits must be 2-D (N, ceil(K/64)), got shape {bits.shape}")
        owned = _releasable_copy(bits, np.uint64)
        owned.flags.writeable = False
        self._bits = owned
        self._k, self._n = k, owned.shape[0]
        self._scale = owned_vector(scale, owned.shape[0], "scale", "one per output row N")
        self._in_scale = owned_vector(in_scale, k, "in_scale", "one per input column K")
        self._group_scale, self._group_size = _check_group_scale(group_scale, owned.shape[0], k, group_size)
        self._handle = None
        self._bound = {}  # bound ops of the module-level functions (_capi.bound_op)

    @classmethod
    def _adopt(cls, bits: np.ndarray | None, k: int, group_scale: np.ndarray | None, group_size: int, *,
               handle=None, n: int | None = None) -> "PackedWeights":
        """Take ownership of arrays the library just made and validated in C (from_q1_0:
        canonical bits of a k % 128 == 0 row, finite float32 group scales), without the
        constructor's private copies: loading a model then holds one copy, not two. Or
        (bits and group_scale None) of a handle that carries both, for n rows (the
        invariant above: the handle alone is a complete copy)."""
        self = cls.__new__(cls)
        for a in (bits, group_scale):
            if a is not None:
                a.flags.writeable = False
        self._bits, self._k, self._n = bits, k, bits.shape[0] if n is None else n
        self._scale = self._in_scale = None
        self._group_scale, self._group_size = group_scale, group_size
        self._handle = handle
        self._bound = {}
        return self

    def _prepacked(self):
        """The C library's re-tiled copy of the bits (built once, on first use); from then
        on it is the only copy the weights keep (the canonical rows are dropped). Weights
        with group scales get a handle that carries them in the kernels' panel order
        (every group size is one the kernels take: a multiple of 64), and the W1A-float /
        W1A8 calls on it pass none of their own (``_carries_group_scale``); the
        results are the same bits as with per-call scales."""
        handle = self._handle
        if handle is None:
            with _HANDLE_LOCK:
                if self._handle is None:
                    gs = self._group_scale
                    self._handle = (weights_handle(self._bits, self._k) if gs is None else
                                    grouped_weights_handle(self._bits, self._k, gs, self._group_size))
                    # after the handle is set: see the invariant above
                    self._bits = None
                    if gs is not None and gs.size:
                        self._group_scale = None
                handle = self._handle
        return handle

    @property
    def bits(self) -> np.ndarray:
        """(N, ceil(K/64)) uint64, read-only: the canonical rows (rebuilt from the C
        library's copy, a new array, once the kernels have prepared the weights)."""
        return self._kept_or_rebuilt("_bits", handle_bits, -(-self._k // 64))

    @property
    def group_scale(self) -> np.ndarray | None:
        """(N, ceil(K/group_size)) float32 per-row-and-group scale, read-only, or None (rebuilt
        from the C library's copy, a new array, once the kernels have prepared the weights)."""
        if self._group_size is None:
            return None
        return self._kept_or_rebuilt("_group_scale", handle_group_scales, -(-self._k // self._group_size))

    def _kept_or_rebuilt(self, slot: str, rebuild, cols: int) -> np.ndarray:
        """The array in ``slot`` if still kept, else rebuild(handle, N, cols) from the handle
        that replaced it (the invariant above: the handle is set first)."""
        a = getattr(self, slot)
        if a is not None:
            return a
        h = self._handle
        if h is None:  # unreachable with ordered stores; the lock makes it so everywhere
            with _HANDLE_LOCK:
                a, h = getattr(self, slot), self._handle
            if a is not None:
                return a
        return rebuild(h, self._n, cols)

    # True if the handle of _prepacked() carries the group scales (then the W1A-float / W1A8
    # calls pass none): exactly when there are group scales (_prepacked() says why)
    _carries_group_scale = property(lambda self: self._group_size is not None)

    def _resident_nbytes(self) -> int:
        """Bytes these weights hold now: canonical rows and the row-major group scales while
        kept, the C handle once built (its bytes include the group scales it carries,
        panel-major, rows padded to a multiple of 8), the row and column scales. The
        accounting behind "one resident copy", for tests and the llm program."""
        with _HANDLE_LOCK:  # one consistent snapshot while _prepacked() may be releasing
            b, g, h = self._bits, self._group_scale, self._handle
        return (sum(a.nbytes for a in (b, g, self._scale, self._in_scale) if a is not None)
                + (0 if h is None else handle_nbytes(h)))

    k = property(lambda self: self._k, doc="K, the number of inputs")
    n = property(lambda self: self._n, doc="N, the number of outputs")
    scale = property(lambda self: self._scale, doc="(N,) float32 per-row scale, or None")
    in_scale = property(lambda self: self._in_scale, doc="(K,) float32 per-column scale, or None")
    group_size = property(lambda self: self._group_size, doc="columns per group_scale entry, or None")

    @property
    def nbytes(self) -> int:
        """Bytes of the canonical bits plus scales (the logical size, however stored)."""
        groups = 0 if self._group_size is None else self._n * -(-self._k // self._group_size) * 4
        return self._n * -(-self._k // 64) * 8 + groups + sum(
            a.nbytes for a in (self._scale, self._in_scale) if a is not None)

    def __repr__(self) -> str:
        return (
            f"PackedWeights(n={self.n}, k={self.k}, scale={'yes' if self._scale is not None else 'None'}, "
            f"in_scale={'yes' if self._in_scale is not None else 'None'}, "
            f"group_size={self._group_size}, nbytes={self.nbytes})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackedWeights):
            return NotImplemented

        def same(a, b):
            return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))

        return self is other or (
            self._k == other._k
            and self._n == other._n
            and np.array_equal(self.bits, other.bits)
            and same(self._scale, other._scale)
            and same(self._in_scale, other._in_scale)
            and self._group_size == other._group_size
            and same(self.group_scale, other.group_scale)
        )

    __hash__ = None  # mutable-looking arrays inside; equality is by value

    def __reduce__(self):
        # pickle/copy the arrays only: the C handle is a cache, rebuilt on first use
        return (_rebuild, (self.bits, self._k, self._scale, self._in_scale, self.group_scale,
                           self._group_size))

    # ---- persistence ------------------------------------------------------------------
    # On-disk format, version 1: an uncompressed .npz (a zip of .npy files, no pickles)
    # holding exactly these arrays, and nothing else:
    #   format          0-d str   "takane_kernels.PackedWeights"
    #   format_version  0-d int64 1
    #   k               0-d int64 K (0 <= K <= 2**31 - 1)
    #   bits            (N, ceil(K/64)) uint64, canonical (bit 1 = +1, LSB first, zero padding)
    #   scale           (N,) float32, finite — only if the weights have a per-row scale
    #   in_scale        (K,) float32, finite — only if they have a per-column scale
    # Version 2 adds, together (and only version 2 may hold them):
    #   group_size      0-d int64 G, a positive multiple of 64
    #   group_scale     (N, ceil(K/G)) float32, finite
    # save() writes version 2 only for weights with group scales, version 1 otherwise (a
    # file an older reader can read stays readable by it); load() reads both.
    # The zip's CRC-32 per member catches corruption; a truncated file loses the zip's
    # central directory (it is at the end). save() writes a temporary file next to the
    # target and renames it into place, so a crash never leaves a half-written file.
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` exactly (no extension is added), atomically."""
        grouped = self._group_size is not None
        arrays = format_arrays(FORMAT_NAME, 2 if grouped else 1, k=np.array(self._k, dtype=np.int64),
                               bits=self.bits, scale=self._scale, in_scale=self._in_scale,
                               group_size=np.array(self._group_size, dtype=np.int64) if grouped else None,
                               group_scale=self.group_scale)
        save_npz_atomic(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PackedWeights":
        """Read a file written by :meth:`save`, validating everything (ValueError if not)."""
        name = repr(os.fspath(path))
        allowed = {"format", "format_version", "k", "bits", "scale", "in_scale", "group_size", "group_scale"}
        data = read_npz(path, allowed, "PackedWeights")
        tag = data.get("format")
        if tag is None or tag.shape != () or tag.dtype.kind != "U" or str(tag) != FORMAT_NAME:
            raise ValueError(f"{name} is not a PackedWeights file (format tag missing)")
        version = data.get("format_version")
        if version is None or version.shape != () or version.dtype.kind not in "iu" or int(version) not in READ_VERSIONS:
            raise ValueError(
                f"{name}: unsupported PackedWeights format version {version!r} "
                f"(this library reads versions {', '.join(map(str, READ_VERSIONS))})"
            )
        if int(version) == 1:
            allowed = allowed - {"group_size", "group_scale"}
        for key in ("k", "bits"):
            if key not in data:
                raise ValueError(f"{name}: missing array {key!r}")
        if set(data) - allowed:
            raise ValueError(f"{name}: unexpected arrays {sorted(set(data) - allowed)} in a "
                             f"version-{int(version)} file")
        if int(version) == 2 and ("group_size" in data) != ("group_scale" in data):
            raise ValueError(f"{name}: group_size and group_scale must come together")
        k = loaded_int(data, "k", name)
        bits = loaded_bits(data, 2, name)
        group_size = data.get("group_size")
        if group_size is not None:
            if group_size.shape != () or group_size.dtype.kind not in "iu":
                raise ValueError(f"{name}: group_size must be an integer scalar")
            group_size = int(group_size)
        for key in ("scale", "in_scale", "group_scale"):
            if key in data and data[key].dtype != np.float32:
                raise ValueError(f"{name}: {key} must be float32, got {data[key].dtype}")
        try:
            return cls(bits, k, scale=data.get("scale"), in_scale=data.get("in_scale"),
                       group_scale=data.get("group_scale"), group_size=group_size)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: invalid PackedWeights data: {e}") from e
