"""data_card.md and its plots: a Hugging Face style dataset card of a run's output.

Counts come from `stats.json` and `manifest.json`. What they do not hold (licenses, file sizes,
removal reasons in detail, dedup clusters, columns) is read from the Parquet shards with DuckDB,
touching only small columns (never `content`), so every run can afford to write the card.
"""

import importlib
import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import yaml

from pipeline.records import reason_group
from pipeline.verify import sql_paths

PLOTS = {"funnel": "funnel.png", "languages": "languages.png", "sizes": "file_sizes.png"}
DEDUP_KINDS = ("exact_dedup", "near_dedup")
TOP_REASONS = 15
TOP_LANGUAGES = 15
LARGEST_CLUSTERS = 3  # per dedup stage
BUCKETS_PER_DECADE = 4  # file-size histogram bins: 4 per power of ten
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T"))
STAGE_PURPOSE = {
    "read": "reads the inputs; records that cannot be read (undecodable, null content, too large) stop here",
    "opt_out": "removes the repositories and accounts whose owners opted out",
    "language_selection": "keeps the selected programming languages; drops vendored, generated and prose files",
    "license_filter": "keeps records whose `license_type` is allowed (a missing license is kept)",
    "quality_filters": "drops files failing named heuristics (line lengths, alphanumeric fraction, ...)",
    "near_dedup": "MinHash near-deduplication; the keep rule's best copy of each cluster stays",
    "exact_dedup": "identical contents keep one copy, the keep rule's best",
    "decontaminate": "removes files containing evaluation benchmark prompts or solutions",
    "pii": "redacts personal data (emails, IP addresses, keys, passwords) in `content`",
}
# A removal reason without its measured value or the id of the kept duplicate (what stats.json counts).
REASON_HEAD_SQL = ("CASE WHEN starts_with(removal_reason, 'duplicate') THEN split_part(removal_reason, ':', 1) "
                   "ELSE split_part(removal_reason, '=', 1) END")


# -- facts read from the shards --------------------------------------------------------------------------
@dataclass
class SizeSummary:
    """File sizes (UTF-8 bytes) of one side of the run, bucketed on a log scale."""

    files: int = 0
    median: float = 0.0
    p90: float = 0.0
    largest: int = 0
    buckets: dict[int, int] = field(default_factory=dict)  # bucket b holds sizes in [10^(b/4), 10^((b+1)/4))


@dataclass
class Clusters:
    """A dedup stage's clusters, as its removed/ records say (one cluster per kept representative).
    Sizes count files, or repositories for repository-level dedup (`unit`)."""

    unit: str
    clusters: int
    removed: int
    largest: list[tuple[str, str | None, int]]  # kept repo, kept path, cluster size (kept + removed)


@dataclass
class DataFacts:
    columns: list[tuple[str, str]]
    shards: int
    download_bytes: int
    license_types: list[tuple[str | None, int]]
    detected_licenses: list[tuple[str, int]]
    before: SizeSummary
    after: SizeSummary
    reasons: list[tuple[str, str, int]]  # stage, reason head, records
    clusters: dict[str, Clusters]


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.parquet"))


def _scan(files: list[str]) -> str:
    return f"read_parquet({sql_paths(files)}, union_by_name=true)"


def _columns(files: list[str]) -> set[str]:
    names: set[str] = set()
    for f in files:
        names.update(pq.read_schema(f).names)
    return names


def _size_selects(files: list[str]) -> list[str]:
    """SQL giving each record's size: the input's own `length_bytes` where it has one (Stack v2 and
    source trees), else the UTF-8 length of `content`. DuckDB skips the row groups whose statistics
    say `length_bytes` has no nulls, so the card reads `content` only for records without a size."""
    if not files:
        return []
    columns = _columns(files)
    selects = []
    if "length_bytes" in columns:
        selects.append(f"SELECT length_bytes AS size FROM {_scan(files)} WHERE length_bytes IS NOT NULL")
    if "content" in columns:
        missing = " WHERE length_bytes IS NULL" if "length_bytes" in columns else ""
        selects.append(f"SELECT strlen(content) AS size FROM {_scan(files)}{missing}")
    return selects


