"""Integration health monitoring (§6.1): six metrics over a window and per run, their thresholds,
one alert per breach, and where the figures are published.

Metrics over [start, end) (the SQL is in include/sql/metrics_*.sql; window scope, and per run:
the correlation id of bank/carrier calls, the campaign id of deliveries):

==========================================  ===============================================  =====================
metric                                      definition                                       alert (settings)
==========================================  ===============================================  =====================
banking_api_availability_pct                100 * answered / calls of banking_api_call       < 99.5 (critical)
                                            events; answered = HTTP 1xx-4xx except 429;
                                            calls exclude breaker_open (no call made)
banking_api_response_time_p95_seconds       p95 (continuous) of duration_ms / 1000 of the     > 5 s (warning)
                                            calls with an HTTP status or a timeout
sms_carrier_availability_pct {carrier}      as banking, over sms_api_call + sms_status_poll  < 98 (critical),
                                            events, per carrier                              per carrier
sms_delivery_rate_pct                       100 * Delivered / final delivery_status rows      < 98 (warning);
                                            (final: Delivered, Failed, Undeliverable,         < 95: §7.2 carrier
                                            Unconfirmed) submitted in the window              outage (critical)
sms_retry_exhaustion_count                  sms_notifications that became FAILED (no retry    > 0 (warning)
                                            left) in the window
webhook_consecutive_failures_max            longest run of consecutive webhook_received       > 5 (warning)
                                            events answered non-2xx, in arrival order
==========================================  ===============================================  =====================

Informational (recorded and published, no threshold): sms_delivery_in_flight_count,
webhook_consecutive_failures_current. Rates and the percentile are judged only over at least
``min_samples`` calls/messages; counts always are. The window figures are alerted on (one alert
per breach, kind ``threshold_<name>``; details list the runs that breach too); per-run figures
are recorded and flagged, not alerted separately (with daily runs they would repeat the window's
alert). A breach that persists is alerted again after ``realert_after_hours``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from premium.paths import read_sql
from premium.settings import MonitoringSettings

log = logging.getLogger(__name__)

BANKING_AVAILABILITY = "banking_api_availability_pct"
BANKING_P95 = "banking_api_response_time_p95_seconds"
CARRIER_AVAILABILITY = "sms_carrier_availability_pct"
DELIVERY_RATE = "sms_delivery_rate_pct"
RETRY_EXHAUSTION = "sms_retry_exhaustion_count"
WEBHOOK_FAILURES = "webhook_consecutive_failures_max"
DELIVERY_IN_FLIGHT = "sms_delivery_in_flight_count"
WEBHOOK_FAILURES_CURRENT = "webhook_consecutive_failures_current"

STATSD_PREFIX = "premium.integration"
DAG_ID = "premium_monitoring"


@dataclass(frozen=True)
class Rule:
    """A §6.1 alert threshold on a metric."""

    metric: str
    kind: str
    severity: str
    direction: str  # "below" | "above": the breach side
    setting: str  # the MonitoringSettings field holding the threshold
    judged_on_samples: bool  # rates and percentiles need min_samples
    label: str
    owner: str
    unit: str

    def threshold(self, settings: MonitoringSettings) -> float:
        return float(getattr(settings, self.setting))

    def breached(self, value: float, threshold: float) -> bool:
        return value < threshold if self.direction == "below" else value > threshold


RULES: tuple[Rule, ...] = (
    Rule(BANKING_AVAILABILITY, "threshold_banking_availability", "critical", "below",
         "banking_availability_min_pct", True, "banking API availability", "Banking Team", "%"),
    Rule(BANKING_P95, "threshold_banking_response_time", "warning", "above",
         "banking_response_p95_max_s", True, "banking API response time (p95)", "Banking Team", "s"),
    Rule(CARRIER_AVAILABILITY, "threshold_carrier_availability", "critical", "below",
         "carrier_availability_min_pct", True, "SMS carrier availability", "SMS Team", "%"),
    Rule(DELIVERY_RATE, "threshold_sms_delivery_rate", "warning", "below",
         "delivery_rate_min_pct", True, "SMS delivery rate", "Notification Team", "%"),
    Rule(DELIVERY_RATE, "threshold_sms_carrier_outage", "critical", "below",
         "carrier_outage_delivery_rate_pct", True, "SMS delivery rate (§7.2 carrier outage)", "Operations", "%"),
    Rule(RETRY_EXHAUSTION, "threshold_retry_exhaustion", "warning", "above",
         "retry_exhaustion_max", False, "failed SMS with retries exhausted", "Operations", ""),
    Rule(WEBHOOK_FAILURES, "threshold_webhook_failures", "warning", "above",
         "webhook_failures_max_consecutive", False, "consecutive failed delivery webhooks", "Operations", ""),
)  # fmt: skip
# When both delivery-rate rules breach, the outage alert replaces the delivery-rate one.
SUPERSEDES = {"threshold_sms_carrier_outage": "threshold_sms_delivery_rate"}
ALERT_KINDS = tuple(r.kind for r in RULES)


@dataclass
class Metric:
    name: str
    value: float | None  # None: no data
    samples: int
    scope: str = "window"  # "window" | "run"
    subject: str = ""  # run scope: the correlation id (calls) or campaign id (deliveries)
    labels: dict[str, str] = field(default_factory=dict)
    threshold: float | None = None
    breached: bool | None = None  # None: not judged

    @property
    def key(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.scope}:{self.name}:{self.subject}:{labels}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Breach:
    rule: Rule
    metric: Metric
    threshold: float
    runs: tuple[str, ...] = ()  # run subjects of the same metric that breach too


# -- computing -----------------------------------------------------------------------------------


def _pct(numerator: int, denominator: int) -> float | None:
    return round(100.0 * numerator / denominator, 4) if denominator else None


def compute(conn: Any, start: datetime, end: datetime) -> list[Metric]:
    """The metrics over [start, end), window scope first, then per run."""
    params = {"start": start, "end": end}
    window: list[Metric] = []
    runs: list[Metric] = []

    def rows(name: str) -> list[dict[str, Any]]:
        cur = conn.execute(read_sql(name), params)
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    banking = rows("metrics_banking_api.sql")
    if not any(not r["per_run"] for r in banking):
        banking.append({"per_run": False, "correlation_id": "", "calls": 0, "answered": 0, "timed": 0, "p95_ms": None})
    for r in banking:
        scope, subject = ("run", r["correlation_id"]) if r["per_run"] else ("window", "")
        p95 = None if r["p95_ms"] is None else round(float(r["p95_ms"]) / 1000.0, 6)
        (runs if r["per_run"] else window).extend(
            [
                Metric(BANKING_AVAILABILITY, _pct(r["answered"], r["calls"]), r["calls"], scope, subject),
                Metric(BANKING_P95, p95, r["timed"], scope, subject),
            ]
        )
    for r in rows("metrics_carrier_api.sql"):
        if r["per_run"]:
            runs.append(
                Metric(CARRIER_AVAILABILITY, _pct(r["answered"], r["calls"]), r["calls"], "run", r["correlation_id"])
            )
        else:
            window.append(
                Metric(
                    CARRIER_AVAILABILITY, _pct(r["answered"], r["calls"]), r["calls"], labels={"carrier": r["carrier"]}
                )
            )
    for r in rows("metrics_sms_delivery.sql"):
        scope, subject = ("run", r["campaign_id"]) if r["per_run"] else ("window", "")
        (runs if r["per_run"] else window).extend(
            [
                Metric(DELIVERY_RATE, _pct(r["delivered"], r["final"]), r["final"], scope, subject),
                Metric(DELIVERY_IN_FLIGHT, float(r["in_flight"]), r["messages"], scope, subject),
            ]
        )
    for r in rows("metrics_retry_exhaustion.sql"):
        scope, subject = ("run", r["campaign_id"]) if r["per_run"] else ("window", "")
        (runs if r["per_run"] else window).append(
            Metric(RETRY_EXHAUSTION, float(r["exhausted"]), r["exhausted"], scope, subject)
        )
    (w,) = rows("metrics_webhook_failures.sql")
    window.append(Metric(WEBHOOK_FAILURES, float(w["max_consecutive"]), w["received"]))
    window.append(Metric(WEBHOOK_FAILURES_CURRENT, float(w["current_consecutive"]), w["received"]))
    return window + runs


# -- judging -------------------------------------------------------------------------------------


def evaluate(metrics: list[Metric], settings: MonitoringSettings) -> list[Breach]:
    """Compare every metric with its thresholds (setting ``threshold``/``breached`` on it); the
    breaches of window-scope metrics, one per metric and label set, runs that breach attached."""
    found: dict[str, list[tuple[Rule, Metric, float]]] = {}
    for metric in metrics:
        rules = [r for r in RULES if r.metric == metric.name]
        if not rules:
            continue
        metric.threshold = rules[0].threshold(settings)
        judged = metric.value is not None and (not rules[0].judged_on_samples or metric.samples >= settings.min_samples)
        if not judged:
            metric.breached = None
            continue
        hits = [(r, r.threshold(settings)) for r in rules if r.breached(float(metric.value), r.threshold(settings))]
        kinds = {r.kind for r, _ in hits}
        hits = [(r, t) for r, t in hits if not any(SUPERSEDES.get(k) == r.kind for k in kinds)]
        metric.breached = bool(hits)
        for rule, threshold in hits:
            found.setdefault(rule.kind, []).append((rule, metric, threshold))
    breaches: list[Breach] = []
    for items in found.values():
        runs = tuple(sorted(m.subject for _, m, _ in items if m.scope == "run"))
        for rule, metric, threshold in items:
            if metric.scope == "window":
                breaches.append(Breach(rule, metric, threshold, runs))
    return breaches


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.2f}%"
    if unit == "s":
        return f"{value:.3f}s"
    return f"{value:g}"


def alert_text(breach: Breach, start: datetime, end: datetime, window_hours: int) -> tuple[str, dict[str, Any]]:
    """Summary and details of a breach's alert: names, figures and ids only."""
    rule, metric = breach.rule, breach.metric
    what = rule.label
    if metric.labels.get("carrier"):
        what = f"{what} ({metric.labels['carrier']})"
    sign = "<" if rule.direction == "below" else ">"
    samples = {"%": "calls", "s": "calls"}.get(rule.unit, "events")
    if metric.name == DELIVERY_RATE:
        samples = "final messages"
    summary = (
        f"{what} {_fmt(float(metric.value), rule.unit)} {sign} {_fmt(breach.threshold, rule.unit)} "
        f"over the {window_hours} h to {end.isoformat(timespec='minutes')} ({metric.samples} {samples}); owner: {rule.owner}"
    )
    if breach.runs:
        summary += f"; runs breaching: {', '.join(breach.runs[:5])}" + (" …" if len(breach.runs) > 5 else "")
    details = {
        "metric": metric.name,
        "value": metric.value,
        "threshold": breach.threshold,
        "direction": rule.direction,
        "samples": metric.samples,
        "labels": metric.labels,
        "scope": metric.scope,
        "key": metric.key,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "owner": rule.owner,
        "runs_breaching": list(breach.runs),
    }
    return summary, details


