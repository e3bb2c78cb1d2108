"""CachedCudaTable: a CUDA table larger than GPU memory (docs/gpu-cache.md).

Rows and optimizer state live in pinned host memory that the GPU reads and
writes in place over the bus (zero-copy: with unified addressing a pinned
buffer's address is valid on the device). ``hbm_rows`` of them, the hot ones,
also sit in HBM slots. Per batch, the host-side :class:`~embedlookup.
cache_policy.HbmCachePolicy` (count-min sketch admission, lowest decayed score
evicted, as the CPU FrequencyTable) makes a plan; on the table's stream the
evicted dirty slots are written back to their host rows, the admitted rows
are copied into their slots, and the kernel reads each position from its slot
or its host row. Keys come from host memory (the policy runs on the host);
results are CUDA tensors. New keys get their rows from the CPU engine's
initializer, so values equal the CPU EmbeddingTable's bit for bit where the
arithmetic is exact.

Designed but not built here: the prefetch of the next batch's misses on a
second stream (the policy's pins already support planning a batch ahead),
the device-side key -> slot map (the plan is made on the host), and
measurements (no GPU was lent to the session that wrote this).
"""

from __future__ import annotations

import numpy as np

from . import _checks, _core
from . import init as _init
from . import optim as _optim
from .cache_policy import HbmCachePolicy, HostRowIndex

__all__ = ["CachedCudaTable"]


def _state_layout(opt, dim: int) -> tuple[int, float]:
    """(optimizer-state floats per row, their initial value) for ``opt``."""
    if isinstance(opt, _optim.SGD):
        return 0, 0.0
    if isinstance(opt, _optim.Adagrad):
        return (1 if opt.rowwise else dim), float(opt.initial_accumulator_value)
    if isinstance(opt, _optim.Adam):
        return 2 * dim, 0.0
    raise TypeError(f"optimizer must be an embedlookup.optim SGD, Adagrad or Adam, got {type(opt).__name__}")


