"""Child process of test_damaged_files.py: opens damaged files one by one.

argv: job.json. For each job i it prints ``BEGIN i`` (flushed) before
touching the file and ``END i <json>`` after, so a parent that sees the child
die knows which file killed it and restarts it after that file.
"""

import hashlib
import json
import resource
import sys

import numpy as np

resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

import embedlookup as el  # noqa: E402


def digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def open_tier(job):
    t = el.storage.FileTier(job["path"], dim=job["dim"], state_floats=job["state_floats"])
    # keys(0) lists rows of version > 0 only: probe the original keys too
    keys = np.union1d(t.keys(0), np.array(job.get("probe", []), np.int64))
    rows, state, ver, found = t.get_full(keys)
    out = {str(int(k)): digest(rows[i], state[i], ver[i:i + 1]) for i, k in enumerate(keys) if found[i]}
    if len(t) != len(out):
        out["_len"] = len(t)  # rows counted but not reachable: reported as extra
    t.close()
    return out


def table_rows(t):
    keys, rows = t.export()
    state = t._t.export_state(keys)
    out = {str(int(k)): digest(rows[i], state[i]) for i, k in enumerate(keys)}
    out["_meta"] = [int(t.version), int(t.step), len(t)]
    return out


def open_snapshot(job):
    opt = el.optim.Adagrad(lr=0.1)
    if job["kind"] == "ckpt":
        return table_rows(el.EmbeddingTable.load(job["path"], optimizer=opt))
    if job["kind"] == "delta_file":
        return table_rows(el.EmbeddingTable.load(job["base"], deltas=[job["path"]], optimizer=opt))
    t = el.EmbeddingTable.load(job["base"], optimizer=opt)
    with open(job["path"], "rb") as f:
        t.apply_delta(f.read())
    return table_rows(t)


def main():
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    start = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    for i in range(start, len(jobs)):
        job = jobs[i]
        print("BEGIN", i, flush=True)
        try:
            rows = open_tier(job) if job["kind"] == "tier" else open_snapshot(job)
            res = {"status": "ok", "rows": rows}
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError, MemoryError, OSError) as e:
            res = {"status": "err", "exc": type(e).__name__, "msg": str(e)[:300]}
        except Exception as e:  # noqa: BLE001 - an undocumented exception class
            res = {"status": "undocumented", "exc": type(e).__name__, "msg": str(e)[:300]}
        print("END", i, json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
