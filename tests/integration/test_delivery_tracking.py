"""premium_delivery_tracking under dag.test(): a whole submission tracked to its end in seconds."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime

import phonenumbers
import psycopg
import pytest

from premium.crypto import aad_for
from premium.notifications import outbox
from premium.notifications.engine import submit
from premium.notifications.failures import may_retry
from premium.notifications.window import campaign_id_for
from premium.settings import SmsSettings
from premium.simulators import carrier_model
from premium.sms.qualify import qualify, render_qualified
from premium.sms.render import SmsRenderer
from tests.support import env
from tests.support.bank import KEYRING, load_synthetic_customers
from tests.support.carrier import OPEN_WINDOW, carrier, connection_json, endpoint, make_everyone_pass

pytestmark = pytest.mark.integration

D = date(2025, 11, 18)
CAMPAIGN = campaign_id_for(D)
FAST_TRACKING = {"campaign_id": CAMPAIGN, "poll_interval_s": 0.5}
SMS_FAST = SmsSettings(backoff_multiplier_s=0.001, **OPEN_WINDOW)

# §6.2 "SMS delivery rate by hour", unchanged
DELIVERY_RATE_SQL = """
SELECT
    DATE_TRUNC('hour', created_at) AS hour,
    COUNT(*) AS notifications_sent,
    COUNT(*) FILTER (WHERE status = 'Delivered') AS delivered,
    ROUND(100.0 * COUNT(*) FILTER (WHERE status = 'Delivered')
        / COUNT(*), 2) AS delivery_rate
