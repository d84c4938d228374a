"""`optout apply` vs a full re-run, and `optout check` latency (issue 7).

Dataset: real code of this machine ingested with every package directory as its own source root
(its name is the owner, its sub-directories are repositories: ~1,300 repositories, > 500 MB of
content), run through the shipped config's stages (`--stages`: or all of the SPEC's, or
exact_dedup alone) with `opt_out` first and an empty registry -> release v1. Then 10 and 100
repositories (a seeded sample among those whose owner is a valid GitHub name) are opted out by
requests of their owners, each batch in its own registry. Timed, interleaved, median of --reps:
  (a) `pipeline optout apply --dataset v1 --output v2-N --registry optout-N.duckdb`
  (b) `pipeline run` of the same config with that registry (the full re-run apply replaces)
(a) and (b) must hold the same records (identity, content hash, removal reason), and
`pipeline verify` must pass on (a).
`optout check`: the CLI's wall time and the DuckDB query alone, for an account and for a repository,
on v1 and on a copy of its data/ made larger than 1 GB of content with hard links.

    .venv/bin/python bench/bench_optout.py [--stages shipped|all|minimal] [--reps 2] [--corpus DIR --roots ...]
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections import defaultdict
from pathlib import Path

import duckdb
import yaml
from common import DEFAULT_ROOTS, make_corpus, medians, timed
from rich.console import Console
from rich.table import Table

from pipeline.optout.check import files_per_repo
from pipeline.optout.parser import ParseError, check_owner, parse_target
from pipeline.verify import sql_paths

REPO = Path(__file__).resolve().parent.parent
BATCHES = (10, 100)  # repositories opted out: the first 10 of the seeded sample, then all 100


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"CODECURATE_BENCHMARK_DIR": str(REPO.parent / "shared" / "benchmarks"), **os.environ}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=check, capture_output=True, text=True,
                          env=env)


def config_stages(which: str) -> list[dict]:
    """The shipped config's stages; with `all`, its commented-out stage lines too (the SPEC order);
    `minimal`: exact_dedup alone (a run that is almost only I/O: the worst case for apply)."""
    if which == "minimal":
        return [{"exact_dedup": {}}]
    text = (REPO / "configs" / "stack-v2.yaml").read_text()
    if which == "all":
        text = re.sub(r"^(\s*)# (- \w+: \{.*\})\s*$", r"\1\2", text, flags=re.MULTILINE)
    return [s for s in yaml.safe_load(text)["stages"] if "opt_out" not in s]


def write_config(work: Path, corpus: Path, which: str, registry: Path, name: str) -> Path:
    """The chosen stages over the corpus, opt_out first with `registry`."""
    config = {"name": "bench-optout", "input": {"paths": [str(corpus / "data")]}, "output": str(work / "v1"),
              "executor": {"kind": "local", "workers": 2},
              "stages": [{"opt_out": {"registry": str(registry)}}, *config_stages(which)]}
    path = work / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def package_roots() -> list[str]:
    """Every directory inside the machine's code roots (bench/common.py), as a source root of its own."""
    bases = []
    for root in DEFAULT_ROOTS:
        if root == "@python":
            paths = sysconfig.get_paths()
            bases += [paths["stdlib"], paths["purelib"]]
        else:
            bases.append(root)
    skip = {"__pycache__", "site-packages", "dist-packages"}
    return [str(d) for base in dict.fromkeys(bases) if Path(base).is_dir() for d in sorted(Path(base).iterdir())
            if d.is_dir() and not d.is_symlink() and d.name not in skip and not d.name.startswith(".")]


def valid_owner(repo: str) -> bool:
    try:
        check_owner(repo.split("/", 1)[0])
        return True
    except ParseError:
        return False


def sample_repos(release: Path) -> list[str]:
    """A seeded sample of 100 repositories of the release whose owner is a valid GitHub name."""
    files = [str(p) for p in sorted((release / "data").glob("*.parquet"))]
    repos = [r for (r,) in duckdb.sql(f"SELECT DISTINCT repo_name FROM read_parquet({sql_paths(files)}) "
                                      "ORDER BY 1").fetchall() if valid_owner(r)]
    return random.Random(7).sample(repos, max(BATCHES))


def add_requests(work: Path, registry: Path, repos: list[str]) -> None:
    """One request per owner (the 2023 template), listing its repositories."""
    by_owner: dict[str, list[str]] = {}
    for repo in sorted(repos):
        by_owner.setdefault(repo.split("/", 1)[0], []).append(repo)
    for owner, owned in by_owner.items():
        request = work / f"request-{owner}.txt"
        request.write_text("I request that the following data is removed from The Stack:\n\n"
                           + "".join(f" - {repo}\n" for repo in owned))
        cli("optout", "add", str(request), "--requester", owner, "--registry", str(registry))


def same_records(a: Path, b: Path) -> list[str]:
    """Folders of two releases whose records (identity + content hash + removal reason) differ."""
    differ = []
    folders = {p.relative_to(a).as_posix() for p in a.glob("removed/*") if any(p.glob("*.parquet"))}
    folders |= {p.relative_to(b).as_posix() for p in b.glob("removed/*") if any(p.glob("*.parquet"))}
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    for folder in ["data", *sorted(folders)]:
        reason = "removal_reason" if folder != "data" else "NULL"
        queries = []
        for side in (a, b):
            files = sorted(str(p) for p in (side / folder).glob("*.parquet"))
            if not files:
                queries.append("SELECT NULL, NULL, NULL, NULL, NULL WHERE false")
                continue
            queries.append(f"SELECT repo_name, path, blob_id, md5(content), {reason} "
                           f"FROM read_parquet({sql_paths(files)}, union_by_name=true)")
        left, right = (con.execute(f"SELECT count(*) FROM ({x} EXCEPT ALL {y})").fetchone()[0]
                       for x, y in (queries, queries[::-1]))
        if left or right:
            differ.append(f"{folder}: {left} only in apply, {right} only in the re-run")
    return differ


