"""Monitoring and alert routing without a database: thresholds, alert texts, notifier routing,
the Prometheus rendering and its authentication, settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from premium import monitoring as m
from premium import notify, settings
from premium.settings import MonitoringSettings, SettingsError, load_monitoring

S = MonitoringSettings()
END = datetime(2025, 11, 18, 10, 5, tzinfo=UTC)
START = END - timedelta(hours=24)


# -- settings ------------------------------------------------------------------------------------


def test_defaults_are_the_specification_figures() -> None:
    assert (S.window_hours, S.banking_availability_min_pct, S.banking_response_p95_max_s) == (24, 99.5, 5.0)
    assert (S.carrier_availability_min_pct, S.delivery_rate_min_pct, S.carrier_outage_delivery_rate_pct) == (98, 98, 95)
    assert (S.retry_exhaustion_max, S.webhook_failures_max_consecutive) == (0, 5)


def test_thresholds_are_configurable_through_the_variable(monkeypatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_VAR_PREMIUM_SETTINGS",
        json.dumps({"monitoring": {"banking_availability_min_pct": 99.9, "window_hours": 12, "min_samples": 50}}),
    )
    got = load_monitoring()
    assert (got.banking_availability_min_pct, got.window_hours, got.min_samples) == (99.9, 12, 50)
    with pytest.raises(SettingsError, match="belong to the deployment"):  # thresholds are never a run's
        settings.load("monitoring", {"webhook_failures_max_consecutive": 3})


@pytest.mark.parametrize(
    "overrides",
    [
        {"banking_availability_min_pct": 101},
        {"window_hours": 0},
        {"carrier_outage_delivery_rate_pct": 99},  # above the delivery-rate threshold
        {"retry_exhaustion_max": 1.5},
        {"no_such_threshold": 1},
    ],
)
def test_bad_monitoring_settings_are_rejected(overrides) -> None:
    with pytest.raises(SettingsError):
        MonitoringSettings(**overrides)


# -- thresholds: each breached and not breached -----------------------------------------------------

# (metric, value at the threshold: not breached, value past it: breached, kind, severity, labels)
CASES = [
    (m.BANKING_AVAILABILITY, 99.5, 99.49, "threshold_banking_availability", "critical", {}),
    (m.BANKING_P95, 5.0, 5.001, "threshold_banking_response_time", "warning", {}),
    (m.CARRIER_AVAILABILITY, 98.0, 97.99, "threshold_carrier_availability", "critical", {"carrier": "primary"}),
    (m.DELIVERY_RATE, 98.0, 97.99, "threshold_sms_delivery_rate", "warning", {}),
    (m.RETRY_EXHAUSTION, 0.0, 1.0, "threshold_retry_exhaustion", "warning", {}),
    (m.WEBHOOK_FAILURES, 5.0, 6.0, "threshold_webhook_failures", "warning", {}),
]


@pytest.mark.parametrize(("name", "ok", "bad", "kind", "severity", "labels"), CASES, ids=[c[3] for c in CASES])
def test_each_threshold_breached_and_not(name, ok, bad, kind, severity, labels) -> None:
    fine = m.Metric(name, ok, 1000, labels=dict(labels))
    assert m.evaluate([fine], S) == []
    assert fine.breached is False and fine.threshold is not None
    broken = m.Metric(name, bad, 1000, labels=dict(labels))
    (breach,) = m.evaluate([broken], S)
    assert (breach.rule.kind, breach.rule.severity, breach.metric) == (kind, severity, broken)
    assert broken.breached is True


def test_below_95_percent_delivered_is_the_carrier_outage_alone() -> None:
    (breach,) = m.evaluate([m.Metric(m.DELIVERY_RATE, 94.99, 500)], S)
    assert (breach.rule.kind, breach.rule.severity, breach.threshold) == (
        "threshold_sms_carrier_outage",
        "critical",
        95.0,
    )
    assert m.evaluate([m.Metric(m.DELIVERY_RATE, 95.0, 500)], S)[0].rule.kind == "threshold_sms_delivery_rate"


def test_rates_need_min_samples_counts_do_not() -> None:
    few = [
        m.Metric(m.BANKING_AVAILABILITY, 50.0, 9),
        m.Metric(m.BANKING_P95, 30.0, 9),
        m.Metric(m.CARRIER_AVAILABILITY, 0.0, 9, labels={"carrier": "primary"}),
        m.Metric(m.DELIVERY_RATE, 0.0, 9),
    ]
    assert m.evaluate(few, S) == [] and all(x.breached is None for x in few)
    counts = [m.Metric(m.RETRY_EXHAUSTION, 1.0, 1), m.Metric(m.WEBHOOK_FAILURES, 6.0, 6)]
    assert len(m.evaluate(counts, S)) == 2
    assert m.evaluate([m.Metric(m.BANKING_AVAILABILITY, 50.0, 9)], MonitoringSettings(min_samples=5))


def test_no_data_is_not_judged() -> None:
    metric = m.Metric(m.BANKING_AVAILABILITY, None, 0)
    assert m.evaluate([metric], S) == [] and metric.breached is None


def test_one_alert_per_window_breach_with_the_runs_that_breach_listed() -> None:
    metrics = [
        m.Metric(m.BANKING_AVAILABILITY, 99.0, 400),
        m.Metric(m.BANKING_AVAILABILITY, 98.0, 200, scope="run", subject="bal-2025-11-18"),
        m.Metric(m.BANKING_AVAILABILITY, 100.0, 200, scope="run", subject="bal-2025-11-17"),
        m.Metric(m.CARRIER_AVAILABILITY, 90.0, 100, labels={"carrier": "primary"}),
        m.Metric(m.CARRIER_AVAILABILITY, 97.0, 100, labels={"carrier": "secondary"}),
        m.Metric(m.DELIVERY_RATE, 90.0, 100, scope="run", subject="CAMP-1"),  # a run alone: flagged, no alert
        m.Metric(m.DELIVERY_RATE, 99.0, 1000),
    ]
    breaches = m.evaluate(metrics, S)
    assert [(b.rule.kind, b.metric.labels, b.runs) for b in breaches] == [
        ("threshold_banking_availability", {}, ("bal-2025-11-18",)),
        ("threshold_carrier_availability", {"carrier": "primary"}, ()),
        ("threshold_carrier_availability", {"carrier": "secondary"}, ()),
    ]
    assert metrics[5].breached is True and metrics[6].breached is False


def test_alert_text_names_figures_and_ids_only() -> None:
    breach = m.evaluate([m.Metric(m.CARRIER_AVAILABILITY, 96.5, 200, labels={"carrier": "primary"})], S)[0]
    summary, details = m.alert_text(breach, START, END, 24)
    assert summary == (
        "SMS carrier availability (primary) 96.50% < 98.00% over the 24 h to 2025-11-18T10:05+00:00 (200 calls); "
        "owner: SMS Team"
    )
    assert details["key"] == "window:sms_carrier_availability_pct::carrier=primary"
    assert details["value"] == 96.5 and details["threshold"] == 98.0 and details["samples"] == 200
    p95 = m.evaluate([m.Metric(m.BANKING_P95, 7.25, 300)], S)[0]
    assert m.alert_text(p95, START, END, 24)[0].startswith("banking API response time (p95) 7.250s > 5.000s")


def test_results_round_trip_through_xcom() -> None:
    metrics = [m.Metric(m.RETRY_EXHAUSTION, 2.0, 2, labels={}), m.Metric(m.WEBHOOK_FAILURES, 1.0, 9)]
    breaches = m.evaluate(metrics, S)
    payload = json.loads(json.dumps({"breaches": [
        {"kind": b.rule.kind, "metric": b.metric.as_dict(), "threshold": b.threshold, "runs": list(b.runs)}
        for b in breaches
    ]}))  # fmt: skip
    (back,) = m.breaches_from(payload)
    assert back.rule.kind == "threshold_retry_exhaustion" and back.metric.key == metrics[0].key


def test_statsd_names_are_flat_and_safe() -> None:
    assert m.statsd_name(m.Metric(m.BANKING_AVAILABILITY, 1.0, 1)) == "premium.integration.banking_api_availability_pct"
    carrier = m.Metric(m.CARRIER_AVAILABILITY, 1.0, 1, labels={"carrier": "sec ondary.x"})
    assert m.statsd_name(carrier) == "premium.integration.sms_carrier_availability_pct.sec_ondary_x"


# -- notifier routing ----------------------------------------------------------------------------


def conn(**kw):
    base = {"host": None, "port": None, "schema": None, "login": None, "password": None, "conn_type": "http"}
    base.update(kw)
    extra = base.pop("extra", {})
    return SimpleNamespace(**base, extra_dejson=extra)


@pytest.mark.parametrize(
    ("kw", "url"),
    [
        ({"host": "https://hooks.example.com/premium"}, "https://hooks.example.com/premium"),
        ({"host": "https://hooks.example.com/premium", "port": 8443}, "https://hooks.example.com:8443/premium"),
        ({"host": "hooks.example.com", "schema": "https", "port": 8443}, "https://hooks.example.com:8443"),
        # AIRFLOW_CONN_X='http://127.0.0.1:8123/alerts' -> host, port, schema='alerts'
        ({"host": "127.0.0.1", "port": 8123, "schema": "alerts"}, "http://127.0.0.1:8123/alerts"),
        ({"host": "h.example", "schema": "v1/alerts", "conn_type": "https"}, "https://h.example/v1/alerts"),
        ({"host": "h.example", "schema": "https", "extra": {"endpoint": "/v2/alerts"}}, "https://h.example/v2/alerts"),
        ({"extra": {"url": "http://10.0.0.5/a", "allow_plain_http": True}}, "http://10.0.0.5/a"),
    ],
)
def test_webhook_url_from_the_connection(kw, url) -> None:
    assert notify.webhook_url(conn(**kw)) == url


def test_a_webhook_connection_without_host_is_misconfigured() -> None:
    with pytest.raises(notify.NotifierMisconfigured):
        notify.webhook_url(conn())


@pytest.mark.parametrize(
    ("to", "expected"),
    [("a@x.example", ["a@x.example"]), ("a@x.example; b@x.example ,c@x.example", ["a@x.example", "b@x.example", "c@x.example"]),
     (["a@x.example", " b@x.example "], ["a@x.example", "b@x.example"])],
)  # fmt: skip
def test_recipients(to, expected) -> None:
    assert notify.recipients({"to": to}) == expected


def test_missing_recipients_are_misconfigured() -> None:
    with pytest.raises(notify.NotifierMisconfigured):
        notify.recipients({})


@pytest.mark.parametrize(
    ("minimum", "severity", "wanted"),
    [(None, "info", True), ("warning", "info", False), ("warning", "warning", True), ("critical", "warning", False)],
)
def test_min_severity(minimum, severity, wanted) -> None:
    extra = {"min_severity": minimum} if minimum else {}
    assert notify.wants(conn(extra=extra), severity) is wanted


def message(**kw) -> notify.AlertMessage:
    base = {"kind": "task_failed", "severity": "critical", "summary": "x failed", "raised_at": END, "alert_id": 7}
    return notify.AlertMessage(**{**base, **kw})


def test_email_subject_is_one_bounded_line_and_the_body_is_escaped() -> None:
    alert = message(summary="line one\r\nBcc: evil@x.example " + "y" * 300, details={"note": "<script>"})
    subject = alert.subject()
    assert "\n" not in subject and "\r" not in subject and len(subject) <= 200
    assert subject.startswith("[premium][critical] task_failed: line one Bcc: evil@x.example")
    assert "&lt;script&gt;" in alert.html_body() and "<script>" not in alert.html_body()


def test_webhook_payload_fields() -> None:
    assert message(dag_id="d", run_id="r", task_id="t", details={"n": 1}).payload() == {
        "alert_id": 7, "kind": "task_failed", "severity": "critical", "summary": "x failed", "dag_id": "d",
        "run_id": "r", "task_id": "t", "details": {"n": 1}, "raised_at": "2025-11-18T10:05:00+00:00",
    }  # fmt: skip


class NotFound(Exception):
    pass


NotFound.__name__ = "AirflowNotFoundException"


def test_deliver_routes_to_what_is_configured_and_never_raises(monkeypatch) -> None:
    sent: list[str] = []

    def ok(conn_, conn_id, alert):
        sent.append(conn_id)

    def broken(conn_, conn_id, alert):
        raise OSError("Connection refused by 10.0.0.9:25")

    monkeypatch.setattr(
        notify, "NOTIFIERS", (("smtp", "premium_alerts_smtp", broken), ("webhook", "premium_alerts_webhook", ok))
    )
    report = notify.deliver(message(), lookup=lambda conn_id: conn())
    assert report.delivered_to == ["webhook"] and sent == ["premium_alerts_webhook"]
    assert report.error_text == "smtp: OSError"  # class, host and status only: never a message that may carry a URL

    def missing(conn_id):
        raise NotFound(conn_id)

    report = notify.deliver(message(), lookup=missing)
    assert (report.delivered_to, report.errors, report.configured) == ([], {}, [])

    def backend_down(conn_id):
        raise TimeoutError("vault timed out")

    report = notify.deliver(message(), lookup=backend_down)
    assert report.delivered_to == [] and set(report.errors) == {"smtp", "webhook"}
    assert "connection premium_alerts_smtp unavailable: TimeoutError: vault timed out" in report.error_text


def test_webhook_retries_connection_errors_then_gives_up(monkeypatch) -> None:
    import requests

    calls: list[str] = []

    def post(self, url, **kw):
        calls.append(url)
        raise requests.ConnectionError("refused")

    monkeypatch.setattr(requests.Session, "post", post)
    sleeps: list[float] = []
    with pytest.raises(requests.ConnectionError):
        notify.post_webhook(
            conn(host="http://127.0.0.1:9/x", extra={"retries": 2, "backoff_s": 0.5}),
            "c",
            message(),
            sleep=sleeps.append,
        )
    assert len(calls) == 3 and sleeps == [0.5, 1.0]


# -- the alert path's own guarantees ---------------------------------------------------------------


def test_scrub_masks_accounts_and_mobile_numbers_only() -> None:
    from premium.alerts import scrub

    text = "ACC-12345-67890 at 050-1234567, +972-52-765-4321, 972541112223; batch BATCH-20251118-001, 2025-11-18, id 123456789"
    assert (
        scrub(text) == "ACC-1****890 at [phone], [phone], [phone]; batch BATCH-20251118-001, 2025-11-18, id 123456789"
    )


def test_deadline_alert_reports_the_run(monkeypatch) -> None:
    import premium.alerts as alerts

    raised: list[tuple] = []
    monkeypatch.setattr(alerts, "raise_alert", lambda *a, **kw: raised.append((a, kw)))
    alerts.deadline_alert(
        context={
            "dag_run": {"dag_id": "premium_balance_daily", "dag_run_id": "scheduled__2025-11-18", "state": "running"},
            "deadline": {"id": "d1", "deadline_time": "2025-11-19T04:00:00+00:00"},
        },
        kind="balance_run_late",
        what="balances not recorded by 06:00",
    )
    ((args, kw),) = raised
    assert args[0] == "balance_run_late"
    assert args[1] == (
        "premium_balance_daily run scheduled__2025-11-18 missed its deadline (2025-11-19T04:00:00+00:00): "
        "balances not recorded by 06:00; state running"
    )
    assert kw["dag_id"] == "premium_balance_daily" and kw["run_id"] == "scheduled__2025-11-18"


def test_raise_alert_survives_a_broken_notifier_module(monkeypatch) -> None:
    import premium.alerts as alerts

    def boom(*a, **kw):
        raise RuntimeError("bug")

    monkeypatch.setattr(notify, "deliver", boom)
    dead = {"host": "127.0.0.1", "port": 9, "user": "x", "dbname": "x", "connect_timeout": 1}
    assert alerts.raise_alert("task_failed", "x", conninfo=dead) is None


# -- Prometheus ------------------------------------------------------------------------------------


ROWS = [
    {"metric": "banking_api_availability_pct", "labels": {}, "value": 99.25, "samples": 400, "threshold": 99.5,
     "breached": True, "computed_at": 1763460300.0},
    {"metric": "sms_carrier_availability_pct", "labels": {"carrier": "primary"}, "value": 100.0, "samples": 80,
     "threshold": 98.0, "breached": False, "computed_at": 1763460300.0},
    {"metric": "sms_delivery_rate_pct", "labels": {}, "value": None, "samples": 0, "threshold": 98.0,
     "breached": None, "computed_at": 1763460300.0},
]  # fmt: skip


def test_prometheus_rendering() -> None:
    from premium.metrics_app import render

    lines = render(ROWS).splitlines()
    assert "# TYPE premium_banking_api_availability_pct gauge" in lines
    assert "premium_banking_api_availability_pct 99.25" in lines
    assert 'premium_sms_carrier_availability_pct{carrier="primary"} 100.0' in lines
    assert "premium_sms_delivery_rate_pct NaN" in lines
    assert 'premium_integration_breached{metric="banking_api_availability_pct"} 1.0' in lines
    assert 'premium_integration_breached{carrier="primary",metric="sms_carrier_availability_pct"} 0.0' in lines
    assert not any(x.startswith('premium_integration_breached{metric="sms_delivery_rate_pct"') for x in lines)
    assert "premium_integration_computed_timestamp_seconds 1763460300.0" in lines
    assert render([]) == "\n"


@pytest.fixture
def client(monkeypatch):
    from fastapi.testclient import TestClient

    from premium import metrics_app

    monkeypatch.setattr(metrics_app.SCRAPE_TOKEN, "get", lambda: "scrape-123")
    monkeypatch.setattr(metrics_app, "_collect", lambda: metrics_app.render(ROWS))
    return TestClient(metrics_app.app)


def test_metrics_need_credentials(client) -> None:
    assert client.get("/metrics").status_code == 401


def test_the_scrape_token_opens_the_metrics(client) -> None:
    resp = client.get("/metrics", headers={"Authorization": "Bearer scrape-123"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "premium_banking_api_availability_pct 99.25" in resp.text


def test_an_unreachable_db_is_503(client, monkeypatch) -> None:
    from premium import metrics_app

    def down():
        raise OSError("db down")

    monkeypatch.setattr(metrics_app, "_collect", down)
    resp = client.get("/metrics", headers={"Authorization": "Bearer scrape-123"})
    assert resp.status_code == 503 and resp.json() == {"detail": "integration metrics unavailable"}
