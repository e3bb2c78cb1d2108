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
        elif not np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
            raise TypeError(f"{name} must hold integers (int64 preferred), got dtype {a.dtype}")
        a = a.astype(np.int64)
    return np.ascontiguousarray(a)


def floats(x, name: str, shape: tuple) -> np.ndarray:
    """float32, C-contiguous, of exactly `shape`. Other float dtypes are converted."""
    a = to_numpy(x, name)
    if a.dtype != np.float32:
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{name} must hold floating-point values (float32 preferred), got dtype {a.dtype}")
        a = a.astype(np.float32)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return np.ascontiguousarray(a)


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


def out_array(out, name: str, shape: tuple) -> np.ndarray:
    if out is None:
        return aligned_empty(shape, np.float32)
    if not isinstance(out, np.ndarray):
        out = to_numpy(out, name)
    if out.dtype != np.float32 or out.shape != tuple(shape):
        raise ValueError(f"{name} must be a float32 array of shape {tuple(shape)}, got {out.dtype} {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable")
    return out


def bags(values, offsets, include_last_offset: bool):
    """Normalises EmbeddingBag-style input. Returns (values, offsets, n_bags)."""
    v = to_numpy(values, "values")
    if v.ndim == 2 and offsets is None:
        if include_last_offset:
            raise ValueError("include_last_offset needs offsets; 2-D values take none")
        n_bags, length = v.shape
        flat = keys_1d(v.reshape(-1), "values")
        return flat, np.arange(0, n_bags * length, max(length, 1), dtype=np.int64)[:n_bags], n_bags
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D with offsets (or 2-D without), got shape {v.shape}")
    if offsets is None:
        raise ValueError("offsets are required when values is 1-D")
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


def bag_weights(per_sample_weights, mode: str, n: int):
    """``per_sample_weights`` checked as EmbeddingBag does: only with mode
    "sum", one float32 per value; None stays None."""
    if per_sample_weights is None:
        return None
    if mode != "sum":
        raise ValueError(f"per_sample_weights are only supported with mode='sum', got mode={mode!r}")
    return floats(per_sample_weights, "per_sample_weights", (n,))