def _sizes(con, selects: list[str]) -> SizeSummary:
    if not selects:
        return SizeSummary()
    con.execute(f"CREATE OR REPLACE TEMP TABLE sizes AS SELECT size::BIGINT AS size FROM "
                f"({' UNION ALL '.join(selects)}) WHERE size IS NOT NULL")
    files, median, p90, largest = con.execute(
        "SELECT count(*), coalesce(quantile_cont(size, 0.5), 0), coalesce(quantile_cont(size, 0.9), 0), "
        "coalesce(max(size), 0) FROM sizes").fetchone()
    buckets = con.execute(f"SELECT floor(log10(greatest(size, 1)) * {BUCKETS_PER_DECADE})::INT AS b, count(*) "
                          "FROM sizes GROUP BY b ORDER BY b").fetchall()
    return SizeSummary(files, median, p90, largest, dict(buckets))


def read_facts(out: Path, stages: list[dict]) -> DataFacts:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    data = _files(out / "data")
    data_columns = _columns(data)
    removed = {p.name: _files(p) for p in sorted((out / "removed").glob("*")) if p.is_dir()}
    removed = {k: v for k, v in removed.items() if v}

    license_types, detected = [], []
    if data and "license_type" in data_columns:
        license_types = con.execute(f"SELECT license_type, count(*) FROM {_scan(data)} GROUP BY 1 "
                                    "ORDER BY 2 DESC, 1 NULLS LAST").fetchall()
    if data and "detected_licenses" in data_columns:
        detected = con.execute(f"SELECT lic, count(*) FROM (SELECT unnest(detected_licenses) AS lic FROM "
                               f"{_scan(data)}) WHERE lic IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()

    after = _sizes(con, _size_selects(data))
    before = _sizes(con, _size_selects(data) + [q for files in removed.values() for q in _size_selects(files)])

    reasons, clusters = [], {}
    if removed:
        every = [f for files in removed.values() for f in files]
        reasons = con.execute(f"SELECT removed_by, {REASON_HEAD_SQL} AS head, count(*) FROM {_scan(every)} "
                              "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2").fetchall()
    for stage in stages:
        files = removed.get(stage["name"])
        if stage["kind"] in DEDUP_KINDS and files and "kept_repo_name" in _columns(files):
            repo_level = stage.get("options", {}).get("level") == "repo"
            kept, members = ("kept_repo_name, NULL", "count(DISTINCT repo_name)") if repo_level else \
                ("kept_repo_name, kept_path", "count(*)")
            groups = f"SELECT {kept} AS kept_path, {members} + 1 AS size FROM {_scan(files)} GROUP BY 1, 2"
            n, total = con.execute(f"SELECT count(*), sum(size - 1) FROM ({groups})").fetchone()
            largest = con.execute(f"{groups} ORDER BY size DESC, 1, 2 LIMIT {LARGEST_CLUSTERS}").fetchall()
            clusters[stage["name"]] = Clusters("repositories" if repo_level else "files", n, int(total), largest)

    columns = [(f.name, str(f.type)) for f in pq.read_schema(data[0])] if data else []
    return DataFacts(columns, len(data), sum(Path(f).stat().st_size for f in data), license_types, detected,
                     before, after, reasons, clusters)


# -- formatting ------------------------------------------------------------------------------------------
def size_category(n: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>1T"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def pct(part: float, whole: float) -> str:
    if not whole:
        return "–"
    share = 100 * part / whole
    return "<0.1%" if 0 < share < 0.05 else f"{share:.1f}%"


def table(header: list[str], rows: list[list], align: str = "") -> list[str]:
    """A Markdown table; `align` has one letter per column (l/r), numbers right-aligned by default."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _options(configured: dict) -> str:
    """The options a stage was given in the config (the rest are its defaults)."""
    shown = {k: v for k, v in (configured or {}).items() if k != "name"}
    return ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in shown.items()) or "default options"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def card_reason(head: str) -> str:
    """The reason shown in the top-reasons table: contamination per benchmark, not per task."""
    if head.startswith("contaminated:"):
        return head.split("/", 1)[0]
    return head


def by_bytes(languages: dict[str, dict]) -> dict[str, dict]:
    return dict(sorted(languages.items(), key=lambda kv: (-kv[1]["bytes"], kv[0])))


def stage_kinds(manifest: dict) -> dict[str, str]:
    return {"read": "read", **{s["name"]: s["kind"] for s in manifest.get("stages", [])}}


# -- the card --------------------------------------------------------------------------------------------
class CardWriter:
    """Renders the card's sections in order; dedicated sections for the known stages and a generic
    table for every other `details` count, so a stage added later still shows up."""

    def __init__(self, manifest: dict, stats: dict, facts: DataFacts):
        self.manifest, self.stats, self.facts = manifest, stats, facts
        self.kinds = stage_kinds(manifest)
        self.shown: set[tuple[str, str]] = set()  # (stage, detail key) already in a section
        self.removal_keys = {(stage, reason_group(head)) for stage, head, _ in facts.reasons}

    def stages_of(self, *kinds: str) -> list[dict]:
        return [s for s in self.stats["stages"] if self.kinds.get(s["name"]) in kinds]

    def render(self) -> str:
        lines = ["---", yaml.safe_dump(self.header(), sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
        for section in (self.summary, self.sources, self.stages, self.funnel, self.languages, self.sizes,
                        self.licenses, self.removals, self.dedup, self.decontamination, self.pii, self.opt_out,
                        self.other_details, self.structure, self.loading, self.provenance):
            body = section()
            if body:
                lines += [*body, ""]
        return "\n".join(lines)

    def header(self) -> dict:
        t = self.stats["totals"]
        licenses = [lic.lower() for lic, _ in self.facts.detected_licenses] or ["other"]
        languages = [lang.lower() for lang in self.stats["languages"] if lang != "unknown"]
        return {
            "pretty_name": self.manifest["name"],
            "language": ["code"],
            "license": licenses,
            "tags": ["code", *languages],
            "size_categories": [size_category(t["records_out"])],
            "task_categories": ["text-generation"],
            "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
        }

    def summary(self) -> list[str]:
        t, m = self.stats["totals"], self.manifest
        languages = [lang for lang in self.stats["languages"] if lang != "unknown"]
        langs = f"{len(languages)} languages" if languages else "languages not identified"
        return [
            f"# {m['name']}", "",
            f"**{t['records_out']:,} source files ({human_bytes(t['bytes_out'])} of code, {langs})**, kept from "
            f"{t['records_in']:,} input files ({human_bytes(t['bytes_in'])}) by codecurate "
            f"{m['packages'].get('codecurate', '')}. Every input record is either in `data/` or, with the reason "
            "it was dropped, in the private audit trail `removed/<stage>/` (not part of the published data).", "",
            *table(["", ""], [
                ["files kept", f"{t['records_out']:,} of {t['records_in']:,} "
                               f"({pct(t['records_out'], t['records_in'])})"],
                ["bytes kept", f"{human_bytes(t['bytes_out'])} of {human_bytes(t['bytes_in'])} "
                               f"({pct(t['bytes_out'], t['bytes_in'])})"],
                ["Parquet shards", f"{self.facts.shards:,} in `data/` ({human_bytes(self.facts.download_bytes)})"],
                ["run", f"{m['started_at'][:19].replace('T', ' ')} UTC, {self._duration()}"],
            ], align="lr"),
        ]

    def _duration(self) -> str:
        from datetime import datetime

        start, end = self.manifest.get("started_at"), self.manifest.get("ended_at")
        if not (start and end):
            return "not finished"
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
        return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"

    def sources(self) -> list[str]:
        rows = [[f"`{i['path']}`", i["kind"], f"{i['files']:,}" if i.get("files") is not None else "",
                 human_bytes(i["bytes"]) if i.get("bytes") is not None else ""] for i in self.manifest["inputs"]]
        limit = self.manifest.get("config", {}).get("input", {}).get("limit")
        note = ["", f"Only the first {limit:,} records were read (`input.limit`)."] if limit else []
        return ["## Sources", "", *table(["input", "kind", "files", "size"], rows, align="llrr"), *note]

    def stages(self) -> list[str]:
        lines = ["## How it was made", "", "The stages ran in this order, with the options the config gave them "
                 "(every other option has its default; the whole resolved config is in `manifest.json`):", ""]
        lines.append(f"1. **read**: {STAGE_PURPOSE['read']}.")
        configured = [next(iter(item.values()), {}) for item in self.manifest.get("config", {}).get("stages", [])]
        stages = self.manifest.get("stages", [])
        configured = configured if len(configured) == len(stages) else [s["options"] for s in stages]
        for i, (s, options) in enumerate(zip(stages, configured, strict=True), start=2):
            purpose = STAGE_PURPOSE.get(s["kind"], "")
            name = f"**{s['name']}**" + ("" if s["name"] == s["kind"] else f" (`{s['kind']}`)")
            lines.append(f"{i}. {name}: {purpose}{'; ' if purpose else ''}{_options(options)}.")
        return lines

    def funnel(self) -> list[str]:
        first = self.stats["stages"][0]
        rows = []
        for s in self.stats["stages"]:
            rows.append([s["name"], f"{s['records_in']:,}", f"{s['records_out']:,}", f"{s['records_removed']:,}",
                         pct(s["records_removed"], s["records_in"]), human_bytes(s["bytes_in"]),
                         human_bytes(s["bytes_out"]), pct(s["records_out"], first["records_in"]),
                         pct(s["bytes_out"], first["bytes_in"])])
        return ["## Funnel", "", f"![records and bytes after each stage]({PLOTS['funnel']})", "",
                *table(["stage", "records in", "records out", "removed", "removed %", "bytes in", "bytes out",
                        "records kept of input", "bytes kept of input"], rows)]

    def languages(self) -> list[str]:
        langs, t = by_bytes(self.stats["languages"]), self.stats["totals"]
        rows = [[lang, f"{v['records']:,}", human_bytes(v["bytes"]), pct(v["bytes"], t["bytes_out"])]
                for lang, v in list(langs.items())[:TOP_LANGUAGES]]
        rest = list(langs.values())[TOP_LANGUAGES:]
        if rest:
            rows.append([f"{len(rest)} more", f"{sum(v['records'] for v in rest):,}",
                         human_bytes(sum(v["bytes"] for v in rest)),
                         pct(sum(v["bytes"] for v in rest), t["bytes_out"])])
        note = (["", "No language was identified: the inputs carry no `language` and no stage filled it."]
                if list(langs) == ["unknown"] else [])
        return ["## Languages", "", f"![bytes per language]({PLOTS['languages']})", "",
                *table(["language", "files", "bytes", "share of bytes"], rows), *note]

    def sizes(self) -> list[str]:
        b, a = self.facts.before, self.facts.after
        rows = [[label, f"{s.files:,}", human_bytes(s.median), human_bytes(s.p90), human_bytes(s.largest)]
                for label, s in (("input", b), ("kept", a))]
        return ["## File sizes", "", f"![file sizes of the input and of the kept files]({PLOTS['sizes']})", "",
                *table(["files", "count", "median", "90th percentile", "largest"], rows), "",
                "Sizes are UTF-8 bytes (the input's `length_bytes` where it has one); the input side is "
                "`data/` plus every record in `removed/`; empty files are counted at 1 B."]

    def licenses(self) -> list[str]:
        lt, dl = self.facts.license_types, self.facts.detected_licenses
        total = self.stats["totals"]["records_out"]
        if not any(v is not None for v, _ in lt) and not dl:
            return ["## Licenses", "", "The inputs carry no license information (`license_type` and "
                    "`detected_licenses` are empty): check the licenses of the sources before publishing."]
        lines = ["## Licenses", ""]
        if lt:
            lines += table(["license_type", "files", "share"],
                           [[v if v is not None else "(missing)", f"{n:,}", pct(n, total)] for v, n in lt]) + [""]
        if dl:
            shown = dl[:TOP_REASONS]
            lines += table(["detected license", "files"], [[f"`{lic}`", f"{n:,}"] for lic, n in shown])
            if len(dl) > len(shown):
                lines += ["", f"...and {len(dl) - len(shown)} more licenses (the YAML header lists all)."]
        return lines

    def removals(self) -> list[str]:
        grouped: dict[tuple[str, str], int] = {}
        for stage, head, n in self.facts.reasons:
            key = (stage, card_reason(head))
            grouped[key] = grouped.get(key, 0) + n
        if not grouped:
            return ["## Top removal reasons", "", "Nothing was removed."]
        total = sum(grouped.values())
        ranked = sorted(grouped.items(), key=lambda kv: (-kv[1], kv[0]))
        rows = [[stage, f"`{reason}`", f"{n:,}", pct(n, total)] for (stage, reason), n in ranked[:TOP_REASONS]]
        rest = ranked[TOP_REASONS:]
        if rest:
            n = sum(v for _, v in rest)
            rows.append(["", f"{len(rest)} other reasons", f"{n:,}", pct(n, total)])
        return ["## Top removal reasons", "", *table(["stage", "reason", "records", "share of removals"], rows,
                                                     align="llrr")]

    def dedup(self) -> list[str]:
        stages = self.stages_of(*DEDUP_KINDS)
        if not stages:
            return []
        rows, largest = [], []
        for s in stages:
            c = self.facts.clusters.get(s["name"], Clusters("files", 0, 0, []))
            self.shown.add((s["name"], "clusters"))
            rows.append([s["name"], c.unit, f"{s['details'].get('clusters', c.clusters):,}",
                         f"{s['records_removed']:,}",
                         f"{(c.removed + c.clusters) / c.clusters:.2f}" if c.clusters else "–",
                         f"{max((n for *_, n in c.largest), default=0):,}"])
            largest += [[s["name"], f"`{repo}`", f"`{path}`" if path else "(the repository)", f"{n:,} {c.unit}"]
                        for repo, path, n in c.largest]
        lines = ["## Deduplication", "", *table(["stage", "cluster of", "clusters", "records removed",
                                                 "mean cluster size", "largest cluster"], rows, align="llrrrr"),
                 "", "A cluster is a kept record (or repository) and the near or exact copies removed in its favour; "
                 "the SPEC keep rule picks the kept one (license, stars, forks, recency, then identity)."]
        if largest:
            lines += ["", "Largest clusters, by their kept member:", "",
                      *table(["stage", "kept repository", "kept path", "cluster size"], largest, align="lllr")]
        return lines

    def decontamination(self) -> list[str]:
        stages = self.stages_of("decontaminate")
        if not stages:
            return []
        rows, top = [], []
        for s in stages:
            per_bench: dict[str, dict] = {}
            for stage, head, n in self.facts.reasons:
                if stage != s["name"] or not head.startswith("contaminated:"):
                    continue
                target, _, how = head.removeprefix("contaminated:").rpartition(":")
                bench, _, task = target.partition("/")
                entry = per_bench.setdefault(bench, {"files": 0, "tasks": {}, "exact": 0, "ngram": 0})
                entry["files"] += n
                entry["tasks"][task] = entry["tasks"].get(task, 0) + n
                entry[how] = entry.get(how, 0) + n
            options = next((o["options"] for o in self.manifest.get("stages", []) if o["name"] == s["name"]), {})
            for bench in options.get("benchmarks") or []:
                if isinstance(bench, str):
                    per_bench.setdefault(bench, {"files": 0, "tasks": {}, "exact": 0, "ngram": 0})
            for bench, e in sorted(per_bench.items()):
                rows.append([s["name"], bench, f"{e['files']:,}", f"{len(e['tasks']):,}", f"{e['exact']:,}",
                             f"{e['ngram']:,}"])
                ranked = sorted(e["tasks"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
                if ranked:
                    top.append(f"- {bench}: " + ", ".join(f"`{task}` ({plural(n, 'file')})" for task, n in ranked))
            self.shown |= {(s["name"], k) for k in s["details"]}  # per benchmark/method/task: all in the table
        lines = ["## Decontamination", "", *table(["stage", "benchmark", "files removed", "tasks matched",
                                                  "exact", "n-gram"], rows, align="llrrrr")]
        return lines + (["", "Most matched tasks:", "", *top] if top else [])

    def pii(self) -> list[str]:
        stages = self.stages_of("pii")
        if not stages:
            return []
        rows = []
        for s in stages:
            for key, n in s["details"].items():
                if key.isupper() and (s["name"], key) not in self.removal_keys:  # entity names: EMAIL, KEY, ...
                    rows.append([s["name"], f"`{key}`", f"{n:,}"])
                    self.shown.add((s["name"], key))
        body = table(["stage", "entity", "count"], rows, align="llr") if rows else ["No personal data was found."]
        return ["## Personal information", "", *body, "",
                "Counts only: original values are never written to the data, the stats or the logs."]

    def opt_out(self) -> list[str]:
        stages = self.stages_of("opt_out")
        version = self.manifest.get("optout_registry_version")
        if not stages and version is None:
            return []
        removed = sum(s["records_removed"] for s in stages)
        targets = {head.split(":", 1)[1].lower() for stage, head, _ in self.facts.reasons
                   if stage in {s["name"] for s in stages} and head.startswith("opt_out:")}
        accounts = sum("/" not in t for t in targets)
        return ["## Opt-out", "",
                f"Opt-out registry version **{version if version is not None else 'unknown'}**: "
                f"{removed:,} records removed at their owners' request ({plural(accounts, 'whole account')}, "
                f"{len(targets) - accounts:,} {'repository' if len(targets) - accounts == 1 else 'repositories'})."]

    def other_details(self) -> list[str]:
        rows = [[s["name"], f"`{k}`", f"{v:,}"] for s in self.stats["stages"] for k, v in s["details"].items()
                if (s["name"], k) not in self.shown and (s["name"], k) not in self.removal_keys]
        if not rows:
            return []
        return ["## Other counts", "", "Counts the stages report beyond their removals (`details` in `stats.json`):",
                "", *table(["stage", "detail", "count"], rows, align="llr")]

    def structure(self) -> list[str]:
        if not self.facts.columns:
            return []
        rows = [[f"`{name}`", f"`{dtype}`"] for name, dtype in self.facts.columns]
        return ["## Columns", "", *table(["column", "Arrow type"], rows, align="ll")]

    def loading(self) -> list[str]:
        return ["## How to load", "", "With Hugging Face `datasets`:", "",
                "```python", "from datasets import load_dataset", "",
                'ds = load_dataset("parquet", data_files="data/*.parquet", split="train")', "```", "",
                "With DuckDB (only the columns a query touches are read):", "", "```python", "import duckdb", "",
                "duckdb.sql(\"SELECT language, count(*) FROM 'data/*.parquet' GROUP BY 1 ORDER BY 2 DESC\").show()",
                "```", "", "With pyarrow:", "", "```python", "import pyarrow.dataset as ds", "",
                'table = ds.dataset("data", format="parquet").to_table(columns=["repo_name", "path", "content"])',
                "```", "", "Search it with `pipeline search QUERY --dataset .`, find near-copies of a file with "
                "`pipeline membership FILE --dataset .` (add `--lines` for the lines found verbatim)."]

    def provenance(self) -> list[str]:
        m = self.manifest
        config = {k: v for k, v in m.get("config", {}).items() if k not in ("output", "executor")}
        versions = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
        return ["## Provenance", "", f"Config fingerprint `{m.get('config_fingerprint', '')}`; "
                f"started {m.get('started_at', '')}, ended {m.get('ended_at', '')}; {versions}.", "",
                "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```"]


# -- plots -----------------------------------------------------------------------------------------------
BEFORE, AFTER, REMOVED = "#b8c4d6", "#2f6db5", "#e3a13b"


def import_plotting_in_background() -> None:
    """Import matplotlib in a thread (a third of a second): callers start it where they mostly wait on
    workers or on Parquet reads, and the card's plots need no import time at the end."""
    threading.Thread(target=importlib.import_module, args=("matplotlib.figure",), daemon=True).start()


def _figure(height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, height), dpi=100, layout="constrained")
    return fig


def _save(fig, path: Path) -> None:
    """A small, byte-stable PNG: 64-colour palette (the plots use four colours plus anti-aliasing) and no
    version stamp in the metadata."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=64).save(path, format="PNG", optimize=True)


def plot_funnel(stats: dict, path: Path) -> None:
    stages = stats["stages"]
    fig = _figure(1.0 + 0.4 * len(stages))
    names = [s["name"] for s in stages][::-1]
    for i, (unit, key, scale) in enumerate((("records", "records", 1), ("MB", "bytes", 1e6))):
        ax = fig.add_subplot(1, 2, i + 1)
        ins = [s[f"{key}_in"] / scale for s in stages][::-1]
        outs = [s[f"{key}_out"] / scale for s in stages][::-1]
        ax.barh(names, ins, color=REMOVED, label="removed by the stage")
        ax.barh(names, outs, color=AFTER, label="kept")
        top = max(ins, default=0) or 1
        fmt = "{:,.0f}" if unit == "records" else "{:,.1f}"
        for y, (v_in, v_out) in enumerate(zip(ins, outs, strict=True)):
            removed = fmt.format(v_in - v_out)
            label = fmt.format(v_out) + (f"  (−{removed})" if removed.strip("0.") else "")
            ax.text(v_in + top * 0.02, y, label, va="center", fontsize=8)
        ax.set_xlim(0, top * 1.45)
        ax.set_xlabel(unit, fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
        if i:
            ax.set_yticklabels([])
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="outside upper right", ncols=2, fontsize=8, frameon=False)
    fig.suptitle("What each stage kept", fontsize=10, x=0.02, ha="left")
    _save(fig, path)


def plot_languages(stats: dict, path: Path) -> None:
    langs = list(by_bytes(stats["languages"]).items())[:TOP_LANGUAGES][::-1]
    total = stats["totals"]["bytes_out"] or 1
    fig = _figure(0.9 + 0.3 * max(len(langs), 1))
    ax = fig.add_subplot()
    shares = [100 * v["bytes"] / total for _, v in langs]
    ax.barh([name for name, _ in langs], shares, color=AFTER)
    for y, (share, (_, v)) in enumerate(zip(shares, langs, strict=True)):
        label = f"{share:.1f}%" if share >= 0.1 else "<0.1%"
        ax.text(share + 0.8, y, f"{label}  ({plural(v['records'], 'file')})", va="center", fontsize=8)
    ax.set_xlim(0, max(shares, default=0) * 1.35 + 1)
    ax.set_xlabel("share of kept bytes (%)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.set_title("Languages of the kept files", fontsize=10)
    _save(fig, path)


def plot_sizes(before: SizeSummary, after: SizeSummary, path: Path) -> None:
    fig = _figure(3.0)
    ax = fig.add_subplot()
    keys = sorted(set(before.buckets) | set(after.buckets))
    for summary, color, label, filled in ((before, BEFORE, "input", True), (after, AFTER, "kept", False)):
        if not keys:
            break
        edges = [10 ** (b / BUCKETS_PER_DECADE) for b in range(keys[0], keys[-1] + 2)]
        counts = [summary.buckets.get(b, 0) for b in range(keys[0], keys[-1] + 1)]
        ax.stairs(counts, edges, fill=filled, color=color, linewidth=1.6,
                  label=f"{label}: {summary.files:,} files, median {human_bytes(summary.median)}")
    ax.set_xscale("log")
    ticks = [10 ** k for k in range(0, 10) if keys and 10 ** k <= 10 ** ((keys[-1] + 1) / BUCKETS_PER_DECADE)]
    ax.set_xticks(ticks, [human_bytes(t).replace(".0", "") for t in ticks], fontsize=8)
    ax.set_xlabel("file size (UTF-8 bytes, log scale)")
    ax.set_ylabel("files")
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("File sizes before and after curation", fontsize=10)
    _save(fig, path)


# -- entry points ----------------------------------------------------------------------------------------
def render_card(manifest: dict, stats: dict, facts: DataFacts) -> str:
    return CardWriter(manifest, stats, facts).render()


def plot_stats(out: Path, stats: dict) -> None:
    """The plots drawn from `stats` alone (another process may draw them while `write_card` runs)."""
    plot_funnel(stats, Path(out) / PLOTS["funnel"])
    plot_languages(stats, Path(out) / PLOTS["languages"])


def write_card(out: Path, manifest: dict, stats: dict, with_stats_plots: bool = True) -> None:
    """data_card.md and its PNG plots in `out` (called at the end of every run, and by `pipeline card`);
    `with_stats_plots=False` leaves `plot_stats` to the caller."""
    out = Path(out)
    facts = read_facts(out, manifest.get("stages", []))
    if with_stats_plots:
        plot_stats(out, stats)
    plot_sizes(facts.before, facts.after, out / PLOTS["sizes"])
    (out / "data_card.md").write_text(render_card(manifest, stats, facts))
