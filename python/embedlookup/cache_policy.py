"""The host-side policy of the HBM row cache (docs/gpu-cache.md).

A table larger than GPU memory keeps its rows in host memory and a fixed
number of hot rows in HBM slots. :class:`HbmCachePolicy` decides, per batch,
which keys get a slot (admission by the count-min sketch, as
:class:`~embedlookup.FrequencyTable` admits rows), which resident it replaces
(the lowest decayed score), and which evicted slots must be written back to
host memory first because a training step changed them. It runs in the CPU
module, so it is the same code with or without a GPU.

A plan is a dict of NumPy arrays, to be carried out in this order:

* ``writeback_slots`` / ``writeback_keys``: copy each slot to its key's host row;
* ``fill_slots`` / ``fill_keys``: copy each key's host row into its slot;
* ``slot_of``: per position of the batch, its slot, or -1 (read the host row).

``evict_slots`` / ``evict_keys`` list every eviction, ``hits`` / ``misses``
count positions found / not found in a slot before the plan. The slots a plan
uses stay pinned (never evicted) until :meth:`release`, so a prefetched plan
cannot take rows from the batch still in flight.
"""

from __future__ import annotations

import math

import numpy as np

from . import _checks, _core

__all__ = ["HbmCachePolicy", "HostRowIndex"]


class HbmCachePolicy:
    """Slot allocator and slot map of an HBM cache of ``slots`` rows.

    ``half_life``: plan steps after which a slot's score halves (as
    FrequencyTable's ``half_life``); ``admit_count``: sketch sightings a key
    needs before it may take a slot; ``sketch_width`` (a power of two) and
    ``sketch_depth`` size the count-min sketch.
    """

    def __init__(self, slots: int, *, half_life: float = 1000.0, admit_count: int = 1,
                 sketch_width: int = 1 << 20, sketch_depth: int = 4):
        for name, v, lo in (("slots", slots, 1), ("admit_count", admit_count, 1), ("sketch_width", sketch_width, 1),
                            ("sketch_depth", sketch_depth, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if slots > 2**31 - 1:
            raise ValueError(f"slots must be at most 2**31 - 1, got {slots}")
        if sketch_width & (sketch_width - 1):
            raise ValueError(f"sketch_width must be a power of two, got {sketch_width}")
        if not isinstance(half_life, (int, float, np.integer, np.floating)) or not math.isfinite(half_life) \
                or half_life <= 0:
            raise ValueError(f"half_life must be a finite number > 0, got {half_life!r}")
        o = _core.CachePolicyOptions()
        o.slots, o.half_life, o.admit_count = int(slots), float(half_life), int(admit_count)
        o.sketch_width, o.sketch_depth = int(sketch_width), int(sketch_depth)
        self._p = _core.HbmCachePolicy(o)

    def plan(self, keys, *, write: bool = False) -> dict:
        """Plans one batch (one clock step); ``write``: the batch's rows will be
        updated, so its slots become dirty. Pins its slots until :meth:`release`."""
        k = _checks.keys_1d(keys, "keys")
        return self._p.plan(k, bool(write))

    def release(self) -> None:
        """Unpins the oldest plan not yet released."""
        if self._p.pending == 0:
            raise RuntimeError("release: no planned batch is pending")
        self._p.release()

    def mark_dirty(self, keys) -> None:
        """Marks the slots of ``keys`` (those that have one) as changed."""
        self._p.mark_dirty(_checks.keys_1d(keys, "keys"))

    def take_dirty(self) -> tuple[np.ndarray, np.ndarray]:
        """(slots, keys) of every dirty slot, in slot order; they are clean afterwards."""
        return self._p.take_dirty()

    def slot_of(self, key: int) -> int:
        """The slot of ``key``, or -1."""
        return self._p.slot_of(int(key))

    def estimate(self, key: int) -> int:
        """The sketch's count of ``key``'s sightings without a slot."""
        return self._p.estimate(int(key))

    def resident(self) -> dict:
        """{key: slot} of every occupied slot (for tests and tools)."""
        return {self._p.key_of(s): s for s in range(self._p.slots) if self._p.key_of(s) != np.iinfo(np.int64).min}

    def dirty(self, slot: int) -> bool:
        if not 0 <= slot < self._p.slots:
            raise IndexError(f"slot must be in [0, {self._p.slots}), got {slot}")
        return self._p.dirty(int(slot))

    slots = property(lambda self: self._p.slots, doc="HBM slots")
    used = property(lambda self: self._p.used, doc="occupied slots")
    clock = property(lambda self: self._p.clock, doc="plans made")
    pending = property(lambda self: self._p.pending, doc="plans not yet released")


class HostRowIndex:
    """Key -> row id of rows held in host memory; new keys get the next id."""

    def __init__(self):
        self._h = _core.HostRowIndex()

    def resolve(self, keys, *, insert: bool = True) -> np.ndarray:
        """Row ids of ``keys`` (int64); absent keys get new ids when ``insert``, else -1."""
        return self._h.resolve(_checks.keys_1d(keys, "keys"), bool(insert))

    def keys(self) -> np.ndarray:
        """Every key, in row-id order."""
        return self._h.keys()

    def __len__(self) -> int:
        return self._h.size
