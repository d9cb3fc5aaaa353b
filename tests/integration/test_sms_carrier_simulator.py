"""The SMS-carrier simulator as a real loopback HTTP server, started through the runner."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from premium.simulators import carrier_model as cm
from premium.simulators.bank_model import hash_unit
from premium.simulators.runner import SimulatorError, SimulatorProcess
from premium.simulators.sms_carrier import provider_error_code

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODULE = "premium.simulators.sms_carrier"
KEY = "sms-key-9f2c"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"carrier-webhook-secret-32-bytes!").decode()
CALLBACK = "https://notification-service/callbacks/sms-delivery"  # never called: callbacks off
ISO_SECONDS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
ISO_MILLIS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


# -- helpers --------------------------------------------------------------------------------------


@dataclass
class Resp:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Resp:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers if headers is not None else AUTH)}
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return Resp(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Resp(e.code, e.headers, e.read())


def submit(base: str, body: Any, headers: dict[str, str] | None = None) -> Resp:
    return call("POST", base + "/api/v1/messages/batch", body, headers)


def poll(base: str, tracking_id: str, headers: dict[str, str] | None = None) -> Resp:
    return call("GET", f"{base}/api/v1/messages/{tracking_id}/status", headers=headers)


def msg(mid: str, phone: str, callback: str = CALLBACK, **extra: Any) -> dict[str, Any]:
    return {
        "messageId": mid,
        "phoneNumber": phone,
        "content": f"Hello {mid}, we appreciate your continued loyalty.",
        "priority": "HIGH",
        "callbackUrl": callback,
        **extra,
    }


def batch(batch_id: str, messages: list[dict[str, Any]], campaign: str = "premium-monthly-nov-2025") -> dict:
    return {"batchId": batch_id, "messages": messages, "metadata": {"campaignId": campaign, "correlationId": "corr-1"}}


def bid(n: int) -> str:
    return f"BATCH-20251118-{n:03d}"


def phones(pred: Callable[[cm.Outcome], bool], k: int, prefix: str = "+97252", attempt: int = 0) -> list[str]:
    """``k`` valid numbers whose outcome at ``attempt`` satisfies ``pred``."""
    out: list[str] = []
    n = 0
    while len(out) < k:
        phone = f"{prefix}{n:07d}"
        n += 1
        if not cm.invalid_at_submission(phone) and pred(cm.outcome_for(phone, attempt)):
            out.append(phone)
    return out


def valid_phones(k: int, prefix: str = "+97253") -> list[str]:
    return phones(lambda o: True, k, prefix)


def of(status: str, code: str | None = None) -> Callable[[cm.Outcome], bool]:
    if code is None:
        return lambda o: o.status == status
    if code == "5xxxx":
        return lambda o: o.status == status and o.status_code.startswith("5")
    return lambda o: o.status == status and o.status_code == code


OUTCOME_KINDS: dict[str, Callable[[cm.Outcome], bool]] = {
    "delivered": of("DELIVERED"),
    "rejected": of("FAILED", "21614"),
    "provider": of("FAILED", "5xxxx"),
    "undeliverable": of("UNDELIVERABLE"),
    "stuck": of("SENT"),
    "no_status": of("NO_STATUS"),
}


def assert_error(resp: Resp, status: int, code: str, message: str | None = None) -> str:
    assert resp.status == status, resp.body
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    if message is not None:
        assert body["error"]["message"] == message
    return body["error"]["message"]


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


class Receiver:
    """A local aiohttp webhook receiver in a background thread; records every request.

    ``/ok`` answers 200, ``/fail`` 500, ``/flaky`` 503 to the first attempt of each webhook-id.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._seen: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.path, dict(request.headers), body))
        if request.path == "/fail":
            return web.json_response({"status": "error"}, status=500)
        if request.path == "/flaky" and request.headers.get("webhook-id") not in self._seen:
            self._seen.add(request.headers.get("webhook-id", ""))
            return web.json_response({"status": "busy"}, status=503)
        return web.json_response({"status": "processed"})

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return self._runner.addresses[0][1]

    def start(self) -> Receiver:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def on(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for p, h, b in list(self.requests) if p == path]


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def primary() -> Iterator[SimulatorProcess]:
    args = ["--name", "primary", "--secret-env", "SMS_TEST_KEY", "--webhook-secret-env", "SMS_TEST_WH"]
    env = {"SMS_TEST_KEY": KEY, "SMS_TEST_WH": WEBHOOK_SECRET}
    with SimulatorProcess(module=MODULE, args=[*args, "--callbacks", "off"], env=env, name="sms-primary") as s:
        yield s


@pytest.fixture
def sms(primary: SimulatorProcess) -> SimulatorProcess:
    """The shared primary carrier (callbacks off, time scale 1) with no faults and no state."""
    primary.set_faults({})
    primary.reset()
    return primary


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


# -- submission -----------------------------------------------------------------------------------


