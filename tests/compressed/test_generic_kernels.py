"""The baseline (non-AVX2) build of the compressed-row kernels, forced with
EMBEDLOOKUP_GENERIC_KERNELS=1 in a subprocess (the dispatch reads it once),
against the reference: the same checks as on AVX2 machines."""

import os
import subprocess
import sys

SCRIPT = r"""
import numpy as np, embedlookup as el, reference as ref
from embedlookup import _core
assert _core.quantized_isa() == "generic", _core.quantized_isa()
rng = np.random.default_rng(0)
for kind in ("fp16", "bf16", "int8", "int4"):
    for dim in (8, 22, 64):
        t = el.EmbeddingTable(dim, row_type=kind, num_threads=1)
        keys = np.arange(50, dtype=np.int64)
        x = rng.standard_normal((50, dim)).astype(np.float32)
        t.assign(keys, x)
        stored = ref.dequantize_rows(ref.quantize_rows(x, kind), kind, dim)
        assert np.array_equal(t.lookup(keys), stored)
        vals = rng.integers(0, 50, 400).astype(np.int64)
        off = np.arange(0, 400, 8, dtype=np.int64)
        w = rng.uniform(-1, 1, 400).astype(np.float32)
        for mode, ww in (("sum", None), ("sum", w), ("mean", None), ("max", None)):
            got = t.pooled_lookup(vals, off, mode=mode, per_sample_weights=ww)
            want = ref.pooled(stored[vals].astype(np.float64), off, mode, None if ww is None else ww.astype(np.float64))
            if mode == "max":
                assert np.array_equal(got, want.astype(np.float32)), (kind, dim)
            else:
                assert np.abs(got - want).max() <= 1e-5 * (np.abs(stored).max() * 8 + 1), (kind, dim, mode)
print("ok")
"""


def test_generic_kernels_match_the_reference():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, EMBEDLOOKUP_GENERIC_KERNELS="1",
               PYTHONPATH=os.pathsep.join([here] + [p for p in sys.path if p]))
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
