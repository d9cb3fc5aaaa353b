"""SMS carrier simulators and submission helpers for tests."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import date

import psycopg

from premium.notifications.carrier import CarrierEndpoint
from premium.simulators.runner import SimulatorProcess
from tests.support import env

MODULE = "premium.simulators.sms_carrier"


@contextmanager
def carrier(
    name: str = "primary",
    api_key: str = env.TEST_SMS_API_KEY,
    *args: str,
    webhooks: bool = False,
    webhook_secret: str | None = None,
):
    """A carrier simulator. ``webhooks``: it signs its delivery callbacks with ``webhook_secret``,
    by default the test secret of the carrier ``name`` (each carrier has its own; the primary's for
    any other name)."""
    extra = ["--name", name, "--secret-env", "SMS_SIM_SECRET", "--time-scale", "0.01", *args]
    sim_env = {"SMS_SIM_SECRET": api_key}
    if webhooks:
        extra += ["--webhook-secret-env", "SMS_SIM_WEBHOOK_SECRET"]
        sim_env["SMS_SIM_WEBHOOK_SECRET"] = webhook_secret or env.TEST_WEBHOOK_SECRETS.get(
            name, env.TEST_WEBHOOK_SECRET
        )
    else:
        extra += ["--callbacks", "off"]
    with SimulatorProcess(module=MODULE, args=extra, env=sim_env, name=f"sms-{name}") as sim:
        yield sim


def endpoint(sim, name: str, api_key: str) -> CarrierEndpoint:
    return CarrierEndpoint(name, sim.base_url, {"Authorization": f"Bearer {api_key}", "Accept": "application/json"})


def connection_json(sim, api_key: str) -> str:
    return json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": sim.port, "schema": "http", "password": api_key}
    )


def make_everyone_pass(conninfo: dict, end: date, days: int = 30) -> None:
    """Passing checks for every active customer on each of ``days`` days ending at ``end``."""
    with psycopg.connect(**conninfo) as conn:
        conn.execute(
            """
            INSERT INTO daily_balance_checks (account_id, check_date, customer_id, balance, currency, threshold,
                passes_threshold, account_status, check_timestamp, correlation_id, banking_reference_id)
            SELECT c.account_id, d::date, c.customer_id, 20000, 'NIS', 15000, true, 'ACTIVE', d, 'corr-fixture', 'REF'
            FROM customers c CROSS JOIN generate_series(%s::date - (%s - 1), %s::date, interval '1 day') d
            WHERE c.status = 'ACTIVE'
            ON CONFLICT DO NOTHING
            """,
            (end, days, end),
        )


def received_message_ids(sim) -> list[str]:
    return [m["messageId"] for m in sim.call("GET", "/_sim/received")]


def window_clock(settings=None):
    """A clock for the engine that always reads inside a send window, never behind the real time: the
    real time while a window is open for at least another hour, else the real time shifted to the
    next window's opening. Retries scheduled by the database's now() fall due as they would."""
    from datetime import UTC, datetime, timedelta

    from premium.notifications import window
    from premium.settings import SmsSettings

    settings = settings or SmsSettings()
    real = datetime.now(UTC)
    soon = real + timedelta(hours=1)
    if window.is_open(real, settings) and window.is_open(soon, settings):
        offset = timedelta(0)
    else:
        offset = window.next_open(soon, settings) - real + timedelta(seconds=1)
    return lambda: datetime.now(UTC) + offset


# SMS settings of a window open at any hour on any day, retries due at once: for tests that run the
# engine under dag.test() or the scheduler (real clock), whatever time CI runs them.
OPEN_WINDOW = {"send_time": "00:00:00", "send_window_end": "23:59:59", "no_send_days": [], "retry_backoff_s": 0}
