"""Israeli mobile numbers: normalise to E.164, reject everything else, mask for logs.

:class:`InvalidPhone` carries a fixed reason ("empty", "not a phone number", "not an Israeli
number", "not a valid number", "landline, not a mobile", "not a mobile (<type>)") that never
contains the number or any part of it, so it can be logged and stored in the audit trail.

Validity is ``phonenumbers``' metadata for region IL: a number is accepted only when it is valid
and of type MOBILE. Note that the metadata knows which ranges are allocated, so a well-formed but
unallocated number (for example 050-1xxxxxx) is "not a valid number".
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

REGION = "IL"
COUNTRY_CODE = 972
MAX_RAW_CHARS = 40

# Digits (any script; phonenumbers maps them to ASCII), whitespace and the usual punctuation.
# Letters are refused outright: phonenumbers would otherwise extract a number from "call 050…"
# or read "ext 12" as an extension.
_PHONE_CHARS = re.compile(r"[\d\s+\-().]+")
_E164 = re.compile(r"\+[1-9]\d{10,14}")


class InvalidPhone(ValueError):
    """Not an Israeli mobile number; ``reason`` never contains the number."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _strip_format_chars(raw: str) -> str:
    # Bidi marks and zero-width characters come along when a number is copied from RTL text.
    return "".join(ch for ch in raw if unicodedata.category(ch) != "Cf").strip()


def normalise_mobile(raw: str) -> str:
    """E.164 (``+9725XXXXXXXX``) of an Israeli mobile number in any common local or international format."""
    if raw is None:
        raise InvalidPhone("empty")
    if not isinstance(raw, str):
        raise InvalidPhone("not a phone number")
    text = _strip_format_chars(raw)
    if not text:
        raise InvalidPhone("empty")
    if len(text) > MAX_RAW_CHARS or not _PHONE_CHARS.fullmatch(text):
        raise InvalidPhone("not a phone number")
    try:
        number = phonenumbers.parse(text, REGION)
    except NumberParseException:
        raise InvalidPhone("not a phone number") from None
    if number.country_code != COUNTRY_CODE:
        raise InvalidPhone("not an Israeli number")
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid number")
    if phonenumbers.region_code_for_number(number) != REGION:
        raise InvalidPhone("not an Israeli number")
    number_type = phonenumbers.number_type(number)
    if number_type == PhoneNumberType.FIXED_LINE:
        raise InvalidPhone("landline, not a mobile")
    if number_type != PhoneNumberType.MOBILE:
        raise InvalidPhone(f"not a mobile ({PhoneNumberType.to_string(number_type).lower()})")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def is_valid_mobile(raw: str) -> bool:
    """Whether :func:`normalise_mobile` accepts ``raw``."""
    try:
        normalise_mobile(raw)
    except InvalidPhone:
        return False
    return True


def mask_phone(e164: str) -> str:
    """``+97251****678`` (first 6 characters, 4 stars, last 3) for logs and the audit trail.

    Anything that is not an E.164 number of 11 to 15 digits is masked completely (``***``), so
    that a short or malformed value is never revealed.
    """
    if not isinstance(e164, str) or not _E164.fullmatch(e164):
        return "***"
    return f"{e164[:6]}****{e164[-3:]}"
