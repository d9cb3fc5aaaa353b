"""Delivery state: one monotonic status per message, changed only by the database.

Poll results and webhooks both go through :func:`apply_updates`. A change is applied only when
the new status ranks above the current one (Queued/NoStatus < Sent < Failed/Undeliverable/Unconfirmed
< Delivered: a late DELIVERED outranks an earlier FAILED, and cancels the retry it scheduled); the
comparison happens inside the UPDATE, so a late SENT after DELIVERED, a duplicate or a replay
changes nothing, and a poll and a webhook racing on one message end consistent whatever their
order. Each applied change is appended to ``delivery_status_history`` and mirrored to the
message and its notification. A FAILED status decides the retry (§3.6) in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from premium.notifications.failures import classify, may_retry
from premium.settings import SmsSettings

# carrier status -> (our status, rank)
CARRIER_STATUSES: dict[str, tuple[str, int]] = {
    "QUEUED": ("Queued", 10),
    "NO_STATUS": ("NoStatus", 15),
    "SENT": ("Sent", 20),
    "DELIVERED": ("Delivered", 35),
    "FAILED": ("Failed", 30),
    "UNDELIVERABLE": ("Undeliverable", 30),
}
# Not a carrier status: what expiry of the tracking window writes.
CARRIER_STATUSES["UNCONFIRMED"] = ("Unconfirmed", 30)
FINAL_RANK = 30  # at or above: final (Delivered, 35, outranks the other final statuses)
# our status -> sms_messages / sms_notifications status
MIRROR = {
    "Queued": "QUEUED",
    "NoStatus": "NO_STATUS",
    "Sent": "SENT",
    "Delivered": "DELIVERED",
    "Failed": "FAILED",
    "Undeliverable": "UNDELIVERABLE",
    "Unconfirmed": "UNCONFIRMED",
}


class UnknownStatus(ValueError):
    pass


@dataclass(frozen=True)
class StatusUpdate:
    carrier: str
    tracking_id: str
    carrier_status: str  # QUEUED | SENT | DELIVERED | FAILED | UNDELIVERABLE | NO_STATUS
    status_code: str | None = None
    status_message: str | None = None
    event_at: datetime | None = None

    def ours(self) -> tuple[str, int]:
        try:
            return CARRIER_STATUSES[self.carrier_status.upper()]
        except KeyError:
            raise UnknownStatus(f"unknown carrier status {self.carrier_status!r}") from None


@dataclass(frozen=True)
class Applied:
    message_id: str
    status: str
    status_code: str | None
    retry: str | None  # "retry" | "exhausted" | None


_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS staging_status_updates (
    carrier text, tracking_id text, status text, status_rank smallint, status_code text, status_message text,
    event_at timestamptz
) ON COMMIT DROP
"""

