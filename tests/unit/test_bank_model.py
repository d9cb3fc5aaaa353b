"""The core-banking simulator's deterministic model (premium.simulators.bank_model)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import subprocess
import sys
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from premium.identifiers import account_id_for
from premium.simulators import bank_model
from premium.simulators.bank_model import ERRORS, THRESHOLD, account_facts, balance_response

DAY = dt.date(2025, 11, 18)
N_ACCOUNTS = 20_000
PLUGINS_DIR = Path(bank_model.__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def population() -> list[tuple[str, bank_model.AccountFacts | None]]:
    return [(a, account_facts(a, DAY)) for a in (account_id_for(n) for n in range(1, N_ACCOUNTS + 1))]


# -- an independent implementation of the rules written in the module docstring ----------------


def _H(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest(), "big")


def _U(s: str) -> float:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") / 2**64


def _expected(account_id: str, day: dt.date) -> dict | None:
    if _H("exists|" + account_id) % 200 == 0:
        return None
    u = _U("base|" + account_id)
    if u < 0.4:
        base = 15000 * 0.9 * math.exp(-1.5 * (0.4 - u) / 0.4)
    elif u < 0.6:
        base = 15000 * (0.9 + (u - 0.4))
    else:
        base = 15000 * 1.1 * math.exp(1.5 * (u - 0.6) / 0.4)
    key = f"{account_id}|{day.isoformat()}"
    factor = 0.95 + 0.10 * _U("day|" + key)
    if _H("dip|" + key) % 100 < 3:
        factor *= 0.5
    s = _H("status|" + account_id) % 1000
    return {
        "amount": base * factor,
        "currency": "USD" if _H("currency|" + account_id) % 200 == 0 else "NIS",
        "status": "FROZEN" if s < 10 else "CLOSED" if s < 15 else "ACTIVE",
        "reference_id": f"REF-{_H('ref|' + key) % 10**9:09d}",
        "customer_id": str(int(account_id[4:9]) * 100000 + int(account_id[10:15])),
    }


@pytest.mark.parametrize("n", [1, 2, 7, 99, 12345, 100000, 654321, 999999])
@pytest.mark.parametrize("day", [DAY, dt.date(2024, 2, 29), dt.date(2026, 7, 1)])
def test_matches_documented_rules(n: int, day: dt.date) -> None:
    account_id = account_id_for(n)
    expected = _expected(account_id, day)
    facts = account_facts(account_id, day)
    if expected is None:
        assert facts is None
        return
    assert facts is not None
    assert facts.account_id == account_id and facts.as_of_date == day
    assert facts.customer_id == expected["customer_id"]
    assert facts.currency == expected["currency"]
    assert facts.account_status == expected["status"]
    assert facts.reference_id == expected["reference_id"]
    # the model computes in Decimal; the float re-implementation agrees to well under a cent
    assert abs(float(facts.amount) - expected["amount"]) < 0.006


def test_population_rates(population) -> None:
    counts: Counter[str] = Counter()
    for _, facts in population:
        if facts is None:
            counts["missing"] += 1
            continue
        counts[facts.currency] += 1
        counts[facts.account_status] += 1
        a = facts.amount
        counts[
            "above" if a > THRESHOLD * Decimal("1.1") else "below" if a < THRESHOLD * Decimal("0.9") else "near"
        ] += 1
    existing = N_ACCOUNTS - counts["missing"]
    assert 0.003 < counts["missing"] / N_ACCOUNTS < 0.008
    assert 0.003 < counts["USD"] / existing < 0.008
    assert 0.007 < counts["FROZEN"] / existing < 0.014
    assert 0.003 < counts["CLOSED"] / existing < 0.008
    assert 0.35 < counts["above"] / existing < 0.45
    assert 0.35 < counts["below"] / existing < 0.45
    assert 0.13 < counts["near"] / existing < 0.25


def test_dips_and_daily_variation() -> None:
    days = [DAY + dt.timedelta(days=i) for i in range(30)]
    factors = [bank_model.daily_factor(account_id_for(n), d) for n in range(1, 1001) for d in days]
    dips = sum(f < Decimal("0.6") for f in factors)
    assert 0.02 < dips / len(factors) < 0.04
    assert all(Decimal("0.475") <= f < Decimal("1.05") for f in factors)
    # some comfortably-above customers fail the odd day (a dip), most of their days pass
    occasional = 0
    for n in range(1, 1001):
        account_id = account_id_for(n)
        if bank_model.base_balance(account_id) < THRESHOLD * Decimal("1.2") or account_facts(account_id, DAY) is None:
            continue
        fails = sum(account_facts(account_id, d).amount < THRESHOLD for d in days)
        assert fails < 8
        occasional += fails > 0
    assert occasional > 10


def test_amount_two_decimals_half_up(population) -> None:
    for account_id, facts in population[:2000]:
        if facts is None:
            continue
        assert facts.amount == facts.amount.quantize(Decimal("0.01"))
        raw = bank_model.base_balance(account_id) * bank_model.daily_factor(account_id, DAY)
        assert facts.amount == raw.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def test_stable_across_calls_and_processes(population) -> None:
    sample = [account_id_for(n) for n in (1, 17, 4242, 77777, 999999)]
    again = {a: account_facts(a, DAY) for a in sample}
    assert again == {a: account_facts(a, DAY) for a in sample}
    code = (
        "import datetime, json, sys; from premium.simulators.bank_model import account_facts\n"
        f"ids = {sample!r}\n"
        "out = {a: (lambda f: None if f is None else [str(f.amount), f.currency, f.account_status, f.reference_id])"
        "(account_facts(a, datetime.date(2025, 11, 18))) for a in ids}\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(PLUGINS_DIR), "PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    other = json.loads(res.stdout)
    for a, f in again.items():
        assert other[a] == (None if f is None else [str(f.amount), f.currency, f.account_status, f.reference_id])


def test_dates_change_amount_and_reference() -> None:
    account_id = next(a for a in (account_id_for(n) for n in range(1, 100)) if account_facts(a, DAY))
    a, b = account_facts(account_id, DAY), account_facts(account_id, DAY + dt.timedelta(days=1))
    assert a.reference_id != b.reference_id and a.amount != b.amount
    assert (a.currency, a.account_status, a.customer_id) == (b.currency, b.account_status, b.customer_id)


@pytest.mark.parametrize("bad", ["ACC-1234-67890", "acc-12345-67890", "ACC-12345-6789X", "", "12345"])
def test_invalid_account_id_raises(bad: str) -> None:
    with pytest.raises(ValueError):
        account_facts(bad, DAY)


def test_balance_response_shape_and_timestamp() -> None:
    facts = bank_model.AccountFacts(
        account_id="ACC-12345-67890",
        customer_id="1234567890",
        as_of_date=dt.date(2025, 11, 18),
        amount=Decimal("25000.00"),
        currency="NIS",
        account_status="ACTIVE",
        reference_id="REF-123456789",
    )
    body = balance_response(facts, "21:00:00")
    assert body == {
        "accountId": "ACC-12345-67890",
        "customerId": "1234567890",
        "balance": {"amount": Decimal("25000.00"), "currency": "NIS", "asOfDate": "2025-11-18", "asOfTime": "21:00:00"},
        "accountStatus": "ACTIVE",
        "timestamp": "2025-11-18T19:00:00Z",  # Asia/Jerusalem is UTC+2 in November
        "referenceId": "REF-123456789",
    }
    raw = bank_model.dumps(body)
    assert b'"amount":25000.00,' in raw
    assert json.loads(raw, parse_float=Decimal)["balance"]["amount"] == Decimal("25000.00")
    assert bank_model.utc_timestamp(dt.date(2025, 7, 1), "22:00:00") == "2025-07-01T19:00:00Z"  # UTC+3 (DST)
    assert bank_model.utc_timestamp(dt.date(2025, 1, 1), "01:30:00") == "2024-12-31T23:30:00Z"


def test_error_table_and_body() -> None:
    assert ERRORS == {
        400: ("INVALID_REQUEST", "Invalid account ID format"),
        401: ("UNAUTHORIZED", "Authentication failed"),
        404: ("NOT_FOUND", "Account not found"),
        500: ("INTERNAL_ERROR", "Server error"),
        503: ("SERVICE_UNAVAILABLE", "Temporary unavailability"),
    }
    body = bank_model.error_body(404)
    assert body["error"] == {"code": "NOT_FOUND", "message": "Account not found", "status": 404}
    assert dt.datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert bank_model.error_body(400, "asOfDate missing")["error"]["message"] == "asOfDate missing"
