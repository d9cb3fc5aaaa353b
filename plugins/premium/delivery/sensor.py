"""The delivery sensor: poll, and between polls defer (no worker slot held) until the next one.

The interval and the end of the window come from the tracking run's own record, read on every
poke, so they hold across deferrals, task retries and triggerer restarts (trigger kwargs and
``defer(timeout=…)`` are not relied on).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import BaseSensorOperator, PokeReturnValue


class DeliveryStatusSensor(BaseSensorOperator):
    """Polls the carrier for the run's open messages until all are final or the window closes."""

    ui_color = "#e8f4fd"

    def poke(self, context: Any) -> PokeReturnValue:
        from premium.delivery import tasks

        outcome = tasks.poll(context)
        self._next_in_s = tasks.next_poll_in_s(context, outcome)
        return PokeReturnValue(is_done=outcome.done, xcom_value={"open": outcome.open_messages})

    # A wait shorter than this is slept in the task instead of deferred: a deferral that fires
    # within seconds can race the supervisor's report of the deferring process (Airflow 3.3.2,
    # apache/airflow#71580) and cost a spurious retry.
    min_deferral_s = 2.0

    def execute(self, context: Any) -> Any:
        while True:
            result = self.poke(context)
            if result.is_done:
                return result.xcom_value
            if self._next_in_s >= self.min_deferral_s:
                break
            time.sleep(self._next_in_s)
        self.log.info("next poll in %.1fs (deferred: no worker slot held meanwhile)", self._next_in_s)
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=self._next_in_s)), method_name="execute_complete")

    def execute_complete(self, context: Any, event: Any = None) -> Any:
        return self.execute(context)
