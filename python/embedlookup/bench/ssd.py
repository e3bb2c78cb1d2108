"""The file tier under real I/O: where rows came from, against the device's own limit.

Three measurements, one run, all with the tier file's pages dropped from the
page cache first (``posix_fadvise(DONTNEED)``, no root needed) and the bytes the
block device read during each timed run counted from ``/sys/block/<dev>/stat``:

1. ``device``: the device's limit, with O_DIRECT reads of a scratch file
   (``embedlookup._probes.device_reads``): random 4 KiB reads at queue depth 1
   and at the tier's queue depth (32), and sequential 1 MiB reads.
2. ``miss_service``: batches of distinct missing keys read from a
   :class:`~embedlookup.storage.FileTier` (``io="direct"``, ``"aio"`` and
   ``"uring"`` at queue depth 32, and the default ``io="mmap"`` after dropping
   the cache), as rows/s and block reads/s against (1).
3. ``training``: a ``FrequencyTable`` holding ``memory_frac`` of the rows in
   DRAM (its LFU policy decides which; evicted rows are written back to the
   tier in batches) over a tier read with O_DIRECT (through io_uring where the
   kernel takes it, else the thread pool), trained on Zipf batches
   (pooled sum, fused SGD backward) with and without ``prefetch`` one batch
   ahead, against the same rows all in DRAM (an ``EmbeddingTable``). Optional
   dense compute per step (``compute_ms``) stands for the model's other layers;
   "compute time" is the step on the all-in-DRAM table.

A run is labelled ``cached`` when the device read fewer bytes than the tier
served: the rows came from memory, not from the device. The device counter is
the whole device's (other processes' reads add to it), so a run labelled
``device`` may overstate its own reads; one labelled ``cached`` cannot be
wrong in that direction.

    python -m embedlookup.bench.ssd [--rows 1000000] [--dir .] [--only device,miss,training]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import tempfile
import time

import numpy as np

import embedlookup as el

QUEUE_DEPTH = 32


# ----------------------------------------------------------- the device
def block_device(path: str) -> str | None:
    """The /sys/block name of the device holding ``path`` (a partition's parent), or None."""
    st = os.stat(path)
    sysdev = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if not os.path.exists(sysdev):
        return None
    real = os.path.realpath(sysdev)
    if os.path.exists(os.path.join(real, "partition")):
        real = os.path.dirname(real)
    name = os.path.basename(real)
    return name if os.path.exists(f"/sys/block/{name}/stat") else None


def device_read_bytes(dev: str | None) -> int | None:
    """Bytes the device has read since boot (sectors read x 512), or None."""
    if dev is None:
        return None
    with open(f"/sys/block/{dev}/stat") as f:
        return int(f.read().split()[2]) * 512


def drop_cache(path: str) -> None:
    """Drops the file's clean pages from the page cache (dirty ones are written first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class DeviceCounter:
    """Bytes read by the device during a ``with`` block, next to what the tier served."""

    def __init__(self, dev):
        self.dev, self.bytes = dev, None

    def __enter__(self):
        self._b0 = device_read_bytes(self.dev)
        return self

    def __exit__(self, *exc):
        b1 = device_read_bytes(self.dev)
        self.bytes = None if b1 is None else b1 - self._b0


def label(device_bytes, served_bytes) -> str:
    if device_bytes is None:
        return "unknown (no block-device counter)"
    return "cached" if device_bytes < served_bytes else "device"


def device_limits(folder: str, file_mb: int = 2048, seconds: float = 2.0) -> dict:
    """Random 4 KiB reads at queue depth 1 and QUEUE_DEPTH, sequential 1 MiB
    reads, all O_DIRECT, on a scratch file of ``file_mb`` MiB (removed)."""
    from .. import _probes

    path = os.path.join(folder, "device_probe.bin")
    block = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
    try:
        with open(path, "wb") as f:
            for _ in range(file_mb // 8):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        drop_cache(path)
        out = {"file_mb": file_mb}
        for name, blk, qd, seq in (("rand4k_qd1", 4096, 1, False), (f"rand4k_qd{QUEUE_DEPTH}", 4096, QUEUE_DEPTH, False),
                                   ("seq1m_qd1", 1 << 20, 1, True)):
            n, s = _probes.device_reads(path, blk, qd, 10**8, seq, seconds)
            out[name + "_iops"] = n / s
            out[name + "_MBps"] = n * blk / s / 1e6
        return out
    finally:
        if os.path.exists(path):
            os.remove(path)


# ----------------------------------------------------------- the tier
def zipf_keys(rng, n_rows: int, alpha: float, n: int, perm: np.ndarray, cdf=None) -> np.ndarray:
    """n keys, Zipf(alpha) over ranks 1..n_rows (inverse CDF), ranks scattered by perm."""
    if cdf is None:
        cdf = np.cumsum(np.arange(1, n_rows + 1, dtype=np.float64) ** -alpha)
        cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(n))
    return perm[np.minimum(ranks, n_rows - 1)]


def fill_tier(tier, rows: int, dim: int, seed: int = 1, chunk: int = 1 << 18, progress=None) -> None:
    """Keys 0..rows-1 with the rows of el.init.uniform(seed) (what a table with that initializer would give)."""
    ref = el.EmbeddingTable(dim, initializer=el.init.uniform(seed=seed))
    for lo in range(0, rows, chunk):
        k = np.arange(lo, min(rows, lo + chunk), dtype=np.int64)
        tier.set(k, ref.lookup(k, insert=False), versions=np.ones(k.shape[0], np.uint64))
        ref.erase(k)
        if progress:
            progress(min(rows, lo + chunk), rows)
    tier.flush()


def miss_service(folder: str, rows: int, dim: int, batch: int, calls: int, dev) -> dict:
    """Distinct uniformly random keys per call read from a cold tier: io=direct
    (queue depth 32) and io=mmap (page faults, one at a time)."""
    path = os.path.join(folder, "ssd_miss.tier")
    if os.path.exists(path):
        os.remove(path)
    tier = el.storage.FileTier(path, rows, dim=dim)
    try:
        fill_tier(tier, rows, dim)
        rng = np.random.default_rng(11)
        batches = [rng.choice(rows, batch, replace=False).astype(np.int64) for _ in range(calls)]
        res = {"rows": rows, "dim": dim, "batch": batch, "calls": calls, "slot_bytes": tier._n().slot_bytes}
        for mode in ("direct", "aio", "uring", "mmap"):
            try:
                tier.set_io(mode, threads=QUEUE_DEPTH)
            except ValueError as e:  # a kernel (or sandbox) that refuses io_uring
                res[mode] = {"skipped": str(e)}
                continue
            drop_cache(path)
            io0 = tier.io_info()
            served0 = tier.stats()["bytes_read"]
            u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            with DeviceCounter(dev) as c:
                for b in batches:
                    _, found = tier.get(b)
            s = time.perf_counter() - t0
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            assert found.all()
            io1 = tier.io_info()
            served = tier.stats()["bytes_read"] - served0
            n = calls * batch
            # CPU (every thread, user + system) and context switches per row:
            # what a read path costs the other work of the machine
            r = {"seconds": s, "rows_per_s": n / s, "tier_bytes_served": served,
                 "device_bytes_read": c.bytes, "source": label(c.bytes, served),
                 "cpu_us_per_row": 1e6 * (u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime) / n,
                 "context_switches_per_row": (u1.ru_nvcsw + u1.ru_nivcsw - u0.ru_nvcsw - u0.ru_nivcsw) / n}
            if mode != "mmap":
                r["queue_depth"] = io1["queue_depth"]
                r["block_reads"] = io1["device_reads"] - io0["device_reads"]
                r["block_reads_per_s"] = r["block_reads"] / s
                r["block_bytes_read"] = io1["device_bytes"] - io0["device_bytes"]
            res[mode] = r
        return res
    finally:
        tier.close()
        os.remove(path)


def _blas_threads(threads: int | None):
    """A factory of contexts that hold BLAS at ``threads`` threads
    (threadpoolctl); None: BLAS's own default."""
    if threads is None:
        return contextlib.nullcontext
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"compute_threads must be an int >= 1 or None, got {threads!r}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as e:  # pragma: no cover - the bench extra installs it
        raise ImportError("compute_threads needs threadpoolctl: pip install 'embedlookup[bench]'") from e
    return lambda: threadpool_limits(limits=threads, user_api="blas")


def _dense_compute(ms: float, threads: int | None = None):
    """A step of dense work (matrix products, GIL released) taking ~ms milliseconds here.

    ``threads``: BLAS threads for it (threadpoolctl; None: BLAS's default, every
    core). One thread leaves the other cores to the tier's I/O, as a trainer
    whose dense layers run on an accelerator leaves its host cores."""
    if ms <= 0:
        return lambda: None
    limit = _blas_threads(threads)
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    # The fastest of several timings: a fixed amount of work, the same in
    # every run, whatever the machine's load at calibration.
    per = float("inf")
    with limit():
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(10):
                a @ a
            per = min(per, (time.perf_counter() - t0) / 10)
    reps = max(1, int(ms / 1000 / per))

    def run():
        with limit():
            for _ in range(reps):
                a @ a
    return run


def _threads_note(t: dict) -> str:
    n = t.get("compute_threads")
    return f" on {n} thread{'s' if n != 1 else ''}" if n else ""


def _clocks(t, tier) -> dict:
    """Cumulative tier counters of table ``t`` over ``tier``: seconds the
    step's own reads / write-backs took (``read_s`` / ``write_s``, waits for
    the tier included), the prefetch threads' reads (``prefetch_read_s``), the
    tier's device time and lock waits, and rows read / promoted / written."""
    c, p, io, st = t._t.tier_counters(), t._t.prefetch_counters(), tier.io_info(), tier.stats()
    return {"read_s": c["tier_read_ns"] * 1e-9, "write_s": c["tier_write_ns"] * 1e-9,
            "prefetch_read_s": p["prefetch_read_ns"] * 1e-9, "device_read_s": io["read_seconds"],
            "device_write_s": io["write_seconds"], "lock_wait_s": io["lock_wait_seconds"],
            "promotions": c["promotions"], "tier_rows_read": st["reads"], "rows_written": st["writes"],
            "prefetch_used_rows": p["prefetch_used_rows"], "cpu_s": _cpu_seconds()}


def _cpu_seconds() -> float:
    """CPU time of this process (every thread: user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def uring_refused(folder: str) -> str | None:
    """Why ``io="uring"`` cannot read a tier in ``folder`` (the kernel or a
    sandbox refuses io_uring, or the file system O_DIRECT), or None."""
    tier = el.storage.FileTier(os.path.join(folder, "ssd_probe.tier"), 8, dim=4)
    why = None
    try:
        tier.set_io("uring", threads=2)
    except ValueError as e:
        why = str(e)
    tier.close()
    os.remove(tier.path)
    return why


def read_path(folder: str) -> str:
    """The tier's read path for training: ``"uring"`` where it can read in
    ``folder`` (the least CPU per row read: docs/storage.md, "Reading from the
    device"), else ``"direct"`` (the thread pool)."""
    return "direct" if uring_refused(folder) else "uring"


def training(folder: str, rows: int, dim: int, alpha: float, memory_frac: float, batch: int, pooling: int,
             steps: int, compute_ms: float, dev, uniform: bool = False, log=print, rounds: int = 1,
             io: str = "auto", compute_threads: int | None = None) -> dict:
    """Training throughput: all rows in DRAM vs memory_frac in DRAM over an
    O_DIRECT tier, with and without prefetch one batch ahead. ``io``: the
    tier's read path ("auto": :func:`read_path`). ``compute_threads``: BLAS
    threads of the dense work (:func:`_dense_compute`)."""
    if io == "auto":
        io = read_path(folder)
    rng = np.random.default_rng(7)
    perm = rng.permutation(rows).astype(np.int64)
    cdf = None
    if not uniform:
        cdf = np.cumsum(np.arange(1, rows + 1, dtype=np.float64) ** -alpha)
        cdf /= cdf[-1]

    def draw(n):
        return rng.integers(0, rows, n).astype(np.int64) if uniform else zipf_keys(rng, rows, alpha, n, perm, cdf)

    warm = [draw(batch * pooling) for _ in range(4)]
    batches = [draw(batch * pooling) for _ in range(steps)]
    offsets = np.arange(0, batch * pooling, pooling, dtype=np.int64)
    grad = np.full((batch, dim), 1e-3, np.float32)
    opt = el.optim.SGD(lr=0.01)
    compute = _dense_compute(compute_ms, compute_threads)
    init = el.init.uniform(seed=1)
    budget = int(rows * memory_frac)
    res = {"rows": rows, "dim": dim, "alpha": None if uniform else alpha, "keys": "uniform" if uniform else "zipf",
           "memory_rows": budget, "batch": batch, "pooling": pooling, "steps": steps, "compute_ms": compute_ms,
           "rounds": rounds, "io": io, "compute_threads": compute_threads}

    def step(t, v):
        t.pooled_lookup(v, offsets)
        compute()
        t.apply_pooled_gradients(v, offsets, grad, opt)

    # All in DRAM: every row present before timing (no insertion in the timed steps).
    dram = el.EmbeddingTable(dim, initializer=init, optimizer=opt)
    for lo in range(0, rows, 1 << 18):
        dram.lookup(np.arange(lo, min(rows, lo + (1 << 18)), dtype=np.int64))
    for v in warm:
        step(dram, v)
    t0 = time.perf_counter()
    per, cpu = [], []
    for v in batches:
        s0, c0 = time.perf_counter(), _cpu_seconds()
        step(dram, v)
        per.append(time.perf_counter() - s0)
        cpu.append(_cpu_seconds() - c0)
    res["dram"] = {"samples_per_s": steps * batch / (time.perf_counter() - t0),
                   "step_ms_median": 1e3 * statistics.median(per), "cpu_ms_median": 1e3 * statistics.median(cpu)}
    log(f"  training: all in DRAM {res['dram']['samples_per_s']:.0f} samples/s")
    del dram

    path = os.path.join(folder, "ssd_train.tier")
    runs = {"tier": [], "tier_prefetch": []}
    # Rounds alternate the order (tier, tier+prefetch), (tier+prefetch, tier), ...:
    # on a shared machine a load change hits both alike; medians over every step.
    order = [p for r in range(rounds) for p in ((False, True) if r % 2 == 0 else (True, False))]
    for prefetch in order:
        if os.path.exists(path):
            os.remove(path)
        # Twice the rows: write-backs find wholly free blocks (no read before a write)
        tier = el.storage.FileTier(path, 2 * rows, io=io, io_threads=QUEUE_DEPTH)
        t = el.FrequencyTable(dim, initializer=init, optimizer=opt, budget_rows=budget, policy="lfu",
                              admit_count=1, evict_fraction=0.05, tier=tier)
        try:
            fill_tier(tier, rows, dim)  # every row starts in the tier (as the table's own rows)
            for v in warm:  # the policy learns what is hot; memory fills to its budget
                step(t, v)
            tier.flush()
            drop_cache(path)
            s0 = t.tier_stats()
            per, waits, clocks = [], [], []
            handle = t.prefetch(batches[0]) if prefetch else None
            t0 = time.perf_counter()
            with DeviceCounter(dev) as c:
                for i, v in enumerate(batches):
                    k0 = _clocks(t, tier)
                    a = time.perf_counter()
                    if prefetch:
                        handle.wait()
                        w = time.perf_counter() - a
                        if i + 1 < steps:
                            handle = t.prefetch(batches[i + 1])  # one batch ahead
                    else:
                        w = 0.0
                    step(t, v)
                    per.append(time.perf_counter() - a)
                    waits.append(w)
                    k1 = _clocks(t, tier)
                    clocks.append({k: k1[k] - k0[k] for k in k0})
            wall = time.perf_counter() - t0
            s1 = t.tier_stats()
            served = s1["tier_bytes_read"] - s0["tier_bytes_read"]
            name = "tier_prefetch" if prefetch else "tier"
            runs[name].append({
                "samples_per_s": steps * batch / wall,
                "step_ms_median": 1e3 * statistics.median(per),
                "prefetch_wait_ms_median": 1e3 * statistics.median(waits),
                "tier_rows_read": s1["tier_reads"] - s0["tier_reads"],
                "tier_bytes_served": served,
                "block_reads": s1["tier_device_reads"] - s0["tier_device_reads"],
                "device_bytes_read": c.bytes,
                "source": label(c.bytes, served),
                "rows_written_back": s1["tier_writes"] - s0["tier_writes"],
                "memory_hit_ratio": (s1["memory_hits"] - s0["memory_hits"])
                / max(1, (s1["memory_hits"] - s0["memory_hits"]) + (s1["tier_hits"] - s0["tier_hits"])),
                "prefetch_used_rows": s1["prefetch_used_rows"] - s0["prefetch_used_rows"],
                "memory": s1["memory"],
                "per_step": [dict(c, wall_s=p, prefetch_wait_s=w) for c, p, w in zip(clocks, per, waits)],
            })
            log(f"  training: {name} {runs[name][-1]['samples_per_s']:.0f} samples/s ({runs[name][-1]['source']})")
        finally:
            t.wait_prefetches() if prefetch else None
            tier.close()
            del t
            os.remove(path)
    for name, rs in runs.items():  # one run: as it is; several: medians, every step kept
        res[name] = dict(rs[0])
        if len(rs) > 1:
            res[name]["rounds"] = [{k: r[k] for k in ("samples_per_s", "step_ms_median", "source")} for r in rs]
            res[name]["samples_per_s"] = statistics.median(r["samples_per_s"] for r in rs)
            res[name]["per_step"] = [st for r in rs for st in r["per_step"]]
            res[name]["step_ms_median"] = 1e3 * statistics.median(st["wall_s"] for st in res[name]["per_step"])
            res[name]["source"] = "device" if all(r["source"] == "device" for r in rs) else rs[0]["source"]
    d = res["dram"]["samples_per_s"]
    res["prefetch_vs_dram"] = res["tier_prefetch"]["samples_per_s"] / d
    res["prefetch_vs_no_prefetch"] = res["tier_prefetch"]["samples_per_s"] / res["tier"]["samples_per_s"]
    res["step_wall_over_compute"] = res["tier_prefetch"]["step_ms_median"] / res["dram"]["step_ms_median"]
    res["split"] = step_split(res)
    return res


def step_split(res: dict) -> dict:
    """Where a training step's time goes and what overlap can give, per step
    (medians over the timed steps).

    ``io_ms``: the step without prefetch reading its batch's missing rows
    (``misses`` rows, queue depth 32): the part a prefetch can move off the
    step. ``compute_ms``: the same step on the all-in-DRAM table.
    ``rest_ms``: the step without prefetch less ``io_ms`` (compute, the
    write-back of evicted rows (``write_back_ms``) and the tier's bookkeeping:
    what stays on the step). Overlap saves at most min(io, rest), so

    * prefetch's gain over no prefetch is at most (io + compute) / max(io,
      compute) (``gain_bound``), and with the tier's own step work (io + rest) /
      max(io, rest) (``gain_bound_tier``, the tighter one);
    * the ratio to DRAM is at most compute / max(io, compute) (``dram_bound``),
      or compute / max(io, rest) (``dram_bound_tier``).

    ``achieved_*`` are the measured step-time ratios and ``*_fraction`` their
    share of the tighter bound. ``cpu_ms`` is the process's CPU time per step
    (all threads): above the wall time times the free cores, the step is bound
    by the CPU (the reads' system calls included), not by the device."""
    med = statistics.median
    tier, pf = res["tier"]["per_step"], res["tier_prefetch"]["per_step"]
    io = 1e3 * med(s["read_s"] for s in tier)
    wb = 1e3 * med(s["write_s"] for s in tier)
    wall, wall_pf = res["tier"]["step_ms_median"], res["tier_prefetch"]["step_ms_median"]
    compute = res["dram"]["step_ms_median"]
    rest = max(0.0, wall - io)
    out = {"misses": med(s["promotions"] for s in tier), "io_ms": io, "write_back_ms": wb, "compute_ms": compute,
           "rest_ms": rest, "step_ms": wall, "step_prefetch_ms": wall_pf,
           "prefetch_step_read_ms": 1e3 * med(s["read_s"] for s in pf),
           "prefetch_step_write_back_ms": 1e3 * med(s["write_s"] for s in pf),
           "prefetch_background_read_ms": 1e3 * med(s["prefetch_read_s"] for s in pf),
           "prefetch_used_per_step": med(s["prefetch_used_rows"] for s in pf),
           "cpu_ms": {"dram": res["dram"].get("cpu_ms_median"), "tier": 1e3 * med(s["cpu_s"] for s in tier),
                      "tier_prefetch": 1e3 * med(s["cpu_s"] for s in pf)},
           "cores": os.cpu_count()}
    out["gain_bound"] = (io + compute) / max(io, compute)
    out["gain_bound_tier"] = (io + rest) / max(io, rest, 1e-9)
    out["dram_bound"] = compute / max(io, compute)
    out["dram_bound_tier"] = compute / max(io, rest, 1e-9)
    out["achieved_gain"] = wall / wall_pf
    out["achieved_vs_dram"] = compute / wall_pf
    out["gain_fraction"] = (out["achieved_gain"] - 1) / max(out["gain_bound_tier"] - 1, 1e-9)
    out["dram_fraction"] = out["achieved_vs_dram"] / out["dram_bound_tier"]
    out["step_prefetch_over_compute"] = wall_pf / compute
    # The CPU is a floor too: the step cannot take less than its CPU time
    # spread over every core (reads cost CPU: system calls, wake-ups).
    out["cpu_floor_ms"] = out["cpu_ms"]["tier_prefetch"] / max(1, out["cores"] or 1)
    return out


# The training cases a result may hold, in the order they are shown.
TRAINING_KEYS = ("training", "training_compute", "training_compute_all_cores")


def write_plot(res: dict, path: str) -> str | None:
    """Step time per training case (bars: the step's own reads, write-back and
    the rest; a thin bar: the prefetch's background read), saved to ``path``.
    Returns why not (no matplotlib, no training result) or None."""
    cases = [(k, res[k]) for k in TRAINING_KEYS if k in res and "split" in res[k]]
    if not cases:
        return "no training result to plot"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    fig, axes = plt.subplots(1, len(cases), figsize=(5.2 * len(cases), 4.2), squeeze=False)
    for ax, (key, t) in zip(axes[0], cases):
        sp = t["split"]
        names = ["all in DRAM", "tier", "tier + prefetch"]
        reads = [0.0, sp["io_ms"], sp["prefetch_step_read_ms"]]
        wbs = [0.0, sp["write_back_ms"], sp["prefetch_step_write_back_ms"]]
        walls = [sp["compute_ms"], sp["step_ms"], sp["step_prefetch_ms"]]
        rest = [max(0.0, w - r - b) for w, r, b in zip(walls, reads, wbs)]
        x = np.arange(3)
        ax.bar(x, rest, 0.6, label="compute + bookkeeping", color="#4c72b0")
        ax.bar(x, wbs, 0.6, bottom=rest, label="write-back (in the step)", color="#dd8452")
        ax.bar(x, reads, 0.6, bottom=np.add(rest, wbs), label="reads of misses (in the step)", color="#c44e52")
        ax.bar([2.38], [sp["prefetch_background_read_ms"]], 0.12, color="#c44e52", alpha=0.45, hatch="//",
               label="prefetch read (background)")
        ax.axhline(max(sp["io_ms"], sp["rest_ms"]), color="k", ls="--", lw=0.8, label="bound: max(io, rest)")
        for xi, w in zip(x, walls):
            ax.text(xi, w, f"{w:.0f} ms", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=8)
        ax.set_ylabel("median step time (ms)")
        extra = f", +{t['compute_ms']:.0f} ms dense work{_threads_note(t)}" if t.get("compute_ms") else ""
        ax.set_title(f"{t['keys']} {t['rows'] / 1e6:g} M rows, {t['memory_rows'] / t['rows']:.0%} in DRAM, "
                     f"batch {t['batch']}x{t['pooling']}{extra}\n{sp['misses']:.0f} misses/step; prefetch "
                     f"{sp['achieved_gain']:.2f}x (bound {sp['gain_bound_tier']:.2f}x), "
                     f"{sp['achieved_vs_dram']:.2f}x DRAM (bound {sp['dram_bound_tier']:.2f}x)", fontsize=7)
        ax.legend(fontsize=6)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def run(folder: str, only=("device", "miss", "training"), rows: int = 1_000_000, dim: int = 64,
        alpha: float = 1.05, memory_frac: float = 0.10, batch: int = 4096, pooling: int = 32, steps: int = 8,
        compute_ms: float = 0.0, miss_batch: int = 16384, miss_calls: int = 4, log=print, rounds: int = 1,
        io: str = "auto", compute_threads: int | None = None) -> dict:
    _blas_threads(compute_threads)  # a bad value fails before any measurement
    dev = block_device(folder)
    res = {"folder": os.path.abspath(folder), "block_device": dev, "queue_depth": QUEUE_DEPTH}
    if "device" in only:
        res["device"] = device_limits(folder)
        log(f"  device: {json.dumps(res['device'])}")
    if "miss" in only:
        res["miss_service"] = m = miss_service(folder, rows, dim, miss_batch, miss_calls, dev)
        if "device" in res:
            lim = res["device"][f"rand4k_qd{QUEUE_DEPTH}_iops"]
            # rows served per second, and read requests per second, against the
            # device's random 4 KiB reads at the same queue depth
            for mode in ("direct", "aio", "uring"):
                if "skipped" in m[mode]:
                    continue
                m[mode]["rows_vs_device_random_reads"] = m[mode]["rows_per_s"] / lim
                m[mode]["requests_vs_device_random_reads"] = m[mode]["block_reads_per_s"] / lim
        log(f"  miss service: {json.dumps(m)}")
    if "training" in only:
        res["training"] = training(folder, rows, dim, alpha, memory_frac, batch, pooling, steps, compute_ms, dev,
                                   log=log, rounds=rounds, io=io, compute_threads=compute_threads)
    return res


def suite_section(tier_dir: str | None = None, log=print) -> dict:
    """The ``--suite storage`` part: device limit, miss service and training
    (Zipf 1.05, 10% of 1 M x 64 rows in DRAM, batch 4096 x 32) three times:
    with no other work per step (I/O-bound), and with 800 ms of dense work per
    step (the device keeps up) on one BLAS thread (the other cores left to the
    tier, as a trainer whose dense layers run on an accelerator) and on every
    core (the tier's CPU work then competes with it); in a scratch folder under
    ``tier_dir`` (removed)."""
    import shutil

    folder = tempfile.mkdtemp(prefix="embedlookup-bench-ssd-", dir=tier_dir or tempfile.gettempdir())
    try:
        log("storage: the tier under real I/O (device limit, cold reads, training with prefetch) ...")
        res = run(folder, ("device", "miss", "training"), steps=6, log=log)
        dev = block_device(folder)
        res["training_compute"] = training(folder, 1_000_000, 64, 1.05, 0.10, 4096, 32, 5, 800.0, dev, log=log,
                                           compute_threads=1)
        res["training_compute_all_cores"] = training(folder, 1_000_000, 64, 1.05, 0.10, 4096, 32, 5, 800.0, dev,
                                                     log=log)
        return res
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def format_section(res: dict) -> str:
    d, m = res.get("device", {}), res.get("miss_service", {})
    lines = ["", f"tier under real I/O (device {res.get('block_device')}, queue depth {res.get('queue_depth')}):"]
    if d:
        lines.append(f"  device: random 4 KiB {d['rand4k_qd1_iops']:.0f}/s at QD1, {d[f'rand4k_qd{QUEUE_DEPTH}_iops']:.0f}/s "
                     f"at QD{QUEUE_DEPTH}; sequential {d['seq1m_qd1_MBps']:.0f} MB/s")
    if m:
        for mode, how in (("direct", "O_DIRECT, thread pool"), ("aio", "O_DIRECT, Linux AIO"),
                          ("uring", "O_DIRECT, io_uring")):
            x = m.get(mode)
            if x and "skipped" in x:
                lines.append(f"  missing rows ({how}): not measured ({x['skipped']})")
            elif x:
                lines.append(f"  missing rows ({how}): {x['rows_per_s']:.0f} rows/s = "
                             f"{x.get('rows_vs_device_random_reads', float('nan')):.2f} x the device's random reads, "
                             f"{x['cpu_us_per_row']:.1f} us CPU and {x['context_switches_per_row']:.2f} context "
                             f"switches a row "
                             f"({x['source']}: device read {x['device_bytes_read']} B, tier served "
                             f"{x['tier_bytes_served']} B)")
        lines.append(f"  mmap after dropping the cache: {m['mmap']['rows_per_s']:.0f} rows/s")
    for key in TRAINING_KEYS:
        t = res.get(key)
        if not t:
            continue
        sp = t.get("split", {})
        lines.append(f"  {key} ({t['compute_ms']:.0f} ms dense work/step{_threads_note(t)}): DRAM {t['dram']['samples_per_s']:.0f}, "
                     f"tier {t['tier']['samples_per_s']:.0f}, tier+prefetch {t['tier_prefetch']['samples_per_s']:.0f} "
                     f"samples/s; prefetch/DRAM {t['prefetch_vs_dram']:.2f}, prefetch/no-prefetch "
                     f"{t['prefetch_vs_no_prefetch']:.2f} ({t['tier_prefetch']['source']})")
        if sp:
            lines.append(f"    per step: {sp['misses']:.0f} misses read in {sp['io_ms']:.0f} ms (io), write-back "
                         f"{sp['write_back_ms']:.0f} ms, compute (DRAM step) {sp['compute_ms']:.0f} ms, rest of the "
                         f"tier step {sp['rest_ms']:.0f} ms; wall {sp['step_ms']:.0f} ms without prefetch, "
                         f"{sp['step_prefetch_ms']:.0f} ms with (= {sp['step_prefetch_over_compute']:.2f} x compute)")
            lines.append(f"    bounds: prefetch gain <= {sp['gain_bound']:.2f} (io+compute)/max, "
                         f"<= {sp['gain_bound_tier']:.2f} (io+rest)/max; achieved {sp['achieved_gain']:.2f} "
                         f"({sp['gain_fraction']:.0%} of the possible gain); vs DRAM <= {sp['dram_bound']:.2f} "
                         f"compute/max(io,compute), <= {sp['dram_bound_tier']:.2f} compute/max(io,rest); achieved "
                         f"{sp['achieved_vs_dram']:.2f} ({sp['dram_fraction']:.0%}); CPU per step "
                         f"{sp['cpu_ms']['tier']:.0f} / {sp['cpu_ms']['tier_prefetch']:.0f} ms (DRAM "
                         f"{sp['cpu_ms']['dram']:.0f} ms) on {sp['cores']} cores")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="folder on the device to measure (default: a temp folder under .)")
    ap.add_argument("--only", default="device,miss,training", help="comma-separated: device, miss, training")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=1.05)
    ap.add_argument("--memory-frac", type=float, default=0.10)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--pooling", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--compute-ms", type=float, default=0.0, help="dense work per training step (ms)")
    ap.add_argument("--compute-threads", type=int, default=None,
                    help="BLAS threads of the dense work (default: every core; 1 leaves the other cores to the tier)")
    ap.add_argument("--io", default="auto", choices=("auto", "direct", "aio", "uring"),
                    help="the tier's read path in training (auto: uring where the kernel takes it, else direct)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="tier / tier+prefetch runs each, alternated (medians over every step)")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    ap.add_argument("--plot", default=None,
                    help="write the step-time plot here (default: next to --out, as <out>_steps.png)")
    a = ap.parse_args(argv)
    folder = a.dir or tempfile.mkdtemp(prefix="elssd-", dir=".")
    res = run(folder, tuple(a.only.split(",")), a.rows, a.dim, a.alpha, a.memory_frac, a.batch, a.pooling, a.steps,
              a.compute_ms, rounds=a.rounds, io=a.io, compute_threads=a.compute_threads)
    if a.dir is None:
        os.rmdir(folder)
    plot = a.plot or (os.path.splitext(a.out)[0] + "_steps.png" if a.out else None)
    if plot:
        why = write_plot(res, plot)
        print(f"plot: {why or plot}")
    print(format_section(res))
    return emit(res, a.out)


def emit(res: dict, out: str | None) -> dict:
    """Prints the result as JSON and writes it to ``out`` (when given)."""
    text = json.dumps(res, indent=1)
    if out:
        with open(out, "w") as f:
            f.write(text)
    print(text)
    return res


if __name__ == "__main__":
    main()
