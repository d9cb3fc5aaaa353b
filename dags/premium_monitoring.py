"""
### premium_monitoring

Every hour: the §6.1 integration health figures over the last `window_hours` (24 h) before the
run's logical date, per window and per run, compared with their thresholds (§6.1, §7.2).

**Tasks**
- `compute_metrics`: banking API availability and p95 response time, SMS carrier availability
  (per carrier), SMS delivery rate, retry exhaustion, consecutive webhook failures — from
  `system_events`, `delivery_status` and `sms_notifications` (`include/sql/metrics_*.sql`) —
  recorded in `integration_metrics` (window and per-run rows), breaches flagged.
- `alert_on_breaches`: one alert per window breach (`threshold_<metric>`, runs breaching listed)
  through `premium.alerts` (table `alerts` + the notifiers of `premium_alerts_smtp` /
  `premium_alerts_webhook`); a persisting breach is alerted again after `realert_after_hours`.
- `publish_gauges`: the window figures as gauges `premium.integration.*` through Airflow's
  metrics (StatsD / OpenTelemetry, per `[metrics]`). Prometheus reads the same figures at
  `GET /premium-metrics/metrics` on the API server.

**Alerts**: failed tasks (`on_failure_callback`) and breaches go through `premium.alerts`; a run
is cut off by `dagrun_timeout` (55 min) before the next one is due.
**Connections**: `premium_db`; optional `premium_alerts_smtp`, `premium_alerts_webhook`.
**Settings**: Variable `premium_settings` section `monitoring` (thresholds, `window_hours`,
`min_samples`, `realert_after_hours`, `retention_days`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task

from premium.alerts import task_failure_alert


@dag(
    schedule=CronTriggerTimetable("5 * * * *", timezone="Asia/Jerusalem"),
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Jerusalem"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=55),
    doc_md=__doc__,
    tags=["premium", "monitoring", "hourly"],
    default_args={
        "owner": "premium-data-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": task_failure_alert,
    },
)
def premium_monitoring():
    @task(multiple_outputs=False)
    def compute_metrics() -> dict:
        """Compute, judge and record the integration health figures of the window."""
        from premium import monitoring

        return monitoring.task_compute(get_current_context())

    @task
    def alert_on_breaches(result: dict) -> int:
        """One alert per threshold breach (repeats suppressed for realert_after_hours)."""
        from premium import monitoring

        return monitoring.task_alert(get_current_context(), result)

    @task
    def publish_gauges(result: dict) -> int:
        """The window figures as StatsD/OpenTelemetry gauges."""
        from premium import monitoring

        return monitoring.task_publish(result)

    result = compute_metrics()
    alert_on_breaches(result)
    publish_gauges(result)


premium_monitoring()
