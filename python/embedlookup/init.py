"""Row initializers, deterministic per (seed, key, column).

The initial row of a key depends only on the initializer, its seed and the key:
not on insertion order, thread count or which call inserted it.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _core

__all__ = ["Initializer", "zeros", "constant", "uniform", "normal"]

_ZEROS, _UNIFORM, _NORMAL, _CONSTANT = 0, 1, 2, 3


@dataclass(frozen=True)
class Initializer:
    """How a table fills the row of a key it inserts. Build with the functions below."""

    kind: int
    a: float
    b: float
    seed: int

    def _spec(self) -> _core.InitSpec:
        return _core.InitSpec(self.kind, self.a, self.b, self.seed)


def _seed(seed: int) -> int:
    if not isinstance(seed, int) or seed < 0 or seed >= 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return seed


def zeros() -> Initializer:
    """Every new row is zeros."""
    return Initializer(_ZEROS, 0.0, 0.0, 0)


def constant(value: float) -> Initializer:
    """Every new row is filled with ``value``."""
    return Initializer(_CONSTANT, float(value), 0.0, 0)


def uniform(low: float = -0.01, high: float = 0.01, seed: int = 0) -> Initializer:
    """Elements drawn uniformly from [low, high)."""
    if not low < high:
        raise ValueError(f"uniform: need low < high, got low={low}, high={high}")
    return Initializer(_UNIFORM, float(low), float(high), _seed(seed))


def normal(mean: float = 0.0, std: float = 0.01, seed: int = 0) -> Initializer:
    """Elements drawn from N(mean, std**2) (Box-Muller on a counter-based hash)."""
    if not std > 0:
        raise ValueError(f"normal: std must be > 0, got {std}")
    return Initializer(_NORMAL, float(mean), float(std), _seed(seed))
