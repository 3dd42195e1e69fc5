"""The C boundary: the one module every other module uses to reach the C library.

It holds, once each: the status -> exception table, the argument validators (int, real,
pair, threads, k, packed bits, vectors, thresholds, ``out``), the conversions to what the
C kernels read (float32 rows, thresholds rounded up to float32), the pointer helpers
(``ffi.from_buffer``, never ``arr.ctypes``) and the creation of the C weight handles.
The public ops (``_ops``, ``_layers``, ``_conv``, ...) are validate -> convert -> call on
top of these; see docs/architecture.md for the data path of one call.

Threshold semantics (exact, whatever the dtypes): an element v becomes +1 iff v >= t as
real numbers. Inputs exactly representable in float32 (float16/32, bool, 8/16-bit ints)
go to the C kernels as float32 with each threshold rounded *up* to the nearest float32:
for a float32 v, ``v >= t  <=>  v >= ceil_f32(t)``, so the comparison stays exact. Wider
inputs (float64, 32/64-bit ints) are compared by numpy at their own precision and the
boolean result is packed by the same C kernels (as 0/1 against 0.5).
"""

from __future__ import annotations

import math
import numbers
import os
import weakref

import numpy as np

from ._takane import ffi, lib

MAX_K = 2**31 - 1  # TAKANE_MAX_K: dot products are int32
DIM_MAX = 2**31 - 1
NULL = ffi.NULL
from_buffer = ffi.from_buffer

# numpy hands out these singleton dtype objects for its builtin types, so `is` compares
F32 = np.dtype(np.float32)
U64 = np.dtype(np.uint64)
I32 = np.dtype(np.int32)
# dtypes whose every value is exactly a float32
EXACT_IN_F32 = frozenset(np.dtype(t) for t in (np.float32, np.float16, np.bool_, np.int8, np.uint8, np.int16,
                                               np.uint16))
_F32_INF = np.float32(np.inf)
HALF = np.array([0.5], dtype=np.float32)  # the threshold for 0/1 rows compared by numpy
ZERO = np.array([0.0], dtype=np.float32)

# ---- the one vocabulary for activation modes ---------------------------------------------
# canonical name -> the C library's activations value (TAKANE_ACTIVATIONS_F32 / _Q8_0);
# "w1a1" (binary activations) has its own entry points.
ACTIVATION_MODES = ("w1a1", "f32", "q8_0", "int8_row")
# public aliases, kept where they are API: binary_weight_matmul's activations="float32",
# BinaryLinear's mode="w1a_float" / "w1a8"
ACTIVATION_ALIASES = {"float32": "f32", "w1a_float": "f32", "w1a8": "q8_0"}
C_ACTIVATIONS = {"f32": 0, "q8_0": 1, "int8_row": 2}  # int8_row: ternary weights only (issue 23)


def activation_mode(name: object, allowed=ACTIVATION_MODES, what: str = "activations", names=None) -> str:
    """The canonical mode name ("w1a1", "f32" or "q8_0") of ``name`` or one of its aliases.
    ``names``: the names the error message offers first (default: the canonical ones)."""
    mode = ACTIVATION_ALIASES.get(name, name) if isinstance(name, str) else None
    if mode not in allowed:
        names = tuple(names or allowed)
        offered = f"one of {', '.join(map(repr, names))}" if len(names) > 2 else " or ".join(map(repr, names))
        others = [a for a, m in ACTIVATION_ALIASES.items() if m in allowed and a not in names]
        others += [m for m in allowed if m not in names]
        raise ValueError(f"{what} must be {offered}, got {name!r} (also accepted: {', '.join(map(repr, others))})")
    return mode


# ---- status -> exception --------------------------------------------------------------------

def raise_status(status: int, context: str) -> None:
    """Nothing for TAKANE_OK; else the exception the status stands for, with ``context``."""
    if status == lib.TAKANE_OK:
        return
    msg = ffi.string(lib.takane_status_string(status)).decode()
    if status == lib.TAKANE_ERR_OUT_OF_MEMORY:
        raise MemoryError(f"{context}: {msg}")
    if status == lib.TAKANE_ERR_ENV_ISA:
        from . import isa

        raise ValueError(
            f"{context}: TAKANE_ISA={os.environ.get('TAKANE_ISA')!r} is unknown or not supported "
            f"here (supported: {', '.join(isa.supported())}); unset it or call isa.force()"
        )
    raise ValueError(f"{context}: {msg}")


