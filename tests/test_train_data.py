"""The training data path on real shards: exactly-once streaming across ranks x workers, exact resume
positions, chat masks, packing with attention/position reset (checked on a real tiny-llama), losses."""

from collections import Counter, defaultdict
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from train_shards import EOS, sft_rows, train_tokenizer, write_pretrain_shards, write_sft_shards

from pipeline.errors import UserError
from pipeline.train.config import ModelConfig
from pipeline.train.data import (
    PRETRAIN_COLUMNS,
    SFT_COLUMNS,
    Position,
    ShardStream,
    TrainStream,
    list_units,
    make_loader,
)
from pipeline.train.encode import ChatEncoder, PretrainEncoder, load_tokenizer, token_ids
from pipeline.train.loss import normalised_weights, task_loss
from pipeline.train.model import build_model
from pipeline.train.packing import IGNORE, Example, Packer, Row, collate


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    """61 pre-training rows in 3 files of row groups of 5 (so nothing divides 2 ranks x 2 workers) and
    SFT shards of 2 real tasks."""
    root = tmp_path_factory.mktemp("shards")
    tokenizer = train_tokenizer(root / "tok")
    pretrain = write_pretrain_shards(root / "pretrain", tokenizer, seq_len=64, rows=61, files=3, row_group_size=5)
    sft = root / "sft"
    write_sft_shards(sft, sft_rows(60), files=3, row_group_size=7)
    return {"tokenizer": tokenizer, "pretrain": pretrain, "sft": sft}


def pretrain_stream(shards, rank, micro_batch_size=1, positions=None, rotation=0, buffer=8):
    units = list_units([str(shards["pretrain"])], "pretrain")
    return TrainStream(units, PRETRAIN_COLUMNS, PretrainEncoder(), lambda: Packer(64), rank=rank, world_size=2,
                       num_workers=2, seed=7, buffer=buffer, micro_batch_size=micro_batch_size, seq_len=64, pad_id=0,
                       positions=positions, rotation=rotation)


def all_rows(shards) -> list[tuple]:
    files = sorted(Path(shards["pretrain"]).glob("*.parquet"))
    return [tuple(r) for f in files for r in pq.read_table(f).column("input_ids").to_pylist()]


def test_every_record_once_per_epoch_across_two_ranks_and_two_workers(shards):
    expected = Counter(all_rows(shards))
    assert len(expected) == 61  # distinct rows: a Counter comparison is exact
    seen: dict[int, Counter] = defaultdict(Counter)
    orders: dict[int, list] = defaultdict(list)
    for rank in (0, 1):
        # real dataloader worker processes; one row per batch so each batch's epoch is its row's
        for batch in islice(make_loader(pretrain_stream(shards, rank), num_workers=2), 70):
            row = tuple(batch["input_ids"][0].tolist())
            seen[batch["epoch"]][row] += 1
            orders[batch["epoch"]].append(row)
    assert seen[0] == expected
    assert seen[1] == expected
    assert orders[0] != orders[1]  # each epoch is shuffled anew


def test_stream_slices_partition_the_epoch_whatever_the_stream_count(shards):
    units = list_units([str(shards["pretrain"])], "pretrain")
    for streams in (1, 3, 4, 7):
        rows = Counter()
        for s in range(streams):
            stream = ShardStream(units, PRETRAIN_COLUMNS, s, streams, seed=3, buffer=6)
            for _, table in stream.windows(Position(), epochs=1):
                rows.update(tuple(r) for r in table.column("input_ids").to_pylist())
        assert rows == Counter(all_rows(shards))


def sft_stream(shards, rank, positions=None, rotation=0):
    tokenizer = load_tokenizer(str(shards["tokenizer"]))
    encoder = ChatEncoder(tokenizer, token_ids(tokenizer), ["codegen", "docstring"], max_len=256)
    units = list_units([str(shards["sft"])], "sft")
    return TrainStream(units, SFT_COLUMNS, encoder, lambda: Packer(256), rank=rank, world_size=2, num_workers=2,
                       seed=11, buffer=10, micro_batch_size=2, seq_len=256, pad_id=0, positions=positions,
                       rotation=rotation)


