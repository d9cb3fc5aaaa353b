"""Runs the submission engine once in its own process, optionally SIGKILLing itself at one step.

    python -m tests.support.engine_driver '<json>'

The JSON: ``conninfo``, ``campaign_id``, ``correlation_id``, ``settings`` (SmsSettings overrides),
``endpoints`` ({name: [base_url, api_key]}), ``holder``, ``wait_s``, ``clock_offset_s`` (the engine's
clock = real time + offset), ``crash_at`` (one of :data:`CRASH_POINTS` or null) and ``crash_on``
(the n-th time that step is reached, 1 by default). Prints the summary as JSON on success.

Crash points, in the order a batch meets them:
- ``binding``: inside the transaction that binds the batch and marks it in flight (not committed);
- ``in_flight``: right after that transaction committed, before the POST;
- ``sent``: while the POST is on its way (the request has left; the answer has not come);
- ``answered``: the carrier's answer received, nothing recorded;
- ``recording``: inside the transaction that records a 202 (messages updated, not committed);
- ``recorded``: right after the 202 was recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta

CRASH_POINTS = ("binding", "in_flight", "sent", "answered", "recording", "recorded")


def main(raw: str) -> int:
    from premium.notifications import engine
    from premium.notifications.carrier import CarrierEndpoint, SmsCarrierClient
    from premium.settings import SmsSettings
    from tests.support.bank import KEYRING

    args = json.loads(raw)
    crash_at, crash_on = args.get("crash_at"), int(args.get("crash_on") or 1)
    reached = {"n": 0}

    def die_if(point: str) -> None:
        if point == crash_at:
            reached["n"] += 1
            if reached["n"] == crash_on:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    def after(cls, name, point):
        original = getattr(cls, name)

        def wrapped(*a, **kw):
            result = original(*a, **kw)
            die_if(point)
            return result

        setattr(cls, name, wrapped)

    E = engine.SubmissionEngine
    after(E, "_bind_in", "binding")
    after(E, "_bind", "in_flight")
    after(E, "_record", "recorded")
    original_register = engine.register_accepted

    def register(*a, **kw):
        original_register(*a, **kw)
        die_if("recording")

    engine.register_accepted = register
    original_post = SmsCarrierClient.post_batch

    async def post(self, *a, **kw):
        if crash_at == "sent":
            task = asyncio.ensure_future(original_post(self, *a, **kw))
            await asyncio.sleep(float(args.get("sent_after_s", 0.3)))
            die_if("sent")
            return await task
        result = await original_post(self, *a, **kw)
        if result.kind == "accepted":
            die_if("answered")
        return result

    SmsCarrierClient.post_batch = post

    offset = timedelta(seconds=float(args.get("clock_offset_s", 0)))
    endpoints = {
        name: CarrierEndpoint(name, url, {"Authorization": f"Bearer {key}", "Accept": "application/json"})
        for name, (url, key) in args["endpoints"].items()
    }
    summary = engine.submit(
        args["conninfo"],
        args["campaign_id"],
        SmsSettings(**args.get("settings", {})),
        endpoints,
        KEYRING,
        args.get("correlation_id", "corr-driver"),
        holder=args.get("holder", "driver"),
        wait_s=args.get("wait_s"),
        clock=lambda: datetime.now(UTC) + offset,
    )
    print(json.dumps(summary.as_dict(), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
