"""`pipeline optout apply --dataset DIR --output DIR2`: a new release with the registry's opt-outs.

The new release is what a full re-run with the current registry gives (`replay.py` decides which
records leave and which come back), but only the shards holding affected records are rewritten,
row group by row group; every other shard, `input_ids.parquet` and the logs are hard-linked (copied
across file systems). Removed rows go to `removed/opt_out/` as they entered it (rebuilt from the
input where a later stage rewrote them: `originals.py`); stats.json, manifest.json, the data card
and CHANGELOG.md are written anew. The release is built in a hidden sibling directory and renamed
into place when whole.
"""

import json
import os
import re
import shutil
import threading
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.card import import_plotting_in_background
from pipeline.config import RunConfig, StageSpec
from pipeline.errors import UserError
from pipeline.executors.pool import cpu_count
from pipeline.io.files import write_json_atomic
from pipeline.optout.originals import Originals
from pipeline.optout.replay import CLUSTERS, Catalog, Move, Ref, Replay, tail_start
from pipeline.optout.tail import TailHelper
from pipeline.records import CONTENT, KEEP_FIELDS, REMOVAL_KEYS
from pipeline.runner import CLUSTERS_DIR, REMOVAL_COLUMNS, config_fingerprint, with_columns
from pipeline.stats import COUNTS, totals

SHARD_NAME = re.compile(r"(\d{5})_(\d{3})\.parquet")
CATALOG_COLUMNS = ("repo_name", "path", "blob_id", *KEEP_FIELDS[:4], "language", "removal_reason",
                   "kept_repo_name", "kept_path")
# SPEC input columns: a column a stage "adds" that is one of these may have come with the input.
STACK_COLUMNS = frozenset({"repo_name", "path", "content", "blob_id", "language", "extension", "length_bytes",
                           "license_type", "detected_licenses", "star_events_count", "fork_events_count",
                           "revision_date", "src_encoding"})
CHANGELOG = "CHANGELOG.md"


@dataclass(frozen=True)
class Shard:
    path: Path  # in the old release
    rel: str  # relative to the release root
    loc: int  # stage index of removed/<stage>/, len(stages) for data/

    @property
    def task(self) -> int:
        m = SHARD_NAME.fullmatch(self.path.name)
        return int(m.group(1)) if m else 0


