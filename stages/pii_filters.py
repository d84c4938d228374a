"""False-positive filters of the `pii` stage: what looks like PII in code but is not.

BigCode's StarCoder pipeline kept private IPs and popular DNS servers and dropped detect-secrets hits
that were UUIDs, hashes, ids, templated or sequential strings, or not gibberish. These are those
rules, plus the ones code needs (version strings, lock-file integrity hashes, base64 data blobs,
placeholder passwords).
"""

import base64
import binascii
import ipaddress
import re
from functools import lru_cache
from pathlib import Path

from detect_secrets.filters import heuristic

# The public DNS resolvers BigCode kept (plus the IPv6 addresses of the same services).
KEPT_IPS = frozenset({
    "8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "76.76.19.19", "76.223.122.150", "9.9.9.9", "149.112.112.112",
    "208.67.222.222", "208.67.220.220", "8.26.56.26", "8.20.247.20", "94.140.14.14", "94.140.15.15",
    "2001:4860:4860::8888", "2001:4860:4860::8844", "2606:4700:4700::1111", "2606:4700:4700::1001",
    "2620:fe::fe", "2620:fe::9", "2620:119:35::35", "2620:119:53::53",
})
# Reserved for documentation by RFC 2606/6761: addresses there are examples, never somebody's PII.
EXAMPLE_DOMAINS = ("example.com", "example.org", "example.net", "example.edu")
EXAMPLE_TLDS = ("example", "test", "invalid", "localhost", "local")

_VERSION_BEFORE = re.compile(
    r"(?i:version|__version__|\bver|release|\brev|revision|\btag)[\w-]*[\s\"'=:(,\[>]*$"  # version="1.2.3.4", <version>
    r"|(?:==|>=|<=|~=|!=|\^|~)\s*$"  # pins: pkg==1.2.3.4, pkg>=1.2.3.4, ^1.2.3.4
    r"|[A-Za-z]/$"  # product tokens: Chrome/120.0.0.0
)
_HASH_WORDS = re.compile(r"(?i)sha|md5|hash|checksum|digest|integrity|commit|\brev|etag|fingerprint|crc|blob|"
                         r"oid|object|tree|nonce|salt|signature")
_BASE64_DATA = re.compile(r"(?i)base64,|;base64|data:")
# Magic prefixes of base64-encoded binary files (PNG, JPEG, GIF, WebP, PDF, zip, gzip, WOFF, ico, SVG).
_BLOB_MAGIC = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "JVBERi0", "UEsDB", "H4sI", "d09GR", "AAABAA", "PHN2Zy",
               "PD94bW")
_TEMPLATE = re.compile(r"\$\{|\{\{|\}\}|%\(|^%[sd]$|%[sdr].*%[sdr]|\{\}|\*.*\*.*\*|"
                       r"^\$[A-Za-z_(]|^<[^>]*>$|^\{[^}]*\}$|^\[[^\]]*\]$|\*{3}|^x{3,}$|"
                       r"^\.{3}|^(?i:your|my|some|enter|insert|replace|example|dummy|fake|sample|placeholder|"
                       r"redacted|changeme|todo|none|null|nil|undefined|true|false|empty)\b|[xX]{6,}|"
                       r"^(?i:your|enter|insert|replace|example|dummy|fake|sample|placeholder|changeme)_|"
                       # AWS's AKIAIOSFODNN7EXAMPLE, WordPress's `password_here`, SOPS values, FTP's anonymous login
                       r"EXAMPLE(?:KEY)?$|_here$|^ENC\[|^-?anonymous@?$")
# A bare value that names something: `password`, `self.pw`, `cfg.db.password`, `get_pw()`, `args[0]`.
_REFERENCE = re.compile(r"^(?:[A-Za-z_]+|[A-Za-z_]\w*(?:(?:\.|::)[A-Za-z_]\w*)+|[A-Za-z_][\w.:]*[(\[].*|[(\[{].*)$")
_STRIPE_PUBLISHABLE = re.compile(r"(?<![A-Za-z0-9])pk_(?:test|live)_")
_SEQUENCES = ("ABCDEFGH", "BCDEFGHI", "ZYXWVUTS", "01234567", "12345678", "98765432", "QWERTYUI", "ASDFGHJK")
_SECTION_BEFORE = re.compile(r"(?i)(?:section|sect?\.|§|chapter|clause)[\s#-]*$")
_SECRET_CONTEXT = re.compile(r"(?i)key|secret|token|pass|auth|cred|api|private|sign|hmac|bearer")
_HOST_CONTEXT = re.compile(r"(?i)://|@|\bip|host|server|addr|proxy|dns|connect|ping|route|gateway")
_WORD_SPLIT = re.compile(r"[^A-Za-z]+|(?<=[a-z])(?=[A-Z])")


def is_public_ip(value: str) -> bool:
    """A routable unicast address that is not one of the kept DNS servers.

    Private, loopback, link-local, documentation, shared (CGNAT), multicast and reserved ranges
    are not PII. Public IPv6 unicast lives in 2000::/3; anything else (e.g. `a::b` from C++ or
    Perl scopes) is not an address found in code in practice.
    """
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return False
    if str(ip) in KEPT_IPS or not ip.is_global or ip.is_multicast or ip.is_reserved:
        return False
    return ip.version == 4 or 0x2000 <= int(ip) >> 112 < 0x4000


