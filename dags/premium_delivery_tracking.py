"""
### premium_delivery_tracking

Follows every SMS submission to a final, correct delivery state (§3.3, §3.5, §3.6, §4.2 part 3).
Scheduled on the `sms_submissions` asset: one run per submission (events that arrive close
together fold into one run; all of them are read).

**Tasks**
- `register_submissions`: the batches named by the triggering events become the run's tracking
  record (`delivery_tracking_runs`), with its deadline: submission + `window_s` (72 h).
- `poll_delivery_status` (deferrable sensor): every `poll_interval_s` (2 h) asks the carrier for
  the status of every open message (`in_flight` at a time, retries, circuit breaker), applies
  the answers monotonically, resubmits the retryable failures (§3.6: at most 3 attempts, 21614 at
  most 2 retries) under the same exactly-once rules, and defers until the next poll. Webhooks
  (`POST /premium/api/webhooks/sms-delivery/<carrier>` on the API server) update the same state between polls.
- `finalize_deliveries` (always runs): what is still open when the window ends becomes
  Unconfirmed; counts per final state; alerts for undeliverable numbers and retry exhaustion;
  publishes `delivery_confirmed` (DeliveryConfirmed).

**Connections**: `sms_carrier`, `sms_carrier_secondary` (optional), `premium_db`, `premium_pii_keys`.
**Settings**: Variable `premium_settings` section `delivery` (the 72-hour window is the
deployment's); per run: the knobs below (poll interval, concurrency, timeouts, retries). A manual
run tracks the accepted batches of param `campaign_id` (or only `batch_ids`). A conf key the DAG
does not declare fails the run.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, chain, dag, get_current_context, task

from premium.alerts import task_failure_alert
from premium.assets import DELIVERY_CONFIRMED, SMS_SUBMISSIONS
from premium.delivery.sensor import DeliveryStatusSensor
from premium.settings import run_params


@dag(
    schedule=[SMS_SUBMISSIONS],
    start_date=pendulum.datetime(2025, 1, 1, tz="Asia/Jerusalem"),
    catchup=False,
    doc_md=__doc__,
    tags=["premium", "sms", "delivery"],
    default_args={
        "owner": "premium-data-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "on_failure_callback": task_failure_alert,
    },
    params={
        **run_params("delivery"),
        "campaign_id": Param(None, type=["null", "string"], description="Manual runs: the campaign to track"),
        "batch_ids": Param(None, type=["null", "array"], description="Manual runs: only these batches"),
    },
)
def premium_delivery_tracking():
    @task
    def register_submissions():
        """Record which batches this run follows and until when."""
        from premium.delivery import tasks

        return tasks.register(get_current_context())

    poll_delivery_status = DeliveryStatusSensor(task_id="poll_delivery_status")

    @task(trigger_rule="all_done", outlets=[DELIVERY_CONFIRMED])
    def finalize_deliveries():
        """Expire what is still open at the end of the window; publish the final counts."""
        from premium.delivery import tasks

        return tasks.finalize(get_current_context())

    chain(register_submissions(), poll_delivery_status, finalize_deliveries())


premium_delivery_tracking()
