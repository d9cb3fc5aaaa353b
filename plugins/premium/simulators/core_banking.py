"""Core-banking simulator: a real HTTP(S) server implementing integration-architecture §2.2.

Loopback-only test tool (demo, tests, benchmark). Balances come from the deterministic model in
:mod:`premium.simulators.bank_model`.

API::

    GET /api/v1/accounts/{accountId}/balance?asOfDate=YYYY-MM-DD&asOfTime=HH:MM:SS
        200 §2.2 body | 400 INVALID_REQUEST (bad id format, asOfDate/asOfTime missing or invalid)
        | 401 UNAUTHORIZED | 404 NOT_FOUND | injected faults. ``X-Correlation-Id`` is echoed.

Control endpoints (same port, no auth — this is a test tool bound to loopback)::

    GET /_sim/health        {"status": "ok"}
    GET /_sim/faults        the current fault config (all keys)
    PUT /_sim/faults        replace the whole fault config (missing keys = defaults)
    GET /_sim/stats         {requests_total, by_status, by_correlation_id, max_concurrent,
                             in_flight, distinct_accounts, by_correlation_id_overflow}
    POST /_sim/reset        clear stats and the per-(account, asOfDate) request counters

Fault config (JSON)::

    {"latency_ms": 0,                      # added to every balance request (asyncio.sleep)
     "error_rates": {"400": 0, "401": 0, "404": 0, "500": 0, "503": 0},  # any 4xx/5xx key
     "fail_first": {"status": 503, "count": 0},  # first `count` requests per (account, asOfDate)
     "outage": null,                       # or {"seconds": N} (from when it is set) or
                                           # {"until_epoch": T}: every balance request → 503
     "broken_accounts": {"status": 503, "ids": [], "rate": 0.0},  # these accounts answer `status`
                                           # to every request, every date (persistent per account)
     "malformed_rate": 0.0,                # 200 with a truncated, non-JSON body
     "incomplete_rate": 0.0,               # 200 with valid JSON lacking balance.amount
     "slow_rate": 0.0, "slow_ms": 35000}   # sleep slow_ms before answering

Decisions are deterministic: ``n`` is the number of earlier requests for the same
(accountId, asOfDate) since start or the last reset (0 for the first), and a rate fires iff
``bank_model.hash_unit(f"{kind}|{accountId}|{asOfDate}|{n}") < rate`` with kind ``slow``,
``"400"``.. (error statuses, ascending), ``malformed``, ``incomplete``. ``broken_accounts`` is the
exception, by design independent of ``n`` and of the date: an account is broken iff its id is in
``ids`` or ``bank_model.hash_unit(f"broken|{accountId}") < rate``, and then every request for it
answers ``status`` (a handful of accounts failing persistently while the bank answers the rest).

Order for a balance request: latency → auth (401) → validation (400; not counted in ``n``) →
slow → outage (503) → broken_accounts → fail_first (``n < count``) → error_rates (first hit
wins) → 404 if the account does not exist → malformed → incomplete → 200.

Auth (§2.3), chosen at start: ``--auth none|api_key|bearer`` with the secret from the env var
named by ``--secret-env`` (header ``X-API-Key: <secret>`` or ``Authorization: Bearer <secret>``);
mTLS with ``--tls-cert/--tls-key`` plus ``--client-ca`` (client certificate required).

Usage::

    python -m premium.simulators.core_banking [--host 127.0.0.1] [--port 0] [--ready-file PATH]
        [--auth none|api_key|bearer] [--secret-env BANK_SIM_SECRET]
        [--tls-cert CRT --tls-key KEY [--client-ca CA] [--tls-min 1.2|1.3] [--tls-max 1.2|1.3]]
        [--faults JSON] [--log-level warning]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hmac
import json
import logging
import os
import re
import signal
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from premium import identifiers
from premium.simulators import bank_model

log = logging.getLogger("premium.simulators.core_banking")

BALANCE_PATH = "/api/v1/accounts/{accountId}/balance"
CORRELATION_HEADER = "X-Correlation-Id"
MAX_CORRELATION_IDS = 100_000
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME_RE = re.compile(r"^\d{2}:\d{2}:\d{2}$")
_ORDINAL_BITS = 22  # date.toordinal() < 2**22


def default_faults() -> dict[str, Any]:
    """The no-fault configuration (all keys)."""
    return {
        "latency_ms": 0,
        "error_rates": {"400": 0, "401": 0, "404": 0, "500": 0, "503": 0},
        "fail_first": {"status": 503, "count": 0},
        "outage": None,
        "broken_accounts": {"status": 503, "ids": [], "rate": 0.0},
        "malformed_rate": 0.0,
        "incomplete_rate": 0.0,
        "slow_rate": 0.0,
        "slow_ms": 35000,
    }


@dataclass(frozen=True, slots=True)
class Faults:
    """Validated fault configuration; ``config`` is what GET /_sim/faults returns."""

    config: dict[str, Any]
    latency_s: float
    error_rates: tuple[tuple[int, float], ...]
    fail_status: int
    fail_count: int
    outage_until: float | None
    broken_status: int
    broken_ids: frozenset[str]
    broken_rate: float
    malformed_rate: float
    incomplete_rate: float
    slow_rate: float
    slow_s: float


def _number(value: Any, name: str, *, lo: float = 0.0, hi: float | None = None) -> int | float:
    """``value`` unchanged if it is a number in [lo, hi]; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{name} must be a number")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}]")
    return value


