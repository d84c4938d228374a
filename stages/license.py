"""license_filter: keep records whose `license_type` is allowed (The Stack v2 kept permissive and
no-license repositories). Source trees get `license_type` at ingest (pipeline.io.licenses)."""

from typing import Literal

from datatrove.data import Document

from pipeline.config import StageOptions
from pipeline.step import CodeStage, FilterResult

LicenseType = Literal["permissive", "non_permissive", "no_license"]


class LicenseOptions(StageOptions):
    allow: list[LicenseType] = ["permissive", "no_license"]
    missing: Literal["keep", "drop"] = "keep"  # records whose license_type is null (removed as license:missing)


class LicenseFilter(CodeStage):
    """SPEC `license_filter`: removes with `license:<license_type>`."""

    kind = "license_filter"
    rewrites_text = False
    Options = LicenseOptions

    def filter(self, doc: Document) -> FilterResult:
        kind = doc.metadata.get("license_type")
        if kind is None:
            kind, allowed = "missing", self.options.missing == "keep"
        else:
            allowed = kind in self.options.allow
        return True if allowed else (False, f"license:{kind}")
