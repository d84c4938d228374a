"""Near-dedup speed: our signature phase and full stage vs datatrove (and datasketch, rensa), same run.

    .venv/bin/python bench/bench_dedup.py CORPUS_DIR [--mb 300] [--reps 3] [--workers 2]

CORPUS_DIR holds Parquet files with `content` (e.g. the data/ of `pipeline ingest @python /usr/include
/usr/lib/python3/dist-packages /usr/share/perl ...`). Whole files are taken until --mb MB of content.

1. Signature phase, one core each, over the same in-memory documents (loading is not timed):
   - codecurate: `NearDedupSignature` (shipped defaults: code 5-grams, 256 permutations, band rows, files)
   - datatrove `MinhashDedupSignature`, 14x8 = 112 hashes, a plain `str.split` word tokenizer
   - datasketch `MinHash(112).update_batch` over the same normalised `str.split` 5-grams
   - rensa `digest_matrix_from_flat_token_hashes` (256 perms, u32) fed with our shingle hashes
2. Full stage with N workers: `pipeline run` with near_dedup only (Parquet in, data/ + removed/ out)
   vs datatrove's four stages (signatures, buckets, cluster, filter; Parquet in and out).
Each measurement runs in a fresh process; repetitions are interleaved and the median is reported with
CPU seconds, MB/s, docs/s and peak RSS (of the largest process in the tree, from wait4).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIGNATURE_TOOLS = ("codecurate", "datatrove", "datasketch", "rensa")
STAGE_TOOLS = ("codecurate", "datatrove")


# -- datatrove's four stages (also used by dedup_accuracy.py) -----------------------------------------
def split_tokenizer():
    from datatrove.utils.word_tokenizers import WordTokenizer

    class SplitTokenizer(WordTokenizer):
        """The cheapest word tokenizer: whitespace split (datatrove's default is spaCy, ~5x slower)."""

        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return text.splitlines()

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            raise NotImplementedError

    return SplitTokenizer()


def datatrove_signature(output: str, config, tokenizer):
    """`MinhashDedupSignature` with its default xxhash64 shingle hash; xxhash >= 4 only hashes bytes, so
    the shingle string is encoded first (datatrove 0.10 passes str and fails)."""
    import xxhash
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    def xxhash64(text: str) -> int:
        return xxhash.xxh64_intdigest(text.encode("utf-8", "surrogatepass"))

    step = MinhashDedupSignature(output, config=config, language=tokenizer)
    step._hash_func = xxhash64
    return step


def run_datatrove(input_dir: Path, work: Path, workers: int, config=None, tokenizer="en",
                  glob: str = "*.parquet") -> tuple[float, dict[str, Path]]:
    """datatrove's MinHash dedup as documented: signatures, buckets, cluster, filter. Returns seconds."""
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    config = config or MinhashConfig()
    folders = {name: work / name for name in ("sigs", "buckets", "remove_ids", "output", "removed", "logs")}
    tasks = len(list(input_dir.glob(glob)))

    def reader():
        return ParquetReader(str(input_dir), glob_pattern=glob, text_key="content", id_key="blob_id")

    def executor(steps, n, name):
        return LocalPipelineExecutor(steps, tasks=n, workers=min(workers, n),
                                     logging_dir=str(folders["logs"] / name))

    start = time.perf_counter()
    executor([reader(), datatrove_signature(str(folders["sigs"]), config, tokenizer)],
             tasks, "sigs").run()
    executor([MinhashDedupBuckets(str(folders["sigs"]), str(folders["buckets"]), config=config)],
             config.num_buckets, "buckets").run()
    executor([MinhashDedupCluster(str(folders["buckets"]), str(folders["remove_ids"]), config=config,
                                  save_cluster_id=True)], 1, "cluster").run()
    executor([reader(), MinhashDedupFilter(str(folders["remove_ids"]),
                                           exclusion_writer=ParquetWriter(str(folders["removed"]))),
              ParquetWriter(str(folders["output"]))], tasks, "filter").run()
    return time.perf_counter() - start, folders


# -- one measurement (in a fresh process) ------------------------------------------------------------
def load_documents(input_dir: Path):
    from datatrove.data import Document

    docs = []
    for f in sorted(input_dir.glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            text = row.pop("content")
            docs.append(Document(text=text, id=f"{row['repo_name']}/{row['path']}", metadata=row))
    return docs


def signature_run(tool: str, input_dir: Path, work: Path) -> dict:
    import numpy as np

    docs = load_documents(input_dir)
    schema = pq.read_schema(next(iter(sorted(input_dir.glob("*.parquet")))))
    cpu, wall = time.process_time(), time.perf_counter()
    if tool == "codecurate":
        from stages.near_dedup import NearDedupOptions, NearDedupSignature

        step = NearDedupSignature("near_dedup", NearDedupOptions(), work, schema, partitions=1)
        for _ in step.run(iter(docs)):
            pass
    elif tool == "datatrove":
        from datatrove.pipeline.dedup.minhash import MinhashConfig

        datatrove_signature(str(work / "sigs"), MinhashConfig(), split_tokenizer()).run(iter(docs))
    elif tool == "datasketch":
        from datasketch import MinHash
        from datatrove.utils.text import ngrams, simplify_text

        for doc in docs:
            shingles = {" ".join(g).encode() for g in ngrams(simplify_text(doc.text).split(), 5)}
            if shingles:
                MinHash(num_perm=112).update_batch(list(shingles))
    elif tool == "rensa":
        import pyarrow as pa
        from rensa import RMinHash

        from stages.shingles import batch_shingles

        for start in range(0, len(docs), 1024):
            batch = pa.array([d.text for d in docs[start:start + 1024]], pa.large_string())
            values, offsets, _ = batch_shingles(batch)
            RMinHash.digest_matrix_from_flat_token_hashes(values, offsets.astype(np.uint64), 256, 42)
    return {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}


def stage_run(tool: str, input_dir: Path, work: Path, workers: int) -> dict:
    start = time.perf_counter()
    if tool == "codecurate":
        import yaml

        config = {"name": "bench", "input": {"paths": [str(input_dir)]}, "output": str(work / "out"),
                  "executor": {"kind": "local", "workers": workers}, "stages": [{"near_dedup": {"level": "file"}}]}
        (work / "bench.yaml").write_text(yaml.safe_dump(config))
        subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(work / "bench.yaml"), "--quiet",
                        "--overwrite"], check=True, cwd=REPO)
    else:
        from datatrove.pipeline.dedup.minhash import MinhashConfig

        run_datatrove(input_dir, work, workers, config=MinhashConfig(), tokenizer=split_tokenizer())
    return {"wall": time.perf_counter() - start}


