"""The balance client against a scripted in-process HTTP server (real sockets, real aiohttp).

Covers every row of the §2.2 error table, retry counts and backoff, the circuit breaker's
open / half-open / close cycle (it sees each account once: retries of an account that failed
neither count nor probe), timeouts and malformed bodies.
"""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import date
from decimal import Decimal

import orjson
import pytest
from aiohttp import web

from premium.banking.client import (
    BalanceResult,
    BankAuthError,
    BankEndpoint,
    BreakerOpen,
    CoreBankingClient,
    mask_account,
    parse_balance,
)
from premium.settings import BalanceSettings

ACC = "ACC-00000-00042"
DAY = date(2025, 11, 18)


def ok_body(account_id: str = ACC, amount=25000.0, currency="NIS", as_of="2025-11-18", customer="42") -> bytes:
    return orjson.dumps(
        {
            "accountId": account_id,
            "customerId": customer,
            "balance": {"amount": amount, "currency": currency, "asOfDate": as_of, "asOfTime": "22:00:00"},
            "accountStatus": "ACTIVE",
            "timestamp": "2025-11-18T20:00:00Z",
            "referenceId": "REF-123456789",
        }
    )


class Scripted:
    """A server answering from a queue of (status, body, delay_s); the last answer repeats."""

    def __init__(self, *answers: tuple[int, bytes, float]) -> None:
        self.answers = deque(answers)
        self.requests: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": request.headers.copy()})
        status, body, delay = self.answers.popleft() if len(self.answers) > 1 else self.answers[0]
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, body=body, content_type="application/json")


class ByAccount:
    """A server answering 503 to every call for the ``broken`` accounts and 200 to the others."""

    def __init__(self, *broken: str) -> None:
        self.broken = set(broken)
        self.requests: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account_id"]
        self.requests.append({"path": request.path, "account_id": account_id})
        if account_id in self.broken:
            return web.Response(status=503, body=b'{"error": {"code": "SERVICE_UNAVAILABLE"}}')
        return web.Response(status=200, body=ok_body(account_id), content_type="application/json")


def acc(n: int) -> str:
    return f"ACC-00000-{n:05d}"


