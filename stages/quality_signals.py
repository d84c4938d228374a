"""The measures quality rules look at, computed lazily: each at most once per record, and only when a
rule that has not already removed the record asks for it (cheap measures never pay for costly ones)."""

import ast
import re
import warnings
from functools import cached_property
from html.parser import HTMLParser

import numpy as np

# -- comment syntax ----------------------------------------------------------------------------
# Comment syntax families by linguist language name. Patterns match string literals first so that a
# comment marker inside a string ("http://...") is not taken for a comment; only group `c` counts.
_DQ = r'"(?:\\.|[^"\\\n])*"'
_SQ = r"'(?:\\.|[^'\\\n])*'"
_C_BLOCK = r"/\*[\s\S]*?(?:\*/|\Z)"
_FAMILIES: dict[str, tuple[str, str]] = {
    # family: (regex with group c for comments, line-comment marker for generated comments)
    "c": (rf"{_DQ}|{_SQ}|(?P<c>//[^\n]*|{_C_BLOCK})", "//"),
    "python": (rf"(?P<c>\"\"\"[\s\S]*?(?:\"\"\"|\Z)|'''[\s\S]*?(?:'''|\Z)|#[^\n]*)|{_DQ}|{_SQ}", "#"),
    "hash": (rf"{_DQ}|{_SQ}|(?P<c>#[^\n]*)", "#"),
    "css": (rf"{_DQ}|{_SQ}|(?P<c>{_C_BLOCK})", None),
    "dash": (rf"{_DQ}|{_SQ}|(?P<c>--\[\[[\s\S]*?(?:\]\]|\Z)|--[^\n]*|\{{-[\s\S]*?(?:-\}}|\Z)|{_C_BLOCK})", "--"),
    "percent": (rf"{_DQ}|(?P<c>%[^\n]*)", "%"),
    "semicolon": (rf"{_DQ}|(?P<c>;[^\n]*)", ";"),
    "xml": (r"(?P<c><!--[\s\S]*?(?:-->|\Z))", None),
    "bang": (rf"{_DQ}|{_SQ}|(?P<c>![^\n]*)", "!"),
    "apostrophe": (rf"{_DQ}|(?P<c>'[^\n]*)", "'"),
    "ml": (rf"{_DQ}|(?P<c>\(\*[\s\S]*?(?:\*\)|\Z))", None),
}
_LANGUAGES_BY_FAMILY = {
    "c": ["C", "C++", "C#", "Java", "JavaScript", "TypeScript", "TSX", "Go", "Rust", "Swift", "Kotlin", "Scala",
          "PHP", "Objective-C", "Objective-C++", "Dart", "Cuda", "Groovy", "Gradle", "Solidity", "Zig",
          "Protocol Buffer", "GLSL", "HLSL", "Metal", "OpenCL", "Verilog", "SystemVerilog", "D", "Haxe", "Apex",
          "ActionScript", "JSON with Comments", "Less", "SCSS", "Stylus", "Vala", "QML", "Thrift", "Hack", "Odin",
          "V", "F#", "Pascal", "Ceylon", "Chapel", "Jsonnet", "Smali", "Vue", "Svelte", "Astro"],
    "python": ["Python", "Cython", "Starlark"],
    "hash": ["Shell", "Perl", "Ruby", "R", "YAML", "TOML", "Makefile", "CMake", "PowerShell", "Dockerfile", "Nix",
             "Julia", "Elixir", "Tcl", "Awk", "Meson", "GN", "Raku", "Crystal", "Nim", "GDScript", "CoffeeScript",
             "HCL", "Fish", "INI", "Cap'n Proto", "GraphQL", "Puppet", "Janet", "Gentoo Ebuild", "Bitbake",
             "Ignore List", "Git Config", "Roff"],
    "css": ["CSS"],
    "dash": ["SQL", "PLSQL", "PLpgSQL", "TSQL", "Lua", "Haskell", "Elm", "Ada", "VHDL", "PureScript", "Agda",
             "Idris", "Luau"],
    "percent": ["MATLAB", "TeX", "Erlang", "Prolog", "PostScript", "Mercury", "BibTeX"],
    "semicolon": ["Common Lisp", "Clojure", "Scheme", "Emacs Lisp", "Racket", "Assembly", "Unix Assembly",
                  "Fennel", "Hy", "LLVM", "AutoHotkey"],
    "xml": ["HTML", "XML", "SVG", "XSLT", "Markdown"],
    "bang": ["Fortran", "Fortran Free Form"],
    "apostrophe": ["Visual Basic .NET", "VBA", "VBScript"],
    "ml": ["OCaml", "Standard ML", "Coq", "Mathematica"],
}
FAMILY_OF = {lang: family for family, langs in _LANGUAGES_BY_FAMILY.items() for lang in langs}
_COMMENT_RE = {family: re.compile(regex) for family, (regex, _) in _FAMILIES.items()}


