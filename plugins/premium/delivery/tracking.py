"""Tracking one submission to its end (§3.3, §3.6, §4.2 part 3).

A tracking run follows the notifications of the batches its asset events named. Each poll:

1. asks the carrier for the status of every current message of those notifications that is not
   final, ``in_flight`` requests at a time, with retries and a circuit breaker per carrier;
2. applies the answers through :func:`premium.notifications.state.apply_updates` (monotonic; retry
   decisions per §3.6 in the same transaction);
3. resubmits the notifications whose failure may be retried, under the same exactly-once
   rules as the first submission (:mod:`premium.notifications.engine`: new attempt, new deterministic
   message id, new batch); their new messages are followed from then on.

The window (72 h by default) is kept in ``delivery_tracking_runs.deadline``, not in the trigger:
when it has passed, :func:`finalize` marks what is still open as Unconfirmed.
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

from premium.audit import AuditLog
from premium.audit import flush as audit_flush
from premium.notifications.carrier import CarrierEndpoint, SmsCarrierClient
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
    conninfo: dict[str, Any], dag_run_id: str, campaign_id: str, batch_ids: list[str], settings: DeliverySettings
) -> TrackingRun:
    """Create the run's tracking record once (a retried task keeps its deadline)."""
    with psycopg.connect(**conninfo) as conn:
        conn.execute(
            """
            INSERT INTO delivery_tracking_runs (dag_run_id, campaign_id, batch_ids, submitted_at, deadline,
                                                poll_interval_s, status)
            SELECT %(run)s, %(campaign)s, %(batches)s, coalesce(min(b.submitted_at), now()),
                   coalesce(min(b.submitted_at), now()) + make_interval(secs => %(window)s), %(interval)s, 'TRACKING'
            FROM sms_batches b WHERE b.batch_id = ANY(%(batches)s)
            ON CONFLICT (dag_run_id) DO NOTHING
            """,
            {
                "run": dag_run_id,
                "campaign": campaign_id,
                "batches": batch_ids,
                "window": settings.window_s,
                "interval": settings.poll_interval_s,
            },
        )
        return load_run(conn, dag_run_id)


def load_run(conn: psycopg.Connection, dag_run_id: str) -> TrackingRun:
    row = conn.execute(
        "SELECT dag_run_id, campaign_id, batch_ids, deadline, poll_interval_s FROM delivery_tracking_runs "
        "WHERE dag_run_id = %s",
        (dag_run_id,),
    ).fetchone()
    if row is None:
        raise LookupError(f"no delivery tracking record for run {dag_run_id}")
    return TrackingRun(*row)


_FOLLOWED = """
WITH followed AS (
    SELECT DISTINCT m.notification_id FROM sms_messages m WHERE m.batch_id = ANY(%(batches)s)
)
"""


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
        {"batches": run.batch_ids},
    ).fetchall()


def pending_retries(conn: psycopg.Connection, run: TrackingRun) -> int:
    return conn.execute(
        _FOLLOWED  # noqa: S608 - constant text, parameters bound
        + """
        SELECT count(*) FROM followed f JOIN sms_notifications n ON n.notification_id = f.notification_id
        WHERE n.status = 'PENDING'
        """,
        {"batches": run.batch_ids},
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
    semaphore = asyncio.Semaphore(settings.in_flight)
    updates: list[StatusUpdate] = []
    errors = 0

    async def one(carrier: str, tracking_id: str) -> None:
        nonlocal errors
        client = clients.get(carrier)
        if client is None:
            errors += 1
            return
        async with semaphore:
            for attempt in range(settings.max_retries + 1):
                try:
                    status, body = await client.get_status(tracking_id)
                except Exception as exc:  # noqa: BLE001 - timeouts, 5xx, open breaker: retried, then counted
                    if attempt < settings.max_retries:
                        await asyncio.sleep(settings.backoff_s(attempt + 1))
                        continue
                    errors += 1
                    log.debug("status of %s/%s unavailable: %s", carrier, tracking_id, type(exc).__name__)
                    return
                break
        if status != 200 or not isinstance(body, dict) or not body.get("status"):
            errors += 1
            return
        event_at = body.get("deliveryTimestamp")
        try:
            parsed = datetime.fromisoformat(event_at.replace("Z", "+00:00")) if event_at else None
        except (AttributeError, ValueError):
            parsed = None
        updates.append(
            StatusUpdate(
                carrier,
                tracking_id,
                str(body["status"]),
                None if body.get("statusCode") in (None, "") else str(body["statusCode"]),
                str(body.get("statusMessage") or "")[:200] or None,
                parsed,
            )
        )

    try:
        await asyncio.gather(*(one(c, t) for c, t in items))
    finally:
        for client in clients.values():
            await client.__aexit__(None, None, None)
    return updates, errors


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
    updates, errors = (
        asyncio.run(poll_statuses(items, endpoints, settings, audit, correlation_id)) if items else ([], 0)
    )
    audit_flush(conninfo, audit)  # one COPY for the whole poll
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
        conn.execute(
            _FOLLOWED  # noqa: S608 - constant text, parameters bound
            + """
            UPDATE sms_notifications n SET status = 'FAILED', error_detail = 'retry not sent before the window closed',
                updated_at = now()
            FROM followed f WHERE n.notification_id = f.notification_id AND n.status = 'PENDING'
            """,
            {"batches": run.batch_ids},
        )
        rows = conn.execute(
            _FOLLOWED  # noqa: S608 - constant text, parameters bound
            + """
            SELECT n.status, count(*), count(*) FILTER (WHERE n.attempts > 1)
            FROM followed f JOIN sms_notifications n ON n.notification_id = f.notification_id
            GROUP BY n.status
            """,
            {"batches": run.batch_ids},
        ).fetchall()
        counts = {status.lower(): count for status, count, _ in rows}
        counts["retried"] = sum(r[2] for r in rows)
        counts["expired_now"] = len(expired)
        conn.execute(
            "UPDATE delivery_tracking_runs SET status = 'DONE', counts = %s, finished_at = now() WHERE dag_run_id = %s",
            (psycopg.types.json.Jsonb(counts), run.dag_run_id),
        )
    log.info("delivery of %s final: %s", run.dag_run_id, counts)
    return counts
