"""The ``embedlookup`` command line. Its main job: ``embedlookup bench``.

Examples::

    embedlookup bench                                 # the default suite (a few minutes, 1 thread)
    embedlookup bench --threads 0                     # the same on all cores
    embedlookup bench --suite embeddingbag-bar        # the engine's bar: pooled sum vs torch.nn.EmbeddingBag
    embedlookup bench --workload zipf-1m alpha=1.2 --ops pooled_sum,update --out my_run
    embedlookup bench --workload dist=zipf rows=1e5 dim=32 --json out.json --markdown out.md --plot out.png
    embedlookup bench --list                          # workloads, suites, operations, subjects
    embedlookup bench --suite freshness               # delta log and replicas: bytes, lag, load, AUC
    embedlookup serve --log DIR --port 8000           # an HTTP replica of a delta log (docs/serving.md)
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

__all__ = ["main"]

# Where `embedlookup bench` saves its reports by default, relative to the
# working directory: one folder per run, named by its UTC start time.
DEFAULT_RESULTS = "bench_results"
_FILES = {"json": "results.json", "markdown": "results.md", "plot": "results.png"}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embedlookup", description="embedlookup: hashed embedding tables.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser(
        "bench",
        help="benchmark embedlookup against its peers and the machine's limits",
        description="Time embedlookup's operations on named or parameterised workloads, "
        "next to torch, FBGEMM and NumPy on the same rows, and the machine's measured "
        "copy and gather bandwidth.",
        epilog="Results: the table is printed, and the full report is saved to "
        f"{DEFAULT_RESULTS}/<UTC time>/ (results.json, results.md and results.png when matplotlib "
        "is installed) unless --out DIR names the folder, --json/--markdown/--plot name single "
        "files instead, or --no-save. The last lines printed name the files written.",
    )
    b.add_argument("--suite", help="named suite (default: 'default' unless --workload is given); see --list")
    b.add_argument(
        "--workload",
        action="append",
        nargs="+",
        metavar="NAME|KEY=VALUE",
        default=[],
        help="a workload: a name and/or key=value parameters (dist, alpha, rows, keys, dim, batch, "
        "pooling, threads, seed, batches); repeat the flag for several",
    )
    b.add_argument(
        "--ops",
        action="append",
        default=[],
        metavar="OP[,OP]",
        help="operations to run (default: the suite's); see --list",
    )
    b.add_argument(
        "--peers",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help="subjects to run beside embedlookup (default: all available)",
    )
    # Defaults sized for the bar "two runs agree within 15%": slow ops get 36
    # paired rounds (with 9, the median per-round ratio of a noisy peer moved
    # by more than that between runs), fast ops up to 101, in 6 passes.
    b.add_argument("--repeats", type=int, default=36, help="timed rounds per op, at least (default 36)")
    b.add_argument(
        "--max-repeats",
        type=int,
        default=101,
        help="timed rounds per op, at most, while they fit in --op-time (default 101)",
    )
    b.add_argument(
        "--op-time",
        type=float,
        default=2.5,
        help="seconds of timed rounds per op beyond --repeats (default 2.5)",
    )
    b.add_argument(
        "--passes",
        type=int,
        default=6,
        help="passes over the plan in alternating order, sharing the rounds, so each ratio "
        "averages the machine's state (and each pass's fresh tables) over the run (default 6)",
    )
    b.add_argument(
        "--ratio-ci",
        type=float,
        default=0.05,
        help="add rounds while the run is heading for a peer's median ratio whose 95%% confidence "
        "interval is wider than +- this fraction (default 0.05; 0: fixed rounds)",
    )
    b.add_argument(
        "--ratio-ci-factor",
        type=float,
        default=3.0,
        help="... up to this many times an op's planned rounds and time in each pass (default 3)",
    )
    b.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed calls per subject before timing, at least 1 (default 2)",
    )
    b.add_argument(
        "--min-time",
        type=float,
        default=0.005,
        help="seconds per sample; shorter calls repeat to reach it (default 0.005)",
    )
    b.add_argument(
        "--threads", type=int, help="threads for every workload (default: each workload's, 0 = all)"
    )
    b.add_argument(
        "--no-limits", action="store_true", help="skip measuring the machine's copy/gather bandwidth"
    )
    b.add_argument(
        "--limit-mib", type=int, default=256, help="table size for the gather limit (default 256 MiB)"
    )
    b.add_argument(
        "--tier-dir",
        metavar="DIR",
        help="folder for the storage ops' files (tier_read, tier_write, checkpoint; "
        "default: the temp folder)",
    )
    b.add_argument(
        "--out",
        metavar="DIR",
        help="folder for results.json, results.md and results.png, created if missing "
        f"(default: {DEFAULT_RESULTS}/<UTC time>/ unless --json, --markdown or --plot is given)",
    )
    b.add_argument("--no-save", action="store_true", help="save nothing: only print the table")
    b.add_argument("--json", metavar="PATH", help="write the full report as JSON to PATH")
    b.add_argument("--markdown", metavar="PATH", help="write the report as a Markdown table to PATH")
    b.add_argument("--plot", metavar="PATH", help="write a PNG plot to PATH (needs matplotlib)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--list", action="store_true", help="list workloads, suites, operations and subjects")
    c = sub.add_parser(
        "compare",
        help="compare the ratios against embedlookup of two bench JSON reports",
        description="Whether two runs agree: each (workload, op, subject) median ratio against "
        "embedlookup in A and B, and |B/A - 1|. Exit 1 if a ratio against a peer (or the NumPy "
        "floor) exceeds the tolerance; embedlookup's own other backends (OpenCL) are shown, not counted.",
    )
    c.add_argument("a", metavar="A.json")
    c.add_argument("b", metavar="B.json")
    c.add_argument("--tolerance", type=float, default=0.15, help="largest allowed |B/A - 1| (default 0.15)")
    from .serving.cli import add_serve_parser

    add_serve_parser(sub)
    return p


def compare(args) -> int:
    import json

    from .bench.report import compare_reports, format_comparison

    reps = []
    for path in (args.a, args.b):
        try:
            with open(path) as f:
                reps.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"embedlookup compare: cannot read {path}: {e}", file=sys.stderr)
            return 2
    rows = compare_reports(*reps)
    if not rows:
        print("embedlookup compare: the two reports have no ratio in common", file=sys.stderr)
        return 2
    for name, rep in zip("AB", reps):
        m = rep.get("machine", {})
        print(
            f"{name}: {rep.get('command', '?')} - started {rep.get('started', '?')}, load average "
            f"{(m.get('load_average') or ['?'])[0]} -> {(rep.get('load_average_end') or ['?'])[0]}"
        )
    print(format_comparison(rows, args.tolerance))
    return 1 if any(r["counts"] and r["rel_diff"] > args.tolerance for r in rows) else 0


def _list() -> str:
    from .bench import OPS, SUBJECTS, SUITES, WORKLOADS

    out = ["workloads:"] + [f"  {n:16s} {w.describe()}" for n, w in WORKLOADS.items()]
    out += ["suites:"] + [
        f"  {n:16s} workloads {', '.join(s['workloads'])}; ops {', '.join(s['ops'] or ['all'])}"
        + (f"; {s['threads']} thread(s)" if s.get("threads") else "")
        for n, s in SUITES.items()
    ] + ["  freshness        delta log and replicas: cut bytes, lag, HTTP load, bandwidth, AUC served "
         "(docs/serving.md)"]
    out += ["operations:"] + [f"  {n:16s} {o.doc} [{', '.join(o.impls)}]" for n, o in OPS.items()]
    out += ["subjects:"] + [f"  {n:16s} ({s.kind}) {s.doc}" for n, s in SUBJECTS.items()]
    return "\n".join(out)


def bench(args, argv: list[str]) -> int:
    from . import bench as B

    err = sys.stderr
    if args.suite == "freshness":  # not a timing plan over workloads: its own runner
        from .serving.freshness import bench_command

        return bench_command(args, argv)
    if args.list:
        print(_list())
        return 0
    bad = [
        f"--{n} must be {c}, got {v}"
        for n, v, c in (
            ("repeats", args.repeats, ">= 1"),
            ("warmup", args.warmup, ">= 0"),
            ("min-time", args.min_time, ">= 0"),
            ("op-time", args.op_time, ">= 0"),
            ("max-repeats", args.max_repeats, ">= 1"),
            ("passes", args.passes, ">= 1"),
            ("ratio-ci", args.ratio_ci, ">= 0"),
            ("ratio-ci-factor", args.ratio_ci_factor, ">= 1"),
            ("limit-mib", args.limit_mib, ">= 1"),
            ("threads", args.threads, ">= 0"),
        )
        if v is not None and (v < 1 if c == ">= 1" else v < 0)
    ]
    if bad:
        for m in bad:
            print(f"embedlookup bench: error: {m}", file=err)
        return 2
    problems = 0
    notes = []

    def problem(msg):
        nonlocal problems
        problems += 1
        notes.append(msg)
        print(f"embedlookup bench: {msg}", file=err)

    # workloads
    plan_w = []
    if args.suite and args.suite not in B.SUITES:
        problem(f"unknown suite {args.suite!r}; known: {', '.join(B.SUITES)}")
    suite = B.SUITES.get(
        args.suite or ("default" if not args.workload else ""), {"workloads": [], "ops": None}
    )
    for name in suite["workloads"]:
        w = B.WORKLOADS[name]
        if suite.get("threads") is not None:
            w = dataclasses.replace(w, threads=suite["threads"])
        plan_w.append(w)
    for tokens in args.workload:
        try:
            plan_w.append(B.parse_workload(tokens))
        except B.WorkloadError as e:
            problem(f"{e} - workload skipped")
    if args.threads is not None:
        plan_w = [dataclasses.replace(w, threads=args.threads) for w in plan_w]
    # operations and peers
    ops = [o for t in args.ops for o in _csv(t)] or suite["ops"] or list(B.OPS)
    for o in [o for o in ops if o not in B.OPS]:
        problem(f"unknown operation {o!r} - skipped; known: {', '.join(B.OPS)}")
    ops = [o for o in dict.fromkeys(ops) if o in B.OPS]
    subjects = None
    if args.peers:
        subjects = [s for t in args.peers for s in _csv(t)]
        for s in [s for s in subjects if s not in B.SUBJECTS]:
            problem(f"unknown peer {s!r} - skipped; known: {', '.join(B.SUBJECTS)}")
        subjects = ["embedlookup"] + [
            s for s in dict.fromkeys(subjects) if s in B.SUBJECTS and s != "embedlookup"
        ]
    if not plan_w or not ops:
        print("embedlookup bench: error: nothing to run (no valid workload or operation)", file=err)
        return 2
    # outputs: check now, so a bad path is known before minutes of timing
    outputs, err_kind = _outputs(args, problem)
    cfg = B.Config(
        repeats=args.repeats,
        max_repeats=args.max_repeats,
        op_time=args.op_time,
        passes=args.passes,
        ratio_ci=args.ratio_ci,
        ratio_ci_factor=args.ratio_ci_factor,
        warmup=args.warmup,
        min_time=args.min_time,
        subjects=subjects,
        limits=not args.no_limits,
        limit_bytes=args.limit_mib << 20,
        progress=not args.quiet,
        tier_dir=args.tier_dir,
    )
    command = "embedlookup " + " ".join(shlex.quote(a) for a in argv)
    report = B.run([(w, ops) for w in plan_w], cfg, command=command, notes=notes)
    print(B.format_table(report))
    if args.suite == "storage":  # the tier under real I/O (cold device), next to the device's own limit
        from .bench import ssd

        report["ssd"] = ssd.suite_section(args.tier_dir, log=(lambda m: None) if args.quiet else print)
        print(ssd.format_section(report["ssd"]))
    writers = {"json": B.write_json, "markdown": B.write_markdown, "plot": B.write_plot}
    written = []
    for kind, path in outputs.items():
        try:
            why = writers[kind.split("-")[0]](report, path)
        except OSError as e:
            why = f"cannot write {path}: {e}"
            problems += 1
        if why:
            print(f"embedlookup bench: {err_kind[kind]}: {why}", file=err)
        else:
            written.append(path)
    if "ssd" in report and written:  # the tier's step-time plot, next to the results
        import os

        from .bench import ssd

        png = os.path.join(os.path.dirname(os.path.abspath(written[0])), "ssd_steps.png")
        if not ssd.write_plot(report["ssd"], png):
            written.append(png)
    if written:
        print("saved: " + ", ".join(written))
    else:
        print(
            "not saved; keep a run's report with --out DIR (results.json, results.md, results.png) "
            "or --json/--markdown/--plot PATH"
        )
    return 1 if problems else 0


def _outputs(args, problem) -> tuple[dict, dict]:
    """The files this run writes, {kind: path}, checked before the run (a
    path that cannot be written is a problem, and the run goes on without
    it), and how to name each kind in a message. --out DIR (created here)
    or, when no output option is given, a fresh folder under
    DEFAULT_RESULTS gets all three files; --json/--markdown/--plot add
    single files; --no-save writes nothing."""
    import os
    import time

    from .bench.report import check_writable

    outputs, label = {}, {}
    if args.no_save:
        return outputs, label
    folder = args.out
    if folder is None and not (args.json or args.markdown or args.plot):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = os.path.join(DEFAULT_RESULTS, stamp)
        n = 1
        while os.path.exists(folder):  # two runs in the same second
            n += 1
            folder = os.path.join(DEFAULT_RESULTS, f"{stamp}-{n}")
    if folder is not None:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            problem(f"--out: cannot create {folder}: {e}; the run goes on without it")
        else:
            for kind, name in _FILES.items():
                outputs[kind], label[kind] = os.path.join(folder, name), kind
    for kind in _FILES:
        path = getattr(args, kind)
        if path:
            why = check_writable(path)
            if why:
                problem(f"--{kind}: cannot write {path}: {why}; the run goes on without it")
                continue
            if kind in outputs:  # both --out and a single path: the single path too
                outputs[f"{kind}-file"], label[f"{kind}-file"] = path, f"--{kind}"
            else:
                outputs[kind], label[kind] = path, f"--{kind}"
    return outputs, label


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return bench(args, argv)
    if args.command == "compare":
        return compare(args)
    if args.command == "serve":
        from .serving.cli import serve_command

        return serve_command(args)
    _parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
