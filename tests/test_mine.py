"""Tasks mined with tree-sitter: functions and docs in every supported language, quality gates, the three
tasks' messages, and mining real stdlib code through the CLI."""

import json
import re

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, stdlib_rows, write_parquet

from pipeline.shards.mine import LANGUAGES, MineOptions, Miner, clean_comment, language_of

# Small files in each language, written for these tests: documented functions that pass the gates, and
# functions each gate must drop (named after the gate).
SOURCES = {
    "src/geometry.js": '''
/**
 * Returns the sum of all the numbers in the given array of values.
 * @param {number[]} values
 */
export function total(values) {
  let sum = 0;
  for (const v of values) sum += v;
  return sum;
}

class Shape {
  // Computes the area of the rectangle from its width and its height.
  area(width, height) {
    const w = Math.abs(width);
    const h = Math.abs(height);
    return w * h;
  }
}

/** Doubles each value of the array and returns them as a new array. */
const doubled = (xs) => {
  const out = [];
  for (const x of xs) out.push(2 * x);
  return out;
};

// Short helper that is too small to be a useful task on its own.
function body_short(a) {
  return a;
}
''',
    "src/config.ts": '''
/** Parses the configuration text into a map from keys to their values. */
export function parseConfig(text: string): Map<string, string> {
  const result = new Map<string, string>();
  for (const line of text.split("\\n")) {
    const [key, value] = line.split("=");
    result.set(key.trim(), value.trim());
  }
  return result;
}

function no_doc(text: string): number {
  const parts = text.split(",");
  const sizes = parts.map((p) => p.length);
  return sizes.reduce((a, b) => a + b, 0);
}
''',
    "src/main/java/Stats.java": '''
package demo;

public class Stats {
    /**
     * Returns the largest value of the array, or zero when the array is empty.
     */
    @Override
    public int largest(int[] values) {
        int best = 0;
        for (int v : values) {
            if (v > best) best = v;
        }
        return best;
    }

    /** Copyright 2024 Example Corp. Licensed under the Apache License. */
    public int doc_boilerplate(int a) {
        int b = a + 1;
        int c = b * 2;
        return c - a;
    }
}
''',
    "pkg/sum.go": '''
package pkg

// Sum returns the sum of all values in the slice.
// It returns zero for an empty slice.
func Sum(xs []int) int {
	s := 0
	for _, x := range xs {
		s += x
	}
	return s
}

// TestSum checks that Sum adds the values of the slice together.
func TestSum(t *testing.T) {
	if Sum([]int{1, 2}) != 3 {
		t.Fatal("wrong sum")
	}
}
''',
    "lib/strings.c": '''
#include <stddef.h>

/* Copies at most n bytes of the source string into the destination buffer. */
static size_t copy_str(char *dst, const char *src, size_t n)
{
    size_t i = 0;
    while (i < n && src[i]) {
        dst[i] = src[i];
        i++;
    }
    return i;
}

/* Gibt die Anzahl der Zeichen in der Zeichenkette zurück, ohne das Nullbyte. */
size_t doc_language(const char *s)
{
    size_t n = 0;
    while (s[n]) n++;
    return n;
}
''',
    "lib/count.cpp": '''
namespace util {
// Returns the number of elements of the vector greater than the threshold.
template <typename T>
int count_above(const std::vector<T>& v, T t) {
    int n = 0;
    for (auto& x : v) {
        if (x > t) n++;
    }
    return n;
}
}
''',
    "src/words.rs": '''
/// Returns the first word of the string slice given.
/// Words are separated by spaces.
#[inline]
pub fn first_word(s: &str) -> &str {
    let bytes = s.as_bytes();
    for (i, &item) in bytes.iter().enumerate() {
        if item == b' ' { return &s[0..i]; }
    }
    &s[..]
}

/// Checks that the first word of a sentence is found by the function.
#[test]
fn finds_first_word() {
    let s = String::from("hello world");
    let w = first_word(&s);
    assert_eq!(w, "hello");
}
''',
    "tools/report.py": '''
import os


class Report:
    @staticmethod
    def summarize(rows, key):
        """Group the rows by the given key and count how many rows fall in each group."""
        counts = {}
        for row in rows:
            counts[row[key]] = counts.get(row[key], 0) + 1
        return counts

    def __repr__(self):
        """Return a short representation of the report for debugging output."""
        name = type(self).__name__
        size = len(self.rows)
        return f"<{name} {size}>"


def doc_short(path):
    """Read it."""
    with open(path) as f:
        text = f.read()
    return text.strip()
''',
}
EXPECTED = {"src/geometry.js": {"total", "area", "doubled"}, "src/config.ts": {"parseConfig"},
            "src/main/java/Stats.java": {"largest"}, "pkg/sum.go": {"Sum"}, "lib/strings.c": {"copy_str"},
            "lib/count.cpp": {"count_above"}, "src/words.rs": {"first_word"}, "tools/report.py": {"summarize"}}
