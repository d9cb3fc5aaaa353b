"""The one alerting path end to end: raise_alert -> alerts table -> a real local SMTP server
(aiosmtpd) and a real local HTTP receiver, configured by connection as a deployment would
(AIRFLOW_CONN_PREMIUM_ALERTS_SMTP / AIRFLOW_CONN_PREMIUM_ALERTS_WEBHOOK)."""

from __future__ import annotations

import email
import json
import logging
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")]

SMTP_USER, SMTP_PASSWORD = "alerts-relay", "relay-secret-5d1e"
WEBHOOK_TOKEN = "alert-hook-token-83c2"
PHONE = "052-7654321"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- sinks -----------------------------------------------------------------------------------------


class SmtpSink:
    """aiosmtpd on a free loopback port, with AUTH (PLAIN/LOGIN, no TLS) when ``auth``."""

    def __init__(self, auth: bool = True) -> None:
        self.envelopes: list[Any] = []
        self.logins: list[tuple[str, str]] = []
        self.port = free_port()
        self._auth = auth
        self._controller = None

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.envelopes.append(envelope)
        return "250 OK"

    def _authenticator(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == (SMTP_USER, SMTP_PASSWORD), handled=False)

    def __enter__(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        kwargs: dict[str, Any] = {}
        if self._auth:
            kwargs = {"authenticator": self._authenticator, "auth_require_tls": False, "auth_required": True}
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **kwargs)
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._controller.stop()

    def messages(self) -> list[Message]:
        return [email.message_from_bytes(e.original_content) for e in self.envelopes]

    def wait(self, n: int, timeout: float = 10.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        while len(self.envelopes) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages()

    def connection(self, **extra: Any) -> str:
        return json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": self.port,
                "login": SMTP_USER if self._auth else None,
                "password": SMTP_PASSWORD if self._auth else None,
                "extra": {
                    "from_email": "premium-alerts@bank.example",
                    "to": "ops@bank.example; banking-team@bank.example",
                    "disable_ssl": True,
                    "disable_tls": True,
                    "timeout": 5,
                    "retry_limit": 0,
                    **extra,
                },
            }
        )


