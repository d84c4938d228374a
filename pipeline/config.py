"""The run config: YAML loaded safely, validated strictly, every error one line naming file and key."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import UserError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Unknown keys are errors everywhere in a config."""

    model_config = ConfigDict(extra="forbid")


class StageOptions(Strict):
    """Options every stage accepts; a stage's own options model derives from this."""

    name: str | None = None
    text_field: str = "content"


class InputConfig(Strict):
    paths: list[str] = Field(min_length=1)
    content_from: str | None = None  # fsspec URL template, e.g. s3://softwareheritage/content/{blob_id}
    owner: str | None = None  # owner of source-tree repos (default: the root directory's name)
    max_file_bytes: int = Field(default=10_000_000, gt=0)
    limit: int | None = Field(default=None, gt=0)  # first N records (the --limit option overrides)


class OutputConfig(Strict):
    path: str
    max_shard_bytes: int = Field(default=256 * 2**20, gt=0)
    compression_level: int = 3
    row_group_bytes: int = Field(default=32 * 2**20, gt=0)


class ExecutorConfig(Strict):
    kind: Literal["local", "dask"] = "local"
    workers: int = Field(default=2, ge=1)
    scheduler: str | None = None
    task_bytes: int = Field(default=32 * 2**20, gt=0)  # input bytes per task: fixes the layout, not workers


class RunConfig(Strict):
    name: str
    input: InputConfig
    output: OutputConfig
    executor: ExecutorConfig = ExecutorConfig()
    stages: list[dict[str, Any]] = []

    @field_validator("output", mode="before")
    @classmethod
    def _output_path(cls, value):
        return {"path": value} if isinstance(value, str) else value


class StageSpec(BaseModel):
    """A validated stage entry: its kind (SPEC name), unique instance name and options."""

    kind: str
    name: str
    options: StageOptions


def _loc(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _one_line(source: str, error: ValidationError, prefix: str = "") -> UserError:
    first = error.errors()[0]
    loc = prefix + ("." if prefix and first["loc"] else "") + _loc(first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "literal_error":
        msg = f"must be one of {first['ctx'].get('expected')}"
    return UserError(f"{source}: {loc or '(top level)'}: {msg}")


def parse_stages(source: str, items: list[Any]) -> list[StageSpec]:
    from stages import STAGES

    specs: list[StageSpec] = []
    used: dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"{source}: stages[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise UserError(f"{where}: each stage is a one-key mapping {{stage_name: {{options}}}}")
        (kind, options), = item.items()
        if kind not in STAGES:
            raise UserError(f"{where}: unknown stage {kind!r} (valid: {', '.join(sorted(STAGES))})")
        if options is not None and not isinstance(options, dict):
            raise UserError(f"{where}.{kind}: options must be a mapping")
        cls = STAGES[kind]
        try:
            opts = cls.Options(**(options or {}))
        except ValidationError as e:
            err = e.errors()[0]
            if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:  # a stage option; nested keys below
                valid = ", ".join(sorted(cls.Options.model_fields))
                raise UserError(f"{where}.{kind}.{_loc(err['loc'])}: unknown option (valid: {valid})") from None
            raise _one_line(source, e, prefix=f"stages[{i}].{kind}") from None
        name = opts.name
        if name is None:
            used[kind] = used.get(kind, 0) + 1
            name = kind if used[kind] == 1 else f"{kind}_{used[kind]}"
        if name == "read" or any(s.name == name for s in specs):
            raise UserError(f"{where}.{kind}.name: stage name {name!r} is already used")
        specs.append(StageSpec(kind=kind, name=name, options=opts))
    return specs


def read_yaml_mapping(path: Path, keys: str) -> dict:
    """A YAML file's top-level mapping, loaded safely; faults are one line naming the file (and line)."""
    source = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{source}: cannot read config ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{source}:{where}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a config is a mapping with keys {keys}")
    return raw


def validated_yaml(path: Path, model: type[M], keys: str) -> M:
    """A YAML file validated as `model`; faults are one line naming the file and the key."""
    raw = read_yaml_mapping(path, keys)
    try:
        return model(**raw)
    except ValidationError as e:
        raise _one_line(str(path), e) from None


def load_config(path: str | Path, prepare: Callable[[RunConfig], None] | None = None,
                ) -> tuple[RunConfig, list[StageSpec]]:
    """Load and validate CONFIG.yaml; relative paths inside resolve against its directory.

    `prepare(config)` runs before the stages are validated (which imports their modules): the CLI
    applies its overrides there and starts the worker processes early."""
    path = Path(path)
    source = str(path)
    config = validated_yaml(path, RunConfig, "name, input, output, executor, stages")
    base = path.resolve().parent
    config.input.paths = [resolve_input(p, base) for p in config.input.paths]
    if not _is_url(config.output.path):
        config.output.path = str((base / config.output.path).resolve())
    if prepare is not None:
        prepare(config)
    specs = parse_stages(source, config.stages)
    for spec in specs:
        spec.options = spec.options.model_copy(update=_resolved_paths(spec.options, base))
    return config, specs


def _is_url(path: str) -> bool:
    return "://" in path


def resolve_input(path: str, base: Path) -> str:
    """Resolve an input PATH against `base`, keeping a kind prefix and `source:@python` as they are."""
    prefix = ""
    for kind in ("parquet:", "jsonl:", "source:"):
        if path.startswith(kind):
            prefix, path = kind, path[len(kind):]
    if path.startswith("@") or _is_url(path) or Path(path).is_absolute():
        return prefix + path
    return prefix + str((base / path).resolve())


def _resolved_paths(options: BaseModel, base: Path) -> dict[str, Any]:
    """Stage options declared as paths (json_schema_extra={'path': True}) resolve like input paths,
    also inside nested option models and lists of them (e.g. decontaminate's benchmark files)."""
    out: dict[str, Any] = {}
    for key, field in type(options).model_fields.items():
        value = getattr(options, key)
        if isinstance(value, str) and (field.json_schema_extra or {}).get("path") and not _is_url(value):
            out[key] = str(base / value) if not Path(value).is_absolute() else value
        elif isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
            out[key] = [v.model_copy(update=_resolved_paths(v, base)) if isinstance(v, BaseModel) else v
                        for v in value]
    return out
