"""go-enry (GitHub linguist's rules, as Software Heritage ran them for The Stack v2), loaded on first use.

enry runs a Go runtime, which does not survive fork(): loaded in the forkserver (which preloads `stages`),
it hangs every forked worker at the Go runtime's first garbage collection. So nothing imports it at module
level; each process loads it when it first needs it.
"""

from functools import cache
from types import ModuleType


@cache
def enry() -> ModuleType:
    import enry as module

    return module


def language_type(language: str | None) -> str:
    """linguist's type of a language: programming, markup, data, prose, or unknown."""
    return enry().get_language_type(language) if language else "unknown"
