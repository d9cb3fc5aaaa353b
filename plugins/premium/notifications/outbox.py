"""The notification outbox and its batches (§3.2, exactly once).

A notification row per (customer, campaign) is written before anything is sent, with its payload
(the rendered text and the E.164 number, encrypted): the outbox is prepared the evening before
the send window, so the morning's submission only decrypts, POSTs and records. Each send
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

from premium.crypto import PiiKeyring, aad_for, rotate_rows
from premium.sms.phones import InvalidPhone, normalise_mobile

log = logging.getLogger(__name__)


def message_id_for(campaign_id: str, customer_id: str, attempt: int) -> str:
    return f"MSG-{campaign_id}-{customer_id}-{attempt}"


def batch_id_for(check_date: date, seq: int) -> str:
    return f"BATCH-{check_date:%Y%m%d}-{seq:03d}"


def outbox_aad(campaign_id: str, customer_id: str, field: str) -> bytes:
    """Associated data binding a payload ciphertext to one notification (campaign, customer) and field."""
    return f"sms_notifications/{campaign_id}/{customer_id}/{field}".encode()


_NEW_QUALIFIED = """
SELECT q.customer_id, c.language, c.first_name_enc, c.phone_enc, c.pii_key_id
FROM qualification_outcomes q
JOIN customers c ON c.customer_id = q.customer_id
WHERE q.check_date = %(check_date)s AND q.campaign_id = %(campaign_id)s AND q.outcome = 'qualified'
  AND q.customer_id > %(after)s
  AND NOT EXISTS (SELECT 1 FROM sms_notifications n
                  WHERE n.campaign_id = %(campaign_id)s AND n.customer_id = q.customer_id)
ORDER BY q.customer_id
LIMIT %(limit)s
"""

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staging_outbox (
    customer_id text, language text, template_id text, encoding text, segments int,
    content_enc bytea, phone_enc bytea, pii_key_id text, status text, error_code text, error_detail text
) ON COMMIT DELETE ROWS
"""

_INSERT_FROM_STAGING = """
WITH created AS (
    INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, attempts, language, template_id,
                                   encoding, segments, content_enc, phone_enc, pii_key_id, error_code,
                                   error_detail, correlation_id)
    SELECT %(campaign_id)s, s.customer_id, %(check_date)s, s.status, 0, s.language, s.template_id, s.encoding,
           s.segments, s.content_enc, s.phone_enc, s.pii_key_id, s.error_code, s.error_detail, %(correlation_id)s
    FROM staging_outbox s
    ORDER BY s.customer_id
    ON CONFLICT (campaign_id, customer_id) DO NOTHING
    RETURNING customer_id, template_id, status, error_detail
)
INSERT INTO audit_trail (action, customer_id, campaign_id, check_date, dag_run_id, outcome, correlation_id, details)
SELECT 'notification_decided', customer_id, %(campaign_id)s, %(check_date)s::date, %(dag_run_id)s::text,
       CASE WHEN status = 'PENDING' THEN 'notify' ELSE 'undeliverable:21211' END, %(correlation_id)s,
       jsonb_strip_nulls(jsonb_build_object('template_id', template_id, 'reason', error_detail))
FROM created
"""


def write_outbox(
    conn: psycopg.Connection,
    check_date: date,
    campaign_id: str,
    correlation_id: str,
    dag_run_id: str | None = None,
    *,
    keyring: PiiKeyring,
    renderer: Any,
    page_size: int = 5000,
) -> int:
    """One notification per qualified customer of D not yet in the campaign, with its payload; returns new rows.

    The payload is what the morning submission sends: the rendered text and the E.164 number,
    each encrypted under the keyring's current key and bound to the notification
    (:func:`outbox_aad`). A number that is not a valid Israeli mobile any more (the customer's
    ``phone_valid`` flag was stale) gives an UNDELIVERABLE notification (§3.6 21211, never sent)
    instead. Each new notification is also an audit record (action ``notification_decided``).
    Pages of ``page_size`` customers, committed one by one: a retry continues where it stopped."""
    created = 0
    after = ""
    while True:
        rows = conn.execute(
            _NEW_QUALIFIED,
            {"check_date": check_date, "campaign_id": campaign_id, "after": after, "limit": page_size},
        ).fetchall()
        if not rows:
            break
        with conn.cursor() as cur:
            cur.execute(_STAGING)
            with cur.copy("COPY staging_outbox FROM STDIN") as copy:
                for customer_id, language, name_enc, phone_enc, key_id in rows:
                    copy.write_row(
                        _payload_row(keyring, renderer, campaign_id, customer_id, language, name_enc, phone_enc, key_id)
                    )
            cur.execute(
                _INSERT_FROM_STAGING,
                {
                    "check_date": check_date,
                    "campaign_id": campaign_id,
                    "correlation_id": correlation_id,
                    "dag_run_id": dag_run_id,
                },
            )
            created += cur.rowcount
        conn.commit()
        after = rows[-1][0]
    return created


