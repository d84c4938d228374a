"""Rows as they entered a stage, rebuilt from the run's input, for `optout apply`.

A record leaving at stage j belongs in `removed/<j>/` as it entered j (that is what a full re-run
writes), but the old release holds it as it entered a later stage, after row-level stages may have
rewritten it (`pii` redacts `content`; `language_selection` fills `language` and turns notebooks
into scripts). So the input is read again — only the work units of the tasks holding such records,
and of a Parquet row group only the rows wanted — and the row-level stages before j are applied,
as the run did. `input_ids.parquet` holds the content hash the run read: a record the input no
longer holds unchanged keeps its old row (counted in the changelog).
"""

from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.executors.pool import cpu_count
from pipeline.io.inputs import WorkUnit, plan_inputs, read_jsonl
from pipeline.io.readers import InputReader, content_digest
from pipeline.optout.replay import Leaving, Ref, join_keys, run_row_stage
from pipeline.progress import TaskProgress
from pipeline.records import CONTENT, utf8_len
from pipeline.step import CodeStage, GlobalStage

Identity = tuple[str, str, str]  # repo_name, path, blob_id


def needs_rebuild(stages: list, lv: Leaving) -> bool:
    """Whether a row-level stage between where the record now leaves and where the old run left
    it may have rewritten it."""
    return any(isinstance(s, CodeStage) for s in stages[lv.removed_at + 1:lv.old_pos])


class InputRecords:
    """Reads chosen records of a release's input again, exactly as its run's reader did."""

    def __init__(self, release: Path, manifest: dict):
        config = manifest["config"]
        source = config["input"]
        plan = plan_inputs(source["paths"], owner=source.get("owner"), content_from=source.get("content_from"),
                           limit=source.get("limit"), task_bytes=config["executor"]["task_bytes"])
        if len(plan.tasks) != manifest.get("tasks", len(plan.tasks)):
            raise UserError("the input's task layout differs from the run's")
        self.release = release
        self.reader = InputReader(plan.units, plan.tasks, plan.schema, content_from=source.get("content_from"),
                                  max_file_bytes=source["max_file_bytes"], removed_writer=None, ids_dir=release)
        self.reader.progress = TaskProgress(None, 0)

    def read(self, wanted: dict[int, set[Identity]]) -> dict[Identity, dict]:
        """task -> identities wanted in it => identity -> row as read (only records whose content
        hash is the one input_ids.parquet recorded)."""
        hashes = self._hashes({i for ids in wanted.values() for i in ids})
        units = [(unit, identities) for task, identities in sorted(wanted.items())
                 for unit in (self.reader.units[u] for u in self.reader.tasks[task])]
        found: dict[Identity, dict] = {}
        with ThreadPoolExecutor(cpu_count()) as pool:  # Parquet decoding releases the GIL
            for (_, identities), rows in zip(units, pool.map(lambda job: list(self._wanted_rows(*job)), units),
                                             strict=True):
                for row, raw in rows:
                    digest = content_digest(raw)
                    doc, fault = self.reader._record(row, raw)
                    identity = (doc.metadata.get("repo_name"), doc.metadata.get("path"), doc.metadata.get("blob_id"))
                    if not fault and identity in identities and hashes.get(identity) == digest:
                        found[identity] = {**doc.metadata, CONTENT: doc.text}
        return found

    def _wanted_rows(self, unit: WorkUnit, identities: set[Identity]) -> Iterator[tuple[dict, str | bytes | None]]:
        pairs = {(repo, path) for repo, path, _ in identities}
        return self._source_rows(unit, pairs) if unit.kind == "source" else self._table_rows(unit, pairs)

    def _hashes(self, identities: set[Identity]) -> dict[Identity, str]:
        ids = pq.read_table(self.release / "input_ids.parquet")
        keys = join_keys(ids)
        ids = ids.filter(pc.is_in(keys, value_set=pa.array(sorted("\0".join(i) for i in identities), pa.string())))
        return {(r["repo_name"], r["path"], r["blob_id"]): r["content_sha256"] for r in ids.to_pylist()}

    def _source_rows(self, unit: WorkUnit, pairs: set[tuple[str, str]]) -> Iterator[tuple[dict, bytes | None]]:
        files = unit.files if unit.max_rows is None else unit.files[:unit.max_rows]
        chosen = tuple(f for f in files if (f.repo_name, f.path) in pairs)
        return self.reader._source_rows(WorkUnit("source", files=chosen)) if chosen else iter(())

    def _table_rows(self, unit: WorkUnit, pairs: set[tuple[str, str]]) -> Iterator[tuple[dict, str | bytes | None]]:
        """The wanted rows of a JSONL file or Parquet row group (its identity columns read first)."""
        value_set = pa.array(sorted(f"{repo}\0{path}" for repo, path in pairs), pa.string())
        if unit.kind == "jsonl":
            table = read_jsonl(unit.path).slice(0, unit.max_rows)
        else:
            with fsspec.open(unit.path, "rb") as f:
                pf = pq.ParquetFile(f)
                names = pf.read_row_group(unit.row_group, columns=["repo_name", "path"]).slice(0, unit.max_rows)
                hits = pc.indices_nonzero(pc.is_in(join_keys(names, ("repo_name", "path")), value_set=value_set))
                if not len(hits):
                    return
                table = pf.read_row_group(unit.row_group).take(hits)
        table = table.filter(pc.is_in(join_keys(table, ("repo_name", "path")), value_set=value_set))
        for row in table.to_pylist():
            raw = row.pop(CONTENT, None)
            if raw is None and self.reader.content_from and row.get("blob_id"):
                raw = self.reader._fetch(row)
            yield row, raw


