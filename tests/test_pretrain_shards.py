"""Pre-training shards: tokenizer training, exact round trips (plain, FIM, repo-level), packing, CLI faults."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import read_dir, run_cli, stdlib_rows, write_parquet
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.shards.pretrain import SHARD_SCHEMA, Packer, PretrainConfig, build_shards
from pipeline.shards.tokenizer import SPECIAL_TOKENS, load_tokenizer

PLANTED = ("# a file that writes the special tokens as text: <|endoftext|> <fim_prefix>x<fim_suffix>\n"
           "print('<file_sep>', 'naïve café ✓ 数据')\n")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """~50 real stdlib files (cut to 4 KB) in a dozen repos, every non-ASCII one among them, plus a file
    holding special tokens as plain text."""
    found = stdlib_rows(400)
    picked = [r for i, r in enumerate(found) if i % 8 == 0 or not r["content"].isascii()]
    picked = [dict(r, content=r["content"][:4000]) for r in picked]
    return picked + [{"repo_name": "cpython/planted", "path": "special.py", "content": PLANTED, "language": "Python",
                      "license_type": "permissive", "star_events_count": 1}]


@pytest.fixture(scope="module")
def corpus(rows, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_parquet(folder / "a.parquet", rows[: len(rows) // 2], row_group_size=7)
    write_parquet(folder / "b.parquet", rows[len(rows) // 2:], row_group_size=7)
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    result = run_cli("train-tokenizer", str(corpus), "--output", str(out), "--vocab-size", "700")
    assert result.returncode == 0, result.stderr
    return out


def build(tokenizer_dir: Path, corpus: Path, out: Path, **options) -> tuple[dict, list[list[int]], list[list[int]]]:
    config = PretrainConfig(input=[str(corpus)], output=str(out), tokenizer=str(tokenizer_dir), **options)
    meta = build_shards(config, load_tokenizer(str(tokenizer_dir)))
    table = read_dir(out)
    return meta, table["input_ids"].to_pylist(), table["doc_lens"].to_pylist()


def stream(sequences: list[list[int]], doc_lens: list[list[int]]) -> list[int]:
    """All real tokens in order (the padding of the last sequence dropped)."""
    return [t for seq, lens in zip(sequences, doc_lens, strict=True) for t in seq[: sum(lens)]]


def documents(tokens: list[int], eos: int) -> list[list[int]]:
    """Split at EOS: code never yields the EOS id (special tokens written in files are text)."""
    docs, current = [], []
    for t in tokens:
        if t == eos:
            docs.append(current)
            current = []
        else:
            current.append(t)
    assert current == []
    return docs


def test_trained_tokenizer_has_starcoder_specials_and_loads_in_transformers(tokenizer_dir, rows):
    from transformers import AutoTokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.eos_id == 0 and tok.pad_id == tok.token_id("<fim_pad>") and tok.vocab_size == 700
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert hf.eos_token_id == tok.eos_id and hf.pad_token_id == tok.pad_id
    text = rows[3]["content"]
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode([text])[0]
    # digits are split one by one (StarCoder), and byte-level BPE is lossless
    assert all(len(tok.decode([i])) == 1 for i in tok.encode(["12345"])[0])
    assert tok.decode(tok.encode([PLANTED])[0]) == PLANTED and 0 not in tok.encode([PLANTED])[0]


def test_file_level_without_fim_detokenizes_to_the_sources(tokenizer_dir, corpus, rows, tmp_path):
    meta, sequences, doc_lens = build(tokenizer_dir, corpus, tmp_path / "out", documents="file", seq_len=128,
                                      fim={"rate": 0.0}, row_group_sequences=16, shard_sequences=40)
    tok = load_tokenizer(str(tokenizer_dir))
    assert all(len(s) == 128 for s in sequences)
    assert all(sum(lens) == 128 for lens in doc_lens[:-1]) and 0 < sum(doc_lens[-1]) <= 128
    assert all(t == tok.pad_id for t in sequences[-1][sum(doc_lens[-1]):])
    tokens = stream(sequences, doc_lens)
    assert meta["totals"]["tokens"] == len(tokens) and meta["totals"]["sequences"] == len(sequences)
    assert meta["totals"]["pad_tokens"] == 128 * len(sequences) - len(tokens)
    assert [tok.decode(d) for d in documents(tokens, tok.eos_id)] == [r["content"] for r in rows]
    # every doc_lens boundary is a document end (EOS) or a sequence end
    for seq, lens in zip(sequences, doc_lens, strict=True):
        ends = np.cumsum(lens)
        assert all(seq[e - 1] == tok.eos_id for e in ends[:-1])
    # schema, shards sized for streaming, meta.json the trainer reads
    shards = sorted((tmp_path / "out").glob("*.parquet"))
    assert all(pq.read_schema(s).remove_metadata().equals(SHARD_SCHEMA) for s in shards)
    assert len(shards) == -(-len(sequences) // 40) > 1
    assert pq.ParquetFile(shards[0]).metadata.num_row_groups == 3  # 16 + 16 + 8 sequences
    assert [s["sequences"] for s in meta["shards"]] == [pq.read_metadata(s).num_rows for s in shards]
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert {k: on_disk[k] for k in ("eos_id", "pad_id", "seq_len")} == {"eos_id": 0, "pad_id": 4, "seq_len": 128}
    assert on_disk["fim"]["rate"] == 0.0 and on_disk["tokenizer"] == "tokenizer"
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").is_file()


def reassemble(doc: list[int], tok, fim: dict[str, int]) -> tuple[str, str]:
    """(mode, text) of one FIM'd or plain file: PSM and SPM put back in prefix-middle-suffix order."""
    pre, mid, suf = fim["prefix_id"], fim["middle_id"], fim["suffix_id"]
    if not doc or doc[0] != pre:
        return "plain", tok.decode(doc)
    if doc[1] == suf:  # SPM: <pre><suf> suffix <mid> prefix+middle
        m = doc.index(mid)
        return "spm", tok.decode(doc[m + 1:]) + tok.decode(doc[2:m])
    s, m = doc.index(suf), doc.index(mid)
    return "psm", tok.decode(doc[1:s]) + tok.decode(doc[m + 1:]) + tok.decode(doc[s + 1:m])


