"""torch.library custom ops over the native table.

A table is not a tensor, so modules register theirs in a process-wide registry
and pass its integer handle to the ops (torch.compile treats it as a
constant). The ops are opaque to the compiler: their real implementations
call the native code on borrowed CPU memory (``Tensor.numpy()`` shares the
storage), their fake implementations give only output shapes, so a compiled
model keeps them in its graph instead of breaking around them.

The forward op inserts missing keys (hidden table state; on a
FrequencyTable it is a training access: scores, admission, eviction); the
backward op
applies the fused optimizer step to the touched rows and returns the
gradient of the module's empty anchor parameter, so neither can be
dead-code-eliminated.

Eager calls from the modules skip the ops' dispatch, which costs more than a
small batch's native work: :func:`pooled` and :func:`namespaced` run the same
bodies directly (an autograd Function for the pooled lookup) unless a
compiler or tracer is active.
"""

from __future__ import annotations

import itertools
import threading
from typing import Optional

import numpy as np
import torch
import torch.utils._python_dispatch

from .. import _checks
from .._namespace import feature_keys
from ..frequency import FrequencyTable
from . import _ps

__all__ = ["register_table", "unregister_table", "table_of"]

_registry: dict = {}
_lock = threading.Lock()
_ids = itertools.count(1)


class _Entry:
    """What the ops need of a module's table: the table (or a parameter-server
    client), its optimizer."""

    __slots__ = ("table", "optimizer", "ps")

    def __init__(self, table, optimizer):
        self.table, self.optimizer = table, optimizer
        self.ps = _ps.is_client(table)


def register_table(table, optimizer) -> int:
    with _lock:
        h = next(_ids)
        _registry[h] = _Entry(table, optimizer)
    return h


def unregister_table(handle: int) -> None:
    with _lock:
        _registry.pop(handle, None)


def table_of(handle: int) -> _Entry:
    try:
        return _registry[handle]
    except KeyError:
        raise RuntimeError(f"embedlookup: table handle {handle} is not registered (module deleted?)") from None


def _np(t: torch.Tensor) -> np.ndarray:
    # CPU, contiguous (the modules make it so): shares memory, no copy.
    return t.detach().numpy()


def _n_bags(offsets: torch.Tensor, include_last_offset: bool) -> int:
    return offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]


@torch.library.custom_op("embedlookup::pooled_lookup", mutates_args=())
def pooled_lookup(anchor: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor,
                  weights: Optional[torch.Tensor], handle: int, mode: int, include_last_offset: bool,
                  insert: bool, resolved_ids: Optional[torch.Tensor] = None,
                  resolved_epoch: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled rows per bag (n_bags, dim); for max mode the winning position
    per (bag, column) (int64; an empty tensor for sum/mean); the row ids the
    keys resolved to (n, int32 holding uint32) and the table's layout epoch
    (1,): the backward reuses the ids unless rows were freed meanwhile.
    ``resolved_ids`` / ``resolved_epoch`` (an EmbeddingTable, sum or mean):
    the keys' ids resolved ahead (the module's ``resolve``), checked against
    the epoch and the rows allocated; the rows are then read without an
    index probe (stale ids: resolved again)."""
    return _lookup_impl(values, offsets, weights, handle, mode, include_last_offset, insert, resolved_ids,
                        resolved_epoch)


def _lookup_impl(values, offsets, weights, handle, mode, include_last_offset, insert, resolved_ids=None,
                 resolved_epoch=-1):
    """The forward op's body (shared with the eager path, :func:`pooled`)."""
    entry = table_of(handle)
    t = entry.table
    if entry.ps:  # a parameter-server client: the shards pool, the client sums their partial bags
        return _ps.pooled_lookup(t, values, offsets, weights, mode, include_last_offset)
    v, off, n_bags = _checks.bags(_np(values), _np(offsets), include_last_offset)
    w = None if weights is None else _checks.finite(
        _checks.floats(_np(weights), "per_sample_weights", (v.shape[0],)), "per_sample_weights")
    out = torch.empty((n_bags, t.dim), dtype=torch.float32)
    ids = torch.empty((v.shape[0],), dtype=torch.int32)
    ids_np = _np(ids).view(np.uint32)
    if isinstance(t, FrequencyTable):
        # A training access of the frequency-aware table (clock, scores,
        # admission, eviction); values without a row read its default row
        # and get id kNoRow, which the backward routes to that row.
        is_max = mode == _checks.MODES["max"]
        argmax = torch.empty((n_bags, t.dim) if is_max else (0,), dtype=torch.int64)
        cs, epoch = t._t.pooled_lookup_ids(v, off, n_bags, mode, w, _np(out), insert, ids_np,
                                           _np(argmax) if is_max else None)
        t._account(None, cs)  # totals, and evicted rows to the table's on_evict
    elif mode == _checks.MODES["max"]:
        argmax = torch.empty((n_bags, t.dim), dtype=torch.int64)
        epoch = t._t.pooled_max_argmax(v, off, n_bags, _np(out), _np(argmax), insert, ids_np)
    elif resolved_ids is not None:
        argmax = torch.empty((0,), dtype=torch.int64)
        used, epoch = t._t.pooled_lookup_resolved(v, off, n_bags, mode, w, _np(out), insert,
                                                  _np(resolved_ids).view(np.uint32), resolved_epoch, ids_np)
        if used:  # the native call left `ids` unwritten; an op's output must not alias its input
            ids.copy_(resolved_ids)
    else:
        argmax = torch.empty((0,), dtype=torch.int64)
        epoch = t._t.pooled_lookup_ids(v, off, n_bags, mode, w, _np(out), insert, ids_np)
    return out, argmax, ids, torch.tensor([epoch], dtype=torch.int64)


