"""Seeded synthetic bank-application log corpus with planted values and decoys.

Strategy: line templates in the shapes bank services really log (key=value, JSON,
access-log URLs, XML, free text) hold ``${NAME}`` slots. An upper-case slot plants a
value of that TYPE (generated valid: Luhn, mod-97, check digits...), a lower-case slot
places a decoy of that kind (order numbers, request UUIDs, timestamps, hex hashes,
versions, Luhn-invalid card-like numbers...), which a redactor must leave alone. Each
line records exactly what it planted and placed, so recall and false positives are
counted exactly. One seed always gives the same corpus; all values are synthetic
(reserved example domains, documentation IP ranges, 555-01xx phone numbers).
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.redact import checks


@dataclass(frozen=True)
class Planted:
    """A value of ``type`` written into a line; redaction must remove ``value``."""

    type: str
    value: str


@dataclass(frozen=True)
class Decoy:
    """A look-alike of ``kind`` written into a line; redaction must keep ``value``."""

    kind: str
    value: str


@dataclass(frozen=True)
class CorpusLine:
    """One log line with what was planted in it and which decoys it carries."""

    text: str
    planted: tuple[Planted, ...]
    decoys: tuple[Decoy, ...]


_FIRST = ("james", "maria", "wei", "fatima", "oliver", "sofia", "lukas", "amara", "noah", "ines")
_LAST = ("smith", "garcia", "chen", "khan", "brown", "rossi", "muller", "okafor", "silva", "novak")
_DOMAINS = ("example.com", "mail.example.org", "customers.example.net", "example.co.uk")
_SERVICES = ("payments-api", "card-auth", "ledger", "kyc-service", "notify", "core-banking")
_ALNUM = string.ascii_letters + string.digits
_B64URL = _ALNUM + "-_"


def _pick(rnd: random.Random, alphabet: str, length: int) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(length))


def _digits(rnd: random.Random, length: int) -> str:
    return _pick(rnd, string.digits, length)


def _luhn_complete(partial: str) -> str:
    return next(partial + d for d in string.digits if checks.luhn_valid(partial + d))


def _group(number: str, sizes: tuple[int, ...], sep: str) -> str:
    parts, position = [], 0
    for size in sizes:
        parts.append(number[position : position + size])
        position += size
    return sep.join(parts)


def _card_number(rnd: random.Random) -> str:
    prefix, length = rnd.choice(
        (("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16))
    )
    return _luhn_complete(prefix + _digits(rnd, length - len(prefix) - 1))


def _card(rnd: random.Random) -> str:
    number = _card_number(rnd)
    sizes = (4, 6, 5) if len(number) == 15 else (4, 4, 4, 4)
    return _group(number, sizes, rnd.choice(("", " ", "-")))


def _luhn_invalid(rnd: random.Random) -> str:
    number = _card_number(rnd)
    wrong = str((int(number[-1]) + rnd.randint(1, 9)) % 10)
    return _group(number[:-1] + wrong, (4, 4, 4, 4), rnd.choice((" ", "-", "")))


def _iban(rnd: random.Random) -> str:
    country, bban = rnd.choice(
        (
            ("DE", _digits(rnd, 18)),
            ("GB", "NWBK" + _digits(rnd, 14)),
            ("FR", _digits(rnd, 23)),
            ("NL", "ABNA" + _digits(rnd, 10)),
            ("ES", _digits(rnd, 20)),
        )
    )
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if rnd.random() < 0.5 else iban


def _ssn(rnd: random.Random) -> str:
    area = rnd.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}-{rnd.randint(1, 99):02d}-{rnd.randint(1, 9999):04d}"


def _nino(rnd: random.Random) -> str:
    prefix = rnd.choice(("AB", "CE", "JG", "KM", "PR", "SW", "TE", "WL"))
    return prefix + _digits(rnd, 6) + rnd.choice("ABCD")


def _cpf(rnd: random.Random) -> str:
    base = _digits(rnd, 9)
    digits = next(f"{base}{c:02d}" for c in range(100) if checks.cpf_valid(f"{base}{c:02d}"))
    return f"{digits[:3]}.{digits[3:6]}.{digits[6:9]}-{digits[9:]}"


def _nif(rnd: random.Random) -> str:
    base = str(rnd.randint(10_000_000, 99_999_999))
    return next(base + ch for ch in string.ascii_uppercase if checks.nif_valid(base + ch))


def _phone(rnd: random.Random) -> str:
    line = f"01{rnd.randint(0, 99):02d}"
    return rnd.choice(
        (
            f"+1 415 555 {line}",
            f"+1-212-555-{line}",
            f"+44 20 7946 0{rnd.randint(100, 999)}",
            f"+4930{_digits(rnd, 7)}",
            f"(312) 555-{line}",
            f"646.555.{line}",
            f"020 7946 0{rnd.randint(100, 999)}",
        )
    )


def _msisdn(rnd: random.Random) -> str:
    return "447700900" + _digits(rnd, 3)


def _ipv4(rnd: random.Random) -> str:
    return rnd.choice(
        (
            f"203.0.113.{rnd.randint(1, 254)}",
            f"198.51.100.{rnd.randint(1, 254)}",
            f"10.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}",
        )
    )


def _ipv6(rnd: random.Random) -> str:
    return f"2001:db8:{rnd.randint(1, 0xFFFF):x}::{rnd.randint(1, 0xFFFF):x}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(rnd: random.Random) -> str:
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = {"sub": f"cust-{_digits(rnd, 7)}", "iat": 1700000000 + rnd.randint(0, 10**6)}
    return f"{header}.{_b64url(json.dumps(claims).encode())}.{_pick(rnd, _B64URL, 43)}"


def _basic(rnd: random.Random) -> str:
    user = f"svc_{rnd.choice(_LAST)}"
    return base64.b64encode(f"{user}:{_pick(rnd, _ALNUM, 14)}".encode()).decode()


def _password(rnd: random.Random) -> str:
    return _pick(rnd, _ALNUM, rnd.randint(6, 10)) + rnd.choice("!#%*+?") + _digits(rnd, 2)


def _pem(rnd: random.Random) -> str:
    body = " ".join(_pick(rnd, _ALNUM + "+/", 64) for _ in range(3))
    return f"-----BEGIN RSA PRIVATE KEY----- {body} -----END RSA PRIVATE KEY-----"


def _account(rnd: random.Random) -> str:
    return rnd.choice((_digits(rnd, 8), _digits(rnd, 10), f"{_digits(rnd, 4)}-{_digits(rnd, 6)}"))


def _birth_date(rnd: random.Random) -> str:
    return f"19{rnd.randint(40, 99)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"


def _email(rnd: random.Random) -> str:
    name = f"{rnd.choice(_FIRST)}.{rnd.choice(_LAST)}{rnd.randint(1, 99)}"
    email = f"{name}@{rnd.choice(_DOMAINS)}"
    return email.title() if rnd.random() < 0.1 else email


def _timestamp(rnd: random.Random) -> str:
    return (
        f"2026-11-{rnd.randint(1, 28):02d}T{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}"
        f":{rnd.randint(0, 59):02d}.{rnd.randint(0, 999):03d}Z"
    )


def _clf_time(rnd: random.Random) -> str:
    day, hour, minute = rnd.randint(1, 28), rnd.randint(0, 23), rnd.randint(0, 59)
    return f"{day:02d}/Nov/2026:{hour:02d}:{minute:02d}:00 +0000"


def _uuid(rnd: random.Random) -> str:
    value = f"{rnd.getrandbits(128):032x}"
    return f"{value[:8]}-{value[8:12]}-4{value[13:16]}-a{value[17:20]}-{value[20:]}"


def _amount(rnd: random.Random) -> str:
    return f"{rnd.randint(1, 99999)}.{rnd.randint(1, 9)}{rnd.randint(1, 9)}"


_Generator = Callable[[random.Random], str]

#: Planted TYPE slots (upper case) and their generators.
PLANTED: dict[str, tuple[str, _Generator]] = {
    "EMAIL": ("EMAIL", _email),
    "EMAIL_URL": ("EMAIL", lambda rnd: _email(rnd).replace("@", "%40")),
    "CARD": ("CARD", _card),
    "IBAN": ("IBAN", _iban),
    "SSN": ("SSN", _ssn),
    "UK_NINO": ("UK_NINO", _nino),
    "BR_CPF": ("BR_CPF", _cpf),
    "ES_NIF": ("ES_NIF", _nif),
    "PHONE": ("PHONE", _phone),
    "MSISDN": ("PHONE", _msisdn),
    "IPV4": ("IPV4", _ipv4),
    "IPV6": ("IPV6", _ipv6),
    "JWT": ("JWT", _jwt),
    "BEARER": ("AUTH", lambda rnd: _pick(rnd, _ALNUM + "-._~", 32)),
    "BASIC": ("AUTH", _basic),
    "AWS_KEY": ("AWS_KEY", lambda rnd: "AKIA" + _pick(rnd, string.ascii_uppercase + "234567", 16)),
    "AWS_SECRET": ("AWS_SECRET", lambda rnd: _pick(rnd, _ALNUM + "+/", 40)),
    "GITHUB_TOKEN": ("GITHUB_TOKEN", lambda rnd: "ghp_" + _pick(rnd, _ALNUM, 36)),
    "SLACK_TOKEN": (
        "SLACK_TOKEN",
        lambda rnd: f"xoxb-{_digits(rnd, 12)}-{_digits(rnd, 13)}-{_pick(rnd, _ALNUM, 24)}",
    ),
    "STRIPE_KEY": ("STRIPE_KEY", lambda rnd: "sk_live_" + _pick(rnd, _ALNUM, 24)),
    "GOOGLE_API_KEY": ("GOOGLE_API_KEY", lambda rnd: "AIza" + _pick(rnd, _B64URL, 35)),
    "GITLAB_TOKEN": ("GITLAB_TOKEN", lambda rnd: "glpat-" + _pick(rnd, _ALNUM, 20)),
    "NPM_TOKEN": ("NPM_TOKEN", lambda rnd: "npm_" + _pick(rnd, _ALNUM, 36)),
    "SENDGRID_KEY": (
        "SENDGRID_KEY",
        lambda rnd: f"SG.{_pick(rnd, _B64URL, 22)}.{_pick(rnd, _B64URL, 43)}",
    ),
    "SLACK_WEBHOOK": (
        "SLACK_TOKEN",
        lambda rnd: (
            f"hooks.slack.com/services/T{_digits(rnd, 8)}/B{_digits(rnd, 8)}/"
            + _pick(rnd, _ALNUM, 24)
        ),
    ),
    "PRIVATE_KEY": ("PRIVATE_KEY", _pem),
    "URL_CREDENTIALS": (
        "URL_CREDENTIALS",
        lambda rnd: f"svc_{rnd.choice(_LAST)}:{_pick(rnd, _ALNUM, 12)}",
    ),
    "SECRET": ("SECRET", _password),
    "ACCOUNT": ("ACCOUNT", _account),
    "DOB": ("DOB", _birth_date),
    "TAX_ID": ("NATIONAL_ID", lambda rnd: f"{_digits(rnd, 2)}-{_digits(rnd, 7)}"),
}

#: Decoy kinds (lower case) and their generators.
DECOYS: dict[str, _Generator] = {
    "timestamp": _timestamp,
    "clf_time": _clf_time,
    "request_id": _uuid,
    "order_number": lambda rnd: f"ORD-2026-{_digits(rnd, 7)}",
    "txn_id": lambda rnd: f"TXN{_digits(rnd, 14)}",
    "hex_hash": lambda rnd: f"{rnd.getrandbits(160):040x}",
    "trace_id": lambda rnd: f"{rnd.getrandbits(128):032x}",
    "version": lambda rnd: f"{rnd.randint(1, 9)}.{rnd.randint(0, 30)}.{rnd.randint(0, 99)}",
    "luhn_invalid": _luhn_invalid,
    "epoch_ms": lambda rnd: str(1_760_000_000_000 + rnd.randint(0, 10**10)),
    "amount": _amount,
    "customer_ref": lambda rnd: f"CUST-{_digits(rnd, 8)}",
}

_FILLERS: dict[str, _Generator] = {
    "svc": lambda rnd: rnd.choice(_SERVICES),
    "ms": lambda rnd: str(rnd.randint(1, 2500)),
    "n": lambda rnd: str(rnd.randint(1, 9)),
    "last4": lambda rnd: _digits(rnd, 4),
}

#: Line templates, one per realistic shape; ``${x}`` slots are filled per line.
TEMPLATES: tuple[str, ...] = (
    "${timestamp} INFO  [payments-api] c.b.p.TransferService - transfer.initiated"
    " request_id=${request_id} customer_email=${EMAIL} from_iban=${IBAN} amount=${amount}"
    " EUR order=${order_number}",
    "${timestamp} DEBUG [card-auth] authorising pan=${CARD} exp=12/27 merchant_ref=${order_number}"
    " trace_id=${trace_id} latency=${ms}ms",
    "${timestamp} WARN  [kyc-service] document check failed ssn=${SSN} dob=${DOB} attempt=${n}"
    " request_id=${request_id}",
    "${timestamp} INFO  [notify] sms sent to ${PHONE} template=otp_login msg_id=${request_id}"
    " status=queued",
    "${timestamp} INFO  [notify] delivery receipt msisdn=${MSISDN} provider_ref=${hex_hash}"
    " state=DELIVRD",
    "${timestamp} ERROR [gateway] upstream rejected Authorization: Bearer ${BEARER}"
    " client_ip=${IPV4} status=401 build=${version}",
    "${timestamp} INFO  [core-banking] balance inquiry account ${ACCOUNT} branch=0042 result=OK"
    " (${ms} ms) txn=${txn_id}",
    "${timestamp} DEBUG [config] datasource url=postgres://${URL_CREDENTIALS}@ledger-db-01"
    ".internal:5432/ledger pool=20 driver=${version}",
    "${timestamp} WARN  [secrets] rotating credentials aws_access_key_id=${AWS_KEY}"
    " aws_secret_access_key=${AWS_SECRET} region=eu-west-1",
    "${timestamp} INFO  [ci-deploy] cloning payments/ledger with token ${GITHUB_TOKEN}"
    " at commit ${hex_hash}",
    "${timestamp} ERROR [alerts] slack post failed token=${SLACK_TOKEN} channel=#payments-oncall"
    " attempt=${n}",
    "${timestamp} DEBUG [billing] stripe client configured key=${STRIPE_KEY}"
    " charge_ref=${order_number} amount=${amount}",
    "${timestamp} INFO  [branch-locator] geocoding with key ${GOOGLE_API_KEY} took ${ms}ms",
    "${timestamp} ERROR [tls] cannot parse key material: ${PRIVATE_KEY}",
    "${timestamp} INFO  [auth] login ok user=${EMAIL} session=${request_id} ip=${IPV6} mfa=totp",
    "${timestamp} WARN  [onboarding-uk] duplicate applicant nino=${UK_NINO} ref=${customer_ref}",
    "${timestamp} WARN  [onboarding-br] CPF ${BR_CPF} já cadastrado, protocolo ${order_number}",
    "${timestamp} INFO  [kyc-es] verificación DNI ${ES_NIF} correcta, expediente ${order_number}",
    "${timestamp} WARN  [tax-reporting] W-9 mismatch tax_id=${TAX_ID} ref=${customer_ref}",
    "${timestamp} DEBUG [oauth] token exchange client_id=mobile-app client_secret=${SECRET}"
    " grant_type=client_credentials",
    "${timestamp} INFO  [auth] password reset for ${customer_ref}: password=${SECRET}"
    " policy=${version}",
    '{"@timestamp":"${timestamp}","level":"INFO","logger":"com.bank.cards.AuthService",'
    '"message":"card authorised","card_number":"${CARD}","amount":${amount},'
    '"currency":"EUR","request_id":"${request_id}"}',
    '{"ts":"${timestamp}","level":"warn","svc":"transfers","msg":"beneficiary added",'
    '"beneficiary":{"ref":"${customer_ref}","iban":"${IBAN}","email":"${EMAIL}"},'
    '"trace":"${trace_id}"}',
    '{"ts":"${timestamp}","level":"debug","svc":"auth","event":"token_issued",'
    '"access_token":"${JWT}","expires_in":3600,"user":"${customer_ref}"}',
    '{"ts":"${timestamp}","level":"info","svc":"accounts","msg":"statement generated",'
    '"acct":"${ACCOUNT}","phone":"${PHONE}","pages":${n},"build":"${version}"}',
    '{"ts":"${timestamp}","event":"login_failed","username":"${EMAIL}","password":"${SECRET}",'
    '"ip":"${IPV4}","attempt":${n},"epoch":${epoch_ms}}',
    '${IPV4} - - [${clf_time}] "GET /api/v2/customers/search?email=${EMAIL_URL}&page=1 HTTP/1.1"'
    ' 200 ${ms} "-" "okhttp/4.9.3"',
    '${IPV4} - - [${clf_time}] "GET /oauth/callback?code=${trace_id}&access_token=${SECRET}'
    '&state=${request_id} HTTP/1.1" 302 0 "-" "Mozilla/5.0"',
    "${timestamp} INFO  [fx-rates] GET https://${URL_CREDENTIALS}@partner-api.example.net/v1"
    "/rates?ccy=EUR 200 ${ms}ms",
    "${timestamp} INFO  [support] Customer ${customer_ref} called from ${PHONE} about card ending"
    " ${last4}; ticket ${order_number}",
    "${timestamp} WARN  [fraud] Transaction ${txn_id} flagged: card ${CARD} used from ${IPV4}"
    " and ${IPV4} within ${ms} ms",
    "${timestamp} INFO  [mail] Sending statement to ${EMAIL} (account ending ${last4}), job"
    " ${request_id} done in ${ms}ms",
    "${timestamp} DEBUG [soap] request <Login><username>${EMAIL}</username><password>${SECRET}"
    "</password></Login> took ${ms}ms",
    '${timestamp} DEBUG [http-client] headers {"Authorization": "Basic ${BASIC}",'
    ' "X-Request-Id": "${request_id}"}',
    "${timestamp} INFO  [recon] unmatched reference ${luhn_invalid} in batch ${order_number}"
    " epoch=${epoch_ms} sha=${hex_hash}",
    "${timestamp} INFO  [ledger] posted ${amount} EUR from ${customer_ref} version ${version}"
    " trace ${trace_id}",
    "${timestamp} INFO  [build] publishing with ${NPM_TOKEN}, mirror auth ${GITLAB_TOKEN},"
    " pipeline ${order_number}",
    "${timestamp} WARN  [mailer] sendgrid rejected key ${SENDGRID_KEY} (status 401) msg"
    " ${request_id}",
    "${timestamp} ERROR [alerts] POST https://${SLACK_WEBHOOK} failed after ${ms}ms",
    "${timestamp} INFO  [audit] execve: pg_dump --host ledger-db-01 --username svc_backup"
    " --password ${SECRET} --file /backup/${order_number}.sql",
    "${timestamp} DEBUG [db-migrate] ALTER USER app_rw IDENTIFIED BY '${SECRET}'; -- v${version}",
    "${timestamp} INFO  [refunds] Refund of ${amount} EUR to card ${CARD} for ${EMAIL},"
    " case ${order_number}",
    "${timestamp} INFO  [kyc-us] SSN ${SSN} matched bureau record, score ${n}/9 ref"
    " ${customer_ref}",
)

_SLOT = re.compile(r"\$\{(\w+)\}")


def _fill(template: str, rnd: random.Random) -> CorpusLine:
    planted: list[Planted] = []
    decoys: list[Decoy] = []

    def slot(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in PLANTED:
            type_, generate = PLANTED[name]
            value = generate(rnd)
            planted.append(Planted(type_, value))
        elif name in DECOYS:
            value = DECOYS[name](rnd)
            decoys.append(Decoy(name, value))
        else:
            value = _FILLERS[name](rnd)
        return value

    text = _SLOT.sub(slot, template)
    return CorpusLine(text, tuple(planted), tuple(decoys))


def generate(lines: int, seed: int = 0) -> list[CorpusLine]:
    """``lines`` corpus lines, the same for the same ``seed``; templates cycle in order."""
    rnd = random.Random(seed)
    return [_fill(TEMPLATES[index % len(TEMPLATES)], rnd) for index in range(lines)]
