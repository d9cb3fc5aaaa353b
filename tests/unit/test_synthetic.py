"""The synthetic customer base: deterministic, realistic mix, loadable (no database)."""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

import phonenumbers
import pytest

from premium import synthetic
from premium.crypto import normalise_phone_for_hash
from premium.customers import COLUMNS, LANGUAGES, MAX_FIRST_NAME_CHARS, STATUSES
from premium.identifiers import CUSTOMER_ID_RE, account_id_for, customer_number_for


def test_deterministic_for_a_seed() -> None:
    assert list(synthetic.generate_rows(500)) == list(synthetic.generate_rows(500))
    assert list(synthetic.generate_rows(500, seed=1)) != list(synthetic.generate_rows(500, seed=2))
    # A prefix of a larger base is the smaller base.
    assert list(synthetic.generate_rows(1000))[:300] == list(synthetic.generate_rows(300))


def test_rows_are_valid_customers() -> None:
    rows = list(synthetic.generate_rows(2000))
    assert [r["customer_id"] for r in rows] == [str(n) for n in range(1, 2001)]
    for n, row in enumerate(rows, start=1):
        assert tuple(row) == COLUMNS
        assert CUSTOMER_ID_RE.match(row["customer_id"])
        assert row["account_id"] == account_id_for(n)
        assert customer_number_for(row["account_id"]) == n
        assert row["language"] in LANGUAGES
        assert row["status"] in STATUSES
        assert row["sms_consent"] in ("true", "false")
        assert 0 < len(row["first_name"]) <= MAX_FIRST_NAME_CHARS
        assert 0 < len(row["phone_number"]) <= 32


def test_names_match_language_script() -> None:
    def scripts(name: str) -> set[str]:
        return {unicodedata.name(ch).split()[0] for ch in name if ch.isalpha()}

    for row in synthetic.generate_rows(2000):
        expected = {"he": "HEBREW", "en": "LATIN", "ar": "ARABIC", "ru": "CYRILLIC"}[row["language"]]
        assert scripts(row["first_name"]) == {expected}


def test_tricky_names_present() -> None:
    names = {n for names in synthetic.FIRST_NAMES.values() for n in names}
    assert any("'" in n for n in names)
    assert any("\u200f" in n for n in names)
    assert any(len(n) > 80 for n in names)
    used = {r["first_name"] for r in synthetic.generate_rows(2000)}
    assert any("'" in n for n in used) and any("\u200f" in n for n in used)


def test_mix_is_realistic() -> None:
    mix = synthetic.expected_mix(10_000)
    assert mix["customers"] == 10_000
    assert sum(mix["language"].values()) == sum(mix["status"].values()) == sum(mix["phone"].values()) == 10_000
    assert mix["language"]["he"] == pytest.approx(6000, rel=0.05)
    assert mix["language"]["en"] == pytest.approx(3000, rel=0.07)
    assert mix["language"]["ar"] == pytest.approx(600, rel=0.2)
    assert mix["language"]["ru"] == pytest.approx(400, rel=0.2)
    assert mix["status"]["ACTIVE"] == pytest.approx(9300, rel=0.02)
    assert mix["status"]["CLOSED"] == pytest.approx(100, rel=0.4)
    assert mix["sms_consent"]["true"] == pytest.approx(8800, rel=0.03)
    assert mix["phone"]["mobile"] == pytest.approx(9500, rel=0.02)
    assert mix["phone"]["landline"] == pytest.approx(300, rel=0.25)
    assert mix["phone"]["garbage"] == pytest.approx(200, rel=0.3)
    assert 0 < mix["sms_eligible"] < mix["phone"]["mobile"]


def test_expected_mix_matches_rows() -> None:
    rows = list(synthetic.generate_rows(3000, seed=7))
    mix = synthetic.expected_mix(3000, seed=7)
    for lang, count in mix["language"].items():
        assert sum(r["language"] == lang for r in rows) == count
    for status, count in mix["status"].items():
        assert sum(r["status"] == status for r in rows) == count
    assert sum(r["sms_consent"] == "true" for r in rows) == mix["sms_consent"]["true"]


def test_phones_unique_and_of_the_announced_kinds() -> None:
    pairs = list(synthetic._generate(5000, synthetic.DEFAULT_SEED))
    normalised = [normalise_phone_for_hash(row["phone_number"]) for row, _ in pairs]
    assert len(set(normalised)) == len(normalised)
    formats = set()
    for row, kind in pairs:
        phone = row["phone_number"]
        try:
            number = phonenumbers.parse(phone, "IL")
            valid = phonenumbers.is_valid_number(number)
            kind_of_number = phonenumbers.number_type(number)
        except phonenumbers.NumberParseException:
            valid, kind_of_number = False, None
        if kind == "mobile":
            assert valid and kind_of_number == phonenumbers.PhoneNumberType.MOBILE, kind
            formats.add("+972 " if phone.startswith("+972 ") else "972" if phone.startswith("972") else phone[3:4])
        elif kind == "landline":
            assert valid and kind_of_number == phonenumbers.PhoneNumberType.FIXED_LINE
        else:
            assert not valid
    assert formats >= {"+972 ", "972", "-"}  # plus plain local digits
    assert any(row["phone_number"].isdigit() and row["phone_number"].startswith("05") for row, _ in pairs)


def test_write_csv(tmp_path: Path) -> None:
    path = synthetic.write_csv(tmp_path / "sub" / "customers.csv", count=50, seed=3)
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == list(synthetic.generate_rows(50, seed=3))
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMNS)
