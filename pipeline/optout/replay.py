"""Replaying the stages after `opt_out` incrementally, for `optout apply`.

A full re-run with a larger registry differs from the old release only around the newly opted-out
records. Walking the stages after `opt_out` in order:

- a record that no longer reaches a stage *leaves* it: it was opted out, or it lost a dedup
  cluster it used to win;
- a record that now reaches a stage *arrives* at it: the next-ranked member of a dedup cluster
  whose kept record left, promoted back from `removed/<stage>/` (which holds it as it entered that
  stage). Row-level stages run for real on arrivals. At a later dedup stage an arrival joins the
  cluster of the old input record with the same `blob_id` (same content, same signature) or, at
  repository level, of its repository, and the cluster is ranked again by the SPEC keep rule.

The replay only decides which rows go where; `apply.py` rewrites the shards. Limits: clusters stay
as the old run recorded them (a near-dup cluster is not split when a member bridging two halves
leaves); an arrival whose content no old input of a dedup stage had passes that stage unchecked
(counted in the changelog); in stats.json, record and byte counts, removal reasons and dedup
`clusters` are updated, a stage's other `details` (entities found, signals...) keep the old run's
values, since recounting them would mean running the stages again on every record that left.
"""

import weakref
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import get_filter_result

from pipeline.io.writers import doc_to_row
from pipeline.records import (
    CONTENT,
    KEEP_FIELDS,
    REMOVAL_KEYS,
    duplicate_reason,
    duplicate_repo_reason,
    keep_order,
    license_rank,
    reason_group,
    utf8_len,
)
from pipeline.step import CodeStage, GlobalStage

DUP_PREFIX = "duplicate_of:"
CLUSTERS = "clusters"  # the dedup detail counting clusters of more than one record (ClusterStep)


@dataclass(frozen=True)
class Ref:
    """A row of the old release: index into its shard list, row number in the shard."""

    file: int
    row: int


@dataclass(frozen=True)
class Move:
    """A row leaving its shard for `removed/<folder>/` with these removal columns."""

    folder: str
    reason: str
    kept_repo_name: str | None = None
    kept_path: str | None = None


@dataclass
class Leaving:
    """An old record now removed at stage `removed_at` (it used to pass it) and so no longer
    reaching the stages after it, up to `old_pos` where the old run removed it (len = data/)."""

    ref: Ref
    key: str
    language: str | None
    old_pos: int
    old_reason: str | None
    removed_at: int
    new_reason: str


@dataclass
class Arrival:
    """A record now reaching the current stage: its row as it enters the stage."""

    row: dict
    task: int

    @property
    def size(self) -> int:
        return utf8_len(self.row.get(CONTENT) or "")


@dataclass
class StageDelta:
    """What changes in one stage's stats.json entry."""

    counts: Counter = field(default_factory=Counter)
    details: Counter = field(default_factory=Counter)


class Catalog:
    """The small columns of every shard after `opt_out` with `_loc` (stage index; len(stages) for
    data/), `_file`, `_row`, and dict indexes by record key, repo and blob, built once."""

    def __init__(self, table: pa.Table):
        self.table = table.combine_chunks()  # one chunk: many small `take`s stay cheap
        self.keys = join_keys(table).to_pylist()
        self._index: dict[str, dict] = {}

    def rows(self, indices: list[int]) -> list[dict]:
        rows = self.table.take(pa.array(indices, pa.int64())).to_pylist()
        for i, row in zip(indices, rows, strict=True):
            row["_key"] = self.keys[i]
        return rows

    def where(self, column: str, value) -> list[dict]:
        if column not in self._index:
            index: dict = defaultdict(list)
            values = self.keys if column == "_key" else self.table[column].to_pylist()
            for i, v in enumerate(values):
                index[v].append(i)
            self._index[column] = index
        return self.rows(self._index[column].get(value, []))

    def at(self, loc: int) -> list[dict]:
        return self.rows(pc.indices_nonzero(pc.equal(self.table["_loc"], loc)).to_pylist())

    def keep_schema(self) -> pa.Schema:
        """The keep-rule fields the release has (a column absent from every shard is left out)."""
        fields = [self.table.schema.field(f) for f in KEEP_FIELDS if f in self.table.column_names]
        return pa.schema([f for f in fields if f.type != pa.null()])


