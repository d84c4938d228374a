"""decontaminate: drop records that hold a benchmark task (HumanEval, MBPP, any JSONL benchmark).

Exact matching (Aho–Corasick over case-folded, whitespace-collapsed benchmark strings) and n-gram
matching (code-aware tokens, identifiers optionally as placeholders), both indexed once per process;
see `stages/decontaminate_index.py` for how.
"""

from datatrove.data import Document
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from pipeline.benchmarks import BenchmarkSpec, locate, spec_of
from pipeline.config import StageOptions
from pipeline.errors import UserError
from pipeline.step import CodeStage, FilterResult


class DecontaminateOptions(StageOptions):
    benchmarks: list[BenchmarkSpec | str] = Field(default_factory=lambda: ["humaneval", "mbpp"], min_length=1)
    min_chars: int = Field(default=50, ge=10)  # exact: shortest prose or unnamed code matched (normalised)
    ngram_size: int = Field(default=10, ge=3, le=64)
    # the share of one benchmark string's distinctive n-grams that makes a record contaminated
    min_overlap: float = Field(default=0.5, gt=0, le=1, allow_inf_nan=False)
    min_ngrams: int = Field(default=10, ge=1)  # fewer distinctive n-grams: that string is matched exactly only
    # ...except code defining a function or class with at least this many: a record must hold all of them
    # (short solutions, also after a code formatter changed what the exact matcher sees)
    min_named_ngrams: int = Field(default=5, ge=1)
    normalize_identifiers: bool = True  # also match code with identifiers as placeholders (renamed copies)
    # code with placeholders, or naming no function, is often idiom (`d = a.copy(); d.update(b); return d`):
    # a record must hold at least this many of such a string's n-grams
    min_idiom_ngrams: int = Field(default=30, ge=1)

    @field_validator("benchmarks")
    @classmethod
    def _complete(cls, entries):
        try:
            names = [spec_of(entry).name for entry in entries]
        except UserError as e:
            raise PydanticCustomError("benchmark", str(e)) from None
        if len(set(names)) != len(names):
            raise PydanticCustomError("benchmark", "a benchmark is listed twice: {names}", {"names": names})
        return entries


def match_settings(options: DecontaminateOptions):
    """The options the index is built from, as the hashable `MatchSettings` it is cached by."""
    from stages.decontaminate_index import MatchSettings

    return MatchSettings(**options.model_dump(include=set(MatchSettings.__dataclass_fields__)))


class Decontaminate(CodeStage):
    """SPEC `decontaminate`: `contaminated:<benchmark>/<task_id>:<exact|ngram>`; details per benchmark."""

    kind = "decontaminate"
    rewrites_text = False
    Options = DecontaminateOptions

    def __init__(self, name: str, options: DecontaminateOptions | None = None, removed_writer=None):
        super().__init__(name, options, removed_writer)
        # Located here, in the main process, so a missing benchmark is a user error before any work starts.
        specs = [spec_of(entry) for entry in self.options.benchmarks]
        self.sources = tuple((spec.model_dump_json(), str(locate(spec))) for spec in specs)
        self.index = None

    def setup(self, rank: int, world_size: int) -> None:
        from stages.decontaminate_index import build_index

        self.index = build_index(self.sources, match_settings(self.options))

    def filter(self, doc: Document) -> FilterResult:
        hit = self.index.match(self.text(doc))
        if hit is None:
            return True
        item, method = hit
        self.details[f"benchmark:{item.benchmark}"] += 1
        self.details[f"method:{method}"] += 1
        return False, f"contaminated:{item.benchmark}/{item.task_id}:{method}"