def enlarged(release: Path, work: Path, copies: int) -> Path:
    """A dataset `copies` times as large: the release's data shards hard-linked that many times."""
    out = work / "check-large"
    shutil.rmtree(out, ignore_errors=True)
    (out / "data").mkdir(parents=True)
    for copy in range(copies):
        for shard in sorted((release / "data").glob("*.parquet")):
            os.link(shard, out / "data" / f"{copy}-{shard.name}")
    return out


def check_latency(dataset: Path, target: str, reps: int = 5) -> tuple[float, float]:
    """Median seconds of the `optout check` command and of its DuckDB query alone."""
    command, query = [], []
    for _ in range(reps):
        command.append(timed(lambda: cli("optout", "check", target, "--dataset", str(dataset), check=False)))
        query.append(timed(lambda: files_per_repo(parse_target(target), dataset)))
    return statistics.median(command), statistics.median(query)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="/tmp/codecurate-corpus-repos")
    parser.add_argument("--roots", nargs="+", help="source roots of the corpus when it is made (default: every "
                                                   "package directory of bench/common.py's roots)")
    parser.add_argument("--work", default="/tmp/codecurate-bench-optout")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--stages", choices=["shipped", "all", "minimal"], default="shipped",
                        help="the shipped config's stages, all of the SPEC's (its commented-out lines too), "
                             "or exact_dedup alone")
    args = parser.parse_args()
    console = Console(width=150)
    corpus, work = Path(args.corpus), Path(args.work)
    make_corpus(corpus, args.roots or package_roots())
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    registries = {n: work / f"optout-{n}.duckdb" for n in BATCHES}
    configs = {n: write_config(work, corpus, args.stages, registries[n], f"config-{n}.yaml") for n in BATCHES}
    start = time.perf_counter()
    cli("run", str(configs[max(BATCHES)]), "--quiet")  # v1: the registry is still empty
    first_run = time.perf_counter() - start
    v1 = work / "v1"
    stats = json.loads((v1 / "stats.json").read_text())
    mb = stats["totals"]["bytes_in"] / 1e6
    sample = sample_repos(v1)
    for n in BATCHES:
        add_requests(work, registries[n], sample[:n])
    repos = duckdb.sql(f"SELECT count(DISTINCT repo_name) FROM read_parquet('{v1}/data/*.parquet')").fetchall()[0][0]
    console.print(f"stages: opt_out, {', '.join(next(iter(s)) for s in config_stages(args.stages))}")
    console.print(f"release v1: {stats['totals']['records_out']:,} records in {repos:,} repositories, {mb:,.0f} MB "
                  f"of input content, first run {first_run:.0f} s")

    timings: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.reps):  # interleaved
        for n in BATCHES:
            timings[f"apply {n}"].append(timed(lambda n=n: cli(
                "optout", "apply", "--dataset", str(v1), "--output", str(work / f"v2-{n}"), "--registry",
                str(registries[n]), "--overwrite")))
            timings[f"re-run {n}"].append(timed(lambda n=n: cli(
                "run", str(configs[n]), "--quiet", "--overwrite", "--output", str(work / f"rerun-{n}"))))
    med = medians(timings)
    table = Table(title=f"optout apply vs full re-run on {mb:,.0f} MB (median of {args.reps}, interleaved)")
    for col in ("repos opted out", "records opted out", "shards rewritten / new / linked", "apply s",
                "full re-run s", "speed-up", "same records", "verify"):
        table.add_column(col, justify="right")
    for n in BATCHES:
        release = json.loads((work / f"v2-{n}" / "manifest.json").read_text())["release"]
        differ = same_records(work / f"v2-{n}", work / f"rerun-{n}")
        verified = cli("verify", str(work / f"v2-{n}"), check=False).returncode == 0
        table.add_row(f"{n}", f"{release['records_opted_out']:,} "
                              f"({release['records_opted_out'] / stats['totals']['records_in']:.1%})",
                      f"{release['shards_rewritten']} / {release['shards_new']} / {release['shards_linked']}",
                      f"{med[f'apply {n}']:.1f}", f"{med[f're-run {n}']:.1f}",
                      f"{med[f're-run {n}'] / med[f'apply {n}']:.1f}x", "yes" if not differ else "NO",
                      "OK" if verified else "FAILED")
        for line in differ:
            console.print(f"{n} repos, differs from the re-run: {line}")
    console.print(table)

    table = Table(title="optout check latency (median of 5; command = whole CLI process)")
    for col in ("dataset", "MB of content", "target", "command s", "query s"):
        table.add_column(col, justify="left" if col in ("dataset", "target") else "right")
    size = stats["totals"]["bytes_out"]
    copies = math.ceil(1e9 / size)
    for name, dataset, mb_data in (("v1", v1, size / 1e6),
                                   (f"v1 data x{copies}", enlarged(v1, work, copies), copies * size / 1e6)):
        for target in (sample[0].split("/", 1)[0], sample[-1]):
            command, query = check_latency(dataset, target)
            table.add_row(name, f"{mb_data:,.0f}", target, f"{command:.2f}", f"{query:.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
