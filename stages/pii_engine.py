"""The `pii` stage's detector: a cheap line pre-scan, then presidio's AnalyzerEngine on the candidates.

Presidio runs its recognizers over the whole text it is given, at ~2 MB/s here. Code rarely holds
PII, so a vectorised RE2 pass (pyarrow) over every line of a batch marks the lines where an entity
could start (an `@` before a domain, four dotted numbers, a global-unicast IPv6 prefix, a keyword
assignment, a PEM header, a long random-looking token); only those lines (with the line before,
for hash words) are handed to presidio, joined into one excerpt per text.
"""

import bisect
import importlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.pii_presidio import (
    AnalyzerEngine,
    ContextAwareEnhancer,
    NerModelConfiguration,
    NlpArtifacts,
    RecognizerRegistry,
    SpacyNlpEngine,
    SpacyRecognizer,
)
from stages.pii_recognizers import (
    EmailRecognizer,
    IpAddressRecognizer,
    PasswordRecognizer,
    PrivateKeyRecognizer,
    SecretsRecognizer,
    Span,
    TokenAssignmentRecognizer,
)

ENTITIES = ("EMAIL", "IP_ADDRESS", "KEY", "PASSWORD", "NAME")
# When spans of different entities overlap, their union is redacted under the most specific one.
PRIORITY = {"KEY": 0, "PASSWORD": 1, "EMAIL": 2, "IP_ADDRESS": 3, "NAME": 4}
RECOGNIZERS = {
    "EMAIL": (EmailRecognizer,),
    "IP_ADDRESS": (IpAddressRecognizer,),
    "KEY": (SecretsRecognizer, PrivateKeyRecognizer, TokenAssignmentRecognizer),
    "PASSWORD": (PasswordRecognizer,),
}

# RE2 (pyarrow) line pre-scan. Anything a recognizer can find starts on a line matching CANDIDATE_LINE,
# or on a line with a long digit-and-letter run that `random_looking` accepts (keys and tokens).
_KEYWORD = (r"(?i:pass|pwd|psk|[_.-]pw\b|secret|token|credential|creds|bearer|identified\s+by|"
            r"(?:api|access|auth|private|client|signing|encryption|app|master|session)[_.-]?key)"
            r"[\w.\-\]\"']*(?:\s*:\s*[A-Za-z_][\w\[\]., |]*?)?\s*(?:=>|:=|==|=|:|\(|,|>|\s|is\s|was\s)\s*"
            r"(?:[\"'`]|[^\s\"'`]*[0-9!@#$%^&*+/~])")
CANDIDATE_LINE = "|".join((
    r"[\w.%+-](?:@|%40|&#64;|&#x40;)[A-Za-z0-9-]+\.|(?i:[\[(<{]\s?at\s?[\])>}])",  # email, `john [at] corp [dot] com`
    r"://[^\s/@]*:[^\s/@]*@",  # URL credentials
    r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}",  # IPv4
    r"\b[23][0-9A-Fa-f]{3}:[0-9A-Fa-f]{0,4}:",  # IPv6 global unicast (2000::/3)
    r"-----BEGIN|PuTTY-User-Key",  # private keys
    r"gh[pousr]_|glpat-|xox[a-z]-|eyJ|sk_live_|rk_live_|SG\.|AccountKey=|_authToken|hooks\.slack|"  # token prefixes
    r"AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9]|npm_|github_pat_|hf_|AIza|sk-|shpat_|dop_v1_|xapp-|ya29\.|"
    r"NRAK-|PMAK-|AGE-SECRET-KEY-|LTAI|:APA91b|[?&]sig=|hvs\.|squ_|OpenVPN Static key|/api/webhooks/|"
    r"IncomingWebhook/|define\(\s*'\w+_(?:KEY|SALT)'|\|\s*sudo\s+-S|"
    # a secret's name and value in two fields: YAML/JSON `value:` after a name, elements named by an
    # attribute, a plist's <string> after its <key> (a window holds the line before too)
    r"^\s*(?:-\s*)?value:\s*\S|[\"']value[\"']\s*:\s*[\"']|<(?:property|entry|add|setting|param)\b[^>]*\b(?:name|key)=|"
    r"^\s*<string>",
    _KEYWORD,
    r"^\s*(?:-\s+)?(?:export\s+)?[\w.-]*(?i:pass|pwd|secret|token)[\w.-]*\s*[=:]\s*\S",  # .env / YAML, any value
    r"[?&;](?i:[\w.-]*(?:pass|pwd|secret|token|key)[\w.-]*)=",  # query and connection strings
    r"(?:-u|--user)\s+[^\s:]+:|(?i:basic)\s+[A-Za-z0-9+/]{12}|value=",  # curl -u, HTTP Basic, XML key/value
    r"\b(?:mysql|mysqldump|mysqladmin|mariadb)\b.*\s-p\S|\bsshpass\s|\bdocker\b.*\blogin\b|redis-cli|\bzip\b.*\s-P\s|"
    r"(?:store|key)pass\s|\spass:|smbclient|htpasswd|(?i:ConvertTo-SecureString)|requirepass|masterauth|bindpw|rootpw|"
    r"getConnection\(|mysqli|mysql_connect\(|PDO\(|"  # command lines and config directives
    r"(?i:pass|pwd|secret|token|key)\w*\s+(?:string|\[\]byte)\s*=|"  # Go: var dbPassword string = "..."
    r"@(?:tcp|unix)\(|^[\w*][\w.*-]*:(?:\d+|\*):[\w.*-]+:[\w.*-]+:[^:\s]+$",  # Go DSNs, .pgpass lines
    r"DBI->connect|\bauth\s*=\s*[(\[]|Auth\(|\.login\(|Credential\(|Authentication\(|createAccount\(|bind_s\(",
    r"\bsqlcmd\b|\bopenssl\b.*\s-k\s|\s-auth\s|\blftp\b|\baz\b.*\blogin\b",  # more command lines
    r"\"auth\"\s*:\s*\"|^kind:\s*Secret|^\s+[\w.-]+:\s*[A-Za-z0-9+/]{6,}[0-9+/=][A-Za-z0-9+/=]*\s*$",  # base64
))
DIGIT_RUN = r"[0-9][A-Za-z0-9+/=]{11}|[A-Za-z0-9+/=]{11}[0-9]"
_RUN = re.compile(r"[A-Za-z0-9+/=]{16,}")
_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[A-Za-z]")


