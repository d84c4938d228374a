"""Training shards in the SPEC's formats, made from real stdlib code at test time: a byte-level BPE
tokenizer trained here, SFT conversations (two tasks mined from stdlib functions with `ast`) and
packed pre-training rows with `meta.json`. Used by the training tests and bench/bench_train.py."""

import ast
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import stdlib_files

EOS = "<|endoftext|>"
SPECIALS = [EOS, "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>", "<file_sep>"]
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema([("id", pa.string()), ("task", pa.string()), ("messages", MESSAGES), ("source", pa.string()),
                        ("split", pa.string())])
PRETRAIN_SCHEMA = pa.schema([("input_ids", pa.list_(pa.uint32())), ("doc_lens", pa.list_(pa.uint32()))])


def train_tokenizer(folder: Path, vocab_size: int = 1024, files: int = 60) -> Path:
    """A byte-level BPE on stdlib code, saved as tokenizer.json (what `tokenizers` writes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator((p.read_text(errors="replace") for p in stdlib_files(files)), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def functions(limit: int, max_chars: int = 1200, skip_files: int = 0) -> list[tuple[str, str, str]]:
    """(source without docstring, docstring, signature line) of documented stdlib functions."""
    out = []
    for path in stdlib_files(2000, skip=skip_files):
        text = path.read_text(errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or not ast.get_docstring(node):
                continue
            source = ast.get_source_segment(text, node)
            if not source or len(source) > max_chars:
                continue
            doc = ast.get_docstring(node)
            body = "\n".join(line for line in source.splitlines() if doc.splitlines()[0] not in line)
            out.append((body, doc, source.splitlines()[0]))
            if len(out) == limit:
                return out
    return out


def sft_rows(per_task: int, valid_every: int = 10) -> list[dict]:
    """Two real tasks: write the function for a docstring, write the docstring for a function."""
    rows = []
    for i, (body, doc, signature) in enumerate(functions(per_task)):
        split = "valid" if i % valid_every == valid_every - 1 else "train"
        rows.append({"id": f"codegen-{i}", "task": "codegen", "source": "python-stdlib", "split": split,
                     "messages": [{"role": "system", "content": "You write Python."},
                                  {"role": "user", "content": f"{signature}\n\"\"\"{doc}\"\"\""},
                                  {"role": "assistant", "content": body}]})
        rows.append({"id": f"docstring-{i}", "task": "docstring", "source": "python-stdlib", "split": split,
                     "messages": [{"role": "human", "content": f"Document this function:\n{body}"},
                                  {"role": "bot", "content": doc}]})
    return rows


def write_sft_shards(folder: Path, rows: list[dict], files: int, row_group_size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = folder / f"sft-{i:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[i::files], schema=SFT_SCHEMA), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def write_pretrain_shards(folder: Path, tokenizer_json: Path, seq_len: int, rows: int, files: int,
                          row_group_size: int, skip_files: int = 0) -> Path:
    """Stdlib files tokenized, EOS after each, concatenated and cut into rows of exactly seq_len tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    eos = tokenizer.token_to_id(EOS)
    sequences, doc_lens, current, lens = [], [], [], []
    for path in stdlib_files(4000, skip=skip_files):
        tokens = tokenizer.encode(path.read_text(errors="replace")).ids + [eos]
        while tokens:
            take = tokens[:seq_len - len(current)]
            tokens = tokens[len(take):]
            current += take
            lens.append(len(take))
            if len(current) == seq_len:
                sequences.append(current)
                doc_lens.append(lens)
                current, lens = [], []
                if len(sequences) == rows:
                    break
        if len(sequences) == rows:
            break
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        table = pa.table({"input_ids": sequences[i::files], "doc_lens": doc_lens[i::files]}, schema=PRETRAIN_SCHEMA)
        pq.write_table(table, folder / f"pretrain-{i:05d}.parquet", row_group_size=row_group_size)
    tokenizer_copy = folder / "tokenizer.json"
    tokenizer_copy.write_bytes(tokenizer_json.read_bytes())
    (folder / "meta.json").write_text(json.dumps({"tokenizer": "tokenizer.json", "eos_id": eos, "pad_id": eos,
                                                  "seq_len": seq_len, "fim": {"rate": 0.0}}))
    return folder
