"""Streaming Parquet shards into training batches.

The record order of an epoch is fixed by the seed alone: row groups in a seeded order, that sequence
cut into `num_streams` contiguous slices (one per rank x dataloader worker, so every record is read
exactly once per epoch whatever the shard count), and each slice read through a seeded
fill-shuffle-drain buffer of `shuffle_buffer` records. A stream's position is therefore two integers
(epoch, index in the slice), and resuming from it replays nothing and skips nothing.
"""

import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.errors import UserError
from pipeline.train.packing import Example, Packer, Row, collate

SFT_COLUMNS = ("task", "messages", "split")
PRETRAIN_COLUMNS = ("input_ids", "doc_lens")


def shard_files(spec: str) -> list[str]:
    """A Parquet file, a glob of them or a directory holding them (meta.json and the like beside are fine)."""
    fs, path = fsspec.core.url_to_fs(spec)
    protocol = spec.split("://", 1)[0] + "://" if "://" in spec else ""
    if any(c in path for c in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith((".", "_"))]
    elif fs.isfile(path):
        found = [path]
    else:
        raise UserError(f"{spec}: shard path not found")
    files = sorted(protocol + p for p in found if p.endswith(".parquet"))
    if not files:
        raise UserError(f"{spec}: no .parquet shard here")
    return files


def open_parquet(path: str) -> pq.ParquetFile:
    fs, local = fsspec.core.url_to_fs(path)
    try:
        return pq.ParquetFile(local if "://" not in path else fs.open(local, "rb"))
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None


@dataclass(frozen=True)
class Unit:
    """One Parquet row group: the unit of reading and of the per-epoch order."""

    path: str
    row_group: int
    rows: int
    splits: tuple[str, str] | None = None  # SFT: min and max of the row group's `split` (Parquet statistics)

    def may_hold(self, split: str) -> bool:
        return self.splits is None or self.splits[0] <= split <= self.splits[1]


def list_units(specs: list[str], kind: str) -> list[Unit]:
    """Row groups of every shard, in a stable order; schemas are checked here, before any training."""
    units = []
    for spec in specs:
        for path in shard_files(spec):
            meta = open_parquet(path)
            check_schema(meta.schema_arrow, kind, path)
            for i in range(meta.num_row_groups):
                group = meta.metadata.row_group(i)
                split = [group.column(c) for c in range(group.num_columns) if group.column(c).path_in_schema == "split"]
                stats = split[0].statistics if split else None
                splits = (stats.min, stats.max) if stats is not None and stats.has_min_max else None
                units.append(Unit(path, i, group.num_rows, splits))
    return [u for u in units if u.rows]


def check_schema(schema: pa.Schema, kind: str, path: str) -> None:
    def fail(column: str, want: str):
        got = schema.field(column).type if column in schema.names else "missing"
        raise UserError(f"{path}: column {column!r} must be {want} for {kind} shards (found: {got})")

    if kind == "sft":
        for name in ("task", "split"):
            if name not in schema.names or not pa.types.is_string(schema.field(name).type) and \
                    not pa.types.is_large_string(schema.field(name).type):
                fail(name, "a string")
        messages = schema.field("messages").type if "messages" in schema.names else None
        if not (messages and pa.types.is_list(messages) and pa.types.is_struct(messages.value_type)
                and {"role", "content"} <= {f.name for f in messages.value_type}):
            fail("messages", "list<struct<role, content>>")
    else:
        for name in PRETRAIN_COLUMNS:
            field = schema.field(name).type if name in schema.names else None
            if not (field and pa.types.is_list(field) and pa.types.is_integer(field.value_type)):
                fail(name, "list<uint32>")


@dataclass(frozen=True, order=True)
class Position:
    """Where a stream resumes: the next record of `epoch` at `index` in this stream's slice."""

    epoch: int = 0
    index: int = 0


