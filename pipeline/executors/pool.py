"""The worker processes of a local run. Light on imports: the CLI starts the forkserver before it
imports the runner, so both import at the same time."""

import ctypes
import os
import signal

import multiprocess
from multiprocess import forkserver

PR_SET_PDEATHSIG = 1
# what every task needs, imported once in the forkserver (plus the modules of the configured stages)
WORKER_MODULES = ["pipeline.executors.local", "pipeline.io.readers", "pipeline.io.writers", "pipeline.dedup"]


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent (the forkserver, which exits with the
    run) dies. Elsewhere a no-op."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process


def worker_modules(stage_kinds: list[str]) -> list[str]:
    """What tasks of these stages import (unknown kinds are left to the config check)."""
    from stages import MODULES, module_of

    return [*WORKER_MODULES, *dict.fromkeys(module_of(k) for k in stage_kinds if k in MODULES)]


def start_forkserver(stage_kinds: list[str]) -> None:
    """Start the forkserver (once per process): it imports what tasks of these stages need while the
    caller goes on. Workers forked from it start ready to run."""
    multiprocess.get_context("forkserver").set_forkserver_preload(worker_modules(stage_kinds))
    forkserver.ensure_running()


class WorkerPool:
    """The worker processes of one run, shared by all its jobs (segments and cluster phases).

    Workers stay for the whole run, so what a stage caches per process (models, grammars) is
    loaded once per worker, not once per job; they start at the first job that needs them.
    """

    def __init__(self, workers: int, stage_kinds: list[str]):
        self.workers = workers
        start_forkserver(stage_kinds)
        self._pool = None

    def imap_unordered(self, func, items):
        if self._pool is None:
            self._pool = multiprocess.get_context("forkserver").Pool(self.workers, initializer=die_with_parent)
        return self._pool.imap_unordered(func, items)

    def close(self) -> None:
        """Stops the workers (also after an error or a signal: never leaves a task running)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
