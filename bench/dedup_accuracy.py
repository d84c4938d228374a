"""Near-dedup accuracy on real code: our near_dedup stage vs datatrove's MinHash dedup, same sample.

Ground truth: exact Jaccard of our code 5-gram shingles (`shingle_hashes`) over all pairs of a
uniform sample, found with a prefix-filtered inverted index and checked against brute force on a
sub-sample. A true pair (J >= threshold) is found when both files end in the same cluster.

    .venv/bin/python bench/dedup_accuracy.py CORPUS_DIR [--sample 10000] [--threshold 0.7] [--seed 0]
                     [--exclude-repos REGEX] [--drop-generated | --as-shipped configs/stack-v2.yaml]
    .venv/bin/python bench/dedup_accuracy.py CORPUS_DIR --repo-forks 300   # repository document: union vs concatenation

CORPUS_DIR holds Parquet files with `content` (e.g. the data/ of `pipeline ingest @python /usr/include ...`).
Files with fewer than 5 tokens have no shingles and are left out of the sample (exact dedup's job).
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from loguru import logger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_dedup import run_datatrove  # noqa: E402

from stages.language import is_generated  # noqa: E402
from stages.lsh import sorted_unique  # noqa: E402
from stages.minhash import exact_jaccard, pair_jaccard  # noqa: E402
from stages.shingles import batch_shingles  # noqa: E402

BANDS = [("0.70-0.85", 0.70, 0.85), ("0.85-1", 0.85, 1.0), ("=1", 1.0, 1.1)]


# -- ground truth -----------------------------------------------------------------------------------
def shingle_sets(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    values, offsets, _ = batch_shingles(texts)
    return values, offsets


def all_pairs(values: np.ndarray, offsets: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair with Jaccard >= threshold (AllPairs prefix filtering): shingles are ranked rarest
    first; two sets reaching the threshold share a shingle among their first |x| - ceil(t|x|) + 1."""
    sizes = np.diff(offsets)
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    rank_of = np.empty(len(uniq), np.int64)
    rank_of[np.lexsort((uniq, counts))] = np.arange(len(uniq))
    ranks = rank_of[inverse]
    doc = np.repeat(np.arange(len(sizes)), sizes)
    order = np.lexsort((ranks, doc))  # per document, rarest first
    ranks = ranks[order]
    position = np.arange(len(ranks)) - np.repeat(offsets[:-1], sizes)
    prefix = sizes - np.ceil(threshold * sizes - 1e-9).astype(np.int64) + 1
    in_prefix = position < np.repeat(prefix, sizes)
    tokens, docs = ranks[in_prefix], doc[in_prefix]
    sort = np.lexsort((docs, tokens))
    tokens, docs = tokens[sort], docs[sort]
    starts = np.flatnonzero(np.r_[True, tokens[1:] != tokens[:-1]])
    ends = np.r_[starts[1:], len(tokens)]
    a_parts, b_parts = [], []
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            i, j = np.triu_indices(e - s, 1)
            a_parts.append(docs[s + i])
            b_parts.append(docs[s + j])
    if not a_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    pairs = np.unique(np.stack([np.concatenate(a_parts), np.concatenate(b_parts)], 1), axis=0)
    a, b = pairs[:, 0], pairs[:, 1]
    small, large = np.minimum(sizes[a], sizes[b]), np.maximum(sizes[a], sizes[b])
    keep = small >= threshold * large - 1e-9
    a, b = a[keep], b[keep]
    jac = pair_jaccard(ranks, offsets, a, b)
    keep = jac >= threshold - 1e-12
    return a[keep], b[keep], jac[keep]


def brute_force(values, offsets, threshold):
    n = len(offsets) - 1
    a, b = np.triu_indices(n, 1)
    jac = pair_jaccard(values, offsets, a, b)
    keep = jac >= threshold - 1e-12
    return a[keep], b[keep], jac[keep]