class CachedCudaTable:
    """Rows in host memory (``host_rows`` at most), the hot ``hbm_rows`` in HBM.

    ``optimizer`` fixes the optimizer-state layout (every
    :meth:`apply_gradients` uses it). ``half_life``, ``admit_count``,
    ``sketch_width`` and ``sketch_depth`` are the cache policy's
    (:class:`~embedlookup.cache_policy.HbmCachePolicy`).
    """

    def __init__(self, dim: int, *, hbm_rows: int, host_rows: int, initializer: _init.Initializer | None = None,
                 optimizer: _optim.Optimizer | None = None, device=None, half_life: float = 1000.0,
                 admit_count: int = 1, sketch_width: int = 1 << 20, sketch_depth: int = 4):
        for name, v in (("dim", dim), ("hbm_rows", hbm_rows), ("host_rows", host_rows)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if initializer is not None:
            _init.check(initializer)
        opt = optimizer if optimizer is not None else _optim.SGD(lr=0.01)
        n_state, state_init = _state_layout(opt, int(dim))
        self._policy = HbmCachePolicy(int(hbm_rows), half_life=half_life, admit_count=admit_count,
                                      sketch_width=sketch_width, sketch_depth=sketch_depth)
        torch, self._device, pin = self._open_device(device)  # after every argument check
        self._torch = torch
        self._dim, self._opt, self._step = int(dim), opt, 0
        self._init_table = _init_source(int(dim), initializer)
        self._index = HostRowIndex()
        self._host_cap = int(host_rows)
        self._host = torch.zeros((host_rows, dim), dtype=torch.float32, pin_memory=pin)
        self._host_state = (torch.full((host_rows, n_state), state_init, dtype=torch.float32, pin_memory=pin)
                            if n_state else None)
        self._hbm = torch.zeros((hbm_rows, dim), dtype=torch.float32, device=self._device)
        self._hbm_state = (torch.zeros((hbm_rows, n_state), dtype=torch.float32, device=self._device)
                           if n_state else None)
        self._n_state = n_state
        self.hits = self.misses = 0

    # ------------------------------------------------------------- internals
    # The device hooks: torch, the device and the stream, and the kernels. A
    # subclass in the tests replaces them to run the table's host logic
    # (plans, copies, segments) with NumPy kernels where there is no GPU.
    _kernels = _core

    @staticmethod
    def _open_device(device):
        """(torch, torch.device, pin host rows); CudaUnavailableError where no GPU."""
        from .cuda import _cuda_device, _torch

        torch = _torch()
        return torch, _cuda_device(torch, device), True

    def _sync(self) -> None:
        self._torch.cuda.current_stream(self._device).synchronize()

    def _view(self):
        hs = self._hbm_state.data_ptr() if self._hbm_state is not None else 0
        ss = self._host_state.data_ptr() if self._host_state is not None else 0
        return (self._hbm.data_ptr(), hs, self._host.data_ptr(), ss, self._dim, self._dim, self._n_state)

    def _stream(self) -> int:
        return self._torch.cuda.current_stream(self._device).cuda_stream

    def _up(self, a: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(a)).to(self._device, non_blocking=False)

    def _locate(self, keys: np.ndarray, insert: bool, write: bool):
        """Host rows of keys (new ones initialised when insert), the plan carried
        out on the stream; returns (slot_of, host_row) on the device."""
        rows = self._index.resolve(keys, insert=False)
        if insert:
            new = np.unique(keys[rows < 0])
            if len(self._index) + new.size > self._host_cap:
                raise MemoryError(f"host_rows: {new.size} new keys do not fit ({len(self._index)} of "
                                  f"{self._host_cap} host rows used)")
            if new.size:
                ids = self._index.resolve(new, insert=True)
                self._host[self._torch.from_numpy(ids)] = self._torch.from_numpy(self._init_table.lookup(new))
            rows = self._index.resolve(keys, insert=False)
        has_row = rows >= 0
        if has_row.all():
            plan = self._policy.plan(keys, write=write)
        else:  # keys without a host row (insert=False) read zero rows and never take a slot
            plan = self._policy.plan(keys[has_row], write=write)
            slot_of = np.full(keys.size, -1, dtype=np.int32)
            slot_of[has_row] = plan["slot_of"]
            plan["slot_of"] = slot_of
        self.hits += plan["hits"]
        self.misses += plan["misses"]
        s, view = self._stream(), self._view()
        for slots, ks, to_host in ((plan["writeback_slots"], plan["writeback_keys"], True),
                                   (plan["fill_slots"], plan["fill_keys"], False)):
            if slots.size:
                hr = self._index.resolve(ks, insert=False)
                d_slots, d_rows = self._up(slots), self._up(hr)
                self._kernels.cuda_cached_move(view, d_slots.data_ptr(), d_rows.data_ptr(), slots.size, to_host, s)
        self._policy.release()  # one stream orders this batch before the next plan's copies
        return self._up(plan["slot_of"]), self._up(rows), plan, rows

    # ------------------------------------------------------------------ ops
    def lookup(self, keys, *, insert: bool = True):
        """(n, dim) rows of ``keys`` (host int64) as a CUDA tensor; absent keys
        are inserted (``insert=False``: zero rows)."""
        k = _checks.keys_1d(keys, "keys")
        slot_of, rows, _, _ = self._locate(k, insert, False)
        out = self._torch.empty((k.size, self._dim), dtype=self._torch.float32, device=self._device)
        self._kernels.cuda_cached_gather(self._view(), slot_of.data_ptr(), rows.data_ptr(), k.size,
                                         out.data_ptr(), self._stream())
        return out

    def pooled_lookup(self, values, offsets=None, mode: str = "sum", per_sample_weights=None,
                      include_last_offset: bool = False, *, insert: bool = True):
        """EmbeddingBag pooling (as EmbeddingTable.pooled_lookup); values, offsets
        and weights in host memory, the result a CUDA tensor."""
        v, off, n_bags = _checks.bags(values, offsets, include_last_offset)
        mode_id = _checks.mode_id(mode)
        w = _checks.bag_weights(per_sample_weights, mode, v.shape[0])
        slot_of, rows, _, _ = self._locate(v, insert, False)
        out = self._torch.empty((n_bags, self._dim), dtype=self._torch.float32, device=self._device)
        d_off = self._up(off)
        d_w = self._up(np.asarray(w, dtype=np.float32)) if w is not None else None
        self._kernels.cuda_cached_pool(self._view(), slot_of.data_ptr(), rows.data_ptr(), v.size,
                                       d_off.data_ptr(), off.size, n_bags, mode_id,
                                       d_w.data_ptr() if d_w is not None else 0, out.data_ptr(), self._stream())
        return out

    def apply_gradients(self, keys, grads) -> None:
        """One fused optimizer step (the table's optimizer) on the rows of
        ``keys`` (host int64); ``grads``: (n, dim) float32, host or CUDA. Rows
        in HBM are updated there, the rest in host memory; duplicates are
        summed in position order, as the CPU engine does."""
        k = _checks.keys_1d(keys, "keys")
        g = grads if isinstance(grads, self._torch.Tensor) else self._torch.from_numpy(
            _checks.floats(grads, "grads", (k.size, self._dim)))
        if tuple(g.shape) != (k.size, self._dim) or g.dtype != self._torch.float32:
            raise ValueError(f"grads must be float32 of shape ({k.size}, {self._dim}), got {g.dtype} {tuple(g.shape)}")
        if not bool(self._torch.isfinite(g).all()):
            raise ValueError("grads must be finite")
        g = g.to(self._device).contiguous()
        _, _, plan, rows = self._locate(k, True, True)
        slots = plan["slot_of"].astype(np.int64)
        loc = np.where(slots >= 0, slots, self._policy.slots + rows)
        perm = np.argsort(loc, kind="stable")
        uniq, start = np.unique(loc[perm], return_index=True)
        seg = np.append(start, k.size).astype(np.int64)
        loc_slot = np.where(uniq < self._policy.slots, uniq, -1).astype(np.int32)
        loc_host = np.where(uniq < self._policy.slots, -1, uniq - self._policy.slots).astype(np.int64)
        self._step += 1
        d = [self._up(a) for a in (loc_slot, loc_host, seg, perm.astype(np.int64))]
        self._kernels.cuda_cached_update(self._view(), d[0].data_ptr(), d[1].data_ptr(), uniq.size,
                                         d[2].data_ptr(), d[3].data_ptr(), g.data_ptr(), self._opt._spec(),
                                         self._step, self._stream())

    def flush(self) -> int:
        """Writes every changed HBM row back to host memory; returns how many."""
        slots, keys = self._policy.take_dirty()
        if slots.size:
            rows = self._index.resolve(keys, insert=False)
            self._kernels.cuda_cached_move(self._view(), self._up(slots).data_ptr(), self._up(rows).data_ptr(),
                                           slots.size, True, self._stream())
        self._sync()
        return int(slots.size)

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, rows) of every key, after a flush (host copies)."""
        self.flush()
        keys = np.sort(self._index.keys())
        rows = self._index.resolve(keys, insert=False)
        return keys, self._host[self._torch.from_numpy(rows)].numpy().copy()

    def memory(self) -> dict:
        return {"hbm_rows": self._policy.slots, "host_rows": len(self._index), "host_capacity": self._host_cap,
                "hits": self.hits, "misses": self.misses}

    def __len__(self) -> int:
        return len(self._index)


def _init_source(dim: int, initializer):
    """A CPU table that produces new keys' initial rows (the CPU engine's initializer)."""
    from .table import EmbeddingTable

    class _Init:
        def __init__(self):
            self._dim, self._init = dim, initializer

        def lookup(self, keys):
            return EmbeddingTable(self._dim, initializer=self._init).lookup(keys)

    return _Init()