GATE_OF = {"body_short": "body_short", "no_doc": "no_doc", "doc_boilerplate": "doc_boilerplate",
           "TestSum": "test", "doc_language": "doc_language", "finds_first_word": "test",
           "__repr__": "boilerplate_name", "doc_short": "doc_short"}


def fenced(text: str) -> str:
    match = re.search(r"```\w*\n(.*)```", text, re.S)
    assert match, text
    return match.group(1)


@pytest.fixture(scope="module")
def mined() -> dict[str, list[dict]]:
    miner = Miner()
    return {path: list(miner.mine_file("demo/repo", path, text)) for path, text in SOURCES.items()}


def test_every_language_is_parsed_with_its_grammar():
    assert {language_of(p, None).name for p in SOURCES} == {"JavaScript", "TypeScript", "Java", "Go", "C", "C++",
                                                            "Rust", "Python"}
    assert language_of("x.h", None).name == "C" and language_of("x.weird", "Go").name == "Go"
    assert language_of("x.weird", None) is None and set(LANGUAGES) >= {"TSX", "C++"}


def test_documented_functions_become_three_tasks(mined):
    for path, records in mined.items():
        names = {re.search(r"`([^`]+)`", r["messages"][0]["content"]).group(1)
                 for r in records if r["task"] == "code_generation"}
        assert names == EXPECTED[path], path
        assert sorted(r["task"] for r in records) == sorted(["code_generation", "docstring_generation",
                                                             "code_completion"] * len(EXPECTED[path]))
        for r in records:
            assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
            assert r["source"] == f"demo/repo/{path}" and r["id"].startswith(f"{r['task']}/demo/repo/{path}#L")


def test_task_messages_are_built_from_the_real_code(mined):
    by_id = {r["id"]: r for records in mined.values() for r in records}
    go_gen = by_id["code_generation/demo/repo/pkg/sum.go#L6"]["messages"]
    assert "Sum returns the sum of all values in the slice.\nIt returns zero" in go_gen[0]["content"]
    assert "```go\nfunc Sum(xs []int) int\n```" in go_gen[0]["content"]
    code = fenced(go_gen[1]["content"])
    assert code.startswith("func Sum(xs []int) int {") and code.rstrip().endswith("return s\n}")
    # the docstring task answers with the cleaned comment; the code shown is the function alone
    rust = by_id["docstring_generation/demo/repo/src/words.rs#L5"]["messages"]
    assert rust[1]["content"] == "Returns the first word of the string slice given.\nWords are separated by spaces."
    assert fenced(rust[0]["content"]).startswith("#[inline]\npub fn first_word")
    # a Python docstring is removed from the code of the docstring task, and the method is dedented
    py = by_id["docstring_generation/demo/repo/tools/report.py#L7"]["messages"]
    assert "Group the rows" not in py[0]["content"] and py[1]["content"].startswith("Group the rows by")
    assert fenced(py[0]["content"]).startswith("@staticmethod\ndef summarize(rows, key):\n    counts = {}")
    # code completion: head + rest is the documented function, cut inside its body
    for r in (r for records in mined.values() for r in records if r["task"] == "code_completion"):
        head, rest = fenced(r["messages"][0]["content"]), fenced(r["messages"][1]["content"])
        gen = by_id[r["id"].replace("code_completion", "code_generation", 1)]
        code = fenced(gen["messages"][1]["content"])
        assert (head + rest).endswith(code) and len(rest.strip()) and code.split("\n")[0] in head


