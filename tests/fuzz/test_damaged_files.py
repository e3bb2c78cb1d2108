"""Damaged FileTier, checkpoint and delta files.

For each original file (a cleanly closed tier, a tier left dirty by a process
that flushed and exited without close(), a checkpoint, a delta file, a delta
applied from bytes) the fuzzer writes many damaged copies: truncations at
many offsets, single bit flips (header, directory entries / section table,
data), zeroed 4 KiB pages (64-byte blocks for the small snapshots) and
crafted headers whose CRCs are valid (sizes that wrap when multiplied,
offsets past the end, inconsistent fields). Every copy is opened in a child
process (damage_runner.py; a crash fails that copy, the child is restarted
after it). Expectations, per copy:

* the child never dies (signal, abort) and raises only documented classes;
* it raises a clear error, or returns exactly the original rows (keys, rows,
  optimizer state, versions): never silently drops or changes a row. The one
  allowance: in a DIRTY tier (clean mark absent) a slot whose own bytes
  (entry or data) were damaged may be dropped, as docs/storage.md specifies
  for torn slots;
* a failed open leaves the file byte-identical (hash before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import embedlookup as el
import fileformats as ff
from fuzzlib import PKG, Tally

HERE = os.path.dirname(os.path.abspath(__file__))
DIM, SF, CAP = 8, 2, 200
AREA = "damaged files"


def digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ------------------------------------------------------------ the originals
def tier_rows(rng, keys, gen):
    rows = (rng.standard_normal((keys.size, DIM)) + gen).astype(np.float32)
    state = np.abs(rng.standard_normal((keys.size, SF))).astype(np.float32)
    return rows, state


WRITER = """
import json, os, sys, numpy as np
sys.path.insert(0, {here!r})
import embedlookup as el
from test_damaged_files import write_tier
want = write_tier({path!r})
print(json.dumps(want), flush=True)
if {dirty!r}:
    os._exit(0)  # flushed, never closed: the clean mark stays 0
