"""The SMS-carrier simulator's deterministic delivery model (premium.simulators.carrier_model)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from premium.simulators import carrier_model as cm
from premium.simulators.carrier_model import Outcome, invalid_at_submission, outcome_for, status_at

PLUGINS_DIR = Path(cm.__file__).resolve().parents[2]
N_NUMBERS = 50_000


def numbers(n: int, prefix: str = "+97252") -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(n)]


# -- an independent implementation of the rules written in the module docstring ----------------


def _H(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest(), "big")


def _U(s: str) -> float:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") / 2**64


def _expected(phone: str, k: int) -> tuple[str, str | None]:
    u = _U(f"outcome|{phone}|{k}")
    if u < 0.89:
        return "DELIVERED", "0"
    if u < 0.92:
        return "FAILED", "21614"
    if u < 0.94:
        return "FAILED", str(50001 + _H(f"provider|{phone}|{k}") % 999)
    if u < 0.96:
        return "UNDELIVERABLE", "21211"
    if u < 0.98:
        return "SENT", None
    return "NO_STATUS", None


def vars_of(o: Outcome) -> tuple[str, str | None, str]:
    return o.status, o.status_code, o.status_message


@pytest.fixture(scope="module")
def population() -> list[tuple[str, bool, Outcome]]:
    return [(p, invalid_at_submission(p), outcome_for(p, 0)) for p in numbers(N_NUMBERS)]


def test_matches_documented_rules() -> None:
    for phone in numbers(3000, "+97254"):
        assert invalid_at_submission(phone) == (phone.startswith("+972500000") or _H("invalid|" + phone) % 100 == 0)
        for k in (0, 1, 7):
            o = outcome_for(phone, k)
            assert (o.status, o.status_code) == _expected(phone, k), (phone, k)
    assert invalid_at_submission("+972500000123") and invalid_at_submission("+9725000009999")
    assert not all(invalid_at_submission(p) for p in ("+972500001123", "+972510000123"))


def test_deterministic_within_and_across_processes() -> None:
    sample = ["+972521234567", "+972541111111", "+14155550123", "+447700900123", "+972500000001"]
    here = {p: [invalid_at_submission(p), *[list(vars_of(outcome_for(p, k))) for k in range(4)]] for p in sample}
    assert here == {
        p: [invalid_at_submission(p), *[list(vars_of(outcome_for(p, k))) for k in range(4)]] for p in sample
    }
    code = (
        "import json; from premium.simulators.carrier_model import invalid_at_submission, outcome_for\n"
        f"sample = {sample!r}\n"
        "out = {p: [invalid_at_submission(p), *[[o.status, o.status_code, o.status_message] "
        "for o in (outcome_for(p, k) for k in range(4))]] for p in sample}\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(PLUGINS_DIR), "PYTHONHASHSEED": "4242", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(res.stdout) == here


def test_shares(population) -> None:
    invalid = sum(bad for _, bad, _ in population)
    assert 0.008 < invalid / N_NUMBERS < 0.012
    valid = [o for _, bad, o in population if not bad]
    counts: Counter[str] = Counter()
    for o in valid:
        if o.status == "FAILED":
            counts["21614" if o.status_code == "21614" else "5xxxx"] += 1
        else:
            counts[o.status] += 1
    share = {k: v / len(valid) for k, v in counts.items()}
    expected = {"DELIVERED": 0.89, "21614": 0.03, "5xxxx": 0.02, "UNDELIVERABLE": 0.02, "SENT": 0.02, "NO_STATUS": 0.02}
    assert set(share) == set(expected)
    for key, want in expected.items():
        assert abs(share[key] - want) < (0.01 if key == "DELIVERED" else 0.004), (key, share[key])
    overall_delivered = counts["DELIVERED"] / N_NUMBERS
    assert 0.87 < overall_delivered < 0.89  # ≈88% of all numbers, invalid ones included


def test_provider_error_codes(population) -> None:
    codes = {o.status_code for _, _, o in population if o.status == "FAILED" and o.status_code != "21614"}
    assert len(codes) > 200  # spread over the range
    assert all(50001 <= int(c) <= 50999 for c in codes)
    assert {o.status_message for _, _, o in population if o.status_code in codes} == {"Provider error"}


def test_retry_of_failed_number_usually_delivered(population) -> None:
    failed = [p for p, bad, o in population if not bad and o.status == "FAILED"]
    assert len(failed) > 1500
    retried = Counter(outcome_for(p, 1).status for p in failed)
    delivered = retried["DELIVERED"] / len(failed)
    assert 0.85 < delivered < 0.93  # usually ...
    assert retried["FAILED"] > 0  # ... not always
    # a third attempt is again an independent draw
    third = Counter(outcome_for(p, 2).status for p in failed if outcome_for(p, 1).status == "FAILED")
    assert third["DELIVERED"] > 0


def test_outcome_fields() -> None:
    delivered = next(o for o in (outcome_for(p, 0) for p in numbers(100)) if o.status == "DELIVERED")
    assert delivered == Outcome("DELIVERED", "0", "Message successfully delivered") and delivered.final
    by_status = {}
    for phone in numbers(2000):
        o = outcome_for(phone, 0)
        by_status.setdefault((o.status, o.status_code if o.status_code in ("0", "21614", "21211", None) else "5"), o)
    assert by_status[("FAILED", "21614")].status_message == "SMS rejected by carrier"
    assert by_status[("UNDELIVERABLE", "21211")].status_message == "Invalid phone number"
    assert by_status[("FAILED", "5")].final and by_status[("UNDELIVERABLE", "21211")].final
    assert not by_status[("SENT", None)].final and not by_status[("NO_STATUS", None)].final


@pytest.mark.parametrize(
    ("status", "elapsed", "expected"),
    [
        ("DELIVERED", 0.0, "QUEUED"),
        ("DELIVERED", 4.99, "QUEUED"),
        ("DELIVERED", 5.0, "SENT"),
        ("DELIVERED", 29.9, "SENT"),
        ("DELIVERED", 30.0, "DELIVERED"),
        ("FAILED", 31.0, "FAILED"),
        ("UNDELIVERABLE", 1e9, "UNDELIVERABLE"),
        ("SENT", 1.0, "QUEUED"),
        ("SENT", 1e9, "SENT"),
        ("NO_STATUS", 1.0, "QUEUED"),
        ("NO_STATUS", 6.0, "NO_STATUS"),
        ("NO_STATUS", 1e9, "NO_STATUS"),
    ],
)
def test_status_at(status: str, elapsed: float, expected: str) -> None:
    outcome = Outcome(status, None, "x")
    assert status_at(outcome, elapsed, cm.DEFAULT_SENT_AFTER_S, cm.DEFAULT_FINAL_AFTER_S) == expected


def test_status_fields() -> None:
    failed = Outcome("FAILED", "21614", "SMS rejected by carrier")
    assert cm.status_fields(failed, "QUEUED") == (None, "Awaiting send")
    assert cm.status_fields(failed, "SENT") == (None, "Sent to carrier network")
    assert cm.status_fields(failed, "FAILED") == ("21614", "SMS rejected by carrier")
    assert cm.status_fields(Outcome("NO_STATUS", None, "x"), "NO_STATUS") == (None, "No update from carrier")


def test_tracking_ids() -> None:
    assert cm.tracking_id("primary", 1) == "PRIMARY-TRACK-00000001"
    assert cm.tracking_id("secondary", 12345678) == "SECONDARY-TRACK-12345678"
    assert cm.tracking_prefix("carrier b_2") == "CARRIER-B-2-TRACK-"
    with pytest.raises(ValueError):
        cm.tracking_prefix("--")
