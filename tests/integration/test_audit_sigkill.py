"""A fetch task SIGKILLed mid-chunk: the bank calls it made are in system_events all the same (§5.4).

The chunk's own transaction never commits (one chunk covers the whole range, and the process dies
long before it is fetched), so only the audit writer, on its own connection, can have written them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date

import psycopg
import pytest

from premium.banking import stage
from premium.settings import BalanceSettings
from tests.support import env
from tests.support.bank import load_synthetic_customers

pytestmark = pytest.mark.integration

DAY = date(2025, 11, 18)
RUN_ID = "manual__audit_sigkill"
ACCOUNTS = 2000
LATENCY_MS = 100  # with 8 requests in flight: ~80 calls a second, the range would take ~25 s
KILL_AFTER = 400  # calls served before the kill (~5 s)
# Calls the bank received this long before the kill must all be in system_events: the writer's
# 1 s tick, the answer's latency and the COPY itself, with room to spare on a loaded machine.
SETTLED_S = 3.0


def test_a_fetch_killed_mid_chunk_leaves_every_earlier_bank_call_audited(db, app_db, tmp_path, bank) -> None:
    load_synthetic_customers(app_db, tmp_path, ACCOUNTS, seed=12)
    overrides = {
        "chunk_size": ACCOUNTS,  # one chunk: its transaction would commit only at the end of the range
        "max_mapped_tasks": 1,
        "in_flight": 8,
        "request_timeout_s": 10.0,
        "backoff_multiplier_s": 0.001,
    }
    (descriptor,) = stage.plan_run(app_db, DAY, RUN_ID, BalanceSettings(**overrides))
    corr = stage.correlation_id_for(RUN_ID, DAY)
    bank.set_faults({"latency_ms": LATENCY_MS})
    args = {
        "conninfo": app_db,
        "check_date": DAY.isoformat(),
        "descriptor": descriptor.to_xcom(),
        "settings": overrides,
        "base_url": bank.base_url,
        "api_key": env.TEST_BANK_API_KEY,
        "correlation_id": corr,
    }
    log_path = tmp_path / "fetch_driver.log"
    samples: list[tuple[float, int]] = []  # (monotonic time, calls the bank had received)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fetch_driver", json.dumps(args)],
            cwd=env.ROOT,
            env={**os.environ, "PYTHONPATH": f"{env.ROOT}/plugins:{env.ROOT}"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while not samples or samples[-1][1] < KILL_AFTER:
                assert proc.poll() is None, f"the fetch ended before the kill:\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "the bank was not called enough"
                time.sleep(0.05)
                samples.append((time.monotonic(), bank.stats()["by_correlation_id"].get(corr, 0)))
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    served = bank.stats()["by_correlation_id"][corr]  # every call, those in flight at the kill included
    settled = max((n for t, n in samples if t <= killed_at - SETTLED_S), default=0)
    with psycopg.connect(**app_db) as conn:
        events = conn.execute(
            "SELECT event_data->>'correlation_id', event_data->>'status' FROM system_events "
            "WHERE event_type = 'banking_api_call'"
        ).fetchall()
        checks = conn.execute("SELECT count(*) FROM daily_balance_checks WHERE check_date = %s", (DAY,)).fetchone()[0]
        failures = conn.execute("SELECT count(*) FROM balance_check_failures WHERE check_date = %s", (DAY,)).fetchone()[
            0
        ]
    written = len(events)
    print(f"served {served}, settled {settled}, written {written}, missing {served - written}")
    assert checks == failures == 0, "the chunk's transaction committed: the kill was not mid-chunk"
    assert written > 0
    assert {cid for cid, _ in events} == {corr}
    assert all(status in ("200", "404") for _, status in events)
    assert settled <= written <= served  # only the calls of the last moments are missing
