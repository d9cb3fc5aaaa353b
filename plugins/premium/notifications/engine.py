"""The submission engine: the one place where a campaign's messages are POSTed to a carrier (§3.2, §3.6, §7.2).

The daily submission, every delivery-tracking poll and any manual run call :func:`submit`; all of
them get the same guarantees, which hold by construction, not by the caller's care:

1. **One writer per campaign.** The engine takes the campaign's lease (:mod:`.lease`) before it
   does anything, and every state-changing transaction passes the lease's fence first. Another
   engine waits for it (``wait_s``) or leaves the work to the holder; a holder that died loses
   the lease when it expires; one that was taken over records nothing.
2. **In flight before the POST.** A batch is bound to its carrier and marked ``in_flight`` in one
   transaction, before any byte is sent. The answer clears the mark; an ambiguous answer (see
   :mod:`.carrier`: timeouts, dropped connections, 500/502/504, answers without the carrier's
   error body) pins the batch to that carrier for good (``ambiguous``). A batch still in flight
   when the lease is next taken (the holder died, or was killed mid-POST) is pinned the same way.
   A pinned batch is only ever resent to the same carrier with the same batch and message ids,
   which the carrier's idempotency answers without sending again; it never fails over.
3. **The window.** Nothing is POSTed outside the send window (:mod:`.window`): checked before every
   POST, whoever calls. Work left over waits in the outbox for the next window.
4. **Retries with backoff, across polls.** A message rejected in a 202 or reported FAILED with a
   retryable §3.6 code gets its next attempt (new message id, at most ``max_attempts``) no earlier
   than ``retry_backoff_s * 2**(attempt-1)`` later; before it is sent, the failed message's status
   is read again, and a DELIVERED settles the notification instead. A batch-level 429 waits its
   Retry-After (in the run up to ``max_retry_after_s``, otherwise in a later run).
5. **Nothing silent.** A batch the carrier definitely refused (4xx with its error body) has its
   offending messages failed with the carrier's reason (named in the error, or isolated by
   splitting the batch in halves), the rest moved to new batches; each refusal is counted for an
   alert. Messages a 202 does not mention move to a new batch pinned to the same carrier.

Failover: a batch that is not pinned moves to the secondary carrier once the primary's breaker
is open, its failure rate in this run exceeds ``failover_failure_rate``, or the primary did not
accept this batch ``1 + post_retries`` times. Without a secondary such batches are BUFFERED.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from premium import db
from premium.audit import AuditLog, AuditWriter
from premium.crypto import PiiKeyring
from premium.notifications import outbox, window
from premium.notifications.carrier import (
    CarrierAuthError,
    CarrierEndpoint,
    PostResult,
    SmsCarrierClient,
    read_statuses,
)
from premium.notifications.failures import classify, may_retry
from premium.notifications.lease import CampaignLease, LeaseLost, holder_name
from premium.notifications.outbox import outbox_aad
from premium.notifications.state import StatusUpdate, apply_updates, register_accepted, retry_not_before
from premium.settings import SmsSettings

log = logging.getLogger(__name__)

_E164 = re.compile(r"\+[1-9]\d{7,14}")  # the outbox stores numbers normalise_mobile() accepted
_NAMED_MESSAGE = re.compile(r"messageId\W{1,3}([A-Za-z0-9_.:-]{1,64})")  # "… (messageId 'MSG-…'): …"


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
    refused_batches: int = 0
    refused_messages: int = 0
    rate_limited_posts: int = 0
    split_batches: int = 0
    ambiguous_posts: int = 0
    recovered_in_flight: int = 0
    settled_before_retry: int = 0
    window_closed: bool = False
    lease_busy: bool = False
    accepted_batch_ids: list[str] = field(default_factory=list)
    by_carrier: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("accepted_batch_ids", "by_carrier")}
        d["by_carrier"] = dict(self.by_carrier)
        d["batches_accepted"] = len(self.accepted_batch_ids)
        return d


@dataclass(frozen=True)
class OpenBatch:
    batch_id: str
    check_date: date
    carrier: str | None
    ambiguous: bool
    not_before: datetime | None


def utcnow() -> datetime:
    return datetime.now(UTC)


class SubmissionEngine:
    def __init__(
        self,
        conninfo: dict[str, Any],
        campaign_id: str,
        settings: SmsSettings,
        endpoints: dict[str, CarrierEndpoint],
        keyring: PiiKeyring,
        correlation_id: str,
        *,
        holder: str = "engine",
        wait_s: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if "primary" not in endpoints:
            raise ValueError("the primary SMS carrier endpoint is required")
        self.conninfo = conninfo
        self.campaign_id = campaign_id
        self.settings = settings
        self.endpoints = endpoints
        self.keyring = keyring
        self.correlation_id = correlation_id
        self.clock = clock
        self.wait_s = settings.lease_wait_s if wait_s is None else wait_s
        self.lease = CampaignLease(campaign_id, holder_name(holder), settings.lease_ttl_s)
        self.summary = SubmitSummary()
        self.audit = AuditLog()  # every POST, written by the run's AuditWriter on its own connection
        self.clients: dict[str, SmsCarrierClient] = {}
        self.failover = False
        self._primary_posts = 0
        self._primary_failures = 0

    # -- transactions (sync psycopg from the process's pool, run in worker threads) ----------------

    def _tx(self, work: Callable[[Any], Any]) -> Any:
        """``work(cur)`` in one transaction that first passes the lease's fence."""
        with db.connect(self.conninfo) as conn, conn.cursor() as cur:
            self.lease.fence(cur)
            return work(cur)

    def _acquire(self) -> bool:
        with db.connect(self.conninfo) as conn:
            return self.lease.acquire(conn, self.wait_s)

    def _renew(self) -> None:
        with db.connect(self.conninfo) as conn:
            self.lease.renew(conn)

    def _release(self) -> None:
        with db.connect(self.conninfo) as conn:
            self.lease.release(conn)

    def _recover_in_flight(self) -> list[str]:
        """Batches a previous holder left in flight may have reached their carrier: pin them there."""

        def work(cur):
            return [
                r[0]
                for r in cur.execute(
                    "UPDATE sms_batches SET in_flight = false, ambiguous = true, "
                    "last_error = 'in flight when its submitter stopped', updated_at = now() "
                    "WHERE campaign_id = %s AND in_flight RETURNING batch_id",
                    (self.campaign_id,),
                ).fetchall()
            ]

        return self._tx(work)

    def _retries_to_reread(self, now: datetime) -> list[tuple[str, str]]:
        """(carrier, tracking id) of the failed messages whose retry is due: read again before resending."""
        with db.connect(self.conninfo) as conn:
            return conn.execute(
                """
                SELECT m.carrier, m.tracking_id
                FROM sms_notifications n
                JOIN sms_messages m ON m.notification_id = n.notification_id AND m.attempt = n.attempts
                WHERE n.campaign_id = %(campaign)s AND n.status = 'PENDING' AND n.current_message_id IS NULL
                  AND n.attempts > 0 AND (n.next_attempt_at IS NULL OR n.next_attempt_at <= %(now)s)
                  AND m.tracking_id IS NOT NULL
                """,
                {"campaign": self.campaign_id, "now": now},
            ).fetchall()

    def _apply(self, updates: list[StatusUpdate]) -> int:
        with db.connect(self.conninfo) as conn:
            return sum(1 for a in apply_updates(conn, updates, "poll", self.settings) if a.status == "Delivered")

    def _assign(self, now: datetime) -> list[str]:
        def work(cur):
            return outbox.assign_batches(
                cur.connection, self.campaign_id, self.settings.batch_size, self.correlation_id, now=now
            )

        return self._tx(work)

    def _open(self) -> list[OpenBatch]:
        with db.connect(self.conninfo) as conn:
            return [OpenBatch(*row) for row in outbox.open_batches(conn, self.campaign_id)]

    def _build(self, batch_id: str) -> tuple[list[dict[str, Any]], list[str]]:
        """The §3.2 messages of a batch from the outbox's payload (``callbackUrl`` is added per carrier),
        and the message ids whose stored number is not an E.164 number (a damaged payload: never sent)."""
        with db.connect(self.conninfo) as conn:
            rows = outbox.batch_payload_rows(conn, batch_id)
        messages, invalid = [], []
        decrypt = self.keyring.decrypt
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
                    "priority": self.settings.priority,
                }
            )
        return messages, invalid

    def _bind(self, batch_id: str, carrier: str) -> set[str] | None:
        """Bind the batch to ``carrier`` and mark it in flight, in one transaction, before the POST.
        None when it may not go there (pinned elsewhere, closed, or in flight); else its pending message ids."""
        return self._tx(lambda cur: self._bind_in(cur, batch_id, carrier))

    def _bind_in(self, cur: Any, batch_id: str, carrier: str) -> set[str] | None:
        bound = cur.execute(
            """
            UPDATE sms_batches SET carrier = %(carrier)s, in_flight = true, post_attempts = post_attempts + 1,
                submitted_at = coalesce(submitted_at, now()), updated_at = now()
            WHERE batch_id = %(batch)s AND status IN ('PENDING', 'BUFFERED') AND NOT in_flight
              AND (carrier IS NULL OR carrier = %(carrier)s OR NOT ambiguous)
            RETURNING batch_id
            """,
            {"carrier": carrier, "batch": batch_id},
        ).fetchone()
        if bound is None:
            return None
        return {
            r[0]
            for r in cur.execute(
                "SELECT message_id FROM sms_messages WHERE batch_id = %s AND status = 'PENDING'", (batch_id,)
            ).fetchall()
        }

    def _answered(
        self, batch_id: str, *, ambiguous: bool = False, error: str | None = None, not_before: datetime | None = None
    ) -> None:
        """The POST's answer was not a 202: no longer in flight; pinned if the answer was ambiguous."""

        def work(cur):
            cur.execute(
                """
                UPDATE sms_batches SET in_flight = false, ambiguous = ambiguous OR %s,
                    last_error = coalesce(%s, last_error), not_before = %s, updated_at = now()
                WHERE batch_id = %s
                """,
                (ambiguous, error, not_before, batch_id),
            )

        self._tx(work)

    def _buffer(self, batch_id: str, error: str) -> None:
        self._tx(
            lambda cur: cur.execute(
                "UPDATE sms_batches SET status = 'BUFFERED', last_error = %s, updated_at = now() "
                "WHERE batch_id = %s AND status IN ('PENDING', 'BUFFERED') AND NOT in_flight",
                (error, batch_id),
            )
        )

    def _record(self, batch_id: str, carrier: str, result: PostResult, local_invalid: list[str]) -> Counter:
        """Record a 202 (and locally invalid numbers) in one transaction."""
        return self._tx(lambda cur: self._record_in(cur, batch_id, carrier, result, local_invalid))

    def _record_in(self, cur, batch_id: str, carrier: str, result: PostResult, local_invalid: list[str]) -> Counter:
        counts: Counter = Counter()
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
                UPDATE sms_notifications n SET status = 'QUEUED', next_attempt_at = NULL, updated_at = now()
                FROM acc WHERE n.notification_id = acc.notification_id
                """,
                (carrier, list(result.accepted), list(result.accepted.values())),
            )
            register_accepted(cur, carrier, result.accepted)
            counts["accepted"] = len(result.accepted)
        rejected = dict(result.rejected)
        for message_id in local_invalid:
            rejected[message_id] = ("21211", "not a valid Israeli mobile number (checked before sending)")
        counts += self._reject(cur, carrier, rejected)
        if result.missing:
            outbox.split_missing(cur.connection, batch_id, result.missing, carrier)
            counts["split"] = 1
        _audit_sends(cur, self.correlation_id, batch_id, list(result.accepted) + list(rejected))
        cur.execute(
            "UPDATE sms_batches SET status = %s, in_flight = false, last_error = %s, updated_at = now() "
            "WHERE batch_id = %s",
            ("PARTIAL" if result.missing else "ACCEPTED", result.detail, batch_id),
        )
        return counts

    def _reject(
        self, cur, carrier: str | None, rejected: dict[str, tuple[str, str]], *, refused: bool = False
    ) -> Counter:
        """Messages the carrier did not take: a retry when §3.6 allows one (after its backoff), else final."""
        counts: Counter = Counter()
        for message_id, (code, _message) in rejected.items():
            row = cur.execute(
                "UPDATE sms_messages SET status = 'REJECTED', status_code = %s, carrier = coalesce(%s, carrier), "
                "updated_at = now() WHERE message_id = %s AND status = 'PENDING' RETURNING notification_id, attempt",
                (code, carrier, message_id),
            ).fetchone()
            if row is None:
                continue
            notification_id, attempt = row
            policy = classify(code, self.settings)
            detail = f"refused by the carrier: {code}" if refused else policy.category
            if not refused and may_retry(code, attempt, self.settings):
                new_status, current, counts["retry"] = "PENDING", None, counts["retry"] + 1
            elif policy.category == "invalid_number":
                new_status, current, counts["undeliverable"] = "UNDELIVERABLE", message_id, counts["undeliverable"] + 1
            else:
                new_status, current, counts["exhausted"] = "FAILED", message_id, counts["exhausted"] + 1
            cur.execute(
                """
                UPDATE sms_notifications SET status = %s, current_message_id = %s, error_code = %s, error_detail = %s,
                    next_attempt_at = CASE WHEN %s = 'PENDING' THEN now() + make_interval(secs => %s) END,
                    updated_at = now()
                WHERE notification_id = %s
                """,
                (
                    new_status,
                    current,
                    code,
                    detail,
                    new_status,
                    retry_not_before(attempt, self.settings),
                    notification_id,
                ),
            )
            counts["rejected"] += 1
        return counts

    def _refused(self, batch_id: str, carrier: str, result: PostResult, sent: list[str]) -> Counter:
        """A definite refusal of the whole batch: fail the messages it names (or isolate them by halving
        the batch), move the rest to new batches; the batch itself is REFUSED."""

        def work(cur):
            counts: Counter = Counter()
            named = [m for m in _NAMED_MESSAGE.findall(result.detail or "") if m in set(sent)]
            code = result.error_code or str(result.http_status)
            if named:
                offending, groups = named, [[m for m in sent if m not in named]]
            elif len(sent) > 1:
                offending, groups = [], [sent[: len(sent) // 2], sent[len(sent) // 2 :]]
            else:
                offending, groups = sent, []
            counts += self._reject(cur, carrier, {m: (code, result.detail or "") for m in offending}, refused=True)
            for group in groups:
                if group:
                    outbox.move_to_new_batch(cur.connection, batch_id, group, f"refused by {carrier}: HTTP {code}")
                    counts["moved"] += len(group)
            _audit_sends(cur, self.correlation_id, batch_id, offending)
            cur.execute(
                "UPDATE sms_batches SET status = 'REFUSED', in_flight = false, last_error = %s, updated_at = now() "
                "WHERE batch_id = %s",
                (f"HTTP {result.http_status} {code}: {(result.detail or '')[:200]}", batch_id),
            )
            return counts

        return self._tx(work)

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
        """The carrier for the batch's next POST (None: none may take it now). A pinned batch stays;
        otherwise the secondary takes it once failover is on, or once the primary has definitely not
        accepted it ``1 + post_retries`` times."""
        if carrier and ambiguous:
            return carrier if carrier in self.endpoints else None
        if "secondary" in self.endpoints and (self.failover or posts["primary"] > self.settings.post_retries):
            return "secondary"
        if self.clients["primary"].breaker_open and "secondary" not in self.endpoints:
            return None
        return "primary"

    def _may_post(self, batch: OpenBatch) -> bool:
        now = self.clock()
        if batch.not_before is not None and now < batch.not_before:
            return False
        if not window.may_send(batch.check_date, now, self.settings):
            self.summary.window_closed = True
            return False
        return True

    async def _submit_batch(self, batch: OpenBatch) -> None:
        batch_id, carrier, ambiguous = batch.batch_id, batch.carrier, batch.ambiguous
        messages, invalid = await asyncio.to_thread(self._build, batch_id)
        metadata = {"campaignId": self.campaign_id, "correlationId": self.correlation_id}
        callback = self.settings.callback_url.rstrip("/")
        posts: Counter = Counter()  # POSTs per carrier: each carrier gets 1 + post_retries
        last: PostResult | None = None
        while True:
            if not self._may_post(batch):
                log.info("batch %s waits for the send window", batch_id)
                return
            target = self._choose(carrier, ambiguous, posts)
            if target is None or posts[target] > self.settings.post_retries:
                break
            client = self.clients[target]
            if not messages:
                await asyncio.to_thread(self._record, batch_id, target, PostResult("accepted", 202), invalid)
                return
            if posts[target]:
                wait = last.retry_after_s if last is not None and last.retry_after_s is not None else None
                await asyncio.sleep(wait if wait is not None else self.settings.backoff_s(posts[target]))
            if client.breaker_open:
                last = PostResult("breaker_open", detail=f"circuit breaker of {target} is open")
                posts[target] = self.settings.post_retries + 1
                if target == "primary":
                    self._note_primary(False)
                continue
            async with self._post_slots:  # in_flight_batches: concurrent POSTs (building/recording overlap)
                if not self._may_post(batch):
                    return
                pending = await asyncio.to_thread(self._bind, batch_id, target)
                if pending is None:
                    log.warning("batch %s is pinned to another carrier, closed or in flight; left alone", batch_id)
                    return
                payload = [{**m, "callbackUrl": f"{callback}/{target}"} for m in messages if m["messageId"] in pending]
                invalid = [i for i in invalid if i in pending]
                if carrier == "primary" and target == "secondary":
                    self.summary.failed_over_batches += 1
                carrier = target
                self.summary.post_attempts += 1
                t0 = time.monotonic()
                try:
                    last = await client.post_batch(batch_id, payload, metadata)
                except CarrierAuthError as exc:
                    await asyncio.to_thread(self._answered, batch_id, ambiguous=not exc.definite, error=str(exc))
                    raise
            if target == "primary" and last.kind not in ("refused", "rate_limited"):
                self._note_primary(last.kind == "accepted")
            if last.kind == "accepted":
                await self._accepted(batch_id, target, last, invalid, t0)
                return
            if last.kind == "refused":
                counts = await asyncio.to_thread(
                    self._refused, batch_id, target, last, [m["messageId"] for m in payload]
                )
                self.summary.refused_batches += 1
                self.summary.refused_messages += counts["rejected"]
                log.error(
                    "batch %s refused by %s: HTTP %s %s; %d messages failed, %d moved to new batches",
                    batch_id,
                    target,
                    last.http_status,
                    last.error_code,
                    counts["rejected"],
                    counts["moved"],
                )
                return
            if last.kind == "rate_limited":
                self.summary.rate_limited_posts += 1
                wait = (
                    last.retry_after_s if last.retry_after_s is not None else self.settings.backoff_s(posts[target] + 1)
                )
                if wait > self.settings.max_retry_after_s:
                    later = self.clock() + timedelta(seconds=wait)
                    await asyncio.to_thread(self._answered, batch_id, error=last.detail, not_before=later)
                    log.warning("batch %s rate limited by %s: not before %s", batch_id, target, later.isoformat())
                    return
                await asyncio.to_thread(self._answered, batch_id, error=last.detail)
                posts[target] += 1
                continue
            if last.kind == "ambiguous":
                ambiguous = True
                self.summary.ambiguous_posts += 1
            await asyncio.to_thread(self._answered, batch_id, ambiguous=ambiguous, error=last.detail)
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
            posts[target] += 1
        detail = last.detail if last else "no carrier available"
        await asyncio.to_thread(self._buffer, batch_id, detail or "not accepted")
        self.summary.buffered_batches += 1
        log.warning("batch %s buffered: %s", batch_id, detail)

    async def _accepted(self, batch_id: str, target: str, result: PostResult, invalid: list[str], t0: float) -> None:
        counts = await asyncio.to_thread(self._record, batch_id, target, result, invalid)
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
            len(result.missing),
            time.monotonic() - t0,
        )

    async def _reread_before_retry(self, now: datetime) -> None:
        """A failed message's status is read again before its retry goes out: a DELIVERED settles it."""
        items = await asyncio.to_thread(self._retries_to_reread, now)
        if not items:
            return
        updates, _errors = await read_statuses(items, self.clients, in_flight=8)
        if updates:
            self.summary.settled_before_retry += await asyncio.to_thread(self._apply, updates)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease.ttl_s / 3)
            try:
                await asyncio.to_thread(self._renew)
            except LeaseLost:
                log.error("submission lease of %s lost; this engine stops recording", self.campaign_id)
                return

    async def run(self, max_rounds: int = 5) -> SubmitSummary:
        started = time.monotonic()
        if not await asyncio.to_thread(self._acquire):
            self.summary.lease_busy = True
            log.info("another submitter holds the lease of %s: its work is left to it", self.campaign_id)
            return self.summary
        renewer = asyncio.create_task(self._renew_forever())
        lost = False
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
        audit_writer = AuditWriter(self.audit, self.conninfo, name="sms-audit").start()
        try:
            recovered = await asyncio.to_thread(self._recover_in_flight)
            if recovered:
                self.summary.recovered_in_flight = len(recovered)
                log.warning(
                    "%d batches were in flight when their submitter stopped: pinned to their carrier", len(recovered)
                )
            attempted: set[str] = set()
            self._post_slots = asyncio.Semaphore(self.settings.in_flight_batches)
            semaphore = asyncio.Semaphore(2 * self.settings.in_flight_batches)  # batches in process

            async def guarded(b: OpenBatch) -> None:
                async with semaphore:
                    await self._submit_batch(b)

            for _round in range(max_rounds):
                now = self.clock()
                if not window.is_open(now, self.settings):
                    self.summary.window_closed = True
                    log.info(
                        "send window closed at %s: nothing is sent before %s",
                        now.isoformat(),
                        window.next_open(now, self.settings).isoformat(),
                    )
                    break
                await self._reread_before_retry(now)
                await asyncio.to_thread(self._assign, now)
                batches = [b for b in await asyncio.to_thread(self._open) if b.batch_id not in attempted]
                batches = [b for b in batches if self._may_post(b)]
                if not batches:
                    break
                attempted.update(b.batch_id for b in batches)
                results = await asyncio.gather(*(guarded(b) for b in batches), return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise errors[0]
        except LeaseLost:
            lost = True
            raise
        finally:
            renewer.cancel()
            for client in self.clients.values():
                await client.__aexit__(None, None, None)
            await asyncio.to_thread(audit_writer.stop)  # the last events: failed and buffered POSTs too
            if not lost:
                await asyncio.to_thread(self._release)
        self.summary.seconds = time.monotonic() - started
        return self.summary


def _audit_sends(cur: Any, correlation_id: str, batch_id: str, message_ids: list[str]) -> None:
    """The audit trail of every send: accepted, rejected or refused, per message."""
    if not message_ids:
        return
    cur.execute(
        """
        INSERT INTO audit_trail (action, customer_id, campaign_id, check_date, outcome, correlation_id, details)
        SELECT 'sms_submitted', m.customer_id, m.campaign_id, n.check_date,
               CASE WHEN m.status = 'REJECTED' THEN 'rejected:' || coalesce(m.status_code, '?') ELSE 'accepted' END,
               %s, jsonb_build_object('message_id', m.message_id, 'batch_id', %s::text, 'carrier', m.carrier,
                                      'attempt', m.attempt, 'tracking_id', m.tracking_id)
        FROM sms_messages m JOIN sms_notifications n ON n.notification_id = m.notification_id
        WHERE m.message_id = ANY(%s) AND m.status IN ('QUEUED', 'REJECTED')
        """,
        (correlation_id, batch_id, message_ids),
    )


def escalate(summary: SubmitSummary, campaign_id: str, check_date: Any, ids: dict[str, str]) -> None:
    """The alerts a submission raises (counts only: no message, number or name)."""
    from premium.alerts import raise_alert

    details = {"check_date": str(check_date)}
    if summary.undeliverable:
        raise_alert(
            "sms_undeliverable_numbers",
            f"{campaign_id}: {summary.undeliverable} messages rejected as invalid numbers (21211)",
            severity="warning",
            details={**details, "count": summary.undeliverable},
            **ids,
        )
    if summary.retries_exhausted:
        raise_alert(
            "sms_retry_exhaustion",
            f"{campaign_id}: {summary.retries_exhausted} messages failed with no retry left",
            details={**details, "count": summary.retries_exhausted},
            **ids,
        )
    if summary.refused_batches:
        raise_alert(
            "sms_batch_refused",
            f"{campaign_id}: the carrier refused {summary.refused_batches} batches; "
            f"{summary.refused_messages} messages failed with its reason, the rest were re-batched",
            details={**details, "batches": summary.refused_batches, "messages": summary.refused_messages},
            **ids,
        )
    if summary.failed_over_batches:
        raise_alert(
            "sms_carrier_failover",
            f"{campaign_id}: {summary.failed_over_batches} batches failed over to the secondary carrier",
            severity="warning",
            details=details,
            **ids,
        )
    if summary.buffered_batches:
        raise_alert(
            "sms_batches_buffered",
            f"{campaign_id}: {summary.buffered_batches} batches buffered (carrier unavailable)",
            severity="warning",
            details=details,
            **ids,
        )


def submit(
    conninfo: dict[str, Any],
    campaign_id: str,
    settings: SmsSettings,
    endpoints: dict[str, CarrierEndpoint],
    keyring: PiiKeyring,
    correlation_id: str,
    **options: Any,
) -> SubmitSummary:
    """Run the engine once over the campaign's open work (options: holder, wait_s, clock, max_rounds)."""
    max_rounds = options.pop("max_rounds", 5)
    engine = SubmissionEngine(conninfo, campaign_id, settings, endpoints, keyring, correlation_id, **options)
    return asyncio.run(engine.run(max_rounds))
