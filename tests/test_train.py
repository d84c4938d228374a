"""`pipeline train` end to end, as a user runs it: tiny-llama on real shards, DeepSpeed ZeRO-2 and
ZeRO-3 on 2 CPU processes (gloo), a run killed with SIGKILL and resumed, LoRA and merge-lora, and the
whole chain from a curated corpus through `pretrain-shards`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_cli, stdlib_rows, write_config, write_parquet
from train_shards import sft_rows, train_tokenizer, write_pretrain_shards, write_sft_shards

ZERO2 = str(REPO / "configs" / "ds_zero2.json")
ZERO3 = str(REPO / "configs" / "ds_zero3.json")
STEPS = 30


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A small repeated SFT set (16 real conversations of 2 tasks, 3 shards) and pre-training shards."""
    root = tmp_path_factory.mktemp("train")
    tokenizer = train_tokenizer(root / "tok", vocab_size=512)
    write_sft_shards(root / "sft", sft_rows(8, valid_every=4), files=3, row_group_size=2)
    write_pretrain_shards(root / "pretrain", tokenizer, seq_len=64, rows=40, files=2, row_group_size=8)
    write_yaml(root / "sft.yaml", {
        "name": "sft-test", "output": "out-ref",
        "data": {"kind": "sft", "paths": ["sft"], "tokenizer": "tok/tokenizer.json", "max_seq_len": 128,
                 "num_workers": 2, "shuffle_buffer": 4, "tasks": {"codegen": 1.0, "docstring": 2.0}},
        "model": {"name": "tiny-llama"},
        "train": {"max_steps": STEPS, "micro_batch_size": 2, "lr": 3e-3, "warmup_steps": 2, "save_every": 10,
                  "eval_every": 10, "log_every": 5, "nproc": 2, "seed": 5}})
    return root


@pytest.fixture(scope="module")
def reference(workdir) -> Path:
    result = run_cli("train", str(workdir / "sft.yaml"), "--deepspeed", ZERO2, cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    return workdir / "out-ref"


def test_zero2_on_two_cpu_processes_learns_the_repeated_set(reference):
    records = metrics(reference)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in records]
    assert sum(losses[-10:]) / 10 <= 0.5 * losses[0]
    assert all(len(r["batch_crc"]) == 2 for r in records)  # both ranks trained every step
    assert {t for r in records for t in r["task_loss"]} == {"codegen", "docstring"}
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["tokens"] == sum(r["tokens"] for r in records)
    assert set(summary["tasks"]) == {"codegen", "docstring"}
    assert all(t["valid_loss"] is not None and t["targets_seen"] > 0 for t in summary["tasks"].values())
    assert list((reference / "tensorboard").glob("events.out.tfevents.*"))