def in_version_context(line_before: str) -> bool:
    """`1.2.3.4` right after `version=`, `__version__ = "`, `==`, `>=`, `@`, `v` is a version, not an IP."""
    return bool(_VERSION_BEFORE.search(line_before[-40:]))


def is_example_email(domain: str) -> bool:
    domain = domain.lower()
    return domain.endswith(EXAMPLE_DOMAINS) or domain.rsplit(".", 1)[-1] in EXAMPLE_TLDS


def is_hex(value: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in value)


def has_secret_context(line: str) -> bool:
    """The line speaks of keys, secrets, tokens, passwords, auth or signing."""
    return bool(_SECRET_CONTEXT.search(line))


def is_hash_like(value: str, line: str) -> bool:
    """A hex digest of a usual length next to a hash word (sha, md5, commit, integrity...), as BigCode did."""
    return is_hex(value) and len(value) in (32, 40, 56, 64, 96, 128) and bool(_HASH_WORDS.search(line))


_INTEGRITY = re.compile(r"(?i)sha(?:1|224|256|384|512)[-:=]|\bh1:")  # also go.sum's `h1:<base64 sha256>`


def is_integrity_hash(around_start: str) -> bool:
    """Subresource/lock-file integrity (`sha512-...`) and pip hashes (`sha256:...`): `around_start` is the
    text from a few characters before the value to a few characters into it."""
    return bool(_INTEGRITY.search(around_start))


def is_data_blob(value: str, line: str) -> bool:
    """Base64-encoded files (images, fonts, archives) embedded in code, and long data strings."""
    return len(value) > 200 or value.startswith(_BLOB_MAGIC) or bool(_BASE64_DATA.search(line))


def is_encoded_text(value: str) -> bool:
    """Base64 of readable text (`YWJjZGVm...` = "abcdef..."): encoded test data, not a key, which decodes to
    random bytes. Encoded `user:password` pairs (HTTP Basic) are credentials and stay secrets."""
    padded = value + "=" * (-len(value) % 4)
    try:
        decoded = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in decoded)
    return len(decoded) >= 12 and printable >= 0.95 * len(decoded) and b":" not in decoded


def is_templated(value: str) -> bool:
    """`${SECRET}`, `{{ token }}`, `<password>`, `%s`, `$VAR`, masks and obvious placeholders."""
    return heuristic.is_templated_secret(value) or bool(_TEMPLATE.search(value))


def is_reference(value: str) -> bool:
    """An unquoted value that names something else: `password = get_password()`, `self.key`, `None`."""
    return bool(_REFERENCE.match(value))


def is_uuid(value: str) -> bool:
    return heuristic.is_potential_uuid(value)


def is_public_token(value: str) -> bool:
    """Public by design: Mapbox `pk.` tokens (JWT-shaped), Stripe's publishable `pk_test_`/`pk_live_` keys
    and jwt.io's example token (docs and tests)."""
    return value.startswith("pk.eyJ") or value.endswith("SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c") or \
        bool(_STRIPE_PUBLISHABLE.search(value))


def is_sequential(value: str) -> bool:
    """`ABCDEF...`, `0123456789`, keyboard rows, hex byte ramps (`000102...1f`, test vectors' keys):
    alphabets and test strings, not keys."""
    upper = value.upper()
    return heuristic.is_sequential_string(value) or any(seq in upper for seq in _SEQUENCES) or _is_byte_ramp(value)


def _is_byte_ramp(value: str) -> bool:
    if len(value) < 16 or len(value) % 2 or not is_hex(value):
        return False
    first = int(value[:2], 16)
    return value.lower() == "".join(f"{(first + i) % 256:02x}" for i in range(len(value) // 2))


def is_section_number(value: str, before: str, after: str) -> bool:
    """`// 20.7.1.3 unique_ptr`, `[22.2.1.6]`: dotted numbers whose parts are all small are section or
    version numbers unless the line speaks of hosts (`ip`, `host`, `server`, `://`, `@`, a port)."""
    if _SECTION_BEFORE.search(before):
        return True
    if any(int(part) >= 32 for part in value.split(".")):
        return False
    return not (_HOST_CONTEXT.search(before) or after.startswith(":"))


def is_id_string(value: str, line: str) -> bool:
    """`user_id = "..."`, `ids: [...]`: identifiers, not credentials (detect-secrets' heuristic)."""
    return heuristic.is_likely_id_string(value, line)


def words(name: str) -> list[str]:
    """The lower-cased words of an identifier: `dbPassword_2` -> ['db', 'password']."""
    return [w.lower() for w in _WORD_SPLIT.split(name) if w]


@lru_cache(maxsize=1)
def _gibberish_detector():
    """detect-secrets' character-bigram model (trained on RFCs, shipped in the wheel)."""
    from detect_secrets.filters import gibberish
    from gibberish_detector.detector import create_from_model

    return create_from_model(str(Path(gibberish.__path__[0]) / "rfc.model"), limit=3.7)


def is_gibberish(value: str) -> bool:
    """Random-looking rather than word-like (`ThisIsAConstantName` is not). Hex strings have too
    small an alphabet for the model to decide: they count as gibberish, as in detect-secrets."""
    if is_hex(value.replace("-", "")):
        return True
    return _gibberish_detector().is_gibberish(value.lower())