def test_gates_name_the_reason(mined):
    miner = Miner()
    reasons = {}
    for path, text in SOURCES.items():
        spec = language_of(path, None)
        extractor = miner.extractor(spec)
        source = text.encode()
        for fn in extractor.functions(extractor.parse(source), source):
            reasons[fn.name] = miner.gates.reject(fn, path)
    for name, gate in GATE_OF.items():
        assert reasons[name].split(":")[0] == gate, (name, reasons[name])
    assert reasons["doc_language"] == "doc_language:de"
    # test files are skipped whatever their functions look like
    assert not list(miner.mine_file("demo/repo", "tests/test_report.py", SOURCES["tools/report.py"]))
    assert not list(Miner(MineOptions(languages=["Go"])).mine_file("r/x", "src/words.rs", SOURCES["src/words.rs"]))


def test_clean_comment_strips_every_marker():
    assert clean_comment("/**\n * Returns x.\n *   indented\n */") == "Returns x.\n  indented"
    assert clean_comment("/// Rust doc\n/// more") == "Rust doc\nmore"
    assert clean_comment("// a\n// b") == "a\nb"
    assert clean_comment("# python\n# comment") == "python\ncomment"
    assert clean_comment("/* one line */") == "one line"


def test_header_that_is_not_c_is_mined_as_cpp():
    header = '''namespace io {
// Reads all the bytes of the stream into the buffer it returns.
inline std::string read_all(std::istream& in) {
    std::string out;
    char c;
    while (in.get(c)) out.push_back(c);
    return out;
}
}
'''
    records = list(Miner().mine_file("r/x", "include/io.h", header))
    assert {r["language"] for r in records} == {"C++"} and len(records) == 3


def test_mining_real_stdlib_code_with_the_cli(tmp_path):
    rows = stdlib_rows(120)
    write_parquet(tmp_path / "in" / "a.parquet", rows)
    result = run_cli("mine-tasks", str(tmp_path / "in"), "--output", str(tmp_path / "mined"))
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "mined" / "stats.json").read_text())
    assert stats["records"]["code_generation"] > 100 and stats["rejected:no_doc"] > 0 and stats["rejected:test"] > 0
    contents = {f"{r['repo_name']}/{r['path']}": r["content"] for r in rows}
    table = pq.read_table(tmp_path / "mined" / "code_generation.parquet")
    assert table.num_rows == stats["records"]["code_generation"] == stats["kept:Python"]
    for record in table.to_pylist():
        source = contents[record["source"]]
        for line in fenced(record["messages"][1]["content"]).splitlines():
            assert line.strip() in source
    again = run_cli("mine-tasks", str(tmp_path / "in"), "--output", str(tmp_path / "again"))
    assert again.returncode == 0
    for task in ("code_generation", "docstring_generation", "code_completion"):
        assert pq.read_table(tmp_path / "mined" / f"{task}.parquet").equals(
            pq.read_table(tmp_path / "again" / f"{task}.parquet"))
    bad = run_cli("mine-tasks", str(tmp_path / "in"), "--output", str(tmp_path / "x"), "--languages", "Cobol")
    assert bad.returncode == 2 and "Cobol" in bad.stderr and "Traceback" not in bad.stderr
