"""Benchmark of the OpenCL pooled lookup (PoCL or any OpenCL device).

Reports, for one workload, the median over repeats of:

- ``device_s``: kernel time from OpenCL profiling events (resolve + pool),
- ``call_s``: a whole ``pooled_lookup`` call (argument checks, uploads, kernels, read-back),
- effective bytes/s = rows read x row bytes / time, next to the device's
  measured buffer-to-buffer copy bandwidth (bytes read + written / time) and
  the CPU engine's ``pooled_lookup`` on the same keys (``insert=False``), with
  all its threads and with one.

    python -m embedlookup.bench.opencl_table --platform portable --rows 100000 --dim 64
    PYTHONPATH=python python3 bench/bench_opencl.py ...          # the same, from a checkout

Repeats are interleaved (engine, variant, engine, ...) so that load from other
processes hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ..opencl.table import OpenCLTable, _cl

__all__ = ["bench_kinds", "bench_pooled", "device_copy_bandwidth", "main", "make_workload"]


def make_workload(rows: int, batch: int, pooling: int, alpha: float | None, seed: int = 0):
    """Table keys (random int64), bag values and offsets. ``alpha``: Zipf
    exponent of key popularity (> 1), ``None`` for uniform."""
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(-(2**62), 2**62, rows + rows // 8 + 16, dtype=np.int64))[:rows]
    keys = rng.permutation(keys)
    n = batch * pooling
    if alpha is None:
        ranks = rng.integers(0, len(keys), n)
    else:
        ranks = (rng.zipf(alpha, n) - 1) % len(keys)
    return keys, keys[ranks], np.arange(0, n, pooling, dtype=np.int64)


def device_copy_bandwidth(dev: OpenCLTable, nbytes: int = 64 << 20, repeats: int = 5) -> float:
    """Bytes/s (read + written) of a buffer-to-buffer copy on the device, by profiling events."""
    cl = _cl()
    ctx = dev._ctx
    queue = cl.CommandQueue(ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
    nbytes = int(min(nbytes, dev.device.max_mem_alloc_size // 2))
    a = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, size=nbytes)
    b = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, size=nbytes)
    cl.enqueue_fill_buffer(queue, a, np.uint8(1), 0, nbytes).wait()
    cl.enqueue_copy(queue, b, a).wait()  # first touch
    times = []
    for _ in range(repeats):
        ev = cl.enqueue_copy(queue, b, a)
        ev.wait()
        times.append((ev.profile.end - ev.profile.start) * 1e-9)
    return 2 * nbytes / float(np.median(times))


def bench_pooled(
    platform=None,
    device=None,
    rows: int = 100_000,
    dim: int = 64,
    batch: int = 1024,
    pooling: int = 32,
    alpha: float | None = None,
    mode: str = "sum",
    repeats: int = 5,
    variants=("ndrange", "single_work_item"),
    seed: int = 0,
) -> dict:
    """Runs the workload; returns a dict of medians (seconds, bytes/s) per variant."""
    import embedlookup as el

    keys, values, offsets = make_workload(rows, batch, pooling, alpha, seed)
    table = el.EmbeddingTable(dim, initializer=el.init.uniform(-0.1, 0.1, seed=seed))
    table.lookup(keys)
    # The same rows with one OpenMP thread: on a loaded machine a parallel
    # region can wait milliseconds for its threads, which a one-thread run shows.
    table_1t = el.EmbeddingTable(dim, num_threads=1)
    table_1t.assign(*table.export())
    devs = {
        v: OpenCLTable(table, platform=platform, device=device, variant=v, profile=True) for v in variants
    }
    first = next(iter(devs.values()))
    want = table.pooled_lookup(values, offsets, mode, insert=False)
    for v, d in devs.items():  # warm-up, and never time a wrong answer
        np.testing.assert_allclose(d.pooled_lookup(values, offsets, mode), want, rtol=1e-5, atol=1e-6)

    samples = {"cpu_engine": [], "cpu_engine_1thread": []}
    samples.update({f"{v}_call": [] for v in devs})
    samples.update({f"{v}_device": [] for v in devs})
    for _ in range(repeats):
        t0 = time.perf_counter()
        table.pooled_lookup(values, offsets, mode, insert=False)
        samples["cpu_engine"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        table_1t.pooled_lookup(values, offsets, mode, insert=False)
        samples["cpu_engine_1thread"].append(time.perf_counter() - t0)
        for v, d in devs.items():
            t0 = time.perf_counter()
            d.pooled_lookup(values, offsets, mode)
            samples[f"{v}_call"].append(time.perf_counter() - t0)
            samples[f"{v}_device"].append(d.last_kernel_seconds)

    row_bytes = 4 * dim
    useful = len(values) * row_bytes
    result = {
        "device": first.device.name,
        "platform": first.platform.name,
        "rows": rows,
        "dim": dim,
        "batch": batch,
        "pooling": pooling,
        "keys": "uniform" if alpha is None else f"zipf({alpha})",
        "mode": mode,
        "repeats": repeats,
        "rows_read_bytes": useful,
        "device_copy_bytes_per_s": device_copy_bandwidth(first),
    }
    for name, ts in samples.items():
        med = float(np.median(ts))
        result[f"{name}_s"] = med
        result[f"{name}_bytes_per_s"] = useful / med
    return result


def bench_kinds(platform=None, device=None, rows: int = 100_000, dim: int = 64, batch: int = 1024,
                pooling: int = 32, kinds=("fp32", "fp16", "bf16", "int8", "int4"), variant: str = "ndrange",
                repeats: int = 5, seed: int = 0) -> dict:
    """Pooled sums over the same keys from tables of each storage type
    (``OpenCLTable.from_raw``, synthetic rows): median kernel time and
    effective bytes/s (keys x the type's row bytes), interleaved repeats."""
    from .. import _row_layout
    from .raw_rows import synthetic_raw_rows

    keys, values, offsets = make_workload(rows, batch, pooling, None, seed)
    devs = {k: OpenCLTable.from_raw(keys, synthetic_raw_rows(k, rows, dim, seed), k, dim, platform=platform,
                                    device=device, variant=variant, profile=True) for k in kinds}
    for d in devs.values():
        d.pooled_lookup(values, offsets)  # warm-up (program build, first touch)
    samples = {k: [] for k in kinds}
    for _ in range(repeats):
        for k, d in devs.items():
            d.pooled_lookup(values, offsets)
            samples[k].append(d.last_kernel_seconds)
    first = next(iter(devs.values()))
    out = {"device": first.device.name, "variant": variant, "rows": rows, "dim": dim, "batch": batch,
           "pooling": pooling, "repeats": repeats, "kinds": {}}
    base = float(np.median(samples[kinds[0]]))
    for k, ts in samples.items():
        med = float(np.median(ts))
        out["kinds"][k] = {"device_s": med, "bytes_per_s": len(values) * _row_layout.row_bytes(k, dim) / med,
                           f"speedup_vs_{kinds[0]}": base / med}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="OpenCL pooled-lookup benchmark")
    ap.add_argument("--platform", default=None, help="platform name substring or index (default: first)")
    ap.add_argument("--device", default=None, help="device name substring or index (default: first)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--pooling", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=None, help="Zipf exponent (> 1); default uniform keys")
    ap.add_argument("--mode", default="sum", choices=["sum", "mean", "max"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default="ndrange,single_work_item")
    ap.add_argument("--kinds", default=None,
                    help="instead: pooled sums over rows of these storage types (e.g. fp32,fp16,bf16,int8,int4; "
                    "the first is the baseline), with the first of --variants")
    args = ap.parse_args(argv)

    def sel(x):
        return int(x) if x is not None and x.isdigit() else x

    if args.kinds:
        r = bench_kinds(sel(args.platform), sel(args.device), args.rows, args.dim, args.batch, args.pooling,
                        tuple(args.kinds.split(",")), args.variants.split(",")[0], args.repeats)
        print(json.dumps(r, indent=1))
        return 0

    r = bench_pooled(
        sel(args.platform),
        sel(args.device),
        args.rows,
        args.dim,
        args.batch,
        args.pooling,
        args.alpha,
        args.mode,
        args.repeats,
        tuple(args.variants.split(",")),
    )
    print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
