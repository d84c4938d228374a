"""opt_out: drop the records of repositories and accounts in the opt-out registry."""

from datatrove.data import Document
from pydantic import Field

from pipeline.config import StageOptions
from pipeline.optout.registry import Registry
from pipeline.step import CodeStage, FilterResult


class OptOutOptions(StageOptions):
    registry: str = Field(default="optout.duckdb", json_schema_extra={"path": True})  # missing file: empty


class OptOut(CodeStage):
    """SPEC `opt_out`: `repo_name` owner or owner/repo opted out (case-insensitive) -> `opt_out:<...>`.

    The registry is read once, when the run is planned, so every task uses the same version (the
    one written to manifest.json) even if requests are added while the run goes on.
    """

    kind = "opt_out"
    rewrites_text = False
    Options = OptOutOptions

    def __init__(self, name: str, options: OptOutOptions | None = None, removed_writer=None):
        super().__init__(name, options, removed_writer=removed_writer)
        self.optouts = Registry(self.options.registry).snapshot()

    def manifest_info(self) -> dict:
        return {"optout_registry_version": self.optouts.version}

    def filter(self, doc: Document) -> FilterResult:
        reason = self.optouts.reason(doc.metadata.get("repo_name"))
        return True if reason is None else (False, reason)
