"""language_selection, license_filter and quality_filters on >= 200 MB of real code: records/s and MB/s per
core of each stage, the share each rule removes and its cost, against simple anchors in the same run.

    .venv/bin/python bench/bench_quality.py [--corpus /tmp/codecurate-corpus-licensed] [--mb 250] [--anchor-mb 20]

The corpus is real code ingested with `pipeline ingest` (bench/common.py; made once, with repository licenses),
sampled evenly over its shards. Stages run as in the default job: language_selection (its language list) ->
license_filter -> quality_filters on what is left. "Per core" is MB per CPU-second of this process
(time.process_time), which other work on a shared machine does not inflate. Repetitions are interleaved;
medians are reported. Anchors, on a shared sample of the records that reach quality_filters:
  - language: the bare go-enry call per file (`enry.get_language`), the floor of any linguist detection;
  - StarCoder basic rules: BigCode's computation (line lengths from splitlines, `np.mean([c.isalnum() ...])`);
  - duplicated n-grams: datatrove's `find_all_duplicate` (GopherRepetitionFilter) on str.split words, n=5 and 10;
  - Python syntax: `ast.parse`, the usual parse check.
"""

import ast
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from datatrove.data import Document

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import corpus_arguments, make_corpus  # noqa: E402

from pipeline.records import utf8_len  # noqa: E402
from stages.language import LanguageOptions, LanguageSelection  # noqa: E402
from stages.license import LicenseFilter  # noqa: E402
from stages.linguist import enry  # noqa: E402
from stages.quality import QualityFilters  # noqa: E402
from stages.quality_rules import RULES  # noqa: E402
from stages.quality_signals import Signals  # noqa: E402

COLUMNS = ["repo_name", "path", "content", "language", "license_type", "detected_licenses"]
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "stack-v2.yaml"


