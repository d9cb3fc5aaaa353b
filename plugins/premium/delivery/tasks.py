"""Task bodies of ``premium_delivery_tracking`` (the DAG file only wires them)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from premium import runtime
from premium.settings import DeliverySettings, load_sms

log = logging.getLogger(__name__)


def _settings(context: Any) -> DeliverySettings:
    return runtime.run_settings(context, "delivery")


def _endpoints() -> dict:
    from premium.connections import get_connection
    from premium.notifications.carrier import CarrierEndpoint
    from premium.sms.tasks import PRIMARY_CONN_ID, SECONDARY_CONN_ID

    endpoints = {"primary": CarrierEndpoint.from_connection(get_connection(PRIMARY_CONN_ID), "primary")}
    try:
        endpoints["secondary"] = CarrierEndpoint.from_connection(get_connection(SECONDARY_CONN_ID), "secondary")
    except Exception:  # noqa: BLE001 - no secondary carrier configured
        pass
    return endpoints


def submissions_of(context: Any) -> tuple[str, list[str], list[Any]]:
    """(campaign_id, batch_ids, check dates) from every triggering asset event (several may fold into
    one run), or from the params of a manual run (``campaign_id``, optional ``batch_ids``)."""
    from datetime import date

    events = context.get("triggering_asset_events") or {}
    campaigns: set[str] = set()
    batches: list[str] = []
    dates: set[Any] = set()
    for asset_events in events.values():
        for event in asset_events:
            extra = event.extra or {}
            if extra.get("campaign_id"):
                campaigns.add(extra["campaign_id"])
            batches.extend(b for b in extra.get("batch_ids") or [] if b not in batches)
            if extra.get("check_date"):
                dates.add(date.fromisoformat(extra["check_date"]))
    params = context.get("params") or {}
    if not campaigns and params.get("campaign_id"):
        campaigns.add(params["campaign_id"])
        batches = list(params.get("batch_ids") or [])
    if len(campaigns) != 1:
        raise AirflowFailException(f"expected the submissions of one campaign, got {sorted(campaigns) or 'none'}")
    return campaigns.pop(), batches, sorted(dates)


def register(context: Any) -> dict[str, Any]:
    import psycopg

    from premium.connections import premium_db_kwargs
    from premium.delivery.tracking import register as register_run

    runtime.check_run_conf(context)
    campaign_id, batch_ids, check_dates = submissions_of(context)
    conninfo = premium_db_kwargs()
    if not batch_ids:
        with psycopg.connect(**conninfo) as conn:
            batch_ids = [
                r[0]
                for r in conn.execute(
                    "SELECT batch_id FROM sms_batches WHERE campaign_id = %s AND status IN ('ACCEPTED', 'PARTIAL') "
                    "ORDER BY batch_id",
                    (campaign_id,),
                )
            ]
    settings = _settings(context)
    run = register_run(conninfo, context["dag_run"].run_id, campaign_id, batch_ids, settings, check_dates)
    log.info(
        "tracking %d batches of %s until %s, polling every %.0fs",
        len(run.batch_ids),
        campaign_id,
        run.deadline.isoformat(),
        run.poll_interval_s,
    )
    return {"campaign_id": campaign_id, "batches": len(run.batch_ids)}


def _resubmitter(conninfo: dict[str, Any], context: Any, run: Any):
    def resubmit(campaign_id: str) -> int:
        from premium.banking.stage import correlation_id_for
        from premium.crypto import load_keyring_for
        from premium.notifications.engine import escalate, submit

        check_date = max(run.check_dates) if run.check_dates else None
        summary = submit(
            conninfo,
            campaign_id,
            load_sms(),
            _endpoints(),
            load_keyring_for(conninfo),
            correlation_id_for(context["dag_run"].run_id, check_date),
            holder=f"poll_delivery_status:{context['dag_run'].run_id}",
            wait_s=0,  # another holder is submitting this campaign: the work is its
        )
        if summary.post_attempts or summary.lease_busy:
            log.info("engine run for %s: %s", campaign_id, summary.as_dict())
        escalate(
            summary,
            campaign_id,
            check_date,
            {"dag_id": context["dag"].dag_id, "run_id": context["dag_run"].run_id, "task_id": "poll_delivery_status"},
        )
        return summary.messages_accepted

    return resubmit


def poll(context: Any):
    import psycopg

    from premium.connections import premium_db_kwargs
    from premium.delivery.tracking import load_run, poll_once

    conninfo = premium_db_kwargs()
    with psycopg.connect(**conninfo) as conn:
        run = load_run(conn, context["dag_run"].run_id)
    return poll_once(conninfo, run, _settings(context), load_sms(), _endpoints(), _resubmitter(conninfo, context, run))


def next_poll_in_s(context: Any, outcome: Any) -> float:
    """The run's interval, or less when the window closes sooner."""
    import psycopg

    from premium.connections import premium_db_kwargs

    with psycopg.connect(**premium_db_kwargs()) as conn:
        interval = conn.execute(
            "SELECT poll_interval_s FROM delivery_tracking_runs WHERE dag_run_id = %s", (context["dag_run"].run_id,)
        ).fetchone()[0]
    return max(0.1, min(interval, outcome.seconds_to_deadline + 0.1))


def finalize(context: Any) -> dict[str, Any]:
    import psycopg

    from premium.alerts import raise_alert
    from premium.assets import DELIVERY_CONFIRMED
    from premium.connections import premium_db_kwargs
    from premium.delivery.tracking import finalize as finalize_run
    from premium.delivery.tracking import load_run

    conninfo = premium_db_kwargs()
    with psycopg.connect(**conninfo) as conn:
        run = load_run(conn, context["dag_run"].run_id)
    counts = finalize_run(conninfo, run, load_sms())
    ids = {"dag_id": context["dag"].dag_id, "run_id": context["dag_run"].run_id, "task_id": "finalize_deliveries"}
    if counts.get("undeliverable"):
        raise_alert(
            "sms_undeliverable",
            f"{run.campaign_id}: {counts['undeliverable']} messages undeliverable (escalate: invalid numbers)",
            severity="warning",
            details=counts,
            **ids,
        )
    if counts.get("never_sent"):
        raise_alert(
            "sms_unsent_at_window_end",
            f"{run.campaign_id}: {counts['never_sent']} retries were not sent before the tracking window closed",
            details=counts,
            **ids,
        )
    if counts.get("failed"):
        raise_alert(
            "sms_retry_exhaustion",
            f"{run.campaign_id}: {counts['failed']} messages failed with no retry left",
            details=counts,
            **ids,
        )
    context["outlet_events"][DELIVERY_CONFIRMED].extra = {"campaign_id": run.campaign_id, **counts}
    return counts
