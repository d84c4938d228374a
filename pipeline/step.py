"""Base classes of our stages, as datatrove pipeline steps.

A `CodeStage` is a row-level stage (filter or rewriter): it derives datatrove's `BaseFilter`, so it
works in any datatrove pipeline, and sends what it drops to an exclusion writer (our `removed/`).
A `GlobalStage` needs all records before it can decide (dedup); the runner runs it as three
datatrove phases with barriers: signatures -> clusters -> filter.
"""

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.utils.batching import batched

from pipeline.config import StageOptions
from pipeline.records import doc_bytes, get_text, reason_group

FilterResult = bool | tuple[bool, str]


class StageCounters:
    """The per-stage numbers of `stats.json`. Counted in plain Python while the task runs and written
    once into datatrove's Stats at its end (so executors save them), which keeps per-record cost low."""

    def __init__(self, step: PipelineStep):
        self.step = step
        self.counts: Counter = Counter()
        self.details: Counter = Counter()

    def add(self, **values: int) -> None:
        self.counts.update(values)

    def flush_details(self) -> None:
        """Write counts and details into the step's datatrove Stats (call once, at the end of a task)."""
        for key, value in self.counts.items():
            if value:
                self.step.stat_update(key, value=value)
        for key, value in self.details.items():
            self.step.stat_update(f"detail:{key}", value=value)
        self.counts.clear()
        self.details.clear()


def text_batches(docs: list[Document], text_field: str) -> pa.Array:
    """A batch's texts as one Arrow string array, for vectorised work (pyarrow.compute, numpy)."""
    return pa.array([get_text(d, text_field) for d in docs], type=pa.large_string())


class CodeStage(BaseFilter):
    """A row-level stage. Subclasses implement `filter(doc)` or `filter_batch(docs)`.

    A result is True (keep; the stage may have rewritten the document in place) or
    (False, reason) with a SPEC `removal_reason`. The stage counts records and bytes in and out,
    time spent, and `details` (per-rule counts by default; stages may add their own).
    """

    kind: ClassVar[str]
    Options: ClassVar[type[StageOptions]] = StageOptions
    added_columns: ClassVar[dict[str, pa.DataType]] = {}
    batch_size: ClassVar[int] = 256
    rewrites_text: ClassVar[bool] = True  # False: the stage only removes records (never changes a text)

    def __init__(self, name: str, options: StageOptions | None = None, removed_writer=None):
        self.name = name
        self.stage_name = name  # what `removed_by` says; parts of a global stage share it
        super().__init__(exclusion_writer=removed_writer, batch_size=self.batch_size)
        self.options = options if options is not None else self.Options()
        self.counters = StageCounters(self)

    @property
    def details(self) -> Counter:
        return self.counters.details

    def text(self, doc: Document) -> str:
        return get_text(doc, self.options.text_field)

    def setup(self, rank: int, world_size: int) -> None:
        """Load heavy resources once per task (models, indexes); called at the start of `run`."""

    def filter(self, doc: Document) -> FilterResult:
        raise NotImplementedError

    def filter_batch(self, batch: list[Document]) -> list[FilterResult]:
        """Override for vectorised work over a batch (see `text_batches`)."""
        return [self.filter(doc) for doc in batch]

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.setup(rank, world_size)
        writer = self.exclusion_writer
        if writer is not None:
            writer.open(rank)
        try:
            yield from self._process(data, rank)
        finally:
            self.counters.flush_details()
        if writer is not None:
            writer.close()

    def _process(self, data: DocumentsPipeline, rank: int) -> Iterator[Document]:
        for batch in batched(data, self.batch_size):
            bytes_in = [doc_bytes(d) for d in batch]
            start = time.perf_counter()
            results = self.filter_batch(batch)
            self.stats.time_stats.update(time.perf_counter() - start)
            kept = removed = bytes_out = 0
            for doc, result in zip(batch, results, strict=True):
                keep, reason = get_filter_result(result)
                if keep:
                    kept += 1
                    bytes_out += doc_bytes(doc)
                    yield doc
                else:
                    removed += 1
                    self.details[reason_group(reason)] += 1
                    doc.metadata["removed_by"] = self.stage_name
                    doc.metadata["removal_reason"] = reason
                    if self.exclusion_writer is not None:
                        self.exclusion_writer.write(doc, rank)
            self.counters.add(records_in=len(batch), bytes_in=sum(bytes_in), records_out=kept,
                              bytes_out=bytes_out, records_removed=removed)


class GlobalStage:
    """A stage deciding over all records (dedup), run by the runner as datatrove phases.

    1. `signature_step`: a pass-through step at the end of a segment that records what the
       stage needs of each document (written per task under `workdir/sig/`).
    2. `cluster_phases`: after a barrier, tasks decide (by default `partitions` tasks of
       `cluster_step`, one per partition) and write `workdir/dups/*.parquet`
       (src_rank, idx, removal_reason, kept_repo_name, kept_path).
    3. `filter_step`: at the start of the next segment, drops the decided documents.
    """

    kind: ClassVar[str]
    Options: ClassVar[type[StageOptions]] = StageOptions
    added_columns: ClassVar[dict[str, pa.DataType]] = {}
    # a folder of workdir whose Parquet files the finished run keeps as `clusters/<stage name>/`
    published: ClassVar[str | None] = None

    def __init__(self, name: str, options: StageOptions | None = None):
        self.name = name
        self.options = options if options is not None else self.Options()

    def signature_step(self, workdir: Path, schema: pa.Schema, partitions: int) -> PipelineStep:
        raise NotImplementedError

    def cluster_step(self, workdir: Path, ranks: int) -> PipelineStep:
        """The decision over one partition (rank = partition); `ranks` = tasks that wrote signatures."""
        raise NotImplementedError

    def cluster_phases(self, workdir: Path, ranks: int, partitions: int) -> list[tuple[str, PipelineStep, int]]:
        """(phase, step, tasks) run in order with barriers between them; by default one phase of
        `cluster_step` over the partitions. Stages needing more (e.g. pairs -> merge) override this.
        A phase writes checksummed files under `workdir/<phase>/` (checked on --resume); the last
        phase is `dups`, leaving `workdir/dups/*.parquet` for `filter_step`."""
        return [("dups", self.cluster_step(workdir, ranks), partitions)]

    def filter_step(self, workdir: Path, removed_writer) -> CodeStage:
        from pipeline.dedup import DuplicateFilter

        return DuplicateFilter(self.name, self.options, removed_writer=removed_writer, workdir=workdir)
