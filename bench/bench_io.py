"""I/O floor vs `pipeline run` with only exact_dedup (issue 2).

(a) pyarrow reads every shard and writes it back with our zstd level and row-group size;
(b) `pipeline run` with exact_dedup, 2 workers (wall time of the whole command).
Median of 3 interleaved repetitions; MB/s of `content`. Goal: (b) >= 0.5x (a).

    .venv/bin/python bench/bench_io.py [--corpus /tmp/codecurate-corpus] [--reps 3]
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from common import content_bytes, corpus_arguments, make_corpus, medians, timed
from rich.console import Console
from rich.table import Table

ROW_GROUP_BYTES = 32 * 2**20  # as OutputConfig.row_group_bytes
ZSTD_LEVEL = 3  # as OutputConfig.compression_level


def pyarrow_copy(shards: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for s in shards:
        table = pq.read_table(s)
        rows_per_group = max(1, int(table.num_rows * ROW_GROUP_BYTES / max(table.nbytes, 1)))
        pq.write_table(table, out / s.name, compression="zstd", compression_level=ZSTD_LEVEL,
                       row_group_size=rows_per_group)


def pipeline_run(data_dir: Path, work: Path) -> None:
    cfg = work / "io.yaml"
    cfg.write_text(yaml.safe_dump({"name": "bench-io", "input": {"paths": [str(data_dir)]},
                                   "output": str(work / "out"), "executor": {"workers": 2},
                                   "stages": [{"exact_dedup": {}}]}))
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--quiet", "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    args = corpus_arguments().parse_args()
    shards = make_corpus(Path(args.corpus))
    mb = content_bytes(shards) / 1e6
    timings: dict[str, list[float]] = {"pyarrow read+write": [], "pipeline run (exact_dedup, 2 workers)": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for _ in range(args.reps):  # interleaved
            timings["pyarrow read+write"].append(timed(lambda: pyarrow_copy(shards, work / "copy")))
            shutil.rmtree(work / "copy")
            timings["pipeline run (exact_dedup, 2 workers)"].append(
                timed(lambda: pipeline_run(Path(args.corpus) / "data", work)))
    med = medians(timings)
    table = Table(title=f"bench_io: {mb:,.0f} MB of content, {len(shards)} shards, median of {args.reps}")
    for col in ("work", "seconds", "MB/s", "ratio vs pyarrow"):
        table.add_column(col, justify="left" if col == "work" else "right")
    base = mb / med["pyarrow read+write"]
    for name, secs in med.items():
        table.add_row(name, f"{secs:.1f}", f"{mb / secs:.1f}", f"{mb / secs / base:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
