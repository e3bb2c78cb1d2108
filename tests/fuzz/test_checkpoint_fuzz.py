"""Checkpoints and deltas: save / save_delta / load(deltas=...) /
export_delta / apply_delta over generated training histories.

Valid: the table loaded from a checkpoint plus its delta chain, and a replica
fed every exported delta, must equal the source bit for bit (rows, optimizer
state, step), and keep its version. Invalid file sequences (out of order,
a delta as the checkpoint, another dim, another lineage, garbage) must raise
a documented exception; apply_delta into an existing table must then leave
it bit-identical.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import embedlookup as el
from fuzzlib import Tally, expect_rejection, fuzz, snapshot
from test_table_fuzz import finite_rows, keys_st, make_opt, opt_st

AREA = "checkpoint/delta"
DIM = 3


def same(a, b, what):
    ka, ra = a.export()
    kb, rb = b.export()
    np.testing.assert_array_equal(ka, kb, err_msg=what)
    np.testing.assert_array_equal(ra, rb, err_msg=what)
    np.testing.assert_array_equal(a._t.export_state(ka), b._t.export_state(kb), err_msg=what + " (state)")
    assert a.step == b.step, what + " (step)"


def train(t, draw):
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["lookup", "assign", "erase", "grads"]))
        k = draw(keys_st)
        if op == "lookup":
            t.lookup(k)
        elif op == "assign":
            t.assign(k, finite_rows(len(k), DIM, draw))
        elif op == "erase":
            t.erase(k)
        else:
            held = np.array([x for x in k if x in set(t.export()[0].tolist())], np.int64)
            t.apply_gradients(held, finite_rows(len(held), DIM, draw, -1, 1))


@fuzz(25)
@given(data=st.data(), opt=opt_st, freq=st.booleans())
def test_checkpoint_and_delta_chain_reproduce_the_table(data, opt, freq):
    draw = data.draw
    d = tempfile.mkdtemp(prefix="el-fuzz-ck-")
    o = make_opt(*opt)
    src = (el.FrequencyTable(DIM, optimizer=o, initializer=el.init.uniform(seed=1)) if freq
           else el.EmbeddingTable(DIM, optimizer=o, initializer=el.init.uniform(seed=1)))
    replica, seen = el.EmbeddingTable(DIM, optimizer=o), 0
    train(src, draw)
    v = src.save(os.path.join(d, "full.elt"))
    deltas = []
    for i in range(draw(st.integers(0, 3))):
        Tally.add(AREA, "tried")
        train(src, draw)
        p = os.path.join(d, f"d{i}.elt")
        v = src.save_delta(p, v)
        deltas.append(p)
        dl = src.export_delta(seen, with_versions=draw(st.booleans()))
        replica.apply_delta(dl)
        seen = el.storage.delta_info(dl)["to_version"]
        same(src, replica, "replica fed deltas")
        Tally.add(AREA, "valid_ok")
    Tally.add(AREA, "tried")
    loaded = el.EmbeddingTable.load(os.path.join(d, "full.elt"), deltas=deltas, optimizer=o)
    same(src, loaded, "checkpoint + deltas")
    assert loaded.version == src.version, f"loaded version {loaded.version} != source {src.version}"
    # a loaded table continues the lineage: the source's next delta applies to it
    train(src, draw)
    loaded.apply_delta(src.export_delta(v))
    same(src, loaded, "loaded + next delta")
    Tally.add(AREA, "valid_ok")


def chain(d):
    src = el.EmbeddingTable(DIM, optimizer=el.optim.Adagrad(lr=0.1), initializer=el.init.uniform(seed=2))
    src.lookup(np.arange(6))
    src.apply_gradients(np.arange(3), np.ones((3, DIM), np.float32))
    full = os.path.join(d, "full.elt")
    v0 = src.save(full)
    src.lookup(np.arange(6, 9))
    src.erase(np.array([0]))
    d1 = os.path.join(d, "d1.elt")
    v1 = src.save_delta(d1, v0)
    src.assign(np.array([1, 20]), np.ones((2, DIM), np.float32))
    d2 = os.path.join(d, "d2.elt")
    src.save_delta(d2, v1)
    return src, full, d1, d2


BAD_LOADS = {
    "deltas_out_of_order": lambda full, d1, d2, d: el.EmbeddingTable.load(full, deltas=[d2, d1]),
    "delta_missing_in_chain": lambda full, d1, d2, d: el.EmbeddingTable.load(full, deltas=[d2]),
    "delta_as_checkpoint": lambda full, d1, d2, d: el.EmbeddingTable.load(d1),
    "checkpoint_as_delta": lambda full, d1, d2, d: el.EmbeddingTable.load(full, deltas=[full]),
    "missing_file": lambda full, d1, d2, d: el.EmbeddingTable.load(os.path.join(d, "nope.elt")),
    "directory": lambda full, d1, d2, d: el.EmbeddingTable.load(d),
    "other_lineage_delta": lambda full, d1, d2, d: el.EmbeddingTable.load(full, deltas=[_foreign_delta(d)]),
    "other_dim_delta": lambda full, d1, d2, d: el.EmbeddingTable.load(full, deltas=[_other_dim(d)]),
    "nul_in_delta_path": lambda full, d1, d2, d: el.EmbeddingTable.load(full, deltas=[d1 + "\0junk"]),
}


def _foreign_delta(d):
    t = el.EmbeddingTable(DIM)
    t.lookup(np.arange(3))
    p = os.path.join(d, "foreign.elt")
    t.save_delta(p, 0)
    return p


def _other_dim(d):
    t = el.EmbeddingTable(DIM + 1)
    t.lookup(np.arange(3))
    p = os.path.join(d, "dim.elt")
    t.save_delta(p, 0)
    return p


@pytest.mark.parametrize("case", sorted(BAD_LOADS))
def test_bad_checkpoint_sequence_raises(case, tmp_path):
    Tally.add(AREA, "tried")
    src, full, d1, d2 = chain(str(tmp_path))
    with pytest.raises((ValueError, RuntimeError, OSError)) as e:
        BAD_LOADS[case](full, d1, d2, str(tmp_path))
    assert not isinstance(e.value, OSError) or case in ("missing_file", "directory"), e.value
    Tally.add(AREA, "rejected")


DELTA_INVALID = {
    "apply_own_older_delta_after_moving_on": "stale",
    "apply_a_checkpoint_of_another_table": "foreign_full",
    "apply_delta_skipping_one": "gap",
    "apply_truncated_delta": "trunc",
    "apply_delta_of_other_state_kind": "kind",
}


@pytest.mark.parametrize("case", sorted(DELTA_INVALID))
@fuzz(6)
@given(data=st.data())
def test_bad_delta_apply_changes_nothing(case, data):
    src = el.EmbeddingTable(DIM, optimizer=el.optim.Adagrad(lr=0.1), initializer=el.init.uniform(seed=2))
    src.lookup(np.arange(5))
    rep = el.EmbeddingTable(DIM, optimizer=el.optim.Adagrad(lr=0.1))
    d0 = src.export_delta(0)
    rep.apply_delta(d0)
    v0 = el.storage.delta_info(d0)["to_version"]
    src.apply_gradients(np.arange(2), np.ones((2, DIM), np.float32))
    d1 = src.export_delta(v0)
    v1 = el.storage.delta_info(d1)["to_version"]
    src.erase(np.array([4]))
    src.lookup(np.array([50]))
    d2 = src.export_delta(v1)
    kind = DELTA_INVALID[case]
    if kind == "stale":
        rep.apply_delta(d1)
        rep.apply_delta(d2)
        bad = d1  # to_version < rep.version
    elif kind == "foreign_full":
        o = el.EmbeddingTable(DIM)
        o.lookup(np.arange(3))
        bad = o.export_delta(0)
    elif kind == "gap":
        bad = d2
    elif kind == "trunc":
        n = data.draw(st.integers(0, len(d1) - 1))
        bad = np.ascontiguousarray(d1[:n])
    else:
        rep.apply_delta(d1)  # rep now keeps Adagrad state
        o = el.EmbeddingTable(DIM, optimizer=el.optim.Adam())
        o.apply_delta(d0)
        o.apply_gradients(np.arange(2), np.ones((2, DIM), np.float32))
        bad = o.export_delta(v0)
    expect_rejection(AREA, rep, lambda: rep.apply_delta(bad), snap=snapshot, what=case)
