"""The opt-out registry: an append-only DuckDB file of requests, decisions, entries, versions and
organisation memberships.

Every accepted request creates a new version; nothing is ever updated or deleted. DuckDB allows
one writing process at a time, so writers take an exclusive `flock` on `<registry>.lock` (readers a
shared one) and concurrent `optout add` processes queue instead of failing. All SQL is
parameterised; request text only ever travels as a parameter or inside an Arrow table.
A registry file that does not exist is the empty registry, version 0.
"""

import csv
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UserError
from pipeline.optout.ownership import ACCEPTED, Decision, decide
from pipeline.optout.parser import ParseError, ascii_lower, check_owner, parse_request

LOCK_TIMEOUT_S = 60.0
TABLES = (
    "CREATE TABLE IF NOT EXISTS requests (request_id BIGINT PRIMARY KEY, requester VARCHAR NOT NULL, "
    "source VARCHAR, received_at TIMESTAMP NOT NULL, text VARCHAR NOT NULL, version BIGINT)",
    "CREATE TABLE IF NOT EXISTS decisions (request_id BIGINT NOT NULL, line INTEGER, line_text VARCHAR, "
    "target VARCHAR, outcome VARCHAR NOT NULL, reason VARCHAR)",
    "CREATE TABLE IF NOT EXISTS versions (version BIGINT PRIMARY KEY, request_id BIGINT NOT NULL, "
    "created_at TIMESTAMP NOT NULL, entries INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS entries (version BIGINT NOT NULL, request_id BIGINT NOT NULL, owner VARCHAR NOT NULL, "
    "repo VARCHAR, requester VARCHAR NOT NULL, added_at TIMESTAMP NOT NULL)",
    "CREATE TABLE IF NOT EXISTS members (user_name VARCHAR NOT NULL, org VARCHAR NOT NULL, source VARCHAR, "
    "imported_at TIMESTAMP NOT NULL)",
)
DECISIONS_SCHEMA = pa.schema([("request_id", pa.int64()), ("line", pa.int32()), ("line_text", pa.string()),
                              ("target", pa.string()), ("outcome", pa.string()), ("reason", pa.string())])
ENTRIES_SCHEMA = pa.schema([("version", pa.int64()), ("request_id", pa.int64()), ("owner", pa.string()),
                            ("repo", pa.string()), ("requester", pa.string()), ("added_at", pa.timestamp("us"))])


