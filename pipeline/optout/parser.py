"""Opt-out request text (a GitHub issue body) -> what to remove, line by line.

Both templates are read: the 2023 list ("I request that the following data is removed from The
Stack: - owner/repo ...") and the 2026 issue form ("### Accounts and organizations to remove
ENTIRELY", "### Specific repositories to remove", then free-text sections). A line is understood
only when every word on it is a target (owner/repo, a GitHub URL, an account where accounts are
expected, or `all`); anything else is reported back with the reason, never guessed.
GitHub names are ASCII and case-insensitive: look-alike characters are rejected, names lowercased.
"""

import re
import unicodedata
from dataclasses import dataclass, field
from enum import Enum

MAX_REQUEST_BYTES = 2_000_000
MAX_LINE_CHARS = 2_000
# GitHub rules: accounts are 1-39 ASCII letters, digits or hyphens, not starting with a hyphen
# (legacy accounts may hold double or trailing hyphens); repositories are 1-100 of [A-Za-z0-9._-].
OWNER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}")
REPO_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
# Path segments of github.com that are not accounts.
RESERVED_OWNERS = {"about", "apps", "blog", "collections", "contact", "customer-stories", "enterprise", "events",
                   "explore", "features", "issues", "login", "marketplace", "new", "notifications", "orgs",
                   "pricing", "pulls", "search", "security", "settings", "site", "sponsors", "topics", "trending",
                   "users"}
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Section(Enum):
    REQUEST = "request"  # the 2023 list, or text outside any known form section
    ACCOUNTS = "accounts"
    REPOSITORIES = "repositories"
    FREE_TEXT = "free text"  # the form's relationship / link / anything-else sections: never read for targets


# The 2026 issue form's section titles. A Markdown heading starting like one opens that section; a
# plain line opens it only when it is exactly the title (forms pasted without their `###`).
FORM_TITLES = {"accounts and organizations to remove entirely": Section.ACCOUNTS,
               "specific repositories to remove": Section.REPOSITORIES,
               "optional - your relationship to what you listed": Section.FREE_TEXT,
               "optional - a link that helps confirm this is you/yours": Section.FREE_TEXT,
               "anything else? (optional)": Section.FREE_TEXT}
HEADING_PREFIXES = (("accounts and organizations", Section.ACCOUNTS), ("specific repositories", Section.REPOSITORIES),
                    ("optional", Section.FREE_TEXT), ("anything else", Section.FREE_TEXT))
TEMPLATE_LINES = re.compile(
    r"i request that the following data is removed.*|_?note_?:.*|_?no response_?|\.\.\.|-{3,}|"
    r"(commits|github issues?|issues|pull requests?)( related to)?:?|repositories:", re.ASCII)
