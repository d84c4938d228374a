"""Two ways to run the optimizer: plain PyTorch (one process or DDP) and DeepSpeed ZeRO. Both take the
model, our param groups and our LR schedule, so a run differs only in who shards the states."""

import json
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipeline.errors import UserError
from pipeline.train.config import TrainOptions


def device_for(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed(use_deepspeed: bool) -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment (torchrun, deepspeed, accelerate)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_deepspeed:
        import deepspeed
        import deepspeed.ops
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() == "cpu":
            # On CPU DeepSpeed JIT-compiles a shared-memory all-reduce kernel at init (minutes on 2 cores);
            # gloo alone does the job for CPU runs.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    elif world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return (dist.get_rank() if dist.is_initialized() else 0), world, local_rank


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on norms and biases), trainable parameters only."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def lr_lambda(opts: TrainOptions):
    """Linear warmup, then cosine/linear decay to `min_lr_ratio` at max_steps (constant: flat)."""
    def factor(step: int) -> float:
        if step < opts.warmup_steps:
            return (step + 1) / opts.warmup_steps
        if opts.schedule == "constant" or not opts.max_steps:
            return 1.0
        progress = min(1.0, (step - opts.warmup_steps) / max(1, opts.max_steps - opts.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if opts.schedule == "cosine" else 1 - progress
        return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * shape
    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, opts: TrainOptions) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(opts))


class TorchEngine:
    """AdamW + our schedule; DDP across ranks when there are several (no_sync between micro-steps)."""

    def __init__(self, model: torch.nn.Module, opts: TrainOptions, device: torch.device, world: int):
        self.module = model.to(device)
        self.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if world > 1 else model
        self.opts = opts
        self.optimizer = torch.optim.AdamW(param_groups(model, opts.weight_decay), lr=opts.lr, betas=opts.betas,
                                           eps=opts.eps)
        self.scheduler = make_scheduler(self.optimizer, opts)

    def micro_step(self, loss: torch.Tensor, last: bool) -> None:
        scaled = loss / self.opts.grad_accum
        if last or not isinstance(self.model, DistributedDataParallel):
            scaled.backward()
        else:
            with self.model.no_sync():
                scaled.backward()
        if last:
            if self.opts.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad],
                                               self.opts.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, folder: Path, rank: int) -> None:
        if rank == 0:
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict()}, folder / "engine.pt")

    def load(self, folder: Path) -> None:
        state = torch.load(folder / "engine.pt", map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def full_state_dict(self) -> dict:
        return self.module.state_dict()


class DeepSpeedEngine:
    """DeepSpeed ZeRO from a JSON config whose "auto" values come from the training config."""

    def __init__(self, model: torch.nn.Module, opts: TrainOptions, ds_config: dict):
        import deepspeed

        self.module = model
        self.zero_stage = ds_config.get("zero_optimization", {}).get("stage", 0)
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=param_groups(model, opts.weight_decay), config=ds_config,
            lr_scheduler=lambda optimizer: make_scheduler(optimizer, opts))

    def micro_step(self, loss: torch.Tensor, last: bool) -> None:
        self.model.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps
        self.model.step()  # steps the optimizer and schedule at the accumulation boundary only

    @property
    def lr(self) -> float:
        return self.model.get_lr()[0]

    def save(self, folder: Path, rank: int) -> None:
        self.model.save_checkpoint(str(folder), tag="engine", save_latest=False)

    def load(self, folder: Path) -> None:
        path, _ = self.model.load_checkpoint(str(folder), tag="engine")
        if path is None:
            raise RuntimeError(f"{folder}: DeepSpeed could not load this checkpoint")

    def full_state_dict(self) -> dict:
        """All ranks call this; under ZeRO-3 the parameters are gathered first."""
        if self.zero_stage != 3:
            return self.module.state_dict()
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}


def load_deepspeed_config(path: str) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read DeepSpeed config ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: a DeepSpeed config is a JSON object")
    if "scheduler" in config:
        raise UserError(f"{path}: scheduler: remove it; the LR schedule comes from the training config "
                        "(train.lr, warmup_steps, schedule, min_lr_ratio)")
    return config


def fill_deepspeed_config(config: dict, opts: TrainOptions, world: int, dtype: str, hidden_size: int,
                          source: str = "deepspeed config") -> dict:
    """Replace "auto" values the way the HF Trainer does, from our config; any other "auto" is an error."""
    values = {
        "train_micro_batch_size_per_gpu": opts.micro_batch_size,
        "gradient_accumulation_steps": opts.grad_accum,
        "train_batch_size": opts.micro_batch_size * opts.grad_accum * world,
        "gradient_clipping": opts.max_grad_norm,
        "optimizer.params.lr": opts.lr,
        "optimizer.params.betas": list(opts.betas),
        "optimizer.params.eps": opts.eps,
        "optimizer.params.weight_decay": opts.weight_decay,
        "optimizer.params.torch_adam": not torch.cuda.is_available(),  # fused Adam needs a kernel build on CPU
        "bf16.enabled": dtype == "bfloat16",
        "fp16.enabled": dtype == "float16",
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }

    def fill(node, prefix: str):
        if isinstance(node, dict):
            return {k: fill(v, f"{prefix}{k}") if not isinstance(v, dict) else fill(v, f"{prefix}{k}.")
                    for k, v in node.items()}
        if node == "auto":
            if prefix not in values:
                raise UserError(f"{source}: {prefix}: no value to fill \"auto\" with; set it explicitly")
            return values[prefix]
        return node

    filled = fill(config, "")
    filled.setdefault("steps_per_print", 2**31 - 1)  # our trainer logs
    return filled
