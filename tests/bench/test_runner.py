"""The runner: equivalence checks catch wrong peers, failures stay local, results add up."""

import time

import numpy as np
import pytest
from embedlookup import bench
from embedlookup.bench import Case, Config, Skip, compare_outputs, implements, parse_workload, subject

FAST = dict(repeats=2, op_time=0, warmup=0, min_time=0.0, limits=False, progress=False)


def _small():
    return parse_workload(["small", "threads=1", "batches=2"])


def test_compare_outputs():
    ref = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    assert compare_outputs(ref, ref + 1e-7)[0]
    ok, mad, msg = compare_outputs(ref, ref + 1e-3)
    assert not ok and mad == pytest.approx(1e-3, rel=1e-3) and "differs" in msg
    assert not compare_outputs(ref, ref[:4])[0]
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert "NaN" in compare_outputs(ref, bad)[2]


def test_a_wrong_peer_is_reported_and_never_timed(registry):
    subject("broken", "peer", "pooled sum off by a little")
    subject("crashing", "peer", "raises when prepared")
    subject("absent", "peer", "not installed", probe=lambda: (_ for _ in ()).throw(Skip("absent: not here")))

    @implements("pooled_sum", "broken")
    def _(data):
        def run(b):
            out = np.add.reduceat(data.dense[b.idx], b.offsets, axis=0)
            out[3, 2] += 1e-3  # one value wrong
            return out

        return Case(run, run)

    @implements("pooled_sum", "crashing")
    def _(data):
        raise RuntimeError("boom")

    @implements("pooled_sum", "absent")
    def _(data):  # pragma: no cover - never called: the probe skips it
        raise AssertionError

    cfg = Config(subjects=["embedlookup", "numpy", "broken", "crashing", "absent"], **FAST)
    rep = bench.run([(_small(), ["pooled_sum"])], cfg)
    by = {r["subject"]: r for r in rep["results"]}
    assert by["broken"]["status"] == "mismatch" and "median_s" not in by["broken"]
    assert by["broken"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)
    assert by["crashing"]["status"] == "error" and "boom" in by["crashing"]["reason"]
    assert "absent" not in by and any("absent: not here" in n for n in rep["notes"])
    assert by["numpy"]["status"] == "ok" and by["numpy"]["max_abs_diff"] < 1e-5
    assert by["embedlookup"]["status"] == "ok"


def test_results_add_up():
    w = _small()
    rep = bench.run(
        [(w, ["pooled_sum", "pooled_max", "update", "insert"])],
        Config(subjects=["embedlookup", "torch", "numpy"], **FAST),
        command="embedlookup bench x",
    )
    assert rep["schema"] == bench.SCHEMA and rep["command"] == "embedlookup bench x"
    assert rep["machine"]["logical_cores"] >= 1 and rep["machine"]["cpu"]
    assert rep["workloads"][0]["params"]["rows"] == w.rows
    ok = [r for r in rep["results"] if r["status"] == "ok"]
    assert {(r["op"], r["subject"]) for r in ok} >= {
        ("pooled_sum", "embedlookup"),
        ("pooled_sum", "torch"),
        ("pooled_sum", "numpy"),
        ("pooled_max", "torch"),
        ("update", "torch"),
        ("insert", "embedlookup"),
    }
    for r in ok:
        assert len(r["times_s"]) >= 2 and r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["bytes_per_s"] == pytest.approx(r["bytes_per_call"] / r["median_s"])
        if r["subject"] != "embedlookup":
            el = next(x for x in ok if x["op"] == r["op"] and x["subject"] == "embedlookup")
            # each ratio pairs the subject's rounds with embedlookup's time in those rounds
            assert len(r["el_times_s"]) == len(r["times_s"])
            assert set(r["el_times_s"]) <= set(el["times_s"])
            assert len(el["times_s"]) == r["every"] * len(r["times_s"]) or r["every"] > 1
            want = np.median(np.asarray(r["times_s"]) / np.asarray(r["el_times_s"]))
            assert r["speedup_vs_embedlookup"] == pytest.approx(want)
    assert ok[0]["rows_per_call"] == w.batch * w.pooling
    upd = next(r for r in ok if r["op"] == "update")
    assert upd["rows_per_call"] < w.batch * w.pooling  # distinct rows, duplicates merged


