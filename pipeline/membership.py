"""`pipeline membership` / `pipeline index`: "is my code in it?" over a run's output.

The index lives in `DATASET/index/` and is built once (on first use or by `pipeline index`):
- near-duplicates: the near-dedup stage's code shingles and MinHash signatures (stages/shingles.py,
  stages/minhash.py) of every record, and an LSH table per band (sorted band keys, searched with
  binary search on memory-mapped arrays, so a query touches a few pages, not the index);
- lines: every distinct line of the data (surrounding whitespace aside) as a 64-bit hash, with the
  number of files containing it and one of them, for the `--lines` test.
Both are computed in one pass over `content` by numba kernels that release the GIL (threads run in
parallel). The index is rebuilt when `data/` changes (file names, sizes, mtimes) or its format does.
"""

import fcntl
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numba as nb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.io.files import commit, tmp_name, write_json_atomic
from pipeline.search import dataset_columns, dataset_files, license_sql
from pipeline.verify import sql_paths
from stages.lsh import band_keys, choose_bands
from stages.minhash import EMPTY, MinHasher, estimate_jaccard
from stages.near_dedup import NearDedupOptions
from stages.shingles import _utf8_buffers, batch_shingles, fmix64, shingle_hashes

INDEX_DIR = "index"
FORMAT = 3
NEAR_DEDUP = NearDedupOptions()  # shingles and signatures exactly as the near_dedup stage's defaults make them
LOWEST_THRESHOLD = 0.5  # banded so that a pair at J = 0.5 is a candidate with >= 98% chance
BATCH_ROWS = 512
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def index_params() -> dict:
    """What a query must share with the index (a change rebuilds it)."""
    bands, rows = choose_bands(LOWEST_THRESHOLD, NEAR_DEDUP.num_perm, recall_at_threshold=0.98)
    return {"format": FORMAT, "ngram_size": NEAR_DEDUP.ngram_size, "operators": NEAR_DEDUP.operators,
            "num_perm": NEAR_DEDUP.num_perm, "seed": NEAR_DEDUP.seed, "bands": bands, "rows": rows}


@nb.njit(inline="always")
def _is_space(c) -> bool:
    return c == 32 or (9 <= c <= 13)  # ASCII whitespace, as str.strip() sees it in code


@nb.njit(cache=True, nogil=True)
def _hash_lines(data, start, end, out):
    """Hash each '\\n'-separated line of data[start:end], surrounding whitespace trimmed, into `out`
    (0 for a blank line); returns the number of lines."""
    n = 0
    i = start
    while i <= end:
        j = i
        while j < end and data[j] != 10:
            j += 1
        a, b = i, j
        while a < b and _is_space(data[a]):
            a += 1
        while b > a and _is_space(data[b - 1]):
            b -= 1
        h = np.uint64(0)
        if b > a:
            h = _FNV_OFFSET
            for k in range(a, b):
                h = (h ^ np.uint64(data[k])) * _FNV_PRIME
            h = fmix64(h) | np.uint64(1)  # never 0, which marks blank lines
        out[n] = h
        n += 1
        i = j + 1
    return n


@nb.njit(cache=True, nogil=True)
def _distinct_lines(data, offsets):
    """Per document, the sorted distinct hashes of its non-blank lines: (flat hashes, offsets)."""
    docs = offsets.shape[0] - 1
    lines = docs
    for i in range(offsets[0], offsets[docs]):
        if data[i] == 10:
            lines += 1
    out = np.empty(lines, np.uint64)
    out_offsets = np.zeros(docs + 1, np.int64)
    pos = 0
    for d in range(docs):
        n = _hash_lines(data, offsets[d], offsets[d + 1], out[pos:])
        block = out[pos:pos + n]
        block.sort()
        unique = 0
        for i in range(n):
            if block[i] != 0 and (unique == 0 or block[i] != block[unique - 1]):
                block[unique] = block[i]
                unique += 1
        pos += unique
        out_offsets[d + 1] = pos
    return out[:pos].copy(), out_offsets


def line_hashes(text: str) -> np.ndarray:
    """The hash of each line of `text` (split on '\\n'), in order; 0 for blank lines."""
    data = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
    out = np.empty(data.size + 1, np.uint64)
    return out[:_hash_lines(data, 0, data.size, out)]


