"""The matching engine of `decontaminate` (imported when the stage starts: numba and the automaton are heavy).

Two matchers over each benchmark string (a task's statement, solution, tests), indexed once per process:
- exact: normalised strings (case-folded, whitespace collapsed) in one Aho–Corasick automaton: prose of
  `min_chars` or more, code of two lines or more that is that long or defines a named function/class;
- n-gram: code-aware tokens (comments and indentation dropped, strings split into words, case-folded),
  `ngram_size`-grams hashed to uint64 in one sorted array. Each string is a view; code strings have a
  second view with identifiers as placeholders numbered by first occurrence inside the n-gram
  (`x = x + y` -> `v0 = v0 + v1`), so renamed copies still match. A record matches a view when it holds
  `min_overlap` of its distinctive n-grams (and at least `min_idiom_ngrams` for views prone to idiom).
"""

import builtins
import functools
import keyword
import re
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import ahocorasick
import numpy as np
from numba import njit

from pipeline.benchmarks import BenchmarkItem, BenchmarkSpec, load_items

U64 = np.uint64
_FNV_OFFSET = U64(0xCBF29CE484222325)
_FNV_PRIME = U64(0x100000001B3)
_MIX1 = U64(0xBF58476D1CE4E5B9)
_MIX2 = U64(0x94D049BB133111EB)
_NGRAM_SEED = U64(0x9E3779B97F4A7C15)
_NGRAM_PRIME = U64(0xD6E8FEB86659FD93)
_PUNCT_SEED = U64(0x5851F42D4C957F2D)
_PLACEHOLDER_SEED = U64(0x14057B7EF767814F)
_DEFINITION = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+\w", re.MULTILINE)
# An n-gram found in this many tasks is boilerplate (HumanEval's METADATA block, `for i in range(len(arr))`);
# two is still distinctive: benchmarks hold duplicate tasks (MBPP has pairs with the same solution).
GENERIC_TASKS = 3
# `if (x):`, `return (x)`, `x = (a + b)`, `not (x)`: black and ruff format drop such parentheses where they are
# redundant and add them to split long lines; neither side of a match keeps them (`code_tokens`)
PAREN_OPENERS = ("if", "elif", "while", "return", "assert", "in", "not", "and", "or", "yield", "await", "else", "=")
MAX_PAREN_DEPTH = 64
BITMAP_BITS = 24  # membership prefilter: 2 MB, so nearly every n-gram of clean code costs one bit test


# -- tokens and n-grams (numba: one pass over the UTF-8 bytes) ------------------------------------
@njit(cache=True, inline="always")
def _mix(x):
    x ^= x >> U64(30)
    x *= _MIX1
    x ^= x >> U64(27)
    x *= _MIX2
    return x ^ (x >> U64(31))


@njit(cache=True, inline="always")
def _word_byte(b):
    return (97 <= b <= 122) or (65 <= b <= 90) or (48 <= b <= 57) or b == 95 or b >= 128


@njit(cache=True, inline="always")
def _is_prefix(buf, start, end):
    """A string prefix (r, b, f, u, rb, ...) directly before a quote: not a token."""
    for i in range(start, end):
        if buf[i] not in (98, 102, 114, 117, 66, 70, 82, 85):
            return False
    return True


@njit(cache=True, inline="always")
def _closer_follows(buf, i):
    """Whether the next byte after whitespace and comments from `i` closes a bracket (a trailing comma)."""
    n = buf.size
    while i < n:
        c = buf[i]
        if c == 35:
            while i < n and buf[i] != 10:
                i += 1
        elif c == 32 or c == 9 or c == 10 or c == 13:
            i += 1
        else:
            return c == 41 or c == 93 or c == 125
    return False


