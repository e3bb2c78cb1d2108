"""Operations beside the lookup path: the file tier, checkpoints, eviction.

* ``tier_read`` / ``tier_write``: the batch's distinct keys read from / written
  to a :class:`~embedlookup.storage.FileTier` holding the workload's rows, in a
  file under ``--tier-dir`` (default: the system's temporary folder). The file
  was just written, so reads come from the page cache: this times the tier's
  own path (index, slot checks, copies), not the disk. A write goes to a free
  slot (the tier has room for twice the rows) and is synced only when the tier
  recycles superseded slots (its own ``fdatasync``, every few calls); the
  floor, a NumPy ``memmap`` of the same rows gathered / scattered by row
  index, never syncs.
* ``checkpoint``: ``table.save(path)`` of the whole table (written, fsync'd,
  renamed). Peers: ``torch.save`` and ``numpy.save`` of the dense matrix, each
  fsync'd too. Outputs are checked by loading each file back.
* ``evict``: a :class:`~embedlookup.FrequencyTable` at its row budget (LFU)
  admits the batch's worth of new keys per call and evicts as many rows, whose
  keys, rows and scores are exported to the caller (``take_evicted``).
* ``relayout``: a full :meth:`~embedlookup.FrequencyTable.relayout` (rows
  packed in score order, hottest first) of a table trained on the workload's
  batches, after one more training batch (untimed) has moved the scores, as
  a background relayout in training would find it. Rows counted: the hot
  region (10% of the rows), the part a relayout arranges.

No peer has ``evict`` or ``relayout``.

Scratch files live in a temporary folder under the tier directory and are
removed when the operation's cases are dropped (and at exit). A directory that
is missing or not writable skips these operations with one line; the rest of
the suite runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

import numpy as np

from .._checks import huge_empty
from .ops import Case, Skip, _torch, fresh_keys, implements, operation
from .workloads import WorkloadData

# Checkpoints move the whole table per call (~0.5 s for 256 MiB here): a few
# rounds give a steady median without dominating the run.
operation(
    "tier_read",
    "read the batch's distinct keys from a FileTier holding the table (page cache warm); "
    "rows = distinct keys",
    lambda w, b: b.distinct,
)
operation(
    "tier_write",
    "overwrite the batch's distinct keys' rows in the FileTier (not synced); rows = distinct keys",
    lambda w, b: b.distinct,
)
operation(
    "checkpoint",
    "the whole table saved to a file and fsync'd; rows = table rows",
    lambda w, b: w.rows,
    rounds=5,
)
operation(
    "evict",
    "a FrequencyTable at its row budget (LFU) admits `batch` new keys and evicts as many rows, exported",
    lambda w, b: w.batch,
)
operation(
    "relayout",
    "a full relayout of a FrequencyTable (rows packed in score order) after one more training batch; "
    "rows = the hot region (10% of rows)",
    lambda w, b: max(1, w.rows // 10),
    rounds=5,
)


class _Scratch:
    """A temporary folder under the tier directory, removed with this object."""

    def __init__(self, data: WorkloadData, what: str):
        d = data.tier_dir or tempfile.gettempdir()
        if not os.path.isdir(d):
            raise Skip(f"--tier-dir {d!r} is not a directory")
        if not os.access(d, os.W_OK | os.X_OK):
            raise Skip(f"--tier-dir {d!r} is not writable")
        try:
            self.dir = tempfile.mkdtemp(prefix=f"embedlookup-bench-{what}-", dir=d)
        except OSError as e:
            raise Skip(f"--tier-dir {d!r}: cannot create a scratch folder ({e})") from e
        self._done = weakref.finalize(self, shutil.rmtree, self.dir, True)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)


def _distinct(data: WorkloadData):
    """Per batch (by id): its distinct row indices and their keys, cached on ``data``."""
    c = data.cache.get("distinct")
    if c is None:
        c = data.cache["distinct"] = {}
        for b in data.batches:
            idx = np.unique(b.idx)
            c[id(b)] = (idx, data.keys[idx])
    return c


def _new_rows(data: WorkloadData):
    """Per batch: the rows a write stores (the table's rows, scaled: a visible change)."""
    c = data.cache.get("new_rows")
    if c is None:
        dist = _distinct(data)
        c = data.cache["new_rows"] = {k: 0.5 * data.dense[idx] for k, (idx, _) in dist.items()}
    return c


def _fill(data: WorkloadData, put) -> None:
    """``put(keys, rows)`` with the workload's rows, 256 K at a time (bounded temporaries)."""
    step = 1 << 18
    for lo in range(0, data.workload.rows, step):
        put(data.keys[lo : lo + step], data.dense[lo : lo + step])


# --------------------------------------------------------------- file tier
def _filled_tier(data: WorkloadData, scratch: _Scratch):
    from ..storage import FileTier

    w = data.workload
    # Twice the rows: an overwrite goes to a free slot and the old copy is
    # recycled at the next flush (fdatasync), which the tier runs itself when
    # no slot is free. With the headroom that happens every ~rows/distinct
    # writes, as in a tier sized with room to spare; a full tier would sync on
    # every write.
    tier = FileTier(scratch.path("tier.bin"), 2 * w.rows, dim=w.dim)
    _fill(data, tier.set)
    tier.flush()
    return tier


def _memmap(data: WorkloadData, scratch: _Scratch) -> np.memmap:
    mm = np.memmap(scratch.path("rows.f32"), dtype=np.float32, mode="w+", shape=data.dense.shape)
    mm[:] = data.dense
    mm.flush()
    return mm


@implements("tier_read", "embedlookup")
def _(data):
    scratch = _Scratch(data, "tier")
    tier, dist = _filled_tier(data, scratch), _distinct(data)

    def run(b):
        return tier.get(dist[id(b)][1])[0]

    def output(b):
        rows, found = tier.get(dist[id(b)][1])
        if not found.all():
            missing = int((~found).sum())
            raise AssertionError(f"tier_read: {missing} keys missing from the filled tier")
        return rows

    run.scratch = scratch  # the folder lives as long as the case
    return Case(run, output)


@implements("tier_read", "numpy")
def _(data):
    scratch = _Scratch(data, "memmap")
    mm, dist = _memmap(data, scratch), _distinct(data)

    def run(b):
        return mm[dist[id(b)][0]]

    run.scratch = scratch
    return Case(run, lambda b: np.asarray(run(b)))


@implements("tier_write", "embedlookup")
def _(data):
    scratch = _Scratch(data, "tier")
    tier, dist, new = _filled_tier(data, scratch), _distinct(data), _new_rows(data)

    def run(b):
        tier.set(dist[id(b)][1], new[id(b)])

    def output(b):
        run(b)
        return tier.get(dist[id(b)][1])[0]

    run.scratch = scratch
    return Case(run, output)


@implements("tier_write", "numpy")
def _(data):
    scratch = _Scratch(data, "memmap")
    mm, dist, new = _memmap(data, scratch), _distinct(data), _new_rows(data)

    def run(b):
        mm[dist[id(b)][0]] = new[id(b)]

    def output(b):
        run(b)
        return np.asarray(mm[dist[id(b)][0]])

    run.scratch = scratch
    return Case(run, output)


# ------------------------------------------------------------- checkpoint
@implements("checkpoint", "embedlookup")
def _(data):
    from ..table import EmbeddingTable

    scratch = _Scratch(data, "checkpoint")
    path = scratch.path("table.elck")

    def run(b):
        data.table.save(path)  # fsync'd and renamed by save() itself

    def output(b):
        run(b)
        back = EmbeddingTable.load(path)
        return back.lookup(b.keys, insert=False)

    run.scratch = scratch
    return Case(run, output, max_inner=1)


@implements("checkpoint", "numpy")
def _(data):
    scratch = _Scratch(data, "checkpoint")
    path = scratch.path("dense.npy")

    def run(b):
        with open(path, "wb") as f:
            np.save(f, data.dense)
            f.flush()
            os.fsync(f.fileno())

    def output(b):
        run(b)
        return np.load(path, mmap_mode="r")[b.idx]

    run.scratch = scratch
    return Case(run, output, max_inner=1)


@implements("checkpoint", "torch")
def _(data):
    torch = _torch()
    scratch = _Scratch(data, "checkpoint")
    path = scratch.path("dense.pt")
    weight = torch.from_numpy(data.dense)

    def run(b):
        with open(path, "wb") as f:
            torch.save(weight, f)
            f.flush()
            os.fsync(f.fileno())

    def output(b):
        run(b)
        return torch.load(path)[torch.from_numpy(b.idx)].numpy()

    run.scratch = scratch
    return Case(run, output, max_inner=1)


# ------------------------------------------------------------------ evict
@implements("evict", "embedlookup")
def _(data):
    from ..frequency import FrequencyTable

    w = data.workload
    # One sweep per call: evict_fraction x budget = batch rows, so every call
    # pays its own eviction instead of one call in twenty paying for all.
    ft = FrequencyTable(
        w.dim,
        initializer=data.initializer(),
        budget_rows=w.rows,
        policy="lfu",
        evict_fraction=min(0.5, w.batch / w.rows),
        num_threads=w.threads or None,
    )
    _fill(data, ft.assign)
    chunks = 256
    pool = fresh_keys(data, chunks * w.batch, 0xE71C7)
    per = pool.shape[0] // chunks
    state = {"next": 0}
    buf = huge_empty((per, w.dim))

    def run(b):
        k = pool[state["next"] * per : (state["next"] + 1) * per]
        state["next"] = (state["next"] + 1) % chunks
        rows = ft.lookup(k, train=True, out=buf)
        ft.take_evicted()
        return rows

    def output(b):
        before = ft.stats()["evicted"]
        rows = run(b).copy()
        st = ft.stats()
        if st["evicted"] == before or st["rows"] > w.rows:
            raise AssertionError(
                f"evict: the call at the budget evicted {st['evicted'] - before} rows, "
                f"leaving {st['rows']} of a {w.rows}-row budget"
            )
        return rows

    run.table = ft  # for tests
    return Case(run, output)


@implements("relayout", "embedlookup")
def _(data):
    from ..frequency import FrequencyTable

    w = data.workload
    ft = FrequencyTable(
        w.dim, initializer=data.initializer(), hot_fraction=0.1, num_threads=w.threads or None
    )
    _fill(data, ft.assign)
    for b in data.batches:  # scores from the workload's own traffic
        ft.lookup(b.keys, train=True)
    ft.relayout()
    state = {"next": 0}

    def after():  # one more training batch moves the scores: the next relayout has work
        b = data.batches[state["next"] % len(data.batches)]
        state["next"] += 1
        ft.lookup(b.keys, train=True)

    def run(b):
        ft.relayout()

    def output(b):
        after()
        moved = ft.stats()["relayout_moves"]
        run(b)
        if ft.stats()["relayout_moves"] == moved:
            raise AssertionError("relayout: a relayout after a training batch moved no row")
        # relayout moves rows, never changes them: the rows found equal the workload's
        rows, found = ft.find(b.keys)
        if not found.all() or not np.array_equal(rows, data.dense[b.idx]):
            raise AssertionError("relayout: rows changed or went missing")
        return rows

    run.table = ft  # for tests
    return Case(run, output, after=after, max_inner=1)