def recently_alerted(conn: Any, kind: str, key: str, since: datetime) -> bool:
    row = conn.execute(
        "SELECT 1 FROM alerts WHERE kind = %s AND details ->> 'key' = %s AND raised_at >= %s LIMIT 1",
        (kind, key, since),
    ).fetchone()
    return row is not None


def alert_breaches(
    conninfo: dict[str, Any],
    breaches: list[Breach],
    settings: MonitoringSettings,
    start: datetime,
    end: datetime,
    *,
    now: datetime,
    dag_id: str | None = DAG_ID,
    run_id: str | None = None,
    task_id: str | None = None,
) -> list[int | None]:
    """One alert per breach through :func:`premium.alerts.raise_alert`, unless the same breach
    (kind and metric key) was alerted within ``realert_after_hours``. Returns the alert ids."""
    import psycopg

    from premium.alerts import raise_alert

    raised: list[int | None] = []
    since = now - timedelta(hours=settings.realert_after_hours)
    for breach in breaches:
        summary, details = alert_text(breach, start, end, settings.window_hours)
        if settings.realert_after_hours > 0:
            with psycopg.connect(**conninfo) as conn:
                if recently_alerted(conn, breach.rule.kind, breach.metric.key, since):
                    log.info(
                        "%s (%s) already alerted since %s; not repeated", breach.rule.kind, breach.metric.key, since
                    )
                    continue
        raised.append(
            raise_alert(
                breach.rule.kind,
                summary,
                severity=breach.rule.severity,
                details=details,
                dag_id=dag_id,
                run_id=run_id,
                task_id=task_id,
                conninfo=conninfo,
            )
        )
    return raised


