"""`pipeline search`: exact or regex search over the `content` of an output's Parquet shards.

DuckDB scans the shards in parallel and stops at the first `limit` matching records; only those
records' contents come back to Python, where the matching lines and their context are cut out.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import regex

from pipeline.errors import UserError
from pipeline.verify import sql_paths


def dataset_files(dataset: str | Path) -> list[str]:
    """The Parquet shards of an output directory's `data/`, or a user error saying what is wrong."""
    folder = Path(dataset) / "data"
    if not Path(dataset).is_dir():
        raise UserError(f"{dataset}: dataset directory not found")
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    if not files:
        raise UserError(f"{dataset}: no data/*.parquet (not a codecurate output directory?)")
    return files


def dataset_columns(files: list[str]) -> set[str]:
    return {name for f in files for name in pq.read_schema(f).names}


def license_sql(columns: set[str]) -> str:
    """A record's license as one string: detected licenses, then the license type in brackets."""
    parts = []
    if "detected_licenses" in columns:
        parts.append("nullif(array_to_string(detected_licenses, ', '), '')")
    if "license_type" in columns:
        parts.append("'(' || license_type || ')'")
    return f"nullif(concat_ws(' ', {', '.join(parts)}), '')" if parts else "NULL"


@dataclass
class LineMatch:
    number: int  # 1-based line of the match's start
    context: list[tuple[int, str]]  # (line number, text) from `context` lines before to after


@dataclass
class SearchHit:
    repo_name: str
    path: str
    license: str | None
    language: str | None
    lines: list[LineMatch] = field(default_factory=list)
    more_lines: int = 0  # matching lines beyond those shown


class DatasetSearch:
    """Searches one output directory; `search` may be called many times (the file list is kept)."""

    def __init__(self, dataset: str | Path):
        self.files = dataset_files(dataset)
        self.columns = dataset_columns(self.files)
        if "content" not in self.columns:
            raise UserError(f"{dataset}: the data has no content column")
        self.con = duckdb.connect()
        self.con.execute("SET enable_progress_bar = false")

    def search(self, query: str, *, is_regex: bool = False, limit: int = 10, language: str | None = None,
               context: int = 1, lines_per_file: int = 3) -> list[SearchHit]:
        if not query:
            raise UserError("empty QUERY")
        if limit < 1:
            raise UserError("--limit must be at least 1")
        if is_regex:
            try:
                pattern = regex.compile(query, regex.MULTILINE)
            except regex.error as e:
                raise UserError(f"bad regular expression {query!r}: {e}") from None
        else:
            pattern = regex.compile(regex.escape(query))
        # ^ and $ match at line boundaries in both engines (RE2 in DuckDB, `regex` here), as in grep
        where = ["regexp_matches(content, $q)" if is_regex else "contains(content, $q)"]
        params = {"q": f"(?m){query}" if is_regex else query}
        literal = required_literal(query) if is_regex else None
        if literal:  # a cheap substring test first: the regex then runs only on the records holding it
            where.insert(0, "contains(content, $literal)")
            params["literal"] = literal
        if language is not None:
            if "language" not in self.columns:
                raise UserError("--language: the data has no language column")
            where.append("lower(language) = lower($lang)")
            params["lang"] = language
        lang = "language" if "language" in self.columns else "NULL"
        sql = (f"SELECT repo_name, path, {license_sql(self.columns)}, {lang}, content "
               f"FROM read_parquet({sql_paths(self.files)}, union_by_name=true) "
               f"WHERE {' AND '.join(where)} LIMIT {int(limit)}")
        try:
            rows = self.con.execute(sql, params).fetchall()
        except duckdb.InvalidInputException as e:  # RE2 rejects what Python accepted (e.g. look-arounds)
            raise UserError(f"bad regular expression {query!r}: {str(e).splitlines()[0]}") from None
        hits = []
        for repo, path, lic, lang_value, content in rows:
            hit = SearchHit(repo, path, lic, lang_value)
            matches = matching_lines(content, pattern, context)
            hit.lines, hit.more_lines = matches[:lines_per_file], max(0, len(matches) - lines_per_file)
            hits.append(hit)
        return hits


def required_literal(pattern: str) -> str | None:
    """The longest run of plain characters that every match of `pattern` contains (None when there is
    none, or when flags such as (?i) make plain characters match others)."""
    try:
        parsed = re._parser.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return None  # RE2-only syntax: no pre-filter, DuckDB decides whether the pattern is valid
    if parsed.state.flags & (re.IGNORECASE | re.VERBOSE):
        return None
    best, run = "", ""
    for op, arg in [*parsed, (None, None)]:  # top level only: a branch (a|b) is one item, never a literal
        if op is re._constants.LITERAL:
            run += chr(arg)
        else:
            best, run = max(best, run, key=len), ""
    return best or None


def matching_lines(text: str, pattern: regex.Pattern, context: int) -> list[LineMatch]:
    """Each distinct line where a match starts, with `context` lines around it."""
    lines = text.split("\n")
    numbers: list[int] = []
    line, pos = 1, 0
    for m in pattern.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        if not numbers or numbers[-1] != line:
            numbers.append(line)
    return [LineMatch(n, [(k, lines[k - 1].rstrip("\r"))
                          for k in range(max(1, n - context), min(len(lines), n + context) + 1)])
            for n in numbers]