class Originals:
    """The rows of leaving records as they entered the stage they now leave at, and their size as
    they entered each stage up to where the old run left them (where a stage rewrote them)."""

    def __init__(self, stages: list, release: Path, manifest: dict, leaving: list[Leaving],
                 identity_of: Callable[[Leaving], Identity], task_of: Callable[[Ref], int]):
        self.stages = stages
        self.rows: dict[Ref, dict] = {}
        self.missing = 0  # records whose input is gone or changed: their old row is kept
        todo = [lv for lv in leaving if needs_rebuild(stages, lv)]
        if not todo:
            return
        wanted: dict[int, set[Identity]] = defaultdict(set)
        for lv in todo:
            wanted[task_of(lv.ref)].add(identity_of(lv))
        try:
            found = InputRecords(release, manifest).read(wanted)
        except (UserError, OSError):
            found = {}
        by_stage: dict[int, list[tuple[Leaving, dict]]] = defaultdict(list)
        for lv in todo:
            row = found.get(identity_of(lv))
            if row is None:
                self.missing += 1
            else:
                by_stage[lv.removed_at].append((lv, dict(row)))
        for removed_at, items in by_stage.items():  # the row-level stages before it, as the run did
            rows = self._through([row for _, row in items], 0, removed_at)
            for (lv, _), row in zip(items, rows, strict=True):
                if row is None:
                    self.missing += 1
                else:
                    self.rows[lv.ref] = row

    def _through(self, rows: list[dict | None], start: int, stop: int) -> list[dict | None]:
        """Rows after the row-level stages start..stop-1 (None: one of them removed it, which the run
        did not: treated as missing)."""
        rows = list(rows)
        for j in range(start, stop):
            live = [i for i, r in enumerate(rows) if r is not None]
            if isinstance(self.stages[j], GlobalStage) or not live:
                continue
            for i, (row, reason) in zip(live, run_row_stage(self.stages[j], [rows[i] for i in live]), strict=True):
                rows[i] = row if reason is None else None
        return rows

    def sizes_entering(self, leaving: list[Leaving], rewritten: set[Ref]) -> dict[Ref, dict[int, int]]:
        """Size as entered each stage from `removed_at` to `old_pos` (exclusive) of the rebuilt rows
        whose content differs from the old release's (`rewritten`): those stages run on them again."""
        todo = [lv for lv in leaving if lv.ref in rewritten]
        sizes: dict[Ref, dict[int, int]] = {lv.ref: {} for lv in todo}
        for start in sorted({lv.removed_at for lv in todo}):
            group = [lv for lv in todo if lv.removed_at == start]
            rows: list[dict | None] = [dict(self.rows[lv.ref]) for lv in group]
            stop = max(lv.old_pos for lv in group)
            for j in range(start, stop):
                rows = [r if j < lv.old_pos else None for r, lv in zip(rows, group, strict=True)]
                for row, lv in zip(rows, group, strict=True):
                    if row is not None:
                        sizes[lv.ref][j] = utf8_len(row.get(CONTENT) or "")
                # `start` (opt_out or dedup) passed them unchanged, the last one's output is the old
                # release's row, and a stage that only removes records passed them unchanged too
                if start < j < stop - 1 and getattr(self.stages[j], "rewrites_text", False):
                    rows = self._through(rows, j, j + 1)
        return sizes