class HttpSink:
    """A loopback HTTP receiver recording every POST; answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = status
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HttpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]

    def connection(self, **extra: Any) -> str:
        return json.dumps(
            {
                "conn_type": "http",
                "host": f"http://127.0.0.1:{self.port}/hooks/premium-alerts",
                "password": WEBHOOK_TOKEN,
                "extra": {"timeout": 5, "retries": 0, "trust_env": False, **extra},
            }
        )


@pytest.fixture
def smtp_sink():
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def http_sink():
    with HttpSink() as sink:
        yield sink


@pytest.fixture
def sinks(db, smtp_sink, http_sink, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PREMIUM_ALERTS_SMTP", smtp_sink.connection())
    monkeypatch.setenv("AIRFLOW_CONN_PREMIUM_ALERTS_WEBHOOK", http_sink.connection())
    return SimpleNamespace(smtp=smtp_sink, http=http_sink)


def alert_rows(conninfo: dict) -> list[dict[str, Any]]:
    with psycopg.connect(**conninfo, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT id, kind, severity, summary, dag_id, run_id, task_id, details, delivered_to, delivery_error, "
            "delivered_at FROM alerts ORDER BY id"
        ).fetchall()


def body_text(message: Message) -> str:
    parts = [p for p in message.walk() if p.get_content_type() == "text/html"]
    return parts[0].get_payload(decode=True).decode()


# -- the path ------------------------------------------------------------------------------------


def test_an_alert_is_recorded_then_emailed_and_posted(sinks, app_db) -> None:
    from premium.alerts import raise_alert

    alert_id = raise_alert(
        "sms_retry_exhaustion",
        "premium-monthly-nov-2025: 3 messages failed with no retry left",
        details={"count": 3, "check_date": "2025-11-18"},
        dag_id="premium_delivery_tracking",
        run_id="scheduled__2025-11-19",
        task_id="finalize_deliveries",
    )
    assert alert_id is not None
    (row,) = alert_rows(app_db)
    assert row["id"] == alert_id
    assert row["delivered_to"] == ["smtp", "webhook"] and row["delivery_error"] is None
    assert row["delivered_at"] is not None

    (mail,) = sinks.smtp.wait(1)
    (envelope,) = sinks.smtp.envelopes
    assert envelope.mail_from == "premium-alerts@bank.example"
    assert envelope.rcpt_tos == ["ops@bank.example", "banking-team@bank.example"]
    assert sinks.smtp.logins == [(SMTP_USER, SMTP_PASSWORD)]  # login/password of the connection
    assert mail["Subject"].startswith("[premium][critical] sms_retry_exhaustion: premium-monthly-nov-2025: 3 messages")
    assert mail["X-Premium-Alert-Id"] == str(alert_id)
    html = body_text(mail)
    assert "finalize_deliveries" in html and "scheduled__2025-11-19" in html and "&quot;count&quot;: 3" in html

    (request,) = sinks.http.requests
    assert request["path"] == "/hooks/premium-alerts"
    assert request["headers"]["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    payload = json.loads(request["body"])
    assert set(payload) == {
        "alert_id", "kind", "severity", "summary", "dag_id", "run_id", "task_id", "details", "raised_at",
    }  # fmt: skip
    assert payload["alert_id"] == alert_id
    assert payload["kind"] == "sms_retry_exhaustion" and payload["severity"] == "critical"
    assert payload["details"] == {"count": 3, "check_date": "2025-11-18"}
    assert (payload["dag_id"], payload["run_id"], payload["task_id"]) == (
        "premium_delivery_tracking",
        "scheduled__2025-11-19",
        "finalize_deliveries",
    )
    assert datetime.fromisoformat(payload["raised_at"]) > datetime.now(UTC) - timedelta(minutes=5)


# Every kind of alert the project raises, through the code that raises it.
def _context(dag_id: str, task_id: str, exception: BaseException | None = None) -> dict:
    ti = SimpleNamespace(dag_id=dag_id, task_id=task_id, run_id="manual__1", map_index=-1, try_number=1)
    return {
        "ti": ti,
        "dag_run": SimpleNamespace(run_id="manual__1"),
        "dag": SimpleNamespace(dag_id=dag_id),
        "exception": exception,
    }


def _task_failure(exc_path: str, message: str):
    def fire():
        from importlib import import_module

        from premium.alerts import task_failure_alert

        module, name = exc_path.rsplit(".", 1)
        task_failure_alert(
            _context("premium_balance_daily", "record_run", getattr(import_module(module), name)(message))
        )

    return fire


def _sms_escalation():
    from premium.notifications.engine import SubmitSummary, escalate

    summary = SubmitSummary(
        undeliverable=2, retries_exhausted=1, failed_over_batches=1, buffered_batches=1, refused_batches=1
    )
    ids = {"dag_id": "premium_balance_daily", "run_id": "manual__1", "task_id": "submit_sms_batches"}
    escalate(summary, "premium-monthly-nov-2025", "2025-11-18", ids)


def _deadline():
    from premium.alerts import deadline_alert

    deadline_alert(
        context={
            "dag_run": {
                "dag_id": "premium_monitoring",
                "dag_run_id": "scheduled__2025-11-18T10:05",
                "state": "running",
            },
            "deadline": {"id": "0193", "deadline_time": "2025-11-18T10:35:00+00:00"},
        },
        kind="deadline_missed",
        what="hourly health check",
    )


def _thresholds():
    from premium import monitoring as m
    from premium.connections import premium_db_kwargs
    from premium.settings import MonitoringSettings

    metrics = [
        m.Metric(m.BANKING_AVAILABILITY, 97.0, 200),
        m.Metric(m.BANKING_P95, 7.5, 200),
        m.Metric(m.CARRIER_AVAILABILITY, 90.0, 100, labels={"carrier": "primary"}),
        m.Metric(m.DELIVERY_RATE, 96.0, 100),
        m.Metric(m.RETRY_EXHAUSTION, 4.0, 4),
        m.Metric(m.WEBHOOK_FAILURES, 9.0, 30),
    ]
    settings = MonitoringSettings()
    end = datetime(2025, 11, 18, 10, 5, tzinfo=UTC)
    breaches = m.evaluate(metrics, settings)
    m.alert_breaches(premium_db_kwargs(), breaches, settings, end - timedelta(hours=24), end, now=datetime.now(UTC))
    outage = m.evaluate([m.Metric(m.DELIVERY_RATE, 80.0, 100)], settings)
    m.alert_breaches(premium_db_kwargs(), outage, settings, end - timedelta(hours=24), end, now=datetime.now(UTC))


SOURCES = {
    "bank_outage_day_skipped": (
        _task_failure("premium.banking.tasks.BankOutageSkip", "2025-11-18 marked SKIPPED_OUTAGE"),
        1,
    ),
    # raised by record_run for the day (a fetch task's BankCredentialsRejected leaves the alert to it)
    "bank_credentials_rejected": (_task_failure("premium.banking.tasks.CredentialsRejectedDay", "HTTP 401"), 1),
    "balance_accounts_not_reached": (_task_failure("premium.banking.tasks.AccountsNotReached", "12 accounts"), 1),
    "sms_carrier_credentials_rejected": (
        _task_failure("premium.sms.tasks.SmsCarrierCredentialsRejected", "primary answered 401"),
        1,
    ),
    "sms_template_over_segment_limit": (_task_failure("premium.sms.tasks.SmsSegmentLimit", "4 segments"), 1),
    "task_failed": (_task_failure("builtins.RuntimeError", "boom"), 1),
    "sms_escalation": (_sms_escalation, 5),  # undeliverable numbers, retry exhaustion, refusal, failover, buffered
    "deadline_missed": (_deadline, 1),
    "thresholds": (_thresholds, 7),  # the six §6.1 thresholds and the §7.2 outage signal
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_every_alert_of_the_project_reaches_both_sinks(sinks, app_db, source) -> None:
    fire, expected = SOURCES[source]
    fire()
    rows = alert_rows(app_db)
    assert len(rows) == expected, [r["kind"] for r in rows]
    kinds = [r["kind"] for r in rows]
    if source == "sms_escalation":
        assert kinds == [
            "sms_undeliverable_numbers",
            "sms_retry_exhaustion",
            "sms_batch_refused",
            "sms_carrier_failover",
            "sms_batches_buffered",
        ]
    elif source == "thresholds":
        assert sorted(kinds) == sorted(
            [
                "threshold_banking_availability",
                "threshold_banking_response_time",
                "threshold_carrier_availability",
                "threshold_sms_delivery_rate",
                "threshold_retry_exhaustion",
                "threshold_webhook_failures",
                "threshold_sms_carrier_outage",
            ]
        )
    else:
        assert kinds == [source]
    assert all(r["delivered_to"] == ["smtp", "webhook"] and r["delivery_error"] is None for r in rows)
    mails = sinks.smtp.wait(expected)
    assert sorted(m["X-Premium-Alert-Kind"] for m in mails) == sorted(kinds)
    assert sorted(p["kind"] for p in sinks.http.payloads()) == sorted(kinds)
    assert sorted(p["alert_id"] for p in sinks.http.payloads()) == [r["id"] for r in rows]


# -- failures never raise, and are recorded --------------------------------------------------------


def test_unreachable_notifiers_are_recorded_and_never_raise(db, app_db, monkeypatch, caplog) -> None:
    from premium.alerts import raise_alert

    dead = free_port()  # nothing listens there
    monkeypatch.setenv(
        "AIRFLOW_CONN_PREMIUM_ALERTS_SMTP",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": dead,
                "extra": {
                    "from_email": "a@bank.example",
                    "to": "ops@bank.example",
                    "disable_ssl": True,
                    "disable_tls": True,
                    "timeout": 2,
                    "retry_limit": 0,
                },
            }
        ),  # fmt: skip
    )
    with HttpSink(status=500) as failing:
        monkeypatch.setenv("AIRFLOW_CONN_PREMIUM_ALERTS_WEBHOOK", failing.connection(retries=1, backoff_s=0.01))
        alert_id = raise_alert("bank_credentials_rejected", "core banking answered 401", details={"status": 401})
        assert len(failing.requests) == 2  # a 5xx is retried (retries=1)
    assert alert_id is not None
    (row,) = alert_rows(app_db)
    assert row["delivered_to"] == [] and row["delivered_at"] is None
    assert row["delivery_error"].startswith("smtp: ConnectionRefusedError")
    assert "webhook: WebhookRejected (host 127.0.0.1, HTTP 500)" in row["delivery_error"]
    assert "PREMIUM_ALERT kind=bank_credentials_rejected" in caplog.text
    assert "not delivered via smtp" in caplog.text and "not delivered via webhook" in caplog.text


SECRET_PATH = "T0A1B2/B9Z8Y7/path-token-41f9e0"
SECRET_QUERY = "query-token-d27a6c"


class _Records(logging.Handler):
    """Every record of one logger, whatever Airflow's logging setup does with propagation."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("receiver", ["answers-500", "unreachable"])
