"""XFT: the upcycled MoE computes the dense model exactly, the learnable merge is the paper's formula, and
`pipeline train` with `method: xft` runs upcycle -> MoE fine-tuning -> merge end to end on tiny-llama,
giving a dense model of the original architecture that `pipeline eval` can score."""

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_cli
from train_shards import sft_rows, train_tokenizer, write_sft_shards
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from pipeline.train.config import XftOptions
from pipeline.train.xft import LearnableMerge, SharedExpertMoE, bake, to_learnable_merge, upcycle

SMALL = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}
MOE_STEPS, MERGE_STEPS = 6, 3
ZERO2 = str(REPO / "configs" / "ds_zero2.json")


def small_model(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**SMALL)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**SMALL)).eval()


def moe_layers(model) -> list[SharedExpertMoE]:
    return [m for m in model.modules() if isinstance(m, SharedExpertMoE)]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("num_experts, top_k", [(8, 5), (4, 1), (8, 7)])
def test_freshly_upcycled_model_computes_the_dense_model(kind, num_experts, top_k):
    dense = small_model(kind)
    inputs = torch.randint(0, SMALL["vocab_size"], (3, 17))
    torch.manual_seed(1)
    moe = upcycle(copy.deepcopy(dense), XftOptions(num_experts=num_experts, top_k=top_k))
    assert len(moe_layers(moe)) == SMALL["num_hidden_layers"]
    assert all(len(m.experts) == num_experts for m in moe_layers(moe))
    with torch.no_grad():
        expected = dense(input_ids=inputs).logits
        for mode in (moe.eval, moe.train):  # in training the routing noise is on, but learned from zero
            mode()
            assert (moe(input_ids=inputs).logits - expected).abs().max() < 1e-5


def test_routing_weights_and_load_balancing_loss():
    """Once experts differ, the output is the shared expert at 1 - p_max plus the top-k routed experts at
    p_max * softmax(p_topk); the auxiliary loss is 0.01 (cv^2(importance) + cv^2(load)) and trains the router."""
    dense = small_model("llama")
    moe = upcycle(copy.deepcopy(dense), XftOptions(router_noise=False))
    layer = moe_layers(moe)[0]
    torch.manual_seed(2)
    with torch.no_grad():
        for expert in layer.experts[1:]:
            for p in expert.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 9, SMALL["hidden_size"])
    probs = layer.router(x.reshape(-1, SMALL["hidden_size"])).softmax(-1)
    top, chosen = probs.topk(5, dim=-1)
    expected = torch.zeros(18, SMALL["hidden_size"])
    for t, token in enumerate(x.reshape(-1, SMALL["hidden_size"])):
        expected[t] = (1 - top[t, 0]) * layer.experts[0](token)
        for w, e in zip(top[t, 0] * top[t].softmax(-1), chosen[t].tolist(), strict=True):
            expected[t] += w * layer.experts[1 + e](token)
    layer.train()
    out = layer(x)
    assert (out.reshape(18, -1) - expected).abs().max() < 1e-5
    importance = torch.zeros(7).index_add_(0, chosen.reshape(-1), (top[:, :1] * top.softmax(-1)).reshape(-1))
    load = torch.bincount(chosen.reshape(-1), minlength=7).float()
    cv2 = [v.var() / v.mean() ** 2 for v in (importance, load)]
    assert abs(layer.aux_loss.item() - 0.01 * (cv2[0] + cv2[1]).item()) < 1e-6
    (out.sum() + layer.aux_loss).backward()
    assert layer.router[0].weight.grad.abs().sum() > 0