async def _serve(script: Scripted | ByAccount):
    app = web.Application()
    app.router.add_get("/api/v1/accounts/{account_id}/balance", script.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


def _settings(**kw) -> BalanceSettings:
    base = {"max_retries": 3, "backoff_multiplier_s": 0.0, "request_timeout_s": 2.0, "breaker_reset_s": 60.0}
    base.update(kw)
    return BalanceSettings(**base)


def run_calls(script: Scripted, settings: BalanceSettings, accounts: list[str], sleeps: list | None = None):
    """Call get_balance for each account in order; returns results (or raised exceptions)."""

    async def main():
        runner, url = await _serve(script)
        recorded = sleeps if sleeps is not None else []

        async def fake_sleep(s: float) -> None:
            recorded.append(s)

        endpoint = BankEndpoint(url, {"X-API-Key": "k"})
        out = []
        try:
            async with CoreBankingClient(endpoint, settings, "corr-test", sleep=fake_sleep) as client:
                for acc in accounts:
                    try:
                        out.append(await client.get_balance(acc, DAY))
                    except (BankAuthError, BreakerOpen) as exc:
                        out.append(exc)
                out.append(client)
        finally:
            await runner.cleanup()
        return out

    return asyncio.run(main())


def test_success_parsed_and_request_shape() -> None:
    script = Scripted((200, ok_body(), 0))
    result, client = run_calls(script, _settings(), [ACC])
    assert result.ok and result.amount == Decimal("25000.00") and result.currency == "NIS"
    assert result.customer_id == "42" and result.reference_id == "REF-123456789" and result.attempts == 1
    req = script.requests[0]
    assert req["path"] == f"/api/v1/accounts/{ACC}/balance"
    assert req["query"] == {"asOfDate": "2025-11-18", "asOfTime": "22:00:00"}
    assert req["headers"]["X-Correlation-Id"] == "corr-test"
    assert req["headers"]["X-API-Key"] == "k"


@pytest.mark.parametrize("status", [500, 503, 408])
def test_retryable_statuses_retry_with_exponential_backoff_then_succeed(status: int) -> None:
    script = Scripted((status, b"{}", 0), (status, b"{}", 0), (200, ok_body(), 0))
    sleeps: list[float] = []
    result, client = run_calls(script, _settings(backoff_multiplier_s=1.0), [ACC], sleeps)
    assert result.ok and result.attempts == 3
    assert sleeps == [2.0, 4.0]  # 2^n seconds
    assert client.stats.retries == 2


def test_retries_exhausted_is_a_recorded_failure() -> None:
    script = Scripted((503, b'{"error": {"code": "SERVICE_UNAVAILABLE"}}', 0))
    sleeps: list[float] = []
    result, _ = run_calls(script, _settings(backoff_multiplier_s=1.0, breaker_failures=100), [ACC], sleeps)
    assert result.outcome == "failed_after_retries" and result.http_status == 503
    assert result.attempts == 4 and len(script.requests) == 4  # 1 + 3 retries
    assert sleeps == [2.0, 4.0, 8.0]


def test_404_is_skipped_not_retried() -> None:
    script = Scripted((404, b'{"error": {"code": "NOT_FOUND", "message": "Account not found"}}', 0))
    result, _ = run_calls(script, _settings(), [ACC])
    assert result.outcome == "not_found" and len(script.requests) == 1


def test_400_is_a_recorded_failure_not_retried() -> None:
    script = Scripted((400, b'{"error": {"code": "INVALID_REQUEST", "message": "Invalid account ID format"}}', 0))
    result, _ = run_calls(script, _settings(), [ACC])
    assert result.outcome == "invalid_request" and result.detail.startswith("INVALID_REQUEST")
    assert len(script.requests) == 1


def test_401_raises_and_is_never_retried() -> None:
    script = Scripted((401, b'{"error": {"code": "UNAUTHORIZED"}}', 0))
    (result, client) = run_calls(script, _settings(), [ACC])
    assert isinstance(result, BankAuthError) and result.status == 401
    assert len(script.requests) == 1
    assert client.breaker_state == "closed"  # credentials are not an availability failure


def test_timeout_is_retried() -> None:
    script = Scripted((200, ok_body(), 0.5), (200, ok_body(), 0))
    result, client = run_calls(script, _settings(request_timeout_s=0.1), [ACC])
    assert result.ok and result.attempts == 2
    assert client.stats.statuses["timeout"] == 1


def test_connection_refused_is_retried_then_failed() -> None:
    async def main():
        endpoint = BankEndpoint("http://127.0.0.1:9", {})
        async with CoreBankingClient(endpoint, _settings(breaker_failures=100), "c", sleep=_no_sleep) as client:
            return await client.get_balance(ACC, DAY)

    result = asyncio.run(main())
    assert result.outcome == "failed_after_retries" and result.http_status is None
    assert "connection error" in result.detail


async def _no_sleep(_s: float) -> None:
    return None


def test_breaker_opens_after_five_failures_then_half_open_probe_closes_it() -> None:
    script = Scripted(*[(503, b"{}", 0)] * 5, (200, ok_body(), 0))
    settings = _settings(max_retries=0, breaker_failures=5, breaker_reset_s=0.2)

    async def main():
        runner, url = await _serve(script)
        try:
            async with CoreBankingClient(BankEndpoint(url, {}), settings, "c", sleep=_no_sleep) as client:
                results = [await client.get_balance(acc(n), DAY) for n in range(1, 6)]  # 5 distinct accounts
                assert client.breaker_state == "opened"
                with pytest.raises(BreakerOpen):
                    await client.get_balance(acc(6), DAY)  # fails fast, no request sent
                requests_while_open = len(script.requests)
                assert 0 < client.breaker_wait_s() <= 0.2
                await asyncio.sleep(0.25)
                probe = await client.get_balance(ACC, DAY)  # half-open: one probe (a fresh account), succeeds
                return results, requests_while_open, probe, client.breaker_state, client.stats.breaker_transitions
        finally:
            await runner.cleanup()

    results, requests_while_open, probe, state, transitions = asyncio.run(main())
    assert all(r.outcome == "failed_after_retries" for r in results)
    assert requests_while_open == 5
    assert probe.ok and state == "closed"
    assert transitions == ["opened", "half-opened", "closed"]


def test_failed_half_open_probe_reopens() -> None:
    script = Scripted((503, b"{}", 0))
    settings = _settings(max_retries=0, breaker_failures=2, breaker_reset_s=0.1)

    async def main():
        runner, url = await _serve(script)
        try:
            async with CoreBankingClient(BankEndpoint(url, {}), settings, "c", sleep=_no_sleep) as client:
                for n in (1, 2):
                    await client.get_balance(acc(n), DAY)
                await asyncio.sleep(0.15)
                await client.get_balance(acc(3), DAY)  # the probe (a fresh account) fails
                return client.breaker_state, client.stats.breaker_transitions
        finally:
            await runner.cleanup()

    state, transitions = asyncio.run(main())
    assert state == "opened" and transitions == ["opened", "half-opened", "opened"]


def test_retries_of_one_failing_account_neither_open_the_breaker_nor_stop_at_it() -> None:
    script = Scripted((503, b'{"error": {"code": "SERVICE_UNAVAILABLE"}}', 0))
    result, client = run_calls(script, _settings(max_retries=6, breaker_failures=2), [ACC])
    assert isinstance(result, BalanceResult) and result.outcome == "failed_after_retries"
    assert result.attempts == 7 and len(script.requests) == 7  # its whole budget, no more
    assert client.breaker_state == "closed" and client.stats.breaker_transitions == []


def test_an_account_that_already_failed_is_never_the_half_open_probe() -> None:
    """Two accounts failing on every call open the breaker (2 distinct failures); once it may
    half-open, another call for one of them goes around the breaker (sent, failed, breaker left
    open) and the probe is the next fresh account, which closes it."""
    server = ByAccount(acc(1), acc(2))
    settings = _settings(max_retries=1, breaker_failures=2, breaker_reset_s=0.1)

    async def main():
        runner, url = await _serve(server)
        try:
            async with CoreBankingClient(BankEndpoint(url, {}), settings, "c", sleep=_no_sleep) as client:
                first = [await client.get_balance(acc(n), DAY) for n in (1, 2)]
                assert client.breaker_state == "opened"
                await asyncio.sleep(0.15)
                again = await client.get_balance(acc(1), DAY)
                state_after_retry = client.breaker_state
                probe = await client.get_balance(acc(3), DAY)
                return first, again, state_after_retry, probe, client
        finally:
            await runner.cleanup()

    first, again, state_after_retry, probe, client = asyncio.run(main())
    assert [r.outcome for r in first] == ["failed_after_retries"] * 2 and [r.attempts for r in first] == [2, 2]
    assert again.outcome == "failed_after_retries" and again.attempts == 2  # sent: not held back, not a probe
    assert state_after_retry == "opened"
    assert probe.ok and client.breaker_state == "closed"
    assert client.stats.breaker_transitions == ["opened", "half-opened", "closed"]
    assert [r["account_id"] for r in server.requests] == [acc(1)] * 2 + [acc(2)] * 2 + [acc(1)] * 2 + [acc(3)]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"accountId": "ACC-', "not valid JSON"),
        (b"[]", "not a JSON object"),
        (orjson.dumps({"accountId": ACC}), "missing balance object"),
        (ok_body().replace(b'"referenceId"', b'"ref"'), "missing fields: referenceId"),
        (ok_body(account_id="ACC-00000-00043"), "accountId in the body differs"),
        (ok_body(as_of="2025-11-17"), "asOfDate"),
        (ok_body(amount="lots"), "not a number"),
        (ok_body(amount=True), "not a number"),
        (ok_body(currency="N1S"), "currency"),
    ],
)
def test_malformed_or_incomplete_bodies_are_invalid_responses(body: bytes, detail: str) -> None:
    result = parse_balance(ACC, DAY, body)
    assert isinstance(result, BalanceResult) and result.outcome == "invalid_response"
    assert detail in result.detail


