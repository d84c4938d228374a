"""The `pipeline` command. Exit codes: 0 success, 1 failure while running, 2 user error."""

import argparse
import atexit
import contextlib
import importlib
import logging
import os
import signal
import sys

from rich.console import Console

from pipeline.commands import COMMAND_MODULES
from pipeline.errors import RunFailure, UserError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other user error
        raise UserError(f"{self.prog}: {message}")


def _run(args) -> int:
    from pipeline.config import ExecutorConfig, RunConfig, load_config

    def prepare(config: RunConfig) -> None:
        if args.input:
            config.input.paths = args.input
        if args.output:
            config.output.path = args.output
        if args.limit is not None:
            config.input.limit = args.limit
        executor = config.executor.model_dump()
        for key in ("executor", "workers", "scheduler"):
            value = getattr(args, key)
            if value is not None:
                executor["kind" if key == "executor" else key] = value
        config.executor = ExecutorConfig(**executor)
        # the workers' imports run while this process validates the stages and imports the runner
        kinds = [next(iter(s)) for s in config.stages if isinstance(s, dict) and len(s) == 1]
        if config.executor.kind == "local" and config.executor.workers > 1:
            from pipeline.executors.pool import start_forkserver

            start_forkserver(kinds)
        elif config.executor.kind == "dask" and not config.executor.scheduler:
            with contextlib.suppress(ImportError):  # without the dask extra, connect() says so
                from pipeline.executors.dask import start_cluster_forkserver

                start_cluster_forkserver(kinds)

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    config, specs = load_config(args.config, prepare)
    from pipeline.runner import Runner, RunOptions

    console = Console(stderr=True)
    Runner(config, specs, RunOptions(resume=args.resume, overwrite=args.overwrite,
                                     progress=not args.quiet), console).run()
    return 0


def _verify(args) -> int:
    from pipeline.verify import verify

    problems, table = verify(args.output)
    console = Console()
    console.print(table)
    for p in problems:
        console.print(f"[red]violation:[/red] {p}")
    console.print("nothing lost: OK" if not problems else f"{len(problems)} violation(s)")
    return 1 if problems else 0


def _ingest(args) -> int:
    from pipeline.config import ExecutorConfig, InputConfig, OutputConfig, RunConfig
    from pipeline.runner import Runner, RunOptions

    paths = [p if p.startswith("source:") else f"source:{os.path.abspath(p) if not p.startswith('@') else p}"
             for p in args.paths]
    config = RunConfig(name="ingest", input=InputConfig(paths=paths, owner=args.owner, limit=args.limit,
                                                       max_file_bytes=args.max_file_bytes),
                       output=OutputConfig(path=args.output), executor=ExecutorConfig(workers=args.workers))
    Runner(config, [], RunOptions(overwrite=args.overwrite), Console(stderr=True)).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pipeline", description="codecurate: curate code corpora into clean Parquet shards")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="run a config's stages over its inputs")
    run.add_argument("config")
    run.add_argument("--input", action="append", help="input PATH (repeatable); overrides the config")
    run.add_argument("--output", help="output directory; overrides the config")
    run.add_argument("--executor", choices=["local", "dask"])
    run.add_argument("--workers", type=int)
    run.add_argument("--scheduler", help="address of an existing Dask scheduler")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run of the same config")
    run.add_argument("--overwrite", action="store_true", help="replace an earlier run's output")
    run.add_argument("--limit", type=int, help="only the first N records (for trials)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)

    ver = sub.add_parser("verify", help="check the nothing-lost invariant of an output directory")
    ver.add_argument("output")
    ver.set_defaults(func=_verify)

    ing = sub.add_parser("ingest", help="turn source trees into Parquet records")
    ing.add_argument("paths", nargs="+", help="source roots (or @python)")
    ing.add_argument("--output", required=True)
    ing.add_argument("--owner", help="owner of the repos (default: each root directory's name)")
    ing.add_argument("--limit", type=int)
    ing.add_argument("--max-file-bytes", type=int, default=10_000_000)
    ing.add_argument("--workers", type=int, default=2)
    ing.add_argument("--overwrite", action="store_true")
    ing.set_defaults(func=_ingest)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: worker pools are terminated on the way out, not orphaned."""


def _terminate(signum: int, frame) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    def err(message: str) -> None:  # plain print: one line, never wrapped
        print(message, file=sys.stderr)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as e:
        err(f"error: {e}")
        return 2
    except RunFailure as e:
        err(f"failed: {e}")
        return 1
    except Terminated:
        err("terminated: resume with --resume")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        err("interrupted: resume with --resume")
        return 130
    except Exception as e:  # a bug of ours: still one line, the traceback only with CODECURATE_DEBUG=1
        if os.environ.get("CODECURATE_DEBUG"):
            raise
        err(f"failed: {type(e).__name__}: {e}")
        return 1


def entry() -> None:
    """The console command: `main`, then exit without tearing down the interpreter's modules (a
    few tenths of a second after a run imported pyarrow, datatrove and matplotlib). Exit handlers
    still run and output streams are flushed; every file of the run is closed by then.
    On Linux Arrow allocates with jemalloc unless ARROW_DEFAULT_MEMORY_POOL says otherwise: it returns
    memory to the system less eagerly than the default mimalloc, so re-reading and re-writing shards
    page-faults less (`optout apply` 0.7 CPU-s less system time, runs 2-4% faster; README)."""
    if sys.platform == "linux":  # before pyarrow is imported; worker processes inherit it
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    code = main()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # e.g. a closed pipe (`pipeline ... | head`)
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
