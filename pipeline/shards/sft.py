"""SFT mixing in MFTCoder's multi-task format: sources (and mined tasks) -> normalised conversations ->
curation with our own stages (dedup, decontamination) -> per-task train/valid split -> weighted,
seeded mix -> Parquet shards (`id`, `task`, `messages`, `source`, `split`), stats and a data card.

Curation reuses the pipeline: each task's normalised records are written as a Stack-v2-like Parquet
file (`repo_name` = task/source file, `path` = id, `content` = the rendered conversation, plus
`messages`) and run through `pipeline.runner.Runner` with the configured stages reading
`text_field: messages`; its output (`curation/<task>/`) is a complete codecurate output, with every
removal and its reason, that `pipeline verify` checks.
"""

import json
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import Field, field_validator, model_validator
from rich.console import Console

from pipeline.config import ExecutorConfig, InputConfig, OutputConfig, RunConfig, Strict, parse_stages
from pipeline.errors import UserError
from pipeline.io.files import commit, tmp_name, write_json_atomic
from pipeline.io.inputs import expand_path, read_jsonl
from pipeline.records import reason_group
from pipeline.runner import Runner, RunOptions
from pipeline.shards.mine import MESSAGES_TYPE, MineOptions, Miner
from pipeline.shards.seeded import unit_interval
from pipeline.shards.settings import PATH, PATH_OR_NAME, load_settings
from pipeline.shards.tokenizer import load_tokenizer

SFT_SCHEMA = pa.schema([("id", pa.string()), ("task", pa.string()), ("messages", MESSAGES_TYPE),
                        ("source", pa.string()), ("split", pa.string())])
POOL_SCHEMA = pa.schema([("repo_name", pa.string()), ("path", pa.string()), ("content", pa.string()),
                         ("id", pa.string()), ("task", pa.string()), ("source", pa.string()),
                         ("messages", MESSAGES_TYPE)])
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "bot": "assistant",
         "gpt": "assistant"}  # MFTCoder's human/bot and ShareGPT's gpt map to the SPEC's roles


class SourceConfig(Strict):
    """One input of a task: Parquet/JSONL files (local, or fsspec URLs such as hf://datasets/...)."""

    task: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: list[str] = Field(min_length=1, json_schema_extra=PATH)
    format: Literal["auto", "instruction", "chat_rounds", "messages"] = "auto"

    @field_validator("path", mode="before")
    @classmethod
    def _listed(cls, value):
        return [value] if isinstance(value, str) else value


class TaskMix(Strict):
    """How much of a task goes into train: `count` records, or by `weight` (share of `total`, or a
    multiple of what the task has when no total is set)."""

    weight: float = Field(default=1.0, ge=0)
    count: int | None = Field(default=None, ge=0)
    upsample: bool | None = None  # repeat records to reach the target (default: the mix's `upsample`)


class MineSettings(MineOptions):
    corpus: list[str] = Field(min_length=1, json_schema_extra=PATH)


class SftConfig(Strict):
    name: str = "sft-mix"
    output: str = Field(json_schema_extra=PATH)
    sources: list[SourceConfig] = []
    mine: MineSettings | None = None
    tasks: dict[str, TaskMix] = {}
    total: int | None = Field(default=None, ge=1)  # train records of all weighted tasks together
    upsample: bool = False
    valid_fraction: float = Field(default=0.02, ge=0, lt=1)
    seed: int = 0
    tokenizer: str | None = Field(default=None, json_schema_extra=PATH_OR_NAME)  # for token counts
    # curation, per task; each stage reads `text_field: messages` unless told otherwise
    stages: list[dict[str, Any]] = [{"exact_dedup": {}}, {"near_dedup": {}}, {"decontaminate": {}}]
    executor: ExecutorConfig = ExecutorConfig()
    shard_rows: int = Field(default=100_000, gt=0)

    @model_validator(mode="after")
    def _has_input(self):
        if not self.sources and self.mine is None:
            raise ValueError("give sources, mine, or both")
        unknown = sorted(set(self.tasks) - {s.task for s in self.sources} - set(self.mine.tasks if self.mine else []))
        if unknown:
            raise ValueError(f"tasks {', '.join(unknown)} have no source")
        return self