def test_learnable_merge_is_the_papers_formula_and_bakes_into_the_original_mlp():
    dense = small_model("llama")
    moe = upcycle(copy.deepcopy(dense), XftOptions())
    torch.manual_seed(3)
    with torch.no_grad():
        for p in moe.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    experts = [copy.deepcopy(e) for e in moe_layers(moe)[0].experts]
    merged = to_learnable_merge(moe, merge_lambda=0.75)
    assert [n for n, p in merged.named_parameters() if p.requires_grad] == \
        [f"model.layers.{i}.mlp.alpha" for i in range(SMALL["num_hidden_layers"])]
    layer: LearnableMerge = merged.model.layers[0].mlp
    assert torch.equal(layer.alpha.detach(), torch.ones(7))
    with torch.no_grad():
        layer.alpha.copy_(torch.linspace(-1, 2, 7))
    w = torch.linspace(-1, 2, 7).softmax(0)
    x = torch.randn(4, SMALL["hidden_size"])
    reference = copy.deepcopy(experts[0])
    with torch.no_grad():
        for name in ("gate_proj.weight", "up_proj.weight", "down_proj.weight"):
            routed = sum(w[i] * experts[i + 1].get_parameter(name) for i in range(7))
            reference.get_parameter(name).copy_(0.75 * experts[0].get_parameter(name) + 0.25 * routed)
        assert (layer(x) - reference(x)).abs().max() < 1e-5
    loss = layer(x).pow(2).sum()
    loss.backward()
    assert layer.alpha.grad.abs().sum() > 0
    baked = bake(merged)
    assert type(baked.model.layers[0].mlp) is type(dense.model.layers[0].mlp)
    assert sum(p.numel() for p in baked.parameters()) == sum(p.numel() for p in dense.parameters())
    with torch.no_grad():
        assert (baked.model.layers[0].mlp(x) - reference(x)).abs().max() < 1e-5


