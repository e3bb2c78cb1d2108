"""Pooled sum over compressed rows (fp16, bf16, int8, int4; docs/compressed.md).

``pooled_sum_<type>`` is ``pooled_sum`` with the table's rows stored as
``<type>``. Subjects, all holding the same values:

* ``embedlookup``: an ``EmbeddingTable(row_type=<type>)``;
* ``torch``: a dense float32 ``torch.nn.EmbeddingBag`` (the baseline the
  compressed rows must beat: it reads 4 bytes per value);
* ``fbgemm``: FBGEMM's ``IntNBitTableBatchedEmbeddingBagsCodegen`` (CPU, host
  weights, float32 output) of the same type (fp16, int8, int4; it has no
  bf16 rows), filled with the same codes.

The values: the workload's rows made exactly representable by every subject.
fp16 / bf16: the rows rounded to the type. int8 / int4: per row a scale and a
bias that are float16 values (FBGEMM stores them as float16, this engine as
float32), codes ``rint((x - bias) / scale)`` with the row's smallest and
largest element at codes 0 and ``levels``, values ``scale * code + bias``;
the engine's own quantizer maps those values back to the same codes, scale
and bias (checked when the case is built), so all three subjects sum the very
same numbers and their outputs compare at the suite's tolerance.

Rows counted: the keys' stored bytes in float32-row units (``keys x
row_bytes / (4 x dim)``), so the reported bytes/s are the bytes each
subject of the table's type actually reads (the dense peer reads 4x / 2x
more than that and so shows the same bytes/s at proportionally lower speed).
"""

from __future__ import annotations

import numpy as np

from .. import quantize as _q
from .._checks import huge_copy, huge_empty
from .ops import (Case, Skip, _fbgemm, _nthreads, _tbatches, _torch, implements, operation, resolved_case,
                  torch_bag_case)
from .workloads import WorkloadData

TYPES = ("fp16", "bf16", "int8", "int4")


def _rows_of(kind):
    def rows(w, b):
        return max(1, b.keys.shape[0] * _q.row_bytes(kind, w.dim) // (4 * w.dim))

    return rows


for _k in TYPES:
    operation(f"pooled_sum_{_k}", f"pooled sum over {_k} rows; rows = keys x row_bytes({_k}) / (4 dim)", _rows_of(_k))
    operation(f"pooled_sum_{_k}_resolved", f"pooled_sum_{_k} over keys resolved ahead (as pooled_sum_resolved)",
              _rows_of(_k))


def exact_rows(dense: np.ndarray, kind: str):
    """(values, scale, bias): rows every subject represents exactly (module
    docstring); scale / bias are None for fp16 / bf16."""
    if kind in ("fp16", "bf16"):
        return _q.dequantize_rows(_q.quantize_rows(dense, kind), kind, dense.shape[1]), None, None
    levels = np.float32(255 if kind == "int8" else 15)
    lo, hi = dense.min(axis=1), dense.max(axis=1)
    scale = ((hi - lo) / levels).astype(np.float16).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(2.0 ** -14))  # a normal fp16 for a constant row
    bias = lo.astype(np.float16).astype(np.float32)
    codes = np.clip(np.rint((dense - bias[:, None]) / scale[:, None]), 0, levels)
    rows = np.arange(dense.shape[0])
    codes[rows, dense.argmin(axis=1)] = 0
    codes[rows, dense.argmax(axis=1)] = levels
    values = (codes.astype(np.float32) * scale[:, None]).astype(np.float32) + bias[:, None]
    return values.astype(np.float32), scale, bias


def _exact(data: WorkloadData, kind: str):
    key = f"exact_{kind}"
    if key not in data.cache:
        values, scale, bias = exact_rows(data.dense, kind)
        # The dense peer (EmbeddingBag) reads these rows in place: on huge
        # pages, as the workload's own dense rows and every other subject's
        # large arrays are. On the 4 KiB pages NumPy gives, its random reads
        # paid page walks (1 thread: 2.09 against 1.46 ms on Zipf keys, 5.65
        # against 4.77 on uniform ones; native/bench/experiments/
        # eb_huge_pages.py), which flattered every ratio against it.
        values = huge_copy(values)
        raw = _q.quantize_rows(values, kind)
        if not np.array_equal(_q.dequantize_rows(raw, kind, data.workload.dim), values):
            raise RuntimeError(f"{kind}: the bench's rows do not round-trip through the engine's quantizer")
        data.cache[key] = (values, raw, scale, bias)
    return data.cache[key]


def _compressed(kind: str):
    op = f"pooled_sum_{kind}"

    def table(data):
        from ..table import EmbeddingTable

        w = data.workload
        tkey = f"table_{kind}"
        if tkey not in data.cache:
            values = _exact(data, kind)[0]
            t = EmbeddingTable(w.dim, row_type=kind, num_threads=w.threads or None)
            t.assign(data.keys, values)  # key i -> slot i, the dense peers' row order
            data.cache[tkey] = t
        return data.cache[tkey]

    @implements(op, "embedlookup")
    def _el(data):
        t = table(data)
        buf = huge_empty((data.workload.batch, data.workload.dim))

        def run(b):
            return t.pooled_lookup(b.keys, b.offsets, mode="sum", out=buf)

        return Case(run, lambda b: run(b).copy())

    @implements(op + "_resolved", "embedlookup")
    def _el_resolved(data):
        return resolved_case(table(data), data)

    @implements(op, "torch")
    @implements(op + "_resolved", "torch")
    def _torch_bag(data):
        return torch_bag_case(data, _exact(data, kind)[0], "sum")

    @implements(op, "fbgemm")
    def _fb(data):
        _fbgemm()
        if kind == "bf16":
            raise Skip("FBGEMM's IntNBit table has no bf16 rows")
        torch = _torch()
        from fbgemm_gpu.split_embedding_configs import SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen

        w = data.workload
        torch.set_num_threads(_nthreads(w))
        values, raw, scale, bias = _exact(data, kind)
        ty = {"fp16": SparseType.FP16, "int8": SparseType.INT8, "int4": SparseType.INT4}[kind]
        emb = IntNBitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[("t", w.rows, w.dim, ty, EmbeddingLocation.HOST)],
            device="cpu",
            pooling_mode=PoolingMode.SUM,
            output_dtype=SparseType.FP32,
            indices_dtype=torch.int64,
        )
        emb.initialize_weights()
        wt, sc, bi = emb.split_embedding_weights_with_scale_bias(split_scale_bias_mode=2)[0]
        # Our raw rows to FBGEMM's: fp16 values as they are; codes without
        # their padding (same nibble order), scale and bias as float16 (exact).
        code_bytes = w.dim * 2 if kind == "fp16" else (w.dim if kind == "int8" else w.dim // 2)
        with torch.no_grad():
            wt[:, :code_bytes].copy_(torch.from_numpy(np.ascontiguousarray(raw[:, :code_bytes])))
            if sc is not None:
                sc.copy_(torch.from_numpy(scale.astype(np.float16)[:, None]))
                bi.copy_(torch.from_numpy(bias.astype(np.float16)[:, None]))
        tb = _tbatches(data)

        def run(b):
            with torch.no_grad():
                i, _, off, _ = tb[id(b)]
                return emb(i, off)

        return Case(run, lambda b: run(b).numpy().copy())

    implements(op + "_resolved", "fbgemm")(_fb)


for _k in TYPES:
    _compressed(_k)
