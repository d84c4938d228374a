"""The `pii` stage's labelled evaluation set, made from real files on this machine, and its scorer.

Positives: real source/config files with PII planted at random lines, in many syntaxes (string
literals, comments, `.env`, YAML, JSON, shell, URLs, XML, SQL, connection strings, PEM blocks).
Negative controls: other real files with planted look-alikes that must be left alone (git SHAs,
lock-file and pip hashes, UUIDs, version strings, private IPs, DNS servers, example.com addresses,
base64 images, placeholder and referenced passwords, OIDs, dates, alphabets).
Values are random (seeded), so nothing real is planted and nothing is committed.

Scoring looks only at planted lines: the real files may hold real PII of their own (author emails),
which is counted apart as "background" detections.

    .venv/bin/python bench/make_pii_eval.py [--positives 400] [--negatives 400] [--seed 0] [--misses]
"""

import argparse
import base64
import json
import os
import random
import string
import sys
import sysconfig
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOTS = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"]), Path("/usr/include"),
         Path("/usr/share/perl"), Path("/usr/share/perl5"), Path("/usr/lib/node_modules"),
         Path("/usr/lib/python3/dist-packages"), Path("/etc")]
EXTENSIONS = {".py": "#", ".pyi": "#", ".sh": "#", ".pl": "#", ".pm": "#", ".rb": "#", ".yaml": "#", ".yml": "#",
              ".toml": "#", ".cfg": "#", ".ini": "#", ".conf": "#", ".c": "//", ".h": "//", ".hpp": "//",
              ".cc": "//", ".js": "//", ".ts": "//", ".mjs": "//", ".java": "//", ".go": "//", ".rs": "//",
              ".json": "", ".md": "", ".txt": "", ".rst": "", ".html": "", ".xml": ""}
MAX_FILE_BYTES = 60_000
ENTITIES = ("EMAIL", "IP_ADDRESS", "KEY", "PASSWORD")
B64 = string.ascii_letters + string.digits + "+/"
B64URL = string.ascii_letters + string.digits + "-_"
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"


@dataclass
class Planted:
    start: int
    end: int
    entity: str | None  # None: a negative control
    kind: str
    value: str


@dataclass
class Case:
    path: str
    text: str
    planted: list[Planted] = field(default_factory=list)
    regions: list[tuple[int, int]] = field(default_factory=list)  # the planted lines


