"""Commands over a finished output: search, membership, index, card, stats."""

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.errors import UserError


def _load_json(out: Path, name: str) -> dict:
    path = out / name
    if not path.is_file():
        raise UserError(f"{out}: no {name} (not a codecurate output directory?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def _about(license: str | None, language: str | None) -> str:
    """`   [license: ...  language: ...]` after a record's name, for what the record has."""
    about = "  ".join(x for x in (license and f"license: {license}", language and f"language: {language}") if x)
    return f"   [{about}]" if about else ""


def _search(args) -> int:
    from pipeline.search import DatasetSearch

    start = time.perf_counter()
    hits = DatasetSearch(args.dataset).search(args.query, is_regex=args.regex, limit=args.limit,
                                              language=args.language, context=args.context)
    seconds = time.perf_counter() - start
    if args.json:
        for hit in hits:
            print(json.dumps(asdict(hit), ensure_ascii=False))
        return 0
    for hit in hits:
        print(f"== {hit.repo_name} :: {hit.path}{_about(hit.license, hit.language)}")
        for match in hit.lines:
            for number, text in match.context:
                print(f"{number:>7} {'>' if number == match.number else '|'} {text}")
            print()
        if hit.more_lines:
            print(f"        (+{hit.more_lines} more matching lines)\n")
    more = " (the first ones; raise --limit for more)" if len(hits) == args.limit else ""
    print(f"{len(hits)} matching records{more} in {seconds:.2f} s", file=sys.stderr)
    return 0


def _index(args) -> int:
    from pipeline.membership import MembershipIndex

    index = MembershipIndex.open(args.dataset, rebuild=args.force, workers=args.workers,
                                 log=lambda msg: print(msg, file=sys.stderr))
    m = index.meta
    print(f"{index.folder}: {m['records']:,} records ({m['with_shingles']:,} with shingles), {m['lines']:,} distinct "
          f"lines; built in {m['build_seconds']:.1f} s")
    return 0


def _membership(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not 0 < args.threshold <= 1:
        raise UserError(f"--threshold {args.threshold}: must be in (0, 1]")
    from pipeline.membership import MembershipIndex
    index = MembershipIndex.open(args.dataset, workers=args.workers, log=lambda msg: print(msg, file=sys.stderr))
    start = time.perf_counter()
    if args.lines:
        _print_lines(index.lines(text, args.min_chars), args.json)
    else:
        shingles, found = index.near_duplicates(text, args.threshold)
        if args.json:
            for n in found:
                print(json.dumps(asdict(n), ensure_ascii=False))
        elif not shingles:
            print(f"{path}: fewer than {index.meta['ngram_size']} tokens, too short for near-duplicate search "
                  "(try --lines)")
        else:
            for n in found:
                print(f"J≈{n.jaccard:.2f}  {n.repo_name} :: {n.path}{_about(n.license, n.language)}")
            print(f"{len(found)} near-duplicates of {path} (estimated Jaccard >= {args.threshold:g}, "
                  f"{shingles:,} shingles)", file=sys.stderr)
    print(f"query: {time.perf_counter() - start:.3f} s", file=sys.stderr)
    return 0


def _print_lines(lines, as_json: bool) -> None:
    if as_json:
        for line in lines:
            print(json.dumps(asdict(line), ensure_ascii=False))
        return
    for line in lines:
        mark = ("+" if line.files else "-") if line.checked else " "
        files = f"{line.files:>6,}" if line.files else " " * 6
        print(f"{line.number:>6} {mark} {files}  {line.text}")
    checked = [ln for ln in lines if ln.checked]
    found = [ln for ln in checked if ln.files]
    share = f" ({100 * len(found) / len(checked):.0f}%)" if checked else ""
    print(f"{len(found)} of {len(checked)} checked lines found verbatim in the dataset{share}; "
          "+ found (in that many files), - not found, blank/short lines not checked", file=sys.stderr)
    sources: dict[str, int] = {}
    for ln in found:
        if ln.files == 1:  # a line only one file has points at where the code came from
            sources[ln.example] = sources.get(ln.example, 0) + 1
    for example, n in sorted(sources.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {n} lines found only in {example}", file=sys.stderr)


def _card(args) -> int:
    from pipeline.card import write_card

    out = Path(args.output)
    write_card(out, _load_json(out, "manifest.json"), _load_json(out, "stats.json"))
    print(f"wrote {out / 'data_card.md'} and its plots")
    return 0


def _stats(args) -> int:
    from pipeline.stats import summary_table

    out = Path(args.output)
    stats = _load_json(out, "stats.json")
    console = Console()
    console.print(summary_table(stats, title=str(out)))
    langs = Table(title="kept per language")
    for col in ("language", "files", "MB", "share of bytes"):
        langs.add_column(col, justify="left" if col == "language" else "right")
    total = stats["totals"]["bytes_out"] or 1
    for lang, v in stats["languages"].items():
        langs.add_row(lang, f"{v['records']:,}", f"{v['bytes'] / 1e6:,.1f}", f"{100 * v['bytes'] / total:.1f}%")
    console.print(langs)
    details = Table(title="stage details")
    for col in ("stage", "detail", "count"):
        details.add_column(col, justify="right" if col == "count" else "left")
    for s in stats["stages"]:
        for key, value in s["details"].items():
            details.add_row(s["name"], key, f"{value:,}")
    if details.row_count:
        console.print(details)
    return 0


def register(sub) -> None:
    search = sub.add_parser("search", help="find records whose content contains QUERY (or matches a regex)")
    search.add_argument("query")
    search.add_argument("--dataset", required=True, help="an output directory of `pipeline run`")
    search.add_argument("--regex", action="store_true", help="QUERY is a regular expression (RE2 syntax)")
    search.add_argument("--limit", type=int, default=10, help="at most N records (default 10)")
    search.add_argument("--language", help="only records of this language")
    search.add_argument("--context", type=int, default=1, help="lines shown around a match (default 1)")
    search.add_argument("--json", action="store_true", help="one JSON object per matching record")
    search.set_defaults(func=_search)

    member = sub.add_parser("membership", help="near-duplicates of FILE in a dataset (or its lines found verbatim)")
    member.add_argument("file")
    member.add_argument("--dataset", required=True, help="an output directory of `pipeline run`")
    member.add_argument("--threshold", type=float, default=0.7,
                        help="minimum estimated Jaccard (default 0.7; the index is banded for >= 0.5)")
    member.add_argument("--lines", action="store_true", help="which lines of FILE appear verbatim in the dataset")
    member.add_argument("--min-chars", type=int, default=10,
                        help="--lines: lines with fewer characters (whitespace aside) are not checked (default 10)")
    member.add_argument("--workers", type=int, default=2, help="threads when the index must be built")
    member.add_argument("--json", action="store_true", help="one JSON object per result")
    member.set_defaults(func=_membership)

    index = sub.add_parser("index", help="build the membership index of a dataset ahead of time")
    index.add_argument("dataset")
    index.add_argument("--force", action="store_true", help="rebuild even when the index is up to date")
    index.add_argument("--workers", type=int, default=2)
    index.set_defaults(func=_index)

    card = sub.add_parser("card", help="regenerate an output's data_card.md and plots")
    card.add_argument("output")
    card.set_defaults(func=_card)

    stats = sub.add_parser("stats", help="print the summary tables of an output directory")
    stats.add_argument("output")
    stats.set_defaults(func=_stats)