"""


def write_tier(path):
    """Writes a tier with overwrites and erases; returns {key: digest} of what it holds (flushed)."""
    rng = np.random.default_rng(7)
    t = el.storage.FileTier(path, CAP, dim=DIM, state_floats=SF)
    want = {}
    for gen, keys in enumerate([np.arange(0, 120), np.arange(60, 150, 3), np.array([-5, 2**62, -(2**63)])]):
        keys = keys.astype(np.int64)
        rows, state = tier_rows(rng, keys, gen)
        ver = np.arange(1, keys.size + 1, dtype=np.uint64) + np.uint64(1000 * gen)
        t.set(keys, rows, state, ver)
        for i, k in enumerate(keys):
            want[str(int(k))] = digest(rows[i], state[i], ver[i:i + 1])
        t.flush()
    gone = np.array([3, 61, 2**62], np.int64)
    t.erase(gone)
    for k in gone:
        want.pop(str(int(k)), None)
    t.flush()
    return want, t


def make_tier(d, dirty):
    path = os.path.join(d, "orig.tier")
    if dirty:
        code = WRITER.format(here=HERE, path=path, dirty=True).replace(
            "want = write_tier(", "want, _t = write_tier(")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=PKG + os.pathsep + os.path.dirname(HERE)))
        assert p.returncode == 0, p.stderr
        want = json.loads(p.stdout.strip().splitlines()[-1])
    else:
        want, t = write_tier(path)
        t.close()
    with open(path, "rb") as f:
        return path, f.read(), want


def make_snapshots(d):
    t = el.EmbeddingTable(4, optimizer=el.optim.Adagrad(lr=0.1), initializer=el.init.uniform(seed=3))
    t.lookup(np.arange(30, dtype=np.int64) * 7 - 50)
    t.apply_gradients(np.arange(10, dtype=np.int64) * 7 - 50, np.ones((10, 4), np.float32))
    ck = os.path.join(d, "orig.elt")
    v = t.save(ck)
    t.erase(np.array([-50, -43], np.int64))
    t.assign(np.array([1000, 1001], np.int64), np.ones((2, 4), np.float32))
    t.apply_gradients(np.array([-36, 1000], np.int64), np.ones((2, 4), np.float32))
    dl = os.path.join(d, "orig.delta")
    t.save_delta(dl, v)
    return ck, dl


# ---------------------------------------------------------------- damage
def truncations(buf, marks):
    rng = np.random.default_rng(len(buf))
    offs = {0, 1, 7, 8, len(buf) - 1, len(buf) - 8, len(buf) // 2}
    for m in marks:
        offs.update({m - 1, m, m + 1})
    offs.update(int(x) for x in rng.integers(0, len(buf), 25))
    return [(f"truncate@{o}", buf[:o], None) for o in sorted(offs) if 0 <= o < len(buf)]


def flip(buf, pos, bit):
    b = bytearray(buf)
    b[pos] ^= 1 << bit
    return bytes(b)


def bitflips(buf, positions):
    rng = np.random.default_rng(len(buf) + 1)
    return [(f"flip@{p}.{(bit := int(rng.integers(8)))}", flip(buf, p, bit), (p, p + 1))
            for p in sorted(set(positions)) if p < len(buf)]


def zeroed(buf, block, starts):
    out = []
    for s in starts:
        b = bytearray(buf)
        e = min(s + block, len(b))
        if b[s:e] == bytes(e - s):
            continue  # already zeros: not damage
        b[s:e] = bytes(e - s)
        out.append((f"zero[{s}:{e}]", bytes(b), (s, e)))
    return out


def tier_damage(buf, family):
    h = ff.tier_header(buf)
    rng = np.random.default_rng(11)
    size, do, sb, slots = len(buf), h["data_offset"], h["slot_bytes"], h["slots"]
    live = sorted(ff.tier_slots(buf))
    if family == "truncate":
        marks = [124, 512, 4096, do, size - sb] + [4096 + 32 * s for s in live[:5]] + [do + sb * s for s in live[:5]]
        return truncations(buf, marks)
    if family == "bitflip":
        pos = list(range(0, 132)) + list(range(512, 516)) + [600, 2000]
        for s in live[:3] + live[-2:]:  # whole entries
            pos += list(range(4096 + 32 * s, 4096 + 32 * s + 32))
        pos += [4096 + 32 * int(s) + int(rng.integers(32)) for s in rng.choice(live, 30)]
        pos += [do + sb * int(s) + int(rng.integers(DIM * 4 + SF * 4)) for s in rng.choice(live, 50)]
        pos += [do + sb * live[0] + j for j in range(0, sb, 4)]
        return bitflips(buf, pos)
    if family == "zero_page":
        return zeroed(buf, 4096, range(0, size, 4096)) + zeroed(buf, 64, [4096, do, do + sb * live[-1], 512 - 16])
    # crafted headers, CRC valid
    cases = {
        "slot_bytes=2^61 (slots*slot_bytes wraps to 0)": dict(slot_bytes=1 << 61),
        "slot_bytes=2^64/8+64": dict(slot_bytes=(1 << 61) + 64),
        "slot_bytes=2^63-1": dict(slot_bytes=(1 << 63) - 1),
        "slot_bytes=-64": dict(slot_bytes=-64),
        "slot_bytes=payload (unaligned layout)": dict(slot_bytes=(DIM + SF) * 4),
        "data_offset=2^64-4096 (wraps)": dict(data_offset=(1 << 64) - 4096),
        "data_offset past the end": dict(data_offset=size + 4096),
        "data_offset moved by 64": dict(data_offset=do + 64),
        "slots=capacity": dict(slots=CAP),
        "slots=2^32-4, data_offset wraps": dict(slots=(1 << 32) - 4, data_offset=(1 << 64) - ((1 << 32) - 4) * sb),
        "slots=2^31": dict(slots=1 << 31),
        "slots=-1": dict(slots=-1),
        "capacity=1 (fewer than the rows held)": dict(capacity=1),
        "capacity=0": dict(capacity=0),
        "capacity=slots+1": dict(capacity=slots + 1),
        "capacity=-5": dict(capacity=-5),
        "dir_offset=0": dict(dir_offset=0),
        f"format version {ff.TIER_VERSION + 1} (newer)": dict(version=ff.TIER_VERSION + 1),
        f"format version {ff.TIER_VERSION - 1} (older)": dict(version=ff.TIER_VERSION - 1),
        "format version 0": dict(version=0),
        "dtype=2": dict(dtype=2),
        "byte-order mark swapped": dict(bom=0x04030201),
        "dim=0 (opened with dim 8)": dict(dim=0),
        "state_floats=-2": dict(state_floats=-2),
    }
    out = [(k, ff.tier_craft(buf, **v), None) for k, v in cases.items()]
    # the clean record (format 2), its own CRC valid; for the dirty original the
    # mark is set too, so the damaged record is read
    clean = {"mark": ff.TIER_CLEAN_MARK}
    e = h["dir_offset"] + ff.ENTRY * live[0]
    one_zeroed = buf[:e] + bytes(ff.ENTRY) + buf[e + ff.ENTRY:]
    out += [
        ("clean record: rows + 1", ff.tier_craft_clean(buf, True, rows=len(live) + 1, **clean), None),
        ("clean record: rows - 1", ff.tier_craft_clean(buf, True, rows=len(live) - 1, **clean), None),
        ("clean record: directory CRC ^ 1", ff.tier_craft_clean(buf, True, dir_crc=ff.crc32c(ff.tier_directory(buf)) ^ 1,
                                                               rows=len(live), **clean), None),
        ("clean record: mark 1", ff.tier_craft_clean(buf, mark=1), None),
        ("clean record: record CRC ^ 1 (mark clean)", _bad_record_crc(buf, len(live)), None),
        # a live entry zeroed (it looks free) with the directory CRC re-signed: the row count catches it
        ("entry zeroed, directory CRC re-signed", ff.tier_craft_clean(one_zeroed, True, rows=len(live), **clean),
         None),
    ]
    return out


def _bad_record_crc(buf, rows):
    b = bytearray(ff.tier_craft_clean(buf, True, rows=rows, mark=ff.TIER_CLEAN_MARK))
    struct.pack_into("<I", b, 528, struct.unpack_from("<I", b, 528)[0] ^ 1)
    return bytes(b)


def snap_damage(buf, family):
    h = ff.snap_header(buf)
    size = len(buf)
    secs = [(o, n) for o, n, _ in h["sections"]]
    if family == "truncate":
        marks = [316, 320] + [o for o, _ in secs] + [o + n for o, n in secs] + list(range(0, size, 16))
        return truncations(buf, marks)
    if family == "bitflip":
        rng = np.random.default_rng(5)
        pos = list(range(0, 320)) + [int(x) for x in rng.integers(320, size, 150)] + list(range(size - 8, size))
        return bitflips(buf, pos)
    if family == "zero_page":
        return zeroed(buf, 4096, [0]) + zeroed(buf, 64, range(0, size, 64))
    n, dim = h["n_rows"], h["dim"]
    keys_off, keys_n = ff.snap_section(buf, "keys")
    b_unsorted = bytearray(buf)
    k = np.frombuffer(buf, np.int64, n, keys_off).copy()
    k[[0, 1]] = k[[1, 0]]
    b_unsorted[keys_off:keys_off + keys_n] = k.tobytes()
    b_dup = bytearray(buf)
    k2 = np.frombuffer(buf, np.int64, n, keys_off).copy()
    k2[1] = k2[0]
    b_dup[keys_off:keys_off + keys_n] = k2.tobytes()
    cases = [
        ("capacity=1 (fewer than n_rows)", ff.snap_craft(buf, capacity=1)),
        ("capacity=-1", ff.snap_craft(buf, capacity=-1)),
        ("keys unsorted (CRC valid)", ff.snap_resign(b_unsorted)),
        ("duplicate key (CRC valid)", ff.snap_resign(b_dup)),
        ("kind=3", ff.snap_craft(buf, kind=3)),
        ("dtype=2", ff.snap_craft(buf, dtype=2)),
        ("format version 2", ff.snap_craft(buf, version=2)),
        ("dim=0", ff.snap_craft(buf, dim=0)),
        ("dim=2^40", ff.snap_craft(buf, dim=1 << 40)),
        ("dim=2*dim, n_rows/2 (sections resized)", ff.snap_craft(buf, dim=2 * dim)),
        ("n_rows=-1", ff.snap_craft(buf, n_rows=-1)),
        ("n_rows=2^40", ff.snap_craft(buf, n_rows=1 << 40)),
        ("n_rows=2^62 (n*8 wraps)", ff.snap_craft(buf, n_rows=1 << 62)),
        ("n_tombstones=2^61 (n*8 wraps to 0)", ff.snap_craft(buf, n_tombstones=1 << 61)),
        ("from_version > to_version", ff.snap_craft(buf, from_version=h["to_version"] + 1)),
        ("state_kind=4 (Adam) with Adagrad's width", ff.snap_craft(buf, state_kind=4)),
        ("state_kind=9", ff.snap_craft(buf, state_kind=9)),
        ("state_floats=0", ff.snap_craft(buf, state_floats=0)),
        ("step=-1", ff.snap_craft(buf, step=-1)),
        ("init_kind=7", ff.snap_craft(buf, init_kind=7)),
        ("section 0 offset past the end", ff.snap_craft(buf, sections={0: (size + 64, secs[0][1])})),
        ("section 2 offset 2^64-64", ff.snap_craft(buf, sections={2: ((1 << 64) - 64, secs[2][1])})),
        ("section 2 bytes 2^64-8", ff.snap_craft(buf, sections={2: (secs[2][0], (1 << 64) - 8)})),
        ("end marker damaged", ff.snap_resign(bytearray(buf[:-8] + b"ELSNENDX"))),
    ]
    if h["kind"] == 2:
        cases.append(("delta lineage changed", ff.snap_craft(buf, lineage=h["lineage"] ^ 1)))
    return [(name, data, None) for name, data in cases]


# ----------------------------------------------------------------- running
def run_jobs(jobs, d):
    """Runs every job in damage_runner.py children; returns one result per job ('crash' when it killed the child)."""
    job_file = os.path.join(d, "jobs.json")
    with open(job_file, "w") as f:
        json.dump(jobs, f)
    results, start = [None] * len(jobs), 0
    env = dict(os.environ, PYTHONPATH=PKG, OMP_NUM_THREADS="1")
    while start < len(jobs):
        p = subprocess.run([sys.executable, os.path.join(HERE, "damage_runner.py"), job_file, str(start)],
                           capture_output=True, text=True, env=env, timeout=300)
        last = start - 1
        for line in p.stdout.splitlines():
            if line.startswith("BEGIN "):
                last = int(line.split()[1])
            elif line.startswith("END "):
                _, i, res = line.split(" ", 2)
                results[int(i)] = json.loads(res)
        if p.returncode == 0:
            break
        if last >= start and results[last] is None:  # died on `last`
            results[last] = {"status": "crash", "rc": p.returncode, "stderr": p.stderr[-300:]}
        start = max(last + 1, start + 1)
    return results


def check(kind, family, base_buf, want, cases, d, slot_regions=None, extra=None):
    jobs, before = [], []
    for i, (name, data, _) in enumerate(cases):
        path = os.path.join(d, f"case{i}.{'tier' if kind.startswith('tier') else 'elt'}")
        with open(path, "wb") as f:
            f.write(data)
        job = {"path": path, "kind": "tier" if kind.startswith("tier") else kind, "dim": DIM,
               "state_floats": SF}
        job.update(extra or {})
        if kind.startswith("tier"):
            job["probe"] = [int(k) for k in want]
        jobs.append(job)
        before.append(sha(path))
    results = run_jobs(jobs, d)
    problems = []
    for (name, data, region), job, h0, res in zip(cases, jobs, before, results):
        Tally.add(AREA, "tried")
        what = f"{kind} {name}"
        if res is None or res["status"] == "crash":
            Tally.add(AREA, "crash")
            problems.append(f"CRASH  {what}: {res}")
            continue
        if res["status"] == "undocumented":
            Tally.add(AREA, "wrong")
            problems.append(f"UNDOCUMENTED {what}: {res['exc']}: {res['msg']}")
            continue
        if res["status"] == "err":
            if sha(job["path"]) != h0:
                Tally.add(AREA, "wrong")
                problems.append(f"MODIFIED {what}: the open failed ({res['exc']}: {res['msg'][:80]}) "
                                f"but changed the file")
            else:
                Tally.add(AREA, "rejected")
            continue
        got = res["rows"]
        allowed_missing = set()
        if kind == "tier_dirty" and region is not None:
            allowed_missing = {str(k) for k in slot_regions(region)}
        missing = set(want) - set(got)
        extra_keys = set(got) - set(want)
        changed = {k for k in set(want) & set(got) if want[k] != got[k]}
        bad = (missing - allowed_missing) | extra_keys | changed
        if bad:
            Tally.add(AREA, "wrong")
            problems.append(f"SILENT {what}: opened without error but {len(missing - allowed_missing)} rows "
                            f"missing, {len(extra_keys)} extra, {len(changed)} changed (e.g. "
                            f"{sorted(bad)[:3]})")
        else:
            Tally.add(AREA, "valid_ok")
    if problems:
        by = {}
        for line in problems:
            by.setdefault(line.split()[0], []).append(line)
        summary = ", ".join(f"{len(v)} {k}" for k, v in sorted(by.items()))
        raise AssertionError(f"{len(problems)} of {len(cases)} damaged {kind} files ({family}) misbehaved "
                             f"({summary}):\n" + "\n".join(line for v in by.values() for line in v[:8]))


FAMILIES = ["truncate", "bitflip", "zero_page", "crafted"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["tier_clean", "tier_dirty"])
def test_damaged_tier_file(kind, family, tmp_path):
    d = str(tmp_path)
    path, buf, want = make_tier(d, dirty=kind == "tier_dirty")
    assert ff.crc32c(buf[:ff.TIER_HEADER_CRC]) == struct.unpack_from("<I", buf, ff.TIER_HEADER_CRC)[0], \
        "fileformats.crc32c disagrees with the native writer"
    assert ff.tier_craft(buf) == buf, "re-signing an unmodified header changed it"
    if kind == "tier_clean":  # the clean record as fileformats knows it (format 2)
        rec = ff.tier_clean_record(buf)
        assert rec["mark"] == ff.TIER_CLEAN_MARK and rec["rows"] == len(ff.tier_slots(buf)) and \
            rec["dir_crc"] == ff.crc32c(ff.tier_directory(buf)), rec
        assert ff.tier_craft_clean(buf) == buf, "re-signing an unmodified clean record changed it"
    slot_key = {s: k for s, (k, _, _) in ff.tier_slots(buf).items()}

    def keys_touched(region):
        a, b = region
        return [k for s, k in slot_key.items()
                if any(x < b and a < y for x, y in ff.tier_regions_of_slot(buf, s))]

    cases = [("unmodified", buf, None)] + tier_damage(buf, family)
    check(kind, family, buf, want, cases, d, keys_touched)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["ckpt", "delta_file", "delta_buf"])
def test_damaged_checkpoint_or_delta(kind, family, tmp_path):
    d = str(tmp_path)
    ck, dl = make_snapshots(d)
    src = ck if kind == "ckpt" else dl
    with open(src, "rb") as f:
        buf = f.read()
    h = ff.snap_header(buf)
    assert ff.snap_resign(bytearray(buf)) == buf, "fileformats.crc32c disagrees with the native writer"
    assert h["kind"] == (1 if kind == "ckpt" else 2)
    # the reference: what the undamaged file gives
    ref = run_jobs([{"path": src, "kind": kind, "base": ck}], d)[0]
    assert ref["status"] == "ok", ref
    cases = [("unmodified", buf, None)] + snap_damage(buf, family)
    check(kind, family, buf, ref["rows"], cases, d, extra={"base": ck})
