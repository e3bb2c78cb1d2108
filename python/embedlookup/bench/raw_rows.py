"""Synthetic rows in a storage type for the backends' benchmarks."""

from __future__ import annotations

import numpy as np

from .. import _row_layout


def synthetic_raw_rows(kind: str, rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """(rows, row_bytes) uint8 random rows in the layout of ``kind`` whose values
    are finite (fp16 / bf16 exponents kept modest; int8 / int4 scale 0.01, bias
    -0.5): for timing lookups, where the values do not matter."""
    rb = _row_layout.row_bytes(kind, dim)
    g = np.random.default_rng(seed)
    raw = g.integers(0, 256, (rows, rb), dtype=np.uint8)
    if kind == "fp32":
        raw = g.standard_normal((rows, dim), dtype=np.float32).view(np.uint8)
    elif kind in ("fp16", "bf16"):
        raw[:, 1::2] &= 0x3F  # high bytes: finite, modest exponents
    else:
        sb = np.array([0.01, -0.5], np.float32).view(np.uint8)
        raw[:, rb - 8:] = sb
    return np.ascontiguousarray(raw)
