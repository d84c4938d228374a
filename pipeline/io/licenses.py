"""Repository licenses of ingested source trees, labelled as The Stack v2 labels them.

`detected_licenses` lists the SPDX ids found in the license files at a repository's root (LICENSE*,
LICENCE*, COPYING*, COPYRIGHT*, UNLICENSE*; README* license sections when there is no license file)
plus any `SPDX-License-Identifier:` they carry. `license_type` is `permissive` when every detected
license is permissive (Blue Oak / ScanCode permissive and public-domain licenses), `no_license` when
none is found, `non_permissive` otherwise.

Detection matches distinctive phrases of each license's text and of standard notices on normalised
text (lower case, punctuation as spaces), so reflowed or re-punctuated copies still match. A file
names one license: the one whose text starts first (license files often quote others further down,
as Python's LICENSE quotes the GPL). Names alone ("MIT", "GPLv3") count only in short files, README
license sections and SPDX identifiers, never in long texts that mention other licenses.
"""

import re
from collections.abc import Callable, Iterable

PERMISSIVE = frozenset({"MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "0BSD", "ISC", "Unlicense",
                        "CC0-1.0", "Python-2.0", "Zlib", "BSL-1.0", "WTFPL", "X11", "NCSA", "PostgreSQL"})
LICENSE_FILE = re.compile(r"^(?:un)?licen[cs]e|^copying|^copyright|^mit-license", re.IGNORECASE)
README_FILE = re.compile(r"^readme(?:\.|$)", re.IGNORECASE)
MAX_READ = 64 * 1024
SHORT_TEXT = 300  # normalised characters: a license file this short names its license rather than quoting it
_VERSIONED = r"(?:(?: as published by the free software foundation)?(?: either)?(?: version| v)? ?(\d(?: \d)?)\b)"


def _bsd_variant(text: str) -> str:
    if "all advertising materials mentioning features" in text:
        return "BSD-4-Clause"
    if "neither the name" in text or "endorse or promote products derived" in text:
        return "BSD-3-Clause"
    return "BSD-2-Clause"


def _version(number: str | None, default: str) -> str:
    """'3' -> '3.0', '2 1' -> '2.1' (normalised text has spaces for dots)."""
    if not number:
        return default
    return number.replace(" ", ".") if " " in number else f"{number}.0"


def _versioned(family: str, default: str) -> Callable[[re.Match, str], str]:
    return lambda m, _: f"{family}-{_version(m.group(1), default)}"


def _fixed(spdx: str) -> Callable[[re.Match, str], str]:
    return lambda m, _: spdx


Patterns = list[tuple[re.Pattern, Callable[[re.Match, str], str]]]


def _compiled(pairs: list[tuple[str, Callable[[re.Match, str], str]]]) -> Patterns:
    return [(re.compile(pattern), name) for pattern, name in pairs]


# (pattern on normalised text, license id from the match and the whole text). Earlier entries win ties.
TEXT_PATTERNS = _compiled([
    (r"gnu affero general public license", _fixed("AGPL-3.0")),
    (rf"gnu lesser general public license{_VERSIONED}?", _versioned("LGPL", "2.1")),
    (r"gnu library general public license", _fixed("LGPL-2.0")),
    (rf"gnu general public license{_VERSIONED}?", _versioned("GPL", "1.0-or-later")),
    (rf"gnu free documentation license{_VERSIONED}?", _versioned("GFDL", "1.1-or-later")),
    (r"apache license(?: version)? 2 0|apache 2 0 license|apache org licenses license 2 0", _fixed("Apache-2.0")),
    (r"mozilla public license(?: version| v)? ?([12] [01])\b", _versioned("MPL", "2.0")),
    (r"eclipse public license(?: version| v)? ?([12] 0)\b", _versioned("EPL", "2.0")),
    (r"permission is hereby granted free of charge to any person obtaining a copy", _fixed("MIT")),
    (r"redistribution and use in source and binary forms with or without modification are permitted",
     lambda m, text: _bsd_variant(text)),
    (r"permission to use copy modify and or distribute this software for any purpose with or without fee",
     _fixed("ISC")),
    (r"this is free and unencumbered software released into the public domain", _fixed("Unlicense")),
    (r"cc0 1 0 universal|creativecommons org publicdomain zero", _fixed("CC0-1.0")),
    (r"python software foundation license|psf license agreement", _fixed("Python-2.0")),
    (r"boost software license(?: version)? 1 0", _fixed("BSL-1.0")),
    (r"altered source versions must be plainly marked as such", _fixed("Zlib")),
    (r"the artistic license 2 0", _fixed("Artistic-2.0")),
    (r"the artistic license\b", _fixed("Artistic-1.0")),
    (r"same terms as perl itself", _fixed("Artistic-1.0-Perl")),
    (r"do what the fuck you want to public license", _fixed("WTFPL")),
])
NAME_PATTERNS = _compiled([
    (r"\bagpl(?: ?v)?(?: ?3)?\b", _fixed("AGPL-3.0")),
    (r"\blgpl(?: ?v)? ?(2 1|3)?\b", _versioned("LGPL", "2.1")),
    (r"\bgpl(?: ?v)? ?([123])?\b", _versioned("GPL", "1.0-or-later")),
    (r"\bapache(?: software)?(?: license)?(?: version| v)? ?2\b|\bapache software license\b", _fixed("Apache-2.0")),
    (r"\bmpl(?: ?v)? ?2\b", _fixed("MPL-2.0")),
    (r"\bmit\b", _fixed("MIT")),
    (r"\b(?:bsd 3 clause|3 clause bsd|new bsd|modified bsd|revised bsd)\b", _fixed("BSD-3-Clause")),
    (r"\b(?:bsd 2 clause|2 clause bsd|simplified bsd|freebsd license)\b", _fixed("BSD-2-Clause")),
    (r"\bbsd\b", _fixed("BSD-3-Clause")),
    (r"\bisc\b", _fixed("ISC")),
    (r"\bunlicense\b", _fixed("Unlicense")),
    (r"\bcc0\b", _fixed("CC0-1.0")),
    (r"\bpsf\b", _fixed("Python-2.0")),
    (r"\bartistic(?: license)? 2\b", _fixed("Artistic-2.0")),
    (r"\bboost software license\b", _fixed("BSL-1.0")),
    (r"\bzlib license\b", _fixed("Zlib")),
])
_SPDX = re.compile(r"SPDX-License-Identifier:\s*([^\n*]+?)\s*(?:\*/|-->|$)", re.MULTILINE)
_SPDX_TOKEN = re.compile(r"[A-Za-z0-9.+-]+")
_SPDX_SUFFIX = re.compile(r"(?:-only|-or-later|\+)$", re.IGNORECASE)
_SPDX_KNOWN = {spdx.lower(): spdx for spdx in PERMISSIVE | {
    "GPL-1.0", "GPL-2.0", "GPL-3.0", "LGPL-2.0", "LGPL-2.1", "LGPL-3.0", "AGPL-3.0", "MPL-1.1", "MPL-2.0",
    "EPL-1.0", "EPL-2.0", "Artistic-1.0", "Artistic-1.0-Perl", "Artistic-2.0", "BSD-4-Clause"}}