# ---- scalar validators ----------------------------------------------------------------------

def check_int(v: object, name: str, lo: int = 1, hi: int = DIM_MAX) -> int:
    """An int (not a bool) in [lo, hi], else TypeError / ValueError naming it."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if v < lo or v > hi:
        raise ValueError(f"{name}={v} is out of range [{lo}, {hi}]")
    return v


def check_pair(v: object, name: str, lo: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each >= lo, as a pair."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return check_int(v[0], name, lo), check_int(v[1], name, lo)
    a = check_int(v, name, lo)
    return a, a


def check_k(k: object, name: str = "k") -> int:
    return check_int(k, name, 0, MAX_K)


def real_scalar(value: object, name: str) -> float:
    """A finite real number (not a bool) as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def check_threads(threads: object) -> int:
    """threads= as the C argument: None -> 0 (the library default), else an int >= 1."""
    if threads is None:
        return 0
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(min(threads, 2**31 - 1))


def positive_int(value: object, name: str) -> int:
    """An int (any Integral but bool) >= 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_bool(v: object, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def check_group_size(group_size: object) -> int:
    """A group size: a positive int, multiple of 64 (a group spans whole words)."""
    if isinstance(group_size, (bool, np.bool_)) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    g = int(group_size)
    if g <= 0 or g % 64 or g > MAX_K + 63:
        raise ValueError(f"group_size={g} must be a positive multiple of 64")
    return g


# ---- arrays ---------------------------------------------------------------------------------

def words_for(k: int) -> int:
    return (k + 63) // 64


def as_real_array(x: object, name: str) -> np.ndarray:
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real (float, int or bool) array, got dtype {a.dtype}")
    if a.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension (..., K), got shape {a.shape}")
    return a


def padding_is_zero(bits: np.ndarray, k: int) -> bool:
    """True if no row of canonical bits (..., ceil(k/64)) has a 1 at a position >= k."""
    r = k % 64
    if r == 0 or bits.size == 0:
        return True
    pad = np.uint64(~((1 << r) - 1) & 0xFFFFFFFFFFFFFFFF)
    return not np.any(bits[..., -1] & pad)


def check_packed(bits: object, k: int, name: str) -> np.ndarray:
    """Validate a raw canonical packed array (..., ceil(k/64)) uint64; return it as is."""
    if not isinstance(bits, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint64 array, got {type(bits).__name__}")
    if bits.dtype != np.uint64:
        raise TypeError(f"{name} must have dtype uint64 (canonical packed bits), got {bits.dtype}")
    if bits.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension, got shape {bits.shape}")
    if bits.shape[-1] != words_for(k):
        raise ValueError(
            f"{name} has shape {bits.shape}: its last dimension must be ceil(k/64) = "
            f"{words_for(k)} words for k={k}"
        )
    if not padding_is_zero(bits, k):
        raise ValueError(f"{name} has non-zero padding bits (bit positions >= k={k} in the last word)")
    return bits


def real_vector(v: object, length: int, name: str, what: str) -> np.ndarray:
    """v as an array of a real dtype and shape (length,), else TypeError/ValueError."""
    a = np.asarray(v)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    if a.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) ({what}), got {a.shape}")
    return a


def owned_vector(v: object, length: int, name: str, what: str) -> np.ndarray | None:
    """None, or a private read-only finite float32 copy of a (length,) real vector."""
    if v is None:
        return None
    a = np.array(real_vector(v, length, name, what), dtype=np.float32, order="C")  # owned copy
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    a.flags.writeable = False
    return a


def vector_f32(v: object, length: int, name: str, what: str) -> np.ndarray | None:
    """None, or v as a float32 C-contiguous (length,) array. Finiteness is checked by the
    C library (TAKANE_ERR_NOT_FINITE), which is cheaper than a numpy pass per call."""
    if v is None:
        return None
    a = real_vector(v, length, name, what)
    if a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned:
        return a
    with np.errstate(over="ignore"):  # overflow to inf: the C library reports it
        return np.require(a, np.float32, "CA")  # C-contiguous and aligned


def out_array(out: object, shape: tuple, dtype: np.dtype, name: str = "out") -> np.ndarray:
    """A new array, or ``out`` checked for type, dtype, shape, contiguity, alignment and
    writability (the C kernels write it in place)."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}, expected {shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.aligned:
        raise ValueError(f"{name} is not aligned to its dtype (the C kernels write it in place)")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


