"""kill -9 at different points, then --resume: the same data/ and removed/ as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from conftest import run_cli, snapshot, stdlib_rows, write_config, write_parquet

STAGES = [{"exact_dedup": {}}, {"exact_dedup": {"normalize_whitespace": True}}]


def _start(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--quiet", "--output", str(out),
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, done_dir: Path, at_least: int, sig: int = signal.SIGKILL,
               timeout: float = 120) -> None:
    """Signal the run (its main process only, as a user would) once `done_dir` holds enough markers;
    none of its worker processes may outlive it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done_dir.is_dir() and len(list(done_dir.iterdir())) >= at_least:
            children = psutil.Process(proc.pid).children(recursive=True)
            os.kill(proc.pid, sig)
            proc.wait()
            _, alive = psutil.wait_procs(children, timeout=10)  # workers die with the run
            assert not alive, [p.cmdline() for p in alive]
            return
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.005)
    raise AssertionError("kill point never reached")


def test_kill_and_resume_gives_the_same_output(tmp_path):
    rows = stdlib_rows(900)
    rows += [dict(r, repo_name="fork/" + r["repo_name"].split("/")[1], star_events_count=0) for r in rows[:300]]
    rows += [dict(r, repo_name="ws/" + r["repo_name"].split("/")[1], content=r["content"].replace("\n", " \n"))
             for r in rows[300:400]]
    write_parquet(tmp_path / "in" / "corpus.parquet", rows, row_group_size=20)
    cfg = write_config(tmp_path / "c.yaml", STAGES, [str(tmp_path / "in")],
                       executor={"workers": 2, "task_bytes": 150_000})

    reference = tmp_path / "reference"
    assert run_cli("run", str(cfg), "--quiet", "--output", str(reference)).returncode == 0
    expected = snapshot(reference)
    assert set(expected) == {"data", "exact_dedup", "exact_dedup_2"}

    out = tmp_path / "killed"
    # 1st kill: in the middle of the first segment (signatures being written)
    proc = _start(cfg, out)
    _kill_when(proc, out / "logs" / "seg0" / "completions", at_least=3)
    assert not (out / "stats.json").exists()
    # 2nd: SIGTERM in the middle of the second segment, after the first cluster phase
    proc = _start(cfg, out, "--resume")
    _kill_when(proc, out / "logs" / "seg1" / "completions", at_least=2, sig=signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    assert proc.stderr.read().decode().strip() == "terminated: resume with --resume"
    # 3rd kill: in the last segment
    proc = _start(cfg, out, "--resume")
    _kill_when(proc, out / "logs" / "seg2" / "completions", at_least=1)
    result = run_cli("run", str(cfg), "--quiet", "--output", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    assert snapshot(out) == expected
    assert run_cli("verify", str(out)).returncode == 0


def test_corrupt_intermediate_is_recomputed_on_resume(tmp_path):
    rows = stdlib_rows(600)
    rows += [dict(r, repo_name="fork/" + r["repo_name"].split("/")[1]) for r in rows[:100]]
    write_parquet(tmp_path / "in.parquet", rows, row_group_size=20)
    cfg = write_config(tmp_path / "c.yaml", STAGES, [str(tmp_path / "in.parquet")],
                       executor={"workers": 2, "task_bytes": 200_000})
    reference = tmp_path / "reference"
    assert run_cli("run", str(cfg), "--quiet", "--output", str(reference)).returncode == 0

    out = tmp_path / "killed"
    proc = _start(cfg, out)
    _kill_when(proc, out / "logs" / "seg2" / "completions", at_least=1)
    # seg0 reads the input only (replayed by seg1); seg1 wrote the intermediate that seg2 reads
    shards = sorted((out / ".work" / "seg1" / "data").glob("*.parquet"))
    sigs = sorted((out / ".work" / "exact_dedup" / "sig").glob("*.parquet"))
    assert shards and sigs
    shards[0].write_bytes(shards[0].read_bytes()[:100])  # half-written / corrupted intermediate
    sigs[-1].write_bytes(sigs[-1].read_bytes()[:-7])
    result = run_cli("run", str(cfg), "--output", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    assert "corrupt intermediate" in result.stderr
    assert snapshot(out) == snapshot(reference)
    assert run_cli("verify", str(out)).returncode == 0