def test_resume_from_saved_positions_gives_the_same_next_batches(shards):
    """Packed SFT batches through 2 real workers: stop after 7 batches (an odd number, so the next batch
    comes from worker 1), rebuild the loader from the saved positions, get exactly the same batches."""
    for rank in (0, 1):
        reference = [b["input_ids"] for b in islice(make_loader(sft_stream(shards, rank), 2), 20)]
        positions = [Position()] * 2
        for batch in islice(make_loader(sft_stream(shards, rank), 2), 7):
            positions[batch["slot"]] = batch["position"]
        resumed = make_loader(sft_stream(shards, rank, positions=positions, rotation=7 % 2), 2)
        for expected, batch in zip(reference[7:], resumed, strict=False):
            assert torch.equal(expected, batch["input_ids"])
        assert any(p.index % 10 for p in positions)  # resumed from inside a shuffle-buffer window


def test_chat_encoding_trains_only_on_assistant_turns_and_eos(shards):
    tokenizer = load_tokenizer(str(shards["tokenizer"]))
    ids = token_ids(tokenizer)
    assert ids.eos_id == tokenizer.convert_tokens_to_ids(EOS)
    encoder = ChatEncoder(tokenizer, ids, ["a"], max_len=512)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "human", "content": "def f(x): return x"},
                {"role": "bot", "content": "Identity."}, {"role": "user", "content": "And g?"},
                {"role": "assistant", "content": "Also identity."}]
    table = pa.table({"task": ["a", "a"], "split": ["train", "valid"], "messages": [messages, messages]})
    example, skipped = encoder(table)
    assert skipped is None  # the valid row is not a training example
    targets = tokenizer.decode(example.tokens[example.loss_mask])
    assert targets == f"Identity.{EOS}Also identity.{EOS}"
    text = tokenizer.decode(example.tokens)
    assert text.startswith("<|system|>\nBe brief.\n<|user|>\ndef f(x)") and "<|assistant|>\nIdentity." in text


def test_tokenizer_chat_template_masks_assistant_spans(shards):
    tokenizer = load_tokenizer(str(shards["tokenizer"]))
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}" + EOS +
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    encoder = ChatEncoder(tokenizer, token_ids(tokenizer), ["a"], max_len=512, template="tokenizer")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    (example,) = encoder(pa.table({"task": ["a"], "split": ["train"], "messages": [messages]}))
    assert tokenizer.decode(example.tokens[example.loss_mask]) == f"Hello{EOS}"
    assert tokenizer.decode(example.tokens) == f"<|user|>Hi{EOS}<|assistant|>Hello{EOS}"


def test_collate_resets_positions_and_never_predicts_across_documents():
    a = Example(np.array([5, 6, 7, 8]), np.array([False, False, True, True]), task=1, doc_lens=(4,))
    b = Example(np.array([9, 10, 11]), np.array([False, True, True]), task=0, doc_lens=(3,))
    packer = Packer(8)
    assert packer.add(a, Position(0, 0)) == []
    assert packer.add(b, Position(0, 1)) == []
    (row,) = packer.add(Example(np.array([1, 2]), np.array([False, True]), 0, (2,)), Position(0, 2))
    assert row.start == Position(0, 0) and packer.pending.start == Position(0, 2)  # the third did not fit
    batch = collate([row], 8, pad_id=0)
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 10, 11, 0]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
    assert batch["labels"][0].tolist() == [IGNORE, 7, 8, IGNORE, 10, 11, IGNORE, IGNORE]
    assert batch["task_ids"][0].tolist() == [-1, 1, 1, -1, 0, 0, -1, -1]
    assert batch["sample_ids"][0].tolist() == [-1, 0, 0, -1, 1, 1, -1, -1]


