"""The audit trail of external calls (§5.4), written in bulk alongside the work.

Clients record one event per HTTP attempt into an :class:`AuditLog` (in memory, no I/O); the
code that writes the work's results flushes the buffer in the same transaction with one COPY
(:func:`write_events` / :func:`write_events_async`). Event data carries no PII: account ids and
phone numbers are masked by the caller (:func:`mask_account`, ``premium.sms.phones.mask_phone``),
and nothing else personal is ever put in.

event_data keys: timestamp (ISO, UTC), endpoint, method, status (the HTTP status as text, or
"timeout" / "connection_error" / "breaker_open"), error_code, duration_ms, attempt,
correlation_id — the shape the §6.2 "Banking API health" query reads.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any

import orjson

BANKING_API_CALL = "banking_api_call"
SMS_API_CALL = "sms_api_call"
SMS_STATUS_POLL = "sms_status_poll"
WEBHOOK_RECEIVED = "webhook_received"

_ACCOUNT_RE = re.compile(r"ACC-\d{5}-\d{5}")


def mask_account(account_id: str) -> str:
    """ACC-12345-67890 -> ACC-1****890."""
    return account_id[:5] + "****" + account_id[-3:] if len(account_id) > 8 else "****"


def mask_accounts_in(text: str) -> str:
    return _ACCOUNT_RE.sub(lambda m: mask_account(m.group(0)), text)


class AuditLog:
    """A thread-safe in-memory buffer of events, drained by whoever writes the work's results."""

    def __init__(self) -> None:
        self._events: list[tuple[str, bytes, datetime]] = []
        self._lock = threading.Lock()

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

    def drain(self) -> list[tuple[str, bytes, datetime]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def __len__(self) -> int:
        return len(self._events)


_COPY = "COPY system_events (event_type, event_data, created_at) FROM STDIN"


def write_events(cur: Any, events: list[tuple[str, bytes, datetime]]) -> int:
    """COPY events with a psycopg (sync) cursor, inside the caller's transaction."""
    if not events:
        return 0
    with cur.copy(_COPY) as copy:
        for event_type, data, at in events:
            copy.write_row((event_type, data.decode(), at))
    return len(events)


async def write_events_async(cur: Any, events: list[tuple[str, bytes, datetime]]) -> int:
    if not events:
        return 0
    async with cur.copy(_COPY) as copy:
        for event_type, data, at in events:
            await copy.write_row((event_type, data.decode(), at))
    return len(events)


def flush(conninfo: dict[str, Any], audit: AuditLog) -> int:
    """Write what the buffer holds in its own transaction (for callers with no batch of their own)."""
    import psycopg

    events = audit.drain()
    if not events:
        return 0
    with psycopg.connect(**conninfo) as conn, conn.cursor() as cur:
        return write_events(cur, events)