class Replay:
    """Decides, stage by stage after `opt_out` (stage index `k`), what leaves and arrives where.

    Results: `moves` (rows leaving their shard; None = promoted, its new copy travels as an
    arrival), `updates` (removed/ rows whose kept record changed), `new_rows[(folder, task)]` (rows
    the replay made), `leaving` (accounted for in the stats once sizes are known), `deltas`.
    """

    def __init__(self, stages: list, k: int, catalog: Catalog, fetch: Callable[[list[Ref]], list[dict]],
                 task_of: Callable[[int], int], units_of: Callable[[int], pa.Table | None] = lambda j: None):
        self.stages, self.k, self.n = stages, k, len(stages)
        self.names = [s.name for s in stages]
        self.catalog, self.fetch, self.task_of, self.units_of = catalog, fetch, task_of, units_of
        # stage -> its units after some components were clustered again: the new clusters/<stage>/
        self.clusters: dict[int, pa.Table] = {}
        self.keep_schema = catalog.keep_schema()
        self.moves: dict[Ref, Move | None] = {}
        self.updates: dict[Ref, dict] = {}
        self.new_rows: dict[tuple[str, int], list[dict]] = defaultdict(list)
        self.leaving: dict[Ref, Leaving] = {}  # by row: an identity may occur more than once
        self.deltas = [StageDelta() for _ in stages]
        self.promoted: Counter = Counter()
        self.unchecked: Counter = Counter()
        self.arrivals: list[Arrival] = []
        self.sizes: dict[Ref, int] = {}
        self.next_stage = k + 1

    def opt_out(self, reasons: dict[str, str]) -> None:
        """Records of opted-out repositories (repo_name -> reason) leave every stage after opt_out."""
        for repo, reason in reasons.items():
            for row in self.catalog.where("repo_name", repo):
                self._leave(row, self.k, reason)

    def _leave(self, row: dict, removed_at: int, reason: str, kept: tuple = (None, None)) -> None:
        ref = _ref(row)
        self.leaving[ref] = Leaving(ref, row["_key"], row.get("language"), row["_loc"], row.get("removal_reason"),
                                    removed_at, reason)
        self.moves[ref] = Move(self.names[removed_at], reason, *kept)

    # -- the walk ---------------------------------------------------------------------------------
    def run(self, stop: int | None = None) -> None:
        """Replay the stages after opt_out up to `stop` (default: all); `arrivals` then holds the
        records that reach it."""
        stop = self.n if stop is None else stop
        for j in range(self.next_stage, stop):
            self._stage(j)
        self.next_stage = stop

    def run_tail(self, results: list[list[tuple[dict, str | None]]]) -> None:
        """The remaining (row-level) stages, given what `run_row_stages` made of the arrivals."""
        for j, result in zip(range(self.next_stage, self.n), results, strict=True):
            self._stage(j, result)
        self.next_stage = self.n

    def _stage(self, j: int, result: list[tuple[dict, str | None]] | None = None) -> None:
        arrivals, self.arrivals = self.arrivals, []
        counts = self.deltas[j].counts
        counts["records_in"] += len(arrivals)
        counts["bytes_in"] += sum(a.size for a in arrivals)
        if isinstance(self.stages[j], GlobalStage):
            self._dedup_stage(j, arrivals)
        elif arrivals:
            self._row_stage(j, arrivals, result)

    def account(self, sizes: dict[Ref, int], entering: dict[Ref, dict[int, int]]) -> None:
        """Take the leaving records out of the stats of every stage they used to reach. `sizes`: as
        the old release holds them (entering `old_pos`); `entering[ref][j]`: as they entered stage j,
        where a stage in between rewrote them (see `originals.py`)."""
        self.sizes = sizes
        for lv in self.leaving.values():
            stage_sizes, final = entering.get(lv.ref, {}), sizes[lv.ref]
            at = self.deltas[lv.removed_at]
            at.counts.update(records_out=-1, records_removed=1, bytes_out=-stage_sizes.get(lv.removed_at, final))
            at.details[reason_group(lv.new_reason)] += 1
            for j in range(lv.removed_at + 1, min(lv.old_pos + 1, self.n)):
                counts = self.deltas[j].counts
                counts.update(records_in=-1, bytes_in=-stage_sizes.get(j, final))
                if j < lv.old_pos:
                    counts.update(records_out=-1, bytes_out=-stage_sizes.get(j + 1, final))
                else:
                    counts["records_removed"] -= 1
                    self.deltas[j].details[reason_group(lv.old_reason)] -= 1

    def _pass(self, j: int, arrival: Arrival) -> None:
        self.deltas[j].counts.update(records_out=1, bytes_out=arrival.size)
        self.arrivals.append(arrival)

    def _remove(self, j: int, arrival: Arrival, reason: str, kept: tuple = (None, None)) -> None:
        row = dict(arrival.row, removed_by=self.names[j], removal_reason=reason, kept_repo_name=kept[0],
                   kept_path=kept[1])
        self.new_rows[(self.names[j], arrival.task)].append(row)
        self.deltas[j].counts["records_removed"] += 1
        self.deltas[j].details[reason_group(reason)] += 1

    def _row_stage(self, j: int, arrivals: list[Arrival], result: list[tuple[dict, str | None]] | None) -> None:
        if result is None:
            result = run_row_stage(self.stages[j], [a.row for a in arrivals])
        for arrival, (row, reason) in zip(arrivals, result, strict=True):
            arrival.row = row
            if reason is None:
                self._pass(j, arrival)
            else:
                self._remove(j, arrival, reason)

    # -- dedup stages -----------------------------------------------------------------------------
    def _dedup_stage(self, j: int, arrivals: list[Arrival]) -> None:
        units = self.units_of(j)
        if units is not None:
            self._recluster_stage(j, arrivals, units)
            return
        members = self.catalog.at(j)  # removed/<stage j>/: the duplicates and who they lost to
        repo_level = getattr(self.stages[j].options, "level", "file") == "repo"  # SPEC: near_dedup {level: repo}
        clusters: dict[str, list[dict]] = defaultdict(list)
        for m in members:
            m["_kept"] = m["kept_repo_name"] if repo_level else \
                f"{m['kept_repo_name']}\0{m['kept_path']}\0{m['removal_reason'][len(DUP_PREFIX):]}"
            clusters[m["_kept"]].append(m)
        kept_of = {(m["_file"], m["_row"]): m["_kept"] for m in members}
        touched = set()
        for lv in self.leaving.values():
            if lv.old_pos == j:
                touched.add(kept_of[(lv.ref.file, lv.ref.row)])
            elif lv.removed_at < j < lv.old_pos:  # it passed stage j and no longer reaches it
                touched.add(lv.key.split("\0", 1)[0] if repo_level else lv.key)
        joining: dict[str, list[Arrival]] = defaultdict(list)
        for arrival in arrivals:
            cluster = self._cluster_of(arrival, j, kept_of, repo_level)
            if cluster is None:
                self.unchecked[self.names[j]] += 1
                self._pass(j, arrival)
            else:
                joining[cluster].append(arrival)
        promoted = []
        for cluster in sorted((touched & set(clusters)) | set(joining)):
            promoted += self._rerank(j, cluster, clusters.get(cluster, []), joining.get(cluster, []), repo_level)
        self._promote(j, promoted)

    def _promote(self, j: int, promoted: list[dict]) -> None:
        """Members of removed/<stage j>/ that are kept now: they travel on as arrivals."""
        refs = [_ref(c) for c in promoted]
        for ref, c, row in zip(refs, promoted, self.fetch(refs) if refs else [], strict=True):
            self.moves[ref] = None
            self.promoted[self.names[j]] += 1
            self.deltas[j].details[reason_group(c["removal_reason"])] -= 1
            self.deltas[j].counts["records_removed"] -= 1
            self._pass(j, Arrival({k: v for k, v in row.items() if k not in REMOVAL_KEYS}, self.task_of(ref.file)))

    def _recluster_stage(self, j: int, arrivals: list[Arrival], units: pa.Table) -> None:
        """A near-dedup stage that published its components' units (`clusters/<stage>/`): the
        components that lose units or gain arrivals are clustered again (`recluster`) from the units'
        signatures and shingle sets, as a re-run clusters them.

        File level: an arrival has the content of an old input of the stage (its twin, by blob_id),
        hence the twin's near-duplicates: it joins the twin's component, or pairs with a twin that had
        none. Repository level: an arrival follows its repository's unit (not aggregated again)."""
        from stages.near_dedup import file_units, recluster

        options = self.stages[j].options
        repo_level = options.level == "repo"
        keys = units["repo_name"].to_pylist() if repo_level else join_keys(units).to_pylist()
        component_of = dict(zip(keys, units["component"].to_pylist(), strict=True))
        touched = {component_of[k] for lv in self.leaving.values() if lv.removed_at < j <= lv.old_pos
                   and (k := lv.key.split("\0", 1)[0] if repo_level else lv.key) in component_of}
        joining: dict[str, list[Arrival]] = defaultdict(list)  # repository -> its arriving files
        extra: list[tuple[dict, Arrival | None, list[dict]]] = []  # new units: (unit, arrival, old rows)
        twinned: set[str] = set()
        made = file_units([a.row for a in arrivals], options).to_pylist() if arrivals and not repo_level else []
        for i, arrival in enumerate(arrivals):
            if repo_level:
                key = arrival.row.get("repo_name")
                if key in component_of:
                    touched.add(component_of[key])
                    joining[key].append(arrival)
                    continue
                known = bool(self.catalog.where("repo_name", key))
            else:
                twins = [r for r in self.catalog.where("blob_id", arrival.row.get("blob_id")) if r["_loc"] >= j]
                known = bool(twins)
                if twins and made[i]["tokens"] >= options.ngram_size:
                    extra.append((dict(made[i], uid=-1), arrival, []))
                    in_component = [component_of[r["_key"]] for r in twins if r["_key"] in component_of]
                    touched.update(in_component)
                    if not in_component:  # twins with no near-duplicate: they pair with the arrival
                        for twin in twins:
                            if twin["_key"] not in twinned and _ref(twin) not in self.leaving:
                                twinned.add(twin["_key"])
                                extra.append(({**made[i], **{f: twin.get(f) for f in KEEP_FIELDS}, "uid": -1}, None,
                                              [twin]))
                    continue
            if not known:
                self.unchecked[self.names[j]] += 1
            self._pass(j, arrival)
        if not touched and not extra:
            return
        # the touched components' units still reaching the stage, then the new ones
        in_touched = pc.is_in(units["component"], value_set=pa.array(sorted(touched), pa.int64())).to_pylist()
        old_keys = [k for k, t in zip(keys, in_touched, strict=True) if t]
        old_rows = [self.catalog.where("repo_name" if repo_level else "_key", k) for k in old_keys]
        old_clusters = {(r["kept_repo_name"], r["kept_path"], r["removal_reason"])
                        for rows in old_rows for r in rows if r["_loc"] == j}
        rows_of = [[r for r in rows if r["_loc"] >= j and _ref(r) not in self.leaving] for rows in old_rows]
        stay = [bool(rows) for rows in rows_of]
        for key, rows in zip(old_keys, rows_of, strict=True):
            if not rows:  # a repository none of whose files reach the stage: its arrivals are alone
                for arrival in joining.pop(key, []):
                    self._pass(j, arrival)
        old = units.filter(pa.array(in_touched)).filter(pa.array(stay, pa.bool_())).drop_columns(["component"])
        new = pa.Table.from_pylist([u for u, _, _ in extra], schema=old.schema)
        nodes = pa.concat_tables([old, new])
        component, kept = recluster(nodes, options)
        rows_of = [rows for rows in rows_of if rows] + [rows for _, _, rows in extra]
        arrivals_of = [joining.get(k, []) for k, t in zip(old_keys, stay, strict=True) if t] + \
                      [[a] if a else [] for _, a, _ in extra]
        removed = kept != np.arange(len(kept))
        self.deltas[j].details[CLUSTERS] += len(set(kept[removed].tolist())) - len(old_clusters)
        heads = nodes.select(["repo_name", "path", "blob_id"]).to_pylist()
        promoted = []
        for i, (rows, joined) in enumerate(zip(rows_of, arrivals_of, strict=True)):
            head = heads[kept[i]]
            reason = duplicate_repo_reason(head["repo_name"]) if repo_level else duplicate_reason(head["blob_id"])
            now = (reason, head["repo_name"], None if repo_level else head["path"])
            for row in rows:
                if row["_loc"] == j and not removed[i]:
                    promoted.append(row)
                elif row["_loc"] == j and (row["removal_reason"], row["kept_repo_name"], row["kept_path"]) != now:
                    self.updates[_ref(row)] = dict(zip(("removal_reason", "kept_repo_name", "kept_path"), now,
                                                       strict=True))
                elif row["_loc"] > j and removed[i]:
                    self._leave(row, j, reason, now[1:])
            for arrival in joined:
                (self._remove(j, arrival, reason, now[1:]) if removed[i] else self._pass(j, arrival))
        self._promote(j, promoted)
        first_new = int(pc.max(units["uid"]).as_py() or 0) + 1 if units.num_rows else 0
        others = units.filter(pc.invert(pa.array(in_touched, pa.bool_())))
        self.clusters[j] = pa.concat_tables([others, _component_units(nodes, component, first_new, units.schema)]
                                            ).sort_by("uid")

    def _cluster_of(self, arrival: Arrival, j: int, kept_of: dict, repo_level: bool) -> str | None:
        """The cluster an arrival joins at dedup stage j: that of the old input of the stage with
        its content (or, at repo level, its repository); None when the old input had none."""
        column = "repo_name" if repo_level else "blob_id"
        rows = [r for r in self.catalog.where(column, arrival.row.get(column)) if r["_loc"] >= j]
        if not rows:
            return None
        first = min(rows, key=lambda r: (r["_loc"] != j, r["_file"], r["_row"]))
        if first["_loc"] == j:
            return kept_of[(first["_file"], first["_row"])]
        return first["repo_name"] if repo_level else first["_key"]

    def _kept_rows(self, cluster: str, j: int, repo_level: bool) -> list[dict]:
        """The old kept record (the kept repository's files) of a cluster, if it still reaches stage j."""
        rows = [r for r in self.catalog.where("repo_name" if repo_level else "_key", cluster)
                if r["_loc"] > j and _ref(r) not in self.leaving]
        return rows if repo_level else rows[:1]

    def _rerank(self, j: int, cluster: str, members: list[dict], joining: list[Arrival],
                repo_level: bool) -> list[dict]:
        """Rank a touched cluster again: re-point, demote and remove accordingly; returns the
        members to promote (the caller reads their rows for all clusters at once)."""
        # the old kept record first: between records the keep rule cannot tell apart, it stays kept
        candidates = ([("kept", r) for r in self._kept_rows(cluster, j, repo_level)]
                      + [("member", m) for m in members if _ref(m) not in self.leaving]
                      + [("arrival", dict(a.row, _arrival=a)) for a in joining])
        units = [c["repo_name"] if repo_level else i for i, (_, c) in enumerate(candidates)]
        old_units = (len({m["repo_name"] for m in members}) if repo_level else len(members)) + 1
        self.deltas[j].details[CLUSTERS] += int(len(set(units)) > 1) - int(old_units > 1)
        if not candidates:
            return []
        winner = self._best([c for _, c in candidates], repo_level)
        head = candidates[winner][1]
        reason = duplicate_repo_reason(head["repo_name"]) if repo_level else duplicate_reason(head["blob_id"])
        kept = (head["repo_name"], None if repo_level else head["path"])
        promoted = []
        for (kind, c), unit in zip(candidates, units, strict=True):
            win = unit == units[winner]
            if kind == "member" and win:
                promoted.append(c)
            elif kind == "member" and (c["removal_reason"], c["kept_repo_name"], c["kept_path"]) != (reason, *kept):
                self.updates[_ref(c)] = {"removal_reason": reason, "kept_repo_name": kept[0], "kept_path": kept[1]}
            elif kind == "arrival":
                (self._pass(j, c["_arrival"]) if win else self._remove(j, c["_arrival"], reason, kept))
            elif kind == "kept" and not win:  # the old kept record lost to an arrival
                self._leave(c, j, reason, kept)
        return promoted

    def _best(self, rows: list[dict], repo_level: bool) -> int:
        """Index of the keep rule's best row (stable: the first of equals); at repo level, the first
        row of the best repository by per-repo aggregates (SPEC)."""
        ranked = rows
        if repo_level:
            repos: dict[str, dict] = {}
            for r in rows:
                agg = repos.setdefault(r["repo_name"], {"repo_name": r["repo_name"]})
                if "license_type" not in agg or license_rank(r.get("license_type")) < license_rank(agg["license_type"]):
                    agg["license_type"] = r.get("license_type")
                for f in KEEP_FIELDS[1:4]:
                    if r.get(f) is not None and (agg.get(f) is None or r[f] > agg[f]):
                        agg[f] = r[f]
            ranked = list(repos.values())
        schema = pa.schema([f for f in self.keep_schema if not repo_level or f.name not in ("blob_id", "path")])
        table = pa.Table.from_pylist([{f: r.get(f) for f in schema.names} for r in ranked], schema=schema)
        best = keep_order(table)[0].as_py()
        if not repo_level:
            return best
        return next(i for i, r in enumerate(rows) if r["repo_name"] == ranked[best]["repo_name"])


