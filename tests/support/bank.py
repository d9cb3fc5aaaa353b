"""Shared helpers for tests that fetch balances: customers, the simulator, expected outcomes."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg

from premium.banking.client import BankEndpoint
from premium.crypto import PiiKeyring
from premium.customers import load_customers_csv
from premium.simulators import bank_model
from premium.synthetic import write_csv
from tests.support import env

KEYRING = PiiKeyring.from_extra(env.TEST_PII_KEYS)


def load_synthetic_customers(conninfo: dict, tmp_dir: Path, count: int, seed: int = 7) -> None:
    path = write_csv(tmp_dir / f"customers-{count}-{seed}.csv", count, seed)
    with psycopg.connect(**conninfo) as conn:
        report = load_customers_csv(path, conn, KEYRING)
    assert report.accepted == count, report.summary()


def endpoint_for(sim, api_key: str = env.TEST_BANK_API_KEY) -> BankEndpoint:
    return BankEndpoint(sim.base_url, {"X-API-Key": api_key}, None, "api_key")


def connection_json(sim, api_key: str = env.TEST_BANK_API_KEY) -> str:
    import json

    return json.dumps(
        {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": sim.port,
            "schema": "http",
            "password": api_key,
            "extra": {"auth_type": "api_key"},
        }
    )


def expected_outcomes(conninfo: dict, check_date: date, threshold: Decimal = Decimal(15000)) -> dict[str, tuple]:
    """account_id -> ("ok", amount, currency, status, passes) | ("not_found",), from the model alone."""
    with psycopg.connect(**conninfo) as conn:
        accounts = [r[0] for r in conn.execute("SELECT account_id FROM customers WHERE status = 'ACTIVE'")]
    out: dict[str, tuple] = {}
    for account_id in accounts:
        facts = bank_model.account_facts(account_id, check_date)
        if facts is None:
            out[account_id] = ("not_found",)
        else:
            passes = facts.currency == "NIS" and facts.amount >= threshold
            out[account_id] = ("ok", facts.amount, facts.currency, facts.account_status, passes)
    return out


def recorded_outcomes(conninfo: dict, check_date: date) -> dict[str, tuple]:
    with psycopg.connect(**conninfo) as conn:
        checks = conn.execute(
            "SELECT account_id, balance, currency, account_status, passes_threshold FROM daily_balance_checks "
            "WHERE check_date = %s",
            (check_date,),
        ).fetchall()
        failures = conn.execute(
            "SELECT account_id, reason FROM balance_check_failures WHERE check_date = %s", (check_date,)
        ).fetchall()
    out: dict[str, tuple] = {r[0]: ("ok", r[1], r[2], r[3], r[4]) for r in checks}
    for account_id, reason in failures:
        assert account_id not in out, f"{account_id} has both a check and a failure"
        out[account_id] = (reason,)
    return out