def _status(value: Any, name: str) -> int:
    try:
        status = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an HTTP status") from None
    if not 400 <= status <= 599:
        raise ValueError(f"{name} must be a 4xx/5xx status")
    return status


def parse_faults(raw: Any, now: float | None = None) -> Faults:
    """Validate a fault config (missing keys = defaults); ValueError with a message if invalid."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError("fault config must be a JSON object")
    unknown = set(raw) - set(default_faults())
    if unknown:
        raise ValueError(f"unknown fault keys: {sorted(unknown)}")
    now = time.time() if now is None else now
    cfg = default_faults() | raw

    rates_raw = cfg["error_rates"]
    if not isinstance(rates_raw, dict):
        raise ValueError("error_rates must be an object {status: rate}")
    rates = {int(k): v for k, v in default_faults()["error_rates"].items()}  # unlisted statuses = 0
    rates |= {_status(k, "error_rates key"): _number(v, f"error_rates[{k}]", hi=1.0) for k, v in rates_raw.items()}
    ff = cfg["fail_first"]
    if not isinstance(ff, dict) or set(ff) - {"status", "count"}:
        raise ValueError('fail_first must be {"status": int, "count": int}')
    fail_status = _status(ff.get("status", 503), "fail_first.status")
    fail_count = ff.get("count", 0)
    if isinstance(fail_count, bool) or not isinstance(fail_count, int) or fail_count < 0:
        raise ValueError("fail_first.count must be a non-negative integer")

    outage = cfg["outage"]
    outage_until: float | None = None
    if outage is not None:
        if not isinstance(outage, dict) or not outage or set(outage) - {"seconds", "until_epoch"}:
            raise ValueError('outage must be null, {"seconds": N} or {"until_epoch": T}')
        if "until_epoch" in outage:  # wins over seconds, so a GET result can be PUT back unchanged
            outage_until = float(_number(outage["until_epoch"], "outage.until_epoch"))
        else:
            outage_until = now + float(_number(outage["seconds"], "outage.seconds"))
        outage = {**outage, "until_epoch": outage_until}

    broken = cfg["broken_accounts"]
    if not isinstance(broken, dict) or set(broken) - {"status", "ids", "rate"}:
        raise ValueError('broken_accounts must be {"status": int, "ids": [account ids], "rate": 0..1}')
    broken_status = _status(broken.get("status", 503), "broken_accounts.status")
    broken_ids = broken.get("ids", [])
    if not isinstance(broken_ids, list) or not all(isinstance(a, str) for a in broken_ids):
        raise ValueError("broken_accounts.ids must be a list of account ids")
    broken_rate = _number(broken.get("rate", 0.0), "broken_accounts.rate", hi=1.0)

    config = {
        "latency_ms": _number(cfg["latency_ms"], "latency_ms"),
        "error_rates": {str(k): v for k, v in sorted(rates.items())},
        "fail_first": {"status": fail_status, "count": fail_count},
        "outage": outage,
        "broken_accounts": {"status": broken_status, "ids": sorted(set(broken_ids)), "rate": broken_rate},
        "malformed_rate": _number(cfg["malformed_rate"], "malformed_rate", hi=1.0),
        "incomplete_rate": _number(cfg["incomplete_rate"], "incomplete_rate", hi=1.0),
        "slow_rate": _number(cfg["slow_rate"], "slow_rate", hi=1.0),
        "slow_ms": _number(cfg["slow_ms"], "slow_ms"),
    }
    return Faults(
        config=config,
        latency_s=config["latency_ms"] / 1000,
        error_rates=tuple((s, float(r)) for s, r in sorted(rates.items()) if r > 0),
        fail_status=fail_status,
        fail_count=fail_count,
        outage_until=outage_until,
        broken_status=broken_status,
        broken_ids=frozenset(broken_ids),
        broken_rate=float(broken_rate),
        malformed_rate=config["malformed_rate"],
        incomplete_rate=config["incomplete_rate"],
        slow_rate=config["slow_rate"],
        slow_s=config["slow_ms"] / 1000,
    )


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=bank_model.dumps(body), status=status, content_type="application/json", headers=headers)


class CoreBankingSimulator:
    """Server state (faults, counters, stats) and the aiohttp handlers."""

    def __init__(self, auth: str = "none", secret: str | None = None, faults: Faults | None = None) -> None:
        if auth not in ("none", "api_key", "bearer"):
            raise ValueError(f"unknown auth mode {auth!r}")
        if auth != "none" and not secret:
            raise ValueError(f"auth mode {auth} needs a secret")
        self.auth = auth
        self._secret = (secret or "").encode()
        self.faults = faults or parse_faults({})
        self.reset()

    def reset(self) -> None:
        """Clear stats and the per-(account, asOfDate) request counters."""
        self._counts: dict[int, int] = {}
        self._accounts: set[int] = set()
        self.requests_total = 0
        self.by_status: Counter[int] = Counter()
        self.by_correlation_id: Counter[str] = Counter()
        self.correlation_overflow = 0
        self.in_flight = 0
        self.max_concurrent = 0

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(BALANCE_PATH, self.balance, allow_head=False)
        app.router.add_get("/_sim/health", self.health, allow_head=False)
        app.router.add_get("/_sim/faults", self.get_faults, allow_head=False)
        app.router.add_put("/_sim/faults", self.put_faults)
        app.router.add_get("/_sim/stats", self.stats, allow_head=False)
        app.router.add_post("/_sim/reset", self.reset_handler)
        return app

    # -- balance (hot path) ------------------------------------------------------------------

    def _error(self, status: int, headers: dict[str, str] | None, message: str | None = None) -> web.Response:
        self.by_status[status] += 1
        return _json(status, bank_model.error_body(status, message), headers)

    def _authorized(self, request: web.Request) -> bool:
        if self.auth == "api_key":
            given = request.headers.get("X-API-Key", "")
        else:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer":
                return False
            given = given.strip()
        return hmac.compare_digest(given.encode(), self._secret)

    async def balance(self, request: web.Request) -> web.Response:
        self.requests_total += 1
        self.in_flight += 1
        if self.in_flight > self.max_concurrent:
            self.max_concurrent = self.in_flight
        try:
            return await self._balance(request)
        finally:
            self.in_flight -= 1

    async def _balance(self, request: web.Request) -> web.Response:
        headers: dict[str, str] | None = None
        cid = request.headers.get(CORRELATION_HEADER)
        if cid is not None:
            headers = {CORRELATION_HEADER: cid}
            if cid in self.by_correlation_id or len(self.by_correlation_id) < MAX_CORRELATION_IDS:
                self.by_correlation_id[cid] += 1
            else:
                self.correlation_overflow += 1
        f = self.faults
        if f.latency_s:
            await asyncio.sleep(f.latency_s)
        if self.auth != "none" and not self._authorized(request):
            return self._error(401, headers)

        account_id = request.match_info["accountId"]
        if not identifiers.is_valid_account_id(account_id):
            return self._error(400, headers)
        query = request.query
        date_s, time_s = query.get("asOfDate"), query.get("asOfTime")
        if date_s is None or time_s is None:
            return self._error(400, headers, "asOfDate (YYYY-MM-DD) and asOfTime (HH:MM:SS) are required")
        try:
            if not (_DATE_RE.match(date_s) and _TIME_RE.match(time_s)):
                raise ValueError
            as_of = dt.date.fromisoformat(date_s)
            dt.time.fromisoformat(time_s)
        except ValueError:
            return self._error(400, headers, "asOfDate must be YYYY-MM-DD and asOfTime HH:MM:SS")

        number = identifiers.customer_number_for(account_id)
        key = (number << _ORDINAL_BITS) | as_of.toordinal()
        n = self._counts.get(key, 0)
        self._counts[key] = n + 1
        self._accounts.add(number)
        suffix = f"|{account_id}|{date_s}|{n}"
        u = bank_model.hash_unit

        if f.slow_rate and u("slow" + suffix) < f.slow_rate:
            await asyncio.sleep(f.slow_s)
        if f.outage_until is not None and time.time() < f.outage_until:
            return self._error(503, headers)
        if account_id in f.broken_ids or (f.broken_rate and u("broken|" + account_id) < f.broken_rate):
            return self._error(f.broken_status, headers)
        if n < f.fail_count:
            return self._error(f.fail_status, headers)
        for status, rate in f.error_rates:
            if u(str(status) + suffix) < rate:
                return self._error(status, headers)

        facts = bank_model.account_facts(account_id, as_of)
        if facts is None:
            return self._error(404, headers)
        body = bank_model.balance_response(facts, time_s)
        self.by_status[200] += 1
        if f.malformed_rate and u("malformed" + suffix) < f.malformed_rate:
            raw = bank_model.dumps(body)
            return web.Response(body=raw[: len(raw) // 2], content_type="application/json", headers=headers)
        if f.incomplete_rate and u("incomplete" + suffix) < f.incomplete_rate:
            del body["balance"]["amount"]
        return _json(200, body, headers)

    # -- control -----------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(200, self.faults.config)

    async def put_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults = parse_faults(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, ValueError) as exc:
            return _json(400, bank_model.error_body(400, f"invalid fault config: {exc}"))
        log.info("fault config set: %s", self.faults.config)
        return _json(200, self.faults.config)

    def stats_snapshot(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_correlation_id": dict(self.by_correlation_id),
            "by_correlation_id_overflow": self.correlation_overflow,
            "max_concurrent": self.max_concurrent,
            "in_flight": self.in_flight,
            "distinct_accounts": len(self._accounts),
        }

    async def stats(self, request: web.Request) -> web.Response:
        return _json(200, self.stats_snapshot())

    async def reset_handler(self, request: web.Request) -> web.Response:
        self.reset()
        return _json(200, {"status": "reset"})


# -- process -------------------------------------------------------------------------------


def build_ssl_context(
    cert: str, key: str, client_ca: str | None = None, tls_min: str = "1.2", tls_max: str | None = None
) -> ssl.SSLContext:
    """Server TLS context; with ``client_ca`` a client certificate signed by it is required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.minimum_version = TLS_VERSIONS[tls_min]
    if tls_max:
        ctx.maximum_version = TLS_VERSIONS[tls_max]
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca)
    return ctx