def test_final_model_loads_and_reproduces_the_last_validation(reference, workdir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(reference / "final")
    tokenizer = AutoTokenizer.from_pretrained(reference / "final")
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 256
    assert model.config.vocab_size == len(tokenizer) == 512
    state = json.loads((reference / "checkpoints" / "step-00000030" / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["world_size"] == 2


def test_killed_run_resumes_with_the_same_losses_and_batches(reference, workdir):
    out = workdir / "out-killed"
    command = [sys.executable, "-m", "pipeline.cli", "train", "sft.yaml", "--deepspeed", ZERO2, "--output", str(out)]
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "latest").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    checkpoint = (out / "checkpoints" / "latest").read_text()
    killed_at = len(metrics(out))
    time.sleep(3)
    assert len(metrics(out)) == killed_at < STEPS  # every process died: nothing goes on writing
    assert not (out / "summary.json").exists()

    refused = run_cli("train", "sft.yaml", "--deepspeed", ZERO2, "--output", str(out), cwd=workdir)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = run_cli("train", "sft.yaml", "--deepspeed", ZERO2, "--output", str(out), "--resume", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert f"resumed from {checkpoint}" in resumed.stdout
    expected, got = metrics(reference), metrics(out)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for a, b in zip(expected, got, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4, (a["step"], a["loss"], b["loss"])
        assert a["batch_crc"] == b["batch_crc"], a["step"]


def test_lora_on_pretraining_shards_then_merge(workdir):
    """One process, plain PyTorch: LoRA (MFTCoder preset) on packed pre-training rows; merge-lora gives a
    plain model whose logits equal base + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = write_yaml(workdir / "lora.yaml", {
        "name": "lora-test", "output": "out-lora",
        "data": {"kind": "pretrain", "paths": ["pretrain"], "num_workers": 0, "shuffle_buffer": 8},
        "model": {"name": "tiny-llama", "lora": "mftcoder"},
        "train": {"max_steps": 4, "micro_batch_size": 2, "lr": 1e-2, "loss": "token", "save_every": 0}})
    result = run_cli("train", str(config), cwd=workdir, env={"OMP_NUM_THREADS": "1"})  # as torchrun sets it
    assert result.returncode == 0, result.stderr + result.stdout
    adapter = json.loads((workdir / "out-lora" / "final" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (96, 32, 0.05)
    merged = run_cli("merge-lora", "out-lora", "--output", "merged", cwd=workdir)
    assert merged.returncode == 0, merged.stderr
    inputs = torch.tensor([[1, 50, 60, 70, 80, 90]])
    base = AutoModelForCausalLM.from_pretrained(workdir / "out-lora" / "base")
    with torch.no_grad():
        before = base(input_ids=inputs).logits
        with_adapter = PeftModel.from_pretrained(base, workdir / "out-lora" / "final").eval()(input_ids=inputs).logits
        after = AutoModelForCausalLM.from_pretrained(workdir / "merged")(input_ids=inputs).logits
    assert (after - with_adapter).abs().max() < 1e-4
    assert (after - before).abs().max() > 1e-3  # the adapter learned something


@pytest.fixture(scope="module")
def curated_run(workdir) -> Path:
    """The whole chain: `pipeline run` (exact dedup) on real stdlib files -> `train-tokenizer` ->
    `pretrain-shards` -> `pipeline train` with ZeRO-2 on 2 CPU processes."""
    rows = stdlib_rows(120)
    forks = [dict(r, repo_name="fork/" + r["repo_name"].split("/")[1]) for r in rows[:15]]
    write_parquet(workdir / "corpus" / "a.parquet", rows + forks, row_group_size=40)
    run = write_config(workdir / "curate.yaml", [{"exact_dedup": {}}], ["corpus"], output="curated")
    for command in (("run", str(run)), ("verify", "curated"),
                    ("train-tokenizer", "curated", "--output", "curated-tok", "--vocab-size", "600")):
        result = run_cli(*command, cwd=workdir)
        assert result.returncode == 0, result.stderr
    shards = write_yaml(workdir / "shards.yaml", {"input": ["curated"], "output": "curated-pretrain",
                                                  "tokenizer": "curated-tok", "seq_len": 64, "documents": "file"})
    result = run_cli("pretrain-shards", str(shards), cwd=workdir)
    assert result.returncode == 0, result.stderr
    config = write_yaml(workdir / "e2e.yaml", {
        "name": "e2e", "output": "out-e2e",
        "data": {"kind": "pretrain", "paths": ["curated-pretrain"], "num_workers": 2},
        "train": {"max_steps": 6, "micro_batch_size": 2, "lr": 2e-3, "loss": "token", "nproc": 2, "save_every": 3}})
    result = run_cli("train", str(config), "--deepspeed", ZERO2, cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    return workdir / "out-e2e"


def test_curated_corpus_trains_through_pretraining_shards(curated_run, workdir):
    from transformers import AutoModelForCausalLM

    meta = json.loads((workdir / "curated-pretrain" / "meta.json").read_text())
    records = metrics(curated_run)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(len(r["batch_crc"]) == 2 and 0 < r["loss"] < 10 for r in records)
    summary = json.loads((curated_run / "summary.json").read_text())
    assert summary["tasks"]["pretrain"]["records"]["train"] == meta["totals"]["sequences"]
    model = AutoModelForCausalLM.from_pretrained(curated_run / "final")
    assert model.config.vocab_size == meta["vocab_size"] and model.config.eos_token_id == meta["eos_id"]


def test_zero3_fine_tunes_a_saved_model(curated_run, workdir):
    from transformers import AutoModelForCausalLM

    config = write_yaml(workdir / "z3.yaml", {
        "name": "z3-test", "output": "out-z3",
        "data": {"kind": "pretrain", "paths": ["curated-pretrain"], "num_workers": 1},
        "model": {"name": str(curated_run / "final")},
        "train": {"max_steps": 3, "micro_batch_size": 2, "lr": 1e-3, "loss": "token", "nproc": 2}})
    result = run_cli("train", str(config), "--deepspeed", ZERO3, cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    tuned = AutoModelForCausalLM.from_pretrained(workdir / "out-z3" / "final")  # gathered from both ranks' shards
    start = AutoModelForCausalLM.from_pretrained(curated_run / "final")
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, start.get_parameter(n))]
    assert len(changed) == len(list(start.parameters()))


@pytest.mark.parametrize("edit, message", [
    ({"train": {"max_steps": 2, "bogus": 1}}, "train.bogus: unknown key"),
    ({"data": {"kind": "sft", "paths": ["nowhere"], "tokenizer": "tok/tokenizer.json"}}, "shard path not found"),
    ({"data": {"kind": "pretrain", "paths": ["sft"]}}, "meta.json beside them"),
])
def test_user_errors_exit_2_with_one_line(workdir, edit, message):
    config = yaml.safe_load((workdir / "sft.yaml").read_text())
    config.update(edit, output="out-error")
    result = run_cli("train", str(write_yaml(workdir / "bad.yaml", config)), "--deepspeed", ZERO2, cwd=workdir)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
