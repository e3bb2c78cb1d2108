"""The on-disk layouts of docs/format.md, for crafting and damaging files.

CRC-32C (Castagnoli, reflected, init/final XOR 0xFFFFFFFF) in pure Python,
checked against the native writer by test_damaged_files (a re-signed,
unmodified header must stay byte-identical)."""

from __future__ import annotations

import struct

_T = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 & -(_c & 1))
    _T.append(_c & 0xFFFFFFFF)


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    t = _T
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# ------------------------------------------------------------------ tier
TIER_VERSION = 2  # version 2 added the clean record's directory CRC, row count and record CRC
TIER_HEADER, TIER_HEADER_CRC, TIER_CLEAN_AT, ENTRY = 4096, 124, 512, 32
TIER_CLEAN_MARK = 0x4E41454C
# the clean record (valid only while the mark is TIER_CLEAN_MARK; mark 0 = dirty)
TIER_CLEAN_FIELDS = {"mark": (512, "<I"), "dir_crc": (516, "<I"), "rows": (520, "<q"), "record_crc": (528, "<I")}
TIER_FIELDS = {  # name: (offset, struct code)
    "version": (8, "<I"), "bom": (12, "<I"), "dtype": (16, "<I"), "dim": (24, "<q"), "state_floats": (32, "<q"),
    "capacity": (40, "<q"), "slots": (48, "<q"), "slot_bytes": (56, "<q"), "dir_offset": (64, "<Q"),
    "data_offset": (72, "<Q"),
}


def tier_header(buf: bytes) -> dict:
    return {k: struct.unpack_from(c, buf, o)[0] for k, (o, c) in TIER_FIELDS.items()}


def tier_craft(buf: bytes, **fields) -> bytes:
    """``buf`` with header fields replaced and the header CRC recomputed (valid)."""
    b = bytearray(buf)
    for k, v in fields.items():
        o, c = TIER_FIELDS[k]
        struct.pack_into(c, b, o, v)
    struct.pack_into("<I", b, TIER_HEADER_CRC, crc32c(bytes(b[:TIER_HEADER_CRC])))
    return bytes(b)


def tier_clean_record(buf: bytes) -> dict:
    return {k: struct.unpack_from(c, buf, o)[0] for k, (o, c) in TIER_CLEAN_FIELDS.items()}


def tier_directory(buf: bytes) -> bytes:
    h = tier_header(buf)
    return bytes(buf[h["dir_offset"]: h["dir_offset"] + ENTRY * h["slots"]])


def tier_craft_clean(buf: bytes, resign_dir: bool = False, **fields) -> bytes:
    """``buf`` with clean-record fields replaced (``resign_dir``: the directory
    CRC recomputed from the directory in ``buf``) and the record CRC valid."""
    b = bytearray(buf)
    if resign_dir:
        struct.pack_into("<I", b, 516, crc32c(tier_directory(bytes(b))))
    for k, v in fields.items():
        o, c = TIER_CLEAN_FIELDS[k]
        struct.pack_into(c, b, o, v)
    struct.pack_into("<I", b, 528, crc32c(bytes(b[512:528])))
    return bytes(b)


def tier_slots(buf: bytes) -> dict:
    """slot -> (key, seq, version) of the live directory entries."""
    h = tier_header(buf)
    out = {}
    for s in range(h["slots"]):
        key, seq, ver, dcrc, ecrc = struct.unpack_from("<qQQII", buf, h["dir_offset"] + ENTRY * s)
        if seq and ecrc == crc32c(buf[h["dir_offset"] + ENTRY * s: h["dir_offset"] + ENTRY * s + 28]):
            out[s] = (key, seq, ver)
    return out


def tier_regions_of_slot(buf: bytes, s: int) -> list:
    """Byte ranges [a, b) that belong to slot s: its directory entry and its data."""
    h = tier_header(buf)
    e = h["dir_offset"] + ENTRY * s
    d = h["data_offset"] + h["slot_bytes"] * s
    return [(e, e + ENTRY), (d, d + h["slot_bytes"])]


# -------------------------------------------------------------- snapshots
SNAP_HEADER, SNAP_HEADER_CRC, SNAP_SECTIONS = 320, 316, 128
SNAP_FIELDS = {
    "version": (8, "<I"), "bom": (12, "<I"), "kind": (16, "<I"), "dtype": (20, "<I"), "dim": (24, "<q"),
    "lineage": (32, "<Q"), "from_version": (40, "<Q"), "to_version": (48, "<Q"), "n_rows": (56, "<q"),
    "n_tombstones": (64, "<q"), "state_kind": (72, "<i"), "state_init": (76, "<f"), "state_floats": (80, "<q"),
    "step": (88, "<q"), "init_kind": (96, "<i"), "init_a": (100, "<f"), "init_b": (104, "<f"), "flags": (108, "<I"),
    "init_seed": (112, "<Q"), "capacity": (120, "<q"),
}
SECTION_NAMES = ["keys", "versions", "rows", "state", "dead_keys", "dead_versions"]


def snap_header(buf: bytes) -> dict:
    h = {k: struct.unpack_from(c, buf, o)[0] for k, (o, c) in SNAP_FIELDS.items()}
    h["sections"] = [struct.unpack_from("<QQI", buf, SNAP_SECTIONS + 24 * i) for i in range(6)]
    return h


def snap_resign(b: bytearray) -> bytes:
    """Recomputes every section CRC and the header CRC of a snapshot in ``b``."""
    for i in range(6):
        off, n, _ = struct.unpack_from("<QQI", b, SNAP_SECTIONS + 24 * i)
        if off + n <= len(b):
            struct.pack_into("<I", b, SNAP_SECTIONS + 24 * i + 16, crc32c(bytes(b[off:off + n])))
    struct.pack_into("<I", b, SNAP_HEADER_CRC, crc32c(bytes(b[:SNAP_HEADER_CRC])))
    return bytes(b)


def snap_craft(buf: bytes, sections=None, **fields) -> bytes:
    """``buf`` with header fields (and section table entries: {i: (offset, bytes)}) replaced, CRCs valid."""
    b = bytearray(buf)
    for k, v in fields.items():
        o, c = SNAP_FIELDS[k]
        struct.pack_into(c, b, o, v)
    for i, (off, n) in (sections or {}).items():
        struct.pack_into("<QQ", b, SNAP_SECTIONS + 24 * i, off, n)
    return snap_resign(b)


def snap_section(buf: bytes, name: str) -> tuple:
    off, n, _ = snap_header(buf)["sections"][SECTION_NAMES.index(name)]
    return off, n
