"""Search and membership on a real output: timings, and recall of planted near-copies.

    .venv/bin/python bench/bench_search.py OUT [--queries 200] [--reps 3] [--anchor-mb 40]

- `pipeline search`: exact and regex queries (rare and common) over OUT's shards, medians of
  interleaved repetitions, against the plain way (pyarrow reads `content`, `pc.match_substring`).
- `pipeline index`: build time (rebuilt here) and size; query latency of the near-duplicate and
  line lookups, in process (index open) and through the CLI (a new process, imports included).
- recall: sampled records of OUT are edited into near-copies whose exact 5-gram Jaccard to the
  original falls in a band; each copy is queried (threshold 0.7) and counts as found when the
  original comes back. Reported per band, with the estimate's error.
- anchor for the index: datasketch MinHash (256 perms, the same shingles) + MinHashLSH on the first
  `--anchor-mb` MB vs our per-batch index work, one thread each, interleaved repetitions.
"""

import argparse
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.membership import MembershipIndex, index_batch, index_params  # noqa: E402
from pipeline.search import DatasetSearch  # noqa: E402
from stages.lsh import band_keys  # noqa: E402
from stages.minhash import MinHasher, exact_jaccard  # noqa: E402
from stages.shingles import shingle_hashes  # noqa: E402

IDENT = re.compile(r"\b[A-Za-z_]\w*\b")
BANDS = ((0.95, 1.0), (0.9, 0.95), (0.8, 0.9), (0.7, 0.8))


def near_copy(text: str, low: float, high: float, rng: random.Random, ngram_size: int = 5):
    """Edit `text` (rename identifiers, insert and delete lines) until the exact Jaccard of its code
    shingles to the original falls in [low, high); returns (copy, J), or None if the edits overshoot."""
    original = shingle_hashes(text, ngram_size)
    lines = text.split("\n")
    for _ in range(4 * len(lines) + 50):
        i = rng.randrange(len(lines))
        action = rng.random()
        names = list(IDENT.finditer(lines[i]))
        if action < 0.6 and names:
            m = rng.choice(names)
            lines[i] = lines[i][:m.start()] + f"zz{rng.getrandbits(32):x}" + lines[i][m.end():]
        elif action < 0.8:
            lines.insert(i, f"v{rng.getrandbits(24):x} = w{rng.getrandbits(24):x}(u{rng.getrandbits(24):x})")
        elif len(lines) > 1:
            del lines[i]
        copy = "\n".join(lines)
        j = exact_jaccard(original, shingle_hashes(copy, ngram_size))
        if low <= j < high:
            return copy, j
        if j < low:
            return None
    return None


def _seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def _wall_and_cpu(fn, *args, **kwargs) -> tuple[float, float]:
    """Wall seconds and CPU seconds of this process (all threads): on a shared machine the CPU time
    says what the work costs, the wall time what a user waited."""
    cpu = time.process_time()
    wall = _seconds(fn, *args, **kwargs)
    return wall, time.process_time() - cpu


def _median_time(fn, reps: int, *args, **kwargs) -> float:
    return statistics.median(_seconds(fn, *args, **kwargs) for _ in range(reps))


