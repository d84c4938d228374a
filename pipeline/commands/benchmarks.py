"""`pipeline benchmarks add|list`: the benchmark files decontamination reads (never shipped with us)."""

from pathlib import Path

from pipeline.errors import UserError


def _add(args) -> int:
    from pipeline.benchmarks import add_to_cache

    target, tasks = add_to_cache(args.name, Path(args.file))
    print(f"{args.name}: {tasks} tasks copied to {target}")
    return 0


def _list(args) -> int:
    from pipeline.benchmarks import BUILTIN, BenchmarkSpec, cache_dir, load_items, local_file

    names = list(BUILTIN) + sorted(p.stem for p in cache_dir().glob("*.jsonl") if p.stem not in BUILTIN)
    for name in names:
        spec = BUILTIN.get(name) or BenchmarkSpec(name=name)
        try:
            path = local_file(spec)
        except UserError as e:
            print(f"{name:<12} unavailable: {e}")
            continue
        if path is None:
            print(f"{name:<12} not on this machine (run `pipeline benchmarks add {name} FILE`)")
        elif name in BUILTIN:
            print(f"{name:<12} {len(load_items(spec, path)):>6} tasks  {path}")
        else:
            print(f"{name:<12} {'':>12}  {path} (give its fields in the config)")
    return 0


def register(subparsers) -> None:
    bench = subparsers.add_parser("benchmarks", help="benchmark files for decontamination")
    sub = bench.add_subparsers(dest="benchmarks_command", required=True, parser_class=type(bench))

    add = sub.add_parser("add", help="copy a benchmark's JSONL file to the user cache (e.g. mbpp)")
    add.add_argument("name", help="the benchmark's name in configs (mbpp, or your own)")
    add.add_argument("file", help="its JSONL (or .jsonl.gz) file")
    add.set_defaults(func=_add)

    lst = sub.add_parser("list", help="where each benchmark is found on this machine")
    lst.set_defaults(func=_list)
