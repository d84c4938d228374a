"""pii: redact (or drop records with) emails, public IPs, keys/tokens, passwords and optionally names.

The SPEC lets this stage rewrite `content` (never the identity). Detection is presidio-analyzer with
our recognizers (detect-secrets plugins for keys), fully offline; see `stages.pii_engine`.
Original values never reach logs or stats: `details` only counts replacements per entity.
"""

import hashlib
import random
import string
from typing import Literal

import pyarrow as pa
from datatrove.data import Document
from pydantic import model_validator

from pipeline.config import StageOptions
from pipeline.records import CONTENT
from pipeline.step import CodeStage, FilterResult

Entity = Literal["EMAIL", "IP_ADDRESS", "KEY", "PASSWORD", "NAME"]
PLACEHOLDERS = {"EMAIL": "<EMAIL>", "IP_ADDRESS": "<IP_ADDRESS>", "KEY": "<KEY>", "PASSWORD": "<PASSWORD>",
                "NAME": "<NAME>"}


class PiiOptions(StageOptions):
    entities: list[Entity] = ["EMAIL", "IP_ADDRESS", "KEY", "PASSWORD"]
    action: Literal["redact", "drop"] = "redact"  # drop: the record goes to removed/pii as `pii:<ENTITY>,...`
    mode: Literal["placeholder", "fake"] = "placeholder"
    ner_model: str | None = None  # spaCy pipeline with `ner` (package name or absolute path); needed by NAME
    recognizers: list[str] = []  # extra presidio recognizers, "package.module:ClassName", added to the registry

    @model_validator(mode="after")
    def _name_needs_ner(self):
        if "NAME" in self.entities and not self.ner_model:
            raise ValueError("entity NAME needs ner_model (a spaCy pipeline with an ner component)")
        return self


class FakeValues:
    """BigCode-style replacements that keep the syntax valid: the same value gets the same replacement
    within a record, and the choice is seeded by the record's blob so runs are reproducible."""

    def __init__(self, seed: str):
        self.rng = random.Random(hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest())
        self.seen: dict[tuple[str, str], str] = {}

    def __call__(self, entity: str, value: str) -> str:
        key = (entity, value)
        if key not in self.seen:
            self.seen[key] = self._new(entity, value)
        return self.seen[key]

    def _letters(self, n: int, alphabet: str = string.ascii_lowercase) -> str:
        return "".join(self.rng.choices(alphabet, k=n))

    def _new(self, entity: str, value: str) -> str:
        r = self.rng.randrange
        if entity == "EMAIL":
            return f"{self._letters(8)}@example.com"
        if entity == "IP_ADDRESS":
            if ":" in value:
                return f"fd{r(256):02x}:{r(65536):x}:{r(65536):x}::{r(1, 65536):x}"
            return self.rng.choice([f"10.{r(256)}.{r(256)}.{r(1, 255)}", f"172.{r(16, 32)}.{r(256)}.{r(1, 255)}",
                                    f"192.168.{r(256)}.{r(1, 255)}"])
        if entity == "KEY":
            return self._letters(32, string.ascii_letters + string.digits)
        if entity == "PASSWORD":
            return self._letters(12, string.ascii_letters + string.digits)
        return self._letters(6).capitalize()


def redact(text: str, spans: list[tuple[int, int, str]], fake: FakeValues | None) -> str:
    out, pos = [], 0
    for start, end, entity in spans:
        out += [text[pos:start], fake(entity, text[start:end]) if fake else PLACEHOLDERS.get(entity, f"<{entity}>")]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def text_parts(doc: Document, field: str) -> list[str]:
    """The strings a record's `text_field` holds: `content`, another string column, or SFT turns."""
    if field == CONTENT:
        return [doc.text or ""]
    value = doc.metadata.get(field)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(turn.get("content") or "") for turn in value]


def set_text_parts(doc: Document, field: str, parts: list[str]) -> None:
    if field == CONTENT:
        doc.text = parts[0]
    elif isinstance(doc.metadata.get(field), str):
        doc.metadata[field] = parts[0]
    else:
        doc.metadata[field] = [dict(turn, content=part) for turn, part in zip(doc.metadata[field], parts,
                                                                               strict=True)]


class Pii(CodeStage):
    """SPEC `pii`: placeholders (or fake values) for PII and secrets; `pii_redactions` counts them."""

    kind = "pii"
    Options = PiiOptions
    added_columns = {"pii_redactions": pa.int64()}

    def setup(self, rank: int, world_size: int) -> None:
        from stages.pii_engine import PiiDetector

        self.detector = PiiDetector(self.options.entities, self.options.ner_model, self.options.recognizers)

    def filter_batch(self, batch: list[Document]) -> list[FilterResult]:
        field = self.options.text_field
        parts = [text_parts(doc, field) for doc in batch]
        flat = [part for doc_parts in parts for part in doc_parts]
        found = iter(self.detector.detect_batch(flat))
        results: list[FilterResult] = []
        for doc, doc_parts in zip(batch, parts, strict=True):
            spans = [next(found) for _ in doc_parts]
            entities = sorted({entity for part_spans in spans for _, _, entity in part_spans})
            count = sum(len(s) for s in spans)
            for part_spans in spans:
                for _, _, entity in part_spans:
                    self.details[entity] += 1
            if count and self.options.action == "drop":
                results.append((False, "pii:" + ",".join(entities)))
                continue
            if count:
                fake = FakeValues(doc.metadata.get("blob_id") or doc.id) if self.options.mode == "fake" else None
                set_text_parts(doc, field, [redact(p, s, fake) for p, s in zip(doc_parts, spans, strict=True)])
                self.details["records_redacted"] += 1
            doc.metadata["pii_redactions"] = count
            results.append(True)
        return results
