"""A table larger than the machine's memory: a FrequencyTable with a DRAM budget
of --budget-gb over a FileTier of --gb of rows (O_DIRECT reads and writes at
queue depth 32), trained and looked up with Zipf(--alpha) and uniform keys.
Not a CI test: it writes tens of GB (progress on stderr) and deletes the file
at the end.

For each key distribution: --steps training steps (pooled sum over batch x
pooling keys, fused SGD backward) without and with prefetch one batch ahead,
then --steps serving lookups (find, rows in place); the file's pages are
dropped before each run and the bytes the block device read are counted
next to the bytes the tier served. No all-in-DRAM peer: the rows do not fit
in memory; the device's random-read rate measured in the same run is the
reference instead.

    PYTHONPATH=python python3 bench/bench_ssd_large.py --dir /var/tmp --gb 32 --budget-gb 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import embedlookup as el
from embedlookup.bench import ssd


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=".", help="folder on the device to measure")
    ap.add_argument("--gb", type=float, default=32.0, help="GB of row data in the tier")
    ap.add_argument("--budget-gb", type=float, default=2.0, help="DRAM budget of the table's rows")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--alpha", type=float, default=1.05)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--pooling", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warm", type=int, default=2, help="untimed training steps per key distribution first "
                    "(enough to fill the budget: then every step writes rows back)")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    a = ap.parse_args(argv)
    row_bytes = 4 * a.dim
    rows = int(a.gb * 1e9 / row_bytes)
    budget = int(a.budget_gb * 2**30 / (row_bytes + 64))  # rows + index/metadata per row
    path = os.path.join(a.dir, "bench_ssd_large.tier")
    dev = ssd.block_device(a.dir)
    res = {"rows": rows, "dim": a.dim, "row_data_GB": rows * row_bytes / 1e9, "budget_rows": budget,
           "budget_GB": a.budget_gb, "batch": a.batch, "pooling": a.pooling, "steps": a.steps, "warm": a.warm,
           "block_device": dev}
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    res["machine_memory_GB"] = mem / 1e9
    log(f"{rows} rows x {a.dim} ({res['row_data_GB']:.1f} GB of rows; machine memory {mem / 1e9:.1f} GB), "
        f"DRAM budget {budget} rows ({a.budget_gb} GiB)")
    res["device"] = ssd.device_limits(a.dir)
    log(f"device: {json.dumps(res['device'])}")
    if os.path.exists(path):
        os.remove(path)
    # a quarter more slots than rows: write-backs find wholly free blocks
    tier = el.storage.FileTier(path, rows + rows // 4, dim=a.dim, io="direct", io_threads=ssd.QUEUE_DEPTH)
    try:
        res["tier_file_GB"] = os.path.getsize(path) / 1e9
        t0 = time.perf_counter()
        last = [0.0]

        def progress(done, total):
            if time.perf_counter() - last[0] > 10:
                last[0] = time.perf_counter()
                el_s = last[0] - t0
                log(f"filling: {done}/{total} rows, {done * row_bytes / el_s / 1e6:.0f} MB/s")

        ssd.fill_tier(tier, rows, a.dim, progress=progress)
        res["fill_s"] = time.perf_counter() - t0
        res["fill_MBps"] = rows * row_bytes / res["fill_s"] / 1e6
        log(f"filled in {res['fill_s']:.0f} s ({res['fill_MBps']:.0f} MB/s)")
        opt = el.optim.SGD(lr=0.01)
        table = el.FrequencyTable(a.dim, initializer=el.init.uniform(seed=1), optimizer=opt, budget_rows=budget,
                                  policy="lfu", admit_count=1, evict_fraction=0.05, tier=tier)
        rng = np.random.default_rng(3)
        perm = cdf = None
        offsets = np.arange(0, a.batch * a.pooling, a.pooling, dtype=np.int64)
        grad = np.full((a.batch, a.dim), 1e-3, np.float32)
        for dist in ("zipf", "uniform"):
            if dist == "zipf" and cdf is None:
                perm = rng.permutation(rows).astype(np.int64)
                cdf = np.cumsum(np.arange(1, rows + 1, dtype=np.float64) ** -a.alpha)
                cdf /= cdf[-1]

            def draw():
                n = a.batch * a.pooling
                return (ssd.zipf_keys(rng, rows, a.alpha, n, perm, cdf) if dist == "zipf"
                        else rng.integers(0, rows, n).astype(np.int64))

            for w in range(a.warm):  # warm: the policy fills memory
                v = draw()
                table.pooled_lookup(v, offsets)
                table.apply_pooled_gradients(v, offsets, grad, opt)
                log(f"{dist} warm step {w + 1}/{a.warm}: {table.tier_stats()['memory_rows']} rows in memory")
            for prefetch in (False, True):
                batches = [draw() for _ in range(a.steps)]
                tier.flush()
                ssd.drop_cache(path)
                s0 = table.tier_stats()
                per = []
                h = table.prefetch(batches[0]) if prefetch else None
                t0 = time.perf_counter()
                with ssd.DeviceCounter(dev) as c:
                    for i, v in enumerate(batches):
                        st = time.perf_counter()
                        if prefetch:
                            h.wait()
                            if i + 1 < len(batches):
                                h = table.prefetch(batches[i + 1])
                        table.pooled_lookup(v, offsets)
                        table.apply_pooled_gradients(v, offsets, grad, opt)
                        per.append(time.perf_counter() - st)
                        log(f"{dist} train prefetch={prefetch} step {i + 1}/{a.steps}: {per[-1]:.2f} s")
                wall = time.perf_counter() - t0
                s1 = table.tier_stats()
                served = s1["tier_bytes_read"] - s0["tier_bytes_read"]
                rows_read = s1["tier_reads"] - s0["tier_reads"]
                r = {"samples_per_s": a.steps * a.batch / wall, "step_s_median": statistics.median(per),
                     "tier_rows_read": rows_read, "tier_rows_read_per_s": rows_read / wall,
                     "rows_written_back": s1["tier_writes"] - s0["tier_writes"],
                     "tier_bytes_served": served, "device_bytes_read": c.bytes, "source": ssd.label(c.bytes, served),
                     "memory": s1["memory"]}
                res[f"train_{dist}_{'prefetch' if prefetch else 'no_prefetch'}"] = r
                log(f"{dist} train prefetch={prefetch}: {json.dumps(r)}")
            # Serving lookups: rows in place, nothing promoted or written.
            batches = [draw() for _ in range(a.steps)]
            ssd.drop_cache(path)
            s0 = table.tier_stats()
            t0 = time.perf_counter()
            with ssd.DeviceCounter(dev) as c:
                for v in batches:
                    table.find(v)
            wall = time.perf_counter() - t0
            s1 = table.tier_stats()
            served = s1["tier_bytes_read"] - s0["tier_bytes_read"]
            rows_read = s1["tier_reads"] - s0["tier_reads"]
            r = {"keys_per_s": a.steps * a.batch * a.pooling / wall, "tier_rows_read_per_s": rows_read / wall,
                 "rows_vs_device_random_reads": rows_read / wall / res["device"][f"rand4k_qd{ssd.QUEUE_DEPTH}_iops"],
                 "tier_bytes_served": served, "device_bytes_read": c.bytes, "source": ssd.label(c.bytes, served)}
            res[f"lookup_{dist}"] = r
            log(f"{dist} lookup: {json.dumps(r)}")
        tier.flush()
    finally:
        tier.close()
        os.remove(path)
        log(f"removed {path}")
    return ssd.emit(res, a.out)


if __name__ == "__main__":
    main()
