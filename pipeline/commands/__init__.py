"""Command families beyond run/verify/ingest. Each module has `register(subparsers)`; list it in
COMMAND_MODULES and its commands appear in `pipeline --help`."""

COMMAND_MODULES: list[str] = [
    "pipeline.commands.benchmarks",
    "pipeline.commands.eval",
    "pipeline.commands.explore",
    "pipeline.commands.optout",
    "pipeline.commands.shards",
    "pipeline.commands.train",
]