_README_SECTION = re.compile(r"^(?:#+[ \t]*|\.\.[ \t]*_)?licen[cs](?:e|ing)\b.*$", re.IGNORECASE | re.MULTILINE)
_README_SECTION_CHARS = 1500
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def normalise(text: str) -> str:
    return _NON_ALNUM.sub(" ", text.lower()).strip()


def spdx_identifiers(text: str) -> list[str]:
    """Licenses named by `SPDX-License-Identifier:` lines (exceptions and operators dropped)."""
    found = []
    for expression in _SPDX.findall(text):
        for token in _SPDX_TOKEN.findall(expression):
            if token.upper() in ("AND", "OR", "WITH") or token.lower().endswith("exception"):
                continue
            base = _SPDX_SUFFIX.sub("", token)
            found.append(_SPDX_KNOWN.get(base.lower(), base))
    return found


def _first_license(text: str, patterns: Patterns) -> str | None:
    best: tuple[int, int, str] | None = None
    for order, (pattern, name) in enumerate(patterns):
        match = pattern.search(text)
        if match and (best is None or (match.start(), order) < best[:2]):
            best = (match.start(), order, name(match, text))
    return best[2] if best else None


def license_of_file(text: str) -> list[str]:
    """The licenses a license file grants: its SPDX identifiers, else the first license text in it."""
    if ids := spdx_identifiers(text):
        return ids
    normal = normalise(text)
    patterns = TEXT_PATTERNS + NAME_PATTERNS if len(normal) <= SHORT_TEXT else TEXT_PATTERNS
    found = _first_license(normal, patterns)
    return [found] if found else []


def license_of_readme(text: str) -> list[str]:
    """The license a README states in its "License" section (Markdown or reStructuredText heading)."""
    if ids := spdx_identifiers(text):
        return ids
    heading = _README_SECTION.search(text)
    if heading is None:
        return []
    section = normalise(text[heading.start(): heading.end() + _README_SECTION_CHARS])
    found = _first_license(section, TEXT_PATTERNS + NAME_PATTERNS)
    return [found] if found else []


def license_type(licenses: list[str]) -> str:
    if not licenses:
        return "no_license"
    return "permissive" if all(spdx in PERMISSIVE for spdx in licenses) else "non_permissive"


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_READ).decode("utf-8", errors="replace")
    except OSError:
        return ""


def detect_repo_licenses(root_files: dict[str, str]) -> list[str]:
    """Licenses of a repository from its root files ({file name: absolute path}), sorted, unique."""
    found: set[str] = set()
    for name, path in root_files.items():
        if LICENSE_FILE.match(name):
            found.update(license_of_file(_read(path)))
    if not found:
        for name, path in root_files.items():
            if README_FILE.match(name):
                found.update(license_of_readme(_read(path)))
    return sorted(found)


def repo_licenses(files: Iterable[tuple[str, str, str]], inherit_from: str | None = None) -> dict[str, list[str]]:
    """{repo: licenses} for (repo_name, path in repo, absolute path) triples. Repositories with no
    license of their own take `inherit_from`'s (the source root's files, which cover its sub-trees)."""
    root_files: dict[str, dict[str, str]] = {}
    for repo, path, abspath in files:
        names = root_files.setdefault(repo, {})
        if "/" not in path and (LICENSE_FILE.match(path) or README_FILE.match(path)):
            names[path] = abspath
    licenses = {repo: detect_repo_licenses(names) for repo, names in root_files.items()}
    inherited = licenses.get(inherit_from, []) if inherit_from else []
    return {repo: found or inherited for repo, found in licenses.items()}
