"""The audit trail: every external call in system_events (bulk, masked), decisions and sends in audit_trail."""

from __future__ import annotations

import logging
import re
import time
from datetime import date

import psycopg
import pytest

from premium.audit import BANKING_API_CALL, AuditLog, AuditWriter, copy_to_db
from premium.banking import stage
from premium.notifications import outbox
from premium.notifications.engine import submit
from premium.notifications.window import campaign_id_for
from premium.settings import BalanceSettings, SmsSettings
from premium.sms.qualify import qualify, render_qualified
from premium.sms.render import SmsRenderer
from tests.support import env
from tests.support.bank import KEYRING, endpoint_for, load_synthetic_customers
from tests.support.carrier import OPEN_WINDOW, carrier, endpoint, make_everyone_pass

pytestmark = pytest.mark.integration

DAY = date(2025, 11, 18)

# §6.2 "Banking API health last 24 hours", unchanged
BANKING_HEALTH_SQL = """
SELECT
    DATE(event_data->>'timestamp') AS date,
    COUNT(*) AS total_calls,
    COUNT(*) FILTER (WHERE event_data->>'status' ~ '^(2|3)')
        AS successful_calls,
    ROUND(100.0 * COUNT(*) FILTER (WHERE event_data->>'status' ~ '^(2|3)')
        / COUNT(*), 2) AS success_rate
FROM system_events
WHERE event_type = 'banking_api_call'
  AND created_at >= CURRENT_TIMESTAMP - INTERVAL '24 hours'
GROUP BY DATE(event_data->>'timestamp');
"""


def test_every_bank_call_is_audited_masked_and_the_health_query_is_right(db, app_db, tmp_path, bank) -> None:
    load_synthetic_customers(app_db, tmp_path, 300, seed=4)
    bank.set_faults({"error_rates": {"503": 0.2}})
    settings = BalanceSettings(chunk_size=50, max_mapped_tasks=2, in_flight=8, backoff_multiplier_s=0.001)
    descriptors = stage.plan_run(app_db, DAY, "manual__audit", settings)
    corr = stage.correlation_id_for("manual__audit", DAY)
    summaries = [stage.fetch_chunk(app_db, d, DAY, settings, endpoint_for(bank), corr) for d in descriptors]
    requests = sum(s.requests for s in summaries)
    sim = bank.stats()
    with psycopg.connect(**app_db) as conn:
        events = conn.execute("SELECT event_data FROM system_events WHERE event_type = 'banking_api_call'").fetchall()
        health = conn.execute(BANKING_HEALTH_SQL).fetchall()
        accounts = [r[0] for r in conn.execute("SELECT account_id FROM customers")]
    assert len(events) == requests == sim["requests_total"]
    assert {e[0]["correlation_id"] for e in events} == {corr}
    assert all(set(e[0]) >= {"timestamp", "endpoint", "method", "status", "duration_ms", "attempt"} for e in events)
    text = " ".join(str(e[0]) for e in events)
    assert not any(a in text for a in accounts), "an account id reached the audit unmasked"
    assert re.search(r"ACC-\d\*\*\*\*\d{3}", text)
    # the §6.2 query, unchanged, gives the simulator's own figures
    ok = sum(n for s, n in sim["by_status"].items() if s.startswith(("2", "3")))
    assert len(health) == 1
    _, total, successful, rate = health[0]
    assert (total, successful) == (sim["requests_total"], ok)
    assert float(rate) == round(100.0 * ok / total, 2)
    assert sum(1 for e in events if e[0]["attempt"] > 1) > 0  # retries are recorded with their attempt