# ---- thresholds -----------------------------------------------------------------------------

def threshold64(threshold: object, k: int, name: str = "threshold", per: str = "input channel") -> np.ndarray:
    """Validated threshold as float64: shape () or (k,) (one per `per`)."""
    t = np.asarray(threshold)
    if t.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real scalar or array, got dtype {t.dtype}")
    if t.shape not in ((), (k,)):
        raise ValueError(f"{name} must be a scalar or have shape ({k},) (one per {per}), got {t.shape}")
    t = t.astype(np.float64)
    if np.isnan(t).any():
        raise ValueError(f"{name} contains NaN (NaN has no sign)")
    return t


def ceil_f32(t64: np.ndarray) -> np.ndarray:
    """Smallest float32 >= each value (exact threshold for float32 inputs), at least 1-D."""
    with np.errstate(over="ignore"):
        t32 = np.atleast_1d(np.asarray(t64).astype(np.float32))
    low = t32.astype(np.float64) < np.atleast_1d(t64)
    if low.any():
        t32[low] = np.nextafter(t32[low], _F32_INF)
    return np.ascontiguousarray(t32)


class Threshold:
    """A binarization threshold validated and converted once: ``t64`` (float64, () or
    (k,)) for inputs numpy compares at their own precision, ``t32`` (ceil_f32, (1,) or
    (k,)) and its pointer for the C kernels, ``zero`` when every value is 0."""

    __slots__ = ("t64", "t32", "ptr", "len", "zero")

    def __init__(self, threshold: object, k: int, name: str = "threshold", per: str = "input channel"):
        self.t64 = threshold64(threshold, k, name, per)
        self.zero = not self.t64.any()
        self.t32 = ZERO if self.zero else ceil_f32(self.t64)
        self.t32.flags.writeable = False
        self.ptr = from_buffer("float[]", self.t32)
        self.len = self.t32.size

    def require_zero_for_packed(self) -> None:
        if not self.zero:
            raise ValueError("threshold applies to real x only; x is already packed (uint64)")


def real_rows_for_c(x: np.ndarray, t: Threshold, k: int, name: str):
    """(x as C-contiguous aligned float32 2-D rows, float32 threshold pointer, its length)
    for the C kernels. float32-exact dtypes are converted (no copy for float32 already
    C-contiguous and aligned); wider ones are compared here and go as 0/1 against 0.5."""
    m = math.prod(x.shape[:-1])
    if x.dtype in EXACT_IN_F32:
        rows = x if x.dtype is F32 and x.flags.c_contiguous and x.flags.aligned else np.require(x, np.float32, "CA")
        return rows.reshape(m, k), t.ptr, t.len
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise ValueError(f"{name} contains NaN (NaN has no sign)")
    ge = np.greater_equal(x, t.t64)
    return np.ascontiguousarray(ge, dtype=np.float32).reshape(m, k), HALF_PTR, 1


def out_threshold_f32(t: object, n: int) -> np.ndarray:
    """out_threshold as float32 (1,) or (n,), each value rounded *up* to float32: for a
    float32 y, y >= t  <=>  y >= ceil_f32(t), so the comparison stays exact. A NaN in
    a float32 array is left to the C library (TAKANE_ERR_NAN)."""
    if isinstance(t, np.ndarray) and t.dtype == np.float32 and t.shape in ((), (n,)):
        return np.require(t, requirements="CA").reshape(-1)  # already float32: nothing to round
    return ceil_f32(threshold64(t, n, "out_threshold", "output channel"))


class Epilogue:
    """A layer's output constants, validated and converted once: ``bias`` (float32 (n,) or
    None) and its pointer; ``out_threshold`` (None: float32 results; else packed bits of
    ``y >= out_threshold``, rounded up to float32) and its pointer; the result's last
    dimension, dtype and cffi type."""

    __slots__ = ("bias", "bptr", "tout", "optr", "olen", "ylast", "ydtype", "yctype")

    def __init__(self, bias: object, out_threshold: object, n: int, what: str):
        self.bias = vector_f32(bias, n, "bias", what)
        self.bptr = ptr("float[]", self.bias)
        if out_threshold is None:
            self.tout, self.optr, self.olen = None, NULL, 0
            self.ylast, self.ydtype, self.yctype = n, F32, "float[]"
        else:
            self.tout = out_threshold_f32(out_threshold, n)
            self.optr, self.olen = from_buffer("float[]", self.tout), self.tout.size
            self.ylast, self.ydtype, self.yctype = words_for(n), U64, "uint64_t[]"


