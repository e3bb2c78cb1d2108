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
between calls (learning-rate schedules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import _core

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam"]

_SGD, _ADAGRAD, _ROWWISE, _ADAM = 1, 2, 3, 4


def _check(name: str, value: float, *, low: float = 0.0, strict: bool = False, high: float | None = None) -> float:
    v = float(value)
    bad = not math.isfinite(v) or (v <= low if strict else v < low) or (high is not None and v >= high)
    if bad:
        rng = f"{'>' if strict else '>='} {low}" + (f" and < {high}" if high is not None else "")
        raise ValueError(f"{name} must be a finite number {rng}, got {value!r}")
    return v


class Optimizer:
    """Base class: an optimizer is a bundle of hyperparameters; the state lives in the table."""

    kind: int = 0

    def _spec(self) -> _core.OptimSpec:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class SGD(Optimizer):
    """``w -= lr * (g + weight_decay * w)`` (torch.optim.SGD without momentum)."""

    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self):
        self.lr = _check("lr", self.lr)
        self.weight_decay = _check("weight_decay", self.weight_decay)

    def _spec(self):
        return _core.OptimSpec(_SGD, self.lr, 0.0, 0.0, 0.0, self.weight_decay, 0.0, 0.0)


@dataclass
class Adagrad(Optimizer):
    """torch.optim.Adagrad; ``rowwise=True`` keeps one accumulator per row
    (the mean of g**2 over the row, as FBGEMM's row-wise Adagrad) instead of
    one per element: 4 bytes of state per row instead of 4 x dim."""

    lr: float = 1e-2
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10
    rowwise: bool = False

    def __post_init__(self):
        self.lr = _check("lr", self.lr)
        self.lr_decay = _check("lr_decay", self.lr_decay)
        self.weight_decay = _check("weight_decay", self.weight_decay)
        self.initial_accumulator_value = _check("initial_accumulator_value", self.initial_accumulator_value)
        self.eps = _check("eps", self.eps)

    def _spec(self):
        kind = _ROWWISE if self.rowwise else _ADAGRAD
        return _core.OptimSpec(
            kind, self.lr, self.eps, 0.0, 0.0, self.weight_decay, self.lr_decay, self.initial_accumulator_value
        )


@dataclass
class Adam(Optimizer):
    """torch.optim.Adam (L2 weight_decay, no amsgrad) with lazy sparse updates:
    only rows in the batch update their moments."""

    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        self.lr = _check("lr", self.lr)
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        self.betas = (
            _check("betas[0]", self.betas[0], high=1.0),
            _check("betas[1]", self.betas[1], high=1.0),
        )
        self.eps = _check("eps", self.eps)
        self.weight_decay = _check("weight_decay", self.weight_decay)

    def _spec(self):
        b1, b2 = self.betas
        return _core.OptimSpec(_ADAM, self.lr, self.eps, b1, b2, self.weight_decay, 0.0, 0.0)
