"""§6.1/§6.2 monitoring on known data in real PostgreSQL: the two §6.2 queries as written, the six
metrics (window and per run), each threshold breached and not, the premium_monitoring DAG
(alerts to real SMTP/HTTP sinks, repeats suppressed), the Prometheus endpoint on a real API
server, and the StatsD gauges on a real UDP socket."""

from __future__ import annotations

import itertools
import json
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import psycopg
import pytest

from premium import monitoring as m
from premium.notifications.state import CARRIER_STATUSES
from premium.settings import MonitoringSettings
from tests.integration.test_alerting import HttpSink, SmtpSink

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")]

RANK = {ours: rank for ours, rank in CARRIER_STATUSES.values()}
MIRROR = {"Queued": "QUEUED", "NoStatus": "NO_STATUS", "Sent": "SENT", "Delivered": "DELIVERED",
          "Failed": "FAILED", "Undeliverable": "UNDELIVERABLE", "Unconfirmed": "UNCONFIRMED"}  # fmt: skip
_seq = itertools.count(1)


# -- known data ------------------------------------------------------------------------------------


def event(
    conn: psycopg.Connection,
    event_type: str,
    status: str | int | None,
    created_at: datetime,
    *,
    timestamp: datetime | str | None = None,
    duration_ms: float = 100.0,
    correlation_id: str | None = "corr-1",
    **extra,
) -> None:
    """One system_events row shaped like premium.audit's (timestamp defaults to created_at)."""
    ts = timestamp if isinstance(timestamp, str) else (timestamp or created_at).isoformat()
    data = {
        "timestamp": ts,
        "endpoint": "/x",
        "method": "GET",
        "status": None if status is None else str(status),
        "error_code": None,
        "duration_ms": duration_ms,
        "attempt": 1,
        "correlation_id": correlation_id,
        **extra,
    }
    conn.execute(
        "INSERT INTO system_events (event_type, event_data, created_at) VALUES (%s, %s, %s)",
        (event_type, json.dumps(data), created_at),
    )


def messages(
    conn: psycopg.Connection, campaign: str, statuses: dict[str, int], created_at: datetime, carrier="primary"
):
    """delivery_status rows (with their batch, notifications and messages) of ``campaign``."""
    seq = next(_seq)
    batch_id = f"BATCH-MON-{seq:05d}"
    total = sum(statuses.values())
    conn.execute(
        "INSERT INTO sms_batches (batch_id, campaign_id, check_date, seq, carrier, status, messages, correlation_id, "
        "submitted_at) VALUES (%s, %s, '2025-11-18', %s, %s, 'ACCEPTED', %s, 'sub-1', %s)",
        (batch_id, campaign, seq, carrier, total, created_at),
    )
    for status, count in statuses.items():
        for _ in range(count):
            n = next(_seq)
            message_id, tracking_id, customer_id = f"MSG-MON-{n}", f"TRK-MON-{n}", str(900000 + n)
            (notification_id,) = conn.execute(
                "INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, attempts, "
                "current_message_id, language, template_id, encoding, segments, correlation_id, updated_at) "
                "VALUES (%s, %s, '2025-11-18', %s, 1, %s, 'he', 'balance_he', 'UCS2', 1, 'sub-1', %s) "
                "RETURNING notification_id",
                (campaign, customer_id, MIRROR[status], message_id, created_at),
            ).fetchone()
            conn.execute(
                "INSERT INTO sms_messages (message_id, notification_id, campaign_id, customer_id, attempt, batch_id, "
                "carrier, tracking_id, status, encoding, segments, correlation_id, submitted_at) "
                "VALUES (%s, %s, %s, %s, 1, %s, %s, %s, %s, 'UCS2', 1, 'sub-1', %s)",
                (message_id, notification_id, campaign, customer_id, batch_id, carrier, tracking_id, MIRROR[status],
                 created_at),
            )  # fmt: skip
            conn.execute(
                "INSERT INTO delivery_status (message_id, notification_id, campaign_id, customer_id, carrier, "
                "tracking_id, status, status_rank, last_source, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'poll', %s)",
                (message_id, notification_id, campaign, customer_id, carrier, tracking_id, status, RANK[status],
                 created_at),
            )  # fmt: skip