def line_comment_marker(language: str | None) -> str:
    """How `language` starts a line comment ('#' when it has none or is unknown)."""
    family = FAMILY_OF.get(language or "")
    return (_FAMILIES[family][1] if family else None) or "#"


def comments(text: str, language: str | None) -> list[str]:
    """The comments (and, for Python, triple-quoted strings: docstrings) of `text`; [] if the
    language's comment syntax is unknown."""
    family = FAMILY_OF.get(language or "")
    if family is None:
        return []
    return [m.group("c") for m in _COMMENT_RE[family].finditer(text) if m.group("c")]


# -- character classes -------------------------------------------------------------------------
_ASCII = bytes(range(128))
_ALNUM = bytes(c for c in _ASCII if chr(c).isalnum())
_ALPHA = bytes(c for c in _ASCII if chr(c).isalpha())
_DIGIT = bytes(c for c in _ASCII if chr(c).isdigit())
_SPACE = bytes(c for c in _ASCII if chr(c).isspace())
_ASCII_RUNS = re.compile(r"[\x00-\x7f]+")

# -- line kinds --------------------------------------------------------------------------------
# Stripped lines are picked by a C-level startswith over these prefixes, then the few candidates are
# checked by the precise pattern (much cheaper than scanning every text with MULTILINE regexes).
_LINE_KINDS = {
    "assert": re.compile(r"(?:assert\b|self\.assert|assert_?\w*\s*\(|Assert\.|XCTAssert|EXPECT_[A-Z_]+\(|"
                         r"ASSERT_[A-Z_]+\(|expect\s*\()"),
    "pass": re.compile(r"pass\s*(?:#.*)?$"),
    "import": re.compile(r"(?:import\s|from\s+\S+\s+import\b)"),
    "print": re.compile(r"print\b"),
}
_LINE_PREFIXES = ("assert", "self.assert", "Assert.", "XCTAssert", "EXPECT_", "ASSERT_", "expect", "pass", "import",
                  "from", "print")
_PY2_STATEMENT = re.compile(r"^[ \t]*(?:print|exec)[ \t]+[^\s(=.,:)\[]", re.MULTILINE)
_PY2_MESSAGES = ("Missing parentheses in call to", "leading zeros in decimal integer literals",
                 "multiple exception types must be parenthesized")

# -- encoded data ------------------------------------------------------------------------------
# Runs of >= 64 base64 characters (long hex strings included) are found on a byte map of the text
# (base64 characters -> 'a', anything else -> ' ') with bytes.find; hex arrays and escapes by regex,
# only in texts that hold enough of their marker.
_BASE64_MAP = bytes(97 if c < 128 and (chr(c).isalnum() or chr(c) in "+/") else 32 for c in range(256))
_LONG_RUN = b"a" * 64
_ENCODED_LISTS = {
    "0x": re.compile(r"(?:0[xX][0-9a-fA-F]{1,16}[ \t]*,\s*){8,}"),
    "\\x": re.compile(r"(?:\\x[0-9a-fA-F]{2}){8,}"),
    "\\u": re.compile(r"(?:\\u[0-9a-fA-F]{4}){8,}"),
}
_MIN_LIST_MARKERS = 8

