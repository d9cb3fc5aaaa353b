"""Customer PII as regexes, for scans of logs and XComs (the e2e tests' last check)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

import phonenumbers


def _bidi_free(text: str) -> str:
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()


def pii_patterns(customers: Iterable[dict[str, str]], balances: Iterable) -> dict[str, re.Pattern]:
    """kind -> regex: the customers' phone numbers (as given, digits only, E.164), first names
    (as given and without bidi marks) and the balances of 1000 or more (as 1234.50 and 1234.5)."""
    customers = list(customers)
    phones: set[str] = set()
    for row in customers:
        raw = row["phone_number"]
        digits = re.sub(r"\D", "", raw)
        if len(digits) < 7:  # "n/a", "12345": not a phone number, and would match anything
            continue
        phones.update({raw, digits})
        try:
            parsed = phonenumbers.parse(raw, "IL")
        except phonenumbers.NumberParseException:
            continue
        phones.add(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
    names = {form for row in customers for form in (row["first_name"], _bidi_free(row["first_name"]))}
    names = {n for n in names if len(n) >= 3}
    amounts = {form for b in balances if b >= 1000 for form in (f"{b:.2f}", str(float(b)))}

    def alternation(values: set[str]) -> str:
        return "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))

    return {
        "phone_number": re.compile(rf"(?<!\d)(?:{alternation(phones)})(?!\d)"),
        "first_name": re.compile(rf"(?<!\w)(?:{alternation(names)})(?!\w)"),
        "balance": re.compile(rf"(?<![\d.])(?:{alternation(amounts)})(?!\d)"),
    }
