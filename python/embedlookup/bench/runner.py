"""Runs operations on workloads for every subject, checked, warmed up and interleaved.

For each (workload, operation): build every subject's :class:`~.ops.Case`,
run each once from the same initial state and compare its output with
embedlookup's (a subject that disagrees is reported as a mismatch and never
timed), warm up, pick per subject how many calls make one sample (at least
``min_time`` seconds), then take samples round-robin over the subjects,
rotating the starting subject each round, so drifting machine load hits all
subjects alike. A round is short (one sample each, usually one call), so the
rounds pair up well even on a loaded machine; ratios against embedlookup are
the median of the per-round ratios. The number of rounds is ``repeats`` at
least, and more (up to ``max_repeats``) while the op's rounds fit in
``op_time`` seconds: fast ops get many rounds for free, slow ops the minimum.
With ``passes`` > 1 the whole plan runs that many times, in alternating
order, each pass taking its share of the rounds; each (workload, op,
subject) then pools its rounds from every pass.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import machine as _machine
from .ops import OPS, SUBJECTS, Case, Skip
from .workloads import Workload, WorkloadData

__all__ = ["SCHEMA", "Config", "compare_outputs", "run"]

SCHEMA = "embedlookup-bench/1"


@dataclass
class Config:
    repeats: int = 9  # timed samples per subject, at least
    max_repeats: int = 41  # ... and at most, while rounds fit in op_time
    op_time: float = 1.5  # seconds of timed rounds per op (beyond `repeats`)
    warmup: int = 2  # untimed calls per subject before timing (at least 1: the last calibrates)
    min_time: float = 0.005  # seconds per sample (calls are repeated to reach it)
    subjects: list | None = None  # None: all registered
    limits: bool = True  # measure copy / gather bandwidth
    limit_bytes: int = 256 << 20  # table size for the gather limit (at least the workload's table)
    rtol: float = 1e-4  # equivalence tolerance (relative, and absolute x max|ref|)
    progress: bool = True
    # Passes over the plan, alternating forward and reversed order (A B B A
    # ...), each taking its share of the rounds: every ratio then averages the
    # machine's state over the whole run, not over the few seconds its op
    # happened to run in, so two runs agree better on a shared machine.
    passes: int = 1
    # Large temporaries reuse heap memory (machine.steady_allocator), and
    # torch's large tensors go on huge pages as everyone else's (torch_huge_pages).
    steady_allocator: bool = True
    # Extra rounds while the run is heading for a peer's median ratio whose
    # 95% confidence interval is wider than +-ratio_ci (0: never), up to
    # ratio_ci_factor times the planned rounds (and time) of the pass.
    ratio_ci: float = 0.0
    ratio_ci_factor: float = 3.0
    # Where storage operations (tier_read, tier_write, checkpoint) write their
    # scratch files; None: the system's temporary folder.
    tier_dir: str | None = None


def compare_outputs(ref, out, rtol: float = 1e-4) -> tuple[bool, float, str]:
    """Whether ``out`` equals the reference ``ref`` within fp32 reduction-order
    noise: (ok, max |out - ref|, a message when not ok)."""
    ref = np.asarray(ref)
    out = np.asarray(out)
    if out.shape != ref.shape:
        return False, math.inf, f"output shape {out.shape} != embedlookup's {ref.shape}"
    if not np.all(np.isfinite(out)):
        return False, math.inf, "output holds NaN or inf"
    if ref.size == 0:
        return True, 0.0, ""
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    scale = max(1.0, float(np.abs(ref).max()))
    bad = diff > rtol * np.abs(ref) + rtol * 0.1 * scale
    mad = float(diff.max())
    if bad.any():
        return (
            False,
            mad,
            (
                f"output differs from embedlookup's at {int(bad.sum())} of {bad.size} values "
                f"(max |diff| {mad:.3g})"
            ),
        )
    return True, mad, ""


class Progress:
    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.t0 = time.perf_counter()

    def step(self, label: str):
        self.done += 1
        self.show(label, lasting=True)

    def show(self, label: str, lasting: bool = False):
        """Updates the bar in place on a terminal; elsewhere (a log) only
        completed steps print a line."""
        if not self.enabled or not (self.tty or lasting):
            return
        n = 24
        fill = int(n * min(self.done, self.total) / self.total)
        line = (
            f"[{'#' * fill}{'.' * (n - fill)}] {self.done}/{self.total} "
            f"{time.perf_counter() - self.t0:5.0f}s {label}"
        )
        if self.tty:
            self.stream.write("\r\x1b[K" + line[:150])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text: str):
        """A line that stays (a skip, a mismatch), printed above the bar."""
        if self.tty and self.enabled:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        if self.tty and self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _stats(t: list[float]) -> dict:
    a = np.asarray(t)
    q1, med, q3 = (float(x) for x in np.percentile(a, [25, 50, 75]))
    return {
        "median_s": med,
        "q1_s": q1,
        "q3_s": q3,
        "min_s": float(a.min()),
        "max_s": float(a.max()),
        "spread": (q3 - q1) / med if med > 0 else 0.0,
    }


def _widest_ratio_ci(times: dict, paired: dict) -> float:
    """Largest relative half-width, over the peers, of a ~95% confidence
    interval of the median per-round ratio against embedlookup (order
    statistics: distribution-free); 0 when there is nothing to compare.
    ``paired[s]``: embedlookup's times of the rounds in which ``s`` ran."""
    worst = 0.0
    for s, t in times.items():
        el = paired.get(s)
        n = min(len(t), len(el or ()))
        if s == "embedlookup" or n < 6:
            continue
        q = np.sort(np.asarray(t[:n]) / np.asarray(el[:n]))
        k = max(0, int(math.floor(n / 2 - 0.98 * math.sqrt(n))))
        med = float(np.median(q))
        if med > 0:
            worst = max(worst, (q[n - 1 - k] - q[k]) / (2 * med))
    return worst


