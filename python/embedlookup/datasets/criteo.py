"""Criteo display-advertising TSV layout: a seeded generator of small files in
that layout with a learnable click model, and the reader that reads real
Criteo files (``day_0`` ... of the Terabyte set, ``train.txt`` of the Kaggle
set) and generated ones the same way.

One line per impression: ``label``, 13 integer features, 26 categorical
features as 8-digit hex hashes; tab-separated; an empty field is missing.

:func:`write_synthetic` draws, per categorical feature ``f``, a popularity
rank ``r ~ Zipf(alpha)`` truncated to ``vocab[f]``, and writes the ID of
rank ``r`` as a 32-bit hex hash of ``(seed, f, r)``. The label follows a
hidden logistic model, ``logit = bias + sum_f w_f(ID) + beta . log1p(ints)``
with ``w_f(ID) ~ N(0, weight_std)`` fixed per (seed, feature, ID), so the
IDs carry the signal, a model must learn per-ID rows to reach a good AUC,
and AUC is meaningful (``oracle_auc`` in the returned dict is the AUC of the
true logits: the ceiling). Integers are ``Poisson(3)``, missing with
probability ``missing``; categoricals are missing with the same
probability (then they carry no weight).

:func:`read_batches` is :func:`embedlookup.train.criteo_batches`: integers
become ``log(1 + max(x, 0))`` (missing: 0), categoricals their hex value as
an int64 ID (missing: -1); a line with the wrong number of fields raises
``ValueError`` naming the file and line.
"""

from __future__ import annotations

import numpy as np

N_DENSE, N_SPARSE = 13, 26

__all__ = ["N_DENSE", "N_SPARSE", "write_synthetic", "read_batches", "DEFAULT_VOCAB"]

# Per categorical feature, distinct IDs: a few huge (user, item, ad), many
# mid-sized, some tiny, as in Criteo (whose largest features have ~10 M IDs).
DEFAULT_VOCAB = (200_000, 100_000, 50_000, 30_000, 20_000, 10_000, 5_000, 3_000, 2_000, 1_000, 500, 300, 100,
                 50_000, 20_000, 10_000, 5_000, 2_000, 1_000, 200, 100, 50, 20, 10, 5, 3)


def _hidden_weight(seed: int, f: int, ids: np.ndarray, std: float) -> np.ndarray:
    """N(0, std) per (seed, feature, ID), by Box-Muller on two hashes."""
    from ..train import _mix64 as _mix

    base = np.uint64((seed * 1_000_003 + f * 7_919 + 11) & ((1 << 64) - 1))
    h1 = _mix(ids.astype(np.uint64) ^ base)
    h2 = _mix(h1 ^ np.uint64(0x9E3779B97F4A7C15))
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    u2 = (h2 >> np.uint64(11)).astype(np.float64) / 2.0**53
    return std * np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)


def write_synthetic(path: str, n_rows: int, seed: int = 0, *, vocab=DEFAULT_VOCAB, alpha: float = 1.1,
                    weight_std: float = 0.6, bias: float = -1.5, missing: float = 0.05) -> dict:
    """Writes ``n_rows`` impressions in the Criteo TSV layout to ``path``.

    Returns the generator's facts: rows, click rate, the AUC of the true
    logits (``oracle_auc``: what a perfect model reaches on this file) and
    the distinct IDs per feature in the file."""
    n_rows = int(n_rows)
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows}")
    if len(vocab) != N_SPARSE or min(vocab) < 1:
        raise ValueError(f"vocab must give {N_SPARSE} positive sizes, got {vocab!r}")
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing must be in [0, 1), got {missing}")
    from ..train import _mix64 as _mix
    from ..train import auc

    rng = np.random.default_rng(seed)
    beta = rng.normal(0, 0.25, N_DENSE)
    ints = rng.poisson(3.0, (n_rows, N_DENSE))
    int_missing = rng.random((n_rows, N_DENSE)) < missing
    logit = bias + np.where(int_missing, 0.0, np.log1p(ints)) @ beta
    hexes, distinct = [], []
    for f in range(N_SPARSE):
        rank = (rng.zipf(alpha, n_rows) - 1) % vocab[f]
        ids = (_mix(rank.astype(np.uint64) ^ np.uint64(((seed + 1) << 32) + f)) & np.uint64(0xFFFFFFFF))
        absent = rng.random(n_rows) < missing
        logit += np.where(absent, 0.0, _hidden_weight(seed, f, ids, weight_std))
        col = np.char.mod("%08x", ids.astype(np.int64))
        col[absent] = ""
        hexes.append(col)
        distinct.append(int(np.unique(ids[~absent]).size))
    p = 1 / (1 + np.exp(-logit))
    label = (rng.random(n_rows) < p).astype(np.int64)
    int_cols = [np.where(int_missing[:, j], "", ints[:, j].astype(str)) for j in range(N_DENSE)]
    cols = [label.astype(str)] + int_cols + hexes
    with open(path, "w", encoding="ascii") as fh:
        for k in range(0, n_rows, 50_000):  # a block of lines per write
            block = ["\t".join(fields) for fields in zip(*(c[k:k + 50_000] for c in cols))]
            fh.write("\n".join(block) + "\n")
    return {"rows": n_rows, "click_rate": float(label.mean()), "oracle_auc": auc(label, logit),
            "distinct_ids": distinct, "seed": seed}


def read_batches(path: str, batch_size: int = 2048, max_batches: int | None = None):
    """Batches ``(dense (B, 13) float32, sparse (B, 26) int64, label (B,))``
    of a Criteo-layout file; see :func:`embedlookup.train.criteo_batches`."""
    from ..train import criteo_batches

    return criteo_batches(path, batch_size=batch_size, max_batches=max_batches)
