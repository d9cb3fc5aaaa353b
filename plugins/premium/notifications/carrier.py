"""Async client of an SMS carrier (§3.2 batch submission, §3.3 status), one per carrier.

One POST is one attempt; the caller (:mod:`premium.notifications.engine`) owns retries, failover and
bookkeeping, because what may be retried depends on what the carrier may already have:

- ``accepted``: a 202 (possibly with per-message rejections, possibly lacking some messages);
- ``retryable``: the carrier answered and did not accept (429/20429, 500/50001-50999, 502,
  503, 504): retry with backoff, or fail over;
- ``unreachable``: the connection was never established: nothing was sent;
- ``ambiguous``: the request may have reached the carrier (timeout, dropped connection): only
  the same batch to the same carrier may follow, which its idempotency makes safe;
- ``breaker_open``: the circuit breaker refused without sending;
- ``invalid``: 400/409/422: our request is wrong; never retried.

401/403 raise :class:`CarrierAuthError`. A circuit breaker (purgatory) counts retryable,
unreachable and ambiguous outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from premium import tls
from premium.audit import SMS_API_CALL, SMS_STATUS_POLL, AuditLog

log = logging.getLogger(__name__)

RETRYABLE_HTTP = frozenset({429, 500, 502, 503, 504})


class CarrierAuthError(Exception):
    def __init__(self, carrier: str, status: int) -> None:
        super().__init__(f"SMS carrier {carrier} refused the credentials (HTTP {status}); check its connection")
        self.status = status


class _Counted(Exception):
    """Raised inside the breaker so that it counts the outcome as a failure."""

    def __init__(self, result: PostResult) -> None:
        super().__init__(result.kind)
        self.result = result


@dataclass
class PostResult:
    kind: str  # accepted | retryable | unreachable | ambiguous | breaker_open | invalid
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
        """host/port/schema (https by default); password = the Bearer API key.

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
        scheme = (conn.schema or "https").lower()
        host = conn.host or "127.0.0.1"
        if "://" in host:
            scheme, host = host.split("://", 1)
            scheme = scheme.lower()
        port = f":{conn.port}" if conn.port else ""
        base_path = str(extra.get("base_path", "")).rstrip("/")
        headers = {"Authorization": f"Bearer {conn.password}", "Accept": "application/json"}
        ssl_context = None
        if scheme == "https":
            ssl_context = tls.context_from_extra(extra)
        elif tls.has_tls_extras(extra):
            raise ValueError(f"SMS carrier connection for {name}: TLS settings in the extra need schema https")
        return cls(name, f"{scheme}://{host}{port}{base_path}", headers, ssl_context)


def _error(body: bytes) -> tuple[str | None, str]:
    try:
        err = orjson.loads(body).get("error") or {}
        return (str(err["code"]) if err.get("code") is not None else None), str(err.get("message", ""))[:200]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return None, "non-JSON error body"


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
                if result.kind in ("retryable", "unreachable", "ambiguous"):
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
        except aiohttp.ClientConnectorError as exc:
            self.audit.record(SMS_API_CALL, status="connection_error", duration_ms=_ms(started), **audit)
            return PostResult("unreachable", detail=f"cannot connect: {type(exc).__name__}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.audit.record(SMS_API_CALL, status="no_answer", duration_ms=_ms(started), **audit)
            return PostResult("ambiguous", detail=f"no answer after sending: {type(exc).__name__}")
        code, message = _error(payload) if status != 202 else (None, "")
        self.audit.record(SMS_API_CALL, status=status, error_code=code, duration_ms=_ms(started), **audit)
        if status == 202:
            return parse_accepted(payload, [m["messageId"] for m in messages], batch_id)
        if status in (401, 403):
            raise CarrierAuthError(self.endpoint.name, status)
        if status in RETRYABLE_HTTP:
            wait = None
            if retry_after:
                try:
                    wait = max(0.0, float(retry_after))
                except ValueError:
                    wait = None
            return PostResult("retryable", status, code or str(status), message, wait)
        return PostResult("invalid", status, code, message)

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


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def sleep_backoff(settings: Any, retry_number: int, retry_after_s: float | None) -> None:
    await asyncio.sleep(retry_after_s if retry_after_s is not None else settings.backoff_s(retry_number))