def load_sample(shards: list[Path], megabytes: float) -> list[dict]:
    """Every k-th record of the corpus, k chosen so the sample holds about `megabytes` of content."""
    rows = [row for shard in shards for row in pq.read_table(shard, columns=COLUMNS).to_pylist() if row["content"]]
    total = sum(utf8_len(r["content"]) for r in rows) / 1e6
    step = max(1, int(total // megabytes))
    return rows[::step]


def documents(rows: list[dict]) -> list[Document]:
    return [Document(text=r["content"], id=str(i), metadata={k: v for k, v in r.items() if k != "content"})
            for i, r in enumerate(rows)]


def run_stage(stage, docs: list[Document]) -> tuple[float, list[Document], Counter]:
    """(CPU seconds, kept documents, removal reasons grouped by rule) of stage.filter over fresh copies."""
    copies = [Document(text=d.text, id=d.id, metadata=dict(d.metadata)) for d in docs]
    cpu = time.process_time()
    results = [stage.filter(d) for d in copies]
    seconds = time.process_time() - cpu
    kept, reasons = [], Counter()
    for doc, result in zip(copies, results, strict=True):
        if result is True:
            kept.append(doc)
        else:
            reasons[result[1].split("=", 1)[0]] += 1
    return seconds, kept, reasons


def mb(docs: list[Document]) -> float:
    return sum(utf8_len(d.text) for d in docs) / 1e6


# -- anchors ---------------------------------------------------------------------------------------
def enry_only(docs: list[Document]) -> None:
    for d in docs:
        enry().get_language(d.metadata["path"], d.text.encode("utf-8", "surrogatepass"))


def bigcode_basic_stats(docs: list[Document]) -> list[tuple]:
    out = []
    for d in docs:
        lengths = [len(line) for line in d.text.splitlines()] or [0]
        out.append((max(lengths), np.mean(lengths), np.mean([c.isalnum() for c in d.text])))
    return out


def ours_basic_stats(docs: list[Document]) -> list[tuple]:
    signals = [Signals(d.text, None) for d in docs]
    return [(s.max_line_length, s.mean_line_length, s.alphanum_fraction) for s in signals]


def datatrove_ngrams(docs: list[Document]) -> list[tuple]:
    from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate

    return [(find_all_duplicate(words, 5), find_all_duplicate(words, 10)) for words in (d.text.split() for d in docs)]


def ours_ngrams(docs: list[Document]) -> list[tuple]:
    signals = [Signals(d.text, None) for d in docs]
    return [(s.dup_5gram_fraction, s.dup_10gram_fraction) for s in signals]


def ast_parse(docs: list[Document]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for d in docs:
            try:
                ast.parse(d.text)
            except (SyntaxError, ValueError):
                pass


def ours_python_check(docs: list[Document]) -> None:
    rule = next(r for r in RULES if r.name == "python_syntax_error")
    for d in docs:
        rule.measure(Signals(d.text, "Python"))


def cpu_of(fn, docs) -> float:
    cpu = time.process_time()
    fn(docs)
    return time.process_time() - cpu


def rule_costs(stage: QualityFilters, docs: list[Document]) -> tuple[Counter, Counter]:
    """CPU seconds per rule measure and records measured, following the stage's own order and early exit."""
    costs, measured = Counter(), Counter()
    for d in docs:
        signals = Signals(d.text, d.metadata.get("language"))
        for rule, threshold in stage.plan(d.metadata.get("language")):
            cpu = time.process_time()
            value = rule.measure(signals)
            costs[rule.name] += time.process_time() - cpu
            measured[rule.name] += 1
            if rule.removes(value, threshold):
                break
    return costs, measured


def main() -> None:
    args = corpus_arguments("/tmp/codecurate-corpus-licensed", reps=2, mb=250, anchor_mb=20).parse_args()

    rows = load_sample(make_corpus(Path(args.corpus)), args.mb)
    docs = documents(rows)
    languages = next(s["language_selection"] for s in yaml.safe_load(CONFIG.read_text())["stages"]
                     if "language_selection" in s)["languages"]
    language = LanguageSelection("language_selection", LanguageOptions(languages=languages))
    license_ = LicenseFilter("license_filter")
    quality = QualityFilters("quality_filters")
    print(f"corpus: {len(docs)} files, {mb(docs):.1f} MB of real code sampled from {args.corpus}")

    # the stage chain once, to get each stage's input
    _, after_language, _ = run_stage(language, docs)
    _, after_license, _ = run_stage(license_, after_language)
    shared = after_license[:: max(1, int(mb(after_license) // args.anchor_mb))]  # the anchors are slow
    python = [d for d in shared if d.metadata.get("language") == "Python"]

    timings: dict[str, list[float]] = {name: [] for name in (
        "language_selection", "license_filter", "quality_filters", "enry.get_language only",
        "basic: ours", "basic: BigCode", "n-grams: ours", "n-grams: datatrove", "python: ours", "python: ast.parse")}
    outcomes = {}
    for _ in range(args.reps):
        for name, stage, data in (("language_selection", language, docs), ("license_filter", license_, after_language),
                                  ("quality_filters", quality, after_license)):
            seconds, kept, reasons = run_stage(stage, data)
            timings[name].append(seconds)
            outcomes[name] = (data, kept, reasons)
        for name, fn, data in (("enry.get_language only", enry_only, docs),
                               ("basic: ours", ours_basic_stats, shared),
                               ("basic: BigCode", bigcode_basic_stats, shared),
                               ("n-grams: ours", ours_ngrams, shared),
                               ("n-grams: datatrove", datatrove_ngrams, shared),
                               ("python: ours", ours_python_check, python),
                               ("python: ast.parse", ast_parse, python)):
            timings[name].append(cpu_of(fn, data))
    med = {name: statistics.median(values) for name, values in timings.items()}

    print("\n| stage | records in | records out | MB in | records/s per core | MB/s per core |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("language_selection", "license_filter", "quality_filters"):
        data, kept, _ = outcomes[name]
        print(f"| {name} | {len(data)} | {len(kept)} | {mb(data):.1f} | {len(data) / med[name]:,.0f} | "
              f"{mb(data) / med[name]:.1f} |")

    print(f"\n| work (same records; anchors on {len(shared)} files, {mb(shared):.1f} MB) | ours CPU-s | anchor CPU-s "
          "| anchor / ours |")
    print("|---|---:|---:|---:|")
    for ours, anchor in (("language_selection", "enry.get_language only"), ("basic: ours", "basic: BigCode"),
                         ("n-grams: ours", "n-grams: datatrove"), ("python: ours", "python: ast.parse")):
        print(f"| {ours} vs {anchor} | {med[ours]:.2f} | {med[anchor]:.2f} | {med[anchor] / med[ours]:.2f}x |")

    for name in ("language_selection", "license_filter"):
        data, _, reasons = outcomes[name]
        print(f"\n{name} removals (share of its {len(data)} input records):")
        for reason, count in reasons.most_common(12):
            print(f"  {reason:<45} {count:>6}  {count / len(data):6.2%}")

    data, kept, reasons = outcomes["quality_filters"]
    costs, measured = rule_costs(quality, data)
    total_cost = sum(costs.values())
    print(f"\n| rule | removes (share of {len(data)}) | records measured | share of stage CPU |")
    print("|---|---:|---:|---:|")
    for rule in RULES:
        removed = reasons.get(f"filter:{rule.name}", 0)
        print(f"| {rule.name} | {removed} ({removed / len(data):.2%}) | {measured[rule.name]} | "
              f"{costs[rule.name] / total_cost:.1%} |")
    print(f"| all rules | {len(data) - len(kept)} ({1 - len(kept) / len(data):.2%}) | | 100% |")


if __name__ == "__main__":
    main()
