"""Send window, send mode, campaign ids and the §3.6 failure policy."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from premium.notifications import window
from premium.notifications.failures import classify, may_retry
from premium.notifications.outbox import batch_id_for, message_id_for
from premium.settings import SettingsError, SmsSettings


def test_campaign_id_is_the_check_dates_month() -> None:
    assert window.campaign_id_for(date(2025, 11, 18)) == "premium-monthly-nov-2025"
    assert window.campaign_id_for(date(2026, 1, 1)) == "premium-monthly-jan-2026"


def test_window_opens_at_nine_the_next_morning_in_jerusalem() -> None:
    at = window.send_after(date(2025, 11, 18), SmsSettings())  # a Tuesday
    assert at.isoformat() == "2025-11-19T09:00:00+02:00"


def test_saturday_moves_to_the_next_allowed_morning() -> None:
    friday = date(2025, 11, 21)  # D+1 is Saturday
    assert window.send_after(friday, SmsSettings()).date() == date(2025, 11, 23)
    no_weekend = SmsSettings(no_send_days=("friday", "saturday"))
    assert window.send_after(date(2025, 11, 20), no_weekend).date() == date(2025, 11, 23)


def test_summer_time_is_respected() -> None:
    assert window.send_after(date(2025, 7, 1), SmsSettings()).isoformat() == "2025-07-02T09:00:00+03:00"


@pytest.mark.parametrize(
    ("check_date", "decided_at", "mode"),
    [
        (date(2025, 11, 18), datetime(2025, 11, 18, 20, 5, tzinfo=UTC), window.SEND),  # the scheduled run
        (date(2025, 11, 18), datetime(2025, 11, 19, 10, 0, tzinfo=UTC), window.SEND),  # a rerun the next morning
        (date(2025, 11, 18), datetime(2025, 11, 20, 10, 0, tzinfo=UTC), window.LATE_NO_SEND),  # two days later
        (date(2025, 11, 3), datetime(2025, 11, 25, 10, 0, tzinfo=UTC), window.LATE_NO_SEND),  # a backfill
    ],
)
def test_late_runs_send_nothing(check_date, decided_at, mode) -> None:
    assert window.decide_mode(check_date, decided_at, SmsSettings(), dry_run=False) == mode


def test_dry_run_wins() -> None:
    at = datetime(2025, 11, 18, 20, 5, tzinfo=UTC)
    assert window.decide_mode(date(2025, 11, 18), at, SmsSettings(), dry_run=True) == window.DRY_RUN


def test_bad_sms_settings() -> None:
    with pytest.raises(SettingsError, match="batch_size"):
        SmsSettings(batch_size=100)
    with pytest.raises(SettingsError, match="no_send_days"):
        SmsSettings(no_send_days=("caturday",))
    with pytest.raises(SettingsError, match="send_time"):
        SmsSettings(send_time="25:00:00")


@pytest.mark.parametrize(
    ("code", "category", "retryable"),
    [
        ("21211", "invalid_number", False),
        ("21614", "carrier_reject", True),
        ("20429", "rate_limit", True),
        ("50001", "provider_error", True),
        ("50999", "provider_error", True),
        ("503", "network_error", True),
        ("51000", "unknown", False),
        (None, "unknown", False),
    ],
)
def test_failure_categories(code, category, retryable) -> None:
    policy = classify(code, SmsSettings())
    assert (policy.category, policy.retryable) == (category, retryable)


def test_retry_limits() -> None:
    s = SmsSettings()
    assert may_retry("21614", 1, s) and may_retry("21614", 2, s) and not may_retry("21614", 3, s)
    assert not may_retry("21614", 2, SmsSettings(carrier_reject_max_retries=1))
    assert may_retry("50001", 2, s) and not may_retry("50001", 3, s)  # at most 3 attempts
    assert not may_retry("21211", 1, s)


def test_ids_are_deterministic() -> None:
    assert message_id_for("premium-monthly-nov-2025", "42", 1) == "MSG-premium-monthly-nov-2025-42-1"
    assert batch_id_for(date(2025, 11, 18), 1) == "BATCH-20251118-001"
    assert batch_id_for(date(2025, 11, 18), 1234) == "BATCH-20251118-1234"
