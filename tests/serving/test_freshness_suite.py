"""`embedlookup bench --suite freshness`: the bytes and bandwidth parts (fast),
checked against the format's arithmetic; bad arguments exit 2."""

import json

from embedlookup import cli


def test_bytes_and_bandwidth_parts(tmp_path, capsys):
    out = tmp_path / "fresh"
    rc = cli.main(["bench", "--suite", "freshness", "--ops", "bytes,bandwidth", "--workload", "bytes_rows=1000,4000",
                   "dim=64", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["bytes"]["rows"]
    assert [r["changed_rows"] for r in rows] == [1000, 4000, 1000, 4000]
    for opt, state in (("none", 0), ("rowwise_adagrad", 4)):
        a, b = [r for r in rows if r["optimizer"] == opt]
        # each changed row costs its key and its floats (and its optimizer state): docs/format.md
        per_row = (b["delta_file_bytes"] - a["delta_file_bytes"]) / 3000
        assert abs(per_row - (8 + 4 * 64 + state)) < 0.05, per_row
        for r in (a, b):
            assert abs(r["ratio_to_model"] - 1) <= 0.05
            assert r["cut_bytes"] == r["delta_file_bytes"] + r["manifest_bytes"]
    bw = res["bandwidth"]
    ekko_10min = [c for c in bw["cases"] if c["change_per_hour"] == 0.03 and c["period_s"] == 600][0]
    # 100 GB / 256 B rows x 0.5 % changed x 264 B, against 2 x 100 GB every 600 s
    want = 2 * 100e9 / (100e9 / 256 * 0.005 * bw["bytes_per_changed_row"] + bw["fixed_bytes_per_cut"]) / 2
    assert abs(ekko_10min["broadcast_over_delta"] - want) / want < 1e-6 and want > 100
    assert "Cut bytes" in (out / "results.md").read_text()


def test_bad_arguments(capsys):
    assert cli.main(["bench", "--suite", "freshness", "--ops", "nope", "--no-save"]) == 2
    assert "unknown freshness part" in capsys.readouterr().err
    assert cli.main(["bench", "--suite", "freshness", "--workload", "rows=abc", "--no-save"]) == 2
    assert cli.main(["bench", "--suite", "freshness", "--workload", "colour=red", "--no-save"]) == 2
