"""quality_filters: every rule on a crafted case with its exact reason, real code kept, cheap rules
before parsing, thresholds overridable by name, and per-rule counts in stats.json."""

import base64
import hashlib
import json
import re
import sysconfig
from collections import Counter
from pathlib import Path

import pytest
from conftest import read_dir, run_cli, stdlib_rows, write_config, write_parquet
from datatrove.data import Document

from pipeline.config import parse_stages
from pipeline.errors import UserError
from stages.quality import QualityFilters, QualityOptions
from stages.quality_signals import Signals, comments, dup_ngram_fraction, word_hashes

STDLIB = Path(sysconfig.get_paths()["stdlib"])
INCLUDE = Path(sysconfig.get_paths()["include"])


def _name(i: int) -> str:
    return "".join(chr(97 + (i // 26**k) % 26) for k in range(3))


BLOB = base64.encodebytes(b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(200))).decode()
ESCAPES = "".join('    b"' + "".join(f"\\x{'abcdef'[(i + j) % 6]}{'abcdef'[(i * j) % 6]}" for j in range(16)) + '"\n'
                  for i in range(40))
NAMES_LINE = "NAMES = ['" + "', '".join(_name(i) for i in range(250)) + "']"
LONG_LINE = (STDLIB / "textwrap.py").read_text() + NAMES_LINE + "\n"
BROKEN_PYTHON = "def area(r:\n    return 3.14 * r * r\n"
# (language, text, expected reason; a trailing '=' means "this rule, any value")
CASES = {
    "empty": ("Python", "", "filter:min_chars=0"),
    "long line": ("Python", LONG_LINE, f"filter:max_line_length={len(NAMES_LINE)}"),
    "xml": (None, '<?xml version="1.0" encoding="utf-8"?>\n<Project Sdk="Microsoft.NET.Sdk">\n  <PropertyGroup>\n'
                  "    <OutputType>Exe</OutputType>\n  </PropertyGroup>\n</Project>\n", "filter:xml_header=0"),
    "symbols": ("Python", ("#" * 40 + "\n" + "-=" * 20 + "\n") * 3 + "#" * 40 + "\n", "filter:alphanum_fraction=0"),
    "digits": ("Python", "".join(f"value_number = {10**13 + i}\n" for i in range(50)), "filter:digit_fraction=0.4667"),
    "whitespace": ("Python", "".join(f"abcdefghi{' ' * 11}\n" for _ in range(50)), "filter:whitespace_fraction=0.5714"),
    "base64 blob": ("Python", '"""Icon data."""\nICON = """\n' + BLOB + '"""\n', "filter:encoded_data_fraction=0.9805"),
    "escape blob": ("Python", "DATA = (\n" + ESCAPES + ")\n", "filter:encoded_data_fraction=0.8855"),
    "duplicate lines": ("Python", "import os\n" + "print(os.getcwd())\n" * 60, "filter:dup_lines_fraction=0.9672"),
    "comments": ("Python", "".join(f"# step {i}: describe what happens in this part of the old code\n"
                                   for i in range(12)) + "X = 1\n", "filter:comment_fraction=0.9757"),
    "asserts": ("Python", "def test_all():\n" + "".join(f"    assert f({i}) == {i * 2}\n" for i in range(30)),
                "filter:assert_fraction=0.9677"),
    "pass": ("Python", "".join(f"class E{i}(Exception):\n    pass\n\n\n" for i in range(5)) + 'X = "x"\n',
             "filter:python_pass_fraction=0.4545"),
    "imports": ("Python", "".join(f"import m{i}\n" for i in range(8)) + "from a import b\nX = 1\n",
                "filter:python_import_fraction=0.9"),
    "prints": ("Python", "".join(f"print({i})\n" for i in range(9)) + "x = 4\n", "filter:python_print_fraction=0.9"),
    "html boilerplate": ("HTML", "<html><head><script>\n" + "".join(
        f"var {_name(i)} = render_{_name(i + 7)}(node_{_name(i + 3)});\n" for i in range(200))
        + "</script></head><body><p>Hi there</p></body></html>\n", "filter:html_text_fraction=0.00139"),
    "html short": ("HTML", "<html>\n<body>\n<p>Hi there, welcome.</p>\n</body>\n</html>\n",
                   "filter:html_text_chars=23"),
    "json tiny": ("JSON", '{"a": 1}\n', "filter:min_chars=9"),
    "json large": ("JSON", '{"items": [' + ", ".join(f'{{"id": {i}, "name": "item{i}"}}' for i in range(250))
                   + "]}\n", "filter:max_chars=7792"),
    "repeated 5-grams": ("Python", "".join(
        f"result_{i} = compute(alpha, beta, gamma, delta, epsilon, zeta, eta, theta)\n" for i in range(40)),
        "filter:dup_5gram_fraction=0.8372"),
    "python syntax": ("Python", BROKEN_PYTHON, "filter:python_syntax_error=1"),
    "python 2": ("Python", 'import sys\n\ndef main():\n    print "hello", sys.argv\n', "filter:python_syntax_error=4"),
    "broken C": ("C", "int main(void) {\n  return 0;\n}\n" + "".join(
        f"int v{i} = = {i} ) ( ] unknown{i} keyword{i} ;\n" for i in range(30)), "filter:syntax_error_fraction=0.4996"),
}
KEPT = {
    "newer Python": ("Python", "type Point = tuple[float, float]\n\ndef first[T](items: list[T]) -> T:\n"
                               "    return items[0]\n"),
    "C program": ("C", '#include <stdio.h>\n\nint main(void) {\n  printf("hello\\n");\n  return 0;\n}\n'),
    "HTML page": ("HTML", "<html><head><title>Install guide</title></head>\n<body>\n<h1>Install guide</h1>\n"
                          "<p>Download the archive from the releases page and unpack it anywhere.</p>\n"
                          "<p>Run the setup script once; it creates a virtual environment next to the sources.</p>\n"
                          "<p>Start the server with the run command and open the address it prints.</p>\n"
                          "</body>\n</html>\n"),
    "XSLT": ("XSLT", '<?xml version="1.0"?>\n<xsl:stylesheet version="1.0" '
                     'xmlns:xsl="http://www.w3.org/1999/XSL/Transform">\n  <xsl:template match="/">\n'
                     "    <xsl:apply-templates select=\"catalog/book\"/>\n  </xsl:template>\n</xsl:stylesheet>\n"),
    # under ten lines a line share is noise: one `pass`, two imports, four prints
    "tiny exception module": ("Python", "class ParseError(Exception):\n    pass\n"),
    "package __init__": ("Python", "from .core import run\nfrom .config import load\n\n__all__ = ['run', 'load']\n"),
    "fizzbuzz script": ("Python", "for i in range(1, 101):\n    if i % 15 == 0:\n        print('FizzBuzz')\n"
                                  "    elif i % 3 == 0:\n        print('Fizz')\n    elif i % 5 == 0:\n"
                                  "        print('Buzz')\n    else:\n        print(i)\n"),
    # small configs: a date, addresses or a key are a large share of a short text
    "YAML with addresses": ("YAML", "cluster:\n  node_a: 10.12.0.7\n  node_b: 10.12.0.8\n  replicas: 3\n"),
    "JSON with a date": ("JSON", '{\n  "created": "2023-04-01T12:30:00Z",\n  "kind": "fixture",\n  "n": 1\n}\n'),
    "Markdown with a public key": ("Markdown", "Add this key to authorized_keys:\n\n```\nssh-ed25519 AAAAC3NzaC1lZDI1"
                                               "NTE5AAAAI2Y2enXhcTprxv3ywKMjMSLiOg7M7gylSikpFxlVO2aD ci@build\n```\n"),
    # real prose, each paragraph on one line (as Markdown is often written)
    "Markdown with long paragraphs": ("Markdown", "# History\n\n" + "\n\n".join(
        " ".join(p.split()) for p in (STDLIB / "LICENSE.txt").read_text().split("\n\n")[1:4]) + "\n"),
}


def _filter(stage: QualityFilters, language: str | None, text: str, path: str = "file"):
    return stage.filter(Document(text=text, id=path, metadata={"language": language, "path": path}))


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rule_removes_its_case_with_the_measured_value(case):
    language, text, reason = CASES[case]
    assert _filter(QualityFilters("quality_filters"), language, text) == (False, reason)


@pytest.mark.parametrize("case", sorted(KEPT))
def test_good_files_are_kept(case):
    language, text = KEPT[case]
    assert _filter(QualityFilters("quality_filters"), language, text) is True


def test_real_code_is_kept():
    stage = QualityFilters("quality_filters")
    for name in ("textwrap.py", "shlex.py", "colorsys.py", "json/decoder.py", "email/utils.py", "heapq.py"):
        assert _filter(stage, "Python", (STDLIB / name).read_text()) is True, name
    for name in ("Python.h", "pyport.h", "listobject.h", "object.h"):  # macro-heavy real C headers
        assert _filter(stage, "C", (INCLUDE / name).read_text()) is True, name


def test_cheap_rules_come_first_and_skip_parsing():
    stage = QualityFilters("quality_filters")
    assert _filter(stage, "Python", LONG_LINE + BROKEN_PYTHON) == (False, f"filter:max_line_length={len(NAMES_LINE)}")
    assert stage.details["parsed"] == 0
    assert _filter(stage, "Python", (STDLIB / "textwrap.py").read_text()) is True
    assert stage.details["parsed"] == 1


def test_thresholds_overridable_by_name_and_per_language():
    loose = QualityFilters("quality_filters", QualityOptions(max_line_length=5000))
    assert _filter(loose, "Python", LONG_LINE) is True
    off = QualityFilters("quality_filters", QualityOptions(python_syntax_error=False, alphanum_fraction=None))
    assert _filter(off, "Python", BROKEN_PYTHON) is True
    assert _filter(off, "Python", CASES["symbols"][1]) == (False, "filter:alpha_fraction=0")
    per_language = QualityFilters("quality_filters", QualityOptions(per_language={"Python": {"max_line_length": 2000}}))
    assert _filter(per_language, "Python", LONG_LINE) is True
    assert _filter(per_language, "Ruby", LONG_LINE) == (False, f"filter:max_line_length={len(NAMES_LINE)}")
    xml = QualityFilters("quality_filters", QualityOptions(per_language={"XML": {"xml_header": False}}))
    assert _filter(xml, "XML", CASES["xml"][1]) is True

    stage = parse_stages("c.yaml", [{"quality_filters": {"max_line_length": 2000, "dup_5gram_fraction": None}}])[0]
    assert stage.options.max_line_length == 2000 and stage.options.dup_5gram_fraction is None
    with pytest.raises(UserError, match="max_line_lenght: unknown option"):
        parse_stages("c.yaml", [{"quality_filters": {"max_line_lenght": 2000}}])
    with pytest.raises(UserError, match="unknown rule 'max_line_lenght'"):
        parse_stages("c.yaml", [{"quality_filters": {"per_language": {"Python": {"max_line_lenght": 1}}}}])


def _naive_dup_ngram_fraction(text: str, n: int) -> float:
    """Reference: words as the stage splits them, n-grams as tuples, every word of a repeated n-gram."""
    words = re.findall(rb"[A-Za-z0-9_\x80-\xff]+", text.encode())
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    covered = set()
    for i in range(len(words) - n + 1):
        if grams[tuple(words[i:i + n])] > 1:
            covered.update(range(i, i + n))
    total = sum(map(len, words))
    return sum(len(words[i]) for i in covered) / total if total and len(words) - n + 1 > 1 else 0.0


def test_vectorised_ngram_fractions_match_a_naive_reference():
    files = ["bisect.py", "textwrap.py", "colorsys.py", "json/encoder.py", "test/test_int_literal.py", "heapq.py"]
    for name in files:
        text = (STDLIB / name).read_text()
        hashes, lengths = word_hashes(text.encode())
        for n in (5, 10):
            assert dup_ngram_fraction(hashes, lengths, n) == pytest.approx(_naive_dup_ngram_fraction(text, n)), name


def test_signals_and_comment_syntax():
    c_source = 'char *url = "http://example.org/*x*/";  // real comment\n/* block\n comment */ int x = 1;\n'
    assert comments(c_source, "C") == ["// real comment", "/* block\n comment */"]
    assert comments("x = '#not'  # yes\n\"\"\"doc\"\"\"\n", "Python") == ["# yes", '"""doc"""']
    assert comments("SELECT 1; -- note\n", "SQL") == ["-- note"]
    assert comments("anything", "Brainfuck") == []
    text = "héllo wörld 123\n\n  x\n"
    signals = Signals(text, None)
    assert signals.alphanum_fraction == pytest.approx(sum(map(str.isalnum, text)) / len(text))
    assert signals.whitespace_fraction == pytest.approx(sum(map(str.isspace, text)) / len(text))
    assert (signals.max_line_length, signals.nonblank_lines) == (15, 2)


def test_end_to_end_counts_per_rule(tmp_path):
    rows = stdlib_rows(120, skip=300)
    planted = {case: (language, text, reason) for case, (language, text, reason) in CASES.items()
               if case in ("long line", "base64 blob", "python syntax", "asserts", "json tiny", "broken C")}
    for case, (language, text, _) in planted.items():
        rows.append({"repo_name": "planted/x", "path": case.replace(" ", "_"), "content": text, "language": language,
                     "license_type": "permissive", "star_events_count": 0})
    write_parquet(tmp_path / "in" / "x.parquet", rows)
    cfg = write_config(tmp_path / "c.yaml", [{"quality_filters": {}}], [str(tmp_path / "in")])
    result = run_cli("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    assert run_cli("verify", str(tmp_path / "out")).returncode == 0
    removed = read_dir(tmp_path / "out" / "removed" / "quality_filters").to_pylist()
    reasons = {r["path"]: r["removal_reason"] for r in removed}
    for case, (_, _, reason) in planted.items():
        assert reasons[case.replace(" ", "_")] == reason
    kept = read_dir(tmp_path / "out" / "data").num_rows
    assert kept >= 0.85 * 120  # real stdlib code mostly passes
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    details = next(s for s in stats["stages"] if s["name"] == "quality_filters")["details"]
    by_rule = Counter(reason.split("=", 1)[0] for reason in reasons.values())
    assert {k: v for k, v in details.items() if k.startswith("filter:")} == dict(by_rule)
    assert details["parsed"] > 0
