"""Pre-training shards: documents (file- or repository-level) -> FIM -> tokens -> packed fixed-length sequences.

Each document ends with EOS; documents are concatenated and cut into `seq_len` sequences, and each
sequence lists the lengths of the document parts it holds (`doc_lens`) so a trainer can reset
attention and positions at document boundaries. Only the very last sequence is padded (`pad_id`).
"""

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from pipeline.config import Strict
from pipeline.errors import UserError
from pipeline.io.files import commit, tmp_name, write_json_atomic
from pipeline.shards.corpus import corpus_files, iter_corpus
from pipeline.shards.fim import FimOptions, FimTokens, Piece, fim_pieces
from pipeline.shards.seeded import unit_interval
from pipeline.shards.settings import PATH, PATH_OR_NAME
from pipeline.shards.tokenizer import (
    FILE_SEP,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    REPO_NAME,
    CodeTokenizer,
    copy_tokenizer,
)
from pipeline.verify import sql_paths

SHARD_SCHEMA = pa.schema([("input_ids", pa.list_(pa.uint32())), ("doc_lens", pa.list_(pa.uint32()))])


class PretrainConfig(Strict):
    name: str = "pretrain"
    input: list[str] = Field(min_length=1, json_schema_extra=PATH)  # codecurate outputs, Parquet/JSONL, globs
    output: str = Field(json_schema_extra=PATH)
    tokenizer: str = Field(json_schema_extra=PATH_OR_NAME)  # tokenizer.json, a tokenizer directory or a Hub name
    seq_len: int = Field(default=2048, ge=8)
    documents: Literal["file", "repo"] = "repo"
    repo_metadata_rate: float = Field(default=0.5, ge=0, le=1)  # repo docs that carry repo name and paths
    fim: FimOptions = FimOptions()
    seed: int = 0
    batch_chars: int = Field(default=4_000_000, gt=0)  # text handed to the tokenizer per call
    row_group_sequences: int = Field(default=256, gt=0)
    shard_sequences: int = Field(default=8192, gt=0)


class DocumentBuilder:
    """Records -> documents as pieces (text and special-token ids), FIM applied per file."""

    def __init__(self, config: PretrainConfig, tokenizer: CodeTokenizer):
        self.config = config
        self.eos = tokenizer.eos_id
        self.counts: Counter = Counter()
        fim = self._ids(tokenizer, [FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX], config.fim.rate > 0, "fim.rate > 0")
        self.fim_tokens = FimTokens(*fim) if fim else None
        self.repo_tokens = self._ids(tokenizer, [REPO_NAME, FILE_SEP], config.documents == "repo", "documents: repo")

    @staticmethod
    def _ids(tokenizer: CodeTokenizer, tokens: list[str], needed: bool, why: str) -> list[int] | None:
        ids = [tokenizer.token_id(t) for t in tokens]
        if needed and None in ids:
            missing = [t for t, i in zip(tokens, ids, strict=True) if i is None]
            raise UserError(f"{tokenizer.name_or_path}: {why} needs the special tokens {missing}")
        return ids if needed else None

    def file_pieces(self, content: str, key: str) -> list[Piece]:
        self.counts["files"] += 1
        if self.fim_tokens is None:
            self.counts["fim:plain"] += 1
            return [content]
        pieces, mode = fim_pieces(content, key, self.config.seed, self.config.fim, self.fim_tokens)
        self.counts[f"fim:{mode}"] += 1
        return pieces

    def file_document(self, repo: str, path: str, content: str) -> list[Piece]:
        self.counts["documents"] += 1
        return self.file_pieces(content, f"{repo}/{path}") + [self.eos]

    def repo_document(self, repo: str, files: list[tuple[str, str]]) -> list[Piece]:
        """StarCoder2: <repo_name>name<file_sep>path\\ncode<file_sep>... in a seeded file order; without
        metadata: <file_sep>code<file_sep>code..."""
        self.counts["documents"] += 1
        repo_name_id, file_sep = self.repo_tokens
        with_meta = unit_interval(self.config.seed, "meta", repo) < self.config.repo_metadata_rate
        self.counts["repo_docs_with_metadata"] += with_meta
        pieces: list[Piece] = [repo_name_id, repo] if with_meta else []
        order = sorted(files, key=lambda f: (unit_interval(self.config.seed, "order", repo, f[0]), f[0]))
        for path, content in order:
            pieces += [file_sep, path + "\n"] if with_meta else [file_sep]
            pieces += self.file_pieces(content, f"{repo}/{path}")
        return pieces + [self.eos]


