"""Dask: each rank of a segment is one Dask task; Dask schedules, retries and reports.

`DaskPipelineExecutor` is a datatrove executor (completion markers, per-rank stats), so a
re-submitted run skips finished ranks exactly as the local executor does. Data must be on storage
every worker sees (a shared filesystem, or fsspec URLs for inputs).
"""

import contextlib
import time
from pathlib import Path

from datatrove.executor.base import DistributedEnvVars, PipelineExecutor
from datatrove.utils.stats import PipelineStats

from pipeline.errors import UserError
from pipeline.executors.local import QuietRanks

RETRIES = 2  # a task may run 1 + RETRIES times (e.g. after its worker was killed)
# For the LocalCluster we start: tasks keep nothing in Dask's memory and nobody reads the dashboard's
# profile, while sampling stacks every 10 ms and checking memory every 100 ms cost a CPU-bound task
# 5-8% of its time (the same quality_filters batches: 0.38 s of thread CPU in a plain process, 0.40-0.42
# in a default Dask worker, 0.38 with these settings); event-loop ticks every 20 ms and system samples
# every 0.5 s in the scheduler, nannies and client cost this process ~2 CPU-s per 90 s run. Its workers
# fork from a forkserver (`start_cluster_forkserver`) instead of each spawned process importing it all.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.multiprocessing-method": "forkserver",
}


def start_cluster_forkserver(stage_kinds: list[str]) -> None:
    """Before a LocalCluster is made: start the forkserver its worker processes will fork from, with
    distributed and what tasks of these stages need imported once there (as the local executor's
    pool does), while the caller goes on validating the config. `connect` then makes distributed use
    forkserver processes (LOCAL_CLUSTER_CONFIG), and it finds this server running."""
    import multiprocessing
    from multiprocessing import forkserver

    from pipeline.executors.pool import worker_modules

    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["distributed", "pipeline.executors.dask", *worker_modules(stage_kinds)])
    forkserver.ensure_running()


def connect(scheduler: str | None, workers: int, timeout: float = 10):
    """A Dask client: to an existing scheduler, or to a LocalCluster of `workers` processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError("--executor dask needs the dask extra: pip install 'codecurate[dask]'") from None

    if scheduler:
        try:
            return Client(scheduler, timeout=timeout), None
        except (OSError, TimeoutError) as e:
            raise UserError(f"--scheduler {scheduler}: Dask scheduler unreachable ({type(e).__name__})") from None
    import dask

    dask.config.set(LOCAL_CLUSTER_CONFIG)  # nannies pass it on to the worker processes they start
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    return Client(cluster), cluster


class DaskPipelineExecutor(QuietRanks, PipelineExecutor):
    """Runs the incomplete ranks of a pipeline as Dask tasks and waits for all (a barrier)."""

    def __init__(self, pipeline, tasks: int, client, logging_dir: str, stderr_log: str):
        super().__init__(pipeline, logging_dir=logging_dir)
        self.tasks = tasks
        self.stderr_log = stderr_log
        self._client = client

    @property
    def world_size(self) -> int:
        return self.tasks

    def get_distributed_env(self, node_rank: int = -1) -> DistributedEnvVars:
        return DistributedEnvVars(datatrove_node_ips="dask", datatrove_cpus_per_task="1",
                                  datatrove_mem_per_cpu="-1", datatrove_gpus_on_node="-1",
                                  datatrove_executor="DASK")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_client"] = None  # tasks never need the client
        return state

    def _attempt(self, rank: int) -> PipelineStats:
        """One try of a rank; each try leaves a marker `rank.time.worker` so retries can be counted and
        reported (and a test can tell which worker is busy with what)."""
        from distributed import get_worker

        attempts = Path(self.logging_dir.path) / "attempts"
        attempts.mkdir(parents=True, exist_ok=True)
        (attempts / f"{rank:05d}.{time.time_ns()}.{get_worker().name}").touch()
        return self._run_for_rank(rank)

    def run(self) -> PipelineStats:
        ranks = self.get_incomplete_ranks(range(self.tasks))
        if not ranks:
            return PipelineStats()
        futures = [self._client.submit(self._attempt, rank, key=f"{Path(self.logging_dir.path).name}-{rank}",
                                       retries=RETRIES, pure=False) for rank in ranks]
        try:
            stats = self._client.gather(futures)
        finally:
            for f in futures:
                with contextlib.suppress(Exception):
                    f.release()
        return sum(stats, start=PipelineStats())

    def retries(self) -> int:
        """How many task tries beyond the first this executor's ranks needed (all runs so far)."""
        attempts = Path(self.logging_dir.path) / "attempts"
        if not attempts.is_dir():
            return 0
        tries: dict[str, int] = {}
        for marker in attempts.iterdir():
            rank = marker.name.split(".")[0]
            tries[rank] = tries.get(rank, 0) + 1
        return sum(n - 1 for n in tries.values())
