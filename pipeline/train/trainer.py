"""The training loop: stream -> model -> MFT loss -> engine, with checkpoints that resume exactly
(model, optimizer, schedule, RNG and every dataloader stream's position), TensorBoard and JSONL logs,
periodic validation per task, and a final summary.

Output layout (`output:` of the config):
  train_config.json     the resolved config and DeepSpeed config (a resume must match it)
  checkpoints/step-N/   engine states, rank-R.pt (RNG, stream positions), trainer_state.json; `latest` names one
  metrics.jsonl         one line per optimizer step (loss, per-task losses and targets, lr, batch fingerprints)
  tensorboard/          the same curves, plus validation losses
  final/                the trained model (or LoRA adapter) + tokenizer, loadable with from_pretrained
  base/                 tiny-llama's random init, when LoRA trains on it (what merge-lora merges into)
  summary.json          tokens per task, tokens/s, losses
"""

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from pipeline.errors import UserError
from pipeline.io.files import write_json_atomic
from pipeline.train.config import RESUMABLE_CHANGES, TrainConfig
from pipeline.train.data import (
    PRETRAIN_COLUMNS,
    SFT_COLUMNS,
    Encoder,
    Position,
    ShardStream,
    TrainStream,
    batch_crc,
    batches,
    list_units,
    make_loader,
    shard_files,
    stream_rows,
)
from pipeline.train.encode import ChatEncoder, PretrainEncoder, load_tokenizer, read_meta, token_ids
from pipeline.train.engine import DeepSpeedEngine, TorchEngine, device_for, fill_deepspeed_config, init_distributed
from pipeline.train.loss import normalised_weights, task_loss
from pipeline.train.model import apply_lora, build_model, hidden_size
from pipeline.train.packing import Packer

MODEL_INPUTS = ("input_ids", "position_ids")


class TrainData:
    """What every rank must agree on about the data: tokenizer, task list, units, sequence length."""

    def __init__(self, config: TrainConfig):
        self.config = config.data
        if self.config.kind == "sft":
            self.tokenizer = load_tokenizer(self.config.tokenizer)
            self.ids = token_ids(self.tokenizer)
            self.seq_len = self.config.max_seq_len
            self.columns = SFT_COLUMNS
        else:
            meta = read_meta(self.config.paths + self.config.valid_paths)
            self.tokenizer = load_tokenizer(self.config.tokenizer or meta["tokenizer"])
            self.ids = token_ids(self.tokenizer, meta["eos_id"], meta["pad_id"])
            self.seq_len = int(meta["seq_len"])
            self.columns = PRETRAIN_COLUMNS
        units = list_units(self.config.paths, self.config.kind)
        self.units = [u for u in units if u.may_hold("train")]  # SFT row groups of valid rows only are skipped
        self.split_valid_units = [u for u in units if self.config.kind == "sft" and u.may_hold("valid")]
        self.valid_units = list_units(self.config.valid_paths, self.config.kind) if self.config.valid_paths else []
        self.records = self._count_records()
        self.tasks = sorted(self.records)

    def _count_records(self) -> dict[str, dict[str, int]]:
        """{task: {split: records}}; pre-training data is one task, `pretrain`."""
        if self.config.kind == "pretrain":
            return {"pretrain": {"train": sum(u.rows for u in self.units),
                                 "valid": sum(u.rows for u in self.valid_units)}}
        counts: dict[str, dict[str, int]] = {}
        for specs, forced in ((self.config.paths, None), (self.config.valid_paths, "valid")):
            for spec in specs:
                for path in shard_files(spec):
                    table = pq.read_table(path, columns=["task", "split"])
                    for row in table.group_by(["task", "split"]).aggregate([([], "count_all")]).to_pylist():
                        split = forced or row["split"]
                        counts.setdefault(row["task"], {}).setdefault(split, 0)
                        counts[row["task"]][split] += row["count_all"]
        return counts

    def encoder(self, split: str | None) -> Encoder:
        if self.config.kind == "pretrain":
            return PretrainEncoder()
        return ChatEncoder(self.tokenizer, self.ids, self.tasks, self.seq_len, split, self.config.chat_template)

    @property
    def packed_len(self) -> int | None:
        """Rows are padded to this length (None: to the longest row of the batch)."""
        return self.seq_len if self.config.kind == "pretrain" or self.config.packing else None

    def train_stream(self, rank: int, world: int, micro_batch_size: int, seed: int, positions: list[Position] | None,
                     rotation: int) -> TrainStream:
        return TrainStream(self.units, self.columns, self.encoder("train"), lambda: Packer(self.packed_len),
                           rank=rank, world_size=world, num_workers=self.config.num_workers, seed=seed,
                           buffer=self.config.shuffle_buffer, micro_batch_size=micro_batch_size,
                           seq_len=self.packed_len, pad_id=self.ids.pad_id, positions=positions, rotation=rotation)

    def valid_batches(self, rank: int, world: int, micro_batch_size: int) -> list[dict]:
        """This rank's share of the validation rows: split == valid of the shards, all of valid_paths."""
        sources = [(self.valid_units, None), (self.split_valid_units, "valid")]
        out = []
        for units, split in sources:
            if not units:
                continue
            stream = ShardStream(units, self.columns, rank, world, seed=0, buffer=4096, shuffle=False)
            rows = stream_rows(stream, self.encoder(split), Packer(self.packed_len), Position(), epochs=1)
            out += batches(rows, micro_batch_size, self.packed_len, self.ids.pad_id)
        return out


