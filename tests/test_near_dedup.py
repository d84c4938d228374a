"""near_dedup: code shingles, MinHash, LSH pairs, and real `pipeline run`s on stdlib code with planted
near-duplicate files and forked repositories (file and repo level, determinism, a corrupted resume)."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import read_dir, run_cli, stdlib_rows, write_config, write_parquet

from pipeline.config import load_config
from pipeline.errors import UserError
from stages.lsh import bucket_pairs, candidate_probability, choose_bands, connected_components, star_clusters
from stages.minhash import pair_jaccard
from stages.near_dedup import MinHasher, estimate_jaccard, shingle_hashes
from stages.shingles import batch_shingles


def jaccard(x: str, y: str) -> float:
    a, b = shingle_hashes(x), shingle_hashes(y)
    return len(np.intersect1d(a, b)) / len(np.union1d(a, b))


# -- shingles and signatures -------------------------------------------------------------------------
def test_shingles_are_the_token_ngrams_python_re_sees():
    texts = [r["content"] for r in stdlib_rows(60)]
    texts += ["größe = straße_länge + 变量 * 2  # ünïcode idents", "a b c d", "x1 = y2(z3, w4) + v5[u6]", ""]
    values, offsets, tokens = batch_shingles(pa.array(texts, pa.large_string()))
    for i, text in enumerate(texts):
        words = re.findall(r"\w+", text)
        grams = {tuple(words[j:j + 5]) for j in range(len(words) - 4)}
        assert tokens[i] == len(words)
        assert offsets[i + 1] - offsets[i] == len(grams)  # one hash per distinct 5-gram: no collision
        assert np.array_equal(np.sort(values[offsets[i]:offsets[i + 1]]), shingle_hashes(text))
    assert len(shingle_hashes("a b c d")) == 0  # fewer tokens than ngram_size: never a near-duplicate
    # case and numbers are kept; whitespace and punctuation between tokens are not
    assert jaccard("def f(x): return x + 1", "def f(x):\n    return x+1") == 1.0
    assert jaccard("def f(x): return x + 1", "def F(x): return x + 1") == 0.0
    assert jaccard("a b c d e 1", "a b c d e 2") == pytest.approx(1 / 3)
    ops = batch_shingles(pa.array(["a+b-c*d"], pa.large_string()), ngram_size=2, operators=True)
    assert ops[2][0] == 7 and len(shingle_hashes("a+b-c*d", 2)) == 3


def test_minhash_estimates_jaccard_without_bias():
    rng = np.random.default_rng(7)
    hasher = MinHasher(256, seed=1)
    errors = []
    for target in np.linspace(0.2, 1.0, 41):
        for _ in range(10):
            size = int(rng.integers(50, 2000))
            common = rng.integers(0, 2**63, int(size * target), dtype=np.uint64)
            a = np.concatenate([common, rng.integers(0, 2**63, size - len(common), dtype=np.uint64)])
            b = np.concatenate([common, rng.integers(0, 2**63, size - len(common), dtype=np.uint64)])
            j = len(common) / (2 * size - len(common))
            errors.append((estimate_jaccard(hasher.signature(a), hasher.signature(b)) - j,
                           np.sqrt(j * (1 - j) / 256)))
    err, sd = np.array(errors).T
    assert abs(err.mean()) < 0.005
    z = err[sd > 0] / sd[sd > 0]
    assert 0.85 < z.std() < 1.15  # the binomial variance of independent permutations
    # batch == one at a time; the seed changes the permutations, not the estimate's meaning
    values, offsets, _ = batch_shingles(pa.array([r["content"] for r in stdlib_rows(20)], pa.large_string()))
    batch = hasher.signatures(values, offsets)
    assert np.array_equal(batch[3], hasher.signature(values[offsets[3]:offsets[4]]))
    assert batch.dtype == np.uint64 and batch.shape == (20, 256)
    other = MinHasher(256, seed=2).signatures(values, offsets)
    assert not np.array_equal(batch, other)
    assert np.array_equal(batch, MinHasher(256, seed=1).signatures(values, offsets))


def test_banding_s_curve_and_exact_jaccard():
    bands, rows = choose_bands(0.7, 256)
    assert (bands, rows) == (42, 6) and bands * rows <= 256
    assert candidate_probability(0.7, bands, rows) >= 0.99
    assert candidate_probability(0.4, bands, rows) < 0.2
    assert choose_bands(0.85, 256) == (25, 10)
    sets = [np.array([1, 2, 3, 4], np.uint32), np.array([3, 4, 5], np.uint32), np.zeros(0, np.uint32)]
    flat, offsets = np.concatenate(sets), np.r_[0, np.cumsum([len(s) for s in sets])]
    j = pair_jaccard(flat, offsets, np.array([0, 0, 1]), np.array([1, 0, 2]))
    assert j[0] == pytest.approx(2 / 5) and j[1] == 1.0 and np.isnan(j[2])


def test_bucket_pairs_do_not_depend_on_row_order_or_ids():
    rng = np.random.default_rng(3)
    n = 3000
    keys = rng.integers(0, 40, n).astype(np.uint64)  # few buckets, some larger than the window
    sigs = rng.integers(0, 600, n).astype(np.uint64)  # identical signatures inside buckets
    order = rng.permutation(n).astype(np.uint64)
    ids = np.arange(n, dtype=np.int64)
    a, b, same = bucket_pairs(keys, sigs, order, ids, window=8)
    assert np.all(a < b) and len(set(zip(a, b, strict=True))) == len(a)
    relabel = rng.permutation(n) * 7 + 1000  # another task layout: other ids, other row order
    shuffle = rng.permutation(n)
    a2, b2, same2 = bucket_pairs(keys[shuffle], sigs[shuffle], order[shuffle], relabel[shuffle], window=8)
    back = {v: k for k, v in enumerate(relabel)}
    mapped = {(min(back[x], back[y]), max(back[x], back[y])): s for x, y, s in zip(a2, b2, same2, strict=True)}
    assert mapped == {(x, y): s for x, y, s in zip(a, b, same, strict=True)}
    # identical signatures are paired without checks; distinct ones with at most `window` followers
    assert all(sigs[x] == sigs[y] for x, y in zip(a[same], b[same], strict=True))
    assert len(a) < n * 9


def test_connected_components_match_union_find():
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 500, 300), rng.integers(0, 500, 300)
    nodes, comp = connected_components(a * 10, b * 10)
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for x, y in zip(a * 10, b * 10, strict=True):
        parent[find(x)] = find(y)
    groups = {}
    for x in nodes:
        groups.setdefault(find(x), []).append(x)
    assert {x: c for x, c in zip(nodes, comp, strict=True)} == {x: min(g) for g in groups.values() for x in g}


def test_star_clusters_split_chains_and_reach_identical_copies():
    def similar_to(pairs):
        pairs = {frozenset(p) for p in pairs}
        return lambda c, others: np.array([frozenset((c, int(x))) in pairs for x in others], bool)

    no = np.zeros(2, bool)
    chain = similar_to([(0, 1), (1, 2)])  # 0 ~ 1 ~ 2, 0 !~ 2: never one cluster, whatever the keep rank
    for rank in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        seed = star_clusters(np.array(rank), np.array([0, 1]), np.array([1, 2]), no, chain)
        assert len(set(seed.tolist())) == 2 and seed[1] in (seed[0], seed[2])
    # 1..3 have identical signatures: a bucket pairs them with 1 only (`same`); 0 and 4 are similar to
    # all four but have an edge to 1 only. One cluster, its seed one of the most connected.
    copies = similar_to([(x, y) for x in range(5) for y in range(x + 1, 5)])
    seed = star_clusters(np.arange(5), np.array([1, 1, 0, 1]), np.array([2, 3, 1, 4]),
                         np.array([True, True, False, False]), copies)
    assert len(set(seed.tolist())) == 1


def test_banding_options_are_validated(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", [{"near_dedup": {"bands": 20}}], ["in.parquet"])
    with pytest.raises(UserError, match=r"stages\[0\].near_dedup.*both bands and rows"):
        load_config(cfg)
    cfg = write_config(tmp_path / "c.yaml", [{"near_dedup": {"bands": 30, "rows": 10}}], ["in.parquet"])
    with pytest.raises(UserError, match="exceeds num_perm"):
        load_config(cfg)


# -- a real run ------------------------------------------------------------------------------------------
def edited(text: str, rate: float, rng: random.Random) -> str:
    """A copy with `rate` of its lines changed (a renamed identifier and a comment)."""
    lines = text.splitlines()
    for i in rng.sample(range(len(lines)), max(1, int(len(lines) * rate))):
        lines[i] = lines[i].replace("self", "this") + f"  # v{rng.randrange(10**6)}"
    return "\n".join(lines)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Real stdlib files, plus edited copies in fork/ repos at known exact Jaccard (star 0, originals 100+)."""
    tmp = tmp_path_factory.mktemp("near")
    rng = random.Random(11)
    rows = [dict(r, star_events_count=100 + r["star_events_count"]) for r in stdlib_rows(700, skip=200)]
    copies = []
    for r in rng.sample([r for r in rows if 3000 < len(r["content"]) < 60000], 90):
        text = edited(r["content"], rng.choice([0.02, 0.05, 0.08, 0.12, 0.3, 0.5]), rng)
        copies.append(dict(r, repo_name="fork/" + r["repo_name"].split("/")[1], content=text, star_events_count=0))
    write_parquet(tmp / "in" / "a.parquet", rows[:350], row_group_size=60)
    write_parquet(tmp / "in" / "b.parquet", rows[350:] + copies, row_group_size=60)
    truth = {(c["repo_name"], c["path"]): ((r["repo_name"], r["path"]), jaccard(c["content"], r["content"]))
             for c in copies for r in rows if r["path"] == c["path"]}
    cfg = write_config(tmp / "c.yaml", [{"near_dedup": {"level": "file", "threshold": 0.7}}], [str(tmp / "in")],
                       executor={"workers": 2, "task_bytes": 1_500_000})
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    return tmp, cfg, truth, rows + copies