class ShardStream:
    """One of `num_streams` disjoint streams over the units, cycling through epochs (or one epoch)."""

    def __init__(self, units: list[Unit], columns: tuple[str, ...], stream: int, num_streams: int, seed: int,
                 buffer: int, shuffle: bool = True):
        self.units, self.columns, self.stream, self.num_streams = units, columns, stream, num_streams
        self.seed, self.buffer, self.shuffle = seed, buffer, shuffle
        self.total = sum(u.rows for u in units)
        self._cached: tuple[Unit, pa.Table] | None = None

    def epoch_order(self, epoch: int) -> list[Unit]:
        if not self.shuffle:
            return self.units
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        return [self.units[i] for i in order]

    def slice_bounds(self) -> tuple[int, int]:
        return self.stream * self.total // self.num_streams, (self.stream + 1) * self.total // self.num_streams

    def windows(self, start: Position, epochs: int | None = None) -> Iterator[tuple[Position, pa.Table]]:
        """(position of the first row, rows in emission order) from `start` on, for `epochs` epochs (None:
        forever). A window is one fill of the shuffle buffer; it is cut where `start` falls inside it."""
        lo, hi = self.slice_bounds()
        epoch, index = start.epoch, start.index
        while hi > lo and (epochs is None or epoch < start.epoch + epochs):
            order = self.epoch_order(epoch)
            offsets = np.cumsum([0] + [u.rows for u in order])
            for first in range(index - index % self.buffer, hi - lo, self.buffer):
                table = self._read(order, offsets, lo + first, min(hi, lo + first + self.buffer))
                if self.shuffle:
                    perm = np.random.default_rng([self.seed, epoch, self.stream, first]).permutation(len(table))
                    table = table.take(perm)
                skip = max(0, index - first)
                yield Position(epoch, first + skip), table.slice(skip)
            epoch, index = epoch + 1, 0

    def _read(self, order: list[Unit], offsets: np.ndarray, start: int, stop: int) -> pa.Table:
        parts = []
        i = bisect_right(offsets, start) - 1
        while start < stop:
            unit, unit_start = order[i], int(offsets[i])
            take = min(stop, unit_start + unit.rows) - start
            parts.append(self._row_group(unit).slice(start - unit_start, take))
            start += take
            i += 1
        return pa.concat_tables(parts)

    def _row_group(self, unit: Unit) -> pa.Table:
        """Windows advance through row groups, so caching the last one read means each is read once."""
        if self._cached is None or self._cached[0] != unit:
            self._cached = (unit, open_parquet(unit.path).read_row_group(unit.row_group, columns=list(self.columns)))
        return self._cached[1]


Encoder = Callable[[pa.Table], list[Example | None]]


def stream_rows(stream: ShardStream, encode: Encoder, packer: Packer, start: Position,
                epochs: int | None = None) -> Iterator[Row]:
    """Rows (packed sequences) of a stream; a Row starts with a fresh pack, so `row.start` re-makes it."""
    for first, table in stream.windows(start, epochs):
        for offset, example in enumerate(encode(table)):
            if example is not None:
                yield from packer.add(example, Position(first.epoch, first.index + offset))
    yield from packer.flush()


def batches(rows: Iterator[Row], micro_batch_size: int, seq_len: int | None, pad_id: int) -> Iterator[dict]:
    """Micro-batches of `micro_batch_size` rows. A batch is yielded once the next row exists, so its
    `position` (where the stream resumes after it) is that row's start; None after the last batch."""
    pending: list[Row] = []
    for row in rows:
        if len(pending) == micro_batch_size:
            yield _batch(pending, seq_len, pad_id, row.start)
            pending = []
        pending.append(row)
    if pending:
        yield _batch(pending, seq_len, pad_id, None)


def _batch(rows: list[Row], seq_len: int | None, pad_id: int, resume: Position | None) -> dict:
    batch = collate(rows, seq_len, pad_id)
    batch["epoch"] = rows[0].start.epoch
    batch["position"] = resume
    batch["tokens"] = sum(r.length for r in rows)
    return batch


def check_feeds(records: int, world_size: int, slots: int) -> None:
    if records < world_size * slots:
        raise UserError(f"{records} training records cannot feed {world_size} ranks x {slots} dataloader workers")


class TrainStream(IterableDataset):
    """The training batches of one rank: its dataloader workers each serve one stream (slot). `rotation`
    makes worker 0 serve the slot whose batch is due next, so a resumed run keeps the round-robin order."""

    def __init__(self, units: list[Unit], columns: tuple[str, ...], encode: Encoder, make_packer: Callable[[], Packer],
                 *, rank: int, world_size: int, num_workers: int, seed: int, buffer: int, micro_batch_size: int,
                 seq_len: int | None, pad_id: int, positions: list[Position] | None = None, rotation: int = 0):
        self.units, self.columns, self.encode, self.make_packer = units, columns, encode, make_packer
        self.rank, self.world_size, self.slots = rank, world_size, max(1, num_workers)
        self.seed, self.buffer, self.micro_batch_size = seed, buffer, micro_batch_size
        self.seq_len, self.pad_id = seq_len, pad_id
        self.positions = positions or [Position()] * self.slots
        self.rotation = rotation
        check_feeds(sum(u.rows for u in units), world_size, self.slots)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        slot = ((info.id if info else 0) + self.rotation) % self.slots
        stream = ShardStream(self.units, self.columns, self.rank * self.slots + slot, self.world_size * self.slots,
                             self.seed, self.buffer)
        packer = self.make_packer()
        for batch in batches(stream_rows(stream, self.encode, packer, self.positions[slot]), self.micro_batch_size,
                             self.seq_len, self.pad_id):
            batch["slot"] = slot
            yield batch


def _as_is(batch: dict) -> dict:
    return batch


def make_loader(dataset: TrainStream, num_workers: int) -> DataLoader:
    """Batches are made in the workers; a private generator keeps the global torch RNG untouched (exact resume)."""
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False,
                      prefetch_factor=4 if num_workers else None)


def batch_crc(batch: dict) -> int:
    """A fingerprint of a batch's tokens (to check that a resumed run sees the same batches)."""
    return zlib.crc32(batch["input_ids"].numpy().tobytes())
