"""Examples -> rows -> batch tensors.

Packed documents never see each other: positions restart at every document, which transformers
turns into a block-diagonal causal mask (its packed-sequence detection, also used by FlashAttention
varlen on GPU), and no label crosses a document boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from pipeline.train.data import Position

IGNORE = -100


@dataclass
class Example:
    """Tokens of one record. `loss_mask[i]` says token i is a target (predicted from tokens before it).
    `doc_lens` cuts it into documents (one for an SFT conversation, several for a pre-training row)."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    task: int
    doc_lens: tuple[int, ...]


@dataclass
class Row:
    examples: list[Example]
    start: Position  # stream position of the first example

    @property
    def length(self) -> int:
        return sum(len(e.tokens) for e in self.examples)


class Packer:
    """Greedy in-order packing of whole examples into rows of at most `seq_len` tokens
    (`seq_len=None`: one example per row, padded at collate time)."""

    def __init__(self, seq_len: int | None):
        self.seq_len = seq_len
        self.pending: Row | None = None

    def add(self, example: Example, position: Position) -> list[Row]:
        if self.seq_len is None:
            return [Row([example], position)]
        done = []
        if self.pending and self.pending.length + len(example.tokens) > self.seq_len:
            done.append(self.pending)
            self.pending = None
        if self.pending is None:
            self.pending = Row([example], position)
        else:
            self.pending.examples.append(example)
        if self.pending.length >= self.seq_len:
            done.append(self.pending)
            self.pending = None
        return done

    def flush(self) -> list[Row]:
        done, self.pending = ([self.pending] if self.pending else []), None
        return done


def collate(rows: list[Row], seq_len: int | None, pad_id: int) -> dict[str, torch.Tensor]:
    """`labels[b, t]` is the target of position t (already shifted) or -100; `task_ids`/`sample_ids` name
    the task and the document of each target (-1 elsewhere) for the per-task and per-sample losses."""
    length = seq_len or max(r.length for r in rows)
    shape = (len(rows), length)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    position_ids = np.zeros(shape, dtype=np.int64)
    labels = np.full(shape, IGNORE, dtype=np.int64)
    task_ids = np.full(shape, -1, dtype=np.int64)
    sample_ids = np.full(shape, -1, dtype=np.int64)
    sample = 0
    for b, row in enumerate(rows):
        cursor = 0
        for example in row.examples:
            tokens, mask = example.tokens, example.loss_mask
            input_ids[b, cursor:cursor + len(tokens)] = tokens
            at = 0
            for doc_len in example.doc_lens:
                lo, hi = cursor + at, cursor + at + doc_len
                position_ids[b, lo:hi] = np.arange(doc_len)
                targets = np.where(mask[at + 1:at + doc_len], tokens[at + 1:at + doc_len], IGNORE)
                labels[b, lo:hi - 1] = targets
                task_ids[b, lo:hi - 1] = np.where(targets != IGNORE, example.task, -1)
                sample_ids[b, lo:hi - 1] = np.where(targets != IGNORE, sample, -1)
                sample += 1
                at += doc_len
            cursor += len(tokens)
        position_ids[b, cursor:] = np.arange(length - cursor)  # padding: a block of its own
    return {"input_ids": torch.from_numpy(input_ids), "position_ids": torch.from_numpy(position_ids),
            "labels": torch.from_numpy(labels), "task_ids": torch.from_numpy(task_ids),
            "sample_ids": torch.from_numpy(sample_ids)}