# -- values ------------------------------------------------------------------------------------------
class Values:
    """Random, realistic values of every kind (seeded)."""

    FIRST = "james mary robert patricia john jennifer michael linda david elizabeth wei yuki olga ahmed".split()
    LAST = "smith johnson garcia miller davis rodriguez martinez nguyen kowalski tanaka muller rossi".split()
    DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.co.uk", "protonmail.ch", "acme-corp.io",
               "mail.utoronto.ca", "cs.stanford.edu", "web.de", "orange.fr", "fastmail.fm", "company.com.au"]
    WORDS = "sunflower dragon monkey shadow falcon winter coffee pirate tiger galaxy".split()

    def __init__(self, rng: random.Random):
        self.rng = rng

    def s(self, n: int, alphabet: str) -> str:
        return "".join(self.rng.choices(alphabet, k=n))

    def digits_and_letters(self, n: int, alphabet: str) -> str:
        while True:
            value = self.s(n, alphabet)
            if any(c.isdigit() for c in value) and any(c.isalpha() for c in value):
                return value

    def email(self) -> str:
        r = self.rng
        user = r.choice([f"{r.choice(self.FIRST)}.{r.choice(self.LAST)}", f"{r.choice(self.FIRST)}{r.randrange(100)}",
                         f"{r.choice(self.FIRST)[0]}{r.choice(self.LAST)}", f"{r.choice(self.FIRST)}+dev"])
        return f"{user}@{r.choice(self.DOMAINS)}"

    def public_ipv4(self) -> str:
        import ipaddress

        from stages.pii_filters import is_public_ip
        while True:
            value = ".".join(str(self.rng.randrange(1, 255)) for _ in range(4))
            if is_public_ip(value) and max(int(p) for p in value.split(".")) >= 32:
                return str(ipaddress.ip_address(value))

    def public_ipv6(self) -> str:
        from stages.pii_filters import is_public_ip
        while True:
            r = self.rng.randrange
            groups = [f"{self.rng.choice([0x2001, 0x2400, 0x2600, 0x2a00, 0x2a03, 0x2607]):x}",
                      f"{r(0x100, 0xffff):x}", f"{r(1, 0xffff):x}", f"{r(1, 0xffff):x}"]
            value = ":".join(groups) + "::" + f"{self.rng.randrange(1, 0xffff):x}"
            if is_public_ip(value):
                return value

    def password(self) -> str:
        r = self.rng
        return r.choice([
            f"{r.choice(self.WORDS).capitalize()}{r.choice('#!%&*')}{r.randrange(1000, 9999)}",
            self.digits_and_letters(14, ALNUM + "!#%&*-_"),
            f"{r.choice(self.WORDS)}{r.randrange(10, 99)}{r.choice(self.WORDS)}",
            self.digits_and_letters(10, ALNUM),
        ])

    def jwt(self) -> str:
        def enc(obj) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
        payload = {"sub": str(self.rng.randrange(10**9)), "name": self.rng.choice(self.FIRST), "iat": 1516239022}
        return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}.{self.s(43, B64URL)}"

    def pem(self, kind: str, escaped: bool = False) -> str:
        body = [self.s(64, B64) for _ in range(self.rng.randrange(4, 9))] + [self.s(24, B64) + "=="]
        sep = "\\n" if escaped else "\n"
        return sep.join([f"-----BEGIN {kind}-----", *body, f"-----END {kind}-----"])

    def keys(self) -> dict[str, Callable[[], str]]:
        s = self.s
        return {
            "aws_access_key_id": lambda: "AKIA" + s(16, string.ascii_uppercase + "234567"),
            "aws_secret": lambda: self.digits_and_letters(40, B64),
            "github": lambda: "ghp_" + s(36, ALNUM),
            "github_oauth": lambda: "gho_" + s(36, ALNUM),
            "gitlab": lambda: "glpat-" + s(20, ALNUM + "-_"),
            "slack_bot": lambda: f"xoxb-{s(12, string.digits)}-{s(13, string.digits)}-{s(24, ALNUM)}",
            "slack_webhook": lambda: f"https://hooks.slack.com/services/T{s(8, string.ascii_uppercase + string.digits)}"
                                     f"/B{s(8, string.ascii_uppercase + string.digits)}/{s(24, ALNUM)}",
            "stripe": lambda: "sk_live_" + s(24, ALNUM),
            "twilio": lambda: "SK" + s(32, HEX),
            "twilio_account": lambda: "AC" + s(32, HEX),
            "sendgrid": lambda: f"SG.{s(22, B64URL)}.{s(43, B64URL)}",
            "mailchimp": lambda: f"{s(32, HEX)}-us{self.rng.randrange(1, 21)}",
            "npm": lambda: "npm_" + s(36, ALNUM),
            "jwt": self.jwt,
            "azure_storage": lambda: s(86, B64) + "==",
            "discord": lambda: f"M{s(23, ALNUM)}.{s(6, B64URL)}.{s(27, B64URL)}",
            "openai": lambda: f"sk-{s(20, ALNUM)}T3BlbkFJ{s(20, ALNUM)}",
            "base64_secret": lambda: self.digits_and_letters(40, B64),
            "hex_secret": lambda: s(64, HEX),
            "hex32_secret": lambda: s(32, HEX),
        }


