"""
### premium_maintenance

Daily retention of the audit tables (§5.4), as of the run's date (a rerun or a backfill does the
same thing; every step is idempotent).

- creates the daily `system_events` and monthly `audit_trail` partitions ahead of time (rows that
  fell into a DEFAULT partition are moved into theirs);
- drops `system_events` partitions older than 90 days (a partition drop, never a mass DELETE);
- exports `audit_trail` partitions past their hot period to gzip JSON lines with a SHA-256
  checksum (recorded in `archived_partitions`), verifies the file, then drops the partition;
  archive files are kept 7 years.

**Settings**: section `retention` of the deployment's settings (file or Variable
`premium_settings`): `events_hot_days` (≥ 90), `audit_hot_days`, `archive_years` (≥ 7),
`partitions_ahead_days`, `archive_dir` (default `$PREMIUM_ARCHIVE_DIR` or `$AIRFLOW_HOME/archive`).
The floors hold whatever the settings say. No params: a run with any conf is refused.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task

from premium.alerts import task_failure_alert


@dag(
    schedule=CronTriggerTimetable("30 3 * * *", timezone="Asia/Jerusalem"),
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Jerusalem"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["premium", "maintenance", "retention"],
    default_args={
        "owner": "premium-data-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
        "on_failure_callback": task_failure_alert,
    },
)
def premium_maintenance():
    @task
    def apply_retention():
        """Partitions ahead, expired partitions dropped (audit exported first)."""
        from premium.maintenance import apply_retention as run

        return run(get_current_context())

    apply_retention()


premium_maintenance()