def _payload_row(
    keyring: PiiKeyring,
    renderer: Any,
    campaign_id: str,
    customer_id: str,
    language: str,
    name_enc: bytes,
    phone_enc: bytes,
    key_id: str,
) -> tuple[Any, ...]:
    """The staging row of one notification: rendered and encrypted, or UNDELIVERABLE (invalid number)."""
    name = keyring.decrypt(bytes(name_enc), key_id, aad_for(customer_id, "first_name"))
    rendered = renderer.render(name, language)
    payload: tuple[Any, ...] = (None, None, None, "UNDELIVERABLE", "21211")
    try:
        e164 = normalise_mobile(keyring.decrypt(bytes(phone_enc), key_id, aad_for(customer_id, "phone_number")))
    except InvalidPhone as exc:
        payload += (f"invalid_number: {exc.reason}",)
    else:
        current, content_enc = keyring.encrypt(rendered.text, outbox_aad(campaign_id, customer_id, "content"))
        _, e164_enc = keyring.encrypt(e164, outbox_aad(campaign_id, customer_id, "phone_number"))
        payload = (content_enc, e164_enc, current, "PENDING", None, None)
    return (customer_id, language, rendered.template_id, rendered.encoding, rendered.segments, *payload)


def _lock(conn: psycopg.Connection, check_date: date) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(7421002, %s)", (int(check_date.strftime("%Y%m%d")),))


def _next_seq(conn: psycopg.Connection, check_date: date) -> int:
    return conn.execute(
        "SELECT coalesce(max(seq), 0) + 1 FROM sms_batches WHERE check_date = %s", (check_date,)
    ).fetchone()[0]


def assign_batches(
    conn: psycopg.Connection,
    campaign_id: str,
    batch_size: int,
    correlation_id: str,
    *,
    now: Any = None,
) -> list[str]:
    """Give every notification of the campaign that needs a message (PENDING, no current message, its
    retry due at ``now``: default the database's now()) its next attempt's message, in new batches of
    ``batch_size`` per check date (``BATCH-<the notifications' check date>-<seq>``). Returns the new batch ids."""
    rows = conn.execute(
        """
        SELECT notification_id, customer_id, attempts, encoding, segments, check_date
        FROM sms_notifications
        WHERE campaign_id = %s AND status = 'PENDING' AND current_message_id IS NULL
          AND (next_attempt_at IS NULL OR next_attempt_at <= coalesce(%s, now()))
        ORDER BY check_date, customer_id
        FOR UPDATE
        """,
        (campaign_id, now),
    ).fetchall()
    if not rows:
        return []
    by_date: dict[date, list[tuple]] = {}
    for row in rows:
        by_date.setdefault(row[5], []).append(row)
    batch_ids: list[str] = []
    with conn.cursor() as cur:
        for check_date, dated in by_date.items():
            _lock(conn, check_date)
            seq = _next_seq(conn, check_date)
            for start in range(0, len(dated), batch_size):
                part = dated[start : start + batch_size]
                batch_id = batch_id_for(check_date, seq)
                cur.execute(
                    "INSERT INTO sms_batches (batch_id, campaign_id, check_date, seq, status, messages, correlation_id) "
                    "VALUES (%s, %s, %s, %s, 'PENDING', %s, %s)",
                    (batch_id, campaign_id, check_date, seq, len(part), correlation_id),
                )
                with cur.copy(
                    "COPY sms_messages (message_id, notification_id, campaign_id, customer_id, attempt, batch_id, "
                    "status, encoding, segments, correlation_id) FROM STDIN"
                ) as copy:
                    for notification_id, customer_id, attempts, encoding, segments, _date in part:
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


