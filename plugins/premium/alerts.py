"""The project's one alerting path.

Every alert (the §7.1 outage skip, a 401 from the bank, undeliverable numbers, retry exhaustion,
a §6.1 threshold breach, a failed task, a missed deadline) goes through :func:`raise_alert`:

1. it is logged at ERROR/WARNING with a stable ``PREMIUM_ALERT`` marker that log shippers match;
2. it is written to the ``alerts`` table;
3. it is routed to the notifiers configured by connection (:mod:`premium.notify`: email via
   ``premium_alerts_smtp``, an HTTP webhook via ``premium_alerts_webhook``), and where it went (or
   why it did not) is recorded in ``alerts.delivered_to`` / ``alerts.delivery_error``.

Airflow's own callbacks come in through the same function: :func:`task_failure_alert`
(``on_failure_callback``) and :func:`deadline_alert` (the callback of a Deadline Alert).
Alert texts carry ids and counts, never PII; account ids and mobile numbers that slip into a
text (an exception message) are masked before anything is recorded or sent.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")

# Israeli mobile numbers as they could appear in free text (+972-5x…, 9725x…, 05x…).
_PHONE_RE = re.compile(r"(?<![\w+])(?:\+?972[-\s]?|0)5\d(?:[-\s]?\d){7}(?!\d)")


def scrub(text: str) -> str:
    """``text`` with account ids and mobile numbers masked."""
    from premium.audit import mask_accounts_in

    return _PHONE_RE.sub("[phone]", mask_accounts_in(text))


def raise_alert(
    kind: str,
    summary: str,
    *,
    severity: str = "critical",
    details: dict[str, Any] | None = None,
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
    conninfo: dict[str, Any] | None = None,
) -> int | None:
    """Record, log and route one alert; its id in ``alerts`` (None when it could not be recorded).

    Never raises: an alert must not mask the failure it reports.
    """
    if severity not in SEVERITIES:
        severity = "critical"
    summary = scrub(str(summary))
    try:
        details = json.loads(scrub(json.dumps(details or {}, default=str)))
    except (TypeError, ValueError):
        details = {"unserialisable_details": True}
    level = logging.ERROR if severity == "critical" else logging.WARNING
    log.log(
        level,
        "PREMIUM_ALERT kind=%s severity=%s dag=%s run=%s task=%s: %s",
        kind,
        severity,
        dag_id,
        run_id,
        task_id,
        summary,
    )
    alert_id: int | None = None
    raised_at = datetime.now(UTC)
    try:
        import psycopg  # here, not at the top: every DAG file imports this module

        if conninfo is None:
            from premium.connections import premium_db_kwargs

            conninfo = premium_db_kwargs()
        with psycopg.connect(**conninfo) as conn:
            alert_id, raised_at = conn.execute(
                "INSERT INTO alerts (severity, kind, summary, dag_id, run_id, task_id, details) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id, raised_at",
                (severity, kind, summary, dag_id, run_id, task_id, json.dumps(details)),
            ).fetchone()
    except Exception:  # noqa: BLE001 - the log line above is the alert of last resort
        log.exception("PREMIUM_ALERT could not be recorded in the alerts table")
    _route(kind, summary, severity, details, dag_id, run_id, task_id, raised_at, alert_id, conninfo)
    return alert_id


def _route(kind, summary, severity, details, dag_id, run_id, task_id, raised_at, alert_id, conninfo) -> None:
    """Send the alert to the configured notifiers and record the outcome. Never raises."""
    try:
        from premium.notify import AlertMessage, deliver

        report = deliver(
            AlertMessage(
                kind=kind,
                severity=severity,
                summary=summary,
                raised_at=raised_at,
                dag_id=dag_id,
                run_id=run_id,
                task_id=task_id,
                details=details,
                alert_id=alert_id,
            )
        )
    except Exception:  # noqa: BLE001
        log.exception("PREMIUM_ALERT %s could not be routed to the notifiers", kind)
        return
    if alert_id is None or conninfo is None:
        return
    try:
        import psycopg

        with psycopg.connect(**conninfo) as conn:
            conn.execute(
                "UPDATE alerts SET delivered_to = %s, delivery_error = %s, "
                "delivered_at = CASE WHEN cardinality(%s::text[]) > 0 THEN now() END WHERE id = %s",
                (report.delivered_to, report.error_text, report.delivered_to, alert_id),
            )
    except Exception:  # noqa: BLE001
        log.exception("PREMIUM_ALERT %s: could not record its delivery", kind)


def task_failure_alert(context: Any) -> None:
    """``on_failure_callback`` of the project's tasks: one alert per failed task instance, unless
    the exception names the task that raises the alert for the whole run (``alert_raised_by``)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exc = context.get("exception")
    raised_by = getattr(exc, "alert_raised_by", None)
    if raised_by:
        log.warning(
            "%s failed (%s); its alert is raised once for the run by %s",
            getattr(ti, "task_id", "?"),
            type(exc).__name__,
            raised_by,
        )
        return
    kind = getattr(exc, "alert_kind", None) or "task_failed"
    raise_alert(
        kind,
        f"{getattr(ti, 'task_id', '?')} failed: {type(exc).__name__ if exc else 'unknown'}: {str(exc)[:300] if exc else ''}",
        severity="critical",
        details={"map_index": getattr(ti, "map_index", None), "try_number": getattr(ti, "try_number", None)},
        dag_id=getattr(ti, "dag_id", None),
        run_id=getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
        task_id=getattr(ti, "task_id", None),
    )


def deadline_alert(
    context: Any = None, *, kind: str = "deadline_missed", severity: str = "critical", what: str = ""
) -> None:
    """Callback of a Deadline Alert (``SyncCallback(deadline_alert, kwargs={...})``).

    Airflow calls it with a small context: ``dag_run`` (the run, as the REST API shows it) and
    ``deadline`` (id, deadline_time).
    """
    context = context or {}
    dag_run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    if not isinstance(dag_run, dict):  # a DagRun object rather than its JSON form
        dag_run = {"dag_id": getattr(dag_run, "dag_id", None), "dag_run_id": getattr(dag_run, "run_id", None)}
    dag_id = dag_run.get("dag_id")
    run_id = dag_run.get("dag_run_id") or dag_run.get("run_id")
    deadline_time = deadline.get("deadline_time")
    raise_alert(
        kind,
        f"{dag_id} run {run_id} missed its deadline ({deadline_time}){': ' + what if what else ''}; "
        f"state {dag_run.get('state', '?')}",
        severity=severity,
        details={"deadline_id": deadline.get("id"), "deadline_time": str(deadline_time), "state": dag_run.get("state")},
        dag_id=dag_id,
        run_id=run_id,
    )
