"""Pre-training shard production vs the bare fast tokenizer (issue 9), same texts, same run.

(a) anchor: the Hugging Face fast tokenizer called as `tokenizer(list_of_texts)` in batches of 1,000 files
    (its fastest use), over every file's content;
(b) `build_shards` with file-level documents, FIM 0.5 (PSM/SPM 50/50) and packing at seq_len 2048,
    reading the corpus and writing the shards;
(c) the same with repository-level documents (DuckDB grouping, StarCoder2 format).
Median of interleaved repetitions; tokens/s and characters/s. Goal: (b) and (c) >= 0.8x (a).

    .venv/bin/python bench/bench_shards.py [--corpus out/stack-v2] [--tokenizer out/tokenizer] [--reps 3]
"""

import argparse
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import medians, timed
from rich.console import Console
from rich.table import Table

from pipeline.shards.corpus import iter_corpus
from pipeline.shards.pretrain import PretrainConfig, build_shards
from pipeline.shards.tokenizer import load_tokenizer, train_tokenizer

BARE_BATCH = 1000


def corpus_subset(corpus: str, max_chars: int | None, out: Path) -> tuple[Path, list[str]]:
    """The corpus's first `max_chars` characters of files as one Parquet file (both sides read the same texts)."""
    rows, chars = [], 0
    for batch in iter_corpus([corpus], ["repo_name", "path", "content"]):
        for row in batch.to_pylist():
            if row["content"]:
                rows.append(row)
                chars += len(row["content"])
            if max_chars and chars >= max_chars:
                break
        if max_chars and chars >= max_chars:
            break
    path = out / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=512)
    return path, [r["content"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="out/stack-v2", help="clean corpus (the default job's output)")
    parser.add_argument("--tokenizer", default="out/tokenizer", help="trained here on the corpus when missing")
    parser.add_argument("--max-chars", type=int, default=None, help="use only the first N characters of files")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    console = Console(width=150)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not Path(args.tokenizer).exists():
            console.print(f"training a tokenizer on {args.corpus} into {args.tokenizer} ...")
            train_tokenizer([args.corpus], Path(args.tokenizer), max_bytes=50_000_000)
        data, texts = corpus_subset(args.corpus, args.max_chars, tmp)
        chars = sum(len(t) for t in texts)
        console.print(f"{len(texts):,} files, {chars / 1e6:,.1f} M characters; tokenizer {args.tokenizer}")

        from transformers import AutoTokenizer

        bare = AutoTokenizer.from_pretrained(args.tokenizer)
        tokenizer = load_tokenizer(args.tokenizer)
        tokens: dict[str, int] = {}

        def anchor() -> None:
            tokens["tokenizer(list_of_texts)"] = sum(
                len(ids) for i in range(0, len(texts), BARE_BATCH)
                for ids in bare(texts[i: i + BARE_BATCH], add_special_tokens=False)["input_ids"])

        def shards(documents: str):
            def run() -> None:
                config = PretrainConfig(input=[str(data)], output=str(tmp / f"out-{documents}"),
                                        tokenizer=args.tokenizer, documents=documents, seq_len=2048)
                tokens[f"pretrain-shards ({documents}-level, FIM 0.5)"] = build_shards(config, tokenizer)["totals"][
                    "tokens"]
            return run

        runs = {"tokenizer(list_of_texts)": anchor, "pretrain-shards (file-level, FIM 0.5)": shards("file"),
                "pretrain-shards (repo-level, FIM 0.5)": shards("repo")}
        timings: dict[str, list[float]] = {name: [] for name in runs}
        for rep in range(args.reps):
            for name, fn in runs.items():
                timings[name].append(timed(fn))
                console.print(f"rep {rep + 1}: {name}: {timings[name][-1]:.1f} s")
        median = medians(timings)
    base_name = "tokenizer(list_of_texts)"
    base = tokens[base_name] / median[base_name]
    table = Table(title=f"shard production vs bare tokenizer (median of {args.reps}, same run)")
    for column in ("work", "seconds", "tokens", "tokens/s", "M chars/s", "ratio (tokens/s)"):
        table.add_column(column, justify="left" if column == "work" else "right")
    for name, seconds in median.items():
        rate = tokens[name] / seconds
        table.add_row(name, f"{seconds:.1f}", f"{tokens[name]:,}", f"{rate:,.0f}", f"{chars / seconds / 1e6:.2f}",
                      f"{rate / base:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