def measure(args: list[str]) -> dict:
    """Run one measurement in a fresh interpreter; its process tree's peak RSS comes from wait4."""
    proc = subprocess.Popen([sys.executable, __file__, "--one", *args], stdout=subprocess.PIPE, cwd=REPO)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"measurement {args} failed")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["cpu_tree"] = usage.ru_utime + usage.ru_stime
    return result


# -- the benchmark ------------------------------------------------------------------------------------
def prepare_input(corpus: Path, mb: float, folder: Path) -> tuple[float, int]:
    folder.mkdir(parents=True, exist_ok=True)
    total = docs = 0
    for f in sorted(corpus.glob("*.parquet")):
        if total >= mb * 1e6:
            break
        table = pq.read_table(f, columns=["content"])
        total += sum(len(t.encode("utf-8", "surrogatepass")) for t in table["content"].to_pylist() if t)
        docs += table.num_rows
        shutil.copy(f, folder / f.name)
    return total / 1e6, docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, nargs="?")
    parser.add_argument("--mb", type=float, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="tools to leave out, e.g. datasketch")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=4, metavar=("KIND", "TOOL", "INPUT", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        from loguru import logger

        logger.remove()  # datatrove's per-task log lines would drown the table
        logger.add(sys.stderr, level="WARNING")
        kind, tool, input_dir, work = args.one
        run = signature_run(tool, Path(input_dir), Path(work)) if kind == "signature" else \
            stage_run(tool, Path(input_dir), Path(work), args.workers)
        print(json.dumps(run))
        return
    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as tmp:
        tmp = Path(tmp)
        mb, docs = prepare_input(args.corpus, args.mb, tmp / "input")
        print(f"input: {mb:.1f} MB of content, {docs} files, {len(list((tmp / 'input').glob('*')))} Parquet files")
        runs: dict[tuple[str, str], list[dict]] = {}
        plan = [("signature", t) for t in SIGNATURE_TOOLS if t not in args.skip] + \
               [("stage", t) for t in STAGE_TOOLS if t not in args.skip]
        for rep in range(args.reps):
            for kind, tool in plan:
                work = tmp / "work"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                extra = ["--workers", str(args.workers)] if kind == "stage" else []
                r = measure([kind, tool, str(tmp / "input"), str(work), *extra])
                runs.setdefault((kind, tool), []).append(r)
                print(f"rep {rep + 1} {kind:9s} {tool:10s} wall {r['wall']:7.1f}s"
                      + (f" cpu {r['cpu']:7.1f}s" if "cpu" in r else "") + f" rss {r['peak_rss_mb']:.0f} MB",
                      flush=True)
    report(runs, mb, docs, args)


def report(runs: dict, mb: float, docs: int, args) -> None:
    summary = {}
    for (kind, tool), rs in runs.items():
        wall = statistics.median(r["wall"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs) if "cpu" in rs[0] else None
        summary[f"{kind}/{tool}"] = {"wall_s": wall, "cpu_s": cpu, "mb_s": mb / wall, "docs_s": docs / wall,
                                     "mb_s_cpu": mb / cpu if cpu else None,
                                     "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)}
    print(f"\n### Signature phase, 1 core, {mb:.0f} MB ({docs} files), median of {args.reps} interleaved")
    print("| tool | MB/s (wall) | MB per CPU-s | docs/s (wall) | peak RSS MB | vs datatrove (wall) | (CPU) |")
    print("|---|---|---|---|---|---|---|")
    base = summary.get("signature/datatrove")
    for tool in SIGNATURE_TOOLS:
        s = summary.get(f"signature/{tool}")
        if s:
            wall = f"{s['mb_s'] / base['mb_s']:.1f}x" if base else "-"
            cpu = f"{s['mb_s_cpu'] / base['mb_s_cpu']:.1f}x" if base else "-"
            print(f"| {tool} | {s['mb_s']:.1f} | {s['mb_s_cpu']:.1f} | {s['docs_s']:.0f} | "
                  f"{s['peak_rss_mb']:.0f} | {wall} | {cpu} |")
    print(f"\n### Full stage, {args.workers} workers (Parquet in -> kept + removed Parquet out)")
    print("| tool | seconds | MB/s | docs/s | peak RSS MB (largest process) | vs datatrove |")
    print("|---|---|---|---|---|---|")
    base = summary.get("stage/datatrove")
    for tool in STAGE_TOOLS:
        s = summary.get(f"stage/{tool}")
        if s:
            ratio = f"{s['mb_s'] / base['mb_s']:.1f}x" if base else "-"
            print(f"| {tool} | {s['wall_s']:.1f} | {s['mb_s']:.1f} | {s['docs_s']:.0f} | {s['peak_rss_mb']:.0f} | "
                  f"{ratio} |")
    if args.json:
        args.json.write_text(json.dumps({"mb": mb, "docs": docs, "summary": summary,
                                         "runs": {f"{k}/{t}": v for (k, t), v in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
