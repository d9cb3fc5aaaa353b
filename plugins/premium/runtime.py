"""What a task learns from its run: the as-of date, ids, per-run overrides. No now() here."""

from __future__ import annotations

from datetime import date
from typing import Any

LOCAL_TZ = "Asia/Jerusalem"


def as_of_date(context: Any) -> date:
    """The run's check date in Asia/Jerusalem: its logical date, or run_after when it has none.

    A scheduled run at 22:00 local checks that day; a backfill of 2025-11-03 checks 2025-11-03;
    a manual run without a logical date checks the local date it was triggered for.
    """
    import pendulum

    moment = context.get("logical_date") or context["dag_run"].run_after
    return pendulum.instance(moment).in_timezone(LOCAL_TZ).date()


def run_overrides(context: Any, keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The DAG params among ``keys`` that the run sets (null params are not overrides)."""
    params = context.get("params") or {}
    return {k: params[k] for k in keys if params.get(k) is not None}