def test_fim_reassembles_to_the_sources_and_is_seeded(tokenizer_dir, corpus, rows, tmp_path):
    meta, sequences, doc_lens = build(tokenizer_dir, corpus, tmp_path / "a", documents="file", seq_len=96,
                                      fim={"rate": 1.0, "spm_rate": 0.5}, seed=3)
    tok = load_tokenizer(str(tokenizer_dir))
    decoded = [reassemble(d, tok, meta["fim"]) for d in documents(stream(sequences, doc_lens), tok.eos_id)]
    assert [text for _, text in decoded] == [r["content"] for r in rows]
    modes = [mode for mode, _ in decoded]
    assert "plain" not in modes and 10 < modes.count("spm") < len(rows) - 10
    assert meta["totals"]["fim:spm"] == modes.count("spm")
    again = build(tokenizer_dir, corpus, tmp_path / "b", documents="file", seq_len=96,
                  fim={"rate": 1.0, "spm_rate": 0.5}, seed=3)[1]
    other = build(tokenizer_dir, corpus, tmp_path / "c", documents="file", seq_len=96,
                  fim={"rate": 1.0, "spm_rate": 0.5}, seed=4)[1]
    assert again == sequences and other != sequences


def test_fim_rate_half_of_the_files(tokenizer_dir, corpus, rows, tmp_path):
    meta = build(tokenizer_dir, corpus, tmp_path / "out", documents="file", seq_len=256)[0]
    totals = meta["totals"]
    assert totals["fim:plain"] + totals["fim:psm"] + totals["fim:spm"] == len(rows)
    assert 0.3 < totals["fim:plain"] / len(rows) < 0.7


def path_and_text(part: list[int], tok, fim: dict[str, int]) -> tuple[str, str]:
    """A repo document's file: `path\n` (its own piece), then the file, FIM'd or not."""
    if fim["prefix_id"] in part:
        start = part.index(fim["prefix_id"])
        return tok.decode(part[:start]).removesuffix("\n"), reassemble(part[start:], tok, fim)[1]
    path, text = tok.decode(part).split("\n", 1)
    return path, text


