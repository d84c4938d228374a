"""XFT (Ding et al. 2024): upcycle a dense LLaMA-style model into a shared-expert MoE, fine-tune the MoE,
then learn how to merge the experts back into a dense model of the original architecture and size.

Phases of a `method: xft` run (`output:` of the config), each resumable:
  1. upcycle  base/      the dense starting model (+ tokenizer); the MoE is rebuilt from it and the seed
  2. moe      moe/       an ordinary trainer run on the MoE (checkpoints, metrics.jsonl, final/moe.pt)
  3. merge    merge/     a trainer run where only the per-layer merge weights alpha learn
                         (merge/merge_weights.json: softmax(alpha) per layer);
              final/     the merged dense model, `AutoModelForCausalLM.from_pretrained`-loadable
  phases.json            wall time and summary of each finished phase (a resumed run skips those)
"""

import copy
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import UserError
from pipeline.io.files import write_json_atomic
from pipeline.train.config import TrainConfig, XftOptions
from pipeline.train.engine import init_distributed
from pipeline.train.model import build_model
from pipeline.train.trainer import TrainData, Trainer, prepare_output, seed_everything

MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation: 0 when every expert gets the same share."""
    values = values.float()
    return values.var() / (values.mean() ** 2 + 1e-10)


class SharedExpertMoE(nn.Module):
    """`num_experts` copies of a dense MLP. Expert 0 sees every token with weight 1 - p_max; the router
    (Linear -> tanh -> Linear over the routed experts) picks the top-k, weighted p_max * softmax(p_topk).
    The weights sum to 1, so identical copies compute exactly the dense MLP whatever the router says."""

    def __init__(self, mlp: nn.Module, hidden_size: int, options: XftOptions):
        super().__init__()
        routed = options.num_experts - 1
        reference = next(mlp.parameters())
        self.experts = nn.ModuleList(copy.deepcopy(mlp) for _ in range(options.num_experts))
        self.router = nn.Sequential(nn.Linear(hidden_size, routed, bias=False), nn.Tanh(),
                                    nn.Linear(routed, routed, bias=False)).to(reference)
        self.noise = None
        if options.router_noise:  # std of the routing noise, learned per token; zero at first
            self.noise = nn.Linear(hidden_size, routed, bias=False).to(reference)
            nn.init.zeros_(self.noise.weight)
        self.top_k, self.aux_loss_coef = options.top_k, options.aux_loss_coef
        self.aux_loss: torch.Tensor | None = None  # of the last training forward

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.reshape(-1, hidden.shape[-1])
        logits = self.router(x)
        if self.noise is not None and self.training:
            logits = logits + torch.randn_like(logits) * self.noise(x)
        probs = logits.float().softmax(-1)
        top, chosen = probs.topk(self.top_k, dim=-1)
        p_max = top[:, :1]
        weights = p_max * top.softmax(-1)
        out = (1 - p_max).to(x.dtype) * self.experts[0](x)
        for e, expert in enumerate(self.experts[1:]):
            # every expert runs, on no token if none chose it, so DDP sees all parameters used
            token, slot = (chosen == e).nonzero(as_tuple=True)
            out = out.index_add(0, token, weights[token, slot, None].to(x.dtype) * expert(x[token]))
        if self.training:
            gates = torch.zeros_like(probs).scatter(1, chosen, weights)
            self.aux_loss = self.aux_loss_coef * (_cv_squared(gates.sum(0)) + _cv_squared((gates > 0).sum(0)))
        return out.reshape(hidden.shape)


class LearnableMerge(nn.Module):
    """The MLP with W = lambda * W_shared + (1 - lambda) * sum_i softmax(alpha)_i * W_i for every projection;
    alpha (one weight per routed expert, initialised to ones) is all that learns."""

    def __init__(self, moe: SharedExpertMoE, merge_lambda: float):
        super().__init__()
        self.dense = moe.experts[0]  # the shared expert; its parameters become the merged ones at the end
        self.merge_lambda = merge_lambda
        self.names = [name for name, _ in self.dense.named_parameters()]
        for name in self.names:
            routed = torch.stack([e.get_parameter(name).detach() for e in moe.experts[1:]])
            self.register_buffer(_buffer(name), routed)
        self.alpha = nn.Parameter(torch.ones(len(moe.experts) - 1, device=routed.device))

    def merged(self) -> dict[str, torch.Tensor]:
        w = self.alpha.softmax(0)
        out = {}
        for name in self.names:
            shared, routed = self.dense.get_parameter(name), getattr(self, _buffer(name))
            mix = torch.tensordot(w.to(routed.dtype), routed, dims=1)
            out[name] = self.merge_lambda * shared + (1 - self.merge_lambda) * mix
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.dense, self.merged(), (x,))

    def bake(self) -> nn.Module:
        """The dense MLP holding the merged weights (the module type of the original model)."""
        with torch.no_grad():
            for name, value in self.merged().items():
                self.dense.get_parameter(name).copy_(value)
        return self.dense


def _buffer(name: str) -> str:
    return "routed_" + name.replace(".", "_")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise UserError(f"method xft: {type(model).__name__} has no decoder layers (model.layers)")
    return layers


def upcycle(model: nn.Module, options: XftOptions) -> nn.Module:
    """Every decoder layer's MLP becomes a SharedExpertMoE of copies of it (the caller seeds the routers)."""
    hidden = model.config.get_text_config().hidden_size
    for layer in decoder_layers(model):
        if not all(hasattr(getattr(layer, "mlp", None), p) for p in MLP_PROJECTIONS):
            raise UserError(f"method xft: {type(model).__name__} is not LLaMA-style (decoder layers with an "
                            f"`mlp` holding {', '.join(MLP_PROJECTIONS)})")
        layer.mlp = SharedExpertMoE(layer.mlp, hidden, options)
    return model


