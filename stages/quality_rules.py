"""The quality rules: name, direction, default threshold, what they measure, and which languages they
apply to. Order is cost order: a record meets the costly measures (n-grams, parsing) only after every
cheap rule kept it.

Defaults follow StarCoder (line lengths, alphanumeric fraction, XML, HTML, JSON/YAML sizes) and
OpenCoder's code rules; where OpenCoder's value removed plainly good code of real packages in our
measurements, a looser value is used and the README says so.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from stages.quality_signals import Signals, python_syntax_error
from stages.syntax import GRAMMARS, has_syntax_error, syntax_error_fraction

Threshold = float | bool | None


@dataclass(frozen=True)
class Rule:
    name: str
    kind: Literal["max", "min", "flag"]  # remove when value > t, value < t, or (flag) when a value is found
    default: Threshold  # None: off unless configured
    measure: Callable[[Signals], float | int | None]
    languages: frozenset[str] = field(default_factory=frozenset)  # empty: every language
    excluded: frozenset[str] = field(default_factory=frozenset)

    def applies_to(self, language: str | None) -> bool:
        if self.languages and language not in self.languages:
            return False
        return language not in self.excluded

    def removes(self, value: float | int | None, threshold: Threshold) -> bool:
        if value is None:
            return False
        if self.kind == "max":
            return value > threshold
        if self.kind == "min":
            return value < threshold
        return bool(threshold)


def _attr(name: str) -> Callable[[Signals], float | int | None]:
    return lambda s: getattr(s, name)


SHARE_MIN_CHARS = 200  # a character share says little about a shorter text (a 4-line config with a date or a key)


def _share(name: str) -> Callable[[Signals], float | None]:
    """A character-class share, measured on texts of SHARE_MIN_CHARS or more (None: not applicable)."""
    return lambda s: getattr(s, name) if s.chars >= SHARE_MIN_CHARS else None


LINE_SHARE_MIN_LINES = 10  # under ten lines one line moves a share by 10% or more (`class E(Exception): pass`)


def _line_share(name: str) -> Callable[[Signals], float | None]:
    """A share of non-blank lines, measured on texts of LINE_SHARE_MIN_LINES or more (None: not applicable)."""
    return lambda s: getattr(s, name) if s.nonblank_lines >= LINE_SHARE_MIN_LINES else None


def _python_syntax_error(s: Signals) -> int | None:
    return python_syntax_error(s.text, lambda text: has_syntax_error(text, "Python"))


PYTHON = frozenset({"Python"})
PARSED = frozenset(GRAMMARS) - PYTHON
RULES: tuple[Rule, ...] = (
    # sizes (OpenCoder; JSON/YAML bounds from StarCoder below)
    Rule("max_chars", "max", 3_000_000, _attr("chars")),
    Rule("min_chars", "min", 10, _attr("chars")),
    Rule("max_lines", "max", 100_000, lambda s: len(s.lines)),
    Rule("min_lines", "min", None, _attr("nonblank_lines")),
    # StarCoder
    Rule("xml_header", "flag", True, _attr("xml_header_offset")),
    Rule("max_line_length", "max", 1000, _attr("max_line_length")),
    Rule("mean_line_length", "max", 100, _attr("mean_line_length")),
    Rule("alphanum_fraction", "min", 0.25, _share("alphanum_fraction")),
    # OpenCoder character classes and encoded data
    Rule("alpha_fraction", "min", 0.25, _share("alpha_fraction")),
    Rule("digit_fraction", "max", 0.2, _share("digit_fraction")),
    Rule("whitespace_fraction", "max", 0.5, _share("whitespace_fraction")),
    Rule("encoded_data_fraction", "max", 0.5, _share("encoded_data_fraction")),
    # OpenCoder lines
    Rule("dup_lines_fraction", "max", 0.7, _line_share("dup_lines_fraction")),
    Rule("comment_fraction", "max", 0.8, _line_share("comment_fraction")),
    Rule("assert_fraction", "max", 0.4, _line_share("assert_fraction")),
    Rule("python_pass_fraction", "max", 0.1, _line_share("python_pass_fraction"), PYTHON),
    Rule("python_import_fraction", "max", 0.5, _line_share("python_import_fraction"), PYTHON),
    Rule("python_print_fraction", "max", 0.4, _line_share("python_print_fraction"), PYTHON),
    # StarCoder HTML
    Rule("html_text_fraction", "min", 0.2, _attr("html_text_fraction"), frozenset({"HTML"})),
    Rule("html_text_chars", "min", 100, _attr("html_text_chars"), frozenset({"HTML"})),
    # OpenCoder repetition (costlier: tokenises the whole text)
    Rule("dup_5gram_fraction", "max", 0.8, _attr("dup_5gram_fraction")),
    Rule("dup_10gram_fraction", "max", 0.7, _attr("dup_10gram_fraction")),
    # parsing (costliest, last)
    Rule("python_syntax_error", "flag", True, _python_syntax_error, PYTHON),
    Rule("syntax_error_fraction", "max", 0.2, lambda s: syntax_error_fraction(s.raw, s.language), PARSED),
)
RULE_NAMES = tuple(rule.name for rule in RULES)
PARSE_RULES = frozenset({"python_syntax_error", "syntax_error_fraction"})

# Built-in thresholds by linguist language type, then by language; the config's `per_language` wins.
TYPE_DEFAULTS: dict[str, dict[str, Threshold]] = {
    # paragraphs are single long lines; prose has no comments or asserts
    "prose": {"max_line_length": None, "mean_line_length": None, "comment_fraction": None, "assert_fraction": None},
    # keys repeat by nature in data files
    "data": {"comment_fraction": None, "assert_fraction": None, "dup_lines_fraction": None,
             "dup_5gram_fraction": None, "dup_10gram_fraction": None},
}
LANGUAGE_DEFAULTS: dict[str, dict[str, Threshold]] = {
    "JSON": {"min_chars": 50, "max_chars": 5000},  # StarCoder: JSON/YAML between 50 and 5000 characters
    "YAML": {"min_chars": 50, "max_chars": 5000},
    "XSLT": {"xml_header": False},  # StarCoder kept XSLT, which is XML by nature
}
