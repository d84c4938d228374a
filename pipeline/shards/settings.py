"""YAML settings of the shard commands: validated strictly (one-line errors naming file and key), relative
paths resolved against the file's directory as in run configs."""

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from pipeline.config import resolve_input, validated_yaml

Model = TypeVar("Model", bound=BaseModel)
PATH = {"resolve": "path"}  # json_schema_extra of a field holding a path (or a list of them)
PATH_OR_NAME = {"resolve": "path_or_name"}  # resolved only when it exists: a tokenizer may be a Hub name


def resolve_paths(model: BaseModel, base: Path) -> None:
    """Resolve, in place, the path fields of `model` and of the models nested in it."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        kind = info.json_schema_extra.get("resolve") if isinstance(info.json_schema_extra, dict) else None
        if kind and value is not None:
            setattr(model, name, _resolve(value, base, kind))
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                resolve_paths(item, base)


def _resolve(value: str | list[str], base: Path, kind: str):
    if isinstance(value, list):
        return [_resolve(v, base, kind) for v in value]
    if kind == "path_or_name" and not (base / value).exists():
        return value
    return resolve_input(value, base)


def load_settings(path: str | Path, model: type[Model], keys: str) -> Model:
    path = Path(path)
    settings = validated_yaml(path, model, keys)
    resolve_paths(settings, path.resolve().parent)
    return settings
