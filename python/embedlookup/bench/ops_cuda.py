"""The CUDA backend as a subject of the suite: ``cuda`` (embedlookup's own
:class:`~embedlookup.cuda.CudaTable`, kind "backend").

It holds the workload's rows (copied from the CPU table once per workload) and
times ``lookup`` and the pooled lookups with the batch's keys and offsets
already on the GPU, waiting for the GPU at the end of each call, so a call's
time is the kernel's, not a host transfer's. Outputs are copied back and
checked against the CPU engine's before timing, as for every subject. Where
there is no CUDA build, no torch with CUDA, or no GPU, the subject is skipped
with the reason (:func:`embedlookup.cuda.unavailable_reason`).

GPU-only comparisons (against ``torch.nn.EmbeddingBag`` on the same GPU, and
the device's copy bandwidth) are in :mod:`embedlookup.bench.cuda_table`.
"""

from __future__ import annotations

from .ops import Case, Skip, implements, subject
from .workloads import WorkloadData


def _probe():
    from .. import cuda

    why = cuda.unavailable_reason()
    if why is not None:
        raise Skip(why)


subject(
    "cuda",
    "backend",
    "embedlookup.cuda.CudaTable on the first CUDA GPU (inputs already on the GPU)",
    _probe,
)


def _gpu(data: WorkloadData):
    """(CudaTable, torch, per-batch device tensors), built once per workload."""
    c = data.cache.get("cuda")
    if c is None:
        _probe()
        from ..cuda import CudaTable, _torch

        torch = _torch()
        t = CudaTable.from_table(data.table)
        dev = {
            id(b): (torch.from_numpy(b.keys).to(t.device), torch.from_numpy(b.offsets).to(t.device))
            for b in data.batches
        }
        torch.cuda.synchronize(t.device)
        c = data.cache["cuda"] = (t, torch, dev)
    return c


@implements("lookup", "cuda")
def _(data):
    t, torch, dev = _gpu(data)
    w = data.workload
    out = torch.empty((w.lookups, w.dim), dtype=torch.float32, device=t.device)

    def run(b):
        r = t.lookup(dev[id(b)][0], out=out)
        torch.cuda.synchronize(t.device)
        return r

    return Case(run, lambda b: run(b).cpu().numpy())


def _pooled(mode: str):
    @implements(f"pooled_{mode}", "cuda")
    def _(data):
        t, torch, dev = _gpu(data)
        w = data.workload
        out = torch.empty((w.batch, w.dim), dtype=torch.float32, device=t.device)

        def run(b):
            k, off = dev[id(b)]
            # check=False: offsets are well formed by construction, and the
            # check would add a device-to-host wait to every call
            r = t.pooled_lookup(k, off, mode=mode, out=out, check=False)
            torch.cuda.synchronize(t.device)
            return r

        return Case(run, lambda b: run(b).cpu().numpy())


for _m in ("sum", "mean", "max"):
    _pooled(_m)
