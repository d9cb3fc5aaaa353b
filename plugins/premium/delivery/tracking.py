"""Tracking one submission to its end (§3.3, §3.6, §4.2 part 3).

A tracking run follows every notification of its check dates (named by its asset events), in
whatever batch its messages are: a split of a partial 202, a retry, a batch another run sent.
Each poll:

1. asks the carrier for the status of every current message of those notifications that is not
   final, ``in_flight`` requests at a time, with retries and a circuit breaker per carrier;
2. applies the answers through :func:`premium.notifications.state.apply_updates` (monotonic;
   DELIVERED outranks FAILED; retry decisions per §3.6 in the same transaction);
3. runs the submission engine (:mod:`premium.notifications.engine`) for the campaign while it has
   open work: retries whose backoff has passed, batches left buffered or unsent. The engine keeps
   its rules whoever calls it: one holder of the campaign's lease (a tracking run does not wait for
   another holder; it leaves the work to it) and nothing POSTed outside the send window.

The window (72 h by default) is kept in ``delivery_tracking_runs.deadline``, not in the trigger:
when it has passed, :func:`finalize` marks what is still open as Unconfirmed, and a retry that
never went out as FAILED (or UNCONFIRMED when an earlier POST of it may have reached the carrier).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from premium.audit import AuditLog, AuditWriter
from premium.notifications.carrier import CarrierEndpoint, SmsCarrierClient, read_statuses
from premium.notifications.state import StatusUpdate, apply_updates
from premium.settings import DeliverySettings, SmsSettings

log = logging.getLogger(__name__)


@dataclass
class TrackingRun:
    dag_run_id: str
    campaign_id: str
    batch_ids: list[str]
    deadline: datetime
    poll_interval_s: float
    check_dates: list


@dataclass
class PollOutcome:
    open_messages: int
    polled: int
    applied: Counter = field(default_factory=Counter)
    retries_scheduled: int = 0
    resubmitted: int = 0
    pending_retries: int = 0
    errors: int = 0
    seconds: float = 0.0
    seconds_to_deadline: float = 0.0

    @property
    def done(self) -> bool:
        return (self.open_messages == 0 and self.pending_retries == 0) or self.seconds_to_deadline <= 0


def register(
    conninfo: dict[str, Any],
    dag_run_id: str,
    campaign_id: str,
    batch_ids: list[str],
    settings: DeliverySettings,
    check_dates: list | None = None,
) -> TrackingRun:
    """Create the run's tracking record once (a retried task keeps its deadline)."""
    with psycopg.connect(**conninfo) as conn:
        conn.execute(
            """
            INSERT INTO delivery_tracking_runs (dag_run_id, campaign_id, batch_ids, submitted_at, deadline,
                                                poll_interval_s, status, check_dates)
            SELECT %(run)s, %(campaign)s, %(batches)s, coalesce(min(b.submitted_at), now()),
                   coalesce(min(b.submitted_at), now()) + make_interval(secs => %(window)s), %(interval)s, 'TRACKING',
                   ARRAY(SELECT DISTINCT d FROM unnest(array_agg(b.check_date) || %(dates)s::date[]) AS d
                         WHERE d IS NOT NULL ORDER BY d)
            FROM sms_batches b WHERE b.batch_id = ANY(%(batches)s)
            ON CONFLICT (dag_run_id) DO NOTHING
            """,
            {
                "run": dag_run_id,
                "campaign": campaign_id,
                "batches": batch_ids,
                "window": settings.window_s,
                "interval": settings.poll_interval_s,
                "dates": list(check_dates or []),
            },
        )
        return load_run(conn, dag_run_id)


def load_run(conn: psycopg.Connection, dag_run_id: str) -> TrackingRun:
    row = conn.execute(
        "SELECT dag_run_id, campaign_id, batch_ids, deadline, poll_interval_s, check_dates FROM delivery_tracking_runs "
        "WHERE dag_run_id = %s",
        (dag_run_id,),
    ).fetchone()
    if row is None:
        raise LookupError(f"no delivery tracking record for run {dag_run_id}")
    return TrackingRun(*row)


