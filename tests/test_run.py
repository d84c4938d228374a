"""End-to-end runs of the foundation through the CLI: outputs, nothing lost, keep rule, inputs."""

import gzip
import hashlib
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import read_dir, run_cli, stdlib_rows, write_config, write_parquet

from pipeline.io.readers import content_digest, value_sha256
from pipeline.records import CodeDocument, doc_bytes, git_blob_sha1, text_sha256


def _run(tmp_path, stages, inputs, *extra):
    cfg = write_config(tmp_path / "c.yaml", stages, inputs)
    result = run_cli("run", str(cfg), "--quiet", *extra)
    assert result.returncode == 0, result.stderr
    return tmp_path / "out"


def test_exact_dedup_run_outputs_follow_the_spec(tmp_path, corpus):
    out = _run(tmp_path, [{"exact_dedup": {}}], [str(corpus)])
    data, removed = read_dir(out / "data"), read_dir(out / "removed" / "exact_dedup")
    # 340 input rows: 40 forks are exact copies of 40 originals with more stars
    assert data.num_rows + removed.num_rows == 340
    assert removed.num_rows >= 40
    forks = [r for r in removed.to_pylist() if r["repo_name"].startswith("fork/")]
    assert len(forks) == 40
    for r in forks:
        assert r["removed_by"] == "exact_dedup"
        assert r["removal_reason"] == f"duplicate_of:{r['blob_id']}"
        assert r["kept_repo_name"] == "cpython/" + r["repo_name"].split("/")[1]
    # input columns keep their types; blob_id (absent in input) is the git blob id
    schema = pq.read_schema(sorted((out / "data").glob("*.parquet"))[0])
    assert schema.field("star_events_count").type == pa.int64()
    row = data.slice(0, 1).to_pylist()[0]
    assert row["blob_id"] == git_blob_sha1(row["content"].encode())
    stats = json.loads((out / "stats.json").read_text())
    assert [s["name"] for s in stats["stages"]] == ["read", "exact_dedup"]
    dedup = stats["stages"][1]
    assert dedup["records_in"] == 340 and dedup["records_removed"] == removed.num_rows
    assert dedup["records_out"] == data.num_rows == stats["totals"]["records_out"]
    assert dedup["details"]["duplicate_of"] == removed.num_rows
    assert 0 < dedup["details"]["clusters"] <= removed.num_rows
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["inputs"] and manifest["packages"]["datatrove"]
    assert (out / "data_card.md").read_text().startswith("---\n")
    assert pq.read_table(out / "input_ids.parquet").num_rows == 340
    # zstd shards readable by DuckDB
    con = duckdb.connect()
    n = con.execute(f"SELECT count(*) FROM read_parquet('{out}/data/*.parquet')").fetchone()[0]
    assert n == data.num_rows
    assert pq.ParquetFile(sorted((out / "data").glob("*.parquet"))[0]).metadata.row_group(0).column(0).compression \
        == "ZSTD"
    verify = run_cli("verify", str(out))
    assert verify.returncode == 0, verify.stdout


def test_keep_rule_prefers_license_then_stars(tmp_path):
    text = "def f(x):\n    return x + 1\n" * 5
    rows = [
        {"repo_name": "a/gpl", "path": "f.py", "content": text, "license_type": "non_permissive",
         "star_events_count": 1000},
        {"repo_name": "b/free", "path": "f.py", "content": text, "license_type": "permissive", "star_events_count": 1},
        {"repo_name": "c/free", "path": "f.py", "content": text, "license_type": "permissive", "star_events_count": 5},
        {"repo_name": "d/none", "path": "f.py", "content": text, "license_type": None, "star_events_count": 9999},
    ]
    write_parquet(tmp_path / "in.parquet", rows)
    out = _run(tmp_path, [{"exact_dedup": {}}], [str(tmp_path / "in.parquet")])
    assert read_dir(out / "data")["repo_name"].to_pylist() == ["c/free"]
    assert set(read_dir(out / "removed" / "exact_dedup")["kept_repo_name"].to_pylist()) == {"c/free"}


def test_whitespace_normalisation_option(tmp_path):
    rows = [{"repo_name": "a/x", "path": "f.py", "content": "x = 1\ny = 2\n"},
            {"repo_name": "b/x", "path": "f.py", "content": "x = 1\n\n   y = 2   \n"}]
    write_parquet(tmp_path / "in.parquet", rows)
    out = _run(tmp_path, [{"exact_dedup": {}}], [str(tmp_path / "in.parquet")])
    assert read_dir(out / "data").num_rows == 2
    out = _run(tmp_path, [{"exact_dedup": {"normalize_whitespace": True}}], [str(tmp_path / "in.parquet")],
               "--overwrite")
    assert read_dir(out / "data").num_rows == 1


