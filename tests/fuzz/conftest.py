"""The fuzz harness's pytest set-up: the oracle and the helpers importable
from every file here (tests/reference.py is on sys.path via tests/conftest.py;
this folder for fuzzlib)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


def pytest_terminal_summary(terminalreporter):
    """Per area: cases tried, valid cases that matched the oracle, clean rejections, wrong results, crashes."""
    from fuzzlib import Tally

    if not Tally.counts:
        return
    tr = terminalreporter
    tr.section("embedlookup fuzz tally")
    tr.write_line(f"{'area':28s} {'tried':>7s} {'valid ok':>9s} {'rejected':>9s} {'wrong':>6s} {'crash':>6s}")
    for area, c in sorted(Tally.counts.items()):
        tr.write_line(f"{area:28s} {c['tried']:7d} {c['valid_ok']:9d} {c['rejected']:9d} {c['wrong']:6d} "
                      f"{c['crash']:6d}")