_set_up: "weakref.WeakSet[CodeStage]" = weakref.WeakSet()


def set_up(stage: CodeStage) -> None:
    """Set a stage up once per apply (the replay and `originals` both run stages: presidio or the
    decontamination index would be built twice)."""
    if stage not in _set_up:
        stage.setup(0, 1)
        _set_up.add(stage)


def run_row_stage(stage: CodeStage, rows: list[dict]) -> list[tuple[dict, str | None]]:
    """Run a row-level stage on rows as the full run would: each row as the stage left it (it may
    rewrite a record or add columns) and its removal reason (None: kept)."""
    set_up(stage)
    results = []
    for start in range(0, len(rows), stage.batch_size):
        batch = rows[start:start + stage.batch_size]
        docs = [Document(text=r.get(CONTENT), id=f"{r.get('repo_name')}/{r.get('path')}",
                         metadata={k: v for k, v in r.items() if k != CONTENT}) for r in batch]
        for doc, result in zip(docs, stage.filter_batch(docs), strict=True):
            keep, reason = get_filter_result(result)
            results.append((doc_to_row(doc), None if keep else reason))
    stage.details.clear()  # a stage's own counts keep the old run's values (see the module doc)
    return results


def tail_start(stages: list, k: int) -> int:
    """The first of the row-level stages after the last dedup stage (after opt_out at `k`): they see
    arrivals only, so `optout apply` runs them apart (`Replay.run_tail`) while it rewrites the shards."""
    return 1 + max((j for j in range(k + 1, len(stages)) if isinstance(stages[j], GlobalStage)), default=k)


