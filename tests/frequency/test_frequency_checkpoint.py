"""FrequencyTable.frequency_state / restore_frequency_state: a checkpoint plus
the frequency state gives a table that admits, scores and evicts as the
original goes on to."""

import numpy as np
import pytest

import embedlookup as el

OPTS = dict(admit_count=2, budget_rows=150, policy="lfu", evict_fraction=0.1, default_row="cold", sketch_width=512,
            initializer=el.init.uniform(seed=3))


def _step(t, rng):
    keys = (rng.zipf(1.3, 200) % 300).astype(np.int64)
    out = t.lookup(keys)
    t.apply_gradients(keys, np.full((keys.size, 4), 0.5, np.float32))
    return out


def _whole(t):
    k, r = t.export()
    o = np.argsort(k)
    return k[o], r[o], t._t.export_state(k[o]), t.frequency_state(k[o])


def test_restored_table_goes_on_exactly(tmp_path):
    opt = el.optim.Adagrad(lr=0.1)
    t = el.FrequencyTable(4, optimizer=opt, **OPTS)
    rng = np.random.default_rng(0)
    for _ in range(15):
        _step(t, rng)
    t.save(tmp_path / "t.ckpt")
    state = t.frequency_state(t.export()[0])
    assert state["sketch"].size == 4 * 512 and int(state["clock"]) == 15 and np.any(state["cold_row"] != 0)
    r = el.FrequencyTable.load(tmp_path / "t.ckpt", optimizer=opt, **{k: v for k, v in OPTS.items()
                                                                       if k != "initializer"})
    r.restore_frequency_state(state)
    plain = el.FrequencyTable.load(tmp_path / "t.ckpt", optimizer=opt, **{k: v for k, v in OPTS.items()
                                                                           if k != "initializer"})
    diverged = False
    for _ in range(15):  # same calls on both: same lookups, rows, admissions and evictions
        seed = int(rng.integers(1 << 30))
        a, b = _step(t, np.random.default_rng(seed)), _step(r, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        diverged |= not np.array_equal(a, _step(plain, np.random.default_rng(seed)))
    for x, y in zip(_whole(t)[:3], _whole(r)[:3]):
        np.testing.assert_array_equal(x, y)
    fa, fb = _whole(t)[3], _whole(r)[3]
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    assert t.stats()["evicted"] > 0 and t.stats()["rejected"] > 0
    assert diverged  # without the frequency state, the same calls give other results: the test can tell


def test_restore_refuses_what_does_not_fit():
    t = el.FrequencyTable(4, optimizer=el.optim.SGD(), **OPTS)
    rng = np.random.default_rng(1)
    for _ in range(4):
        _step(t, rng)
    keys = t.export()[0]
    good = t.frequency_state(keys)
    before = t.frequency_state(keys)
    with pytest.raises(ValueError, match="scores and last_step"):
        t.restore_frequency_state({**good, "scores": good["scores"][:-1]})
    with pytest.raises(ValueError, match="sketch"):
        t.restore_frequency_state({**good, "sketch": good["sketch"][:10], "clock": 99})
    with pytest.raises(KeyError):
        t.restore_frequency_state({**good, "keys": keys + 10_000, "clock": 99})
    after = t.frequency_state(keys)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    with pytest.raises(KeyError, match="no row"):
        t.frequency_state(np.append(keys, 10_000))
    cold = el.FrequencyTable(4, optimizer=el.optim.SGD(), cold_row_type="int8", budget_bytes=1 << 16, policy="lfu")
    with pytest.raises(NotImplementedError, match="cold_row_type"):
        cold.frequency_state(np.zeros(0, np.int64))
