"""A datatrove LocalPipelineExecutor that is safe to kill: task logs go to files, not the console,
and worker processes die with the run (so a `kill -9` never leaves a task writing behind a resume)."""

import contextlib
import functools
from copy import deepcopy

from datatrove.executor.local import LocalPipelineExecutor
from datatrove.utils.stats import PipelineStats

from pipeline.executors.pool import WorkerPool


def _cache_loguru_lib_dirs() -> None:
    """datatrove adds three loguru handlers per task, and loguru recomputes every sysconfig path for
    each (5-6 ms): 17 ms per task, a tenth of a second per job of small tasks. The paths do not
    change within a process, so compute them once."""
    from loguru import _better_exceptions

    formatter = getattr(_better_exceptions, "ExceptionFormatter", None)
    if formatter is not None and hasattr(formatter, "_get_lib_dirs"):
        formatter._get_lib_dirs = staticmethod(functools.cache(formatter._get_lib_dirs))


_cache_loguru_lib_dirs()


class QuietRanks:
    """Mixin for datatrove executors: a task's console output goes to our log file, not the user's
    terminal (datatrove logs at INFO to stderr for local rank 0)."""

    stderr_log: str

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> PipelineStats:
        with open(self.stderr_log, "a") as err, contextlib.redirect_stderr(err):
            return super()._run_for_rank(rank, local_rank=1, node_rank=node_rank)


class LocalExecutor(QuietRanks, LocalPipelineExecutor):
    """Runs the incomplete ranks of a job on a `WorkerPool` (in this process without one); skips
    completed ranks."""

    def __init__(self, pipeline, tasks: int, pool: WorkerPool | None, logging_dir: str, stderr_log: str):
        super().__init__(pipeline, tasks=tasks, workers=pool.workers if pool else 1, logging_dir=logging_dir)
        self.stderr_log = stderr_log
        self._pool = pool

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"] = None  # tasks never need the pool
        return state

    def run(self) -> PipelineStats:
        self._launched = True
        ranks = self.get_incomplete_ranks(range(self.tasks))
        if not ranks:
            return PipelineStats()
        if self._pool is None:
            pipeline, stats = self.pipeline, []
            for rank in ranks:  # steps keep per-task state: each task gets fresh copies, as in datatrove
                self.pipeline = deepcopy(pipeline)
                stats.append(self._run_for_rank(rank))
            self.pipeline = pipeline
        else:
            stats = list(self._pool.imap_unordered(self._run_for_rank, ranks))
        return sum(stats, start=PipelineStats())

