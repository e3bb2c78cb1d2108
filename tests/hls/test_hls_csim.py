"""HLS embedding_bag kernel: C simulation with g++ against the CPU engine's golden data.

Builds hls/embedding_bag's testbench with g++ (the kernel's pragmas are
inactive without __SYNTHESIS__), writes golden data with make_golden.py into
tmp_path and runs it: the testbench's exit status is its error count.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import reference

ROOT = Path(__file__).resolve().parents[2]
HLS = ROOT / "hls" / "embedding_bag"
GXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(
    GXX is None, reason="no C++ compiler (g++) to build the C-simulation testbench"
)
CFLAGS = ["-std=c++14", "-O2", "-Wall", "-Wextra", f"-I{ROOT / 'native' / 'include'}", f"-I{HLS}"]


def _load_make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", HLS / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_golden = _load_make_golden()
# int8 rows: quantized and dequantized by the NumPy oracle of the row layouts.
CODEC = (reference.quantize_rows, reference.dequantize_rows)


def _float_rows(case) -> np.ndarray:
    if case.get("kind", "fp32") == "fp32":
        return case["table_rows"]
    return reference.dequantize_rows(case["table_rows"], case["kind"], case["expected"].shape[1])


@pytest.fixture(scope="module")
def testbench(tmp_path_factory):
    exe = tmp_path_factory.mktemp("hls") / "tb_embedding_bag"
    cmd = [GXX, *CFLAGS, str(HLS / "tb_embedding_bag.cpp"), str(HLS / "embedding_bag.cpp"),
           str(HLS / "embedding_bag_int8.cpp"), "-o", str(exe)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.fixture(scope="module")
def cases():
    return make_golden.make_cases(seed=0, codec=CODEC)


def run_tb(exe, golden):
    return subprocess.run([str(exe), str(golden)], check=False, capture_output=True, text=True, timeout=120)


def test_golden_data_matches_the_numpy_oracle(cases):
    """The golden outputs (from the CPU engine) agree with the independent oracle."""
    kinds = set()
    for c in cases:
        keys, rows, values = c["table_keys"], _float_rows(c), c["values"]
        pos = np.clip(np.searchsorted(keys, values), 0, len(keys) - 1)
        hit = keys[pos] == values
        gathered = np.where(hit[:, None], rows[pos], 0).astype(np.float32)
        want = reference.pooled(gathered, c["offsets"], c["mode"], c["weights"], c["include_last_offset"])
        np.testing.assert_allclose(c["expected"], want, rtol=1e-5, atol=1e-5)
        lengths = np.diff(np.append(c["offsets"], len(values)))[: len(c["expected"])]
        kinds |= {(c["mode"], c["weights"] is not None, c["use_hash"], c["kind"])}
        assert (lengths == 0).any(), "every case holds empty bags"
        if len(values):
            assert len(np.unique(values)) < len(values), "every non-empty case holds duplicates"
            assert (~hit).any(), "every non-empty case holds missing keys"
    for kind in ("fp32", "int8"):
        assert {(m, False, h, kind) for m in ("sum", "mean", "max") for h in (False, True)} | {
            ("sum", True, False, kind),
            ("sum", True, True, kind),
        } <= kinds


def test_csim_matches_cpu_engine(testbench, cases, tmp_path):
    golden = tmp_path / "golden.bin"
    make_golden.write_golden(golden, cases)
    r = run_tb(testbench, golden)
    assert r.returncode == 0, r.stdout + r.stderr
    n_values = sum(c["expected"].size for c in cases)
    assert f"{len(cases)} cases, {n_values} values checked, 0 errors" in r.stdout


def test_make_golden_cli_writes_a_file_the_testbench_accepts(testbench, tmp_path):
    golden = tmp_path / "cli.bin"
    assert make_golden.main([str(golden), "--seed", "3"]) == 0
    r = run_tb(testbench, golden)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("what", ["expected", "table_rows", "values"])
def test_corrupted_golden_data_fails(testbench, cases, tmp_path, what):
    bad = [dict(c) for c in cases]
    i = next(k for k, c in enumerate(bad) if c["use_hash"] and c["mode"] == "sum" and c["weights"] is None)
    arr = np.array(bad[i][what], copy=True)
    if what == "values":  # a key the bag held turns into an absent one
        arr[np.flatnonzero(np.isin(arr, bad[i]["table_keys"]))[0]] = 123456789
    else:
        target = arr.reshape(-1)
        j = int(np.flatnonzero(target != 0)[0]) if what == "expected" else 0
        if what == "table_rows":  # a row that some bag reads
            used = np.flatnonzero(np.isin(bad[i]["table_keys"], bad[i]["values"]))[0]
            j = int(used) * arr.shape[1]
        target[j] += 0.5
    bad[i][what] = arr
    golden = tmp_path / "bad.bin"
    make_golden.write_golden(golden, bad)
    r = run_tb(testbench, golden)
    assert r.returncode > 0, r.stdout
    assert "0 errors" not in r.stdout
    if what == "expected":
        assert r.returncode == 1 and "1 errors" in r.stdout


def test_long_collision_cluster_grows_the_index(testbench, tmp_path):
    """200 keys sharing one home slot at 512 slots form a cluster longer than
    the kernel's probe bound (128): the host doubles the index (homes then
    split over two slots) and the kernel still finds every key."""
    import embedlookup as el

    cand = np.arange(1, 400_000, dtype=np.int64)
    same = cand[(reference.hash_key(cand) & np.uint64(511)) == 0]
    keys, absent = same[:200], same[200:210]
    table = el.EmbeddingTable(8, initializer=el.init.uniform(-1.0, 1.0, seed=5))
    table.lookup(keys)
    table_keys, table_rows = table.export()
    values = np.concatenate([keys[::7], absent, keys[-3:]])
    offsets = np.array([0, 10, 10, 25], np.int64)
    case = {"mode": "sum", "use_hash": True, "table_keys": table_keys, "table_rows": table_rows,
            "values": values, "offsets": offsets, "weights": None, "include_last_offset": False, "tol": 0.0,
            "expected": table.pooled_lookup(values, offsets, "sum", insert=False)}
    golden = tmp_path / "cluster.bin"
    make_golden.write_golden(golden, [case])
    r = run_tb(testbench, golden)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "case 0: 200 keys in 1024 index slots" in r.stdout


def test_truncated_or_missing_golden_file_fails(testbench, cases, tmp_path):
    golden = tmp_path / "golden.bin"
    make_golden.write_golden(golden, cases)
    data = golden.read_bytes()
    golden.write_bytes(data[:-4])
    assert run_tb(testbench, golden).returncode != 0
    golden.write_bytes(b"NOTGOLD!" + data[8:])
    assert run_tb(testbench, golden).returncode != 0
    assert run_tb(testbench, tmp_path / "absent.bin").returncode != 0


def test_pragmas_parse_under_synthesis_define():
    """With __SYNTHESIS__ defined the HLS pragmas are emitted; g++ must still
    parse the kernel (it ignores the unknown HLS pragmas)."""

    def gxx(*flags):
        cmd = [GXX, "-std=c++14", "-D__SYNTHESIS__", f"-I{ROOT / 'native' / 'include'}", f"-I{HLS}", *flags,
               str(HLS / "embedding_bag.cpp")]
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)

    r = gxx("-fsyntax-only", "-Wall", "-Wno-unknown-pragmas")
    assert r.returncode == 0, r.stderr
    r = gxx("-E")
    assert "#pragma HLS PIPELINE II=1" in r.stdout and "#pragma HLS INTERFACE m_axi port=rows" in r.stdout
    int8 = HLS / "embedding_bag_int8.cpp"
    cmd = [GXX, "-std=c++14", "-D__SYNTHESIS__", f"-I{ROOT / 'native' / 'include'}", f"-I{HLS}"]
    r = subprocess.run([*cmd, "-fsyntax-only", "-Wall", "-Wno-unknown-pragmas", str(int8)], check=False,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cmd, "-E", str(int8)], check=False, capture_output=True, text=True, timeout=120)
    assert "#pragma HLS INTERFACE m_axi port=rows" in r.stdout and "#pragma HLS PIPELINE II=1" in r.stdout


def test_int8_rows_decode_exactly_and_match_the_oracle(cases):
    """The int8 cases' rows are the oracle's layout (72 bytes per dim-64-style
    row: codes, padding, scale, bias), and a dim-13 row's 16 code bytes + 8."""
    int8 = [c for c in cases if c["kind"] == "int8"]
    assert len(int8) == 10
    for c in int8:
        dim = c["expected"].shape[1]
        assert c["table_rows"].shape == (len(c["table_keys"]), reference.row_bytes("int8", dim))
    assert {c["expected"].shape[1] for c in int8} == {16, 13}


