"""The fused update's per-thread scratch is shared by tables of different row
strides. A thread that first updated many rows of a narrow table and then the
same number of rows of a wider one wrote past its gradient buffer (heap
corruption, seen as a crash at exit of `embedlookup-train`). Run in a child
with glibc's heap checks on, and checked against a hand-computed SGD step."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import numpy as np, embedlookup as el
    n = 20_000  # consecutive row ids: one partition holds every occurrence
    keys = np.arange(n, dtype=np.int64)
    for dim in (8, 16, 64):  # growing strides reuse the same thread's scratch
        t = el.EmbeddingTable(dim, initializer=el.init.zeros(), num_threads=1)
        t.lookup(keys)
        g = np.random.default_rng(dim).normal(size=(n, dim)).astype(np.float32)
        t.apply_gradients(keys, g, el.optim.SGD(lr=0.5))
        rows, found = t.find(keys)
        assert found.all()
        np.testing.assert_allclose(rows, -0.5 * g, rtol=1e-6, atol=1e-7)
    print("OK")
""")


def test_wider_table_after_narrow_one_keeps_the_heap_intact():
    import embedlookup

    pkg_parent = Path(embedlookup.__file__).resolve().parents[1]  # the build under test, installed or in place
    env = dict(os.environ, MALLOC_CHECK_="3", MALLOC_PERTURB_="165", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(pkg_parent), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), (r.returncode, r.stdout[-500:], r.stderr[-2000:])