def test_malformed_body_through_the_client_is_recorded_not_raised() -> None:
    script = Scripted((200, b'{"accountId": "ACC-', 0))
    result, _ = run_calls(script, _settings(), [ACC])
    assert result.outcome == "invalid_response"


def test_auth_headers_from_connection_modes() -> None:
    class Conn:
        def __init__(self, extra_dejson=None, **kw):
            self.host, self.port, self.schema, self.password = "bank.local", 8443, "http", None
            self.extra_dejson = {"allow_plain_http": True, **(extra_dejson or {})}  # plain http to bank.local
            self.__dict__.update(kw)

    assert BankEndpoint.from_connection(Conn(password="s3")).headers["X-API-Key"] == "s3"
    bearer = BankEndpoint.from_connection(Conn(password="jwt", extra_dejson={"auth_type": "bearer"}))
    assert bearer.headers["Authorization"] == "Bearer jwt" and bearer.base_url == "http://bank.local:8443"
    with pytest.raises(ValueError, match="needs the secret"):
        BankEndpoint.from_connection(Conn(extra_dejson={"auth_type": "bearer"}))
    with pytest.raises(ValueError, match="unknown core_banking auth_type"):
        BankEndpoint.from_connection(Conn(password="x", extra_dejson={"auth_type": "magic"}))
    with pytest.raises(ValueError, match="mtls needs schema https"):
        BankEndpoint.from_connection(Conn(extra_dejson={"auth_type": "mtls"}))


def test_mask_account_hides_the_middle() -> None:
    assert mask_account("ACC-12345-67890") == "ACC-1****890"
