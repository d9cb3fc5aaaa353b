"""The audit trail of external calls (§5.4), written on its own, whatever becomes of the work.

Clients record one event per HTTP attempt into an :class:`AuditLog` (in memory, no I/O). An
:class:`AuditWriter` drains that buffer into ``system_events`` on its own connection, in its own
short transactions, independently of the work's transactions: a background thread writes with one
COPY (:func:`write_events`) every ``interval_s`` (1 s) and as soon as ``flush_at`` events are
buffered, and the writer flushes once more when the work ends, normally or with an exception. A
task killed mid-chunk (SIGKILL, OOM) so loses at most the events of its last moment, not the
calls of its uncommitted chunk. A failed write (the database restarting, a pool timeout) is
logged without event data and its events are put back for the next tick.

Event data carries no PII: account ids and phone numbers are masked by the caller
(:func:`mask_account`, ``premium.sms.phones.mask_phone``), and nothing else personal is ever put in.

event_data keys: timestamp (ISO, UTC), endpoint, method, status (the HTTP status as text, or
"timeout" / "connection_error" / "breaker_open"), error_code, duration_ms, attempt,
correlation_id — the shape the §6.2 "Banking API health" query reads.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from premium import db

log = logging.getLogger(__name__)

BANKING_API_CALL = "banking_api_call"
SMS_API_CALL = "sms_api_call"
SMS_STATUS_POLL = "sms_status_poll"
WEBHOOK_RECEIVED = "webhook_received"

FLUSH_INTERVAL_S = 1.0  # the most a SIGKILL can cost: the events of the last interval (and calls in flight)
FLUSH_AT_EVENTS = 500  # a buffer this full is written at once, without waiting for the tick
COPY_BATCH = 5000  # events per COPY transaction (a backlog after a database outage goes in several)
FINAL_ATTEMPTS = 3  # tries of the last flush when the work ends, a second apart

Event = tuple[str, bytes, datetime]

_ACCOUNT_RE = re.compile(r"ACC-\d{5}-\d{5}")


def mask_account(account_id: str) -> str:
    """ACC-12345-67890 -> ACC-1****890."""
    return account_id[:5] + "****" + account_id[-3:] if len(account_id) > 8 else "****"


def mask_accounts_in(text: str) -> str:
    return _ACCOUNT_RE.sub(lambda m: mask_account(m.group(0)), text)


class AuditLog:
    """A thread-safe in-memory buffer of events, drained by an :class:`AuditWriter`."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._wake: threading.Event | None = None
        self._wake_at = 0

    def record(
        self,
        event_type: str,
        *,
        endpoint: str,
        method: str,
        status: str | int | None,
        duration_ms: float,
        attempt: int = 1,
        correlation_id: str | None = None,
        error_code: str | None = None,
        at: datetime | None = None,
        **extra: Any,
    ) -> None:
        at = at or datetime.now(UTC)
        data = {
            "timestamp": at.isoformat(),
            "endpoint": endpoint,
            "method": method,
            "status": None if status is None else str(status),
            "error_code": error_code,
            "duration_ms": round(duration_ms, 2),
            "attempt": attempt,
            "correlation_id": correlation_id,
            **extra,
        }
        with self._lock:
            self._events.append((event_type, orjson.dumps(data), at))
            wake = self._wake if self._wake is not None and len(self._events) >= self._wake_at else None
        if wake is not None:
            wake.set()

    def drain(self) -> list[Event]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def put_back(self, events: list[Event]) -> None:
        """Return events a write could not take (ahead of those recorded since)."""
        if events:
            with self._lock:
                self._events[:0] = events

    def wake_when(self, size: int, wake: threading.Event | None) -> None:
        """Set ``wake`` whenever a record leaves ``size`` or more events buffered (None: stop)."""
        with self._lock:
            self._wake, self._wake_at = wake, size

    def __len__(self) -> int:
        return len(self._events)


_COPY = "COPY system_events (event_type, event_data, created_at) FROM STDIN"


def write_events(cur: Any, events: list[Event]) -> int:
    """COPY events with a psycopg (sync) cursor, inside the caller's transaction."""
    if not events:
        return 0
    with cur.copy(_COPY) as copy:
        for event_type, data, at in events:
            copy.write_row((event_type, data.decode(), at))
    return len(events)


