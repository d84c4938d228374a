"""Reader steps: input records (segment 0) and a previous segment's intermediate shards."""

import codecs
import copy
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipeline.io.files import CorruptIntermediate, is_intact, write_table_atomic
from pipeline.io.inputs import WorkUnit, read_jsonl
from pipeline.io.source_tree import extension_of, is_binary
from pipeline.progress import TaskProgress
from pipeline.records import CONTENT, CodeDocument, git_blob_sha1, utf8_len
from pipeline.step import StageCounters

IDS_SCHEMA = pa.schema([("repo_name", pa.string()), ("path", pa.string()), ("blob_id", pa.string()),
                        ("content_sha256", pa.string())])
BATCH_ROWS = 1024


def _doc(row: dict, text: str) -> CodeDocument:
    return CodeDocument(text=text, id=f"{row.get('repo_name')}/{row.get('path')}", metadata=row)


class InputReader(PipelineStep):
    """Reads a task's work units; row-level faults go to `removed/read/` with `input:<fault>`.

    This step is the SPEC's `read` stage: it counts what came in and what could not be read, and
    writes the identity and content hash of every input record (`input_ids.parquet`).
    """

    type = "📖 - READER"

    def __init__(self, units: list[WorkUnit], tasks: list[list[int]], schema: pa.Schema, *,
                 content_from: str | None, max_file_bytes: int, removed_writer, ids_dir: Path,
                 progress_dir: Path | None = None):
        self.name = "read"
        super().__init__()
        self.units, self.tasks, self.schema = units, tasks, schema
        self.content_from, self.max_file_bytes = content_from, max_file_bytes
        self.removed_writer, self.ids_dir, self.progress_dir = removed_writer, Path(ids_dir), progress_dir
        self.counters = StageCounters(self)
        self.replaying = False

    def replay(self, progress_dir: Path | None = None) -> "InputReader":
        """The same reader for a later segment: yields the same readable records in the same order,
        without counting them, recording ids or writing removed/read again."""
        twin = copy.copy(self)
        twin.name, twin.replaying, twin.progress_dir = "read#replay", True, progress_dir
        PipelineStep.__init__(twin)
        twin.counters = StageCounters(twin)
        return twin

    def _records(self, rank: int) -> Iterator[tuple[str | bytes | None, CodeDocument, str | None]]:
        """(raw content, document, fault) of every record of this task, in order. Readable documents
        carry their UTF-8 size, and their SHA-256 when the text's UTF-8 bytes are what was read (the
        replay does not hash: it records no ids)."""
        for i in self.tasks[rank] if rank < len(self.tasks) else []:
            unit = self.units[i]
            for row, raw in self._source_rows(unit) if unit.kind == "source" else self._table_rows(unit):
                digest = row.pop("_sha256", None)  # hashed in the Arrow buffer, if the row came from a table
                doc, fault = self._record(row, raw)
                if unit.kind != "source":  # source progress counts bytes on disk, binaries included
                    self.progress.add(1, len(raw) if isinstance(raw, bytes) else doc.nbytes)
                if doc.text is not None and not self.replaying and (
                        isinstance(raw, str) or _is_utf8(doc.metadata.get("src_encoding"))):
                    doc.sha256 = digest or hashlib.sha256(
                        raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw).digest()
                yield raw, doc, fault

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.progress = TaskProgress(self.progress_dir, rank)
        if self.replaying:
            yield from (doc for _, doc, fault in self._records(rank) if not fault)
            self.progress.flush()
            return
        ids: list[tuple] = []
        self.removed_writer.open(rank)
        clock = time.perf_counter()
        for raw, doc, fault in self._records(rank):
            meta = doc.metadata
            if doc.sha256 is not None:  # measured from the bytes as read
                size, digest = doc.nbytes, doc.sha256
            else:
                size, digest = _measure(raw)
            ids.append((meta.get("repo_name"), meta.get("path"), meta.get("blob_id"), digest and digest.hex()))
            self.counters.add(records_in=1, bytes_in=size)
            if fault:
                self.counters.details[f"input:{fault}"] += 1
                self.counters.add(records_removed=1)
                self.removed_writer.write(doc, rank)
            else:
                self.counters.add(records_out=1, bytes_out=size)
                self.stats.time_stats.update(time.perf_counter() - clock)
                yield doc  # time spent downstream is not this step's
                clock = time.perf_counter()
        self.removed_writer.close()
        self.progress.flush()
        self.counters.flush_details()
        write_table_atomic(pa.Table.from_pylist([dict(zip(IDS_SCHEMA.names, r, strict=True)) for r in ids],
                                                schema=IDS_SCHEMA), self.ids_dir / f"{rank:05d}.parquet")

    # -- one record -----------------------------------------------------------------------------
    def _record(self, row: dict, raw: str | bytes | None) -> tuple[CodeDocument, str | None]:
        """Decode and check one record; returns the document (its UTF-8 size measured) and its fault
        (None if readable)."""
        fault = None
        if isinstance(raw, bytes) and row.get("blob_id") is None:
            row["blob_id"] = git_blob_sha1(raw)
        if raw is None and row.get("_too_large"):
            fault = "too_large"
        elif raw is None:
            fault = "null_content"
        elif isinstance(raw, bytes):
            try:
                raw = raw.decode(row.get("src_encoding") or "utf-8")
            except (UnicodeDecodeError, LookupError):
                fault, raw = "undecodable", None
        nbytes = 0
        if raw is not None and fault is None:
            if row.get("blob_id") is None:
                row["blob_id"] = git_blob_sha1(raw.encode("utf-8", "surrogatepass"))
            nbytes = utf8_len(raw)
            if nbytes > self.max_file_bytes:
                fault = "too_large"
        row.pop("_too_large", None)
        doc = _doc(row, raw if isinstance(raw, str) else None)
        if doc.text is not None:
            doc.measure(nbytes)
        if fault:
            doc.metadata["removed_by"] = "read"
            doc.metadata["removal_reason"] = f"input:{fault}"
        return doc, fault

    # -- sources ----------------------------------------------------------------------------------
    def _table_rows(self, unit: WorkUnit) -> Iterator[tuple[dict, str | bytes | None]]:
        if unit.kind == "jsonl":
            table = read_jsonl(unit.path)
            batches = table.slice(0, unit.max_rows).to_batches(BATCH_ROWS)
        else:
            with fsspec.open(unit.path, "rb") as f:
                table = pq.ParquetFile(f).read_row_group(unit.row_group)
            batches = table.slice(0, unit.max_rows).to_batches(BATCH_ROWS)
        for batch in batches:
            hashes = None
            if not self.replaying and CONTENT in batch.schema.names:
                hashes = value_sha256(batch.column(CONTENT))
            for i, row in enumerate(batch.to_pylist()):
                raw = row.pop(CONTENT, None)
                if raw is None and self.content_from and row.get("blob_id"):
                    raw = self._fetch(row)
                elif hashes is not None and raw is not None:
                    row["_sha256"] = hashes[i]
                yield row, raw

    def _fetch(self, row: dict) -> bytes | None:
        """Real Stack v2 shards carry no content: fetch the gzip blob named by blob_id."""
        url = self.content_from.format(**row)
        try:
            with fsspec.open(url, "rb", compression="gzip") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _source_rows(self, unit: WorkUnit) -> Iterator[tuple[dict, bytes | None]]:
        files = unit.files if unit.max_rows is None else unit.files[: unit.max_rows]
        for f in files:
            self.progress.add(1, f.size)  # source progress counts bytes on disk, binaries included
            row = {"repo_name": f.repo_name, "path": f.path, "src_encoding": "UTF-8", "language": None,
                   "extension": extension_of(f.path), "length_bytes": f.size,
                   "detected_licenses": list(f.detected_licenses), "license_type": f.license_type}
            try:
                with open(f.abspath, "rb") as fh:
                    head = fh.read(8192)
                    if is_binary(head):
                        self.counters.details["skipped_binary"] += 1
                        continue
                    if f.size > self.max_file_bytes:  # a record, but not read into memory
                        row["blob_id"], row["_too_large"] = _git_sha1_of_file(f.abspath), True
                        yield row, None
                        continue
                    raw = head + fh.read()
            except OSError:
                self.counters.details["skipped_unreadable"] += 1
                continue
            yield row, raw