@dataclass(frozen=True)
class OptOutSet:
    """The opt-outs of one registry version: whole accounts and single repositories, lowercase."""

    version: int
    owners: frozenset[str]
    repos: frozenset[str]  # "owner/repo"

    def reason(self, repo_name: str | None) -> str | None:
        """The SPEC removal reason for a record of `repo_name`, or None when it is not opted out.
        A whole account wins over one of its repositories."""
        if not repo_name:
            return None
        name = ascii_lower(repo_name)
        owner = name.split("/", 1)[0]
        if owner in self.owners:
            return f"opt_out:{owner}"
        if name in self.repos:
            return f"opt_out:{name}"
        return None

    def mask(self, repo_names: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Vectorised: True where the repo is opted out (null names never are)."""
        names = pc.ascii_lower(repo_names)
        owners = pc.list_element(pc.split_pattern(names, "/", max_splits=1), 0)
        hit = pc.or_(pc.is_in(owners, value_set=pa.array(sorted(self.owners), pa.string())),
                     pc.is_in(names, value_set=pa.array(sorted(self.repos), pa.string())))
        return pc.fill_null(hit, False)

    def __len__(self) -> int:
        return len(self.owners) + len(self.repos)


EMPTY = OptOutSet(0, frozenset(), frozenset())


@dataclass
class AddResult:
    request_id: int
    version: int | None  # the new registry version, None when nothing new was accepted
    decisions: list[Decision]


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@contextmanager
def _file_lock(path: Path, exclusive: bool) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise UserError(f"{path}: cannot create the lock file {lock}") from None
        yield  # a read-only directory: nobody can be writing the registry there through us
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, waiting while a process that does not use our lock file holds it."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or time.monotonic() > deadline:
                raise UserError(f"{path}: cannot open the opt-out registry ({str(e).splitlines()[0]})") from None
            time.sleep(0.05)
        except duckdb.Error as e:
            raise UserError(f"{path}: not an opt-out registry ({str(e).splitlines()[0]})") from None


class Registry:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def _connect(self, write: bool) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A connection under the file lock; None for reading a registry that does not exist yet."""
        if not write and not self.path.exists():
            yield None
            return
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.path, exclusive=write):
            con = _open(self.path, read_only=not write)
            try:
                if write:
                    for ddl in TABLES:
                        con.execute(ddl)
                yield con
            except duckdb.CatalogException as e:
                raise UserError(f"{self.path}: not an opt-out registry ({str(e).splitlines()[0]})") from None
            finally:
                con.close()

    # -- reading ----------------------------------------------------------------------------------
    def snapshot(self) -> OptOutSet:
        """The opt-outs of the current version (all accepted entries so far)."""
        with self._connect(write=False) as con:
            if con is None:
                return EMPTY
            return self._snapshot(con)

    @staticmethod
    def _snapshot(con: duckdb.DuckDBPyConnection) -> OptOutSet:
        version = con.execute("SELECT coalesce(max(version), 0) FROM versions").fetchone()[0]
        rows = con.execute("SELECT owner, repo FROM entries WHERE version <= ?", [version]).fetchall()
        return OptOutSet(int(version), frozenset(o for o, r in rows if r is None),
                         frozenset(f"{o}/{r}" for o, r in rows if r is not None))

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        """Read-only query for listings (`sql` is ours, never built from user text)."""
        with self._connect(write=False) as con:
            return [] if con is None else con.execute(sql, params or []).fetchall()

    # -- writing ----------------------------------------------------------------------------------
    def add(self, text: str, requester: str, source: str | None = None) -> AddResult:
        """Record a request and its decisions; accepted targets become entries of a new version."""
        try:
            requester = check_owner(requester)
            parsed = parse_request(text)
        except ParseError as e:
            raise UserError(str(e)) from None
        with self._connect(write=True) as con:
            orgs = {r[0] for r in con.execute("SELECT org FROM members WHERE user_name = ?", [requester]).fetchall()}
            current = self._snapshot(con)
            decisions = decide(parsed, requester, orgs, set(current.owners), set(current.repos))
            accepted = [d for d in decisions if d.outcome == ACCEPTED]
            now = _now()
            con.execute("BEGIN TRANSACTION")
            try:
                request_id = con.execute("SELECT coalesce(max(request_id), 0) + 1 FROM requests").fetchone()[0]
                version = current.version + 1 if accepted else None
                con.execute("INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?)",
                            [request_id, requester, source, now, text, version])
                self._insert(con, "decisions", pa.table({
                    "request_id": [request_id] * len(decisions), "line": [d.line for d in decisions],
                    "line_text": [d.text for d in decisions],
                    "target": [str(d.target) if d.target else None for d in decisions],
                    "outcome": [d.outcome for d in decisions], "reason": [d.reason for d in decisions],
                }, schema=DECISIONS_SCHEMA))
                if accepted:
                    con.execute("INSERT INTO versions VALUES (?, ?, ?, ?)", [version, request_id, now, len(accepted)])
                    self._insert(con, "entries", pa.table({
                        "version": [version] * len(accepted), "request_id": [request_id] * len(accepted),
                        "owner": [d.target.owner for d in accepted], "repo": [d.target.repo for d in accepted],
                        "requester": [requester] * len(accepted), "added_at": [now] * len(accepted),
                    }, schema=ENTRIES_SCHEMA))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return AddResult(int(request_id), version, decisions)

    @staticmethod
    def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
        con.register("_new_rows", rows)
        try:
            con.execute(f"INSERT INTO {table} SELECT * FROM _new_rows")  # table: one of our names
        finally:
            con.unregister("_new_rows")

    def import_members(self, csv_path: str | Path) -> tuple[int, int]:
        """Add the (user, org) pairs of a CSV with header `user,org`; returns (new pairs, pairs read)."""
        pairs = read_members_csv(csv_path)
        with self._connect(write=True) as con:
            known = set(con.execute("SELECT user_name, org FROM members").fetchall())
            new = sorted(set(pairs) - known)
            if new:
                now = _now()
                self._insert(con, "members", pa.table({
                    "user_name": [u for u, _ in new], "org": [o for _, o in new],
                    "source": [str(csv_path)] * len(new), "imported_at": [now] * len(new),
                }, schema=pa.schema([("user_name", pa.string()), ("org", pa.string()), ("source", pa.string()),
                                     ("imported_at", pa.timestamp("us"))])))
        return len(new), len(pairs)


def read_members_csv(path: str | Path) -> list[tuple[str, str]]:
    """`user,org` rows, validated as GitHub names; any bad row is a user error naming its line."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            if header[:2] != ["user", "org"]:
                raise UserError(f"{path}: the first line must be the header user,org (found {','.join(header)!r})")
            pairs = []
            for number, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 2:
                    raise UserError(f"{path}:{number}: expected 2 columns user,org, found {len(row)}")
                try:
                    pairs.append((check_owner(row[0].strip()), check_owner(row[1].strip())))
                except ParseError as e:
                    raise UserError(f"{path}:{number}: {e}") from None
            return pairs
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