@pytest.fixture(scope="module")
def xft_run(tmp_path_factory) -> Path:
    """`pipeline train` with method: xft on tiny-llama and real SFT shards (one process, plain PyTorch)."""
    root = tmp_path_factory.mktemp("xft")
    train_tokenizer(root / "tok", vocab_size=512)
    write_sft_shards(root / "sft", sft_rows(8, valid_every=4), files=2, row_group_size=4)
    (root / "xft.yaml").write_text(yaml.safe_dump({
        "name": "xft-test", "output": "out", "method": "xft",
        "data": {"kind": "sft", "paths": ["sft"], "tokenizer": "tok/tokenizer.json", "max_seq_len": 128,
                 "num_workers": 0, "shuffle_buffer": 4},
        "train": {"max_steps": MOE_STEPS, "micro_batch_size": 2, "lr": 3e-3, "save_every": 3, "seed": 3},
        "xft": {"merge_lr": 0.05, "merge_steps": MERGE_STEPS, "merge_epochs": None}}))
    result = run_cli("train", "xft.yaml", cwd=root, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr + result.stdout
    assert "xft moe: trained 6 steps" in result.stdout and "xft merge: trained 3 steps" in result.stdout
    return root


def test_three_phases_run_and_are_recorded(xft_run):
    out = xft_run / "out"
    phases = json.loads((out / "phases.json").read_text())
    assert list(phases) == ["upcycle", "moe", "merge"]
    assert phases["moe"]["steps"] == MOE_STEPS and phases["merge"]["steps"] == MERGE_STEPS
    assert all(p["wall_seconds"] > 0 for p in phases.values())
    moe_metrics = [json.loads(line) for line in (out / "moe" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in moe_metrics] == list(range(1, MOE_STEPS + 1))
    assert all(r["aux_loss"] > 0 for r in moe_metrics)
    assert moe_metrics[-1]["loss"] < moe_metrics[0]["loss"]
    assert all(t["valid_loss"] is not None for t in phases["merge"]["tasks"].values())


def test_merged_model_has_the_original_architecture_and_the_merged_weights(xft_run):
    out = xft_run / "out"
    base = AutoModelForCausalLM.from_pretrained(out / "base")
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert type(final) is type(base) is LlamaForCausalLM
    assert {**final.config.to_dict(), "_name_or_path": ""} == {**base.config.to_dict(), "_name_or_path": ""}
    assert sum(p.numel() for p in final.parameters()) == sum(p.numel() for p in base.parameters())
    moe = torch.load(out / "moe" / "final" / "moe.pt", weights_only=True)
    weights = json.loads((out / "merge" / "merge_weights.json").read_text())["softmax_alpha"]
    assert max(abs(w - 1 / 7) for layer in weights for w in layer) > 1e-3  # the merge learned something
    for name, param in final.state_dict().items():
        if ".mlp." not in name:  # the merge trains alpha only: everything else is the fine-tuned MoE's
            assert torch.equal(param, moe[name]), name
            continue
        prefix, projection = name.split(".mlp.")
        layer = int(prefix.rsplit(".", 1)[1])
        routed = sum(w * moe[f"{prefix}.mlp.experts.{i + 1}.{projection}"] for i, w in enumerate(weights[layer]))
        expected = 0.75 * moe[f"{prefix}.mlp.experts.0.{projection}"] + 0.25 * routed
        assert (param - expected).abs().max() < 1e-6, name
    changed = [n for n in moe if ".experts.0." in n
               and not torch.equal(moe[n], base.state_dict()[n.replace(".experts.0", "")])]
    assert changed  # the MoE phase fine-tuned the experts


def test_resume_skips_finished_phases_and_eval_scores_the_merged_model(xft_run):
    final = xft_run / "out" / "final" / "model.safetensors"
    before = (final.stat().st_mtime_ns, (xft_run / "out" / "phases.json").read_text())
    refused = run_cli("train", "xft.yaml", cwd=xft_run)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = run_cli("train", "xft.yaml", "--resume", cwd=xft_run)
    assert resumed.returncode == 0, resumed.stderr
    assert (final.stat().st_mtime_ns, (xft_run / "out" / "phases.json").read_text()) == before
    result = run_cli("eval", "xft.yaml", "--benchmark", "humaneval", "--limit", "2", "--max-new-tokens", "8",
                     cwd=xft_run)
    assert result.returncode == 0, result.stderr
    summary = json.loads((xft_run / "out" / "final" / "eval" / "humaneval" / "summary.json").read_text())
    assert summary["problems"] == summary["samples"] == 2 and "pass@1" in summary


def test_deepspeed_zero2_on_two_processes(xft_run):
    config = yaml.safe_load((xft_run / "xft.yaml").read_text())
    config["data"]["num_workers"] = 1
    config["train"]["max_steps"] = 2
    config["xft"]["merge_steps"] = 1
    (xft_run / "ds.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("train", "ds.yaml", "--deepspeed", ZERO2, "--nproc", "2", "--output", "out-ds", cwd=xft_run)
    assert result.returncode == 0, result.stderr + result.stdout
    phases = json.loads((xft_run / "out-ds" / "phases.json").read_text())
    assert (phases["moe"]["steps"], phases["merge"]["steps"]) == (2, 1)
    metrics = [json.loads(line) for line in (xft_run / "out-ds" / "moe" / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["batch_crc"]) == 2 and r["aux_loss"] > 0 for r in metrics)  # both ranks trained the MoE
    final = AutoModelForCausalLM.from_pretrained(xft_run / "out-ds" / "final")
    assert type(final) is LlamaForCausalLM and final.config.num_hidden_layers == 4


@pytest.mark.parametrize("model, flags, message", [
    ({"lora": "mftcoder"}, [], "method xft trains all weights"),
    ({"gradient_checkpointing": True}, [], "gradient_checkpointing would drop"),
    ({}, ["--deepspeed", str(REPO / "configs" / "ds_zero3.json")], "use ZeRO stage 0-2"),
])
def test_user_errors_exit_2_with_one_line(xft_run, model, flags, message):
    config = yaml.safe_load((xft_run / "xft.yaml").read_text())
    config.update(model=model, output="out-error")
    (xft_run / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("train", "bad.yaml", *flags, cwd=xft_run)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (xft_run / "out-error").exists()  # refused before anything is written
