"""A FrequencyTable as the backend of the torch modules (``table=``): the
argument checks, and the part of a checkpoint that only a FrequencyTable has
(scores, clock, admission sketch, cold row)."""

from __future__ import annotations

import numpy as np
import torch

from ..frequency import DEFAULT_ROWS, POLICIES, FrequencyTable
from ..table import EmbeddingTable

_POLICY_NAMES = {v: k for k, v in POLICIES.items()}
_DEFAULT_ROW_NAMES = {v: k for k, v in DEFAULT_ROWS.items()}


def check_table(table, dim: int, initializer, capacity, num_threads, optimizer):
    """Validates ``table=`` (an EmbeddingTable, maybe over a storage tier, or a
    FrequencyTable) against the module's other arguments; returns the
    optimizer the module applies (the module's, else the table's)."""
    if not isinstance(table, EmbeddingTable):
        raise TypeError(f"table must be an embedlookup.EmbeddingTable or FrequencyTable (or None: the module "
                        f"builds its own EmbeddingTable), got {type(table).__name__}")
    kind = type(table).__name__
    if int(dim) != table.dim:
        raise ValueError(f"table: the {kind} has dim {table.dim} but the module was given "
                         f"embedding_dim={dim}; they must match")
    given = [n for n, v in (("initializer", initializer), ("capacity", capacity), ("num_threads", num_threads))
             if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: set these on the {kind}, not on a module built with table= "
                         f"(a FrequencyTable's budget_rows/budget_bytes replaces capacity)")
    if not isinstance(table, FrequencyTable):
        return optimizer if optimizer is not None else table.optimizer
    if table._namespaced:
        raise ValueError("table: a FrequencyTable built with features=... takes a feature name per call, which "
                         "the torch modules do not pass; build it without features (HashEmbeddingBagCollection "
                         "namespaces its features itself)")
    return optimizer if optimizer is not None else table.optimizer


def _no_cold_rows(table: FrequencyTable) -> None:
    if getattr(table, "cold_row_type", None) is not None:
        raise NotImplementedError("state_dict: a FrequencyTable with cold_row_type holds int8 rows outside its "
                                  "fp32 rows that state_dict does not collect; checkpoint it with "
                                  "export_delta() / apply_delta() (docs/frequency.md)")


def empty_like(table: FrequencyTable) -> FrequencyTable:
    """A new, empty FrequencyTable configured as ``table``."""
    _no_cold_rows(table)
    if table.tier is not None:
        raise NotImplementedError("state_dict: a FrequencyTable over a storage tier cannot be loaded through "
                                  "load_state_dict (the tier's rows are not in the state); checkpoint it with "
                                  "embedlookup.storage instead")
    o = table._t.options
    policy = _POLICY_NAMES[o["policy"]]
    return FrequencyTable(
        table.dim, initializer=table.initializer, optimizer=table.optimizer,
        num_threads=o["num_threads"] or None, half_life=o["half_life"], budget_rows=o["budget_rows"] or None,
        policy=policy, evict_fraction=o["evict_fraction"], ttl=o["ttl"] if policy == "ttl" else None,
        ttl_interval=o["ttl_interval"] or None, admit_count=o["admit_count"],
        admit_probability=o["admit_probability"], admit_seed=o["admit_seed"], sketch_width=o["sketch_width"],
        sketch_depth=o["sketch_depth"], default_row=_DEFAULT_ROW_NAMES[o["default_row"]],
        hot_fraction=o["hot_fraction"], on_evict=table.on_evict)


def extra_state(table: FrequencyTable, keys: np.ndarray) -> dict:
    """What a FrequencyTable keeps beyond rows and optimizer state."""
    _no_cold_rows(table)
    if table.tier is not None:
        raise NotImplementedError("state_dict: a FrequencyTable over a storage tier holds rows outside memory "
                                  "that state_dict does not collect; checkpoint it with embedlookup.storage")
    f = table.frequency_state(keys)
    return {
        "scores": torch.from_numpy(f["scores"]),
        "last_step": torch.from_numpy(f["last_step"].astype(np.int64)),
        "clock": int(f["clock"]),
        "sketch": torch.from_numpy(f["sketch"].view(np.int32)),  # uint32 bits: torch has no uint32 math
        "cold_row": torch.from_numpy(f["cold_row"]),
        "cold_state": torch.from_numpy(f["cold_state"]),
        "options": dict(table._t.options),
    }


def restore(fresh: FrequencyTable, keys: np.ndarray, state: dict) -> None:
    """Loads a saved :func:`extra_state` into ``fresh``, which already holds
    ``keys``' rows. Raises ValueError on a mismatch (``fresh`` is then
    discarded by the caller)."""
    f = state.get("frequency")
    if f is None:
        raise ValueError("state_dict: the saved table is not a FrequencyTable's, but this module's table is one")
    try:
        fresh.restore_frequency_state({"keys": keys, "scores": f["scores"].numpy(), "last_step": f["last_step"].numpy(),
                                       "clock": f["clock"], "sketch": f["sketch"].numpy(),
                                       "cold_row": f["cold_row"].numpy(), "cold_state": f["cold_state"].numpy()})
    except ValueError as e:
        raise ValueError(f"state_dict: {e}") from None