# -- clusters of each tool --------------------------------------------------------------------------
def our_clusters(sample: Path, work: Path, threshold: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(cluster id per row, removed mask, seconds) from a real `pipeline run` of near_dedup."""
    config = {"name": "accuracy", "input": {"paths": [str(sample)]}, "output": str(work / "ours"),
              "executor": {"kind": "local", "workers": 2},
              "stages": [{"near_dedup": {"level": "file", "threshold": threshold}}]}
    (work / "ours.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(work / "ours.yaml"), "--overwrite", "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    rows = pq.read_table(sample, columns=["repo_name", "path"])
    key = {k: i for i, k in enumerate(zip(rows["repo_name"].to_pylist(), rows["path"].to_pylist(), strict=True))}
    cluster = np.arange(rows.num_rows)
    removed = np.zeros(rows.num_rows, bool)
    dropped = pq.read_table(work / "ours" / "removed" / "near_dedup") if (work / "ours" / "removed" / "near_dedup"
                                                                            ).exists() else None
    if dropped is not None:
        for repo, path, kept_repo, kept_path in zip(*(dropped[c].to_pylist() for c in
                                                      ("repo_name", "path", "kept_repo_name", "kept_path")),
                                                    strict=True):
            i, k = key[(repo, path)], key[(kept_repo, kept_path)]
            cluster[i], removed[i] = k, True
    return cluster, removed, seconds


def datatrove_clusters(sample: Path, work: Path, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(cluster id per row, removed mask, seconds) from datatrove's four stages with its defaults."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    seconds, folders = run_datatrove(sample.parent, work / "datatrove", workers=2, config=MinhashConfig(),
                                     tokenizer="en", glob=sample.name)
    cluster, removed = np.arange(n), np.zeros(n, bool)
    for f in sorted(folders["remove_ids"].glob("*.clusters")):
        data = np.frombuffer(f.read_bytes(), np.uint32).reshape(-1, 2)
        cluster[data[:, 0]] = n + data[:, 1]
    for f in sorted(folders["remove_ids"].glob("*.remove")):
        removed[np.frombuffer(f.read_bytes(), np.uint32)] = True
    return cluster, removed, seconds


# -- metrics ---------------------------------------------------------------------------------------
def evaluate(cluster: np.ndarray, removed: np.ndarray, truth: tuple, values: np.ndarray, offsets: np.ndarray,
             threshold: float) -> dict:
    """Recall per J band, pairwise precision of the clusters, removed files with no true neighbour in
    their cluster, and the share of removed files similar to their cluster's kept file."""
    a, b, jac = truth
    found = cluster[a] == cluster[b]
    out = {}
    for name, low, high in BANDS:
        band = (jac >= low - 1e-12) & (jac < high - 1e-12) if high <= 1 else jac >= 1 - 1e-12
        out[f"recall {name}"] = (float(found[band].mean()) if band.any() else math.nan, int(band.sum()))
    true_pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    members: dict[int, list[int]] = {}
    for i, c in enumerate(cluster.tolist()):
        members.setdefault(c, []).append(i)
    clustered = good = 0
    for group in members.values():
        for x in range(len(group)):
            for y in range(x + 1, len(group)):
                clustered += 1
                good += (group[x], group[y]) in true_pairs
    out["cluster precision"] = (good / clustered if clustered else math.nan, clustered)
    neighbours: dict[int, set[int]] = {}
    for x, y in true_pairs:
        neighbours.setdefault(x, set()).add(y)
        neighbours.setdefault(y, set()).add(x)
    wrong = sum(1 for i in np.flatnonzero(removed)
                if not any(cluster[j] == cluster[i] for j in neighbours.get(int(i), ())))
    out["wrongly removed"] = (wrong, int(removed.sum()))
    kept_of = {c: i for i, c in enumerate(cluster.tolist()) if not removed[i]}
    gone = np.flatnonzero(removed)
    kept = np.array([kept_of.get(int(cluster[i]), i) for i in gone], np.int64)
    direct = pair_jaccard(values, offsets, gone, kept) >= threshold - 1e-12
    out["removed ~ kept"] = (float(direct.mean()) if len(gone) else math.nan, len(gone))
    return out


def sample_corpus(corpus: Path, size: int, seed: int, out: Path, exclude: str | None = None,
                  drop_generated: bool = False, as_shipped: Path | None = None) -> pa.Table:
    table = pa.concat_tables([pq.read_table(f) for f in sorted(corpus.glob("*.parquet"))], promote_options="permissive")
    if exclude:
        table = table.filter(pc.invert(pc.match_substring_regex(table["repo_name"], exclude)))
    if drop_generated:  # what the shipped config's language_selection removes before near_dedup sees it
        texts = table["content"].to_pylist()
        generated = [is_generated(path or "", (text or "").encode("utf-8", "surrogatepass"), text or "")
                     for path, text in zip(table["path"].to_pylist(), texts, strict=True)]
        print(f"generated files left out: {sum(generated):,} of {len(generated):,}")
        table = table.filter(pc.invert(pa.array(generated, pa.bool_())))
    if as_shipped:
        table = shipped_input(table, as_shipped)
    values, offsets = shingle_sets(table["content"])
    eligible = np.flatnonzero(np.diff(offsets) > 0)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(eligible, size=min(size, len(eligible)), replace=False))
    sample = table.take(pa.array(chosen))
    # the same file ingested from two roots (e.g. @python and /usr/lib/python3.11) has the same repo_name and
    # path: make the keys unique, since clusters are read back from removed/ by (repo_name, path)
    seen: set[tuple[str, str]] = set()
    paths = []
    for repo, path in zip(sample["repo_name"].to_pylist(), sample["path"].to_pylist(), strict=True):
        paths.append(path if (repo, path) not in seen else f"{path}~{len(paths)}")
        seen.add((repo, paths[-1]))
    sample = sample.set_column(sample.schema.get_field_index("path"), "path", pa.array(paths, pa.string()))
    pq.write_table(sample, out)
    return sample


