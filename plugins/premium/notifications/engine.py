"""Submission of the campaign's open batches to the carriers (§3.2, §3.4, §3.6, §7.2).

Runs until every open batch is accepted, buffered or failed:

1. new messages (first attempts, and retries the failure policy allows) are placed in batches;
2. each open batch is built in memory from the outbox's encrypted payload (text and E.164 number
   rendered and validated when the outbox was prepared) and POSTed, ``in_flight_batches`` at a time;
3. a batch is bound to a carrier before its first POST. After an ambiguous failure it stays
   bound (only the same batch to the same carrier may follow); after a definite non-acceptance
   (the carrier answered no, or could not be reached) it may move to the secondary carrier
   when failover is on (primary breaker open, or its failure rate in this run over
   ``failover_failure_rate``), or once the primary has not accepted it ``1 + post_retries``
   times. Without a secondary carrier such batches are BUFFERED and sent
   by a later attempt or run;
4. a 202 is recorded message by message: tracking ids, rejections by §3.6 code, and messages it
   does not mention, which move to a new batch under the same message ids.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg

from premium.audit import AuditLog, write_events
from premium.audit import flush as audit_flush
from premium.crypto import PiiKeyring
from premium.notifications import outbox
from premium.notifications.carrier import CarrierEndpoint, PostResult, SmsCarrierClient, sleep_backoff
from premium.notifications.failures import classify, may_retry
from premium.notifications.outbox import outbox_aad
from premium.notifications.state import register_accepted
from premium.settings import SmsSettings

log = logging.getLogger(__name__)

_E164 = re.compile(r"\+[1-9]\d{7,14}")  # the outbox stores numbers normalise_mobile() accepted


@dataclass
class SubmitSummary:
    batches_posted: int = 0
    post_attempts: int = 0
    messages_accepted: int = 0
    messages_rejected: int = 0
    undeliverable: int = 0
    retries_scheduled: int = 0
    retries_exhausted: int = 0
    failed_over_batches: int = 0
    buffered_batches: int = 0
    failed_batches: int = 0
    split_batches: int = 0
    ambiguous_posts: int = 0
    accepted_batch_ids: list[str] = field(default_factory=list)
    by_carrier: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("accepted_batch_ids", "by_carrier")}
        d["by_carrier"] = dict(self.by_carrier)
        d["batches_accepted"] = len(self.accepted_batch_ids)
        return d


class Submitter:
    def __init__(
        self,
        conninfo: dict[str, Any],
        campaign_id: str,
        check_date: date,
        settings: SmsSettings,
        endpoints: dict[str, CarrierEndpoint],
        keyring: PiiKeyring,
        correlation_id: str,
    ) -> None:
        if "primary" not in endpoints:
            raise ValueError("the primary SMS carrier endpoint is required")
        self.conninfo = conninfo
        self.campaign_id = campaign_id
        self.check_date = check_date
        self.settings = settings
        self.endpoints = endpoints
        self.keyring = keyring
        self.correlation_id = correlation_id
        self.summary = SubmitSummary()
        self.audit = AuditLog()  # every POST, written with the batch's bookkeeping
        self.clients: dict[str, SmsCarrierClient] = {}
        self.failover = False
        self._primary_posts = 0
        self._primary_failures = 0
        self._local = threading.local()
        self._conns: list[psycopg.Connection] = []
        self._conns_lock = threading.Lock()

    # -- bookkeeping (sync psycopg, run in worker threads) ----------------------------------------

    @contextmanager
    def _connect(self):
        """This worker thread's connection (opened once, reused): commit on success, roll back on error."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._local.conn = psycopg.connect(**self.conninfo)
            with self._conns_lock:
                self._conns.append(conn)
        try:
            yield conn
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        else:
            conn.commit()

    def _close_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def _assign(self) -> list[str]:
        with self._connect() as conn:
            return outbox.assign_batches(
                conn, self.campaign_id, self.check_date, self.settings.batch_size, self.correlation_id
            )

    def _open(self) -> list[tuple]:
        with self._connect() as conn:
            return outbox.open_batches(conn, self.campaign_id)

    def _build(self, batch_id: str) -> tuple[list[dict[str, Any]], list[str]]:
        """The §3.2 messages of a batch from the outbox's payload, and the message ids whose stored
        number is not an E.164 number (a damaged payload: rejected locally, never sent)."""
        with self._connect() as conn:
            rows = outbox.batch_payload_rows(conn, batch_id)
        messages, invalid = [], []
        decrypt = self.keyring.decrypt
        priority, callback_url = self.settings.priority, self.settings.callback_url
        for message_id, customer_id, campaign_id, content_enc, phone_enc, key_id in rows:
            phone = decrypt(phone_enc, key_id, outbox_aad(campaign_id, customer_id, "phone_number"))
            if not _E164.fullmatch(phone):
                invalid.append(message_id)
                continue
            messages.append(
                {
                    "messageId": message_id,
                    "phoneNumber": phone,
                    "content": decrypt(content_enc, key_id, outbox_aad(campaign_id, customer_id, "content")),
                    "priority": priority,
                    "callbackUrl": callback_url,
                }
            )
        return messages, invalid

    def _bind(self, batch_id: str, carrier: str) -> bool:
        """Bind the batch to ``carrier`` (or move it there when no ambiguous POST pins it elsewhere)."""
        with self._connect() as conn:
            cur = conn.execute(
                """
                UPDATE sms_batches SET carrier = %s, post_attempts = post_attempts + 1,
                    submitted_at = coalesce(submitted_at, now()), updated_at = now()
                WHERE batch_id = %s AND status IN ('PENDING', 'BUFFERED')
                  AND (carrier IS NULL OR carrier = %s OR NOT ambiguous)
                """,
                (carrier, batch_id, carrier),
            )
            return cur.rowcount == 1

    def _mark(
        self, batch_id: str, *, status: str | None = None, ambiguous: bool | None = None, error: str | None = None
    ):
        with self._connect() as conn:
            conn.execute(
                """
                UPDATE sms_batches SET status = coalesce(%s, status), ambiguous = ambiguous OR coalesce(%s, false),
                    last_error = coalesce(%s, last_error), updated_at = now()
                WHERE batch_id = %s
                """,
                (status, ambiguous, error, batch_id),
            )

    def _record(self, batch_id: str, carrier: str, result: PostResult, local_invalid: list[str]) -> dict[str, int]:
        """Record a 202 (and locally invalid numbers) in one transaction."""
        counts = Counter()
        with self._connect() as conn, conn.transaction():
            with conn.cursor() as cur:
                if result.accepted:
                    cur.execute(
                        """
                        WITH acc AS (
                            UPDATE sms_messages m SET status = 'QUEUED', tracking_id = s.tracking_id, carrier = %s,
                                submitted_at = coalesce(m.submitted_at, now()), updated_at = now()
                            FROM unnest(%s::text[], %s::text[]) AS s (message_id, tracking_id)
                            WHERE m.message_id = s.message_id AND m.status = 'PENDING'
                            RETURNING m.notification_id
                        )
                        UPDATE sms_notifications n SET status = 'QUEUED', updated_at = now()
                        FROM acc WHERE n.notification_id = acc.notification_id
                        """,
                        (carrier, list(result.accepted), list(result.accepted.values())),
                    )
                    register_accepted(cur, carrier, result.accepted)
                    counts["accepted"] = len(result.accepted)
                rejected = dict(result.rejected)
                for message_id in local_invalid:
                    rejected[message_id] = ("21211", "not a valid Israeli mobile number (checked before sending)")
                for message_id, (code, _message) in rejected.items():
                    row = cur.execute(
                        """
                        UPDATE sms_messages SET status = 'REJECTED', status_code = %s, carrier = %s, updated_at = now()
                        WHERE message_id = %s AND status = 'PENDING' RETURNING notification_id, attempt
                        """,
                        (code, carrier, message_id),
                    ).fetchone()
                    if row is None:
                        continue
                    notification_id, attempt = row
                    policy = classify(code, self.settings)
                    if may_retry(code, attempt, self.settings):
                        new_status, counts["retry"] = "PENDING", counts["retry"] + 1
                        current = None
                    elif policy.category == "invalid_number":
                        new_status, counts["undeliverable"] = "UNDELIVERABLE", counts["undeliverable"] + 1
                        current = message_id
                    else:
                        new_status, counts["exhausted"] = "FAILED", counts["exhausted"] + 1
                        current = message_id
                    cur.execute(
                        """
                        UPDATE sms_notifications SET status = %s, current_message_id = %s, error_code = %s,
                            error_detail = %s, updated_at = now()
                        WHERE notification_id = %s
                        """,
                        (new_status, current, code, policy.category, notification_id),
                    )
                    counts["rejected"] += 1
            if result.missing:
                outbox.split_missing(conn, batch_id, result.missing, self.check_date, carrier)
                counts["split"] = 1
            with conn.cursor() as cur:
                write_events(cur, self.audit.drain())
            conn.execute(  # the audit trail of every send: accepted or rejected, per message
                """
                INSERT INTO audit_trail (action, customer_id, campaign_id, check_date, outcome, correlation_id, details)
                SELECT 'sms_submitted', m.customer_id, m.campaign_id, %s::date,
                       CASE WHEN m.status = 'REJECTED' THEN 'rejected:' || coalesce(m.status_code, '?') ELSE 'accepted' END,
                       %s, jsonb_build_object('message_id', m.message_id, 'batch_id', %s::text, 'carrier', m.carrier,
                                              'attempt', m.attempt, 'tracking_id', m.tracking_id)
                FROM sms_messages m
                WHERE m.message_id = ANY(%s) AND m.status IN ('QUEUED', 'REJECTED')
                """,
                (
                    self.check_date,
                    self.correlation_id,
                    batch_id,
                    list(result.accepted) + list(rejected),
                ),
            )
            conn.execute(
                "UPDATE sms_batches SET status = %s, last_error = %s, updated_at = now() WHERE batch_id = %s",
                ("PARTIAL" if result.missing else "ACCEPTED", result.detail, batch_id),
            )
        return counts

    # -- submission -------------------------------------------------------------------------------

    def _note_primary(self, ok: bool) -> None:
        self._primary_posts += 1
        self._primary_failures += 0 if ok else 1
        if self.failover or "secondary" not in self.endpoints:
            return
        rate = self._primary_failures / self._primary_posts
        if self.clients["primary"].breaker_open or (
            self._primary_posts >= 3 and rate > self.settings.failover_failure_rate
        ):
            self.failover = True
            log.error(
                "failing over to the secondary SMS carrier: primary breaker %s, %d of %d posts failed",
                "open" if self.clients["primary"].breaker_open else "closed",
                self._primary_failures,
                self._primary_posts,
            )

    def _choose(self, carrier: str | None, ambiguous: bool, posts: Counter) -> str | None:
        """The carrier for the batch's next POST (None: none may take it now). A batch pinned by an
        ambiguous POST stays; otherwise the secondary takes it once failover is on, or once the
        primary has definitely not accepted it ``1 + post_retries`` times (the run-wide switch
        may not have tripped yet while batches are in flight)."""
        if carrier and ambiguous:
            return carrier if carrier in self.endpoints else None
        if "secondary" in self.endpoints and (self.failover or posts["primary"] > self.settings.post_retries):
            return "secondary"
        if self.clients["primary"].breaker_open and "secondary" not in self.endpoints:
            return None
        return "primary"

    async def _submit_batch(self, batch: tuple) -> None:
        batch_id, carrier, ambiguous, _posts = batch
        messages, invalid = await asyncio.to_thread(self._build, batch_id)
        metadata = {"campaignId": self.campaign_id, "correlationId": self.correlation_id}
        posts: Counter = Counter()  # POSTs per carrier: each carrier gets 1 + post_retries
        last: PostResult | None = None
        while True:
            target = self._choose(carrier, ambiguous, posts)
            if target is None or posts[target] > self.settings.post_retries:
                break
            if not messages:
                await asyncio.to_thread(self._record, batch_id, target, PostResult("accepted", 202), invalid)
                return
            if posts[target]:
                await sleep_backoff(self.settings, posts[target], last.retry_after_s if last else None)
            async with self._post_slots:  # in_flight_batches: concurrent POSTs (building/recording overlap)
                if not await asyncio.to_thread(self._bind, batch_id, target):
                    log.warning("batch %s is bound elsewhere or closed; left alone", batch_id)
                    return
                if carrier == "primary" and target == "secondary":
                    self.summary.failed_over_batches += 1
                carrier = target
                self.summary.post_attempts += 1
                t0 = time.monotonic()
                last = await self.clients[target].post_batch(batch_id, messages, metadata)
            if target == "primary" and last.kind != "breaker_open":
                self._note_primary(last.kind == "accepted")
            if last.kind == "accepted":
                counts = await asyncio.to_thread(self._record, batch_id, target, last, invalid)
                s = self.summary
                s.batches_posted += 1
                s.messages_accepted += counts["accepted"]
                s.messages_rejected += counts["rejected"]
                s.undeliverable += counts["undeliverable"]
                s.retries_scheduled += counts["retry"]
                s.retries_exhausted += counts["exhausted"]
                s.split_batches += counts["split"]
                s.by_carrier[target] += counts["accepted"]
                s.accepted_batch_ids.append(batch_id)
                log.info(
                    "batch %s -> %s: %d accepted, %d rejected (%d undeliverable, %d to retry), %d missing; %.2fs",
                    batch_id,
                    target,
                    counts["accepted"],
                    counts["rejected"],
                    counts["undeliverable"],
                    counts["retry"],
                    len(last.missing),
                    time.monotonic() - t0,
                )
                return
            if last.kind == "invalid":
                await asyncio.to_thread(
                    self._mark, batch_id, status="FAILED", error=f"{last.http_status} {last.detail}"
                )
                self.summary.failed_batches += 1
                log.error(
                    "batch %s refused as invalid by %s: HTTP %s %s", batch_id, target, last.http_status, last.error_code
                )
                return
            if last.kind == "ambiguous":
                ambiguous = True
                self.summary.ambiguous_posts += 1
                await asyncio.to_thread(self._mark, batch_id, ambiguous=True, error=last.detail)
            log.warning(
                "batch %s -> %s: %s (HTTP %s, code %s); post %d of %d",
                batch_id,
                target,
                last.kind,
                last.http_status,
                last.error_code,
                posts[target] + 1,
                self.settings.post_retries + 1,
            )
            if last.kind == "breaker_open":
                posts[target] = self.settings.post_retries + 1  # no point asking an open breaker again now
            else:
                posts[target] += 1
        detail = last.detail if last else "no carrier available"
        await asyncio.to_thread(self._mark, batch_id, status="BUFFERED", error=detail)
        self.summary.buffered_batches += 1
        log.warning("batch %s buffered: %s", batch_id, detail)

    async def run(self, max_rounds: int = 5) -> SubmitSummary:
        started = time.monotonic()
        for name, endpoint in self.endpoints.items():
            self.clients[name] = SmsCarrierClient(
                endpoint,
                timeout_s=self.settings.request_timeout_s,
                breaker_failures=self.settings.breaker_failures,
                breaker_reset_s=self.settings.breaker_reset_s,
                audit=self.audit,
                correlation_id=self.correlation_id,
            )
            await self.clients[name].__aenter__()
        try:
            attempted: set[str] = set()
            self._post_slots = asyncio.Semaphore(self.settings.in_flight_batches)
            semaphore = asyncio.Semaphore(2 * self.settings.in_flight_batches)  # batches in process

            async def guarded(b: tuple) -> None:
                async with semaphore:
                    await self._submit_batch(b)

            for _round in range(max_rounds):
                await asyncio.to_thread(self._assign)
                batches = [b for b in await asyncio.to_thread(self._open) if b[0] not in attempted]
                if not batches:
                    break
                attempted.update(b[0] for b in batches)
                await asyncio.gather(*(guarded(b) for b in batches))
        finally:
            for client in self.clients.values():
                await client.__aexit__(None, None, None)
            self._close_connections()
            await asyncio.to_thread(audit_flush, self.conninfo, self.audit)  # failed and buffered POSTs
        self.summary.seconds = time.monotonic() - started
        return self.summary


def submit(
    conninfo: dict[str, Any],
    campaign_id: str,
    check_date: date,
    settings: SmsSettings,
    endpoints: dict[str, CarrierEndpoint],
    keyring: PiiKeyring,
    correlation_id: str,
) -> SubmitSummary:
    submitter = Submitter(conninfo, campaign_id, check_date, settings, endpoints, keyring, correlation_id)
    return asyncio.run(submitter.run())
