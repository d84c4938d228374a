"""`optout check`: is an account or repository in a released dataset? DuckDB over `data/` only
reads the `repo_name` column, so the answer takes well under a second even on large outputs."""

from pathlib import Path

import duckdb

from pipeline.errors import UserError
from pipeline.optout.parser import Target

UPPER, LOWER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"


def files_per_repo(target: Target, dataset: str | Path) -> list[tuple[str, int]]:
    """(repo_name, files) of the dataset's kept records matching `target`, case-insensitively."""
    data = Path(dataset) / "data"
    if not data.is_dir():
        raise UserError(f"{dataset}: not a codecurate output (no data/ directory)")
    files = sorted(str(p) for p in data.glob("*.parquet"))
    if not files:
        return []
    lowered = "translate(repo_name, ?, ?)"  # ASCII-only lowering, as the opt_out stage does
    if target.repo is None:
        where, value = f"starts_with({lowered}, ?)", f"{target.owner}/"
    else:
        where, value = f"{lowered} = ?", str(target)
    con = duckdb.connect()
    try:
        return con.execute(f"SELECT repo_name, count(*) FROM read_parquet(?) WHERE {where} "
                           "GROUP BY 1 ORDER BY 2 DESC, 1", [files, UPPER, LOWER, value]).fetchall()
    except duckdb.Error as e:
        raise UserError(f"{data}: cannot read the shards ({str(e).splitlines()[0]})") from None
    finally:
        con.close()
