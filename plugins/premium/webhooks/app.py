"""The delivery-callback endpoint (§3.5), a FastAPI app mounted on the Airflow API server.

``plugins/premium_webhooks_plugin.py`` mounts :data:`app` at ``/premium``::

    POST /premium/api/webhooks/sms-delivery
        200 {"status": "processed"}                            applied, no change (late/duplicate status)
                                                               or a replayed webhook-id (no second effect)
        202 {"status": "ignored", "reason": "unknown trackingId"}   recorded in webhook_events only
        400 {"detail": "malformed JSON body: …"}
        401 {"detail": "missing webhook-signature header" | "webhook timestamp too old" | …}
        413 {"detail": "body too large"}
        422 {"detail": "invalid payload: trackingId: Field required", "errors": [{"field", "message"}]}
        503 {"detail": "webhook secret not configured"}        (also "webhook secret unavailable",
                                                               "temporarily unavailable" for the DB)

Order: body (size-capped) → secrets → signature over the raw bytes → parse → record. Nothing is
parsed before the signature is verified and nothing is written unless it is authentic and valid.
The blocking part (secrets backend, settings, PostgreSQL) runs in Starlette's thread pool so the
API server's event loop is never blocked. Logs carry the webhook-id, tracking id, status and
outcome only — never the body or the phone number.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from premium.audit import WEBHOOK_RECEIVED, AuditLog, write_events
from premium.cache import Expiring
from premium.webhooks.verify import (
    NotConfigured,
    PayloadError,
    SecretStore,
    SecretsUnavailable,
    SignatureError,
    parse_payload,
    verify_signature,
)

log = logging.getLogger(__name__)

ROUTE = "/api/webhooks/sms-delivery"
MAX_BODY_BYTES = 64 * 1024  # a §3.5 callback is ~200 bytes
DB_POOL_SIZE = 10  # connections per API server worker
DB_POOL_TIMEOUT_S = 10.0
SETTINGS_TTL_S = 60.0

PROCESSED = {"status": "processed"}
IGNORED = {"status": "ignored", "reason": "unknown trackingId"}


class PoolTimeout(Exception):
    """No database connection became free in time."""


class ConnectionPool:
    """A small, thread-safe pool of autocommit psycopg connections to the application DB.

    ``conninfo`` (e.g. :func:`premium.connections.premium_db_kwargs`) is resolved on first use and
    again after a failed connect. A connection is reused only when the block using it ended
    without an exception and the connection is idle; idle ones older than ``max_idle_s`` are closed.
    """

    def __init__(
        self,
        conninfo: Callable[[], dict[str, Any]],
        size: int = DB_POOL_SIZE,
        timeout: float = DB_POOL_TIMEOUT_S,
        max_idle_s: float = 300.0,
    ) -> None:
        self._conninfo_factory = conninfo
        self._conninfo: dict[str, Any] | None = None
        self._slots = threading.BoundedSemaphore(size)
        self._timeout = timeout
        self._max_idle_s = max_idle_s
        self._lock = threading.Lock()
        self._idle: list[tuple[Any, float]] = []

    @contextmanager
    def connection(self) -> Generator[Any]:
        if not self._slots.acquire(timeout=self._timeout):
            raise PoolTimeout(f"no database connection free within {self._timeout:.0f}s")
        try:
            conn = self._checkout()
        except BaseException:
            self._slots.release()
            raise
        reusable = False
        try:
            yield conn
            reusable = True
        finally:
            self._checkin(conn, reusable)
            self._slots.release()

    def _checkout(self) -> Any:
        import psycopg

        now = time.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if not conn.closed and now - since < self._max_idle_s:
                return conn
            _close_quietly(conn)
        with self._lock:
            if self._conninfo is None:
                self._conninfo = {**self._conninfo_factory(), "application_name": "premium-webhooks"}
            conninfo = self._conninfo
        try:
            return psycopg.connect(**conninfo, autocommit=True)
        except psycopg.OperationalError:
            with self._lock:
                self._conninfo = None  # the connection may have changed: ask again next time
            raise

    def _checkin(self, conn: Any, reusable: bool) -> None:
        from psycopg.pq import TransactionStatus

        if reusable and not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            with self._lock:
                self._idle.append((conn, time.monotonic()))
        else:
            _close_quietly(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
        pass


def _premium_db_kwargs() -> dict[str, Any]:
    from premium.connections import premium_db_kwargs

    return premium_db_kwargs()


def _load_sms_settings() -> Any:
    from premium.settings import load_sms

    return load_sms()


SECRETS = SecretStore()
SETTINGS = Expiring(_load_sms_settings, SETTINGS_TTL_S)
POOL = ConnectionPool(_premium_db_kwargs)


def record(webhook_id: str, update: Any, settings: Any) -> str:
    """Apply the verified callback once; the outcome of :func:`premium.notifications.state.record_webhook`.

    One retry on a lost connection (e.g. a pooled connection the server closed): record_webhook
    runs in one transaction and is idempotent per webhook-id, so a retry never applies twice."""
    import psycopg

    from premium.notifications.state import record_webhook

    for attempt in (1, 2):
        try:
            with POOL.connection() as conn:
                outcome, _ = record_webhook(conn, webhook_id, update, settings)
                return outcome
        except psycopg.OperationalError:
            if attempt == 2:
                raise
            log.warning("webhook %s: database connection lost, retrying once", webhook_id)
    raise AssertionError("unreachable")


def handle(headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
    """The whole callback, synchronously: (HTTP status, JSON body)."""
    import psycopg

    try:
        webhook_id = verify_signature(SECRETS.get(), headers, body)
    except NotConfigured:
        log.error("delivery callback refused: no webhook secret configured (connection sms_carrier_webhook)")
        return 503, {"detail": "webhook secret not configured"}
    except SecretsUnavailable:
        return 503, {"detail": "webhook secret unavailable"}
    except SignatureError as exc:
        log.warning("delivery callback rejected (webhook-id %.80r): %s", headers.get("webhook-id"), exc)
        return 401, {"detail": str(exc)}
    try:
        callback = parse_payload(body)
    except PayloadError as exc:
        log.warning("webhook %s: invalid payload (%d, fields %s)", webhook_id, exc.status_code, exc.fields or "-")
        return exc.status_code, exc.body()
    try:
        settings = SETTINGS.get()  # the retry decision of a FAILED status depends on them (§3.6)
    except ValueError as exc:  # SettingsError, or a Variable that is not JSON
        log.error("webhook %s: SMS settings unusable (%s): not recorded", webhook_id, exc)
        return 503, {"detail": "temporarily unavailable"}
    try:
        outcome = record(webhook_id, callback.to_update(), settings)
    except (psycopg.Error, PoolTimeout) as exc:
        log.error("webhook %s tracking %s: not recorded (%s)", webhook_id, callback.tracking_id, type(exc).__name__)
        return 503, {"detail": "temporarily unavailable"}
    except Exception:  # e.g. connection premium_db missing: the carrier retries a 503 (nothing was committed)
        log.exception("webhook %s tracking %s: not recorded", webhook_id, callback.tracking_id)
        return 503, {"detail": "temporarily unavailable"}
    log.info("webhook %s tracking %s status %s: %s", webhook_id, callback.tracking_id, callback.status, outcome)
    if outcome == "unknown_tracking_id":
        return 202, IGNORED
    return 200, PROCESSED  # "applied", "no_change" and "replayed" alike


async def _read_body(request: Request) -> bytes | None:
    """The raw body, or None when it exceeds MAX_BODY_BYTES."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


