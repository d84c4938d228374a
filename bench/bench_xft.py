"""SFT vs XFT on CPU at equal training steps: validation loss of plain SFT, of the XFT MoE and of the XFT
merged dense model, and the wall time of every phase.

The setup mirrors the paper's at toy scale: a dense tiny-llama is first pre-trained on stdlib code (the
"base model"), then fine-tuned on two SFT tasks mined from other stdlib functions (write the function for a
docstring; write the docstring for a function), once with plain SFT and once with XFT (upcycle -> MoE
fine-tuning -> learnable merge). The merge runs twice from the same MoE: with the paper's lr (1e-5, at which
alpha barely moves from uniform) and with a lr large enough to move alpha at this step count.

    .venv/bin/python bench/bench_xft.py [--pretrain-steps 80] [--steps 60] [--merge-steps 20] [--batch 2]
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from train_shards import sft_rows, train_tokenizer, write_pretrain_shards, write_sft_shards  # noqa: E402

from pipeline.train.config import load_train_config  # noqa: E402
from pipeline.train.trainer import Trainer  # noqa: E402
from pipeline.train.xft import XftRun  # noqa: E402


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mean_valid(summary: dict) -> float:
    losses = [t["valid_loss"] for t in summary["tasks"].values()]
    return sum(losses) / len(losses)


def timed(run) -> tuple[dict, float]:
    started = time.perf_counter()
    summary = run()
    return summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=80)
    parser.add_argument("--steps", type=int, default=60, help="SFT steps = XFT MoE steps")
    parser.add_argument("--merge-steps", type=int, default=20)
    parser.add_argument("--per-task", type=int, default=200, help="mined SFT records per task")
    parser.add_argument("--batch", type=int, default=2, help="rows of 256 tokens per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-xft-"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tokenizer = train_tokenizer(root / "tok", vocab_size=1024)
    write_pretrain_shards(root / "pretrain", tokenizer, seq_len=256, rows=args.pretrain_steps * args.batch, files=2,
                          row_group_size=64, skip_files=1000)  # SFT functions come from the first files
    rows = sft_rows(args.per_task, valid_every=10)
    write_sft_shards(root / "sft", rows, files=2, row_group_size=64)
    train = {"micro_batch_size": args.batch, "lr": args.lr, "warmup_steps": 10, "save_every": 0, "log_every": 25,
             "seed": 7}

    base_config = write_config(root / "base.yaml", {
        "name": "base", "output": str(root / "base"),
        "data": {"kind": "pretrain", "paths": [str(root / "pretrain")], "num_workers": 1},
        "train": {**train, "max_steps": args.pretrain_steps, "loss": "token", "lr": 2e-3}})
    base, base_seconds = timed(Trainer(load_train_config(base_config)).run)
    sft_data = {"kind": "sft", "paths": [str(root / "sft")], "tokenizer": str(tokenizer), "max_seq_len": 256,
                "num_workers": 1}
    common = {"data": sft_data, "model": {"name": str(root / "base" / "final")},
              "train": {**train, "max_steps": args.steps}}
    sft_config = write_config(root / "sft.yaml", {"name": "sft", "output": str(root / "sft-run"), **common})
    sft, sft_seconds = timed(Trainer(load_train_config(sft_config)).run)

    paper = {"merge_steps": args.merge_steps, "merge_epochs": None, "merge_lr": 1e-5}
    xft_config = write_config(root / "xft.yaml", {"name": "xft", "output": str(root / "xft"), "method": "xft",
                                                  **common, "xft": paper})
    xft, _ = timed(XftRun(load_train_config(xft_config)).run)
    # the same MoE merged again with a larger merge lr: a copy of the run without its merge phase
    top_level = root / "xft"
    shutil.copytree(top_level, root / "xft-lr",
                    ignore=lambda folder, names: {"merge", "final"} & set(names) if Path(folder) == top_level else [])
    phases = json.loads((root / "xft-lr" / "phases.json").read_text())
    (root / "xft-lr" / "phases.json").write_text(json.dumps({k: phases[k] for k in ("upcycle", "moe")}))
    fast = load_train_config(xft_config)
    fast.output, fast.xft.merge_lr = str(root / "xft-lr"), 1e-2
    xft_lr, _ = timed(XftRun(fast, prepare=False).run)

    moe, merged, merged_lr = (xft["phases"]["moe"], xft["phases"]["merge"], xft_lr["phases"]["merge"])
    alphas = json.loads((root / "xft-lr" / "merge" / "merge_weights.json").read_text())["softmax_alpha"]
    rows_out = [
        ("dense base (pre-trained, no SFT)", None, base_seconds, None),
        (f"SFT, {args.steps} steps", sft, sft_seconds, None),
        (f"XFT MoE (8 experts, top-5 of 7), {args.steps} steps", moe, moe["wall_seconds"], None),
        (f"XFT merged dense, merge lr 1e-5 (paper), {args.merge_steps} steps", merged, merged["wall_seconds"],
         None),
        (f"XFT merged dense, merge lr 1e-2, {args.merge_steps} steps", merged_lr, merged_lr["wall_seconds"],
         max(abs(w - 1 / 7) for layer in alphas for w in layer)),
    ]
    tasks = list(sft["tasks"])
    print(f"\nrecords per task: {args.per_task} (valid: every 10th); base pre-trained {args.pretrain_steps} steps "
          f"(base valid is not measured on SFT data); XFT upcycle {xft['phases']['upcycle']['wall_seconds']:.1f}s\n")
    print("| run | " + " | ".join(f"valid loss {t}" for t in tasks) + " | mean valid loss | wall time (s) | "
          "tokens/s |")
    print("|---" * (len(tasks) + 4) + "|")
    for name, summary, seconds, spread in rows_out:
        if summary is None:
            print(f"| {name} | " + " | ".join("-" for _ in tasks) + f" | - | {seconds:.1f} | "
                  f"{base['tokens_per_second']:,.0f} |")
            continue
        values = " | ".join(f"{summary['tasks'][t]['valid_loss']:.4f}" for t in tasks)
        note = f" (max abs softmax(alpha) - 1/7: {spread:.4f})" if spread is not None else ""
        print(f"| {name}{note} | {values} | {mean_valid(summary):.4f} | {seconds:.1f} | "
              f"{summary['tokens_per_second']:,.0f} |")
    print(f"\nMoE vs SFT wall time: {moe['wall_seconds'] / sft_seconds:.2f}x;  "
          f"merged (paper lr) - SFT mean valid loss: {mean_valid(merged) - mean_valid(sft):+.4f}")
    print(f"runs kept in {root}")


if __name__ == "__main__":
    main()