def run_row_stages(stages: list[CodeStage], rows: list[dict]) -> list[list[tuple[dict, str | None]]]:
    """`run_row_stage` of each stage in turn, on the rows the stages before it kept."""
    results = []
    for stage in stages:
        results.append(run_row_stage(stage, rows) if rows else [])
        rows = [row for row, reason in results[-1] if reason is None]
    return results


def join_keys(table: pa.Table, columns: tuple[str, ...] = ("repo_name", "path", "blob_id")) -> pa.ChunkedArray:
    """Each row's `columns` joined by NUL (by default the record key)."""
    return pc.binary_join_element_wise(*[pc.cast(table[c], pa.string()) for c in columns], "\0")


def _component_units(nodes: pa.Table, component: np.ndarray, first_new: int, schema: pa.Schema) -> pa.Table:
    """The units that have a near-duplicate, with their component named by its smallest uid (units
    new to the stage, uid -1, get uids from `first_new` on)."""
    uid = nodes["uid"].to_numpy().copy()
    new = uid < 0
    uid[new] = first_new + np.arange(int(new.sum()))
    linked = np.flatnonzero(component >= 0)
    smallest = np.full(len(uid), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(smallest, component[linked], uid[linked])
    table = nodes.set_column(nodes.schema.get_field_index("uid"), "uid", pa.array(uid)).take(pa.array(linked))
    return table.append_column("component", pa.array(smallest[component[linked]])).cast(schema)


def _ref(row: dict) -> Ref:
    return Ref(row["_file"], row["_row"])
