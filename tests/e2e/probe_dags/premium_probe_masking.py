"""
### premium_probe_masking (test-only)

Loaded only by the end-to-end test's Airflow (tests/e2e): never deployed. Its one task reads
the `core_banking` connection and writes its secret into the task log the careless ways code
does (a sentence, a headers dict, stdout), so that the test can prove Airflow masks it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

log = logging.getLogger(__name__)


@dag(
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Jerusalem"),
    catchup=False,
    tags=["premium", "e2e-probe"],
    default_args={"owner": "premium-data-platform", "retries": 1, "retry_delay": timedelta(seconds=5)},
)
def premium_probe_masking():
    @task
    def log_bank_credentials() -> None:
        """Log the bank API key (the connection's password) three ways; return nothing (no XCom)."""
        from airflow.sdk import Connection

        conn = Connection.get("core_banking")
        if not conn.password:
            raise ValueError("core_banking has no password: nothing to mask")
        log.info("probe sentence: calling core banking at %s:%s with API key %s", conn.host, conn.port, conn.password)
        log.info("probe headers: %s", {"X-API-Key": conn.password, "Accept": "application/json"})
        print(f"probe stdout: the bank API key is {conn.password}")  # noqa: T201 - stdout is part of the proof

    log_bank_credentials()


premium_probe_masking()
