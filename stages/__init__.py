"""The stage registry: SPEC stage names -> classes. One module per stage family, imported when a
config uses it (a run of exact_dedup alone never loads numba, presidio or tree-sitter)."""

import importlib
from collections.abc import Iterator, Mapping

MODULES: dict[str, str] = {  # stage kind -> "module:Class"
    "decontaminate": "stages.decontaminate:Decontaminate",
    "exact_dedup": "stages.exact_dedup:ExactDedup",
    "language_selection": "stages.language:LanguageSelection",
    "license_filter": "stages.license:LicenseFilter",
    "near_dedup": "stages.near_dedup:NearDedup",
    "opt_out": "stages.opt_out:OptOut",
    "pii": "stages.pii:Pii",
    "quality_filters": "stages.quality:QualityFilters",
}


def module_of(kind: str) -> str:
    return MODULES[kind].split(":")[0]


class _Registry(Mapping):
    def __getitem__(self, kind: str) -> type:
        module, name = MODULES[kind].split(":")
        return getattr(importlib.import_module(module), name)

    def __iter__(self) -> Iterator[str]:
        return iter(MODULES)

    def __len__(self) -> int:
        return len(MODULES)


STAGES: Mapping[str, type] = _Registry()
