#!/usr/bin/env python3
"""Writes golden inputs and outputs for the embedding_bag C-simulation testbench.

The expected outputs come from the CPU engine (``EmbeddingTable.pooled_lookup``
with ``insert=False``), so the testbench checks the HLS kernel against it.
int8 cases (the ``embedding_bag_int8`` top) hold rows quantized row-wise to
the engine's int8 layout; their expected outputs are the CPU engine's over the
dequantized rows. They need a row codec (``quantize_rows`` /
``dequantize_rows``): the one passed to ``make_cases``, else
``embedlookup.quantize`` where the package has it; without either they are
left out.

    PYTHONPATH=python python3 hls/embedding_bag/make_golden.py golden.bin

The file format is described in tb_embedding_bag.cpp.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

MAGIC = b"ELGOLD02"
# Storage-type ids of the row kinds the testbench runs (the engine's ids).
KINDS = {"fp32": 0, "int8": 3}
MODES = {"sum": 0, "mean": 1, "max": 2}
# Weighted sums: the CPU engine may fuse multiply and add (one rounding) where
# the kernel under g++ rounds twice; everything else must match bit for bit.
WEIGHTED_TOL = 1e-5


def _bags(rng, n_bags, max_len):
    """Offsets with empty bags (the first included) and the total length."""
    lengths = rng.integers(0, max_len + 1, n_bags)
    lengths[::4] = 0
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64), int(lengths.sum())


def _default_codec():
    try:
        from embedlookup import quantize
    except ImportError:
        return None
    return quantize.quantize_rows, quantize.dequantize_rows


def _int8_twin(table, codec):
    """(raw int8 rows of table's rows, a table holding their dequantized values)."""
    import embedlookup as el

    quantize_rows, dequantize_rows = codec
    keys, rows = table.export()
    raw = np.ascontiguousarray(quantize_rows(rows, "int8"), np.uint8)
    twin = el.EmbeddingTable(table.dim)
    twin.assign(keys, dequantize_rows(raw, "int8", table.dim))
    return raw, twin


def make_cases(seed: int = 0, codec=None, int8: bool = True) -> list[dict]:
    """Golden cases: dense (keys are row numbers) and hashed (random int64
    keys) tables; every mode, weights, empty bags, duplicates, missing keys,
    a trailing offset (include_last_offset) and a batch of only empty bags;
    the same over int8 rows when ``int8`` and a codec (see the module doc)."""
    import embedlookup as el

    rng = np.random.default_rng(seed)
    dense = el.EmbeddingTable(16, initializer=el.init.uniform(-1.0, 1.0, seed=seed + 1))
    dense.lookup(np.arange(40, dtype=np.int64))
    hashed = el.EmbeddingTable(13, initializer=el.init.uniform(-1.0, 1.0, seed=seed + 2))
    hashed.lookup(rng.integers(-(2**63), 2**63 - 1, 300, dtype=np.int64))

    codec = codec or (_default_codec() if int8 else None)
    sources = [(dense, False, "fp32"), (hashed, True, "fp32")]
    if int8 and codec is not None:
        sources += [(dense, False, "int8"), (hashed, True, "int8")]
    cases = []
    for table, use_hash, kind in sources:
        table_keys, table_rows = table.export()
        if kind == "int8":  # raw rows go to the kernel, the engine pools their dequantized values
            table_rows, table = _int8_twin(table, codec)
        for mode, weighted, last in (
            ("sum", False, False),
            ("mean", False, True),
            ("max", False, False),
            ("sum", True, False),
            ("mean", False, False),
        ):
            offsets, n = _bags(rng, 24, 9)
            if use_hash:  # duplicates from a few hot keys, plus absent keys
                values = rng.choice(table_keys[:20], n)
                miss = rng.random(n) < 0.2
                values[miss] = rng.integers(-(2**62), 2**62, int(miss.sum()))
            else:  # row numbers, some out of range (missing: zero rows)
                values = rng.integers(-3, len(table_keys) + 3, n)
            if last:
                offsets = np.append(offsets, n)
            weights = rng.standard_normal(n).astype(np.float32) if weighted else None
            expected = table.pooled_lookup(
                values, offsets, mode, weights, include_last_offset=last, insert=False
            )
            cases.append(
                dict(
                    kind=kind,
                    mode=mode,
                    use_hash=use_hash,
                    table_keys=table_keys,
                    table_rows=table_rows,
                    values=values.astype(np.int64),
                    offsets=offsets,
                    weights=weights,
                    include_last_offset=last,
                    expected=expected,
                    tol=WEIGHTED_TOL if weighted else 0.0,
                )
            )
    # Only empty bags, no keys at all.
    keys, rows = hashed.export()
    offsets = np.zeros(5, np.int64)
    cases.append(
        dict(
            kind="fp32",
            mode="max",
            use_hash=True,
            table_keys=keys,
            table_rows=rows,
            values=np.zeros(0, np.int64),
            offsets=offsets,
            weights=None,
            include_last_offset=False,
            expected=hashed.pooled_lookup(np.zeros(0, np.int64), offsets, "max", insert=False),
            tol=0.0,
        )
    )
    return cases


def write_golden(path, cases: list[dict]) -> None:
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(np.int64(len(cases)).tobytes())
        for c in cases:
            kind = c.get("kind", "fp32")
            if kind == "fp32":
                rows = np.ascontiguousarray(c["table_rows"], "<f4")
                dim = rows.shape[1]
            else:  # raw int8 rows, (n, row bytes) uint8; dim from the expected output
                rows = np.ascontiguousarray(c["table_rows"], np.uint8)
                dim = np.asarray(c["expected"]).shape[1]
            w = c["weights"]
            header = [
                KINDS[kind],
                MODES[c["mode"]],
                w is not None,
                bool(c["use_hash"]),
                dim,
                rows.shape[0],
                len(c["values"]),
                len(c["offsets"]),
                c["expected"].shape[0],
            ]
            f.write(np.asarray(header, "<i8").tobytes())
            f.write(np.float64(c["tol"]).tobytes())
            f.write(np.asarray(c["table_keys"], "<i8").tobytes())
            f.write(rows.tobytes())
            f.write(np.asarray(c["values"], "<i8").tobytes())
            f.write(np.asarray(c["offsets"], "<i8").tobytes())
            if w is not None:
                f.write(np.asarray(w, "<f4").tobytes())
            f.write(np.ascontiguousarray(c["expected"], "<f4").tobytes())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="golden.bin", help="golden file to write (default golden.bin)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cases = make_cases(args.seed)
    write_golden(args.out, cases)
    n_int8 = sum(c.get("kind") == "int8" for c in cases)
    print(f"wrote {len(cases)} cases ({n_int8} int8) to {args.out}"
          + ("" if n_int8 else "; no int8 cases: embedlookup.quantize is not available"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
