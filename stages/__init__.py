"""The stage registry: SPEC stage names -> classes. One module per stage family."""

from stages.decontaminate import Decontaminate
from stages.exact_dedup import ExactDedup
from stages.language import LanguageSelection
from stages.license import LicenseFilter
from stages.near_dedup import NearDedup
from stages.opt_out import OptOut
from stages.pii import Pii
from stages.quality import QualityFilters

STAGES: dict[str, type] = {
    cls.kind: cls
    for cls in (
        Decontaminate,
        ExactDedup,
        LanguageSelection,
        LicenseFilter,
        NearDedup,
        OptOut,
        Pii,
        QualityFilters,
    )
}