def _projected_ratio_ci(times: dict, paired: dict, prior: dict, passes_left: int) -> float:
    """The widest ratio interval the run is heading for: each peer's interval
    over this pass's rounds and the earlier passes' (``prior[s]``: its times
    and embedlookup's paired times), narrowed by sqrt(n / (n + m)), where m
    is the samples the ``passes_left`` later passes add if each takes as many
    as this one has. A stable ratio then stops at the planned rounds; a noisy
    one gets more in every pass, so its extra rounds still spread over the run."""
    worst = 0.0
    for s, t in times.items():
        if s == "embedlookup" or s not in paired:
            continue
        pt, pe = prior.get(s, ((), ()))
        tt, ee = list(pt) + list(t), list(pe) + list(paired[s])
        n, m = min(len(tt), len(ee)), len(t) * max(0, passes_left)
        if n:
            worst = max(worst, _widest_ratio_ci({s: tt}, {s: ee}) * math.sqrt(n / (n + m)))
    return worst


def _sampling_every(sample_time: dict) -> dict:
    """Per subject, every how many rounds it is timed. A subject whose sample
    takes longer than all the quick ones together (torch's max pooling, ~7x
    embedlookup's) is timed every k-th round (k <= 4), so it does not set the
    pace: the quick subjects get up to twice the rounds in the same time, and
    more rounds is what steadies their ratios on a noisy machine. Its own
    ratio pairs with embedlookup's time of the same rounds."""
    el = sample_time.get("embedlookup")
    if not el:
        return {s: 1 for s in sample_time}
    quick = sum(t for t in sample_time.values() if t <= 4 * el)
    return {s: 1 if t <= 4 * el else int(max(1, min(4, t // quick))) for s, t in sample_time.items()}


def _time_call(case: Case, batches, k0: int, inner: int) -> float:
    nb = len(batches)
    t0 = time.perf_counter()
    for k in range(inner):
        case.run(batches[(k0 + k) % nb])
    dt = (time.perf_counter() - t0) / inner
    if case.after is not None:
        case.after()
    return dt


def _run_op(*args, **kwargs) -> list[dict]:
    """:func:`_run_op_cases`, then every case it made is closed (a server's
    processes stopped) whatever happened: the next op or pass makes its own."""
    made: list[Case] = []
    try:
        return _run_op_cases(*args, made=made, **kwargs)
    finally:
        for case in made:
            if case.close is not None:
                try:
                    case.close()
                except Exception:  # noqa: BLE001 - a failed close must not hide the op's results
                    pass


def _run_op_cases(
    data: WorkloadData,
    op_name: str,
    subjects: list[str],
    cfg: Config,
    prog: Progress,
    check: bool = True,
    prior: dict | None = None,
    passes_left: int = 0,
    made: list | None = None,
) -> list[dict]:
    """One op of one workload for every subject. ``check=False`` (passes
    after the first, on identically generated data) skips the output check
    and warms up with one call, the calibrating one. ``prior``: the earlier
    passes' samples of each peer (times, embedlookup's paired times), and
    ``passes_left`` the passes still to come, for the ratio-interval rule."""
    w = data.workload
    op = OPS[op_name]
    b0 = data.batches[0]
    rows = int(np.mean([op.rows(w, b) for b in data.batches]))
    base = {"workload": w.name, "op": op_name, "rows_per_call": rows, "bytes_per_call": rows * w.row_bytes}
    if op.rmw_rows is not None:
        base["rmw_bytes_per_call"] = float(np.mean([op.rmw_rows(w, b) for b in data.batches])) * w.row_bytes
    results, cases = [], {}
    ref = None
    for s in ["embedlookup"] + [s for s in subjects if s != "embedlookup"]:
        r = dict(base, subject=s, kind=SUBJECTS[s].kind, status="ok", reason=None)
        results.append(r)
        try:
            if s not in op.impls:
                raise Skip(f"{s} has no {op_name}")
            prog.show(f"{w.name} {op_name} {s}: " + ("checking" if check else "preparing"))
            SUBJECTS[s].probe()
            if check and s != "embedlookup" and ref is None:
                raise Skip("embedlookup itself did not run, nothing to check against")
            case = op.impls[s](data)
            if made is not None:
                made.append(case)
            if not check:
                cases[s] = case
                continue
            out = case.output(b0)
            if s == "embedlookup":
                ref = out
            else:
                ok, mad, msg = compare_outputs(ref, out, cfg.rtol)
                r["max_abs_diff"] = mad
                if not ok:
                    r.update(status="mismatch", reason=msg + " - not timed")
                    prog.note(f"  ! {w.name} {op_name} {s}: {msg}; not timed")
                    continue
            cases[s] = case
        except Skip as e:
            r.update(status="skipped", reason=str(e))
        except Exception as e:  # noqa: BLE001 - one failing subject must not stop the suite
            r.update(status="error", reason=f"{type(e).__name__}: {e}")
            prog.note(f"  ! {w.name} {op_name} {s}: {type(e).__name__}: {e}")
    # warm up and calibrate
    inner, sample_time = {}, {}
    for s, case in cases.items():
        prog.show(f"{w.name} {op_name} {s}: warm-up")
        try:
            # the check (first pass) already ran one call; the last warm-up call calibrates
            t1 = 0.0
            for k in range(max(cfg.warmup if check else 1, 1)):
                t1 = _time_call(case, data.batches, k, 1)
            inner[s] = int(min(case.max_inner, max(1, math.ceil(cfg.min_time / max(t1, 1e-9)))))
            sample_time[s] = t1 * inner[s]
        except Exception as e:  # noqa: BLE001
            _fail(results, s, e, prog, w, op_name)
    cases = {s: c for s, c in cases.items() if s in inner}
    every = _sampling_every(sample_time)
    round_time = sum(sample_time[s] / every[s] for s in cases)
    times = {s: [] for s in cases}
    paired = {s: [] for s in cases if s != "embedlookup"}  # embedlookup's time in each round s ran
    order = list(cases)
    # Every subject gets `repeats` samples at least (a subject timed every
    # k-th round: k x as many rounds).
    kmax = max(every.values(), default=1)
    repeats, max_repeats = cfg.repeats, cfg.max_repeats
    if op.rounds:  # a heavy op (a whole-table checkpoint) caps its rounds, over all passes
        cap = max(1, math.ceil(op.rounds / max(1, cfg.passes)))
        repeats, max_repeats = min(repeats, cap), min(max_repeats, cap)
    n_rounds = max(repeats * kmax, min(max_repeats * kmax, int(cfg.op_time / max(round_time, 1e-9))))
    # Then more rounds, up to ratio_ci_factor x the planned rounds and time,
    # while the run is heading for an uncertain ratio (a noisy peer).
    factor = max(1.0, cfg.ratio_ci_factor)
    extra_until = time.perf_counter() + factor * max(cfg.op_time, n_rounds * round_time)
    rep = 0
    while rep < n_rounds or (
        cfg.ratio_ci > 0
        and rep < factor * n_rounds
        and time.perf_counter() < extra_until
        and _projected_ratio_ci(times, paired, prior or {}, passes_left) > cfg.ratio_ci
    ):
        prog.show(f"{w.name} {op_name}: round {rep + 1}/{n_rounds}")
        rot = order[rep % len(order) :] + order[: rep % len(order)] if order else []
        ran = {}
        for j, s in enumerate(order):  # the subjects due this round (staggered)
            if s in cases and (rep + j) % every[s] == 0:
                ran[s] = None
        for s in rot:
            if s not in ran or s not in cases:
                continue
            try:
                ran[s] = _time_call(cases[s], data.batches, rep * inner[s], inner[s])
            except Exception as e:  # noqa: BLE001
                _fail(results, s, e, prog, w, op_name)
                cases.pop(s)
        for s, t in ran.items():
            if t is not None:
                times[s].append(t)
                if s in paired and ran.get("embedlookup") is not None:
                    paired[s].append(ran["embedlookup"])
        rep += 1
    for r in results:
        s = r["subject"]
        if r["status"] == "ok" and s not in cases:
            r.update(status="error", reason="no timed rounds")
        if r["status"] == "ok":
            r.update(inner=inner[s], times_s=times[s])
            if s != "embedlookup":
                r["every"] = every[s]
                r["el_times_s"] = paired[s]
    return _summarise(results)


def _summarise(results: list[dict]) -> list[dict]:
    """Median, spread and bytes/s of each subject's rounds, and the median
    of the per-round ratios against embedlookup (rounds are paired: in each
    round a subject ran, embedlookup ran back to back with it)."""
    for r in results:
        if r["status"] != "ok":
            continue
        t = r["times_s"]
        r.update(_stats(t), samples=len(t))
        r["bytes_per_s"] = r["bytes_per_call"] / r["median_s"]
        el = r.get("el_times_s")
        if el is not None and r["subject"] != "embedlookup" and len(el) == len(t) and t:
            # > 1: embedlookup is faster than this subject
            r["speedup_vs_embedlookup"] = float(np.median(np.asarray(t) / np.asarray(el)))
        else:
            r.pop("speedup_vs_embedlookup", None)
    return results


def _merge_passes(first: list[dict], later: list[dict]) -> list[dict]:
    """``first``'s results with ``later``'s rounds appended (same op, same
    workload, a later pass); a subject that failed in any pass keeps that
    pass's failure."""
    by = {r["subject"]: r for r in later}
    for r in first:
        o = by.get(r["subject"])
        if r["status"] != "ok" or o is None:
            continue
        if o["status"] != "ok":
            r.clear()
            r.update(o)
            continue
        r["times_s"] = list(r["times_s"]) + list(o["times_s"])
        if "el_times_s" in r:
            r["el_times_s"] = list(r["el_times_s"]) + list(o.get("el_times_s", []))
        r["inner"] = max(r["inner"], o["inner"])
    return _summarise(first)


def _fail(results, s, e, prog, w, op_name):
    for r in results:
        if r["subject"] == s:
            r.update(status="error", reason=f"{type(e).__name__}: {e}")
    prog.note(f"  ! {w.name} {op_name} {s}: {type(e).__name__}: {e}")


def run(
    plan: list[tuple[Workload, list[str]]],
    cfg: Config | None = None,
    command: str = "",
    notes: list[str] | None = None,
) -> dict:
    """Runs every (workload, ops) of ``plan`` and returns the report dict
    (``SCHEMA``): command, machine, limits per workload, results, skips."""
    cfg = cfg or Config()
    t_start = time.perf_counter()
    subjects = cfg.subjects or list(SUBJECTS)
    total = sum(len(ops) for _, ops in plan)
    prog = Progress(total, cfg.progress)
    # Memory first: torch reads THP_MEM_ALLOC_ENABLE once, when it first
    # allocates, and describing the machine imports it (for its version).
    memory = [_machine.steady_allocator(), _machine.torch_huge_pages()] if cfg.steady_allocator else []
    report = {
        "schema": SCHEMA,
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine.describe(),
        "config": {k: v for k, v in cfg.__dict__.items() if k != "progress"},
        "workloads": [],
        "results": [],
        "notes": list(notes or []) + [line for line in memory if line],
    }
    # Subjects that cannot run here at all: one line each, once.
    unavailable = {}
    for s in subjects:
        try:
            SUBJECTS[s].probe()
        except Skip as e:
            unavailable[s] = str(e)
            report["notes"].append(f"{s}: skipped - {e}")
            prog.note(f"{s}: skipped - {e}")
    # The subjects' imports (torch, FBGEMM, PyOpenCL) leave ~200 k objects
    # that every gc.collect() would walk again (~0.15 s each, ~27 s of a
    # default run): freeze them out of the collector for the run.
    gc.collect()
    gc.freeze()
    try:
        _run_plan(plan, cfg, report, subjects, unavailable, prog)
    finally:
        gc.unfreeze()
    for op in {r["op"] for r in report["results"]}:
        if OPS[op].annotate is not None:
            OPS[op].annotate(report)
    report["wall_s"] = time.perf_counter() - t_start
    report["load_average_end"] = _machine.load_average()
    m = report["machine"]
    worst = max((x or [0])[0] for x in (m.get("load_average"), report["load_average_end"]))
    busy = _machine.busy_note([worst], m.get("usable_cores"))
    if busy:
        report["notes"].append(busy)
    return report


def _run_plan(plan, cfg: Config, report: dict, subjects: list[str], unavailable: dict, prog: Progress) -> None:
    total = sum(len(ops) for _, ops in plan)
    passes = max(1, int(cfg.passes))
    pcfg = cfg
    if passes > 1:  # each pass takes its share of the rounds
        pcfg = dataclasses.replace(
            cfg,
            repeats=math.ceil(cfg.repeats / passes),
            max_repeats=max(1, math.ceil(cfg.max_repeats / passes)),
            op_time=cfg.op_time / passes,
        )
    prog.total = max(1, passes * total)
    limits_cache, entries, op_results, failed, measured = {}, {}, {}, set(), set()
    ran_passes = {}  # per (workload, op): passes it ran in
    for p in range(passes):
        # A B B A ...: a drift in the machine's state hits every op alike.
        order = list(enumerate(plan)) if p % 2 == 0 else list(reversed(list(enumerate(plan))))
        for wi, (w, ops) in order:
            if wi in failed:
                prog.done += len(ops)
                continue
            prog.show(f"{w.name}: generating {w.describe()}")
            t0 = time.perf_counter()
            try:
                data = WorkloadData.generate(w)
                data.tier_dir = cfg.tier_dir
            except Exception as e:  # noqa: BLE001
                report["notes"].append(f"workload {w.name}: could not be generated ({type(e).__name__}: {e})")
                prog.note(f"  ! workload {w.name}: {type(e).__name__}: {e}")
                prog.done += len(ops)
                failed.add(wi)
                continue
            entry = entries.get(wi)
            if entry is None:
                entry = entries[wi] = {
                    "name": w.name,
                    "params": w.params(),
                    "description": w.describe(),
                    "generate_s": time.perf_counter() - t0,
                    "distinct_keys_per_batch": [b.distinct for b in data.batches],
                    "limits": None,
                    "op_wall_s": {},
                }
            # Limits at the first and the last pass (each takes seconds; the
            # run keeps the best, and the last pass sees the other end of the run).
            if cfg.limits and p in (0, passes - 1):
                threads = w.threads or (report["machine"]["usable_cores"] or 1)
                table_bytes = max(cfg.limit_bytes, w.rows * w.row_bytes)
                # read at least a quarter of the limit table per pass, so the
                # measurement is not dominated by starting threads
                n_read = max(w.lookups, cfg.limit_bytes // 4 // w.row_bytes)
                key = (w.row_bytes, table_bytes, threads, n_read)
                # Limits are ceilings: on a shared machine a measurement can only
                # come out low, so each pass that measures keeps the run's best
                # (one dict, shared by the workloads of the same key; each key
                # is measured once per such pass: a measurement takes seconds,
                # mostly faulting in its 512 MiB).
                limits = limits_cache.setdefault(key, {"measurements": 0})
                if (key, p) not in measured:
                    prog.show(f"{w.name}: measuring machine limits")
                    new = _machine.measure_limits(
                        w.row_bytes, n_read, threads, table_bytes, cfg.limit_bytes,
                        update=any(OPS[o].rmw_rows is not None for o in ops),
                    )
                    measured.add((key, p))
                    limits["measurements"] += 1
                    for k, v in new.items():
                        limits[k] = max(limits.get(k, v), v) if k.endswith("_per_s") else v
                entry["limits"] = limits
            for op in ops if p % 2 == 0 else list(reversed(ops)):
                subs = [s for s in subjects if s not in unavailable]
                if (wi, op) in op_results:  # later passes: only what ran cleanly in the first
                    ok = {r["subject"] for r in op_results[(wi, op)] if r["status"] == "ok"}
                    subs = [s for s in subs if s in ok]
                t_op = time.perf_counter()
                # Outputs are checked in the first pass; later passes run the
                # same code on identically generated data.
                prior = {
                    r["subject"]: (r["times_s"], r["el_times_s"])
                    for r in op_results.get((wi, op), [])
                    if r["status"] == "ok" and "el_times_s" in r
                }
                res = _run_op(
                    data, op, subs, pcfg, prog, check=(wi, op) not in op_results, prior=prior,
                    passes_left=passes - 1 - p,
                )
                entry["op_wall_s"][op] = entry["op_wall_s"].get(op, 0.0) + time.perf_counter() - t_op
                # subjects that don't implement the op at all are not worth a row
                res = [r for r in res if not (r["status"] == "skipped" and r["reason"].endswith(f"has no {op}"))]
                ran_passes[(wi, op)] = ran_passes.get((wi, op), 0) + 1
                if (wi, op) in op_results:
                    _merge_passes(op_results[(wi, op)], res)
                else:
                    op_results[(wi, op)] = res
                prog.step(f"{w.name} {op}" + (f" (pass {p + 1}/{passes})" if passes > 1 else ""))
                gc.collect()
            del data
            gc.collect()
    prog.close()
    for wi, (w, ops) in enumerate(plan):
        entry = entries.get(wi)
        if entry is None:
            continue
        report["workloads"].append(entry)
        for op in ops:
            for r in op_results.get((wi, op), []):
                r["passes"] = ran_passes.get((wi, op), 0)
                report["results"].append(r)
                lim = entry["limits"]
                if lim and "bytes_per_s" in r:
                    r["pct_gather"] = 100.0 * r["bytes_per_s"] / lim["gather_bytes_per_s"]
                    r["pct_copy"] = 100.0 * r["bytes_per_s"] / lim["copy_bytes_per_s"]
                    if "rmw_bytes_per_call" in r and "update_bytes_per_s" in lim:
                        # The op's own ceiling: its read-only bytes at the gather
                        # rate, its read-and-written-back bytes at the update rate.
                        rmw = r["rmw_bytes_per_call"]
                        floor_s = (r["bytes_per_call"] - rmw) / lim["gather_bytes_per_s"] + rmw / lim[
                            "update_bytes_per_s"
                        ]
                        r["limit_s"] = floor_s
                        r["pct_limit"] = 100.0 * floor_s / r["median_s"]
