"""Records -> Examples: SFT conversations through a chat template (loss on assistant turns and their
end token only), pre-training rows as they are. Tokenizers load offline from a path."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.errors import UserError
from pipeline.train.packing import Example

ROLE_ALIASES = {"human": "user", "bot": "assistant"}  # MFTCoder's roles
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


def load_tokenizer(spec: str):
    """A tokenizer directory, a `tokenizer.json` file (e.g. from `pipeline train-tokenizer`) or a hub id."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(spec)
    bare = path / "tokenizer.json" if path.is_dir() and not (path / "tokenizer_config.json").exists() else path
    try:
        if bare.is_file():  # a tokenizer.json alone: what `tokenizers` writes
            return PreTrainedTokenizerFast(tokenizer_file=str(bare))
        return AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as e:
        raise UserError(f"{spec}: cannot load tokenizer ({str(e).splitlines()[0]})") from None


@dataclass(frozen=True)
class TokenIds:
    vocab_size: int
    eos_id: int
    pad_id: int
    bos_id: int | None = None


def token_ids(tokenizer, eos_id: int | None = None, pad_id: int | None = None) -> TokenIds:
    """EOS/PAD from the arguments (meta.json), else the tokenizer's, else a known end-of-text token."""
    vocab = tokenizer.get_vocab()
    eos = eos_id if eos_id is not None else tokenizer.eos_token_id
    if eos is None:
        eos = next((vocab[t] for t in EOS_CANDIDATES if t in vocab), None)
    if eos is None:
        raise UserError(f"tokenizer {tokenizer.name_or_path!r} has no end-of-text token (one of {EOS_CANDIDATES})")
    pad = pad_id if pad_id is not None else tokenizer.pad_token_id
    return TokenIds(len(tokenizer), eos, eos if pad is None else pad, tokenizer.bos_token_id)


def read_meta(specs: list[str]) -> dict:
    """The meta.json beside pre-training shards; every shard directory must agree."""
    metas = {}
    for spec in specs:
        folder = Path(spec) if Path(spec).is_dir() else Path(spec).parent
        path = folder / "meta.json"
        try:
            metas[str(path)] = json.loads(path.read_text())
        except OSError:
            raise UserError(f"{path}: pre-training shards need a meta.json beside them") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: malformed JSON ({e})") from None
    first_path, first = next(iter(metas.items()))
    for key in ("tokenizer", "eos_id", "pad_id", "seq_len"):
        if key not in first:
            raise UserError(f"{first_path}: missing key {key!r}")
        for path, meta in metas.items():
            if meta.get(key) != first[key]:
                raise UserError(f"{path}: {key} differs from {first_path}")
    tokenizer = first["tokenizer"]
    if (Path(first_path).parent / tokenizer).exists():
        tokenizer = str((Path(first_path).parent / tokenizer).resolve())
    return {**first, "tokenizer": tokenizer}


class ChatEncoder:
    """SFT records (rows with `split == split`) -> Examples. The builtin template renders each turn as
    `<|role|>\\n{content}\\n` and an assistant turn as `<|assistant|>\\n{content}<EOS>`; `template="tokenizer"`
    uses the tokenizer's own chat template, finding assistant spans by rendering growing prefixes."""

    def __init__(self, tokenizer, ids: TokenIds, tasks: list[str], max_len: int, split: str | None = "train",
                 template: str = "builtin"):
        self.tokenizer, self.ids, self.max_len, self.split, self.template = tokenizer, ids, max_len, split, template
        self.task_index = {t: i for i, t in enumerate(tasks)}
        if template == "tokenizer" and not getattr(tokenizer, "chat_template", None):
            raise UserError(f"tokenizer {tokenizer.name_or_path!r} has no chat template (use chat_template: builtin)")

    def __call__(self, table: pa.Table) -> list[Example | None]:
        tasks = table.column("task").to_pylist()
        splits = table.column("split").to_pylist()
        conversations = table.column("messages").to_pylist()
        keep = [self.split is None or s == self.split for s in splits]
        segments = [self.segments(m) if k and m else [] for k, m in zip(keep, conversations, strict=True)]
        flat = [text for segs in segments for text, _ in segs]
        encoded = iter(self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
        out: list[Example | None] = []
        for task, segs in zip(tasks, segments, strict=True):
            tokens, mask = [], []
            for _, loss in segs:
                ids = next(encoded)
                if loss == "eos":
                    ids = [*ids, self.ids.eos_id]
                tokens += ids
                mask += [bool(loss)] * len(ids)
            tokens, mask = tokens[:self.max_len], mask[:self.max_len]
            if not any(mask[1:]):  # nothing to learn (not this split, or truncated away)
                out.append(None)
                continue
            out.append(Example(np.asarray(tokens, dtype=np.int64), np.asarray(mask), self.task_index[task],
                               (len(tokens),)))
        return out

    def segments(self, messages: list[dict]) -> list[tuple[str, bool | str]]:
        """(text, loss) pieces of a conversation; loss "eos" = a target followed by the EOS token."""
        messages = [{"role": ROLE_ALIASES.get(m["role"], m["role"]), "content": m["content"] or ""} for m in messages]
        if self.template == "builtin":
            out: list[tuple[str, bool | str]] = []
            for m in messages:
                if m["role"] == "assistant":
                    out += [("<|assistant|>\n", False), (m["content"], "eos")]
                else:
                    out.append((f"<|{m['role']}|>\n{m['content']}\n", False))
            return out
        return self._template_segments(messages)

    def _template_segments(self, messages: list[dict]) -> list[tuple[str, bool | str]]:
        def render(upto: int, prompt: bool = False) -> str:
            if upto == 0 and not prompt:
                return ""
            return self.tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=prompt)

        out: list[tuple[str, bool | str]] = []
        done = ""
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                header = render(i, prompt=True)
                out.append((header[len(done):], False))
                done = header
            text = render(i + 1)
            if not text.startswith(done):
                raise ValueError("the tokenizer's chat template is not prefix-stable; use chat_template: builtin")
            out.append((text[len(done):], m["role"] == "assistant"))
            done = text
        return out


class PretrainEncoder:
    """Pre-training rows -> Examples: every token of a document is a target (except its first)."""

    def __call__(self, table: pa.Table) -> list[Example]:
        ids, lens = table.column("input_ids").combine_chunks(), table.column("doc_lens").combine_chunks()
        values, len_values = ids.flatten().to_numpy().astype(np.int64), lens.flatten().to_numpy()
        offsets = ids.offsets.to_numpy() - ids.offsets[0].as_py()
        len_offsets = lens.offsets.to_numpy() - lens.offsets[0].as_py()
        out = []
        for i in range(len(table)):
            doc_lens = tuple(int(n) for n in len_values[len_offsets[i]:len_offsets[i + 1]])
            tokens = values[offsets[i]:offsets[i] + sum(doc_lens)]
            out.append(Example(tokens, np.ones(len(tokens), dtype=bool), 0, doc_lens))
        return out
