"""What every dedup stage shares: per-task signature files, the duplicate filter, picking the kept one."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from pipeline.config import StageOptions
from pipeline.io.files import read_table_checked, write_table_atomic
from pipeline.records import KEEP_FIELDS, doc_bytes, duplicate_reason, keep_rank
from pipeline.step import CodeStage, StageCounters

DUPS_SCHEMA = pa.schema([
    ("src_rank", pa.int32()), ("idx", pa.int64()), ("removal_reason", pa.string()),
    ("kept_repo_name", pa.string()), ("kept_path", pa.string()),
])


def sig_path(workdir: Path, rank: int, partition: int) -> Path:
    return workdir / "sig" / f"{rank:05d}_{partition:03d}.parquet"


def dups_path(workdir: Path, partition: int) -> Path:
    return workdir / "dups" / f"{partition:03d}.parquet"


class SignatureStep(PipelineStep):
    """Pass-through step: writes, per task and partition, each document's signature and keep-rule fields.

    Subclasses implement `signature(docs)` -> (columns, partition of each doc). Documents are
    numbered in stream order (`idx`), which the next segment's filter sees identically.
    """

    type = "🫂 - DEDUP"
    batch_size = 1024

    def __init__(self, name: str, options: StageOptions, workdir: Path, schema: pa.Schema, partitions: int):
        self.name = name
        super().__init__()
        self.options = options
        self.workdir = Path(workdir)
        self.partitions = partitions
        self.keep_schema = pa.schema([schema.field(f) for f in KEEP_FIELDS if f in schema.names])
        self.counters = StageCounters(self)

    def signature(self, docs: list[Document]) -> tuple[dict[str, pa.Array], np.ndarray]:
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        tables, parts, idx = [], [], 0
        for batch in batched(data, self.batch_size):
            with self.track_time("batch"):
                columns, partition = self.signature(batch)
                keep = {f.name: pa.array([d.metadata.get(f.name) for d in batch], f.type) for f in self.keep_schema}
                tables.append(pa.table({
                    "src_rank": pa.array(np.full(len(batch), rank, np.int32)),
                    "idx": pa.array(np.arange(idx, idx + len(batch), dtype=np.int64)),
                    **keep, **columns,
                }))
                parts.append(np.asarray(partition, dtype=np.int64))
            idx += len(batch)
            self.counters.add(records_in=len(batch), bytes_in=sum(doc_bytes(d) for d in batch))
            yield from batch
        self.counters.flush_details()
        with self.track_time():
            table = pa.concat_tables(tables) if tables else None
            part = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            for p in range(self.partitions):
                chunk = table.filter(pa.array(part == p)) if table is not None else self.empty()
                write_table_atomic(chunk, sig_path(self.workdir, rank, p))

    def empty(self) -> pa.Table:
        """The signature table of a task that saw no documents."""
        columns, _ = self.signature([])
        keep = {f.name: pa.array([], f.type) for f in self.keep_schema}
        return pa.table({"src_rank": pa.array([], pa.int32()), "idx": pa.array([], pa.int64()), **keep, **columns})


def read_partition(workdir: Path, partition: int, ranks: int) -> pa.Table:
    """All tasks' signatures of one partition, each file checked against its checksum."""
    return pa.concat_tables([read_table_checked(sig_path(workdir, r, partition)) for r in range(ranks)])


def group_heads(table: pa.Table, group: np.ndarray) -> np.ndarray:
    """Given each row's group id, the row of its group's keep-rule best (the row kept)."""
    order = np.lexsort((keep_rank(table), group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    heads = np.empty(len(group), np.int64)
    heads[order] = order[np.repeat(starts, np.diff(np.r_[starts, len(g)]))]
    return heads


def duplicates_table(table: pa.Table, group: np.ndarray) -> tuple[pa.Table, int]:
    """Given each row's group id, keep the keep-rule's best row per group and list the others.

    Returns the dups table (DUPS_SCHEMA) and the number of groups with more than one member.
    """
    if table.num_rows == 0:
        return DUPS_SCHEMA.empty_table(), 0
    heads = group_heads(table, group)
    removed = np.flatnonzero(heads != np.arange(len(heads)))
    kept_of_removed = heads[removed]
    clusters = len(np.unique(kept_of_removed))
    blob = table["blob_id"].take(pa.array(kept_of_removed)).to_pylist()
    dups = pa.table({
        "src_rank": table["src_rank"].take(pa.array(removed)),
        "idx": table["idx"].take(pa.array(removed)),
        "removal_reason": pa.array([duplicate_reason(b) for b in blob], pa.string()),
        "kept_repo_name": table["repo_name"].take(pa.array(kept_of_removed)),
        "kept_path": table["path"].take(pa.array(kept_of_removed)),
    }, schema=DUPS_SCHEMA)
    return dups, clusters


class ClusterStep(PipelineStep):
    """One partition's decision: rank = partition. Subclasses implement `groups(table)`."""

    type = "🫂 - DEDUP"

    def __init__(self, name: str, options: StageOptions, workdir: Path, ranks: int):
        self.name = f"{name}#cluster"
        super().__init__()
        self.options = options
        self.workdir = Path(workdir)
        self.ranks = ranks

    def groups(self, table: pa.Table) -> np.ndarray:
        """A group id per row; rows sharing one are duplicates of each other."""
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.track_time():
            table = read_partition(self.workdir, rank, self.ranks)
            dups, clusters = duplicates_table(table, self.groups(table))
            write_table_atomic(dups, dups_path(self.workdir, rank))
        if clusters:
            self.stat_update("detail:clusters", value=clusters)
        return data or iter(())


class DuplicateFilter(CodeStage):
    """Drops the documents the cluster phase listed for this task, in the same stream order."""

    def __init__(self, name: str, options: StageOptions, removed_writer=None, workdir: Path | None = None):
        super().__init__(f"{name}#filter", options, removed_writer=removed_writer)
        self.stage_name = name
        self.workdir = Path(workdir) if workdir else None

    def setup(self, rank: int, world_size: int) -> None:
        files = sorted((self.workdir / "dups").glob("*.parquet"))
        self.decisions: dict[int, tuple[str, str, str]] = {}
        for f in files:
            t = read_table_checked(f, filters=pc.field("src_rank") == rank)
            for i, reason, repo, path in zip(*(t[c].to_pylist() for c in DUPS_SCHEMA.names[1:]), strict=True):
                self.decisions[i] = (reason, repo, path)
        self._next = 0

    def filter(self, doc: Document):
        idx, self._next = self._next, self._next + 1
        decision = self.decisions.get(idx)
        if decision is None:
            return True
        reason, doc.metadata["kept_repo_name"], doc.metadata["kept_path"] = decision
        return False, reason

