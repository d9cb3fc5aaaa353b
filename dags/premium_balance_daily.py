"""
### premium_balance_daily

Every evening at 22:00 Asia/Jerusalem: the balance of every active customer, as of that day,
from the core-banking API, recorded in the application database (§2, §4.1, §7.1).

**Check date**: the run's logical date in Asia/Jerusalem (run_after for runs without one);
a backfill of 2025-11-03 checks balances as of 2025-11-03. Never the wall clock.

**Tasks**
- `plan_chunks`: cuts the active accounts into chunks of `chunk_size` and groups them into at
  most `max_mapped_tasks` id ranges; (re)starts the date's record in `balance_check_runs`.
- `fetch_balances` (mapped, pool `core_banking_api`): fetches its range concurrently
  (`in_flight` requests), retrying with backoff behind a circuit breaker; upserts
  `daily_balance_checks` and `balance_check_failures` in bulk.
- `record_run` (always runs): gives every unresolved account a reason, closes the run record
  (COMPLETE / PARTIAL / SKIPPED_OUTAGE / FAILED) and publishes the `daily_balance_checks` asset.
  A day the bank refused our credentials (401/403), skipped for an outage or with accounts not
  reached fails here instead: the run is red, nothing below runs, one alert, no asset.
- `qualify_customers`: qualification in SQL (`include/sql/qualify_customers.sql`) into
  `qualification_outcomes` (qualified, or the first reason why not), then every qualified
  message rendered to record template, encoding and segments; fails before anything is sent
  when a template can exceed `max_segments`.
- `plan_send`: SEND, DRY_RUN (param `dry_run`) or LATE_NO_SEND (check date older than
  `max_lag_days`: a backfill or a late rerun records qualification and sends nothing, unless an
  operator authorised that date with `python -m premium.cli authorise-late-send`); the send
  window opens at `send_time` on D + `send_offset_days`, skipping `no_send_days`.
  In SEND mode it also prepares the outbox the evening before: one notification per customer and
  campaign with its payload (rendered text and E.164 number, encrypted), placed in batches of
  `batch_size` with deterministic message and batch ids.
- `wait_for_send_window`: deferrable wait (no worker slot held) until the window opens.
- `submit_sms_batches`: the prepared batches POSTed to `sms_carrier`, failover to
  `sms_carrier_secondary` when configured, otherwise buffering; publishes `sms_submissions`.

**Connections**: `core_banking` (base URL; API key, bearer token or mTLS), `premium_db`,
`premium_pii_keys`, `sms_carrier` (Bearer API key), `sms_carrier_secondary` (optional).
**Settings**: the deployment's, from the settings file and Variable `premium_settings`
(`{"balance": {...}, "sms": {...}}`): threshold, message content, sender, callback URL, window,
no-send days and lag are never changed by a run. The params below are the only per-run knobs
(concurrency, chunking, timeouts, retries; SMS ones prefixed `sms_`; null keeps the deployment's
value) plus `dry_run`. A conf key the DAG does not declare fails the run before anything is done.
**Alerts**: a 401 from the bank, a day skipped for an outage and failed tasks go through
`premium.alerts` (table `alerts`, log marker `PREMIUM_ALERT`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, chain, dag, get_current_context, task

from premium.alerts import task_failure_alert
from premium.assets import BALANCE_CHECKS, SMS_SUBMISSIONS
from premium.settings import run_params
from premium.sms.window_sensor import SendWindowSensor

BANK_POOL = "core_banking_api"


@dag(
    schedule=CronTriggerTimetable("0 22 * * *", timezone="Asia/Jerusalem"),
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Jerusalem"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["premium", "core-banking", "daily"],
    default_args={
        "owner": "premium-data-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "on_failure_callback": task_failure_alert,
    },
    params={
        **run_params("balance", "sms"),
        "dry_run": Param(False, type="boolean", description="Qualify and render everything, send nothing"),
    },
)
def premium_balance_daily():
    @task
    def plan_chunks() -> list:
        """Plan the day's fetch: chunk descriptors (id ranges and counts only)."""
        from premium.banking import tasks

        return tasks.plan(get_current_context())

    @task(pool=BANK_POOL, map_index_template="{{ chunk_label }}")
    def fetch_balances(chunk: dict):
        """Fetch and record the balances of one range of accounts."""
        from premium.banking import tasks

        return tasks.fetch(chunk, get_current_context())

    @task(trigger_rule="all_done", outlets=[BALANCE_CHECKS], retries=1)
    def record_run(chunks: list):
        """Resolve every account of the day, close the run record, publish the asset (or fail the day)."""
        from premium.banking import tasks

        return tasks.finish(chunks, get_current_context())

    @task
    def qualify_customers():
        """Qualify every customer for the check date in SQL; render the qualified messages."""
        from premium.sms import tasks

        return tasks.qualify(get_current_context())

    @task
    def plan_send() -> str:
        """Decide SEND / DRY_RUN / LATE_NO_SEND and the moment the send window opens; in SEND mode
        prepare the outbox and its batches."""
        from premium.sms import tasks

        return tasks.plan_send(get_current_context())

    wait_for_send_window = SendWindowSensor(
        task_id="wait_for_send_window",
        target_time="{{ ti.xcom_pull(task_ids='plan_send') }}",
    )

    @task(outlets=[SMS_SUBMISSIONS], retries=3, retry_delay=timedelta(minutes=10))
    def submit_sms_batches():
        """Write the outbox and submit its batches to the carrier (exactly once)."""
        from premium.sms import tasks

        return tasks.submit(get_current_context())

    chunks = plan_chunks()
    fetched = fetch_balances.expand(chunk=chunks)
    recorded = record_run(chunks)
    fetched >> recorded
    chain(recorded, qualify_customers(), plan_send(), wait_for_send_window, submit_sms_batches())


premium_balance_daily()