def test_repo_level_documents_follow_starcoder2(tokenizer_dir, corpus, rows, tmp_path):
    meta, sequences, doc_lens = build(tokenizer_dir, corpus, tmp_path / "out", documents="repo", seq_len=200,
                                      repo_metadata_rate=0.5, fim={"rate": 0.5})
    tok = load_tokenizer(str(tokenizer_dir))
    repo_id, sep = tok.token_id("<repo_name>"), tok.token_id("<file_sep>")
    expected: dict[str, dict[str, str]] = {}
    for r in rows:
        expected.setdefault(r["repo_name"], {})[r["path"]] = r["content"]
    docs = documents(stream(sequences, doc_lens), tok.eos_id)
    assert len(docs) == len(expected) == meta["totals"]["documents"]
    with_meta, anonymous = {}, []
    for doc in docs:
        parts, current = [], []
        for t in doc + [sep]:
            if t == sep:
                parts.append(current)
                current = []
            else:
                current.append(t)
        head, files = parts[0], parts[1:]
        if head:
            assert head[0] == repo_id
            with_meta[tok.decode(head[1:])] = dict(path_and_text(f, tok, meta["fim"]) for f in files)
        else:
            anonymous.append(sorted(reassemble(f, tok, meta["fim"])[1] for f in files))
    assert with_meta and anonymous and meta["totals"]["repo_docs_with_metadata"] == len(with_meta)
    for repo, files in with_meta.items():
        assert files == expected[repo]
    rest = [sorted(files.values()) for repo, files in expected.items() if repo not in with_meta]
    assert sorted(anonymous) == sorted(rest)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=30), min_size=1, max_size=5), st.integers(1, 50))
def test_packer_is_exact_whatever_the_batches(batches, seq_len):
    """Concatenated sequences == concatenated documents; doc_lens cut at every document and sequence end."""
    packer = Packer(seq_len, pad_id=999)
    rng = np.random.default_rng(0)
    all_docs, out = [], []
    for lengths in batches:
        docs = [rng.integers(0, 500, n, dtype=np.uint32) for n in lengths]
        all_docs += docs
        out.append(packer.add(np.concatenate(docs), np.array(lengths)))
    out.append(packer.finish())
    ids = np.concatenate([o[0] for o in out])
    lens = [o[1][o[2][i]:o[2][i + 1]].tolist() for o in out for i in range(len(o[0]))]
    assert ids.shape[1] == seq_len and all(sum(x) == seq_len for x in lens[:-1])
    flat = np.concatenate(all_docs)
    assert np.array_equal(ids.reshape(-1)[: len(flat)], flat) and (ids.reshape(-1)[len(flat):] == 999).all()
    cuts = {i * seq_len + e for i, x in enumerate(lens) for e in np.cumsum(x).tolist()}
    ends = set(np.cumsum([len(d) for d in all_docs]).tolist())
    assert cuts == ends | {k * seq_len for k in range(1, len(lens) + 1) if k * seq_len <= len(flat)}


def test_cli_writes_shards_and_refuses_bad_input(tokenizer_dir, corpus, tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"input": [str(corpus)], "output": "out", "tokenizer": str(tokenizer_dir),
                                      "seq_len": 64, "documents": "repo"}))
    ok = run_cli("pretrain-shards", str(config))
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["totals"]["sequences"] > 10
    again = run_cli("pretrain-shards", str(config))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert run_cli("pretrain-shards", str(config), "--overwrite").returncode == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    foreign = run_cli("pretrain-shards", str(config), "--output", str(tmp_path / "mine"), "--overwrite")
    assert foreign.returncode == 2 and (tmp_path / "mine" / "notes.txt").exists()
    missing = run_cli("pretrain-shards", str(config), "--tokenizer", str(tmp_path / "nope"), "--output",
                      str(tmp_path / "x"))
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"input": [str(corpus)], "output": "o", "tokenizer": str(tokenizer_dir),
                                   "fim": {"rate": 2}}))
    line = run_cli("pretrain-shards", str(bad))
    assert line.returncode == 2 and "bad.yaml" in line.stderr and "fim.rate" in line.stderr


def test_tokenizer_without_fim_tokens_is_a_user_error(corpus, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    plain = Tokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    plain.train_from_iterator(["def f(x):\n    return x\n"] * 10,
                              trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    plain.save(str(tmp_path / "plain.json"))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"input": [str(corpus)], "output": "o", "tokenizer": "plain.json",
                                      "documents": "file"}))
    result = run_cli("pretrain-shards", str(config))
    assert result.returncode == 2 and "<fim_prefix>" in result.stderr
