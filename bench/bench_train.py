"""Training throughput: our streaming loader + training loop vs the HF `Trainer` on an in-memory
`datasets` copy of the same rows, tiny-llama, same batch size, sequence length, optimizer and model
inputs (positions reset per document for both), interleaved repetitions, medians. Also the loader
alone: how much faster it makes batches than the model consumes them (goal >= 20x).

    .venv/bin/python bench/bench_train.py [--steps 30] [--reps 3] [--seq-len 256] [--batch 4]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from train_shards import train_tokenizer, write_pretrain_shards  # noqa: E402

from pipeline.train.config import load_train_config  # noqa: E402
from pipeline.train.data import make_loader  # noqa: E402
from pipeline.train.encode import PretrainEncoder  # noqa: E402
from pipeline.train.model import build_model  # noqa: E402
from pipeline.train.packing import IGNORE, Row, collate  # noqa: E402
from pipeline.train.trainer import TrainData, Trainer, seed_everything  # noqa: E402

WARMUP = 5  # steps left out of every timing (allocation, first-touch, worker start)


def make_config(root: Path, shards: Path, args, run: str) -> Path:
    config = {"name": "bench", "output": str(root / run),
              "data": {"kind": "pretrain", "paths": [str(shards)], "num_workers": 1, "shuffle_buffer": 1000},
              "train": {"max_steps": args.steps, "micro_batch_size": args.batch, "lr": 3e-4, "weight_decay": 0.1,
                        "schedule": "constant", "loss": "token", "save_every": 0, "log_every": 10**6, "seed": 1}}
    path = root / f"{run}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ours(config_path: Path) -> float:
    """tokens/s of our Trainer (streaming from Parquet) over the steps after WARMUP."""
    import shutil

    config = load_train_config(config_path)
    shutil.rmtree(config.output, ignore_errors=True)
    Trainer(config).run()
    steps = [json.loads(line) for line in (Path(config.output) / "metrics.jsonl").read_text().splitlines()]
    timed = steps[WARMUP:]
    return sum(s["tokens"] for s in timed) / (steps[-1]["elapsed"] - steps[WARMUP - 1]["elapsed"])


def hf_dataset(shards: Path, seq_len: int, pad_id: int):
    """The same rows, in memory, with the same model inputs; labels in HF's unshifted convention."""
    from datasets import Dataset

    rows = []
    for path in sorted(shards.glob("*.parquet")):
        rows += [Row([e], None) for e in PretrainEncoder()(pq.read_table(path))]
    batch = collate(rows, seq_len, pad_id)
    labels = np.full(batch["labels"].shape, IGNORE, dtype=np.int64)
    labels[:, 1:] = batch["labels"][:, :-1].numpy()  # HF shifts inside the model
    return Dataset.from_dict({"input_ids": batch["input_ids"].numpy(), "position_ids": batch["position_ids"].numpy(),
                              "labels": labels}).with_format("torch")


class StepClock:
    def __init__(self):
        self.times: list[float] = []

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.times.append(time.perf_counter())

        return Clock()


def hf_trainer(config_path: Path, dataset, args) -> float:
    """tokens/s of transformers.Trainer over the steps after WARMUP (same model init and optimizer)."""
    from transformers import Trainer as HFTrainer
    from transformers import TrainingArguments

    config = load_train_config(config_path)
    data = TrainData(config)
    seed_everything(1)
    model = build_model(config.model, data.ids, data.seq_len)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps,
                                     learning_rate=3e-4, weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0,
                                     lr_scheduler_type="constant", save_strategy="no", report_to=[],
                                     logging_strategy="no", dataloader_num_workers=1, use_cpu=True, seed=1,
                                     disable_tqdm=True)
        HFTrainer(model=model, args=training, train_dataset=dataset, callbacks=[clock.callback()]).train()
    tokens = args.batch * data.seq_len * (args.steps - WARMUP)
    return tokens / (clock.times[-1] - clock.times[WARMUP - 1])


def loader_alone(config_path: Path, batches: int) -> float:
    """tokens/s of our loader by itself (same worker count), counting padded positions like the steps do."""
    config = load_train_config(config_path)
    data = TrainData(config)
    stream = data.train_stream(0, 1, config.train.micro_batch_size, 1, None, 0)
    loader = iter(make_loader(stream, config.data.num_workers))
    next(loader)
    start, tokens = time.perf_counter(), 0
    for _ in range(batches):
        tokens += next(loader)["tokens"]
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = train_tokenizer(root / "tok", vocab_size=4096, files=200)
        rows = args.steps * args.batch * 2
        shards = write_pretrain_shards(root / "shards", tokenizer, args.seq_len, rows=rows, files=4,
                                       row_group_size=16)
        config = make_config(root, shards, args, "ours")
        data = TrainData(load_train_config(config))
        dataset = hf_dataset(shards, data.seq_len, data.ids.pad_id)
        results: dict[str, list[float]] = {"ours": [], "hf": [], "loader": []}
        for rep in range(args.reps):
            results["ours"].append(ours(config))
            results["hf"].append(hf_trainer(config, dataset, args))
            results["loader"].append(loader_alone(config, batches=200))
            print(f"rep {rep + 1}: ours {results['ours'][-1]:,.0f} tok/s, HF Trainer {results['hf'][-1]:,.0f} tok/s, "
                  f"loader alone {results['loader'][-1]:,.0f} tok/s", flush=True)
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"\ntiny-llama, batch {args.batch} x seq_len {args.seq_len}, {args.steps} steps ({WARMUP} warm-up), "
          f"{args.threads} torch thread(s), median of {args.reps}")
    print("| ours (streaming Parquet) | HF Trainer (in-memory datasets) | ratio | loader alone | loader / ours |")
    print(f"| {median['ours']:,.0f} tok/s | {median['hf']:,.0f} tok/s | {median['ours'] / median['hf']:.2f}x | "
          f"{median['loader']:,.0f} tok/s | {median['loader'] / median['ours']:.0f}x |")


if __name__ == "__main__":
    main()