# -- recording and publishing --------------------------------------------------------------------

_INSERT = (
    "INSERT INTO integration_metrics (computed_at, metric, scope, subject, labels, value, samples, threshold, "
    "breached, window_start, window_end, dag_run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def record(
    conn: Any,
    metrics: list[Metric],
    *,
    computed_at: datetime,
    start: datetime,
    end: datetime,
    dag_run_id: str | None,
    retention_days: int | None = None,
) -> int:
    """Insert the metrics into integration_metrics (and prune rows past ``retention_days``)."""
    with conn.cursor() as cur:
        cur.executemany(
            _INSERT,
            [
                (computed_at, m.name, m.scope, m.subject, json.dumps(m.labels), m.value, m.samples, m.threshold,
                 m.breached, start, end, dag_run_id)
                for m in metrics
            ],
        )  # fmt: skip
        if retention_days:
            cur.execute(
                "DELETE FROM integration_metrics WHERE computed_at < %s",
                (computed_at - timedelta(days=retention_days),),
            )
    return len(metrics)


def statsd_name(metric: Metric) -> str:
    name = f"{STATSD_PREFIX}.{metric.name}"
    if metric.labels.get("carrier"):
        name += "." + "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in metric.labels["carrier"])
    return name


def publish(metrics: list[Metric], breaches: int | None = None) -> int:
    """Window-scope figures as gauges through Airflow's metrics (StatsD / Datadog / OpenTelemetry,
    as ``[metrics]`` configures it; nothing when metrics are off). Per-run figures stay in the DB."""
    from airflow.sdk.observability import stats

    sent = 0
    for metric in metrics:
        if metric.scope != "window" or metric.value is None:
            continue
        stats.gauge(statsd_name(metric), float(metric.value), tags={"premium_metric": metric.name, **metric.labels})
        sent += 1
    if breaches is not None:
        stats.gauge(f"{STATSD_PREFIX}.breaches", float(breaches))
        sent += 1
    return sent


