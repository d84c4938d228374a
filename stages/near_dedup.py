"""near_dedup: MinHash LSH near-duplicate removal for code, per file or per repository.

Phases (each a datatrove run; every file they write is checksummed and checked on --resume):

    sig     per input task: code shingles -> MinHash signature, stored shingle set (for exact checks)
            and, at file level, band rows partitioned by band-key range          (workdir/sig/)
    repos   repo level only: per repository partition, a repository's signature is the element-wise
            minimum of its files' (= the signature of the union of their shingles), its shingle set the
            union, its keep-rule fields aggregated                                 (workdir/repos/)
    pairs   per band-key range: buckets -> candidate pairs, read in key sub-ranges of bounded size
    attach  per unit partition: each pair gets its first unit's signature and shingles
    verify  per unit partition of the second unit: estimate, then exact Jaccard near the threshold;
            accepted pairs are kept (edges), with their units, and reduced to a forest (node -> smallest
            node of its local component)
    components  one task: the forests merged into connected components (node ids only)
    route   per verify partition: its edges and units, with their component, sent to the dups partition
            of the component
    dups    per component partition: clusters inside the components whose members are each similar
            to most of their cluster's core (a chain A~B~C with A !~ C is no cluster); the keep rule's
            best unit of each cluster stays, the others (at repo level: all their files) go to `removed/`;
            the components' units (identity, keep-rule fields, signature, shingle set, component id) are
            published to `clusters/<stage>/` of the output, so that `optout apply` can cluster a component
            again without the texts (`recluster`)

No phase holds all pairs of the corpus: pairs, attach, verify, route and dups see one partition;
`components` sees only the ids of the units that have a verified near-duplicate. Every decision
depends on the content, never on the number of tasks or workers (buckets are ordered by signature and
identity hashes, clusters by the keep rule).
"""

import hashlib
from math import ceil, sqrt
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from pydantic import Field, model_validator

from pipeline.config import StageOptions
from pipeline.dedup import DUPS_SCHEMA, SignatureStep, duplicates_table, dups_path, group_heads
from pipeline.io.files import CorruptIntermediate, is_intact, read_table_checked, write_table_atomic
from pipeline.records import KEEP_FIELDS, LICENSE_RANK, duplicate_repo_reason, keep_rank
from pipeline.step import GlobalStage, text_batches
from stages.lsh import (
    band_keys,
    bucket_pairs,
    choose_bands,
    connected_components,
    key_partition,
    key_range,
    signature_hashes,
    sorted_unique,
    spread,
    star_clusters,
    unique_pairs,
)
from stages.minhash import MinHasher, estimate_jaccard, pair_estimates, pair_jaccard, sort_sets
from stages.shingles import batch_shingles, shingle_hashes

__all__ = ["MinHasher", "NearDedup", "NearDedupOptions", "estimate_jaccard", "shingle_hashes"]

RANK_BITS = 40  # a file's unit id is (src_rank << RANK_BITS) | idx
BUCKET_WINDOW = 32  # a distinct signature is compared with the next 32 of its bucket
CHUNK_ROWS = 4_000_000  # band rows a pairs task holds at once
INPUTS_PER_PARTITION = 4  # signature tasks per cluster partition: small runs cluster in one in-process task
BAND_ROW_GROUP = 65_536
BAND_SCHEMA = pa.schema([("key", pa.uint64()), ("sig", pa.uint64()), ("order", pa.uint64()), ("uid", pa.int64())])
PAIR_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("same", pa.bool_())])
FOREST_SCHEMA = pa.schema([("uid", pa.int64()), ("root", pa.int64())])
UNITS_DIR = "units"  # under dups/: the components' units, published as clusters/<stage>/
OTHER_LICENSE = "other"  # an aggregated repository license that ranks after permissive and no_license


