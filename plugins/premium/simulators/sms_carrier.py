"""SMS-carrier simulator: a real HTTP(S) server implementing integration-architecture §3.2, §3.3, §3.5.

Loopback-only test tool (demo, tests, benchmark). A carrier with idempotency support; delivery
outcomes come from the deterministic model in :mod:`premium.simulators.carrier_model`. Several
instances run side by side (``--name primary`` / ``--name secondary``: tracking ids
``PRIMARY-TRACK-00000001`` / ``SECONDARY-TRACK-00000001``).

API (``Authorization: Bearer <key>``, key from the env var named by ``--secret-env``)::

    POST /api/v1/messages/batch           202 §3.2 body | 400 INVALID_REQUEST | 401 | injected faults
                                          | 413 INVALID_REQUEST (body over 16 MiB)
    GET  /api/v1/messages/{trackingId}/status   200 §3.3 body | 401 | 404 NOT_FOUND | 503 (outage)

Error bodies are ``{"error": {"code": C, "message": M}}``::

    400  {"code": "INVALID_REQUEST", "message": "messages[3] (messageId 'MSG-4'): priority must be one of HIGH, NORMAL, LOW"}
    401  {"code": "UNAUTHORIZED", "message": "Missing or invalid API key"}        + WWW-Authenticate: Bearer
    404  {"code": "NOT_FOUND", "message": "Unknown trackingId"}
    429  {"code": "20429", "message": "Rate limit exceeded"}                      + Retry-After: 1
    500  {"code": "5xxxx", "message": "Provider error"}   5xxxx = 50001 + H("500code|" + batchId + "|" + n) % 999
    503  {"code": "503", "message": "Network unavailable"}

Batch validation (400, first problem found, in this order): body a JSON object with exactly
``batchId``, ``messages``, ``metadata``; ``batchId`` a string matching ``BATCH-\\d{8}-\\d{3,}``;
``metadata`` an object with exactly ``campaignId``, ``correlationId`` (non-empty strings);
``messages`` an array of 1..1000 objects, each with exactly ``messageId`` (string, 1..64 chars),
``phoneNumber`` (E.164: ``+``, first digit 1-9, 8..15 digits), ``content`` (string, 1..1600
characters), ``priority`` (``HIGH``/``NORMAL``/``LOW``), ``callbackUrl`` (an http/https URL with a
host). The message names the field and, for a message, its index and messageId.

Success (202)::

    {"batchId": "BATCH-20251118-001", "submissionStatus": "ACCEPTED",   # "PARTIALLY_ACCEPTED" if any REJECTED
     "timestamp": "2025-11-18T09:00:00Z",
     "messages": [{"messageId": "MSG-001", "trackingId": "PRIMARY-TRACK-00000001", "status": "QUEUED"},
                  {"messageId": "MSG-002", "status": "REJECTED", "errorCode": "21211",
                   "errorMessage": "Invalid phone number"}]}

A message is REJECTED when ``carrier_model.invalid_at_submission(phoneNumber)``; it gets no
tracking id and is not counted as an attempt.

Idempotency (in memory): a batchId seen before (and accepted) is answered with the byte-identical
202 body of its first acceptance, whatever the new body holds; nothing is sent again. A messageId
accepted before (in any batch) is answered with its existing trackingId and status ``QUEUED`` and
is never sent again (also a repeat inside one batch). REJECTED messages are not remembered.

Order for a batch POST: latency → auth (401) → JSON + validation (400) → ``n`` = earlier valid,
authorised POSTs of this batchId (0 for the first) → outage (503) → fail_next → error_rates
(``U(status + "|" + batchId + "|" + n) < rate``, ascending status, first hit wins) → idempotent
replay of a known batchId → accept → accept_then_drop (only a new acceptance: recorded, then the
connection is closed without a response iff ``U("drop|" + batchId + "|" + n) < rate``; the
resubmission is a replay and gets the normal 202 with the same tracking ids) → omit (the 202
lists no entry for a newly accepted message with ``U("omit|" + messageId) < omit_rate``; it is
accepted and tracked, and a later submission of that messageId returns its tracking id).
``U``/``H`` are the SHA-256 helpers of :mod:`carrier_model`.

Status polling: latency → auth → outage (503) → 404 → the §3.3 body::

    {"trackingId": T, "messageId": M, "status": "DELIVERED", "deliveryTimestamp": "2025-11-18T09:05:30Z",
     "statusCode": "0", "statusMessage": "Message successfully delivered"}

Progression: QUEUED → SENT after ``sent_after`` → final after ``final_after`` seconds (``--sent-after``
5, ``--final-after`` 30, both times ``time_scale``, fixed per message when it is accepted), see
``carrier_model.status_at``.

Delivery callbacks (§3.5), when ``--webhook-secret-env NAME`` names an env var holding a Standard
Webhooks secret (``whsec_<base64>``) and ``--callbacks on`` (the default): for each status change
to SENT, DELIVERED, FAILED or UNDELIVERABLE (never QUEUED or NO_STATUS), at the time it happens,
``POST callbackUrl`` with the JSON body ``{"trackingId", "messageId", "status", "deliveryTimestamp",
"phoneNumber", "statusCode"}`` and the headers ``webhook-id: evt_<trackingId>_<status>`` (the same
on retries), ``webhook-timestamp: <unix seconds>``, ``webhook-signature: v1,<base64>`` from
``standardwebhooks.Webhook(secret).sign``. At most ``--callback-concurrency`` (16) at once; up to 3
attempts (backoff 0.2 s, 0.4 s) on a connection error, timeout (10 s) or non-2xx answer.

Control endpoints (same port, no auth — this is a test tool bound to loopback)::

    GET  /_sim/health     {"status": "ok", "name": N}
    GET  /_sim/faults     the current fault config (fail_next.count = the failures still to come)
    PUT  /_sim/faults     replace the whole fault config (missing keys = defaults)
    GET  /_sim/stats      {batches_received, batches_by_status {"202", "400", .., "dropped"},
                           batches_replayed, messages_accepted, messages_rejected, messages_omitted,
                           duplicates_ignored, status_polls, status_polls_by_status, callbacks_sent,
                           callbacks_failed, callbacks_by_status {"200", .., "connection_error"}
                           (per attempt), callbacks_pending, max_concurrent, in_flight}
    GET  /_sim/received   every accepted message in acceptance order: [{messageId, batchId,
                           phoneNumber, campaignId, correlationId, trackingId, attempt_index,
                           accepted_at, priority, content_length}]; ``?content=1`` adds ``content``
    POST /_sim/reset      forget everything (messages, batches, attempts, stats, pending callbacks);
                           faults and the tracking-id sequence are kept

Fault config (JSON)::

    {"latency_ms": 0,                                  # every API request (asyncio.sleep)
     "error_rates": {"429": 0, "500": 0, "503": 0},    # batch POSTs only
     "fail_next": {"status": 503, "count": 0},         # the next `count` batch POSTs (429/500/502/503/504;
                                                       # 502/504 as a gateway's page, no carrier body)
     "outage": null,                                   # or {"seconds": N} / {"until_epoch": T}: 503 for
                                                       # every batch POST and status poll
     "accept_then_drop_rate": 0.0, "omit_rate": 0.0,
     "commit_then": {"status": 504, "count": 0},      # the next `count` batch POSTs are accepted (or
                                                       # replayed: nothing sent twice), then answered 500
                                                       # (carrier body), 502/504 (a gateway's HTML page)
                                                       # or 0: the connection dropped
     "refuse": {"message_ids": [], "status": 422},     # a batch holding one of these is refused with
                                                       # the carrier's error body naming the message
     "time_scale": 1.0}                                # default: --time-scale; for messages accepted later

Usage::

    SMS_SIM_SECRET=k [SMS_SIM_WEBHOOK_SECRET=whsec_...] python -m premium.simulators.sms_carrier
        [--host 127.0.0.1] [--port 0] [--ready-file PATH] [--name carrier] [--secret-env SMS_SIM_SECRET]
        [--webhook-secret-env NAME] [--callbacks on|off] [--time-scale 1.0] [--sent-after 5]
        [--final-after 30] [--callback-concurrency 16] [--faults JSON] [--log-level warning]
        [--tls-cert CRT --tls-key KEY [--client-ca CA]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import heapq
import hmac
import itertools
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from premium.simulators import carrier_model as cm
from premium.simulators.bank_model import hash_int, hash_unit
from premium.simulators.core_banking import add_server_args, serve, ssl_context_from_args

log = logging.getLogger("premium.simulators.sms_carrier")

BATCH_PATH = "/api/v1/messages/batch"
STATUS_PATH = "/api/v1/messages/{trackingId}/status"
MAX_BODY_BYTES = 16 * 1024 * 1024  # 1000 messages × 1600 characters of up to 4 UTF-8 bytes
MAX_MESSAGES = 1000
MAX_MESSAGE_ID = 64
MAX_CONTENT = 1600
BATCH_ID_RE = re.compile(r"BATCH-\d{8}-\d{3,}")
PHONE_RE = re.compile(r"\+[1-9]\d{7,14}")
PRIORITIES = ("HIGH", "NORMAL", "LOW")
BATCH_FIELDS = ("batchId", "messages", "metadata")
MESSAGE_FIELDS = ("messageId", "phoneNumber", "content", "priority", "callbackUrl")
METADATA_FIELDS = ("campaignId", "correlationId")
FAULT_STATUSES = (429, 500, 502, 503, 504)
_MESSAGE_KEYS = frozenset(MESSAGE_FIELDS)
_PRIORITY_SET = frozenset(PRIORITIES)

CALLBACK_ATTEMPTS = 3
CALLBACK_BACKOFF_S = 0.2


# -- validation ------------------------------------------------------------------------------


def _field_problem(obj: dict[str, Any], expected: tuple[str, ...], where: str) -> str | None:
    for key in expected:
        if key not in obj:
            return f"{where}missing field '{key}'"
    unknown = sorted(set(obj) - set(expected))
    if unknown:
        return f"{where}unknown field '{unknown[0]}'"
    return None


_url_cache: dict[str, bool] = {}


def valid_callback_url(url: str) -> bool:
    """An absolute http/https URL with a host and no whitespace (memoised: batches share one URL)."""
    ok = _url_cache.get(url)
    if ok is None:
        try:
            parts = urlsplit(url)
            ok = (
                parts.scheme in ("http", "https")
                and bool(parts.hostname)
                and not any(c.isspace() for c in url)
                and (parts.port is None or parts.port > 0)
            )
        except ValueError:
            ok = False
        if len(_url_cache) < 1024:
            _url_cache[url] = ok
    return ok


def _message_problem(m: Any) -> str | None:
    if type(m) is not dict:
        return "must be an object"
    if m.keys() != _MESSAGE_KEYS:
        return _field_problem(m, MESSAGE_FIELDS, "")
    mid = m["messageId"]
    if type(mid) is not str or not 0 < len(mid) <= MAX_MESSAGE_ID:
        return f"messageId must be a string of 1 to {MAX_MESSAGE_ID} characters"
    phone = m["phoneNumber"]
    if type(phone) is not str or not PHONE_RE.fullmatch(phone):
        return "phoneNumber must be an E.164 number: '+' and 8 to 15 digits, the first not 0"
    content = m["content"]
    if type(content) is not str or not 0 < len(content) <= MAX_CONTENT:
        return f"content must be a string of 1 to {MAX_CONTENT} characters"
    if type(m["priority"]) is not str or m["priority"] not in _PRIORITY_SET:
        return "priority must be one of HIGH, NORMAL, LOW"
    url = m["callbackUrl"]
    if type(url) is not str or not valid_callback_url(url):
        return "callbackUrl must be an http or https URL"
    return None


def validate_batch(body: Any) -> str | None:
    """The first §3.2 violation in a decoded batch body as a message naming the field; None if valid."""
    if type(body) is not dict:
        return "request body must be a JSON object"
    problem = _field_problem(body, BATCH_FIELDS, "")
    if problem:
        return problem
    batch_id = body["batchId"]
    if type(batch_id) is not str:
        return "batchId must be a string"
    if not BATCH_ID_RE.fullmatch(batch_id):
        return "batchId must match BATCH-<8 digits>-<3 or more digits>, e.g. BATCH-20251118-001"
    meta = body["metadata"]
    if type(meta) is not dict:
        return "metadata must be an object"
    problem = _field_problem(meta, METADATA_FIELDS, "metadata: ")
    if problem:
        return problem
    for key in METADATA_FIELDS:
        if type(meta[key]) is not str or not meta[key]:
            return f"metadata.{key} must be a non-empty string"
    messages = body["messages"]
    if type(messages) is not list:
        return "messages must be an array"
    if not 0 < len(messages) <= MAX_MESSAGES:
        return f"messages must hold 1 to {MAX_MESSAGES} messages (got {len(messages)})"
    for i, m in enumerate(messages):
        problem = _message_problem(m)
        if problem:
            mid = m.get("messageId") if type(m) is dict else None
            label = f" (messageId {mid!r})" if type(mid) is str and 0 < len(mid) <= MAX_MESSAGE_ID else ""
            return f"messages[{i}]{label}: {problem}"
    return None


# -- faults ----------------------------------------------------------------------------------


def default_faults(time_scale: float = 1.0) -> dict[str, Any]:
    """The no-fault configuration (all keys)."""
    return {
        "latency_ms": 0,
        "error_rates": {"429": 0, "500": 0, "503": 0},
        "fail_next": {"status": 503, "count": 0},
        "outage": None,
        "accept_then_drop_rate": 0.0,
        "omit_rate": 0.0,
        "commit_then": {"status": 504, "count": 0},
        "refuse": {"message_ids": [], "status": 422},
        "time_scale": time_scale,
    }


@dataclass(frozen=True, slots=True)
class Faults:
    """Validated fault configuration; ``config`` is what PUT /_sim/faults returns."""

    config: dict[str, Any]
    latency_s: float
    error_rates: tuple[tuple[int, float], ...]
    fail_status: int
    fail_count: int
    outage_until: float | None
    drop_rate: float
    omit_rate: float
    time_scale: float
    commit_status: int
    commit_count: int
    refuse_ids: frozenset
    refuse_status: int


def _number(value: Any, name: str, *, hi: float | None = None) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{name} must be a number")
    if value < 0 or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in [0, {hi if hi is not None else 'inf'}]")
    return value


def _fault_status(value: Any, name: str) -> int:
    try:
        status = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an HTTP status") from None
    if isinstance(value, bool) or status not in FAULT_STATUSES:
        raise ValueError(f"{name} must be one of {list(FAULT_STATUSES)}")
    return status


def parse_faults(raw: Any, default_time_scale: float = 1.0, now: float | None = None) -> Faults:
    """Validate a fault config (missing keys = defaults); ValueError with a message if invalid."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError("fault config must be a JSON object")
    defaults = default_faults(default_time_scale)
    unknown = set(raw) - set(defaults)
    if unknown:
        raise ValueError(f"unknown fault keys: {sorted(unknown)}")
    now = time.time() if now is None else now
    cfg = defaults | raw

    if not isinstance(cfg["error_rates"], dict):
        raise ValueError("error_rates must be an object {status: rate}")
    rates = {s: 0 for s in FAULT_STATUSES}
    for k, v in cfg["error_rates"].items():
        rates[_fault_status(k, "error_rates key")] = _number(v, f"error_rates[{k}]", hi=1.0)
    fn = cfg["fail_next"]
    if not isinstance(fn, dict) or set(fn) - {"status", "count"}:
        raise ValueError('fail_next must be {"status": 429|500|503, "count": int}')
    fail_status = _fault_status(fn.get("status", 503), "fail_next.status")
    fail_count = fn.get("count", 0)
    if isinstance(fail_count, bool) or not isinstance(fail_count, int) or fail_count < 0:
        raise ValueError("fail_next.count must be a non-negative integer")

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

    ct = cfg["commit_then"]
    if not isinstance(ct, dict) or set(ct) - {"status", "count"}:
        raise ValueError('commit_then must be {"status": 500|502|504|0, "count": int} (0: drop the connection)')
    commit_status = ct.get("status", 504)
    if commit_status not in (0, 500, 502, 504):
        raise ValueError("commit_then.status must be 500, 502, 504 or 0 (drop the connection)")
    commit_count = ct.get("count", 0)
    if isinstance(commit_count, bool) or not isinstance(commit_count, int) or commit_count < 0:
        raise ValueError("commit_then.count must be a non-negative integer")
    refuse = cfg["refuse"]
    if not isinstance(refuse, dict) or set(refuse) - {"message_ids", "status"}:
        raise ValueError('refuse must be {"message_ids": [..], "status": 400|404|409|413|422}')
    refuse_ids = refuse.get("message_ids", [])
    refuse_status = refuse.get("status", 422)
    if not isinstance(refuse_ids, list) or refuse_status not in (400, 404, 409, 413, 422):
        raise ValueError('refuse must be {"message_ids": [..], "status": 400|404|409|413|422}')

    config = {
        "latency_ms": _number(cfg["latency_ms"], "latency_ms"),
        "error_rates": {str(k): v for k, v in sorted(rates.items())},
        "fail_next": {"status": fail_status, "count": fail_count},
        "outage": outage,
        "accept_then_drop_rate": _number(cfg["accept_then_drop_rate"], "accept_then_drop_rate", hi=1.0),
        "omit_rate": _number(cfg["omit_rate"], "omit_rate", hi=1.0),
        "commit_then": {"status": commit_status, "count": commit_count},
        "refuse": {"message_ids": list(refuse_ids), "status": refuse_status},
        "time_scale": _number(cfg["time_scale"], "time_scale"),
    }
    return Faults(
        config=config,
        latency_s=config["latency_ms"] / 1000,
        error_rates=tuple((s, float(r)) for s, r in sorted(rates.items()) if r > 0),
        fail_status=fail_status,
        fail_count=fail_count,
        outage_until=outage_until,
        drop_rate=float(config["accept_then_drop_rate"]),
        omit_rate=float(config["omit_rate"]),
        time_scale=float(config["time_scale"]),
        commit_status=commit_status,
        commit_count=commit_count,
        refuse_ids=frozenset(str(i) for i in refuse_ids),
        refuse_status=refuse_status,
    )