# -- the §6.2 queries, as written ----------------------------------------------------------------


def banking_api_health(conn: Any) -> list[dict[str, Any]]:
    """§6.2 "Banking API health last 24 hours": date, total_calls, successful_calls, success_rate."""
    cur = conn.execute(read_sql("monitoring_banking_api_health.sql"))
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def sms_delivery_rate_by_hour(conn: Any) -> list[dict[str, Any]]:
    """§6.2 "SMS delivery rate by hour": hour, notifications_sent, delivered, delivery_rate."""
    cur = conn.execute(read_sql("monitoring_sms_delivery_rate.sql"))
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


# -- the premium_monitoring tasks ----------------------------------------------------------------


def window_of(context: Any, settings: MonitoringSettings) -> tuple[datetime, datetime]:
    """[end - window_hours, end): end is the run's logical date (run_after for runs without one)."""
    import pendulum

    moment = context.get("logical_date") or context["dag_run"].run_after
    end = pendulum.instance(moment).in_timezone("UTC")
    return end - timedelta(hours=settings.window_hours), end


def run_check(
    conninfo: dict[str, Any],
    settings: MonitoringSettings,
    start: datetime,
    end: datetime,
    *,
    dag_run_id: str | None = None,
) -> dict[str, Any]:
    """Compute, judge and record the metrics of [start, end); the task's (PII-free) result."""
    import pendulum
    import psycopg

    computed_at = pendulum.now("UTC")
    with psycopg.connect(**conninfo) as conn:
        metrics = compute(conn, start, end)
        breaches = evaluate(metrics, settings)
        record(
            conn, metrics, computed_at=computed_at, start=start, end=end, dag_run_id=dag_run_id,
            retention_days=settings.retention_days,
        )  # fmt: skip
    log.info(
        "integration health %s .. %s: %s; %d breach(es): %s",
        start.isoformat(),
        end.isoformat(),
        ", ".join(
            f"{statsd_name(m).removeprefix(STATSD_PREFIX + '.')}={'n/a' if m.value is None else f'{m.value:g}'} (n={m.samples})"
            for m in metrics
            if m.scope == "window"
        ),
        len(breaches),
        ", ".join(b.rule.kind for b in breaches) or "none",
    )
    return {
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "computed_at": computed_at.isoformat(),
        "metrics": [m.as_dict() for m in metrics],
        "breaches": [
            {"kind": b.rule.kind, "metric": b.metric.as_dict(), "threshold": b.threshold, "runs": list(b.runs)}
            for b in breaches
        ],
    }


def breaches_from(result: dict[str, Any]) -> list[Breach]:
    rules = {r.kind: r for r in RULES}
    return [
        Breach(rules[b["kind"]], Metric(**b["metric"]), float(b["threshold"]), tuple(b["runs"]))
        for b in result["breaches"]
    ]


def task_compute(context: Any) -> dict[str, Any]:
    from premium import runtime
    from premium.connections import premium_db_kwargs

    settings = runtime.run_settings(context, "monitoring")
    start, end = window_of(context, settings)
    return run_check(premium_db_kwargs(), settings, start, end, dag_run_id=context["dag_run"].run_id)


def task_alert(context: Any, result: dict[str, Any]) -> int:
    import pendulum

    from premium.connections import premium_db_kwargs
    from premium.settings import load_monitoring

    settings = load_monitoring()
    raised = alert_breaches(
        premium_db_kwargs(),
        breaches_from(result),
        settings,
        datetime.fromisoformat(result["window_start"]),
        datetime.fromisoformat(result["window_end"]),
        now=pendulum.now("UTC"),
        dag_id=context["dag"].dag_id,
        run_id=context["dag_run"].run_id,
        task_id=context["ti"].task_id,
    )
    return len(raised)


def task_publish(result: dict[str, Any]) -> int:
    return publish([Metric(**m) for m in result["metrics"]], breaches=len(result["breaches"]))
