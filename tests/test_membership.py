"""`pipeline membership` / `pipeline index`: near-copies found with their Jaccard, verbatim lines,
and an index cached inside the dataset that is rebuilt when the data changes."""

import json
import random
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, run_cli, stdlib_rows, write_config, write_parquet

from pipeline.membership import INDEX_DIR, MembershipIndex
from stages.minhash import exact_jaccard
from stages.shingles import shingle_hashes

sys.path.insert(0, str(REPO / "bench"))
from bench_search import near_copy  # noqa: E402  (the recall benchmark's planting, at test scale)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    rows = stdlib_rows(300)
    for r in rows:
        r["detected_licenses"] = ["PSF-2.0"]
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, rows) -> Path:
    tmp = tmp_path_factory.mktemp("membership")
    write_parquet(tmp / "in" / "a.parquet", rows[:150], row_group_size=40)
    write_parquet(tmp / "in" / "b.parquet", rows[150:], row_group_size=40)
    cfg = write_config(tmp / "c.yaml", [], [str(tmp / "in")])
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    built = run_cli("index", str(tmp / "out"))
    assert built.returncode == 0, built.stderr
    assert "300 records" in built.stdout
    return tmp / "out"


def test_planted_near_copies_are_found_with_their_jaccard(dataset, rows):
    index = MembershipIndex.open(dataset)
    rng = random.Random(7)
    sources = [r for r in rows if len(shingle_hashes(r["content"])) >= 300]
    results = []
    for r in rng.sample(sources, 30):
        made = near_copy(r["content"], 0.8, 0.95, rng)
        if made is None:
            continue
        copy, j = made
        _, hits = index.near_duplicates(copy, 0.7)
        match = [h for h in hits if (h.repo_name, h.path) == (r["repo_name"], r["path"])]
        results.append((j, match[0].jaccard if match else None))
    assert len(results) >= 20
    found = [est for _, est in results if est is not None]
    assert len(found) / len(results) >= 0.95
    assert all(abs(est - j) < 0.12 for j, est in results if est is not None)
    # an unrelated text is nobody's near-duplicate; the hits carry the record's license
    _, none = index.near_duplicates("\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}" for i in range(50)))
    assert none == []
    _, exact = index.near_duplicates(rows[5]["content"], 0.9)
    assert (exact[0].repo_name, exact[0].path, exact[0].jaccard) == (rows[5]["repo_name"], rows[5]["path"], 1.0)
    assert exact[0].license == "PSF-2.0 (permissive)" and exact[0].language == "Python"


def test_estimates_follow_exact_jaccard_over_the_whole_range(dataset, rows):
    """Lower thresholds find looser copies; every reported estimate is near the exact value."""
    index = MembershipIndex.open(dataset)
    rng = random.Random(3)
    text = max(rows, key=lambda r: len(r["content"]) if len(r["content"]) < 60_000 else 0)["content"]
    original = shingle_hashes(text)
    for low, high in ((0.5, 0.6), (0.6, 0.7)):
        copy, j = near_copy(text, low, high, rng)
        _, hits = index.near_duplicates(copy, 0.4)
        best = max(hits, key=lambda h: h.jaccard)
        assert abs(best.jaccard - exact_jaccard(original, shingle_hashes(copy))) < 0.1
        assert all(h.jaccard >= 0.4 for h in hits)
        _, strict = index.near_duplicates(copy, 0.75)
        assert all(h.jaccard >= 0.75 for h in strict)


def test_lines_mode_marks_verbatim_lines(dataset, rows, tmp_path):
    source = rows[42]
    picked = [ln for ln in source["content"].split("\n") if len(ln.strip()) >= 25
              and sum(ln in r["content"] for r in rows) == 1][:5]
    assert len(picked) == 5
    novel = ["    value = compute_the_answer_zq81(42)  # nobody wrote this", "print('zq81 not in the dataset')"]
    query = tmp_path / "mine.py"
    query.write_text("\n".join([picked[0], "", novel[0], *picked[1:], "x = 1", novel[1]]) + "\n")
    lines = MembershipIndex.open(dataset).lines(query.read_text())
    found = {ln.text: ln for ln in lines if ln.files}
    assert set(found) == set(picked)
    assert {ln.example for ln in found.values()} == {f"{source['repo_name']}/{source['path']}"}
    assert [ln.checked for ln in lines if ln.text in ("", "x = 1")] == [False, False, False]
    assert all(ln.files == 0 and ln.checked for ln in lines if ln.text in novel)
    plain = run_cli("membership", str(query), "--dataset", str(dataset), "--lines")
    assert plain.returncode == 0, plain.stderr
    assert f"     1 +      1  {picked[0]}" in plain.stdout.splitlines()
    assert "5 of 7 checked lines found verbatim" in plain.stderr
    assert f"5 lines found only in {source['repo_name']}/{source['path']}" in plain.stderr


def test_cli_output_cache_and_rebuild(dataset, rows, tmp_path):
    own = tmp_path / "mine.py"
    own.write_text(rows[10]["content"])
    result = run_cli("membership", str(own), "--dataset", str(dataset))
    assert result.returncode == 0, result.stderr
    assert "building" not in result.stderr  # the index built by `pipeline index` is reused
    assert result.stdout.splitlines()[0].startswith(f"J≈1.00  {rows[10]['repo_name']} :: {rows[10]['path']}")
    short = tmp_path / "short.py"
    short.write_text("x = 1\n")
    assert "too short" in run_cli("membership", str(short), "--dataset", str(dataset)).stdout
    # a copy of the dataset whose data changed gets a fresh index on first use
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    first = sorted((copy / "data").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(first).slice(0, 100), first)
    again = run_cli("membership", str(own), "--dataset", str(copy), "--json")
    assert again.returncode == 0 and "building the membership index" in again.stderr
    meta = json.loads((copy / INDEX_DIR / "meta.json").read_text())
    assert meta["records"] == 100 and [f[0] for f in meta["data"]] == sorted(p.name for p in (copy / "data").iterdir())
    for args in (["nope.py", "--dataset", str(dataset)], [str(own), "--dataset", str(tmp_path / "none")],
                 [str(own), "--dataset", str(dataset), "--threshold", "1.5"]):
        bad = run_cli("membership", *args)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
