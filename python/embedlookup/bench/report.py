"""Writing a benchmark report: terminal table, JSON, Markdown and a PNG plot."""

from __future__ import annotations

import json
import os
import textwrap

from .machine import summary
from .ops import SUBJECTS

__all__ = [
    "check_writable",
    "format_table",
    "table_rows",
    "to_markdown",
    "write_json",
    "write_markdown",
    "write_plot",
]

_COLS = [
    "workload", "op", "subject", "median ms", "spread", "GB/s", "% gather", "% copy", "% limit", "el x", "status"
]


def _fmt(r: dict) -> list[str]:
    ok = r["status"] == "ok" and "median_s" in r

    def f(key, fmt, scale=1.0):
        v = r.get(key)
        return fmt.format(v * scale) if ok and v is not None else ""

    status = "ok" if r["status"] == "ok" else f"{r['status']}: {r.get('reason') or ''}"
    return [
        r["workload"],
        r["op"],
        r["subject"],
        f("median_s", "{:.3f}", 1e3),
        f("spread", "{:.0%}"),
        f("bytes_per_s", "{:.2f}", 1e-9),
        f("pct_gather", "{:.0f}%"),
        f("pct_copy", "{:.0f}%"),
        f("pct_limit", "{:.0f}%"),
        f("speedup_vs_embedlookup", "{:.2f}"),
        status,
    ]


def table_rows(report: dict) -> list[list[str]]:
    return [_fmt(r) for r in report["results"]]


def _limits_lines(report: dict) -> list[str]:
    out = []
    for w in report["workloads"]:
        lim = w.get("limits")
        line = f"{w['name']}: {w['description']}"
        if lim:
            line += (
                f"; machine limits: copy {lim['copy_bytes_per_s'] / 1e9:.2f} GB/s, gather of "
                f"{lim['row_bytes']} B rows {lim['gather_bytes_per_s'] / 1e9:.2f} GB/s "
                + (
                    f"(read-modify-write of distinct rows {lim['update_bytes_per_s'] / 1e9:.2f} GB/s) "
                    if "update_bytes_per_s" in lim
                    else ""
                )
                + f"({lim['threads']} threads, {lim['table_bytes'] >> 20} MiB table, "
                f"best of {lim.get('measurements', 1)} measurements)"
            )
        out.append(line)
    return out


def _update_limits(report: dict) -> str:
    lims = [w["limits"] for w in report["workloads"] if w.get("limits") and "update_bytes_per_s" in w["limits"]]
    rates = sorted({f"{lim['update_bytes_per_s'] / 1e9:.2f}" for lim in lims})
    return "update limit " + ", ".join(rates) + " GB/s, read + write counted" if rates else "not measured"


def _header(report: dict) -> list[str]:
    return [f"command: {report['command']}", f"machine: {summary(report['machine'])}"] + _limits_lines(report)


def _legend(report: dict) -> list[str]:
    """What the columns mean; the '% gather' / '% copy' lines only where the
    limits were measured, the line on values above 100% only where one is."""
    out = [
        "GB/s: effective bandwidth = rows the op moves (per op: --list) x row bytes / median time."
    ]
    pct = [
        r.get(k) for r in report["results"] if r.get("status") == "ok" for k in ("pct_gather", "pct_copy")
    ]
    pct = [v for v in pct if v is not None]
    if pct:
        out.append(
            "% gather, % copy: that GB/s as a share of the machine limits above, measured in this run: "
            "random reads of uniformly drawn rows of the workload's row size from a table of at least "
            "--limit-mib MiB (memory-bound), and a streaming copy (read + write counted)."
        )
    if any(r.get("pct_limit") is not None for r in report["results"] if r.get("status") == "ok"):
        out.append(
            "% limit (training ops): the op's own ceiling over its time. Its read-only bytes (the forward) "
            "at the gather limit, and the bytes it reads and writes back (each distinct row and its "
            "optimizer state) at a random read-modify-write of distinct rows measured in this run "
            f"({_update_limits(report)}): a gather never writes back the lines it reads."
        )
    if any(v > 100 for v in pct):
        out.append(
            "Above 100%: the op got its rows faster than uniformly random reads from memory can - rows "
            "served from the CPU caches: a Zipf workload's hot rows and keys repeated in a batch, or a "
            "table that fits in the caches. The limits are ceilings for memory-bound reads only."
        )
    out.append(
        "el x: median over rounds of (subject's time / embedlookup's time): > 1 means embedlookup is faster."
    )
    return out