def copy_to_db(conninfo: dict[str, Any] | None, events: list[Event]) -> None:
    """The default sink: one COPY in its own transaction, on a connection of the process's pool."""
    with db.connect(conninfo) as conn, conn.cursor() as cur:
        write_events(cur, events)


class AuditWriter:
    """Writes an :class:`AuditLog` to ``system_events`` on its own connection, apart from the work.

    ``with AuditWriter(audit, conninfo):`` (or ``async with``) runs a daemon thread that flushes the
    buffer every ``interval_s`` and as soon as it holds ``flush_at`` events, and flushes it one last
    time when the block ends, exception or not. The thread never blocks the work: an asyncio stage
    keeps its event loop, a sync one its thread. ``sink(events)`` writes one batch (default: COPY
    on a pooled connection to ``conninfo``, committed on return); when it raises, the error is
    logged (its type and SQLSTATE, never event data), the batch goes back into the buffer and the
    next tick tries again. Events still unwritten after the final flush's attempts are logged as
    an error and stay in the buffer.
    """

    def __init__(
        self,
        audit: AuditLog,
        conninfo: dict[str, Any] | None = None,
        *,
        sink: Callable[[list[Event]], Any] | None = None,
        interval_s: float = FLUSH_INTERVAL_S,
        flush_at: int = FLUSH_AT_EVENTS,
        name: str = "audit-writer",
    ) -> None:
        self.audit = audit
        self.conninfo = conninfo
        self.sink = sink if sink is not None else self._copy
        self.interval_s = interval_s
        self.flush_at = flush_at
        self.name = name
        self.written = 0
        self.flushes = 0  # transactions that wrote events
        self.failures = 0
        self.busy_s = 0.0  # time spent writing (the writer's cost, off the work's path)
        self._flush_lock = threading.Lock()  # the tick and a final flush never write concurrently
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _copy(self, events: list[Event]) -> None:
        copy_to_db(self.conninfo, events)

    def flush(self) -> bool:
        """Write what the buffer holds now; False when a write failed (its events were put back)."""
        with self._flush_lock:
            events = self.audit.drain()
            done = 0
            started = time.perf_counter()
            try:
                while done < len(events):
                    batch = events[done : done + COPY_BATCH]
                    self.sink(batch)
                    done += len(batch)
                    self.flushes += 1
                return True
            except Exception as exc:  # noqa: BLE001 - kept and retried; the work goes on
                self.audit.put_back(events[done:])
                self.failures += 1
                log.warning(
                    "%s: could not write %d audit events (%s%s); kept for the next flush",
                    self.name,
                    len(events) - done,
                    type(exc).__name__,
                    f", SQLSTATE {exc.sqlstate}" if getattr(exc, "sqlstate", None) else "",
                )
                return False
            finally:
                self.written += done
                self.busy_s += time.perf_counter() - started

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if not self.flush():
                self._stopping.wait(self.interval_s)  # a failing database is not hammered by a full buffer

    def start(self) -> AuditWriter:
        if self._thread is None or not self._thread.is_alive():  # (a thread does not survive a fork)
            self._stopping.clear()
            self.audit.wake_when(self.flush_at, self._wake)
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, *, flush: bool = True) -> None:
        """Stop the thread; then, with ``flush``, write what is left (:meth:`flush_final`)."""
        self.audit.wake_when(0, None)
        if self._thread is not None:
            self._stopping.set()
            self._wake.set()
            self._thread.join()
            self._thread = None
        if flush:
            self.flush_final()

    def flush_final(self) -> None:
        """The last flush, when the work ends: FINAL_ATTEMPTS tries; what is left is logged as lost."""
        for attempt in range(1, FINAL_ATTEMPTS + 1):
            if self.flush():
                break
            if attempt < FINAL_ATTEMPTS:
                time.sleep(min(self.interval_s, 1.0))
        if len(self.audit):
            log.error("%s: %d audit events could not be written to system_events", self.name, len(self.audit))
        log.debug(
            "%s: %d events in %d writes (%.0f ms), %d failed writes",
            self.name,
            self.written,
            self.flushes,
            self.busy_s * 1000,
            self.failures,
        )

    def __enter__(self) -> AuditWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> AuditWriter:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