# -- templates: (kind, text with {v} or {c} comment prefix) ------------------------------------------------
EMAIL_TEMPLATES = [
    "{c}Maintainer: Jane Roe <{v}>", '__author_email__ = "{v}"', 'CONTACT = "{v}"', '  "email": "{v}",',
    "email: {v}", '<a href="mailto:{v}">contact us</a>', "Signed-off-by: Jane Roe <{v}>", "ADMIN_EMAIL={v}",
    "{c}Questions? write to {v}.", "  author='Jane Roe', author_email='{v}',", "git config user.email {v}",
    "my $mail = '{v}';",
]
IP_TEMPLATES = [
    'SERVER_IP = "{v}"', "{c}production host: {v}", 'BASE_URL = "http://{v}:8080/api/v1"', "host: {v}",
    '  "ip": "{v}",', "ssh deploy@{v}", "allow {v};", "upstream backend {{ server {v}:443; }}",
    "DB_HOST={v}", 'curl -s "https://{v}/health"', "{c}blocked {v} after the scan",
]
IPV6_TEMPLATES = ['SERVER_V6 = "{v}"', "listen [{v}]:443;", "{c}peer at {v}", "host: {v}"]
KEY_TEMPLATES = {
    "aws_access_key_id": ['AWS_ACCESS_KEY_ID = "{v}"', "aws_access_key_id={v}", '{c}key id {v}'],
    "aws_secret": ['AWS_SECRET_ACCESS_KEY = "{v}"', "aws_secret_access_key = {v}", "  secret_key: {v}"],
    "github": ['GITHUB_TOKEN = "{v}"', "export GH_TOKEN={v}", 'headers = {{"Authorization": "token {v}"}}'],
    "github_oauth": ['token: "{v}"'],
    "gitlab": ['gitlab_token = "{v}"', "GITLAB_TOKEN={v}"],
    "slack_bot": ['SLACK_BOT_TOKEN = "{v}"', "slack_token: {v}", 'client = WebClient(token="{v}")'],
    "slack_webhook": ['WEBHOOK = "{v}"', "webhook_url: {v}"],
    "stripe": ['stripe.api_key = "{v}"', "STRIPE_SECRET_KEY={v}"],
    "twilio": ['TWILIO_API_KEY = "{v}"'], "twilio_account": ['account_sid = "{v}"'],
    "sendgrid": ['SENDGRID_API_KEY = "{v}"', "sendgrid_key: {v}"],
    "mailchimp": ['MAILCHIMP_KEY = "{v}"', "mailchimp: {v}"],
    "npm": ["//registry.npmjs.org/:_authToken={v}", 'NPM_TOKEN="{v}"'],
    "jwt": ["Authorization: Bearer {v}", 'const token = "{v}";', "{c}session {v}"],
    "azure_storage": ["DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={v};EndpointSuffix=core.windows.net"],
    "discord": ['DISCORD_TOKEN = "{v}"', "bot.run('{v}')"],
    "openai": ['openai.api_key = "{v}"', "OPENAI_API_KEY={v}"],
    "base64_secret": ['SECRET = "{v}"', "client_secret: {v}", '  "signing_secret": "{v}",', "JWT_SECRET={v}",
                      'app.config["SECRET_KEY"] = "{v}"'],
    "hex_secret": ['api_secret = "{v}"', "ENCRYPTION_KEY={v}", '  "apiKey": "{v}",'],
    "hex32_secret": ['API_KEY = "{v}"', "api_key: {v}", "const apiKey = '{v}';", '<add key="ApiKey" value="{v}"/>',
                     "https://api.acme-corp.com/v2/items?api_key={v}&page=2"],
}
PEM_KINDS = ["RSA PRIVATE KEY", "OPENSSH PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY"]
PASSWORD_TEMPLATES = [
    'DB_PASSWORD = "{v}"', 'conn = connect(host="db", user="admin", password="{v}")', '  "password": "{v}",',
    "password: {v}", 'password: "{v}"', "MYSQL_ROOT_PASSWORD={v}", 'DATABASE_URL = "postgres://app:{v}@db.acme-corp.com:5432/app"',
    "mysql -u root --password={v} app", "<password>{v}</password>", "CREATE USER 'app'@'%' IDENTIFIED BY '{v}';",
    "    'password' => '{v}',", 'props.setProperty("password", "{v}");',
    'ConnectionString = "Server=tcp:db.acme.com;Database=app;User Id=admin;Password={v};"',
    "smtp_pass = '{v}'", 'userPassword := "{v}"', "redis://:{v}@cache.acme-corp.com:6379/0",
    "{c}admin password is {v}", "--password {v}", 'self.assertTrue(login("admin", password="{v}"))',
    "machine api.acme-corp.com login deploy password {v}", "  - POSTGRES_PASSWORD={v}",
    "jdbc:mysql://db:3306/app?user=root&password={v}", '<property name="password" value="{v}"/>',
    "curl -u admin:{v} https://api.acme-corp.com/v1/users", "define('DB_PASSWORD', '{v}');",
    "spring.datasource.password={v}", 'os.environ["DB_PASSWORD"] = "{v}"',
    "mysql -u root -p'{v}' -h db.acme-corp.com app < dump.sql", "mysqldump -uroot -p{v} shop > shop.sql",
    '#define ADMIN_PASSWORD "{v}"', "PGPASSWORD={v} psql -h db.acme-corp.com -U app orders",
    "sshpass -p '{v}' ssh build-host uptime", 'r = requests.get(url, auth=("admin", "{v}"))',
    'my $dbh = DBI->connect("DBI:mysql:database=crm;host=db1", "crm_rw", "{v}");',
    'const DB_PASS: &str = "{v}";', 'var dbPassword string = "{v}"', 'ds.setPassword("{v}");',
    'Connection c = DriverManager.getConnection("jdbc:mysql://db:3306/app", "root", "{v}");',
    "docker login -u deploy -p {v} registry.acme-corp.com", "redis-cli -h cache -a {v} ping", "requirepass {v}",
    "ENV DB_PASSWORD {v}", "db.acme-corp.com:5432:appdb:app_user:{v}",
    'db, err := sql.Open("mysql", "root:{v}@tcp(db:3306)/app")',
    "keytool -genkey -alias app -keystore app.jks -storepass {v}", 'curl --user "admin:{v}" https://api.acme-corp.com/',
    "pass = {v}", 'psk="{v}"', "ldap_bind_pw = {v}",
]