# -- helpers ---------------------------------------------------------------------------------


def iso_seconds(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def iso_millis(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def provider_error_code(batch_id: str, n: int) -> str:
    """The 5xxxx code of an injected 500 for the n-th POST of ``batch_id``."""
    return str(50001 + hash_int(f"500code|{batch_id}|{n}") % 999)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def _raw_json(status: int, raw: bytes) -> web.Response:
    return web.Response(body=raw, status=status, content_type="application/json")


class Message:
    """One accepted message (the carrier's record)."""

    __slots__ = (
        "tracking_id",
        "message_id",
        "batch_id",
        "phone",
        "campaign_id",
        "correlation_id",
        "callback_url",
        "priority",
        "content",
        "attempt_index",
        "accepted_wall",
        "accepted_mono",
        "sent_after",
        "final_after",
        "outcome",
    )

    def __init__(self, **kw: Any) -> None:
        for key, value in kw.items():
            setattr(self, key, value)

    def received_row(self, with_content: bool) -> dict[str, Any]:
        row = {
            "messageId": self.message_id,
            "batchId": self.batch_id,
            "phoneNumber": self.phone,
            "campaignId": self.campaign_id,
            "correlationId": self.correlation_id,
            "trackingId": self.tracking_id,
            "attempt_index": self.attempt_index,
            "accepted_at": iso_millis(self.accepted_wall),
            "priority": self.priority,
            "content_length": len(self.content),
        }
        if with_content:
            row["content"] = self.content
        return row

    def delivery_timestamp(self, status: str) -> str | None:
        return iso_seconds(self.accepted_wall + self.final_after) if status == cm.DELIVERED else None


# -- the server ------------------------------------------------------------------------------


class SmsCarrierSimulator:
    """Server state (messages, batches, faults, stats, callback queue) and the aiohttp handlers."""

    def __init__(
        self,
        secret: str,
        name: str = "carrier",
        *,
        webhook_secret: str | None = None,
        callbacks: bool = True,
        faults: Faults | None = None,
        time_scale: float = 1.0,
        sent_after_s: float = cm.DEFAULT_SENT_AFTER_S,
        final_after_s: float = cm.DEFAULT_FINAL_AFTER_S,
        callback_concurrency: int = 16,
        callback_timeout_s: float = 10.0,
    ) -> None:
        if not secret:
            raise ValueError("the carrier needs an API key")
        if final_after_s < sent_after_s:
            raise ValueError("final_after must not be shorter than sent_after")
        self.name = name
        self.prefix = cm.tracking_prefix(name)
        self._secret = secret.encode()
        self._webhook = Webhook(webhook_secret) if webhook_secret else None
        self.callbacks_enabled = callbacks and self._webhook is not None
        self.default_time_scale = time_scale
        self.faults = faults or parse_faults({}, time_scale)
        self._fail_remaining = self.faults.fail_count
        self._commit_remaining = self.faults.commit_count
        self.sent_after_s = sent_after_s
        self.final_after_s = final_after_s
        self.callback_concurrency = callback_concurrency
        self.callback_timeout_s = callback_timeout_s
        self._seq = 0
        self._heap: list[tuple[float, int, str, str]] = []  # (due, push order, trackingId, status)
        self._pushes = itertools.count()
        self._queue: asyncio.Queue[tuple[str, str]] | None = None
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._delivering = 0
        self.reset()

    def reset(self) -> None:
        """Forget messages, batches, attempts, stats and pending callbacks (not faults, not the sequence)."""
        self._messages: dict[str, Message] = {}
        self._by_message_id: dict[str, Message] = {}
        self._batches: dict[str, bytes] = {}
        self._batch_posts: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        self._heap.clear()
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait()
                self._queue.task_done()
        self.batches_received = 0
        self.batches_by_status: Counter[str] = Counter()
        self.batches_replayed = 0
        self.messages_accepted = 0
        self.messages_rejected = 0
        self.messages_omitted = 0
        self.duplicates_ignored = 0
        self.status_polls = 0
        self.status_polls_by_status: Counter[str] = Counter()
        self.callbacks_sent = 0
        self.callbacks_failed = 0
        self.callbacks_by_status: Counter[str] = Counter()
        self.in_flight = 0
        self.max_concurrent = 0

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(BATCH_PATH, self.submit_batch)
        app.router.add_get(STATUS_PATH, self.message_status, allow_head=False)
        app.router.add_get("/_sim/health", self.health, allow_head=False)
        app.router.add_get("/_sim/faults", self.get_faults, allow_head=False)
        app.router.add_put("/_sim/faults", self.put_faults)
        app.router.add_get("/_sim/stats", self.stats, allow_head=False)
        app.router.add_get("/_sim/received", self.received, allow_head=False)
        app.router.add_post("/_sim/reset", self.reset_handler)
        app.on_startup.append(self._start_background)
        app.on_cleanup.append(self._stop_background)
        return app

    # -- shared ------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._secret)

    def _in_outage(self) -> bool:
        until = self.faults.outage_until
        return until is not None and time.time() < until

    def _enter(self) -> None:
        self.in_flight += 1
        if self.in_flight > self.max_concurrent:
            self.max_concurrent = self.in_flight

    @staticmethod
    def _unauthorized() -> web.Response:
        body = error_body("UNAUTHORIZED", "Missing or invalid API key")
        return _json(401, body, {"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _fault_response(status: int, batch_id: str = "", n: int = 0) -> web.Response:
        if status == 429:
            return _json(429, error_body("20429", "Rate limit exceeded"), {"Retry-After": "1"})
        if status == 500:
            return _json(500, error_body(provider_error_code(batch_id, n), "Provider error"))
        if status in (502, 504):  # a gateway in front of the carrier: no carrier error body
            reason = "Bad Gateway" if status == 502 else "Gateway Timeout"
            return web.Response(
                status=status, text=f"<html><body>{status} {reason}</body></html>", content_type="text/html"
            )
        return _json(503, error_body("503", "Network unavailable"))

    # -- batch submission (hot path) ---------------------------------------------------------

    async def submit_batch(self, request: web.Request) -> web.StreamResponse:
        self.batches_received += 1
        self._enter()
        try:
            resp, label = await self._submit(request)
        finally:
            self.in_flight -= 1
        self.batches_by_status[label or str(resp.status)] += 1
        return resp

    async def _submit(self, request: web.Request) -> tuple[web.StreamResponse, str | None]:
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        if not self._authorized(request):
            return self._unauthorized(), None
        try:
            body = orjson.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            message = f"request body larger than {MAX_BODY_BYTES} bytes"
            return _json(413, error_body("INVALID_REQUEST", message)), None
        except orjson.JSONDecodeError:
            return _json(400, error_body("INVALID_REQUEST", "request body is not valid JSON")), None
        problem = validate_batch(body)
        if problem:
            return _json(400, error_body("INVALID_REQUEST", problem)), None

        f = self.faults
        batch_id: str = body["batchId"]
        n = self._batch_posts.get(batch_id, 0)
        self._batch_posts[batch_id] = n + 1
        if self._in_outage():
            return self._fault_response(503), None
        if self._fail_remaining > 0:
            self._fail_remaining -= 1
            return self._fault_response(f.fail_status, batch_id, n), None
        for status, rate in f.error_rates:
            if hash_unit(f"{status}|{batch_id}|{n}") < rate:
                return self._fault_response(status, batch_id, n), None

        if f.refuse_ids:
            for i, m in enumerate(body["messages"]):
                if m["messageId"] in f.refuse_ids:
                    detail = f"messages[{i}] (messageId '{m['messageId']}'): refused by the carrier"
                    return _json(f.refuse_status, error_body("INVALID_REQUEST", detail)), None

        stored = self._batches.get(batch_id)
        if stored is not None:
            self.batches_replayed += 1
            self.duplicates_ignored += len(body["messages"])
            raw = stored
        else:
            raw = orjson.dumps(self._accept(body, f))
            self._batches[batch_id] = raw
        if self._commit_remaining > 0:  # committed (now or before), then the answer is lost or an error
            self._commit_remaining -= 1
            if f.commit_status == 0:
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=202), "dropped"
            return self._fault_response(f.commit_status, batch_id, n), f"committed_{f.commit_status}"
        if stored is None and f.drop_rate and hash_unit(f"drop|{batch_id}|{n}") < f.drop_rate:
            log.info("batch %s accepted, dropping the connection", batch_id)
            if request.transport is not None:
                request.transport.close()  # the response below is never written
            return web.Response(status=202), "dropped"
        return _raw_json(202, raw), None

    def _accept(self, body: dict[str, Any], f: Faults) -> dict[str, Any]:
        meta = body["metadata"]
        campaign_id, correlation_id = meta["campaignId"], meta["correlationId"]
        batch_id = body["batchId"]
        wall, mono = time.time(), time.monotonic()
        sent_after = self.sent_after_s * f.time_scale
        final_after = self.final_after_s * f.time_scale
        out: list[dict[str, Any]] = []
        rejected = False
        for m in body["messages"]:
            mid = m["messageId"]
            known = self._by_message_id.get(mid)
            if known is not None:
                self.duplicates_ignored += 1
                out.append({"messageId": mid, "trackingId": known.tracking_id, "status": cm.QUEUED})
                continue
            phone = m["phoneNumber"]
            if cm.invalid_at_submission(phone):
                rejected = True
                self.messages_rejected += 1
                out.append(
                    {
                        "messageId": mid,
                        "status": cm.REJECTED,
                        "errorCode": cm.INVALID_NUMBER_CODE,
                        "errorMessage": cm.INVALID_NUMBER_MESSAGE,
                    }
                )
                continue
            k = self._attempts.get(phone, 0)
            self._attempts[phone] = k + 1
            self._seq += 1
            tid = f"{self.prefix}{self._seq:08d}"
            outcome = cm.outcome_for(phone, k)
            rec = Message(
                tracking_id=tid,
                message_id=mid,
                batch_id=batch_id,
                phone=phone,
                campaign_id=campaign_id,
                correlation_id=correlation_id,
                callback_url=m["callbackUrl"],
                priority=m["priority"],
                content=m["content"],
                attempt_index=k,
                accepted_wall=wall,
                accepted_mono=mono,
                sent_after=sent_after,
                final_after=final_after,
                outcome=outcome,
            )
            self._messages[tid] = rec
            self._by_message_id[mid] = rec
            self.messages_accepted += 1
            if self.callbacks_enabled:
                self._schedule(rec)
            if f.omit_rate and hash_unit("omit|" + mid) < f.omit_rate:
                self.messages_omitted += 1
                continue
            out.append({"messageId": mid, "trackingId": tid, "status": cm.QUEUED})
        return {
            "batchId": batch_id,
            "submissionStatus": "PARTIALLY_ACCEPTED" if rejected else "ACCEPTED",
            "timestamp": iso_seconds(wall),
            "messages": out,
        }

    # -- status polling ----------------------------------------------------------------------

    async def message_status(self, request: web.Request) -> web.Response:
        self.status_polls += 1
        self._enter()
        try:
            resp = await self._status(request)
        finally:
            self.in_flight -= 1
        self.status_polls_by_status[str(resp.status)] += 1
        return resp

    async def _status(self, request: web.Request) -> web.Response:
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        if not self._authorized(request):
            return self._unauthorized()
        if self._in_outage():
            return self._fault_response(503)
        rec = self._messages.get(request.match_info["trackingId"])
        if rec is None:
            return _json(404, error_body("NOT_FOUND", "Unknown trackingId"))
        status = cm.status_at(rec.outcome, time.monotonic() - rec.accepted_mono, rec.sent_after, rec.final_after)
        code, message = cm.status_fields(rec.outcome, status)
        return _json(
            200,
            {
                "trackingId": rec.tracking_id,
                "messageId": rec.message_id,
                "status": status,
                "deliveryTimestamp": rec.delivery_timestamp(status),
                "statusCode": code,
                "statusMessage": message,
            },
        )

    # -- delivery callbacks ------------------------------------------------------------------

    def _schedule(self, rec: Message) -> None:
        outcome = rec.outcome
        if outcome.status == cm.NO_STATUS:
            return
        was_first = self._heap[0][0] if self._heap else None
        pushes = self._pushes
        heapq.heappush(self._heap, (rec.accepted_mono + rec.sent_after, next(pushes), rec.tracking_id, cm.SENT))
        if outcome.final:  # pushed after SENT: on a tie (time scale 0) it is queued after SENT
            due = rec.accepted_mono + rec.final_after
            heapq.heappush(self._heap, (due, next(pushes), rec.tracking_id, outcome.status))
        if self._wakeup is not None and (was_first is None or self._heap[0][0] < was_first):
            self._wakeup.set()

    async def _start_background(self, app: web.Application) -> None:
        if not self.callbacks_enabled:
            return
        self._queue = asyncio.Queue()
        self._wakeup = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.callback_concurrency),
            timeout=aiohttp.ClientTimeout(total=self.callback_timeout_s),
            trust_env=False,
            headers={"User-Agent": f"premium-sms-carrier-simulator/{self.name}"},
        )
        self._tasks = [asyncio.create_task(self._scheduler(), name="callback-scheduler")]
        self._tasks += [
            asyncio.create_task(self._worker(), name=f"callback-worker-{i}") for i in range(self.callback_concurrency)
        ]

    async def _stop_background(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _scheduler(self) -> None:
        assert self._queue is not None and self._wakeup is not None
        heap, queue, wakeup = self._heap, self._queue, self._wakeup
        while True:
            wakeup.clear()
            if not heap:
                await wakeup.wait()
                continue
            delay = heap[0][0] - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), delay)
                continue
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, tid, status = heapq.heappop(heap)
                queue.put_nowait((tid, status))

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            tid, status = await self._queue.get()
            self._delivering += 1
            try:
                await self._deliver(tid, status)
            except Exception:
                log.exception("callback %s %s failed unexpectedly", tid, status)
            finally:
                self._delivering -= 1
                self._queue.task_done()

    def callback_payload(self, rec: Message, status: str) -> dict[str, Any]:
        code, _ = cm.status_fields(rec.outcome, status)
        return {
            "trackingId": rec.tracking_id,
            "messageId": rec.message_id,
            "status": status,
            "deliveryTimestamp": rec.delivery_timestamp(status),
            "phoneNumber": rec.phone,
            "statusCode": code,
        }

    async def _deliver(self, tid: str, status: str) -> None:
        rec = self._messages.get(tid)
        if rec is None or self._session is None or self._webhook is None:  # forgotten by a reset
            return
        data = orjson.dumps(self.callback_payload(rec, status)).decode()
        event_id = f"evt_{tid}_{status}"
        for attempt in range(CALLBACK_ATTEMPTS):
            now = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "webhook-id": event_id,
                "webhook-timestamp": str(now),
                "webhook-signature": self._webhook.sign(event_id, dt.datetime.fromtimestamp(now, dt.UTC), data),
            }
            try:
                async with self._session.post(rec.callback_url, data=data.encode(), headers=headers) as resp:
                    await resp.read()
                    key, ok = str(resp.status), 200 <= resp.status < 300
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.debug("callback %s to %s: %r", event_id, rec.callback_url, exc)
                key, ok = "connection_error", False
            if tid not in self._messages:  # reset meanwhile: not counted
                return
            self.callbacks_by_status[key] += 1
            if ok:
                self.callbacks_sent += 1
                return
            if attempt + 1 < CALLBACK_ATTEMPTS:
                await asyncio.sleep(CALLBACK_BACKOFF_S * 2**attempt)
        self.callbacks_failed += 1
        log.info("callback %s to %s failed after %d attempts", event_id, rec.callback_url, CALLBACK_ATTEMPTS)

    # -- control -----------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok", "name": self.name})

    def faults_config(self) -> dict[str, Any]:
        cfg = dict(self.faults.config)
        cfg["fail_next"] = {"status": self.faults.fail_status, "count": self._fail_remaining}
        cfg["commit_then"] = {"status": self.faults.commit_status, "count": self._commit_remaining}
        return cfg

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(200, self.faults_config())

    async def put_faults(self, request: web.Request) -> web.Response:
        try:
            faults = parse_faults(orjson.loads(await request.read()), self.default_time_scale)
        except (orjson.JSONDecodeError, ValueError) as exc:
            return _json(400, error_body("INVALID_REQUEST", f"invalid fault config: {exc}"))
        self.faults = faults
        self._fail_remaining = faults.fail_count
        self._commit_remaining = faults.commit_count
        log.info("fault config set: %s", faults.config)
        return _json(200, self.faults_config())

    def stats_snapshot(self) -> dict[str, Any]:
        pending = len(self._heap) + (self._queue.qsize() if self._queue is not None else 0) + self._delivering
        return {
            "batches_received": self.batches_received,
            "batches_by_status": dict(sorted(self.batches_by_status.items())),
            "batches_replayed": self.batches_replayed,
            "messages_accepted": self.messages_accepted,
            "messages_rejected": self.messages_rejected,
            "messages_omitted": self.messages_omitted,
            "duplicates_ignored": self.duplicates_ignored,
            "status_polls": self.status_polls,
            "status_polls_by_status": dict(sorted(self.status_polls_by_status.items())),
            "callbacks_sent": self.callbacks_sent,
            "callbacks_failed": self.callbacks_failed,
            "callbacks_by_status": dict(sorted(self.callbacks_by_status.items())),
            "callbacks_pending": pending,
            "max_concurrent": self.max_concurrent,
            "in_flight": self.in_flight,
        }

    async def stats(self, request: web.Request) -> web.Response:
        return _json(200, self.stats_snapshot())

    async def received(self, request: web.Request) -> web.Response:
        with_content = request.query.get("content", "").lower() in ("1", "true", "yes")
        return _json(200, [m.received_row(with_content) for m in self._messages.values()])

    async def reset_handler(self, request: web.Request) -> web.Response:
        self.reset()
        return _json(200, {"status": "reset"})


