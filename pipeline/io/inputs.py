"""Input PATHs -> a plan: files, their unified Arrow schema, and work units split into tasks.

Only metadata is read here (Parquet footers; JSONL files are parsed once for their schema), so
file-level faults (corrupt shard, missing or mistyped column, no such path) are found before any
output is written, and reported as one line naming the file.
"""

import json
import math
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.io.source_tree import SOURCE_SCHEMA, SourceFile, is_binary, source_roots

KINDS = ("parquet", "jsonl", "source")
STRING_TYPES = (pa.string(), pa.large_string())
CONTENT_TYPES = STRING_TYPES + (pa.binary(), pa.large_binary())
SOURCE_UNIT_BYTES = 2 * 2**20


@dataclass
class WorkUnit:
    kind: str
    path: str = ""
    row_group: int | None = None
    files: tuple[SourceFile, ...] = ()
    nbytes: int = 0
    rows: int = 0
    max_rows: int | None = None


@dataclass
class InputPlan:
    units: list[WorkUnit]
    schema: pa.Schema  # what readers produce: input columns, content as string, blob_id present
    files: list[dict] = field(default_factory=list)
    tasks: list[list[int]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(u.nbytes for u in self.units)

    @property
    def total_rows(self) -> int:
        return sum(u.max_rows if u.max_rows is not None else u.rows for u in self.units)


def _kind_of(path: str) -> str | None:
    low = path.lower()
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        return "jsonl"
    return None


def _is_data_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith((".", "_"))


def expand_path(spec: str) -> list[tuple[str, str]]:
    """One input PATH -> [(kind, path)] following the SPEC's rules."""
    forced = None
    for kind in KINDS:
        if spec.startswith(kind + ":"):
            forced, spec = kind, spec[len(kind) + 1:]
    if forced == "source" or spec.startswith("@"):
        return [("source", spec)]
    fs, path = fsspec.core.url_to_fs(spec)
    protocol = spec.split("://", 1)[0] + "://" if "://" in spec else ""
    if any(c in path for c in "*?["):
        matches = sorted(fs.glob(path))
        if not matches:
            raise UserError(f"{spec}: no input file matches this glob")
        return [(forced or _kind_or_fail(m, spec), protocol + m) for m in matches]
    if fs.isfile(path):
        return [(forced or _kind_or_fail(path, spec), spec)]
    if fs.isdir(path):
        found = sorted(p for p in fs.find(path) if _is_data_name(p[len(path):]))
        data = [p for p in found if _kind_of(p)]
        if forced or (data and len(data) == len(found)):
            return [(forced or _kind_of(p), protocol + p) for p in data]
        if protocol:
            raise UserError(f"{spec}: remote source trees are not supported; ingest them locally first")
        return [("source", spec)]
    raise UserError(f"{spec}: input path not found")


def _kind_or_fail(path: str, spec: str) -> str:
    kind = _kind_of(path)
    if kind is None:
        raise UserError(f"{spec}: not a .parquet or .jsonl(.gz) file (use a parquet:/jsonl:/source: prefix)")
    return kind


def _check_columns(schema: pa.Schema, source: str, content_from: str | None) -> None:
    for name in ("path", "repo_name"):
        if name not in schema.names:
            raise UserError(f"{source}: missing required column {name!r}")
        if schema.field(name).type not in STRING_TYPES:
            raise UserError(f"{source}: column {name!r} has type {schema.field(name).type}, expected string")
    if "content" in schema.names:
        if schema.field("content").type not in CONTENT_TYPES + (pa.null(),):
            raise UserError(f"{source}: column 'content' has type {schema.field('content').type}, "
                            "expected string or binary")
    elif not content_from:
        raise UserError(f"{source}: missing required column 'content' "
                        "(or give blob_id + src_encoding with the input option content_from)")
    elif "blob_id" not in schema.names:
        raise UserError(f"{source}: content_from needs a 'blob_id' column")
    if "blob_id" in schema.names and schema.field("blob_id").type not in STRING_TYPES + (pa.null(),):
        raise UserError(f"{source}: column 'blob_id' has type {schema.field('blob_id').type}, expected string")


def read_jsonl(path: str) -> pa.Table:
    try:
        with fsspec.open(path, "rb", compression="infer") as f:
            return pajson.read_json(f, read_options=pajson.ReadOptions(block_size=1 << 24))
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        raise UserError(f"{path}: not valid JSONL ({_first_bad_line(path) or str(e).splitlines()[0]})") from None


def _first_bad_line(path: str) -> str | None:
    """Where a JSONL file first goes wrong, by line number (Arrow names a row counted from 0 within a block)."""
    try:
        with fsspec.open(path, "rt", compression="infer", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        if not isinstance(json.loads(line), dict):
                            return f"line {number}: not a JSON object"
                    except ValueError as e:
                        return f"line {number}: {e}"
    except (OSError, EOFError, UnicodeDecodeError) as e:
        return str(e).splitlines()[0] if str(e) else None
    return None


def plan_inputs(paths: list[str], owner: str | None = None, content_from: str | None = None,
                limit: int | None = None, task_bytes: int = 32 * 2**20) -> InputPlan:
    units: list[WorkUnit] = []
    schemas: list[tuple[str, pa.Schema]] = []
    files: list[dict] = []
    for spec in paths:
        for kind, path in expand_path(spec):
            if kind == "source":
                source_files = source_roots(path, owner)
                files.append({"path": path, "kind": "source", "files": len(source_files),
                              "bytes": sum(f.size for f in source_files)})
                units += _source_units(source_files)
                schemas.append((path, SOURCE_SCHEMA))
            elif kind == "parquet":
                try:
                    with fsspec.open(path, "rb") as f:
                        meta = pq.ParquetFile(f).metadata
                        schema = meta.schema.to_arrow_schema()
                except (pa.ArrowInvalid, OSError) as e:
                    raise UserError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
                _check_columns(schema, path, content_from)
                schemas.append((path, schema))
                size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
                files.append({"path": path, "kind": "parquet", "rows": meta.num_rows, "bytes": size})
                for i in range(meta.num_row_groups):
                    rg = meta.row_group(i)
                    units.append(WorkUnit("parquet", path, i, nbytes=rg.total_byte_size, rows=rg.num_rows))
            else:
                table = read_jsonl(path)
                _check_columns(table.schema, path, content_from)
                schemas.append((path, table.schema))
                size = table.nbytes
                files.append({"path": path, "kind": "jsonl", "rows": table.num_rows, "bytes": size})
                units.append(WorkUnit("jsonl", path, nbytes=size, rows=table.num_rows))
    plan = InputPlan(units=_apply_limit(units, limit), schema=_unify(schemas), files=files)
    plan.tasks = split_tasks(plan.units, task_bytes)
    return plan


def _source_units(files: list[SourceFile]) -> list[WorkUnit]:
    units, chunk, size = [], [], 0
    for f in files:
        chunk.append(f)
        size += f.size
        if size >= SOURCE_UNIT_BYTES:
            units.append(WorkUnit("source", files=tuple(chunk), nbytes=size, rows=len(chunk)))
            chunk, size = [], 0
    if chunk:
        units.append(WorkUnit("source", files=tuple(chunk), nbytes=size, rows=len(chunk)))
    return units


def _apply_limit(units: list[WorkUnit], limit: int | None) -> list[WorkUnit]:
    """Keep the first `limit` records. Source files that are binary are not records, so their
    heads are read here to count only text files."""
    if limit is None:
        return units
    out, left = [], limit
    for u in units:
        if left <= 0:
            break
        records = u.rows
        if u.kind == "source":
            text = [not _is_binary_file(f.abspath) for f in u.files]
            records = sum(text)
            if records > left:  # take files up to and including the left-th text file
                u.max_rows = [i for i, t in enumerate(text) if t][left - 1] + 1
        elif u.rows > left:
            u.max_rows = left
        if u.max_rows is not None:
            u.nbytes = int(u.nbytes * min(records, left) / max(records, 1))
        left -= min(records, left)
        out.append(u)
    return out


def _is_binary_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return is_binary(f.read(8192))
    except OSError:
        return True


def _unify(schemas: list[tuple[str, pa.Schema]]) -> pa.Schema:
    """Unify the input files' schemas (permissive promotion), then normalise what readers produce."""
    if not schemas:
        return SOURCE_SCHEMA
    try:
        schema = pa.unify_schemas([s for _, s in schemas], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        names = ", ".join(p for p, _ in schemas[:3])
        raise UserError(f"{names}: input files have incompatible schemas ({str(e).splitlines()[0]})") from None
    schema = schema.remove_metadata()
    for i, column in enumerate(schema):  # an all-null column (e.g. pandas' None) takes the SPEC column's type
        if column.type == pa.null() and column.name in SOURCE_SCHEMA.names:
            schema = schema.set(i, SOURCE_SCHEMA.field(column.name))
    for name in ("content", "blob_id"):
        if name in schema.names:
            i = schema.get_field_index(name)
            ftype = schema.field(name).type
            schema = schema.set(i, pa.field(name, pa.large_string() if ftype == pa.large_string() else pa.string()))
        else:
            schema = schema.append(pa.field(name, pa.string()))
    return schema


def split_tasks(units: list[WorkUnit], task_bytes: int) -> list[list[int]]:
    """Contiguous runs of units of about `task_bytes` each. The layout depends on the data only,
    never on the worker count, so outputs are laid out alike whatever runs them."""
    total = sum(u.nbytes for u in units)
    n_tasks = max(1, min(len(units), math.ceil(total / task_bytes)))
    tasks: list[list[int]] = [[] for _ in range(n_tasks)]
    seen = 0
    for i, u in enumerate(units):
        rank = min(n_tasks - 1, int((seen + u.nbytes / 2) * n_tasks / max(total, 1)))
        tasks[rank].append(i)
        seen += u.nbytes
    return tasks