def test_training_peers_agree_with_embedlookup():
    # one real step from identical rows: torch's Adagrad/SparseAdam and FBGEMM's row-wise Adagrad
    rep = bench.run([(_small(), ["train_adagrad", "train_adam", "train_rowwise"])], Config(**FAST))
    st = {(r["op"], r["subject"]): r["status"] for r in rep["results"]}
    assert st[("train_adagrad", "torch")] == "ok" and st[("train_adam", "torch")] == "ok"
    fb = next(r for r in rep["results"] if r["subject"] == "fbgemm")
    assert fb["status"] == "ok" or (fb["status"] == "skipped" and "fbgemm" in fb["reason"])


LIMITS_ONLY = dict(subjects=["embedlookup"], repeats=1, op_time=0, warmup=0, min_time=0, limit_bytes=8 << 20,
                   progress=False)


def test_limits_are_measured_and_used():
    other = parse_workload(["small", "threads=1", "batches=2", "seed=1"])
    rep = bench.run(
        [(_small(), ["lookup"]), (other, ["lookup"])],
        Config(**LIMITS_ONLY),
    )
    lim = rep["workloads"][0]["limits"]
    assert lim["copy_bytes_per_s"] > 1e8 and lim["gather_bytes_per_s"] > 1e7
    # same row size and threads: measured once (one pass), shared by both workloads
    assert lim["measurements"] == 1 and rep["workloads"][1]["limits"] is lim
    for r in rep["results"]:
        assert r["pct_gather"] == pytest.approx(100 * r["bytes_per_s"] / lim["gather_bytes_per_s"])
        assert r["pct_copy"] == pytest.approx(100 * r["bytes_per_s"] / lim["copy_bytes_per_s"])


def test_a_training_op_is_measured_against_its_own_limit():
    # The step's ceiling: forward bytes at the gather limit, the distinct rows
    # (and state) it reads and writes back at the read-modify-write limit.
    w = _small()
    rep = bench.run([(w, ["lookup", "train_rowwise"])], Config(**LIMITS_ONLY))
    lim = rep["workloads"][0]["limits"]
    assert lim["update_bytes_per_s"] > 1e7
    (lookup,) = [r for r in rep["results"] if r["op"] == "lookup"]
    assert "pct_limit" not in lookup and "rmw_bytes_per_call" not in lookup
    (r,) = [r for r in rep["results"] if r["op"] == "train_rowwise"]
    # rows model, by hand: keys + 2 x distinct x (1 + 4 / row bytes); the read-and-written part is the second term
    assert r["rmw_bytes_per_call"] == pytest.approx(r["bytes_per_call"] - w.batch * w.pooling * w.row_bytes, rel=0.01)
    floor = (r["bytes_per_call"] - r["rmw_bytes_per_call"]) / lim["gather_bytes_per_s"] + r[
        "rmw_bytes_per_call"
    ] / lim["update_bytes_per_s"]
    assert r["pct_limit"] == pytest.approx(100 * floor / r["median_s"])
    assert "% limit (training ops)" in bench.format_table(rep)


def test_limits_are_measured_in_the_first_and_last_pass_only():
    rep = bench.run(
        [(_small(), ["lookup"])],
        Config(**LIMITS_ONLY, passes=3),
    )
    assert rep["workloads"][0]["limits"]["measurements"] == 2


def test_rounds_grow_to_fill_op_time_up_to_max_repeats():
    cfg = Config(
        subjects=["embedlookup", "numpy"],
        repeats=2,
        max_repeats=6,
        op_time=60.0,
        warmup=0,
        min_time=0.0,
        limits=False,
        progress=False,
    )
    rep = bench.run([(_small(), ["lookup"])], cfg)
    assert [r["samples"] for r in rep["results"]] == [6, 6]
    assert set(rep["workloads"][0]["op_wall_s"]) == {"lookup"}