def negative_templates(v: Values) -> list[tuple[str, str, str]]:
    """(kind, entity it may be confused with, text) of look-alikes that must survive."""
    r, s = v.rng, v.s
    sha, sha256, md5 = s(40, HEX), s(64, HEX), s(32, HEX)
    uuid = f"{s(8, HEX)}-{s(4, HEX)}-4{s(3, HEX)}-a{s(3, HEX)}-{s(12, HEX)}"
    ver = f"{r.randrange(1, 30)}.{r.randrange(0, 20)}.{r.randrange(0, 20)}.{r.randrange(0, 300)}"
    private = r.choice([f"192.168.{r.randrange(256)}.{r.randrange(1, 255)}", f"10.{r.randrange(256)}.0.1",
                        f"172.{r.randrange(16, 32)}.{r.randrange(256)}.1", "127.0.0.1", f"169.254.{r.randrange(256)}.3",
                        f"203.0.113.{r.randrange(1, 255)}", "::1", f"fe80::{r.randrange(1, 0xffff):x}",
                        f"2001:db8::{r.randrange(1, 0xffff):x}", "0.0.0.0", "255.255.255.0"])
    dns = r.choice(["8.8.8.8", "8.8.4.4", "1.1.1.1", "9.9.9.9", "208.67.222.222", "94.140.14.14", "149.112.112.112"])
    png = "iVBORw0KGgoAAAANSUhEUgAA" + s(r.randrange(60, 300), B64)
    return [
        ("git_sha", "KEY", f'commit = "{sha}"'), ("git_sha", "KEY", f"{{c}}Fixed upstream in {sha}"),
        ("git_sha", "KEY", f"    rev: {sha}"), ("git_sha", "KEY", f"git checkout {sha}"),
        ("git_sha", "KEY", f'  "resolved": "git+https://github.com/acme/widget.git#{sha}",'),
        ("sha256", "KEY", f'sha256 = "{sha256}"'), ("sha256", "KEY", f"requests==2.31.0 --hash=sha256:{sha256}"),
        ("sha256", "KEY", f'  "integrity": "sha512-{s(86, B64)}==",'), ("sha256", "KEY", f"checksum: {sha256}"),
        ("md5", "KEY", f'md5 = "{md5}"'), ("sha1", "KEY", f"{{c}}SHA1: {sha}"),
        ("uuid", "KEY", f'REQUEST_ID = "{uuid}"'), ("uuid", "KEY", f'  "id": "{uuid}",'),
        ("uuid", "KEY", f'[Guid("{uuid.upper()}")]'),
        ("version", "IP_ADDRESS", f'__version__ = "{ver}"'), ("version", "IP_ADDRESS", f"somepkg=={ver}"),
        ("version", "IP_ADDRESS", f'  "version": "{ver}",'), ("version", "IP_ADDRESS", f'#define LIB_VERSION "{ver}"'),
        ("version", "IP_ADDRESS", f'[assembly: AssemblyVersion("{ver}")]'),
        ("version", "IP_ADDRESS", f"Version: {ver}"),
        ("private_ip", "IP_ADDRESS", f'HOST = "{private}"'), ("private_ip", "IP_ADDRESS", f"bind {private}"),
        ("dns", "IP_ADDRESS", f"nameserver {dns}"), ("dns", "IP_ADDRESS", f'DNS_SERVERS = ["{dns}"]'),
        ("oid", "IP_ADDRESS", f'OID = "1.3.6.1.4.1.{r.randrange(100, 60000)}.2.1"'),
        ("date", "IP_ADDRESS", f'RELEASED = "{r.randrange(2000, 2025)}.{r.randrange(1, 13)}.{r.randrange(1, 29)}"'),
        ("example_email", "EMAIL", f'EMAIL = "{r.choice(v.FIRST)}@example.com"'),
        ("example_email", "EMAIL", f"{{c}}e.g. {r.choice(v.FIRST)}.{r.choice(v.LAST)}@example.org"),
        ("example_email", "EMAIL", f"from: noreply@{r.choice(['example.net', 'mail.example', 'site.test'])}"),
        ("base64_image", "KEY", f'ICON = "data:image/png;base64,{png}"'),
        ("base64_image", "KEY", f"  background: url(data:image/png;base64,{png});"),
        ("password_ref", "PASSWORD", 'password = os.environ["DB_PASSWORD"]'),
        ("password_ref", "PASSWORD", "password: ${DB_PASSWORD}"), ("password_ref", "PASSWORD", "password = None"),
        ("password_ref", "PASSWORD", '  "password": "<PASSWORD>",'),
        ("password_ref", "PASSWORD", '  "password": "{{ db_password }}",'),
        ("password_ref", "PASSWORD", 'password = getpass.getpass("Password: ")'),
        ("password_ref", "PASSWORD", "self.password = password"),
        ("password_ref", "PASSWORD", "PASSWORD_MIN_LENGTH = 12"),
        ("password_ref", "PASSWORD", 'password_reset_url = "/accounts/reset/"'),
        ("token_ref", "KEY", 'token = request.headers["Authorization"]'),
        ("token_ref", "KEY", "api_key: ${API_KEY}"), ("token_ref", "KEY", 'SECRET_KEY = os.getenv("SECRET_KEY")'),
        ("password_ref", "PASSWORD", "    password: str"),
        ("password_ref", "PASSWORD", "def login(user, password=None):"),
        ("password_ref", "PASSWORD", "    for password in passwords:"),
        ("prose", "PASSWORD", "{c}Ask the user for a password and/or a token."),
        ("password_ref", "PASSWORD", "r = requests.get(url, auth=(user, password))"),
        ("password_ref", "PASSWORD", "my $dbh = DBI->connect($dsn, $user, $pass);"),
        ("password_ref", "PASSWORD", 'sshpass -p "$DEPLOY_PASS" ssh build-host uptime'),
        ("password_ref", "PASSWORD", "return BasicAuth(username=username, password=password)"),
        ("password_ref", "PASSWORD", '#define PASSWORD_PROMPT "Password: "'),
        ("label", "PASSWORD", '#define LN_userPassword         "userPassword"'),
        ("label", "PASSWORD", '#define LN_kx_ecdhe_psk         "kx-ecdhe-psk"'),
        ("counter", "PASSWORD", "for (pass = 0; pass < passes; pass++) {"), ("verdict", "PASSWORD", "  pass: 120"),
        ("oid", "KEY", '#define OID_PRIVATE_KEY_USAGE_PERIOD "2.5.29.16"'),
        ("example_key", "KEY", "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"),
        ("flag", "PASSWORD", "gcc -pthread -pipe -o app app.c && pytest -p no:cacheprovider"),
        ("go_sum", "KEY", "github.com/pkg/errors v0.9.1 h1:oIff9PgWEEDnDTdIh9R4YhX3HX9uZIi/MB7XJ+8/1tc="),
        ("shell_default", "PASSWORD", "      POSTGRES_PASSWORD: ${DB_PASSWORD:-postgres}"),
        ("signature", "PASSWORD", "pub fn login(user: &str, password: &str) -> Result<Token> {"),
        ("yaml_alias", "PASSWORD", "  password: *default_password"),
        ("user_agent", "IP_ADDRESS", 'UA = "Mozilla/5.0 Chrome/120.0.0.0 Safari/537.36"'),
        ("placeholder", "KEY", "STRIPE_KEY=sk_live_xxxxxxxxxxxxxxxxxxxxxxxx"),
        ("placeholder", "PASSWORD", "mysql -u root -p'YOUR_PASSWORD_HERE' app"),
        ("public_token", "KEY",
         "mapboxgl.accessToken = 'pk.eyJ1IjoiYWNtZSIsImEiOiJjbGJ4eDF6ZjAwMDFvM3BvN2Q5a3Y4dGJ4In0.Qk7bU3fE9xZ1mR2n'"),
        ("test_vector", "KEY", f'    expected = "{sha256}"'), ("test_vector", "KEY", f"data = bytes.fromhex('{md5}')"),
        ("encoded_text", "KEY", f'ENCODED = "{base64.b64encode(b"The quick brown fox jumps over it").decode()}"'),
        ("alphabet", "KEY", 'ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"'),
        ("identifier", "KEY", 'handler = "test_parse_rfc2822_date_with_timezone_offset"'),
        ("camel_case", "KEY", 'NAME = "ThisIsAVeryLongConfigurationFlagName"'),
    ]


