"""`pipeline train CONFIG.yaml [--deepspeed ds.json]` and `pipeline merge-lora`.

Several processes (`--nproc`, or DeepSpeed) are started through torchrun by this command itself; the
command also runs unchanged under an outside launcher (torchrun, deepspeed, accelerate launch), which
it recognises by WORLD_SIZE in the environment. Heavy imports stay inside the functions so that
`pipeline --help` remains quick.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

from pipeline.errors import RunFailure, UserError

PREPARED = "CODECURATE_TRAIN_PREPARED"  # the launching command already checked and prepared the output
FAILURES = "CODECURATE_TRAIN_FAILURES"  # where workers leave their one-line failure for the launcher


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a causal LM on SFT or pre-training shards")
    train.add_argument("config")
    train.add_argument("--deepspeed", help="DeepSpeed JSON (e.g. configs/ds_zero2.json); \"auto\" values are filled")
    train.add_argument("--output", help="output directory; overrides the config")
    train.add_argument("--nproc", type=int, help="processes on this machine (default: the config's train.nproc)")
    train.add_argument("--max-steps", type=int, help="overrides train.max_steps")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier run's output")
    train.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher's
    train.set_defaults(func=_train)

    merge = subparsers.add_parser("merge-lora", help="fold a trained LoRA adapter into its base model")
    merge.add_argument("adapter", help="a LoRA run's output directory or an adapter directory")
    merge.add_argument("--output", required=True)
    merge.set_defaults(func=_merge)


def _train(args) -> int:
    from pipeline.train.config import load_train_config
    from pipeline.train.engine import load_deepspeed_config

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    config = load_train_config(args.config)
    if args.output:
        config.output = str(Path(args.output).resolve())
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise UserError("--max-steps must be >= 1")
        config.train.max_steps = args.max_steps
    nproc = args.nproc or config.train.nproc
    deepspeed = load_deepspeed_config(args.deepspeed) if args.deepspeed else None
    if config.method == "xft":
        from pipeline.train.xft import check_deepspeed

        check_deepspeed(deepspeed)  # before any process starts
    if "WORLD_SIZE" in os.environ:
        return _worker(config, deepspeed, args)
    if nproc == 1 and deepspeed is None:
        _print_summary(_runner(config, None, resume=args.resume, overwrite=args.overwrite).run())
        return 0
    return _launch(config, deepspeed, args, nproc)


def _launch(config, deepspeed: dict | None, args, nproc: int) -> int:
    """Check everything a user can get wrong here, then start `nproc` workers through torchrun."""
    import torch

    from pipeline.executors.pool import die_with_parent
    from pipeline.train.data import check_feeds
    from pipeline.train.trainer import TrainData, prepare_output

    data = TrainData(config)  # shards, schema, tokenizer, meta.json: user errors surface before any process starts
    check_feeds(sum(u.rows for u in data.units), nproc, max(1, config.data.num_workers))
    prepare_output(config, deepspeed, args.resume, args.overwrite)
    logs = Path(config.output) / "logs"
    logs.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "pipeline.cli", "train", str(Path(args.config).resolve()), "--output", config.output]
    if args.deepspeed:
        command += ["--deepspeed", str(Path(args.deepspeed).resolve())]
    if args.max_steps is not None:
        command += ["--max-steps", str(args.max_steps)]
    if args.resume:
        command.append("--resume")
    with tempfile.TemporaryDirectory() as failures, open(logs / "launcher.log", "a") as stderr:
        env = {**os.environ, PREPARED: "1", FAILURES: failures}
        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
        code = subprocess.run(command, env=env, stderr=stderr, preexec_fn=die_with_parent).returncode
        if code == 0:
            return 0
        reports = sorted(Path(failures).glob("rank-*.json"))
        if not reports:
            raise RunFailure(f"training processes exited with code {code} (see {logs / 'launcher.log'})")
        report = json.loads(reports[0].read_text())
        message = f"{reports[0].stem}: {report['message']}"
        raise UserError(message) if report["user_error"] else RunFailure(f"{message} (see {logs})")


def _worker(config, deepspeed: dict | None, args) -> int:
    """One training process under a launcher: run, and leave a failure where the launcher finds it."""
    from pipeline.executors.pool import die_with_parent

    die_with_parent()  # torchrun starts workers in sessions of their own: a kill -9 of the run must reach them
    # DeepSpeed calls torch's deprecated collectives at every step: one warning each would flood logs/
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.distributed\.")
    rank = os.environ.get("RANK", "0")
    try:
        summary = _runner(config, deepspeed, resume=args.resume, prepare=not os.environ.get(PREPARED),
                          overwrite=args.overwrite).run()
    except Exception as e:
        logs = Path(config.output) / "logs"
        if logs.parent.is_dir():
            logs.mkdir(exist_ok=True)
            (logs / f"rank-{rank}.log").write_text(traceback.format_exc())
        if os.environ.get(FAILURES):
            message = f"{type(e).__name__}: {e}" if not isinstance(e, UserError | RunFailure) else str(e)
            Path(os.environ[FAILURES], f"rank-{rank}.json").write_text(json.dumps(
                {"message": message.splitlines()[0] if message else type(e).__name__,
                 "user_error": isinstance(e, UserError)}))
        raise
    if rank == "0":
        _print_summary(summary)
    return 0


def _runner(config, deepspeed: dict | None, **kwargs):
    """The run for the config's method: one trainer run, or XFT's three phases."""
    if config.method == "xft":
        from pipeline.train.xft import XftRun

        return XftRun(config, deepspeed, **kwargs)
    from pipeline.train.trainer import Trainer

    return Trainer(config, deepspeed, **kwargs)


def _print_summary(summary: dict) -> None:
    if "phases" in summary:  # XFT: the MoE fine-tuning, then the merge
        for phase in ("moe", "merge"):
            _print_summary({**summary["phases"][phase], "title": f"xft {phase}: "})
        return
    from rich.console import Console
    from rich.table import Table

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    table = Table(title=f"{summary.get('title', '')}trained {summary['steps']} steps, {summary['tokens']:,} tokens in "
                        f"{summary['seconds']:.1f}s "
                        f"({summary['tokens_per_second']:,.0f} tokens/s); loss {fmt(summary['loss_first'])} -> "
                        f"{fmt(summary['loss_last10'])} (mean of the last 10 steps)")
    for column in ("task", "train records", "valid records", "targets seen", "train loss (last 10)", "valid loss"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, row in summary["tasks"].items():
        table.add_row(task, f"{row['records'].get('train', 0):,}", f"{row['records'].get('valid', 0):,}",
                      f"{row['targets_seen']:,}", fmt(row["train_loss_last10"]), fmt(row["valid_loss"]))
    Console().print(table)


def _merge(args) -> int:
    from pipeline.train.model import merge_lora

    adapter = Path(args.adapter)
    if (adapter / "final" / "adapter_config.json").exists():
        adapter = adapter / "final"
    print(f"merged model written to {merge_lora(adapter, args.output)}")
    return 0