@pooled_lookup.register_fake
def _(anchor, values, offsets, weights, handle, mode, include_last_offset, insert, resolved_ids=None,
      resolved_epoch=-1):
    dim = table_of(handle).table.dim
    n_bags = _n_bags(offsets, include_last_offset)
    out = values.new_empty((n_bags, dim), dtype=torch.float32)
    am_shape = (n_bags, dim) if mode == _checks.MODES["max"] else (0,)
    return (out, values.new_empty(am_shape, dtype=torch.int64), values.new_empty(values.shape, dtype=torch.int32),
            values.new_empty((1,), dtype=torch.int64))


@torch.library.custom_op("embedlookup::pooled_backward", mutates_args=())
def pooled_backward(grad: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor,
                    weights: Optional[torch.Tensor], argmax: torch.Tensor, ids: torch.Tensor, epoch: torch.Tensor,
                    handle: int, mode: int,
                    include_last_offset: bool, weights_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies the table's optimizer to the rows the forward touched (fused,
    in native code). Returns (anchor gradient: empty, per_sample_weights
    gradient: (n,) when asked for, else empty)."""
    return _backward_impl(grad, values, offsets, weights, argmax, ids, int(epoch[0]), handle, mode,
                          include_last_offset, weights_grad)


def _backward_impl(grad, values, offsets, weights, argmax, ids, epoch: int, handle, mode, include_last_offset,
                   weights_grad):
    """The backward op's body (shared with the eager path); ``epoch``: the
    forward's layout epoch."""
    entry = table_of(handle)
    t = entry.table
    if entry.ps:  # pushed to the shards, whose optimizer applies it
        wg = _ps.pooled_backward(t, grad, values, offsets, weights, mode, _n_bags(offsets, include_last_offset),
                                 weights_grad)
        return torch.zeros((0,), dtype=torch.float32), wg
    v, off, n_bags = _np(values), _np(offsets), _n_bags(offsets, include_last_offset)
    g = grad.contiguous()
    w = None if weights is None else _np(weights)
    wg = torch.empty((0,), dtype=torch.float32)
    if weights_grad:
        # d out[b] / d w[p] = row(p): rows as they were in forward (read
        # before this step updates them).
        rows = torch.from_numpy(t.lookup(v, insert=False))
        bag_of = torch.repeat_interleave(torch.arange(n_bags), torch.from_numpy(np.diff(np.append(off[:n_bags],
                                                                                                   v.shape[0]))))
        wg = (rows * g[bag_of]).sum(1)
    am = None if mode != _checks.MODES["max"] else _np(argmax)
    # On a FrequencyTable this is its own binding: values that read the
    # default row in the forward update the cold row or are dropped.
    t._t.apply_pooled_gradients(v, off, n_bags, mode, w, am, _np(g), entry.optimizer._spec(),
                                _np(ids).view(np.uint32), epoch)
    return torch.zeros((0,), dtype=torch.float32), wg


@pooled_backward.register_fake
def _(grad, values, offsets, weights, argmax, ids, epoch, handle, mode, include_last_offset, weights_grad):
    wg = values.new_empty((values.shape[0],) if weights_grad else (0,), dtype=torch.float32)
    return grad.new_empty((0,)), wg


def _setup_context(ctx, inputs, output):
    anchor, values, offsets, weights, handle, mode, include_last_offset, insert = inputs[:8]
    ctx.save_for_backward(values, offsets, weights, output[1], output[2], output[3])
    ctx.handle, ctx.mode, ctx.include_last_offset = handle, mode, include_last_offset


def _backward(ctx, grad_out, grad_argmax, grad_ids, grad_epoch):
    values, offsets, weights, argmax, ids, epoch = ctx.saved_tensors
    weights_grad = weights is not None and ctx.needs_input_grad[3]
    anchor_grad, wg = torch.ops.embedlookup.pooled_backward(grad_out, values, offsets, weights, argmax, ids, epoch,
                                                            ctx.handle,
                                                            ctx.mode, ctx.include_last_offset, weights_grad)
    return anchor_grad, None, None, (wg if weights_grad else None), None, None, None, None, None, None


