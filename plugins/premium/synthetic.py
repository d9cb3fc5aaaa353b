"""A deterministic synthetic customer base (the demo's CSV and the tests' fixtures).

Customers are numbered 1..count: customer_id ``str(n)``, account_id
:func:`premium.identifiers.account_id_for` ``(n)``. For a given seed the output is always the
same. The mix is realistic: mostly Hebrew speakers, a few tricky names (apostrophe, right-to-left
mark, niqqud, a very long one), mostly active and consenting customers, ~95% valid Israeli
mobiles in mixed local formats, ~3% landlines and ~2% garbage numbers. Phone numbers are unique
across customers (also after normalisation).
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from premium.customers import COLUMNS
from premium.identifiers import account_id_for

DEFAULT_COUNT = 2000
DEFAULT_SEED = 20251118

LANGUAGE_WEIGHTS: tuple[tuple[str, float], ...] = (("he", 0.60), ("en", 0.30), ("ar", 0.06), ("ru", 0.04))
STATUS_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("ACTIVE", 0.93),
    ("INACTIVE", 0.04),
    ("SUSPENDED", 0.02),
    ("CLOSED", 0.01),
)
CONSENT_RATE = 0.88
PHONE_KIND_WEIGHTS: tuple[tuple[str, float], ...] = (("mobile", 0.95), ("landline", 0.03), ("garbage", 0.02))

FIRST_NAMES: dict[str, tuple[str, ...]] = {
    "he": (
        "נועה",
        "אורי",
        "תמר",
        "יוסף",
        "שירה",
        "דניאל",
        "מיכל",
        "איתי",
        "רחל",
        "אביגיל",
        "ג'ורג'",  # geresh written as an apostrophe
        "מרים\u200f",  # trailing RIGHT-TO-LEFT MARK
        "שָׂרָה",  # niqqud (combining marks)
    ),
    "en": (
        "Olivia",
        "Noah",
        "Emma",
        "Liam",
        "Sophie",
        "Daniel",
        "Grace",
        "O'Brien",
        "Zoë",
        "Maximilian-Alexander Bartholomew Christopher Montgomery-Fitzgerald Jonathan Wellington-Smythe",
    ),
    "ar": ("محمد", "فاطمة", "أحمد", "ليلى", "يوسف", "نور", "عبد الرحمن"),
    "ru": ("Анна", "Дмитрий", "Елена", "Сергей", "Наталья", "Алексей", "Ольга"),
}
MOBILE_PREFIXES = ("50", "52", "53", "54")  # with a subscriber number starting 2-9: valid IL mobiles
LANDLINE_AREAS = ("2", "3", "4", "8", "9")
_MOBILE_FORMATS = ("dashed", "plain", "international_spaced", "international_plain")
_GARBAGE_TEXTS = ("not-a-number", "unknown", "n/a")


def _pick(rng: random.Random, weights: tuple[tuple[str, float], ...]) -> str:
    r = rng.random()
    acc = 0.0
    for value, weight in weights:
        acc += weight
        if r < acc:
            return value
    return weights[-1][0]


def _mobile(rng: random.Random, used: set[str]) -> str:
    while True:
        prefix = rng.choice(MOBILE_PREFIXES)
        subscriber = f"{rng.randint(2, 9)}{rng.randrange(1_000_000):06d}"
        key = "+972" + prefix + subscriber
        if key not in used:
            used.add(key)
            break
    fmt = rng.choice(_MOBILE_FORMATS)
    if fmt == "dashed":
        return f"0{prefix}-{subscriber}"
    if fmt == "plain":
        return f"0{prefix}{subscriber}"
    if fmt == "international_spaced":
        return f"+972 {prefix} {subscriber[:3]} {subscriber[3:]}"
    return f"972{prefix}{subscriber}"


def _landline(rng: random.Random, used: set[str]) -> str:
    while True:
        area = rng.choice(LANDLINE_AREAS)
        subscriber = f"{rng.randint(2, 8)}{rng.randrange(1_000_000):06d}"
        key = "+972" + area + subscriber
        if key not in used:
            used.add(key)
            return f"0{area}-{subscriber}"


def _garbage(rng: random.Random, used: set[str]) -> str:
    while True:
        kind = rng.randrange(3)
        if kind == 0:
            text = _GARBAGE_TEXTS[rng.randrange(len(_GARBAGE_TEXTS))]
            key = ""  # normalises to nothing: at most one such number in the base
        elif kind == 1:
            text = str(rng.randrange(1000, 100_000))  # too short to be a phone number
            key = text
        else:
            digits = str(rng.randrange(10, 1000))
            text = f"+1 555 {digits}"  # a truncated US number
            key = "+1555" + digits
        if key not in used:
            used.add(key)
            return text


def _generate(count: int, seed: int) -> Iterator[tuple[dict[str, str], str]]:
    if count < 0:
        raise ValueError("count must not be negative")
    rng = random.Random(seed)
    used: set[str] = set()
    for n in range(1, count + 1):
        language = _pick(rng, LANGUAGE_WEIGHTS)
        first_name = rng.choice(FIRST_NAMES[language])
        status = _pick(rng, STATUS_WEIGHTS)
        consent = rng.random() < CONSENT_RATE
        phone_kind = _pick(rng, PHONE_KIND_WEIGHTS)
        if phone_kind == "mobile":
            phone = _mobile(rng, used)
        elif phone_kind == "landline":
            phone = _landline(rng, used)
        else:
            phone = _garbage(rng, used)
        row = {
            "customer_id": str(n),
            "account_id": account_id_for(n),
            "first_name": first_name,
            "phone_number": phone,
            "language": language,
            "status": status,
            "sms_consent": "true" if consent else "false",
        }
        yield row, phone_kind


def generate_rows(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> Iterator[dict[str, str]]:
    """``count`` customer rows (CSV column name -> text), the same for the same seed."""
    for row, _ in _generate(count, seed):
        yield row


def write_csv(path: Path, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> Path:
    """Write the synthetic base as a UTF-8 CSV with a header; the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(generate_rows(count, seed))
    return path


def expected_mix(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Counts per category of the base ``generate_rows(count, seed)`` produces.

    ``{"customers": N, "language": {...}, "status": {...}, "sms_consent": {"true": .., "false": ..},
    "phone": {"mobile": .., "landline": .., "garbage": ..}, "sms_eligible": N}`` where
    ``sms_eligible`` counts ACTIVE customers with consent and a valid mobile number.
    """
    languages: Counter[str] = Counter({lang: 0 for lang, _ in LANGUAGE_WEIGHTS})
    statuses: Counter[str] = Counter({status: 0 for status, _ in STATUS_WEIGHTS})
    consent: Counter[str] = Counter({"true": 0, "false": 0})
    phones: Counter[str] = Counter({kind: 0 for kind, _ in PHONE_KIND_WEIGHTS})
    eligible = 0
    total = 0
    for row, kind in _generate(count, seed):
        total += 1
        languages[row["language"]] += 1
        statuses[row["status"]] += 1
        consent[row["sms_consent"]] += 1
        phones[kind] += 1
        if row["status"] == "ACTIVE" and row["sms_consent"] == "true" and kind == "mobile":
            eligible += 1
    return {
        "customers": total,
        "language": dict(languages),
        "status": dict(statuses),
        "sms_consent": dict(consent),
        "phone": dict(phones),
        "sms_eligible": eligible,
    }
