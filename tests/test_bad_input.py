"""File-level faults: exit 2, one clear line naming the file/field, never a traceback or a complete run."""

import json

import pyarrow as pa
from conftest import read_dir, run_cli, stdlib_rows, write_config, write_parquet


def _fails_cleanly(tmp_path, inputs, *extra, must_name: str) -> str:
    cfg = write_config(tmp_path / "c.yaml", [{"exact_dedup": {}}], inputs)
    result = run_cli("run", str(cfg), "--quiet", *extra)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert must_name in lines[0], lines[0]
    manifest = tmp_path / "out" / "manifest.json"
    assert not manifest.exists() or not json.loads(manifest.read_text())["complete"]
    return lines[0]


def test_truncated_parquet(tmp_path):
    good = write_parquet(tmp_path / "in" / "good.parquet", stdlib_rows(20))
    bad = tmp_path / "in" / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    line = _fails_cleanly(tmp_path, [str(tmp_path / "in")], must_name="bad.parquet")
    assert "not a readable Parquet file" in line


def test_garbage_parquet(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1 this is not parquet at all")
    _fails_cleanly(tmp_path, [str(tmp_path / "x.parquet")], must_name="x.parquet")


def test_missing_required_column(tmp_path):
    rows = [{"repo_name": "a/b", "content": "x = 1\n"}]
    write_parquet(tmp_path / "nopath.parquet", rows)
    line = _fails_cleanly(tmp_path, [str(tmp_path / "nopath.parquet")], must_name="nopath.parquet")
    assert "'path'" in line


def test_required_column_of_wrong_type(tmp_path):
    rows = [{"repo_name": "a/b", "path": 17, "content": "x = 1\n"}]
    write_parquet(tmp_path / "t.parquet", rows)
    line = _fails_cleanly(tmp_path, [str(tmp_path / "t.parquet")], must_name="t.parquet")
    assert "'path'" in line and "int64" in line


def test_content_of_wrong_type(tmp_path):
    write_parquet(tmp_path / "c.parquet", [{"repo_name": "a/b", "path": "p", "content": 3.5}])
    assert "'content'" in _fails_cleanly(tmp_path, [str(tmp_path / "c.parquet")], must_name="c.parquet")


def test_malformed_jsonl(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"repo_name": "a/b", "path": "p", "content": "x"}\n{not json\n')
    line = _fails_cleanly(tmp_path, [str(tmp_path / "a.jsonl")], must_name="a.jsonl")
    assert "line 2" in line, line


def test_nonexistent_input(tmp_path):
    line = _fails_cleanly(tmp_path, [str(tmp_path / "nowhere")], must_name="nowhere")
    assert "not found" in line


def test_incompatible_schemas(tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", [{"repo_name": "a/b", "path": "p", "content": "x", "stars": 1}])
    write_parquet(tmp_path / "in" / "b.parquet", [{"repo_name": "a/c", "path": "p", "content": "y",
                                                   "stars": [1, 2]}])
    _fails_cleanly(tmp_path, [str(tmp_path / "in")], must_name="a.parquet")


def test_output_of_another_run_is_refused(tmp_path):
    write_parquet(tmp_path / "in.parquet", stdlib_rows(5))
    cfg = write_config(tmp_path / "c.yaml", [], [str(tmp_path / "in.parquet")])
    assert run_cli("run", str(cfg), "--quiet").returncode == 0
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "out") in result.stderr and "--resume or --overwrite" in result.stderr
    # --resume with another config is refused too; --overwrite replaces the run
    cfg2 = write_config(tmp_path / "c2.yaml", [{"exact_dedup": {}}], [str(tmp_path / "in.parquet")])
    result = run_cli("run", str(cfg2), "--quiet", "--resume")
    assert result.returncode == 2 and "another config" in result.stderr
    assert run_cli("run", str(cfg2), "--quiet", "--overwrite").returncode == 0
    # a directory that is not ours is never deleted
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    result = run_cli("run", str(cfg2), "--quiet", "--overwrite", "--output", str(tmp_path / "mine"))
    assert result.returncode == 2 and (tmp_path / "mine" / "precious.txt").exists()


def test_empty_input_shard_is_fine(tmp_path):
    schema = pa.schema([("repo_name", pa.string()), ("path", pa.string()), ("content", pa.string())])
    write_parquet(tmp_path / "empty.parquet", [], schema=schema)
    cfg = write_config(tmp_path / "c.yaml", [{"exact_dedup": {}}], [str(tmp_path / "empty.parquet")])
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["totals"]["records_in"] == 0
    assert run_cli("verify", str(tmp_path / "out")).returncode == 0


def test_all_null_columns_take_their_types(tmp_path):
    """A shard whose `language`/`license_type` and a stage's own column are all null (pandas writes
    such columns with Arrow's null type) runs through the stages that fill them, and the output
    carries their real types."""
    rows = stdlib_rows(12)
    for row in rows:
        row.update(language=None, license_type=None, natural_language=None)
    table = pa.Table.from_pylist(rows)
    assert table.schema.field("language").type == pa.null()
    write_parquet(tmp_path / "in" / "nulls.parquet", table.to_pylist(), schema=table.schema)
    cfg = write_config(tmp_path / "c.yaml", [{"language_selection": {}}, {"license_filter": {}},
                                             {"near_dedup": {"level": "file"}}, {"exact_dedup": {}}],
                       [str(tmp_path / "in")])
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    data = read_dir(tmp_path / "out" / "data")
    assert data.schema.field("language").type == pa.string()
    assert data.schema.field("natural_language").type == pa.string()
    assert set(data["language"].to_pylist()) == {"Python"}
    assert run_cli("verify", str(tmp_path / "out")).returncode == 0