def test_busy_machine_note():
    from embedlookup.bench.machine import busy_note

    assert busy_note([1.0, 1.0, 1.0], 2) is None
    assert "load average 6.0 on 2 cores" in busy_note([6.0, 5.0, 4.0], 2)
    assert busy_note(None, 2) is None


def test_runs_without_torch(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    monkeypatch.setitem(sys.modules, "fbgemm_gpu", None)
    rep = bench.run(
        [(_small(), ["pooled_sum"])], Config(subjects=["embedlookup", "torch", "fbgemm", "numpy"], **FAST)
    )
    assert any(n.startswith("torch: skipped - torch is not importable") for n in rep["notes"])
    assert any(n.startswith("fbgemm: skipped") for n in rep["notes"])
    assert [(r["subject"], r["status"]) for r in rep["results"]] == [("embedlookup", "ok"), ("numpy", "ok")]
    assert "torch" not in rep["machine"]["versions"]


def test_passes_pool_rounds_in_alternating_order(registry, monkeypatch):
    # Records the order ops run in; rounds of both passes pool per subject.
    # Every subject sampled every round: a later pass calibrates on one call of
    # a fresh case, which on a loaded machine can look > 4x slower than
    # embedlookup's and trigger every-k-th-round sampling (its own test below).
    monkeypatch.setattr(bench.runner, "_sampling_every", lambda sample_time: {s: 1 for s in sample_time})
    seen = []
    subject("recorder", "peer", "embedlookup's pooled sum, noting each op it runs")

    for op in ("pooled_sum", "pooled_mean"):
        @implements(op, "recorder")
        def _(data, op=op):
            t = data.table
            mode = op.split("_")[1]

            def run(b):
                seen.append((data.workload.seed, op))
                return t.pooled_lookup(b.keys, b.offsets, mode=mode)

            return Case(run, run)

    w1 = _small()
    w2 = parse_workload(["small", "threads=1", "batches=2", "seed=3"])
    cfg = Config(**dict(FAST, repeats=4), subjects=["embedlookup", "recorder"], passes=2)
    rep = bench.run([(w1, ["pooled_sum", "pooled_mean"]), (w2, ["pooled_sum"])], cfg)
    order = list(dict.fromkeys(seen))  # first call of each (workload, op) per pass shows the order
    runs = [k for i, k in enumerate(seen) if i == 0 or seen[i - 1] != k]
    # pass 1 in plan order, pass 2 reversed (its first op is pass 1's last: one run)
    assert runs == [(0, "pooled_sum"), (0, "pooled_mean"), (3, "pooled_sum"), (0, "pooled_mean"), (0, "pooled_sum")]
    assert order == [(0, "pooled_sum"), (0, "pooled_mean"), (3, "pooled_sum")]
    assert [x["name"] for x in rep["workloads"]] == [w1.name, w2.name]
    ok = [r for r in rep["results"] if r["status"] == "ok"]
    assert len(ok) == 6
    for r in ok:
        assert r["samples"] == len(r["times_s"]) == 4  # 2 rounds in each pass
        if r["subject"] == "recorder":
            want = np.median(np.asarray(r["times_s"]) / np.asarray(r["el_times_s"]))
            assert r["speedup_vs_embedlookup"] == pytest.approx(want)


def test_uncertain_ratios_get_more_rounds(registry):
    # A peer whose time alternates between 1x and 3x embedlookup's has a wide
    # ratio interval: with ratio_ci the runner adds rounds (at most doubling).
    subject("jittery", "peer", "pooled sum that sleeps every other call")
    calls = [0]

    @implements("pooled_sum", "jittery")
    def _(data):
        t = data.table

        def run(b):
            calls[0] += 1
            out = t.pooled_lookup(b.keys, b.offsets)
            if calls[0] % 2:
                time.sleep(0.002)
            return out

        return Case(run, run)

    base = dict(FAST, repeats=10, min_time=0.0)
    fixed = bench.run([(_small(), ["pooled_sum"])], Config(**base, subjects=["embedlookup", "jittery"]))
    adaptive = bench.run([(_small(), ["pooled_sum"])],
                         Config(**dict(base, op_time=5.0, max_repeats=10), ratio_ci=0.01, ratio_ci_factor=2.0,
                                subjects=["embedlookup", "jittery"]))
    n = {r["subject"]: r["samples"] for r in fixed["results"]}
    m = {r["subject"]: r["samples"] for r in adaptive["results"]}
    assert n == {"embedlookup": 10, "jittery": 10}
    assert m == {"embedlookup": 20, "jittery": 20}  # doubled, then stopped
    assert bench.runner._widest_ratio_ci({"embedlookup": [1.0] * 8, "x": [2.0] * 8}, {"x": [1.0] * 8}) == 0.0


def test_a_slow_subject_is_timed_every_kth_round_and_paired_with_those_rounds(registry):
    subject("sleepy", "peer", "pooled sum after a 20 ms sleep")
    every = bench.runner._sampling_every({"embedlookup": 1.0, "torch": 2.0, "numpy": 10.0, "slowest": 100.0})
    # quick: within 4x of embedlookup; the others every floor(t / sum of quick) rounds, at most 4
    assert every == {"embedlookup": 1, "torch": 1, "numpy": 3, "slowest": 4}
    assert bench.runner._sampling_every({"torch": 5.0}) == {"torch": 1}

    @implements("pooled_sum", "sleepy")
    def _(data):
        t = data.table

        def run(b):
            time.sleep(0.02)  # ~10x a small pooled lookup: timed every few rounds
            return t.pooled_lookup(b.keys, b.offsets)

        return Case(run, run)

    rep = bench.run([(_small(), ["pooled_sum"])], Config(**dict(FAST, repeats=3), subjects=["embedlookup", "sleepy"]))
    by = {r["subject"]: r for r in rep["results"]}
    el, sl = by["embedlookup"], by["sleepy"]
    assert sl["every"] > 1 and sl["samples"] >= 3
    assert el["samples"] >= sl["every"] * 3  # the quick subject got the extra rounds
    assert len(sl["el_times_s"]) == sl["samples"]
    # each paired time is one of embedlookup's own rounds, in order
    pos = [el["times_s"].index(t) for t in sl["el_times_s"]]
    assert pos == sorted(pos)
    assert sl["speedup_vs_embedlookup"] == pytest.approx(
        np.median(np.asarray(sl["times_s"]) / np.asarray(sl["el_times_s"]))
    )
    assert sl["speedup_vs_embedlookup"] > 2  # 20 ms against a sub-ms lookup


def test_steady_allocator_reuses_memory_and_is_noted():
    import resource

    from embedlookup.bench import machine

    def faults_of_big_temporaries():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            a = np.ones(12_000_000, np.float32)  # 48 MB: above glibc's default mmap threshold
            del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    line = machine.steady_allocator()
    if line is None:
        pytest.skip("not glibc")
    faults_of_big_temporaries()  # the heap grows once
    assert faults_of_big_temporaries() < 100  # then the same memory is reused
    rep = bench.run([(_small(), ["pooled_sum"])], Config(**FAST, subjects=["embedlookup"]))
    assert any(n.startswith("allocator: glibc mmap threshold") for n in rep["notes"])
    rep = bench.run([(_small(), ["pooled_sum"])], Config(**FAST, subjects=["embedlookup"], steady_allocator=False))
    assert not any(n.startswith("allocator:") for n in rep["notes"])


def test_every_result_says_how_many_passes_it_pooled():
    rep = bench.run([(_small(), ["pooled_sum"])], Config(**dict(FAST, repeats=3, passes=3), subjects=["embedlookup", "torch"]))
    for r in rep["results"]:
        assert r["passes"] == 3 and r["samples"] == 3  # ceil(3 / 3) = 1 round in each pass


def test_projected_ratio_interval_counts_earlier_and_later_passes():
    from embedlookup.bench.runner import _projected_ratio_ci, _widest_ratio_ci

    rng = np.random.default_rng(5)
    el = list(1.0 + 0.01 * rng.random(12))
    peer = [e * r for e, r in zip(el, rng.choice([1.0, 1.5], 12))]  # ratio 1 or 1.5: a wide interval
    times, paired = {"embedlookup": el, "p": peer}, {"p": el}
    alone = _widest_ratio_ci(times, paired)
    assert alone > 0.1
    # nothing before, no pass after: the interval of this pass's rounds
    assert _projected_ratio_ci(times, paired, {}, 0) == pytest.approx(alone)
    # 3 more passes of 12 samples each: heading for 48 samples -> sqrt(12 / 48)
    assert _projected_ratio_ci(times, paired, {}, 3) == pytest.approx(alone / 2)
    # earlier passes that pinned the ratio at 1.2 narrow it, whatever this pass saw
    prior = {"p": ([1.2] * 200, [1.0] * 200)}
    assert _projected_ratio_ci(times, paired, prior, 0) < 0.02
    # embedlookup itself and a subject without paired times are not intervals
    assert _projected_ratio_ci({"embedlookup": el, "q": peer}, {}, {}, 0) == 0.0


def test_a_stable_ratio_stops_at_the_planned_rounds_a_noisy_one_gets_more(registry):
    subject("steady", "peer", "embedlookup's own pooled sum")
    subject("noisy", "peer", "embedlookup's pooled sum, once or 3 times per call in alternate samples")
    samples = [0]

    @implements("pooled_sum", "steady")
    def _(data):
        def run(b):
            return data.table.pooled_lookup(b.keys, b.offsets)

        return Case(run, run)

    @implements("pooled_sum", "noisy")
    def _(data):
        def run(b):
            for _ in range(1 + 2 * (samples[0] % 2)):  # <= 3x: timed in every round
                out = data.table.pooled_lookup(b.keys, b.offsets)
            return out

        def after():  # called once after each sample
            samples[0] += 1

        return Case(run, run, after=after)

    w = parse_workload(["small", "threads=1", "batches=2", "batch=1024"])
    # Samples of >= 3 ms, and a generous target (+-25%) that a same-code ratio
    # meets even on a busy machine (12 rounds a pass: the interval drops the 2
    # extreme ones on each side); ratios of 1 and 3 in alternate rounds never do.
    cfg = dict(FAST, repeats=24, min_time=0.003, passes=2, op_time=10.0, max_repeats=24, ratio_ci=0.25,
               ratio_ci_factor=3.0)
    runs = {}
    for s in ("steady", "noisy"):
        rep = bench.run([(w, ["pooled_sum"])], Config(**cfg, subjects=["embedlookup", s]))
        runs[s] = {r["subject"]: r["samples"] for r in rep["results"]}
    assert runs["steady"] == {"embedlookup": 24, "steady": 24}  # the 12 planned rounds in each of 2 passes
    n = runs["noisy"]["noisy"]
    assert runs["noisy"]["embedlookup"] == n
    # The first pass stops once the run is heading for the target (its interval
    # shrunk by sqrt(1/2), one pass to come), at 12 rounds at least; the last
    # pass, with nothing to come, keeps going up to 3x its 12 planned rounds
    # (12 + 36 on a quiet machine). On a loaded one the noise of the steady
    # subject itself can end a pass's extra rounds early (43 seen at load 15),
    # so the check is the property: more rounds than planned, never more than 3x.
    assert 24 < n <= 72


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_numpy_floor_pools_equal_and_unequal_bags_like_embedlookup(mode):
    from embedlookup.bench.ops import OPS
    from embedlookup.bench.workloads import Batch, WorkloadData

    data = WorkloadData.generate(_small())
    w, b0 = data.workload, data.batches[0]
    floor = OPS[f"pooled_{mode}"].impls["numpy"](data)
    # equal bags (the reduction over the middle axis), then bags of 1 to 15 keys (reduceat)
    lengths = 1 + np.arange(w.batch) % 15
    lengths[-1] += w.lookups - lengths.sum()
    assert lengths.min() >= 1
    full = np.concatenate([[0], np.cumsum(lengths)])
    ragged = Batch(b0.keys, b0.idx, full[:-1], full, b0.grad, b0.distinct)
    for b in (b0, ragged):
        want = data.table.pooled_lookup(b.keys, b.offsets, mode=mode)
        np.testing.assert_allclose(floor.run(b), want, rtol=1e-5, atol=1e-6)


def test_torch_is_asked_for_huge_pages_unless_it_cannot_be(monkeypatch):
    import sys

    from embedlookup.bench import machine

    monkeypatch.setattr(machine, "_thp_mode", lambda: "madvise")
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert "transparent huge pages" in machine.torch_huge_pages()
    import os

    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")  # the user's choice is kept
    assert "THP_MEM_ALLOC_ENABLE=0 kept" in machine.torch_huge_pages()
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    monkeypatch.setitem(sys.modules, "torch", object())  # too late: torch already allocated
    assert "4 KiB pages" in machine.torch_huge_pages() and "THP_MEM_ALLOC_ENABLE" not in os.environ
    monkeypatch.setattr(machine, "_thp_mode", lambda: "never")
    assert machine.torch_huge_pages() is None


def test_a_run_asks_for_torch_huge_pages_before_anything_imports_torch():
    # In a fresh interpreter (torch not imported yet), as `embedlookup bench` runs:
    # describing the machine imports torch, so the request must come first.
    import subprocess
    import sys

    pytest.importorskip("torch")
    code = (
        "import os, embedlookup.bench as B\n"
        "os.environ.pop('THP_MEM_ALLOC_ENABLE', None)\n"
        "B.machine._thp_mode = lambda: 'madvise'\n"
        "w = B.parse_workload(['small', 'threads=1', 'batches=1'])\n"
        "rep = B.run([(w, ['lookup'])], B.Config(repeats=1, op_time=0, warmup=0, limits=False,"
        " progress=False, subjects=['embedlookup', 'torch']))\n"
        "print([n for n in rep['notes'] if n.startswith('memory:')],"
        " os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    out = run.stdout
    assert "every subject's large arrays on transparent huge pages" in out and out.strip().endswith("1")


def test_every_case_is_closed_once_its_op_is_done(registry):
    """Case.close runs once per case and pass, after the op's rounds, for a
    case that ran and for one whose output did not match (never timed)."""
    subject("closing", "peer", "embedlookup's pooled sum, counting its closes")
    subject("closing-wrong", "peer", "a wrong pooled sum, counting its closes")
    events = []

    @implements("pooled_sum", "closing")
    def _(data):
        def run(b):
            events.append("run")
            return data.table.pooled_lookup(b.keys, b.offsets)

        return Case(run, run, close=lambda: events.append("close"))

    @implements("pooled_sum", "closing-wrong")
    def _(data):
        def run(b):
            return data.table.pooled_lookup(b.keys, b.offsets) + 1.0

        return Case(run, run, close=lambda: events.append("close-wrong"))

    rep = bench.run([(_small(), ["pooled_sum"])],
                    Config(subjects=["embedlookup", "closing", "closing-wrong"], **dict(FAST, passes=2)))
    by = {r["subject"]: r for r in rep["results"]}
    assert by["closing"]["status"] == "ok" and by["closing-wrong"]["status"] == "mismatch"
    assert events.count("close") == 2 and events.count("close-wrong") == 1  # the mismatch is not run again
    first_close = events.index("close")
    assert events[:first_close].count("run") >= 2  # closed after its check and its timed runs
