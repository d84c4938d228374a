"""Execute completions against the tests, in parallel, and score them with the unbiased pass@k."""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.eval.problems import Problem
from pipeline.eval.sandbox import Outcome, Sandbox
from pipeline.io.files import write_json_atomic


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of the n samples include a correct one (Chen et al. 2021),
    as a product so that large n does not overflow."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def execute(problems: list[Problem], completions: list[list[str]], sandbox: Sandbox,
            workers: int) -> list[list[Outcome]]:
    """Every completion of every problem in its own sandboxed process, `workers` at a time (the threads
    only wait on the processes)."""
    jobs = [(i, problem.program(c)) for i, (problem, samples) in enumerate(zip(problems, completions, strict=True))
            for c in samples]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda job: sandbox.run(job[1]), jobs))
    outcomes: list[list[Outcome]] = [[] for _ in problems]
    for (i, _), outcome in zip(jobs, results, strict=True):
        outcomes[i].append(outcome)
    return outcomes


def score(problems: list[Problem], completions: list[list[str]], outcomes: list[list[Outcome]],
          ks: list[int]) -> tuple[list[dict], dict[str, float]]:
    """Per-problem records and the benchmark's pass@k (mean over problems) for each k <= n."""
    records = []
    for problem, samples, results in zip(problems, completions, outcomes, strict=True):
        n, c = len(samples), sum(o.passed for o in results)
        records.append({"task_id": problem.task_id, "n": n, "correct": c,
                        **{f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n},
                        "samples": [{"completion": s, "passed": o.passed, "result": o.result}
                                    for s, o in zip(samples, results, strict=True)]})
    n = min((r["n"] for r in records), default=0)
    totals = {f"pass@{k}": sum(r[f"pass@{k}"] for r in records) / len(records) for k in ks if k <= n and records}
    return records, totals


def write_results(output: Path, records: list[dict], summary: dict) -> None:
    """results.jsonl (one line per problem, with every sample) and summary.json."""
    output.mkdir(parents=True, exist_ok=True)
    tmp = output / f".results.jsonl.{os.getpid()}"
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, output / "results.jsonl")
    write_json_atomic(output / "summary.json", summary)


class Timer:
    def __init__(self):
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 2)