def test_exact_dedup_compares_decoded_text(tmp_path):
    """The same text stored as Latin-1 and as UTF-8 bytes is one content: exact_dedup hashes the decoded
    text (the reader's input_ids digest, of the bytes as read, only serves it for UTF-8 input)."""
    text = "café = 'naïve'\n"
    rows = [{"repo_name": "a/x", "path": "f.py", "content": text.encode("latin-1"), "src_encoding": "ISO-8859-1"},
            {"repo_name": "b/x", "path": "f.py", "content": text.encode("utf-8"), "src_encoding": "UTF-8"}]
    write_parquet(tmp_path / "in.parquet", rows)
    out = _run(tmp_path, [{"exact_dedup": {}}], [str(tmp_path / "in.parquet")])
    assert read_dir(out / "data").num_rows == 1
    assert read_dir(out / "removed" / "exact_dedup").num_rows == 1
    ids = pq.read_table(out / "input_ids.parquet").to_pylist()
    assert {r["content_sha256"] for r in ids} == {hashlib.sha256(text.encode(enc)).hexdigest()
                                                  for enc in ("latin-1", "utf-8")}


def test_arrow_value_digests_match_content_digest():
    """The reader hashes table values in their Arrow buffers; input_ids must not depend on that."""
    arrays = [pa.array(["abc", None, "é\n", ""], pa.string()),
              pa.array(["x", "abc", None, "é"], pa.large_string()).slice(1),
              pa.array([b"\xff\xfe", b"x", None], pa.binary()), pa.array([b"a" * 70_000, b""], pa.large_binary())]
    for values in arrays:
        digests = [d and d.hex() for d in value_sha256(values)]
        assert digests == [content_digest(v) for v in values.to_pylist()]


def test_text_digest_follows_rewrites():
    text = "password = 'hunter2'\n" * 3
    doc = CodeDocument(text=text, id="o/r/f.py")
    doc.measure(len(text), hashlib.sha256(text.encode()).digest())
    assert text_sha256(doc) == hashlib.sha256(text.encode()).digest() and doc_bytes(doc) == len(text)
    doc.text = text.replace("hunter2", "<PASSWORD>é")  # what pii does
    assert text_sha256(doc) == hashlib.sha256(doc.text.encode()).digest()
    assert doc_bytes(doc) == len(doc.text.encode())


def test_row_level_faults_go_to_removed_read(tmp_path):
    rows = [
        {"repo_name": "o/r", "path": "ok.py", "content": b"print('ok')\n", "src_encoding": "UTF-8"},
        {"repo_name": "o/r", "path": "latin.py", "content": "café = 1\n".encode("latin-1"),
         "src_encoding": "ISO-8859-1"},
        {"repo_name": "o/r", "path": "bad.py", "content": b"\xff\xfe\xfa broken", "src_encoding": "UTF-8"},
        {"repo_name": "o/r", "path": "null.py", "content": None, "src_encoding": "UTF-8"},
        {"repo_name": "o/r", "path": "big.py", "content": b"x" * 5000, "src_encoding": "UTF-8"},
    ]
    write_parquet(tmp_path / "in" / "a.parquet", rows)
    write_parquet(tmp_path / "in" / "empty.parquet", [], schema=pa.table({"repo_name": pa.array([], pa.string()),
                  "path": pa.array([], pa.string()), "content": pa.array([], pa.binary()),
                  "src_encoding": pa.array([], pa.string())}).schema)
    cfg = write_config(tmp_path / "c.yaml", [], [str(tmp_path / "in")])
    cfg.write_text(cfg.read_text().replace("paths:", "max_file_bytes: 1000\n  paths:"))
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    data = read_dir(out / "data")
    assert sorted(data["path"].to_pylist()) == ["latin.py", "ok.py"]
    assert "café = 1\n" in data["content"].to_pylist()
    removed = {r["path"]: r["removal_reason"] for r in read_dir(out / "removed" / "read").to_pylist()}
    assert removed == {"bad.py": "input:undecodable", "null.py": "input:null_content", "big.py": "input:too_large"}
    assert run_cli("verify", str(out)).returncode == 0


