"""The `pii` stage vs datatrove's `PIIFormatter` (emails + public IPs only), same data, same run (issue 5).

Both run as datatrove pipeline steps in this process (one core) over the same Documents made from
>= 200 MB of real code (`pipeline ingest` of this machine's Python, /usr/include, Perl, Node...).
Median of interleaved repetitions; MB/s of `content`. Goal: ours >= 0.5x the formatter while finding
all entity types (EMAIL, IP_ADDRESS, KEY, PASSWORD).

    .venv/bin/python bench/bench_pii.py [--corpus /tmp/codecurate-corpus] [--mb 220] [--reps 3]
"""

import argparse
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from common import make_corpus, medians, timed
from datatrove.data import Document
from datatrove.pipeline.formatters import PIIFormatter
from rich.console import Console
from rich.table import Table

from stages.pii import Pii, PiiOptions


def load_texts(shards: list[Path], megabytes: float) -> list[str]:
    texts, total = [], 0
    for shard in shards:
        for text in pq.read_table(shard, columns=["content"])["content"].to_pylist():
            if text:
                texts.append(text)
                total += len(text.encode("utf-8", "surrogatepass"))
        if total >= megabytes * 1e6:
            break
    return texts


def documents(texts: list[str]) -> list[Document]:
    return [Document(text=t, id=str(i), metadata={"blob_id": str(i)}) for i, t in enumerate(texts)]


def run_ours(texts: list[str], found: Counter) -> None:
    stage = Pii("pii", PiiOptions())
    for _ in stage.run(iter(documents(texts))):
        pass
    found.clear()
    found.update({k: v for k, v in stage.stats.stats.items() if k.startswith("detail:")})


def run_anchor(texts: list[str], changed: Counter) -> None:
    docs = documents(texts)
    before = [d.text for d in docs]
    for _ in PIIFormatter().run(iter(docs)):
        pass
    changed["documents changed"] = sum(d.text != b for d, b in zip(docs, before, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="/tmp/codecurate-corpus")
    parser.add_argument("--mb", type=float, default=220)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    texts = load_texts(make_corpus(Path(args.corpus)), args.mb)
    megabytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
    ours, anchor = Counter(), Counter()
    timings: dict[str, list[float]] = {"pii stage (EMAIL, IP_ADDRESS, KEY, PASSWORD)": [],
                                       "datatrove PIIFormatter (emails, IPs)": []}
    for _ in range(args.reps):  # interleaved: the machine is shared and noisy
        timings["datatrove PIIFormatter (emails, IPs)"].append(timed(lambda: run_anchor(texts, anchor)))
        timings["pii stage (EMAIL, IP_ADDRESS, KEY, PASSWORD)"].append(timed(lambda: run_ours(texts, ours)))
    med = medians(timings)
    table = Table(title=f"pii on {megabytes:.0f} MB of real code ({len(texts)} files), median of {args.reps}")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("MB/s", justify="right")
    for name, seconds in med.items():
        table.add_row(name, f"{seconds:.1f}", f"{megabytes / seconds:.1f}")
    console = Console()
    console.print(table)
    ratio = med["datatrove PIIFormatter (emails, IPs)"] / med["pii stage (EMAIL, IP_ADDRESS, KEY, PASSWORD)"]
    console.print(f"ours / datatrove speed ratio: {ratio:.2f} (goal >= 0.5)")
    console.print("ours found: " + ", ".join(f"{k.removeprefix('detail:')}={v.total:.0f}" for k, v in
                                             sorted(ours.items())))
    console.print(f"datatrove changed {anchor['documents changed']} documents")


if __name__ == "__main__":
    main()
