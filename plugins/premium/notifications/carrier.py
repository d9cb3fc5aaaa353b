"""Async client of an SMS carrier (§3.2 batch submission, §3.3 status), one per carrier.

One POST is one attempt; the engine (:mod:`premium.notifications.engine`) owns retries,
failover and bookkeeping, because what may follow depends on what the carrier may already have.
The carrier contract (docs/pipeline.md, "The carrier contract"):

Definite answers, the carrier's own error body (``{"error": {"code", "message"}}``) required:

- ``accepted``: a 202 (possibly with per-message rejections, possibly lacking some messages);
- ``refused``: 400/404/409/413/422: the carrier did not accept this request and never will as
  it is (an offending message is named in the error message where the carrier says which);
- ``rate_limited``: 429 (``20429``), with ``Retry-After`` when given;
- ``unavailable``: 503 with the carrier's error body: it did not take the batch;
- 401/403: :class:`CarrierAuthError` (nothing was taken);
- ``unreachable``: the connection failed before the request was sent;
- ``breaker_open``: our circuit breaker refused without sending.

Everything else is ``ambiguous``: the carrier may have the batch. Timeouts, a dropped connection,
500, 502, 504, any other status, and any non-202 answer without the carrier's error body (a
proxy's page, an empty 503). Only the same batch, with the same batch and message ids, to the
same carrier may follow an ambiguous answer: the carrier's idempotency makes that safe, and no
other carrier can know what this one did.

A circuit breaker (purgatory) counts ``unavailable``, ``unreachable`` and ``ambiguous`` outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from premium import tls
from premium.audit import SMS_API_CALL, SMS_STATUS_POLL, AuditLog
from premium.connections import base_url
from premium.notifications.state import StatusUpdate

log = logging.getLogger(__name__)

REFUSAL_HTTP = frozenset({400, 404, 409, 413, 422})
DEFINITE_KINDS = frozenset({"accepted", "refused", "rate_limited", "unavailable", "unreachable", "breaker_open"})


class CarrierAuthError(Exception):
    def __init__(self, carrier: str, status: int, definite: bool = True) -> None:
        super().__init__(f"SMS carrier {carrier} refused the credentials (HTTP {status}); check its connection")
        self.status = status
        self.definite = definite  # False: the 401/403 came without the carrier's error body (a proxy?)


class _Counted(Exception):
    """Raised inside the breaker so that it counts the outcome as a failure."""

    def __init__(self, result: PostResult) -> None:
        super().__init__(result.kind)
        self.result = result


@dataclass
class PostResult:
    kind: str  # accepted | refused | rate_limited | unavailable | unreachable | breaker_open | ambiguous
    http_status: int | None = None
    error_code: str | None = None
    detail: str | None = None
    retry_after_s: float | None = None
    accepted: dict[str, str] = field(default_factory=dict)  # messageId -> trackingId
    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)  # messageId -> (code, message)
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CarrierEndpoint:
    name: str  # primary | secondary
    base_url: str
    headers: dict[str, str]
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_connection(cls, conn: Any, name: str) -> CarrierEndpoint:
        """host/port/scheme (https by default, see :func:`premium.connections.base_url`: plain http
        only to loopback or with extra ``allow_plain_http``); password = the Bearer API key.

        Extras: ``base_path``; TLS (§5.1, built by :mod:`premium.tls`): ``ca_cert`` (file path: only
        that CA is trusted; the system store without it), ``client_cert``/``client_key`` (file
        paths, when the carrier wants a client certificate), ``cert_fingerprint_sha256`` (the
        SHA-256 fingerprint of the carrier's server certificate, or a list while it rotates:
        pinned, checked at handshake), ``tls_min_version`` ("1.3" default; "1.2" only for a
        carrier that cannot do better).
        """
        if not conn.password:
            raise ValueError(f"SMS carrier connection for {name} needs the API key in its password")
        extra = conn.extra_dejson or {}
        url = base_url(conn, what=f"SMS carrier {name}").rstrip("/")
        scheme = url.split("://", 1)[0]
        base_path = str(extra.get("base_path", "")).rstrip("/")
        headers = {"Authorization": f"Bearer {conn.password}", "Accept": "application/json"}
        ssl_context = None
        if scheme == "https":
            ssl_context = tls.context_from_extra(extra)
        elif tls.has_tls_extras(extra):
            raise ValueError(f"SMS carrier connection for {name}: TLS settings in the extra need schema https")
        return cls(name, f"{url}{base_path}", headers, ssl_context)


def carrier_error(body: bytes) -> tuple[str, str] | None:
    """(code, message) of the carrier's own §3.2 error body, or None when the body is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict) or err.get("code") in (None, ""):
        return None
    return str(err["code"]), str(err.get("message", ""))[:300]


