"""Scaling of the full default pipeline (issue 8): local 1 worker, local 2 workers, Dask 2 workers.

Runs the stages of configs/stack-v2.yaml on a real-code corpus made with `pipeline ingest`, median of
N interleaved repetitions; prints wall time, MB/s, speedup over 1 worker, and the peak RSS of the
largest process of the run (sampled over the process tree).

    .venv/bin/python bench/bench_scale.py [--corpus /tmp/codecurate-corpus] [--reps 3]
"""

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml
from common import content_bytes, corpus_arguments, make_corpus, medians
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
SETUPS = {"local, 1 worker": ["--workers", "1"], "local, 2 workers": ["--workers", "2"],
          "dask, 2 workers": ["--executor", "dask", "--workers", "2"]}


def run_sampled(cmd: list[str]) -> tuple[float, int, float]:
    """Wall time of `cmd`, the peak RSS of its largest process (itself or a worker) and the CPU seconds
    of its whole process tree (last sample of each process: on a shared machine CPU time, unlike wall
    time, does not depend on what else runs)."""
    peak, cpu = 0, {}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()

    def sample():
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not stop.wait(0.2):
            try:
                for process in [parent, *parent.children(recursive=True)]:  # 1 worker: the run itself
                    with process.oneshot():
                        peak = max(peak, process.memory_info().rss)
                        times = process.cpu_times()
                        cpu[(process.pid, process.create_time())] = times.user + times.system
            except psutil.Error:
                continue

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    if proc.wait() != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    elapsed = time.perf_counter() - start
    stop.set()
    sampler.join()
    return elapsed, peak, sum(cpu.values())


def main() -> None:
    args = corpus_arguments().parse_args()
    os.environ.setdefault("CODECURATE_BENCHMARK_DIR", str(REPO.parent / "shared" / "benchmarks"))  # mbpp
    shards = make_corpus(Path(args.corpus))
    mb = content_bytes(shards) / 1e6
    base = yaml.safe_load((REPO / "configs" / "stack-v2.yaml").read_text())
    times: dict[str, list[float]] = {k: [] for k in SETUPS}
    rss: dict[str, list[float]] = {k: [] for k in SETUPS}
    cpu: dict[str, list[float]] = {k: [] for k in SETUPS}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "scale.yaml"
        stages = [{k: _absolute(v) for k, v in s.items()} for s in base["stages"]]
        cfg.write_text(yaml.safe_dump({**base, "input": {"paths": [str(Path(args.corpus) / "data")]},
                                       "output": str(Path(tmp) / "out"), "stages": stages}))
        for _ in range(args.reps):
            for name, extra in SETUPS.items():
                cmd = [sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--quiet", "--overwrite", *extra]
                elapsed, peak, cpu_seconds = run_sampled(cmd)
                cpu[name].append(cpu_seconds)
                times[name].append(elapsed)
                rss[name].append(peak / 2**20)
    med, med_rss, med_cpu = medians(times), medians(rss), medians(cpu)
    table = Table(title=f"bench_scale: {mb:,.0f} MB of content, {len(base['stages'])} stages, median of {args.reps}")
    for col in ("setup", "wall s", "MB/s", "speedup vs 1 worker", "CPU s", "CPU vs 1 worker",
                "peak RSS per process (MB)"):
        table.add_column(col, justify="left" if col == "setup" else "right")
    one = med["local, 1 worker"]
    for name in SETUPS:
        table.add_row(name, f"{med[name]:.1f}", f"{mb / med[name]:.1f}", f"{one / med[name]:.2f}x",
                      f"{med_cpu[name]:.0f}", f"{med_cpu[name] / med_cpu['local, 1 worker']:.2f}x",
                      f"{med_rss[name]:,.0f}")
    Console().print(table)
    dask, local = med["dask, 2 workers"], med["local, 2 workers"]
    print(f"dask 2 workers vs local 2 workers: {local / dask:.2f}x (1.00 = same speed)")


def _absolute(options):
    """Stage options naming files relative to configs/ (e.g. the opt-out registry) must still resolve."""
    if not isinstance(options, dict):
        return options
    out = dict(options)
    for key, value in options.items():
        if isinstance(value, str) and (REPO / "configs" / value).exists():
            out[key] = str(REPO / "configs" / value)
    return out


if __name__ == "__main__":
    main()
