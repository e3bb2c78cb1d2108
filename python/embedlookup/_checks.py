"""Argument checks and zero-copy conversion for the native calls.

Every public entry point converts its arguments here *before* touching the
table, so a bad argument raises a clear exception naming it and leaves the
table unchanged. Arrays already contiguous and of the native dtype are
borrowed, never copied; anything exposing DLPack (torch CPU tensors, ...) or
the buffer protocol is accepted.
"""

from __future__ import annotations

import numpy as np

MODES = {"sum": 0, "mean": 1, "max": 2}


# ---- checks shared by every backend (NumPy arrays here, CUDA tensors in cuda.py)
def table_args(dim, initializer, capacity, optimizer, integer_types=(int, np.integer)):
    """A table constructor's common arguments, checked: returns (dim,
    initializer, capacity) with the default initializer filled in."""
    from . import init as _init
    from .optim import Optimizer

    if isinstance(dim, bool) or not isinstance(dim, integer_types) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if initializer is None:
        initializer = _init.uniform()
    if not isinstance(initializer, _init.Initializer):
        raise TypeError(f"initializer must come from embedlookup.init, got {type(initializer).__name__}")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, integer_types)
                                 or capacity <= 0):
        raise ValueError(f"capacity must be a positive int or None, got {capacity!r}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an embedlookup.optim optimizer, got {type(optimizer).__name__}")
    return int(dim), initializer, None if capacity is None else int(capacity)


def integer_dtype(is_integer: bool, dtype, name: str) -> None:
    if not is_integer:
        raise TypeError(f"{name} must hold integers (int64 preferred), got dtype {dtype}")


def float_dtype(is_float: bool, dtype, name: str) -> None:
    if not is_float:
        raise TypeError(f"{name} must hold floating-point values (float32 preferred), got dtype {dtype}")


def bag_layout(shape: tuple, has_offsets: bool, include_last_offset: bool):
    """EmbeddingBag's two input forms: a 2-D ``values`` without offsets
    (returns (n_bags, bag length)) or 1-D ``values`` with offsets (returns
    None); anything else raises."""
    if len(shape) == 2 and not has_offsets:
        if include_last_offset:
            raise ValueError("include_last_offset needs offsets; 2-D values take none")
        return int(shape[0]), int(shape[1])
    if len(shape) != 1:
        raise ValueError(f"values must be 1-D with offsets (or 2-D without), got shape {tuple(shape)}")
    if not has_offsets:
        raise ValueError("offsets are required when values is 1-D")
    return None


def shape_is(shape: tuple, want: tuple, name: str) -> None:
    if tuple(shape) != tuple(want):
        raise ValueError(f"{name} must have shape {tuple(want)}, got {tuple(shape)}")


def weights_mode(mode: str) -> None:
    if mode != "sum":
        raise ValueError(f"per_sample_weights are only supported with mode='sum', got mode={mode!r}")


def to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError) as e:
            raise TypeError(f"{name}: cannot borrow this array from CPU memory via DLPack ({e})") from None
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - report any conversion failure as the argument's fault
        raise TypeError(f"{name}: expected an array, got {type(x).__name__} ({e})") from None


def keys_1d(x, name: str) -> np.ndarray:
    """int64, 1-D, C-contiguous. Other integer dtypes are converted (a copy);
    uint64 is reinterpreted bit for bit (distinct values stay distinct)."""
    a = to_numpy(x, name)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype == np.uint64:
        a = a.view(np.int64)
    elif a.dtype != np.int64:
        if a.size == 0 and a.dtype == np.float64:  # np.asarray([]) is float64
            a = a.astype(np.int64)
        else:
            integer_dtype(np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_, a.dtype, name)
        a = a.astype(np.int64)
    return np.ascontiguousarray(a)


