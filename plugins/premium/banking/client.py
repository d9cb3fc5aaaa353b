"""Async client of the core-banking balance API (§2.2-§2.5).

``GET /api/v1/accounts/{accountId}/balance?asOfDate=…&asOfTime=…`` with ``X-Correlation-Id``,
a per-request timeout, retries with exponential backoff (tenacity) on timeouts, connection
errors, 408, 429, 500, 502, 503 and 504, and a circuit breaker (purgatory). Requests share one
pooled keep-alive connector; the caller bounds how many are in flight.

The breaker judges the bank, not an account, so it sees each account once. Only an account that
has not failed yet with this client (in practice: its first attempt) goes through the breaker: it
counts towards opening it, it is refused while it is open, and it is what the half-open probe is
made of. Once an account has failed, its retries go around the breaker: they neither count nor
probe, and they are bounded by the account's own budget (``1 + max_retries`` attempts with
backoff), after which it is ``failed_after_retries``. So the breaker opens after
``breaker_failures`` consecutive failures of *distinct* accounts, and a half-open probe is always
an account not yet tried. A handful of accounts that fail on every call (at the tail of a chunk,
say) therefore end ``failed_after_retries`` within their backoff, and each of them can fail at
most one probe (one ``breaker_reset_s`` pause), instead of keeping the breaker open by failing
every probe until the outage threshold; a real outage (every account failing) still keeps it
open, since every probe is a fresh account that fails. The price: while the breaker is open,
accounts already in their retries finish them (at most ``in_flight`` accounts, with backoff)
rather than wait.

Outcomes per account are values, not exceptions (:class:`BalanceResult`): a 404, a 400 or a
malformed body is recorded and the run goes on. Two conditions are exceptions, because they are
about the bank rather than the account: :class:`BankAuthError` (401/403: fail loudly, never
retry) and :class:`BreakerOpen` (the circuit is open: the caller decides whether to wait).

Nothing here logs or raises with a balance, a name or a phone number in it; account ids are
logged masked.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from premium import tls
from premium.audit import BANKING_API_CALL, AuditLog
from premium.audit import mask_account as mask_account
from premium.connections import CORE_BANKING_CONN_ID, base_url
from premium.settings import BalanceSettings

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
BREAKER_NAME = "core_banking"
BreakerOpen = OpenedState  # raised by the breaker itself while it is open


class BankAuthError(Exception):
    """The bank refused our credentials (401/403): escalate, never retry."""

    def __init__(self, status: int) -> None:
        super().__init__(f"core banking refused the credentials (HTTP {status}); check connection core_banking")
        self.status = status


class _Retryable(Exception):
    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class BalanceResult:
    """What the bank told us about one account for one date."""

    account_id: str
    outcome: str  # ok | not_found | invalid_request | invalid_response | failed_after_retries | unexpected_status
    attempts: int
    http_status: int | None = None
    detail: str | None = None
    customer_id: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    account_status: str | None = None
    check_timestamp: datetime | None = None
    reference_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def bank_available(self) -> bool:
        """The bank gave a definite answer (anything but exhausted retries): evidence it is available."""
        return self.outcome != "failed_after_retries"


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    statuses: Counter = field(default_factory=Counter)
    breaker_transitions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BankEndpoint:
    """Where and how to reach the bank, built from the ``core_banking`` connection."""

    base_url: str
    headers: dict[str, str]
    ssl_context: ssl.SSLContext | None = None
    auth_type: str = "none"

    @classmethod
    def from_connection(cls, conn: Any) -> BankEndpoint:
        """Connection fields: host, port, scheme (https by default, see
        :func:`premium.connections.base_url`: plain http only to loopback or with extra
        ``allow_plain_http``); password = API key or bearer token.

        Extras: ``auth_type`` (api_key | bearer | mtls | none; inferred when absent),
        ``client_cert``/``client_key``/``ca_cert`` (file paths, mTLS; with ``ca_cert`` only the
        bank's CA is trusted), ``cert_fingerprint_sha256`` (the SHA-256 fingerprint of the bank's
        server certificate, or a list of them while it rotates: pinned, checked at handshake),
        ``tls_min_version`` ("1.3" default, "1.2" only for a bank that cannot do better),
        ``base_path``. TLS settings are built by :mod:`premium.tls`.
        """
        extra = conn.extra_dejson or {}
        url = base_url(conn, what=CORE_BANKING_CONN_ID).rstrip("/")
        scheme = url.split("://", 1)[0]
        base_path = str(extra.get("base_path", "")).rstrip("/")
        auth_type = extra.get("auth_type") or (
            "mtls" if extra.get("client_cert") else ("api_key" if conn.password else "none")
        )
        headers: dict[str, str] = {"Accept": "application/json"}
        if auth_type == "api_key":
            headers["X-API-Key"] = _required_secret(conn, auth_type)
        elif auth_type == "bearer":
            headers["Authorization"] = f"Bearer {_required_secret(conn, auth_type)}"
        elif auth_type not in ("mtls", "none"):
            raise ValueError(f"unknown core_banking auth_type {auth_type!r} (api_key, bearer, mtls, none)")
        ssl_context = None
        if scheme == "https":
            ssl_context = build_ssl_context(
                ca_cert=extra.get("ca_cert"),
                client_cert=extra.get("client_cert"),
                client_key=extra.get("client_key"),
                min_version=str(extra.get("tls_min_version") or "1.3"),
                fingerprints=extra.get("cert_fingerprint_sha256"),
            )
        elif auth_type == "mtls":
            raise ValueError("core_banking auth_type mtls needs schema https")
        elif extra.get("cert_fingerprint_sha256"):
            raise ValueError("core_banking cert_fingerprint_sha256 needs schema https")
        return cls(f"{url}{base_path}", headers, ssl_context, auth_type)


def _required_secret(conn: Any, auth_type: str) -> str:
    if not conn.password:
        raise ValueError(f"core_banking auth_type {auth_type} needs the secret in the connection password")
    return conn.password


def build_ssl_context(
    *,
    ca_cert: str | None,
    client_cert: str | None,
    client_key: str | None,
    min_version: str = "1.3",
    fingerprints: str | list[str] | None = None,
) -> ssl.SSLContext:
    """Client TLS context: verified server (only the bank's CA when given), TLS 1.3 minimum with the
    §5.1 suites, optional client cert, optional certificate fingerprint pin(s); see :mod:`premium.tls`."""
    return tls.client_context(
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
        min_version=min_version,
        fingerprints=fingerprints,
    )


class CoreBankingClient:
    """One run's client: ``async with CoreBankingClient(...) as client: await client.get_balance(...)``."""

    def __init__(
        self,
        endpoint: BankEndpoint,
        settings: BalanceSettings,
        correlation_id: str,
        *,
        sleep=asyncio.sleep,
        audit: AuditLog | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.audit = audit if audit is not None else AuditLog()
        self.settings = settings
        self.correlation_id = correlation_id
        self.stats = ClientStats()
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._probe_lock = asyncio.Lock()
        self._failed_accounts: set[str] = set()  # accounts that failed once: outside the breaker from then on
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.breaker_failures,
            default_ttl=settings.breaker_reset_s,
            exclude=[BankAuthError],
        )
        self._breakers.add_listener(self._on_breaker_event)
        self._breaker = None
        # Retries after the first attempt. The first attempt runs without tenacity: its per-call
        # machinery costs more CPU than the request itself at zero latency, and most calls succeed.
        self._retrying = AsyncRetrying(
            stop=stop_after_attempt(max(settings.max_retries, 1)),
            wait=lambda state: settings.backoff_s(state.attempt_number + 1),
            retry=retry_if_exception_type(_Retryable),
            before_sleep=self._before_sleep,
            sleep=sleep,
            reraise=True,
        )

    async def __aenter__(self) -> CoreBankingClient:
        ssl_context = self.endpoint.ssl_context
        if ssl_context is None and self.endpoint.base_url.lower().startswith("https://"):
            ssl_context = tls.client_context()  # never an unverified https connection
        connector = aiohttp.TCPConnector(
            limit=self.settings.in_flight,
            ssl=ssl_context if ssl_context is not None else False,
            keepalive_timeout=60,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            base_url=None,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s),
            headers={**self.endpoint.headers, "X-Correlation-Id": self.correlation_id},
            json_serialize=lambda o: orjson.dumps(o).decode(),
            raise_for_status=False,
        )
        self._breaker = await self._breakers.get_breaker(BREAKER_NAME)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- breaker -----------------------------------------------------------------------------

    @property
    def breaker_state(self) -> str:
        return self._breaker.context.state if self._breaker else "closed"

    def breaker_wait_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        ctx = self._breaker.context if self._breaker else None
        if ctx is None or ctx.state != "opened" or ctx.opened_at is None:
            return 0.0
        return max(0.0, ctx.opened_at + ctx.ttl - time.time())

    def _on_breaker_event(self, name: str, event_type: str, event: Any) -> None:
        if event_type == "state_changed":
            message = f"circuit breaker {name} -> {event.state}"
            self.stats.breaker_transitions.append(event.state)
            (log.warning if event.state != "closed" else log.info)("%s", message)

    async def _attempt(self, account_id: str, as_of: date, attempts: list[int]) -> tuple[int, bytes]:
        """One request: through the breaker for an account that has not failed yet, around it after."""
        if account_id in self._failed_accounts:
            return await self._request(account_id, as_of, attempts)
        try:
            return await self._guarded(account_id, as_of, attempts)
        except _Retryable:
            self._failed_accounts.add(account_id)
            raise

    async def _guarded(self, account_id: str, as_of: date, attempts: list[int]) -> tuple[int, bytes]:
        if self._breaker.context.state != "closed":
            # Open or half-open: one probe at a time; the others wait for its verdict.
            async with self._probe_lock:
                async with self._breaker:
                    return await self._request(account_id, as_of, attempts)
        async with self._breaker:
            return await self._request(account_id, as_of, attempts)

    # -- requests ----------------------------------------------------------------------------

    def _before_sleep(self, state: Any) -> None:
        self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.debug(
            "retry %d for account %s after %s; waiting %.3fs",
            state.attempt_number,
            mask_account(state.args[0]),
            getattr(exc, "detail", exc),
            state.upcoming_sleep,
        )

    def _audit(self, account_id: str, status: str | int, started: float, attempt: int, code: str | None = None):
        self.audit.record(
            BANKING_API_CALL,
            endpoint=f"/api/v1/accounts/{mask_account(account_id)}/balance",
            method="GET",
            status=status,
            duration_ms=(time.perf_counter() - started) * 1000,
            attempt=attempt,
            correlation_id=self.correlation_id,
            error_code=code,
        )

    async def _request(self, account_id: str, as_of: date, attempts: list[int]) -> tuple[int, bytes]:
        assert self._session is not None, "use the client as an async context manager"
        url = f"{self.endpoint.base_url}/api/v1/accounts/{quote(account_id, safe='')}/balance"
        params = {"asOfDate": as_of.isoformat(), "asOfTime": self.settings.as_of_time}
        self.stats.requests += 1
        attempts[0] += 1
        started = time.perf_counter()
        try:
            async with self._session.get(url, params=params) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            self.stats.statuses["timeout"] += 1
            self._audit(account_id, "timeout", started, attempts[0])
            raise _Retryable(None, f"timeout after {self.settings.request_timeout_s}s") from exc
        except aiohttp.ClientError as exc:
            self.stats.statuses["connection_error"] += 1
            self._audit(account_id, "connection_error", started, attempts[0], type(exc).__name__)
            raise _Retryable(None, f"connection error: {type(exc).__name__}") from exc
        self.stats.statuses[status] += 1
        self._audit(account_id, status, started, attempts[0], None if status < 400 else _error_code(body).split(":")[0])
        if status in RETRYABLE_STATUSES:
            raise _Retryable(status, f"HTTP {status}")
        if status in AUTH_STATUSES:
            raise BankAuthError(status)
        return status, body

    async def get_balance(self, account_id: str, as_of: date) -> BalanceResult:
        """The bank's answer for one account; raises only BankAuthError and BreakerOpen.

        BreakerOpen comes only before anything was sent for the account (its first attempt found
        the breaker open): calling again later starts it afresh, with its whole retry budget.
        """
        attempts = [0]
        try:
            try:
                status, body = await self._attempt(account_id, as_of, attempts)
            except _Retryable as first:
                if self.settings.max_retries == 0:
                    raise
                self.stats.retries += 1
                log.debug(
                    "retry 1 for account %s after %s; waiting %.3fs",
                    mask_account(account_id),
                    first.detail,
                    self.settings.backoff_s(1),
                )
                await self._sleep(self.settings.backoff_s(1))
                status, body = await self._retrying.copy()(self._attempt, account_id, as_of, attempts)
        except _Retryable as exc:
            return BalanceResult(account_id, "failed_after_retries", attempts[0], exc.status, exc.detail)
        made = attempts[0]
        if status == 200:
            return parse_balance(account_id, as_of, body, made)
        if status == 404:
            return BalanceResult(account_id, "not_found", made, 404, "account not found")
        if status == 400:
            return BalanceResult(account_id, "invalid_request", made, 400, _error_code(body))
        return BalanceResult(account_id, "unexpected_status", made, status, _error_code(body))


