"""Task bodies of the qualification and SMS stages of ``premium_balance_daily``."""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from premium import runtime
from premium.settings import SmsSettings

log = logging.getLogger(__name__)

SECONDARY_CONN_ID = "sms_carrier_secondary"
PRIMARY_CONN_ID = "sms_carrier"


class SmsSegmentLimit(AirflowFailException):
    alert_kind = "sms_template_over_segment_limit"


class SmsCarrierCredentialsRejected(AirflowFailException):
    alert_kind = "sms_carrier_credentials_rejected"


class SmsBatchesBuffered(Exception):
    """Batches the carriers did not accept yet: retried by the task's next attempt."""

    alert_kind = "sms_batches_buffered"


def _settings(context: Any) -> SmsSettings:
    """Deployment settings with the run's ``sms_<knob>`` params applied."""
    return runtime.run_settings(context, "sms")


def _renderer(settings: SmsSettings):
    from premium.sms.render import SmsRenderer

    return SmsRenderer(max_segments=settings.max_segments, bank_name=settings.bank_name)


def _record_run(conninfo: dict[str, Any], check_date, *, create: bool = False, **fields: Any) -> None:
    """Create (``create=True``: the qualification step) or update the date's sms_campaign_runs row."""
    import psycopg
    from psycopg import sql

    values = [json.dumps(v) if isinstance(v, dict) else v for v in fields.values()]
    names = [sql.Identifier(k) for k in fields]
    if create:
        query = sql.SQL(
            "INSERT INTO sms_campaign_runs (check_date, {cols}) VALUES (%s, {vals}) "
            "ON CONFLICT (check_date) DO UPDATE SET {updates}"
        ).format(
            cols=sql.SQL(", ").join(names),
            vals=sql.SQL(", ").join([sql.Placeholder()] * len(names)),
            updates=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(n) for n in names),
        )
        params = [check_date, *values]
    else:
        query = sql.SQL("UPDATE sms_campaign_runs SET {sets} WHERE check_date = %s").format(
            sets=sql.SQL(", ").join(sql.SQL("{} = %s").format(n) for n in names)
        )
        params = [*values, check_date]
    with psycopg.connect(**conninfo) as conn:
        conn.execute(query, params)


def qualify(context: Any) -> dict[str, Any]:
    """Qualification in SQL, then every qualified message rendered (template, encoding, segments)."""
    import pendulum

    from premium.banking.stage import correlation_id_for
    from premium.connections import premium_db_kwargs
    from premium.crypto import load_keyring_for
    from premium.sms.qualify import qualify as run_qualification
    from premium.sms.qualify import render_qualified
    from premium.sms.render import SegmentLimitExceeded

    check_date = runtime.as_of_date(context)
    settings = _settings(context)
    renderer = _renderer(settings)
    try:
        worst = renderer.preflight()
    except SegmentLimitExceeded as exc:
        raise SmsSegmentLimit(f"{exc}; nothing was sent") from exc
    log.info("templates within %d segments (worst case per template: %s)", settings.max_segments, worst)
    conninfo = premium_db_kwargs()
    run_id = context["dag_run"].run_id
    summary = run_qualification(conninfo, check_date, run_id, settings)
    renders = render_qualified(conninfo, check_date, load_keyring_for(conninfo), renderer)
    _record_run(
        conninfo,
        check_date,
        create=True,
        campaign_id=summary.campaign_id,
        dag_run_id=run_id,
        correlation_id=correlation_id_for(run_id, check_date),
        mode="SEND",
        qualified=summary.qualified,
        reasons=summary.reasons,
        status="QUALIFIED",
        send_after=None,
        batches=None,
        submitted=None,
        rejected=None,
        failed_over=None,
        buffered=None,
        detail=None,
        started_at=pendulum.now("UTC"),
        finished_at=None,
    )
    return {"campaign_id": summary.campaign_id, "qualified": summary.qualified, "renders": len(renders)}