def test_accepted_body_shape(sms: SimulatorProcess) -> None:
    numbers = valid_phones(3)
    resp = submit(sms.base_url, batch(bid(1), [msg(f"MSG-{i}", p) for i, p in enumerate(numbers)]))
    assert resp.status == 202 and resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert list(body) == ["batchId", "submissionStatus", "timestamp", "messages"]
    assert body["batchId"] == bid(1) and body["submissionStatus"] == "ACCEPTED"
    assert ISO_SECONDS.match(body["timestamp"])
    assert [m["messageId"] for m in body["messages"]] == ["MSG-0", "MSG-1", "MSG-2"]
    for m in body["messages"]:
        assert set(m) == {"messageId", "trackingId", "status"} and m["status"] == "QUEUED"
        assert re.fullmatch(r"PRIMARY-TRACK-\d{8}", m["trackingId"])
    seqs = [int(m["trackingId"][-8:]) for m in body["messages"]]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    stats = sms.stats()
    assert stats["batches_received"] == 1 and stats["batches_by_status"] == {"202": 1}
    assert stats["messages_accepted"] == 3 and stats["messages_rejected"] == 0


def test_invalid_number_rejected_at_submission(sms: SimulatorProcess) -> None:
    good = valid_phones(2)
    hashed_invalid = next(p for p in (f"+97254{n:07d}" for n in range(10_000)) if cm.invalid_at_submission(p))
    messages = [msg("M-1", good[0]), msg("M-2", "+972500000042"), msg("M-3", hashed_invalid), msg("M-4", good[1])]
    body = submit(sms.base_url, batch(bid(2), messages)).json()
    assert body["submissionStatus"] == "PARTIALLY_ACCEPTED"
    rejected = {"status": "REJECTED", "errorCode": "21211", "errorMessage": "Invalid phone number"}
    assert body["messages"][1] == {"messageId": "M-2", **rejected}
    assert body["messages"][2] == {"messageId": "M-3", **rejected}
    assert body["messages"][0]["status"] == body["messages"][3]["status"] == "QUEUED"
    assert [r["messageId"] for r in sms.call("GET", "/_sim/received")] == ["M-1", "M-4"]
    stats = sms.stats()
    assert stats["messages_accepted"] == 2 and stats["messages_rejected"] == 2
    # a rejected message is not remembered: sent again, it is rejected again
    again = submit(sms.base_url, batch(bid(3), [msg("M-2", "+972500000042")])).json()
    assert again["messages"] == [{"messageId": "M-2", **rejected}]


GOOD = msg("M-0", "+972521234567")


def _with(**changes: Any) -> dict[str, Any]:
    body = batch(bid(10), [dict(GOOD), msg("M-1", "+972521234568")])
    for path, value in changes.items():
        target: Any = body
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key[1:])] if key.startswith("i") else target[key]
        if value is ...:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return body


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("not json", b"{nope", "request body is not valid JSON"),
    ("array", [GOOD], "request body must be a JSON object"),
    ("no batchId", _with(batchId=...), "missing field 'batchId'"),
    ("extra field", {**_with(), "priority": "HIGH"}, "unknown field 'priority'"),
    ("batchId int", _with(batchId=20251118001), "batchId must be a string"),
    ("batchId format", _with(batchId="BATCH-2025-001"), "batchId must match BATCH-"),
    ("batchId short seq", _with(batchId="BATCH-20251118-01"), "batchId must match BATCH-"),
    ("guid batchId", _with(batchId="3f2b9c0d4e5f6a7b8c9d0e1f2a3b4c5d"), "batchId must match BATCH-"),
    ("no metadata", _with(metadata=...), "missing field 'metadata'"),
    ("metadata list", _with(metadata=[]), "metadata must be an object"),
    ("no campaignId", _with(metadata__campaignId=...), "metadata: missing field 'campaignId'"),
    ("metadata extra", _with(metadata__tenant="x"), "metadata: unknown field 'tenant'"),
    ("correlationId int", _with(metadata__correlationId=7), "metadata.correlationId must be a non-empty string"),
    ("campaignId empty", _with(metadata__campaignId=""), "metadata.campaignId must be a non-empty string"),
    ("messages object", _with(messages={}), "messages must be an array"),
    ("no messages", _with(messages=[]), "messages must hold 1 to 1000 messages (got 0)"),
    (
        "too many",
        batch(bid(10), [msg(f"M-{i}", "+972521234567") for i in range(1001)]),
        "messages must hold 1 to 1000 messages (got 1001)",
    ),
    ("message not object", _with(messages=[GOOD, "M-1"]), "messages[1]: must be an object"),
    ("no phone", _with(messages__i1__phoneNumber=...), "messages[1] (messageId 'M-1'): missing field 'phoneNumber'"),
    ("message extra", _with(messages__i0__sender="BANK"), "messages[0] (messageId 'M-0'): unknown field 'sender'"),
    ("no messageId", _with(messages__i1__messageId=...), "messages[1]: missing field 'messageId'"),
    ("messageId int", _with(messages__i1__messageId=1), "messages[1]: messageId must be a string of 1 to 64"),
    ("messageId long", _with(messages__i1__messageId="M" * 65), "messages[1]: messageId must be a string of 1 to 64"),
    ("messageId empty", _with(messages__i0__messageId=""), "messages[0]: messageId must be a string of 1 to 64"),
    ("local phone", _with(messages__i1__phoneNumber="0521234567"), "messages[1] (messageId 'M-1'): phoneNumber"),
    ("short phone", _with(messages__i1__phoneNumber="+1234567"), "messages[1] (messageId 'M-1'): phoneNumber"),
    ("long phone", _with(messages__i1__phoneNumber="+1234567890123456"), "messages[1] (messageId 'M-1'): phoneNumber"),
    ("spaced phone", _with(messages__i1__phoneNumber="+972 52 123 4567"), "messages[1] (messageId 'M-1'): phoneNumber"),
    ("phone int", _with(messages__i1__phoneNumber=972521234567), "messages[1] (messageId 'M-1'): phoneNumber"),
    ("empty content", _with(messages__i1__content=""), "messages[1] (messageId 'M-1'): content must be a string"),
    ("long content", _with(messages__i1__content="x" * 1601), "messages[1] (messageId 'M-1'): content must be"),
    ("content null", _with(messages__i0__content=None), "messages[0] (messageId 'M-0'): content must be"),
    ("priority", _with(messages__i1__priority="URGENT"), "messages[1] (messageId 'M-1'): priority must be one of"),
    ("priority lower", _with(messages__i1__priority="high"), "messages[1] (messageId 'M-1'): priority must be"),
    ("priority list", _with(messages__i1__priority=["HIGH"]), "messages[1] (messageId 'M-1'): priority must be"),
    ("ftp callback", _with(messages__i1__callbackUrl="ftp://host/cb"), "messages[1] (messageId 'M-1'): callbackUrl"),
    ("relative callback", _with(messages__i1__callbackUrl="/callbacks"), "messages[1] (messageId 'M-1'): callbackUrl"),
    ("callback no host", _with(messages__i1__callbackUrl="https:///cb"), "messages[1] (messageId 'M-1'): callbackUrl"),
]