def test_a_failed_webhook_never_records_its_secret_path_or_query(db, app_db, monkeypatch, caplog, receiver) -> None:
    """The webhook URL's path and query are credentials (Slack-style URLs): the recorded error and
    the log name the exception class, the host and the HTTP status only."""
    from premium.alerts import raise_alert

    caplog.set_level("INFO")
    records = _Records()
    notify_log = logging.getLogger("premium.notify")
    notify_log.addHandler(records)
    monkeypatch.delenv("AIRFLOW_CONN_PREMIUM_ALERTS_SMTP", raising=False)
    with HttpSink(status=500) as failing:
        port = failing.port if receiver == "answers-500" else free_port()
        url = f"http://127.0.0.1:{port}/hooks/{SECRET_PATH}?token={SECRET_QUERY}"
        monkeypatch.setenv(
            "AIRFLOW_CONN_PREMIUM_ALERTS_WEBHOOK",
            json.dumps({"conn_type": "http", "host": url, "extra": {"timeout": 2, "retries": 0, "trust_env": False}}),
        )
        try:
            raise_alert("task_failed", "x failed")
        finally:
            notify_log.removeHandler(records)
        assert len(failing.requests) == (1 if receiver == "answers-500" else 0)
    (row,) = alert_rows(app_db)
    error = row["delivery_error"]
    assert row["delivered_to"] == [] and error.startswith("webhook: ") and "127.0.0.1" in error
    if receiver == "answers-500":
        assert error == "webhook: WebhookRejected (host 127.0.0.1, HTTP 500)"
    else:
        assert error == "webhook: ConnectionError (host 127.0.0.1)"
    logged = caplog.text + "\n".join(records.lines)
    assert "not delivered via webhook" in logged
    for secret in (*SECRET_PATH.split("/"), SECRET_QUERY, "/hooks", "token="):
        assert secret not in error
        assert secret not in logged


