"""The project's one alerting path.

Every alert (the §7.1 outage skip, a 401 from the bank, a failed task) goes through
:func:`raise_alert`: it is written to the ``alerts`` table and logged at ERROR/WARNING with a
stable ``PREMIUM_ALERT`` marker that log shippers can match. Routing to a notifier (SMTP, HTTP)
plugs in here, so callers never change. Alert texts carry ids and counts, never PII.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")


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
) -> None:
    """Record and emit one alert. Never raises: an alert must not mask the failure it reports."""
    if severity not in SEVERITIES:
        severity = "critical"
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
    try:
        if conninfo is None:
            from premium.connections import premium_db_kwargs

            conninfo = premium_db_kwargs()
        with psycopg.connect(**conninfo) as conn:
            conn.execute(
                "INSERT INTO alerts (severity, kind, summary, dag_id, run_id, task_id, details) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (severity, kind, summary, dag_id, run_id, task_id, json.dumps(details or {}, default=str)),
            )
    except Exception:  # noqa: BLE001 - the log line above is the alert of last resort
        log.exception("PREMIUM_ALERT could not be recorded in the alerts table")


def task_failure_alert(context: Any) -> None:
    """``on_failure_callback`` of the project's tasks: one alert per failed task instance."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exc = context.get("exception")
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