def plan_send(context: Any) -> str:
    """Decide SEND / DRY_RUN / LATE_NO_SEND and when the window opens; returns the moment to wait for."""
    import pendulum
    import psycopg

    from premium import late_send
    from premium.connections import premium_db_kwargs
    from premium.notifications import window

    check_date = runtime.as_of_date(context)
    settings = _settings(context)
    dry_run = bool((context.get("params") or {}).get("dry_run"))
    decided_at = pendulum.now("UTC")
    with psycopg.connect(**premium_db_kwargs()) as conn:
        authorisation = late_send.authorisation_for(conn, check_date)
    mode = window.decide_mode(
        check_date, decided_at, settings, dry_run=dry_run, late_send_authorised=authorisation is not None
    )
    send_after = window.send_after(check_date, settings)
    if mode == window.SEND:
        log.info("SMS for %s go out from %s (Asia/Jerusalem)", check_date, send_after.isoformat())
        detail, status, wait_until = None, "WAITING", send_after
        if authorisation is not None and window.is_late(check_date, decided_at, settings):
            detail = f"late send authorised by {authorisation.authorised_by} at {authorisation.authorised_at:%Y-%m-%d %H:%M}Z"
            log.warning("%s (reason in audit_trail)", detail)
    elif mode == window.DRY_RUN:
        log.info("dry run: qualification and rendering recorded; nothing will be sent")
        detail, status, wait_until = "dry run: nothing sent", "NOT_SENT", decided_at
    else:
        detail = (
            f"check date {check_date} is more than {settings.max_lag_days} day(s) old: qualification recorded, "
            "nothing sent (a backfill or a late rerun; an operator may authorise it: "
            "python -m premium.cli authorise-late-send)"
        )
        log.warning("%s", detail)
        status, wait_until = "NOT_SENT", decided_at
    _record_run(premium_db_kwargs(), check_date, mode=mode, send_after=send_after, status=status, detail=detail)
    if mode == window.SEND:
        _prepare_outbox(context, check_date, settings)
    return wait_until.isoformat()


def _prepare_outbox(context: Any, check_date: Any, settings: SmsSettings) -> None:
    """Write the campaign's outbox (payload rendered and encrypted) and place its messages in
    batches, so that the send window only has to POST and record. Idempotent: what is already in
    the outbox or in a batch stays as it is (a retry, a cleared run, the submission task's own call)."""
    import psycopg

    from premium.banking.stage import correlation_id_for
    from premium.connections import premium_db_kwargs
    from premium.crypto import load_keyring_for
    from premium.notifications import outbox
    from premium.notifications.window import campaign_id_for

    run_id = context["dag_run"].run_id
    correlation_id = correlation_id_for(run_id, check_date)
    campaign_id = campaign_id_for(check_date)
    settings.check_customer_facing()  # again, right before anything a customer reads is written
    conninfo = premium_db_kwargs()
    keyring, renderer = load_keyring_for(conninfo), _renderer(settings)
    with psycopg.connect(**conninfo) as conn:
        created = outbox.write_outbox(
            conn, check_date, campaign_id, correlation_id, run_id, keyring=keyring, renderer=renderer
        )
        batch_ids = outbox.assign_batches(conn, campaign_id, settings.batch_size, correlation_id)
        invalid = 0
        if created:  # numbers found not to be mobiles while preparing: never sent, escalated like a 21211
            invalid = conn.execute(
                "SELECT count(*) FROM sms_notifications WHERE campaign_id = %s AND check_date = %s "
                "AND status = 'UNDELIVERABLE' AND attempts = 0",
                (campaign_id, check_date),
            ).fetchone()[0]
    log.info(
        "outbox of %s: %d new notifications (%d undeliverable: not a mobile), %d new batches",
        campaign_id,
        created,
        invalid,
        len(batch_ids),
    )
    if invalid:
        from premium.alerts import raise_alert

        raise_alert(
            "sms_undeliverable_numbers",
            f"{campaign_id}: {invalid} numbers are not valid Israeli mobiles (21211); not sent",
            severity="warning",
            details={"check_date": str(check_date), "count": invalid},
            dag_id=context["dag"].dag_id,
            run_id=run_id,
            task_id=context["ti"].task_id,
        )