def test_a_rejected_login_fails_only_the_email(sinks, app_db, monkeypatch) -> None:
    from premium.alerts import raise_alert

    bad = json.loads(sinks.smtp.connection())
    bad["password"] = "wrong-password"
    monkeypatch.setenv("AIRFLOW_CONN_PREMIUM_ALERTS_SMTP", json.dumps(bad))
    raise_alert("sms_carrier_failover", "2 batches failed over", severity="warning")
    (row,) = alert_rows(app_db)
    assert row["delivered_to"] == ["webhook"]
    assert row["delivery_error"].startswith("smtp: SMTPAuthenticationError")
    assert "wrong-password" not in row["delivery_error"]
    assert sinks.smtp.envelopes == [] and len(sinks.http.requests) == 1


def test_a_4xx_from_the_webhook_is_not_retried(db, app_db, monkeypatch) -> None:
    from premium.alerts import raise_alert

    with HttpSink(status=400) as refusing:
        monkeypatch.setenv("AIRFLOW_CONN_PREMIUM_ALERTS_WEBHOOK", refusing.connection(retries=3, backoff_s=0.01))
        raise_alert("task_failed", "x failed")
        assert len(refusing.requests) == 1
    (row,) = alert_rows(app_db)
    assert row["delivered_to"] == [] and row["delivery_error"] == "webhook: WebhookRejected (host 127.0.0.1, HTTP 400)"


