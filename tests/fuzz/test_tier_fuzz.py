"""The file tier (embedlookup.storage.FileTier) and tables over it.

Valid: generated set / get / get_full / erase / keys(since) / flush /
close+reopen sequences against a dict model; a table over a tier with a
memory budget, promote on or off, explicit demote, against reference.py's
model (every key in exactly one tier, rows and optimizer steps exact).
Invalid: each category must raise a documented exception and leave the tier
(keys, rows, state, versions) and, over a table, the whole table
bit-identical.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import embedlookup as el
import reference as ref
from fuzzlib import Tally, expect_rejection, fuzz, run_isolated, snapshot, tier_snapshot
from test_table_fuzz import Model, close, finite_rows, keys_st

AREA = "FileTier"
DIM, SF = 3, 2


def new_path():
    return os.path.join(tempfile.mkdtemp(prefix="el-fuzz-"), "t.tier")


@fuzz(30)
@given(data=st.data(), cap=st.sampled_from([4, 16, 200]))
def test_tier_sequences_match_a_dict_model(data, cap):
    draw = data.draw
    path = new_path()
    tier = el.storage.FileTier(path, cap, dim=DIM, state_floats=SF)
    model = {}  # key -> (row, state, version)
    for _ in range(draw(st.integers(1, 14))):
        op = draw(st.sampled_from(["set", "set", "get", "erase", "keys", "flush", "reopen", "reopen_dirty"]))
        Tally.add(AREA, "tried")
        if op == "set":
            k = draw(keys_st)
            r, s = finite_rows(len(k), DIM, draw), finite_rows(len(k), SF, draw)
            v = np.array(draw(st.lists(st.integers(0, 2**40), min_size=len(k), max_size=len(k))), np.uint64)
            fresh = len({int(x) for x in k} - set(model))
            if len(model) + fresh > cap:
                before = tier_snapshot(tier)
                with pytest.raises(el.storage.TierFullError):
                    tier.set(k, r, s, v)
                assert tier_snapshot(tier) == before, "a failed set changed the tier"
            else:
                tier.set(k, r, s, v)
                for i, x in enumerate(k):
                    model[int(x)] = (r[i], s[i], int(v[i]))
        elif op == "get":
            k = draw(keys_st)
            rows, state, ver, found = tier.get_full(k)
            rows2, found2 = tier.get(k)
            np.testing.assert_array_equal(found, found2)
            np.testing.assert_array_equal(rows, rows2)
            for i, x in enumerate(k):
                assert bool(found[i]) == (int(x) in model)
                if int(x) in model:
                    np.testing.assert_array_equal(rows[i], model[int(x)][0])
                    np.testing.assert_array_equal(state[i], model[int(x)][1])
                    assert int(ver[i]) == model[int(x)][2]
                else:
                    assert not rows[i].any(), "a missing key's row is not zeros"
        elif op == "erase":
            k = draw(keys_st)
            n = tier.erase(k)
            gone = {int(x) for x in k} & set(model)
            assert n == len(gone)
            for x in gone:
                del model[x]
        elif op == "keys":
            since = draw(st.sampled_from([0, 1, 2**20, 2**40]))
            want = sorted(x for x, (_, _, v) in model.items() if v > since)
            assert tier.keys(since).tolist() == want
        elif op == "flush":
            tier.flush()
        else:
            if op == "reopen":
                tier.close()
            else:  # dirty: flush, then drop the object without close() (the file keeps clean mark 0)
                tier.flush()
                tier._native = None
                import gc
                gc.collect()
            tier = el.storage.FileTier(path, dim=DIM, state_floats=SF)
        assert len(tier) == len(model)
        Tally.add(AREA, "valid_ok")
    tier.close()


def tier_with_rows(path=None):
    path = path or new_path()
    t = el.storage.FileTier(path, 8, dim=DIM, state_floats=SF)
    t.set(np.array([1, 2, 3]), np.ones((3, DIM), np.float32), np.ones((3, SF), np.float32),
          np.array([5, 6, 7], np.uint64))
    t.flush()
    t.erase(np.array([3]))
    return t


bad_float = st.sampled_from([float("nan"), float("inf")])

INVALID = {
    "set_rows_shape": lambda d, t: t.set(np.array([1, 9]), np.ones((2, DIM + 1), np.float32)),
    "set_state_shape": lambda d, t: t.set(np.array([1, 9]), np.ones((2, DIM), np.float32),
                                          np.ones((2, SF + d.draw(st.sampled_from([-1, 1]))), np.float32)),
    "set_rows_int": lambda d, t: t.set(np.array([1, 9]), np.ones((2, DIM), np.int32)),
    "set_float_keys": lambda d, t: t.set(np.array([1.0, 9.0]), np.ones((2, DIM), np.float32)),
    "set_versions_shape": lambda d, t: t.set(np.array([1, 9]), np.ones((2, DIM), np.float32),
                                             versions=np.ones(d.draw(st.sampled_from([1, 3])), np.uint64)),
    "set_versions_negative": lambda d, t: t.set(np.array([1, 9]), np.ones((2, DIM), np.float32),
                                                versions=np.array([1, d.draw(st.sampled_from([-1, -(2**63)]))])),
    "set_versions_float": lambda d, t: t.set(np.array([1, 9]), np.ones((2, DIM), np.float32),
                                             versions=np.array([1.5, d.draw(st.sampled_from([np.nan, 2.5]))])),
    "set_versions_not_numbers": lambda d, t: t.set(np.array([1, 9]), np.ones((2, DIM), np.float32),
                                                   versions=["a", "b"]),
    "set_past_capacity": lambda d, t: (lambda n: t.set(np.arange(100, 100 + n), np.ones((n, DIM), np.float32)))(d.draw(st.integers(7, 40))),
    "get_2d_keys": lambda d, t: t.get(np.ones((2, 2), np.int64)),
    "get_full_float_keys": lambda d, t: t.get_full(np.array([0.5])),
    "erase_float_keys": lambda d, t: t.erase(np.array([1.0])),
    "keys_bad_since": lambda d, t: t.keys(d.draw(st.sampled_from([-1, 2**64, "x", None]))),
    "reopen_other_dim": lambda d, t: el.storage.FileTier(t.path, dim=DIM + 1, state_floats=SF),
    "reopen_other_state": lambda d, t: el.storage.FileTier(t.path, dim=DIM, state_floats=SF + 1),
    "reopen_other_capacity": lambda d, t: el.storage.FileTier(t.path, 9, dim=DIM, state_floats=SF),
    # a second open of a file already open would give two writers one file
    "second_open_same_process": lambda d, t: el.storage.FileTier(t.path, dim=DIM, state_floats=SF),
    "bad_capacity": lambda d, t: el.storage.FileTier(new_path(), d.draw(st.sampled_from([0, -1, True, 2.5])),
                                                     dim=DIM),
    "bad_state_floats": lambda d, t: el.storage.FileTier(new_path(), 4, dim=DIM,
                                                         state_floats=d.draw(st.sampled_from([-1, True, 1.5]))),
    "bad_dim": lambda d, t: el.storage.FileTier(new_path(), 4, dim=d.draw(st.sampled_from([0, -4, 2.5]))),
    "nul_path": lambda d, t: el.storage.FileTier(t.path + "\0.x", dim=DIM, state_floats=SF),
    "create_nul_path": lambda d, t: el.storage.FileTier(new_path() + "\0.x", 4, dim=DIM),
    "create_without_capacity": lambda d, t: el.storage.FileTier(new_path(), dim=DIM),
}


@pytest.mark.parametrize("case", sorted(INVALID))
@fuzz(8)
@given(data=st.data())
def test_invalid_tier_call_is_rejected_and_changes_nothing(case, data):
    t = tier_with_rows()
    with open(t.path, "rb") as f:
        disk_before = f.read()
    expect_rejection(AREA, t, lambda: INVALID[case](data, t), snap=tier_snapshot, what=case)
    t.close()
    if case.startswith(("reopen", "second_open", "nul_path")):
        t2 = el.storage.FileTier(t.path, dim=DIM, state_floats=SF)  # still opens, rows intact
        assert sorted(t2.keys(0).tolist()) == [1, 2]
        t2.close()
    del disk_before


@pytest.mark.parametrize("call", ["get", "get_full", "set", "erase", "keys", "flush"])
def test_a_closed_tier_raises(call):
    """Every row access on a closed tier raises (RuntimeError), never touches the unmapped file
    (len() and stats() of a closed tier report the last counts: harmless, not checked)."""
    Tally.add(AREA, "tried")
    t = tier_with_rows()
    t.close()
    t.close()  # twice: harmless
    calls = {"get": lambda: t.get(np.array([1])), "get_full": lambda: t.get_full(np.array([1])),
             "set": lambda: t.set(np.array([1]), np.ones((1, DIM), np.float32)),
             "erase": lambda: t.erase(np.array([1])), "keys": lambda: t.keys(0), "flush": t.flush}
    with pytest.raises((RuntimeError, ValueError)):
        calls[call]()
    Tally.add(AREA, "rejected")


def test_rejected_create_leaves_no_file():
    """A FileTier() that raises must not leave a half-made file that later opens fail on."""
    for kw in (dict(dim=4, capacity=2**40), dict(dim=4, capacity=2**33)):
        Tally.add(AREA, "tried")
        path = new_path()
        with pytest.raises((ValueError, RuntimeError)):
            el.storage.FileTier(path, kw["capacity"], dim=kw["dim"])
        assert not os.path.exists(path), f"a rejected FileTier({kw}) left a file of {os.path.getsize(path)} bytes"
        Tally.add(AREA, "rejected")


def test_second_open_from_another_process_is_refused(tmp_path):
    """Two processes writing one tier would corrupt it: the second open must fail while the first holds it."""
    Tally.add(AREA, "tried")
    path = str(tmp_path / "t.tier")
    t = tier_with_rows(path)
    p = run_isolated(f"""
        import numpy as np, embedlookup as el
        try:
            t = el.storage.FileTier({path!r}, dim={DIM}, state_floats={SF})
        except (ValueError, RuntimeError) as e:
            print("REFUSED", e)
        else:
            t.set(np.array([50]), np.ones((1, {DIM}), np.float32)); t.close(); print("OPENED")
    """)
    assert p.returncode == 0, p.stderr
    ok = "REFUSED" in p.stdout
    Tally.add(AREA, "rejected" if ok else "wrong")
    t.close()
    assert ok, f"a second process opened a tier that is open for writing: {p.stdout.strip()}"


def test_lock_is_released_by_close_and_by_a_killed_holder(tmp_path):
    """The lock of a second-open refusal goes with its holder: close() in this process,
    death (kill -9) of another; a leftover of a killed create does not block a create."""
    import signal
    import subprocess
    import sys

    from fuzzlib import PKG
    Tally.add(AREA, "tried")
    path = str(tmp_path / "t.tier")
    t = tier_with_rows(path)
    with pytest.raises(el.storage.TierLockedError, match="already open"):
        el.storage.FileTier(path, dim=DIM, state_floats=SF)
    t.close()
    el.storage.FileTier(path, dim=DIM, state_floats=SF).close()  # released by close()
    holder = (f"import time, embedlookup as el; t = el.storage.FileTier({path!r}, dim={DIM}, state_floats={SF}); "
              "print('open', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", holder],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=PKG))
    assert child.stdout.readline().strip() == "open"
    with open(path, "rb") as f:
        before = f.read()
    with pytest.raises(el.storage.TierLockedError):
        el.storage.FileTier(path, dim=DIM, state_floats=SF)
    with open(path, "rb") as f:
        assert f.read() == before, "a refused open changed the file"
    child.send_signal(signal.SIGKILL)
    child.wait()
    t2 = el.storage.FileTier(path, dim=DIM, state_floats=SF)  # released by the holder's death
    assert t2.recovered and sorted(t2.keys(0).tolist()) == [1, 2]
    t2.close()
    # a create killed before it linked the file into place leaves only path.creating
    fresh = str(tmp_path / "u.tier")
    with open(fresh + ".creating", "wb") as f:
        f.write(b"half-made")
    t3 = el.storage.FileTier(fresh, 4, dim=DIM)
    assert len(t3) == 0 and not os.path.exists(fresh + ".creating")
    t3.close()
    Tally.add(AREA, "valid_ok")


# ------------------------------------------------------ a table over a tier
@fuzz(25)
@given(data=st.data(), memory_rows=st.sampled_from([None, 1, 3]), promote=st.booleans(),
       opt=st.sampled_from(["sgd", "adagrad"]))
def test_table_over_a_tier_matches_the_model(data, memory_rows, promote, opt):
    draw = data.draw
    tier = el.storage.FileTier(new_path(), 64)
    o = el.optim.SGD(lr=0.1) if opt == "sgd" else el.optim.Adagrad(lr=0.1, eps=1e-6)
    t = el.EmbeddingTable(DIM, initializer=el.init.uniform(-1, 1, seed=4), optimizer=o, tier=tier,
                          memory_rows=memory_rows, promote=promote)
    m = Model(DIM, ("uniform", -1.0, 1.0, 4))
    ropt = ref.RefOptimizer(opt, **({"lr": 0.1} if opt == "sgd" else {"lr": 0.1, "eps": 1e-6}))
    area = "table over FileTier"
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(["lookup", "find", "pooled", "assign", "erase", "demote", "grads", "delta"]))
        Tally.add(area, "tried")
        v0 = t.version
        if op == "lookup":
            k = draw(keys_st)
            close(t.lookup(k), m.get(k), "lookup over tier")
        elif op == "find":
            k = draw(keys_st)
            rows, found = t.find(k)
            np.testing.assert_array_equal(found, [int(x) in m.rows for x in k])
            close(rows, m.get(k, False), "find over tier")
        elif op == "pooled":
            k = draw(keys_st)
            off = np.arange(0, k.size, 2, dtype=np.int64)
            mode = draw(st.sampled_from(["sum", "mean", "max"]))
            close(t.pooled_lookup(k, off, mode), ref.pooled(m.get(k), off, mode), "pooled over tier")
        elif op == "assign":
            k = draw(keys_st)
            r = finite_rows(len(k), DIM, draw)
            t.assign(k, r)
            for kk, rr in zip(k, r):
                m.rows[int(kk)] = rr
        elif op == "erase":
            k = draw(keys_st)
            gone = {int(x) for x in k} & set(m.rows)
            assert t.erase(k) == len(gone)
            for x in gone:
                del m.rows[x]
                ropt.state.pop(x, None)
        elif op == "demote":
            k = draw(keys_st)
            t.demote(k)
        elif op == "grads":
            k = np.array([x for x in draw(keys_st) if int(x) in m.rows], np.int64)
            g = finite_rows(len(k), DIM, draw, -1, 1)
            t.apply_gradients(k, g)
            if k.size:
                ropt.apply(m.rows, k, g)
            else:
                ropt.step += 1
        elif op == "delta":
            replica = el.EmbeddingTable(DIM)
            replica.apply_delta(t.export_delta(0))
            kr, rr = replica.export()
            kt, rt = t.export()
            np.testing.assert_array_equal(kr, kt)
            np.testing.assert_array_equal(rr, rt)
        assert t.version >= v0
        keys, rows = t.export()
        assert keys.tolist() == sorted(m.rows), f"keys differ from the model after {op}"
        assert len(t) == len(m.rows)
        if keys.size:
            close(rows, np.stack([m.rows[int(x)] for x in keys]), f"rows after {op}")
        st_ = t.tier_stats()
        # A promotion copies (the tier keeps the durable copy): every key is in
        # memory, the tier or both, and counted once by len() (checked above).
        assert st_["memory_rows"] <= len(m.rows) and st_["tier_rows"] <= len(m.rows), st_
        assert st_["memory_rows"] + st_["tier_rows"] >= len(m.rows), f"a key is in neither tier: {st_}"
        Tally.add(area, "valid_ok")
    tier.close()


TABLE_INVALID = {
    "demote_float_keys": lambda d, t: t.demote(np.array([1.5])),
    "grads_missing_key_in_neither_tier": lambda d, t: t.apply_gradients(np.array([1, 999]),
                                                                        np.ones((2, DIM), np.float32)),
    "grads_nonfinite_tier_row": lambda d, t: t.apply_gradients(np.array([1]), np.full((1, DIM), np.nan,
                                                                                      np.float32)),
    "grads_wrong_kind": lambda d, t: t.apply_gradients(np.array([1]), np.ones((1, DIM), np.float32),
                                                       el.optim.Adam()),
    "assign_shape": lambda d, t: t.assign(np.array([1, 2]), np.ones((2, DIM + 1), np.float32)),
    "pooled_bad_offsets": lambda d, t: t.pooled_lookup(np.array([1, 2]), np.array([0, 3])),
    "memory_rows_bad": lambda d, t: el.EmbeddingTable(DIM, tier=el.storage.FileTier(new_path(), 4),
                                                      memory_rows=d.draw(st.sampled_from([0, -1, 1.5, True]))),
    "memory_rows_without_tier": lambda d, t: el.EmbeddingTable(DIM, memory_rows=4),
    "tier_not_a_filetier": lambda d, t: el.EmbeddingTable(DIM, tier=d.draw(st.sampled_from(["x", 3, object()]))),
}


@pytest.mark.parametrize("case", sorted(TABLE_INVALID))
@fuzz(6)
@given(data=st.data())
def test_invalid_call_on_a_table_over_a_tier_changes_nothing(case, data):
    tier = el.storage.FileTier(new_path(), 16)
    t = el.EmbeddingTable(DIM, optimizer=el.optim.Adagrad(lr=0.1), tier=tier, memory_rows=2,
                          initializer=el.init.uniform(seed=5))
    t.lookup(np.arange(1, 7))
    t.apply_gradients(np.array([1, 2, 6]), np.ones((3, DIM), np.float32))
    t.demote(np.array([1, 2]))
    expect_rejection("table over FileTier", t, lambda: TABLE_INVALID[case](data, t), snap=snapshot, what=case)
    tier.close()