@njit(cache=True)
def code_tokens(buf, keywords, openers):
    """Token hashes of UTF-8 `buf` and which tokens are identifiers that may be renamed.

    Whitespace, comments (# to end of line), quotes and backslashes make no token; words (case-folded),
    numbers and single punctuation bytes do. Words inside strings, attribute names (after '.') and
    `keywords` (sorted hashes: Python keywords, builtins, typing names) are never renameable.
    What code formatters (black, ruff format) add or remove makes no token either, so a formatted copy
    keeps its n-grams: `;`, trailing commas, and parentheses opened right after one of `openers` (sorted
    hashes: `if`, `return`, `=`, ...) with their closing one (`if (len(s) == 1):` is `if len(s) == 1:`).
    """
    n = buf.size
    tok = np.empty(n, np.uint64)
    ident = np.empty(n, np.bool_)
    ntok = 0
    i = 0
    quote = 0
    triple = False
    after_dot = False
    dropped = np.zeros(MAX_PAREN_DEPTH, np.bool_)  # per open parenthesis (outside strings): made no token
    depth = 0
    prev = U64(0)  # the last token
    while i < n:
        c = buf[i]
        if c == 10 or c == 13:
            if quote != 0 and not triple:  # an unterminated one-line string (or a prose apostrophe) ends
                quote = 0
            i += 1
        elif c == 32 or c == 9 or c == 11 or c == 12:
            i += 1
        elif c == 92:  # backslash: a line continuation, or an escape whose byte is skipped too
            i += 2 if quote != 0 else 1
        elif c == 34 or c == 39:
            three = i + 2 < n and buf[i + 1] == c and buf[i + 2] == c
            if quote == 0:
                quote = c
                triple = three
                i += 3 if three else 1
            elif c == quote and (three or not triple):
                quote = 0
                i += 3 if triple else 1
            else:
                i += 1
        elif c == 35 and quote == 0:
            while i < n and buf[i] != 10 and buf[i] != 13:
                i += 1
        elif _word_byte(c):
            start = i
            h = _FNV_OFFSET
            while i < n and _word_byte(buf[i]):
                b = buf[i]
                if 65 <= b <= 90:
                    b += 32
                h = (h ^ U64(b)) * _FNV_PRIME
                i += 1
            if quote == 0 and i - start <= 2 and i < n and (buf[i] == 34 or buf[i] == 39) and _is_prefix(buf, start, i):
                continue
            t = _mix(h)
            tok[ntok] = t
            prev = t
            if quote != 0 or after_dot or 48 <= c <= 57:
                ident[ntok] = False
            else:
                k = np.searchsorted(keywords, t)
                ident[ntok] = not (k < keywords.size and keywords[k] == t)
            ntok += 1
            after_dot = False
        else:
            i += 1
            if quote == 0:
                if c == 59 or c == 44 and _closer_follows(buf, i):
                    continue
                if c == 40:
                    k = np.searchsorted(openers, prev)
                    drop = k < openers.size and openers[k] == prev
                    if depth < MAX_PAREN_DEPTH:
                        dropped[depth] = drop
                    depth += 1
                    if drop:
                        continue
                elif c == 41 and depth > 0:
                    depth -= 1
                    if depth < MAX_PAREN_DEPTH and dropped[depth]:
                        continue
            t = _mix(_PUNCT_SEED ^ U64(c))
            tok[ntok] = t
            ident[ntok] = False
            ntok += 1
            prev = t
            after_dot = c == 46
    return tok[:ntok], ident[:ntok]


@njit(cache=True)
def ngram_hashes(tok, ident, size, normalized):
    """Per window of `size` tokens: its hash, the hash with identifiers as first-occurrence-numbered
    placeholders (when `normalized`), and whether the window has an identifier at all."""
    windows = max(tok.size - size + 1, 0)
    raw = np.empty(windows, np.uint64)
    norm = np.empty(windows, np.uint64)
    has_ident = np.zeros(windows, np.bool_)
    names = np.empty(size, np.uint64)
    for i in range(windows):
        h = _NGRAM_SEED
        g = _NGRAM_SEED
        seen = 0
        for j in range(size):
            t = tok[i + j]
            h = (h ^ t) * _NGRAM_PRIME
            if normalized and ident[i + j]:
                ordinal = seen
                for m in range(seen):
                    if names[m] == t:
                        ordinal = m
                        break
                if ordinal == seen:
                    names[seen] = t
                    seen += 1
                t = _mix(_PLACEHOLDER_SEED + U64(ordinal))
            g = (g ^ t) * _NGRAM_PRIME
        raw[i] = _mix(h)
        norm[i] = _mix(g)
        has_ident[i] = seen > 0
    return raw, norm, has_ident


@njit(cache=True)
def lookup_hashes(hashes, bitmap, shift, index_hashes, found, nfound):
    """Append to `found` the positions in sorted `index_hashes` of the `hashes` it holds."""
    for h in hashes:
        bit = h >> shift
        if bitmap[bit >> U64(6)] & (U64(1) << (bit & U64(63))):
            k = np.searchsorted(index_hashes, h)
            if k < index_hashes.size and index_hashes[k] == h:
                found[nfound] = k
                nfound += 1
    return nfound


@njit(cache=True)
def count_views(positions, offsets, views, nviews):
    """How many distinct indexed n-grams of each view the record holds (positions are distinct)."""
    counts = np.zeros(nviews, np.int64)
    for k in positions:
        for e in range(offsets[k], offsets[k + 1]):
            counts[views[e]] += 1
    return counts