@pytest.mark.parametrize(("body", "expected"), [(b, e) for _, b, e in BAD_BODIES], ids=[i for i, _, _ in BAD_BODIES])
def test_validation(sms: SimulatorProcess, body: Any, expected: str) -> None:
    message = assert_error(submit(sms.base_url, body), 400, "INVALID_REQUEST")
    assert message.startswith(expected) if "(" in expected or ":" in expected else expected in message
    stats = sms.stats()
    assert stats["batches_by_status"] == {"400": 1} and stats["messages_accepted"] == 0


def test_validation_limits_accepted(sms: SimulatorProcess) -> None:
    edge = [
        msg("M" * 64, "+12345678", content="x" * 1600, priority="LOW", callbackUrl="http://h:8080/cb?x=1"),
        msg("M-2", "+123456789012345", content="שלום 👋", priority="NORMAL"),
    ]
    resp = submit(sms.base_url, batch("BATCH-20251118-123456", edge))
    assert resp.status == 202, resp.body
    assert [r["content_length"] for r in sms.call("GET", "/_sim/received")] == [1600, 6]
    big = batch(bid(11), [msg(f"M-{i}", f"+97252{i:07d}", content="ש" * 1600) for i in range(1000)])
    assert submit(sms.base_url, big).status == 202  # ≈3.3 MB: 1000 messages of 1600 two-byte characters
    huge = batch(bid(12), [msg("M-1", "+972521234567", content="x" * (17 * 1024 * 1024))])
    assert_error(submit(sms.base_url, huge), 413, "INVALID_REQUEST")


def test_auth(sms: SimulatorProcess) -> None:
    body = batch(bid(1), [msg("M-1", valid_phones(1)[0])])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"X-API-Key": KEY}):
        resp = submit(sms.base_url, body, headers)
        assert_error(resp, 401, "UNAUTHORIZED", "Missing or invalid API key")
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    tracking_id = submit(sms.base_url, body).json()["messages"][0]["trackingId"]
    assert_error(poll(sms.base_url, tracking_id, {"Authorization": "Bearer nope"}), 401, "UNAUTHORIZED")
    assert poll(sms.base_url, tracking_id).status == 200
    assert submit(sms.base_url, body, {"Authorization": f"bearer {KEY}"}).status == 202  # scheme case-insensitive
    assert call("GET", sms.base_url + "/_sim/health", headers={}).json() == {"status": "ok", "name": "primary"}
    assert sms.stats()["batches_by_status"] == {"202": 2, "401": 4}


# -- idempotency ----------------------------------------------------------------------------------


def test_idempotent_batch_id(sms: SimulatorProcess) -> None:
    numbers = valid_phones(3)
    first = submit(sms.base_url, batch(bid(5), [msg(f"M-{i}", p) for i, p in enumerate(numbers)]))
    time.sleep(1.1)  # a replay is byte-identical, timestamp included
    again = submit(sms.base_url, batch(bid(5), [msg(f"M-{i}", p) for i, p in enumerate(numbers)]))
    assert first.status == again.status == 202 and again.body == first.body
    other = submit(sms.base_url, batch(bid(5), [msg("M-9", numbers[0])]))  # same batchId, other content
    assert other.status == 202 and other.body == first.body
    stats = sms.stats()
    assert stats["messages_accepted"] == 3 and stats["batches_replayed"] == 2 and stats["duplicates_ignored"] == 4
    assert len(sms.call("GET", "/_sim/received")) == 3