def add_sample_arguments(parser: argparse.ArgumentParser, size: int = 5000) -> None:
    """The corpus and how it is sampled (shared by the dedup accuracy benches)."""
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--sample", type=int, default=size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exclude-repos", help="regex of repo_name left out of the corpus before sampling")
    parser.add_argument("--as-shipped", type=Path, metavar="CONFIG",
                        help="sample the files CONFIG's row-level stages before its first near_dedup keep "
                             "(e.g. configs/stack-v2.yaml: language_selection, license_filter, quality_filters)")
    parser.add_argument("--drop-generated", action="store_true",
                        help="leave out generated files (language_selection's rule) before sampling")


def sample_from(args: argparse.Namespace, out: Path) -> pa.Table:
    return sample_corpus(args.corpus, args.sample, args.seed, out, args.exclude_repos, args.drop_generated,
                         args.as_shipped)


def sample_and_truth(args: argparse.Namespace, threshold: float) -> tuple[pa.Table, np.ndarray, np.ndarray, tuple]:
    """The sample (in memory), its shingle sets and its exact J >= threshold pairs."""
    with tempfile.TemporaryDirectory() as tmp:
        sample = sample_from(args, Path(tmp) / "sample.parquet")
    values, offsets = shingle_sets(sample["content"])
    return sample, values, offsets, all_pairs(values, offsets, threshold)


def shipped_input(table: pa.Table, config: Path) -> pa.Table:
    """The records `config`'s row-level stages before its first near_dedup keep (opt_out aside): what
    that stage sees in a run of the config, as those stages leave them."""
    from pipeline.config import load_config
    from pipeline.optout.replay import run_row_stages
    from pipeline.step import GlobalStage
    from stages import STAGES

    _, specs = load_config(config)
    first = next(i for i, s in enumerate(specs) if s.kind == "near_dedup")
    stages = [STAGES[s.kind](s.name, s.options) for s in specs[:first] if s.kind != "opt_out"]
    stages = [s for s in stages if not isinstance(s, GlobalStage)]
    results = run_row_stages(stages, table.to_pylist())
    kept = [row for row, reason in results[-1] if reason is None]
    print(f"{config.name}'s {', '.join(s.name for s in stages)} keep {len(kept):,} of {table.num_rows:,} files")
    return pa.Table.from_pylist(kept, schema=table.schema)  # the columns the stages add are left out


