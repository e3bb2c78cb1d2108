"""The native layout's one-way rule (docs/architecture.md), checked on the sources.

Each folder under native/ may include only the folders listed for it; a new
include arrow that points back up (a cycle) fails here, not in review.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"

# folder -> folders its files may include (besides itself)
ALLOWED = {
    "include": set(),
    "structures": {"include"},
    "cpu": {"structures", "include"},
    "core": {"cpu", "structures", "include"},
    "frequency": {"core", "cpu", "structures", "include"},
    "storage": {"core", "structures", "include"},
    "cuda": {"include"},
    "bench": {"structures", "include"},
    "bindings": {"core", "frequency", "storage", "cuda", "cpu", "structures", "include"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def _target_folder(src: Path, inc: str) -> str:
    if inc.startswith("embedlookup/"):
        return "include"
    resolved = (src.parent / inc).resolve()
    return resolved.relative_to(NATIVE).parts[0]


def test_every_include_runs_one_way():
    bad = []
    sources = [p for p in NATIVE.rglob("*") if p.suffix in {".h", ".cpp", ".inl", ".cu", ".cuh"}]
    assert len(sources) > 40
    for src in sources:
        folder = src.relative_to(NATIVE).parts[0]
        assert folder in ALLOWED, f"{src}: a folder the layout does not name"
        for inc in INCLUDE.findall(src.read_text()):
            to = _target_folder(src, inc)
            if to != folder and to not in ALLOWED[folder]:
                bad.append(f"{src.relative_to(ROOT)} includes {inc} ({folder} -> {to})")
    assert not bad, "\n".join(bad)


def test_no_issue_tags_in_source():
    tag = re.compile(r"\(issue \d+\)|issue-\d+")
    hits = []
    for p in list((ROOT / "native").rglob("*")) + list((ROOT / "python").rglob("*.py")):
        if p.is_file() and p.suffix in {".h", ".cpp", ".inl", ".cu", ".cuh", ".py", ".cl"}:
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if tag.search(line):
                    hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
