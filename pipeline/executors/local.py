"""A datatrove LocalPipelineExecutor that is safe to kill: task logs go to files, not the console,
and worker processes die with the run (so a `kill -9` never leaves a task writing behind a resume)."""

import contextlib
import ctypes
import os
import signal
from copy import deepcopy

import multiprocess
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.utils.stats import PipelineStats

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent (the forkserver, which exits with the
    run) dies. Elsewhere a no-op."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process


class QuietRanks:
    """Mixin for datatrove executors: a task's console output goes to our log file, not the user's
    terminal (datatrove logs at INFO to stderr for local rank 0)."""

    stderr_log: str

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> PipelineStats:
        with open(self.stderr_log, "a") as err, contextlib.redirect_stderr(err):
            return super()._run_for_rank(rank, local_rank=1, node_rank=node_rank)


class LocalExecutor(QuietRanks, LocalPipelineExecutor):
    """Runs the incomplete ranks of a segment with `workers` processes; skips completed ranks."""

    def __init__(self, pipeline, tasks: int, workers: int, logging_dir: str, stderr_log: str):
        super().__init__(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=logging_dir,
                         start_method="forkserver")
        self.stderr_log = stderr_log

    def run(self) -> PipelineStats:
        self._launched = True
        ranks = self.get_incomplete_ranks(range(self.tasks))
        if not ranks:
            return PipelineStats()
        if self.workers == 1:
            pipeline, stats = self.pipeline, []
            for rank in ranks:  # steps keep per-task state: each task gets fresh copies, as in datatrove
                self.pipeline = deepcopy(pipeline)
                stats.append(self._run_for_rank(rank))
            self.pipeline = pipeline
        else:
            ctx = multiprocess.get_context(self.start_method)
            # the forkserver imports these once; every later worker forks from it ready to run
            ctx.set_forkserver_preload(["pipeline.runner", "stages"])
            with ctx.Pool(min(self.workers, len(ranks)), initializer=die_with_parent) as pool:
                stats = list(pool.imap_unordered(self._run_for_rank, ranks))
        return sum(stats, start=PipelineStats())


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