def test_jsonl_gz_and_content_from(tmp_path):
    rows = stdlib_rows(20)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        for r in rows[:10]:
            f.write(json.dumps(r) + "\n")
    # a Stack v2 shard without content: blobs are fetched from a directory of gzip files by blob_id
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    meta = []
    for r in rows[10:]:
        raw = r["content"].encode()
        blob = git_blob_sha1(raw)
        (blobs / blob).write_bytes(gzip.compress(raw))
        meta.append({"repo_name": r["repo_name"], "path": r["path"], "blob_id": blob, "src_encoding": "UTF-8"})
    meta.append({"repo_name": "o/missing", "path": "gone.py", "blob_id": "0" * 40, "src_encoding": "UTF-8"})
    write_parquet(tmp_path / "stack" / "s.parquet", meta)
    cfg = write_config(tmp_path / "c.yaml", [], [str(tmp_path / "a.jsonl.gz"), str(tmp_path / "stack")])
    cfg.write_text(cfg.read_text().replace("paths:", f"content_from: '{blobs}/{{blob_id}}'\n  paths:"))
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    data = read_dir(tmp_path / "out" / "data")
    assert sorted(data["content"].to_pylist()) == sorted(r["content"] for r in rows)
    assert read_dir(tmp_path / "out" / "removed" / "read")["removal_reason"].to_pylist() == ["input:null_content"]


def test_source_tree_ingest_repo_rules(tmp_path):
    root = tmp_path / "src"
    (root / "proj" / "pkg").mkdir(parents=True)
    (root / "proj" / "pkg" / "m.py").write_text("import os\n")
    (root / "lone.py").write_text("print(1)\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0binary")
    (root / "gitrepo" / ".git").mkdir(parents=True)
    (root / "gitrepo" / "a.c").write_text("int main(void) { return 0; }\n")
    (root / "escape.py").symlink_to("/etc/hostname")
    result = run_cli("ingest", str(root), "--output", str(tmp_path / "out"), "--owner", "me")
    assert result.returncode == 0, result.stderr
    data = read_dir(tmp_path / "out" / "data")
    got = sorted(zip(data["repo_name"].to_pylist(), data["path"].to_pylist(), strict=True))
    assert got == [("me/_root", "lone.py"), ("me/gitrepo", "a.c"), ("me/proj", "pkg/m.py")]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["stages"][0]["details"]["skipped_binary"] == 1
    # a directory holding a .git is one repo on its own
    result = run_cli("ingest", str(root / "gitrepo"), "--output", str(tmp_path / "out2"))
    assert result.returncode == 0, result.stderr
    assert read_dir(tmp_path / "out2" / "data")["repo_name"].to_pylist() == ["src/gitrepo"]


def test_python_installation_input_with_limit(tmp_path):
    out = _run(tmp_path, [{"exact_dedup": {}}], ["source:@python"], "--limit", "300")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"][0]["records_in"] == 300
    repos = set(read_dir(out / "data")["repo_name"].to_pylist())
    assert all("/" in r for r in repos) and len(repos) > 3
    assert run_cli("verify", str(out)).returncode == 0


def test_results_do_not_depend_on_worker_count(tmp_path, corpus):
    def snapshot(out: Path):
        data = read_dir(out / "data")
        removed = read_dir(out / "removed" / "exact_dedup")
        key = lambda t: sorted(zip(t["repo_name"].to_pylist(), t["path"].to_pylist(),  # noqa: E731
                                   t["content"].to_pylist(), strict=True))
        return key(data), key(removed), sorted(removed["removal_reason"].to_pylist())

    cfg = write_config(tmp_path / "c.yaml", [{"exact_dedup": {}}], [str(corpus)],
                       executor={"workers": 1, "task_bytes": 100_000})
    assert run_cli("run", str(cfg), "--quiet", "--output", str(tmp_path / "w1")).returncode == 0
    assert run_cli("run", str(cfg), "--quiet", "--output", str(tmp_path / "w2"), "--workers", "2").returncode == 0
    assert len(list((tmp_path / "w1" / "data").glob("*.parquet"))) > 2
    assert snapshot(tmp_path / "w1") == snapshot(tmp_path / "w2")


def test_the_command_allocates_arrow_memory_with_jemalloc_unless_told_otherwise():
    """`entry` (the console command) picks the allocator before anything imports pyarrow; a user's
    ARROW_DEFAULT_MEMORY_POOL wins."""
    import os
    import subprocess
    import sys

    probe = ("import pipeline.cli as cli\n"
             "cli.main = lambda: print(__import__('pyarrow').default_memory_pool().backend_name) or 0\n"
             "cli.entry()\n")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    chosen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == ("jemalloc" if sys.platform == "linux" else pa.default_memory_pool().backend_name)
    told = subprocess.run([sys.executable, "-c", probe], env={**env, "ARROW_DEFAULT_MEMORY_POOL": "system"},
                          capture_output=True, text=True, check=True)
    assert told.stdout.strip() == "system"