def snapshot(out: Path) -> dict[str, list]:
    snap = {}
    for folder in (out / "data", out / "removed" / "near_dedup"):
        t = read_dir(folder)
        cols = [c for c in ("repo_name", "path", "blob_id", "removal_reason", "kept_repo_name", "kept_path")
                if t is not None and c in t.column_names]
        snap[folder.name] = sorted(zip(*(t[c].to_pylist() for c in cols), strict=True)) if t is not None else []
    return snap


def test_file_level_removes_verified_near_duplicates(planted):
    tmp, _, truth, records = planted
    out = tmp / "out"
    assert run_cli("verify", str(out)).returncode == 0
    removed = read_dir(out / "removed" / "near_dedup")
    data = read_dir(out / "data")
    assert removed is not None and data is not None
    content = {(r["repo_name"], r["path"]): r["content"] for r in records}
    kept = {(r, p): b for r, p, b in zip(*(data[c].to_pylist() for c in ("repo_name", "path", "blob_id")),
                                         strict=True)}
    gone = {}
    for row in removed.to_pylist():
        key = (row["repo_name"], row["path"])
        gone[key] = row
        rep = (row["kept_repo_name"], row["kept_path"])
        assert rep in kept and row["removal_reason"] == f"duplicate_of:{kept[rep]}"
        assert row["removed_by"] == "near_dedup"
    # every planted copy at J >= 0.7 goes (its original has more stars), every copy below 0.6 stays
    similarity = [j for _, j in truth.values()]
    assert sum(0.7 <= j < 0.85 for j in similarity) >= 5 and sum(j < 0.6 for j in similarity) >= 5
    for key, (original, j) in truth.items():
        if j >= 0.7:
            assert key in gone, (key, j)
            # kept: the original, or the original's own representative when it is a near-duplicate too
            rep = (gone[original]["kept_repo_name"], gone[original]["kept_path"]) if original in gone else original
            assert (gone[key]["kept_repo_name"], gone[key]["kept_path"]) == rep
        elif j < 0.6:
            assert key not in gone, (key, j)
    # no wrong removal: each removed file has a J >= 0.7 neighbour in its cluster
    cluster = {}
    for key, row in gone.items():
        cluster.setdefault((row["kept_repo_name"], row["kept_path"]), []).append(key)
    for rep, members in cluster.items():
        group = [rep, *members]
        for key in members:
            assert any(jaccard(content[key], content[other]) >= 0.7 for other in group if other != key)


