"""Fused sparse optimizers, applied in place to the rows a batch touches.

Names, hyperparameters and defaults follow ``torch.optim``; each step updates
only the rows present in the batch (duplicate keys merged first, exactly as a
dense gradient would sum them), which equals torch's dense optimizer on those
rows whenever the dense gradient of the other rows is zero and they carry no
momentum (SGD, Adagrad always; Adam as ``torch.optim.SparseAdam``-style lazy
updates). The step count used by lr_decay and Adam's bias correction is the
table's: one per ``apply_gradients`` call.

A table keeps one kind of optimizer state (created on the first update);
applying another kind raises ``ValueError``. Hyperparameters may change
between calls (learning-rate schedules): they are checked again at every
call that uses them (when the native spec is built, O(1)), so an invalid
value set as an attribute raises before any row changes.

Valid hyperparameters (the kernels compute in float32; FLT_MAX ~ 3.4e38,
FLT_MIN ~ 1.2e-38 is the smallest normal float32):

* ``lr``: finite, 0 <= lr <= FLT_MAX (0 freezes: schedules may decay to it).
* ``weight_decay``, ``lr_decay``, ``initial_accumulator_value``: finite, in [0, FLT_MAX].
* ``eps``: finite, FLT_MIN <= eps <= FLT_MAX (eps = 0 gives 0/0 = NaN on a zero gradient).
* ``betas``: each in [0, 1), and < 1 once rounded to float32.
* ``rowwise``: a bool.

A wrong type (``SGD(lr="a")``) raises ``TypeError`` naming the argument;
a value out of range raises ``ValueError`` naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _core

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam"]

_SGD, _ADAGRAD, _ROWWISE, _ADAM = 1, 2, 3, 4


#: Largest finite float32: the kernels compute in float32, so a larger
#: hyperparameter would become inf there.
FLT_MAX = float(np.finfo(np.float32).max)
#: Smallest normal float32: the floor for eps. A subnormal eps becomes 0
#: wherever denormals are flushed (x86 FTZ/DAZ modes, CUDA's -ftz), and
#: eps = 0 gives 0 / 0 = NaN rows after a zero gradient.
FLT_MIN = float(np.finfo(np.float32).tiny)


def _check(name: str, value, *, low: float = 0.0, strict: bool = False, high: float = FLT_MAX,
           high_open: bool = False) -> float:
    """``value`` as a float, checked: a real number (not bool, not str), finite
    and in the range, which never reaches past float32's finite range."""
    # Anything float() takes (ints, floats, NumPy / 0-d torch scalars) except
    # bools and strings ("1e-3" is a typo here, not a number).
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}") from None
    ok = math.isfinite(v) and (v > low if strict else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        rng = f"{'>' if strict else '>='} {low:g} and {'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{name} must be a finite number {rng}, got {value!r}")
    return v


def _beta(name: str, value) -> float:
    v = _check(name, value, high=1.0, high_open=True)
    if np.float32(v) >= 1.0:  # 0.99999999 rounds to 1.0 in float32: bias correction 1 - 1**t = 0
        raise ValueError(f"{name} must be < 1 in float32 (the kernels' precision), got {value!r}")
    return v


class Optimizer:
    """Base class: an optimizer is a bundle of hyperparameters; the state lives in the table."""

    kind: int = 0

    def _spec(self) -> _core.OptimSpec:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class SGD(Optimizer):
    """``w -= lr * (g + weight_decay * w)`` (torch.optim.SGD without momentum).

    ``lr`` in [0, FLT_MAX], ``weight_decay`` in [0, FLT_MAX], both finite;
    checked here and again at every call that applies the optimizer."""

    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self):
        self._checked()

    def _checked(self) -> tuple:
        self.lr = _check("lr", self.lr)
        self.weight_decay = _check("weight_decay", self.weight_decay)
        return self.lr, self.weight_decay

    def _spec(self):
        lr, wd = self._checked()
        return _core.OptimSpec(_SGD, lr, 0.0, 0.0, 0.0, wd, 0.0, 0.0)


@dataclass
class Adagrad(Optimizer):
    """torch.optim.Adagrad; ``rowwise=True`` keeps one accumulator per row
    (the mean of g**2 over the row, as FBGEMM's row-wise Adagrad) instead of
    one per element: 4 bytes of state per row instead of 4 x dim.

    ``lr``, ``lr_decay``, ``weight_decay``, ``initial_accumulator_value`` in
    [0, FLT_MAX]; ``eps`` in [FLT_MIN, FLT_MAX] (0 would give 0/0 = NaN rows
    after a zero gradient); all finite; checked here and at every call."""

    lr: float = 1e-2
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10
    rowwise: bool = False

    def __post_init__(self):
        self._checked()

    def _checked(self) -> tuple:
        self.lr = _check("lr", self.lr)
        self.lr_decay = _check("lr_decay", self.lr_decay)
        self.weight_decay = _check("weight_decay", self.weight_decay)
        self.initial_accumulator_value = _check("initial_accumulator_value", self.initial_accumulator_value)
        self.eps = _check("eps", self.eps, low=FLT_MIN)
        if not isinstance(self.rowwise, (bool, np.bool_)):
            raise TypeError(f"rowwise must be a bool, got {type(self.rowwise).__name__} {self.rowwise!r}")
        self.rowwise = bool(self.rowwise)
        return self.lr, self.eps, self.weight_decay, self.lr_decay, self.initial_accumulator_value

    def _spec(self):
        lr, eps, wd, lr_decay, acc0 = self._checked()
        kind = _ROWWISE if self.rowwise else _ADAGRAD
        return _core.OptimSpec(kind, lr, eps, 0.0, 0.0, wd, lr_decay, acc0)


@dataclass
class Adam(Optimizer):
    """torch.optim.Adam (L2 weight_decay, no amsgrad) with lazy sparse updates:
    only rows in the batch update their moments.

    ``lr``, ``weight_decay`` in [0, FLT_MAX]; ``betas`` each in [0, 1) (and
    < 1 in float32); ``eps`` in [FLT_MIN, FLT_MAX]; all finite; checked here
    and at every call."""

    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        self._checked()

    def _checked(self) -> tuple:
        self.lr = _check("lr", self.lr)
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        self.betas = (_beta("betas[0]", self.betas[0]), _beta("betas[1]", self.betas[1]))
        self.eps = _check("eps", self.eps, low=FLT_MIN)
        self.weight_decay = _check("weight_decay", self.weight_decay)
        return self.lr, self.betas, self.eps, self.weight_decay

    def _spec(self):
        lr, (b1, b2), eps, wd = self._checked()
        return _core.OptimSpec(_ADAM, lr, eps, b1, b2, wd, 0.0, 0.0)