def check_activations(x: object, t: Threshold, k: int, kw: int) -> tuple[np.ndarray, bool]:
    """(x as an array, packed?) for the general path of a (..., K) op: canonical packed
    uint64 (..., kw) — then the threshold must be 0; its padding bits are checked by the
    C call — or real (..., k)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have at least 1 dimension, got shape {x.shape}")
    if x.dtype == np.uint64:
        t.require_zero_for_packed()
        if x.shape[-1] != kw:
            check_packed(x, k, "x")  # raises: wrong number of words
        return x, True
    x = as_real_array(x, "x")
    if x.shape[-1] != k:
        raise ValueError(f"x has shape {x.shape} but w has k={k}: the last dimension of x must be {k}")
    return x, False


# ---- pointers -------------------------------------------------------------------------------

def ptr(ctype: str, a: np.ndarray | None, writable: bool = False):
    """A cffi pointer to a's memory (no copy), or NULL for None / an empty array."""
    if a is None or a.size == 0:
        return NULL
    return from_buffer(ctype, a, require_writable=writable)


HALF_PTR = from_buffer("float[]", HALF)


# ---- bound ops for the module-level functions ---------------------------------------------

_SCALARS = (int, float)


def plain_scalar(v) -> bool:
    """v is a plain Python int or float (or None): hashable, and cheap to key a cache on."""
    return v is None or v.__class__ in _SCALARS


def bound_op(w, key: tuple, make, *args, **kwargs):
    """The op ``make(*args, **kwargs)`` builds for weights ``w`` and constants ``key``,
    cached on ``w``.

    The module-level functions (``binary_linear(x, w, ...)``) are ``Op(w, ...)(x)``; when
    their constants are plain scalars the op is kept with the (immutable) weights, so a
    repeated call costs a dictionary lookup, not a new op. At most 16 ops per weights.
    (Pass the op's class and arguments rather than a lambda: a lambda turns the caller's
    arguments into closure cells, which every call then pays for.)"""
    cache = w._bound
    op = cache.get(key)
    if op is None:
        op = make(*args, **kwargs)
        op.weights = weakref.proxy(w)  # no reference cycle: the weights are freed on del
        if len(cache) >= 16:
            cache.clear()
        cache[key] = op
    return op


# ---- C handles ------------------------------------------------------------------------------

def weights_handle(bits: np.ndarray, k: int):
    """The C library's re-tiled copy of canonical weight bits (freed with the cdata)."""
    out = ffi.new("takane_weights **")
    n, kw = bits.shape
    status = lib.takane_weights_create(n, k, ptr("uint64_t[]", bits), kw, out)
    if status == lib.TAKANE_ERR_OUT_OF_MEMORY:
        raise MemoryError("takane_weights_create: out of memory")
    raise_status(status, "takane_weights_create")
    return ffi.gc(out[0], lib.takane_weights_free)


def grouped_weights_handle(bits: np.ndarray, k: int, group_scale: np.ndarray, group_size: int):
    """A weights handle that carries row-major float32 group scales (N, ceil(K/G)), stored
    the kernels' way (``takane_weights_create_grouped``): the W1A-float / W1A8 calls on it
    pass no group scales of their own (freed with the cdata)."""
    out = ffi.new("takane_weights **")
    n, kw = bits.shape
    status = lib.takane_weights_create_grouped(n, k, ptr("uint64_t[]", bits), kw, ptr("float[]", group_scale),
                                               group_scale.shape[1], group_size, out)
    if status == lib.TAKANE_ERR_OUT_OF_MEMORY:
        raise MemoryError("takane_weights_create_grouped: out of memory")
    raise_status(status, "takane_weights_create_grouped")
    return ffi.gc(out[0], lib.takane_weights_free)


def _handle_rows(getter, handle, shape: tuple, dtype, ctype: str, name: str) -> np.ndarray:
    """A new read-only array of ``shape`` that ``getter`` (a takane_weights_get_* accessor:
    rows [0, n) of a handle, row-major, row stride shape[1]) fills."""
    out = np.empty(shape, dtype=dtype)
    if out.size:
        raise_status(getter(handle, 0, shape[0], from_buffer(ctype, out, require_writable=True), shape[1]), name)
    out.flags.writeable = False
    return out