_FOLLOWED = """
WITH followed AS (
    SELECT n.notification_id FROM sms_notifications n
    WHERE n.campaign_id = %(campaign)s AND n.check_date = ANY(%(dates)s)
)
"""


def _scope(run: TrackingRun) -> dict[str, Any]:
    return {"campaign": run.campaign_id, "dates": list(run.check_dates)}


def open_messages(conn: psycopg.Connection, run: TrackingRun) -> list[tuple[str, str]]:
    """(carrier, tracking_id) of the followed notifications' current messages that are not final."""
    return conn.execute(
        _FOLLOWED  # noqa: S608 - constant text, parameters bound
        + """
        SELECT d.carrier, d.tracking_id
        FROM followed f
        JOIN sms_notifications n ON n.notification_id = f.notification_id
        JOIN delivery_status d ON d.message_id = n.current_message_id
        WHERE d.status_rank < 30
        ORDER BY d.carrier, d.tracking_id
        """,
        _scope(run),
    ).fetchall()


def pending_retries(conn: psycopg.Connection, run: TrackingRun) -> int:
    return conn.execute(
        _FOLLOWED  # noqa: S608 - constant text, parameters bound
        + """
        SELECT count(*) FROM followed f JOIN sms_notifications n ON n.notification_id = f.notification_id
        WHERE n.status = 'PENDING'
        """,
        _scope(run),
    ).fetchone()[0]


async def poll_statuses(
    items: list[tuple[str, str]],
    endpoints: dict[str, CarrierEndpoint],
    settings: DeliverySettings,
    audit: AuditLog | None = None,
    correlation_id: str | None = None,
) -> tuple[list[StatusUpdate], int]:
    """GET §3.3 for every item, bounded concurrency; returns the updates and the number of errors."""
    clients: dict[str, SmsCarrierClient] = {}
    for name, endpoint in endpoints.items():
        clients[name] = SmsCarrierClient(
            endpoint,
            timeout_s=settings.request_timeout_s,
            breaker_failures=settings.breaker_failures,
            breaker_reset_s=settings.breaker_reset_s,
            audit=audit,
            correlation_id=correlation_id,
        )
        await clients[name].__aenter__()
    try:
        return await read_statuses(
            items, clients, in_flight=settings.in_flight, max_retries=settings.max_retries, backoff_s=settings.backoff_s
        )
    finally:
        for client in clients.values():
            await client.__aexit__(None, None, None)


def poll_once(
    conninfo: dict[str, Any],
    run: TrackingRun,
    settings: DeliverySettings,
    sms_settings: SmsSettings,
    endpoints: dict[str, CarrierEndpoint],
    resubmit: Any,
) -> PollOutcome:
    """One poll of the run; ``resubmit(campaign_id)`` sends the retries (returns messages accepted)."""
    started = time.monotonic()
    with psycopg.connect(**conninfo) as conn:
        items = open_messages(conn, run)
    audit = AuditLog()
    correlation_id = f"track-{run.dag_run_id}"[:64]
    with AuditWriter(audit, conninfo, name="poll-audit"):  # each GET in system_events within a second
        updates, errors = (
            asyncio.run(poll_statuses(items, endpoints, settings, audit, correlation_id)) if items else ([], 0)
        )
    known = [
        u
        for u in updates
        if u.carrier_status.upper() in ("QUEUED", "SENT", "DELIVERED", "FAILED", "UNDELIVERABLE", "NO_STATUS")
    ]
    with psycopg.connect(**conninfo) as conn:
        applied = apply_updates(conn, known, "poll", sms_settings)
        conn.execute("UPDATE delivery_tracking_runs SET polls = polls + 1 WHERE dag_run_id = %s", (run.dag_run_id,))
    outcome = PollOutcome(open_messages=0, polled=len(items), errors=errors + len(updates) - len(known))
    outcome.applied = Counter(a.status for a in applied)
    outcome.retries_scheduled = sum(1 for a in applied if a.retry == "retry")
    with psycopg.connect(**conninfo) as conn:
        if pending_retries(conn, run):
            outcome.resubmitted = resubmit(run.campaign_id)
        outcome.open_messages = len(open_messages(conn, run))
        outcome.pending_retries = pending_retries(conn, run)
        outcome.seconds_to_deadline = conn.execute(
            "SELECT extract(epoch FROM deadline - now())::float8 FROM delivery_tracking_runs WHERE dag_run_id = %s",
            (run.dag_run_id,),
        ).fetchone()[0]
    outcome.seconds = time.monotonic() - started
    log.info(
        "poll of %s: %d messages asked (%d unanswered), changes %s, %d retries scheduled, %d resubmitted; "
        "%d still open, %d retries pending; %.1fs; window closes in %.0fs",
        run.dag_run_id,
        outcome.polled,
        outcome.errors,
        dict(outcome.applied),
        outcome.retries_scheduled,
        outcome.resubmitted,
        outcome.open_messages,
        outcome.pending_retries,
        outcome.seconds,
        outcome.seconds_to_deadline,
    )
    return outcome