pooled_lookup.register_autograd(_backward, setup_context=_setup_context)


class _EagerPooled(torch.autograd.Function):
    """The same forward and backward as the custom ops, as a plain autograd
    Function: in eager mode the ops' dispatch (defaults filled in Python,
    redispatch through autograd, an Autograd wrapper per call) cost ~0.38 ms
    a training step, against ~0.03 ms for the native calls of a small batch.
    Compiled and traced code keeps the ops (:func:`pooled`)."""

    @staticmethod
    def forward(ctx, anchor, values, offsets, weights, handle, mode, include_last_offset, insert, resolved_ids,
                resolved_epoch):
        out, argmax, ids, epoch = _lookup_impl(values, offsets, weights, handle, mode, include_last_offset, insert,
                                               resolved_ids, resolved_epoch)
        ctx.save_for_backward(values, offsets, weights, argmax, ids)
        ctx.epoch, ctx.handle, ctx.mode, ctx.include_last_offset = int(epoch[0]), handle, mode, include_last_offset
        return out

    @staticmethod
    def backward(ctx, grad_out):
        values, offsets, weights, argmax, ids = ctx.saved_tensors
        weights_grad = weights is not None and ctx.needs_input_grad[3]
        anchor_grad, wg = _backward_impl(grad_out, values, offsets, weights, argmax, ids, ctx.epoch, ctx.handle,
                                         ctx.mode, ctx.include_last_offset, weights_grad)
        return anchor_grad, None, None, (wg if weights_grad else None), None, None, None, None, None, None


# Private to torch, so looked up once, with the op as the answer where absent.
_in_dispatch_mode = getattr(torch.utils._python_dispatch, "is_in_torch_dispatch_mode", None)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def _traced(*tensors) -> bool:
    """Whether the call is being compiled or traced (dynamo, make_fx and
    export, fake tensors, vmap/grad): then only the registered ops are
    understood (an autograd Function would run, or be traced as, its
    native calls on placeholder tensors)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    if _in_dispatch_mode is None or _functorch_active is None or _in_dispatch_mode() or _functorch_active():
        return True
    return any(t is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter for t in tensors)


def pooled(anchor, values, offsets, weights, handle: int, mode: int, include_last_offset: bool, insert: bool,
           resolved_ids=None, resolved_epoch: int = -1) -> torch.Tensor:
    """The modules' pooled lookup with its fused backward: the custom op
    ``embedlookup::pooled_lookup`` under torch.compile or a tracer, the
    same code as an autograd Function in eager mode (cheaper to call)."""
    if _traced(anchor, values, offsets, weights, resolved_ids):
        return torch.ops.embedlookup.pooled_lookup(anchor, values, offsets, weights, handle, mode,
                                                   include_last_offset, insert, resolved_ids, resolved_epoch)[0]
    return _EagerPooled.apply(anchor, values, offsets, weights, handle, mode, include_last_offset, insert,
                              resolved_ids, resolved_epoch)


@torch.library.custom_op("embedlookup::namespace_keys", mutates_args=())
def namespace_keys(values: torch.Tensor, feature_offsets: torch.Tensor, bits: int) -> torch.Tensor:
    """Key of position p in feature f -> f << (64 - bits) | key, the rule of
    embedlookup/_namespace.py (keys in [0, 2**(64 - bits)), checked), so
    features sharing a table never collide."""
    return _namespace_keys_impl(values, feature_offsets, bits)


def _namespace_keys_impl(values, feature_offsets, bits):
    v, fo = _np(values), _np(feature_offsets)
    if fo.size and (fo[-1] != v.shape[0] or (fo.size > 1 and np.any(fo[1:] < fo[:-1]))):
        raise ValueError(f"lengths/offsets: the {len(fo) - 1} features' bags must be non-decreasing and end at "
                         f"len(values)={v.shape[0]}, got feature starts {fo.tolist()[:8]}")
    if bits == 0:
        return values.clone()
    feat = np.repeat(np.arange(len(fo) - 1, dtype=np.int64), np.diff(fo))
    try:
        out = feature_keys(v, feat, bits, "values")
    except ValueError as e:
        raise ValueError(f"{e} (use shared_table=False for full 64-bit keys)") from None
    return torch.from_numpy(out)


@namespace_keys.register_fake
def _(values, feature_offsets, bits):
    return torch.empty_like(values)


def namespaced(values, feature_offsets, bits: int) -> torch.Tensor:
    """``embedlookup::namespace_keys``, called directly in eager mode (as
    :func:`pooled`)."""
    if _traced(values, feature_offsets):
        return torch.ops.embedlookup.namespace_keys(values, feature_offsets, bits)
    return _namespace_keys_impl(values, feature_offsets, bits)