def _error_code(body: bytes) -> str:
    try:
        err = orjson.loads(body).get("error", {})
        return f"{err.get('code', 'UNKNOWN')}: {str(err.get('message', ''))[:120]}"
    except (orjson.JSONDecodeError, AttributeError):
        return "non-JSON error body"


def parse_balance(account_id: str, as_of: date, body: bytes, attempts: int = 1) -> BalanceResult:
    """Validate a §2.2 success body; anything missing or inconsistent is an ``invalid_response``."""

    def invalid(detail: str) -> BalanceResult:
        return BalanceResult(account_id, "invalid_response", attempts, 200, detail)

    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return invalid("body is not valid JSON")
    if not isinstance(doc, dict):
        return invalid("body is not a JSON object")
    balance = doc.get("balance")
    if not isinstance(balance, dict):
        return invalid("missing balance object")
    missing = [k for k in ("accountId", "customerId", "accountStatus", "timestamp", "referenceId") if not doc.get(k)]
    missing += [f"balance.{k}" for k in ("amount", "currency", "asOfDate") if balance.get(k) in (None, "")]
    if missing:
        return invalid("missing fields: " + ", ".join(missing))
    if doc["accountId"] != account_id:
        return invalid("accountId in the body differs from the account requested")
    if balance["asOfDate"] != as_of.isoformat():
        return invalid(f"balance.asOfDate {balance['asOfDate']!r} differs from the date requested")
    amount_raw = balance["amount"]
    if isinstance(amount_raw, bool) or not isinstance(amount_raw, (int, float, str)):
        return invalid("balance.amount is not a number")
    try:
        amount = Decimal(str(amount_raw))
    except InvalidOperation:
        return invalid("balance.amount is not a number")
    if not amount.is_finite() or abs(amount) >= Decimal("1e16"):
        return invalid("balance.amount is out of range")
    currency = balance["currency"]
    if not isinstance(currency, str) or not (3 <= len(currency) <= 4) or not currency.isalpha():
        return invalid("balance.currency is not a currency code")
    try:
        timestamp = datetime.fromisoformat(str(doc["timestamp"]).replace("Z", "+00:00"))
    except ValueError:
        return invalid("timestamp is not ISO-8601")
    if timestamp.tzinfo is None:
        return invalid("timestamp has no time zone")
    return BalanceResult(
        account_id,
        "ok",
        attempts,
        200,
        None,
        customer_id=str(doc["customerId"]),
        amount=amount.quantize(Decimal("0.01")),
        currency=currency.upper(),
        account_status=str(doc["accountStatus"]).upper()[:32],
        check_timestamp=timestamp,
        reference_id=str(doc["referenceId"])[:64],
    )
