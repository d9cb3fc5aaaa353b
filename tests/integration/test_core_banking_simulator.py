"""The core-banking simulator as a real loopback HTTP(S) server, started through the runner."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from premium.identifiers import account_id_for
from premium.simulators import bank_model
from premium.simulators.runner import PLUGINS_DIR, SimulatorError, SimulatorProcess
from tests.support.pki import Pki, make_pki

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DAY = "2025-11-18"
TIME = "21:00:00"
SECRET = "sim-secret-4b1d"


# -- helpers --------------------------------------------------------------------------------------


@dataclass
class Resp:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body, parse_float=Decimal)


def fetch(
    url: str, headers: dict[str, str] | None = None, ctx: ssl.SSLContext | None = None, timeout: float = 10.0
) -> Resp:
    handlers: list[Any] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.build_opener(*handlers).open(req, timeout=timeout) as r:
            return Resp(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Resp(e.code, e.headers, e.read())


def balance_url(base: str, account_id: str, date: str | None = DAY, time_: str | None = TIME) -> str:
    params = "&".join(p for p in (f"asOfDate={date}" if date else "", f"asOfTime={time_}" if time_ else "") if p)
    return f"{base}/api/v1/accounts/{account_id}/balance" + (f"?{params}" if params else "")


def find_accounts(pred: Callable[[bank_model.AccountFacts | None], bool], k: int) -> list[str]:
    day = dt.date.fromisoformat(DAY)
    out: list[str] = []
    n = 0
    while len(out) < k:
        n += 1
        a = account_id_for(n)
        if pred(bank_model.account_facts(a, day)):
            out.append(a)
    return out


EXISTING = find_accounts(lambda f: f is not None, 200)
MISSING = find_accounts(lambda f: f is None, 2)
SPECIAL = [
    *find_accounts(lambda f: f is not None and f.currency == "USD", 1),
    *find_accounts(lambda f: f is not None and f.account_status == "FROZEN", 1),
    *find_accounts(lambda f: f is not None and f.account_status == "CLOSED", 1),
]


def assert_error(resp: Resp, status: int, code: str) -> dict:
    assert resp.status == status
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "timestamp"}
    assert body["error"]["code"] == code and body["error"]["status"] == status and body["error"]["message"]
    return body


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess() as s:
        yield s


@pytest.fixture
def bank(sim: SimulatorProcess) -> SimulatorProcess:
    """The shared plain-HTTP simulator with no faults and empty stats/counters."""
    sim.set_faults({})
    sim.reset()
    return sim


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_ctx(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))  # verifies the server cert and its 127.0.0.1 SAN
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


# -- the API --------------------------------------------------------------------------------------


def test_success_body_equals_model(bank: SimulatorProcess) -> None:
    day = dt.date.fromisoformat(DAY)
    for account_id in [*EXISTING[:20], *SPECIAL]:
        resp = fetch(balance_url(bank.base_url, account_id))
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        body = resp.json()
        expected = bank_model.balance_response(bank_model.account_facts(account_id, day), TIME)
        assert set(body) == set(expected) and set(body["balance"]) == set(expected["balance"])
        for key in ("accountId", "customerId", "accountStatus", "timestamp", "referenceId"):
            assert body[key] == expected[key], key
        for key in ("amount", "currency", "asOfDate", "asOfTime"):
            assert body["balance"][key] == expected["balance"][key], key
        assert isinstance(body["balance"]["amount"], Decimal)
        assert body["balance"]["amount"].as_tuple().exponent == -2  # always two decimals on the wire
    assert {fetch(balance_url(bank.base_url, a)).json()["accountStatus"] for a in SPECIAL} >= {"FROZEN", "CLOSED"}


def test_not_found(bank: SimulatorProcess) -> None:
    for account_id in MISSING:
        body = assert_error(fetch(balance_url(bank.base_url, account_id)), 404, "NOT_FOUND")
        assert body["error"]["message"] == "Account not found"


@pytest.mark.parametrize(
    ("account_id", "date", "time_"),
    [
        ("ACC-1234-67890", DAY, TIME),
        ("acc-00000-00001", DAY, TIME),
        ("12345", DAY, TIME),
        (None, None, TIME),
        (None, DAY, None),
        (None, None, None),
        (None, "2025-13-01", TIME),
        (None, "20251118", TIME),
        (None, DAY, "25:00:00"),
        (None, DAY, "21:00"),
    ],
)
def test_bad_requests(bank: SimulatorProcess, account_id: str | None, date: str | None, time_: str | None) -> None:
    resp = fetch(balance_url(bank.base_url, account_id or EXISTING[0], date, time_))
    body = assert_error(resp, 400, "INVALID_REQUEST")
    if account_id:
        assert body["error"]["message"] == "Invalid account ID format"


def test_correlation_id_echo_and_stats(bank: SimulatorProcess) -> None:
    for account_id in EXISTING[:3]:
        resp = fetch(balance_url(bank.base_url, account_id), {"X-Correlation-Id": "corr-A"})
        assert resp.status == 200 and resp.headers["X-Correlation-Id"] == "corr-A"
    resp = fetch(balance_url(bank.base_url, MISSING[0]), {"X-Correlation-Id": "corr-B"})
    assert resp.status == 404 and resp.headers["X-Correlation-Id"] == "corr-B"
    resp = fetch(balance_url(bank.base_url, EXISTING[0], date=None), {"X-Correlation-Id": "corr-B"})
    assert resp.status == 400 and resp.headers["X-Correlation-Id"] == "corr-B"
    assert "X-Correlation-Id" not in fetch(balance_url(bank.base_url, EXISTING[0])).headers
    stats = bank.stats()
    assert stats["requests_total"] == 6
    assert stats["by_status"] == {"200": 4, "400": 1, "404": 1}
    assert stats["by_correlation_id"] == {"corr-A": 3, "corr-B": 2}
    assert stats["distinct_accounts"] == 4  # the 400 is not counted
    bank.reset()
    assert bank.stats()["requests_total"] == 0 and bank.stats()["by_correlation_id"] == {}
    assert fetch(bank.base_url + "/_sim/health").json() == {"status": "ok"}


def test_latency_and_max_concurrent(bank: SimulatorProcess) -> None:
    bank.set_faults({"latency_ms": 300})
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda a: fetch(balance_url(bank.base_url, a)).status, EXISTING[:8]))
    elapsed = time.monotonic() - start
    assert statuses == [200] * 8
    assert 0.3 <= elapsed < 1.5  # slept concurrently, never blocking the loop
    assert bank.stats()["max_concurrent"] >= 4


# -- faults ---------------------------------------------------------------------------------------


def test_faults_get_put_and_validation(bank: SimulatorProcess) -> None:
    defaults = bank.get_faults()
    assert defaults == {
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
    stored = bank.set_faults({"error_rates": {"500": 0.25}, "slow_ms": 10})
    assert stored["error_rates"] == {"400": 0, "401": 0, "404": 0, "500": 0.25, "503": 0}
    assert stored["slow_ms"] == 10 and stored["latency_ms"] == 0
    assert bank.set_faults({}) == defaults  # PUT replaces the whole config
    for bad in (
        {"nope": 1},
        {"malformed_rate": 1.5},
        {"error_rates": {"200": 0.1}},
        {"fail_first": {"status": 503, "count": -1}},
        {"outage": {"minutes": 1}},
        {"broken_accounts": {"ids": "ACC-00000-00001"}},
        {"broken_accounts": {"rate": 2}},
        {"latency_ms": "fast"},
    ):
        with pytest.raises(SimulatorError) as err:
            bank.set_faults(bad)
        assert err.value.status == 400 and err.value.body["error"]["code"] == "INVALID_REQUEST"
    assert bank.get_faults() == defaults


def test_fail_first_recovers(bank: SimulatorProcess) -> None:
    bank.set_faults({"fail_first": {"status": 503, "count": 2}})
    a, b = EXISTING[:2]
    assert_error(fetch(balance_url(bank.base_url, a)), 503, "SERVICE_UNAVAILABLE")
    assert_error(fetch(balance_url(bank.base_url, a)), 503, "SERVICE_UNAVAILABLE")
    assert fetch(balance_url(bank.base_url, a)).status == 200  # the (count+1)th succeeds
    assert fetch(balance_url(bank.base_url, a, date="2025-11-19")).status == 503  # per (account, asOfDate)
    assert fetch(balance_url(bank.base_url, b)).status == 503
    bank.set_faults({"fail_first": {"status": 500, "count": 1}})
    assert fetch(balance_url(bank.base_url, EXISTING[2])).status == 500
    assert fetch(balance_url(bank.base_url, a)).status == 200  # a has been asked 3 times already
    bank.reset()  # clears the per-account counters
    assert_error(fetch(balance_url(bank.base_url, a)), 500, "INTERNAL_ERROR")
    assert fetch(balance_url(bank.base_url, a)).status == 200


def test_error_rates_deterministic(bank: SimulatorProcess) -> None:
    bank.set_faults({"error_rates": {"500": 0.5}})
    accounts = EXISTING[:120]
    observed = [fetch(balance_url(bank.base_url, a)).status for a in accounts]
    expected = [500 if bank_model.hash_unit(f"500|{a}|{DAY}|0") < 0.5 else 200 for a in accounts]
    assert observed == expected
    assert 0.3 < observed.count(500) / len(observed) < 0.7
    # the second request of each account uses n=1: a different, equally reproducible draw
    second = [fetch(balance_url(bank.base_url, a)).status for a in accounts[:40]]
    assert second == [500 if bank_model.hash_unit(f"500|{a}|{DAY}|1") < 0.5 else 200 for a in accounts[:40]]
    bank.reset()
    assert [fetch(balance_url(bank.base_url, a)).status for a in accounts] == expected  # reproducible
    bank.set_faults({"error_rates": {"401": 1.0, "404": 1.0}})  # first hit in ascending status order
    assert_error(fetch(balance_url(bank.base_url, EXISTING[0])), 401, "UNAUTHORIZED")
    bank.set_faults({"error_rates": {"400": 1}})
    assert_error(fetch(balance_url(bank.base_url, EXISTING[0])), 400, "INVALID_REQUEST")
    bank.set_faults({})  # runtime change back to healthy
    assert {fetch(balance_url(bank.base_url, a)).status for a in accounts[:20]} == {200}


def test_outage_window(bank: SimulatorProcess) -> None:
    stored = bank.set_faults({"outage": {"seconds": 1.0}})
    assert stored["outage"]["until_epoch"] == pytest.approx(time.time() + 1.0, abs=0.5)
    assert_error(fetch(balance_url(bank.base_url, EXISTING[0])), 503, "SERVICE_UNAVAILABLE")
    assert fetch(balance_url(bank.base_url, EXISTING[1])).status == 503
    assert fetch(bank.base_url + "/_sim/health").status == 200  # control endpoints unaffected
    time.sleep(max(0.0, stored["outage"]["until_epoch"] - time.time()) + 0.1)
    assert fetch(balance_url(bank.base_url, EXISTING[0])).status == 200
    bank.set_faults({"outage": {"until_epoch": time.time() + 60}})
    assert fetch(balance_url(bank.base_url, EXISTING[2])).status == 503
    bank.set_faults({"outage": {"until_epoch": time.time() - 1}})
    assert fetch(balance_url(bank.base_url, EXISTING[2])).status == 200


def test_broken_accounts_fail_every_call_while_the_others_answer(bank: SimulatorProcess) -> None:
    broken, healthy = EXISTING[:2], EXISTING[2:6]
    stored = bank.set_faults({"broken_accounts": {"ids": broken}})
    assert stored["broken_accounts"] == {"status": 503, "ids": sorted(broken), "rate": 0.0}
    for account in broken:
        for date in (DAY, DAY, DAY, "2025-11-19"):  # every request, every date: no recovery
            assert_error(fetch(balance_url(bank.base_url, account, date=date)), 503, "SERVICE_UNAVAILABLE")
    assert {fetch(balance_url(bank.base_url, a)).status for a in healthy} == {200}
    assert fetch(balance_url(bank.base_url, MISSING[0])).status == 404

    bank.set_faults({"broken_accounts": {"status": 500, "rate": 0.3}})
    accounts = EXISTING[:60]
    expected = [500 if bank_model.hash_unit(f"broken|{a}") < 0.3 else 200 for a in accounts]
    assert [fetch(balance_url(bank.base_url, a)).status for a in accounts] == expected
    assert [fetch(balance_url(bank.base_url, a)).status for a in accounts] == expected  # persistent
    assert 0 < expected.count(500) < len(expected)


def test_malformed_and_incomplete_bodies(bank: SimulatorProcess) -> None:
    bank.set_faults({"malformed_rate": 1.0})
    resp = fetch(balance_url(bank.base_url, EXISTING[0]))
    assert resp.status == 200 and resp.body.startswith(b'{"accountId":"ACC-')
    with pytest.raises(ValueError):
        json.loads(resp.body)
    assert fetch(balance_url(bank.base_url, MISSING[0])).status == 404  # no body to corrupt

    bank.set_faults({"incomplete_rate": 1.0})
    body = fetch(balance_url(bank.base_url, EXISTING[0])).json()
    assert "amount" not in body["balance"]
    assert body["accountId"] == EXISTING[0] and body["balance"]["currency"] in ("NIS", "USD")

    bank.set_faults({"malformed_rate": 0.3})
    bank.reset()
    statuses = ["bad" if bank_model.hash_unit(f"malformed|{a}|{DAY}|0") < 0.3 else "ok" for a in EXISTING[:60]]
    seen = []
    for a in EXISTING[:60]:
        try:
            fetch(balance_url(bank.base_url, a)).json()
            seen.append("ok")
        except ValueError:
            seen.append("bad")
    assert seen == statuses and "bad" in seen and "ok" in seen


def test_slow_responses(bank: SimulatorProcess) -> None:
    bank.set_faults({"slow_rate": 1.0, "slow_ms": 400})
    start = time.monotonic()
    assert fetch(balance_url(bank.base_url, EXISTING[0])).status == 200
    assert time.monotonic() - start >= 0.4
    with pytest.raises(OSError):  # a client with a shorter timeout gives up (the §2.1 30 s case)
        fetch(balance_url(bank.base_url, EXISTING[1]), timeout=0.15)
    bank.set_faults({})
    start = time.monotonic()
    assert fetch(balance_url(bank.base_url, EXISTING[2])).status == 200
    assert time.monotonic() - start < 0.3


def test_faults_given_at_start() -> None:
    faults = json.dumps({"fail_first": {"status": 500, "count": 1}, "latency_ms": 5})
    with SimulatorProcess(args=["--faults", faults]) as s:
        assert s.get_faults()["fail_first"] == {"status": 500, "count": 1}
        assert s.get_faults()["latency_ms"] == 5
        assert fetch(balance_url(s.base_url, EXISTING[0])).status == 500
        assert fetch(balance_url(s.base_url, EXISTING[0])).status == 200


# -- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "good", "bad"),
    [
        ("api_key", {"X-API-Key": SECRET}, {"X-API-Key": "wrong"}),
        ("bearer", {"Authorization": f"Bearer {SECRET}"}, {"Authorization": "Bearer wrong"}),
    ],
)
def test_auth_modes(mode: str, good: dict[str, str], bad: dict[str, str]) -> None:
    with SimulatorProcess(
        args=["--auth", mode, "--secret-env", "SIM_TEST_SECRET"], env={"SIM_TEST_SECRET": SECRET}
    ) as s:
        url = balance_url(s.base_url, EXISTING[0])
        assert fetch(url, good).status == 200
        body = assert_error(fetch(url, {**bad, "X-Correlation-Id": "c1"}), 401, "UNAUTHORIZED")
        assert body["error"]["message"] == "Authentication failed"
        assert_error(fetch(url), 401, "UNAUTHORIZED")
        other = {"Authorization": f"Bearer {SECRET}"} if mode == "api_key" else {"X-API-Key": SECRET}
        assert fetch(url, other).status == 401  # the other mode's header does not count
        assert s.stats()["by_status"] == {"200": 1, "401": 3}  # control endpoints need no auth


def test_auth_without_secret_fails_to_start() -> None:
    sim = SimulatorProcess(args=["--auth", "bearer", "--secret-env", "SIM_TEST_UNSET_SECRET"], startup_timeout=10)
    with pytest.raises(SimulatorError, match="SIM_TEST_UNSET_SECRET"):
        sim.start()
    assert not sim.running


def test_mtls(pki: Pki) -> None:
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--client-ca", str(pki.ca)]
    with SimulatorProcess(
        args=[*args, "--tls-min", "1.3"], client_cert=(str(pki.client_cert), str(pki.client_key))
    ) as s:
        assert s.base_url.startswith("https://127.0.0.1:")
        url = balance_url(s.base_url, EXISTING[0])
        resp = fetch(url, ctx=client_ctx(pki, (pki.client_cert, pki.client_key)))
        assert resp.status == 200 and resp.json()["accountId"] == EXISTING[0]
        with pytest.raises(OSError):  # no client certificate
            fetch(url, ctx=client_ctx(pki))
        with pytest.raises(OSError):  # a certificate from another CA
            fetch(url, ctx=client_ctx(pki, (pki.rogue_cert, pki.rogue_key)))
        with pytest.raises(OSError):  # plain HTTP on the TLS port
            fetch(url.replace("https://", "http://"), timeout=3)
        tls12 = client_ctx(pki, (pki.client_cert, pki.client_key))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(OSError):  # --tls-min 1.3
            fetch(url, ctx=tls12)
        assert s.stats()["by_status"] == {"200": 1}


def test_tls12_only_server(pki: Pki) -> None:
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-max", "1.2"]
    with SimulatorProcess(args=args) as s:
        ctx = client_ctx(pki)
        with (
            socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.2"
        assert fetch(balance_url(s.base_url, EXISTING[0]), ctx=ctx).status == 200
        only13 = client_ctx(pki)
        only13.minimum_version = ssl.TLSVersion.TLSv1_3
        with pytest.raises(OSError):
            fetch(balance_url(s.base_url, EXISTING[0]), ctx=only13)


# -- the runner -----------------------------------------------------------------------------------


def test_runner_process_lifecycle() -> None:
    s = SimulatorProcess()
    with pytest.raises(SimulatorError):
        _ = s.base_url
    with s:
        pid = s.pid
        assert s.running and s.base_url == f"http://127.0.0.1:{s.port}"
        assert fetch(s.base_url + "/_sim/health").status == 200
    assert not s.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    s.stop()  # idempotent


def test_runner_generic_module(tmp_path: Path) -> None:
    (tmp_path / "fake_sim.py").write_text(
        """
