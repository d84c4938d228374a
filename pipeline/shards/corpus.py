"""Reading a clean corpus (a codecurate output or any Stack-v2-like Parquet/JSONL) in record batches."""

from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.io.inputs import expand_path, read_jsonl

REQUIRED = ("repo_name", "path", "content")
BATCH_ROWS = 1024


def corpus_files(paths: list[str]) -> list[tuple[str, str]]:
    """(kind, path) of every Parquet/JSONL file under `paths`; a codecurate output directory means its data/."""
    files: list[tuple[str, str]] = []
    for spec in paths:
        local = Path(spec)
        if (local / "manifest.json").is_file() and (local / "data").is_dir():
            spec = str(local / "data")
        for kind, path in expand_path(spec):
            if kind == "source":
                raise UserError(f"{spec}: not a Parquet/JSONL corpus (run `pipeline ingest` or `pipeline run` first)")
            files.append((kind, path))
    return files


def _selected(batch: pa.RecordBatch, columns: list[str]) -> pa.RecordBatch:
    """`batch` restricted to `columns`; optional columns it lacks come as nulls."""
    arrays = [batch.column(c) if c in batch.schema.names else pa.nulls(batch.num_rows, pa.string()) for c in columns]
    return pa.RecordBatch.from_arrays(arrays, names=columns)


def _check(schema: pa.Schema, path: str, columns: list[str]) -> None:
    for name in REQUIRED:
        if name in columns and name not in schema.names:
            raise UserError(f"{path}: missing required column {name!r}")


def read_columns(kind: str, path: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """One file's record batches restricted to `columns`, streamed."""
    if kind == "jsonl":
        table = read_jsonl(path)
        _check(table.schema, path, columns)
        for batch in table.to_batches(BATCH_ROWS):
            yield _selected(batch, columns)
        return
    try:
        with fsspec.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            _check(pf.schema_arrow, path, columns)
            present = [c for c in columns if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=present):
                yield _selected(batch, columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def iter_corpus(paths: list[str], columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The corpus's records in file order, as batches of the given columns."""
    files = corpus_files(paths)
    if not files:
        raise UserError(f"{', '.join(paths)}: no Parquet/JSONL files")
    for kind, path in files:
        yield from read_columns(kind, path, columns)