def assemble(docs: list[list[Piece]], encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Interleave the encoded text pieces with the special-token ids, in order."""
    pieces = iter(encoded)
    flat: list[int] = []
    lengths = np.empty(len(docs), np.int64)
    for i, doc in enumerate(docs):
        start = len(flat)
        for piece in doc:
            if isinstance(piece, int):
                flat.append(piece)
            elif piece:
                flat.extend(next(pieces))
        lengths[i] = len(flat) - start
    return np.array(flat, dtype=np.uint32), lengths


class Packer:
    """Concatenates documents and cuts `seq_len` sequences; a document may continue into the next one."""

    def __init__(self, seq_len: int, pad_id: int):
        self.seq_len, self.pad_id = seq_len, pad_id
        self.tokens = np.zeros(0, np.uint32)
        self.parts = np.zeros(0, np.int64)  # lengths of the document parts held in `tokens`

    def add(self, tokens: np.ndarray, doc_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The full sequences now available: ids [n, seq_len], the doc_lens values, their offsets [n + 1]."""
        stream = np.concatenate([self.tokens, tokens])
        parts = np.concatenate([self.parts, doc_lens])
        n = len(stream) // self.seq_len
        cuts = np.union1d(np.cumsum(parts), np.arange(1, n + 1) * self.seq_len)
        lengths = np.diff(cuts, prepend=0)
        sequence = (cuts - lengths) // self.seq_len
        full = sequence < n
        self.tokens, self.parts = stream[n * self.seq_len:], lengths[~full]
        offsets = np.searchsorted(sequence[full], np.arange(n + 1))
        return stream[: n * self.seq_len].reshape(n, self.seq_len), lengths[full], offsets

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last, partial sequence padded with `pad_id` (its doc_lens do not count the padding)."""
        if len(self.tokens) == 0:
            return np.zeros((0, self.seq_len), np.uint32), np.zeros(0, np.int64), np.zeros(1, np.int64)
        ids = np.full((1, self.seq_len), self.pad_id, np.uint32)
        ids[0, : len(self.tokens)] = self.tokens
        parts, self.tokens, self.parts = self.parts, np.zeros(0, np.uint32), np.zeros(0, np.int64)
        return ids, parts, np.array([0, len(parts)])


def sequences_table(ids: np.ndarray, doc_lens: np.ndarray, offsets: np.ndarray) -> pa.Table:
    n, seq_len = ids.shape
    input_ids = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * seq_len),
                                         pa.array(ids.reshape(-1), pa.uint32()))
    lens = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(doc_lens, pa.uint32()))
    return pa.Table.from_arrays([input_ids, lens], schema=SHARD_SCHEMA)


class ShardWriter:
    """Writes sequences as `{n:05d}.parquet` shards of `shard_sequences` rows in row groups of
    `row_group_sequences` (streaming readers fetch one row group at a time); atomic renames."""

    def __init__(self, folder: Path, row_group_sequences: int, shard_sequences: int):
        self.folder, self.row_group, self.per_shard = folder, row_group_sequences, shard_sequences
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0  # in the open shard
        self.shards: list[dict] = []

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self._next_group():
            self._flush(self._next_group())

    def close(self) -> list[dict]:
        if self.pending_rows:
            self._flush(self.pending_rows)
        self._finish()
        return self.shards

    def _next_group(self) -> int:
        return min(self.row_group, self.per_shard - self.rows)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.pending)
        if self.writer is None:
            self.path = self.folder / f"{len(self.shards):05d}.parquet"
            self.writer = pq.ParquetWriter(tmp_name(self.path), SHARD_SCHEMA, compression="zstd")
        self.writer.write_table(table.slice(0, rows), row_group_size=rows)
        self.rows += rows
        rest = table.slice(rows)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        if self.rows >= self.per_shard:
            self._finish()

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            commit(tmp_name(self.path), self.path)
            self.shards.append({"file": self.path.name, "sequences": self.rows})
            self.writer, self.rows = None, 0


def file_records(config: PretrainConfig) -> Iterator[tuple[str, str, str]]:
    for batch in iter_corpus(config.input, ["repo_name", "path", "content"]):
        for repo, path, content in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            if content:
                yield repo, path, content


def repo_records(config: PretrainConfig) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(repo, [(path, content)]) grouped with DuckDB, which sorts out of core."""
    files = corpus_files(config.input)
    if not files or any(kind != "parquet" for kind, _ in files):
        raise UserError(f"{', '.join(config.input)}: repository-level documents need Parquet input")
    con = duckdb.connect()
    spill = str(Path(config.output) / ".duckdb_tmp").replace("'", "''")
    con.execute(f"SET temp_directory = '{spill}'")
    reader = con.sql(
        f"SELECT repo_name, path, content FROM read_parquet({sql_paths([p for _, p in files])}, union_by_name=true) "
        "WHERE content IS NOT NULL AND content <> '' ORDER BY repo_name, path").to_arrow_reader(4096)
    repo, group = None, []
    for batch in reader:
        for name, path, content in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            if name != repo and group:
                yield repo, group
                group = []
            repo = name
            group.append((path, content))
    if group:
        yield repo, group


def document_batches(config: PretrainConfig, builder: DocumentBuilder) -> Iterator[list[list[Piece]]]:
    """Documents in batches of about `batch_chars` of text."""
    batch, chars = [], 0
    if config.documents == "file":
        items = ((builder.file_document(*rec), len(rec[2])) for rec in file_records(config))
    else:
        items = ((builder.repo_document(repo, files), sum(len(c) for _, c in files))
                 for repo, files in repo_records(config))
    for doc, size in items:
        batch.append(doc)
        chars += size
        if chars >= config.batch_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def build_shards(config: PretrainConfig, tokenizer: CodeTokenizer) -> dict:
    """Write the shards and meta.json into `config.output`; returns meta. While the tokenizer encodes one
    batch (in Rust, without the GIL) the next one is read and formatted and the previous one packed."""
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    builder = DocumentBuilder(config, tokenizer)
    packer = Packer(config.seq_len, tokenizer.pad_id)
    writer = ShardWriter(out, config.row_group_sequences, config.shard_sequences)
    tokens = sequences = 0

    def pack(docs: list[list[Piece]], encoded: list[list[int]]) -> None:
        nonlocal tokens, sequences
        flat, lengths = assemble(docs, encoded)
        tokens += len(flat)
        ids, doc_lens, offsets = packer.add(flat, lengths)
        sequences += len(ids)
        if len(ids):
            writer.write(sequences_table(ids, doc_lens, offsets))

    with ThreadPoolExecutor(max_workers=1) as pool:
        running = None  # (docs, future) of the batch being encoded
        for docs in document_batches(config, builder):  # read and formatted while `running` encodes
            done = (running[0], running[1].result()) if running else None
            running = (docs, pool.submit(tokenizer.encode, [p for d in docs for p in d if isinstance(p, str) and p]))
            if done:
                pack(*done)
        if running:
            pack(running[0], running[1].result())
    ids, doc_lens, offsets = packer.finish()
    if len(ids):
        writer.write(sequences_table(ids, doc_lens, offsets))
        sequences += 1
    shards = writer.close()
    shutil.rmtree(out / ".duckdb_tmp", ignore_errors=True)
    meta = {
        "format": "codecurate pre-training shards",
        "columns": {"input_ids": "list<uint32>, exactly seq_len tokens",
                    "doc_lens": "list<uint32>, lengths of the document parts in the sequence, in order; "
                                "each document ends with eos_id; only the last sequence ends with padding"},
        "tokenizer": copy_tokenizer(tokenizer.name_or_path, out / "tokenizer"),
        "tokenizer_source": tokenizer.name_or_path, "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id, "seq_len": config.seq_len,
        "documents": config.documents,
        "repo_metadata_rate": config.repo_metadata_rate if config.documents == "repo" else None,
        "fim": {"rate": config.fim.rate, "spm_rate": config.fim.spm_rate, "level": "character", "unit": "file",
                "spm_variant": "starcoder", "prefix_id": tokenizer.token_id(FIM_PREFIX),
                "middle_id": tokenizer.token_id(FIM_MIDDLE), "suffix_id": tokenizer.token_id(FIM_SUFFIX)},
        "seed": config.seed, "input": config.input,
        "totals": {"sequences": sequences, "tokens": tokens, "pad_tokens": sequences * config.seq_len - tokens,
                   **dict(sorted(builder.counts.items()))},
        "shards": shards, "seconds": round(time.monotonic() - start, 3),
    }
    write_json_atomic(out / "meta.json", meta)
    return meta
