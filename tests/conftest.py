"""Shared test helpers: real corpora from this machine's Python installation, configs, the CLI."""

import hashlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def stdlib_files(limit: int, suffix: str = ".py", skip: int = 0) -> list[Path]:
    """Real source files of the running Python's stdlib, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob(f"*{suffix}") if "site-packages" not in p.parts and p.is_file())
    return files[skip: skip + limit]


def stdlib_rows(limit: int, skip: int = 0, owner: str = "cpython") -> list[dict]:
    """Stack-v2-like rows made from real stdlib files (one repo per top-level stdlib package)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for p in stdlib_files(limit, skip=skip):
        rel = p.relative_to(root)
        repo = rel.parts[0] if len(rel.parts) > 1 else "_root"
        text = p.read_text(encoding="utf-8", errors="replace")
        rows.append({"repo_name": f"{owner}/{repo.removesuffix('.py')}", "path": rel.as_posix(), "content": text,
                     "language": "Python", "license_type": "permissive", "star_events_count": len(text) % 97})
    return rows


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None, row_group_size: int | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return path


def write_config(path: Path, stages: list, inputs: list[str], output: str = "out", **extra) -> Path:
    config = {"name": "test", "input": {"paths": inputs}, "output": output,
              "executor": {"kind": "local", "workers": 2}, "stages": stages, **extra}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run the `pipeline` command as a user would (a real subprocess)."""
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("CODECURATE_BENCHMARK_DIR", str(SHARED / "benchmarks"))
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_dir(folder: Path) -> pa.Table | None:
    files = sorted(Path(folder).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive") if files else None


def snapshot(out: Path) -> dict[str, list]:
    """Sorted (identity, content hash, reason) of data/ and of every removed/<stage>/ of a run."""
    snap = {}
    for folder in [out / "data", *sorted((out / "removed").glob("*"))]:
        t = read_dir(folder)
        if t is None:
            continue
        reasons = t["removal_reason"].to_pylist() if "removal_reason" in t.column_names else [None] * t.num_rows
        snap[folder.name] = sorted(
            (r, p, b, hashlib.sha256((c or "").encode()).hexdigest(), why)
            for r, p, b, c, why in zip(t["repo_name"].to_pylist(), t["path"].to_pylist(), t["blob_id"].to_pylist(),
                                       t["content"].to_pylist(), reasons, strict=True))
    return snap


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A small Parquet corpus of real stdlib files with planted exact duplicates across repos."""
    rows = stdlib_rows(300)
    dups = [dict(r, repo_name="fork/" + r["repo_name"].split("/")[1], star_events_count=0) for r in rows[:40]]
    write_parquet(tmp_path / "in" / "a.parquet", rows[:150], row_group_size=50)
    write_parquet(tmp_path / "in" / "b.parquet", rows[150:] + dups, row_group_size=50)
    return tmp_path / "in"