@pytest.mark.parametrize("where", ["scale", "code"])
def test_corrupted_int8_rows_fail(testbench, cases, tmp_path, where):
    """One byte of a row some bag reads: its scale (every element moves) or
    one code (one element moves by one step)."""
    bad = [dict(c) for c in cases]
    i = next(k for k, c in enumerate(bad) if c["kind"] == "int8" and c["use_hash"] and c["mode"] == "sum"
             and c["weights"] is None)
    raw = np.array(bad[i]["table_rows"], copy=True)
    dim = bad[i]["expected"].shape[1]
    used = int(np.flatnonzero(np.isin(bad[i]["table_keys"], bad[i]["values"]))[0])
    if where == "scale":
        raw[used, (dim + 3) // 4 * 4 + 3] ^= 0x01  # the scale's exponent byte: doubles or halves it
    else:
        raw[used, 0] ^= 0x01
    bad[i]["table_rows"] = raw
    golden = tmp_path / "bad_int8.bin"
    make_golden.write_golden(golden, bad)
    r = run_tb(testbench, golden)
    assert r.returncode > 0, r.stdout
    assert "kind 3" in r.stderr


def test_int8_cases_are_left_out_without_a_codec(monkeypatch):
    monkeypatch.setattr(make_golden, "_default_codec", lambda: None)
    assert {c["kind"] for c in make_golden.make_cases(seed=1)} == {"fp32"}
    assert {c["kind"] for c in make_golden.make_cases(seed=1, codec=CODEC)} == {"fp32", "int8"}