def submit(context: Any) -> dict[str, Any]:
    """Outbox, batches, submission; publishes the sms_submissions asset event."""
    import pendulum
    import psycopg

    from premium.banking.stage import correlation_id_for
    from premium.connections import get_connection, premium_db_kwargs
    from premium.crypto import load_keyring_for
    from premium.notifications.carrier import CarrierAuthError, CarrierEndpoint
    from premium.notifications.engine import escalate
    from premium.notifications.engine import submit as run_submission
    from premium.notifications.window import SEND, campaign_id_for

    check_date = runtime.as_of_date(context)
    settings = _settings(context)
    conninfo = premium_db_kwargs()
    with psycopg.connect(**conninfo) as conn:
        row = conn.execute("SELECT mode, detail FROM sms_campaign_runs WHERE check_date = %s", (check_date,)).fetchone()
    if row is None:
        raise AirflowFailException(f"no campaign run record for {check_date}: qualify_customers did not run")
    mode, detail = row
    if mode != SEND:
        raise AirflowSkipException(f"{mode}: {detail}")
    run_id = context["dag_run"].run_id
    correlation_id = correlation_id_for(run_id, check_date)
    campaign_id = campaign_id_for(check_date)
    endpoints = {"primary": CarrierEndpoint.from_connection(get_connection(PRIMARY_CONN_ID), "primary")}
    try:
        endpoints["secondary"] = CarrierEndpoint.from_connection(get_connection(SECONDARY_CONN_ID), "secondary")
    except Exception:  # noqa: BLE001 - AirflowNotFoundException: no secondary carrier configured
        log.info("no %s connection: without a secondary carrier, unsent batches are buffered", SECONDARY_CONN_ID)
    _prepare_outbox(context, check_date, settings)  # normally done before the window: then a no-op
    _record_run(conninfo, check_date, status="SUBMITTING")
    try:
        summary = run_submission(
            conninfo,
            campaign_id,
            settings,
            endpoints,
            load_keyring_for(conninfo),
            correlation_id,
            holder=f"submit_sms_batches:{run_id}",
        )
    except CarrierAuthError as exc:
        raise SmsCarrierCredentialsRejected(str(exc)) from exc
    if summary.lease_busy:
        raise SmsBatchesBuffered(
            f"another submitter of {campaign_id} held its lease for {settings.lease_wait_s:.0f}s; the next attempt sends"
        )
    counts = summary.as_dict()
    log.info("submission of %s: %s", campaign_id, counts)
    with psycopg.connect(**conninfo) as conn:
        batch_ids = [
            r[0]
            for r in conn.execute(
                "SELECT batch_id FROM sms_batches WHERE campaign_id = %s AND status IN ('ACCEPTED', 'PARTIAL') "
                "AND (check_date = %s OR batch_id = ANY(%s)) ORDER BY batch_id",
                (campaign_id, check_date, summary.accepted_batch_ids),
            )
        ]
        buffered = conn.execute(
            "SELECT count(*) FROM sms_batches WHERE campaign_id = %s AND status IN ('PENDING', 'BUFFERED') "
            "AND check_date <= %s",
            (campaign_id, check_date),
        ).fetchone()[0]
    _record_run(
        conninfo,
        check_date,
        batches=len(batch_ids),
        submitted=summary.messages_accepted,
        rejected=summary.messages_rejected,
        failed_over=summary.failed_over_batches,
        buffered=buffered,
        status="DONE" if not buffered else "SUBMITTING",
    )
    escalate(summary, campaign_id, check_date, {**_alert_ids(context), "task_id": "submit_sms_batches"})
    if summary.window_closed and buffered:
        log.warning(
            "the send window closed with %d batches unsent: they stay in the outbox and delivery tracking sends "
            "them in the next window",
            buffered,
        )
    if buffered and not summary.window_closed and context["ti"].try_number <= context["task"].retries:
        raise SmsBatchesBuffered(
            f"{buffered} batches not accepted by any carrier yet (buffered); the next attempt sends them"
        )
    from premium.assets import SMS_SUBMISSIONS

    context["outlet_events"][SMS_SUBMISSIONS].extra = {
        "campaign_id": campaign_id,
        "check_date": check_date.isoformat(),
        "batch_ids": batch_ids,
        "messages_accepted": summary.messages_accepted,
        "messages_rejected": summary.messages_rejected,
        "failed_over_batches": summary.failed_over_batches,
        "buffered_batches": buffered,
        "correlation_id": correlation_id,
    }
    _record_run(conninfo, check_date, finished_at=pendulum.now("UTC"))
    return counts


def _alert_ids(context: Any) -> dict[str, str]:
    return {"dag_id": context["dag"].dag_id, "run_id": context["dag_run"].run_id}
