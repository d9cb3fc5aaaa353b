"""30 consecutive days of premium_balance_daily (dag.test) against both simulators and PostgreSQL.

The expected SMS set is computed independently: from the simulator's documented balance model
and the synthetic generator's own record of which numbers are mobiles.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from premium.simulators import bank_model, carrier_model
from premium.synthetic import generate_rows
from tests.support import env
from tests.support.bank import connection_json, load_synthetic_customers
from tests.support.carrier import OPEN_WINDOW, carrier
from tests.support.carrier import connection_json as carrier_json

pytestmark = pytest.mark.integration

DAG_ID = "premium_balance_daily"
FIRST = date(2025, 11, 1)
DAYS = 30
COUNT, SEED = 120, 29
FAST = {
    "chunk_size": 50,
    "max_mapped_tasks": 2,
    "in_flight": 8,
    "backoff_multiplier_s": 0.001,
    "sms_backoff_multiplier_s": 0.001,
}
# Deployment settings: these runs are "on time" whatever today's date is, the window open at any hour.
ON_TIME = {"sms": {**OPEN_WINDOW, "max_lag_days": 100000}}


def logical(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 20, 0, tzinfo=UTC)  # 22:00 Asia/Jerusalem in winter


def expected_sms(rows: list[dict], last_day: date) -> set[str]:
    """Customers who qualify on some day of the month: 28 passing days, none failing, in the 30-day window."""
    import phonenumbers

    eligible: set[str] = set()
    for row in rows:
        if row["status"] != "ACTIVE" or row["sms_consent"] != "true":
            continue
        parsed = None
        try:
            parsed = phonenumbers.parse(row["phone_number"], "IL")
        except phonenumbers.NumberParseException:
            continue
        if not (
            phonenumbers.is_valid_number(parsed)
            and phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.MOBILE
        ):
            continue
        for offset in range(3):  # days 28, 29, 30 of the month are the only ones with a full window
            day = last_day - timedelta(days=offset)
            window = [day - timedelta(days=i) for i in range(30) if day - timedelta(days=i) >= FIRST]
            facts = [bank_model.account_facts(row["account_id"], d) for d in window]
            if facts[0] is None or facts[0].account_status != "ACTIVE":
                continue
            passing = [f for f in facts if f is not None and f.currency == "NIS" and f.amount >= 15000]
            failing = [f for f in facts if f is not None and not (f.currency == "NIS" and f.amount >= 15000)]
            if len(passing) >= 28 and not failing:
                eligible.add(row["customer_id"])
                break
    return eligible


@pytest.fixture
def world(db, app_db, tmp_path, airflow_db, bank, monkeypatch):
    load_synthetic_customers(app_db, tmp_path, COUNT, seed=SEED)
    monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps(ON_TIME))
    monkeypatch.setenv("AIRFLOW_CONN_CORE_BANKING", connection_json(bank))
    with carrier("primary", env.TEST_SMS_API_KEY) as sms:
        monkeypatch.setenv("AIRFLOW_CONN_SMS_CARRIER", carrier_json(sms, env.TEST_SMS_API_KEY))
        monkeypatch.delenv("AIRFLOW_CONN_SMS_CARRIER_SECONDARY", raising=False)
        yield app_db, sms


def received_customers(sms) -> list[str]:
    return [m["messageId"].rsplit("-", 2)[-2] for m in sms.call("GET", "/_sim/received")]


def test_thirty_days_give_exactly_the_expected_sms_set(world, monkeypatch) -> None:
    from tests.support.airflow import run_dag, task_states

    conninfo, sms = world
    last = FIRST + timedelta(days=DAYS - 1)
    for i in range(DAYS):
        day = FIRST + timedelta(days=i)
        dag_run = run_dag(DAG_ID, logical(day), FAST)
        assert str(dag_run.state) == "success", (day, task_states(dag_run))

    expected = expected_sms(list(generate_rows(COUNT, SEED)), last)
    got = received_customers(sms)
    invalid_at_carrier = {
        r["customer_id"]
        for r in generate_rows(COUNT, SEED)
        if r["customer_id"] in expected and carrier_model.invalid_at_submission(_e164(r["phone_number"]))
    }
    assert len(got) == len(set(got)), "a customer got two messages in one campaign"
    assert set(got) == expected - invalid_at_carrier
    assert expected, "the fixture should produce some premium customers"
    with psycopg.connect(**conninfo) as conn:
        per_day = dict(
            conn.execute(
                "SELECT check_date, qualified FROM sms_campaign_runs WHERE mode = 'SEND' ORDER BY check_date"
            ).fetchall()
        )
        notified = conn.execute("SELECT count(*) FROM sms_notifications").fetchone()[0]
    assert all(v == 0 for d, v in per_day.items() if d < FIRST + timedelta(days=27))  # < 28 checks possible
    assert notified == len(expected)

    # Clearing and rerunning the last day, and a late backfill of an earlier one, send nothing more.
    before = len(got)
    assert str(run_dag(DAG_ID, logical(last), FAST).state) == "success"
    monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps({"sms": OPEN_WINDOW}))  # the lag rail back on
    late_day = last - timedelta(days=1)
    assert str(run_dag(DAG_ID, logical(late_day), FAST).state) == "success"
    assert len(received_customers(sms)) == before
    assert _mode(conninfo, late_day) == "LATE_NO_SEND"

    # An operator authorises that date (who, why: audited); its rerun sends, and still nothing twice.
    from premium.cli import main as cli

    assert cli(["authorise-late-send", "--check-date", str(late_day), "--by", "ops:dana", "--reason", "INC-42"]) == 0
    assert str(run_dag(DAG_ID, logical(late_day), FAST).state) == "success"
    assert _mode(conninfo, late_day) == "SEND"
    assert len(received_customers(sms)) == before
    with psycopg.connect(**conninfo) as conn:
        audited = conn.execute(
            "SELECT details->>'authorised_by', details->>'reason' FROM audit_trail "
            "WHERE action = 'late_send_authorised' AND check_date = %s",
            (late_day,),
        ).fetchall()
    assert audited == [("ops:dana", "INC-42")]


def _mode(conninfo: dict, day: date) -> str:
    with psycopg.connect(**conninfo) as conn:
        return conn.execute("SELECT mode FROM sms_campaign_runs WHERE check_date = %s", (day,)).fetchone()[0]


def _e164(raw: str) -> str:
    import phonenumbers

    return phonenumbers.format_number(phonenumbers.parse(raw, "IL"), phonenumbers.PhoneNumberFormat.E164)


def test_dry_run_renders_and_records_but_sends_nothing(world) -> None:
    from tests.support.airflow import run_dag

    conninfo, sms = world
    with psycopg.connect(**conninfo) as conn:
        conn.execute(
            """
            INSERT INTO daily_balance_checks (account_id, check_date, customer_id, balance, currency, threshold,
                passes_threshold, account_status, check_timestamp, correlation_id)
            SELECT c.account_id, d::date, c.customer_id, 20000, 'NIS', 15000, true, 'ACTIVE', d, 'fixture'
            FROM customers c CROSS JOIN generate_series('2025-10-02'::date, '2025-10-30'::date, interval '1 day') d
            WHERE c.status = 'ACTIVE'
            """
        )
    dag_run = run_dag(DAG_ID, logical(date(2025, 10, 31)), {**FAST, "dry_run": True})
    assert str(dag_run.state) == "success"
    assert received_customers(sms) == []
    with psycopg.connect(**conninfo) as conn:
        mode, qualified = conn.execute(
            "SELECT mode, qualified FROM sms_campaign_runs WHERE check_date = '2025-10-31'"
        ).fetchone()
        rendered = conn.execute(
            "SELECT count(*) FROM qualification_outcomes WHERE check_date = '2025-10-31' AND outcome = 'qualified' "
            "AND segments IS NOT NULL AND encoding IS NOT NULL"
        ).fetchone()[0]
        outbox = conn.execute("SELECT count(*) FROM sms_notifications").fetchone()[0]
    assert mode == "DRY_RUN" and qualified > 0 and rendered == qualified and outbox == 0


@pytest.mark.parametrize(
    "hostile",
    [
        {
            "sms_bank_name": "Premium Bank: verify at https://premium-bank.example",
            "sms_callback_url": "https://x.example/c",
        },
        {"threshold_nis": 0, "sms_no_send_days": "", "sms_max_lag_days": 100000},
        {"chunk_size": 50, "sms_bank_nmae": "typo"},  # undeclared: refused, not ignored
    ],
)
def test_a_hostile_run_conf_is_refused_before_anything_is_fetched_or_sent(world, hostile) -> None:
    from tests.support.airflow import run_dag, task_states

    conninfo, sms = world
    dag_run = run_dag(DAG_ID, logical(date(2025, 11, 30)), {**FAST, **hostile})
    states = task_states(dag_run)
    assert str(dag_run.state) == "failed"
    assert states["plan_chunks"] == ["failed"]
    assert "success" not in {s for task, ss in states.items() for s in ss}
    assert sms.call("GET", "/_sim/received") == []
    with psycopg.connect(**conninfo) as conn:
        touched = conn.execute(
            "SELECT (SELECT count(*) FROM daily_balance_checks) + (SELECT count(*) FROM balance_check_runs) "
            "+ (SELECT count(*) FROM sms_notifications) + (SELECT count(*) FROM system_events)"
        ).fetchone()[0]
    assert touched == 0