def write_ready_file(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename) so readers never see a partial file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, target)


def base_url(host: str, port: int, tls: bool) -> str:
    if host in ("", "0.0.0.0", "::"):  # a wildcard bind is reached via loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


async def serve(
    app: web.Application,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    ready_file: str | None = None,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT; write the ready file once bound."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=75, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=2048)
    await site.start()
    bound = runner.addresses[0][1]
    url = base_url(host, bound, ssl_context is not None)
    if ready_file:
        write_ready_file(ready_file, {"port": bound, "pid": os.getpid(), "base_url": url})
    log.warning("listening on %s (pid %d)", url, os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.warning("shutting down")
        await runner.cleanup()


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """The arguments every simulator shares (host, port, ready file, TLS, log level)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = ephemeral")
    parser.add_argument("--ready-file", help="write {port, pid, base_url} here once listening")
    parser.add_argument("--tls-cert", help="server certificate (PEM); enables HTTPS")
    parser.add_argument("--tls-key", help="server private key (PEM)")
    parser.add_argument("--client-ca", help="CA (PEM) that must have signed the client certificate (mTLS)")
    parser.add_argument("--tls-min", choices=sorted(TLS_VERSIONS), default="1.2")
    parser.add_argument("--tls-max", choices=sorted(TLS_VERSIONS))
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def ssl_context_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ssl.SSLContext | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.client_ca and not args.tls_cert:
        parser.error("--client-ca needs --tls-cert/--tls-key")
    if not args.tls_cert:
        return None
    return build_ssl_context(args.tls_cert, args.tls_key, args.client_ca, args.tls_min, args.tls_max)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m premium.simulators.core_banking", description=__doc__.split("\n")[0]
    )
    add_server_args(parser)
    parser.add_argument("--auth", choices=["none", "api_key", "bearer"], default="none")
    parser.add_argument("--secret-env", default="BANK_SIM_SECRET", help="env var holding the API key / bearer token")
    parser.add_argument("--faults", default="{}", help="initial fault config (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    secret = os.environ.get(args.secret_env) if args.auth != "none" else None
    if args.auth != "none" and not secret:
        parser.error(f"--auth {args.auth} needs the secret in ${args.secret_env}")
    try:
        faults = parse_faults(json.loads(args.faults))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        parser.error(f"--faults: {exc}")
    ssl_context = ssl_context_from_args(parser, args)
    sim = CoreBankingSimulator(auth=args.auth, secret=secret, faults=faults)
    asyncio.run(serve(sim.make_app(), args.host, args.port, ssl_context, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