# -- planting ----------------------------------------------------------------------------------------------
def host_files(count: int, rng: random.Random, per_root: int = 3000) -> list[Path]:
    """Real UTF-8 text files of many kinds from this machine (up to `per_root` from each root, walked in
    sorted order), in a seeded random order."""
    found: list[Path] = []
    for root in ROOTS:
        taken = 0
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__", ".git"))
            for name in sorted(files):
                path = Path(folder, name)
                if path.suffix in EXTENSIONS and taken < per_root:
                    try:
                        if path.is_file() and 200 < path.stat().st_size < MAX_FILE_BYTES:
                            found.append(path)
                            taken += 1
                    except OSError:
                        continue
            if taken >= per_root:
                break
    rng.shuffle(found)
    out = []
    for path in found:
        try:
            data = path.read_bytes()
            data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if b"\0" not in data:
            out.append(path)
        if len(out) == count:
            break
    return out


def plant(path: Path, rng: random.Random, snippets: list[tuple[str, str | None, str, list[str]]]) -> Case:
    """Insert each snippet (kind, entity, text with values, values) at a random line of the file."""
    text = path.read_text(encoding="utf-8")
    comment = EXTENSIONS.get(path.suffix, "#")
    lines = text.split("\n")
    positions = sorted(rng.randrange(len(lines) + 1) for _ in snippets)
    inserted: list[tuple[int, tuple]] = []
    for offset, (pos, snippet) in enumerate(zip(positions, snippets, strict=True)):
        kind, entity, template, values = snippet
        prefix = f"{comment} " if comment else ""
        body = template.replace("{c}", prefix)
        lines.insert(pos + offset, body)
        inserted.append((pos + offset, (kind, entity, body, values)))
    case = Case(path=str(path), text="\n".join(lines))
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    for index, (kind, entity, body, values) in inserted:
        base = starts[index]
        case.regions.append((base, base + len(body)))
        for value in values:
            at = body.find(value)
            case.planted.append(Planted(base + at, base + at + len(value), entity, kind, value))
        if not values:
            case.planted.append(Planted(base, base + len(body), None, kind, body))
    return case


