"""Israeli mobile number normalisation, rejection reasons and masking."""

from __future__ import annotations

import pytest

from premium.sms.phones import InvalidPhone, is_valid_mobile, mask_phone, normalise_mobile

E164 = "+972512345678"  # the number of the architecture doc's example (§3.2)

MOBILE_FORMATS = [
    "051-2345678",
    "0512345678",
    "+972 51-234-5678",
    "+972512345678",
    "972512345678",
    "00972512345678",
    "(051) 234 5678",
    "+972 51 234 5678",
    "+972-51-2345678",
    "051.234.5678",
    "+972 (0)51-234-5678",
    "9720512345678",
    "  051-2345678\n",
    "\u200f051-2345678\u200e",  # bidi marks from copying out of RTL text
    "051\u00a0234\u00a05678",  # no-break spaces
    "٠٥١٢٣٤٥٦٧٨",  # Arabic-Indic digits
]

LANDLINES = ["02-6251234", "03-1234567", "04-8123456", "08-9123456", "09-7654321", "+972 2 625 1234"]

GARBAGE = {
    "": "empty",
    "   ": "empty",
    "\u200f": "empty",
    "12345": "not a valid number",
    "not-a-number": "not a phone number",
    "n/a": "not a phone number",
    "unknown": "not a phone number",
    "+": "not a phone number",
    "call 051-2345678": "not a phone number",
    "051-2345678 ext 12": "not a phone number",
    "051-2345678#": "not a phone number",
    "0" * 41: "not a phone number",
    "+1 555 0100": "not an Israeli number",
    "+44 7700 900123": "not an Israeli number",
    "+970 599 123 456": "not an Israeli number",  # a Palestinian mobile
    "051234567": "not a valid number",  # a digit short
    "05123456789": "not a valid number",  # a digit too many
    "050-1234567": "not a valid number",  # well formed, but 050-1xxxxxx is not allocated (phonenumbers metadata)
    "077-1234567": "not a mobile (voip)",
    "1-700-123456": "not a mobile (shared_cost)",
}


@pytest.mark.parametrize("raw", MOBILE_FORMATS)
def test_every_mobile_format_normalises_to_the_same_e164(raw: str) -> None:
    assert normalise_mobile(raw) == E164
    assert is_valid_mobile(raw)


@pytest.mark.parametrize(
    ("raw", "e164"),
    [("050-7654321", "+972507654321"), ("053-2345678", "+972532345678"), ("+972 58-765-4321", "+972587654321")],
)
def test_other_mobile_prefixes(raw: str, e164: str) -> None:
    assert normalise_mobile(raw) == e164


@pytest.mark.parametrize("raw", LANDLINES)
def test_landline_is_not_a_mobile(raw: str) -> None:
    with pytest.raises(InvalidPhone) as info:
        normalise_mobile(raw)
    assert info.value.reason == "landline, not a mobile"
    assert not is_valid_mobile(raw)


@pytest.mark.parametrize(("raw", "reason"), GARBAGE.items())
def test_garbage_is_rejected_with_a_specific_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidPhone) as info:
        normalise_mobile(raw)
    assert info.value.reason == reason
    assert str(info.value) == reason
    assert not is_valid_mobile(raw)


@pytest.mark.parametrize("raw", [None, 512345678, b"0512345678"])
def test_non_strings_are_rejected(raw: object) -> None:
    with pytest.raises(InvalidPhone):
        normalise_mobile(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [*LANDLINES, *GARBAGE])
def test_reasons_never_contain_the_number(raw: str) -> None:
    with pytest.raises(InvalidPhone) as info:
        normalise_mobile(raw)
    exc = info.value
    for text in (exc.reason, str(exc), repr(exc)):
        assert not any(ch.isdigit() for ch in text)
    # No chained phonenumbers exception carries the input into a traceback either.
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None


def test_invalid_phone_is_a_value_error() -> None:
    assert issubclass(InvalidPhone, ValueError)


def test_mask_phone() -> None:
    assert mask_phone("+972512345678") == "+97251****678"
    assert mask_phone(normalise_mobile("058-7654321")) == "+97258****321"


@pytest.mark.parametrize("value", ["", "051-2345678", "0512345678", "+97251", "+1234567", "+9725123456789012", None])
def test_mask_phone_reveals_nothing_of_a_non_e164_value(value: str | None) -> None:
    assert mask_phone(value) == "***"  # type: ignore[arg-type]
