"""The `pii` stage: the issue's thresholds on the labelled set, offline operation, end to end through the CLI."""

import ipaddress
import json
import socket
import sys
from pathlib import Path

import pytest
import spacy
from conftest import REPO, read_dir, run_cli, write_config, write_parquet
from datatrove.data import Document

from stages.pii import Pii, PiiOptions
from stages.pii_presidio import Pattern, PatternRecognizer

sys.path.insert(0, str(REPO / "bench"))
import make_pii_eval as evalset  # noqa: E402


def _stage(**options) -> Pii:
    stage = Pii("pii", PiiOptions(**options))
    stage.setup(0, 1)
    return stage


def _doc(text: str, blob: str = "b1", **meta) -> Document:
    return Document(text=text, id=blob, metadata={"blob_id": blob, **meta})


@pytest.fixture(scope="module")
def stage() -> Pii:
    return _stage()


def test_labelled_set_meets_the_issue_thresholds():
    cases = evalset.make_cases(positives=320, negatives=320, seed=0)
    result = evalset.run(cases)
    table = result["entities"]
    assert len(cases) == 640 and result["negative_controls"] >= 300
    assert all(table[e]["planted"] >= 100 for e in evalset.ENTITIES)
    for entity in ("KEY", "EMAIL", "IP_ADDRESS"):
        assert table[entity]["recall"] >= 0.98, (entity, result["misses"][:5])
    assert table["PASSWORD"]["recall"] >= 0.9, result["misses"][:5]
    assert result["precision"] >= 0.95, result["false_positives"][:5]
    assert result["leaks"] == []


def test_negative_controls_are_left_alone(stage):
    text = "\n".join(text.replace("{c}", "# ") for _, _, text in evalset.negative_templates(
        evalset.Values(__import__("random").Random(3))))
    doc = _doc(text)
    assert stage.filter_batch([doc]) == [True]
    assert doc.text == text and doc.metadata["pii_redactions"] == 0


def test_placeholders_and_counts(stage):
    text = ('maintainer = "Ada Roe <ada.roe@gmail.com>"\nHOST = "93.184.216.34"  # also 8.8.8.8 and 10.0.0.1\n'
            'token = "ghp_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bD1fH3jL5"\ndb_password = "Tr0ub4dor&3"\n'
            '__version__ = "1.2.3.4"\nreply to ada.roe@gmail.com\n')
    doc = _doc(text)
    assert stage.filter_batch([doc]) == [True]
    assert doc.text == ('maintainer = "Ada Roe <<EMAIL>>"\nHOST = "<IP_ADDRESS>"  # also 8.8.8.8 and 10.0.0.1\n'
                        'token = "<KEY>"\ndb_password = "<PASSWORD>"\n__version__ = "1.2.3.4"\nreply to <EMAIL>\n')
    assert doc.metadata["pii_redactions"] == 5


def test_fake_mode_is_valid_consistent_and_seeded_by_blob():
    stage = _stage(mode="fake")
    text = ('a = "ada@gmail.com"\nb = "ada@gmail.com"\nc = "bob@yahoo.com"\nip = "93.184.216.34"\n'
            'k = "AKIAQ7XW2RTY5UIO3PLM"\n')

    def run(blob):
        doc = _doc(text, blob)
        stage.filter_batch([doc])
        return doc.text.splitlines()

    lines = run("blob-1")
    first, second, third = (line.split('"')[1] for line in lines[:3])
    assert first == second != third and first.endswith("@example.com") and third.endswith("@example.com")
    assert ipaddress.ip_address(lines[3].split('"')[1]).is_private
    assert len(lines[4].split('"')[1]) == 32
    assert run("blob-1") == lines and run("blob-2") != lines


def test_runs_with_the_network_blocked(tmp_path, monkeypatch):
    """Setup builds and saves spacy.blank("en") and loads presidio and tldextract with no socket at all."""
    from stages import pii_recognizers

    def blocked(*args, **kwargs):
        raise OSError("network access blocked by the test")

    monkeypatch.setenv("CODECURATE_CACHE", str(tmp_path / "cache"))
    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, blocked)
    pii_recognizers.offline_tldextract.cache_clear()
    try:
        stage = _stage()
        doc = _doc("contact = 'jane.doe@company.co.uk'  # server 93.184.216.34\n")
        assert stage.filter_batch([doc]) == [True]
        assert doc.text == "contact = '<EMAIL>'  # server <IP_ADDRESS>\n"
        assert list((tmp_path / "cache").glob("spacy-blank-en-*/config.cfg"))
    finally:
        pii_recognizers.offline_tldextract.cache_clear()


