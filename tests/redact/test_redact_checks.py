"""Checksums and format rules, on published examples and one-character mutations."""

from __future__ import annotations

import pytest

from sidecar.redact import checks


@pytest.mark.parametrize(
    "number",
    ["4111111111111111", "5500000000000004", "378282246310005", "6011111111111117", "79927398713"],
)
def test_luhn_accepts_valid_numbers(number):
    assert checks.luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "5500000000000005", "79927398710"])
def test_luhn_rejects_mutated_numbers(number):
    assert not checks.luhn_valid(number)


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4111111111111111", True),
        ("2221000000000009", True),  # Mastercard 2-series
        ("378282246310005", True),
        ("1732417920123", False),  # epoch milliseconds: no issuer starts with 1
        ("0000000000000000", False),  # Luhn-valid, but no issuer
        ("2100000000000008", False),  # 2-prefix outside Mir/Mastercard
        ("411111111111", False),  # 12 digits
    ],
)
def test_card_valid(number, valid):
    assert checks.card_valid(number) is valid


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013000",
        "GB29NWBK60161331926819",
        "FR1420041010050500013M02606",
        "NO9386011117947",
    ],
)
def test_iban_valid_registry_examples(iban):
    assert checks.iban_valid(iban)


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013001",  # check digits no longer match
        "DE8937040044053201300",  # one character short for DE
        "XX89370400440532013000",  # no such country
        "de89370400440532013000",  # not canonical
    ],
)
def test_iban_invalid(iban):
    assert not checks.iban_valid(iban)


@pytest.mark.parametrize(
    ("ssn", "valid"),
    [
        ("123456789", True),
        ("000123456", False),
        ("666123456", False),
        ("900123456", False),
        ("123004567", False),
        ("123450000", False),
    ],
)
def test_ssn_valid(ssn, valid):
    assert checks.ssn_valid(ssn) is valid


@pytest.mark.parametrize(
    ("nino", "valid"),
    [("AB123456C", True), ("QQ123456C", False), ("BG123456C", False), ("AB123456E", False)],
)
def test_nino_valid(nino, valid):
    assert checks.nino_valid(nino) is valid


def test_cpf_valid_and_mutated():
    assert checks.cpf_valid("52998224725")
    assert not checks.cpf_valid("52998224724")
    assert not checks.cpf_valid("11111111111")


@pytest.mark.parametrize(
    ("nif", "valid"),
    [("12345678Z", True), ("X1234567L", True), ("12345678A", False), ("X1234567A", False)],
)
def test_nif_valid(nif, valid):
    assert checks.nif_valid(nif) is valid


def test_ip_checks():
    assert checks.ipv4_valid("203.0.113.7")
    assert not checks.ipv4_valid("256.1.1.1")
    assert checks.ipv6_canonical("2001:DB8:0:0::1") == checks.ipv6_canonical("2001:db8::1")
    assert checks.ipv6_canonical("::1") == "0" * 31 + "1"
    assert checks.ipv6_canonical("12:30:45") is None
    assert checks.ipv6_canonical("00:1a:2b:3c:4d:5e") is None
