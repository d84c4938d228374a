"""`pipeline verify OUTPUT`: the nothing-lost invariant, checked against input_ids.parquet and stats.json."""

import json
from pathlib import Path

import duckdb
from rich.table import Table

from pipeline.errors import UserError

IDENT = "repo_name, path, blob_id"


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.parquet"))


def sql_paths(paths: list[str] | str) -> str:
    """A DuckDB list literal of file paths (views cannot take prepared parameters)."""
    paths = [paths] if isinstance(paths, str) else paths
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def verify(out: str | Path) -> tuple[list[str], Table]:
    """Returns the list of violations (empty when the output is sound) and a per-stage table."""
    out = Path(out)
    for name in ("input_ids.parquet", "stats.json", "manifest.json"):
        if not (out / name).is_file():
            raise UserError(f"{out}: not a complete codecurate output (missing {name})")
    stats = json.loads((out / "stats.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    problems = [] if manifest.get("complete") else ["manifest.json: complete is not true"]
    con = duckdb.connect()
    con.execute(f"CREATE VIEW inputs AS SELECT {IDENT} FROM read_parquet({sql_paths(str(out / 'input_ids.parquet'))})")
    con.execute("CREATE TABLE placed (repo_name VARCHAR, path VARCHAR, blob_id VARCHAR, place VARCHAR, "
                "folder VARCHAR)")
    sources = [("'data'", "data", _files(out / "data"))]
    sources += [("removed_by", p.name, _files(p)) for p in sorted((out / "removed").glob("*")) if p.is_dir()]
    for place, folder, files in sources:
        if files:
            con.execute(f"INSERT INTO placed SELECT {IDENT}, {place}, '{folder}' "
                        f"FROM read_parquet({sql_paths(files)}, union_by_name=true)")
    removed_counts = dict(con.execute("SELECT folder, count(*) FROM placed WHERE folder != 'data' "
                                      "GROUP BY 1").fetchall())
    for folder, wrong in con.execute("SELECT folder, count(*) FROM placed WHERE place IS DISTINCT FROM folder "
                                 "GROUP BY 1").fetchall():
        problems.append(f"removed/{folder}: {wrong} records say removed_by is another stage")
    lost = con.execute(f"SELECT count(*) FROM (SELECT {IDENT} FROM inputs EXCEPT ALL SELECT {IDENT} FROM placed)"
                   ).fetchone()[0]
    extra = con.execute(f"SELECT count(*) FROM (SELECT {IDENT} FROM placed EXCEPT ALL SELECT {IDENT} FROM inputs)"
                    ).fetchone()[0]
    n_inputs = con.execute("SELECT count(*) FROM inputs").fetchone()[0]
    if lost:
        problems.append(f"{lost} input records are neither in data/ nor in removed/")
    if extra:
        problems.append(f"{extra} output records are not input records (or appear twice)")
    n_data = con.execute("SELECT count(*) FROM placed WHERE folder = 'data'").fetchone()[0]
    table = Table(title=f"verify {out}")
    for col in ("stage", "removed (stats)", "removed (files)", "ok"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in stats["stages"]:
        on_disk = removed_counts.get(s["name"], 0)
        ok = on_disk == s["records_removed"]
        if not ok:
            problems.append(f"stage {s['name']}: stats say {s['records_removed']} removed, removed/ holds {on_disk}")
        table.add_row(s["name"], f"{s['records_removed']:,}", f"{on_disk:,}", "yes" if ok else "[red]NO")
    unknown = set(removed_counts) - {s["name"] for s in stats["stages"]}
    problems += [f"removed/{u}: not a stage of this run" for u in sorted(unknown)]
    totals = stats["totals"]
    if totals["records_in"] != n_inputs:
        problems.append(f"stats totals.records_in={totals['records_in']} but input_ids holds {n_inputs}")
    if totals["records_out"] != n_data:
        problems.append(f"stats totals.records_out={totals['records_out']} but data/ holds {n_data}")
    table.add_row("[bold]data/", "", f"{n_data:,}", "yes" if totals["records_out"] == n_data else "[red]NO")
    table.add_row("[bold]inputs", "", f"{n_inputs:,}", "yes" if not (lost or extra) else "[red]NO")
    return problems, table
