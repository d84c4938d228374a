"""quality_filters: StarCoder's and OpenCoder's heuristic code-quality rules, each named, with a
default threshold the config overrides by name (`max_line_length: 2000`, `python_pass_fraction: null`
to turn a rule off) or per language (`per_language: {Markdown: {max_line_length: 5000}}`).

A record is removed by the first rule it fails, as `filter:<rule>=<measured value>`; rules run in cost
order and measures are computed lazily, so a record removed by a cheap rule is never parsed.
"""

from datatrove.data import Document
from pydantic import create_model, field_validator

from pipeline.config import StageOptions
from pipeline.records import filter_reason
from pipeline.step import CodeStage, FilterResult
from stages.linguist import enry, language_type
from stages.quality_rules import LANGUAGE_DEFAULTS, PARSE_RULES, RULE_NAMES, RULES, TYPE_DEFAULTS, Rule, Threshold
from stages.quality_signals import Signals


class _QualityOptionsBase(StageOptions):
    per_language: dict[str, dict[str, float | bool | None]] = {}

    @field_validator("per_language")
    @classmethod
    def _known_rules(cls, value: dict[str, dict[str, Threshold]]) -> dict[str, dict[str, Threshold]]:
        for language, rules in value.items():
            unknown = sorted(set(rules) - set(RULE_NAMES))
            if unknown:
                raise ValueError(f"{language}: unknown rule {unknown[0]!r} (valid: {', '.join(RULE_NAMES)})")
        return value


def _threshold_type(rule: Rule) -> type:
    return bool if rule.kind == "flag" else float | None


QualityOptions = create_model(
    "QualityOptions", __base__=_QualityOptionsBase,
    **{rule.name: (_threshold_type(rule), rule.default) for rule in RULES},
)


class QualityFilters(CodeStage):
    """SPEC `quality_filters`. Per-rule removal counts land in `details` (`filter:<rule>`); `parsed`
    counts the records that reached a parse check."""

    kind = "quality_filters"
    rewrites_text = False
    Options = QualityOptions

    def __init__(self, name: str, options: StageOptions | None = None, removed_writer=None):
        super().__init__(name, options, removed_writer)
        self._plans: dict[str | None, list[tuple[Rule, Threshold]]] = {}

    def plan(self, language: str | None) -> list[tuple[Rule, Threshold]]:
        """The rules that apply to `language` with their thresholds, in cost order."""
        if language not in self._plans:
            thresholds = {name: getattr(self.options, name) for name in RULE_NAMES}
            if language:
                thresholds.update(TYPE_DEFAULTS.get(language_type(language), {}))
                thresholds.update(LANGUAGE_DEFAULTS.get(language, {}))
                thresholds.update(self.options.per_language.get(language, {}))
            self._plans[language] = [(rule, thresholds[rule.name]) for rule in RULES
                                     if rule.applies_to(language) and thresholds[rule.name] not in (None, False)]
        return self._plans[language]

    def filter(self, doc: Document) -> FilterResult:
        language = doc.metadata.get("language") or _language_by_extension(doc.metadata.get("path") or "")
        signals = Signals(self.text(doc), language)
        for rule, threshold in self.plan(language):
            if rule.name in PARSE_RULES:
                self.details["parsed"] += 1
            value = rule.measure(signals)
            if rule.removes(value, threshold):
                return False, filter_reason(rule.name, value)
        return True


def _language_by_extension(path: str) -> str | None:
    """Records without a `language` (no language_selection before us): linguist's guess by name."""
    return enry().get_language_by_extension(path).language or None