def data_fingerprint(files: list[str]) -> list[list]:
    return [[Path(f).name, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]


@dataclass
class Neighbour:
    jaccard: float  # estimated from the signatures
    repo_name: str
    path: str
    license: str | None
    language: str | None


@dataclass
class LineStatus:
    number: int
    text: str
    files: int  # files of the dataset holding this line (0: not found)
    example: str | None  # "repo_name/path" of one of them
    checked: bool  # blank or shorter than the minimum: not looked up


class MembershipIndex:
    """A built index of one output directory; open it with `MembershipIndex.open(dataset)`."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = folder, meta
        load = lambda name: np.load(folder / f"{name}.npy", mmap_mode="r")  # noqa: E731
        self.signatures, self.band_keys, self.band_ids = load("signatures"), load("band_keys"), load("band_ids")
        self.line_hashes, self.line_files, self.line_first = load("line_hashes"), load("line_files"), load("line_first")
        self.hasher = MinHasher(meta["num_perm"], meta["seed"])
        self._records: pa.Table | None = None

    # -- opening and building ------------------------------------------------------------------------
    @classmethod
    def open(cls, dataset: str | Path, rebuild: bool = False, workers: int = 2, log=None) -> "MembershipIndex":
        """The dataset's index, built first if missing, stale or `rebuild` (one builder at a time)."""
        files = dataset_files(dataset)
        folder = Path(dataset) / INDEX_DIR
        folder.mkdir(exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            meta = cls.current_meta(folder, files)
            if meta is None or rebuild:
                if log:
                    log(f"building the membership index of {dataset} ({len(files)} shards)...")
                meta = build_index(folder, files, workers)
                if log:
                    log(f"index built in {meta['build_seconds']:.1f} s: {meta['records']:,} records, "
                        f"{meta['lines']:,} distinct lines")
        return cls(folder, meta)

    @staticmethod
    def current_meta(folder: Path, files: list[str]) -> dict | None:
        """The index's meta.json when it matches the data and this code; None when it must be (re)built."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        expected = {**index_params(), "data": data_fingerprint(files)}
        return meta if all(meta.get(k) == v for k, v in expected.items()) else None

    # -- queries ---------------------------------------------------------------------------------------
    @property
    def records(self) -> pa.Table:
        if self._records is None:
            self._records = pq.read_table(self.folder / "records.parquet")
        return self._records

    def near_duplicates(self, text: str, threshold: float = 0.7) -> tuple[int, list[Neighbour]]:
        """(number of shingles of `text`, records with estimated Jaccard >= threshold, best first)."""
        shingles = shingle_hashes(text, self.meta["ngram_size"], self.meta["operators"])
        if len(shingles) == 0:
            return 0, []
        signature = self.hasher.signature(shingles)
        keys = band_keys(signature[None, :], self.meta["bands"], self.meta["rows"])[0]
        found = []
        for band, key in enumerate(keys):
            row = self.band_keys[band]
            lo, hi = np.searchsorted(row, key, "left"), np.searchsorted(row, key, "right")
            if hi > lo:
                found.append(np.asarray(self.band_ids[band, lo:hi]))
        if not found:
            return len(shingles), []
        candidates = np.unique(np.concatenate(found))
        estimates = estimate_jaccard(self.signatures[candidates], signature[None, :])
        keep = estimates >= threshold
        ids, estimates = candidates[keep], estimates[keep]
        order = np.lexsort((ids, -estimates))
        rows = self.records.take(pa.array(ids[order])).to_pylist()
        return len(shingles), [Neighbour(float(j), r["repo_name"], r["path"], r["license"], r["language"])
                               for j, r in zip(estimates[order], rows, strict=True)]

    def lines(self, text: str, min_chars: int = 10) -> list[LineStatus]:
        """Each line of `text`: how many files of the dataset contain it verbatim (surrounding
        whitespace aside). Lines with fewer than `min_chars` other characters are not looked up."""
        lines = text.split("\n")
        hashes = line_hashes(text)
        pos = np.minimum(np.searchsorted(self.line_hashes, hashes), max(len(self.line_hashes) - 1, 0))
        out = []
        for i, line in enumerate(lines):
            checked = len(line.strip()) >= min_chars and len(self.line_hashes) > 0
            hit = checked and self.line_hashes[pos[i]] == hashes[i]
            files = int(self.line_files[pos[i]]) if hit else 0
            example = None
            if hit:
                r = self.records.slice(int(self.line_first[pos[i]]), 1).to_pylist()[0]
                example = f"{r['repo_name']}/{r['path']}"
            out.append(LineStatus(i + 1, line.rstrip("\r"), files, example, checked))
        return out


# -- building --------------------------------------------------------------------------------------------
def _save(folder: Path, name: str, array: np.ndarray) -> None:
    path = folder / f"{name}.npy"
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, array)
    commit(tmp, path)


def _sql_str(value) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _record_ids(files: list[str]) -> str:
    """SQL: the shards with each record's id (its position in sorted file order, then row order)."""
    offsets, start = [], 0
    for f in files:
        offsets.append(f"({start}, {_sql_str(f)})")
        start += pq.ParquetFile(f).metadata.num_rows
    return (f"(SELECT o.start + d.file_row_number AS rid, d.* FROM read_parquet({sql_paths(files)}, "
            f"filename=true, file_row_number=true, union_by_name=true) d "
            f"JOIN (VALUES {', '.join(offsets)}) o(start, filename) USING (filename))")


def index_batch(texts: pa.Array, hasher: MinHasher, params: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the index keeps of a batch of texts: MinHash signatures (texts, num_perm) and the distinct
    line hashes of each text (flat, with offsets)."""
    texts = texts.fill_null("")
    values, offsets, _ = batch_shingles(texts, params["ngram_size"], params["operators"])
    lines, line_offsets = _distinct_lines(*_utf8_buffers(texts))
    return hasher.signatures(values, offsets), lines, line_offsets


def _scan(files: list[str], sig_path: Path, params: dict, workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over `content`: every record's MinHash signature (in record-id order, written to a .npy
    memmap at `sig_path`) and every (distinct line hash, record id) pair, sorted by hash then id."""
    units, start = [], 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            units.append((f, g, start))
            start += meta.row_group(g).num_rows
    signatures = np.lib.format.open_memmap(sig_path, mode="w+", dtype=np.uint64, shape=(start, params["num_perm"]))
    hasher = MinHasher(params["num_perm"], params["seed"])

    def one(unit: tuple[str, int, int]) -> tuple[list, list]:
        f, group, row = unit
        hashes, ids = [], []
        for batch in pq.ParquetFile(f).iter_batches(BATCH_ROWS, row_groups=[group], columns=["content"]):
            signatures[row:row + batch.num_rows], lines, line_offsets = index_batch(batch.column(0), hasher, params)
            hashes.append(lines)
            ids.append(np.repeat(np.arange(row, row + batch.num_rows, dtype=np.uint32), np.diff(line_offsets)))
            row += batch.num_rows
        return hashes, ids

    with ThreadPoolExecutor(max(1, workers)) as pool:
        parts = list(pool.map(one, units))  # in unit order, so record ids ascend
    signatures.flush()
    hashes = np.concatenate([h for part in parts for h in part[0]] or [np.zeros(0, np.uint64)])
    ids = np.concatenate([i for part in parts for i in part[1]] or [np.zeros(0, np.uint32)])
    order = np.argsort(hashes, kind="stable")  # ids stay ascending within a hash
    return signatures, hashes[order], ids[order]


def build_index(folder: Path, files: list[str], workers: int = 2) -> dict:
    start = time.perf_counter()
    columns = dataset_columns(files)
    if "content" not in columns:
        raise UserError(f"{folder.parent}: the data has no content column")
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    ids = _record_ids(files)
    lang = "language" if "language" in columns else "NULL::VARCHAR"
    path = folder / "records.parquet"
    records = con.execute(f"COPY (SELECT repo_name, path, {license_sql(columns)} AS license, {lang} AS language "
                          f"FROM {ids} ORDER BY rid) TO {_sql_str(tmp_name(path))} (FORMAT parquet)").fetchone()[0]
    commit(tmp_name(path), path)

    sig_path = folder / "signatures.npy"
    params = index_params()
    signatures, hashes, ids = _scan(files, tmp_name(sig_path), params, workers)
    commit(tmp_name(sig_path), sig_path)
    scan_seconds = time.perf_counter() - start
    keys = band_keys(signatures, params["bands"], params["rows"])
    usable = np.flatnonzero(signatures[:, 0] != EMPTY) if len(signatures) else np.zeros(0, np.int64)
    keys = keys[usable]  # records without shingles (under ngram_size tokens) are nobody's near-duplicate
    order = np.argsort(keys, axis=0, kind="stable")
    _save(folder, "band_keys", np.ascontiguousarray(np.take_along_axis(keys, order, axis=0).T))
    _save(folder, "band_ids", np.ascontiguousarray(usable[order].T.astype(np.uint32)))

    first = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]]) if len(hashes) else np.zeros(0, np.int64)
    _save(folder, "line_hashes", hashes[first])
    _save(folder, "line_files", np.diff(np.r_[first, len(hashes)]).astype(np.uint32))
    _save(folder, "line_first", ids[first])
    meta = {**params, "data": data_fingerprint(files), "records": records, "with_shingles": int(len(usable)),
            "lines": int(len(first)), "scan_seconds": round(scan_seconds, 2),
            "build_seconds": round(time.perf_counter() - start, 2)}
    write_json_atomic(folder / "meta.json", meta)
    return meta