def bench_search(out: Path, reps: int) -> None:
    search = DatasetSearch(out)
    files = search.files
    mb = sum(Path(f).stat().st_size for f in files) / 1e6
    content_mb = _content_mb(out)
    print(f"\n## search over {out}: {len(files)} shards, {mb:,.0f} MB on disk, {content_mb:,.0f} MB of content")

    def anchor(query: str) -> int:  # the plain way: read every content column, match, count
        n = 0
        for batch in pads.dataset(files).to_batches(columns=["content"]):
            n += pc.sum(pc.match_substring(batch.column(0), query)).as_py() or 0
        return n

    queries = [("exact, rare", "def frobnicate_widget(", False, 10),
               ("exact, common (stops at 10)", "import os", False, 10),
               ("exact, common, limit 1000", "import os", False, 1000),
               ("regex, rare", r"^class \w+Frobnicator\(", True, 10),
               ("regex, anchored, common", r"^def test_\w+\(self\):", True, 10)]
    rows = []
    for label, q, is_regex, limit in queries:
        ours, base = [], []
        for _ in range(reps):  # interleaved: ours, anchor, ours, anchor ...
            ours.append(_wall_and_cpu(search.search, q, is_regex=is_regex, limit=limit))
            if not is_regex and limit == 10:
                base.append(_wall_and_cpu(anchor, q))
        o = [statistics.median(x) for x in zip(*ours, strict=True)]
        b = [statistics.median(x) for x in zip(*base, strict=True)] if base else None
        rows.append((label, o, b))
    print("| query | ours: wall s (CPU s) | pyarrow scan: wall s (CPU s) | ratio (wall) |")
    print("|---|---:|---:|---:|")
    for label, o, b in rows:
        print(f"| {label} | {o[0]:.2f} ({o[1]:.2f}) | {'' if b is None else f'{b[0]:.2f} ({b[1]:.2f})'} | "
              f"{'' if b is None else f'{b[0] / o[0]:.1f}x'} |")
    print(f"rare exact query: {content_mb / rows[0][1][0]:,.0f} MB of content per wall second, "
          f"{content_mb / rows[0][1][1]:,.0f} MB per CPU second; load average {os.getloadavg()[0]:.1f}")


def _content_mb(out: Path) -> float:
    files = sorted(str(p) for p in (out / "data").glob("*.parquet"))
    return duckdb.execute(f"SELECT sum(strlen(content)) FROM read_parquet({files})").fetchone()[0] / 1e6


def bench_index(out: Path, queries: int, reps: int, seed: int) -> MembershipIndex:
    print(f"\n## membership index of {out}")
    start = time.perf_counter()
    index = MembershipIndex.open(out, rebuild=True, workers=2)
    build = time.perf_counter() - start
    size = sum(p.stat().st_size for p in index.folder.iterdir() if p.is_file()) / 1e6
    m = index.meta
    print(f"build: {build:.1f} s ({m['scan_seconds']:.1f} s scanning content) for {m['records']:,} records, "
          f"{m['lines']:,} distinct lines; index {size:,.0f} MB")
    rng = random.Random(seed)
    ids = rng.sample(range(m["records"]), min(queries, m["records"]))
    texts = _contents(out, ids)
    near = [_median_time(index.near_duplicates, reps, t, 0.7) for t in texts]
    lines = [_median_time(index.lines, reps, t) for t in texts]
    print(f"query, in process (median / p95 of {len(texts)} files): near-duplicates "
          f"{1000 * statistics.median(near):.1f} / {1000 * np.percentile(near, 95):.1f} ms, "
          f"--lines {1000 * statistics.median(lines):.1f} / {1000 * np.percentile(lines, 95):.1f} ms")
    sample = REPO / "pipeline" / "membership.py"
    cli, cpu = [], []
    for _ in range(reps):
        start, used = time.perf_counter(), _children_cpu()
        subprocess.run([sys.executable, "-m", "pipeline.cli", "membership", str(sample), "--dataset", str(out)],
                       check=True, capture_output=True)
        cli.append(time.perf_counter() - start)
        cpu.append(_children_cpu() - used)
    print(f"query through the CLI (new process, imports and numba cache load included): "
          f"{statistics.median(cli):.2f} s wall, {statistics.median(cpu):.2f} s CPU")
    return index


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _contents(out: Path, ids: list[int]) -> list[str]:
    table = pads.dataset(sorted(str(p) for p in (out / "data").glob("*.parquet"))).to_table(columns=["content"])
    return [table["content"][i].as_py() or "" for i in ids]


