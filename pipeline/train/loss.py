"""MFTCoder's multi-task losses, with per-task weights that are actually applied.

- `mft` (MFTCoder "case3", the default): the token-mean loss of each task present in the micro-batch,
  averaged over those tasks, so a task with short answers or few samples is not drowned out.
- `sample`: the token-mean loss of each sample (document), averaged over samples.
- `token`: the plain mean over all target tokens.
Task weights are normalised to mean 1 over all tasks, so they scale a task's contribution without
changing the loss scale; with all weights equal every variant is exactly MFTCoder's.
"""

import torch
import torch.nn.functional as F

from pipeline.train.packing import IGNORE

LOSSES = ("mft", "sample", "token")


def normalised_weights(tasks: list[str], weights: dict[str, float]) -> torch.Tensor:
    w = torch.tensor([float(weights.get(t, 1.0)) for t in tasks])
    return w / w.mean()


def task_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], weights: torch.Tensor,
              kind: str = "mft") -> tuple[torch.Tensor, torch.Tensor]:
    """The objective and, detached, per-task [loss sums..., target counts...] (summable across ranks)."""
    labels = batch["labels"].reshape(-1)
    valid = labels != IGNORE
    every = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels, ignore_index=IGNORE, reduction="none")
    losses = every[valid]  # gathering the (few) losses, not the (vocab-wide) logits
    tasks = batch["task_ids"].reshape(-1)[valid]
    k = weights.numel()
    weights = weights.to(losses.device)
    task_sum = losses.new_zeros(k).index_add_(0, tasks, losses)
    task_count = losses.new_zeros(k).index_add_(0, tasks, torch.ones_like(losses))
    stats = torch.cat([task_sum.detach(), task_count])
    if not valid.any():
        return logits.sum() * 0.0, stats
    if kind == "token":
        loss = (weights[tasks] * losses).sum() / losses.numel()
    elif kind == "mft":
        present = task_count > 0
        loss = (weights[present] * task_sum[present] / task_count[present]).sum() / present.sum()
    elif kind == "sample":
        samples = batch["sample_ids"].reshape(-1)[valid]
        n = int(samples.max()) + 1
        sample_sum = losses.new_zeros(n).index_add_(0, samples, losses)
        sample_count = losses.new_zeros(n).index_add_(0, samples, torch.ones_like(losses))
        sample_task = torch.zeros(n, dtype=torch.long, device=losses.device).index_copy_(0, samples, tasks)
        present = sample_count > 0
        loss = (weights[sample_task[present]] * sample_sum[present] / sample_count[present]).sum() / present.sum()
    else:
        raise ValueError(f"unknown loss {kind!r} (valid: {', '.join(LOSSES)})")
    return loss, stats
