"""Presidio recognizers for PII and secrets in source code.

Each recognizer is a presidio `EntityRecognizer` in the engine's `RecognizerRegistry`, next to any a
user adds the presidio way (the stage's `recognizers:` option). Ours find spans with their own regexes and
the false-positive filters of `stages.pii_filters`; none needs NLP artifacts (NAME is presidio's
`SpacyRecognizer` on a user-supplied NER pipeline).
"""

import base64
import re
import string
from collections.abc import Iterator
from functools import lru_cache
from typing import ClassVar

import tldextract
from detect_secrets.plugins import (
    artifactory,
    aws,
    azure_storage_key,
    cloudant,
    discord,
    github_token,
    gitlab_token,
    high_entropy_strings,
    ibm_cloud_iam,
    ibm_cos_hmac,
    jwt,
    mailchimp,
    npm,
    openai,
    pypi_token,
    sendgrid,
    slack,
    softlayer,
    square_oauth,
    stripe,
    telegram_token,
    twilio,
)

from stages import pii_filters as F
from stages.pii_presidio import EntityRecognizer, RecognizerResult

Span = tuple[int, int]

# detect-secrets' format plugins (BigCode's list plus the newer token formats). KeywordDetector,
# BasicAuthDetector and IPPublicDetector are replaced by our PASSWORD/KEY-assignment and IP recognizers,
# PrivateKeyDetector (which flags only the BEGIN line) by `PrivateKeyRecognizer`.
FORMAT_PLUGINS = (
    artifactory.ArtifactoryDetector, aws.AWSKeyDetector, azure_storage_key.AzureStorageKeyDetector,
    cloudant.CloudantDetector, discord.DiscordBotTokenDetector, github_token.GitHubTokenDetector,
    gitlab_token.GitLabTokenDetector, ibm_cloud_iam.IbmCloudIamDetector, ibm_cos_hmac.IbmCosHmacDetector,
    jwt.JwtTokenDetector, mailchimp.MailchimpDetector, npm.NpmDetector, openai.OpenAIDetector,
    pypi_token.PypiTokenDetector, sendgrid.SendGridDetector, slack.SlackDetector, softlayer.SoftlayerDetector,
    square_oauth.SquareOAuthDetector, stripe.StripeDetector, telegram_token.TelegramBotTokenDetector,
    twilio.TwilioKeyDetector,
)
MIN_ENTROPY_LENGTH = 20  # shorter quoted hex/base64 strings are colours, ids and magic numbers


def line_bounds(text: str, pos: int) -> Span:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return start, len(text) if end < 0 else end


_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "+/=_-")
_TOKEN_START_CHARS = _TOKEN_CHARS - {"="}  # `NAME=token`: never grow back over the assignment


def token_bounds(text: str, start: int, end: int) -> Span:
    """Grow a plugin's match to the whole token: some plugins' regexes stop early (Slack's
    `[a-z0-9]+` on a mixed-case tail, JWT's lazy signature), which would leave part of the secret."""
    while start > 0 and text[start - 1] in _TOKEN_START_CHARS:
        start -= 1
    while end < len(text) and (text[end] in _TOKEN_CHARS or text[end] == "." and end + 1 < len(text)
                               and text[end + 1] in _TOKEN_CHARS):
        end += 1
    return start, end


def secret_span(match: re.Match) -> Span:
    """Where a detect-secrets regex put the secret: its last non-empty group when that is long (AWS
    `aws...key = "(...)"`, npm `_authToken=(...)`), else the whole match (GitHub's group is the prefix)."""
    groups = [i for i in range(1, (match.re.groups or 0) + 1) if match.group(i)]
    if groups and match.end(groups[-1]) - match.start(groups[-1]) >= 16:
        return match.span(groups[-1])
    return match.span()


def occurrences(text: str, value: str) -> Iterator[Span]:
    """Every place `value` occurs: a secret found once is redacted wherever it appears."""
    start = text.find(value)
    while start >= 0:
        yield start, start + len(value)
        start = text.find(value, start + len(value))


