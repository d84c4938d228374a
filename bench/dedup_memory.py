"""Near-dedup cluster memory: peak RSS and time of the cluster phases' tasks for up to 10 million records.

    .venv/bin/python bench/dedup_memory.py [--records 1e6 3e6 1e7] [--dup-records 1e5] [--extra 1e6:5e5]
                                           [--partitions 16] [--workers 2] [--only pairs|dups]
                                           [--large 2000] [--shingles 200:4000]

Every task runs in a fresh interpreter (`--workers` at a time, as a worker pool would) and reports its
own peak RSS: the VmHWM of its process, read when it ends. (Not wait4's ru_maxrss: Linux carries the
RSS high-water mark of the address space that exec replaces into the new program's, and subprocess execs
from a vfork of this parent, so ru_maxrss is at least this parent's peak, which grows with the records
it generated.)

pairs: synthetic band files (band keys only, the layout the signature phase writes: 64 source tasks,
  sorted key ranges) stand for a corpus of N records of which D are near-duplicates: groups of 4, half
  with identical signatures (all bands shared), half sharing 8 of the bands. The real `CandidatePairs`
  task of every key range; then every candidate pair is taken as verified and reduced per partition to
  the forest `VerifyPairs` writes, and the real `MergeComponents` task merges the forests.
dups: the D near-duplicate records of a corpus of N as the signature phase stores them (unit files with
  signatures and shingle sets, band files): groups of 4 whose shingle sets (200-4,000 hashes) are copies
  (half the groups) or light edits of one set (J ~0.75-1), plus two large components of `--large`
  records each: a dense one (every pair J >= ~0.75) and a family whose pairwise J spreads around the
  0.7 threshold, as templated code does. The real pairs, attach, verify, components and dups tasks run
  on them. The other N - D records have no verified near-duplicate, so nothing of theirs reaches the
  components and dups phases: N only changes the records' ids (and so the partition of each component).
The claim to check: every task's memory stays flat as N grows at fixed D, and grows with D.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from math import ceil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.io.files import read_table_checked, write_table_atomic  # noqa: E402
from pipeline.records import LICENSE_RANK  # noqa: E402
from stages.lsh import connected_components, spread, unique_pairs  # noqa: E402
from stages.near_dedup import (  # noqa: E402
    CHUNK_ROWS,
    FOREST_SCHEMA,
    PAIR_SCHEMA,
    RANK_BITS,
    AttachUnits,
    CandidatePairs,
    ClusterDuplicates,
    MergeComponents,
    MinHasher,
    NearDedup,
    NearDedupOptions,
    NearDedupPhase,
    RouteUnits,
    Units,
    VerifyPairs,
    identity_hash,
    shingle_column,
    signature_column,
    write_band_rows,
    write_bands,
)

SOURCES = 64
GROUP = 4
SHARED_BANDS = 8
PHASES = {"pairs": CandidatePairs, "attach": AttachUnits, "verify": VerifyPairs, "components": MergeComponents,
          "route": RouteUnits, "dups": ClusterDuplicates}
EDITS = {"copies": (0.0, 0.0), "edits": (0.0, 0.07), "dense": (0.0, 0.07), "family": (0.05, 0.25)}
LARGE_SHINGLES = 1000  # set size of the large components' records
LICENSES = [*LICENSE_RANK, "gpl-3.0", None]


def phase(work: Path, partitions: int, kind: str = "components") -> NearDedupPhase:
    """A phase object, for its file paths."""
    return PHASES[kind]("near_dedup", NearDedupOptions(), work, SOURCES, partitions)


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def measure(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one task in a fresh interpreter."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--task", *args], stdout=subprocess.PIPE, text=True, check=True)
    return time.perf_counter() - start, float(done.stdout.split()[-1])


def run_phase(work: Path, kind: str, partitions: int, workers: int) -> tuple[float, list[tuple[float, float]]]:
    """(wall seconds, [(seconds, peak RSS MB)] per task) of every task of one phase."""
    tasks = 1 if kind == "components" else partitions
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        runs = list(pool.map(lambda p: measure(str(work), kind, str(p), str(partitions)), range(tasks)))
    return time.perf_counter() - start, runs


def component_sizes(work: Path, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """(root, size) of every component the components phase wrote."""
    components = read_table_checked(phase(work, partitions).path("components", "all"))
    return np.unique(components["root"].to_numpy(), return_counts=True)


# -- pairs: band files only -------------------------------------------------------------------------
def generate_bands(work: Path, records: int, dup_records: int, bands: int, partitions: int, seed: int = 0) -> int:
    """Write the band files of `records` synthetic records; returns the number of band rows."""
    units = Units(work / "sig", SOURCES)
    units.folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups = dup_records // GROUP
    group_keys = rng.integers(0, 2**64, (groups, bands), dtype=np.uint64, endpoint=False)
    group_sig = rng.integers(0, 2**64, groups, dtype=np.uint64, endpoint=False)
    per_source = ceil(records / SOURCES)
    dup_every = max(1, records // max(dup_records, 1))
    total = 0
    for source in range(SOURCES):
        idx = np.arange(source * per_source, min(records, (source + 1) * per_source))
        keys = rng.integers(0, 2**64, (len(idx), bands), dtype=np.uint64, endpoint=False)
        sig = rng.integers(0, 2**64, len(idx), dtype=np.uint64, endpoint=False)
        member = (idx % dup_every == 0) & (idx // dup_every < groups * GROUP)
        group = (idx[member] // dup_every) // GROUP
        identical = group % 2 == 0
        rows = np.flatnonzero(member)
        keys[rows[identical]] = group_keys[group[identical]]
        sig[rows[identical]] = group_sig[group[identical]]
        keys[rows[~identical], :SHARED_BANDS] = group_keys[group[~identical], :SHARED_BANDS]
        uid = (np.int64(source) << RANK_BITS) | (idx - source * per_source)
        write_band_rows(units, source, partitions, uid, rng.integers(0, 2**63, len(idx)).astype(np.uint64),
                        keys, sig)
        total += keys.size
    return total


def write_forests(work: Path, partitions: int) -> int:
    """Every candidate pair taken as verified and reduced, per partition of its second unit, to the forest
    `VerifyPairs` writes; returns the number of distinct pairs."""
    paths = phase(work, partitions)
    pairs = pa.concat_tables([read_table_checked(paths.path("pairs", p, q))
                              for p in range(partitions) for q in range(partitions)])
    a, b, _ = unique_pairs(*(pairs[c].to_numpy() for c in PAIR_SCHEMA.names))
    target = spread(b, partitions)
    for q in range(partitions):
        node, root = connected_components(a[target == q], b[target == q])
        write_table_atomic(pa.table({"uid": node, "root": root}, schema=FOREST_SCHEMA),
                           paths.path("verify", "forest", q))
    return len(a)


def run_pairs(base: Path, records: int, dup_records: int, bands: int, partitions: int, workers: int) -> dict:
    work = base / f"pairs_n{records}_d{dup_records}_p{partitions}"
    band_rows = generate_bands(work, records, dup_records, bands, partitions)
    pairs_wall, pair_runs = run_phase(work, "pairs", partitions, workers)
    distinct = write_forests(work, partitions)
    _, [(merge_s, merge_rss)] = run_phase(work, "components", partitions, workers)
    roots, _ = component_sizes(work, partitions)
    shutil.rmtree(work)
    return {"band_rows": band_rows, "pairs": distinct, "components": len(roots), "pairs_s": pairs_wall,
            "pairs_rss": max(r[1] for r in pair_runs), "merge_s": merge_s, "merge_rss": merge_rss}


# -- dups: near-duplicate records with signatures and shingle sets ----------------------------------
class NearDuplicates:
    """The near-duplicate records of a synthetic corpus: record i is member `member[i]` of group
    `group[i]`; a member's shingle set is its group's base set (`size` random 64-bit hashes) with a
    fraction of its hashes, drawn uniformly from the group's edit range, replaced by fresh ones."""

    def __init__(self, dup_records: int, large: int, shingles: tuple[int, int], seed: int = 0):
        rng = np.random.default_rng(seed)
        small = dup_records // GROUP
        kinds = [*np.where(np.arange(small) % 2 == 0, "copies", "edits"), *(["dense", "family"] if large else [])]
        members = np.r_[np.full(small, GROUP), np.full(len(kinds) - small, large)].astype(np.int64)
        sizes = np.exp(rng.uniform(np.log(shingles[0]), np.log(shingles[1]), small)).astype(np.int64)
        self.size = np.r_[sizes, np.full(len(kinds) - small, LARGE_SHINGLES)]
        self.edits = np.array([EDITS[k] for k in kinds])
        self.group = np.repeat(np.arange(len(members)), members)
        self.member = np.arange(len(self.group)) - np.repeat(np.cumsum(members) - members, members)
        self.slot = rng.permutation(len(self.group))  # where record i sits among the near-duplicates
        self.seed = seed

    def __len__(self) -> int:
        return len(self.group)

    def shingles(self, record: int) -> np.ndarray:
        g = self.group[record]
        base = np.random.default_rng([self.seed, g]).integers(0, 2**64, self.size[g], dtype=np.uint64)
        rng = np.random.default_rng([self.seed, g, self.member[record]])
        replaced = rng.random(len(base)) < rng.uniform(*self.edits[g])
        base[replaced] = rng.integers(0, 2**64, int(replaced.sum()), dtype=np.uint64)
        return base

    def write(self, work: Path, records: int, partitions: int) -> None:
        """The signature phase's files for a corpus of `records` records: these near-duplicates spread
        evenly over its ids, the other records left out (they reach no phase after `pairs`)."""
        if records < len(self):
            raise ValueError(f"{records} records cannot hold {len(self)} near-duplicates")
        units = Units(work / "sig", SOURCES)
        options = NearDedupOptions()
        hasher = MinHasher(options.num_perm, options.seed)
        per_source = ceil(records / SOURCES)
        position = self.slot * (records // len(self))
        source_of = position // per_source
        for source in range(SOURCES):
            mine = np.flatnonzero(source_of == source)
            sets = [self.shingles(i) for i in mine]
            offsets = np.r_[0, np.cumsum([len(s) for s in sets])].astype(np.int64)
            values = np.concatenate(sets) if sets else np.zeros(0, np.uint64)
            signatures = hasher.signatures(values, offsets)
            idx = position[mine] - source * per_source
            uid = (np.int64(source) << RANK_BITS) | idx
            repo = [f"repo{self.group[i] % 5000}" for i in mine]
            path = [f"src/g{self.group[i]}_m{self.member[i]}.py" for i in mine]
            blob = [f"{u:016x}" for u in uid]
            order = np.array([identity_hash(*k) for k in zip(repo, path, blob, strict=True)], np.uint64)
            table = pa.table({
                "src_rank": pa.array(np.full(len(mine), source, np.int32)), "idx": pa.array(idx, pa.int64()),
                "license_type": pa.array([LICENSES[i % len(LICENSES)] for i in mine], pa.string()),
                "star_events_count": pa.array(self.member[mine] % 7, pa.int64()),
                "blob_id": pa.array(blob, pa.string()), "repo_name": pa.array(repo, pa.string()),
                "path": pa.array(path, pa.string()), "uid": pa.array(uid, pa.int64()),
                "order": pa.array(order, pa.uint64()), "minhash": signature_column(signatures),
                "shingles": shingle_column(values, offsets, options.exact_max_shingles),
                "tokens": pa.array(np.diff(offsets) + options.ngram_size - 1, pa.int64())})
            part = spread(uid, partitions)
            for p in range(partitions):
                write_table_atomic(table.filter(pa.array(part == p)), units.unit_path(source, p))
            write_bands(units, source, partitions, uid, order, signatures, *options.banding())


def run_dups(base: Path, records: int, near: NearDuplicates, partitions: int, workers: int) -> dict:
    work = base / f"dups_n{records}_d{len(near)}_p{partitions}"
    near.write(work, records, partitions)
    runs = {kind: run_phase(work, kind, partitions, workers) for kind in PHASES}
    paths = phase(work, partitions)
    edges = sum(read_table_checked(paths.path("verify", "edges", q)).num_rows for q in range(partitions))
    roots, sizes = component_sizes(work, partitions)
    dups = pa.concat_tables([read_table_checked(paths.path("dups", q)) for q in range(partitions)])
    heaviest = int(spread(roots[[np.argmax(sizes)]], partitions)[0])
    shutil.rmtree(work)
    dups_wall, dups_runs = runs["dups"]
    return {"edges": edges, "components": len(roots), "largest": int(sizes.max()),
            "removed": dups.num_rows, "clusters": len(pc.unique(dups["removal_reason"])),
            "verify_rss": max(r[1] for r in runs["verify"][1]), "merge_s": runs["components"][1][0][0],
            "merge_rss": runs["components"][1][0][1], "route_rss": max(r[1] for r in runs["route"][1]),
            "route_s": max(r[0] for r in runs["route"][1]), "dups_rss": max(r[1] for r in dups_runs),
            "dups_s": max(r[0] for r in dups_runs), "dups_wall": dups_wall,
            "heaviest_s": dups_runs[heaviest][0], "heaviest_rss": dups_runs[heaviest][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=float, nargs="*", default=[1e6, 3e6, 1e7])
    parser.add_argument("--dup-records", type=float, default=1e5)
    parser.add_argument("--extra", nargs="*", default=[], help="more RECORDS:DUP_RECORDS configurations")
    parser.add_argument("--partitions", type=int, nargs="*", default=[NearDedup.cluster_partitions(SOURCES)],
                        help="key ranges = tasks per phase (the runner's default for 64 input tasks: 16)")
    parser.add_argument("--workers", type=int, default=2, help="tasks run at once")
    parser.add_argument("--only", choices=["pairs", "dups"], help="one of the two measurements")
    parser.add_argument("--large", type=int, default=2000, help="records in each of the two large components (dups)")
    parser.add_argument("--shingles", default="200:4000", help="MIN:MAX shingle set size of the groups of 4 (dups)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (~14 GB at 1e7 for pairs)")
    parser.add_argument("--task", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        work, kind, partition, partitions = args.task
        if kind != "idle":  # "idle": the imports alone, the baseline of every task
            phase(Path(work), int(partitions), kind).process(int(partition))
        print(peak_rss_mb())
        return
    bands, _ = NearDedupOptions().banding()
    configs = [(int(n), int(args.dup_records), p) for n in args.records for p in args.partitions]
    configs += [(int(float(n)), int(float(d)), args.partitions[-1]) for n, d in (e.split(":") for e in args.extra)]
    print(f"shipped defaults: {bands} bands; {SOURCES} source tasks; pairs tasks read chunks of at most "
          f"{CHUNK_ROWS:,} band rows; {args.workers} tasks at a time; peak RSS of a task process that only "
          f"imports: {measure('-', 'idle', '0', '1')[1]:.0f} MB", flush=True)
    with tempfile.TemporaryDirectory(prefix="dedup_memory_", dir=args.workdir) as tmp:
        if args.only != "dups":
            print("\n| records | near-dup records | partitions | band rows | distinct candidate pairs | components "
                  "| pairs: peak RSS per task MB | pairs s (wall) | components RSS MB | components s |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for records, dups, partitions in configs:
                r = run_pairs(Path(tmp), records, dups, bands, partitions, args.workers)
                print(f"| {records:,} | {dups:,} | {partitions} | {r['band_rows']:,} | {r['pairs']:,} | "
                      f"{r['components']:,} | {r['pairs_rss']:.0f} | {r['pairs_s']:.0f} | {r['merge_rss']:.0f} | "
                      f"{r['merge_s']:.1f} |", flush=True)
        if args.only != "pairs":
            print(f"\n| records | near-dup records (2 x {args.large:,} in large components) | partitions | "
                  "verified edges | components (largest) | removed (clusters) | verify: peak RSS per task MB "
                  "| components RSS MB, s | route: peak RSS per task MB, slowest s | dups: peak RSS per task MB "
                  "| dups: slowest task s | dups s (wall) | dups task of the largest component: MB, s |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            shingles = tuple(int(x) for x in args.shingles.split(":"))
            for records, dups, partitions in configs:
                near = NearDuplicates(dups, args.large, shingles)
                r = run_dups(Path(tmp), records, near, partitions, args.workers)
                print(f"| {records:,} | {len(near):,} | {partitions} | {r['edges']:,} | {r['components']:,} "
                      f"({r['largest']:,}) | {r['removed']:,} ({r['clusters']:,}) | {r['verify_rss']:.0f} | "
                      f"{r['merge_rss']:.0f}, {r['merge_s']:.1f} | {r['route_rss']:.0f}, {r['route_s']:.1f} | "
                      f"{r['dups_rss']:.0f} | {r['dups_s']:.1f} | "
                      f"{r['dups_wall']:.0f} | {r['heaviest_rss']:.0f}, {r['heaviest_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
