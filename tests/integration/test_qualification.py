"""The qualification SQL on fixture rows: every rule and edge, one outcome per customer."""

from __future__ import annotations

from datetime import date

import psycopg
import pytest

from premium.notifications.window import campaign_id_for
from premium.settings import SmsSettings
from premium.sms.qualify import qualify, window_start
from tests.support.customers import add_checks, add_customer

pytestmark = pytest.mark.integration

D = date(2025, 11, 30)


def outcomes(conninfo, day=D) -> dict[str, tuple[str, int, int]]:
    with psycopg.connect(**conninfo) as conn:
        return {
            r[0]: (r[1], r[2], r[3])
            for r in conn.execute(
                "SELECT customer_id, outcome, passing_checks, failing_checks FROM qualification_outcomes "
                "WHERE check_date = %s",
                (day,),
            )
        }


def test_every_rule_and_edge(db, app_db) -> None:
    conn = db
    cases = {
        "exactly_28": add_customer(conn, 1),
        "only_27": add_customer(conn, 2),
        "one_failing_day": add_customer(conn, 3),
        "outage_days": add_customer(conn, 4),
        "new_customer": add_customer(conn, 5),
        "inactive_customer": add_customer(conn, 6, status="INACTIVE"),
        "no_consent": add_customer(conn, 7, consent=False),
        "frozen_on_d": add_customer(conn, 8),
        "no_check_on_d": add_customer(conn, 9),
        "invalid_phone": add_customer(conn, 10, phone="02-6251234", phone_valid=False),
        "all_30": add_customer(conn, 11),
        "already_notified": add_customer(conn, 12),
        "failing_day_outside_window": add_customer(conn, 13),
        "foreign_currency_day": add_customer(conn, 14),
    }
    add_checks(conn, cases["exactly_28"], D, 30, skipped_days=(5, 17))
    add_checks(conn, cases["only_27"], D, 30, skipped_days=(1, 2, 3))
    add_checks(conn, cases["one_failing_day"], D, 30, failing_days=(12,))
    add_checks(conn, cases["outage_days"], D, 30, skipped_days=(20, 21))  # a 2-day bank outage
    add_checks(conn, cases["new_customer"], D, 10)
    add_checks(conn, cases["inactive_customer"], D, 30)
    add_checks(conn, cases["no_consent"], D, 30)
    add_checks(conn, cases["frozen_on_d"], D, 30, status_on_end="FROZEN")
    add_checks(conn, cases["no_check_on_d"], D, 30, skipped_days=(0,))
    add_checks(conn, cases["invalid_phone"], D, 30)
    add_checks(conn, cases["all_30"], D, 30)
    add_checks(conn, cases["already_notified"], D, 30)
    add_checks(conn, cases["failing_day_outside_window"], D, 31, failing_days=(30,))  # 31 days ago
    add_checks(conn, cases["foreign_currency_day"], D, 30)
    conn.execute(
        "UPDATE daily_balance_checks SET currency = 'USD', passes_threshold = false "
        "WHERE customer_id = %s AND check_date = %s",
        (cases["foreign_currency_day"], date(2025, 11, 20)),
    )
    conn.execute(
        """
        INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, language, template_id, encoding,
                                       segments, correlation_id)
        VALUES (%s, %s, %s, 'DELIVERED', 'he', 'premium_appreciation.he', 'UCS-2', 2, 'corr-earlier')
        """,
        (campaign_id_for(D), cases["already_notified"], date(2025, 11, 29)),
    )

    summary = qualify(app_db, D, "manual__test", SmsSettings())
    got = outcomes(app_db)
    expected = {
        "exactly_28": "qualified",
        "only_27": "too_few_checks",
        "one_failing_day": "below_threshold",
        "outage_days": "qualified",
        "new_customer": "too_few_checks",
        "inactive_customer": "not_active",
        "no_consent": "no_consent",
        "frozen_on_d": "account_not_active",
        "no_check_on_d": "no_check_today",
        "invalid_phone": "invalid_phone",
        "all_30": "qualified",
        "already_notified": "already_notified",
        "failing_day_outside_window": "qualified",
        "foreign_currency_day": "below_threshold",
    }
    assert {case: got[cid][0] for case, cid in cases.items()} == expected
    assert got[cases["exactly_28"]][1:] == (28, 0)
    assert got[cases["one_failing_day"]][1:] == (29, 1)
    assert summary.qualified == 4 and summary.campaign_id == "premium-monthly-nov-2025"
    assert window_start(D, SmsSettings()) == date(2025, 11, 1)


def test_month_boundary_starts_a_new_campaign(db, app_db) -> None:
    dec1 = date(2025, 12, 1)
    cid = add_customer(db, 1)
    add_checks(db, cid, dec1, 30)
    db.execute(
        """
        INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, language, template_id, encoding,
                                       segments, correlation_id)
        VALUES ('premium-monthly-nov-2025', %s, '2025-11-30', 'DELIVERED', 'he', 't', 'UCS-2', 2, 'c')
        """,
        (cid,),
    )
    summary = qualify(app_db, dec1, "manual__test", SmsSettings())
    assert summary.campaign_id == "premium-monthly-dec-2025"
    assert outcomes(app_db, dec1)[cid][0] == "qualified"  # notified in November, not in December


def test_the_same_date_notified_in_this_run_is_not_already_notified(db, app_db) -> None:
    cid = add_customer(db, 1)
    add_checks(db, cid, D, 30)
    db.execute(
        """
        INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, language, template_id, encoding,
                                       segments, correlation_id)
        VALUES (%s, %s, %s, 'QUEUED', 'he', 't', 'UCS-2', 2, 'c')
        """,
        (campaign_id_for(D), cid, D),
    )
    qualify(app_db, D, "manual__rerun", SmsSettings())
    assert outcomes(app_db)[cid][0] == "qualified"  # a rerun of D keeps its own outcome


def test_configurable_window_and_minimum(db, app_db) -> None:
    cid = add_customer(db, 1)
    add_checks(db, cid, D, 10)
    qualify(app_db, D, "r", SmsSettings(window_days=10, min_passing_checks=10))
    assert outcomes(app_db)[cid][0] == "qualified"
    qualify(app_db, D, "r", SmsSettings(window_days=12, min_passing_checks=11))
    assert outcomes(app_db)[cid][0] == "too_few_checks"