def classify_answer(status: int, body: bytes, retry_after: str | None) -> PostResult:
    """A non-202 answer, by the carrier contract above (401/403 are the caller's)."""
    err = carrier_error(body)
    if err is None:
        return PostResult("ambiguous", status, None, f"HTTP {status} without the carrier's error body")
    code, message = err
    if status in REFUSAL_HTTP:
        return PostResult("refused", status, code, message)
    if status == 429:
        wait = None
        if retry_after:
            try:
                wait = max(0.0, float(retry_after))
            except ValueError:
                wait = None
        return PostResult("rate_limited", status, code, message, wait)
    if status == 503:
        return PostResult("unavailable", status, code, message)
    return PostResult("ambiguous", status, code, f"HTTP {status}: the carrier may have taken the batch")


def parse_accepted(body: bytes, sent_ids: list[str], batch_id: str) -> PostResult:
    """A 202 body: tracking ids, per-message rejections, and the messages it does not mention."""
    result = PostResult("accepted", 202)
    try:
        doc = orjson.loads(body)
        messages = doc.get("messages") if isinstance(doc, dict) else None
        if not isinstance(messages, list):
            raise ValueError("no messages list")
        if doc.get("batchId") not in (None, batch_id):
            raise ValueError("batchId differs")
    except (orjson.JSONDecodeError, ValueError) as exc:
        # The carrier accepted (202) but we cannot read what: every message counts as missing and is
        # resubmitted under the same ids, which the carrier recognises.
        result.detail = f"unreadable 202 body: {exc}"
        result.missing = list(sent_ids)
        return result
    sent = set(sent_ids)
    for m in messages:
        if not isinstance(m, dict) or m.get("messageId") not in sent:
            continue
        if m.get("trackingId") and m.get("status", "QUEUED") != "REJECTED":
            result.accepted[m["messageId"]] = str(m["trackingId"])
        elif m.get("status") == "REJECTED":
            result.rejected[m["messageId"]] = (
                str(m.get("errorCode") or "unknown"),
                str(m.get("errorMessage", ""))[:200],
            )
    result.missing = [i for i in sent_ids if i not in result.accepted and i not in result.rejected]
    return result