class OldRelease:
    """A complete output directory: its manifest, stats, stages (rebuilt from the manifest) and shards."""

    def __init__(self, path: Path, registry: str | None):
        from stages import STAGES

        self.path = path
        for name in ("manifest.json", "stats.json", "data"):
            if not (path / name).exists():
                raise UserError(f"{path}: not a codecurate output (missing {name})")
        self.manifest = json.loads((path / "manifest.json").read_text())
        self.stats = json.loads((path / "stats.json").read_text())
        if not self.manifest.get("complete"):
            raise UserError(f"{path}: the run is not complete; finish it (pipeline run --resume) first")
        self.specs = [dict(s) for s in self.manifest["stages"]]
        kinds = [s["kind"] for s in self.specs]
        self.inserted = "opt_out" not in kinds
        if self.inserted:  # an output made without opt_out: as if it had run first
            if registry is None:
                raise UserError(f"{path}: made without an opt_out stage; give the registry with --registry")
            self.specs.insert(0, {"kind": "opt_out", "name": "opt_out", "options": {"registry": registry}})
        self.k = [s["kind"] for s in self.specs].index("opt_out")
        if registry is not None:
            self.specs[self.k]["options"] = dict(self.specs[self.k]["options"], registry=str(Path(registry).resolve()))
        unknown = [s["kind"] for s in self.specs if s["kind"] not in STAGES]
        if unknown:
            raise UserError(f"{path}: made with stages this installation does not have: {', '.join(unknown)}")
        self.spec_models = [StageSpec(kind=s["kind"], name=s["name"], options=STAGES[s["kind"]].Options(**s["options"]))
                            for s in self.specs]
        self.stages = [STAGES[s.kind](s.name, s.options) for s in self.spec_models]
        self.names = [s.name for s in self.spec_models]
        n = len(self.specs)
        self.shards = [Shard(p, f"data/{p.name}", n) for p in sorted((path / "data").glob("*.parquet"))]
        for j in range(self.k + 1, n):
            folder = path / "removed" / self.names[j]
            self.shards += [Shard(p, f"removed/{self.names[j]}/{p.name}", j) for p in sorted(folder.glob("*.parquet"))]

    def units(self, pos: int) -> pa.Table | None:
        """The components' units stage `pos` published (`clusters/<stage>/`); None: it published none."""
        files = self.units_published(pos)
        return pa.concat_tables([pq.read_table(f) for f in files]) if files else None

    def units_published(self, pos: int) -> list[Path]:
        return sorted((self.path / CLUSTERS_DIR / self.names[pos]).glob("*.parquet"))

    @property
    def optouts(self):
        return self.stages[self.k].optouts

    def folder_of(self, pos: int) -> Path:
        return self.path / ("data" if pos == len(self.specs) else f"removed/{self.names[pos]}")

    def entered_schema(self, pos: int) -> pa.Schema:
        """The columns a record has when it enters stage `pos` (len(stages): data/). Exact from the
        nearest shards written at or before it, else derived back from the shards after it."""
        evidence = [(-1, self.path / "removed" / "read")] + [(i, self.folder_of(i)) for i in range(len(self.specs) + 1)]
        found = [(i, next(iter(sorted(f.glob("*.parquet"))), None)) for i, f in evidence]
        found = [(max(i, 0), pq.read_schema(p)) for i, p in found if p is not None]
        before = [(i, s) for i, s in found if i <= pos]
        if before:
            i, schema = before[-1]
            schema = _drop(schema, REMOVAL_KEYS)
            for stage in self.stages[i:pos]:
                schema = with_columns(schema, stage.added_columns.items())
            return schema
        i, schema = min((f for f in found if f[0] > pos), key=lambda f: f[0], default=(len(self.specs), pa.schema([])))
        later = {c for stage in self.stages[pos:i] for c in stage.added_columns} - STACK_COLUMNS
        return _drop(_drop(schema, REMOVAL_KEYS), later)

    def folder_schema(self, pos: int) -> pa.Schema:
        existing = sorted(self.folder_of(pos).glob("*.parquet"))
        if existing:
            return pq.read_schema(existing[0])
        schema = self.entered_schema(pos)
        return schema if pos == len(self.specs) else with_columns(schema, REMOVAL_COLUMNS)


def _drop(schema: pa.Schema, names) -> pa.Schema:
    return pa.schema([f for f in schema if f.name not in set(names)])