# `current` locks the rows and carries the incoming values; `changed` reads from it (an UPDATE
# and a SELECT … FOR UPDATE of the same rows in one statement would hide them from each other).
_APPLY = """
WITH incoming AS (
    SELECT DISTINCT ON (carrier, tracking_id) * FROM staging_status_updates
    ORDER BY carrier, tracking_id, status_rank DESC
),
current AS (
    SELECT d.message_id, d.status AS from_status, i.status AS to_status, i.status_rank AS to_rank,
           i.status_code AS new_code, i.status_message AS new_message, i.event_at
    FROM delivery_status d JOIN incoming i ON d.carrier = i.carrier AND d.tracking_id = i.tracking_id
    ORDER BY d.message_id
    FOR UPDATE OF d
),
changed AS (
    UPDATE delivery_status d SET
        status = cur.to_status, status_rank = cur.to_rank, status_code = coalesce(cur.new_code, d.status_code),
        status_message = coalesce(cur.new_message, d.status_message),
        delivered_at = CASE WHEN cur.to_status = 'Delivered' THEN coalesce(cur.event_at, now()) ELSE d.delivered_at END,
        last_event_at = cur.event_at, last_source = %(source)s,
        polls = d.polls + CASE WHEN %(source)s = 'poll' THEN 1 ELSE 0 END,
        updated_at = now()
    FROM current cur
    WHERE d.message_id = cur.message_id AND d.status_rank < cur.to_rank
    RETURNING d.message_id, d.notification_id, d.status, d.status_code, cur.event_at, cur.from_status,
              d.campaign_id, d.customer_id, d.carrier
),
audit AS (
    INSERT INTO audit_trail (action, customer_id, campaign_id, outcome, details)
    SELECT 'delivery_final', c.customer_id, c.campaign_id, c.status,
           jsonb_build_object('message_id', c.message_id, 'carrier', c.carrier, 'status_code', c.status_code,
                              'source', %(source)s::text)
    FROM changed c WHERE c.status IN ('Delivered', 'Failed', 'Undeliverable', 'Unconfirmed')
),
history AS (
    INSERT INTO delivery_status_history (message_id, from_status, to_status, status_code, source, event_at)
    SELECT c.message_id, c.from_status, c.status, c.status_code, %(source)s, c.event_at
    FROM changed c
),
messages AS (
    UPDATE sms_messages m SET status = %(mirror)s::jsonb ->> c.status, status_code = c.status_code, updated_at = now()
    FROM changed c WHERE m.message_id = c.message_id
)
SELECT c.message_id, c.notification_id, c.status, c.status_code, m.attempt
FROM changed c JOIN sms_messages m ON m.message_id = c.message_id
"""


def apply_updates(
    conn: psycopg.Connection, updates: list[StatusUpdate], source: str, settings: SmsSettings
) -> list[Applied]:
    """Apply status updates in one transaction; returns the changes that took effect."""
    import json

    if not updates:
        return []
    applied: list[Applied] = []
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_STAGE)
        with cur.copy("COPY staging_status_updates FROM STDIN") as copy:
            for u in updates:
                status, rank = u.ours()
                copy.write_row((u.carrier, u.tracking_id, status, rank, u.status_code, u.status_message, u.event_at))
        rows = cur.execute(_APPLY, {"source": source, "mirror": json.dumps(MIRROR)}).fetchall()
        for message_id, notification_id, status, code, attempt in rows:
            retry = _settle_notification(cur, notification_id, message_id, status, code, attempt, settings)
            applied.append(Applied(message_id, status, code, retry))
        cur.execute("DROP TABLE staging_status_updates")
    return applied


def retry_not_before(attempt: int, settings: SmsSettings) -> float:
    """Seconds from a failure of attempt ``attempt`` to the earliest moment of the next one."""
    return settings.retry_backoff_s * 2 ** max(0, attempt - 1)


def _settle_notification(cur, notification_id, message_id, status, code, attempt, settings) -> str | None:
    """Mirror the message's status to its notification; for Failed, decide the retry (§3.6)."""
    retry = None
    if status == "Delivered":
        # A DELIVERED of a message whose failure scheduled a retry not yet sent: the customer has
        # the SMS; the retry is cancelled (its message, if already placed in a batch that has not
        # gone out, is withdrawn from it).
        withdrawn = cur.execute(
            """
            UPDATE sms_messages m SET status = 'REJECTED', status_code = 'SUPERSEDED', updated_at = now()
            FROM sms_notifications n, sms_batches b
            WHERE n.notification_id = %s AND n.status = 'PENDING' AND m.notification_id = n.notification_id
              AND m.message_id = n.current_message_id AND m.status = 'PENDING' AND m.message_id <> %s
              AND b.batch_id = m.batch_id AND NOT b.in_flight AND NOT b.ambiguous
            RETURNING m.message_id
            """,
            (notification_id, message_id),
        ).fetchall()
        cur.execute(
            """
            UPDATE sms_notifications SET status = 'DELIVERED', current_message_id = %s, next_attempt_at = NULL,
                error_code = NULL, updated_at = now()
            WHERE notification_id = %s AND status = 'PENDING' AND (current_message_id IS NULL OR current_message_id = ANY(%s))
            """,
            (message_id, notification_id, [w[0] for w in withdrawn]),
        )
    if status == "Failed":
        if may_retry(code, attempt, settings):
            retry = "retry"
            cur.execute(
                """
                UPDATE sms_notifications SET status = 'PENDING', current_message_id = NULL, error_code = %s,
                    error_detail = %s, next_attempt_at = now() + make_interval(secs => %s), updated_at = now()
                WHERE notification_id = %s AND current_message_id = %s
                """,
                (
                    code,
                    classify(code, settings).category,
                    retry_not_before(attempt, settings),
                    notification_id,
                    message_id,
                ),
            )
        else:
            retry = "exhausted"
    if retry != "retry":
        cur.execute(
            """
            UPDATE sms_notifications SET status = %s, error_code = coalesce(%s, error_code), updated_at = now()
            WHERE notification_id = %s AND current_message_id = %s
            """,
            (MIRROR[status], code if status in ("Failed", "Undeliverable") else None, notification_id, message_id),
        )
    if retry:
        cur.execute("UPDATE delivery_status SET retry_decision = %s WHERE message_id = %s", (retry, message_id))
    return retry


