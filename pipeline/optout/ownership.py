"""Who may remove what: the requester (the issue's author) their own account and repositories, and
those of organisations the registry lists them as a member of. Everything else is rejected."""

from dataclasses import dataclass

from pipeline.optout.parser import ParsedRequest, Target

ACCEPTED, DUPLICATE, REJECTED, UNPARSED = "accepted", "duplicate", "rejected", "unparsed"


@dataclass(frozen=True)
class Decision:
    line: int
    text: str
    target: Target | None
    outcome: str  # ACCEPTED, DUPLICATE, REJECTED or UNPARSED
    reason: str


def decide(parsed: ParsedRequest, requester: str, orgs: set[str], owners: set[str],
           repos: set[str]) -> list[Decision]:
    """One decision per target and per line not understood. `requester` and `orgs` are lowercase;
    `owners`/`repos` are what the registry already holds (those targets are DUPLICATE)."""
    decisions: list[Decision] = []
    seen: set[Target] = set()
    for line in parsed.lines:
        text = line.text.strip()
        if not line.understood:
            decisions.append(Decision(line.number, text, None, UNPARSED, line.problem))
            continue
        targets = line.targets + ([Target(requester)] if line.wants_all else [])
        for target in targets:
            if target.owner == requester:
                why = "own account" if target.repo is None else "own repository"
            elif target.owner in orgs:
                why = f"{requester} is a member of {target.owner}"
            else:
                decisions.append(Decision(line.number, text, target, REJECTED,
                                          f"{target.owner} is not {requester} and the registry lists no membership "
                                          f"of {requester} in {target.owner}"))
                continue
            if target in seen:
                decisions.append(Decision(line.number, text, target, DUPLICATE, "listed earlier in this request"))
            elif target.owner in owners or str(target) in repos:
                decisions.append(Decision(line.number, text, target, DUPLICATE, "already opted out"))
            else:
                decisions.append(Decision(line.number, text, target, ACCEPTED, why))
            seen.add(target)
    return decisions