def test_idempotent_message_id(sms: SimulatorProcess) -> None:
    a, b, c, d = valid_phones(4)
    first = submit(sms.base_url, batch(bid(6), [msg("M-1", a), msg("M-2", b), msg("M-3", c)])).json()
    tracking = {m["messageId"]: m["trackingId"] for m in first["messages"]}
    second = submit(sms.base_url, batch(bid(7), [msg("M-2", b), msg("M-4", d), msg("M-3", c), msg("M-4", d)]))
    assert second.status == 202
    body = second.json()
    assert body["submissionStatus"] == "ACCEPTED"
    ids = [(m["messageId"], m["trackingId"], m["status"]) for m in body["messages"]]
    assert ids[0] == ("M-2", tracking["M-2"], "QUEUED") and ids[2] == ("M-3", tracking["M-3"], "QUEUED")
    assert ids[1][1] not in tracking.values() and ids[3] == ids[1]  # a repeat inside one batch too
    received = sms.call("GET", "/_sim/received")
    assert [r["messageId"] for r in received] == ["M-1", "M-2", "M-3", "M-4"]
    assert [r["batchId"] for r in received] == [bid(6)] * 3 + [bid(7)]
    stats = sms.stats()
    assert stats["messages_accepted"] == 4 and stats["duplicates_ignored"] == 3


def test_attempt_index_and_received(sms: SimulatorProcess) -> None:
    phone = valid_phones(1)[0]
    submit(sms.base_url, batch(bid(8), [msg("M-1", phone), msg("M-2", "+972500000001")], campaign="camp-A"))
    submit(sms.base_url, batch(bid(9), [msg("M-3", phone), msg("M-1", phone)], campaign="camp-B"))
    received = sms.call("GET", "/_sim/received")
    assert [(r["messageId"], r["attempt_index"], r["campaignId"]) for r in received] == [
        ("M-1", 0, "camp-A"),
        ("M-3", 1, "camp-B"),
    ]
    row = received[0]
    assert set(row) == {
        "messageId",
        "batchId",
        "phoneNumber",
        "campaignId",
        "correlationId",
        "trackingId",
        "attempt_index",
        "accepted_at",
        "priority",
        "content_length",
    }
    assert row["phoneNumber"] == phone and row["correlationId"] == "corr-1" and row["priority"] == "HIGH"
    assert row["content_length"] == len(msg("M-1", phone)["content"]) and ISO_MILLIS.match(row["accepted_at"])
    with_content = sms.call("GET", "/_sim/received?content=1")
    assert with_content[0]["content"] == msg("M-1", phone)["content"]
    last = int(received[-1]["trackingId"][-8:])
    sms.reset()  # forgets everything but keeps the tracking-id sequence going
    assert sms.call("GET", "/_sim/received") == [] and sms.stats()["messages_accepted"] == 0
    assert_error(poll(sms.base_url, received[0]["trackingId"]), 404, "NOT_FOUND", "Unknown trackingId")
    again = submit(sms.base_url, batch(bid(8), [msg("M-1", phone)])).json()  # batch and messageId forgotten
    assert int(again["messages"][0]["trackingId"][-8:]) == last + 1
    assert sms.call("GET", "/_sim/received")[0]["attempt_index"] == 0


# -- faults ---------------------------------------------------------------------------------------


def test_faults_get_put_and_validation(sms: SimulatorProcess) -> None:
    defaults = sms.get_faults()
    assert defaults == {
        "latency_ms": 0,
        "error_rates": {"429": 0, "500": 0, "502": 0, "503": 0, "504": 0},
        "fail_next": {"status": 503, "count": 0},
        "outage": None,
        "accept_then_drop_rate": 0.0,
        "omit_rate": 0.0,
        "commit_then": {"status": 504, "count": 0},
        "refuse": {"message_ids": [], "status": 422},
        "time_scale": 1.0,
    }
    stored = sms.set_faults({"error_rates": {"429": 0.5}, "time_scale": 0.1})
    assert stored["error_rates"] == {"429": 0.5, "500": 0, "502": 0, "503": 0, "504": 0}
    assert stored["time_scale"] == 0.1
    assert sms.set_faults({}) == defaults
    for bad in (
        {"nope": 1},
        {"omit_rate": 1.5},
        {"accept_then_drop_rate": -0.1},
        {"error_rates": {"404": 0.1}},
        {"fail_next": {"status": 400, "count": 1}},
        {"fail_next": {"status": 503, "count": -1}},
        {"outage": {"minutes": 1}},
        {"time_scale": "fast"},
        {"latency_ms": True},
    ):
        with pytest.raises(SimulatorError) as err:
            sms.set_faults(bad)
        assert err.value.status == 400 and err.value.body["error"]["code"] == "INVALID_REQUEST"
    assert sms.get_faults() == defaults


