"""Dask execution: identical output to the local executor, on a LocalCluster and on real
`dask scheduler`/`dask worker` processes, one of which is killed with SIGKILL mid-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_cli, snapshot, stdlib_rows, write_config, write_parquet

STAGES = [{"exact_dedup": {}}, {"exact_dedup": {"normalize_whitespace": True}}]
DASK = [sys.executable, "-m", "dask"]  # the `dask scheduler` / `dask worker` commands


def _corpus(tmp_path: Path, n: int = 800) -> Path:
    rows = stdlib_rows(n)
    rows += [dict(r, repo_name="fork/" + r["repo_name"].split("/")[1], star_events_count=0) for r in rows[:150]]
    rows += [dict(r, repo_name="ws/" + r["repo_name"].split("/")[1], content=r["content"].replace("\n", " \n"))
             for r in rows[150:200]]
    return write_parquet(tmp_path / "in" / "corpus.parquet", rows, row_group_size=20)


def test_dask_local_cluster_matches_local_executor(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", STAGES, [str(_corpus(tmp_path))], executor={"task_bytes": 300_000})
    assert run_cli("run", str(cfg), "--quiet", "--output", str(tmp_path / "local")).returncode == 0
    result = run_cli("run", str(cfg), "--quiet", "--output", str(tmp_path / "dask"), "--executor", "dask",
                     "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "Dask dashboard: http" in result.stderr
    assert snapshot(tmp_path / "dask") == snapshot(tmp_path / "local")
    manifest = json.loads((tmp_path / "dask" / "manifest.json").read_text())
    assert manifest["executor"]["kind"] == "dask"
    assert run_cli("verify", str(tmp_path / "dask")).returncode == 0


def test_killed_worker_run_still_completes_identically(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", STAGES, [str(_corpus(tmp_path, 1200))], executor={"task_bytes": 150_000})
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
        done = tmp_path / "dask" / "logs" / "seg0" / "completions"
        deadline = time.monotonic() + 300
        while not (done.is_dir() and len(list(done.iterdir())) >= 2):
            assert run.poll() is None, run.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        workers[0].send_signal(signal.SIGKILL)  # it was running a task: Dask retries it elsewhere
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
