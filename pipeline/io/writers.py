"""Parquet writers: flat Stack-v2 columns with their input types, zstd, shard rotation, atomic commits."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipeline.io.files import commit, remove_outputs, tmp_name
from pipeline.records import CONTENT, doc_bytes


def doc_to_row(doc: Document) -> dict:
    row = dict(doc.metadata)
    row[CONTENT] = doc.text
    return row


class ParquetShardWriter(PipelineStep):
    """Writes documents of one task as `{rank}_{n}.parquet` shards in `folder`.

    Every file is written under a hidden temp name and renamed when complete, so a folder only
    ever shows whole shards; a re-run task first deletes what an interrupted attempt left.
    Usable as a datatrove `exclusion_writer` (it has `write(doc, rank)` and is a context manager).
    """

    type = "💽 - WRITER"

    def __init__(
        self,
        folder: str | Path,
        schema: pa.Schema,
        compression: str = "zstd",
        compression_level: int | None = 3,
        max_shard_bytes: int = 256 * 2**20,
        row_group_bytes: int = 32 * 2**20,
        checksum: bool = False,
        name: str = "writer",
        count_languages: bool = False,
    ):
        self.name = name
        super().__init__()
        self.folder = Path(folder)
        self.schema = schema
        self.compression = compression
        self.compression_level = compression_level
        self.max_shard_bytes = max_shard_bytes
        self.row_group_bytes = row_group_bytes
        self.checksum = checksum
        self.count_languages = count_languages  # the data writer counts stats.json `languages`
        self._rank: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self, rank: int) -> "ParquetShardWriter":
        self._rank = rank
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_outputs(self.folder, f"{rank:05d}")
        self._docs: list[Document] = []
        self._buffered = 0
        self._shard = 0
        self._writer: pq.ParquetWriter | None = None
        self._shard_bytes = 0
        self.records_written = 0
        self._languages: dict[str, list[int]] = {}
        return self

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif self._rank is not None:
            self._abort()

    def write(self, doc: Document, rank: int = 0, **_) -> None:
        if self._rank is None:
            self.open(rank)
        self._docs.append(doc)  # the last step to see it: nothing changes it after this
        size = doc_bytes(doc)
        self._buffered += size + 64
        if self.count_languages:
            counts = self._languages.setdefault(doc.metadata.get("language") or "unknown", [0, 0])
            counts[0] += 1
            counts[1] += size
        if self._buffered >= self.row_group_bytes:
            self._flush()

    def close(self) -> None:
        if self._rank is None:
            return
        self._flush()
        self._finish_shard()
        for language, (records, nbytes) in self._languages.items():
            self.stat_update(f"language/{language}/records", value=records)
            self.stat_update(f"language/{language}/bytes", value=nbytes)
        self._rank = None

    # -- internals ---------------------------------------------------------------------------
    def _path(self) -> Path:
        return self.folder / f"{self._rank:05d}_{self._shard:03d}.parquet"

    def _flush(self) -> None:
        if not self._docs:
            return
        docs = self._docs  # column by column: several times faster than Table.from_pylist
        table = pa.Table.from_arrays([self._column(docs, f) for f in self.schema], schema=self.schema)
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                tmp_name(self._path()), self.schema, compression=self.compression,
                compression_level=self.compression_level,
            )
        self._writer.write_table(table, row_group_size=len(docs))
        self.records_written += len(docs)
        self._shard_bytes += self._buffered
        self._docs, self._buffered = [], 0
        if self._shard_bytes >= self.max_shard_bytes:
            self._finish_shard()
            self._shard += 1

    def _column(self, docs: list[Document], field: pa.Field) -> pa.Array:
        if field.name == CONTENT:
            return pa.array([d.text for d in docs], field.type)
        return pa.array([d.metadata.get(field.name) for d in docs], field.type)

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        self._shard_bytes = 0
        commit(tmp_name(self._path()), self._path(), checksum=self.checksum)

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        tmp_name(self._path()).unlink(missing_ok=True)
        self._rank = None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.open(rank):
            for doc in data:
                self.write(doc, rank)
                yield doc
