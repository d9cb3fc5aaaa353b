"""The delivery-callback endpoint (§3.5), a FastAPI app mounted on the Airflow API server.

``plugins/premium_webhooks_plugin.py`` mounts :data:`app` at ``/premium``::

    POST /premium/api/webhooks/sms-delivery/{carrier}          carrier: primary | secondary
        200 {"status": "processed"}                            applied, no change (late/duplicate status)
                                                               or a replayed webhook-id (no second effect)
        202 {"status": "ignored", "reason": "unknown trackingId"}   recorded in webhook_events only
        400 {"detail": "malformed JSON body: …"}
        401 {"detail": "missing webhook-signature header" | "webhook timestamp too old" | …}
        413 {"detail": "body too large"}
        422 {"detail": "invalid payload: trackingId: Field required", "errors": [{"field", "message"}]}
        404 {"detail": "unknown carrier: …"}                   any other carrier name
        503 {"detail": "webhook secret not configured"}        (also "webhook secret unavailable",
                                                               "temporarily unavailable" for the DB)

    POST /premium/api/webhooks/sms-delivery                    410 {"detail": "…"} naming the routes above
                                                               (the route without a carrier is retired)

Carrier identity: the route names the carrier, the signature proves it — a callback is verified
against that carrier's secrets only (connection ``sms_carrier_webhook`` for the primary,
``sms_carrier_secondary_webhook`` for the secondary) and applied only to that carrier's message
with the tracking id; webhook-ids are per carrier (a replay is a replay on the same carrier).

Order: body (size-capped) → secrets → signature over the raw bytes → parse → record. Nothing is
parsed before the signature is verified and nothing is written unless it is authentic and valid.
The blocking part (secrets backend, settings, PostgreSQL) runs in Starlette's thread pool so the
API server's event loop is never blocked. Logs carry the carrier, webhook-id, tracking id,
status and outcome only — never the body or the phone number.

Database: the process's psycopg_pool pool of :func:`premium.db.pool` (application name
``premium-webhooks``); a connection is checked before it is lent, so one the server closed while
idle is replaced rather than handed out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from premium import db
from premium.audit import WEBHOOK_RECEIVED, AuditLog, AuditWriter, write_events
from premium.cache import Expiring
from premium.webhooks.verify import (
    CARRIERS,
    WEBHOOK_CONN_IDS,
    CarrierSecrets,
    NotConfigured,
    PayloadError,
    SecretsUnavailable,
    SignatureError,
    parse_payload,
    verify_signature,
)

log = logging.getLogger(__name__)

ROUTE = "/api/webhooks/sms-delivery"  # retired (410): the base of the per-carrier routes
CARRIER_ROUTE = ROUTE + "/{carrier}"
MAX_BODY_BYTES = 64 * 1024  # a §3.5 callback is ~200 bytes
DB_POOL_TIMEOUT_S = 10.0  # waiting for a pooled connection longer than this: 503 (the carrier retries)
DB_CONNECT_TIMEOUT_S = 5
SETTINGS_TTL_S = 60.0
CONNINFO_TTL_S = 60.0

PROCESSED = {"status": "processed"}
IGNORED = {"status": "ignored", "reason": "unknown trackingId"}
_ROUTES = " and ".join(f"/premium{ROUTE}/{c}" for c in CARRIERS)
GONE = {"detail": f"this route is retired: each carrier posts its delivery callbacks to its own route ({_ROUTES})"}
UNKNOWN_CARRIER = {"detail": f"unknown carrier: delivery callbacks go to {_ROUTES}"}


def carrier_route(carrier: str) -> str:
    """The path (under the app's mount point) of ``carrier``'s callbacks."""
    return f"{ROUTE}/{carrier}"


def _premium_db_kwargs() -> dict[str, Any]:
    from premium.connections import premium_db_kwargs

    return {**premium_db_kwargs(), "application_name": "premium-webhooks", "connect_timeout": DB_CONNECT_TIMEOUT_S}


def _load_sms_settings() -> Any:
    from premium.settings import load_sms

    return load_sms()


SECRETS = CarrierSecrets()
SETTINGS = Expiring(_load_sms_settings, SETTINGS_TTL_S)
CONNINFO = Expiring(_premium_db_kwargs, CONNINFO_TTL_S)  # connection premium_db, not looked up per request
POOLS = db.AppPools(CONNINFO.get)  # the pools this app lent connections from (closed with the app)


def _pool() -> Any:
    return POOLS.get()


def _close_pools() -> None:
    POOLS.close()


def record(webhook_id: str, update: Any, settings: Any) -> str:
    """Apply the verified callback once; the outcome of :func:`premium.notifications.state.record_webhook`.

    The pool checks a connection before lending it (one the server closed while idle is replaced);
    a connection lost during the transaction (a failover, a network cut) gets one retry on a fresh
    connection: record_webhook runs in one transaction and is idempotent per (carrier, webhook-id),
    so a retry never applies twice. No free connection within DB_POOL_TIMEOUT_S raises
    psycopg_pool.PoolTimeout at once (no retry: the carrier retries the 503)."""
    import psycopg
    from psycopg_pool import PoolTimeout

    from premium.notifications.state import record_webhook

    for attempt in (1, 2):
        try:
            with _pool().connection(timeout=DB_POOL_TIMEOUT_S) as conn:
                outcome, _ = record_webhook(conn, webhook_id, update, settings)
                return outcome
        except PoolTimeout:
            CONNINFO.clear()  # the database may have moved: resolve connection premium_db again
            raise
        except psycopg.OperationalError:
            if attempt == 2:
                CONNINFO.clear()
                raise
            log.warning("%s webhook %s: database connection lost, retrying once", update.carrier, webhook_id)
    raise AssertionError("unreachable")


def handle(carrier: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
    """The whole callback of ``carrier`` (one of CARRIERS), synchronously: (HTTP status, JSON body)."""
    import psycopg

    try:
        webhook_id = verify_signature(SECRETS.get(carrier), headers, body)
    except NotConfigured:
        log.error(
            "%s delivery callback refused: no webhook secret configured (connection %s)",
            carrier,
            WEBHOOK_CONN_IDS[carrier],
        )
        return 503, {"detail": "webhook secret not configured"}
    except SecretsUnavailable:
        return 503, {"detail": "webhook secret unavailable"}
    except SignatureError as exc:
        log.warning("%s delivery callback rejected (webhook-id %.80r): %s", carrier, headers.get("webhook-id"), exc)
        return 401, {"detail": str(exc)}
    try:
        callback = parse_payload(body)
    except PayloadError as exc:
        log.warning(
            "%s webhook %s: invalid payload (%d, fields %s)", carrier, webhook_id, exc.status_code, exc.fields or "-"
        )
        return exc.status_code, exc.body()
    try:
        settings = SETTINGS.get()  # the retry decision of a FAILED status depends on them (§3.6)
    except ValueError as exc:  # SettingsError, or a Variable that is not JSON
        log.error("%s webhook %s: SMS settings unusable (%s): not recorded", carrier, webhook_id, exc)
        return 503, {"detail": "temporarily unavailable"}
    try:
        outcome = record(webhook_id, callback.to_update(carrier), settings)
    except psycopg.Error as exc:  # psycopg_pool.PoolTimeout is one too
        log.error(
            "%s webhook %s tracking %s: not recorded (%s)",
            carrier,
            webhook_id,
            callback.tracking_id,
            type(exc).__name__,
        )
        return 503, {"detail": "temporarily unavailable"}
    except Exception:  # e.g. connection premium_db missing: the carrier retries a 503 (nothing was committed)
        log.exception("%s webhook %s tracking %s: not recorded", carrier, webhook_id, callback.tracking_id)
        return 503, {"detail": "temporarily unavailable"}
    log.info(
        "%s webhook %s tracking %s status %s: %s", carrier, webhook_id, callback.tracking_id, callback.status, outcome
    )
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


def _write_audit(events: list) -> None:
    with _pool().connection(timeout=DB_POOL_TIMEOUT_S) as conn, conn.cursor() as cur:
        write_events(cur, events)  # committed when the pool takes the connection back


# The one audit writer of premium.audit: its own thread, this app's pool; a failed write is logged and retried.
AUDIT_WRITER = AuditWriter(AUDIT, sink=_write_audit, interval_s=AUDIT_FLUSH_S, name="webhook-audit")


def _flush_audit() -> None:
    AUDIT_WRITER.flush_final()


@asynccontextmanager
async def lifespan(_app: FastAPI):
    AUDIT_WRITER.start()
    yield
    await run_in_threadpool(AUDIT_WRITER.stop, flush=False)
    await run_in_threadpool(_flush_audit)
    await run_in_threadpool(_close_pools)  # the Airflow API server enters the lifespan of every mounted app


app = FastAPI(
    title="Premium notifications: carrier webhooks",
    lifespan=lifespan,
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


def _audit(path: str, request: Request, started: float, status: int, content: dict[str, Any], **extra: Any) -> None:
    AUDIT.record(
        WEBHOOK_RECEIVED,
        endpoint="/premium" + path,
        method="POST",
        status=status,
        duration_ms=(time.perf_counter() - started) * 1000,
        webhook_id=str(request.headers.get("webhook-id", ""))[:100] or None,
        outcome=content.get("status") or content.get("detail"),
        **extra,
    )


# NO Airflow authentication on these routes, on purpose: the SMS carrier calls it and holds no Airflow
# credentials. The Standard Webhooks signature, verified before anything else is done with the
# request, is its authentication. (Airflow's auth does not apply to plugin apps by itself; do not
# add Depends(get_user) here.)
@app.post(CARRIER_ROUTE)
async def sms_delivery(carrier: str, request: Request) -> JSONResponse:
    started = time.perf_counter()
    if carrier not in CARRIERS:
        _audit(CARRIER_ROUTE, request, started, 404, UNKNOWN_CARRIER)  # the template: never echo the path
        return JSONResponse(UNKNOWN_CARRIER, status_code=404)
    body = await _read_body(request)
    if body is None:
        status, content = 413, {"detail": "body too large"}
    else:
        status, content = await run_in_threadpool(handle, carrier, request.headers, body)
    _audit(carrier_route(carrier), request, started, status, content, carrier=carrier)
    return JSONResponse(content, status_code=status)


@app.post(ROUTE)
async def sms_delivery_without_carrier(request: Request) -> JSONResponse:
    """The route of the single-carrier contract, retired: a callback must say which carrier sent it."""
    started = time.perf_counter()
    log.warning(
        "delivery callback on the retired route /premium%s (webhook-id %.80r): 410; configure the carrier "
        "with the callback URL of its own route (/premium%s/<carrier>)",
        ROUTE,
        request.headers.get("webhook-id"),
        ROUTE,
    )
    _audit(ROUTE, request, started, 410, GONE)
    return JSONResponse(GONE, status_code=410)
