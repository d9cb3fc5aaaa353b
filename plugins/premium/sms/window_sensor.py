"""The send-window wait: deferrable, and not deferred at all when the window is already open."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync


class SendWindowSensor(DateTimeSensorAsync):
    """Waits, deferred (no worker slot held), until the send window opens.

    When the moment has already passed (a rerun the next morning, a dry run, a late run that sends
    nothing) it returns at once: deferring on a past moment fires immediately, which can race the
    supervisor's report of the deferring process (Airflow 3.3.2, apache/airflow#71580).
    """

    def execute(self, context: Any) -> None:
        from airflow.sdk import timezone

        if timezone.utcnow() >= self._moment:
            self.log.info("send window already open (%s): no wait", self._moment.isoformat())
            return None
        return super().execute(context)