def test_fail_next_and_error_bodies(sms: SimulatorProcess) -> None:
    body = batch(bid(20), [msg("M-1", valid_phones(1)[0])])
    sms.set_faults({"fail_next": {"status": 500, "count": 2}})
    assert sms.get_faults()["fail_next"] == {"status": 500, "count": 2}
    assert_error(submit(sms.base_url, body), 500, provider_error_code(bid(20), 0), "Provider error")
    assert sms.get_faults()["fail_next"]["count"] == 1  # remaining failures
    code = submit(sms.base_url, body).json()["error"]["code"]  # n=1: another code from 50001..50999
    assert code == provider_error_code(bid(20), 1) and 50001 <= int(code) <= 50999
    assert submit(sms.base_url, body).status == 202  # the (count+1)th succeeds
    assert sms.get_faults()["fail_next"]["count"] == 0

    sms.set_faults({"fail_next": {"status": 429, "count": 1}})
    resp = submit(sms.base_url, body)
    assert_error(resp, 429, "20429", "Rate limit exceeded")
    assert resp.headers["Retry-After"] == "1"
    sms.set_faults({"fail_next": {"status": 503, "count": 1}})
    assert_error(submit(sms.base_url, body), 503, "503", "Network unavailable")
    assert submit(sms.base_url, {"batchId": "x"}).status == 400  # invalid bodies do not use up fail_next
    sms.set_faults({"fail_next": {"status": 503, "count": 1}})
    assert submit(sms.base_url, body).status == 503
    assert submit(sms.base_url, body).status == 202  # a replay of the accepted batch
    stats = sms.stats()
    assert stats["batches_by_status"] == {"202": 2, "400": 1, "429": 1, "500": 2, "503": 2}
    assert stats["messages_accepted"] == 1 and stats["batches_received"] == 8


def test_error_rates_deterministic(sms: SimulatorProcess) -> None:
    sms.set_faults({"error_rates": {"500": 0.4, "503": 0.3}})
    phone = valid_phones(1)[0]
    ids = [bid(100 + i) for i in range(60)]
    observed = [submit(sms.base_url, batch(b, [msg(f"M-{b}", phone)])).status for b in ids]

    def expected(b: str, n: int) -> int:
        for status, rate in ((500, 0.4), (503, 0.3)):
            if hash_unit(f"{status}|{b}|{n}") < rate:
                return status
        return 202

    assert observed == [expected(b, 0) for b in ids]
    assert {202, 500, 503} <= set(observed)
    # resubmitting each failed batch uses n=1: a fresh, equally reproducible draw
    failed = [b for b, s in zip(ids, observed, strict=True) if s != 202]
    assert [submit(sms.base_url, batch(b, [msg(f"M-{b}", phone)])).status for b in failed] == [
        expected(b, 1) for b in failed
    ]
    sms.set_faults({"error_rates": {"429": 1}})
    resp = submit(sms.base_url, batch(bid(999), [msg("M-x", phone)]))
    assert resp.status == 429 and resp.headers["Retry-After"] == "1"


def test_outage(sms: SimulatorProcess) -> None:
    body = batch(bid(30), [msg("M-1", valid_phones(1)[0])])
    tracking_id = submit(sms.base_url, body).json()["messages"][0]["trackingId"]
    stored = sms.set_faults({"outage": {"seconds": 0.6}})
    assert stored["outage"]["until_epoch"] == pytest.approx(time.time() + 0.6, abs=0.3)
    assert_error(submit(sms.base_url, body), 503, "503", "Network unavailable")
    assert_error(submit(sms.base_url, batch(bid(31), [msg("M-2", "+972521111111")])), 503, "503")
    assert_error(poll(sms.base_url, tracking_id), 503, "503", "Network unavailable")
    assert call("GET", sms.base_url + "/_sim/health").status == 200  # control endpoints unaffected
    time.sleep(max(0.0, stored["outage"]["until_epoch"] - time.time()) + 0.1)
    assert poll(sms.base_url, tracking_id).status == 200
    assert submit(sms.base_url, batch(bid(31), [msg("M-2", "+972521111111")])).status == 202
    sms.set_faults({"outage": {"until_epoch": time.time() + 60}})
    assert submit(sms.base_url, body).status == 503
    stats = sms.stats()
    assert stats["status_polls_by_status"] == {"200": 1, "503": 1} and stats["messages_accepted"] == 2


def test_accept_then_drop(sms: SimulatorProcess) -> None:
    numbers = valid_phones(3)
    body = batch(bid(40), [msg(f"M-{i}", p) for i, p in enumerate(numbers)])
    sms.set_faults({"accept_then_drop_rate": 1.0})
    with pytest.raises(http.client.RemoteDisconnected):  # no status line at all: an ambiguous failure
        submit(sms.base_url, body)
    received = sms.call("GET", "/_sim/received")  # ... but the carrier accepted and recorded the batch
    assert [r["messageId"] for r in received] == ["M-0", "M-1", "M-2"]
    resubmitted = submit(sms.base_url, body)  # a replay is never dropped
    assert resubmitted.status == 202
    assert [m["trackingId"] for m in resubmitted.json()["messages"]] == [r["trackingId"] for r in received]

    async def aio_post() -> None:  # an aiohttp client sees a server disconnect too
        async with aiohttp.ClientSession() as session:
            async with session.post(
                sms.base_url + "/api/v1/messages/batch", json=batch(bid(41), [msg("M-9", numbers[0])]), headers=AUTH
            ) as r:
                await r.read()

    with pytest.raises(aiohttp.ServerDisconnectedError):
        asyncio.run(aio_post())
    stats = sms.stats()
    assert stats["batches_by_status"] == {"202": 1, "dropped": 2} and stats["messages_accepted"] == 4

    sms.set_faults({"accept_then_drop_rate": 0.5})
    ids = [bid(200 + i) for i in range(30)]
    outcome = []
    for i, b in enumerate(ids):
        try:
            outcome.append(submit(sms.base_url, batch(b, [msg(f"D-{i}", numbers[1])])).status)
        except http.client.RemoteDisconnected:
            outcome.append("dropped")
    assert outcome == ["dropped" if hash_unit(f"drop|{b}|0") < 0.5 else 202 for b in ids]
    assert "dropped" in outcome and 202 in outcome


