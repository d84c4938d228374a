"""Fill-in-the-middle at the character level, as StarCoder: with probability `rate` a file is cut at two
random character positions into prefix/middle/suffix and rearranged as PSM or SPM (`spm_rate`)."""

from dataclasses import dataclass

from pydantic import Field

from pipeline.config import Strict
from pipeline.shards.seeded import unit_intervals

Piece = str | int  # text to tokenize, or the id of a special token


class FimOptions(Strict):
    rate: float = Field(default=0.5, ge=0, le=1)
    spm_rate: float = Field(default=0.5, ge=0, le=1)  # of the FIM'd files, those in SPM order


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    middle: int
    suffix: int


def fim_pieces(text: str, key: str, seed: int, options: FimOptions, tokens: FimTokens) -> tuple[list[Piece], str]:
    """One file's pieces and its mode (`plain`, `psm`, `spm`); the choice depends on (seed, key) only.

    PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
    SPM: <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle   (StarCoder's SPM variant)
    """
    apply, spm, a, b = unit_intervals(seed, "fim", key, count=4)
    if apply >= options.rate:
        return [text], "plain"
    lo, hi = sorted((int(a * (len(text) + 1)), int(b * (len(text) + 1))))
    prefix, middle, suffix = text[:lo], text[lo:hi], text[hi:]
    if spm < options.spm_rate:
        return [tokens.prefix, tokens.suffix, suffix, tokens.middle, prefix, middle], "spm"
    return [tokens.prefix, prefix, tokens.suffix, suffix, tokens.middle, middle], "psm"
