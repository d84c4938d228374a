"""The data card: written by every run, its numbers equal stats.json and the data, plots are real PNGs."""

import json
from pathlib import Path

import duckdb
import pytest
import yaml
from conftest import run_cli, stdlib_rows, write_config, write_parquet
from PIL import Image

from pipeline.card import DataFacts, SizeSummary, human_bytes, render_card, size_category

LICENSES = [["MIT"], ["Apache-2.0", "MIT"], ["BSD-3-Clause"], None]


def _int(cell: str) -> int:
    return int(cell.replace(",", ""))


def md_table(card: str, heading: str, index: int = 0) -> list[list[str]]:
    """The rows of the index-th Markdown table under `## heading`."""
    section = card.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.strip() for b in section.split("\n\n") if b.strip().startswith("|")]
    rows = blocks[index].splitlines()[2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


@pytest.fixture(scope="module")
def run_out(tmp_path_factory) -> Path:
    """A run over real stdlib files with licenses, two languages, exact copies and unreadable rows."""
    tmp = tmp_path_factory.mktemp("card")
    rows = stdlib_rows(240)
    for i, r in enumerate(rows):
        r["detected_licenses"] = LICENSES[i % 4]
        r["license_type"] = "no_license" if LICENSES[i % 4] is None else "permissive"
        if i % 10 == 0:
            r["language"] = "C"
    copies = [dict(r, repo_name="fork/" + r["repo_name"].split("/")[1], star_events_count=0) for r in rows[:30]]
    broken = [dict(rows[0], repo_name="broken/x", path=f"null{i}.py", content=None) for i in range(3)]
    write_parquet(tmp / "in" / "a.parquet", rows[:120])
    write_parquet(tmp / "in" / "b.parquet", rows[120:] + copies + broken)
    cfg = write_config(tmp / "c.yaml", [{"exact_dedup": {}}], [str(tmp / "in")])
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    return tmp / "out"


def _load(out: Path) -> tuple[str, dict, dict]:
    card = (out / "data_card.md").read_text()
    return card, json.loads((out / "stats.json").read_text()), yaml.safe_load(card.split("---\n")[1])


def test_card_numbers_equal_stats(run_out):
    card, stats, _ = _load(run_out)
    funnel = md_table(card, "Funnel")
    assert [row[0] for row in funnel] == ["read", "exact_dedup"]
    for row, s in zip(funnel, stats["stages"], strict=True):
        assert [_int(c) for c in row[1:4]] == [s["records_in"], s["records_out"], s["records_removed"]]
        assert row[5:7] == [human_bytes(s["bytes_in"]), human_bytes(s["bytes_out"])]
        assert row[4] == f"{100 * s['records_removed'] / s['records_in']:.1f}%"
    languages = md_table(card, "Languages")
    assert {r[0]: (_int(r[1]), r[2]) for r in languages} == {
        lang: (v["records"], human_bytes(v["bytes"])) for lang, v in stats["languages"].items()}
    assert set(stats["languages"]) == {"Python", "C"}
    # every removal reason with its count, as stats.json counts it
    reasons = {(r[0], r[1].strip("`")): _int(r[2]) for r in md_table(card, "Top removal reasons")}
    expected = {(s["name"], k): v for s in stats["stages"] for k, v in s["details"].items()
                if k.startswith(("input:", "duplicate_of"))}
    assert reasons == expected and expected[("read", "input:null_content")] == 3
    assert sum(reasons.values()) == stats["totals"]["records_removed"]
    dedup = md_table(card, "Deduplication")[0]
    dedup_stats = stats["stages"][1]
    assert dedup[1] == "files" and _int(dedup[2]) == dedup_stats["details"]["clusters"]
    assert _int(dedup[3]) == dedup_stats["records_removed"] >= 30
    t = stats["totals"]
    assert f"**{t['records_out']:,} source files ({human_bytes(t['bytes_out'])} of code, 2 languages)**" in card


def test_card_header_and_licenses_follow_the_data(run_out):
    card, stats, header = _load(run_out)
    con = duckdb.connect()
    data = f"read_parquet('{run_out}/data/*.parquet')"
    detected = con.execute(f"SELECT lic, count(*) FROM (SELECT unnest(detected_licenses) lic FROM {data}) "
                           "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    assert header["license"] == [lic.lower() for lic, _ in detected]
    assert [(f"`{lic}`", f"{n:,}") for lic, n in detected] == [tuple(r) for r in md_table(card, "Licenses", 1)]
    types = dict(con.execute(f"SELECT license_type, count(*) FROM {data} GROUP BY 1").fetchall())
    assert {r[0]: _int(r[1]) for r in md_table(card, "Licenses")} == types
    assert header["size_categories"] == [size_category(stats["totals"]["records_out"])] == ["n<1K"]
    assert header["configs"][0]["data_files"][0]["path"] == "data/*.parquet"
    assert header["tags"] == ["code", "python", "c"]
    assert header["task_categories"] == ["text-generation"]


def test_plots_are_small_pngs(run_out):
    card, _, _ = _load(run_out)
    for name in ("funnel.png", "languages.png", "file_sizes.png"):
        assert f"]({name})" in card
        path = run_out / name
        assert path.stat().st_size < 80_000
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] >= 600


def test_size_table_counts_every_input_record(run_out):
    card, stats, _ = _load(run_out)
    sizes = {r[0]: r for r in md_table(card, "File sizes")}
    # the input side is data/ plus removed/: the null-content rows have no size
    assert _int(sizes["input"][1]) == stats["totals"]["records_in"] - 3
    assert _int(sizes["kept"][1]) == stats["totals"]["records_out"]
    con = duckdb.connect()
    median = con.execute(f"SELECT quantile_cont(strlen(content), 0.5) FROM read_parquet('{run_out}/data/*.parquet')"
                         ).fetchone()[0]
    assert sizes["kept"][2] == human_bytes(median)


def test_card_command_regenerates_the_same_card(run_out, tmp_path):
    before = (run_out / "data_card.md").read_text()
    png = (run_out / "funnel.png").read_bytes()
    (run_out / "data_card.md").unlink()
    (run_out / "funnel.png").unlink()
    result = run_cli("card", str(run_out))
    assert result.returncode == 0, result.stderr
    assert (run_out / "data_card.md").read_text() == before
    assert (run_out / "funnel.png").read_bytes() == png
    bad = run_cli("card", str(tmp_path))
    assert bad.returncode == 2 and "manifest.json" in bad.stderr and "Traceback" not in bad.stderr


def test_stats_command_prints_the_summary(run_out, tmp_path):
    stats = json.loads((run_out / "stats.json").read_text())
    result = run_cli("stats", str(run_out))
    assert result.returncode == 0, result.stderr
    for s in stats["stages"]:
        line = next(ln for ln in result.stdout.splitlines() if f" {s['name']} " in ln)
        assert f"{s['records_in']:,}" in line and f"{s['records_removed']:,}" in line
    assert f"{stats['totals']['records_out']:,}" in result.stdout and "Python" in result.stdout
    assert run_cli("stats", str(tmp_path)).returncode == 2


def _facts(reasons: list[tuple[str, str, int]]) -> DataFacts:
    return DataFacts([("content", "string")], 1, 10, [], [], SizeSummary(), SizeSummary(), reasons, {})


def _stats(stages: list[dict], removed_per_stage: int, kept: int) -> dict:
    """stats.json for 10 input records of 10 bytes each: every stage removes `removed_per_stage`."""
    return {"stages": [dict(s, records_in=10, records_out=10 - removed_per_stage, records_removed=removed_per_stage,
                            bytes_in=100, bytes_out=10 * (10 - removed_per_stage), seconds=0.1) for s in stages],
            "totals": {"records_in": 10, "records_out": kept, "records_removed": 10 - kept, "bytes_in": 100,
                       "bytes_out": 10 * kept, "seconds": round(0.1 * len(stages), 1)},
            "languages": {"Python": {"records": kept, "bytes": 10 * kept}}}


def test_stage_details_get_sections_or_the_generic_table():
    """Sections for stages other issues add, rendered from stats.json/removed/ shapes the SPEC fixes."""
    stages = [
        {"name": "read", "details": {}},
        {"name": "decontaminate", "details": {"benchmark:humaneval": 3, "method:exact": 2, "method:ngram": 1,
                                              "contaminated:humaneval/HumanEval/0:exact": 2,
                                              "contaminated:humaneval/HumanEval/7:ngram": 1}},
        {"name": "pii", "details": {"EMAIL": 5, "KEY": 2, "records_redacted": 6}},
        {"name": "quality_filters", "details": {"filter:max_line_length": 4, "files_scanned": 9}},
    ]
    stats = _stats(stages, removed_per_stage=2, kept=3)
    manifest = {"name": "t", "inputs": [], "packages": {}, "started_at": "2026-01-01T00:00:00+00:00",
                "optout_registry_version": 4,
                "stages": [{"name": "decontaminate", "kind": "decontaminate",
                            "options": {"benchmarks": ["humaneval", "mbpp"]}},
                           {"name": "pii", "kind": "pii", "options": {}},
                           {"name": "quality_filters", "kind": "quality_filters", "options": {}}]}
    reasons = [("decontaminate", "contaminated:humaneval/HumanEval/0:exact", 2),
               ("decontaminate", "contaminated:humaneval/HumanEval/7:ngram", 1),
               ("quality_filters", "filter:max_line_length", 4)]
    card = render_card(manifest, stats, _facts(reasons))
    assert md_table(card, "Decontamination") == [["decontaminate", "humaneval", "3", "2", "2", "1"],
                                                 ["decontaminate", "mbpp", "0", "0", "0", "0"]]
    assert md_table(card, "Personal information") == [["pii", "`EMAIL`", "5"], ["pii", "`KEY`", "2"]]
    assert ["quality_filters", "`files_scanned`", "9"] in md_table(card, "Other counts")
    assert ["pii", "`records_redacted`", "6"] in md_table(card, "Other counts")
    assert all(r[0] != "decontaminate" for r in md_table(card, "Other counts"))
    top = {(r[0], r[1]): r[2] for r in md_table(card, "Top removal reasons")}
    assert top == {("quality_filters", "`filter:max_line_length`"): "4",
                   ("decontaminate", "`contaminated:humaneval`"): "3"}
    assert "Opt-out registry version **4**" in card


def test_opt_out_counts_accounts_and_repositories_apart():
    stages = [{"name": "read", "details": {}}, {"name": "opt_out", "details": {}}]
    stats = _stats(stages, removed_per_stage=6, kept=4)
    manifest = {"name": "t", "inputs": [], "packages": {}, "started_at": "2026-01-01T00:00:00+00:00",
                "optout_registry_version": 3, "stages": [{"name": "opt_out", "kind": "opt_out", "options": {}}]}
    reasons = [("opt_out", "opt_out:alice", 3), ("opt_out", "opt_out:bob/tools", 2), ("opt_out", "opt_out:Bob/web", 1)]
    card = render_card(manifest, stats, _facts(reasons))
    assert ("Opt-out registry version **3**: 6 records removed at their owners' request "
            "(1 whole account, 2 repositories).") in card