class NearDedupOptions(StageOptions):
    level: Literal["file", "repo"] = "file"
    threshold: float = Field(default=0.7, gt=0, le=1)  # Jaccard similarity of shingle sets
    ngram_size: int = Field(default=5, ge=1)  # tokens per shingle
    num_perm: int = Field(default=256, ge=16, le=4096)  # MinHash values per signature
    bands: int | None = Field(default=None, ge=1)  # LSH banding; default: chosen from threshold
    rows: int | None = Field(default=None, ge=1)
    seed: int = 42
    operators: bool = False  # operator/punctuation characters are tokens too
    exact_max_shingles: int = Field(default=1_000_000, ge=0)  # larger units: decided by the estimate

    @model_validator(mode="after")
    def _banding(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def banding(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return choose_bands(self.threshold, self.num_perm)


# -- stored units -----------------------------------------------------------------------------------
def identity_hash(*parts: str | None) -> int:
    """A 64-bit hash of a record's or repository's identity (stable across processes and layouts)."""
    digest = hashlib.blake2b("\0".join(p or "" for p in parts).encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def signature_column(signatures: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(signatures.ravel(), pa.uint64()), signatures.shape[1])


def signature_matrix(column: pa.Array | pa.ChunkedArray, num_perm: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy().reshape(-1, num_perm)


def shingle_column(values: np.ndarray, offsets: np.ndarray, cap: int) -> pa.Array:
    """Stored shingle sets: the top 32 bits of each hash (exact Jaccard on them differs from the 64-bit
    one by ~1e-6), empty for sets over `cap`."""
    counts = np.diff(offsets)
    stored = counts <= cap
    values = (values[np.repeat(stored, counts)] >> np.uint64(32)).astype(np.uint32)
    new_offsets = np.r_[0, np.cumsum(np.where(stored, counts, 0))].astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(new_offsets), pa.array(values, pa.uint32()))


class Units:
    """Where a level keeps its units (files or repositories) and their band rows.

    Unit file `folder/{source:05d}_{partition:03d}.parquet` holds the units of one partition written by
    one source task; band file `folder/band_{source:05d}_{partition:03d}.parquet` the band rows of one
    key range."""

    def __init__(self, folder: Path, sources: int):
        self.folder, self.sources = folder, sources

    def unit_files(self, partition: int) -> list[Path]:
        return [self.unit_path(s, partition) for s in range(self.sources)]

    def band_files(self, partition: int) -> list[Path]:
        return [self.band_path(s, partition) for s in range(self.sources)]

    def unit_path(self, source: int, partition: int) -> Path:
        return self.folder / f"{source:05d}_{partition:03d}.parquet"

    def band_path(self, source: int, partition: int) -> Path:
        return self.folder / f"band_{source:05d}_{partition:03d}.parquet"

    def read(self, partition: int, uids: np.ndarray, columns: list[str]) -> pa.Table:
        """The rows of the given units from one partition, reading one file at a time."""
        wanted = pa.array(sorted_unique(uids))
        parts = [t.filter(pc.is_in(t["uid"], value_set=wanted))
                 for t in (read_table_checked(f, columns=columns) for f in self.unit_files(partition))]
        return pa.concat_tables(parts)


def write_bands(units: Units, source: int, partitions: int, uid: np.ndarray, order: np.ndarray,
                signatures: np.ndarray, bands: int, rows: int) -> None:
    """Write one source's band rows, one file per key range."""
    write_band_rows(units, source, partitions, uid, order, band_keys(signatures, bands, rows),
                    signature_hashes(signatures))


def write_band_rows(units: Units, source: int, partitions: int, uid: np.ndarray, order: np.ndarray,
                    keys: np.ndarray, sig: np.ndarray) -> None:
    """keys: (units, bands). Each file is sorted by key in small row groups, so a pairs task can read a
    key sub-range of it (row-group statistics) without reading the rest."""
    bands = keys.shape[1]
    table = pa.table({"key": keys.ravel(), "sig": np.repeat(sig, bands), "order": np.repeat(order, bands),
                      "uid": np.repeat(uid, bands)}, schema=BAND_SCHEMA)
    part = key_partition(keys.ravel(), partitions)
    for p in range(partitions):
        chunk = table.filter(pa.array(part == p)).sort_by("key")
        write_table_atomic(chunk, units.band_path(source, p), row_group_size=BAND_ROW_GROUP, compression="none")


def keep_columns(schema: pa.Schema) -> list[str]:
    return [f for f in KEEP_FIELDS if f in schema.names]


# -- phase 1: signatures ----------------------------------------------------------------------------
class NearDedupSignature(SignatureStep):
    """A batch's shingles and signatures straight from its texts' UTF-8 buffers (numba kernels, no Python
    object per token); stored per file with the shingle set. Band rows are written when the task ends."""

    def __init__(self, name, options: NearDedupOptions, workdir, schema, partitions):
        super().__init__(name, options, workdir, schema, partitions)
        self.hasher = MinHasher(options.num_perm, options.seed)
        self.units = Units(self.workdir / "sig", 0)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.rank, self.next_idx, self.band_input = rank, 0, []
        yield from super().run(data, rank, world_size)
        if self.options.level == "file":
            with self.track_time():
                uid, order, sigs = (np.concatenate(x) for x in zip(*self.band_input, strict=True)) \
                    if self.band_input else (np.zeros(0, np.int64), np.zeros(0, np.uint64),
                                             np.zeros((0, self.options.num_perm), np.uint64))
                write_bands(self.units, rank, self.partitions, uid, order, sigs, *self.options.banding())
        self.counters.flush_details()

    def signature(self, docs: list[Document]) -> tuple[dict[str, pa.Array], np.ndarray]:
        opts = self.options
        values, offsets, tokens = batch_shingles(text_batches(docs, opts.text_field), opts.ngram_size, opts.operators)
        signatures = self.hasher.signatures(values, offsets)
        uid = (np.int64(self.rank) << RANK_BITS) | np.arange(self.next_idx, self.next_idx + len(docs), dtype=np.int64)
        self.next_idx += len(docs)
        meta = [d.metadata for d in docs]
        if opts.level == "file":
            order = np.array([identity_hash(m.get("repo_name"), m.get("path"), m.get("blob_id")) for m in meta],
                             np.uint64)
            partition = spread(uid, self.partitions)
            has = np.diff(offsets) > 0
            self.band_input.append((uid[has], order[has], signatures[has]))
        else:
            order = np.zeros(len(docs), np.uint64)
            partition = np.array([identity_hash(m.get("repo_name")) % self.partitions for m in meta], np.int64)
        self.counters.details["tokens_in"] += int(tokens.sum())
        return {"uid": pa.array(uid), "order": pa.array(order, pa.uint64()),
                "minhash": signature_column(signatures),
                "shingles": shingle_column(values, offsets, opts.exact_max_shingles),
                "tokens": pa.array(tokens, pa.int64())}, partition


# -- phase repos (repo level) ---------------------------------------------------------------------
class RepoUnits(PipelineStep):
    """One repository partition: files' signatures -> one unit per repository (+ its band rows)."""

    type = "🫂 - DEDUP"

    def __init__(self, name: str, options: NearDedupOptions, workdir: Path, ranks: int, partitions: int):
        self.name = f"{name}#repos"
        super().__init__()
        self.options, self.workdir, self.ranks, self.partitions = options, Path(workdir), ranks, partitions

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.track_time():
            files = Units(self.workdir / "sig", self.ranks).unit_files(rank)
            with_shingles = (t.filter(pc.greater_equal(t["tokens"], self.options.ngram_size))
                             for t in (read_table_checked(f) for f in files))
            repos = self.aggregate(pa.concat_tables([self.aggregate(t) for t in with_shingles]))
            units = Units(self.workdir / "repos", self.partitions)
            uid = repos["uid"].to_numpy()
            part = spread(uid, self.partitions)
            for q in range(self.partitions):
                write_table_atomic(repos.filter(pa.array(part == q)), units.unit_path(rank, q))
            write_bands(units, rank, self.partitions, uid, repos["order"].to_numpy(),
                        signature_matrix(repos["minhash"], self.options.num_perm), *self.options.banding())
        self.stat_update("detail:repos", value=repos.num_rows)
        return data or iter(())

    def aggregate(self, table: pa.Table) -> pa.Table:
        """Rows of files or of partial repositories -> one row per repository (a repository's document is
        the union of its files' shingles; keep rule: best license, max stars/forks, latest revision)."""
        opts = self.options
        columns = ["uid", "order", "minhash", "shingles", "tokens", *keep_columns(table.schema)]
        if table.num_rows == 0:
            return table.select(columns)
        table = table.sort_by("repo_name")
        names = table["repo_name"].to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
        ends = np.r_[starts[1:], table.num_rows]
        shingles = table["shingles"].combine_chunks()
        flat, offsets = shingles.values.to_numpy(), shingles.offsets.to_numpy()
        unions = []
        for s, e in zip(starts, ends, strict=True):
            parts = [flat[offsets[i]:offsets[i + 1]] for i in range(s, e)]
            stored = all(len(p) for p in parts)  # an empty stored set means "too large to store"
            union = sorted_unique(np.concatenate(parts)) if stored else flat[:0]
            unions.append(union if len(union) <= opts.exact_max_shingles else flat[:0])
        lengths = np.array([len(u) for u in unions], np.int64)
        out = {
            "uid": pa.array(np.minimum.reduceat(table["uid"].to_numpy(), starts)),
            "order": pa.array([identity_hash(names[s]) for s in starts], pa.uint64()),
            "minhash": signature_column(np.minimum.reduceat(signature_matrix(table["minhash"], opts.num_perm),
                                                            starts, axis=0)),
            "shingles": pa.LargeListArray.from_arrays(pa.array(np.r_[0, np.cumsum(lengths)]),
                                                      pa.array(np.concatenate(unions), pa.uint32())),
            "tokens": pa.array(np.add.reduceat(table["tokens"].to_numpy(), starts)),
            **aggregate_keep_fields(table, starts, ends),
        }
        return pa.table({c: out[c] for c in columns})


def aggregate_keep_fields(table: pa.Table, starts: np.ndarray, ends: np.ndarray) -> dict[str, pa.Array]:
    """Per repository (row ranges of `table`): best license, max stars and forks, latest revision date.
    blob_id and path are null: a repository is ranked by its aggregated fields, then its name."""
    out: dict[str, pa.Array] = {}
    for name in keep_columns(table.schema):
        column = table[name]
        if name == "license_type":
            values = column.to_pylist()
            ranks = [min((LICENSE_RANK.get(v, 2) for v in values[s:e] if v is not None), default=3)
                     for s, e in zip(starts, ends, strict=True)]
            names = {rank: name for name, rank in LICENSE_RANK.items()} | {2: OTHER_LICENSE, 3: None}
            out[name] = pa.array([names[r] for r in ranks], column.type)
        elif name in ("star_events_count", "fork_events_count", "revision_date"):
            out[name] = pa.array([pc.max(column.slice(s, e - s)).as_py() for s, e in zip(starts, ends, strict=True)],
                                 column.type)
        elif name == "repo_name":
            out[name] = column.take(pa.array(starts))
        else:  # blob_id, path
            out[name] = pa.nulls(len(starts), column.type)
    return out


# -- phases pairs, attach, verify, dups -------------------------------------------------------------
class NearDedupPhase(PipelineStep):
    """A cluster-phase task of near_dedup (rank = the partition it owns)."""

    type = "🫂 - DEDUP"
    phase: str

    def __init__(self, name: str, options: NearDedupOptions, workdir: Path, ranks: int, partitions: int):
        self.name = f"{name}#{self.phase}"
        super().__init__()
        self.options, self.workdir, self.ranks, self.partitions = options, Path(workdir), ranks, partitions
        level_dir = "sig" if options.level == "file" else "repos"
        self.units = Units(self.workdir / level_dir, ranks if options.level == "file" else partitions)

    def path(self, phase: str, *parts: int | str) -> Path:
        return self.workdir / phase / ("_".join(p if isinstance(p, str) else f"{p:03d}" for p in parts) + ".parquet")

    def details(self, **values: int) -> None:
        for key, value in values.items():
            if value:
                self.stat_update(f"detail:{key}", value=int(value))

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.track_time():
            self.process(rank)
        return data or iter(())

    def process(self, partition: int) -> None:
        raise NotImplementedError


class CandidatePairs(NearDedupPhase):
    """One band-key range: buckets -> candidate pairs, in key sub-ranges of at most CHUNK_ROWS rows;
    pairs go to the partition of their first unit."""

    phase = "pairs"

    def process(self, partition: int) -> None:
        files = self.units.band_files(partition)
        bad = [f for f in files if not is_intact(f)]
        if bad:
            raise CorruptIntermediate(f"{bad[0]}: checksum mismatch or missing")
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        chunks = max(1, ceil(total / CHUNK_ROWS))
        found = []
        for chunk in range(chunks):
            low, high = key_range(partition, self.partitions, chunk, chunks)
            where = pc.field("key") >= pa.scalar(low, pa.uint64())
            if high is not None:
                where &= pc.field("key") < pa.scalar(high, pa.uint64())
            rows = pa.concat_tables([pq.read_table(f, filters=where) for f in files])
            found.append(bucket_pairs(*(rows[c].to_numpy() for c in BAND_SCHEMA.names), BUCKET_WINDOW))
        a, b, same = unique_pairs(*(np.concatenate(x) for x in zip(*found, strict=True)))
        self.details(candidate_pairs=len(a), identical_signature_pairs=int(same.sum()))
        target = spread(a, self.partitions)
        pairs = pa.table({"a": a, "b": b, "same": same}, schema=PAIR_SCHEMA)
        for q in range(self.partitions):
            write_table_atomic(pairs.filter(pa.array(target == q)), self.path("pairs", partition, q))


class AttachUnits(NearDedupPhase):
    """One unit partition: each pair gets its first unit's signature, shingles and keep-rule fields, and
    is sent to the partition of its second unit."""

    phase = "attach"

    def process(self, partition: int) -> None:
        pairs = pa.concat_tables([read_table_checked(self.path("pairs", p, partition)) for p in range(self.partitions)])
        a, b, same = unique_pairs(*(pairs[c].to_numpy() for c in PAIR_SCHEMA.names))
        nodes = self.units.read(partition, a, node_columns(self.units.unit_files(partition)[0]))
        target = spread(b, self.partitions)
        for q in range(self.partitions):
            sent = target == q
            table = pa.table({"a": a[sent], "b": b[sent], "same": same[sent]}, schema=PAIR_SCHEMA)
            write_table_atomic(table, self.path("attach", "pairs", partition, q))
            wanted = pa.array(sorted_unique(a[sent]))
            write_table_atomic(nodes.filter(pc.is_in(nodes["uid"], value_set=wanted)),
                               self.path("attach", "nodes", partition, q))


def node_columns(unit_file: Path) -> list[str]:
    schema = pq.read_schema(unit_file)
    return ["uid", "minhash", "shingles", "tokens", *keep_columns(schema)]


class PairSimilarity:
    """Whether pairs of units (rows of `nodes`) reach the threshold.

    A pair whose signature estimate is within 2.5 / sqrt(num_perm) (5 standard deviations at J = 0.5)
    of the threshold is decided by exact Jaccard on the stored shingle sets; farther away, or for units
    too large to have a stored set, the estimate decides."""

    def __init__(self, nodes: pa.Table, options: NearDedupOptions):
        self.threshold, self.margin = options.threshold, 2.5 / sqrt(options.num_perm)
        self.signatures = signature_matrix(nodes["minhash"], options.num_perm)
        shingles = nodes["shingles"].combine_chunks()
        self.offsets = shingles.offsets.to_numpy()
        self.sets = sort_sets(shingles.values.to_numpy(), self.offsets)
        self.checked = self.exact_checks = 0

    def accept(self, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        estimate = pair_estimates(self.signatures, ia, ib)
        accepted = estimate >= self.threshold
        near = np.flatnonzero(np.abs(estimate - self.threshold) < self.margin)
        jaccard = pair_jaccard(self.sets, self.offsets, ia[near], ib[near], presorted=True)
        exact = ~np.isnan(jaccard)
        accepted[near[exact]] = jaccard[exact] >= self.threshold
        self.checked += len(ia)
        self.exact_checks += int(exact.sum())
        return accepted


class VerifyPairs(NearDedupPhase):
    """One unit partition (the pairs' second units): keep the pairs whose Jaccard similarity reaches the
    threshold (`PairSimilarity`). Writes the accepted pairs (edges), their units (signatures and shingle
    sets, for the clusters' own checks) and a forest: each node with the smallest node of its local
    component."""

    phase = "verify"

    def process(self, partition: int) -> None:
        pairs = pa.concat_tables([read_table_checked(self.path("attach", "pairs", q, partition))
                                  for q in range(self.partitions)])
        firsts = pa.concat_tables([read_table_checked(self.path("attach", "nodes", q, partition))
                                   for q in range(self.partitions)])
        a, b, same = (pairs[c].to_numpy() for c in PAIR_SCHEMA.names)
        seconds = self.units.read(partition, b, firsts.column_names)
        nodes = pa.concat_tables([firsts, seconds]).sort_by("uid")
        uids = nodes["uid"].to_numpy()
        ia, ib = np.searchsorted(uids, a), np.searchsorted(uids, b)
        accepted = same.copy()
        check = np.flatnonzero(~same)
        similarity = PairSimilarity(nodes, self.options)
        accepted[check] = similarity.accept(ia[check], ib[check])
        self.details(verified_pairs=len(check), exact_checks=similarity.exact_checks,
                     accepted_pairs=int(accepted[check].sum()))
        node, root = connected_components(a[accepted], b[accepted])
        write_table_atomic(pa.table({"uid": node, "root": root}, schema=FOREST_SCHEMA),
                           self.path("verify", "forest", partition))
        write_table_atomic(pa.table({"a": a[accepted], "b": b[accepted], "same": same[accepted]}, schema=PAIR_SCHEMA),
                           self.path("verify", "edges", partition))
        write_table_atomic(nodes.take(pa.array(np.searchsorted(uids, node))), self.path("verify", "nodes", partition))


class MergeComponents(NearDedupPhase):
    """The forests merged into connected components: which units may cluster together (ids only)."""

    phase = "components"

    def process(self, partition: int) -> None:
        forests = pa.concat_tables([read_table_checked(self.path("verify", "forest", q))
                                    for q in range(self.partitions)])
        node, component = connected_components(forests["uid"].to_numpy(), forests["root"].to_numpy())
        write_table_atomic(pa.table({"uid": node, "root": component}, schema=FOREST_SCHEMA),
                           self.path("components", "all"))


class RouteUnits(NearDedupPhase):
    """One verify partition: its accepted edges and units, with their component, go to the dups
    partition of that component, so that each dups task reads only its own (every verified unit is
    decoded twice in all, not once per partition)."""

    phase = "route"

    def process(self, partition: int) -> None:
        components = read_table_checked(self.path("components", "all"))
        uids, roots = components["uid"].to_numpy(), components["root"].to_numpy()
        nodes = read_table_checked(self.path("verify", "nodes", partition))
        edges = read_table_checked(self.path("verify", "edges", partition))
        component = roots[np.searchsorted(uids, nodes["uid"].to_numpy())]
        nodes = nodes.append_column("component", pa.array(component))
        node_target = spread(component, self.partitions)
        edge_target = spread(roots[np.searchsorted(uids, edges["a"].to_numpy())], self.partitions)
        for q in range(self.partitions):
            write_table_atomic(nodes.filter(pa.array(node_target == q)), self.path("route", "nodes", partition, q))
            write_table_atomic(edges.filter(pa.array(edge_target == q)), self.path("route", "edges", partition, q))


def cluster_seeds(nodes: pa.Table, a: np.ndarray, b: np.ndarray, same: np.ndarray,
                  options: NearDedupOptions) -> tuple[np.ndarray, int]:
    """`star_clusters` of units (rows of `nodes`) given their verified edges (row indices), ranked by
    the keep rule; also returns the number of similarity checks made."""
    similarity = PairSimilarity(nodes, options)
    rank = keep_rank(nodes)
    seed = star_clusters(rank, a, b, same, lambda node, others: similarity.accept(np.full(len(others), node), others))
    return seed, similarity.checked


def recluster(nodes: pa.Table, options: NearDedupOptions) -> tuple[np.ndarray, np.ndarray]:
    """What a run decides on these units alone (`optout apply`, once units of a component left or
    others arrived): candidate pairs from their band keys, verified, split into components and
    clustered as the dups phase does. Returns each row's component (its smallest row; -1: no
    near-duplicate) and the row of its cluster's kept unit (itself when kept)."""
    n = nodes.num_rows
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    signatures = signature_matrix(nodes["minhash"], options.num_perm)
    bands, rows = options.banding()
    rows_of = np.arange(n, dtype=np.int64)
    a, b, same = bucket_pairs(band_keys(signatures, bands, rows).ravel(),
                              np.repeat(signature_hashes(signatures), bands), np.repeat(unit_order(nodes), bands),
                              np.repeat(rows_of, bands), BUCKET_WINDOW)
    accepted = same.copy()
    check = np.flatnonzero(~same)
    accepted[check] = PairSimilarity(nodes, options).accept(a[check], b[check])
    a, b, same = a[accepted], b[accepted], same[accepted]
    linked, root = connected_components(a, b)
    component, kept = np.full(n, -1, np.int64), rows_of.copy()
    if len(linked):
        component[linked] = root
        units = nodes.take(pa.array(linked))
        seed, _ = cluster_seeds(units, np.searchsorted(linked, a), np.searchsorted(linked, b), same, options)
        kept[linked] = linked[group_heads(units, seed)]
    return component, kept


def unit_order(units: pa.Table) -> np.ndarray:
    """The bucket order of units (`NearDedupSignature`, `RepoUnits`): the hash of their identity."""
    columns = [units[c].to_pylist() for c in ("repo_name", "path", "blob_id")]
    return np.array([identity_hash(repo, path, blob) if path is not None else identity_hash(repo)
                     for repo, path, blob in zip(*columns, strict=True)], np.uint64)


def file_units(rows: list[dict], options: NearDedupOptions) -> pa.Table:
    """File units of records (as they enter the stage), as the signature phase makes them; a record
    with fewer tokens than `ngram_size` has an empty shingle set (never a near-duplicate)."""
    texts = pa.array([r.get(options.text_field) for r in rows], pa.large_string())
    values, offsets, tokens = batch_shingles(texts, options.ngram_size, options.operators)
    signatures = MinHasher(options.num_perm, options.seed).signatures(values, offsets)
    keep = {f: [r.get(f) for r in rows] for f in KEEP_FIELDS}
    return pa.table({"minhash": signature_column(signatures),
                     "shingles": shingle_column(values, offsets, options.exact_max_shingles),
                     "tokens": pa.array(tokens, pa.int64()), **keep})


def units_path(workdir: Path, partition: int) -> Path:
    """Where a dups task leaves its components' units (published to the output as `clusters/<stage>/`)."""
    return workdir / "dups" / UNITS_DIR / f"{partition:03d}.parquet"


class ClusterDuplicates(NearDedupPhase):
    """One partition of the components: clusters inside them (`star_clusters` with `PairSimilarity`),
    in which every member is similar to most of its cluster's core; the keep rule's best of each cluster
    stays."""

    phase = "dups"

    def process(self, partition: int) -> None:
        edges = pa.concat_tables([read_table_checked(self.path("route", "edges", q, partition))
                                  for q in range(self.partitions)])
        nodes = pa.concat_tables([read_table_checked(self.path("route", "nodes", q, partition))
                                  for q in range(self.partitions)])
        uids, first = np.unique(nodes["uid"].to_numpy(), return_index=True)  # a unit verified in several partitions
        nodes = nodes.take(pa.array(first))
        a, b = (np.searchsorted(uids, edges[c].to_numpy()) for c in ("a", "b"))
        seed, checks = cluster_seeds(nodes, a, b, edges["same"].to_numpy(), self.options)
        write_table_atomic(nodes, units_path(self.workdir, partition))
        nodes = nodes.drop_columns(["minhash", "shingles", "component"])
        if self.options.level == "file":
            dups, removed = self.file_duplicates(nodes, seed)
        else:
            dups, removed = self.repo_duplicates(nodes, seed)
        self.details(clusters=len(sorted_unique(seed[seed != np.arange(len(seed))])),
                     cluster_checks=checks, tokens_removed=removed)
        write_table_atomic(dups, dups_path(self.workdir, partition))

    def file_duplicates(self, nodes: pa.Table, cluster: np.ndarray) -> tuple[pa.Table, int]:
        uid = nodes["uid"].to_numpy()
        table = nodes.append_column("src_rank", pa.array((uid >> RANK_BITS).astype(np.int32))) \
                     .append_column("idx", pa.array(uid & ((1 << RANK_BITS) - 1)))
        dups, _ = duplicates_table(table, cluster)
        removed = pc.is_in(table["uid"], value_set=pa.array(
            (dups["src_rank"].to_numpy().astype(np.int64) << RANK_BITS) | dups["idx"].to_numpy()))
        return dups, int(pc.sum(table["tokens"].filter(removed)).as_py() or 0)

    def repo_duplicates(self, nodes: pa.Table, cluster: np.ndarray) -> tuple[pa.Table, int]:
        """Removed repositories -> all their files, read from the signature files of their partitions."""
        table = nodes.append_column("src_rank", pa.array(np.zeros(nodes.num_rows, np.int32))) \
                     .append_column("idx", nodes["uid"])
        repo_dups, _ = duplicates_table(table, cluster)
        repo_of = dict(zip(nodes["uid"].to_pylist(), nodes["repo_name"].to_pylist(), strict=True))
        kept_of = {repo_of[uid]: kept for uid, kept in zip(repo_dups["idx"].to_pylist(),
                                                           repo_dups["kept_repo_name"].to_pylist(), strict=True)}
        wanted = pa.array(sorted(kept_of), pa.string())
        sig = Units(self.workdir / "sig", self.ranks)
        files = [t.filter(pc.is_in(t["repo_name"], value_set=wanted))
                 for q in sorted({identity_hash(r) % self.partitions for r in kept_of})
                 for t in (read_table_checked(f, columns=["src_rank", "idx", "repo_name", "tokens"])
                           for f in sig.unit_files(q))]
        if not files:
            return DUPS_SCHEMA.empty_table(), 0
        files = pa.concat_tables(files)
        kept = [kept_of[r] for r in files["repo_name"].to_pylist()]
        dups = pa.table({"src_rank": files["src_rank"], "idx": files["idx"],
                         "removal_reason": pa.array([duplicate_repo_reason(k) for k in kept], pa.string()),
                         "kept_repo_name": pa.array(kept, pa.string()),
                         "kept_path": pa.nulls(files.num_rows, pa.string())}, schema=DUPS_SCHEMA)
        return dups, int(pc.sum(files["tokens"]).as_py() or 0)


# -- the stage -------------------------------------------------------------------------------------
class NearDedup(GlobalStage):
    """SPEC `near_dedup`: near-duplicate files (or repositories) by MinHash LSH with verified similarity."""

    kind = "near_dedup"
    Options = NearDedupOptions
    published = f"dups/{UNITS_DIR}"

    def warm_up(self) -> None:
        """Load the compiled kernels `recluster` uses (numba's cache) ahead of need, on two tiny files."""
        rows = [{"content": "def f(x): return x + 1", "repo_name": "a/b", "path": "p", "blob_id": "1"},
                {"content": "def f(x): return x + 2", "repo_name": "a/c", "path": "p", "blob_id": "2"}]
        recluster(file_units(rows, self.options).append_column("uid", pa.array([0, 1])), self.options)

    @staticmethod
    def cluster_partitions(partitions: int) -> int:
        """Fewer partitions than the runner offers: a cluster task has little to do per input task, and
        every phase with more than one task starts a pool of worker processes."""
        return ceil(partitions / INPUTS_PER_PARTITION)

    def signature_step(self, workdir, schema, partitions):
        return NearDedupSignature(self.name, self.options, workdir, schema, self.cluster_partitions(partitions))

    def cluster_phases(self, workdir, ranks, partitions):
        partitions = self.cluster_partitions(partitions)
        args = (self.name, self.options, workdir, ranks, partitions)
        phases = [("repos", RepoUnits(*args), partitions)] if self.options.level == "repo" else []
        return phases + [("pairs", CandidatePairs(*args), partitions), ("attach", AttachUnits(*args), partitions),
                         ("verify", VerifyPairs(*args), partitions), ("components", MergeComponents(*args), 1),
                         ("route", RouteUnits(*args), partitions), ("dups", ClusterDuplicates(*args), partitions)]
