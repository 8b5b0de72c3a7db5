"""Each detector: what it must replace, near-misses and decoys it must leave alone."""

from __future__ import annotations

import pytest

from sidecar.redact import RedactionSettings, Redactor
from sidecar.redact.tokens import TOKEN_PATTERN

SECRET = b"detector-tests-secret-0123456789"
REDACTOR = Redactor(RedactionSettings(), SECRET)

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM_BODY = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\nVTLw7onLRnrq0\n-----END RSA PRIVATE KEY-----"
GITHUB = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
GOOGLE = "AIzaSyA-1234567890abcdefghijklmnopqrstu"
NPM = "npm_abcdefghijklmnopqrstuvwxyz0123456789"

HITS = [
    # (text, raw value that must disappear, TYPE)
    ("user=Alice.Smith@Example.COM ok", "Alice.Smith@Example.COM", "EMAIL"),
    ("GET /search?email=jane.doe%40example.org&page=1", "jane.doe%40example.org", "EMAIL"),
    ("pan=4111 1111 1111 1111 exp=12/27", "4111 1111 1111 1111", "CARD"),
    ("pan=4111-1111-1111-1111", "4111-1111-1111-1111", "CARD"),
    ('{"n": 4111111111111111}', "4111111111111111", "CARD"),
    ("amex 3782 822463 10005 ok", "3782 822463 10005", "CARD"),
    ("ref 12345 5500 0000 0000 0004 ok", "5500 0000 0000 0004", "CARD"),
    ("from DE89 3704 0044 0532 0130 00 EUR", "DE89 3704 0044 0532 0130 00", "IBAN"),
    ("iban=GB29NWBK60161331926819;", "GB29NWBK60161331926819", "IBAN"),
    ("ssn 123-45-6789 on file", "123-45-6789", "SSN"),
    ("ssn=123456789", "123456789", "SSN"),
    ("nino=AB123456C", "AB123456C", "UK_NINO"),
    ("NI number AB 12 34 56 C", "AB 12 34 56 C", "UK_NINO"),
    ("CPF 529.982.247-25 ok", "529.982.247-25", "BR_CPF"),
    ("DNI 12345678Z ok", "12345678Z", "ES_NIF"),
    ("NIE X1234567L ok", "X1234567L", "ES_NIF"),
    ("tax_id=12-3456789", "12-3456789", "NATIONAL_ID"),
    ("passport_no: X1234567", "X1234567", "NATIONAL_ID"),
    ("call +44 20 7946 0958 now", "+44 20 7946 0958", "PHONE"),
    ("call +1-415-555-0100", "+1-415-555-0100", "PHONE"),
    ("call (415) 555-0100 now", "(415) 555-0100", "PHONE"),
    ("call 415.555.0100 now", "415.555.0100", "PHONE"),
    ("call 020 7946 0958 now", "020 7946 0958", "PHONE"),
    ("msisdn=447700900123", "447700900123", "PHONE"),
    ("dob=1985-03-12", "1985-03-12", "DOB"),
    ("client=203.0.113.7 ok", "203.0.113.7", "IPV4"),
    ("from 2001:db8::1 ok", "2001:db8::1", "IPV6"),
    ("from fe80::1ff:fe23:4567:890a ok", "fe80::1ff:fe23:4567:890a", "IPV6"),
    ("mapped ::ffff:192.0.2.1 ok", "::ffff:192.0.2.1", "IPV6"),
    (f"token {JWT} issued", JWT, "JWT"),
    ("Authorization: Bearer abc123.def-456_ghi", "abc123.def-456_ghi", "AUTH"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA==", "AUTH"),
    ('headers {"Authorization": "Bearer opaque-77"}', "opaque-77", "AUTH"),
    ("key AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE", "AWS_KEY"),
    (
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_SECRET",
    ),
    (f"t {GITHUB} x", GITHUB, "GITHUB_TOKEN"),
    ("t glpat-abcdefghij1234567890 x", "glpat-abcdefghij1234567890", "GITLAB_TOKEN"),
    ("t xoxb-123456789012-abcdefghij x", "xoxb-123456789012-abcdefghij", "SLACK_TOKEN"),
    ("k sk_live_4eC39HqLyjWDarjtT1zdp7dc x", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "STRIPE_KEY"),
    (f"k {GOOGLE} x", GOOGLE, "GOOGLE_API_KEY"),
    (f"k {NPM} x", NPM, "NPM_TOKEN"),
    (f"loaded {PEM} done", PEM_BODY, "PRIVATE_KEY"),
    ("partial -----BEGIN PRIVATE KEY----- MIIEvQIBADANBg", "MIIEvQIBADANBg", "PRIVATE_KEY"),
    ("url=postgres://svc:Pa55word@db:5432/ledger", "svc:Pa55word", "URL_CREDENTIALS"),
    ("url=redis://:s3cret@cache:6379", "s3cret", "URL_CREDENTIALS"),
    ("login password=hunter2 ok", "hunter2", "SECRET"),
    ("login pwd='hunter 2' ok", "hunter 2", "SECRET"),
    ('cfg "client_secret": "c-s3cr3t" loaded', "c-s3cr3t", "SECRET"),
    ("cfg apiKey: abc123XYZ", "abc123XYZ", "SECRET"),
    ("GET /cb?code=1&access_token=ya29.a0AfH6&state=x", "ya29.a0AfH6", "SECRET"),
    ("soap <password>hunter2</password>", "hunter2", "SECRET"),
    ('payload "{\\"token\\":\\"abc-123\\"}"', "abc-123", "SECRET"),
    ("User{name=bob, password=s3cr3t}", "s3cr3t", "SECRET"),
    ("mysql -u root --password Sne3sd8AZjq", "Sne3sd8AZjq", "SECRET"),
    ("ALTER USER 'app' IDENTIFIED BY 'SqLpa5sW0rD';", "SqLpa5sW0rD", "SECRET"),
    ("ID:master,PW:dipPr10Gg!", "dipPr10Gg!", "SECRET"),
    ("redirect=a%3Ftoken%3Dh1d3Me4ch534d801%26v", "h1d3Me4ch534d801", "SECRET"),
    ("balance inquiry account 12345678 ok", "12345678", "ACCOUNT"),
    ("acct_no=0012345678", "0012345678", "ACCOUNT"),
    ("Account No. 1234-5678-90 closed", "1234-5678-90", "ACCOUNT"),
    ("routing number 021000021", "021000021", "ACCOUNT"),
]


@pytest.mark.parametrize(("text", "raw", "type_"), HITS)
def test_detector_replaces_value(text, raw, type_):
    out, counts = REDACTOR.redact_text(text)
    assert raw not in out
    assert counts[type_] >= 1
    assert type_ in {match.group(1) for match in TOKEN_PATTERN.finditer(out)}


DECOYS = [
    "order ORD-2026-0001234 request 550e8400-e29b-41d4-a716-446655440000",
    "at 2026-11-24T03:12:00.123Z and 2026-11-24 03:12:00,123 and 24/Nov/2026:03:12:00 +0000",
    "sha 3f786850e387550fdab836ed7e6dc881de23001b trace 4111111111111111abcdef0123456789",
    "epoch 1732417920123 nanos 1732417920123456789 txn TXN51234567890123",
    "not a card 4111111111111112 nor 4111 1111 1111 1112 nor 0000 0000 0000 0000",
    "android 03-17 16:14:22.502 28601 28601 V AudioManager",
    "hdfs blk_-6952295868487656571 and blk_3587508140051953248",
    "versions v2.14.3, 1.8.0_292 and 10.0.19041 and oid 1.3.6.1.4.1",
    "bad iban XX89370400440532013000 and DE8937040044053201300",
    "bad ssn 000-12-3456 666-12-3456 900-12-3456 and date 2024-11-24",
    "bad nino QQ123456C, bad cpf 529.982.247-24, bad nif 12345678A",
    "tz +0100, amount +1500.00, no phone 123-456-7890, run 3726 0275 3425 375",
    "time 03:12:00, mac 00:1a:2b:3c:4d:5e, c++ std::vector, not ip 1.2.3.4.5 or 999.1.1.1",
    "user@localhost and logback@3.2.1 and a@b.c",
    "Bearer token missing; Basic authentication failed; token expired",
    "token_type=bearer password_expiry_days=90 tokens=5 bypass=true",
    "password=*** password=null secret=[FILTERED]",
    "account locked after 3 attempts, account ending 1234, passport_no=pending",
    "https://example.com:8443/path and jdbc:postgresql://db:5432/ledger",
    "short AKIA123 and sk_live_short and eyJhbGc",
]


@pytest.mark.parametrize("text", DECOYS)
def test_decoys_survive(text):
    out, counts = REDACTOR.redact_text(text)
    assert out == text
    assert not counts


def test_iban_failing_mod97_is_not_an_iban():
    _, counts = REDACTOR.redact_text("iban DE89 3704 0044 0532 0130 01 ok")
    assert "IBAN" not in counts


def test_formatting_variants_share_a_token():
    def token_of(text: str) -> str:
        return TOKEN_PATTERN.search(REDACTOR.redact_text(text)[0]).group(0)

    assert token_of("a 4111 1111 1111 1111 b") == token_of("a 4111-1111-1111-1111 b")
    assert token_of("x Bob@Example.com y") == token_of("x bob@example.com y")
    assert token_of("x bob%40example.com y") == token_of("x bob@example.com y")
    assert token_of("x DE89 3704 0044 0532 0130 00 y") == token_of("x DE89370400440532013000 y")
    phone = token_of("x +1 415 555 0100 y")
    assert token_of("x (415) 555-0100 y") == phone
    assert token_of("phone=4155550100") == phone
    assert token_of("x 2001:DB8:0:0::1 y") == token_of("x 2001:db8::1 y")


def test_ip_mode_keep_leaves_addresses():
    redactor = Redactor(RedactionSettings(ip_mode="keep"), SECRET)
    text = "client 203.0.113.7 and 2001:db8::1 user=a@example.com"
    out, counts = redactor.redact_text(text)
    assert "203.0.113.7" in out and "2001:db8::1" in out
    assert set(counts) == {"EMAIL"}


def test_switched_off_detector_leaves_its_type():
    from sidecar.redact import DetectorSwitches

    redactor = Redactor(RedactionSettings(detectors=DetectorSwitches(email=False)), SECRET)
    out, counts = redactor.redact_text("a@example.com 4111111111111111")
    assert out.startswith("a@example.com ")
    assert set(counts) == {"CARD"}


def test_custom_detectors_whole_match_and_group():
    from sidecar.redact import CustomDetector

    settings = RedactionSettings(
        custom=(
            CustomDetector(type="CUSTOMER_ID", pattern=r"CUST-\d{8}"),
            CustomDetector(type="BRANCH", pattern=r"branch=(\d{4})"),
        )
    )
    out, counts = Redactor(settings, SECRET).redact_text("CUST-12345678 at branch=0042 ok")
    assert "12345678" not in out and "0042" not in out
    assert out.startswith("<CUSTOMER_ID:") and "branch=<BRANCH:" in out
    assert counts == {"CUSTOMER_ID": 1, "BRANCH": 1}


def test_allow_list_values_and_patterns():
    from sidecar.redact import AllowList

    settings = RedactionSettings(
        allow=AllowList(values=("noreply@bank.example",), patterns=(r"10\.0\.0\.\d+",))
    )
    text = "from noreply@bank.example to a@example.com via 10.0.0.5 and 10.0.1.5"
    out, counts = Redactor(settings, SECRET).redact_text(text)
    assert "noreply@bank.example" in out and "10.0.0.5" in out
    assert "a@example.com" not in out and "10.0.1.5" not in out
    assert counts == {"EMAIL": 1, "IPV4": 1}


def test_extra_secret_keys():
    settings = RedactionSettings(extra_secret_keys=("otp_seed",))
    out, counts = Redactor(settings, SECRET).redact_text("otp_seed=JBSWY3DPEHPK3PXP")
    assert "JBSWY3DPEHPK3PXP" not in out and counts == {"SECRET": 1}