def to_learnable_merge(model: nn.Module, merge_lambda: float) -> nn.Module:
    """Replace every MoE by its LearnableMerge and freeze everything but the alphas."""
    for layer in decoder_layers(model):
        layer.mlp = LearnableMerge(layer.mlp, merge_lambda)
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith(".alpha"))
    return model


def bake(model: nn.Module) -> nn.Module:
    """The dense model: each LearnableMerge becomes its MLP with the merged weights."""
    for layer in decoder_layers(model):
        layer.mlp = layer.mlp.bake()
    model.requires_grad_(True)
    return model


class MoeTrainer(Trainer):
    """Phase 2: the trainer on the upcycled model, with the load-balancing loss added to the objective."""

    def __init__(self, config: TrainConfig, deepspeed: dict | None, options: XftOptions):
        super().__init__(config, deepspeed, resume=True, prepare=False)
        self.options = options
        self.aux_sum = 0.0

    def make_model(self, ds_config: dict | None) -> nn.Module:
        return upcycle(build_model(self.config.model, self.data.ids, self.data.seq_len), self.options)

    def objective(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        loss, stats = super().objective(logits, batch)
        aux = sum(m.aux_loss for m in self.engine.module.modules() if isinstance(m, SharedExpertMoE))
        self.aux_sum += float(aux.detach())
        return loss + aux, stats

    def train_step(self, micro: list[dict]) -> dict:
        self.aux_sum = 0.0
        record = super().train_step(micro)
        record["aux_loss"] = self.aux_sum / len(micro)
        return record

    def export(self) -> None:
        """final/moe.pt: the MoE's full state dict (its architecture is base/ + the xft options)."""
        state = self.engine.full_state_dict()
        if self.rank == 0:
            self.paths.final.mkdir(parents=True, exist_ok=True)
            torch.save(state, self.paths.final / "moe.pt")
        self.barrier()


class MergeTrainer(Trainer):
    """Phase 3: only the alphas learn; the export bakes the merge into the original dense architecture."""

    def __init__(self, config: TrainConfig, deepspeed: dict | None, options: XftOptions, moe_state: Path,
                 final: Path):
        super().__init__(config, deepspeed, resume=True, prepare=False)
        self.options, self.moe_state = options, moe_state
        self.paths.final = final

    def make_model(self, ds_config: dict | None) -> nn.Module:
        model = upcycle(build_model(self.config.model, self.data.ids, self.data.seq_len), self.options)
        model.load_state_dict(torch.load(self.moe_state, map_location="cpu", weights_only=True))
        return to_learnable_merge(model, self.options.merge_lambda)

    def export(self) -> None:
        if self.rank == 0:
            weights = [layer.mlp.alpha.detach().softmax(0).tolist() for layer in decoder_layers(self.engine.module)]
            write_json_atomic(self.paths.root / "merge_weights.json", {"softmax_alpha": weights})
            dense = bake(self.engine.module)
            dense.save_pretrained(str(self.paths.final))
            self.data.tokenizer.save_pretrained(str(self.paths.final))
        self.barrier()


def check_deepspeed(deepspeed: dict | None) -> None:
    if deepspeed and deepspeed.get("zero_optimization", {}).get("stage", 0) == 3:
        raise UserError("method xft: use ZeRO stage 0-2 (the merge reads whole expert weights; ZeRO-3 "
                        "partitions them)")


class XftRun:
    """The three phases in order; a resumed run skips finished phases and resumes the current one."""

    def __init__(self, config: TrainConfig, deepspeed: dict | None = None, resume: bool = False,
                 prepare: bool = True, overwrite: bool = False):
        check_deepspeed(deepspeed)
        self.config, self.deepspeed = config, deepspeed
        self.resume, self.prepare, self.overwrite = resume, prepare, overwrite
        self.root = Path(config.output)
        self.phases_file = self.root / "phases.json"

    def run(self) -> dict:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.rank, _, _ = init_distributed(self.deepspeed is not None)
        if self.rank == 0:
            if self.prepare:
                prepare_output(self.config, self.deepspeed, self.resume, self.overwrite)
            for sub in ("moe", "merge"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._barrier()
        done = json.loads(self.phases_file.read_text()) if self.phases_file.exists() else {}
        base, moe_state = self.root / "base", self.root / "moe" / "final" / "moe.pt"
        options = self.config.xft
        if "upcycle" not in done:
            done["upcycle"] = self._timed("upcycle", self._save_base, base)
        if "moe" not in done:
            trainer = MoeTrainer(self._sub_config("moe", base, self.config.train), self.deepspeed, options)
            done["moe"] = self._timed("moe", trainer.run)
        if "merge" not in done:
            schedule = self.config.train.schedule if options.merge_steps else "constant"
            merge = self.config.train.model_copy(update={
                "lr": options.merge_lr, "max_steps": options.merge_steps, "epochs": options.merge_epochs,
                "warmup_steps": 0, "schedule": schedule})
            trainer = MergeTrainer(self._sub_config("merge", base, merge), self.deepspeed, options, moe_state,
                                   self.root / "final")
            done["merge"] = self._timed("merge", trainer.run)
        return {"phases": done}

    def _timed(self, name: str, phase, *args) -> dict:
        """Run a phase and record it as finished (with its wall time) before the next one starts."""
        started = time.perf_counter()
        summary = phase(*args) or {}
        done = json.loads(self.phases_file.read_text()) if self.phases_file.exists() else {}
        result = {**summary, "wall_seconds": round(time.perf_counter() - started, 2)}
        if self.rank == 0:
            write_json_atomic(self.phases_file, {**done, name: result})
        self._barrier()
        return result

    def _save_base(self, base: Path) -> dict:
        """Phase 1: the dense starting model, saved so both later phases rebuild the MoE from it."""
        if self.rank == 0:
            data = TrainData(self.config)
            seed_everything(self.config.train.seed)
            model = build_model(self.config.model, data.ids, data.seq_len)
            model.save_pretrained(str(base))
            data.tokenizer.save_pretrained(str(base))
        self._barrier()
        return {"base": str(base)}

    def _sub_config(self, phase: str, base: Path, train) -> TrainConfig:
        model = self.config.model.model_copy(update={"name": str(base)})
        return self.config.model_copy(update={"output": str(self.root / phase), "model": model, "train": train})

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