def test_name_with_a_user_supplied_ner_pipeline(tmp_path):
    """NAME is presidio's SpacyRecognizer over the user's spaCy pipeline (here a real entity_ruler)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": "Ada Lovelace"}])
    nlp.to_disk(tmp_path / "ner")
    stage = _stage(entities=["NAME", "EMAIL"], ner_model=str(tmp_path / "ner"))
    doc = _doc("# Author: Ada Lovelace <ada@gmail.com>\nx = 1\n")
    stage.filter_batch([doc])
    assert doc.text == "# Author: <NAME> <<EMAIL>>\nx = 1\n"
    assert stage.details["NAME"] == 1 and stage.details["EMAIL"] == 1


class EmployeeIdRecognizer(PatternRecognizer):
    """A user's own presidio recognizer, added through the `recognizers` option."""

    def __init__(self):
        super().__init__(supported_entity="EMPLOYEE_ID", patterns=[Pattern("emp", r"\bEMP-\d{6}\b", 0.9)])


def test_user_recognizers_join_the_registry():
    stage = _stage(recognizers=["test_pii:EmployeeIdRecognizer"])
    doc = _doc('owner = "EMP-123456"  # ada@gmail.com\n')
    stage.filter_batch([doc])
    assert doc.text == 'owner = "<EMPLOYEE_ID>"  # <EMAIL>\n' and stage.details["EMPLOYEE_ID"] == 1


def test_sft_messages_are_redacted_turn_by_turn(stage):
    turns = [{"role": "user", "content": "my key is AKIAQ7XW2RTY5UIO3PLM"}, {"role": "assistant", "content": "ok"}]
    stage_messages = _stage(text_field="messages")
    doc = _doc("", messages=turns)
    stage_messages.filter_batch([doc])
    assert doc.metadata["messages"] == [{"role": "user", "content": "my key is <KEY>"},
                                        {"role": "assistant", "content": "ok"}]


def _planted_corpus(tmp_path: Path, positives: int, negatives: int, seed: int) -> tuple[Path, list]:
    cases = evalset.make_cases(positives, negatives, seed=seed)
    rows = [{"repo_name": f"planted/repo{i % 7}", "path": f"src/file{i}{Path(c.path).suffix}", "content": c.text}
            for i, c in enumerate(cases)]
    write_parquet(tmp_path / "in" / "planted.parquet", rows, row_group_size=40)
    return tmp_path / "in", cases


def test_pipeline_run_leaves_no_planted_secret(tmp_path):
    inputs, cases = _planted_corpus(tmp_path, positives=90, negatives=40, seed=11)
    cfg = write_config(tmp_path / "c.yaml", [{"pii": {}}], [str(inputs)])
    result = run_cli("run", str(cfg))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert run_cli("verify", str(out)).returncode == 0
    data = read_dir(out / "data")
    assert data.num_rows == len(cases)
    text = "\n".join(data["content"].to_pylist())
    secrets = [p.value for c in cases for p in c.planted if p.entity]
    controls = [p.value for c in cases for p in c.planted if p.entity is None]
    assert secrets and [s for s in secrets if s in text] == []
    assert controls and [c for c in controls if c not in text] == []
    stats = json.loads((out / "stats.json").read_text())
    pii = next(s for s in stats["stages"] if s["name"] == "pii")
    assert sum(data["pii_redactions"].to_pylist()) == sum(pii["details"][e] for e in evalset.ENTITIES
                                                          if e in pii["details"])
    assert all(pii["details"].get(e, 0) >= 20 for e in evalset.ENTITIES)
    written = [p.read_text(errors="replace") for p in [out / "stats.json", out / "manifest.json", out / "data_card.md",
                                                         *(out / "logs").rglob("*")] if p.is_file()]
    assert not [s for s in secrets if any(s in w for w in written)]


def test_drop_action_moves_records_with_their_entities(tmp_path):
    rows = [{"repo_name": "o/keys", "path": "deploy/id_rsa.pem", "content": evalset.Values(
                __import__("random").Random(1)).pem("RSA PRIVATE KEY") + "\n"},
            {"repo_name": "o/app", "path": "settings.py",
             "content": 'ADMIN = "ada.roe@gmail.com"\nDB_PASSWORD = "x9Y!zz88q"\n'},
            {"repo_name": "o/app", "path": "util.py", "content": "def add(a, b):\n    return a + b\n"}]
    write_parquet(tmp_path / "in" / "a.parquet", rows)
    cfg = write_config(tmp_path / "c.yaml", [{"pii": {"action": "drop"}}], [str(tmp_path / "in")])
    result = run_cli("run", str(cfg))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert run_cli("verify", str(out)).returncode == 0
    removed = read_dir(out / "removed" / "pii").to_pylist()
    reasons = {r["path"]: r["removal_reason"] for r in removed}
    assert reasons == {"deploy/id_rsa.pem": "pii:KEY", "settings.py": "pii:EMAIL,PASSWORD"}
    assert {r["path"]: r["content"] for r in removed}["settings.py"] == rows[1]["content"]  # the audit trail is raw
    kept = read_dir(out / "data").to_pylist()
    assert [(r["path"], r["pii_redactions"], r["content"]) for r in kept] == [("util.py", 0, rows[2]["content"])]