def test_no_notifier_configured_means_table_and_log_only(db, app_db, monkeypatch, caplog) -> None:
    from premium.alerts import raise_alert

    monkeypatch.delenv("AIRFLOW_CONN_PREMIUM_ALERTS_SMTP", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_PREMIUM_ALERTS_WEBHOOK", raising=False)
    caplog.set_level("INFO")
    assert raise_alert("balance_checks_partial", "2025-11-18: 3 accounts failed", severity="warning") is not None
    (row,) = alert_rows(app_db)
    assert row["delivered_to"] == [] and row["delivery_error"] is None and row["delivered_at"] is None
    assert "no notifier configured" in caplog.text


def test_a_notifier_takes_only_its_min_severity(sinks, app_db, monkeypatch) -> None:
    from premium.alerts import raise_alert

    monkeypatch.setenv("AIRFLOW_CONN_PREMIUM_ALERTS_SMTP", sinks.smtp.connection(min_severity="critical"))
    raise_alert("sms_undeliverable_numbers", "2 messages rejected as invalid numbers", severity="warning")
    raise_alert("bank_outage_day_skipped", "2025-11-18 skipped", severity="critical")
    rows = alert_rows(app_db)
    assert [r["delivered_to"] for r in rows] == [["webhook"], ["smtp", "webhook"]]
    assert [m["X-Premium-Alert-Kind"] for m in sinks.smtp.wait(1)] == ["bank_outage_day_skipped"]
    assert [p["kind"] for p in sinks.http.payloads()] == ["sms_undeliverable_numbers", "bank_outage_day_skipped"]


def test_the_db_being_down_still_sends_the_alert(sinks, monkeypatch) -> None:
    from premium.alerts import raise_alert

    dead = {"host": "127.0.0.1", "port": free_port(), "user": "postgres", "dbname": "x", "connect_timeout": 2}
    assert raise_alert("task_failed", "y failed", conninfo=dead) is None
    assert [p["kind"] for p in sinks.http.payloads()] == ["task_failed"]
    assert sinks.http.payloads()[0]["alert_id"] is None
    assert len(sinks.smtp.wait(1)) == 1


def test_no_pii_reaches_the_table_or_the_sinks(sinks, app_db) -> None:
    from premium.alerts import task_failure_alert

    leaky = RuntimeError(f"row for ACC-12345-67890 with phone {PHONE} / +972527654321 rejected")
    task_failure_alert(_context("premium_balance_daily", "fetch_balances", leaky))
    (row,) = alert_rows(app_db)
    mail = sinks.smtp.wait(1)[0]
    texts = [
        row["summary"],
        json.dumps(row["details"]),
        mail["Subject"],
        body_text(mail),
        sinks.http.requests[0]["body"].decode(),
    ]
    for text in texts:
        for secret in ("12345-67890", "7654321", "527654321"):
            assert secret not in text
    assert "ACC-1****890" in row["summary"] and "[phone]" in row["summary"]


def test_alert_text_is_never_rendered_as_a_template(sinks, app_db) -> None:
    from premium.alerts import raise_alert

    raise_alert("task_failed", "{{ conn.premium_db.password }} <b>not html</b>")
    mail = sinks.smtp.wait(1)[0]
    assert "{{ conn.premium_db.password }}" in mail["Subject"]
    assert "&lt;b&gt;not html&lt;/b&gt;" in body_text(mail)
    assert sinks.http.payloads()[0]["summary"] == "{{ conn.premium_db.password }} <b>not html</b>"
