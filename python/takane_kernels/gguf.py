"""GGUF files (llama.cpp's model format) in and out (extra ``gguf``).

``load(path)`` returns ``{name: tensor}``: Q1_0 tensors (GGUF type 41, llama.cpp's 1-bit
format) as :class:`takane_kernels.PackedWeights` (``group_size=128``, equal to
:func:`takane_kernels.from_q1_0` of the bytes; built straight into the kernels' layout, so a
loaded model is held once), the ternary TQ2_0 (35) and TQ1_0 (34) tensors as
:class:`takane_kernels.TernaryWeights` (``group_size=256``, bit-exact), bitnet.cpp's I2_S
(36, its x86 layout) as TernaryWeights with the per-tensor float32 scale as
``tensor_scale`` (bit-exact; docs/guide/ternary.md for the layouts), F32 and F16 tensors as
numpy arrays (shape in numpy order: a GGUF tensor with ``ne = [K, N]`` is ``(N, K)``).
Tensors of types this module cannot decode faithfully — PrismML's Hadamard-rotated PQ2_0
(142) / PTQ1_0 (143), any type the ``gguf`` package does not know — make the file a
``ValueError`` naming the tensor and the type, never garbage.
``load_metadata(path)`` returns the key/value metadata. ``save(path, tensors, arch=...,
metadata=...)`` writes a GGUF file that llama.cpp reads: PackedWeights become Q1_0
(:func:`takane_kernels.to_q1_0`), TernaryWeights TQ2_0 (or TQ1_0: ``ternary="TQ1_0"``), float32 / float16 arrays F32 / F16.

The file format itself is read and written by the ``gguf`` package (llama.cpp's own Python
library: ``GGUFReader`` / ``GGUFWriter``); this module adds the conversions and makes the
reader safe on untrusted files. Every declared length (strings, arrays, tensor data) is
checked against the bytes the file really has *before* anything is read or allocated, and
every other defect (truncation, unknown or wrong types, lying shapes, overlapping or
misaligned tensor data, invalid UTF-8, ...) is reported as ``ValueError``.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Mapping

import numpy as np

try:
    import gguf as _gguf
    from gguf import GGMLQuantizationType, GGUFValueType
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "takane_kernels.gguf needs the gguf package: pip install 'takane-kernels[gguf]' (or pip install gguf)"
    ) from e

from ._capi import MAX_K
from ._q1_0 import Q1_0_BLOCK, Q1_0_BLOCK_BYTES, Q1_0_GGML_TYPE, _from_q1_0_prepacked, to_q1_0
from ._ternary import TernaryWeights
from ._tq import (I2_S_BLOCK, I2_S_GGML_TYPE, TQ1_0_BYTES, TQ1_0_GGML_TYPE, TQ2_0_BYTES, TQ2_0_GGML_TYPE, TQ_BLOCK,
                  from_i2_s, from_tq1_0, from_tq2_0, i2_s_nbytes, to_tq1_0, to_tq2_0)
from ._weights import PackedWeights

__all__ = ["load", "load_metadata", "save", "GGUFValueType"]

if int(GGMLQuantizationType.Q1_0) != Q1_0_GGML_TYPE:  # pragma: no cover - a gguf release renumbering it
    raise ImportError("takane_kernels.gguf: this gguf package numbers Q1_0 differently from llama.cpp (41)")
if (int(GGMLQuantizationType.TQ1_0), int(GGMLQuantizationType.TQ2_0)) != (TQ1_0_GGML_TYPE, TQ2_0_GGML_TYPE):
    raise ImportError("takane_kernels.gguf: this gguf package numbers TQ1_0 / TQ2_0 differently from llama.cpp")  # pragma: no cover

# Tensor types outside the gguf package's table that ternary-model files carry: named in the
# error, never decoded (a rotated basis or an unknown layout would be garbage).
_FOREIGN_TYPES = {
    142: "PrismML's PQ2_0 (ternary weights in a Hadamard-rotated basis: not plain ternary)",
    143: "PrismML's PTQ1_0 (ternary weights in a Hadamard-rotated basis: not plain ternary)",
}
_KNOWN_TYPES = frozenset(int(t) for t in GGMLQuantizationType)
# bitnet.cpp's I2_S is not in the gguf package's table (llama.cpp retired 36 as IQ4_NL_4_4,
# research/onebit_llm_2026.md §3): _CheckedReader builds those tensors itself, before the
# stock reader would look the type up, so 36 means I2_S whatever the package's table says.

# the tensor types load() converts (the others are refused or skipped)
_READ_TYPES = frozenset({int(GGMLQuantizationType.Q1_0), int(GGMLQuantizationType.TQ2_0), int(GGMLQuantizationType.TQ1_0),
                         I2_S_GGML_TYPE, int(GGMLQuantizationType.F32), int(GGMLQuantizationType.F16)})

# the quantized weight-matrix types load() decodes ([K, N] = N rows of K weights)
_MATRIX_TYPES = frozenset({int(GGMLQuantizationType.Q1_0), int(GGMLQuantizationType.TQ2_0),
                           int(GGMLQuantizationType.TQ1_0), I2_S_GGML_TYPE})
GGML_MAX_DIMS = 4  # ggml tensors have at most 4 dimensions
GGML_MAX_NAME = 64  # tensor names are at most 63 bytes (plus the C string's NUL)

_SCALAR_NP = {  # metadata scalar types -> numpy dtype (the reader's own table)
    GGUFValueType.UINT8: np.uint8, GGUFValueType.INT8: np.int8,
    GGUFValueType.UINT16: np.uint16, GGUFValueType.INT16: np.int16,
    GGUFValueType.UINT32: np.uint32, GGUFValueType.INT32: np.int32,
    GGUFValueType.FLOAT32: np.float32, GGUFValueType.UINT64: np.uint64,
    GGUFValueType.INT64: np.int64, GGUFValueType.FLOAT64: np.float64,
    GGUFValueType.BOOL: np.bool_,
}
_NP_SCALAR = {np.dtype(v): k for k, v in _SCALAR_NP.items()}


class _HostileFile(ValueError):
    pass


class _RefusedType(ValueError):
    """A tensor type this module refuses to decode (reported as is, not as a corrupt file)."""


class _CheckedReader(_gguf.GGUFReader):
    """``GGUFReader`` with every read checked against the file's size first.

    The stock reader slices a memory map, and a slice past the end is silently short; an
    array declaring 2**60 elements of a fixed-size type would then loop (and append to a
    list) 2**60 times. Here a read that would pass the end of the file, and an array whose
    declared length cannot fit in the bytes left, raise before anything happens, so work
    and memory stay proportional to the file's real size.
    """

    def _get(self, offset, dtype, count=1, override_order=None):
        count = int(count)
        offset = int(offset)
        dtype = np.dtype(dtype)
        itemsize = dtype.itemsize
        if offset < 0 or count < 0 or offset + itemsize * count > len(self.data):
            raise _HostileFile(
                f"declares {count} item(s) of {itemsize} bytes at offset {offset}, past the end of "
                f"the {len(self.data)}-byte file (truncated, or a lying length)"
            )
        # The stock reader slices its np.memmap: every slice and view of a memmap runs its
        # Python-level __array_finalize__, ~10 µs per metadata element, so a 152k-token
        # vocabulary took ~25 s. A plain ndarray view of the same mapping costs a fraction.
        plain = self.__dict__.get("_plain")
        if plain is None or plain.base is None:
            plain = self._plain = self.data.view(np.ndarray)
        order = self.byte_order if override_order is None else override_order
        return plain[offset:offset + itemsize * count].view(dtype.newbyteorder(order))

    def _build_tensors(self, start_offs, fields):
        i2s = []
        for field in fields:  # the stock reader would fail on GGMLQuantizationType(raw) unnamed
            raw = int(field.parts[4][0])
            if raw == I2_S_GGML_TYPE:
                i2s.append(field)
            elif raw not in _KNOWN_TYPES:
                tname = bytes(field.parts[1]).decode("utf-8", "replace")
                what = _FOREIGN_TYPES.get(raw, "a type the gguf package does not know")
                raise _RefusedType(f"tensor {tname!r} has GGML type {raw}: {what}; refused")
        if not i2s:
            return super()._build_tensors(start_offs, fields)
        super()._build_tensors(start_offs, [f for f in fields if int(f.parts[4][0]) != I2_S_GGML_TYPE])
        # I2_S: a ReaderTensor of its raw bytes (codes + the 32-byte tail), tensor_type the
        # plain int 36; shapes and sizes are checked again by _check_tensors like any other
        names = {t.name for t in self.tensors}
        order = {id(f): i for i, f in enumerate(fields)}
        for field in i2s:
            _nl, name_data, _nd, dims, _raw, offset_tensor = field.parts
            tname = str(bytes(name_data), encoding="utf-8")
            if tname in names:
                raise ValueError(f"Found duplicated tensor with name {tname}")
            names.add(tname)
            n_elems = math.prod(int(d) for d in dims)
            nbytes = i2_s_nbytes(n_elems)
            offs = int(start_offs) + int(offset_tensor[0])  # Python ints: a uint64 sum would wrap
            self.tensors.append(_gguf.ReaderTensor(
                name=tname, tensor_type=I2_S_GGML_TYPE, shape=dims, n_elements=n_elems, n_bytes=nbytes,
                data_offset=offs, data=self._get(offs, np.uint8, nbytes), field=field))
        self.tensors.sort(key=lambda t: order[id(t.field)])  # file order, as the stock reader keeps it

    def _get_field_parts(self, orig_offs, raw_type):
        if int(raw_type) == GGUFValueType.ARRAY:
            itype = int(self._get(orig_offs, np.uint32)[0])
            alen = int(self._get(orig_offs + 4, np.uint64)[0])
            try:
                it = GGUFValueType(itype)
            except ValueError:
                raise _HostileFile(f"array of unknown value type {itype} at offset {orig_offs}") from None
            if it in _SCALAR_NP:
                least = np.dtype(_SCALAR_NP[it]).itemsize
            elif it == GGUFValueType.STRING:
                least = 8  # the length prefix
            else:
                least = 12  # a nested array: type + length
            left = len(self.data) - (orig_offs + 12)
            if alen * least > left:
                raise _HostileFile(
                    f"array at offset {orig_offs} declares {alen} elements of >= {least} bytes, "
                    f"but only {left} bytes are left in the file"
                )
            if it == GGUFValueType.STRING and alen:
                return self._string_array_parts(orig_offs, alen)
            if it in _SCALAR_NP and alen:  # one part for the whole array instead of one per element
                raw_itype = self._get(orig_offs, np.uint32)
                count = self._get(orig_offs + 4, np.uint64)
                values = self._get(orig_offs + 12, _SCALAR_NP[it], alen)
                return 12 + int(values.nbytes), [raw_itype, count, values], [2], [GGUFValueType.ARRAY, it]
        return super()._get_field_parts(orig_offs, raw_type)

    def _string_array_parts(self, orig_offs, alen):
        """An array of strings (a tokenizer's vocabulary: 10^5 entries) in the stock reader's
        part layout (per element a length part and a bytes part; data = the bytes parts),
        walked with plain integer reads instead of two numpy reads per element."""
        raw_itype = self._get(orig_offs, np.uint32)
        count = self._get(orig_offs + 4, np.uint64)
        plain = self._get(0, np.uint8, len(self.data))  # the whole mapping, plain view
        buf = memoryview(plain)
        parts, idxs = [raw_itype, count], []
        offs, end = orig_offs + 12, len(self.data)
        u64 = np.dtype("<u8")
        for _ in range(alen):
            if offs + 8 > end:
                raise _HostileFile(f"a string at offset {offs} runs past the end of the file")
            slen = int.from_bytes(buf[offs:offs + 8], "little")
            if slen > end - offs - 8:
                raise _HostileFile(f"a string at offset {offs} declares {slen} bytes, past the end of the file")
            parts.append(plain[offs:offs + 8].view(u64))
            idxs.append(len(parts))
            parts.append(plain[offs + 8:offs + 8 + slen])
            offs += 8 + slen
        return offs - orig_offs, parts, idxs, [GGUFValueType.ARRAY, GGUFValueType.STRING]


def _open(path) -> _CheckedReader:
    name = repr(os.fspath(path))
    try:
        reader = _CheckedReader(path, "r")
    except _RefusedType as e:
        raise ValueError(f"{name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - hostile bytes raise many types inside the reader
        # (IndexError/KeyError/OverflowError/UnicodeDecodeError/RecursionError/MemoryError...):
        # every one of them is a corrupt file, which this module reports as ValueError
        raise ValueError(f"{name} is not a readable GGUF file: {type(e).__name__}: {e}") from e
    if reader.byte_order != "I":
        raise ValueError(f"{name}: big-endian GGUF files are not supported")
    return reader


def _madvise(reader: _CheckedReader, start: int, end: int, advice: str) -> None:
    """madvise(advice) on the file pages [start, end) (page-aligned by the caller) of the
    reader's mapping; best effort: a platform without it (or the advice) does nothing."""
    mm = getattr(reader.data, "_mmap", None)
    value = getattr(mmap, advice, None)
    if mm is None or value is None or end <= start:
        return
    try:
        mm.madvise(value, start, end - start)
    except (OSError, ValueError):  # pragma: no cover - e.g. a mapping with an offset
        pass


def _prefetch(reader: _CheckedReader, offset: int, nbytes: int) -> None:
    """Ask the kernel to read a tensor's pages ahead (MADV_WILLNEED) before it is converted:
    one readahead per tensor instead of a page fault per few pages."""
    page = mmap.PAGESIZE
    _madvise(reader, offset // page * page, offset + nbytes, "MADV_WILLNEED")


def _release(reader: _CheckedReader, offset: int, nbytes: int) -> None:
    """Drop the file pages of a tensor already converted from the process's memory: the
    mapping is read-only, so the kernel can reread them, and the loader's resident memory
    stays near the result's size instead of the result plus the whole file."""
    page = mmap.PAGESIZE
    start = (offset + page - 1) // page * page  # whole pages inside the tensor only
    _madvise(reader, start, (offset + nbytes) // page * page, "MADV_DONTNEED")


def _check_tensors(reader: _CheckedReader, name: str) -> None:
    """Shapes, offsets and sizes of every tensor agree with each other and the file."""
    spans = []
    for t in reader.tensors:
        # the stock reader adds the declared offset to the data start in uint64, which wraps
        # for a lying offset near 2**64 and would read some other tensor's bytes
        if int(t.data_offset) != int(reader.data_offset) + int(t.field.parts[-1][0]):
            raise ValueError(f"{name}: tensor {t.name!r} declares data offset {int(t.field.parts[-1][0])}, "
                             f"past the end of the file")
        dims = [int(d) for d in t.shape]
        if not 1 <= len(dims) <= GGML_MAX_DIMS:
            raise ValueError(f"{name}: tensor {t.name!r} has {len(dims)} dimensions (1..{GGML_MAX_DIMS})")
        n = math.prod(dims)
        if any(d >= 2**63 for d in dims) or n >= 2**63:
            raise ValueError(f"{name}: tensor {t.name!r} declares an impossible shape {dims}")
        # a weight matrix's rows each get a scale or an output: more than 2^31 - 1 of them (the
        # library's limit on K too) is no real model — an empty one (K = 0) with N = 2^59 rows
        # would otherwise ask for exabytes of row scales
        if t.tensor_type in _MATRIX_TYPES and len(dims) == 2 and dims[1] > MAX_K:
            raise ValueError(f"{name}: tensor {t.name!r} declares {dims[1]} rows, more than "
                             f"{MAX_K} (the library's limit)")
        if t.tensor_type == I2_S_GGML_TYPE:  # codes of the whole tensor + a 32-byte tail
            block, nbytes = I2_S_BLOCK, i2_s_nbytes(n)
        else:
            block, type_size = _gguf.GGML_QUANT_SIZES[t.tensor_type]
            nbytes = n // block * type_size
        if dims[0] % block:
            raise ValueError(f"{name}: tensor {t.name!r} has ne0={dims[0]}, not a multiple of its "
                             f"type's block of {block}")
        if t.data.nbytes != nbytes or t.n_bytes != nbytes:
            raise ValueError(f"{name}: tensor {t.name!r}: shape {dims} needs {nbytes} bytes, "
                             f"the file maps {t.data.nbytes}")
        if (t.data_offset - reader.data_offset) % reader.alignment:
            raise ValueError(f"{name}: tensor {t.name!r} data offset {t.data_offset} is not aligned "
                             f"to {reader.alignment}")
        spans.append((t.data_offset, t.data_offset + nbytes, t.name))
    spans.sort()
    for (s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"{name}: tensors {n0!r} and {n1!r} overlap in the file")


def load(path: str | os.PathLike, *, unsupported: str = "error") -> dict[str, PackedWeights | TernaryWeights | np.ndarray]:
    """Read the tensors of a GGUF file: Q1_0 -> PackedWeights (N, K), TQ2_0 / TQ1_0 ->
    TernaryWeights (N, K) with group_size=256, I2_S -> TernaryWeights (N, K) with
    ``tensor_scale``, F32 / F16 -> numpy arrays (owned copies, numpy axis order).

    The file is read through a memory map, one tensor at a time (its pages read ahead, then
    dropped once converted). A Q1_0 tensor becomes the kernels' prepared layout directly
    (``takane_weights_from_q1_0``), which is then its only storage (``bits`` and
    ``group_scale`` are rebuilt from it on access, see :class:`~takane_kernels.PackedWeights`):
    peak memory stays near the result's size (~1.11x the Q1_0 bytes), with no second copy.

    ``unsupported``: what to do with tensors of other types (Q4_0, BF16, ...):
    ``"error"`` (``ValueError`` naming the tensor and type) or ``"skip"`` (left out).
    Q1_0 tensors must be 2-D (``ne = [K, N]``). A corrupt or hostile file (metadata
    included: it is decoded and checked too) -> ``ValueError``; so is a file holding a type
    the ``gguf`` package does not know (other than I2_S) or PrismML's rotated PQ2_0 (142) /
    PTQ1_0 (143), whatever ``unsupported`` says (the message names the tensor and the type).
    """
    if unsupported not in ("error", "skip"):
        raise ValueError(f"unsupported must be 'error' or 'skip', got {unsupported!r}")
    name = repr(os.fspath(path))
    reader = _open(path)
    try:
        _metadata(reader, name, False)  # a file whose metadata does not decode is corrupt
        # checked, and not needed again: a tokenizer's 10^5 strings are ~2 x 10^5 small
        # arrays (~50 MB); freed before the tensors are converted, not held through the load
        reader.fields.clear()
        _check_tensors(reader, name)
        out: dict[str, PackedWeights | np.ndarray] = {}
        for t in reader.tensors:
            tt = t.tensor_type
            if tt in _READ_TYPES:
                _prefetch(reader, int(t.data_offset), int(t.n_bytes))
            if tt == GGMLQuantizationType.Q1_0:
                dims = [int(d) for d in t.shape]
                if len(dims) != 2:
                    raise ValueError(f"{name}: Q1_0 tensor {t.name!r} has shape {dims}: a weight "
                                     f"matrix must be 2-D [K, N]")
                k, n = dims
                try:  # the kernels' handle straight from the mapped bytes: no canonical copy
                    out[t.name] = _from_q1_0_prepacked(np.asarray(t.data).reshape(n, k // Q1_0_BLOCK * Q1_0_BLOCK_BYTES), k)
                except ValueError as e:
                    raise ValueError(f"{name}: tensor {t.name!r}: {e}") from e
                _release(reader, int(t.data_offset), int(t.n_bytes))
            elif tt in (GGMLQuantizationType.TQ2_0, GGMLQuantizationType.TQ1_0):
                dims = [int(d) for d in t.shape]
                if len(dims) != 2:
                    raise ValueError(f"{name}: {tt.name} tensor {t.name!r} has shape {dims}: a weight "
                                     f"matrix must be 2-D [K, N]")
                k, n = dims
                two = tt == GGMLQuantizationType.TQ2_0
                row = k // TQ_BLOCK * (TQ2_0_BYTES if two else TQ1_0_BYTES)
                try:
                    out[t.name] = (from_tq2_0 if two else from_tq1_0)(np.asarray(t.data).reshape(n, row), k)
                except ValueError as e:
                    raise ValueError(f"{name}: tensor {t.name!r}: {e}") from e
                _release(reader, int(t.data_offset), int(t.n_bytes))
            elif tt == I2_S_GGML_TYPE:
                dims = [int(d) for d in t.shape]
                if len(dims) != 2:
                    raise ValueError(f"{name}: I2_S tensor {t.name!r} has shape {dims}: a weight "
                                     f"matrix must be 2-D [K, N]")
                k, n = dims
                try:
                    out[t.name] = from_i2_s(np.asarray(t.data), n, k)
                except ValueError as e:
                    raise ValueError(f"{name}: tensor {t.name!r}: {e}") from e
                _release(reader, int(t.data_offset), int(t.n_bytes))
            elif tt in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                out[t.name] = np.array(t.data, dtype=np.float32 if tt == GGMLQuantizationType.F32 else np.float16)
                _release(reader, int(t.data_offset), int(t.n_bytes))
            elif unsupported == "error":
                raise ValueError(f"{name}: tensor {t.name!r} has type {tt.name}, which takane_kernels.gguf "
                                 f"does not read (Q1_0, TQ2_0, TQ1_0, I2_S, F32, F16); pass unsupported='skip' to "
                                 f"leave it out")
        return out
    finally:
        del reader  # drop the memory map now (the arrays returned are copies)


def _field_value(field):
    types = field.types
    if types and types[0] == GGUFValueType.ARRAY:
        sub = types[-1] if len(types) > 1 else None
        if sub is not None and sub != GGUFValueType.STRING and sub != GGUFValueType.ARRAY:
            parts = [field.parts[i] for i in field.data]
            return np.concatenate(parts).astype(_SCALAR_NP[sub]) if parts else np.empty(0, _SCALAR_NP[sub])
    value = field.contents()
    if types and types[0] == GGUFValueType.BOOL:
        value = bool(value)
    return value


def _metadata(reader: _CheckedReader, name: str, typed: bool) -> dict[str, object]:
    try:
        out = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):  # the reader's own header pseudo-fields
                continue
            value = _field_value(field)
            if typed:
                vtype = field.types[0]
                if vtype == GGUFValueType.ARRAY:
                    # the element type as stored (also for an empty array): KV parts are
                    # [key length, key, value type, element type, length, elements...]
                    vtype = GGUFValueType(int(field.parts[3][0]))
                    if vtype == GGUFValueType.ARRAY:
                        raise ValueError(f"metadata {key!r}: nested arrays are not supported")
                value = (value.tolist() if isinstance(value, np.ndarray) else value, vtype)
            out[key] = value
        return out
    except Exception as e:  # noqa: BLE001 - invalid UTF-8, nested arrays of mixed types, ...
        raise ValueError(f"{name}: unreadable metadata: {type(e).__name__}: {e}") from e


def load_metadata(path: str | os.PathLike, *, typed: bool = False) -> dict[str, object]:
    """The key/value metadata of a GGUF file (``general.architecture`` included): str, int,
    float, bool, list of str, or numpy arrays (arrays of numbers, in their GGUF type).

    ``typed=True`` gives each value as ``(value, GGUFValueType)`` (for an array: the
    element type), the form :func:`save` accepts, so ``save(p2, load(p), arch=...,
    metadata=load_metadata(p, typed=True))`` rewrites a file with every type kept.
    A corrupt file -> ``ValueError``.
    """
    reader = _open(path)
    try:
        return _metadata(reader, repr(os.fspath(path)), typed)
    finally:
        del reader


def _int_type(v: int, key: str) -> GGUFValueType:
    if 0 <= v < 2**32:
        return GGUFValueType.UINT32
    if -(2**31) <= v < 0:
        return GGUFValueType.INT32
    if -(2**63) <= v < 2**63:
        return GGUFValueType.INT64
    if 0 <= v < 2**64:
        return GGUFValueType.UINT64
    raise ValueError(f"metadata {key!r}: integer {v} does not fit 64 bits")


def _typed(key: str, value) -> tuple[object, GGUFValueType, GGUFValueType | None]:
    """(value, type, array element type) for the writer, see :func:`save`."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], GGUFValueType):
        v, t = value
        if isinstance(v, (list, tuple, np.ndarray)):
            if t == GGUFValueType.ARRAY:
                raise ValueError(f"metadata {key!r}: give an array's element type, not ARRAY")
            items = v.tolist() if isinstance(v, np.ndarray) else list(v)
            if not items:
                raise ValueError(f"metadata {key!r}: empty array")
            return items, GGUFValueType.ARRAY, t
        return v, t, None
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.size == 0:
            raise ValueError(f"metadata {key!r}: arrays must be 1-D and non-empty, got shape {value.shape}")
        sub = _NP_SCALAR.get(value.dtype)
        if sub is None:
            if value.dtype.kind == "U":
                return value.tolist(), GGUFValueType.ARRAY, GGUFValueType.STRING
            raise TypeError(f"metadata {key!r}: array dtype {value.dtype} has no GGUF type")
        return value.tolist(), GGUFValueType.ARRAY, sub
    if isinstance(value, np.generic):
        t = _NP_SCALAR.get(value.dtype)
        if t is None:
            raise TypeError(f"metadata {key!r}: {value.dtype} has no GGUF type")
        return value.item(), t, None
    if isinstance(value, bool):
        return value, GGUFValueType.BOOL, None
    if isinstance(value, int):
        return value, _int_type(value, key), None
    if isinstance(value, float):
        return value, GGUFValueType.FLOAT32, None
    if isinstance(value, str):
        return value, GGUFValueType.STRING, None
    if isinstance(value, (list, tuple)):
        items = list(value)
        if not items:
            raise ValueError(f"metadata {key!r}: empty array")
        if all(isinstance(i, str) for i in items):
            return items, GGUFValueType.ARRAY, GGUFValueType.STRING
        if all(isinstance(i, bool) for i in items):
            return items, GGUFValueType.ARRAY, GGUFValueType.BOOL
        if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            fits = all(-(2**31) <= i < 2**31 for i in items)
            return items, GGUFValueType.ARRAY, GGUFValueType.INT32 if fits else GGUFValueType.INT64
        if all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in items):
            return [float(i) for i in items], GGUFValueType.ARRAY, GGUFValueType.FLOAT32
        raise TypeError(f"metadata {key!r}: a list must hold only str, only bool, or only numbers")
    raise TypeError(f"metadata {key!r}: {type(value).__name__} has no GGUF type")


def save(path: str | os.PathLike, tensors: Mapping[str, PackedWeights | np.ndarray], *, arch: str,
         metadata: Mapping[str, object] | None = None, ternary: str = "TQ2_0") -> None:
    """Write ``tensors`` and ``metadata`` as a GGUF file (version 3, little-endian) that
    llama.cpp can load; atomically (a temporary file renamed into place).

    ``tensors``: name -> :class:`~takane_kernels.PackedWeights` (written as Q1_0 via :func:`~takane_kernels.to_q1_0`:
    K % 128 == 0, see there for scales), :class:`~takane_kernels.TernaryWeights` (written as
    TQ2_0, or TQ1_0 with ``ternary="TQ1_0"``: K % 256 == 0, block scale = group_scale (G a
    multiple of 256) x scale x tensor_scale rounded to fp16, no in_scale) or a float32 / float16 numpy array (F32 / F16,
    1 to 4 dims, numpy axis order: an (N, K) array is GGUF ``ne = [K, N]``). Names are at
    most 63 UTF-8 bytes. ``arch`` is ``general.architecture`` (e.g. ``"llama"``).

    ``metadata``: key -> value, typed as llama.cpp expects: bool -> BOOL, int -> UINT32
    (INT32 if negative, 64-bit if it does not fit), float -> FLOAT32, str -> STRING, a list
    of str / bool / int / float -> ARRAY of STRING / BOOL / INT32 / FLOAT32, a numpy scalar
    or 1-D array -> its own type. For any other type pass ``(value, GGUFValueType.X)`` (for a
    list: X is the element type).
    """
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be a non-empty str (general.architecture), got {arch!r}")
    if ternary not in ("TQ2_0", "TQ1_0"):
        raise ValueError(f"ternary must be 'TQ2_0' or 'TQ1_0' (the GGUF type TernaryWeights are written as), got {ternary!r}")
    to_tq, tq_type = ((to_tq2_0, GGMLQuantizationType.TQ2_0) if ternary == "TQ2_0"
                      else (to_tq1_0, GGMLQuantizationType.TQ1_0))
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping name -> PackedWeights | ndarray, got {type(tensors).__name__}")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    kv = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"metadata keys must be non-empty str, got {key!r}")
        if key == "general.architecture":
            given = value[0] if isinstance(value, tuple) and len(value) == 2 else value
            if given != arch:
                raise ValueError(f"metadata general.architecture={value!r} disagrees with arch={arch!r}")
            continue
        kv.append((key, *_typed(key, value)))
    items = []
    for tname, t in tensors.items():
        if not isinstance(tname, str) or not tname or len(tname.encode()) >= GGML_MAX_NAME:
            raise ValueError(f"tensor names must be non-empty str of at most {GGML_MAX_NAME - 1} bytes, got {tname!r}")
        if isinstance(t, PackedWeights):
            q = to_q1_0(t)
            items.append((tname, q, GGMLQuantizationType.Q1_0))
        elif isinstance(t, TernaryWeights):
            items.append((tname, to_tq(t), tq_type))
        elif isinstance(t, np.ndarray):
            if t.dtype not in (np.float32, np.float16):
                raise TypeError(f"tensor {tname!r}: arrays must be float32 or float16, got {t.dtype}")
            if not 1 <= t.ndim <= GGML_MAX_DIMS:
                raise ValueError(f"tensor {tname!r}: 1 to {GGML_MAX_DIMS} dimensions, got shape {t.shape}")
            items.append((tname, np.ascontiguousarray(t, dtype=t.dtype.newbyteorder("<")), None))
        else:
            raise TypeError(f"tensor {tname!r}: expected TernaryWeights, PackedWeights or a numpy array, got {type(t).__name__}")

    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        writer = _gguf.GGUFWriter(tmp, arch)
        for key, value, vtype, sub in kv:
            writer.add_key_value(key, value, vtype, sub_type=sub)
        for tname, data, raw in items:
            if raw is None:
                writer.add_tensor(tname, data)
            else:  # the Q1_0 bytes, passed through: the writer derives ne from the byte shape
                writer.add_tensor(tname, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
