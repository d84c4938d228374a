"""Atomic, checksummed files: what makes a killed run resumable without trusting half-written data."""

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CHECKSUM_SUFFIX = ".sha256"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tmp_name(path: Path) -> Path:
    """Temp files are hidden (leading dot) so globs over a folder never see them."""
    return path.with_name(f".{path.name}.tmp")


def commit(tmp: Path, final: Path, checksum: bool = False) -> None:
    """Rename the finished `tmp` to `final`; optionally write a checksum beside it first.

    A rename is atomic, so a killed process never leaves a half file under a final name. (No fsync:
    we guard against process crashes; after an OS crash the checksums catch torn intermediates.)"""
    if checksum:
        digest = file_sha256(tmp)
        side = final.with_name(final.name + CHECKSUM_SUFFIX)
        side_tmp = tmp_name(side)
        side_tmp.write_text(digest)
        os.replace(side_tmp, side)
    os.replace(tmp, final)


def write_json_atomic(path: str | Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    tmp.write_text(json.dumps(data, indent=2, default=str))
    commit(tmp, path)


def write_table_atomic(table: pa.Table, path: str | Path, checksum: bool = True, **kwargs) -> None:
    """Write a whole Parquet file atomically (used for small intermediates: signatures, decisions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    pq.write_table(table, tmp, **kwargs)
    commit(tmp, path, checksum=checksum)


def is_intact(path: str | Path) -> bool:
    """True when `path` exists and matches the checksum written beside it."""
    path = Path(path)
    side = path.with_name(path.name + CHECKSUM_SUFFIX)
    if not path.is_file() or not side.is_file():
        return False
    return file_sha256(path) == side.read_text().strip()


class CorruptIntermediate(Exception):
    """An intermediate under .work/ failed its checksum."""


def read_table_checked(path: str | Path, **kwargs) -> pa.Table:
    if not is_intact(path):
        raise CorruptIntermediate(f"{path}: checksum mismatch or missing")
    return pq.read_table(path, **kwargs)


def remove_outputs(folder: Path, prefix: str) -> None:
    """Delete a task's earlier outputs (and temp files) so a re-run task starts clean."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(prefix + "_") or p.name.startswith(f".{prefix}_"):
            p.unlink(missing_ok=True)
