"""The delta log over Ray's object store (optional: needs ``ray``).

The publisher ``ray.put``s each cut's delta (and snapshot) arrays and hands
their references, with the manifest, to a small named actor that keeps the
log's index; a replica in any process of the cluster asks the actor for
manifests and references and ``ray.get``s the arrays. On one node the arrays
are read in place from the shared-memory object store (numpy arrays come
back as zero-copy, read-only views), so a cut is never copied between the
publisher's and the replica's processes; across nodes Ray moves it.

The objects belong to the publishing process (Ray's ownership): if it exits,
its cuts go with it, and replicas re-bootstrap from what the next publisher
puts. Use the directory transport where cuts must outlive the trainer.

    from embedlookup.serving.ray_transport import RayTransport
    log = DeltaLog(RayTransport("my-model"), source)        # trainer (ray.init() done)
    replica = Replica(RayTransport("my-model"))             # any process in the cluster
"""

from __future__ import annotations

import numpy as np

from .log import CorruptCutError, CutManifest, _check

__all__ = ["RayTransport"]

_store_cls = None


def _store():
    global _store_cls
    if _store_cls is None:
        import ray

        @ray.remote(num_cpus=0)
        class CutStore:
            """seq -> (manifest JSON, [delta refs], [snapshot refs]); holding
            the refs keeps the objects alive until the cut is deleted."""

            def __init__(self):
                self.cuts = {}

            def add(self, seq, manifest, deltas, checkpoint):
                self.cuts[seq] = (manifest, deltas, checkpoint)

            def seqs(self):
                return sorted(self.cuts)

            def get(self, seq):
                return self.cuts.get(seq)

            def delete(self, seq):
                self.cuts.pop(seq, None)

        _store_cls = CutStore
    return _store_cls


class RayTransport:
    """A delta-log transport over the object store; ``name`` names the log's
    index actor in ``namespace`` (created on first use). ``ray.init`` must
    have been called."""

    def __init__(self, name: str = "embedlookup-delta-log", *, namespace: str | None = None):
        import ray

        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if not ray.is_initialized():
            raise RuntimeError("RayTransport needs ray.init() first")
        self._ray = ray
        self.name = name
        opts = {"name": name, "get_if_exists": True}
        if namespace is not None:
            opts["namespace"] = namespace
        self._actor = _store().options(**opts).remote()

    def __repr__(self) -> str:
        return f"RayTransport({self.name!r})"

    # ---- writer side
    def write(self, manifest: CutManifest, deltas, checkpoint=()) -> None:
        put = self._ray.put
        # a list of refs is passed as refs (not resolved), so the actor holds them
        self._ray.get(self._actor.add.remote(manifest.seq, manifest.to_json(),
                                             [put(np.asarray(d)) for d in deltas],
                                             [put(np.asarray(c)) for c in checkpoint]))

    def delete(self, seq: int) -> None:
        self._ray.get(self._actor.delete.remote(int(seq)))

    # ---- reader side
    def seqs(self) -> list:
        return self._ray.get(self._actor.seqs.remote())

    def _entry(self, seq):
        e = self._ray.get(self._actor.get.remote(int(seq)))
        if e is None:
            raise CorruptCutError(f"cut {seq}: not in the object-store log (deleted by retention?)")
        return e

    def manifest(self, seq: int) -> CutManifest:
        m = CutManifest.from_json(self._entry(seq)[0])
        if m.seq != seq:
            raise CorruptCutError(f"cut {seq}: its manifest names cut {m.seq}")
        return m

    def _arrays(self, m: CutManifest, which: int, entries) -> tuple:
        refs = self._entry(m.seq)[which]
        try:
            bufs = self._ray.get(list(refs))
        except Exception as e:  # noqa: BLE001 - a lost object (its owner exited) is a missing cut
            raise CorruptCutError(f"cut {m.seq}: cannot fetch its objects: {type(e).__name__}: {e}") from None
        if len(bufs) != len(entries):
            raise CorruptCutError(f"cut {m.seq}: {len(bufs)} objects, the manifest names {len(entries)}")
        return tuple(_check(np.asarray(b, np.uint8).reshape(-1), e, f"cut {m.seq} shard {i} ({e.name})")
                     for i, (b, e) in enumerate(zip(bufs, entries)))

    def deltas(self, m: CutManifest) -> tuple:
        return self._arrays(m, 1, m.deltas)

    def checkpoint(self, m: CutManifest) -> tuple:
        if not m.has_checkpoint:
            raise ValueError(f"cut {m.seq} carries no checkpoint")
        return self._arrays(m, 2, m.checkpoint)