class RunPaths:
    """Where a run keeps its files (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = root
        self.config = root / "train_config.json"
        self.checkpoints = root / "checkpoints"
        self.metrics = root / "metrics.jsonl"
        self.tensorboard = root / "tensorboard"
        self.final = root / "final"
        self.base = root / "base"
        self.summary = root / "summary.json"


def comparable(config: dict) -> dict:
    train = {k: v for k, v in config["train"].items() if k not in RESUMABLE_CHANGES}
    return {**config, "train": train}


def prepare_output(config: TrainConfig, deepspeed: dict | None, resume: bool, overwrite: bool) -> None:
    """Refuse another run's output (unless --overwrite), check a --resume matches, record the config."""
    paths = RunPaths(Path(config.output))
    record = {"train": config.model_dump(mode="json"), "deepspeed": deepspeed}
    if paths.root.exists() and any(paths.root.iterdir()):
        if overwrite:
            shutil.rmtree(paths.root)
        elif not resume:
            raise UserError(f"{paths.root}: output of an earlier run; use --resume to continue it or --overwrite")
        elif paths.config.exists():
            before = json.loads(paths.config.read_text())
            if comparable(before["train"]) != comparable(record["train"]) or before["deepspeed"] != deepspeed:
                raise UserError(f"{paths.root}: --resume needs the config of that run (only "
                                f"{', '.join(sorted(RESUMABLE_CHANGES))} may change)")
    paths.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.config, record)