# -- word n-grams ------------------------------------------------------------------------------
# Words: ASCII letters, digits, '_' and any non-ASCII byte; everything else separates them.
_WORD_BYTES = bytes(c if chr(c).isalnum() or c == 95 or c >= 128 else 0 for c in range(256))
_HASH_BASE = np.uint64(0x100000001B3)  # odd: multiplying by its powers is a bijection mod 2**64


class _VisibleText(HTMLParser):
    """Text a browser would show: everything outside tags, scripts and styles."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._hidden += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data):
        if not self._hidden:
            self.parts.append(data)


def visible_html_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


def word_hashes(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(hash, length) of every word of UTF-8 `raw`, vectorised: a polynomial prefix sum over the bytes
    gives each word's hash (times a power that is the same for every word of the text, so equal words
    get equal values). Deterministic: no per-process hash seed."""
    data = np.frombuffer(raw.translate(_WORD_BYTES), dtype=np.uint8)
    edges = np.diff(np.concatenate(([0], data != 0, [0])).astype(np.int8))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    n = len(data)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(n + 1, _HASH_BASE, dtype=np.uint64))
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(data.astype(np.uint64) * powers[:n])))
        hashes = (prefix[ends] - prefix[starts]) * powers[n - starts]
    return hashes, ends - starts


def dup_ngram_fraction(hashes: np.ndarray, lengths: np.ndarray, n: int) -> float:
    """Share of word characters inside word n-grams that occur more than once (RedPajama's
    `frac_chars_dupe_ngrams`, which OpenCoder thresholds)."""
    starts = len(hashes) - n + 1
    if starts <= 1:
        return 0.0
    with np.errstate(over="ignore"):
        codes = np.zeros(starts, dtype=np.uint64)
        for k in range(n):
            codes = codes * _HASH_BASE + hashes[k:k + starts]
    _, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    repeated = (counts[inverse] > 1).astype(np.int64)
    covering = np.convolve(repeated, np.ones(n, dtype=np.int64))[: len(hashes)]  # word j: n-grams j-n+1..j
    return float(lengths[covering > 0].sum() / lengths.sum())


