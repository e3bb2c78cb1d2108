"""Shared pieces of the fuzz harness (tests/fuzz).

* ``FUZZ``: the hypothesis settings every fuzz test uses. Derandomized (the
  examples are a pure function of the test's source), no example database, no
  deadline: a CI run is reproducible and bounded. ``EL_FUZZ_EXAMPLES=N``
  scales every test's example count (default 1.0 x each test's own count) for a
  longer local run; ``EL_FUZZ_SEED`` is not used: change the examples by
  changing ``EL_FUZZ_EXAMPLES``.
* ``snapshot(table)`` / ``assert_unchanged(before, table)``: a table's WHOLE
  observable state (rows, optimizer state, step, version, the full versioned
  delta from 0 with tombstones and lineage, FrequencyTable scores and
  counters, the tier's rows) and its bit-exact comparison.
* ``expect_rejection(table, fn, *exc)``: runs one invalid call; it must raise
  one of the documented exception classes and change nothing.
* ``run_isolated(code)``: runs a snippet in a child interpreter, so an input
  that segfaults fails one test instead of killing the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
from hypothesis import HealthCheck, settings

import embedlookup as el

PKG = os.path.dirname(os.path.dirname(el.__file__))
SCALE = float(os.environ.get("EL_FUZZ_EXAMPLES", "1"))

settings.register_profile(
    "fuzz-ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)
FUZZ_BASE = settings.get_profile("fuzz-ci")


def fuzz(max_examples: int):
    """The harness's settings with a per-test example budget (scaled by EL_FUZZ_EXAMPLES)."""
    return settings(FUZZ_BASE, max_examples=max(1, int(max_examples * SCALE)))


# The exception classes the API documents for bad arguments and bad data.
DOCUMENTED = (ValueError, TypeError, KeyError, IndexError, RuntimeError)


class Tally:
    """Counts per area: cases tried, clean rejections, wrong results, crashes.
    Printed at the end of the session (conftest's terminal summary)."""

    counts: dict = {}

    @classmethod
    def add(cls, area: str, what: str, n: int = 1):
        d = cls.counts.setdefault(area, {"tried": 0, "valid_ok": 0, "rejected": 0, "wrong": 0, "crash": 0})
        d[what] += n


# ----------------------------------------------------------------- snapshots
def _freeze(x):
    if isinstance(x, np.ndarray):
        return ("nd", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    if isinstance(x, float) and x != x:
        return "nan"
    return x


def snapshot(table) -> dict:
    """Everything observable about ``table`` without changing it."""
    s = {}
    keys, rows = table.export()
    s["keys"], s["rows"] = np.array(keys, copy=True), np.array(rows, copy=True)
    s["len"] = len(table)
    s["version"] = table.version
    s["step"] = table.step
    s["state_kind"] = table._t.state_kind
    tier = getattr(table, "tier", None)
    if tier is not None and tier._native is not None:
        # Logical optimizer state per key, wherever the row lives (memory or tier);
        # where it lives is compared separately ("tier_keys").
        tk = tier.keys(0)
        mem_keys = np.setdiff1d(keys, tk).astype(np.int64)
        sf = tier.state_floats
        merged = {}
        if sf:
            for k, r in zip(mem_keys, table._t.export_state(mem_keys)):
                merged[int(k)] = np.array(r[:sf], copy=True)
            for k, r in zip(tk, tier.get_full(tk)[1]):
                merged[int(k)] = np.array(r, copy=True)
        s["state"] = merged
    else:
        s["state"] = np.array(table._t.export_state(np.ascontiguousarray(keys, np.int64)), copy=True)
    # The versioned delta from 0 holds every row with its version, every
    # tombstone, the lineage, step, and configuration: bit-identical or not.
    s["delta"] = bytes(table.export_delta(0, with_versions=True))
    if isinstance(table, el.FrequencyTable):
        st = table.stats()
        s["freq_stats"] = {k: v for k, v in st.items() if isinstance(v, (int, float, dict))}
        s["inspect"] = tuple(np.array(a, copy=True) for a in table._t.inspect(np.ascontiguousarray(keys, np.int64)))
        s["default_row"] = np.array(table.default_row_values(), copy=True)
        s["features"] = dict(table._feature_ids)
    if tier is not None and tier._native is not None:
        tk = tier.keys(0)
        s["tier_keys"] = np.array(tk, copy=True)
        s["tier_full"] = tuple(np.array(a, copy=True) for a in tier.get_full(tk))
    return {k: _freeze(v) for k, v in s.items()}


def tier_snapshot(tier) -> dict:
    k = tier.keys(0)
    rows, state, ver, found = tier.get_full(k)
    return {"keys": _freeze(k), "rows": _freeze(rows), "state": _freeze(state), "ver": _freeze(ver),
            "found": _freeze(found), "len": len(tier)}


def diff(a: dict, b: dict) -> list:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def assert_unchanged(before: dict, table, what: str = ""):
    after = snapshot(table)
    d = diff(before, after)
    assert not d, f"{what}: a rejected call changed the table: {d}"


def expect_rejection(area: str, table, fn, exc=DOCUMENTED, snap=snapshot, what: str = ""):
    """``fn()`` must raise one of ``exc`` and leave ``table`` bit-identical."""
    Tally.add(area, "tried")
    before = snap(table)
    try:
        fn()
    except exc:
        pass
    except BaseException as e:  # noqa: BLE001
        if type(e).__module__.startswith("hypothesis"):
            raise  # hypothesis' own control flow (a draw past the example's data): not a verdict
        Tally.add(area, "wrong")
        raise AssertionError(f"{what}: raised undocumented {type(e).__name__}: {e}") from e
    else:
        Tally.add(area, "wrong")
        raise AssertionError(f"{what}: invalid input was accepted")
    after = snap(table)
    d = diff(before, after)
    if d:
        Tally.add(area, "wrong")
        raise AssertionError(f"{what}: rejected, but the call changed {d}")
    Tally.add(area, "rejected")


# --------------------------------------------------------------- isolation
def run_isolated(code: str, timeout: float = 60.0, cwd=None) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter with this checkout's package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG + os.pathsep + os.path.dirname(os.path.dirname(__file__)) + os.pathsep + \
        os.path.dirname(__file__) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def crashed(p: subprocess.CompletedProcess) -> bool:
    """A child killed by a signal (segfault, abort) or by the C++ runtime."""
    return p.returncode < 0 or "terminate called" in p.stderr or "Fatal Python error" in p.stderr