def test_results_do_not_depend_on_workers_or_tasks(planted):
    tmp, _, _, _ = planted
    cfg = write_config(tmp / "one.yaml", [{"near_dedup": {"level": "file", "threshold": 0.7}}], [str(tmp / "in")],
                       output="one", executor={"workers": 1, "task_bytes": 10**9})
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    assert snapshot(tmp / "one") == snapshot(tmp / "out")


def test_corrupted_signature_file_is_recomputed_on_resume(planted):
    tmp, cfg, _, _ = planted
    out = tmp / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--quiet", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = out / "logs" / "near_dedup.pairs" / "completions"
    deadline = time.monotonic() + 300
    while not (done.is_dir() and any(done.iterdir())):
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    work = out / ".work" / "near_dedup"
    band = sorted((work / "sig").glob("band_*.parquet"))[0]
    band.write_bytes(band.read_bytes()[: band.stat().st_size // 2])  # a half-written file
    pairs = sorted((work / "pairs").glob("*.parquet"))[0]
    pairs.write_bytes(b"PAR1garbage")
    result = run_cli("run", str(cfg), "--quiet", "--output", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    assert "corrupt intermediate" in (out / "logs" / "run.log").read_text()
    assert snapshot(out) == snapshot(tmp / "out")
    assert run_cli("verify", str(out)).returncode == 0


def test_repo_level_removes_forked_repositories_whole(tmp_path):
    rng = random.Random(5)
    rows = stdlib_rows(900)
    by_repo = {}
    for r in rows:
        by_repo.setdefault(r["repo_name"], []).append(r)
    big = sorted((repo for repo, rs in by_repo.items() if len(rs) >= 8 and repo != "cpython/_root"),
                 key=lambda repo: -len(by_repo[repo]))
    forked, mirrored, partial = big[0], big[1], big[2]
    for r in rows:
        r["star_events_count"] = 50
    fork = [dict(r, repo_name="fork/" + forked.split("/")[1], star_events_count=5,
                 content=edited(r["content"], 0.03, rng) if i == 0 else r["content"])
            for i, r in enumerate(by_repo[forked])]
    # the mirror has one file with more stars than any of the original's: by the aggregated keep rule
    # (max stars) the mirror stays and the original's files go
    mirror = [dict(r, repo_name="mirror/" + mirrored.split("/")[1], star_events_count=500 if i == 1 else 0)
              for i, r in enumerate(by_repo[mirrored])]
    half = [dict(r, repo_name="half/" + partial.split("/")[1]) for r in by_repo[partial][: len(by_repo[partial]) // 2]]
    write_parquet(tmp_path / "in" / "a.parquet", rows + fork + mirror + half, row_group_size=40)
    stages = [{"near_dedup": {"level": "repo", "threshold": 0.85}}, {"exact_dedup": {}},
              {"near_dedup": {"level": "file", "threshold": 0.7}}]
    cfg = write_config(tmp_path / "c.yaml", stages, [str(tmp_path / "in")],
                       executor={"workers": 2, "task_bytes": 800_000})  # repos spread over several tasks
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert run_cli("verify", str(out)).returncode == 0
    removed = read_dir(out / "removed" / "near_dedup")
    by_repo_removed = {}
    for row in removed.to_pylist():
        by_repo_removed.setdefault(row["repo_name"], []).append(row)
    assert set(by_repo_removed) == {"fork/" + forked.split("/")[1], mirrored}
    assert len(by_repo_removed["fork/" + forked.split("/")[1]]) == len(fork)
    assert len(by_repo_removed[mirrored]) == len(mirror)
    for row in by_repo_removed["fork/" + forked.split("/")[1]]:
        assert row["removal_reason"] == f"duplicate_repo_of:{forked}"
        assert row["kept_repo_name"] == forked and row["kept_path"] is None
    assert {r["removal_reason"] for r in by_repo_removed[mirrored]} == {
        "duplicate_repo_of:mirror/" + mirrored.split("/")[1]}
    # the half copy is no repo duplicate; its files are exact copies, which exact_dedup removes
    exact = read_dir(out / "removed" / "exact_dedup")
    assert len([r for r in exact["repo_name"].to_pylist() if r.startswith("half/")]) == len(half)
    import json

    stats = {s["name"]: s for s in json.loads((out / "stats.json").read_text())["stages"]}
    assert stats["near_dedup"]["details"]["repos"] >= len(by_repo) + 3
    assert stats["near_dedup"]["details"]["tokens_removed"] > 0


def test_a_chain_of_near_duplicates_is_not_one_cluster(tmp_path):
    """A ~ B ~ C with A !~ C (edits at both ends of a real file): connected components would remove C
    as a duplicate of A; here B goes as a duplicate of A (the keep rule's best) and C stays."""
    rows = stdlib_rows(300, skip=900)
    base = next(r for r in rows if 8000 < len(r["content"]) < 30000)
    donors = [r["content"].splitlines() for r in rows if len(r["content"]) > 8000 and r is not base]
    lines = base["content"].splitlines()
    k = len(lines) // 9
    texts = {"a": lines, "b": donors[0][:k] + lines[k:], "c": donors[0][:k] + lines[k:-k] + donors[1][-k:]}
    chain = [dict(base, repo_name=f"chain/{name}", content="\n".join(text), star_events_count=stars)
             for (name, text), stars in zip(texts.items(), (300, 200, 100), strict=True)]
    a, b, c = (r["content"] for r in chain)
    assert jaccard(a, b) >= 0.72 and jaccard(b, c) >= 0.72 and jaccard(a, c) <= 0.68
    write_parquet(tmp_path / "in" / "a.parquet", rows + chain, row_group_size=50)
    cfg = write_config(tmp_path / "c.yaml", [{"near_dedup": {"level": "file", "threshold": 0.7}}],
                       [str(tmp_path / "in")], executor={"workers": 2, "task_bytes": 1_000_000})
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert run_cli("verify", str(out)).returncode == 0
    data, removed = read_dir(out / "data"), read_dir(out / "removed" / "near_dedup")
    kept = {r["repo_name"]: r for r in data.select(["repo_name", "path", "blob_id"]).to_pylist()}
    gone = {r["repo_name"]: r for r in removed.to_pylist()} if removed is not None else {}
    assert "chain/a" in kept and "chain/c" in kept
    assert gone["chain/b"]["removal_reason"] == f"duplicate_of:{kept['chain/a']['blob_id']}"
    assert (gone["chain/b"]["kept_repo_name"], gone["chain/b"]["kept_path"]) == ("chain/a", base["path"])
