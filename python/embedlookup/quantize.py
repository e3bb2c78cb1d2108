"""Compressed row storage types: the codecs, on the host.

A table's ``row_type`` is how it stores each row (docs/compressed.md states
the layouts, the rounding and the error bounds):

- ``"fp32"``: ``dim`` float32 (the default);
- ``"fp16"`` / ``"bf16"``: ``dim`` half / bfloat16 values, round to nearest even;
- ``"int8"`` / ``"int4"``: row-wise asymmetric codes with a float32 scale and
  bias per row (``value = scale * code + bias``).

Values are always returned as float32. These functions run the same native
codec (``native/include/embedlookup/row_codec.h``) that tables and kernels
use, so raw rows from :func:`quantize_rows` and from a table's
``export_raw()`` are interchangeable, byte for byte, and are what the
CUDA/OpenCL/HLS backends take.
"""

from __future__ import annotations

import numpy as np

from . import _core

__all__ = ["ROW_TYPES", "row_type_id", "row_bytes", "quantize_rows", "dequantize_rows"]

ROW_TYPES = ("fp32", "fp16", "bf16", "int8", "int4")


def row_type_id(row_type, name: str = "row_type") -> int:
    """The native id of a row type name (``ValueError`` naming ``name`` otherwise)."""
    if not isinstance(row_type, str) or row_type not in ROW_TYPES:
        raise ValueError(f"{name} must be one of {', '.join(ROW_TYPES)}, got {row_type!r}")
    return ROW_TYPES.index(row_type)


def _dim(dim, row_type: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if row_type == "int4" and dim % 2:
        raise ValueError(f"row_type 'int4' packs two elements per byte: dim must be even, got {dim}")
    return int(dim)


def row_bytes(row_type: str, dim: int) -> int:
    """Bytes of one stored row of ``row_type`` and ``dim`` (a multiple of 4)."""
    t = row_type_id(row_type)
    return int(_core.row_bytes(t, _dim(dim, row_type)))


def quantize_rows(x, row_type: str) -> np.ndarray:
    """float32 rows ``(n, dim)`` -> raw rows ``(n, row_bytes)`` uint8, rounding
    to nearest even. A value out of the type's range (fp16: ``|x| >= 65520``;
    bf16: past ~3.39e38; int8/int4: ``max - min`` not finite in float32) or a
    non-finite value raises ``ValueError``."""
    t = row_type_id(row_type)
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"x must be 2-D (n, dim), got shape {a.shape}")
    n, dim = a.shape
    _dim(dim, row_type)
    if not np.isfinite(a).all():
        raise ValueError("x holds NaN or inf; only finite rows can be stored")
    out = np.empty((n, row_bytes(row_type, dim)), dtype=np.uint8)
    _core.quantize_rows(a, t, n, dim, out)
    return out


def dequantize_rows(raw, row_type: str, dim: int) -> np.ndarray:
    """Raw rows ``(n, row_bytes(row_type, dim))`` uint8 -> float32 ``(n, dim)``."""
    t = row_type_id(row_type)
    dim = _dim(dim, row_type)
    r = np.ascontiguousarray(raw)
    if r.dtype != np.uint8:
        raise TypeError(f"raw must be uint8, got dtype {r.dtype}")
    rb = row_bytes(row_type, dim)
    if r.ndim != 2 or r.shape[1] != rb:
        raise ValueError(f"raw must have shape (n, {rb}) for row_type {row_type!r} and dim {dim}, got {r.shape}")
    out = np.empty((r.shape[0], dim), dtype=np.float32)
    _core.dequantize_rows(r, t, r.shape[0], dim, out)
    return out