def test_pretrain_rows_keep_their_documents(shards):
    table = pq.read_table(sorted(Path(shards["pretrain"]).glob("*.parquet"))[0])
    examples = PretrainEncoder()(table.slice(2, 3))
    for example, row, lens in zip(examples, table.column("input_ids").to_pylist()[2:5],
                                  table.column("doc_lens").to_pylist()[2:5], strict=True):
        assert example.tokens.tolist() == row[:sum(lens)] and example.doc_lens == tuple(lens)
    batch = collate([Row([e], Position()) for e in examples], 64, pad_id=0)
    for b, example in enumerate(examples):
        ends = np.cumsum(example.doc_lens) - 1
        assert (batch["labels"][b, ends] == IGNORE).all()  # a document's last token predicts nothing
        assert (batch["position_ids"][b, ends - np.array(example.doc_lens) + 1] == 0).all()


def test_packed_documents_see_only_themselves_in_tiny_llama(shards):
    """The attention reset is real: a packed row's logits equal those of each document run alone."""
    tokenizer = load_tokenizer(str(shards["tokenizer"]))
    ids = token_ids(tokenizer)
    torch.manual_seed(0)
    model = build_model(ModelConfig(), ids, 256).eval()
    docs = [tokenizer(text)["input_ids"] for text in ("def f(x):\n    return x\n", "import os\nos.sep", "x = 1")]
    examples = [Example(np.array(d), np.ones(len(d), dtype=bool), 0, (len(d),)) for d in docs]
    batch = collate([Row(examples, Position())], 64, ids.pad_id)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for d in docs:
            alone = model(input_ids=torch.tensor([d])).logits[0]
            assert (packed[start:start + len(d)] - alone).abs().max() < 1e-4
            start += len(d)
        unmasked = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    assert (unmasked[len(docs[0]):start] - packed[len(docs[0]):start]).abs().max() > 1e-2  # the reset matters


def test_mft_losses_follow_their_definitions():
    torch.manual_seed(0)
    examples = [Example(np.arange(1, 7), np.ones(6, dtype=bool), 0, (6,)),  # task 0: 5 targets
                Example(np.arange(1, 4), np.ones(3, dtype=bool), 1, (3,)),  # task 1: 2 targets
                Example(np.arange(2, 5), np.ones(3, dtype=bool), 1, (3,))]  # task 1: 2 targets
    batch = collate([Row(examples[:1], Position()), Row(examples[1:], Position())], 8, pad_id=0)
    logits = torch.randn(2, 8, 16)
    per_token = F.cross_entropy(logits.reshape(-1, 16), batch["labels"].reshape(-1), reduction="none",
                                ignore_index=IGNORE).reshape(2, 8)
    t0, s1, s2 = per_token[0, :5], per_token[1, :2], per_token[1, 3:5]
    t1 = torch.cat([s1, s2])
    equal = torch.ones(2)
    token, stats = task_loss(logits, batch, equal, "token")
    assert torch.isclose(token, torch.cat([t0, t1]).mean())
    assert torch.allclose(stats, torch.tensor([t0.sum(), t1.sum(), 5.0, 4.0], dtype=torch.float32))
    assert torch.isclose(task_loss(logits, batch, equal, "mft")[0], (t0.mean() + t1.mean()) / 2)
    assert torch.isclose(task_loss(logits, batch, equal, "sample")[0], (t0.mean() + s1.mean() + s2.mean()) / 3)
    weights = normalised_weights(["a", "b"], {"a": 3.0})  # -> 1.5, 0.5
    assert torch.allclose(weights, torch.tensor([1.5, 0.5]))
    assert torch.isclose(task_loss(logits, batch, weights, "mft")[0], (1.5 * t0.mean() + 0.5 * t1.mean()) / 2)
    # a batch of task 0 only: its weight still scales the loss (MFTCoder's weights would cancel out)
    only = collate([Row(examples[:1], Position())], 8, pad_id=0)
    assert torch.isclose(task_loss(logits[:1], only, weights, "mft")[0], 1.5 * t0.mean())


def test_shards_with_the_wrong_schema_are_user_errors(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"task": ["a"], "split": ["train"], "messages": ["not a list"]}), bad)
    with pytest.raises(UserError, match="bad.parquet: column 'messages' must be list<struct<role, content>>"):
        list_units([str(bad)], "sft")
    with pytest.raises(UserError, match="column 'input_ids' must be list<uint32>"):
        list_units([str(bad)], "pretrain")
    with pytest.raises(UserError, match="shard path not found"):
        list_units([str(tmp_path / "missing")], "sft")
