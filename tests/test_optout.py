"""Opt-out: request parsing (both templates, malicious and messy texts), ownership verification, the
append-only registry under concurrent writers, the opt_out stage and `optout check|list`."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pytest
from conftest import read_dir, run_cli, stdlib_rows, write_config, write_parquet

from pipeline.optout.parser import Section, Target, ascii_lower, parse_request, parse_target

REQUEST_2023 = """I request that the following data is removed from The Stack:

 - Commits
 - GitHub issue
 - Pull requests
 - KS-7250/SweetHoney
 - ks-7250/mouse-algos
 -
_Note_: If you don't want all repositories removed, edit the list above. To exclude everything under \
your username, replace the list with a single "all" entry.

As they are NOT permissively licensed, please hurry.
"""

REQUEST_2026 = """### Accounts and organizations to remove ENTIRELY

KS-7250, Acme-Labs

### Specific repositories to remove

KS-7250/Game-Dev-Tutorials](https://github.com/KS-7250/Game-Dev-Tutorials
https://github.com/someone-else/their-repo.git

### Optional - your relationship to what you listed

- [x] These are my own personal account(s).
- [x] I am an owner or admin of the organization(s) listed.

### Optional - a link that helps confirm this is you/yours

https://github.com/victim

### Anything else? (optional)

- victim/private-repo was forked from my code, I think.
"""

FLATTENED_FORM = """Accounts and organizations to remove ENTIRELY
viroth-ty

Specific repositories to remove
No response

Optional - your relationship to what you listed

These are my own personal account(s).
Optional - a link that helps confirm this is you/yours
No response
"""


def targets(text: str) -> list[str]:
    return [str(t) for line in parse_request(text).lines for t in line.targets]


def test_2023_template_lists_repos_and_reports_the_rest():
    parsed = parse_request(REQUEST_2023)
    assert targets(REQUEST_2023) == ["ks-7250/sweethoney", "ks-7250/mouse-algos"]
    # data kinds, the empty bullet and the template's note are template text; the prose is reported
    assert [(ln.number, ln.text.strip()) for ln in parsed.unparsed] == [
        (11, "As they are NOT permissively licensed, please hurry.")]


def test_2026_form_reads_only_its_target_sections():
    parsed = parse_request(REQUEST_2026)
    assert {ln.section for ln in parsed.lines} == {Section.ACCOUNTS, Section.REPOSITORIES}
    # a broken markdown link naming the same repo twice is one target; links/free text are never targets
    assert targets(REQUEST_2026) == ["ks-7250", "acme-labs", "ks-7250/game-dev-tutorials", "someone-else/their-repo"]
    assert not parsed.unparsed
    assert targets(FLATTENED_FORM) == ["viroth-ty"]


@pytest.mark.parametrize("text", ["- all", "ALL", "All of them!", "everything", " * all "])
def test_all_means_the_requester(text):
    line, = parse_request(f"### Specific repositories to remove\n\n{text}\n").lines
    assert line.wants_all and not line.targets


@pytest.mark.parametrize("token,expected", [
    ("Owner/Repo", "owner/repo"),
    ("https://github.com/Owner/Repo", "owner/repo"),
    ("http://www.github.com/Owner/Repo.git", "owner/repo"),
    ("https://github.com/Owner/Repo/tree/main/src?x=1#L3", "owner/repo"),
    ("git@github.com:Owner/Repo.git", "owner/repo"),
    ("github.com/Owner", "owner"),
    ("@Acme-Labs", "acme-labs"),
    ("https://github.com/orgs/Acme-Labs/repositories", "acme-labs"),
    ("legacy--name-/x.y_z", "legacy--name-/x.y_z"),
])
def test_target_forms(token, expected):
    assert str(parse_target(token)) == expected


@pytest.mark.parametrize("token,problem", [
    ("https://gitlab.com/owner/repo", "not a GitHub URL"),
    ("https://github.com.evil.example/owner/repo", "not a GitHub URL"),
    ("https://evil.example/github.com/owner/repo", "not a GitHub URL"),
    ("https://github.com/settings/profile", "not a GitHub account or repository URL"),
    ("-owner/repo", "not a valid GitHub account name"),
    ("o" * 40 + "/repo", "not a valid GitHub account name"),
    ("owner/..", "not a valid GitHub repository name"),
    ("owner/repo/extra", "not owner/repo"),
    ("own_er/repo", "not a valid GitHub account name"),
])
def test_invalid_targets_are_rejected_with_a_reason(token, problem):
    line, = parse_request(f"- {token}\n").lines
    assert not line.understood and problem in line.problem


@pytest.mark.parametrize("lookalike,char", [
    ("kѕ-7250/repo", "U+0455 CYRILLIC SMALL LETTER DZE"),  # Cyrillic s
    ("ｋs-7250", "U+FF4B FULLWIDTH LATIN SMALL LETTER K"),
    ("\u212as-7250/repo", "U+212A KELVIN SIGN"),  # str.lower() would fold it into 'k'
    ("ks\u200b-7250/repo", "U+200B ZERO WIDTH SPACE"),
    ("https://github.com/\u0131nfo/repo", "U+0131 LATIN SMALL LETTER DOTLESS I"),
])
def test_unicode_lookalikes_never_match_real_names(lookalike, char):
    line, = parse_request(f"### Accounts and organizations to remove ENTIRELY\n\n{lookalike}\n").lines
    assert not line.targets and char in line.problem
    assert ascii_lower("\u212aS-7250") == "\u212as-7250"


def test_mixed_lines_are_not_guessed():
    text = ("- ks-7250/tools (the old one)\nks-7250/a ks-7250/b\nAll of SpecialBrands and oplerno repos\n"
            "* **KS-7250/__private__**\nOptional - and these too:\n- ks-7250/c\n")
    lines = parse_request(text).lines
    assert [ln.understood for ln in lines] == [False, True, False, True, False, True]
    assert lines[1].targets == [Target("ks-7250", "a"), Target("ks-7250", "b")]
    assert lines[3].targets == [Target("ks-7250", "__private__")]  # bold markers go, underscores stay
    assert lines[5].targets == [Target("ks-7250", "c")]  # prose resembling a form title opens no section


# -- the registry through the CLI ------------------------------------------------------------------
def add(tmp_path, text: str, requester: str, registry: str = "reg.duckdb"):
    req = tmp_path / f"req-{abs(hash((text, requester)))}.txt"
    req.write_text(text)
    return run_cli("optout", "add", str(req), "--requester", requester, "--registry", registry, cwd=tmp_path)


def registry_rows(path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_ownership_verification_and_org_membership(tmp_path):
    result = add(tmp_path, REQUEST_2026, "KS-7250")
    assert result.returncode == 0, result.stderr
    assert "acme-labs is not ks-7250" in result.stdout and "someone-else is not ks-7250" in result.stdout
    reg = tmp_path / "reg.duckdb"
    entries = registry_rows(reg, "SELECT version, owner, repo FROM entries ORDER BY ALL NULLS FIRST")
    assert entries == [(1, "ks-7250", None), (1, "ks-7250", "game-dev-tutorials")]
    outcomes = registry_rows(reg, "SELECT target, outcome FROM decisions ORDER BY line, target")
    assert ("someone-else/their-repo", "rejected") in outcomes and ("acme-labs", "rejected") in outcomes

    (tmp_path / "members.csv").write_text("user,org\nKS-7250,Acme-Labs\nother,acme-labs\n")
    imported = run_cli("optout", "members", "import", "members.csv", "--registry", "reg.duckdb", cwd=tmp_path)
    assert imported.returncode == 0 and "2 new" in imported.stdout
    again = add(tmp_path, REQUEST_2026, "ks-7250")  # now a member of acme-labs; the rest is known already
    assert again.returncode == 0, again.stderr
    assert registry_rows(reg, "SELECT version, owner FROM entries WHERE version = 2") == [(2, "acme-labs")]
    assert "already opted out" in again.stdout

    forged = add(tmp_path, "- victim/repo\n- https://github.com/victim\n", "attacker")
    assert forged.returncode == 1 and "nothing in the request was accepted" in forged.stderr
    assert registry_rows(reg, "SELECT count(*) FROM entries WHERE owner = 'victim'") == [(0,)]
    assert registry_rows(reg, "SELECT requester, version FROM requests WHERE request_id = 3") == [("attacker", None)]
    listing = run_cli("optout", "list", "--registry", "reg.duckdb", cwd=tmp_path)
    assert listing.returncode == 0 and "acme-labs\taccount" in listing.stdout and "victim" not in listing.stdout


def test_malicious_requests(tmp_path):
    sql = "- ks-7250/x'); DROP TABLE entries; --\n- '; DELETE FROM versions WHERE '1'='1\n- ks-7250/ok\n"
    result = add(tmp_path, sql, "ks-7250")
    assert result.returncode == 0, result.stderr
    reg = tmp_path / "reg.duckdb"
    assert registry_rows(reg, "SELECT owner, repo FROM entries") == [("ks-7250", "ok")]
    assert registry_rows(reg, "SELECT text FROM requests") == [(sql,)]  # stored verbatim, as a parameter
    assert registry_rows(reg, "SELECT count(*) FROM decisions WHERE outcome = 'unparsed'") == [(2,)]
    bad = add(tmp_path, "- all\n", "x'); DROP TABLE entries;--")
    assert bad.returncode == 2 and "not a valid GitHub account name" in bad.stderr

    # 10,000 lines, nearly all naming someone else's repositories (and a look-alike of the requester)
    lines = [f"- victim{i % 7}/repo-{i}" for i in range(9_990)] + [f"- ks-7250/mine-{i}" for i in range(9)]
    lines.append("- kѕ-7250/lookalike")
    flood = add(tmp_path, "\n".join(lines), "ks-7250")
    assert flood.returncode == 0, flood.stderr
    assert registry_rows(reg, "SELECT count(*) FROM entries WHERE version = 2") == [(9,)]
    assert registry_rows(reg, "SELECT outcome, count(*) FROM decisions WHERE request_id = 2 GROUP BY 1 "
                              "ORDER BY 1") == [("accepted", 9), ("rejected", 9_990), ("unparsed", 1)]


def test_members_csv_errors_name_the_line(tmp_path):
    (tmp_path / "m.csv").write_text("login,organisation\na,b\n")
    assert "header user,org" in run_cli("optout", "members", "import", "m.csv", cwd=tmp_path).stderr
    (tmp_path / "m.csv").write_text("user,org\nalice,acme\nbob,acmе\n")  # Cyrillic e
    result = run_cli("optout", "members", "import", "m.csv", cwd=tmp_path)
    assert result.returncode == 2 and "m.csv:3" in result.stderr and "CYRILLIC" in result.stderr


def test_concurrent_adds_lose_nothing(tmp_path):
    """Real processes writing at once: DuckDB allows one writer, the lock file makes them queue."""
    n = 8
    for i in range(n):
        (tmp_path / f"r{i}.txt").write_text(f"- user{i}/repo-a\n- https://github.com/user{i}/repo-b\n")

    def one(i):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "optout", "add", f"r{i}.txt", "--requester",
                               f"user{i}", "--registry", "reg.duckdb"], cwd=tmp_path, capture_output=True, text=True)

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    reg = tmp_path / "reg.duckdb"
    assert registry_rows(reg, "SELECT count(*), count(DISTINCT version), min(version), max(version) FROM versions"
                         ) == [(n, n, 1, n)]
    assert registry_rows(reg, "SELECT count(*), count(DISTINCT owner) FROM entries") == [(2 * n, n)]
    assert registry_rows(reg, "SELECT count(DISTINCT request_id) FROM requests") == [(n,)]


# -- the stage and `optout check` --------------------------------------------------------------------
def test_stage_removes_opted_out_records(tmp_path):
    rows = stdlib_rows(120)
    rows = [dict(r, repo_name=r["repo_name"].replace("cpython/", "CPython/")) if i % 2 else r
            for i, r in enumerate(rows)]
    write_parquet(tmp_path / "in" / "a.parquet", rows)
    repos = sorted({r["repo_name"].split("/")[1] for r in rows})
    cfg = write_config(tmp_path / "c.yaml", [{"opt_out": {"registry": "reg.duckdb"}}], ["in"])

    fresh = run_cli("run", str(cfg), "--quiet", cwd=tmp_path)  # a missing registry is empty: version 0
    assert fresh.returncode == 0, fresh.stderr
    assert '"optout_registry_version": 0' in (tmp_path / "out" / "manifest.json").read_text()
    assert not (tmp_path / "reg.duckdb").exists()

    assert add(tmp_path, f"- cpython/{repos[0]}\n- https://github.com/CPYTHON/{repos[1]}\n", "cpython").returncode == 0
    resumed = run_cli("run", str(cfg), "--resume", cwd=tmp_path)  # a new registry version is another run
    assert resumed.returncode == 2 and "another config" in resumed.stderr
    result = run_cli("run", str(cfg), "--quiet", "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    removed = read_dir(tmp_path / "out" / "removed" / "opt_out").to_pylist()
    expected = [r for r in rows if r["repo_name"].split("/")[1] in repos[:2]]
    assert sorted((r["repo_name"], r["path"]) for r in removed) == sorted((r["repo_name"], r["path"]) for r in expected)
    assert {r["removal_reason"] for r in removed} == {f"opt_out:cpython/{repos[0]}", f"opt_out:cpython/{repos[1]}"}
    assert '"optout_registry_version": 1' in (tmp_path / "out" / "manifest.json").read_text()
    assert run_cli("verify", "out", cwd=tmp_path).returncode == 0

    check = run_cli("optout", "check", f"CPython/{repos[2]}", "--dataset", "out", cwd=tmp_path)
    assert check.returncode == 0 and f"cpython/{repos[2]}" in check.stdout.lower()
    owner = run_cli("optout", "check", "https://github.com/cpython", "--dataset", "out", cwd=tmp_path)
    kept = [r for r in rows if r not in expected]
    spellings = len({r["repo_name"] for r in kept})  # counted per repo_name as the data spells it
    assert owner.returncode == 0 and f"cpython: {len(kept)} files in {spellings} repositories" in owner.stdout
    gone = run_cli("optout", "check", f"cpython/{repos[0]}", "--dataset", "out", cwd=tmp_path)
    assert gone.returncode == 1 and "not in" in gone.stdout
    assert run_cli("optout", "check", "cpythоn", "--dataset", "out", cwd=tmp_path).returncode == 2  # Cyrillic o

    # an account opt-out wins over a repository entry of the same owner
    assert add(tmp_path, "- all\n", "cpython").returncode == 0
    assert run_cli("run", str(cfg), "--quiet", "--overwrite", cwd=tmp_path).returncode == 0
    removed = read_dir(tmp_path / "out" / "removed" / "opt_out")
    assert removed.num_rows == len(rows) and set(removed["removal_reason"].to_pylist()) == {"opt_out:cpython"}