def positive_snippet(v: Values, entity: str) -> tuple[str, str, str, list[str]]:
    r = v.rng
    if entity == "EMAIL":
        value = v.email()
        roll = r.random()
        if roll < 0.1:  # obfuscated
            user, domain = value.split("@")
            value = f"{user} [at] {domain.replace('.', ' [dot] ')}"
        elif roll < 0.15:  # URL-encoded in a query string
            value = value.replace("@", "%40")
            return "email_encoded", entity, f"https://lists.acme-corp.com/unsubscribe?email={value}&list=dev", [value]
        return "email", entity, r.choice(EMAIL_TEMPLATES).format(v=value, c="{c}"), [value]
    if entity == "IP_ADDRESS":
        if r.random() < 0.2:
            return "ipv6", entity, r.choice(IPV6_TEMPLATES).format(v=(value := v.public_ipv6()), c="{c}"), [value]
        return "ipv4", entity, r.choice(IP_TEMPLATES).format(v=(value := v.public_ipv4()), c="{c}"), [value]
    if entity == "PASSWORD":
        return "password", entity, r.choice(PASSWORD_TEMPLATES).format(v=(value := v.password()), c="{c}"), [value]
    if r.random() < 0.12:
        kind = r.choice(PEM_KINDS)
        escaped = r.random() < 0.3
        value = v.pem(kind, escaped)
        text = f'  "private_key": "{value}",' if escaped else value
        return "private_key", entity, text, [value]
    kind, make = r.choice(list(v.keys().items()))
    value = make()
    template = "{c}old credentials, rotate: {v}" if r.random() < 0.25 and "secret" not in kind else \
        r.choice(KEY_TEMPLATES[kind])
    return kind, entity, template.format(v=value, c="{c}"), [value]