def test_omit_rate(sms: SimulatorProcess) -> None:
    sms.set_faults({"omit_rate": 0.3})
    numbers = valid_phones(40)
    messages = [msg(f"OM-{i}", p) for i, p in enumerate(numbers)]
    resp = submit(sms.base_url, batch(bid(50), messages))
    assert resp.status == 202
    listed = [m["messageId"] for m in resp.json()["messages"]]
    omitted = [m["messageId"] for m in messages if hash_unit("omit|" + m["messageId"]) < 0.3]
    assert omitted and listed == [m["messageId"] for m in messages if m["messageId"] not in omitted]
    received = {r["messageId"]: r["trackingId"] for r in sms.call("GET", "/_sim/received")}
    assert len(received) == 40  # all accepted
    assert sms.stats()["messages_omitted"] == len(omitted)
    # the client resubmits the messages missing from the 202 in a new batch: their tracking ids come back
    again = submit(sms.base_url, batch(bid(51), [m for m in messages if m["messageId"] in omitted])).json()
    assert {m["messageId"]: m["trackingId"] for m in again["messages"]} == {m: received[m] for m in omitted}
    assert len(sms.call("GET", "/_sim/received")) == 40 and sms.stats()["messages_accepted"] == 40


def test_latency_and_max_concurrent(sms: SimulatorProcess) -> None:
    sms.set_faults({"latency_ms": 300})
    numbers = valid_phones(8)
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(lambda i: submit(sms.base_url, batch(bid(60 + i), [msg(f"L-{i}", numbers[i])])).status, range(8))
        )
    elapsed = time.monotonic() - start
    assert statuses == [202] * 8 and 0.3 <= elapsed < 1.5
    assert sms.stats()["max_concurrent"] >= 4


# -- status progression ---------------------------------------------------------------------------


def test_status_progression_to_every_state(sms: SimulatorProcess) -> None:
    sms.set_faults({"time_scale": 0.06})  # SENT after 0.3 s, final after 1.8 s
    picked = {kind: phones(pred, 2, prefix="+97254") for kind, pred in OUTCOME_KINDS.items()}
    messages = [msg(f"{kind}-{i}", p) for kind, ps in picked.items() for i, p in enumerate(ps)]
    accepted_at = time.monotonic()
    body = submit(sms.base_url, batch(bid(70), messages)).json()
    tracking = {m["messageId"]: m["trackingId"] for m in body["messages"]}
    phone_of = {m["messageId"]: m["phoneNumber"] for m in messages}

    def statuses() -> dict[str, dict[str, Any]]:
        out = {}
        for mid, tid in tracking.items():
            resp = poll(sms.base_url, tid)
            assert resp.status == 200
            out[mid] = resp.json()
        return out

    early = statuses()
    assert time.monotonic() - accepted_at < 0.3
    for mid, s in early.items():
        assert s == {
            "trackingId": tracking[mid],
            "messageId": mid,
            "status": "QUEUED",
            "deliveryTimestamp": None,
            "statusCode": None,
            "statusMessage": "Awaiting send",
        }
    time.sleep(max(0.0, accepted_at + 0.8 - time.monotonic()))
    middle = statuses()
    assert time.monotonic() - accepted_at < 1.8
    for mid, s in middle.items():
        if mid.startswith("no_status"):
            assert (s["status"], s["statusCode"], s["statusMessage"]) == ("NO_STATUS", None, "No update from carrier")
        else:
            assert (s["status"], s["statusCode"], s["statusMessage"]) == ("SENT", None, "Sent to carrier network")
    time.sleep(max(0.0, accepted_at + 2.0 - time.monotonic()))
    final = statuses()
    for mid, s in final.items():
        outcome = cm.outcome_for(phone_of[mid], 0)
        kind = mid.rsplit("-", 1)[0]
        expected_status = {"stuck": "SENT", "no_status": "NO_STATUS"}.get(kind, outcome.status)
        assert s["status"] == expected_status, mid
        if outcome.final:
            assert (s["statusCode"], s["statusMessage"]) == (outcome.status_code, outcome.status_message)
        else:
            assert s["statusCode"] is None
        if expected_status == "DELIVERED":
            assert s["statusCode"] == "0" and s["statusMessage"] == "Message successfully delivered"
            assert ISO_SECONDS.match(s["deliveryTimestamp"])
        else:
            assert s["deliveryTimestamp"] is None
    assert {final[f"{k}-0"]["status"] for k in OUTCOME_KINDS} == {
        "DELIVERED",
        "FAILED",
        "UNDELIVERABLE",
        "SENT",
        "NO_STATUS",
    }
    assert final["rejected-0"]["statusCode"] == "21614" and final["undeliverable-0"]["statusCode"] == "21211"
    assert 50001 <= int(final["provider-0"]["statusCode"]) <= 50999
    assert_error(poll(sms.base_url, "PRIMARY-TRACK-99999999"), 404, "NOT_FOUND")
    stats = sms.stats()
    assert stats["status_polls"] == 3 * len(tracking) + 1
    assert stats["callbacks_sent"] == 0 and stats["callbacks_pending"] == 0  # --callbacks off