def _project(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for f in schema:
        if f.name in table.column_names:
            column = table[f.name]
            columns.append(column if column.type == f.type else column.cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _read_catalog(shard: Shard | None, index: int = 0) -> pa.Table:
    """The catalog columns of one shard (None: an empty catalog)."""
    if shard is None:
        table = pa.table({})
    else:
        names = set(pq.read_schema(shard.path).names)
        table = pq.read_table(shard.path, columns=[c for c in CATALOG_COLUMNS if c in names])
    n = table.num_rows
    for c in CATALOG_COLUMNS:
        if c not in table.column_names:
            table = table.append_column(c, pa.nulls(n))  # null type: unifies with the others' type
    table = table.select(list(CATALOG_COLUMNS))
    loc = shard.loc if shard else 0
    return table.append_column("_loc", pa.array([loc] * n, pa.int32())).append_column(
        "_file", pa.array([index] * n, pa.int32())).append_column("_row", pa.array(range(n), pa.int64()))


class ReleaseWriter:
    """Writes the new release's shards into `tmp`: rewritten, hard-linked and new ones."""

    def __init__(self, old: OldRelease, tmp: Path, originals: dict[Ref, dict]):
        self.old, self.tmp, self.originals = old, tmp, originals
        self.rewritten: set[Ref] = set()  # rebuilt rows whose content the old release holds rewritten
        output = old.manifest["config"]["output"]
        self.compression_level = output.get("compression_level", 3)
        self.row_group_bytes = output.get("row_group_bytes", 32 * 2**20)
        self.schemas: dict[int, pa.Schema] = {}
        self.counts: Counter = Counter()  # shards rewritten, linked, new
        self.next_shard: dict[tuple[str, int], int] = {}
        self.lock = threading.Lock()

    def rewrite_shards(self, replay: Replay) -> dict[Ref, int]:
        """Apply the replay's decisions to the old rows (shards, and the units of the components
        clustered again); returns the UTF-8 size of every row that left its shard."""
        shards = self.old.shards
        moves: dict[int, dict[int, Move | None]] = defaultdict(dict)
        for ref, move in replay.moves.items():
            moves[ref.file][ref.row] = move
        updates: dict[int, dict[int, dict]] = defaultdict(dict)
        for ref, update in replay.updates.items():
            updates[ref.file][ref.row] = update
        self.pos_of = {name: i for i, name in enumerate(self.old.names)}
        for pos in {self.pos_of[m.folder] for m in replay.moves.values() if m} | {len(self.old.specs)}:
            self.schemas[pos] = self.old.folder_schema(pos)  # read here, before the threads need them
        touched = sorted(set(moves) | set(updates))
        sizes: dict[Ref, int] = {}
        with ThreadPoolExecutor(cpu_count()) as pool:
            for part in pool.map(lambda i: self.rewrite(shards[i], i, moves[i], updates[i]), touched):
                sizes.update(part)
        self.counts["rewritten"] = len(touched)
        self.link_the_rest(set(touched), {self.old.names[j] for j in replay.clusters})
        self.write_clusters(replay)
        return sizes

    def write_new_shards(self, replay: Replay) -> None:
        """The rows the replay made: arrivals reaching data/, or removed by a stage they reached."""
        made = defaultdict(list, {(self.pos_of[folder], task): rows
                                  for (folder, task), rows in replay.new_rows.items()})
        for arrival in replay.arrivals:
            made[(len(self.old.specs), arrival.task)].append(arrival.row)
        for (pos, task), rows in sorted(made.items()):
            table = pa.Table.from_pylist(rows, schema=self.schema(pos))
            table = table.take(pc.sort_indices(table, [(c, "ascending") for c in ("repo_name", "path", "blob_id")]))
            pq.write_table(table, self.new_shard(pos, task), compression="zstd",
                           compression_level=self.compression_level, row_group_size=self.rows_per_group(table))

    def schema(self, pos: int) -> pa.Schema:
        if pos not in self.schemas:
            self.schemas[pos] = self.old.folder_schema(pos)
        return self.schemas[pos]

    def rows_per_group(self, table: pa.Table) -> int | None:
        size = pc.sum(pc.binary_length(table[CONTENT])).as_py() or 0
        return max(1, int(table.num_rows * self.row_group_bytes / size)) if size else None

    def new_shard(self, pos: int, task: int) -> Path:
        """The path of a new shard `{task}_{next n}` of data/ or removed/<stage pos>/ (thread-safe)."""
        folder = "data" if pos == len(self.old.specs) else f"removed/{self.old.names[pos]}"
        with self.lock:
            if (folder, task) not in self.next_shard:
                taken = [int(m.group(2)) for p in (self.old.path / folder).glob(f"{task:05d}_*.parquet")
                         if (m := SHARD_NAME.fullmatch(p.name))]
                self.next_shard[(folder, task)] = max(taken, default=-1) + 1
            n = self.next_shard[(folder, task)]
            self.next_shard[(folder, task)] += 1
            self.counts["new"] += 1
        path = self.tmp / folder / f"{task:05d}_{n:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def removed_rows(self, rows: pa.Table, moves: list[Move], pos: int) -> pa.Table:
        """Rows moving to removed/<stage pos>/: as they entered that stage, with their removal columns."""
        table = _project(rows.drop_columns([c for c in REMOVAL_KEYS if c in rows.column_names]), self.schemas[pos])
        for column, attr in (("removed_by", "folder"), ("removal_reason", "reason"),
                             ("kept_repo_name", "kept_repo_name"), ("kept_path", "kept_path")):
            table = table.set_column(table.schema.get_field_index(column), column,
                                     pa.array([getattr(m, attr) for m in moves], pa.string()))
        return table

    def rewrite(self, shard: Shard, index: int, moves: dict[int, Move | None], updates: dict[int, dict]):
        """Copy `shard` row group by row group without its moved rows and with `updates`; moved rows
        go straight to new shards of their folder (promoted ones travel with the replay). Returns
        every moved row's size."""
        pf = pq.ParquetFile(shard.path)
        path = self.tmp / shard.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        writer, offset, sizes, rewritten = None, 0, {}, set()
        moved: dict[int, pq.ParquetWriter] = {}  # destination stage -> its new shard
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g)
            rows = range(offset, offset + table.num_rows)
            offset += table.num_rows
            changed = [(i, updates[r]) for i, r in enumerate(rows) if r in updates]
            for column in ("removal_reason", "kept_repo_name", "kept_path") if changed else ():
                values = table[column].to_pylist()
                for i, update in changed:
                    values[i] = update[column]
                table = table.set_column(table.schema.get_field_index(column), column,
                                         pa.array(values, table.schema.field(column).type))
            gone = [i for i, r in enumerate(rows) if r in moves]
            if gone:
                for i, length in zip(gone, pc.binary_length(table[CONTENT].take(gone)).to_pylist(), strict=True):
                    sizes[Ref(index, rows[i])] = length or 0
                rebuilt = [i for i in gone if Ref(index, rows[i]) in self.originals]
                if rebuilt:  # rows a later stage rewrote: their rebuilt original goes to removed/
                    for i, text in zip(rebuilt, table[CONTENT].take(rebuilt).to_pylist(), strict=True):
                        if self.originals[Ref(index, rows[i])].get(CONTENT) != text:
                            rewritten.add(Ref(index, rows[i]))
                for folder in sorted({moves[rows[i]].folder for i in gone if moves[rows[i]] is not None}):
                    picked = [i for i in gone if moves[rows[i]] is not None and moves[rows[i]].folder == folder]
                    pos = self.pos_of[folder]
                    for part in self.removed_parts(table, index, rows, picked, moves, pos):
                        if pos not in moved:
                            moved[pos] = pq.ParquetWriter(self.new_shard(pos, shard.task), part.schema,
                                                          compression="zstd", compression_level=self.compression_level)
                        moved[pos].write_table(part, row_group_size=part.num_rows)
                table = table.filter(pc.invert(pc.is_in(pa.array(range(table.num_rows)), value_set=pa.array(gone))))
            if table.num_rows:
                if writer is None:
                    writer = pq.ParquetWriter(path, pf.schema_arrow, compression="zstd",
                                              compression_level=self.compression_level)
                writer.write_table(table, row_group_size=table.num_rows)
        for w in [writer, *moved.values()]:
            if w is not None:
                w.close()
        self.rewritten.update(rewritten)
        return sizes

    def removed_parts(self, table: pa.Table, index: int, rows: range, picked: list[int],
                      moves: dict[int, Move | None], pos: int) -> Iterator[pa.Table]:
        """The picked rows of a row group for removed/<stage pos>/: the rebuilt originals of rows a
        later stage rewrote, the rows as the old release holds them otherwise."""
        rebuilt = [i for i in picked if Ref(index, rows[i]) in self.originals]
        kept = [i for i in picked if Ref(index, rows[i]) not in self.originals]
        if kept:
            yield self.removed_rows(table.take(kept), [moves[rows[i]] for i in kept], pos)
        if rebuilt:
            originals = pa.Table.from_pylist([self.originals[Ref(index, rows[i])] for i in rebuilt],
                                             schema=_drop(self.schemas[pos], REMOVAL_KEYS))
            yield self.removed_rows(originals, [moves[rows[i]] for i in rebuilt], pos)

    def link_the_rest(self, touched: set[int], reclustered: set[str]) -> None:
        """Hard-link the shards left as they were, the removed/ folders up to opt_out, the units of
        the stages that clustered nothing again, the input ids and the logs (not the card, its plots
        or caches: they are made anew or rebuilt on use)."""
        for i, shard in enumerate(self.old.shards):
            if i not in touched:
                self.link(shard.path, shard.rel)
                self.counts["linked"] += 1
        replayed = {s.rel for s in self.old.shards} | {f"{CLUSTERS_DIR}/{name}" for name in reclustered}
        kept = ("logs/", "removed/", f"{CLUSTERS_DIR}/")
        for path in sorted(self.old.path.rglob("*")):
            rel = path.relative_to(self.old.path).as_posix()
            if rel not in replayed and rel.rsplit("/", 1)[0] not in replayed and \
                    (rel == "input_ids.parquet" or rel.startswith(kept)):
                if path.is_dir():
                    (self.tmp / rel).mkdir(parents=True, exist_ok=True)
                else:
                    self.link(path, rel)

    def write_clusters(self, replay: Replay) -> None:
        """The units of the near-dedup stages that clustered components again."""
        for j, units in sorted(replay.clusters.items()):
            path = self.tmp / CLUSTERS_DIR / self.old.names[j] / "000.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(units, path, compression="zstd")

    def link(self, src: Path, rel: str) -> None:
        dst = self.tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def fetch_rows(shards: list[Shard], refs: list[Ref]) -> list[dict]:
    """Full rows of the old release, in the order of `refs`; each row group needed is read once."""
    wanted: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)  # (file, group) -> (row, offset)
    group_starts: dict[int, list[int]] = {}
    for ref in refs:
        if ref.file not in group_starts:
            group_starts[ref.file] = _group_starts(shards[ref.file].path)
        starts = group_starts[ref.file]
        group = bisect_right(starts, ref.row) - 1
        wanted[(ref.file, group)].append((ref.row, ref.row - starts[group]))

    def read(item) -> dict[Ref, dict]:
        (file, group), rows = item
        table = pq.ParquetFile(shards[file].path).read_row_group(group)
        taken = table.take(pa.array([offset for _, offset in rows], pa.int64())).to_pylist()
        return {Ref(file, row): values for (row, _), values in zip(rows, taken, strict=True)}

    found: dict[Ref, dict] = {}
    with ThreadPoolExecutor(cpu_count()) as pool:
        for part in pool.map(read, sorted(wanted.items())):
            found.update(part)
    return [found[ref] for ref in refs]