def register_accepted(cur: Any, carrier: str, accepted: dict[str, str]) -> None:
    """Start the delivery status of freshly accepted messages (called inside the submission's transaction)."""
    cur.execute(
        """
        INSERT INTO delivery_status (message_id, notification_id, campaign_id, customer_id, carrier, tracking_id,
                                     status, status_rank, last_source, created_at)
        SELECT m.message_id, m.notification_id, m.campaign_id, m.customer_id, %s, m.tracking_id, 'Queued', 10,
               'submission', coalesce(m.submitted_at, now())
        FROM sms_messages m
        WHERE m.message_id = ANY(%s) AND m.tracking_id IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING message_id
        """,
        (carrier, list(accepted)),
    )
    started = [r[0] for r in cur.fetchall()]
    if started:
        cur.execute(
            "INSERT INTO delivery_status_history (message_id, from_status, to_status, source) "
            "SELECT unnest(%s::text[]), NULL, 'Queued', 'submission'",
            (started,),
        )


def record_webhook(
    conn: psycopg.Connection, webhook_id: str, update: StatusUpdate, settings: SmsSettings
) -> tuple[str, list[Applied]]:
    """Apply one verified webhook of ``update.carrier`` exactly once, to that carrier's message only
    (its delivery_status row with this tracking id; another carrier's message with the same tracking
    id is never touched). Webhook-ids are per carrier: the same webhook-id from the two carriers is
    two deliveries. Returns ('replayed' | 'applied' | 'no_change' | 'unknown_tracking_id', changes)."""
    if not update.carrier:
        raise ValueError("a webhook update must name its carrier")
    with conn.transaction():
        inserted = conn.execute(
            "INSERT INTO webhook_events (carrier, webhook_id, tracking_id, status, outcome) "
            "VALUES (%s, %s, %s, %s, 'no_change') ON CONFLICT (carrier, webhook_id) DO NOTHING RETURNING webhook_id",
            (update.carrier, webhook_id, update.tracking_id, update.carrier_status),
        ).fetchone()
        if inserted is None:
            return "replayed", []
        known = conn.execute(
            "SELECT 1 FROM delivery_status WHERE carrier = %s AND tracking_id = %s",
            (update.carrier, update.tracking_id),
        ).fetchone()
        if known is None:
            conn.execute(
                "UPDATE webhook_events SET outcome = 'unknown_tracking_id' WHERE carrier = %s AND webhook_id = %s",
                (update.carrier, webhook_id),
            )
            return "unknown_tracking_id", []
        applied = apply_updates(conn, [update], "webhook", settings)
        if applied:
            conn.execute(
                "UPDATE webhook_events SET outcome = 'applied' WHERE carrier = %s AND webhook_id = %s",
                (update.carrier, webhook_id),
            )
        return ("applied" if applied else "no_change"), applied
