"""Benchmark workloads: named, parameterised, seeded batches of int64 keys.

A workload is a table of ``rows`` embedding rows of ``dim`` float32 values,
keyed by ``rows`` distinct pseudo-random int64 IDs (a bijective mix of the row
number, so keys look like hashed feature IDs and never collide), and batches
of ``batch`` bags of ``pooling`` keys each, drawn from the first ``keys``
ranks of the key space with a uniform or Zipf(``alpha``) distribution.

Ranks are mapped to rows through a seeded permutation, so the hot keys of a
Zipf workload are scattered over the table as real hot IDs are (not packed
into its first rows, which would flatter every implementation equally but
hide what a frequency-aware layout buys). The dense peers read row ``i`` of
a matrix where the hashed table reads key ``keys[i]``: the same rows, in the
same order, only the way to find them differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .._checks import huge_empty

__all__ = [
    "SUITES",
    "WORKLOADS",
    "Workload",
    "WorkloadData",
    "WorkloadError",
    "draw_ranks",
    "mix_keys",
    "parse_workload",
    "zipf_pmf",
]


class WorkloadError(ValueError):
    """An unknown workload name or parameter, or a parameter out of range."""


@dataclass(frozen=True)
class Workload:
    """Parameters of one benchmark workload (every field has a default)."""

    name: str = "custom"
    dist: str = "uniform"  # key distribution: "uniform" or "zipf"
    alpha: float = 1.05  # Zipf exponent (dist="zipf" only); any alpha > 0 (finite key space)
    rows: int = 1_000_000  # rows in the table (= distinct keys stored)
    keys: int = 0  # distinct keys batches draw from (0: all `rows`); <= rows
    dim: int = 64  # floats per row
    dtype: str = "float32"  # row dtype (float32 only, for now)
    batch: int = 4096  # bags per batch
    pooling: int = 32  # keys per bag
    threads: int = 0  # threads for embedlookup and torch (0: all cores)
    seed: int = 0  # drives keys, permutation and batches
    batches: int = 3  # distinct batches the timing loop rotates through

    @property
    def n_keys(self) -> int:
        return self.keys or self.rows

    @property
    def row_bytes(self) -> int:
        return self.dim * 4

    @property
    def lookups(self) -> int:
        """Keys per batch."""
        return self.batch * self.pooling

    def describe(self) -> str:
        d = "uniform" if self.dist == "uniform" else f"zipf({self.alpha:g})"
        keys = "" if not self.keys or self.keys == self.rows else f", {_si(self.keys)} keys"
        thr = f", {self.threads} thr" if self.threads else ""
        return f"{d}, {_si(self.rows)} rows{keys} x {self.dim}, batch {self.batch} x pool {self.pooling}{thr}"

    def params(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> Workload:
        def positive(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise WorkloadError(f"workload {self.name!r}: {name} must be a positive integer, got {v!r}")

        for f in ("rows", "dim", "batch", "pooling", "batches"):
            positive(f)
        if self.dist not in ("uniform", "zipf"):
            raise WorkloadError(
                f"workload {self.name!r}: dist must be 'uniform' or 'zipf', got {self.dist!r}"
            )
        if not (self.alpha > 0 and np.isfinite(self.alpha)):
            raise WorkloadError(
                f"workload {self.name!r}: alpha must be a finite number > 0, got {self.alpha!r}"
            )
        if self.keys < 0 or self.keys > self.rows:
            raise WorkloadError(
                f"workload {self.name!r}: keys must be in [0, rows={self.rows}], got {self.keys}"
            )
        if self.threads < 0:
            raise WorkloadError(
                f"workload {self.name!r}: threads must be >= 0 (0: all cores), got {self.threads}"
            )
        if self.seed < 0:
            raise WorkloadError(f"workload {self.name!r}: seed must be >= 0, got {self.seed}")
        if self.dtype != "float32":
            raise WorkloadError(
                f"workload {self.name!r}: dtype {self.dtype!r} is not supported (float32 only)"
            )
        if self.lookups >= 2**31:
            raise WorkloadError(f"workload {self.name!r}: batch x pooling must be < 2**31")
        return self


def _si(n: int) -> str:
    for div, suf in ((1 << 20, "M"), (1 << 10, "K")):
        if n >= div and n % div == 0:
            return f"{n // div}{suf}"
    for div, suf in ((1_000_000, "M"), (1_000, "K")):
        if n >= div and n % div == 0:
            return f"{n // div}{suf}"
    return str(n)


# Named workloads.
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("uniform-1m", "uniform", rows=1_000_000, dim=64, batch=4096, pooling=32),
        Workload("zipf-1m", "zipf", alpha=1.05, rows=1_000_000, dim=64, batch=4096, pooling=32),
        Workload("uniform-1m-d128", "uniform", rows=1_000_000, dim=128, batch=2048, pooling=32),
        # Table fits in the last-level cache: what the kernels do when memory is not the limit.
        Workload("uniform-64k", "uniform", rows=65_536, dim=64, batch=4096, pooling=32),
        Workload("zipf-10m-keys", "zipf", alpha=0.9, rows=4_000_000, dim=32, batch=4096, pooling=32),
        Workload("small", "uniform", rows=10_000, dim=16, batch=64, pooling=8),
        Workload("small-zipf", "zipf", alpha=1.2, rows=10_000, dim=16, batch=64, pooling=8),
    )
}

# Suites: workload names, ops (None: every op) and optionally threads (the
# suite's workloads run with that many threads unless --threads says otherwise).
SUITES: dict[str, dict] = {
    # One thread per subject: ratios then compare per-core efficiency and
    # repeat between runs on a shared machine, where two-thread subjects
    # (barriers, a descheduled thread) move with other tenants' load.
    # `--threads 0` runs it on all cores.
    "default": {
        "threads": 1,
        "workloads": ["uniform-1m", "zipf-1m", "uniform-64k"],
        "ops": [
            "lookup",
            "pooled_sum",
            "pooled_sum_resolved",
            "pooled_mean",
            "pooled_max",
            "update",
            "train_adagrad",
            "train_rowwise",
            "insert",
        ],
    },
    # The engine's bar: pooled lookup (sum) on the hashed table at least as
    # fast as torch.nn.EmbeddingBag with dense indices, on all cores.
    # Also with the keys resolved a batch ahead (EmbeddingTable.resolve).
    "embeddingbag-bar": {"workloads": ["uniform-1m"], "ops": ["pooled_sum", "pooled_sum_resolved"]},
    # The file tier, checkpoints (files under --tier-dir), eviction and relayout.
    "storage": {
        "threads": 1,
        "workloads": ["uniform-1m"],
        "ops": ["tier_read", "tier_write", "checkpoint", "evict", "relayout"],
    },
    # Compressed rows (docs/compressed.md): pooled sum over fp32 / fp16 / bf16 /
    # int8 / int4 tables against dense fp32 EmbeddingBag and FBGEMM's IntNBit
    # table of the same type, on raw keys and on keys resolved a batch ahead.
    # `--threads 0` for all cores.
    "compressed": {
        "threads": 1,
        "workloads": ["uniform-1m", "zipf-1m"],
        "ops": [f"pooled_sum{t}{r}" for t in ("", "_fp16", "_bf16", "_int8", "_int4") for r in ("", "_resolved")],
    },
    # Keys resolved a batch ahead (EmbeddingTable.resolve): the pooled sum
    # then reads rows only; the resolution itself against the NumPy user's
    # remap (add --peers remap+eb). `--threads 0` for all cores.
    "resolved": {
        "threads": 1,
        "workloads": ["uniform-1m", "zipf-1m"],
        "ops": ["pooled_sum", "pooled_sum_resolved", "resolve"],
    },
    "smoke": {"workloads": ["small", "small-zipf"], "ops": None},
    # Training through the parameter server (2 shards; local and Ray) against
    # the in-process table's fused step.
    "ps": {"workloads": ["uniform-1m"], "ops": ["ps_step", "ps_call"]},
    # The trainer-side cache's effect on the step (bounded:2 client with and without cache, Zipf keys).
    "ps-cache": {"workloads": ["zipf-1m"], "ops": ["ps_step_bounded", "ps_step_cache"]},
}

_FIELDS = {f.name: f for f in dataclasses.fields(Workload)}


def _convert(name: str, text: str, wname: str):
    typ = type(getattr(Workload(), name))
    try:
        if typ is int:
            v = float(text.replace("_", ""))
            if v != int(v):
                raise ValueError
            return int(v)
        if typ is float:
            return float(text)
    except ValueError:
        raise WorkloadError(f"workload {wname!r}: {name}={text!r} is not a valid {typ.__name__}") from None
    return text


def parse_workload(tokens: list[str] | str) -> Workload:
    """A workload from a name and/or ``key=value`` tokens, e.g.
    ``["zipf-1m", "alpha=1.2"]`` or ``"dist=zipf,rows=1e5,dim=32"``.

    Raises :class:`WorkloadError` naming the unknown workload or parameter.
    """
    if isinstance(tokens, str):
        tokens = [tokens]
    parts = [p for t in tokens for p in t.split(",") if p]
    base, overrides = None, {}
    for p in parts:
        if "=" not in p:
            if base is not None:
                raise WorkloadError(
                    f"workload: two names given ({base.name!r} and {p!r}); give one name "
                    f"followed by key=value overrides"
                )
            if p not in WORKLOADS:
                raise WorkloadError(
                    f"unknown workload {p!r}; known: {', '.join(WORKLOADS)} (or give key=value parameters)"
                )
            base = WORKLOADS[p]
            continue
        k, v = p.split("=", 1)
        k = k.strip()
        if k not in _FIELDS:
            raise WorkloadError(f"unknown workload parameter {k!r}; known: {', '.join(_FIELDS)}")
        overrides[k] = v.strip()
    base = base or Workload()
    wname = overrides.get("name") or (
        base.name
        if not overrides
        else (base.name + ":" if base.name != "custom" else "")
        + ",".join(f"{k}={v}" for k, v in overrides.items())
    )
    values = {k: _convert(k, v, wname) for k, v in overrides.items() if k != "name"}
    return dataclasses.replace(base, name=wname, **values).validate()


# ------------------------------------------------------------------ generation
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix_keys(n: int, seed: int) -> np.ndarray:
    """``n`` distinct int64 keys: the splitmix64 finaliser (a bijection on
    64-bit words) of ``seed * 2**32 + i`` - distinct inputs, distinct keys."""
    with np.errstate(over="ignore"):
        x = (
            np.arange(n, dtype=np.uint64)
            + np.uint64(seed) * np.uint64(1 << 32)
            + np.uint64(0x9E3779B97F4A7C15)
        )
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x.view(np.int64)


def zipf_pmf(n: int, alpha: float) -> np.ndarray:
    """P(rank k) for k = 0..n-1, proportional to (k+1)**-alpha."""
    p = np.arange(1, n + 1, dtype=np.float64) ** -float(alpha)
    return p / p.sum()


def draw_ranks(rng: np.random.Generator, n: int, w: Workload, cdf: np.ndarray | None = None) -> np.ndarray:
    """``n`` ranks in [0, w.n_keys) from the workload's distribution
    (Zipf by inverse-CDF lookup: vectorised, exact for any alpha)."""
    if w.dist == "uniform":
        return rng.integers(0, w.n_keys, size=n, dtype=np.int64)
    if cdf is None:
        cdf = np.cumsum(zipf_pmf(w.n_keys, w.alpha))
    r = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return np.minimum(r, w.n_keys - 1).astype(np.int64)


@dataclass
class Batch:
    keys: np.ndarray  # int64 hashed keys, batch * pooling
    idx: np.ndarray  # int64 dense row indices of the same keys
    offsets: np.ndarray  # int64 start of each bag (batch,)
    offsets_full: np.ndarray  # with the end appended (batch + 1,), as FBGEMM takes them
    grad: np.ndarray  # (batch, dim) float32 upstream gradient for training ops
    distinct: int  # distinct keys in the batch


@dataclass
class WorkloadData:
    """Everything generated for a workload: all keys, the dense initial rows,
    and the batches. Rows come from the embedlookup initializer, so the
    hashed table and the dense peers start from identical values."""

    workload: Workload
    keys: np.ndarray
    dense: np.ndarray
    table: object  # the embedlookup.EmbeddingTable holding `keys`
    batches: list[Batch] = field(default_factory=list)
    cache: dict = field(default_factory=dict)  # peer objects shared by read-only ops
    tier_dir: str | None = None  # where storage ops write scratch files (None: the temp folder)

    def initializer(self):
        from .. import init

        return init.uniform(-0.1, 0.1, seed=self.workload.seed)

    def fresh_table(self):
        """A new table holding the workload's initial rows (for ops that update rows)."""
        from ..table import EmbeddingTable

        w = self.workload
        t = EmbeddingTable(w.dim, initializer=self.initializer(), num_threads=w.threads or None)
        t.assign(self.keys, self.dense)
        return t

    @classmethod
    def generate(cls, w: Workload) -> WorkloadData:
        rng = np.random.default_rng(w.seed)
        keys = mix_keys(w.rows, w.seed)
        # rank -> row: hot ranks land on scattered rows
        perm = rng.permutation(w.rows)[: w.n_keys].astype(np.int64)
        cdf = np.cumsum(zipf_pmf(w.n_keys, w.alpha)) if w.dist == "zipf" else None
        batches = []
        offsets = np.arange(0, w.lookups, w.pooling, dtype=np.int64)
        offsets_full = np.arange(0, w.lookups + 1, w.pooling, dtype=np.int64)
        for _ in range(w.batches):
            idx = perm[draw_ranks(rng, w.lookups, w, cdf)]
            grad = rng.standard_normal((w.batch, w.dim), dtype=np.float32)
            batches.append(Batch(keys[idx], idx, offsets, offsets_full, grad, int(np.unique(idx).size)))
        from ..table import EmbeddingTable

        data = cls(w, keys, huge_empty((w.rows, w.dim)), None, batches)
        data.table = EmbeddingTable(w.dim, initializer=data.initializer(), num_threads=w.threads or None)
        # Inserting in row order puts key i in arena slot i: the same memory
        # order as the dense peers' matrix, so neither side gets a locality edge.
        data.table.lookup(keys, out=data.dense)
        return data