class Signals:
    """Every measure of one record, computed on first use. Character fractions are over characters
    (as in StarCoder); line fractions over non-blank lines."""

    def __init__(self, text: str, language: str | None):
        self.text = text
        self.language = language

    # -- sizes and lines -------------------------------------------------------------------------
    @cached_property
    def chars(self) -> int:
        return len(self.text)

    @cached_property
    def raw(self) -> bytes:
        return self.text.encode("utf-8", "surrogatepass")

    @cached_property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    @cached_property
    def stripped_lines(self) -> list[str]:
        """Non-blank lines, stripped."""
        return [s for s in (line.strip() for line in self.lines) if s]

    @cached_property
    def nonblank_lines(self) -> int:
        return len(self.stripped_lines)

    @cached_property
    def max_line_length(self) -> int:
        return max(map(len, self.lines), default=0)

    @cached_property
    def mean_line_length(self) -> float:
        return sum(map(len, self.lines)) / len(self.lines) if self.lines else 0.0

    @cached_property
    def xml_header_offset(self) -> int | None:
        """Where `<?xml version=` starts within the first 100 characters (StarCoder's XML filter)."""
        at = self.text.find("<?xml version=", 0, 100)
        return at if at >= 0 else None

    # -- character classes -----------------------------------------------------------------------
    @cached_property
    def _class_counts(self) -> tuple[int, ...]:
        """(alphanumeric, alphabetic, digit, whitespace) characters, counted at C speed: ASCII ones by
        deleting a class from the UTF-8 bytes (non-ASCII bytes are never deleted), the rest per char."""
        raw = self.raw
        counts = [len(raw) - len(raw.translate(None, cls)) for cls in (_ALNUM, _ALPHA, _DIGIT, _SPACE)]
        if not self.text.isascii():
            rest = _ASCII_RUNS.sub("", self.text)
            for i, test in enumerate((str.isalnum, str.isalpha, str.isdigit, str.isspace)):
                counts[i] += sum(map(test, rest))
        return tuple(counts)

    def _fraction(self, count: int) -> float:
        return count / self.chars if self.chars else 0.0

    @cached_property
    def alphanum_fraction(self) -> float:
        return self._fraction(self._class_counts[0])

    @cached_property
    def alpha_fraction(self) -> float:
        return self._fraction(self._class_counts[1])

    @cached_property
    def digit_fraction(self) -> float:
        return self._fraction(self._class_counts[2])

    @cached_property
    def whitespace_fraction(self) -> float:
        return self._fraction(self._class_counts[3])

    @cached_property
    def encoded_data_fraction(self) -> float:
        """Share of characters in base64/hex blobs, hex byte arrays and \\x / \\u escape runs."""
        covered = 0
        mapped = self.raw.translate(_BASE64_MAP)
        at = mapped.find(_LONG_RUN)
        while at >= 0:
            end = mapped.find(b" ", at)
            end = len(mapped) if end < 0 else end
            covered += end - at  # base64 characters are ASCII: bytes = characters
            at = mapped.find(_LONG_RUN, end)
        for marker, pattern in _ENCODED_LISTS.items():
            if self.text.count(marker) >= _MIN_LIST_MARKERS:
                covered += sum(m.end() - m.start() for m in pattern.finditer(self.text))
        return min(1.0, self._fraction(covered))

    # -- repetition ------------------------------------------------------------------------------
    @cached_property
    def dup_lines_fraction(self) -> float:
        """Share of non-blank lines that repeat an earlier line (stripped)."""
        lines = self.stripped_lines
        return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0

    @cached_property
    def _words(self) -> tuple[np.ndarray, np.ndarray]:
        return word_hashes(self.raw)

    @cached_property
    def dup_5gram_fraction(self) -> float:
        return dup_ngram_fraction(*self._words, 5)

    @cached_property
    def dup_10gram_fraction(self) -> float:
        return dup_ngram_fraction(*self._words, 10)

    # -- language-aware --------------------------------------------------------------------------
    @cached_property
    def comment_fraction(self) -> float:
        return self._fraction(sum(map(len, comments(self.text, self.language))))

    @cached_property
    def _line_kinds(self) -> dict[str, int]:
        counts = dict.fromkeys(_LINE_KINDS, 0)
        for line in self.stripped_lines:
            if line.startswith(_LINE_PREFIXES):
                for kind, pattern in _LINE_KINDS.items():
                    if pattern.match(line):
                        counts[kind] += 1
                        break
        return counts

    def _line_fraction(self, kind: str) -> float:
        return self._line_kinds[kind] / self.nonblank_lines if self.nonblank_lines else 0.0

    @cached_property
    def assert_fraction(self) -> float:
        return self._line_fraction("assert")

    @cached_property
    def python_pass_fraction(self) -> float:
        return self._line_fraction("pass")

    @cached_property
    def python_import_fraction(self) -> float:
        return self._line_fraction("import")

    @cached_property
    def python_print_fraction(self) -> float:
        return self._line_fraction("print")

    @cached_property
    def html_visible_text(self) -> str:
        return visible_html_text(self.text)

    @cached_property
    def html_text_fraction(self) -> float:
        return self._fraction(len(self.html_visible_text))

    @cached_property
    def html_text_chars(self) -> int:
        return len(self.html_visible_text)


def python_syntax_error(text: str, tree_has_error) -> int | None:
    """Line of the first syntax error of Python source, or None if it compiles.

    The running interpreter's compiler is the reference (compiling to bytecode is ~1.5x cheaper than
    building `ast` objects, and also catches `return` outside a function and the like; top-level
    `await` is allowed, as in notebooks). But it rejects syntax newer than itself, so a failure counts
    only when tree-sitter (whose grammar follows the latest Python and also accepts Python 2) sees an
    error too, or the file shows Python 2 (print/exec statements, py2-only errors).
    `tree_has_error(text)` is called only when compiling fails.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes etc. are not errors
            compile(text, "<record>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        return None
    except SyntaxError as e:
        error = e
    except (ValueError, RecursionError, MemoryError, OverflowError):  # NUL bytes, absurd nesting
        return 1
    py2 = bool(_PY2_STATEMENT.search(text)) or any(m in (error.msg or "") for m in _PY2_MESSAGES)
    if py2 or tree_has_error(text):
        return error.lineno or 1
    return None
