"""Tokenizers for the training shards: a byte-level BPE trained on the clean corpus with StarCoder's
special tokens (`pipeline train-tokenizer`), or any Hugging Face tokenizer by path or name."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.io.files import commit, tmp_name, write_json_atomic
from pipeline.shards.corpus import iter_corpus

EOS = "<|endoftext|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"
REPO_NAME, FILE_SEP = "<repo_name>", "<file_sep>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SPECIAL_TOKENS = [EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP]  # EOS is id 0, as in StarCoder


@dataclass
class CodeTokenizer:
    """A fast tokenizer that encodes text pieces only (special tokens inside code stay text) and knows
    the ids the shards need."""

    backend: object  # tokenizers.Tokenizer
    name_or_path: str
    eos_id: int
    pad_id: int

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens added, in one parallel batch call."""
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)


def copy_tokenizer(name_or_path: str, folder: Path) -> str:
    """Copy a local tokenizer's files into `folder` (shards then carry their tokenizer); returns what
    meta.json names: the folder's name, or the Hugging Face name of a tokenizer that is not local."""
    path = Path(name_or_path)
    if not path.exists():
        return name_or_path
    folder.mkdir(parents=True, exist_ok=True)
    sources = [path] if path.is_file() else [path / n for n in TOKENIZER_FILES if (path / n).is_file()]
    for source in sources:
        target = folder / ("tokenizer.json" if path.is_file() else source.name)
        target.write_bytes(source.read_bytes())
    return folder.name


def _token_text(value) -> str | None:
    """tokenizer_config.json holds special tokens as strings or as {"content": ...} objects."""
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(name_or_path: str) -> CodeTokenizer:
    """A tokenizer.json file, a directory holding one (with tokenizer_config.json), or a Hugging Face
    tokenizer name/directory loaded with transformers (names need the Hub or its local cache)."""
    from tokenizers import Tokenizer

    path = Path(name_or_path)
    config: dict = {}
    if path.is_file():
        backend = Tokenizer.from_file(str(path))
    elif (path / "tokenizer.json").is_file():
        backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        if (path / "tokenizer_config.json").is_file():
            config = json.loads((path / "tokenizer_config.json").read_text())
    else:
        backend, config = _transformers_tokenizer(name_or_path)
    backend.encode_special_tokens = True  # "<|endoftext|>" written in a file is text, not the EOS token
    eos = _token_text(config.get("eos_token")) or EOS
    pad = _token_text(config.get("pad_token")) or eos
    eos_id, pad_id = backend.token_to_id(eos), backend.token_to_id(pad)
    if eos_id is None:
        raise UserError(f"{name_or_path}: the tokenizer has no end-of-text token ({eos!r})")
    return CodeTokenizer(backend, str(name_or_path), eos_id, pad_id if pad_id is not None else eos_id)


def _transformers_tokenizer(name: str):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError(f"{name}: not a tokenizer file or directory (install transformers to load Hub names)") from None
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(f"{name}: cannot load this tokenizer ({str(e).splitlines()[0]})") from None
    if not getattr(tok, "is_fast", False):
        raise UserError(f"{name}: only fast (Rust) tokenizers are supported")
    return tok.backend_tokenizer, {"eos_token": tok.eos_token, "pad_token": tok.pad_token}


def corpus_texts(corpus: list[str], max_bytes: int | None) -> Iterator[str]:
    """The corpus's contents in order, stopping after about `max_bytes` of text."""
    seen = 0
    for batch in iter_corpus(corpus, ["content"]):
        for text in batch.column(0).to_pylist():
            if not text:
                continue
            yield text
            seen += len(text)
            if max_bytes is not None and seen >= max_bytes:
                return


def train_tokenizer(corpus: list[str], output: Path, vocab_size: int = 32768, min_frequency: int = 2,
                    max_bytes: int | None = None) -> dict:
    """Byte-level BPE (digits split one by one, as StarCoder) saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    counted = {"files": 0, "chars": 0}

    def texts() -> Iterator[str]:
        for text in corpus_texts(corpus, max_bytes):
            counted["files"] += 1
            counted["chars"] += len(text)
            yield text

    tokenizer.train_from_iterator(texts(), trainer)
    if counted["files"] == 0:
        raise UserError(f"{', '.join(corpus)}: no text to train a tokenizer on")
    output.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(tmp_name(output / "tokenizer.json")))
    commit(tmp_name(output / "tokenizer.json"), output / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS, "unk_token": EOS,
              "pad_token": FIM_PAD, "additional_special_tokens": SPECIAL_TOKENS[1:], "clean_up_tokenization_spaces":
              False, "model_max_length": 10**9}
    write_json_atomic(output / "tokenizer_config.json", config)
    write_json_atomic(output / "special_tokens_map.json", {k: config[k] for k in (
        "eos_token", "bos_token", "unk_token", "pad_token", "additional_special_tokens")})
    return {"vocab_size": tokenizer.get_vocab_size(), "trained_on_files": counted["files"],
            "trained_on_chars": counted["chars"], "special_tokens": SPECIAL_TOKENS}
