"""`pipeline eval CONFIG|MODEL --benchmark humaneval|mbpp`: generate, execute in a sandbox, report pass@k.

`--completions FILE` scores completions made elsewhere (JSONL of {task_id, completion}, several lines per
task for n > 1) instead of generating; that is also how the harness is tested with the canonical solutions.
"""

import json
import os
from pathlib import Path

from pipeline.errors import UserError


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="HumanEval / MBPP pass@k of a model (executed in a sandbox)")
    ev.add_argument("target", nargs="?", help="a training config (its output's final/ model) or a model directory")
    ev.add_argument("--benchmark", required=True, choices=("humaneval", "mbpp"))
    ev.add_argument("--completions", help="score this JSONL of {task_id, completion} instead of generating")
    ev.add_argument("--n", type=int, default=1, help="samples per problem (default 1)")
    ev.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ev.add_argument("--top-p", type=float, default=0.95)
    ev.add_argument("--max-new-tokens", type=int, default=512)
    ev.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call")
    ev.add_argument("--k", default="1,10,100", help="pass@k for these k (those <= n are reported)")
    ev.add_argument("--limit", type=int, help="only the first N problems")
    ev.add_argument("--output", help="results directory (default: <model>/eval/<benchmark>)")
    ev.add_argument("--timeout", type=float, default=10.0, help="seconds per program (default 10)")
    ev.add_argument("--memory-mb", type=int, default=2048, help="address-space limit per program (default 2048)")
    ev.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="programs run at once")
    ev.add_argument("--sandbox", choices=("auto", "namespace", "guard"), default="auto")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_eval)


def _model_dir(target: str) -> Path:
    path = Path(target)
    if path.suffix in (".yaml", ".yml"):
        from pipeline.train.config import load_train_config

        config = load_train_config(path)
        final = Path(config.output) / "final"
        if not (final / "config.json").exists():
            raise UserError(f"{target}: no trained model at {final} (train it first; LoRA runs: merge-lora)")
        return final
    if not (path / "config.json").exists():
        raise UserError(f"{target}: neither a training config (.yaml) nor a model directory (config.json)")
    return path


def _read_completions(path: Path, problems) -> list[list[str]]:
    by_task: dict[str, list[str]] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read completions ({e.strerror})") from None
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            by_task.setdefault(str(row["task_id"]), []).append(str(row["completion"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{line_no}: expected a JSON object with task_id and completion") from None
    missing = [p.task_id for p in problems if p.task_id not in by_task]
    if missing:
        raise UserError(f"{path}: no completion for {len(missing)} task(s), e.g. {missing[0]}")
    return [by_task[p.task_id] for p in problems]


def _eval(args) -> int:
    from pipeline.eval.harness import Timer, execute, score, write_results
    from pipeline.eval.problems import load_problems
    from pipeline.eval.sandbox import Sandbox

    try:
        ks = sorted({int(k) for k in args.k.split(",")})
    except ValueError:
        raise UserError(f"--k: comma-separated integers, not {args.k!r}") from None
    if args.n < 1 or min(ks) < 1 or args.timeout <= 0 or args.memory_mb < 64 or args.workers < 1:
        raise UserError("--n, --k and --workers must be >= 1, --timeout > 0, --memory-mb >= 64")
    if args.temperature == 0 and args.n > 1 and not args.completions:
        raise UserError("--n > 1 needs sampling: set --temperature > 0 (greedy samples are all the same)")
    if bool(args.target) == bool(args.completions):
        raise UserError("give a model (CONFIG or MODEL directory) or --completions FILE, not both or neither")
    if args.completions and not args.output:
        raise UserError("--completions needs --output")
    model = _model_dir(args.target) if args.target else None
    problems = load_problems(args.benchmark, args.limit)
    timer = Timer()
    if model is None:
        completions = _read_completions(Path(args.completions), problems)
    else:
        from pipeline.eval.generate import generate

        completions = generate(model, problems, args.n, args.temperature, args.top_p, args.max_new_tokens,
                               args.batch_size, args.seed)
    generation_seconds = timer.seconds()
    sandbox = Sandbox(args.sandbox, timeout=args.timeout, memory_mb=args.memory_mb)
    timer = Timer()
    outcomes = execute(problems, completions, sandbox, args.workers)
    records, totals = score(problems, completions, outcomes, ks)
    output = Path(args.output) if args.output else model / "eval" / args.benchmark
    summary = {"benchmark": args.benchmark, "model": str(model) if model else None,
               "completions": args.completions, "problems": len(problems),
               "samples": sum(len(c) for c in completions), "n": args.n, "temperature": args.temperature,
               "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, **totals,
               "sandbox": sandbox.mode, "timeout": args.timeout, "memory_mb": args.memory_mb,
               "generation_seconds": generation_seconds, "execution_seconds": timer.seconds()}
    write_results(output, records, summary)
    scores = "  ".join(f"{k} {v:.4f}" for k, v in totals.items())
    print(f"{args.benchmark}: {len(problems)} problems, {summary['samples']} samples  {scores}  "
          f"(sandbox {sandbox.mode}; results in {output})")
    return 0
