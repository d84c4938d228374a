"""A helper process for `optout apply`: the row-level stages after the last dedup stage, and the card.

Those stages only ever see the records that arrive there (promoted back from a dedup stage), but
setting them up costs seconds (presidio's import, the decontamination index), as does importing
matplotlib for the card. A forked process does that on the second core from the start of the apply,
while the main process catalogs the release and rewrites its shards; then it runs the stages on the
arrivals and draws the card's plots of `stats.json` while the main process writes the rest of the card.
When nothing arrives it is stopped at once (its work would only compete with the main process) and the
whole card is written in the main process. A failure in it reaches the
caller through the calls that wait for its results (nothing is swallowed).
"""

import multiprocessing
from collections.abc import Callable
from pathlib import Path

from pipeline.card import plot_stats, write_card
from pipeline.optout.replay import run_row_stages, set_up

_stages: list = []  # in the helper: the tail stages, set up once

Results = list[list[tuple[dict, str | None]]]


def _prepare(specs: list[tuple[str, str, dict]]) -> None:
    import matplotlib.pyplot  # noqa: F401  (the card's plots)

    from stages import STAGES

    _stages[:] = [STAGES[kind](name, STAGES[kind].Options(**options)) for kind, name, options in specs]
    for stage in _stages:
        set_up(stage)


def _run(rows: list[dict]) -> Results:
    return run_row_stages(_stages, rows)


class TailHelper:
    """One forked process working through its jobs in order: prepare, run the stages, draw the stats plots."""

    def __init__(self):
        """Forked first thing, before the apply starts threads or opens DuckDB: the child has the
        parent's imports for free (a spawned one spent ~0.7 s of CPU importing them again)."""
        self.pool = multiprocessing.get_context("fork").Pool(1)

    def prepare(self, specs: list[tuple[str, str, dict]]) -> None:
        self.stages = len(specs)
        self.prepared = self.pool.apply_async(_prepare, (specs,))

    def start_stages(self, rows: list[dict]) -> Callable[[], Results]:
        """Start the tail stages on `rows`; returns the call that waits for their results
        (`run_row_stages`). With no rows the helper is stopped."""
        if not rows:
            self.close()
            return lambda: [[] for _ in range(self.stages)]
        job = self.pool.apply_async(_run, (rows,))

        def results() -> Results:
            self.prepared.get()  # a failed setup first: it is the cause of the job's failure
            return job.get()

        return results

    def start_card(self, out: Path, manifest: dict, stats: dict) -> Callable[[], None]:
        """Start writing the data card; returns the call that finishes it. The helper draws the plots
        of `stats` while this process reads the new release's facts and draws the rest (everything
        here once the helper is stopped)."""
        if self.pool is None:
            write_card(out, manifest, stats)
            return lambda: None
        plots = self.pool.apply_async(plot_stats, (out, stats))

        def finish() -> None:
            write_card(out, manifest, stats, with_stats_plots=False)
            plots.get()

        return finish

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
