"""Shared by the benchmarks: a real-code corpus made with `pipeline ingest`, arguments, timing helpers."""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

# Real code found on this kind of machine (Debian + the running Python); missing roots are skipped.
DEFAULT_ROOTS = ["@python", "/usr/include", "/usr/lib/python3/dist-packages", "/usr/lib/python3.11",
                 "/usr/share/perl", "/usr/share/perl5", "/usr/lib/node_modules"]


def make_corpus(folder: Path, roots: list[str] | None = None) -> list[Path]:
    """Ingest real code into `folder` once (reused by later runs); returns its data shards."""
    data = folder / "data"
    if not (folder / "manifest.json").exists():
        roots = [r for r in (roots or DEFAULT_ROOTS) if r.startswith("@") or Path(r).is_dir()]
        cmd = [sys.executable, "-m", "pipeline.cli", "ingest", *roots, "--output", str(folder), "--overwrite"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return sorted(data.glob("*.parquet"))


def content_bytes(shards: list[Path]) -> int:
    return sum(pc.sum(pc.binary_length(pq.read_table(s, columns=["content"])["content"])).as_py() or 0
               for s in shards)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def medians(timings: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in timings.items()}


def corpus_arguments(corpus: str = "/tmp/codecurate-corpus", reps: int = 3, mb: float | None = None,
                     anchor_mb: float | None = None) -> argparse.ArgumentParser:
    """The options every corpus benchmark takes: --corpus, --reps and, when given defaults, --mb/--anchor-mb."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default=corpus, help="made with `pipeline ingest` when missing")
    parser.add_argument("--reps", type=int, default=reps, help="interleaved repetitions; medians are reported")
    if mb is not None:
        parser.add_argument("--mb", type=float, default=mb, help="MB of content to run on")
    if anchor_mb is not None:
        parser.add_argument("--anchor-mb", type=float, default=anchor_mb, help="MB shared with the anchor")
    return parser
