"""A parameter-server client as the table of the torch modules (``table=client``).

The forward is the client's ``pooled_pull`` (each shard pools its own keys of
every bag; the client sums the partial bags), the backward its
``push_pooled`` (the fused backward, applied with the optimizer that lives on
the server's shards). The module keeps no rows: they live on the shards, and
what a pull sees follows the client's consistency mode (docs/ps.md).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _checks

_MODE_NAMES = {v: k for k, v in _checks.MODES.items()}


def is_client(obj) -> bool:
    """Whether ``obj`` is a parameter-server client (anything with the
    client's ``pooled_pull`` / ``push_pooled`` / ``pull`` and ``dim``)."""
    return all(callable(getattr(obj, n, None)) for n in ("pooled_pull", "push_pooled", "pull")) and \
        hasattr(obj, "dim")


def server_optimizer(client):
    """The optimizer the client's shards apply, where the client says (None: it does not)."""
    return getattr(client, "optimizer", None)


def check_client(client, dim: int, initializer, capacity, num_threads, optimizer, mode_id: int | None):
    """Validates ``table=client`` against the module's other arguments;
    returns the optimizer the module reports: the server's where the client
    tells it, else None (the server's optimizer still applies every push)."""
    if int(dim) != int(client.dim):
        raise ValueError(f"table: the parameter-server client has dim {client.dim} but the module was given "
                         f"embedding_dim={dim}; they must match")
    given = [n for n, v in (("initializer", initializer), ("capacity", capacity), ("num_threads", num_threads))
             if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: the rows of a parameter server live on its shards; set these in "
                         f"ParameterServer(table_options=...), not on a module built with a client as table=")
    if mode_id == _checks.MODES["max"]:
        raise ValueError("mode='max' is not supported with a parameter-server client as table: its backward "
                         "needs each bag's winning row, which the shards' partial bags do not keep; use "
                         "'sum' or 'mean'")
    theirs = server_optimizer(client)
    if optimizer is not None and (theirs is None or optimizer != theirs):
        known = f"({theirs!r})" if theirs is not None else "(ParameterServer(optimizer=...))"
        raise ValueError(f"optimizer: a parameter server applies the optimizer of its shards {known}; pass "
                         f"optimizer=None (or that same optimizer) with a client as table=, got {optimizer!r}")
    return theirs


def pooled_lookup(client, values: torch.Tensor, offsets: torch.Tensor, weights, mode: int,
                  include_last_offset: bool):
    """The forward op's outputs for a client: (pooled, argmax, ids, epoch);
    argmax, ids and epoch only fill the op's signature (nothing is reused)."""
    v, off, n_bags = _checks.bags(values.detach().numpy(), offsets.detach().numpy(), include_last_offset)
    w = None if weights is None else _checks.finite(
        _checks.floats(weights.detach().numpy(), "per_sample_weights", (v.shape[0],)), "per_sample_weights")
    out = np.asarray(client.pooled_pull(v, off[:n_bags], _MODE_NAMES[mode], w), dtype=np.float32)
    if out.shape != (n_bags, client.dim):
        raise RuntimeError(f"parameter server: pooled_pull returned shape {out.shape}, expected "
                           f"{(n_bags, client.dim)}")
    return (torch.from_numpy(np.ascontiguousarray(out)), torch.empty((0,), dtype=torch.int64),
            torch.zeros(values.shape, dtype=torch.int32), torch.zeros((1,), dtype=torch.int64))


def pooled_backward(client, grad: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, weights, mode: int,
                    n_bags: int, weights_grad: bool):
    """Pushes the pooled gradient to the shards; returns the gradient of
    ``per_sample_weights`` (the rows as pulled before the push, times the
    bag's output gradient) when asked for, else an empty tensor."""
    v, off = values.detach().numpy(), offsets.detach().numpy()[:n_bags]
    g = np.ascontiguousarray(grad.detach().numpy(), dtype=np.float32)
    w = None if weights is None else weights.detach().numpy()
    wg = torch.empty((0,), dtype=torch.float32)
    if weights_grad:
        rows = torch.from_numpy(np.asarray(client.pull(v), dtype=np.float32))
        bag_of = torch.repeat_interleave(torch.arange(n_bags), torch.from_numpy(np.diff(np.append(off, v.shape[0]))))
        wg = (rows * grad[bag_of]).sum(1)
    client.push_pooled(v, off, g, _MODE_NAMES[mode], w)
    return wg
