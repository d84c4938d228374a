"""The stage registry: SPEC stage names -> classes. One module per stage family."""

from stages.exact_dedup import ExactDedup

STAGES: dict[str, type] = {
    cls.kind: cls
    for cls in (
        ExactDedup,
    )
}