# -- process ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m premium.simulators.sms_carrier", description=__doc__.split("\n")[0]
    )
    add_server_args(parser)
    parser.add_argument("--name", default="carrier", help="instance name; tracking ids are <NAME>-TRACK-nnnnnnnn")
    parser.add_argument("--secret-env", default="SMS_SIM_SECRET", help="env var holding the bearer API key")
    parser.add_argument("--webhook-secret-env", help="env var holding the Standard Webhooks secret (whsec_...)")
    parser.add_argument("--callbacks", choices=["on", "off"], default="on")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies the QUEUED/SENT/final delays")
    parser.add_argument("--sent-after", type=float, default=cm.DEFAULT_SENT_AFTER_S, help="seconds until SENT")
    parser.add_argument("--final-after", type=float, default=cm.DEFAULT_FINAL_AFTER_S, help="seconds until final")
    parser.add_argument("--callback-concurrency", type=int, default=16)
    parser.add_argument("--faults", default="{}", help="initial fault config (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    secret = os.environ.get(args.secret_env)
    if not secret:
        parser.error(f"the API key must be in ${args.secret_env}")
    webhook_secret = None
    if args.webhook_secret_env:
        webhook_secret = os.environ.get(args.webhook_secret_env)
        if not webhook_secret:
            parser.error(f"--webhook-secret-env: ${args.webhook_secret_env} is not set")
        try:
            Webhook(webhook_secret)
        except (ValueError, RuntimeError, EmptyWebhookSecretError) as exc:  # binascii.Error is a ValueError
            parser.error(f"--webhook-secret-env: ${args.webhook_secret_env} is not a whsec_<base64> secret: {exc}")
    if args.time_scale < 0 or args.callback_concurrency < 1:
        parser.error("--time-scale must be >= 0 and --callback-concurrency >= 1")
    try:
        faults = parse_faults(json.loads(args.faults), args.time_scale)
        sim = SmsCarrierSimulator(
            secret,
            args.name,
            webhook_secret=webhook_secret,
            callbacks=args.callbacks == "on",
            faults=faults,
            time_scale=args.time_scale,
            sent_after_s=args.sent_after,
            final_after_s=args.final_after,
            callback_concurrency=args.callback_concurrency,
        )
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        parser.error(str(exc))
    if args.callbacks == "on" and not webhook_secret:
        log.info("no --webhook-secret-env: delivery callbacks are off")
    ssl_context = ssl_context_from_args(parser, args)
    asyncio.run(serve(sim.make_app(), args.host, args.port, ssl_context, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