def move_to_new_batch(
    conn: psycopg.Connection, batch_id: str, message_ids: list[str], reason: str, *, pin: bool | None = None
) -> str:
    """Move messages of ``batch_id`` into a new batch of the same check date; they keep their ids.

    The new batch is pinned to the old one's carrier (``ambiguous``) when the old one was (or when
    ``pin`` says so): what the carrier may have taken, only that carrier may be asked again."""
    check_date, carrier, ambiguous = conn.execute(
        "SELECT check_date, carrier, ambiguous FROM sms_batches WHERE batch_id = %s", (batch_id,)
    ).fetchone()
    pinned = ambiguous if pin is None else pin
    _lock(conn, check_date)
    seq = _next_seq(conn, check_date)
    new_id = batch_id_for(check_date, seq)
    conn.execute(
        """
        INSERT INTO sms_batches (batch_id, campaign_id, check_date, seq, carrier, status, messages, ambiguous,
                                 last_error, correlation_id)
        SELECT %s, campaign_id, check_date, %s, %s, 'PENDING', %s, %s, %s, correlation_id
        FROM sms_batches WHERE batch_id = %s
        """,
        (new_id, seq, carrier if pinned else None, len(message_ids), pinned, f"{reason} (from {batch_id})", batch_id),
    )
    conn.execute(
        "UPDATE sms_messages SET batch_id = %s, updated_at = now() WHERE batch_id = %s AND message_id = ANY(%s)",
        (new_id, batch_id, message_ids),
    )
    conn.execute("UPDATE sms_batches SET messages = messages - %s WHERE batch_id = %s", (len(message_ids), batch_id))
    return new_id


def split_missing(conn: psycopg.Connection, batch_id: str, message_ids: list[str], carrier: str) -> str:
    """Move messages a 202 did not mention into a new batch pinned to the same carrier.

    They keep their message ids: if the carrier did accept them, it answers the resubmission with
    their existing tracking ids instead of sending again.
    """
    return move_to_new_batch(conn, batch_id, message_ids, f"not in the 202 of {carrier}", pin=True)


def open_batches(conn: psycopg.Connection, campaign_id: str) -> list[tuple[str, date, str | None, bool, Any]]:
    """Batches of the campaign not yet accepted: (batch_id, check_date, carrier, ambiguous, not_before), oldest first."""
    return conn.execute(
        """
        SELECT batch_id, check_date, carrier, ambiguous, not_before FROM sms_batches
        WHERE campaign_id = %s AND status IN ('PENDING', 'BUFFERED')
        ORDER BY check_date, seq
        """,
        (campaign_id,),
    ).fetchall()


def batch_payload_rows(conn: psycopg.Connection, batch_id: str) -> list[tuple[Any, ...]]:
    """The batch's PENDING messages with their notification's encrypted payload:
    (message_id, customer_id, campaign_id, content_enc, phone_enc, pii_key_id), by message id."""
    return conn.execute(
        """
        SELECT m.message_id, m.customer_id, m.campaign_id, n.content_enc, n.phone_enc, n.pii_key_id
        FROM sms_messages m JOIN sms_notifications n ON n.notification_id = m.notification_id
        WHERE m.batch_id = %s AND m.status = 'PENDING'
        ORDER BY m.message_id
        """,
        (batch_id,),
    ).fetchall()


_ROTATE_SELECT = """
SELECT notification_id, campaign_id, customer_id, content_enc, phone_enc, pii_key_id
FROM sms_notifications
WHERE content_enc IS NOT NULL AND pii_key_id <> %(current)s AND notification_id > %(after)s
ORDER BY notification_id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

_ROTATE_UPDATE = """
UPDATE sms_notifications AS n
SET content_enc = u.content_enc, phone_enc = u.phone_enc, pii_key_id = %(key_id)s
FROM unnest(%(ids)s::bigint[], %(blobs_0)s::bytea[], %(blobs_1)s::bytea[]) AS u(id, content_enc, phone_enc)
WHERE n.notification_id = u.id
"""


def rotate_payload_keys(conn: psycopg.Connection, keyring: PiiKeyring, batch_size: int = 1000) -> int:
    """Re-encrypt every outbox payload not under the keyring's current key; the number of rows moved.

    As :func:`premium.crypto.rotate_keys` for customers: batches in ``notification_id`` order, one
    transaction each, ``FOR UPDATE SKIP LOCKED`` (a submission in progress keeps its rows; they
    are left for the next call), idempotent, and the old key must stay in the ring until done.
    ``updated_at`` is not touched."""

    def blobs_of(row: tuple) -> tuple[int, str, list[tuple[bytes, bytes]]]:
        notification_id, campaign_id, customer_id, content_enc, phone_enc, key_id = row
        return (
            notification_id,
            key_id,
            [
                (content_enc, outbox_aad(campaign_id, customer_id, "content")),
                (phone_enc, outbox_aad(campaign_id, customer_id, "phone_number")),
            ],
        )

    return rotate_rows(conn, keyring, _ROTATE_SELECT, _ROTATE_UPDATE, blobs_of, batch_size, "outbox payload")