def test_decisions_and_sends_are_queryable_by_customer_and_correlation_id(db, app_db, tmp_path) -> None:
    load_synthetic_customers(app_db, tmp_path, 600, seed=8)
    make_everyone_pass(app_db, DAY)
    campaign = campaign_id_for(DAY)
    qualify(app_db, DAY, "manual__audit", SmsSettings())
    render_qualified(app_db, DAY, KEYRING, SmsRenderer())
    with psycopg.connect(**app_db) as conn:
        created = outbox.write_outbox(
            conn, DAY, campaign, "corr-audit", "manual__audit", keyring=KEYRING, renderer=SmsRenderer()
        )
    with carrier("primary", env.TEST_SMS_API_KEY) as sim:
        summary = submit(
            app_db,
            campaign,
            SmsSettings(backoff_multiplier_s=0.001, **OPEN_WINDOW),
            {"primary": endpoint(sim, "primary", env.TEST_SMS_API_KEY)},
            KEYRING,
            "corr-audit",
        )
    with psycopg.connect(**app_db) as conn:
        by_action = dict(conn.execute("SELECT action, count(*) FROM audit_trail GROUP BY 1").fetchall())
        one = conn.execute("SELECT customer_id FROM sms_notifications ORDER BY customer_id LIMIT 1").fetchone()[0]
        trail = conn.execute(
            "SELECT action, outcome, dag_run_id FROM audit_trail WHERE customer_id = %s ORDER BY id", (one,)
        ).fetchall()
        by_corr = conn.execute("SELECT count(*) FROM audit_trail WHERE correlation_id = 'corr-audit'").fetchone()[0]
        posts = conn.execute("SELECT count(*) FROM system_events WHERE event_type = 'sms_api_call'").fetchone()[0]
        details = " ".join(str(r[0]) for r in conn.execute("SELECT details FROM audit_trail"))
    assert by_action["notification_decided"] == created
    assert by_action["sms_submitted"] == summary.messages_accepted + summary.messages_rejected
    assert trail[0][:2] == ("notification_decided", "notify") and trail[0][2] == "manual__audit"
    assert trail[1][0] == "sms_submitted" and trail[1][1] in ("accepted", "rejected:21211")
    assert by_corr == created + summary.messages_accepted + summary.messages_rejected
    assert posts == summary.post_attempts
    assert "+972" not in details  # no phone numbers in the trail


# -- the audit writer: its own connection, apart from the work ------------------------------------


def _record(audit: AuditLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        audit.record(BANKING_API_CALL, endpoint=f"/e/{i}", method="GET", status=200, duration_ms=1.0)


def _endpoints(db) -> list[str]:
    return [r[0] for r in db.execute("SELECT event_data->>'endpoint' FROM system_events ORDER BY 1")]


def _until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_full_buffer_is_written_without_waiting_for_the_tick(db, app_db) -> None:
    audit = AuditLog()
    with AuditWriter(audit, app_db, interval_s=3600, flush_at=20) as writer:
        _record(audit, 19)
        _record(audit, 1, start=19)  # the 20th wakes the writer
        _until(lambda: writer.written == 20, "the writer did not write a full buffer")
        assert len(_endpoints(db)) == 20  # committed on its own, while the work goes on
    assert writer.written == 20 and writer.failures == 0


def test_a_failed_write_is_kept_and_written_on_the_next_tick(db, app_db, caplog) -> None:
    audit = AuditLog()
    calls = {"n": 0}

    def sink(events):
        calls["n"] += 1
        if calls["n"] == 1:
            raise psycopg.OperationalError("the server closed the connection")
        copy_to_db(app_db, events)

    with AuditWriter(audit, sink=sink, interval_s=0.05) as writer:
        _record(audit, 30)
        _until(lambda: writer.written == 30, "the events of the failed write were not written again")
        _record(audit, 5, start=30)
    assert writer.failures == 1 and writer.written == 35
    assert _endpoints(db) == sorted(f"/e/{i}" for i in range(35))  # none lost, none twice
    assert "could not write 30 audit events (OperationalError)" in caplog.text


def test_the_last_events_are_written_when_the_work_fails(db, app_db) -> None:
    audit = AuditLog()
    with pytest.raises(RuntimeError, match="chunk failed"), AuditWriter(audit, app_db, interval_s=3600):
        _record(audit, 7)
        raise RuntimeError("chunk failed")
    assert len(_endpoints(db)) == 7


def test_events_that_cannot_be_written_at_the_end_are_logged_and_kept(caplog) -> None:
    audit = AuditLog()

    def down(events):
        raise psycopg.OperationalError("connection refused")

    caplog.set_level(logging.WARNING, logger="premium.audit")
    with AuditWriter(audit, sink=down, interval_s=0.01) as writer:
        _record(audit, 3)
    assert len(audit) == 3 and writer.written == 0
    assert "3 audit events could not be written" in caplog.text
    assert "/e/" not in caplog.text  # counts and error types only, never event data