def finite(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` (float32, already converted) unchanged if every element is
    finite; else ValueError naming ``name`` and the first bad position. One
    vectorised pass: a NaN or inf weight would otherwise reach the rows (a
    0 * inf or inf - inf in the kernel gives NaN)."""
    if a.size and not np.isfinite(a).all():
        i = int(np.flatnonzero(~np.isfinite(a.reshape(-1)))[0])
        raise ValueError(f"{name} must be finite (after conversion to float32), got {a.reshape(-1)[i]} "
                         f"at flat position {i}")
    return a


def no_overlap(out: np.ndarray, name: str, **inputs) -> None:
    """Raises ValueError when ``out`` overlaps the memory of one of ``inputs``
    (name=array; None entries skipped): the kernel would read keys / weights
    it has already overwritten with rows.

    ``np.may_share_memory`` compares the arrays' address ranges only: O(1)
    whatever the sizes. ``np.shares_memory`` solves the exact problem, which
    can take time exponential in the number of dimensions for strided views.
    The bound check is exact here: ``out`` and every input reaching this
    point are C-contiguous, so each occupies exactly its address range."""
    for arg, a in inputs.items():
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(f"{name} must not overlap the memory of {arg}: the result would overwrite "
                             f"{arg} while it is read; pass a separate array")


def floats(x, name: str, shape: tuple) -> np.ndarray:
    """float32, C-contiguous, of exactly `shape`. Other float dtypes are converted."""
    a = to_numpy(x, name)
    if a.dtype != np.float32:
        float_dtype(np.issubdtype(a.dtype, np.floating), a.dtype, name)
        a = a.astype(np.float32)
    shape_is(a.shape, shape, name)
    return np.ascontiguousarray(a)


#: Versions are non-negative int64: [0, 2**63). The native side stores them
#: as uint64, but the table's counter starts at 0 and grows by one per change,
#: so 2**63 is never reached, and keeping the top bit clear keeps every
#: version exact in an int64 array (NumPy, torch) and away from the uint64
#: wrap-around (-1 would become 2**64 - 1, "newer than everything").
VERSION_LIMIT = 1 << 63


def version(x, name: str) -> int:
    """An integer version in [0, 2**63); bool, float (1.7), None, str rejected."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name} must be an int in [0, 2**63), got {type(x).__name__} {x!r}")
    if not 0 <= int(x) < VERSION_LIMIT:
        raise ValueError(f"{name} must be an int in [0, 2**63), got {int(x)}")
    return int(x)


def versions(x, name: str, n: int) -> np.ndarray:
    """(n,) integer versions in [0, 2**63) as a C-contiguous uint64 array."""
    a = to_numpy(x, name)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        if not (a.size == 0 and a.dtype == np.float64):  # np.asarray([]) is float64
            raise TypeError(f"{name} must hold integers in [0, 2**63), got dtype {a.dtype}")
        a = a.astype(np.int64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if a.size:
        lo, hi = a.min(), a.max()
        if (np.issubdtype(a.dtype, np.signedinteger) and lo < 0) or int(hi) >= VERSION_LIMIT:
            bad = lo if np.issubdtype(a.dtype, np.signedinteger) and lo < 0 else hi
            raise ValueError(f"{name} must lie in [0, 2**63), got {int(bad)}")
    return np.ascontiguousarray(a, dtype=np.uint64)


def path(p, name: str) -> str:
    """``os.fspath(p)``, refusing what the native side would misread: a
    non-path type, and a NUL byte (C strings end there: "a\\0b" would open "a")."""
    import os

    try:
        s = os.fspath(p)
    except TypeError:
        raise TypeError(f"{name} must be a str, bytes or os.PathLike path, got {type(p).__name__}") from None
    if isinstance(s, bytes):
        if b"\0" in s:
            raise ValueError(f"{name} must not contain a NUL byte, got {s!r}")
        s = os.fsdecode(s)
    if "\0" in s:
        raise ValueError(f"{name} must not contain a NUL byte, got {s!r}")
    return s


CACHE_LINE = 64


def _layout(shape, dtype) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape as a tuple, bytes) of an array to allocate."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    return dtype, shape, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def aligned_empty(shape, dtype=np.float32, align: int = CACHE_LINE) -> np.ndarray:
    """``np.empty`` whose data starts on an ``align``-byte boundary.

    NumPy only guarantees 16 bytes, so a 256-byte row of a fresh array starts
    at a random offset in its cache line and straddles five lines instead of
    four: 25% more memory traffic for every random row read or written, and
    a different amount from one allocation to the next."""
    dtype, shape, nbytes = _layout(shape, dtype)
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)


HUGE_PAGE = 2 << 20


def huge_empty(shape, dtype=np.float32) -> np.ndarray:
    """Like :func:`aligned_empty`, for large long-lived arrays: a fresh
    anonymous mapping, 2 MiB aligned and advised for transparent huge pages
    (as the table's own arena is). Memory reused from the heap keeps the
    pages it was first touched with, 4 KiB or 2 MiB, so an array placed there
    gets a mix that differs from one allocation to the next. Arrays under
    2 MiB come from :func:`aligned_empty`."""
    dtype, shape, nbytes = _layout(shape, dtype)
    if nbytes < HUGE_PAGE:
        return aligned_empty(shape, dtype)
    import mmap

    m = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(m, dtype=np.uint8)  # keeps the mapping alive; unmapped with the array
    start = -raw.ctypes.data % HUGE_PAGE
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE, start, nbytes - nbytes % HUGE_PAGE or HUGE_PAGE)
    body = raw[start : start + nbytes]
    # Fault the pages in now (after the advice, so they come as huge pages), not
    # in the first call that writes the array: that call is the benchmark's
    # calibration, and paying ~10 ms of faults there made fast subjects look slow.
    body.fill(0)
    return body.view(dtype).reshape(shape)


def huge_copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous, aligned copy of ``a`` in :func:`huge_empty` memory."""
    out = huge_empty(a.shape, a.dtype)
    out[...] = a
    return out


def out_array(out, name: str, shape: tuple, *, dtype=np.float32, **inputs) -> np.ndarray:
    """A fresh result array, or ``out`` checked: ``dtype`` (float32),
    ``shape``, C-contiguous, writeable and not overlapping any of ``inputs``
    (the call's already-converted input arrays, by argument name)."""
    if out is None:
        return aligned_empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        out = to_numpy(out, name)
    if out.dtype != dtype or out.shape != tuple(shape):
        raise ValueError(f"{name} must be a {np.dtype(dtype).name} array of shape {tuple(shape)}, "
                         f"got {out.dtype} {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable")
    no_overlap(out, name, **inputs)
    return out


def bags(values, offsets, include_last_offset: bool):
    """Normalises EmbeddingBag-style input. Returns (values, offsets, n_bags)."""
    v = to_numpy(values, "values")
    layout = bag_layout(v.shape, offsets is not None, include_last_offset)
    if layout is not None:
        n_bags, length = layout
        flat = keys_1d(v.reshape(-1), "values")
        # B bags of `length` keys each; with length 0, B empty bags (all
        # offsets 0), as torch.nn.EmbeddingBag reads a (B, 0) input.
        return flat, np.arange(n_bags, dtype=np.int64) * np.int64(length), n_bags
    v = keys_1d(v, "values")
    off = keys_1d(offsets, "offsets")
    n = v.shape[0]
    n_bags = bag_count(off.shape[0], include_last_offset)
    if off.shape[0]:
        if off[0] != 0:
            raise ValueError(offsets_message("first", off, n))
        if off.shape[0] > 1 and np.any(off[1:] < off[:-1]):
            raise ValueError(offsets_message("decreasing", off, n, int(np.argmax(off[1:] < off[:-1])) + 1))
        if off[-1] > n:
            raise ValueError(offsets_message("past_end", off, n))
        if include_last_offset and off[-1] != n:
            raise ValueError(offsets_message("last", off, n))
    elif n:
        raise ValueError(f"offsets is empty but values holds {n} keys")
    return v, off, n_bags


def bag_count(n_offsets: int, include_last_offset: bool) -> int:
    """Bags described by n_offsets offsets (EmbeddingBag's include_last_offset rule)."""
    if include_last_offset:
        if n_offsets < 1:
            raise ValueError("offsets must hold at least one entry with include_last_offset=True")
        return n_offsets - 1
    return n_offsets


def offsets_message(problem: str, off, n: int, i: int = 0) -> str:
    """The error for bad offsets, worded once for every backend. problem:
    "first" (offsets[0] != 0), "decreasing" (offsets[i] < offsets[i - 1]),
    "past_end" (offsets[-1] > n) or "last" (include_last_offset and offsets[-1] != n)."""
    if problem == "first":
        return f"offsets[0] must be 0, got {int(off[0])}"
    if problem == "decreasing":
        return f"offsets must be non-decreasing, but offsets[{i}]={int(off[i])} < offsets[{i - 1}]={int(off[i - 1])}"
    if problem == "past_end":
        return f"offsets[-1]={int(off[-1])} exceeds len(values)={n}"
    return f"with include_last_offset=True, offsets[-1] must equal len(values)={n}, got {int(off[-1])}"


def optimizer(opt, default):
    """The optimizer for an update: opt, else the table's default; checked."""
    from .optim import Optimizer

    o = opt if opt is not None else default
    if o is None:
        raise ValueError("optimizer: none given and the table has no default optimizer")
    if not isinstance(o, Optimizer):
        raise TypeError(f"optimizer must be an embedlookup.optim optimizer (SGD, Adagrad, Adam), "
                        f"got {type(o).__name__}")
    return o


def mode_id(mode) -> int:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    return MODES[mode]


def bag_weights(per_sample_weights, mode: str, n: int, values_shape=None):
    """``per_sample_weights`` checked as EmbeddingBag does: only with mode
    "sum", one float32 per value, shaped like ``values`` (1-D, or the 2-D
    shape of equal-length bags); None stays None."""
    if per_sample_weights is None:
        return None
    weights_mode(mode)
    w = to_numpy(per_sample_weights, "per_sample_weights")
    if values_shape is not None and len(values_shape) == 2 and w.shape == tuple(values_shape):
        w = w.reshape(-1)  # 2-D bags: one weight per value, in the same layout
    return finite(floats(w, "per_sample_weights", (n,)), "per_sample_weights")