def make_cases(positives: int = 320, negatives: int = 320, seed: int = 0) -> list[Case]:
    """`positives` files with 1-3 planted PII lines each, then `negatives` files with 1-3 look-alikes."""
    rng = random.Random(seed)
    values = Values(rng)
    hosts = host_files(positives + negatives, rng)
    cases = []
    for i, path in enumerate(hosts):
        n = rng.randrange(1, 4)
        if i < positives:
            snippets = [positive_snippet(values, ENTITIES[(i + k) % 4]) for k in range(n)]
        else:
            snippets = [(kind, None, text, []) for kind, _, text in rng.sample(negative_templates(values), n)]
        cases.append(plant(path, rng, snippets))
    return cases


# -- scoring -----------------------------------------------------------------------------------------------
def evaluate(cases: list[Case], detections: list[list[tuple[int, int, str]]], redacted: list[str]) -> dict:
    """Per entity: recall on planted values (a span of that entity covers it), precision of detections on
    planted lines, leaks (a planted value still in the redacted text), background detections elsewhere."""
    planted, found, tp, fp, background = Counter(), Counter(), Counter(), Counter(), Counter()
    leaks, misses, false_positives = [], [], []
    for case, spans, out in zip(cases, detections, redacted, strict=True):
        positives = [p for p in case.planted if p.entity]
        for p in positives:
            planted[p.entity] += 1
            if any(s <= p.start and p.end <= e and ent == p.entity for s, e, ent in spans):
                found[p.entity] += 1
            else:
                misses.append((p.kind, case.text[p.start - 60 if p.start > 60 else 0: p.end + 20]))
            if p.value in out:
                leaks.append(p.kind)
        for s, e, ent in spans:
            if not any(s < re_ and rs < e for rs, re_ in case.regions):
                background[ent] += 1
            elif any(s < p.end and p.start < e for p in positives):
                tp[ent] += 1
            else:
                fp[ent] += 1
                line_start = case.text.rfind("\n", 0, s) + 1
                false_positives.append((ent, case.text[line_start:e + 20][:160]))
    table = {}
    for entity in ENTITIES:
        detected = tp[entity] + fp[entity]
        table[entity] = {"planted": planted[entity], "detections": detected, "background": background[entity],
                         "recall": found[entity] / planted[entity] if planted[entity] else 1.0,
                         "precision": tp[entity] / detected if detected else 1.0}
    detected = sum(tp.values()) + sum(fp.values())
    return {"entities": table, "precision": sum(tp.values()) / detected if detected else 1.0, "leaks": leaks,
            "misses": misses, "false_positives": false_positives,
            "negative_controls": sum(1 for c in cases for p in c.planted if p.entity is None)}


def run(cases: list[Case], mode: str = "placeholder") -> dict:
    """Detect and redact with the real stage's detector; score."""
    from stages.pii import FakeValues, redact
    from stages.pii_engine import PiiDetector

    detector = PiiDetector(list(ENTITIES))
    detections = []
    for i in range(0, len(cases), 256):
        detections += detector.detect_batch([c.text for c in cases[i:i + 256]])
    redacted = [redact(c.text, spans, FakeValues(c.path) if mode == "fake" else None)
                for c, spans in zip(cases, detections, strict=True)]
    return evaluate(cases, detections, redacted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--positives", type=int, default=400)
    parser.add_argument("--negatives", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--misses", action="store_true", help="print missed values and false positives")
    args = parser.parse_args()
    cases = make_cases(args.positives, args.negatives, args.seed)
    result = run(cases)
    print(f"{len(cases)} files ({args.positives} with planted PII, {result['negative_controls']} negative controls)")
    print("| entity | planted | recall | detections on planted lines | precision | background detections |")
    print("|---|---|---|---|---|---|")
    for entity, row in result["entities"].items():
        print(f"| {entity} | {row['planted']} | {row['recall']:.3f} | {row['detections']} | {row['precision']:.3f} "
              f"| {row['background']} |")
    print(f"overall precision {result['precision']:.3f}; planted values left after redaction: {len(result['leaks'])}")
    if args.misses:
        for kind, context in result["misses"]:
            print("MISS", kind, repr(context))
        for entity, value in result["false_positives"]:
            print("FP", entity, repr(value))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