def render(messages: list[dict]) -> str:
    """The conversation as one text (the curation input's `content`: sizes and a readable audit trail)."""
    return "\n".join(f"<|{m['role']}|>\n{m['content']}" for m in messages)


def normalise(row: dict, fmt: str) -> tuple[list[dict] | None, str | None]:
    """A source row -> SPEC messages, or the reason it is not a usable conversation."""
    if fmt == "instruction":
        prompt = row.get("instruction")
        answer = row.get("output") if row.get("output") is not None else row.get("response")
        if not isinstance(prompt, str) or not isinstance(answer, str):
            return None, "invalid:format"
        if isinstance(row.get("input"), str) and row["input"].strip():
            prompt = f"{prompt}\n\n{row['input']}"
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            turns.insert(0, {"role": "system", "content": row["system"]})
    else:
        raw = row.get(fmt)
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            return None, "invalid:format"
        turns = []
        for turn in raw:
            role = ROLES.get(str(turn.get("role", "")).lower())
            if role is None:
                return None, "invalid:role"
            turns.append({"role": role, "content": turn.get("content")})
    if any(not isinstance(t["content"], str) or (t["role"] != "system" and not t["content"].strip()) for t in turns):
        return None, "invalid:empty_turn"
    roles = [t["role"] for t in turns]
    if "user" not in roles or roles[-1] != "assistant":
        return None, "invalid:no_answer"
    return turns, None


@dataclass(frozen=True)
class SourceFile:
    task: str
    kind: str  # parquet | jsonl
    path: str
    format: str


def source_columns(kind: str, path: str) -> list[str]:
    """A source file's columns from its Parquet schema or its first JSON line (the file is not read)."""
    try:
        if kind == "parquet":
            with fsspec.open(path, "rb") as f:
                return pq.read_schema(f).names
        with fsspec.open(path, "rt", compression="infer") as f:
            line = f.readline()
        return list(json.loads(line)) if line.strip() else []
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable {kind} file ({str(e).splitlines()[0]})") from None


def plan_sources(sources: list[SourceConfig]) -> list[SourceFile]:
    """Every source file with its format, checked before anything is written."""
    files = []
    for source in sources:
        for spec in source.path:
            for kind, path in expand_path(spec):
                if kind == "source":
                    raise UserError(f"{spec}: an SFT source is a Parquet or JSONL file")
                columns = source_columns(kind, path)
                fmt = source.format
                if fmt == "auto":
                    fmt = next((f for f in ("messages", "chat_rounds", "instruction") if f in columns), None)
                if fmt is None or fmt not in columns:
                    raise UserError(f"{path}: no SFT columns for format {source.format} (expected messages, "
                                    f"chat_rounds or instruction+output); found {', '.join(columns) or 'none'}")
                files.append(SourceFile(source.task, kind, path, fmt))
    return files


def read_source_file(kind: str, path: str) -> pa.Table:
    if kind == "jsonl":
        return read_jsonl(path)
    try:
        with fsspec.open(path, "rb") as f:
            return pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


