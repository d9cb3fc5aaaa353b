"""Status polling at scale: how long one poll of N pending messages takes (issue goal: minutes, not hours).

Submits N messages straight to a carrier simulator (bare POSTs, so the setup is quick), then times
``premium.delivery.tracking.poll_statuses`` — the function each poll of premium_delivery_tracking
runs — over all N tracking ids at the configured concurrency. Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

import aiohttp  # noqa: E402

from premium.delivery.tracking import poll_statuses  # noqa: E402
from premium.notifications.carrier import CarrierEndpoint  # noqa: E402
from premium.settings import DeliverySettings  # noqa: E402
from premium.simulators.runner import SimulatorProcess  # noqa: E402

KEY = "bench-poll-key"


async def submit_all(base_url: str, n: int, batch: int = 1000) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for start in range(0, n, batch):
            messages = [
                {
                    "messageId": f"MSG-bench-{i}",
                    "phoneNumber": f"+9725{20000000 + i:08d}",
                    "content": "Hello, we appreciate your continued loyalty.",
                    "priority": "HIGH",
                    "callbackUrl": "http://127.0.0.1:9/unused",
                }
                for i in range(start, min(n, start + batch))
            ]
            body = {
                "batchId": f"BATCH-20251118-{start // batch + 1:03d}",
                "messages": messages,
                "metadata": {"campaignId": "bench", "correlationId": "bench"},
            }
            async with session.post(f"{base_url}/api/v1/messages/batch", data=json.dumps(body)) as resp:
                assert resp.status == 202, await resp.text()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    with SimulatorProcess(
        module="premium.simulators.sms_carrier",
        args=["--name", "primary", "--secret-env", "SMS_SIM_SECRET", "--callbacks", "off", "--time-scale", "0.001"],
        env={"SMS_SIM_SECRET": KEY},
        name="bench-poll",
    ) as sim:
        t0 = time.perf_counter()
        asyncio.run(submit_all(sim.base_url, args.messages))
        setup = time.perf_counter() - t0
        items = [("primary", m["trackingId"]) for m in sim.call("GET", "/_sim/received")]
        endpoint = CarrierEndpoint("primary", sim.base_url, {"Authorization": f"Bearer {KEY}"})
        settings = DeliverySettings(in_flight=args.in_flight)
        t0 = time.perf_counter()
        updates, errors = asyncio.run(poll_statuses(items, {"primary": endpoint}, settings))
        seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"setup (submit {args.messages} messages): {setup:.1f} s")
    print(
        f"one poll of {len(items)} pending messages, {args.in_flight} in flight: {seconds:.1f} s "
        f"({len(items) / seconds:,.0f} status requests/s), {len(updates)} answers, {errors} errors; "
        f"peak RSS {rss_mb:.0f} MB; cores {os.cpu_count()}"
    )
    return 0 if len(updates) == len(items) and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