def token_hashes(texts) -> np.ndarray:
    """The sorted token hashes of one-token texts."""
    none = np.empty(0, np.uint64)
    return np.array(sorted({int(code_tokens(to_bytes(t), none, none)[0][0]) for t in texts}), dtype=np.uint64)


def keyword_hashes() -> np.ndarray:
    """Names a renaming leaves alone: Python keywords, builtins, typing names, self/cls."""
    return token_hashes({*keyword.kwlist, *keyword.softkwlist, *dir(builtins), *typing.__all__, "self", "cls"})


def opener_hashes() -> np.ndarray:
    """Tokens after which a parenthesis may be redundant, so formatters drop or add it."""
    return token_hashes(PAREN_OPENERS)


def to_bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)


def normalise(text: str) -> str:
    """The exact matcher's form: case-folded, every whitespace run one space."""
    return " ".join(text.casefold().split())


# -- the index --------------------------------------------------------------------------------------
def exact_patterns(item: BenchmarkItem, min_chars: int) -> set[str]:
    """An item's normalised strings worth an exact match: prose of >= min_chars, and code of more than one
    line that has >= min_chars or defines a function or class (its name makes it specific: MBPP's
    `def find_rect_num(n): return n*(n + 1)`). Short code without a name is idiom (HumanEval/13's
    `while b: a, b = b, a % b return a`), one-line code trivial."""
    code = [c for c in item.code if _lines(c) > 1]
    return {normalise(s) for s in [*item.texts, *code]
            if len(normalise(s)) >= min_chars or (s in code and _DEFINITION.search(s))}


class ExactMatcher:
    """The items' exact patterns (`exact_patterns`) in one Aho–Corasick automaton."""

    def __init__(self, items: list[BenchmarkItem], min_chars: int):
        owners: dict[str, set[int]] = {}
        for i, item in enumerate(items):
            for pattern in exact_patterns(item, min_chars):
                owners.setdefault(pattern, set()).add(i)
        self.automaton = ahocorasick.Automaton()
        for pattern, tasks in owners.items():
            self.automaton.add_word(pattern, (len(pattern), tuple(sorted(tasks))))
        self.patterns = len(owners)
        if self.patterns:
            self.automaton.make_automaton()

    def match(self, text: str) -> int | None:
        """The task with the most matched characters (ties: the first task), or None."""
        if not self.patterns:
            return None
        matched: dict[int, int] = Counter()
        for _, (length, tasks) in self.automaton.iter(normalise(text)):
            for task in tasks:
                matched[task] += length
        return min(matched, key=lambda t: (-matched[t], t)) if matched else None