def exhausted(conn: psycopg.Connection, campaign: str, count: int, updated_at: datetime, status="FAILED") -> None:
    """Notifications of ``campaign`` that ended ``status`` at ``updated_at`` (no message needed)."""
    for _ in range(count):
        conn.execute(
            "INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, attempts, language, "
            "template_id, encoding, segments, correlation_id, updated_at) "
            "VALUES (%s, %s, '2025-11-18', %s, 3, 'he', 'balance_he', 'UCS2', 1, 'sub-1', %s)",
            (campaign, str(800000 + next(_seq)), status, updated_at),
        )


def webhooks(conn: psycopg.Connection, statuses: list[int], start: datetime, step_s: float = 1.0) -> None:
    """webhook_received events in this order (timestamps ``step_s`` apart)."""
    for i, status in enumerate(statuses):
        at = start + timedelta(seconds=i * step_s)
        event(conn, "webhook_received", status, at, correlation_id=None, webhook_id=f"evt_{i}")


def pcont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont."""
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


@pytest.fixture
def now(db) -> datetime:
    return db.execute("SELECT date_trunc('second', now())").fetchone()[0]


# -- §6.2 as written -------------------------------------------------------------------------------


def test_banking_api_health_query_on_known_data(db, now) -> None:
    recent = now - timedelta(hours=2)
    for status, count in {"200": 5, "204": 1, "302": 1, "404": 2, "500": 1, "timeout": 2}.items():
        for _ in range(count):
            event(db, "banking_api_call", status, recent, timestamp="2025-11-18T21:30:00.123000+00:00")
    for status, count in {"200": 3, "503": 1}.items():
        for _ in range(count):
            event(db, "banking_api_call", status, now - timedelta(hours=23), timestamp="2025-11-17T22:00:01+00:00")
    event(db, "banking_api_call", "200", now - timedelta(hours=25), timestamp="2025-11-16T22:00:00+00:00")  # too old
    event(db, "sms_api_call", "202", recent, timestamp="2025-11-18T09:00:00+00:00")  # not a banking call
    rows = sorted(m.banking_api_health(db), key=lambda r: r["date"])
    assert [(str(r["date"]), r["total_calls"], r["successful_calls"], r["success_rate"]) for r in rows] == [
        ("2025-11-17", 4, 3, Decimal("75.00")),
        ("2025-11-18", 12, 7, Decimal("58.33")),
    ]


def test_sms_delivery_rate_by_hour_query_on_known_data(db, now) -> None:
    hour = db.execute("SELECT date_trunc('hour', now())").fetchone()[0]
    h1, h3 = hour - timedelta(hours=1), hour - timedelta(hours=3)
    messages(db, "CAMP-A", {"Delivered": 3, "Failed": 1}, h1 + timedelta(minutes=10))
    messages(db, "CAMP-B", {"Delivered": 2, "Sent": 1}, h1 + timedelta(minutes=50))
    messages(db, "CAMP-A", {"Delivered": 1, "Undeliverable": 1, "Queued": 1}, h3 + timedelta(minutes=5))
    messages(db, "CAMP-OLD", {"Delivered": 5}, now - timedelta(hours=25))
    rows = m.sms_delivery_rate_by_hour(db)
    assert [(r["hour"], r["notifications_sent"], r["delivered"], r["delivery_rate"]) for r in rows] == [
        (h1, 7, 5, Decimal("71.43")),
        (h3, 3, 1, Decimal("33.33")),
    ]


# -- the six metrics -------------------------------------------------------------------------------


def test_metrics_over_the_window_and_per_run(db, now) -> None:
    start, end = now - timedelta(hours=24), now
    t = now - timedelta(hours=3)
    # Banking, run bal-A: 8 answered of 11 (404 is an answer; 500, timeout, connection_error are not).
    a_durations = [100, 120, 140, 160, 180, 200, 220, 400]
    for d in a_durations[:7]:
        event(db, "banking_api_call", 200, t, duration_ms=d, correlation_id="bal-A")
    event(db, "banking_api_call", 404, t, duration_ms=a_durations[7], correlation_id="bal-A")
    event(db, "banking_api_call", 500, t, duration_ms=900, correlation_id="bal-A")
    event(db, "banking_api_call", "timeout", t, duration_ms=30000, correlation_id="bal-A")
    event(db, "banking_api_call", "connection_error", t, duration_ms=3, correlation_id="bal-A")
    # Run bal-B: 4 of 5 (429 is unavailability); breaker_open is no call at all.
    for d in (50, 60, 70, 80):
        event(db, "banking_api_call", 200, t, duration_ms=d, correlation_id="bal-B")
    event(db, "banking_api_call", 429, t, duration_ms=10, correlation_id="bal-B")
    event(db, "banking_api_call", "breaker_open", t, duration_ms=0, correlation_id="bal-B")
    event(db, "banking_api_call", 500, now - timedelta(hours=25), correlation_id="bal-OLD")  # outside
    # Carrier: primary POSTs 202 x3, 400 (an answer), 503, no_answer; polls 200 x4 -> 8 of 10.
    for status, count in {"202": 3, "400": 1, "503": 1, "no_answer": 1}.items():
        for _ in range(count):
            event(db, "sms_api_call", status, t, correlation_id="sub-1", carrier="primary")
    for _ in range(4):
        event(db, "sms_status_poll", 200, t, correlation_id="trk-1", carrier="primary")
    event(db, "sms_api_call", 202, t, correlation_id="sub-1", carrier="secondary")
    event(db, "sms_api_call", "breaker_open", t, correlation_id="sub-1", carrier="secondary")
    # Deliveries: CAMP-1 3 of 4 final (2 in flight), CAMP-2 1 of 2 final.
    messages(db, "CAMP-1", {"Delivered": 3, "Failed": 1, "Sent": 1, "Queued": 1}, t)
    messages(db, "CAMP-2", {"Delivered": 1, "Unconfirmed": 1}, t)
    messages(db, "CAMP-OLD", {"Failed": 4}, now - timedelta(hours=30))
    # Retry exhaustion: CAMP-1 1 (its Failed message) + 2, CAMP-2 1; old ones and UNDELIVERABLE don't count.
    exhausted(db, "CAMP-1", 2, t)
    exhausted(db, "CAMP-2", 1, t)
    exhausted(db, "CAMP-OLD", 3, now - timedelta(hours=30))
    exhausted(db, "CAMP-2", 2, t, status="UNDELIVERABLE")
    webhooks(db, [200, 401, 401, 200, 202], t)

    got = {
        (x.name, x.scope, x.subject, tuple(sorted(x.labels.items()))): (x.value, x.samples)
        for x in m.compute(db, start, end)
    }
    timed_a = [*a_durations, 900, 30000]
    timed = timed_a + [50, 60, 70, 80, 10]
    assert got == {
        (m.BANKING_AVAILABILITY, "window", "", ()): (round(100 * 12 / 16, 4), 16),
        (m.BANKING_P95, "window", "", ()): (pytest.approx(pcont(timed, 0.95) / 1000), 15),
        (m.BANKING_AVAILABILITY, "run", "bal-A", ()): (round(100 * 8 / 11, 4), 11),
        (m.BANKING_P95, "run", "bal-A", ()): (pytest.approx(pcont(timed_a, 0.95) / 1000), 10),
        (m.BANKING_AVAILABILITY, "run", "bal-B", ()): (80.0, 5),
        (m.BANKING_P95, "run", "bal-B", ()): (pytest.approx(pcont([50, 60, 70, 80, 10], 0.95) / 1000), 5),
        (m.CARRIER_AVAILABILITY, "window", "", (("carrier", "primary"),)): (80.0, 10),
        (m.CARRIER_AVAILABILITY, "window", "", (("carrier", "secondary"),)): (100.0, 1),
        (m.CARRIER_AVAILABILITY, "run", "sub-1", ()): (round(100 * 5 / 7, 4), 7),
        (m.CARRIER_AVAILABILITY, "run", "trk-1", ()): (100.0, 4),
        (m.DELIVERY_RATE, "window", "", ()): (round(100 * 4 / 6, 4), 6),
        (m.DELIVERY_IN_FLIGHT, "window", "", ()): (2.0, 8),
        (m.DELIVERY_RATE, "run", "CAMP-1", ()): (75.0, 4),
        (m.DELIVERY_IN_FLIGHT, "run", "CAMP-1", ()): (2.0, 6),
        (m.DELIVERY_RATE, "run", "CAMP-2", ()): (50.0, 2),
        (m.DELIVERY_IN_FLIGHT, "run", "CAMP-2", ()): (0.0, 2),
        (m.RETRY_EXHAUSTION, "window", "", ()): (4.0, 4),
        (m.RETRY_EXHAUSTION, "run", "CAMP-1", ()): (3.0, 3),
        (m.RETRY_EXHAUSTION, "run", "CAMP-2", ()): (1.0, 1),
        (m.WEBHOOK_FAILURES, "window", "", ()): (2.0, 5),
        (m.WEBHOOK_FAILURES_CURRENT, "window", "", ()): (0.0, 5),
    }


def test_an_empty_window_has_no_values_and_breaches_nothing(db, now) -> None:
    metrics = m.compute(db, now - timedelta(hours=24), now)
    values = {(x.name, x.scope): x.value for x in metrics}
    assert values == {
        (m.BANKING_AVAILABILITY, "window"): None,
        (m.BANKING_P95, "window"): None,
        (m.DELIVERY_RATE, "window"): None,
        (m.DELIVERY_IN_FLIGHT, "window"): 0.0,
        (m.RETRY_EXHAUSTION, "window"): 0.0,
        (m.WEBHOOK_FAILURES, "window"): 0.0,
        (m.WEBHOOK_FAILURES_CURRENT, "window"): 0.0,
    }
    assert m.evaluate(metrics, MonitoringSettings()) == []


def test_consecutive_webhook_failures_follow_arrival_time_not_insertion_order(db, now) -> None:
    t = now - timedelta(hours=1)
    # Inserted out of order: by timestamp the sequence is 200, 401 x6, 200, 503 x2 (ends failing).
    seq = [200, 401, 401, 401, 401, 401, 401, 200, 503, 503]
    order = [9, 0, 8, 1, 7, 2, 6, 3, 5, 4]
    for i in order:
        event(db, "webhook_received", seq[i], t, timestamp=t + timedelta(seconds=i), correlation_id=None)
    got = {x.name: (x.value, x.samples) for x in m.compute(db, now - timedelta(hours=24), now)}
    assert got[m.WEBHOOK_FAILURES] == (6.0, 10)
    assert got[m.WEBHOOK_FAILURES_CURRENT] == (2.0, 10)


# -- thresholds on real data -------------------------------------------------------------------------


@dataclass
class Scenario:
    bank_failures: int = 0  # of 200 calls
    slow_calls: int = 0  # of 200 calls at 6 s
    carrier_failures: int = 0  # of 100 primary calls
    undelivered: int = 0  # of 100 final messages
    exhausted: int = 0
    webhook_streak: int = 0


def load(db, now: datetime, s: Scenario) -> None:
    t = now - timedelta(hours=2)
    for i in range(200):
        status = 503 if i < s.bank_failures else 200
        event(db, "banking_api_call", status, t, duration_ms=6000 if i < s.slow_calls else 150, correlation_id="bal-1")
    for i in range(100):
        event(db, "sms_api_call", 503 if i < s.carrier_failures else 202, t, correlation_id="sub-1", carrier="primary")
    # Undeliverable (an invalid number) lowers the delivery rate without exhausting a retry.
    messages(db, "CAMP-1", {"Delivered": 100 - s.undelivered, "Undeliverable": s.undelivered}, t)
    exhausted(db, "CAMP-1", s.exhausted, t)
    webhooks(db, [200] * 3 + [401] * s.webhook_streak + [200] * 3, t)


def kinds_of(app_db: dict, now: datetime, settings: MonitoringSettings | None = None) -> set[str]:
    result = m.run_check(app_db, settings or MonitoringSettings(), now - timedelta(hours=24), now)
    return {b["kind"] for b in result["breaches"]}


def test_at_the_thresholds_nothing_is_breached(db, app_db, now) -> None:
    # 99.5 % available; 9 calls of 200 at 6 s leave the p95 at 0.15 s (11 would make it 6 s); 98 %
    # carrier availability; 98 % delivered; no exhaustion; exactly 5 failed webhooks in a row.
    load(db, now, Scenario(bank_failures=1, slow_calls=9, carrier_failures=2, undelivered=2, webhook_streak=5))
    assert kinds_of(app_db, now) == set()
    rows = db.execute(
        "SELECT metric, breached FROM integration_metrics WHERE scope = 'window' AND threshold IS NOT NULL"
    ).fetchall()
    assert rows and all(breached is False for _, breached in rows)


def test_past_the_thresholds_each_is_breached(db, app_db, now) -> None:
    load(
        db,
        now,
        Scenario(bank_failures=2, slow_calls=11, carrier_failures=3, undelivered=3, exhausted=1, webhook_streak=6),
    )
    assert kinds_of(app_db, now) == {
        "threshold_banking_availability",
        "threshold_banking_response_time",
        "threshold_carrier_availability",
        "threshold_sms_delivery_rate",
        "threshold_retry_exhaustion",
        "threshold_webhook_failures",
    }
    breached = {
        r[0] for r in db.execute("SELECT DISTINCT metric FROM integration_metrics WHERE scope = 'window' AND breached")
    }
    assert breached == {m.BANKING_AVAILABILITY, m.BANKING_P95, m.CARRIER_AVAILABILITY, m.DELIVERY_RATE,
                        m.RETRY_EXHAUSTION, m.WEBHOOK_FAILURES}  # fmt: skip


def test_a_delivery_rate_below_95_is_the_carrier_outage_signal(db, app_db, now) -> None:
    load(db, now, Scenario(undelivered=6))
    assert kinds_of(app_db, now) == {"threshold_sms_carrier_outage"}


def test_thresholds_come_from_the_settings(db, app_db, now) -> None:
    load(db, now, Scenario(bank_failures=2, exhausted=2, webhook_streak=6))
    relaxed = MonitoringSettings(
        banking_availability_min_pct=99.0, retry_exhaustion_max=2, webhook_failures_max_consecutive=6
    )
    assert kinds_of(app_db, now, relaxed) == set()


def test_few_calls_are_recorded_but_not_judged(db, app_db, now) -> None:
    for status in (200, 200, 500):
        event(db, "banking_api_call", status, now - timedelta(hours=1))
    assert kinds_of(app_db, now) == set()
    (value, samples, breached) = db.execute(
        "SELECT value, samples, breached FROM integration_metrics WHERE metric = %s AND scope = 'window'",
        (m.BANKING_AVAILABILITY,),
    ).fetchone()
    assert (round(value, 2), samples, breached) == (66.67, 3, None)


# -- the DAG ------------------------------------------------------------------------------------------


@pytest.fixture
def sinks(db, monkeypatch):
    with SmtpSink() as smtp, HttpSink() as http:
        monkeypatch.setenv("AIRFLOW_CONN_PREMIUM_ALERTS_SMTP", smtp.connection())
        monkeypatch.setenv("AIRFLOW_CONN_PREMIUM_ALERTS_WEBHOOK", http.connection())
        yield smtp, http


def test_monitoring_dag_records_alerts_publishes_and_does_not_repeat(db, app_db, airflow_db, sinks, now) -> None:
    from tests.support.airflow import run_dag, task_states

    smtp, http = sinks
    load(db, now, Scenario(bank_failures=4, exhausted=2))
    logical = now.replace(microsecond=0)
    dag_run = run_dag("premium_monitoring", logical)
    assert str(dag_run.state) == "success", task_states(dag_run)
    kinds = [r[0] for r in db.execute("SELECT kind FROM alerts ORDER BY id")]
    assert sorted(kinds) == ["threshold_banking_availability", "threshold_retry_exhaustion"]
    rows = db.execute("SELECT dag_id, task_id, delivered_to, details FROM alerts ORDER BY id").fetchall()
    assert all(
        r[0] == "premium_monitoring" and r[1] == "alert_on_breaches" and r[2] == ["smtp", "webhook"] for r in rows
    )
    details = {r[3]["metric"]: r[3] for r in rows}
    assert details[m.BANKING_AVAILABILITY]["value"] == 98.0 and details[m.BANKING_AVAILABILITY]["samples"] == 200
    assert details[m.BANKING_AVAILABILITY]["runs_breaching"] == ["bal-1"]
    assert sorted(x["X-Premium-Alert-Kind"] for x in smtp.wait(2)) == sorted(kinds)
    assert sorted(p["kind"] for p in http.payloads()) == sorted(kinds)
    window_end = db.execute("SELECT DISTINCT window_end FROM integration_metrics").fetchall()
    assert window_end == [(logical,)]
    # An hour later the breach persists: recorded again, not alerted again (realert_after_hours = 6).
    dag_run = run_dag("premium_monitoring", logical + timedelta(minutes=1))
    assert str(dag_run.state) == "success", task_states(dag_run)
    assert db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 2
    assert db.execute("SELECT count(DISTINCT computed_at) FROM integration_metrics").fetchone()[0] == 2


# -- where ops tools read the figures ---------------------------------------------------------------


def test_statsd_gauges_reach_a_udp_listener(monkeypatch) -> None:
    from airflow.sdk._shared.observability.metrics import stats as stats_state
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(sock.getsockname()[1]))
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
        previous = stats_state._factory
        stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
        try:
            sent = m.publish(
                [
                    m.Metric(m.BANKING_AVAILABILITY, 99.25, 400),
                    m.Metric(m.CARRIER_AVAILABILITY, 97.5, 80, labels={"carrier": "primary"}),
                    m.Metric(m.DELIVERY_RATE, None, 0),  # no data: nothing sent
                    m.Metric(m.BANKING_AVAILABILITY, 50.0, 2, scope="run", subject="bal-1"),  # runs stay in the DB
                ],
                breaches=2,
            )
            received = sorted(sock.recv(4096).decode() for _ in range(sent))
        finally:
            stats.initialize(factory=previous, export_legacy_names=True)
    assert sent == 3
    assert received == [
        "airflow.premium.integration.banking_api_availability_pct:99.25|g",
        "airflow.premium.integration.breaches:2.0|g",
        "airflow.premium.integration.sms_carrier_availability_pct.primary:97.5|g",
    ]


def test_prometheus_endpoint_on_the_api_server(db, app_db, now, tmp_path) -> None:
    from tests.support.apiserver import ApiServer

    load(db, now, Scenario(bank_failures=4))
    m.run_check(app_db, MonitoringSettings(), now - timedelta(hours=24), now)
    token = "scrape-token-0c4f7a"
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"ops": "ops-password-1"}))
    with ApiServer(
        connections={"premium_metrics_scrape": json.dumps({"conn_type": "generic", "password": token})},
        extra_env={
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "ops:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        },
    ) as api:
        with httpx.Client(base_url=api.base_url, trust_env=False, timeout=30.0) as client:
            assert client.get("/premium-metrics/metrics").status_code == 401
            assert client.get("/premium-metrics/metrics", headers={"Authorization": "Bearer nope"}).status_code == 403
            scraped = client.get("/premium-metrics/metrics", headers={"Authorization": f"Bearer {token}"})
            login = client.post("/auth/token", json={"username": "ops", "password": "ops-password-1"})
            assert login.status_code == 201, login.text
            jwt = login.json()["access_token"]
            as_user = client.get("/premium-metrics/metrics", headers={"Authorization": f"Bearer {jwt}"})
    assert scraped.status_code == 200 and as_user.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    body = scraped.text
    assert as_user.text == body
    assert "# TYPE premium_banking_api_availability_pct gauge" in body
    assert "premium_banking_api_availability_pct 98.0" in body.splitlines()
    assert 'premium_sms_carrier_availability_pct{carrier="primary"} 100.0' in body.splitlines()
    assert 'premium_integration_breached{metric="banking_api_availability_pct"} 1.0' in body.splitlines()
    assert 'premium_integration_threshold{metric="banking_api_availability_pct"} 99.5' in body.splitlines()
    assert 'premium_integration_samples{metric="banking_api_availability_pct"} 200.0' in body.splitlines()
    assert "bal-1" not in body  # per-run figures stay in the database
