"""Near-dedup cluster memory: peak RSS of the pairs and merge work for up to 10 million synthetic records.

    .venv/bin/python bench/dedup_memory.py [--records 1e6 3e6 1e7] [--dup-records 1e5] [--extra 1e7:1e6]
                                           [--partitions 16] [--workers 2]

Synthetic band files (band keys only, the layout the signature phase writes: 64 source tasks, sorted
key ranges) stand for a corpus of N records of which D are near-duplicates: groups of 4 records, half
with identical signatures (all bands shared), half sharing 8 of the bands. Then, each task in a fresh
process whose peak RSS is read from wait4 (`--workers` of them at a time, as a worker pool would):
  - pairs: the real `CandidatePairs` step, one task per key range (partition); the largest task's RSS
    is what one worker needs;
  - merge: every candidate pair taken as verified, reduced per partition to a forest (as the verify
    phase does) and merged into connected components (as the components phase does).
The claim to check: both stay flat as N grows at fixed D (and whatever the partition count), and grow
with D.
"""

import argparse
import os
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
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stages.lsh import connected_components, sorted_unique, unique_pairs  # noqa: E402
from stages.near_dedup import (  # noqa: E402
    CHUNK_ROWS,
    RANK_BITS,
    CandidatePairs,
    NearDedup,
    NearDedupOptions,
    Units,
    write_band_rows,
)

SOURCES = 64
GROUP = 4
SHARED_BANDS = 8


def generate(work: Path, records: int, dup_records: int, bands: int, partitions: int, seed: int = 0) -> int:
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


def pairs_task(work: Path, partition: int, partitions: int) -> None:
    CandidatePairs("near_dedup", NearDedupOptions(), work, SOURCES, partitions).process(partition)


def merge_task(work: Path, partitions: int) -> None:
    """Forest per partition (verify's reduction), then one connected-components merge (the components
    phase); prints the distinct pairs and the components."""
    forests, distinct = [], 0
    for q in range(partitions):
        pairs = pa.concat_tables([pq.read_table(work / "pairs" / f"{p:03d}_{q:03d}.parquet")
                                  for p in range(partitions)])
        a, b, _ = unique_pairs(*(pairs[c].to_numpy() for c in ("a", "b", "same")))
        distinct += len(a)
        forests.append(connected_components(a, b))
    node = np.concatenate([f[0] for f in forests])
    root = np.concatenate([f[1] for f in forests])
    _, component = connected_components(node, root)
    print(distinct, len(sorted_unique(component)))


def measure(*args: str) -> tuple[float, float, str]:
    """(seconds, peak RSS MB, output) of one task in a fresh interpreter."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--task", *args], stdout=subprocess.PIPE, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"task {args} failed")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, output.strip()


def run_config(base: Path, records: int, dup_records: int, bands: int, partitions: int, workers: int) -> dict:
    work = base / f"n{records}_d{dup_records}_p{partitions}"
    start = time.perf_counter()
    rows = generate(work, records, dup_records, bands, partitions)
    generated = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        pair_runs = list(pool.map(lambda p: measure("pairs", str(work), str(p), str(partitions)), range(partitions)))
    pairs_wall = time.perf_counter() - start
    merge_seconds, merge_rss, output = measure("merge", str(work), str(partitions))
    distinct, components = map(int, output.split()[-2:])
    shutil.rmtree(work)
    return {"records": records, "dup_records": dup_records, "partitions": partitions, "band_rows": rows,
            "pairs": distinct, "components": components, "generate_s": generated, "pairs_s": pairs_wall,
            "pairs_rss_mb": max(r[1] for r in pair_runs), "merge_s": merge_seconds, "merge_rss_mb": merge_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=float, nargs="*", default=[1e6, 3e6, 1e7])
    parser.add_argument("--dup-records", type=float, default=1e5)
    parser.add_argument("--extra", nargs="*", default=["1e7:1e6"], help="more RECORDS:DUP_RECORDS configurations")
    parser.add_argument("--partitions", type=int, nargs="*", default=[NearDedup.cluster_partitions(SOURCES)],
                        help="key ranges = pairs tasks (the runner's default for 64 input tasks: 16)")
    parser.add_argument("--workers", type=int, default=2, help="pairs tasks run at once")
    parser.add_argument("--workdir", type=Path, default=None, help="where the band files go (needs ~14 GB at 1e7)")
    parser.add_argument("--task", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        kind, *rest = args.task
        if kind == "pairs":
            pairs_task(Path(rest[0]), int(rest[1]), int(rest[2]))
        elif kind == "merge":
            merge_task(Path(rest[0]), int(rest[1]))
        return  # "idle": the imports alone, the baseline of every task
    bands, _ = NearDedupOptions().banding()
    configs = [(int(n), int(args.dup_records), p) for n in args.records for p in args.partitions]
    configs += [(int(float(n)), int(float(d)), args.partitions[-1]) for n, d in (e.split(":") for e in args.extra)]
    print(f"shipped defaults: {bands} bands; {SOURCES} source tasks; pairs tasks read chunks of at most "
          f"{CHUNK_ROWS:,} band rows; {args.workers} tasks at a time; "
          f"baseline RSS of a task process (imports only): {measure('idle')[1]:.0f} MB")
    print("| records | near-dup records | partitions | band rows | distinct candidate pairs | components "
          "| pairs: peak RSS per task MB | pairs s (wall) | merge RSS MB | merge s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="dedup_memory_", dir=args.workdir) as tmp:
        for records, dups, partitions in configs:
            r = run_config(Path(tmp), records, dups, bands, partitions, args.workers)
            print(f"| {r['records']:,} | {r['dup_records']:,} | {r['partitions']} | {r['band_rows']:,} | "
                  f"{r['pairs']:,} | {r['components']:,} | {r['pairs_rss_mb']:.0f} | {r['pairs_s']:.0f} | "
                  f"{r['merge_rss_mb']:.0f} | {r['merge_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