def format_table(report: dict) -> str:
    """The report as a plain-text table for the terminal."""
    rows = table_rows(report)
    width = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(_COLS)]
    width[-1] = len(_COLS[-1])
    line = lambda cells: "  ".join(
        c.ljust(width[i]) if i < 3 or i == len(_COLS) - 1 else c.rjust(width[i])
        for i, c in enumerate(cells)
    ).rstrip()
    out = _header(report) + ["", line(_COLS), line(["-" * n for n in width])]
    out += [line(r) for r in rows]
    legend = [textwrap.fill(x, 100, subsequent_indent="  ") for x in _legend(report)]
    out += ["", *legend, f"wall time {report.get('wall_s', 0):.1f} s"]
    out += [f"note: {n}" for n in report.get("notes", [])]
    return "\n".join(out)


def to_markdown(report: dict) -> str:
    esc = lambda s: s.replace("|", "\\|")
    out = [
        "# embedlookup bench",
        "",
        f"- command: `{report['command']}`",
        f"- machine: {summary(report['machine'])}",
        f"- started {report['started']}, wall time {report.get('wall_s', 0):.1f} s",
    ]
    out += [f"- {esc(x)}" for x in _limits_lines(report)]
    out += [f"- note: {esc(n)}" for n in report.get("notes", [])]
    out += [
        "",
        "| " + " | ".join(_COLS) + " |",
        "|" + "|".join("---" if i < 3 or i == len(_COLS) - 1 else "---:" for i in range(len(_COLS))) + "|",
    ]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in table_rows(report)]
    out.append("")
    for x in _legend(report):
        out += [esc(x), ""]
    return "\n".join(out)