def _group_starts(path: Path) -> list[int]:
    """The first row of each row group of a shard."""
    meta = pq.ParquetFile(path).metadata
    starts = [0]
    for g in range(meta.num_row_groups - 1):
        starts.append(starts[-1] + meta.row_group(g).num_rows)
    return starts


def plan(old: OldRelease) -> Replay:
    """Catalog the shards after opt_out, find the newly opted-out records and replay the stages up to
    the tail (`tail_start`)."""
    shards = old.shards
    with ThreadPoolExecutor(cpu_count()) as pool:
        parts = pool.map(_read_catalog, shards, range(len(shards)))
        for j, stage in enumerate(old.stages):  # meanwhile (Parquet decoding releases the GIL)
            if old.units_published(j):
                stage.warm_up()
        parts = list(parts)
    table = pa.concat_tables(parts, promote_options="permissive") if parts else _read_catalog(None)
    optouts = old.optouts
    hits = optouts.mask(table["repo_name"]) if len(optouts) and table.num_rows else pa.array([], pa.bool_())
    names = pc.unique(table["repo_name"].filter(hits)).to_pylist() if len(hits) else []
    replay = Replay(old.stages, old.k, Catalog(table), lambda refs: fetch_rows(shards, refs), lambda f: shards[f].task,
                    old.units)
    replay.opt_out({name: optouts.reason(name) for name in names})
    replay.run(tail_start(old.stages, old.k))
    return replay


