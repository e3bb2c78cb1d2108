"""kill -9 during heavy FileTier writes, 20 times at random instants, on one file.

After each kill the file must reopen without error; every row must be whole
(row == [key, g, g, ...] with version g, for a generation g that wrote that
key: never a torn mix) and no older than the last flushed write of that key.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import embedlookup as el
from crash_writer import CAPACITY, DIM, N_KEYS, keys_of

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(os.path.dirname(el.__file__))


@pytest.mark.slow
def test_kill_9_during_writes_never_tears_or_loses_flushed_rows(tmp_path):
    path = str(tmp_path / "tier")
    rng = np.random.default_rng(1234)
    durable = np.zeros(N_KEYS, np.int64)  # per key: generation of its last acknowledged write
    written_by = {}  # generation -> set of keys (cache)
    kills_mid_write = 0
    for run in range(1, 21):
        child = subprocess.Popen([sys.executable, os.path.join(HERE, "crash_writer.py"), path, str(run), PKG],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if run % 4 == 0:  # anywhere: start-up, open/recovery or writing
            time.sleep(float(rng.uniform(0.0, 1.5)))
        else:  # once the file is open: during the writes
            assert child.stdout.readline().strip() == "R"
            time.sleep(float(rng.uniform(0.0, 0.5)))
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err
        acks = [int(line.split()[1]) for line in out.splitlines() if line.startswith("F ")]
        kills_mid_write += bool(acks)
        for g in acks:  # each ack covers every generation up to it
            for gg in range(run * 100000 + 1, g + 1):
                if gg not in written_by:
                    written_by[gg] = keys_of(gg)
                durable[written_by[gg]] = np.maximum(durable[written_by[gg]], gg)

        tier = el.storage.FileTier(path, dim=DIM)  # must open without error
        keys = np.arange(N_KEYS)
        rows, _, ver, found = tier.get_full(keys)
        have = durable > 0
        assert found[have].all(), "a flushed row disappeared"
        r, v, k = rows[found], ver[found].astype(np.int64), keys[found]
        np.testing.assert_array_equal(r[:, 0], k)  # row belongs to its key
        gens = r[:, 1:]
        assert (gens == gens[:, :1]).all(), "torn row: mixed generations"
        np.testing.assert_array_equal(gens[:, 0].astype(np.int64), v)  # data and version agree
        assert (v >= durable[found]).all(), "a flushed write was lost"
        for key, g in zip(k, v):  # the generation really wrote this key
            if g not in written_by:
                written_by[g] = keys_of(int(g))
            assert np.searchsorted(written_by[g], key) < written_by[g].size and \
                written_by[g][np.searchsorted(written_by[g], key)] == key
        assert len(tier) <= CAPACITY
        tier.close() if run % 2 else None  # half the runs start from a dirty (crashed) file
        del tier
    assert kills_mid_write >= 10  # most kills hit the write loop, not start-up