def random_looking(line: str) -> bool:
    """A 16+ character alphanumeric run with letters and digits: what keys and tokens look like
    (identifiers such as `snake_case_2` and paths such as `lib/x86_64` have shorter runs)."""
    return any(_DIGIT.search(run) and _LETTER.search(run) for run in _RUN.findall(line))


def candidate_windows(texts: list[str]) -> list[list[Span]]:
    """Per text, the character spans (whole lines, merged) that may hold PII."""
    arr = pa.array(texts, pa.large_string())
    lines = pc.split_pattern(arr, "\n")
    flat = pc.list_flatten(lines)
    first_line = lines.offsets.to_numpy()
    lengths = pc.utf8_length(flat).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.cumsum(lengths + 1) - (lengths + 1)
    hit = pc.match_substring_regex(flat, CANDIDATE_LINE).to_numpy(zero_copy_only=False)
    long = np.flatnonzero(pc.match_substring_regex(flat, DIGIT_RUN).to_numpy(zero_copy_only=False) & ~hit)
    if len(long):
        long_lines = pc.take(flat, pa.array(long)).to_pylist()
        hit[long[[random_looking(line) for line in long_lines]]] = True
    candidates = np.flatnonzero(hit)
    docs = np.searchsorted(first_line, candidates, side="right") - 1
    windows: list[list[Span]] = [[] for _ in texts]
    for doc, line in zip(docs.tolist(), candidates.tolist(), strict=True):
        base = starts[first_line[doc]]
        begin = starts[max(line - 1, first_line[doc])] - base  # the line before: hash words, YAML keys
        end = starts[line] - base + lengths[line]
        spans = windows[doc]
        if spans and begin <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], int(end))
        else:
            spans.append((int(begin), int(end)))
    for text, spans in zip(texts, windows, strict=True):
        if spans:
            spans[:] = _extend_key_blocks(text, spans)
    return windows


def _extend_key_blocks(text: str, spans: list[Span]) -> list[Span]:
    """A window opening a private key block runs to the block's END line."""
    out: list[Span] = []
    for begin, end in spans:
        header = text.find("PRIVATE KEY", begin, end)
        if header >= 0:
            close = text.find("-----END", end)
            if close >= 0:
                line_end = text.find("\n", close)
                end = len(text) if line_end < 0 else line_end
        if out and begin <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((begin, end))
    return out


class NoContextEnhancer(ContextAwareEnhancer):
    """Our recognizers judge their own context; presidio's lemma-based boost costs ~0.4 ms a call."""

    def __init__(self):
        super().__init__(context_similarity_factor=0, min_score_with_context_similarity=0,
                         context_prefix_count=0, context_suffix_count=0)

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        return raw_results


