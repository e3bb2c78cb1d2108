"""Storage types of embedding rows as the device backends see them: names,
the kernels' kind ids and bytes per row.

The layouts (little-endian, every row padded to a multiple of 4 bytes):

- ``fp32``: ``dim`` float32.
- ``fp16`` / ``bf16``: ``dim`` IEEE binary16 / bfloat16 values.
- ``int8``: ``dim`` uint8 codes, zero padding, float32 ``scale``, float32 ``bias``;
  value = ``scale * code + bias``.
- ``int4`` (even ``dim``): ``dim / 2`` bytes, element ``2i`` in the low nibble and
  ``2i + 1`` in the high nibble of byte ``i``, padding, ``scale``, ``bias``.

The OpenCL, CUDA and HLS kernels take rows in these layouts as raw bytes
``(n, row_bytes(kind, dim))`` uint8 (``quantize.quantize_rows`` or a table's
``export_raw()`` make them) and decode them where they read them.
"""

from __future__ import annotations

import numpy as np

from . import quantize as _quantize

ROW_KINDS = _quantize.ROW_TYPES
# The kernels' ids (EL_ROW_KIND in the OpenCL sources, RowKind in the CUDA
# ones): the engine's row-type ids (quantize.row_type_id), i.e. the index in ROW_KINDS.
KIND_IDS = {k: i for i, k in enumerate(ROW_KINDS)}


def check_kind(kind, dim: int, name: str = "kind") -> str:
    """``kind`` if it is a known storage type that ``dim`` allows, else ValueError."""
    if kind not in KIND_IDS:
        raise ValueError(f"{name} must be one of {list(ROW_KINDS)}, got {kind!r}")
    if kind == "int4" and dim % 2:
        raise ValueError(f"{name}='int4' needs an even dim (two elements per byte), got dim {dim}")
    return kind


def row_bytes(kind: str, dim: int) -> int:
    """Bytes of one row of ``dim`` elements stored as ``kind`` (the engine's
    ``quantize.row_bytes``)."""
    return _quantize.row_bytes(check_kind(kind, dim), dim)


def raw_rows(rows, kind: str, dim: int, name: str = "rows") -> np.ndarray:
    """Validated C-contiguous raw rows (n, row_bytes) uint8 of ``kind``.

    fp32 rows may also come as float32 (n, dim). Anything else: ValueError /
    TypeError naming ``name`` and the expected shape.
    """
    check_kind(kind, dim)
    rb = row_bytes(kind, dim)
    a = np.asarray(rows)
    if kind == "fp32" and a.dtype == np.float32:
        if a.ndim != 2 or a.shape[1] != dim:
            raise ValueError(f"{name}: expected float32 rows of shape (n, {dim}), got {a.shape}")
        return np.ascontiguousarray(a).view(np.uint8).reshape(a.shape[0], rb)
    if a.dtype != np.uint8:
        raise TypeError(f"{name}: expected raw {kind} rows as uint8 (n, {rb}), got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] != rb:
        raise ValueError(f"{name}: expected raw {kind} rows of shape (n, {rb}) for dim {dim}, got {a.shape}")
    return np.ascontiguousarray(a)