AUDIT = AuditLog()  # one webhook_received event per request, written in bulk every second
AUDIT_FLUSH_S = 1.0


def _flush_audit() -> None:
    events = AUDIT.drain()
    if not events:
        return
    try:
        with POOL.connection() as conn, conn.transaction(), conn.cursor() as cur:
            write_events(cur, events)
    except Exception:  # noqa: BLE001 - the audit must not take the route down; the log says what was lost
        log.exception("could not write %d webhook audit events", len(events))


async def _audit_flusher() -> None:
    import asyncio

    while True:
        await asyncio.sleep(AUDIT_FLUSH_S)
        await run_in_threadpool(_flush_audit)


@asynccontextmanager
async def lifespan(_app: FastAPI):
    import asyncio

    flusher = asyncio.create_task(_audit_flusher())
    yield
    flusher.cancel()
    await run_in_threadpool(_flush_audit)
    POOL.close()  # the Airflow API server enters the lifespan of every mounted FastAPI app


app = FastAPI(
    title="Premium notifications: carrier webhooks",
    lifespan=lifespan,
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


# NO Airflow authentication on this route, on purpose: the SMS carrier calls it and holds no Airflow
# credentials. The Standard Webhooks signature, verified before anything else is done with the
# request, is its authentication. (Airflow's auth does not apply to plugin apps by itself; do not
# add Depends(get_user) here.)
@app.post(ROUTE)
async def sms_delivery(request: Request) -> JSONResponse:
    started = time.perf_counter()
    body = await _read_body(request)
    if body is None:
        status, content = 413, {"detail": "body too large"}
    else:
        status, content = await run_in_threadpool(handle, request.headers, body)
    AUDIT.record(
        WEBHOOK_RECEIVED,
        endpoint="/premium" + ROUTE,
        method="POST",
        status=status,
        duration_ms=(time.perf_counter() - started) * 1000,
        webhook_id=str(request.headers.get("webhook-id", ""))[:100] or None,
        outcome=content.get("status") or content.get("detail"),
    )
    return JSONResponse(content, status_code=status)