FROM delivery_status
WHERE created_at >= CURRENT_TIMESTAMP - INTERVAL '24 hours'
GROUP BY DATE_TRUNC('hour', created_at)
ORDER BY hour DESC;
"""


@pytest.fixture
def submitted(db, app_db, tmp_path, airflow_db, monkeypatch):
    """A real submission of ~900 messages to a carrier simulator whose statuses settle in 0.3 s."""
    load_synthetic_customers(app_db, tmp_path, 1200, seed=5)
    make_everyone_pass(app_db, D)
    qualify(app_db, D, "manual__test", SmsSettings())
    render_qualified(app_db, D, KEYRING, SmsRenderer())
    with psycopg.connect(**app_db) as conn:
        outbox.write_outbox(conn, D, CAMPAIGN, "corr-test", keyring=KEYRING, renderer=SmsRenderer())
    with carrier("primary", env.TEST_SMS_API_KEY) as sim:
        monkeypatch.setenv("AIRFLOW_CONN_SMS_CARRIER", connection_json(sim, env.TEST_SMS_API_KEY))
        monkeypatch.delenv("AIRFLOW_CONN_SMS_CARRIER_SECONDARY", raising=False)
        monkeypatch.setenv(
            "AIRFLOW_VAR_PREMIUM_SETTINGS",
            json.dumps({"sms": {"backoff_multiplier_s": 0.001, **OPEN_WINDOW}, "delivery": {"window_s": 40}}),
        )
        submit(
            app_db,
            CAMPAIGN,
            SMS_FAST,
            {"primary": endpoint(sim, "primary", env.TEST_SMS_API_KEY)},
            KEYRING,
            "corr-test",
        )
        yield app_db, sim


def expected_final(conninfo) -> dict[str, tuple[str, int]]:
    """customer_id -> (final notification status, attempts), from the carrier model alone."""
    settings = SmsSettings()
    with psycopg.connect(**conninfo) as conn:
        rows = conn.execute(
            "SELECT n.customer_id, c.phone_enc, c.pii_key_id FROM sms_notifications n "
            "JOIN customers c USING (customer_id)"
        ).fetchall()
    out = {}
    for customer_id, phone_enc, key_id in rows:
        raw = KEYRING.decrypt(bytes(phone_enc), key_id, aad_for(customer_id, "phone_number"))
        phone = phonenumbers.format_number(phonenumbers.parse(raw, "IL"), phonenumbers.PhoneNumberFormat.E164)
        if carrier_model.invalid_at_submission(phone):
            out[customer_id] = ("UNDELIVERABLE", 1)
            continue
        attempt = 1
        while True:
            o = carrier_model.outcome_for(phone, attempt - 1)
            if o.status == "FAILED" and may_retry(o.status_code, attempt, settings):
                attempt += 1
                continue
            status = {"SENT": "UNCONFIRMED", "NO_STATUS": "UNCONFIRMED"}.get(o.status, o.status)
            out[customer_id] = (status, attempt)
            break
    return out


def test_a_submission_is_tracked_to_its_final_states(submitted) -> None:
    from tests.support.airflow import run_dag, task_states

    conninfo, sim = submitted
    dag_run = run_dag("premium_delivery_tracking", datetime.now(UTC), FAST_TRACKING)
    assert str(dag_run.state) == "success", task_states(dag_run)

    expected = expected_final(conninfo)
    with psycopg.connect(**conninfo) as conn:
        got = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT customer_id, status, attempts FROM sms_notifications")}
        open_rows = conn.execute("SELECT count(*) FROM delivery_status WHERE status_rank < 30").fetchone()[0]
        history_downgrades = conn.execute(
            """
            SELECT count(*) FROM delivery_status_history h
            WHERE h.from_status IN ('Delivered', 'Failed', 'Undeliverable', 'Unconfirmed')
            """
        ).fetchone()[0]
        counts = conn.execute("SELECT counts FROM delivery_tracking_runs").fetchone()[0]
        # every message's current status is the last step of its history
        history_mismatches = conn.execute(
            """
            SELECT count(*) FROM delivery_status d
            WHERE d.status IS DISTINCT FROM (
                SELECT h.to_status FROM delivery_status_history h WHERE h.message_id = d.message_id
                ORDER BY h.id DESC LIMIT 1)
            """
        ).fetchone()[0]
        sources = {r[0] for r in conn.execute("SELECT DISTINCT source FROM delivery_status_history")}
    assert got == expected
    classes = Counter(v[0] for v in got.values())
    assert {"DELIVERED", "UNDELIVERABLE", "UNCONFIRMED"} <= set(classes), classes
    assert any(a > 1 for _, a in got.values()), "some failures should have been retried"
    assert all(a <= 3 for _, a in got.values())
    assert open_rows == 0 and history_downgrades == 0
    assert history_mismatches == 0 and sources == {"submission", "poll", "expiry"}
    assert counts["delivered"] == classes["DELIVERED"] and counts["retried"] == sum(1 for _, a in got.values() if a > 1)
    # never twice to the carrier for one attempt
    ids = [m["messageId"] for m in sim.call("GET", "/_sim/received")]
    assert len(ids) == len(set(ids))
    with psycopg.connect(**conninfo) as conn:
        assert len(ids) == conn.execute("SELECT count(*) FROM delivery_status").fetchone()[0]

    # §6.2's delivery-rate query, unchanged, on this run's data
    with psycopg.connect(**conninfo) as conn:
        rows = conn.execute(DELIVERY_RATE_SQL).fetchall()
        total, delivered = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'Delivered') FROM delivery_status"
        ).fetchone()
    assert sum(r[1] for r in rows) == total and sum(r[2] for r in rows) == delivered
    assert delivered == classes["DELIVERED"]
    if len(rows) == 1:
        assert float(rows[0][3]) == round(100.0 * delivered / total, 2)


def test_the_sms_submissions_event_carries_what_tracking_needs(submitted) -> None:
    from premium.delivery.tasks import submissions_of

    class Event:
        def __init__(self, extra):
            self.extra = extra

    ctx = {
        "triggering_asset_events": {
            "sms_submissions": [
                Event({"campaign_id": CAMPAIGN, "batch_ids": ["BATCH-20251118-001"], "check_date": D.isoformat()}),
                Event({"campaign_id": CAMPAIGN, "batch_ids": ["BATCH-20251118-002", "BATCH-20251118-001"]}),
            ]
        }
    }
    assert submissions_of(ctx) == (CAMPAIGN, ["BATCH-20251118-001", "BATCH-20251118-002"], [D])