class SftMixer:
    def __init__(self, config: SftConfig, config_path: str, console: Console, progress: bool = True):
        self.config, self.config_path, self.console, self.progress = config, config_path, console, progress
        self.out = Path(config.output)
        self.files = plan_sources(config.sources)
        self.tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer else None
        self.mined: dict | None = None
        self.stats: dict[str, dict] = defaultdict(lambda: {"sources": [], "read": 0, "invalid": Counter(),
                                                           "removed": Counter()})

    # -- 1. sources ---------------------------------------------------------------------------------
    def sources(self) -> list[SourceFile]:
        """Every input file: the mined tasks (mined now) first, then the configured sources."""
        if self.config.mine is None:
            return self.files
        mined = self.out / "mined"
        options = MineOptions(**self.config.mine.model_dump(exclude={"corpus"}))
        self.console.print(f"mining {', '.join(self.config.mine.corpus)} ...")
        self.mined = Miner(options).run(self.config.mine.corpus, mined)
        return [SourceFile(t, "parquet", str(mined / f"{t}.parquet"), "messages") for t in options.tasks] + self.files

    def write_pools(self, folder: Path) -> dict[str, Path]:
        """Normalise every source into one curation input per task."""
        folder.mkdir(parents=True, exist_ok=True)
        writers: dict[str, pq.ParquetWriter] = {}
        for source in self.sources():
            path, fmt = source.path, source.format
            table = read_source_file(source.kind, path)
            stats = self.stats[source.task]
            stats["sources"].append(path)
            stem = Path(path).name
            rows = []
            for i, row in enumerate(row for batch in table.to_batches(10_000) for row in batch.to_pylist()):
                stats["read"] += 1
                messages, fault = normalise(row, fmt)
                if fault:
                    stats["invalid"][fault] += 1
                    continue
                record_id = str(row["id"]) if row.get("id") is not None else f"{source.task}/{stem}/{i}"
                origin = row["source"] if isinstance(row.get("source"), str) else stem
                rows.append({"repo_name": f"{source.task}/{stem}", "path": record_id, "content": render(messages),
                             "id": record_id, "task": source.task, "source": origin, "messages": messages})
            if source.task not in writers:
                writers[source.task] = pq.ParquetWriter(tmp_name(folder / f"{source.task}.parquet"), POOL_SCHEMA,
                                                        compression="zstd")
            writers[source.task].write_table(pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
        for task, writer in writers.items():
            writer.close()
            commit(tmp_name(folder / f"{task}.parquet"), folder / f"{task}.parquet")
        return {task: folder / f"{task}.parquet" for task in sorted(writers)}

    # -- 2. curation ----------------------------------------------------------------------------------
    def curate(self, task: str, pool: Path) -> pa.Table:
        """Run the configured stages over one task's records with our runner (`curation/<task>/`, a
        complete codecurate output); returns the kept records. Tasks are curated apart: the tasks mined
        from one function are near-duplicates of each other by design."""
        columns = ["id", "task", "source", "messages"]
        if not self.config.stages or pq.read_metadata(pool).num_rows == 0:
            return pq.read_table(pool, columns=columns)
        items = []
        for item in self.config.stages:
            if isinstance(item, dict) and len(item) == 1:
                (kind, options), = item.items()
                item = {kind: {"text_field": "messages", **(options or {})}}
            items.append(item)
        specs = parse_stages(self.config_path, items)
        out = self.out / "curation" / task
        run = RunConfig(name=f"{self.config.name}-curation-{task}", input=InputConfig(paths=[str(pool)]),
                        output=OutputConfig(path=str(out)), executor=self.config.executor)
        Runner(run, specs, RunOptions(overwrite=True, progress=self.progress), self.console).run()
        for f in sorted((out / "removed").glob("*/*.parquet")):
            t = pq.read_table(f, columns=["removed_by", "removal_reason"])
            for stage, reason in zip(*(c.to_pylist() for c in t.columns), strict=True):
                group = reason_group(reason)
                if group.startswith("contaminated:"):  # per benchmark, not per benchmark task
                    group = group.split("/", 1)[0]
                self.stats[task]["removed"][f"{stage}:{group}"] += 1
        tables = [pq.read_table(f, columns=columns) for f in sorted((out / "data").glob("*.parquet"))]
        return pa.concat_tables(tables) if tables else POOL_SCHEMA.empty_table().select(columns)

    # -- 3. mix -----------------------------------------------------------------------------------------
    def targets(self, available: dict[str, int]) -> dict[str, int]:
        """Train records wanted per task, from its train pool size (before capping when not upsampling)."""
        mixes = {task: self.config.tasks.get(task, TaskMix()) for task in available}
        counted = {t: m.count for t, m in mixes.items() if m.count is not None}
        weighted = {t: m.weight for t, m in mixes.items() if m.count is None}
        if self.config.total is None:
            return counted | {t: round(w * available[t]) for t, w in weighted.items()}
        left = max(0, self.config.total - sum(counted.values()))
        weights = sum(weighted.values())
        return counted | {t: round(left * w / weights) if weights else 0 for t, w in weighted.items()}

    def split_valid(self, ids: list[str], rows: list[int]) -> tuple[list[int], list[int]]:
        """(valid, train pool) of a task: the first `valid_fraction` of a seeded order of its ids."""
        order = sorted(rows, key=lambda i: (unit_interval(self.config.seed, "valid", ids[i]), ids[i]))
        n_valid = round(len(order) * self.config.valid_fraction) if len(order) > 1 else 0
        return sorted(order[:n_valid]), order[n_valid:]

    def sample(self, ids: list[str], pool: list[int], target: int) -> list[tuple[int, str]]:
        """`target` (row, id) from the pool: passes over seeded permutations of it, the last one cut short.
        Records repeated by upsampling get ids `<id>#<pass>`."""
        chosen: list[tuple[int, str]] = []
        rep = 0
        while len(chosen) < target and pool:
            order = sorted(pool, key=lambda i, r=rep: (unit_interval(self.config.seed, "train", r, ids[i]), ids[i]))
            chosen += [(i, ids[i] if rep == 0 else f"{ids[i]}#{rep}") for i in order[: target - len(chosen)]]
            rep += 1
        return chosen

    def mix(self, kept: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Per task: a seeded valid split, then the train target by seeded sampling. Returns (train
        shuffled across tasks, valid)."""
        ids = kept.column("id").to_pylist()
        by_task: dict[str, list[int]] = defaultdict(list)
        for i, task in enumerate(kept.column("task").to_pylist()):
            by_task[task].append(i)
        splits = {task: self.split_valid(ids, rows) for task, rows in sorted(by_task.items())}
        targets = self.targets({task: len(pool) for task, (_, pool) in splits.items()})
        chosen: list[tuple[int, str]] = []
        valid_rows: list[int] = []
        for task, (valid, pool) in splits.items():
            mix = self.config.tasks.get(task, TaskMix())
            upsample = mix.upsample if mix.upsample is not None else self.config.upsample
            train = self.sample(ids, pool, targets[task] if upsample else min(targets[task], len(pool)))
            chosen += train
            valid_rows += valid
            self.stats[task].update(unique=len(by_task[task]), valid=len(valid), train=len(train),
                                    target=targets[task], train_unique=len({i for i, _ in train}), upsample=upsample,
                                    weight=mix.weight, count=mix.count)
        chosen.sort(key=lambda c: unit_interval(self.config.seed, "shuffle", c[1]))
        train = kept.take(pa.array([i for i, _ in chosen], pa.int64()))
        train = train.set_column(0, "id", pa.array([record_id for _, record_id in chosen], pa.string()))
        return _with_split(train, "train"), _with_split(kept.take(pa.array(valid_rows, pa.int64())), "valid")

    # -- 4. outputs --------------------------------------------------------------------------------------
    def count_tokens(self, train: pa.Table, valid: pa.Table) -> None:
        for split, table in (("train", train), ("valid", valid)):
            tasks = table.column("task").to_pylist()
            conversations = table.column("messages").to_pylist()
            contents = [m["content"] for c in conversations for m in c]
            lengths = iter(len(ids) for i in range(0, len(contents), 10_000)
                           for ids in self.tokenizer.encode(contents[i: i + 10_000]))
            totals: Counter = Counter()
            for task, conversation in zip(tasks, conversations, strict=True):
                totals[task] += sum(next(lengths) for _ in conversation)
            for task in self.stats:
                self.stats[task].setdefault("tokens", {})[split] = totals[task]

    def write_split(self, table: pa.Table, split: str) -> list[str]:
        folder = self.out / "data"
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for n, start in enumerate(range(0, max(table.num_rows, 1), self.config.shard_rows)):
            path = folder / f"{split}-{n:05d}.parquet"
            pq.write_table(table.slice(start, self.config.shard_rows), tmp_name(path), compression="zstd",
                           row_group_size=10_000)
            commit(tmp_name(path), path)
            names.append(f"data/{path.name}")
        return names

    def run(self) -> dict:
        start = time.monotonic()
        work = self.out / ".work"
        work.mkdir(parents=True, exist_ok=True)
        pools = self.write_pools(work / "pools")
        kept = pa.concat_tables([self.curate(task, pool) for task, pool in pools.items()])
        train, valid = self.mix(kept)
        if self.tokenizer is not None:
            self.count_tokens(train, valid)
        files = {"train": self.write_split(train, "train"), "valid": self.write_split(valid, "valid")}
        stats = {"name": self.config.name, "tasks": {t: _plain(s) for t, s in sorted(self.stats.items())},
                 "totals": {"train": train.num_rows, "valid": valid.num_rows}, "files": files,
                 "mined": self.mined, "seconds": round(time.monotonic() - start, 1),
                 "config": self.config.model_dump(mode="json")}
        write_json_atomic(self.out / "stats.json", stats)
        (self.out / "data_card.md").write_text(render_card(stats))
        shutil.rmtree(work, ignore_errors=True)
        return stats


def _with_split(table: pa.Table, split: str) -> pa.Table:
    table = table.append_column("split", pa.array([split] * table.num_rows, pa.string()))
    return table.select(SFT_SCHEMA.names).cast(SFT_SCHEMA)


def _plain(stats: dict) -> dict:
    return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in stats.items()}


def render_card(stats: dict) -> str:
    """A Hugging Face style card: splits as configs, per-task counts, tokens and what curation removed."""
    header = {"pretty_name": stats["name"], "language": ["code", "en"], "task_categories": ["text-generation"],
              "configs": [{"config_name": "default", "data_files": [
                  {"split": "train", "path": "data/train-*.parquet"},
                  {"split": "validation", "path": "data/valid-*.parquet"}]}]}
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "", f"# {stats['name']}", "",
             "Multi-task SFT data in MFTCoder's format: each record has `id`, `task`, `messages` "
             "(`role` system/user/assistant, `content`), `source` and `split`.", "",
             "## Tasks", "", "| task | read | invalid | removed by curation | unique | train | valid | "
             "train tokens | valid tokens |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task, s in stats["tasks"].items():
        tokens = s.get("tokens", {})
        lines.append(f"| {task} | {s['read']:,} | {sum(s['invalid'].values()):,} | {sum(s['removed'].values()):,} | "
                     f"{s.get('unique', 0):,} | {s.get('train', 0):,} | {s.get('valid', 0):,} | "
                     f"{_maybe(tokens.get('train'))} | {_maybe(tokens.get('valid'))} |")
    removed = Counter()
    for s in stats["tasks"].values():
        removed.update(s["removed"])
    if removed:
        lines += ["", "## Removed by curation", "", "| stage:reason | records |", "|---|---:|"]
        lines += [f"| {reason} | {n:,} |" for reason, n in sorted(removed.items())]
    lines += ["", "## How to load", "", "```python", "from datasets import load_dataset",
              'ds = load_dataset("parquet", data_files={"train": "data/train-*.parquet", '
              '"validation": "data/valid-*.parquet"})', "```", ""]
    return "\n".join(lines)


def _maybe(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def load_sft_config(path: str) -> SftConfig:
    return load_settings(path, SftConfig, "name, output, sources, mine, tasks, stages")

