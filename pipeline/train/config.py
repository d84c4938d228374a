"""The training config (YAML, validated strictly like the run config; every error is one line)."""

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config import Strict, _is_url, validated_yaml
from pipeline.errors import UserError


class DataConfig(Strict):
    kind: Literal["sft", "pretrain"]
    paths: list[str] = Field(min_length=1)  # Parquet files, directories or globs (fsspec URLs work)
    valid_paths: list[str] = []  # extra validation shards (SFT shards also give their split == "valid" rows)
    tokenizer: str | None = None  # SFT: HF tokenizer dir, tokenizer.json or hub id; pretrain: meta.json's
    max_seq_len: int = Field(default=2048, gt=1)  # SFT only: pre-training rows are meta.json's seq_len
    packing: bool = True  # SFT: pack conversations into max_seq_len rows (else pad each to the batch max)
    chat_template: Literal["builtin", "tokenizer"] = "builtin"
    shuffle_buffer: int = Field(default=10_000, ge=1)  # records shuffled together; 1 = file order
    num_workers: int = Field(default=2, ge=0)  # dataloader worker processes per rank
    tasks: dict[str, float] = {}  # per-task loss weights (normalised to mean 1; unlisted tasks weigh 1)

    @field_validator("tasks")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w <= 0 for w in value.values()):
            raise ValueError("task weights must be > 0")
        return value


class LoraConfig(Strict):
    """Defaults are MFTCoder's preset (`lora: mftcoder`)."""

    r: int = Field(default=96, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    quantize: Literal["4bit", "8bit"] | None = None  # QLoRA (bitsandbytes, GPU only)


class ModelConfig(Strict):
    name: str = "tiny-llama"  # or any HF causal LM id / local path
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights (and autocast for non-fp32)
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None

    @field_validator("lora", mode="before")
    @classmethod
    def _preset(cls, value):
        return {} if value == "mftcoder" else value


class TrainOptions(Strict):
    loss: Literal["mft", "sample", "token"] = "mft"  # mft = MFTCoder case3 (mean over tasks of task token means)
    micro_batch_size: int = Field(default=4, gt=0)  # rows per rank per micro-step
    grad_accum: int = Field(default=1, gt=0)
    max_steps: int | None = Field(default=None, gt=0)  # optimizer steps
    epochs: int | None = Field(default=None, gt=0)  # stop before the first batch of epoch `epochs` on any rank
    lr: float = Field(default=2e-4, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float = Field(default=1.0, ge=0)  # 0 = no clipping
    seed: int = 42
    save_every: int = Field(default=500, ge=0)  # optimizer steps between checkpoints (0 = only at the end)
    save_total_limit: int = Field(default=2, ge=1)
    eval_every: int = Field(default=0, ge=0)  # 0 = evaluate at the end only
    log_every: int = Field(default=10, gt=0)
    nproc: int = Field(default=1, gt=0)  # processes launched by `pipeline train` (torchrun) on this machine

    @model_validator(mode="after")
    def _length(self):
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs")
        if self.max_steps is None and self.schedule != "constant":
            raise ValueError(f"the {self.schedule} schedule decays over max_steps: set it (or schedule: constant)")
        return self


class XftOptions(Strict):
    """XFT (upcycle to a shared-expert MoE, fine-tune, learnable merge back to dense); defaults are the paper's."""

    num_experts: int = Field(default=8, ge=2)  # copies of each MLP; expert 0 is the shared one
    top_k: int = Field(default=5, gt=0)  # routed experts used per token (of num_experts - 1)
    router_noise: bool = True  # learned routing noise (training only), its projection initialised at zero
    aux_loss_coef: float = Field(default=0.01, ge=0)  # x (cv^2(importance) + cv^2(load)), summed over layers
    merge_lambda: float = Field(default=0.75, ge=0, le=1)  # weight of the shared expert in the merged MLP
    merge_lr: float = Field(default=1e-5, gt=0)
    merge_epochs: int | None = Field(default=1, gt=0)
    merge_steps: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _sizes(self):
        if self.top_k > self.num_experts - 1:
            raise ValueError(f"top_k: at most num_experts - 1 = {self.num_experts - 1} routed experts")
        if self.merge_epochs is None and self.merge_steps is None:
            raise ValueError("set merge_epochs or merge_steps")
        return self


class TrainConfig(Strict):
    name: str
    output: str
    method: Literal["standard", "xft"] = "standard"
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainOptions
    xft: XftOptions = XftOptions()

    @model_validator(mode="after")
    def _xft_is_full_fine_tuning(self):
        if self.method == "xft" and self.model.lora:
            raise ValueError("method xft trains all weights: remove model.lora")
        if self.method == "xft" and self.model.gradient_checkpointing:
            raise ValueError("method xft: gradient_checkpointing would drop the gradient of the MoE's balancing loss")
        return self


# Options that may change when a run is resumed; everything else must match the checkpointed config.
RESUMABLE_CHANGES = {"max_steps", "epochs", "save_every", "save_total_limit", "eval_every", "log_every"}


def load_train_config(path: str | Path) -> TrainConfig:
    """Load CONFIG.yaml; relative paths (shards, tokenizer, output) resolve against its directory."""
    path = Path(path)
    source = str(path)
    config = validated_yaml(path, TrainConfig, "name, output, data, model, train")
    base = path.resolve().parent
    config.output = _resolve(config.output, base)
    config.data.paths = [_resolve(p, base) for p in config.data.paths]
    config.data.valid_paths = [_resolve(p, base) for p in config.data.valid_paths]
    if config.data.tokenizer and (base / config.data.tokenizer).exists():
        config.data.tokenizer = _resolve(config.data.tokenizer, base)
    if (base / config.model.name).exists():
        config.model.name = _resolve(config.model.name, base)
    if config.data.kind == "sft" and not config.data.tokenizer:
        raise UserError(f"{source}: data.tokenizer: required for SFT shards")
    return config


def _resolve(path: str, base: Path) -> str:
    return path if _is_url(path) or Path(path).is_absolute() else str((base / path).resolve())
