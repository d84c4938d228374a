"""Training data commands: `train-tokenizer`, `mine-tasks`, `sft-mix`, `pretrain-shards`."""

import json
import shutil
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from pipeline.errors import UserError

MARKER = ".codecurate"  # names the command that made a directory, so --overwrite never deletes anything else


def prepare_output(out: Path, command: str, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        marker = out / MARKER
        if not overwrite:
            raise UserError(f"{out}: output directory is not empty; use --overwrite or another --output")
        if not marker.is_file() or marker.read_text().strip() != command:
            raise UserError(f"{out}: not an output of `pipeline {command}`; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(command)


def _counts_table(title: str, rows: dict) -> Table:
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in rows.items():
        table.add_row(str(key), f"{value:,}" if isinstance(value, int) else str(value))
    return table


def _train_tokenizer(args) -> int:
    from pipeline.shards.corpus import corpus_files
    from pipeline.shards.tokenizer import train_tokenizer

    corpus_files(args.corpus)  # a missing or wrong input is reported before anything is written
    out = Path(args.output)
    prepare_output(out, "train-tokenizer", args.overwrite)
    info = train_tokenizer(args.corpus, out, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                           max_bytes=args.max_bytes)
    Console().print(f"tokenizer: {out} (vocab {info['vocab_size']:,}, trained on {info['trained_on_files']:,} "
                    f"files, {info['trained_on_chars'] / 1e6:,.1f} M characters)")
    return 0


def _mine_tasks(args) -> int:
    from pipeline.shards.corpus import corpus_files
    from pipeline.shards.mine import TASKS, MineOptions, Miner

    try:
        options = MineOptions(seed=args.seed, tasks=args.tasks or list(TASKS),
                              **({"languages": args.languages} if args.languages else {}))
    except ValidationError as e:
        raise UserError(f"--languages: {e.errors()[0]['msg']}") from None
    corpus_files(args.corpus)
    out = Path(args.output)
    prepare_output(out, "mine-tasks", args.overwrite)
    stats = Miner(options).run(args.corpus, out)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    Console().print(_counts_table(f"mined tasks: {out}", {**stats.pop("records"), **stats}))
    return 0


def _sft_mix(args) -> int:
    from pipeline.shards.sft import SftMixer, load_sft_config

    config = load_sft_config(args.config)
    if args.output:
        config.output = str(Path(args.output).resolve())
    out = Path(config.output)
    mixer = SftMixer(config, args.config, Console(stderr=True), progress=not args.quiet)  # checks the sources
    prepare_output(out, "sft-mix", args.overwrite)
    stats = mixer.run()
    table = Table(title=f"SFT mix: {out}")
    for column in ("task", "read", "unique", "train", "valid", "train tokens"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, s in stats["tasks"].items():
        tokens = s.get("tokens", {}).get("train")
        table.add_row(task, f"{s['read']:,}", f"{s.get('unique', 0):,}", f"{s.get('train', 0):,}",
                      f"{s.get('valid', 0):,}", "n/a" if tokens is None else f"{tokens:,}")
    Console().print(table)
    return 0


def _pretrain_shards(args) -> int:
    from pipeline.shards.corpus import corpus_files
    from pipeline.shards.pretrain import PretrainConfig, build_shards
    from pipeline.shards.settings import load_settings
    from pipeline.shards.tokenizer import load_tokenizer

    config = load_settings(args.config, PretrainConfig, "input, output, tokenizer, seq_len, documents, fim")
    for key in ("output", "tokenizer"):
        value = getattr(args, key)
        if value is not None:
            setattr(config, key, str(Path(value).resolve()) if Path(value).exists() or key == "output" else value)
    if args.input:
        config.input = args.input
    tokenizer = load_tokenizer(config.tokenizer)
    corpus_files(config.input)
    out = Path(config.output)
    prepare_output(out, "pretrain-shards", args.overwrite)
    meta = build_shards(config, tokenizer)
    totals = meta["totals"]
    Console().print(_counts_table(f"pre-training shards: {out} (seq_len {config.seq_len})", {
        **totals, "shards": len(meta["shards"]), "seconds": meta["seconds"],
        "tokens/s": f"{totals['tokens'] / max(meta['seconds'], 1e-9):,.0f}"}))
    return 0


def register(sub) -> None:
    tok = sub.add_parser("train-tokenizer", help="train a byte-level BPE with StarCoder's special tokens")
    tok.add_argument("corpus", nargs="+", help="clean corpus: codecurate output(s), Parquet/JSONL files or dirs")
    tok.add_argument("--output", required=True, help="tokenizer directory (Hugging Face layout)")
    tok.add_argument("--vocab-size", type=int, default=32768)
    tok.add_argument("--min-frequency", type=int, default=2)
    tok.add_argument("--max-bytes", type=int, default=None, help="train on about this much text (default: all)")
    tok.add_argument("--overwrite", action="store_true")
    tok.set_defaults(func=_train_tokenizer)

    mine = sub.add_parser("mine-tasks", help="mine SFT tasks from a clean corpus with tree-sitter")
    mine.add_argument("corpus", nargs="+")
    mine.add_argument("--output", required=True)
    mine.add_argument("--languages", nargs="+", help="linguist names (default: all supported)")
    mine.add_argument("--tasks", nargs="+", choices=["code_generation", "docstring_generation", "code_completion"])
    mine.add_argument("--seed", type=int, default=0)
    mine.add_argument("--overwrite", action="store_true")
    mine.set_defaults(func=_mine_tasks)

    sft = sub.add_parser("sft-mix", help="mix SFT sources and mined tasks into MFTCoder-style shards")
    sft.add_argument("config")
    sft.add_argument("--output")
    sft.add_argument("--overwrite", action="store_true")
    sft.add_argument("--quiet", action="store_true", help="no progress bars")
    sft.set_defaults(func=_sft_mix)

    pre = sub.add_parser("pretrain-shards", help="tokenize, FIM and pack a clean corpus into pre-training shards")
    pre.add_argument("config")
    pre.add_argument("--input", action="append", help="corpus PATH (repeatable); overrides the config")
    pre.add_argument("--output")
    pre.add_argument("--tokenizer")
    pre.add_argument("--overwrite", action="store_true")
    pre.set_defaults(func=_pretrain_shards)