import argparse, http.server, json, os, signal, sys
p = argparse.ArgumentParser(); p.add_argument("--port", type=int); p.add_argument("--ready-file")
a = p.parse_args()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"status": "ok"}' if self.path == "/_sim/health" else b'{}'
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
srv = http.server.HTTPServer(("127.0.0.1", a.port), H)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
port = srv.server_address[1]
tmp = a.ready_file + ".tmp"
json.dump({"port": port, "pid": os.getpid(), "base_url": f"http://127.0.0.1:{port}"}, open(tmp, "w"))
os.replace(tmp, a.ready_file)
srv.serve_forever()
""",
        encoding="utf-8",
    )
    with SimulatorProcess(module="fake_sim", env={"PYTHONPATH": str(tmp_path)}, name="fake") as s:
        assert fetch(s.base_url + "/_sim/health").json() == {"status": "ok"}


def test_runner_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PLUGINS_DIR)}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "premium.simulators.runner", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)

    common = ["--name", "bank", "--state-dir", str(tmp_path)]
    faults = json.dumps({"latency_ms": 1})
    first = run("start", *common, "--", "--faults", faults)
    assert first.returncode == 0, first.stderr
    url = first.stdout.strip()
    assert url.startswith("http://127.0.0.1:")
    state = json.loads((tmp_path / "bank.json").read_text())
    assert state["base_url"] == url and state["module"] == "premium.simulators.core_banking"
    try:
        assert fetch(url + "/_sim/faults").json()["latency_ms"] == 1
        assert fetch(balance_url(url, EXISTING[0])).status == 200
        again = run("start", *common, "--", "--faults", faults)  # idempotent
        assert again.returncode == 0 and again.stdout.strip() == url
        assert json.loads((tmp_path / "bank.json").read_text())["pid"] == state["pid"]
        status = run("status", *common)
        assert status.returncode == 0 and status.stdout.strip() == url
    finally:
        stopped = run("stop", *common)
    assert stopped.returncode == 0
    with pytest.raises(OSError):
        fetch(url + "/_sim/health", timeout=2)
    assert not (tmp_path / "bank.json").exists()
    assert run("stop", *common).returncode == 0  # not running: no error
    assert run("status", *common).returncode == 1
    assert (tmp_path / "bank.log").exists()