def test_retry_of_failed_message_gets_a_new_draw(sms: SimulatorProcess) -> None:
    sms.set_faults({"time_scale": 0})  # final at once
    phone = phones(lambda o: o.status == "FAILED", 1, prefix="+97255")[0]
    first = submit(sms.base_url, batch(bid(80), [msg("R-1", phone)])).json()["messages"][0]["trackingId"]
    assert poll(sms.base_url, first).json()["status"] == "FAILED"
    second = submit(sms.base_url, batch(bid(81), [msg("R-2", phone)])).json()["messages"][0]["trackingId"]
    assert poll(sms.base_url, second).json()["status"] == cm.outcome_for(phone, 1).status
    assert [r["attempt_index"] for r in sms.call("GET", "/_sim/received")] == [0, 1]


# -- callbacks ------------------------------------------------------------------------------------


def test_signed_callbacks(receiver: Receiver) -> None:
    env = {"SMS_SIM_SECRET": KEY, "SMS_TEST_WH": WEBHOOK_SECRET}
    args = ["--name", "callbacks", "--webhook-secret-env", "SMS_TEST_WH", "--time-scale", "0.01"]
    with SimulatorProcess(module=MODULE, args=args, env=env, name="sms-callbacks") as sim:
        picked = {kind: phones(pred, 1, prefix="+97258")[0] for kind, pred in OUTCOME_KINDS.items()}
        messages = [msg(kind, p, callback=receiver.url + "/ok") for kind, p in picked.items()]
        messages += [
            msg("flaky", picked["delivered"].replace("+97258", "+97259"), callback=receiver.url + "/flaky"),
            msg("failing", picked["delivered"].replace("+97258", "+97257"), callback=receiver.url + "/fail"),
        ]
        body = submit(sim.base_url, batch(bid(90), messages)).json()
        tracking = {m["messageId"]: m["trackingId"] for m in body["messages"]}

        # delivered, rejected, provider, undeliverable: SENT + final; stuck: SENT only; no_status: nothing
        wait_for(lambda: len(receiver.on("/ok")) >= 9)
        wait_for(lambda: sim.stats()["callbacks_pending"] == 0)
        webhook = Webhook(WEBHOOK_SECRET)
        events: dict[tuple[str, str], dict[str, Any]] = {}
        for headers, raw in receiver.on("/ok"):
            payload = webhook.verify(raw, headers)
            assert headers["webhook-id"] == f"evt_{payload['trackingId']}_{payload['status']}"
            assert re.fullmatch(r"v1,[A-Za-z0-9+/=]+", headers["webhook-signature"])
            assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
            assert headers["Content-Type"] == "application/json"
            assert set(payload) == {
                "trackingId",
                "messageId",
                "status",
                "deliveryTimestamp",
                "phoneNumber",
                "statusCode",
            }
            events[(payload["messageId"], payload["status"])] = payload
        assert len(receiver.on("/ok")) == 9  # each event once
        expected_keys = {(k, "SENT") for k in OUTCOME_KINDS if k != "no_status"}
        expected_keys |= {
            (k, cm.outcome_for(picked[k], 0).status) for k in OUTCOME_KINDS if k not in ("stuck", "no_status")
        }
        assert set(events) == expected_keys
        delivered = events[("delivered", "DELIVERED")]
        assert delivered["trackingId"] == tracking["delivered"] and delivered["phoneNumber"] == picked["delivered"]
        assert delivered["statusCode"] == "0" and ISO_SECONDS.match(delivered["deliveryTimestamp"])
        assert events[("delivered", "SENT")]["statusCode"] is None
        assert events[("delivered", "SENT")]["deliveryTimestamp"] is None
        assert events[("rejected", "FAILED")]["statusCode"] == "21614"
        assert events[("undeliverable", "UNDELIVERABLE")]["statusCode"] == "21211"
        assert events[("provider", "FAILED")]["statusCode"].startswith("5")

        # a tampered body or a wrong secret does not verify
        headers, raw = receiver.on("/ok")[0]
        with pytest.raises(WebhookVerificationError):
            webhook.verify(raw.replace(b"+9725", b"+9726"), headers)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + base64.b64encode(b"another-secret").decode()).verify(raw, headers)

        # /flaky answers 503 to the first attempt of each event: retried with the same webhook-id
        flaky = [h["webhook-id"] for h, _ in receiver.on("/flaky")]
        assert len(flaky) == 4 and flaky[0] == flaky[1] and flaky[2] == flaky[3] and flaky[0] != flaky[2]
        # /fail always answers 500: 3 attempts per event, then given up
        assert len(receiver.on("/fail")) == 6
        stats = sim.stats()
        assert stats["callbacks_sent"] == 9 + 2 and stats["callbacks_failed"] == 2
        assert stats["callbacks_by_status"] == {"200": 11, "500": 6, "503": 2}
        assert stats["max_concurrent"] >= 1


