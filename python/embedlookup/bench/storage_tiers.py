"""Storage benchmarks: disk, checkpoints, a DRAM + file tier. Reports medians of interleaved repeats.

1. The disk: sequential write (+fsync) and read (page cache dropped for the
   file with posix_fadvise) of a large file, in the folder used below.
2. save() / load() of a rows x dim table: seconds and GB/s of file bytes
   against (1).
3. Zipf(alpha) pooled lookups with `memory_frac` of the rows in DRAM and the
   rest in a FileTier (served in place), against the same rows all in DRAM,
   interleaved in one run; the memory-tier hit ratio.
4. Why the file tier reads through mmap: one random slot read through the
   mapping vs pread (both from Python, so both include the interpreter's
   per-call cost; the difference is the syscall).

    PYTHONPATH=python python3 bench/bench_storage.py [--rows 1000000] [--dir .]
    python3 -m embedlookup.bench.storage_tiers [--rows 1000000]    # the same, installed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

import embedlookup as el


def disk_bandwidth(folder: str, mb: int, repeats: int) -> dict:
    path = os.path.join(folder, "bench_disk.bin")
    block = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
    w, r = [], []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            for _ in range(mb // 8):
                os.write(fd, block)
            os.fsync(fd)
            os.close(fd)
            w.append(mb * 2**20 / (time.perf_counter() - t0))
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read from the device, not the cache
            t0 = time.perf_counter()
            while os.read(fd, 8 << 20):
                pass
            r.append(mb * 2**20 / (time.perf_counter() - t0))
            os.close(fd)
    finally:
        if os.path.exists(path):
            os.remove(path)
    return {"write_GBps": statistics.median(w) / 1e9, "read_GBps": statistics.median(r) / 1e9, "file_MB": mb}


def save_load(folder: str, rows: int, dim: int, repeats: int) -> dict:
    t = el.EmbeddingTable(dim, initializer=el.init.uniform(seed=1))
    t.lookup(np.arange(rows, dtype=np.int64))
    path = os.path.join(folder, "bench_ckpt.elt")
    save_s, load_cold_s, load_warm_s = [], [], []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            t.save(path)
            save_s.append(time.perf_counter() - t0)
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            t0 = time.perf_counter()
            u = el.EmbeddingTable.load(path)
            load_cold_s.append(time.perf_counter() - t0)
            del u
            t0 = time.perf_counter()
            u = el.EmbeddingTable.load(path)
            load_warm_s.append(time.perf_counter() - t0)
            assert len(u) == rows
            del u
        size = os.path.getsize(path)
    finally:
        if os.path.exists(path):
            os.remove(path)
    med = statistics.median
    return {"rows": rows, "dim": dim, "file_bytes": size, "save_s": med(save_s), "save_GBps": size / med(save_s) / 1e9,
            "load_cold_s": med(load_cold_s), "load_cold_GBps": size / med(load_cold_s) / 1e9,
            "load_warm_s": med(load_warm_s), "load_warm_GBps": size / med(load_warm_s) / 1e9}


def zipf_keys(rng, n_rows: int, alpha: float, n: int, perm: np.ndarray) -> np.ndarray:
    # Finite Zipf over ranks 1..n_rows by inverse CDF; ranks mapped to scattered keys.
    cdf = np.cumsum(np.arange(1, n_rows + 1, dtype=np.float64) ** -alpha)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(n))
    return perm[np.minimum(ranks, n_rows - 1)]


def tiered_lookup(folder: str, rows: int, dim: int, alpha: float, memory_frac: float, batch: int, pooling: int,
                  repeats: int, calls: int, threads: int) -> dict:
    rng = np.random.default_rng(7)
    perm = rng.permutation(rows).astype(np.int64)
    init = el.init.uniform(seed=3)
    dram = el.EmbeddingTable(dim, initializer=init, num_threads=threads)
    dram.lookup(np.arange(rows, dtype=np.int64))
    tier_path = os.path.join(folder, "bench_tier.elt")
    if os.path.exists(tier_path):
        os.remove(tier_path)
    tier = el.storage.FileTier(tier_path, rows)
    tiered = el.EmbeddingTable(dim, initializer=init, tier=tier, promote=False, num_threads=threads)
    tiered.lookup(np.arange(rows, dtype=np.int64))
    # Placement: keep the rows a warm-up trace used most (what a frequency
    # policy would keep), demote the rest.
    warm = zipf_keys(rng, rows, alpha, 20 * batch * pooling, perm)
    counts = np.bincount(warm, minlength=rows)
    hot = np.argsort(-counts, kind="stable")[: int(rows * memory_frac)]
    cold = np.setdiff1d(np.arange(rows, dtype=np.int64), hot)
    t0 = time.perf_counter()
    tiered.demote(cold)
    tier.flush()
    demote_s = time.perf_counter() - t0
    batches = [zipf_keys(rng, rows, alpha, batch * pooling, perm) for _ in range(calls)]
    offsets = np.arange(0, batch * pooling, pooling, dtype=np.int64)
    out = np.empty((batch, dim), np.float32)
    # correctness guard for the numbers below
    np.testing.assert_allclose(tiered.pooled_lookup(batches[0], offsets, insert=False),
                               dram.pooled_lookup(batches[0], offsets, insert=False), rtol=1e-5, atol=1e-6)
    before = tiered.tier_stats()
    thr = {"dram": [], "tiered": []}
    for _ in range(repeats):
        for name, t in (("dram", dram), ("tiered", tiered)):
            t0 = time.perf_counter()
            for v in batches:
                t.pooled_lookup(v, offsets, insert=False, out=out)
            thr[name].append(calls * batch * pooling / (time.perf_counter() - t0))
    after = tiered.tier_stats()
    mh = after["memory_hits"] - before["memory_hits"]
    th = after["tier_hits"] - before["tier_hits"]
    ratios = [a / b for a, b in zip(thr["tiered"], thr["dram"])]
    tier.close()
    os.remove(tier_path)
    return {"rows": rows, "dim": dim, "alpha": alpha, "memory_rows": int(rows * memory_frac),
            "batch": batch, "pooling": pooling, "threads": threads, "demote_s": demote_s,
            "dram_rows_per_s": statistics.median(thr["dram"]), "tiered_rows_per_s": statistics.median(thr["tiered"]),
            "ratio_median": statistics.median(ratios), "memory_hit_ratio": mh / (mh + th)}


def slot_read(folder: str, slots: int, slot_bytes: int, reads: int) -> dict:
    path = os.path.join(folder, "bench_slots.bin")
    with open(path, "wb") as f:
        f.write(np.ones(slots * slot_bytes, np.uint8).tobytes())
    try:
        res = {"pread_ns": [], "mmap_ns": []}
        for _ in range(3):  # interleaved
            res["pread_ns"].append(el._probes.slot_read_ns(path, slot_bytes, reads, False))
            res["mmap_ns"].append(el._probes.slot_read_ns(path, slot_bytes, reads, True))
    finally:
        os.remove(path)
    return {"slots": slots, "slot_bytes": slot_bytes, "pread_ns_per_slot": statistics.median(res["pread_ns"]),
            "mmap_ns_per_slot": statistics.median(res["mmap_ns"])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="folder for the files (default: a temp folder under .)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=1.05)
    ap.add_argument("--memory-frac", type=float, default=0.10)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads per table call")
    ap.add_argument("--disk-mb", type=int, default=1024)
    ap.add_argument("--only", choices=["disk", "saveload", "tier", "slots"], action="append")
    a = ap.parse_args()
    folder = a.dir or tempfile.mkdtemp(prefix="elbench-", dir=".")
    only = set(a.only or ["disk", "saveload", "tier", "slots"])
    res = {"machine_threads": el._core.max_threads()}
    if "disk" in only:
        res["disk"] = disk_bandwidth(folder, a.disk_mb, 3)
        print(json.dumps({"disk": res["disk"]}), flush=True)
    if "saveload" in only:
        res["save_load"] = save_load(folder, a.rows, a.dim, 3)
        print(json.dumps({"save_load": res["save_load"]}), flush=True)
    if "tier" in only:
        res["tier"] = tiered_lookup(folder, a.rows, a.dim, a.alpha, a.memory_frac, a.batch, a.pooling, a.repeats,
                                    a.calls, a.threads)
        print(json.dumps({"tier": res["tier"]}), flush=True)
    if "slots" in only:
        res["slots"] = slot_read(folder, 1 << 18, 256, 100_000)
        print(json.dumps({"slots": res["slots"]}), flush=True)
    if a.dir is None:
        os.rmdir(folder)
    return res


if __name__ == "__main__":
    main()
