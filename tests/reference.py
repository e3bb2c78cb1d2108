"""The NumPy oracle: slow, obviously-correct reimplementations used only by tests.

This is the one place a second implementation of the kernels is allowed
(DESIGN.md): every native result is compared against these.
"""

from __future__ import annotations

import numpy as np

M64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def hash_key(keys: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix64(keys.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15))


def counter_uniform(seed: int, keys: np.ndarray, dim: int) -> np.ndarray:
    """(n, dim) uniforms in [0, 1), the same counter hash as initializer.h."""
    s = _mix64(np.array([seed ^ 0x5851F42D4C957F2D], dtype=np.uint64))[0]
    hk = hash_key(np.asarray(keys))[:, None]
    j = np.arange(dim, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        h = _mix64(s ^ hk ^ (j * np.uint64(0xD1342543DE82EF95)))
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def init_uniform(keys, dim, low, high, seed):
    u = counter_uniform(seed, np.asarray(keys, dtype=np.int64), dim)
    return np.float32(low) + np.float32(high - low) * u


def pooled(rows: np.ndarray, offsets: np.ndarray, mode: str, weights=None, include_last_offset=False):
    """EmbeddingBag over already-gathered rows (n, dim) with torch's offsets."""
    n, dim = rows.shape
    offsets = np.asarray(offsets, dtype=np.int64)
    ends = list(offsets[1:]) + ([] if include_last_offset else [n])
    starts = offsets[:-1] if include_last_offset else offsets
    out = np.zeros((len(starts), dim), dtype=np.float64)
    for b, (s, e) in enumerate(zip(starts, ends)):
        if e <= s:
            continue
        r = rows[s:e].astype(np.float64)
        if mode == "sum":
            w = np.ones(e - s) if weights is None else np.asarray(weights, np.float64)[s:e]
            out[b] = (r * w[:, None]).sum(0)
        elif mode == "mean":
            out[b] = r.mean(0)
        else:
            out[b] = r.max(0)
    return out.astype(np.float32)


def merge_grads(keys, grads):
    """Distinct keys (first-occurrence order) and their summed gradients."""
    keys = np.asarray(keys)
    uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    summed = np.zeros((len(uniq), grads.shape[1]), dtype=np.float64)
    np.add.at(summed, inv, grads.astype(np.float64))
    order = np.argsort(first)
    return uniq[order], summed[order]


class RefOptimizer:
    """Per-row state machine mirroring embedlookup.optim on a dict of rows."""

    def __init__(self, kind: str, **hp):
        self.kind, self.hp, self.state, self.step = kind, hp, {}, 0

    def apply(self, table: dict, keys, grads):
        self.step += 1
        hp, t = self.hp, self.step
        for k, g in zip(*merge_grads(keys, grads)):
            w = table[k].astype(np.float64)
            g = g + hp.get("weight_decay", 0.0) * w
            if self.kind == "sgd":
                w = w - hp["lr"] * g
            elif self.kind == "adagrad":
                s = self.state.get(k, np.full_like(w, hp.get("initial_accumulator_value", 0.0))) + g * g
                self.state[k] = s
                clr = hp["lr"] / (1 + (t - 1) * hp.get("lr_decay", 0.0))
                w = w - clr * g / (np.sqrt(s) + hp["eps"])
            elif self.kind == "rowwise_adagrad":
                s = self.state.get(k, hp.get("initial_accumulator_value", 0.0)) + float(np.mean(g * g))
                self.state[k] = s
                clr = hp["lr"] / (1 + (t - 1) * hp.get("lr_decay", 0.0))
                w = w - clr * g / (np.sqrt(s) + hp["eps"])
            elif self.kind == "adam":
                b1, b2 = hp["betas"]
                m, v = self.state.get(k, (np.zeros_like(w), np.zeros_like(w)))
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                self.state[k] = (m, v)
                denom = np.sqrt(v) / np.sqrt(1 - b2**t) + hp["eps"]
                w = w - hp["lr"] / (1 - b1**t) * m / denom
            table[k] = w.astype(np.float32)


# ----------------------------------------------------------- compressed rows
# The row layouts of docs (storage types), restated row by row with NumPy's own
# float16 and plain integer arithmetic. Each returns / takes one uint8 row of
# row_bytes(kind, dim) bytes per table row.
ROW_KINDS = ("fp32", "fp16", "bf16", "int8", "int4")


def _pad4(n: int) -> int:
    return (n + 3) // 4 * 4


def row_bytes(kind: str, dim: int) -> int:
    if kind == "fp32":
        return 4 * dim
    if kind in ("fp16", "bf16"):
        return _pad4(2 * dim)
    if kind == "int8":
        return _pad4(dim) + 8
    if kind == "int4":
        assert dim % 2 == 0
        return _pad4(dim // 2) + 8
    raise ValueError(kind)


def _bf16_rne(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    lsb = (u >> np.uint64(16)) & np.uint64(1)
    return ((u + np.uint64(0x7FFF) + lsb) >> np.uint64(16)).astype(np.uint16)


def quantize_rows(x: np.ndarray, kind: str) -> np.ndarray:
    """fp32 rows (n, dim) -> raw rows (n, row_bytes) of ``kind``."""
    x = np.asarray(x, np.float32)
    n, dim = x.shape
    out = np.zeros((n, row_bytes(kind, dim)), np.uint8)
    for r in range(n):
        row = x[r]
        if kind == "fp32":
            out[r] = np.frombuffer(row.tobytes(), np.uint8)
        elif kind == "fp16":
            out[r, : 2 * dim] = np.frombuffer(row.astype(np.float16).tobytes(), np.uint8)
        elif kind == "bf16":
            out[r, : 2 * dim] = np.frombuffer(_bf16_rne(row).tobytes(), np.uint8)
        else:
            levels = 255 if kind == "int8" else 15
            lo, hi = np.float32(row.min()), np.float32(row.max())
            scale = np.float32((hi - lo) / np.float32(levels)) if hi > lo else np.float32(0)
            if scale > 0:
                codes = np.clip(np.rint((row - lo) / scale), 0, levels).astype(np.uint8)
            else:
                codes = np.zeros(dim, np.uint8)
            if kind == "int8":
                out[r, :dim] = codes
                tail = _pad4(dim)
            else:
                out[r, : dim // 2] = codes[0::2] | (codes[1::2] << 4)
                tail = _pad4(dim // 2)
            out[r, tail : tail + 8] = np.frombuffer(np.array([scale, lo], np.float32).tobytes(), np.uint8)
    return out


def dequantize_rows(raw: np.ndarray, kind: str, dim: int) -> np.ndarray:
    """Raw rows (n, row_bytes) of ``kind`` -> fp32 rows (n, dim)."""
    raw = np.asarray(raw, np.uint8)
    n = raw.shape[0]
    out = np.zeros((n, dim), np.float32)
    for r in range(n):
        b = raw[r].tobytes()
        if kind == "fp32":
            out[r] = np.frombuffer(b[: 4 * dim], np.float32)
        elif kind == "fp16":
            out[r] = np.frombuffer(b[: 2 * dim], np.float16).astype(np.float32)
        elif kind == "bf16":
            bits = np.frombuffer(b[: 2 * dim], np.uint16).astype(np.uint32) << np.uint32(16)
            out[r] = bits.view(np.float32)
        else:
            if kind == "int8":
                codes = np.frombuffer(b[:dim], np.uint8)
                tail = _pad4(dim)
            else:
                packed = np.frombuffer(b[: dim // 2], np.uint8)
                codes = np.empty(dim, np.uint8)
                codes[0::2], codes[1::2] = packed & 0x0F, packed >> 4
                tail = _pad4(dim // 2)
            scale, bias = np.frombuffer(b[tail : tail + 8], np.float32)
            out[r] = codes.astype(np.float32) * scale + bias
    return out