def cache_dir() -> Path:
    """`$CODECURATE_CACHE`, else `$XDG_CACHE_HOME/codecurate`, else `~/.cache/codecurate`."""
    if os.environ.get("CODECURATE_CACHE"):
        return Path(os.environ["CODECURATE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "codecurate"


def blank_spacy_model() -> Path:
    """`spacy.blank("en")` saved once under the cache dir: presidio's engine needs a model path, and its
    default would download `en_core_web_lg`. Written under a temp name and renamed, so workers can race."""
    import spacy

    target = cache_dir() / f"spacy-blank-en-{spacy.__version__}"
    if not (target / "config.cfg").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".spacy-blank-", dir=target.parent))
        spacy.blank("en").to_disk(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another worker won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_recognizer(path: str):
    """A presidio recognizer named `package.module:ClassName`, instantiated with no arguments."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)()


def build_analyzer(entities: list[str], ner_model: str | None = None, extra: list[str] = ()) -> AnalyzerEngine:
    """Presidio's AnalyzerEngine with our recognizers, offline. NAME uses presidio's SpacyRecognizer on
    `ner_model` (a spaCy pipeline with an `ner` component: an installed package name or a path); `extra`
    recognizers (import paths) are added to the registry as any presidio recognizer would be."""
    mapping = {"PERSON": "NAME", "PER": "NAME"}
    nlp_engine = SpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": ner_model or str(blank_spacy_model())}],
        ner_model_configuration=NerModelConfiguration(model_to_presidio_entity_mapping=mapping,
                                                      low_score_entity_names=[]),
    )
    nlp_engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    for entity in entities:
        for recognizer in RECOGNIZERS.get(entity, ()):
            registry.add_recognizer(recognizer())
    if "NAME" in entities:
        registry.add_recognizer(SpacyRecognizer(supported_entities=["NAME"]))
    for path in extra:
        registry.add_recognizer(load_recognizer(path))
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"],
                          context_aware_enhancer=NoContextEnhancer(), default_score_threshold=0.0)


class PiiDetector:
    """Finds (start, end, entity) spans in texts; loaded once per task."""

    def __init__(self, entities: list[str], ner_model: str | None = None, recognizers: list[str] = ()):
        self.analyzer = build_analyzer(list(entities), ner_model, recognizers)
        custom = {e for r in self.analyzer.registry.recognizers for e in r.supported_entities} - set(ENTITIES)
        self.entities = [*entities, *sorted(custom)]
        self.needs_nlp = "NAME" in self.entities  # NER reads whole texts: no pre-scan then
        self._no_nlp = NlpArtifacts(entities=[], tokens=[], tokens_indices=[], lemmas=[],
                                    nlp_engine=self.analyzer.nlp_engine, language="en")

    def detect_batch(self, texts: list[str]) -> list[list[tuple[int, int, str]]]:
        if self.needs_nlp:
            return [self.detect(text, [(0, len(text))]) if text else [] for text in texts]
        try:
            windows = candidate_windows(texts)
        except UnicodeEncodeError:  # a lone surrogate (e.g. from a `surrogateescape` reader): Arrow refuses it
            windows = [[(0, len(text))] if text else [] for text in texts]
        return [self.detect(text, spans) if spans else [] for text, spans in zip(texts, windows, strict=True)]

    def detect(self, text: str, windows: list[Span]) -> list[tuple[int, int, str]]:
        """Analyze the windows of `text` joined into one excerpt; spans are mapped back to `text`."""
        excerpt = "\n".join(text[b:e] for b, e in windows)
        artifacts = self.analyzer.nlp_engine.process_text(excerpt, "en") if self.needs_nlp else self._no_nlp
        results = self.analyzer.analyze(excerpt, language="en", entities=self.entities, nlp_artifacts=artifacts)
        seg_starts, pos = [], 0
        for b, e in windows:
            seg_starts.append(pos)
            pos += e - b + 1
        spans = []
        for r in results:
            k = bisect.bisect_right(seg_starts, r.start) - 1
            b, e = windows[k]
            start = b + r.start - seg_starts[k]
            spans.append((start, min(b + r.end - seg_starts[k], e), r.entity_type))
        return merge_spans(spans)


def merge_spans(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping spans become their union, labelled with the most specific entity among them."""
    merged: list[tuple[int, int, str]] = []
    for start, end, entity in sorted(spans, key=lambda s: (s[0], -s[1], PRIORITY.get(s[2], 9))):
        if merged and start < merged[-1][1]:
            last_start, last_end, last_entity = merged[-1]
            best = min(last_entity, entity, key=lambda x: PRIORITY.get(x, 9))
            merged[-1] = (last_start, max(last_end, end), best)
        else:
            merged.append((start, end, entity))
    return merged