def test_name_without_ner_model_is_a_config_error(tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", [{"repo_name": "o/r", "path": "a.py", "content": "x = 1\n"}])
    cfg = write_config(tmp_path / "c.yaml", [{"pii": {"entities": ["EMAIL", "NAME"]}}], [str(tmp_path / "in")])
    result = run_cli("run", str(cfg))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "stages[0].pii" in line and "ner_model" in line


def test_base64_encoded_credentials(stage):
    """Docker's `auths` hold base64("user:password"); a Kubernetes Secret's `data:` holds base64 values.
    A ConfigMap's data and a Docker auth that does not decode to `user:password` stay."""
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    auth = b64("deploy:Fy1NoKGFqqaICf")
    docker = '{\n  "auths": {\n    "registry.acme-corp.com": {\n      "auth": "' + auth + '"\n    }\n  }\n}\n'
    secret = ("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\ndata:\n"
              f"  username: {b64('admin')}\n  password: {b64('lQ1ZlZCqDPf6aDzE')}\n")
    config_map = secret.replace("kind: Secret", "kind: ConfigMap")
    not_auth = '{"auth": "' + b64("no colon in here at all") + '"}\n'
    docs = [_doc(docker, "b1"), _doc(secret, "b2"), _doc(config_map, "b3"), _doc(not_auth, "b4")]
    assert stage.filter_batch(docs) == [True] * 4
    assert auth not in docs[0].text and '"auth": "<KEY>"' in docs[0].text
    assert b64("lQ1ZlZCqDPf6aDzE") not in docs[1].text and b64("admin") not in docs[1].text
    assert docs[2].text == config_map and docs[3].text == not_auth


def test_config_line_pass_wifi_psk_qualified_pw_and_url_encoded_emails(stage):
    """`pass` alone is a password key on a config line with a mixed value (INI, YAML, .env), `psk` is one
    as the last word of a name, `pw` after a qualifier (`ldap_bind_pw`); `%40` is an encoded `@`.
    Counters, verdicts, Python's statement and OpenSSL's `LN_kx_psk "kx-psk"` labels stay."""
    secrets = {"[smtp]\nuser = mailer\npass = Sup3rS3cret\n": "Sup3rS3cret",
               "network={\n    ssid=\"home\"\n    psk=\"correcthorse99\"\n}\n": "correcthorse99",
               "wifi_psk: \"letmein99\"\n": "letmein99", "ldap_bind_pw = Secr3t99\n": "Secr3t99",
               "next = '/login?email=jane.roe%40acme-corp.com&x=1'\n": "jane.roe%40acme-corp.com"}
    kept = ["for (pass = 0; pass < 2; pass++) {\n", "pass = 1000\n", "tests:\n  pass: 120\n  fail: 3\n",
            "pass: passed\n", "ok: 10\npass: 100%\n", "    pass\n", "psk_identity = \"client1\"\n",
            "pw = 'Secr3t99'\n", '#define LN_kx_ecdhe_psk         "kx-ecdhe-psk"\n', "s = 'a%40b'\n"]
    docs = [_doc(text, f"s{i}") for i, text in enumerate(secrets)] + [_doc(t, f"k{i}") for i, t in enumerate(kept)]
    assert stage.filter_batch(docs) == [True] * len(docs)
    for doc, secret in zip(docs, secrets.values(), strict=False):
        assert secret not in doc.text and doc.metadata["pii_redactions"] == 1, doc.text
    assert [doc.text for doc in docs[len(secrets):]] == kept


def test_fields_commands_and_calls_a_third_probe_round_found(stage):
    """Secrets whose name is in another field (Kubernetes/ECS env, Postman, ARM, `<property name=..>`,
    plists), Android/Maven signing settings, commands (sqlcmd, openssl, sudo -S), calls (JavaMail,
    NetworkCredential), Discord webhooks, WordPress salts, long AWS session tokens, `&#64;` emails; and
    the public keys, version tags, environment lookups and placeholders that must stay."""
    session = "IQoJb3JpZ2luX2VjE" + "Hk3Lq9Zp2Xw7Rt5Vb1Nm8Yc4Ds6Fg0Ja" * 12
    secrets = {
        '- name: DB_PASSWORD\n  value: "5fn1.LazECi^dm"\n': "5fn1.LazECi^dm",
        '{"name": "DB_PASSWORD", "value": "xhujq0W9z_u7"}\n': "xhujq0W9z_u7",
        '{"key": "password", "value": "us6+f2mFMn?%%GEf", "enabled": true}\n': "us6+f2mFMn?%%GEf",
        '"adminPassword": {"value": "nr6iT6K+dU?F4?"}\n': "nr6iT6K+dU?F4?",
        '<property name="hibernate.connection.password">1g5U=5IcnK2n</property>\n': "1g5U=5IcnK2n",
        "<key>API_KEY</key>\n<string>FrhhvGhvOQHLmtn6To8huPb9vUKqZctL</string>\n": "FrhhvGhvOQHLmtn6To8huPb9vUKqZctL",
        "<keystore.password>n.lUhJL4W8lZIs</keystore.password>\n": "n.lUhJL4W8lZIs",
        "RELEASE_STORE_PASSWORD=r1O-u0jaSH~ZrLs9Y\n": "r1O-u0jaSH~ZrLs9Y",
        '        keyPassword "2UrNehSf9J8XD8zq"\n': "2UrNehSf9J8XD8zq",
        "ansible_become_pass: kKFlgLruvxx42vws\n": "kKFlgLruvxx42vws",
        "auth: { user: 'mailer', pass: 'LQsPj=EE3ja8Ga*' },\n": "LQsPj=EE3ja8Ga*",
        "sqlcmd -S db01 -U sa -P 'BNM0B.D-?Bcn' -Q \"SELECT 1\"\n": "BNM0B.D-?Bcn",
        "echo '9tDlB4pC.r2I' | sudo -S apt-get update\n": "9tDlB4pC.r2I",
        'c = new NetworkCredential("orders@contoso-retail.com", "d*3ElTnDn35LP");\n': "d*3ElTnDn35LP",
        'W = "https://discord.com/api/webhooks/9109754690636752645/7v64tIZFxcMij1zTbpYeTVJBpY3y4xEWtqoJNTGs0hF4srKd'
        'UZlZEnbR0t-4F-5zMoFT"\n': "7v64tIZFxcMij1zTbpYeTVJBpY3y4xEWtqoJNTGs0hF4srKdUZlZEnbR0t-4F-5zMoFT",
        "define('NONCE_SALT', '4C(P69TN<9N!96,[2Dg^eLf6FL[Og]UGZ-U]H0[Qsb78;E{r63HRdBaF]>G:5{Jz');\n":
            "4C(P69TN<9N!96,[2Dg^eLf6FL[Og]UGZ-U]H0[Qsb78;E{r63HRdBaF]>G:5{Jz",
        f"aws_session_token = {session}\n": session[-40:],
        "<p>Email: jan.kowalski&#64;firma.pl</p>\n": "jan.kowalski&#64;firma.pl",
    }
    kept = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl builder@build-01\n",
            "[Peer]\nPublicKey = jS6vDRmlol2SHnerduu+S7PgVpFKJsk6QcOK7tlaAuI=\n",
            "<version>1.70.0.1</version>\n", '\tPassword: os.Getenv("DB_PASSWORD"),\n',
            'password: ENV.fetch("DATABASE_PASSWORD") { "" },\n',
            "self.password_digest = BCrypt::Password.create(new_password)\n",
            "$SecurePassword = ConvertTo-SecureString $Password -AsPlainText -Force\n",
            "define( 'DB_PASSWORD', 'password_here' );\n",
            '{"db_password": "ENC[AES256_GCM,data:q1w2E3r4T5y6,iv:Zx8Cv7Bn6Mm5=,type:str]"}\n',
            'KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")\n',
            'const stripe = Stripe("pk_test_TYooMQauvdEDq54NiTphI7jx");\n',
            "our_role: If you're implementing a client, pass :data:`h11.CLIENT`.\n", "$pass = '-anonymous@'\n"]
    docs = [_doc(text, f"s{i}") for i, text in enumerate(secrets)] + [_doc(t, f"k{i}") for i, t in enumerate(kept)]
    assert stage.filter_batch(docs) == [True] * len(docs)
    for doc, secret in zip(docs, secrets.values(), strict=False):
        assert secret not in doc.text and doc.metadata["pii_redactions"] >= 1, doc.text
    assert [doc.text for doc in docs[len(secrets):]] == kept