class CodeRecognizer(EntityRecognizer):
    """A recognizer of one entity that finds spans with its own rules (no NLP artifacts needed)."""

    ENTITY: ClassVar[str]
    SCORE: ClassVar[float] = 0.9

    def __init__(self):
        super().__init__(supported_entities=[self.ENTITY], name=type(self).__name__, supported_language="en")

    def load(self) -> None:
        """Nothing to load: the rules are compiled at import."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        return [RecognizerResult(self.ENTITY, start, end, self.SCORE) for start, end in self.spans(text)]

    def spans(self, text: str) -> Iterator[Span]:
        raise NotImplementedError


@lru_cache(maxsize=1)
def offline_tldextract() -> tldextract.TLDExtract:
    """tldextract on its bundled public-suffix snapshot: no suffix-list URL, no disk cache, no network."""
    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


class EmailRecognizer(CodeRecognizer):
    """Addresses with a real public suffix, also obfuscated (`john [at] corp [dot] com`).

    Not emails: RFC 2606 example domains, the user part of URLs (`ssh://git@host`,
    `://user:pw@host` is a PASSWORD), scp-like git remotes (`git@github.com:org/repo`).
    """

    ENTITY = "EMAIL"
    _AT = r"(?:@|%40|&#64;|&#x40;|\s?[\[(<{]\s?(?i:at)\s?[\])>}]\s?)"  # also `jane%40corp.com`, `jane&#64;corp.com`
    _DOT = r"(?:\.|\s?[\[(<{]\s?(?i:dot)\s?[\])>}]\s?)"
    PATTERN = re.compile(
        rf"(?<![\w.%+-])[A-Za-z0-9][\w.%+-]{{0,63}}{_AT}"
        rf"(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?{_DOT})+[A-Za-z]{{2,24}})(?![\w-])"
    )
    _OBFUSCATED_DOT = re.compile(r"\s?[\[(<{]\s?(?i:dot)\s?[\])>}]\s?")
    _URL_USER = re.compile(r"://[^\s/@]*\Z")

    def spans(self, text: str) -> Iterator[Span]:
        for match in self.PATTERN.finditer(text):
            start, end = match.span()
            domain = self._OBFUSCATED_DOT.sub(".", match["domain"])
            if F.is_example_email(domain) or self._URL_USER.search(text, max(0, start - 200), start):
                continue
            if text.startswith("git@", start) and text.startswith(":", end):
                continue
            parts = offline_tldextract()(domain)
            if parts.suffix and parts.domain:
                yield start, end


class IpAddressRecognizer(CodeRecognizer):
    """Public IPv4/IPv6 addresses; never version strings, OIDs or dotted numbers longer than 4 parts."""

    ENTITY = "IP_ADDRESS"
    _OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w-]|\.\d)")
    IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:){1,7}(?::?[0-9A-Fa-f]{1,4}){1,7}(?![\w:]|\.\d)")

    def spans(self, text: str) -> Iterator[Span]:
        for pattern in (self.IPV4, self.IPV6):
            for match in pattern.finditer(text):
                start, end = match.span()
                if not F.is_public_ip(match[0]):
                    continue
                line_start, line_end = line_bounds(text, start)
                before = text[line_start:start]
                if F.in_version_context(before):
                    continue
                if pattern is self.IPV4 and F.is_section_number(match[0], before, text[end:line_end]):
                    continue
                yield start, end


class PrivateKeyRecognizer(CodeRecognizer):
    """The whole body of a PEM/OpenSSH/PGP private key block (or an OpenVPN static key), also with `\\n`
    escapes (JSON)."""

    ENTITY = "KEY"
    SCORE = 1.0
    PATTERN = re.compile(
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,-]*)"
        r"|-----BEGIN OpenVPN Static key V1-----[0-9a-fA-F\s\\n]*(?:-----END OpenVPN Static key V1-----)?",
        re.DOTALL,
    )

    def spans(self, text: str) -> Iterator[Span]:
        for match in self.PATTERN.finditer(text):
            yield match.span()


# A cheap test per plugin, on the lower-cased excerpt: most plugins' own regexes are slow to fail.
PLUGIN_HINTS = {
    artifactory.ArtifactoryDetector: re.compile(r"akc|ap[\da-f]"),
    aws.AWSKeyDetector: re.compile(r"a3t|abia|acca|akia|asia|aws"),
    azure_storage_key.AzureStorageKeyDetector: re.compile(r"accountkey="),
    cloudant.CloudantDetector: re.compile(r"cl(?:oudant|ou)?[_-]?(?:api)?(?:key|pw|pass|token)"),
    github_token.GitHubTokenDetector: re.compile(r"gh[pousr]_"),
    ibm_cloud_iam.IbmCloudIamDetector: re.compile(r"iam"),
    ibm_cos_hmac.IbmCosHmacDetector: re.compile(r"secret[-_]?(?:access)?[-_]?key"),
    jwt.JwtTokenDetector: re.compile(r"eyj"),
    mailchimp.MailchimpDetector: re.compile(r"-us\d"),
    npm.NpmDetector: re.compile(r"_authtoken"),
    openai.OpenAIDetector: re.compile(r"t3blbkfj"),
    pypi_token.PypiTokenDetector: re.compile(r"pypi-"),
    sendgrid.SendGridDetector: re.compile(r"sg\."),
    slack.SlackDetector: re.compile(r"xox|hooks\.slack"),
    softlayer.SoftlayerDetector: re.compile(r"softlayer|sl[_-]?(?:api)?[_-]?(?:key|pw|pass|token)"),
    square_oauth.SquareOAuthDetector: re.compile(r"sq0csp-"),
    stripe.StripeDetector: re.compile(r"k_live_"),
}


class SecretsRecognizer(CodeRecognizer):
    """detect-secrets' plugins as a presidio recognizer, with BigCode's false-positive filters.

    Format plugins (AWS, GitHub, Slack, Stripe, JWT...) are trusted as they are, except for
    templated and sequential strings. High-entropy strings (quoted, or the whole value of a
    `NAME=value` / `name: value` line) must hold a digit, be at least 20 characters (32 for hex),
    be gibberish, and not be UUIDs, ids, hashes next to hash words, integrity hashes or data blobs.
    """

    ENTITY = "KEY"
    # Token formats detect-secrets 1.5 only knows in one context (npm outside .npmrc) or not at all.
    PREFIXED = re.compile(r"(?<![\w-])(?:npm_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82}|hf_[A-Za-z]{34}|"
                          r"AIza[0-9A-Za-z_-]{35}|sk-(?:proj|ant|live)-[A-Za-z0-9_-]{20,}|shpat_[a-fA-F0-9]{32}|"
                          r"dop_v1_[a-f0-9]{64}|xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+|ya29\.[0-9A-Za-z_-]{20,}|"
                          r"NRAK-[A-Z0-9]{27}|PMAK-[0-9a-f]{24}-[0-9a-f]{34}|AGE-SECRET-KEY-1[0-9A-Z]{58}|"
                          r"LTAI[0-9A-Za-z]{12,20}|AAAA[A-Za-z0-9_-]{7}:APA91b[A-Za-z0-9_-]{100,}|"
                          r"hvs\.[A-Za-z0-9_-]{24,}|squ_[0-9a-f]{40})"
                          r"|(?<=[?&]sig=)[A-Za-z0-9%+/]{20,}(?:%3D|=){0,2}")  # Azure SAS signatures
    # Secrets known by where they stand: Discord/Teams webhook tokens, WordPress's keys and salts (any
    # characters, often three `*`, which elsewhere mark a template)
    IN_CONTEXT = re.compile(r"discord(?:app)?\.com/api/webhooks/\d+/(?P<value>[\w-]{60,})"
                            r"|/IncomingWebhook/(?P<value2>[0-9a-f]{32}/[0-9a-f-]{36})"
                            r"|define\(\s*'(?:AUTH|SECURE_AUTH|LOGGED_IN|NONCE)_(?:KEY|SALT)'\s*,\s*'(?P<value3>[^'\n]{16,})'")
    # An unquoted base64 run standing alone (a key pasted in a comment); blobs are runs of such lines. Bare
    # hex runs are left alone: commit ids and digests, indistinguishable from hex keys without a keyword.
    LONE_RUN = re.compile(r"(?<![A-Za-z0-9+/=_.-])[A-Za-z0-9+/]{32,100}={0,2}(?![A-Za-z0-9+/=_.-])")
    BLOB_LINE = re.compile(r"[ \t]*[bru]?[\"']?[A-Za-z0-9+/]{40,}={0,2}[\"']?[,\\+]?[ \t]*$")
    BARE_VALUE = re.compile(r"(?m)^[ \t]*(?:export[ \t]+)?[\w.-]+[ \t]*[:=][ \t]*([A-Za-z0-9+/=_-]{20,})[ \t]*$")

    def __init__(self):
        super().__init__()
        self.format_plugins = [(plugin(), PLUGIN_HINTS.get(plugin)) for plugin in FORMAT_PLUGINS]
        self.base64 = high_entropy_strings.Base64HighEntropyString()
        self.hex = high_entropy_strings.HexHighEntropyString()

    def spans(self, text: str) -> Iterator[Span]:
        lower = text.lower()
        for plugin, hint in self.format_plugins:
            if hint is not None and not hint.search(lower):
                continue
            for regex in plugin.denylist:
                for match in regex.finditer(text):
                    start, end = token_bounds(text, *secret_span(match))
                    value = text[start:end]
                    if len(value) < 8 or F.is_templated(value) or F.is_sequential(value) or \
                            F.is_public_token(text[max(0, start - 3):end]):
                        continue
                    if not isinstance(plugin, jwt.JwtTokenDetector) and self.in_data(value, text, start, end):
                        continue  # `AC` + 32 lowercase (Twilio) and the like also occur inside base64 blobs
                    yield start, end
        for match in self.PREFIXED.finditer(text):
            yield match.span()
        for match in self.IN_CONTEXT.finditer(text):
            if not match[match.lastgroup].lower().startswith("put your unique phrase"):  # WordPress's sample
                yield match.span(match.lastgroup)
        yield from encoded_credentials(text)
        candidates = set(self.base64.analyze_string(text)) | set(self.hex.analyze_string(text))
        candidates.update(match[1] for match in self.BARE_VALUE.finditer(text))
        candidates.update(match[0] for match in self.LONE_RUN.finditer(text)
                          if not F.is_hex(match[0]) and not self.in_blob(text, *match.span()))
        for value in candidates:
            if not self.high_entropy(value):
                continue
            places = list(occurrences(text, value))
            # one verdict per value: a SHA that is a commit next to `commit` is one everywhere in the file
            if not any(self.is_false_positive(value, text, start) for start, _ in places):
                yield from places

    def in_data(self, value: str, text: str, start: int, end: int) -> bool:
        line_start, line_end = line_bounds(text, start)
        return F.is_data_blob(value, text[line_start:line_end]) or self.in_blob(text, start, end)

    def in_blob(self, text: str, start: int, end: int) -> bool:
        """The line before or after is nothing but base64 (`b'UEsDBBQ...'`): embedded data, not a key. Lines
        with a name (`AWS_SECRET_ACCESS_KEY=...` after `AWS_ACCESS_KEY_ID=...`) are not data."""
        line_start, line_end = line_bounds(text, start)
        before = text[text.rfind("\n", 0, max(line_start - 1, 0)) + 1: max(line_start - 1, 0)]
        after_end = text.find("\n", line_end + 1)
        after = text[line_end + 1: len(text) if after_end < 0 else after_end]
        return bool(self.BLOB_LINE.match(before) or self.BLOB_LINE.match(after))

    def high_entropy(self, value: str) -> bool:
        if len(value) < MIN_ENTROPY_LENGTH or not any(c.isdigit() for c in value):
            return False
        if F.is_hex(value):
            return len(value) >= 32 and self.hex.calculate_shannon_entropy(value) > self.hex.entropy_limit
        return self.base64.calculate_shannon_entropy(value) > self.base64.entropy_limit

    @staticmethod
    def is_false_positive(value: str, text: str, start: int) -> bool:
        line_start, line_end = line_bounds(text, start)
        line = text[line_start:line_end]
        if PUBLIC_KEY_BEFORE.search(text[line_start:start]) or PUBLIC_RECIPIENT.fullmatch(value) or \
                F.is_public_token(text[max(line_start, start - 8):start + len(value)]):
            return True  # `ssh-ed25519 AAAA...`, WireGuard's `PublicKey = ...`, age recipients: public by design
        around = text[text.rfind("\n", 0, max(line_start - 1, 0)) + 1: line_end]  # this line and the one before
        if F.is_hex(value) and not F.has_secret_context(line):
            return True  # quoted hex without a key word around: digests and test vectors far more often than keys
        return (F.is_uuid(value) or F.is_sequential(value) or F.is_templated(value) or F.is_id_string(value, line)
                or F.is_hash_like(value, around) or F.is_integrity_hash(text[max(line_start, start - 8):start + 8])
                or F.is_data_blob(value, line) or F.is_encoded_text(value) or not F.is_gibberish(value))


_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+\Z", re.M)  # a C macro's name follows
PUBLIC_KEY_BEFORE = re.compile(r"(?i)(?:\b(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-[\w-]+|sk-(?:ssh|ecdsa)-[\w@.-]+)[ \t]+"
                               r"|public[ _-]?key\b.*)\Z")
PUBLIC_RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")  # an age recipient (bech32): a public key

# What follows a secret's name: optional type annotation, an operator, then a quoted or a bare value.
_QUOTED = r"(?P<q>[\"'`])(?P<quoted>(?:(?!(?P=q))[^\n\\]|\\.){1,1200})(?P=q)"
_BARE = r"(?P<bare>(?:[^\s\"'`,;&<>]|&(?![\w.-]+=)){1,1200})"  # stops at `&next=` of a query string
ASSIGNMENT_TAIL = re.compile(
    r"[\"'\]]{0,2}(?:[ \t]*:[ \t]*&?(?:'\w+[ \t]+)?[A-Za-z_][\w\[\]., |]*?|[ \t]+(?:string|\[\]byte)(?=[ \t]*=))?[ \t]*"
    rf"(?:(?P<op>=>|:=|===?|=|:(?!:)|\(|,|[ \t])[ \t]*{_QUOTED}|(?P<bare_op>=>|:=|=|:(?!:))[ \t]*{_BARE})"
)
MIXED = re.compile(r"[A-Za-z][^A-Za-z]|[^A-Za-z][A-Za-z]")  # letters and other characters (not `1000`, `passed`)
_NAME_START = re.compile(r"[\w.-]*\Z")
_NAME_END = re.compile(r"[\w.-]*")
SETTER_WORDS = frozenset({"set", "with", "use"})
POWERSHELL_COMMAND = re.compile(r"[A-Z][A-Za-z]+-[A-Z][A-Za-z]+")  # Verb-Noun
# metadata after the keyword only: `password_store` is not a secret, RELEASE_STORE_PASSWORD and TF_VAR_db_password are
AFTER_ONLY_META = frozenset({"store", "var"})


class KeywordRecognizer(CodeRecognizer):
    r"""Literal values assigned to names carrying a keyword (`db_password = "..."`, `API_TOKEN=...`).

    A name counts when one of its words is a keyword and none is a word that makes it metadata
    (`password_hash`, `token_url`, `PASSWORD_MIN_LENGTH`). A value counts unless it is templated,
    a reference (`get_password()`, `self.pw`, `None`), a path or URL, prose, or a placeholder.
    Keywords are searched first and names grown around them: a regex starting with `[\w.-]*`
    would backtrack over every identifier of the text.
    """

    KEYWORD: ClassVar[re.Pattern]
    META_WORDS = frozenset(
        "hash hashed hasher hashers hashing length len min max policy policies reset url uri urls endpoint "
        "field fields label prompt help message msg messages validator validators validation regex re "
        "pattern file path dir type types input form hint placeholder manager mgr change forgot required "
        "enabled enable disabled strength expire expiry expires expiration age salt encoder prefix suffix "
        "env var icon error errors text title widget column attr param params name names header headers kind "
        "format count limit timeout ttl lifetime size store storage cache class provider id ids mode option "
        "options flag flags check verify validate get read ask enter generate generator random reader writer "
        "getter setter callback handler func function method test tests description desc doc docs comment "
        "example sample template schema spec version algorithm algo scheme location loc source src encode "
        "decode encrypt decrypt add remove delete update index list dict map public digest".split()
    )
    PLACEHOLDERS = frozenset("password passwd pass pwd secret token key apikey api_key value string str none null "
                             "xxx xxxx xxxxx test foo bar baz".split())
    MIN_LENGTH = 4

    def spans(self, text: str) -> Iterator[Span]:
        last_end = -1
        for hit in self.KEYWORD.finditer(text):
            if hit.start() < last_end:
                continue
            start = _NAME_START.search(text, max(0, hit.start() - 80), hit.start()).start()
            end = _NAME_END.match(text, hit.end()).end()
            last_end = end
            match = ASSIGNMENT_TAIL.match(text, end)
            if match is None or text[max(0, start - 2):start] == "${":
                continue
            names = F.words(text[start:end])
            quoted_name = start > 0 and text[start - 1] in "\"'" and text.startswith(text[start - 1], end)
            if match["op"] == "," and not (quoted_name and text[:start - 1].rstrip().endswith(("(", "["))):
                continue  # setProperty("password", "value") and ("password", "value") pairs, not longer lists
            if match["op"] == "(" and ":" in text[end:match.start("op")]:
                continue  # `Password: os.Getenv("DB_PASSWORD")`: the argument of a call, not the value
            literal = self.is_literal_context(text, start, match)
            at_line_start = text[text.rfind("\n", 0, start) + 1:start].strip() in ("", "-", "export")
            line_key = match["bare_op"] in ("=", ":") and MIXED.search(match["bare"]) is not None and \
                at_line_start  # INI, YAML, .env: `pass = x`
            object_key = match["op"] in (":", "=>", "=") and match["q"] in ("'", '"') and \
                not text[end:match.start("op")].strip("\"' \t") and MIXED.search(match["quoted"]) is not None
            setting = match["op"] is not None and match["op"].isspace() and at_line_start and \
                not text[match.end():line_bounds(text, match.end())[1]].strip()  # Gradle: `keyPassword "x"`
            spaced = setting or bool(_DEFINE.search(text, max(0, start - 40), start))  # a space may be the operator
            callee = F.words(text[start:end].rsplit(".", 1)[-1])  # `ds.setPassword(`: the method's own words
            value = match["quoted"] or match["bare"]
            if self.is_secret_name(names, match, quoted_name or line_key or object_key, spaced, callee) \
                    and self.is_secret_value(match, literal) and not names_itself(value, names):
                yield value_span(match)
        for pattern in (XML_KEY_VALUE, NAMED_VALUE):
            for match in pattern.finditer(text):
                k = match.lastgroup.removeprefix("value")  # each alternative names its own name{k}, value{k}
                if self.is_secret_name(F.words(match[f"name{k}"]), key=True) and self.is_plain(match[f"value{k}"]):
                    yield match.span(f"value{k}")

    @staticmethod
    def is_literal_context(text: str, start: int, match: re.Match) -> bool:
        """A bare value is a literal, not a variable, in `.env`/shell lines (`DB_PASSWORD=hunter`), YAML
        (`password: hunter`) and query or connection strings (`?user=a&password=hunter`, `;Password=x;`)."""
        if match["bare_op"] is None:
            return False
        before = text[text.rfind("\n", 0, start) + 1:start]
        if before[-1:] in ("?", "&", ";"):
            return True
        at_line_start = before.strip() in ("", "export", "-", "- export")  # also YAML list items
        if match["bare_op"] == "=" and at_line_start:  # `DB_PASSWORD=x`, also before a command: `PGPASSWORD=x psql`
            name = text[start:match.start()].strip("\"'] ")
            return name.isupper() and text[match.start("bare_op") - 1] != " "
        rest = text[match.end():line_bounds(text, match.end())[1]].strip()
        if not at_line_start or rest and not rest.startswith("#"):
            return False  # the value must end the line: not `password: bool, optional` in a docstring
        value = match["bare"]
        return value.lower() not in TYPE_NAMES and not re.fullmatch(r"[A-Z][A-Za-z]*", value)  # `password: SecretStr`

    def is_plain(self, value: str) -> bool:
        return len(value) >= self.MIN_LENGTH and value.lower() not in self.PLACEHOLDERS and not F.is_templated(value)

    def is_secret_name(self, names: list[str], match: re.Match | None = None, key: bool = False,
                       spaced: bool = False, callee: list[str] | None = None) -> bool:
        """`key`: the name is plainly a key (quoted, or a config line's: `pass = x` in an INI file); `spaced`: a
        space may stand for the operator (`#define DB_PASSWORD "x"`, Gradle's `keyPassword "x"`)."""
        first = next((i for i, w in enumerate(names) if self.is_keyword(w)), len(names))
        if not names or any(w in self.META_WORDS and not (w in AFTER_ONLY_META and i < first)
                            for i, w in enumerate(names)):  # a (key)storePassword is a password, a password_store not
            return False
        op = match["op"] if match is not None else None
        if op == "(" and not (len(names) == 1 or (callee or names)[0] in SETTER_WORDS):
            return False  # password("..."), setPassword("..."), ds.setPassword("...") yes; check_password("...") no
        alone = len(names) == 1 and names[0] in ("password", "passwd")
        if op is not None and op.isspace() and not (spaced or alone):
            return False  # SQL `PASSWORD 'x'`, not prose ("pass 'index' instead"); `#define DB_PASSWORD "x"` is
        return self.has_keyword(names, key)

    def has_keyword(self, names: list[str], key: bool = False) -> bool:
        return any(self.is_keyword(w) for w in names)

    def is_keyword(self, word: str) -> bool:
        raise NotImplementedError

    def is_secret_value(self, match: re.Match, literal: bool = False) -> bool:
        quoted = match["quoted"] is not None
        value = (match["quoted"] if quoted else match["bare"]).strip()
        if len(value) < self.MIN_LENGTH or value.lower() in self.PLACEHOLDERS or F.is_templated(value):
            return False
        if not quoted and not literal and F.is_reference(value.rstrip(")]}")):  # `f(password=password)`
            return False
        if not quoted and POWERSHELL_COMMAND.fullmatch(value):  # `$Secure = ConvertTo-SecureString $Password ...`
            return False
        if not quoted and match["bare_op"] == ":" and value[:1] in ("*", "!", "&", "|", ">"):
            return False  # YAML `password: *default`, `password: !vault |`
        if DOTTED_NUMBER.fullmatch(value):  # versions, OIDs
            return False
        return value.count(" ") < 2 and "://" not in value and not value.startswith(("/", "./", "~/", "\\"))


# A name and its value in separate fields: Kubernetes/ECS env lists (`- name: DB_PASSWORD` / `value: x`),
# Postman (`{"key": "password", "value": x}`), ARM parameters (`"adminPassword": {"value": x}`), elements
# named by an attribute (`<property name="hibernate.connection.password">x</property>`, `<entry key=..>`)
# and plists (`<key>API_KEY</key>` / `<string>x</string>`)
NAMED_VALUE = re.compile(
    r"\b(?:name|key)[\"']?[ \t]*[:=][ \t]*[\"']?(?P<name>[\w.-]{1,80})[\"']?[ \t]*(?:,[ \t]*|\n[ \t]*(?:-[ \t]*)?)"
    r"[\"']?value[\"']?[ \t]*:[ \t]*(?P<q>[\"']?)(?P<value>[^\"'\s,}]{1,1200})(?P=q)"
    r"|[\"'](?P<name2>[\w.-]{1,80})[\"'][ \t]*:[ \t]*\{[ \t]*[\"']value[\"'][ \t]*:[ \t]*"
    r"[\"'](?P<value2>[^\"'\n]{1,1200})[\"']"
    r"|<(?P<el>property|entry|add|setting|param)\b[^>\n]*?\b(?:name|key)=[\"'](?P<name3>[\w.:-]{1,80})[\"'][^>\n]*>"
    r"(?P<value3>[^<\n]{1,1200})</(?P=el)>"
    r"|<key>(?P<name4>[\w.: -]{1,80})</key>\s*<string>(?P<value4>[^<\n]{1,1200})</string>")
# `<add key="ApiKey" value="..."/>` (.NET), `<property name="password" value="..."/>` (Spring)
XML_KEY_VALUE = re.compile(r"\b(?:key|name)=[\"'](?P<name>[\w.:-]{1,80})[\"']\s+"
                           r"value=[\"'](?P<value>[^\"'\n]{1,200})[\"']")
TYPE_NAMES = frozenset("str string bytes int bool float dict list text any optional union none secretstr secretbytes "
                       "password char".split())
# `db_pass`, `SMTP_PASS`: `pass` as the last word of a name counts after these only (not `forward_pass`, `PassT`)
PASS_QUALIFIERS = frozenset("db database user admin root smtp mail email mysql sql pg postgres ftp sftp ssh redis ldap "
                            "login account app api proxy auth my rabbit rabbitmq mongo wifi sudo server sa "
                            "bind become default".split())


# Credentials stored base64-encoded: Docker's `"auth": base64("user:password")` and a Kubernetes Secret's
# `data:` values (base64 of the secret itself; `stringData:` holds them plain and the keyword rules apply).
DOCKER_AUTH = re.compile(r"\"auth\"\s*:\s*\"(?P<value>[A-Za-z0-9+/]{8,}={0,2})\"")
K8S_SECRET = re.compile(r"(?m)^kind:[ \t]*Secret[ \t]*$")
K8S_DATA_VALUE = re.compile(r"^[ \t]+[\w.-]+:[ \t]*(?P<value>[A-Za-z0-9+/]{4,}={0,2})[ \t]*$")


def encoded_credentials(text: str) -> Iterator[Span]:
    for match in DOCKER_AUTH.finditer(text):
        if b":" in _b64(match["value"]):
            yield match.span("value")
    if K8S_SECRET.search(text):
        for block in re.finditer(r"(?m)^data:[ \t]*\n((?:[ \t]+.*(?:\n|$))+)", text):
            at = block.start(1)
            for line in block[1].splitlines(keepends=True):
                value = K8S_DATA_VALUE.match(line.rstrip("\n"))
                if value and _b64(value["value"]):
                    yield at + value.start("value"), at + value.end("value")
                at += len(line)


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""


DOTTED_NUMBER = re.compile(r"\d+(?:\.\d+)+")


def names_itself(value: str, names: list[str]) -> bool:
    """`#define LN_userPassword "userPassword"`, `#define LN_kx_psk "kx-psk"`: a value made of words of its
    own name is a label."""
    return re.sub(r"[_.-]", "", value).isalpha() and set(F.words(value)) <= set(names)


def value_span(match: re.Match) -> Span:
    return match.span("quoted") if match["quoted"] is not None else match.span("bare")


class PasswordRecognizer(KeywordRecognizer):
    """Passwords: assignments, XML elements, SQL `IDENTIFIED BY '...'`, and `scheme://user:PASS@host`."""

    ENTITY = "PASSWORD"
    KEYWORDS = frozenset("password passwords passwd pwd passphrase passcode passwort contrasena senha "
                         "motdepasse pgpassword sshpass".split())
    KEYWORD = re.compile(r"(?i:pass|pwd|contrase|senha|motdepasse|psk\b|(?<=[_.-])pw\b)")
    XML = re.compile(r"<(?P<tag>[\w:.-]*(?i:pass|pwd)[\w:.-]*)(?:[ \t][^>\n]*)?>(?P<value>[^<\n]{1,200})</(?P=tag)>")
    SQL = re.compile(r"(?i)\bidentified\s+by\s+(?P<q>['\"])(?P<value>[^'\"\n]{1,200})(?P=q)")
    URL = re.compile(r"[A-Za-z][\w+.-]*://[^\s:/@'\"`]*:(?P<value>[^\s/@'\"`]{1,200})@[\w.-]+")
    # `--password hunter2`, `the password is hunter2`: unquoted, so only values with a digit or symbol
    # `mysql -u root -p'x'`, `mysqldump -px` (attached: `-p x` asks for it), `sshpass -p 'x'`
    # (mysql's `-p x` asks for it: the value must be attached), `docker login -p x`, `redis-cli -a x`,
    # `zip -P x`, `keytool -storepass x`, `openssl ... -passout pass:x`, `smbclient -U user%x`,
    # `htpasswd -b FILE user x`, `ConvertTo-SecureString "x" -AsPlainText`, redis/LDAP config directives
    FLAG = re.compile(r"(?:\b(?:mysql|mysqldump|mysqladmin|mariadb|mariadb-dump)\b[^\n]*?\s-p|\bsshpass[ \t]+-p[ \t]*"
                      r"|\bdocker\b[^\n]*?\blogin\b[^\n]*?\s-p[ \t]+|\bredis-cli\b[^\n]*?\s-a[ \t]+"
                      r"|\bzip\b[^\n]*?\s-P[ \t]+|\s-(?:src|dest)?(?:store|key)pass[ \t]+|\s-pass(?:in|out)?[ \t]+pass:"
                      r"|\bsmbclient\b[^\n]*?\s-U[ \t]+[^\s%]+%|\bsqlcmd\b[^\n]*?\s-P[ \t]+"
                      r"|\bopenssl\b[^\n]*?\s-k[ \t]+|\s-auth[ \t]+[^\s:]+:|\blftp\b[^\n]*?\s-u[ \t]+[^\s,]+,"
                      r"|\baz\b[^\n]*?\blogin\b[^\n]*?\s-p[ \t]+"
                      r"|\bhtpasswd[ \t]+(?:-\w+[ \t]+)*[^\s-]\S*[ \t]+[^\s-]\S*[ \t]+"
                      r"|(?i:ConvertTo-SecureString)[ \t]+(?:-String[ \t]+)?(?=['\"][^\n]*-AsPlainText)"
                      r"|^[ \t]*(?:requirepass|masterauth|bindpw|rootpw)[ \t]+"
                      r"|^[ \t]*ENV[ \t]+\w*(?i:pass|pwd)\w*[ \t]+"  # Dockerfile `ENV DB_PASSWORD x`
                      r"|^[\w*][\w.*-]*:(?:\d+|\*):[\w.*-]+:[\w.*-]+:(?=[^:\s]+$))"  # .pgpass `host:port:db:user:x`
                      r"(?P<q>['\"]?)(?P<value>[^\s'\"]{4,200})(?P=q)", re.M)
    # a password passed by position after a literal user: `DBI->connect($dsn, "user", "x")`,
    # `auth=("user", "x")`, `HTTPBasicAuth("user", "x")`, `smtp.login("user", "x")`
    POSITIONAL = re.compile(r"(?:(?:DBI->connect(?:_cached)?|getConnection|mysqli(?:_connect)?|mysql_connect|PDO)"
                            r"\([^,\n]+,|\bauth[ \t]*=[ \t]*[(\[]|"
                            r"\b(?:HTTPBasicAuth|HTTPDigestAuth|BasicAuth|DigestAuth|NetworkCredential|"
                            r"PasswordAuthentication|createAccount|simple_bind_s|bind_s)\(|\.login\()[ \t]*"
                            r"(?P<uq>[\"'])[^\"'\n]{1,100}(?P=uq)[ \t]*,[ \t]*"
                            r"(?P<q>[\"'])(?P<value>[^\"'\n]{4,200})(?P=q)")
    SUDO = re.compile(r"\becho[ \t]+(?P<q>['\"]?)(?P<value>[^\s'\"]{4,200})(?P=q)[ \t]*\|[ \t]*sudo[ \t]+-S\b")
    GO_DSN = re.compile(r"[\"'`][\w.-]+:(?P<value>[^\s:@\"'`]{4,200})@(?:tcp|unix)\(")  # "user:x@tcp(db:3306)/app"
    LOOSE = re.compile(r"(?i)(?:--(?:password|passwd|pass|requirepass|masterauth)(?:[ \t]+|=)"
                       r"|(?P<prose>\bpass(?:word|wd)[ \t]+(?:(?:is|was)[ \t]+)?)"
                       r"|(?P<user>(?:curl|wget|http)\b[^\n]*?\s(?:-u|--user)[ \t]+['\"]?[^\s:'\"]+:))"
                       r"(?P<value>[^\s\"'`]{4,200})")

    def spans(self, text: str) -> Iterator[Span]:
        yield from super().spans(text)
        for match in self.XML.finditer(text):
            if self.is_secret_name(F.words(match["tag"]), key=True) and self.is_plain_value(match["value"]):
                yield match.span("value")
        for pattern in (self.SQL, self.URL, self.FLAG, self.POSITIONAL, self.GO_DSN, self.SUDO):
            for match in pattern.finditer(text):
                if self.is_plain_value(match["value"]):
                    yield match.span("value")
        for match in self.LOOSE.finditer(text):
            value = match["value"].rstrip(".,;:)")
            needs = str.isdigit if match["prose"] else (lambda c: not c.isalpha())  # prose: "password and/or"
            if self.is_plain_value(value) and (match["user"] or any(needs(c) for c in value)):
                yield match.start("value"), match.start("value") + len(value)

    def is_plain_value(self, value: str) -> bool:
        return value.lower() not in self.PLACEHOLDERS and not F.is_templated(value)

    def is_keyword(self, word: str) -> bool:
        return word in self.KEYWORDS

    def has_keyword(self, names: list[str], key: bool = False) -> bool:
        """`pass` alone is Python's statement, LLVM's passes, a test verdict: only `db_pass`, `SMTP_PASS`,
        a quoted key (`{'pass': ...}`) or a config line's (`pass = x`); `pw` the same, never alone; `psk`
        (Wi-Fi's pre-shared key) as the last word (`wifi_psk`, not `psk_identity`)."""
        last = names[-1]
        return (any(self.is_keyword(w) for w in names) or last == "psk" or last in ("pass", "pw") and (
            key and last == "pass" if len(names) == 1 else names[-2] in PASS_QUALIFIERS))


class TokenAssignmentRecognizer(KeywordRecognizer):
    """Secrets assigned to secret-named keys that no format or entropy rule catches
    (`SECRET_KEY = "django-insecure-..."`, `api_key: 9f8e7d6c5b4a`, `Authorization: Bearer ...`)."""

    ENTITY = "KEY"
    KEYWORDS = frozenset("secret secrets token tokens apikey apikeys credential credentials creds bearer".split())
    KEY_QUALIFIERS = frozenset("api access auth private client secret signing encryption app master session".split())
    KEYWORD = re.compile(r"(?i:secret|token|key|credential|creds|bearer)")
    BEARER = re.compile(r"(?i)\b(?:bearer|token|basic)\s+(?P<value>[A-Za-z0-9._~+/=-]{16,})")
    MIN_LENGTH = 8

    def spans(self, text: str) -> Iterator[Span]:
        yield from super().spans(text)
        for match in self.BEARER.finditer(text):
            value = match["value"]
            if any(c.isdigit() for c in value) and F.is_gibberish(value) and not F.is_templated(value):
                yield match.span("value")

    def is_keyword(self, word: str) -> bool:
        return word in self.KEYWORDS

    def has_keyword(self, names: list[str], quoted_name: bool = False) -> bool:
        pairs = zip(names, names[1:], strict=False)
        return (any(w in self.KEYWORDS for w in names)
                or any(a in self.KEY_QUALIFIERS and b in ("key", "keys") for a, b in pairs))

    def is_secret_value(self, match: re.Match, literal: bool = False) -> bool:
        if not super().is_secret_value(match, literal):
            return False
        value = (match["quoted"] if match["quoted"] is not None else match["bare"]).strip()
        return " " not in value and (any(c.isdigit() for c in value) or F.is_gibberish(value)) \
            and not F.is_public_token(value)
