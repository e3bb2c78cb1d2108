"""The delta log over Ray's object store: a replica in another process (a Ray
actor) follows cuts published by the driver, with the directory transport's
checks. Skipped where ray is not installed."""

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from embedlookup.serving import DeltaLog, ShardedTables  # noqa: E402
from embedlookup.serving.log import CorruptCutError  # noqa: E402


@pytest.fixture(scope="module")
def ray_session():
    """Ray for this module: the running one (another test folder's session
    cluster, left to its owner), or a small one started and shut down here."""
    if ray.is_initialized():
        yield
        return
    import os

    import embedlookup

    # the actor's worker process imports embedlookup from wherever this process did
    parent = os.path.dirname(os.path.dirname(os.path.abspath(embedlookup.__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join([parent] + [os.path.abspath(p) for p in
                                                           os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=80 << 20)
    yield
    ray.shutdown()


def test_replica_in_another_process_follows_the_object_store_log(ray_session):
    from embedlookup.serving.ray_transport import RayTransport

    src = ShardedTables(2, 8)
    keys = np.arange(2000, dtype=np.int64)
    src.assign(keys, np.full((2000, 8), 1, np.float32))
    log = DeltaLog(RayTransport("test-log"), src, checkpoint_every=3, keep_checkpoints=1)
    log.publish()

    @ray.remote(num_cpus=0)
    class Serving:
        def __init__(self):
            from embedlookup.serving import Replica
            from embedlookup.serving.ray_transport import RayTransport

            self.rep = Replica(RayTransport("test-log"))

        def poll_and_read(self, k):
            import os

            self.rep.poll()
            rows, found = self.rep.find(k)
            return self.rep.version, rows, found, os.getpid(), self.rep.last_error

    srv = Serving.remote()
    for c in range(2, 6):
        src.assign(keys[: 100 * c], np.full((100 * c, 8), c, np.float32))
        log.publish()
        version, rows, found, pid, err = ray.get(srv.poll_and_read.remote(keys), timeout=60)
        want, want_found = src.find(keys)
        assert version == c and err is None
        np.testing.assert_array_equal(found, want_found)
        np.testing.assert_array_equal(rows, want)
    import os

    assert pid != os.getpid()
    # retention: cuts before the newest snapshot (4) are dropped from the index
    tr = log.transport
    assert tr.seqs() == [4, 5]
    with pytest.raises(CorruptCutError, match="not in the object-store log"):
        tr.manifest(2)
    m5 = tr.manifest(5)
    assert [d.nbytes for d in tr.deltas(m5)] == [e.bytes for e in m5.deltas]