class NgramMatcher:
    """The distinctive n-grams of every benchmark string, in views: raw, and for code with identifiers as
    placeholders. A view counts when it has `min_ngrams` n-grams; a record matches it when it holds
    `min_overlap` of them and, for views prone to idiom (placeholders, or code naming no function or
    class, like a HumanEval solution body), at least `min_idiom_ngrams` of them. The raw view of code
    defining a function or class counts from `min_named_ngrams`: below `min_ngrams` a record must hold
    all of them (a short named solution, whose name makes it specific)."""

    def __init__(self, items: list[BenchmarkItem], size: int, min_overlap: float, min_ngrams: int,
                 min_named_ngrams: int, min_idiom_ngrams: int, normalize_identifiers: bool):
        self.size = size
        self.normalize = normalize_identifiers
        self.keywords = keyword_hashes()
        self.openers = opener_hashes()
        view_hashes: list[np.ndarray] = []
        view_task: list[int] = []
        view_floor: list[int] = []  # n-grams a record must hold besides min_overlap
        view_named: list[bool] = []  # the raw view of code defining a function or class
        for task, item in enumerate(items):
            for text, is_code in [*((t, False) for t in item.texts), *((c, True) for c in item.code)]:
                raw, norm, _ = ngram_hashes(*code_tokens(to_bytes(text), self.keywords, self.openers), size,
                                            is_code and self.normalize)
                defines = is_code and _DEFINITION.search(text) is not None
                view_hashes.append(raw)
                view_task.append(task)
                view_floor.append(0 if defines or not is_code else min_idiom_ngrams)
                view_named.append(defines)
                if is_code and self.normalize:
                    view_hashes.append(norm)
                    view_task.append(task)
                    view_floor.append(min_idiom_ngrams)
                    view_named.append(False)
        hashes, views = self._distinctive(view_hashes, np.array(view_task, np.int64))
        sizes = np.bincount(views, minlength=len(view_hashes))
        floor = np.array(view_floor, np.int64)
        short = np.array(view_named, np.bool_) & (sizes >= min_named_ngrams) & (sizes < min_ngrams)
        usable = (sizes >= np.maximum(min_ngrams, floor)) | short
        keep = usable[views]
        hashes, views = hashes[keep], views[keep]
        self.view_task = np.array(view_task, np.int64)
        self.view_size = np.where(usable, sizes, 0)
        need = np.where(short, sizes, np.maximum(np.ceil(min_overlap * sizes - 1e-9).astype(np.int64), floor))
        self.need = np.where(usable, need, np.iinfo(np.int64).max)
        self.hashes, starts = np.unique(hashes, return_index=True)  # `hashes` is sorted: views of a hash are a run
        self.offsets = np.append(starts, hashes.size).astype(np.int64)
        self.views = views
        self.shift = U64(64 - BITMAP_BITS)
        self.bitmap = np.zeros(2 ** BITMAP_BITS // 64, np.uint64)
        bits = self.hashes >> self.shift
        np.bitwise_or.at(self.bitmap, bits >> U64(6), U64(1) << (bits & U64(63)))

    @staticmethod
    def _distinctive(view_hashes: list[np.ndarray], view_task: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (hash, view) pairs sorted by hash, without boilerplate: hashes in GENERIC_TASKS tasks or more."""
        if not view_hashes:
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        hashes = np.concatenate(view_hashes)
        views = np.repeat(np.arange(len(view_hashes)), [len(h) for h in view_hashes])
        tasks = view_task[views]
        order = np.lexsort((views, tasks, hashes))
        hashes, views, tasks = hashes[order], views[order], tasks[order]
        new_hash = np.r_[True, hashes[1:] != hashes[:-1]]
        new_pair = new_hash | np.r_[True, views[1:] != views[:-1]]
        hashes, views, tasks, new_hash = hashes[new_pair], views[new_pair], tasks[new_pair], new_hash[new_pair]
        new_task = new_hash | np.r_[True, tasks[1:] != tasks[:-1]]
        starts = np.flatnonzero(new_hash)
        task_count = np.add.reduceat(new_task.astype(np.int64), starts)
        keep = np.repeat(task_count < GENERIC_TASKS, np.diff(np.r_[starts, hashes.size]))
        return hashes[keep], views[keep]

    def match(self, text: str) -> int | None:
        """The task whose string the record covers best (at least `min_overlap`), or None."""
        if not self.hashes.size:
            return None
        raw, norm, has_ident = ngram_hashes(*code_tokens(to_bytes(text), self.keywords, self.openers), self.size,
                                            self.normalize)
        found = np.empty(raw.size + norm.size, np.int64)
        nfound = lookup_hashes(raw, self.bitmap, self.shift, self.hashes, found, 0)
        if self.normalize:
            nfound = lookup_hashes(norm[has_ident], self.bitmap, self.shift, self.hashes, found, nfound)
        if not nfound:
            return None
        counts = count_views(np.unique(found[:nfound]), self.offsets, self.views, self.view_size.size)
        hits = np.flatnonzero(counts >= self.need)
        if not hits.size:
            return None
        coverage = counts[hits] / self.view_size[hits]
        return int(self.view_task[hits[np.lexsort((hits, -coverage))[0]]])


@dataclass(frozen=True)
class MatchSettings:
    """The stage options the index depends on (documented on `DecontaminateOptions`)."""

    min_chars: int
    ngram_size: int
    min_overlap: float
    min_ngrams: int
    min_named_ngrams: int
    min_idiom_ngrams: int
    normalize_identifiers: bool


class ContaminationIndex:
    """Benchmark tasks with both matchers; built once per process and settings (see `build_index`)."""

    def __init__(self, items: list[BenchmarkItem], settings: MatchSettings):
        self.items = items
        self.exact = ExactMatcher(items, settings.min_chars)
        self.ngram = NgramMatcher(items, settings.ngram_size, settings.min_overlap, settings.min_ngrams,
                                  settings.min_named_ngrams, settings.min_idiom_ngrams, settings.normalize_identifiers)

    def match(self, text: str) -> tuple[BenchmarkItem, str] | None:
        task = self.exact.match(text)
        if task is not None:
            return self.items[task], "exact"
        task = self.ngram.match(text)
        return (self.items[task], "ngram") if task is not None else None


@functools.lru_cache(maxsize=4)
def build_index(sources: tuple[tuple[str, str], ...], settings: MatchSettings) -> ContaminationIndex:
    """The index of located benchmarks ((spec JSON, file) pairs); cached so each process builds it once."""
    items = [item for spec_json, path in sources
             for item in load_items(BenchmarkSpec.model_validate_json(spec_json), Path(path))]
    return ContaminationIndex(items, settings)


def _lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())