def check_writable(path: str) -> str | None:
    """None if ``path`` can be written, else why not (without creating it)."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        return f"{path} is a directory"
    if not os.path.isdir(d):
        return f"directory {d} does not exist"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    if not os.access(d, os.W_OK):
        return f"directory {d} is not writable"
    return None


def write_json(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=float)
        f.write("\n")


def write_markdown(report: dict, path: str) -> None:
    with open(path, "w") as f:
        f.write(to_markdown(report))


def write_plot(report: dict, path: str) -> str | None:
    """Writes the PNG; returns None, or why no plot was written (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001 - optional dependency
        return f"matplotlib is not available ({type(e).__name__}: {e}); no plot written"
    ok = [r for r in report["results"] if r["status"] == "ok" and "bytes_per_s" in r]
    groups = list(dict.fromkeys((r["workload"], r["op"]) for r in ok))
    from .ops import SUBJECTS

    present = {r["subject"] for r in ok}
    subjects = [s for s in SUBJECTS if s in present] + sorted(present - set(SUBJECTS))
    if not groups:
        return "no timed results to plot"
    fig, ax = plt.subplots(figsize=(min(20.0, max(6.0, 0.55 * len(groups) + 2)), 6.0))
    bw = 0.8 / max(len(subjects), 1)
    for j, s in enumerate(subjects):
        xs, ys = [], []
        for i, g in enumerate(groups):
            r = next((r for r in ok if (r["workload"], r["op"]) == g and r["subject"] == s), None)
            if r:
                xs.append(i - 0.4 + bw * (j + 0.5))
                ys.append(r["bytes_per_s"] / 1e9)
        ax.bar(xs, ys, bw, label=s)
    limits = {w["name"]: w.get("limits") for w in report["workloads"]}
    drawn = set()
    for name, lim in limits.items():
        idx = [i for i, g in enumerate(groups) if g[0] == name]
        if not lim or not idx:
            continue
        for key, style, label in (
            ("gather_bytes_per_s", "--", "gather limit"),
            ("copy_bytes_per_s", ":", "copy limit"),
        ):
            ax.hlines(
                lim[key] / 1e9,
                min(idx) - 0.45,
                max(idx) + 0.45,
                colors="k",
                linestyles=style,
                label=None if label in drawn else label,
            )
            drawn.add(label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{w}\n{o}" for w, o in groups], rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")  # ops span several decades (insert .. cached pooled sum)
    ax.set_ylabel("effective GB/s (log)")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.set_title(f"embedlookup bench - {report['machine']['cpu']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.text(0.01, 0.005, f"{report['command']}  |  {summary(report['machine'])}", fontsize=5, va="bottom")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# The agreement bar (docs/benchmarks.md) is about ratios against peers, the
# libraries a user would otherwise pick (and the NumPy floor); embedlookup's own
# other backends (OpenCL, CUDA) are shown beside it, not counted in it. Each
# result carries its subject's kind; a report without one falls back to the
# registered subject's.
def _kind(subject: str, *recorded) -> str:
    for k in recorded:
        if k:
            return k
    return SUBJECTS[subject].kind if subject in SUBJECTS else "peer"


def compare_reports(a: dict, b: dict) -> list[dict]:
    """Per (workload, op, subject) timed in both reports: each run's median
    ratio against embedlookup, their relative difference |b/a - 1|, and
    whether the subject counts for the agreement bar (``counts``: a peer or
    the floor; embedlookup's own backends do not)."""

    def ratios(rep):
        return {
            (r["workload"], r["op"], r["subject"]): (r["speedup_vs_embedlookup"], r.get("kind"))
            for r in rep["results"]
            if r.get("speedup_vs_embedlookup") is not None
        }

    ra, rb = ratios(a), ratios(b)
    rows = []
    for k in ra:
        if k not in rb:
            continue
        kind = _kind(k[2], ra[k][1], rb[k][1])
        rows.append(
            {
                "workload": k[0],
                "op": k[1],
                "subject": k[2],
                "kind": kind,
                "counts": kind != "backend",
                "ratio_a": ra[k][0],
                "ratio_b": rb[k][0],
                "rel_diff": abs(rb[k][0] / ra[k][0] - 1.0),
            }
        )
    return rows


def format_comparison(rows: list[dict], tolerance: float) -> str:
    out = [f"{'workload':14s} {'op':14s} {'subject':8s} {'ratio A':>8s} {'ratio B':>8s} {'diff':>6s}"]
    for r in rows:
        flag = "" if r["rel_diff"] <= tolerance else "  > tolerance"
        if not r.get("counts", True):
            flag += " (backend, not counted)" if flag else "  (backend, not counted)"
        out.append(
            f"{r['workload']:14s} {r['op']:14s} {r['subject']:8s} {r['ratio_a']:8.3f} {r['ratio_b']:8.3f} "
            f"{r['rel_diff']:6.1%}{flag}"
        )
    for label, part in (
        ("against peers", [r for r in rows if r.get("counts", True)]),
        (
            "against embedlookup's other backends (not counted)",
            [r for r in rows if not r.get("counts", True)],
        ),
    ):
        if not part:
            continue
        bad = sum(r["rel_diff"] > tolerance for r in part)
        worst = max(r["rel_diff"] for r in part)
        out.append(
            f"{len(part)} ratios {label} compared, {bad} differ by more than {tolerance:.0%} "
            f"(largest {worst:.1%})"
        )
    return "\n".join(out)