ALL_LINE = re.compile(r"(all|everything)( of (them|it|my repos|my repositories|my code))?( please)?[.!]*", re.ASCII)
BULLET = re.compile(r"(?:[-*+•]|\d{1,4}[.)])(?=\s|$)\s*")
CHECKBOX = re.compile(r"\[[ xX]\]\s")
MD_LINK = re.compile(r"\[([^\]\n]*)\]\(([^)\s]*)\)")
AUTOLINK = re.compile(r"<((?:https?://|git@)[^>\s]*)>")
TOKEN_SPLIT = re.compile(r"[\s,;\[\]()<>|\"'`*]+")  # not "_": repository names may start or end with it
GITHUB_URL = re.compile(r"(?:(?:https?|git|ssh)://)?(?:[^@/\s]+@)?(?:www\.)?github\.com[:/](.*)", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Target:
    """An account (repo None) or one repository; names lowercased."""

    owner: str
    repo: str | None = None

    def __str__(self) -> str:
        return self.owner if self.repo is None else f"{self.owner}/{self.repo}"


class ParseError(ValueError):
    """One word of a request that is not a target; the message says why."""


@dataclass
class Line:
    number: int  # 1-based
    text: str
    section: Section
    targets: list[Target] = field(default_factory=list)
    wants_all: bool = False  # `all`: everything of the requester
    problem: str | None = None  # set when the line was not understood

    @property
    def understood(self) -> bool:
        return self.problem is None


@dataclass
class ParsedRequest:
    lines: list[Line]  # only lines holding targets, `all`, or a problem (template text is skipped)

    @property
    def unparsed(self) -> list[Line]:
        return [ln for ln in self.lines if not ln.understood]


def ascii_lower(name: str) -> str:
    """Lowercase A-Z only: `str.lower` would fold look-alikes (KELVIN SIGN -> k) into real names."""
    return name.translate(ASCII_LOWER)


def _non_ascii(text: str) -> str | None:
    for ch in text:
        if ord(ch) > 127:
            return f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed character')}"
    return None


def check_owner(name: str) -> str:
    """A valid account name, lowercased; ParseError otherwise."""
    bad = _non_ascii(name)
    if bad:
        raise ParseError(f"{name!r} holds the non-ASCII character {bad} (GitHub names are ASCII)")
    if not OWNER_RE.fullmatch(name):
        raise ParseError(f"{name!r} is not a valid GitHub account name")
    return ascii_lower(name)


def check_repo(name: str) -> str:
    bad = _non_ascii(name)
    if bad:
        raise ParseError(f"{name!r} holds the non-ASCII character {bad} (GitHub names are ASCII)")
    if name.lower().endswith(".git"):
        name = name[:-4]
    if not REPO_RE.fullmatch(name) or name in (".", ".."):
        raise ParseError(f"{name!r} is not a valid GitHub repository name")
    return ascii_lower(name)


def parse_target(token: str, bare_names: bool = True) -> Target:
    """One word -> a Target: `owner/repo`, a github.com URL (any trailing path), or a bare account."""
    bad = _non_ascii(token)
    if bad:
        raise ParseError(f"{token!r} holds the non-ASCII character {bad} (GitHub names are ASCII)")
    url = GITHUB_URL.fullmatch(token)
    if url:
        parts = [p for p in url.group(1).split("?", 1)[0].split("#", 1)[0].split("/") if p]
        if parts and parts[0].lower() in ("orgs", "users") and len(parts) >= 2:
            return Target(check_owner(parts[1]))
        if not parts or parts[0].lower() in RESERVED_OWNERS:
            raise ParseError(f"{token!r} is not a GitHub account or repository URL")
        owner = check_owner(parts[0])
        return Target(owner, check_repo(parts[1]) if len(parts) > 1 else None)
    if "://" in token or token.lower().startswith("www."):
        raise ParseError(f"{token!r} is not a GitHub URL")
    if token.startswith("@"):  # a GitHub mention names an account
        return Target(check_owner(token[1:]))
    if "/" in token:
        parts = token.strip("/").split("/")
        if len(parts) != 2:
            raise ParseError(f"{token!r} is not owner/repo")
        return Target(check_owner(parts[0]), check_repo(parts[1]))
    if not bare_names:
        raise ParseError(f"{token!r} names no owner: write owner/repo or a GitHub URL")
    return Target(check_owner(token))


def _section_of(line: str) -> Section | None:
    """The section a heading or form title opens; None for any other line."""
    heading = re.fullmatch(r"#{1,6}\s*(.*)", line)
    title = ascii_lower((heading.group(1) if heading else line).strip().strip("*_: "))
    if title in FORM_TITLES:
        return FORM_TITLES[title]
    if not heading:
        return None
    return next((section for prefix, section in HEADING_PREFIXES if title.startswith(prefix)), Section.REQUEST)


def _parse_line(line: Line, text: str) -> None:
    """Fill `line` from its text (markdown links reduced to their URL); sets `problem` if not understood."""
    bulleted = bool(BULLET.match(text))
    text = BULLET.sub("", text, count=1).strip()
    if not text:
        return
    low = ascii_lower(text)
    if ALL_LINE.fullmatch(low):
        line.wants_all = True
        return
    tokens = [t for t in TOKEN_SPLIT.split(text) if t]
    # bare names are accounts in the form's accounts section, or as the only word of a list item
    bare = line.section is Section.ACCOUNTS or (line.section is Section.REQUEST and bulleted and len(tokens) == 1)
    targets = []
    try:
        for token in tokens:
            target = parse_target(token, bare_names=bare)
            if target not in targets:
                targets.append(target)
    except ParseError as e:
        line.problem = f"not understood: {e}" if len(tokens) == 1 else f"not understood ({len(tokens)} words): {e}"
        return
    line.targets = targets


def parse_request(text: str) -> ParsedRequest:
    """Parse a whole request. Lines of template boilerplate and of free-text sections are skipped."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_REQUEST_BYTES:
        raise ParseError(f"request is larger than {MAX_REQUEST_BYTES:,} bytes; split it")
    section = Section.REQUEST
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        opened = _section_of(stripped)
        if opened is not None:
            section = opened
            continue
        if section is Section.FREE_TEXT:
            continue
        line = Line(number, raw, section)
        if len(stripped) > MAX_LINE_CHARS:
            line.problem = f"not understood: line longer than {MAX_LINE_CHARS} characters"
            lines.append(line)
            continue
        body = MD_LINK.sub(r" \2 ", AUTOLINK.sub(r"\1", stripped))
        item = BULLET.sub("", body, count=1).strip()
        if CHECKBOX.match(item) or TEMPLATE_LINES.fullmatch(ascii_lower(item).strip("*_ ")):
            continue
        _parse_line(line, body)
        if line.targets or line.wants_all or line.problem:
            lines.append(line)
    return ParsedRequest(lines)