def latest_checkpoint(paths: RunPaths) -> Path | None:
    pointer = paths.checkpoints / "latest"
    if not pointer.exists():
        return None
    folder = paths.checkpoints / pointer.read_text().strip()
    return folder if folder.is_dir() else None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: TrainConfig, deepspeed: dict | None = None, resume: bool = False,
                 prepare: bool = True, overwrite: bool = False):
        self.config, self.opts, self.deepspeed = config, config.train, deepspeed
        self.resume, self.prepare, self.overwrite = resume, prepare, overwrite
        self.paths = RunPaths(Path(config.output))

    # --- setup -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.rank, self.world, local_rank = init_distributed(self.deepspeed is not None)
        self.device = device_for(local_rank)
        if self.prepare and self.rank == 0:
            prepare_output(self.config, self.deepspeed, self.resume, self.overwrite)
        self.barrier()
        self.data = TrainData(self.config)
        self.weights = normalised_weights(self.data.tasks, self.config.data.tasks)
        ds_config = None
        if self.deepspeed is not None:
            ds_config = fill_deepspeed_config(self.deepspeed, self.opts, self.world, self.config.model.dtype,
                                              hidden_size(self.config.model))
        seed_everything(self.opts.seed)
        model = self.make_model(ds_config)
        if self.config.model.lora:
            base = self.config.model.name
            if base == "tiny-llama":  # a random init: keep it, it is half of the trained model
                base = str(self.paths.base)
                if self.rank == 0:
                    model.save_pretrained(base)
                    self.data.tokenizer.save_pretrained(base)
            model = apply_lora(model, self.config.model.lora, base)
        if ds_config is not None:
            self.engine = DeepSpeedEngine(model, self.opts, ds_config)
        else:
            self.engine = TorchEngine(model, self.opts, self.device, self.world)
        self.slots = max(1, self.config.data.num_workers)
        self.step, self.elapsed = 0, 0.0
        self.targets = [0] * len(self.data.tasks)  # loss tokens seen per task
        self.tokens = 0  # input tokens seen (all ranks)
        positions, rotation = [Position()] * self.slots, 0
        checkpoint = latest_checkpoint(self.paths) if self.resume else None
        if checkpoint is not None:
            positions, rotation = self.load_checkpoint(checkpoint)
        self.positions, self.rotation, self.consumed = list(positions), rotation, 0
        stream = self.data.train_stream(self.rank, self.world, self.opts.micro_batch_size, self.opts.seed,
                                        self.positions, rotation)
        self.batches = iter(make_loader(stream, self.config.data.num_workers))
        self.valid = self.data.valid_batches(self.rank, self.world, self.opts.micro_batch_size)
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._truncate_metrics()
            self.writer = SummaryWriter(str(self.paths.tensorboard), purge_step=self.step + 1 if self.step else None)

    def make_model(self, ds_config: dict | None) -> torch.nn.Module:
        """The model to train (a hook: XFT trains an upcycled MoE, then a merge of it)."""
        if ds_config and ds_config.get("zero_optimization", {}).get("stage") == 3 \
                and self.config.model.name != "tiny-llama":
            from transformers.integrations import HfDeepSpeedConfig

            # alive for the run: from_pretrained then builds each layer already partitioned (zero.Init)
            self.zero3_loading = HfDeepSpeedConfig(ds_config)
        return build_model(self.config.model, self.data.ids, self.data.seq_len)

    def objective(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimise and the per-task stats (a hook: XFT adds its load-balancing loss)."""
        tensors = {n: t.to(self.device) for n, t in batch.items() if isinstance(t, torch.Tensor)}
        return task_loss(logits, tensors, self.weights, self.opts.loss)

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def all_reduce(self, values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        if dist.is_initialized():
            tensor = tensor.to(self.device)
            dist.all_reduce(tensor, op=op)
        return tensor.cpu().tolist()

    def gather(self, values: list[int]) -> list[list[int]]:
        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        if not dist.is_initialized():
            return [values]
        out = [torch.zeros_like(tensor) for _ in range(self.world)]
        dist.all_gather(out, tensor)
        return [t.cpu().tolist() for t in out]

    # --- the loop --------------------------------------------------------------------------------------
    def run(self) -> dict:
        self.setup()
        started = time.perf_counter() - self.elapsed
        last_saved, last_valid, valid = self.step, -1, {}
        while self.opts.max_steps is None or self.step < self.opts.max_steps:
            micro = self.next_micro_batches()
            if micro is None:
                break
            record = self.train_step(micro)
            self.step += 1
            self.elapsed = time.perf_counter() - started
            self.log(record)
            if self.opts.eval_every and self.step % self.opts.eval_every == 0:
                valid, last_valid = self.evaluate(), self.step
            if self.opts.save_every and self.step % self.opts.save_every == 0:
                self.save_checkpoint()
                last_saved = self.step
        if self.step != last_saved or not latest_checkpoint(self.paths):
            self.save_checkpoint()
        if last_valid != self.step:
            valid = self.evaluate()
        self.export()
        summary = self.summary(valid)
        if self.writer:
            self.writer.close()
        return summary

    def next_micro_batches(self) -> list[dict] | None:
        """The next optimizer step's micro-batches, or None when any rank is out of data or epochs
        (ranks agree, so none waits forever in a collective)."""
        micro = []
        for _ in range(self.opts.grad_accum):
            batch = next(self.batches, None)
            if batch is None or (self.opts.epochs is not None and batch["epoch"] >= self.opts.epochs):
                micro = None
                break
            micro.append(batch)
        if self.all_reduce([0.0 if micro is None else 1.0], op=dist.ReduceOp.MIN)[0] < 1:
            return None
        for batch in micro:
            self.positions[batch["slot"]] = batch["position"]
            self.consumed += 1
        return micro

    def forward(self, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k].to(self.device) for k in MODEL_INPUTS}
        return self.engine.model(**inputs, use_cache=False).logits

    def train_step(self, micro: list[dict]) -> dict:
        k = len(self.data.tasks)
        objective, stats, tokens = 0.0, torch.zeros(2 * k, dtype=torch.float64), 0
        for i, batch in enumerate(micro):
            loss, batch_stats = self.objective(self.forward(batch), batch)
            self.engine.micro_step(loss, last=i == len(micro) - 1)
            objective += loss.item()
            stats += batch_stats.cpu().double()
            tokens += batch["tokens"]
        totals = self.all_reduce([objective / len(micro), tokens, *stats.tolist()])
        crcs = self.gather([batch_crc(b) for b in micro])
        task_sums, task_counts = totals[2:2 + k], totals[2 + k:]
        self.targets = [a + int(b) for a, b in zip(self.targets, task_counts, strict=True)]
        self.tokens += int(totals[1])
        return {"step": self.step + 1, "loss": totals[0] / self.world, "lr": self.engine.lr, "tokens": int(totals[1]),
                "task_loss": {t: s / c for t, s, c in zip(self.data.tasks, task_sums, task_counts, strict=True) if c},
                "task_targets": {t: int(c) for t, c in zip(self.data.tasks, task_counts, strict=True) if c},
                "epoch": max(b["epoch"] for b in micro), "batch_crc": crcs, "elapsed": round(self.elapsed, 3)}

    def log(self, record: dict) -> None:
        if self.rank != 0:
            return
        with open(self.paths.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        self.writer.add_scalar("train/loss", record["loss"], step)
        self.writer.add_scalar("train/lr", record["lr"], step)
        self.writer.add_scalar("train/tokens_per_second", self.tokens / max(self.elapsed, 1e-9), step)
        for task, value in record["task_loss"].items():
            self.writer.add_scalar(f"train/loss/{task}", value, step)
        if step % self.opts.log_every == 0 or step == 1:
            print(f"step {step}{'/' + str(self.opts.max_steps) if self.opts.max_steps else ''}  "
                  f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                  f"tokens/s {self.tokens / max(self.elapsed, 1e-9):,.0f}", flush=True)

    def evaluate(self) -> dict[str, float]:
        """Per-task token-mean validation loss. Every rank runs the same number of forwards (ZeRO-3 gathers
        parameters collectively), repeating its first batch with the result discarded where it has fewer."""
        k = len(self.data.tasks)
        count = int(self.all_reduce([len(self.valid)], op=dist.ReduceOp.MAX)[0])
        if not count:
            return {}
        sums = torch.zeros(2 * k, dtype=torch.float64)
        self.engine.model.eval()
        with torch.no_grad():
            for i in range(count):
                batch = self.valid[i] if i < len(self.valid) else self.valid[0] if self.valid else None
                if batch is None:  # this rank has no validation rows: a pad-only forward keeps step with the others
                    batch = {"input_ids": torch.full((1, 2), self.data.ids.pad_id),
                             "position_ids": torch.zeros((1, 2), dtype=torch.long)}
                logits = self.forward(batch)
                if i < len(self.valid):
                    tensors = {n: t.to(self.device) for n, t in batch.items() if isinstance(t, torch.Tensor)}
                    sums += task_loss(logits, tensors, self.weights, self.opts.loss)[1].cpu().double()
        self.engine.model.train()
        totals = self.all_reduce(sums.tolist())
        valid = {t: s / c for t, s, c in zip(self.data.tasks, totals[:k], totals[k:], strict=True) if c}
        if self.writer:
            for task, value in valid.items():
                self.writer.add_scalar(f"valid/loss/{task}", value, self.step)
            print(f"step {self.step}  valid " + "  ".join(f"{t} {v:.4f}" for t, v in valid.items()), flush=True)
        return valid

    # --- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        tag = f"step-{self.step:08d}"
        tmp = self.paths.checkpoints / f".{tag}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        self.engine.save(tmp, self.rank)
        torch.save({"positions": [(p.epoch, p.index) for p in self.positions],
                    "rotation": (self.rotation + self.consumed) % self.slots, "rng": rng_state()},
                   tmp / f"rank-{self.rank}.pt")
        self.barrier()
        if self.rank == 0:
            write_json_atomic(tmp / "trainer_state.json", {
                "step": self.step, "elapsed": self.elapsed, "tokens": self.tokens, "world_size": self.world,
                "num_workers": self.config.data.num_workers, "targets": dict(zip(self.data.tasks, self.targets,
                                                                                  strict=True))})
            final = self.paths.checkpoints / tag
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer = self.paths.checkpoints / ".latest.tmp"
            pointer.write_text(tag)
            os.replace(pointer, self.paths.checkpoints / "latest")
            kept = sorted(p for p in self.paths.checkpoints.glob("step-*") if p.is_dir())
            for old in kept[:-self.opts.save_total_limit]:
                shutil.rmtree(old)
        self.barrier()

    def load_checkpoint(self, folder: Path) -> tuple[list[Position], int]:
        state = json.loads((folder / "trainer_state.json").read_text())
        if (state["world_size"], state["num_workers"]) != (self.world, self.config.data.num_workers):
            raise UserError(f"{folder}: saved by {state['world_size']} processes x {state['num_workers']} "
                            "dataloader workers; resume with the same numbers")
        self.engine.load(folder)
        mine = torch.load(folder / f"rank-{self.rank}.pt", weights_only=False)
        set_rng_state(mine["rng"])
        self.step, self.elapsed, self.tokens = state["step"], state["elapsed"], state["tokens"]
        self.targets = [state["targets"].get(t, 0) for t in self.data.tasks]
        if self.rank == 0:
            print(f"resumed from {folder.name}", flush=True)
        return [Position(*p) for p in mine["positions"]], mine["rotation"]

    def _truncate_metrics(self) -> None:
        """A resumed run rewrites the steps after its checkpoint: drop their old lines."""
        if not self.paths.metrics.exists():
            return
        lines = [line for line in self.paths.metrics.read_text().splitlines()
                 if line and json.loads(line)["step"] <= self.step]
        tmp = self.paths.metrics.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.paths.metrics)

    # --- the end -----------------------------------------------------------------------------------------
    def export(self) -> None:
        """final/: a from_pretrained-loadable model (a LoRA run saves its adapter) and the tokenizer."""
        state = self.engine.full_state_dict()
        if self.rank == 0:
            self.engine.module.save_pretrained(str(self.paths.final), state_dict=state)
            self.data.tokenizer.save_pretrained(str(self.paths.final))
        self.barrier()

    def summary(self, valid: dict[str, float]) -> dict:
        records = [json.loads(line) for line in self.paths.metrics.read_text().splitlines()] if self.rank == 0 \
            else []
        losses = [r["loss"] for r in records]
        last = records[-10:]
        summary = {
            "steps": self.step, "seconds": round(self.elapsed, 2), "tokens": self.tokens,
            "tokens_per_second": round(self.tokens / max(self.elapsed, 1e-9), 1),
            "loss_first": losses[0] if losses else None,
            "loss_last10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "tasks": {t: {"records": self.data.records.get(t, {}),
                          "targets_seen": n,
                          "train_loss_last10": _mean([r["task_loss"][t] for r in last if t in r["task_loss"]]),
                          "valid_loss": valid.get(t)}
                      for t, n in zip(self.data.tasks, self.targets, strict=True)},
        }
        if self.rank == 0:
            write_json_atomic(self.paths.summary, summary)
        return summary


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