def apply_optouts(dataset: str | Path, output: str | Path, registry: str | None = None,
                  overwrite: bool = False) -> dict:
    """Write the new release; returns its manifest's `release` summary."""
    src, dst = Path(dataset).resolve(), Path(output).resolve()
    if src == dst or dst.is_relative_to(src) or src.is_relative_to(dst):
        raise UserError(f"{output}: the new release must be a directory apart from {dataset}")
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise UserError(f"{output}: exists; use --overwrite or another --output")
        if not (dst / "manifest.json").exists():
            raise UserError(f"{output}: not a codecurate output directory; refusing to overwrite it")
    helper = TailHelper()
    try:
        return _release(OldRelease(src, registry), dst, helper)
    finally:
        helper.close()


def _release(old: OldRelease, dst: Path, helper: TailHelper) -> dict:
    before = old.manifest.get("optout_registry_version") or 0
    if old.optouts.version < before:  # registries only grow: this is another (or an older) registry
        raise UserError(f"{old.specs[old.k]['options']['registry']}: registry version {old.optouts.version} is older "
                        f"than the {before} {old.path} was made with; opt-outs are never withdrawn")
    started = datetime.now(UTC)
    tmp = dst.with_name(f".{dst.name}.optout-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tail_specs = old.spec_models[tail_start(old.stages, old.k):]
    try:
        helper.prepare([(s.kind, s.name, s.options.model_dump()) for s in tail_specs])
        replay = plan(old)
        tail_results = helper.start_stages([a.row for a in replay.arrivals])  # while the shards are rewritten
        leaving = list(replay.leaving.values())
        originals = Originals(old.stages, old.path, old.manifest, leaving, lambda lv: tuple(lv.key.split("\0")),
                              lambda ref: old.shards[ref.file].task)
        writer = ReleaseWriter(old, tmp, originals.rows)
        import_plotting_in_background()  # the card's last plot is drawn here, while the helper draws the others
        sizes = writer.rewrite_shards(replay)
        replay.run_tail(tail_results())
        writer.write_new_shards(replay)
        replay.account(sizes, originals.sizes_entering(leaving, writer.rewritten))
        stats = _new_stats(old, replay, writer.schema(len(old.specs)))
        summary = {
            "derived_from": str(old.path), "applied_at": started.isoformat(),
            "optout_registry": old.specs[old.k]["options"]["registry"],
            "optout_registry_version_before": old.manifest.get("optout_registry_version"),
            "optout_registry_version": old.optouts.version,
            "records_opted_out": sum(1 for lv in leaving if lv.removed_at == old.k),
            "records_promoted": dict(replay.promoted),
            "records_demoted": sum(1 for lv in leaving if lv.removed_at != old.k),
            "duplicates_repointed": len(replay.updates), "arrivals_unchecked": dict(replay.unchecked),
            "records_rebuilt_from_input": len(originals.rows), "records_not_rebuilt": originals.missing,
            "shards_rewritten": writer.counts["rewritten"], "shards_new": writer.counts["new"],
            "shards_linked": writer.counts["linked"],
        }
        manifest = _new_manifest(old, dst, summary)
        write_json_atomic(tmp / "stats.json", stats)
        write_json_atomic(tmp / "manifest.json", manifest)
        card = helper.start_card(tmp, manifest, stats)
        _write_changelog(old, tmp, summary, leaving, stats)
        card()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return summary


def _new_stats(old: OldRelease, replay: Replay, data_schema: pa.Schema) -> dict:
    """The old stats with the replay's deltas; languages and totals follow data/."""
    stats = {**old.stats, "stages": [dict(s, details=dict(s["details"])) for s in old.stats["stages"]]}
    if old.inserted:
        read = stats["stages"][0]
        stats["stages"].insert(1, {"name": old.names[0], "records_in": read["records_out"],
                                   "records_out": read["records_out"], "records_removed": 0,
                                   "bytes_in": read["bytes_out"], "bytes_out": read["bytes_out"], "seconds": 0.0,
                                   "details": {}})
    for entry, delta in zip(stats["stages"][1:], replay.deltas, strict=True):
        for key in COUNTS:
            entry[key] += delta.counts.get(key, 0)
        details = Counter(entry["details"])
        details.update({k: v for k, v in delta.details.items() if k != CLUSTERS or k in details})
        entry["details"] = {k: v for k, v in sorted(details.items()) if v}
    has_language = "language" in data_schema.names
    languages = {lang: dict(v) for lang, v in old.stats["languages"].items()}
    for lv in replay.leaving.values():
        if lv.old_pos == len(old.specs):
            lang = (lv.language if has_language else None) or "unknown"
            languages[lang]["records"] -= 1
            languages[lang]["bytes"] -= replay.sizes[lv.ref]
    for arrival in replay.arrivals:
        lang = (arrival.row.get("language") if has_language else None) or "unknown"
        entry = languages.setdefault(lang, {"records": 0, "bytes": 0})
        entry["records"] += 1
        entry["bytes"] += arrival.size
    stats["languages"] = dict(sorted(((k, v) for k, v in languages.items() if v["records"]),
                                     key=lambda kv: (-kv[1]["records"], kv[0])))
    stats["totals"] = totals(stats["stages"], stats["languages"])
    return stats


def _new_manifest(old: OldRelease, dst: Path, summary: dict) -> dict:
    manifest = dict(old.manifest)
    config = dict(manifest["config"], output=dict(manifest["config"]["output"], path=str(dst)))
    if old.inserted:
        config["stages"] = [{"opt_out": old.specs[0]["options"]}, *config.get("stages", [])]
    manifest.update(config=config, stages=old.specs, optout_registry_version=old.optouts.version, release=summary,
                    complete=True)
    info = {k: v for s in old.stages if hasattr(s, "manifest_info") for k, v in s.manifest_info().items()}
    manifest["config_fingerprint"] = config_fingerprint(RunConfig(**config), old.spec_models, info)
    return manifest


def _write_changelog(old: OldRelease, tmp: Path, summary: dict, leaving, stats: dict) -> None:
    removed = Counter(lv.new_reason for lv in leaving if lv.removed_at == old.k)
    before, after = old.stats["totals"], stats["totals"]
    lines = [f"## {summary['applied_at'][:19]}Z: opt-out registry version "
             f"{summary['optout_registry_version_before']} -> {summary['optout_registry_version']}", "",
             f"Derived from `{summary['derived_from']}`: data/ {before['records_out']:,} -> {after['records_out']:,} "
             f"records ({before['bytes_out'] / 1e6:,.1f} -> {after['bytes_out'] / 1e6:,.1f} MB).", "",
             f"- {summary['records_opted_out']:,} records moved to `removed/{old.names[old.k]}/`:"]
    lines += [f"  - `{reason}`: {count:,}" for reason, count in sorted(removed.items())] or ["  - none"]
    for stage, count in sorted(summary["records_promoted"].items()):
        lines.append(f"- {stage}: {count:,} records promoted back (their cluster's kept record left)")
    if summary["records_demoted"]:
        lines.append(f"- {summary['records_demoted']:,} records now lose their dedup cluster to a promoted record")
    if summary["duplicates_repointed"]:
        lines.append(f"- {summary['duplicates_repointed']:,} removed duplicates now point to their new kept record")
    for stage, count in sorted(summary["arrivals_unchecked"].items()):
        lines.append(f"- {stage}: {count:,} promoted records had no same-content record in the old input of this "
                     "dedup stage and were kept unchecked (a full re-run compares them)")
    if summary["records_not_rebuilt"]:
        lines.append(f"- {summary['records_not_rebuilt']:,} removed records are stored as the old release held them "
                     "(after later stages rewrote them): the input no longer holds them as the run read them")
    lines.append(f"- shards: {summary['shards_rewritten']} rewritten, {summary['shards_new']} new, "
                 f"{summary['shards_linked']} unchanged (hard-linked)")
    previous = old.path / CHANGELOG
    history = previous.read_text().split("\n", 2)[2] if previous.exists() else ""
    (tmp / CHANGELOG).write_text("\n".join(["# Changelog", "", *lines, "", history]).rstrip() + "\n")