def finalize(conninfo: dict[str, Any], run: TrackingRun, sms_settings: SmsSettings) -> dict[str, int]:
    """Close the run: what is still open becomes Unconfirmed; counts per final state."""
    with psycopg.connect(**conninfo) as conn:
        remaining = open_messages(conn, run)
        expired = apply_updates(conn, [StatusUpdate(c, t, "UNCONFIRMED") for c, t in remaining], "expiry", sms_settings)
        unsent = conn.execute(
            _FOLLOWED  # noqa: S608 - constant text, parameters bound
            + """
            , withdrawn AS (  -- not sent: taken out of their batch so that no later run sends them
                UPDATE sms_messages m SET status = 'REJECTED', status_code = 'EXPIRED', updated_at = now()
                FROM followed f, sms_notifications n, sms_batches b
                WHERE n.notification_id = f.notification_id AND n.status = 'PENDING'
                  AND m.message_id = n.current_message_id AND m.status = 'PENDING'
                  AND b.batch_id = m.batch_id AND NOT b.ambiguous AND NOT b.in_flight
                RETURNING m.notification_id
            )
            UPDATE sms_notifications n SET
                status = CASE WHEN n.current_message_id IS NULL OR n.notification_id IN (SELECT notification_id FROM withdrawn)
                              THEN 'FAILED' ELSE 'UNCONFIRMED' END,
                error_detail = CASE WHEN n.current_message_id IS NULL OR n.notification_id IN (SELECT notification_id FROM withdrawn)
                                    THEN 'not sent before the tracking window closed'
                                    ELSE 'the carrier never answered definitively before the tracking window closed' END,
                next_attempt_at = NULL, updated_at = now()
            FROM followed f WHERE n.notification_id = f.notification_id AND n.status = 'PENDING'
            RETURNING n.status
            """,
            _scope(run),
        ).fetchall()
        rows = conn.execute(
            _FOLLOWED  # noqa: S608 - constant text, parameters bound
            + """
            SELECT n.status, count(*), count(*) FILTER (WHERE n.attempts > 1)
            FROM followed f JOIN sms_notifications n ON n.notification_id = f.notification_id
            GROUP BY n.status
            """,
            _scope(run),
        ).fetchall()
        counts = {status.lower(): count for status, count, _ in rows}
        counts["retried"] = sum(r[2] for r in rows)
        counts["expired_now"] = len(expired)
        counts["never_sent"] = sum(1 for (status,) in unsent if status == "FAILED")
        conn.execute(
            "UPDATE delivery_tracking_runs SET status = 'DONE', counts = %s, finished_at = now() WHERE dag_run_id = %s",
            (psycopg.types.json.Jsonb(counts), run.dag_run_id),
        )
    log.info("delivery of %s final: %s", run.dag_run_id, counts)
    return counts
