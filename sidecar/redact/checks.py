"""Checksums and format rules that tell real identifiers from look-alikes.

Strategy: the regex engine only proposes candidates; these pure functions decide.
Each one is linear in its input and raises nothing on any ``str`` input, so a
candidate of any size is either accepted or rejected. Inputs are the candidate's
significant characters (digits, or upper-case alphanumerics) unless stated.
"""

from __future__ import annotations

import socket

# IBAN length per country (ISO 13616 registry).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

# Digit d -> digit sum of 2*d, as a str.translate table.
_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")
# IBAN letters -> two-digit numbers (A=10 ... Z=35) for the mod-97 check.
_IBAN_DIGITS = str.maketrans({chr(ord("A") + i): str(10 + i) for i in range(26)})
_NIF_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
_NINO_BAD_FIRST = frozenset("DFIQUV")
_NINO_BAD_SECOND = frozenset("DFIOQUV")
_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def digits_of(text: str) -> str:
    """The ASCII digits of ``text``, in order."""
    return "".join(ch for ch in text if "0" <= ch <= "9")


def luhn_valid(digits: str) -> bool:
    """True if the (non-empty) digit string passes the Luhn (mod 10) check."""
    kept = sum(map(int, digits[-1::-2]))
    doubled = sum(map(int, digits[-2::-2].translate(_LUHN_DOUBLED)))
    return (kept + doubled) % 10 == 0


def card_brand_plausible(digits: str) -> bool:
    """True if the leading digits and the length fit a payment-card issuer.

    Visa 4 (13, 16, 19 digits); Mastercard 51-55 and 2221-2720 (16); Mir 2200-2204
    (16-19); Amex 34, 37 (15); Diners 30, 36, 38, 39 (14-19); JCB 35 (16-19);
    Maestro/Discover/UnionPay/RuPay 50, 56-69 (12-19). Epoch-millisecond stamps and
    other numbers starting with 0, 1, 7, 8, 9 never fit.
    """
    length = len(digits)
    first, two = digits[:1], digits[:2]
    if first == "4":
        return length in (13, 16, 19)
    if "51" <= two <= "55":
        return length == 16
    if first == "5" or first == "6":
        return 12 <= length <= 19
    if two in ("34", "37"):
        return length == 15
    if two in ("30", "36", "38", "39"):
        return 14 <= length <= 19
    if two == "35":
        return 16 <= length <= 19
    if first == "2":
        prefix = int(digits[:4]) if length >= 4 else 0
        return (2221 <= prefix <= 2720 and length == 16) or (
            2200 <= prefix <= 2204 and length >= 16
        )
    return False


def card_valid(digits: str) -> bool:
    """True for a plausible payment card number: 13-19 digits, issuer prefix and length, Luhn."""
    return 13 <= len(digits) <= 19 and card_brand_plausible(digits) and luhn_valid(digits)


def iban_length(country: str) -> int | None:
    """Registered IBAN length for a two-letter country code, or None if unknown."""
    return _IBAN_LENGTHS.get(country)


def iban_valid(iban: str) -> bool:
    """True if upper-case alphanumeric ``iban`` has its country's length and mod-97 == 1."""
    if iban_length(iban[:2]) != len(iban) or not iban.isalnum() or not iban.isascii():
        return False
    return int((iban[4:] + iban[:4]).translate(_IBAN_DIGITS)) % 97 == 1


def ssn_valid(digits: str) -> bool:
    """True for a US SSN the SSA could issue: area 001-899 but 666, group and serial non-zero."""
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def nino_valid(nino: str) -> bool:
    """True for a UK National Insurance number in canonical form (``AB123456C``)."""
    return (
        len(nino) == 9
        and nino[0] not in _NINO_BAD_FIRST
        and nino[1] not in _NINO_BAD_SECOND
        and nino[:2] not in _NINO_BAD_PREFIXES
        and nino[2:8].isdigit()
        and nino[8] in "ABCD"
    )


def cpf_valid(digits: str) -> bool:
    """True for a Brazilian CPF: 11 digits, not all equal, both check digits right."""
    if len(digits) != 11 or digits == digits[0] * 11:
        return False
    values = [ord(ch) - 48 for ch in digits]
    for length in (9, 10):
        total = sum(value * (length + 1 - index) for index, value in enumerate(values[:length]))
        if (total * 10) % 11 % 10 != values[length]:
            return False
    return True


def nif_valid(nif: str) -> bool:
    """True for a Spanish DNI (``12345678Z``) or NIE (``X1234567L``) with its check letter."""
    if len(nif) != 9:
        return False
    body = nif[:8]
    if body[0] in "XYZ":
        body = str("XYZ".index(body[0])) + body[1:]
    return body.isdigit() and _NIF_LETTERS[int(body) % 23] == nif[8]


def nanp_valid(digits: str) -> bool:
    """True for a 10-digit North American number (area and exchange start with 2-9)."""
    return len(digits) == 10 and digits[0] >= "2" and digits[3] >= "2"


def ipv4_valid(text: str) -> bool:
    """True for a dotted-quad IPv4 address (each octet 0-255)."""
    parts = text.split(".")
    return len(parts) == 4 and all(part.isdigit() and int(part) <= 255 for part in parts)


def ipv6_canonical(text: str) -> str | None:
    """The 16 address bytes of IPv6 ``text`` in hex, or None if ``text`` is not one.

    Requires either ``::`` or all eight groups, so times (``12:30:45``) and MAC
    addresses are not mistaken for addresses.
    """
    if "::" not in text and text.count(":") < 7 and "." not in text:
        return None
    try:
        return socket.inet_pton(socket.AF_INET6, text).hex()
    except (OSError, ValueError):
        return None