def bench_recall(out: Path, index: MembershipIndex, per_band: int, seed: int) -> None:
    rng = random.Random(seed)
    records = index.records
    candidates = [i for i in rng.sample(range(records.num_rows), min(records.num_rows, 20 * per_band))]
    texts = _contents(out, candidates)
    found = {band: [] for band in BANDS}
    errors = []
    for rid, text in zip(candidates, texts, strict=True):
        if len(shingle_hashes(text)) < 100 or all(len(v) >= per_band for v in found.values()):
            continue
        for band in BANDS:
            if len(found[band]) >= per_band:
                continue
            made = near_copy(text, *band, rng)
            if made is None:
                continue
            copy, j = made
            _, hits = index.near_duplicates(copy, 0.7)
            original = (records["repo_name"][rid].as_py(), records["path"][rid].as_py())
            match = [h for h in hits if (h.repo_name, h.path) == original]
            found[band].append(bool(match))
            if match:
                errors.append(match[0].jaccard - j)
    print("\n## recall of planted near-copies (query threshold 0.7)")
    print("| exact J of the copy | copies | found | recall |")
    print("|---|---:|---:|---:|")
    for band, hits in found.items():
        if hits:
            print(f"| {band[0]:.2f}-{band[1]:.2f} | {len(hits)} | {sum(hits)} | {sum(hits) / len(hits):.3f} |")
    at_08 = [h for band, hits in found.items() if band[0] >= 0.8 for h in hits]
    print(f"recall at J >= 0.8: {sum(at_08)}/{len(at_08)} = {sum(at_08) / max(len(at_08), 1):.3f}; "
          f"estimate - exact J: mean {np.mean(errors):+.3f}, 95% within +-{np.percentile(np.abs(errors), 95):.3f}")


def bench_datasketch(out: Path, anchor_mb: float, reps: int, queries: int, seed: int) -> None:
    """Index build work per core on the first `anchor_mb` MB, ours vs datasketch, interleaved repetitions:
    ours = shingles + signatures + band keys + line hashes (one thread, what each index-build thread does);
    datasketch = the same shingles into `MinHash.update_batch` + `MinHashLSH.insert`, 256 permutations."""
    from datasketch import MinHash, MinHashLSH

    table = pads.dataset(sorted(str(p) for p in (out / "data").glob("*.parquet"))).to_table(columns=["content"])
    texts, size = [], 0
    for value in table["content"]:
        text = value.as_py() or ""
        texts.append(text)
        size += len(text.encode())
        if size >= anchor_mb * 1e6:
            break
    params = index_params()
    hasher = MinHasher(params["num_perm"], params["seed"])
    array = pa.array(texts, pa.large_string())

    def ours() -> None:
        for i in range(0, len(texts), 512):
            signatures, _, _ = index_batch(array.slice(i, 512), hasher, params)
            band_keys(signatures, params["bands"], params["rows"])

    def theirs() -> tuple[MinHashLSH, list]:
        lsh, sketches = MinHashLSH(threshold=0.7, num_perm=256), []
        for i, text in enumerate(texts):
            sketch = MinHash(num_perm=256)
            sketch.update_batch(shingle_hashes(text).view("S8"))
            sketches.append(sketch)
            lsh.insert(i, sketch)
        return lsh, sketches

    ours()  # numba kernels loaded before timing
    t_ours, t_theirs = [], []
    for _ in range(reps):
        t_ours.append(_seconds(ours))
        t_theirs.append(_seconds(theirs))
    o, t = statistics.median(t_ours), statistics.median(t_theirs)
    lsh, sketches = theirs()
    picks = random.Random(seed).sample(range(len(texts)), min(queries, len(texts)))
    q_theirs = statistics.median(_seconds(lsh.query, sketches[i]) for i in picks)
    print(f"\n## index build work per core, first {size / 1e6:.0f} MB ({len(texts):,} records), "
          f"median of {reps} interleaved repetitions")
    print(f"ours (shingles, signatures, band keys, line hashes): {size / 1e6 / o:.1f} MB/s; datasketch (shingles, "
          f"MinHash.update_batch, MinHashLSH.insert): {size / 1e6 / t:.2f} MB/s; ratio {t / o:.1f}x")
    print(f"datasketch in-memory LSH query with the sketch given: {1000 * q_theirs:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--per-band", type=int, default=100)
    parser.add_argument("--anchor-mb", type=float, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parts", default="search,index,recall,anchor", help="comma-separated subset to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "search" in parts:
        bench_search(args.out, args.reps)
    if parts & {"index", "recall"}:
        index = bench_index(args.out, args.queries, args.reps, args.seed)
        if "recall" in parts:
            bench_recall(args.out, index, args.per_band, args.seed)
    if "anchor" in parts:
        bench_datasketch(args.out, args.anchor_mb, args.reps, args.queries, args.seed)


if __name__ == "__main__":
    main()
