"""Row initializers, deterministic per (seed, key, column).

The initial row of a key depends only on the initializer, its seed and the key:
not on insertion order, thread count or which call inserted it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return int(seed)


#: Largest finite float32: rows are float32, computed in float32.
FLT_MAX = float(np.finfo(np.float32).max)
#: Largest |z| the normal initializer draws: Box-Muller's radius
#: sqrt(-2 ln u1) with u1 >= 2**-25 (initializer.h) is at most 5.9.
_NORMAL_MAX_Z = 6.0


def _real(name: str, fn: str, value) -> float:
    """``value`` as a float that is finite in float32, else TypeError / ValueError naming it."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(value).__name__} {value!r}") from None
    if not (math.isfinite(v) and abs(v) <= FLT_MAX):
        raise ValueError(f"{fn}: {name} must be finite in float32 (|{name}| <= {FLT_MAX:.7g}), got {value!r}")
    return v


def zeros() -> Initializer:
    """Every new row is zeros."""
    return Initializer(_ZEROS, 0.0, 0.0, 0)


def constant(value: float) -> Initializer:
    """Every new row is filled with ``value`` (finite in float32)."""
    return Initializer(_CONSTANT, _real("value", "constant", value), 0.0, 0)


def uniform(low: float = -0.01, high: float = 0.01, seed: int = 0) -> Initializer:
    """Elements drawn uniformly from [low, high). ``low < high``, both finite,
    and ``high - low`` finite in float32 (the kernel computes
    ``low + (high - low) * u`` in float32)."""
    lo, hi = _real("low", "uniform", low), _real("high", "uniform", high)
    if not lo < hi:
        raise ValueError(f"uniform: need low < high, got low={low}, high={high}")
    if float(np.float32(hi)) - float(np.float32(lo)) > FLT_MAX:
        raise ValueError(f"uniform: high - low must be finite in float32 (<= {FLT_MAX:.7g}), "
                         f"got low={low}, high={high}")
    return Initializer(_UNIFORM, lo, hi, _seed(seed))


def normal(mean: float = 0.0, std: float = 0.01, seed: int = 0) -> Initializer:
    """Elements drawn from N(mean, std**2) (Box-Muller on a counter-based hash).
    ``mean`` finite, ``std > 0`` finite, and ``|mean| + 6 * std`` finite in
    float32 (the draws lie within 6 std of the mean)."""
    m, sd = _real("mean", "normal", mean), _real("std", "normal", std)
    if not sd > 0:
        raise ValueError(f"normal: std must be > 0, got {std}")
    if abs(m) + _NORMAL_MAX_Z * sd > FLT_MAX:
        raise ValueError(f"normal: |mean| + 6 * std must be finite in float32 (<= {FLT_MAX:.7g}), "
                         f"got mean={mean}, std={std}")
    return Initializer(_NORMAL, m, sd, _seed(seed))


def check(init: Initializer, name: str = "initializer") -> Initializer:
    """``init`` rebuilt through the constructors above, so that its
    parameters are checked (for initializers read from files); ValueError
    naming ``name`` otherwise."""
    try:
        if init.kind == _ZEROS:
            return init
        if init.kind == _CONSTANT:
            constant(init.a)
        elif init.kind == _UNIFORM:
            uniform(init.a, init.b, init.seed)
        elif init.kind == _NORMAL:
            normal(init.a, init.b, init.seed)
        else:
            raise ValueError(f"unknown initializer kind {init.kind}")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from None
    return init