def test_callbacks_to_unreachable_receiver() -> None:
    env = {"SMS_SIM_SECRET": KEY, "WH": WEBHOOK_SECRET}
    args = ["--webhook-secret-env", "WH", "--time-scale", "0"]
    with SimulatorProcess(module=MODULE, args=args, env=env, name="sms-unreachable") as sim:
        phone = phones(of("SENT"), 1)[0]  # one event: SENT
        assert submit(sim.base_url, batch(bid(1), [msg("U-1", phone, callback="http://127.0.0.1:9/cb")])).status == 202
        stats = wait_for(lambda: (s := sim.stats())["callbacks_failed"] == 1 and s)
        assert stats["callbacks_by_status"] == {"connection_error": 3} and stats["callbacks_sent"] == 0


# -- instances ------------------------------------------------------------------------------------


def test_two_instances_side_by_side(sms: SimulatorProcess) -> None:
    faults = json.dumps({"fail_next": {"status": 503, "count": 1}, "time_scale": 0.5})
    env = {"SMS_SIM_SECRET": "other-key"}
    with SimulatorProcess(module=MODULE, args=["--name", "secondary", "--faults", faults], env=env) as secondary:
        assert secondary.port != sms.port
        assert secondary.get_faults()["time_scale"] == 0.5 and secondary.get_faults()["fail_next"]["count"] == 1
        body = batch(bid(1), [msg("M-1", valid_phones(1)[0])])
        other_auth = {"Authorization": "Bearer other-key"}
        assert submit(secondary.base_url, body, other_auth).status == 503  # failover target fails once
        assert submit(secondary.base_url, body).status == 401  # its own key
        first = submit(sms.base_url, body).json()["messages"][0]["trackingId"]
        second = submit(secondary.base_url, body, other_auth).json()["messages"][0]["trackingId"]
        assert first.startswith("PRIMARY-TRACK-") and second == "SECONDARY-TRACK-00000001"
        assert poll(secondary.base_url, first, other_auth).status == 404  # separate state
        assert poll(sms.base_url, first).status == 200
        assert [r["trackingId"] for r in secondary.call("GET", "/_sim/received")] == [second]
        assert secondary.set_faults({})["time_scale"] == 1.0  # the CLI --time-scale is the default


def test_throughput_100k(sms: SimulatorProcess) -> None:
    n_batches, size = 200, 500

    def body(i: int) -> bytes:
        messages = [
            msg(f"T-{i}-{j}", f"+97254{(i * size + j):07d}", content="Hello, we appreciate your loyalty. " * 3)
            for j in range(size)
        ]
        return json.dumps(batch(f"BATCH-20251118-{i + 1:03d}", messages)).encode()

    payloads = [body(i) for i in range(n_batches)]

    async def run() -> list[int]:
        async with aiohttp.ClientSession(headers={**AUTH, "Content-Type": "application/json"}) as session:
            sem = asyncio.Semaphore(4)

            async def one(data: bytes) -> int:
                async with sem, session.post(sms.base_url + "/api/v1/messages/batch", data=data) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(one(p) for p in payloads))

    start = time.monotonic()
    statuses = asyncio.run(run())
    elapsed = time.monotonic() - start
    assert statuses == [202] * n_batches
    stats = sms.stats()
    assert stats["messages_accepted"] + stats["messages_rejected"] == 100_000
    assert 0.005 < stats["messages_rejected"] / 100_000 < 0.015
    assert elapsed < 15, elapsed
    received = sms.call("GET", "/_sim/received")
    assert len(received) == stats["messages_accepted"]
    assert len({r["trackingId"] for r in received}) == len(received)


# -- process --------------------------------------------------------------------------------------


def test_missing_secrets_fail_to_start() -> None:
    no_key = SimulatorProcess(module=MODULE, args=["--secret-env", "SMS_TEST_UNSET"], startup_timeout=10)
    with pytest.raises(SimulatorError, match="SMS_TEST_UNSET"):
        no_key.start()
    bad_wh = SimulatorProcess(
        module=MODULE,
        args=["--webhook-secret-env", "SMS_TEST_WH_UNSET"],
        env={"SMS_SIM_SECRET": KEY},
        startup_timeout=10,
    )
    with pytest.raises(SimulatorError, match="SMS_TEST_WH_UNSET"):
        bad_wh.start()


def test_sigterm_clean_shutdown() -> None:
    sim = SimulatorProcess(module=MODULE, env={"SMS_SIM_SECRET": KEY}, name="sms-term").start()
    proc = sim._proc
    assert proc is not None
    sim.stop()
    assert proc.returncode == 0