def fork_of(files: list[tuple[str, str]], donors: list[tuple[str, str]], rng: np.random.Generator):
    """A typical fork: 5% of the lines of a fifth of the files edited, two files added, one moved to
    another directory, one deleted."""
    files = list(files)
    for i in rng.choice(len(files), max(1, len(files) // 5), replace=False):
        lines = files[i][1].splitlines()
        for j in rng.choice(len(lines), max(1, len(lines) // 20), replace=False) if lines else []:
            lines[j] = lines[j] + f"  # fork change {rng.integers(10**6)}"
        files[i] = (files[i][0], "\n".join(lines))
    files.pop(int(rng.integers(len(files))))
    moved = int(rng.integers(len(files)))
    files[moved] = ("zz_moved/" + files[moved][0].rsplit("/", 1)[-1], files[moved][1])
    files += [(f"added/{k}_" + donors[k][0].rsplit("/", 1)[-1], donors[k][1]) for k in range(2)]
    return files


def repo_documents(corpus: Path, forks: int, seed: int, threshold: float = 0.85) -> None:
    """Which repository document finds forks better: the union of its files' shingles, or the shingles
    of its files concatenated in path order? Planted forks of real repositories, and all pairs of
    distinct real repositories (pairs over the threshold there are merges of different repositories)."""
    table = pa.concat_tables([pq.read_table(f, columns=["repo_name", "path", "content"])
                              for f in sorted(corpus.glob("*.parquet"))], promote_options="permissive")
    repos: dict[str, list[tuple[str, str]]] = {}
    for repo, path, text in zip(*(table[c].to_pylist() for c in ("repo_name", "path", "content")), strict=True):
        repos.setdefault(repo, []).append((path, text or ""))
    repos = {r: sorted(f) for r, f in repos.items() if 6 <= len(f) and sum(len(t) for _, t in f) < 5_000_000}
    names = sorted(repos)
    rng = np.random.default_rng(seed)
    originals = [names[i] for i in rng.choice(len(names), min(forks, len(names)), replace=False)]
    planted = {f"fork/{r}": fork_of(repos[r], repos[names[(i + 1) % len(names)]][:2], rng)
               for i, r in enumerate(originals)}

    def documents(files_by_repo: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        union_parts, concat_texts = [], []
        for files in files_by_repo.values():
            values, offsets, _ = batch_shingles(pa.array([t for _, t in files], pa.large_string()))
            union_parts.append(sorted_unique(values))
            concat_texts.append("\n".join(t for _, t in sorted(files)))
        concat_values, concat_offsets, _ = batch_shingles(pa.array(concat_texts, pa.large_string()))
        concat = [sorted_unique(concat_values[concat_offsets[i]:concat_offsets[i + 1]])
                  for i in range(len(concat_texts))]
        return {"union": union_parts, "concatenation": concat}

    real, fork_docs = documents({r: repos[r] for r in names}), documents(planted)
    index = {r: i for i, r in enumerate(names)}
    print(f"\n### Repository document: {len(names)} real repositories (6+ files), {len(planted)} planted forks")
    print(f"| document | forks found (J >= {threshold}) | median fork J | distinct real repo pairs >= {threshold} |")
    print("|---|---|---|---|")
    for kind in ("union", "concatenation"):
        sets = real[kind]
        flat = np.concatenate(sets)
        offsets = np.r_[0, np.cumsum([len(x) for x in sets])]
        a, _, _ = all_pairs(flat, offsets, threshold)
        fork_j = [exact_jaccard(fork_docs[kind][k], sets[index[r]]) for k, r in enumerate(originals)]
        print(f"| {kind} | {np.mean(np.array(fork_j) >= threshold):.3f} | {np.median(fork_j):.3f} | {len(a)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sample_arguments(parser, size=10_000)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--brute-force-check", type=int, default=1500, help="sub-sample checked against brute force")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--repo-forks", type=int, default=0,
                        help="instead: compare repository documents (union vs concatenation) with N planted forks")
    args = parser.parse_args()
    logger.remove()  # datatrove's per-task log lines would drown the table
    logger.add(sys.stderr, level="WARNING")
    if args.repo_forks:
        repo_documents(args.corpus, args.repo_forks, args.seed)
        return
    with tempfile.TemporaryDirectory(prefix="dedup_accuracy_") as tmp:
        work = Path(tmp)
        (work / "sample").mkdir()
        sample_file = work / "sample" / "sample.parquet"
        sample = sample_from(args, sample_file)
        values, offsets = shingle_sets(sample["content"])
        start = time.perf_counter()
        a, b, jac = all_pairs(values, offsets, args.threshold)
        print(f"sample: {sample.num_rows} files, {pc.sum(pc.utf8_length(sample['content'])).as_py() / 1e6:.1f} MB; "
              f"{len(a)} pairs with J >= {args.threshold} ({time.perf_counter() - start:.1f}s)")
        m = min(args.brute_force_check, sample.num_rows)
        sub_values, sub_offsets = values[: offsets[m]], offsets[: m + 1]
        bf = brute_force(sub_values, sub_offsets, args.threshold)
        pf = all_pairs(sub_values, sub_offsets, args.threshold)
        assert set(zip(*bf[:2], strict=True)) == set(zip(*pf[:2], strict=True)), "prefix filter != brute force"
        print(f"prefix filter == brute force on the first {m} files ({len(bf[0])} pairs)")
        results = {}
        for tool, run in (("codecurate near_dedup", lambda: our_clusters(sample_file, work, args.threshold)),
                          ("datatrove 14x8 (defaults)", lambda: datatrove_clusters(sample_file, work,
                                                                                   sample.num_rows))):
            cluster, removed, seconds = run()
            results[tool] = evaluate(cluster, removed, (a, b, jac), values, offsets, args.threshold) | {
                "seconds": seconds}
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def print_table(results: dict) -> None:
    names = [n for n, _, _ in BANDS]
    header = ["tool", *(f"recall {n}" for n in names), "cluster precision", "wrongly removed", "removed ~ kept",
              "seconds"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for tool, r in results.items():
        cells = [f"{r[f'recall {n}'][0]:.3f} ({r[f'recall {n}'][1]})" for n in names]
        cells.append(f"{r['cluster precision'][0]:.4f} ({r['cluster precision'][1]} pairs)")
        wrong, total = r["wrongly removed"]
        cells.append(f"{wrong} of {total} ({100 * wrong / max(total, 1):.2f}%)")
        cells.append(f"{r['removed ~ kept'][0]:.3f}")
        cells.append(f"{r['seconds']:.0f}")
        print(f"| {tool} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
