"""Sizes and counts that may overflow, exhaust memory or spawn absurd thread
counts, each in a child interpreter (address space capped at 6 GiB) so that a
crash fails one case instead of the run.

Expectation per case: the child either raises a documented exception
(ValueError, TypeError, RuntimeError subclasses; MemoryError is accepted for
sizes that truly do not fit) or completes with the right result; it must never
die by a signal, abort, or hang.
"""

from __future__ import annotations

import pytest

from fuzzlib import Tally, crashed, run_isolated

AREA = "sizes (isolated)"

PRELUDE = """
import resource, sys, numpy as np
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
import embedlookup as el
def body(tmp):
{body}
import tempfile
try:
    body(tempfile.mkdtemp())
except (ValueError, TypeError, KeyError, IndexError, RuntimeError, MemoryError) as e:
    print("REJECTED", type(e).__name__, repr(str(e)[:200])); sys.exit(0)
print("OK"); sys.exit(0)
"""

CASES = {
    # EmbeddingTable construction
    "table_num_threads_2e31": "t = el.EmbeddingTable(4, num_threads=2**31 - 1); "
                              "assert t.lookup(np.arange(100)).shape == (100, 4)",
    "table_num_threads_100k": "t = el.EmbeddingTable(4, num_threads=100_000); "
                              "assert t.lookup(np.arange(1000)).shape == (1000, 4)",
    "table_num_threads_2e40": "el.EmbeddingTable(4, num_threads=2**40)",
    "table_num_threads_bool": "t = el.EmbeddingTable(4, num_threads=True); t.lookup(np.arange(3))",
    "table_capacity_2e62": "t = el.EmbeddingTable(4, capacity=2**62); t.lookup(np.arange(10))",
    "table_capacity_2e63m1": "t = el.EmbeddingTable(4, capacity=2**63 - 1); t.lookup(np.arange(10))",
    "table_capacity_2e64": "el.EmbeddingTable(4, capacity=2**64)",
    "table_dim_2e40": "t = el.EmbeddingTable(2**40); t.lookup(np.arange(1))",
    "table_dim_2e62": "t = el.EmbeddingTable(2**62); t.lookup(np.arange(1))",
    "table_dim_2e61p1": "t = el.EmbeddingTable(2**61 + 1); t.lookup(np.arange(1))",
    # FrequencyTable sizes
    # (admit_count=2: the sketch is only built when admission counts sightings)
    "freq_sketch_width_2e40": "t = el.FrequencyTable(4, sketch_width=2**40, admit_count=2); t.lookup(np.arange(10))",
    "freq_sketch_width_2e60": "t = el.FrequencyTable(4, sketch_width=2**60, admit_count=2); t.lookup(np.arange(10))",
    "freq_sketch_width_2e62_depth16": "t = el.FrequencyTable(4, sketch_width=2**62, sketch_depth=16, admit_count=2); "
                                      "t.lookup(np.arange(10))",
    "freq_sketch_width_2e63": "t = el.FrequencyTable(4, sketch_width=2**63); t.lookup(np.arange(10))",
    "freq_budget_2e62": "t = el.FrequencyTable(4, budget_rows=2**62); t.lookup(np.arange(10))",
    "freq_budget_2e63m1": "t = el.FrequencyTable(4, budget_rows=2**63 - 1); t.lookup(np.arange(10))",
    "freq_budget_bytes_2e63m1": "t = el.FrequencyTable(4, budget_bytes=2**63 - 1); t.lookup(np.arange(10))",
    "freq_ttl_2e63": "t = el.FrequencyTable(4, policy='ttl', ttl=2**63, budget_rows=4); t.lookup(np.arange(10))",
    "freq_num_threads_100k": "t = el.FrequencyTable(4, num_threads=100_000); t.lookup(np.arange(100))",
    "freq_relayout_2e63": "t = el.FrequencyTable(4, budget_rows=8); t.lookup(np.arange(8)); "
                          "t.relayout_step(2**63 - 1)",
    # FileTier sizes: the slot size (dim + state) * 4 must not wrap
    "tier_dim_2e62": "el.storage.FileTier(tmp + '/t', 10, dim=2**62)",
    "tier_dim_2e61p16": "t = el.storage.FileTier(tmp + '/t', 10, dim=2**61 + 16); t.get(np.arange(1))",
    "tier_state_2e62": "el.storage.FileTier(tmp + '/t', 10, dim=4, state_floats=2**62)",
    "tier_dim_plus_state_wrap": "el.storage.FileTier(tmp + '/t', 10, dim=2**63 - 1, state_floats=2)",
    "tier_capacity_2e40": "el.storage.FileTier(tmp + '/t', 2**40, dim=4)",
    "tier_capacity_2e62": "el.storage.FileTier(tmp + '/t', 2**62, dim=4)",
    "tier_capacity_2e63m1": "el.storage.FileTier(tmp + '/t', 2**63 - 1, dim=4)",
    "table_memory_rows_2e63m1": "tier = el.storage.FileTier(tmp + '/t', 100); "
                                "t = el.EmbeddingTable(4, tier=tier, memory_rows=2**63 - 1); t.lookup(np.arange(10))",
}


# Cases whose request cannot be honoured under the child's 6 GiB cap (or at
# all): "OK" there means a size silently wrapped, so only a rejection passes.
MUST_REJECT = {"freq_sketch_width_2e40", "freq_sketch_width_2e60", "freq_sketch_width_2e62_depth16",
               "tier_dim_2e62", "tier_state_2e62", "tier_dim_plus_state_wrap", "table_dim_2e40", "table_dim_2e62",
               "tier_capacity_2e40", "tier_capacity_2e62", "tier_capacity_2e63m1"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_huge_size_is_rejected_or_works_never_crashes(case):
    Tally.add(AREA, "tried")
    body = "\n".join("    " + line for line in CASES[case].split("; "))
    try:
        p = run_isolated(PRELUDE.format(body=body), timeout=90)
    except Exception as e:  # noqa: BLE001 - a hang
        Tally.add(AREA, "crash")
        raise AssertionError(f"{case}: the child hung ({e})") from None
    if crashed(p) or p.returncode != 0:
        Tally.add(AREA, "crash")
        raise AssertionError(f"{case}: the child died (rc {p.returncode}): {p.stderr[-800:]}")
    out = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    Tally.add(AREA, "rejected" if out.startswith("REJECTED") else "valid_ok")
    print(case, "->", out)
    assert out.startswith(("REJECTED", "OK")), p.stdout + p.stderr
    if case in MUST_REJECT and not out.startswith("REJECTED"):
        Tally.add(AREA, "wrong")
        raise AssertionError(f"{case}: an impossible size was accepted (a size computation wrapped?)")
