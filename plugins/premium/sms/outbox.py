"""The notification outbox and its batches (§3.2, exactly once).

A notification row per (customer, campaign) is written before anything is sent. Each send
attempt is a message with a deterministic id, ``MSG-<campaign>-<customer>-<attempt>``, placed in a
batch with a deterministic id, ``BATCH-<check date>-<nnn>``. Ids are allocated once, in the
database, under an advisory lock; a retry, a cleared run or a crash between POST and storing
tracking ids resubmits the same ids, which the carrier (idempotent on batchId/messageId) and
we both recognise.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

import psycopg

log = logging.getLogger(__name__)


def message_id_for(campaign_id: str, customer_id: str, attempt: int) -> str:
    return f"MSG-{campaign_id}-{customer_id}-{attempt}"


def batch_id_for(check_date: date, seq: int) -> str:
    return f"BATCH-{check_date:%Y%m%d}-{seq:03d}"


def write_outbox(
    conn: psycopg.Connection, check_date: date, campaign_id: str, correlation_id: str, dag_run_id: str | None = None
) -> int:
    """One PENDING notification per qualified customer of D not yet in the campaign; returns new rows.

    Each new notification is also an audit record (action ``notification_decided``)."""
    cur = conn.execute(
        """
        WITH created AS (
            INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, attempts, language,
                                           template_id, encoding, segments, correlation_id)
            SELECT q.campaign_id, q.customer_id, q.check_date, 'PENDING', 0, c.language,
                   q.template_id, q.encoding, q.segments, %(correlation_id)s
            FROM qualification_outcomes q JOIN customers c ON c.customer_id = q.customer_id
            WHERE q.check_date = %(check_date)s AND q.campaign_id = %(campaign_id)s AND q.outcome = 'qualified'
            ORDER BY q.customer_id
            ON CONFLICT (campaign_id, customer_id) DO NOTHING
            RETURNING customer_id, template_id
        )
        INSERT INTO audit_trail (action, customer_id, campaign_id, check_date, dag_run_id, outcome, correlation_id,
                                 details)
        SELECT 'notification_decided', customer_id, %(campaign_id)s, %(check_date)s::date, %(dag_run_id)s::text, 'notify',
               %(correlation_id)s, jsonb_build_object('template_id', template_id)
        FROM created
        """,
        {
            "check_date": check_date,
            "campaign_id": campaign_id,
            "correlation_id": correlation_id,
            "dag_run_id": dag_run_id,
        },
    )
    return cur.rowcount


def _lock(conn: psycopg.Connection, check_date: date) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(7421002, %s)", (int(check_date.strftime("%Y%m%d")),))


def _next_seq(conn: psycopg.Connection, check_date: date) -> int:
    return conn.execute(
        "SELECT coalesce(max(seq), 0) + 1 FROM sms_batches WHERE check_date = %s", (check_date,)
    ).fetchone()[0]


def assign_batches(
    conn: psycopg.Connection,
    campaign_id: str,
    check_date: date,
    batch_size: int,
    correlation_id: str,
) -> list[str]:
    """Give every notification of the campaign that needs a message (PENDING, no current message)
    its next attempt's message, in new batches of ``batch_size``. Returns the new batch ids."""
    _lock(conn, check_date)
    rows = conn.execute(
        """
        SELECT notification_id, customer_id, attempts, encoding, segments
        FROM sms_notifications
        WHERE campaign_id = %s AND status = 'PENDING' AND current_message_id IS NULL
        ORDER BY customer_id
        FOR UPDATE
        """,
        (campaign_id,),
    ).fetchall()
    if not rows:
        return []
    seq = _next_seq(conn, check_date)
    batch_ids: list[str] = []
    with conn.cursor() as cur:
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            batch_id = batch_id_for(check_date, seq)
            cur.execute(
                "INSERT INTO sms_batches (batch_id, campaign_id, check_date, seq, status, messages, correlation_id) "
                "VALUES (%s, %s, %s, %s, 'PENDING', %s, %s)",
                (batch_id, campaign_id, check_date, seq, len(part), correlation_id),
            )
            with cur.copy(
                "COPY sms_messages (message_id, notification_id, campaign_id, customer_id, attempt, batch_id, status, "
                "encoding, segments, correlation_id) FROM STDIN"
            ) as copy:
                for notification_id, customer_id, attempts, encoding, segments in part:
                    attempt = attempts + 1
                    copy.write_row(
                        (
                            message_id_for(campaign_id, customer_id, attempt),
                            notification_id,
                            campaign_id,
                            customer_id,
                            attempt,
                            batch_id,
                            "PENDING",
                            encoding,
                            segments,
                            correlation_id,
                        )
                    )
            batch_ids.append(batch_id)
            seq += 1
        cur.execute(
            """
            UPDATE sms_notifications n SET attempts = m.attempt, current_message_id = m.message_id, updated_at = now()
            FROM sms_messages m
            WHERE m.notification_id = n.notification_id AND m.batch_id = ANY(%s)
            """,
            (batch_ids,),
        )
    log.info("assigned %d messages of %s to %d new batches", len(rows), campaign_id, len(batch_ids))
    return batch_ids


def split_missing(
    conn: psycopg.Connection, batch_id: str, message_ids: list[str], check_date: date, carrier: str
) -> str:
    """Move messages a 202 did not mention into a new batch pinned to the same carrier.

    They keep their message ids: if the carrier did accept them, it answers the resubmission with
    their existing tracking ids instead of sending again.
    """
    _lock(conn, check_date)
    seq = _next_seq(conn, check_date)
    new_id = batch_id_for(check_date, seq)
    conn.execute(
        """
        INSERT INTO sms_batches (batch_id, campaign_id, check_date, seq, carrier, status, messages, ambiguous,
                                 last_error, correlation_id)
        SELECT %s, campaign_id, %s, %s, %s, 'PENDING', %s, true, 'split from ' || batch_id, correlation_id
        FROM sms_batches WHERE batch_id = %s
        """,
        (new_id, check_date, seq, carrier, len(message_ids), batch_id),
    )
    conn.execute(
        "UPDATE sms_messages SET batch_id = %s, updated_at = now() WHERE batch_id = %s AND message_id = ANY(%s)",
        (new_id, batch_id, message_ids),
    )
    conn.execute("UPDATE sms_batches SET messages = messages - %s WHERE batch_id = %s", (len(message_ids), batch_id))
    return new_id


def open_batches(conn: psycopg.Connection, campaign_id: str) -> list[tuple[str, str | None, bool, int]]:
    """Batches of the campaign not yet accepted: (batch_id, carrier, ambiguous, post_attempts), oldest first."""
    return conn.execute(
        """
        SELECT batch_id, carrier, ambiguous, post_attempts FROM sms_batches
        WHERE campaign_id = %s AND status IN ('PENDING', 'BUFFERED')
        ORDER BY check_date, seq
        """,
        (campaign_id,),
    ).fetchall()


def batch_payload_rows(conn: psycopg.Connection, batch_id: str) -> list[tuple[Any, ...]]:
    """The batch's messages with what is needed to build them: ids, language, encrypted PII."""
    return conn.execute(
        """
        SELECT m.message_id, m.customer_id, c.language, c.first_name_enc, c.phone_enc, c.pii_key_id
        FROM sms_messages m JOIN customers c ON c.customer_id = m.customer_id
        WHERE m.batch_id = %s AND m.status = 'PENDING'
        ORDER BY m.message_id
        """,
        (batch_id,),
    ).fetchall()
