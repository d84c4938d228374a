"""`pipeline search`: exact and regex search over a run's output, with lines, context and filters."""

import json
from pathlib import Path

import pytest
from conftest import run_cli, stdlib_rows, write_config, write_parquet

MARKER = "zq_marker_7731"
PLANTED = [
    {"repo_name": "plant/a", "path": "a.py", "language": "Python", "license_type": "permissive",
     "detected_licenses": ["MIT"], "content": f"import os\n\n{MARKER} = 1\nprint({MARKER})\n"},
    {"repo_name": "plant/c", "path": "c.c", "language": "C", "license_type": "no_license",
     "detected_licenses": None, "content": f"int main() {{\n  return {MARKER};\n}}\n"},
    {"repo_name": "plant/r", "path": "r.py", "language": "Python", "license_type": "permissive",
     "detected_licenses": ["BSD-3-Clause"], "content": "x = 1\ndef foo_zq(a):\n    return 'def bar_zq(b)'\n"},
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("search")
    rows = stdlib_rows(150)
    for r in rows:
        r["detected_licenses"] = ["PSF-2.0"]
    write_parquet(tmp / "in" / "a.parquet", rows[:75] + PLANTED[:1])
    write_parquet(tmp / "in" / "b.parquet", rows[75:] + PLANTED[1:])
    cfg = write_config(tmp / "c.yaml", [], [str(tmp / "in")])
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    return tmp / "out"


def _search(dataset: Path, *args: str) -> list[dict]:
    result = run_cli("search", *args, "--dataset", str(dataset), "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_exact_search_reports_repo_license_and_lines(dataset):
    hits = {h["repo_name"]: h for h in _search(dataset, MARKER)}
    assert set(hits) == {"plant/a", "plant/c"}
    a = hits["plant/a"]
    assert a["path"] == "a.py" and a["license"] == "MIT (permissive)" and a["language"] == "Python"
    assert [m["number"] for m in a["lines"]] == [3, 4]
    assert a["lines"][0]["context"] == [[2, ""], [3, f"{MARKER} = 1"], [4, f"print({MARKER})"]]
    assert hits["plant/c"]["license"] == "(no_license)"


def test_language_filter_and_limit(dataset):
    assert [h["repo_name"] for h in _search(dataset, MARKER, "--language", "c")] == ["plant/c"]
    assert len(_search(dataset, MARKER, "--limit", "1")) == 1
    assert len(_search(dataset, "import", "--limit", "7")) == 7


def test_regex_anchors_at_line_starts(dataset):
    hits = _search(dataset, r"^def \w+_zq\(", "--regex")
    assert [(h["repo_name"], [m["number"] for m in h["lines"]]) for h in hits] == [("plant/r", [2])]
    assert _search(dataset, r"def \w+_zq\(") == []  # not a regex without --regex


def test_finds_a_real_line_of_a_real_file(dataset):
    row = stdlib_rows(150)[100]
    lines = row["content"].split("\n")
    number, line = next((i + 1, ln) for i, ln in enumerate(lines) if len(ln.strip()) > 40 and
                        row["content"].count(ln.strip()) == 1)
    hits = _search(dataset, line.strip(), "--limit", "50", "--context", "0")
    hit = next(h for h in hits if (h["repo_name"], h["path"]) == (row["repo_name"], row["path"]))
    assert hit["lines"][0]["context"] == [[number, line]]


def test_plain_output_and_errors(dataset, tmp_path):
    result = run_cli("search", MARKER, "--dataset", str(dataset), "--language", "Python")
    assert result.returncode == 0
    assert "== plant/a :: a.py" in result.stdout and "      3 > zq_marker_7731 = 1" in result.stdout
    assert "1 matching records" in result.stderr
    none = run_cli("search", "no such text anywhere 9f8e7d", "--dataset", str(dataset))
    assert none.returncode == 0 and none.stdout == "" and "0 matching records" in none.stderr
    for args in (["x(", "--regex"], ["(?<=a)b", "--regex"], ["x"]):
        folder = dataset if args != ["x"] else tmp_path
        bad = run_cli("search", *args, "--dataset", str(folder))
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert "Traceback" not in bad.stderr


def test_regex_prefilter_literal_is_required_by_every_match():
    from pipeline.search import required_literal

    assert required_literal(r"^class \w+Frobnicator\(") == "Frobnicator("
    assert required_literal(r"def (foo|bar)_x") == "def "
    assert required_literal(r"(?i)Hello") is None  # case-insensitive: a plain contains() would miss "hello"
    assert required_literal(r"ab|cd") is None  # neither branch is required
    assert required_literal(r"\w+") is None