class SmsCarrierClient:
    def __init__(
        self,
        endpoint: CarrierEndpoint,
        *,
        timeout_s: float,
        breaker_failures: int,
        breaker_reset_s: float,
        audit: AuditLog | None = None,
        correlation_id: str | None = None,
    ):
        self.endpoint = endpoint
        self.audit = audit if audit is not None else AuditLog()
        self.correlation_id = correlation_id
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._factory = AsyncCircuitBreakerFactory(default_threshold=breaker_failures, default_ttl=breaker_reset_s)
        self._factory.add_listener(self._on_breaker_event)
        self._breaker = None
        self.transitions: list[str] = []

    async def __aenter__(self) -> SmsCarrierClient:
        ssl_context = self.endpoint.ssl_context
        if ssl_context is None and self.endpoint.base_url.lower().startswith("https://"):
            ssl_context = tls.client_context()  # TLS 1.3 minimum, verified, even for a hand-built endpoint
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=64, keepalive_timeout=60, ssl=ssl_context if ssl_context is not None else True
            ),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers=self.endpoint.headers,
        )
        self._breaker = await self._factory.get_breaker(f"sms_carrier_{self.endpoint.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _on_breaker_event(self, name: str, event_type: str, event: Any) -> None:
        if event_type == "state_changed":
            self.transitions.append(event.state)
            (log.warning if event.state != "closed" else log.info)("circuit breaker %s -> %s", name, event.state)

    @property
    def breaker_open(self) -> bool:
        return self._breaker is not None and self._breaker.context.state == "opened"

    async def post_batch(self, batch_id: str, messages: list[dict[str, Any]], metadata: dict[str, str]) -> PostResult:
        try:
            async with self._breaker:
                result = await self._post(batch_id, messages, metadata)
                if result.kind in ("unavailable", "unreachable", "ambiguous"):
                    raise _Counted(result)
                return result
        except _Counted as counted:
            return counted.result
        except OpenedState:
            return PostResult("breaker_open", detail=f"circuit breaker of {self.endpoint.name} is open")

    async def _post(self, batch_id: str, messages: list[dict[str, Any]], metadata: dict[str, str]) -> PostResult:
        assert self._session is not None
        body = orjson.dumps({"batchId": batch_id, "messages": messages, "metadata": metadata})
        url = f"{self.endpoint.base_url}/api/v1/messages/batch"
        started = time.perf_counter()
        audit = {
            "endpoint": "/api/v1/messages/batch",
            "method": "POST",
            "correlation_id": metadata.get("correlationId") or self.correlation_id,
            "carrier": self.endpoint.name,
            "batch_id": batch_id,
            "messages": len(messages),
        }
        try:
            async with self._session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                status = resp.status
                payload = await resp.read()
                retry_after = resp.headers.get("Retry-After")
        except aiohttp.ClientConnectorError as exc:  # the connection was never made: nothing was sent
            self.audit.record(SMS_API_CALL, status="connection_error", duration_ms=_ms(started), **audit)
            return PostResult("unreachable", detail=f"cannot connect: {type(exc).__name__}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.audit.record(SMS_API_CALL, status="no_answer", duration_ms=_ms(started), **audit)
            return PostResult("ambiguous", detail=f"no answer after sending: {type(exc).__name__}")
        if status == 202:
            self.audit.record(SMS_API_CALL, status=status, duration_ms=_ms(started), **audit)
            return parse_accepted(payload, [m["messageId"] for m in messages], batch_id)
        result = classify_answer(status, payload, retry_after)
        self.audit.record(SMS_API_CALL, status=status, error_code=result.error_code, duration_ms=_ms(started), **audit)
        if status in (401, 403):
            raise CarrierAuthError(self.endpoint.name, status, definite=result.error_code is not None)
        return result

    async def get_status(self, tracking_id: str) -> tuple[int, dict[str, Any] | None]:
        """GET §3.3 status: (http status, body or None)."""
        assert self._session is not None
        url = f"{self.endpoint.base_url}/api/v1/messages/{tracking_id}/status"
        started = time.perf_counter()
        audit = {
            "endpoint": "/api/v1/messages/{trackingId}/status",
            "method": "GET",
            "correlation_id": self.correlation_id,
            "carrier": self.endpoint.name,
            "tracking_id": tracking_id,
        }
        async with self._breaker:
            try:
                async with self._session.get(url) as resp:
                    payload = await resp.read()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.audit.record(
                    SMS_STATUS_POLL,
                    status="no_answer",
                    error_code=type(exc).__name__,
                    duration_ms=_ms(started),
                    **audit,
                )
                raise
            self.audit.record(SMS_STATUS_POLL, status=status, duration_ms=_ms(started), **audit)
            if status >= 500:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=status)
            try:
                return status, orjson.loads(payload)
            except orjson.JSONDecodeError:
                return status, None


async def read_statuses(
    items: list[tuple[str, str]],
    clients: dict[str, SmsCarrierClient],
    *,
    in_flight: int,
    max_retries: int = 0,
    backoff_s: Any = None,
) -> tuple[list[StatusUpdate], int]:
    """GET §3.3 for every (carrier, tracking id), ``in_flight`` at a time, each retried ``max_retries``
    times; returns the :class:`~premium.notifications.state.StatusUpdate` list and the number unanswered."""
    semaphore = asyncio.Semaphore(in_flight)
    updates: list[StatusUpdate] = []
    errors = 0

    async def one(carrier: str, tracking_id: str) -> None:
        nonlocal errors
        client = clients.get(carrier)
        if client is None:
            errors += 1
            return
        async with semaphore:
            for attempt in range(max_retries + 1):
                try:
                    status, body = await client.get_status(tracking_id)
                except Exception as exc:  # noqa: BLE001 - timeouts, 5xx, open breaker: retried, then counted
                    if attempt < max_retries:
                        await asyncio.sleep(backoff_s(attempt + 1) if backoff_s else 0)
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

    await asyncio.gather(*(one(c, t) for c, t in items))
    return updates, errors


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def sleep_backoff(settings: Any, retry_number: int, retry_after_s: float | None) -> None:
    await asyncio.sleep(retry_after_s if retry_after_s is not None else settings.backoff_s(retry_number))
