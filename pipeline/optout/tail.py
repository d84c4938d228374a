"""A helper process for `optout apply`: the row-level stages after the last dedup stage, and the card.

Those stages only ever see the records that arrive there (promoted back from a dedup stage), but
setting them up costs seconds (presidio's import, the decontamination index), as does importing
matplotlib for the card. The helper does that on the second core from the start of the apply, while
the main process catalogs the release and rewrites its shards; then it runs the stages on the arrivals
and renders the card. A failure in it reaches the caller through `.get()` (nothing is swallowed).
"""

import multiprocessing
from multiprocessing.pool import AsyncResult
from pathlib import Path

from pipeline.card import write_card
from pipeline.optout.replay import run_row_stages, set_up

_stages: list = []  # in the helper: the tail stages, set up once


def _prepare(specs: list[tuple[str, str, dict]]) -> None:
    from stages import STAGES

    _stages[:] = [STAGES[kind](name, STAGES[kind].Options(**options)) for kind, name, options in specs]
    for stage in _stages:
        set_up(stage)
    import matplotlib.pyplot  # noqa: F401  (the card's plots)


def _run(rows: list[dict]) -> list[list[tuple[dict, str | None]]]:
    return run_row_stages(_stages, rows)


class TailHelper:
    """One spawned process, working through its jobs in order: prepare, run the tail, write the card."""

    def __init__(self, specs: list[tuple[str, str, dict]]):
        self.pool = multiprocessing.get_context("spawn").Pool(1)
        self.prepared = self.pool.apply_async(_prepare, (specs,))

    def run(self, rows: list[dict]) -> AsyncResult:
        return self.pool.apply_async(_run, (rows,))

    def get(self, job: AsyncResult):
        """A job's result; a failed preparation is raised first (it is the cause of the job's failure)."""
        self.prepared.get()
        return job.get()

    def write_card(self, out: Path, manifest: dict, stats: dict) -> AsyncResult:
        return self.pool.apply_async(write_card, (out, manifest, stats))

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()