def handle_bits(handle, n: int, kw: int) -> np.ndarray:
    """A new read-only (n, kw) uint64 array of the canonical rows a weights handle holds
    (``takane_weights_get_bits``: the inverse of :func:`weights_handle`)."""
    return _handle_rows(lib.takane_weights_get_bits, handle, (n, kw), np.uint64, "uint64_t[]",
                        "takane_weights_get_bits")


def handle_group_scales(handle, n: int, ng: int) -> np.ndarray:
    """A new read-only (n, ng) float32 array of the row-major group scales a weights handle
    carries (``takane_weights_get_group_scales``: the inverse of the scale part of
    :func:`grouped_weights_handle`, bit for bit)."""
    return _handle_rows(lib.takane_weights_get_group_scales, handle, (n, ng), np.float32, "float[]",
                        "takane_weights_get_group_scales")


def handle_nbytes(handle) -> int:
    """Bytes a weights handle holds (``takane_weights_info``)."""
    nbytes = ffi.new("int64_t *")
    raise_status(lib.takane_weights_info(handle, ffi.NULL, ffi.NULL, nbytes), "takane_weights_info")
    return int(nbytes[0])


def ternary_handle(sign: np.ndarray, nonzero: np.ndarray, k: int):
    """The C library's re-tiled copy of canonical ternary planes (freed with the cdata)."""
    out = ffi.new("takane_ternary_weights **")
    n, kw = sign.shape
    status = lib.takane_ternary_weights_create(n, k, ptr("uint64_t[]", sign), ptr("uint64_t[]", nonzero), kw, out)
    if status == lib.TAKANE_ERR_OUT_OF_MEMORY:
        raise MemoryError("takane_ternary_weights_create: out of memory")
    raise_status(status, "takane_ternary_weights_create")
    return ffi.gc(out[0], lib.takane_ternary_weights_free)


def ternary_handle_planes(handle, n: int, kw: int) -> tuple[np.ndarray, np.ndarray]:
    """New read-only (n, kw) uint64 sign and nonzero planes of a ternary handle
    (``takane_ternary_weights_get_planes``: the inverse of :func:`ternary_handle`)."""
    sign, nonzero = np.empty((n, kw), np.uint64), np.empty((n, kw), np.uint64)
    if sign.size:
        raise_status(lib.takane_ternary_weights_get_planes(
            handle, 0, n, from_buffer("uint64_t[]", sign, require_writable=True),
            from_buffer("uint64_t[]", nonzero, require_writable=True), kw), "takane_ternary_weights_get_planes")
    sign.flags.writeable = nonzero.flags.writeable = False
    return sign, nonzero


def conv_weights_handle(bits: np.ndarray, cin: int, groups: int):
    """The C library's prepared convolution weights for one ``groups`` value."""
    cout, kh, kw, _ = bits.shape
    out = ffi.new("takane_conv_weights **")
    st = lib.takane_conv_weights_create(cout, kh, kw, cin, groups, from_buffer("uint64_t[]", bits), out)
    raise_status(st, "PackedConvWeights")
    return ffi.gc(out[0], lib.takane_conv_weights_free)


def conv_geometry(n, h, w, stride, dilation, pads, pad_value):
    g = ffi.new("takane_conv2d_geometry *")
    g.batch, g.in_h, g.in_w = n, h, w
    g.stride_h, g.stride_w = stride
    g.dilation_h, g.dilation_w = dilation
    g.pad_top, g.pad_bottom, g.pad_left, g.pad_right = pads
    g.pad_value = pad_value
    return g


def ready_out(out, shape: tuple, dtype: np.dtype, x: np.ndarray):
    """``out`` when the kernels can write it as it is — a numpy array of exactly this dtype
    and shape, C-contiguous, aligned, writable, not overlapping ``x`` — else None (then
    :func:`out_array` on the general path says what is wrong, or a copy of x is made)."""
    if out.__class__ is np.ndarray and out.dtype is dtype and out.shape == shape:
        f = out.flags
        if f.c_contiguous and f.aligned and f.writeable and not np.may_share_memory(out, x):
            return out
    return None