def _measure(raw: str | bytes | None) -> tuple[int, bytes | None]:
    """(UTF-8 size, SHA-256) of content as read; (0, None) for null."""
    if raw is None:
        return 0, None
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return len(data), hashlib.sha256(data).digest()


def value_sha256(values: pa.Array) -> list[bytes | None]:
    """SHA-256 of each value of a string/binary array, hashed in place in its Arrow buffer (what
    `content_digest` gives for the value as read, without making and encoding a Python string)."""
    buffers = values.buffers()
    width = np.int64 if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type) else np.int32
    offsets = np.frombuffer(buffers[1], width)[values.offset:values.offset + len(values) + 1].tolist()
    data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
    valid = values.is_valid().to_pylist() if values.null_count else [True] * len(values)
    return [hashlib.sha256(data[offsets[i]:offsets[i + 1]]).digest() if valid[i] else None
            for i in range(len(values))]


def content_digest(raw: str | bytes | None) -> str | None:
    """The `content_sha256` of input_ids.parquet: SHA-256 of the content as read (None for null)."""
    digest = _measure(raw)[1]
    return digest and digest.hex()


def _is_utf8(encoding: str | None) -> bool:
    try:
        return codecs.lookup(encoding or "utf-8").name == "utf-8"
    except LookupError:
        return False


def _git_sha1_of_file(path: str) -> str:
    h = hashlib.sha1()
    size = Path(path).stat().st_size
    h.update(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


class IntermediateReader(PipelineStep):
    """Reads the shards a task of the previous segment wrote, in order, checking their checksums."""

    type = "📖 - READER"

    def __init__(self, folder: Path, progress_dir: Path | None = None):
        self.name = "intermediate"
        super().__init__()
        self.folder, self.progress_dir = Path(folder), progress_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        progress = TaskProgress(self.progress_dir, rank)
        for path in sorted(self.folder.glob(f"{rank:05d}_*.parquet")):
            if not is_intact(path):
                raise CorruptIntermediate(f"{path}: checksum mismatch")
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                for row in batch.to_pylist():
                    doc = _doc(row, row.pop(CONTENT))
                    if doc.text is not None:
                        doc.measure(utf8_len(doc.text))
                    progress.add(1, doc.nbytes)
                    yield doc
        progress.flush()
