"""Run premium_balance_daily with dag.test() for each day of a date range (the demo's month).

Each day is a full run of the DAG: balance fetch, qualification, send window, submission. The
demo's deployment settings treat its runs as on time (`max_lag_days` is raised), otherwise dates
in the past would record qualification and send nothing, as a real backfill does. The demo runs
whenever it is started, so its send window is open at any hour on any day; a deployment keeps
09:00-20:00 without Saturdays. Runs only pass per-run knobs: the window is never a run's.

Prints one line per day prefixed with "DEMO " (the rest is Airflow's own log).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, date, datetime, timedelta

import psycopg

from premium.connections import premium_db_kwargs

OPEN_WINDOW = {"send_time": "00:00:00", "send_window_end": "23:59:59", "no_send_days": [], "retry_backoff_s": 0}
# Tracking accelerated for the demo: a 20-second window instead of 72 hours.
DEMO_SETTINGS = {"sms": {**OPEN_WINDOW, "max_lag_days": 100000}, "delivery": {"window_s": 20}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--from", dest="first", type=date.fromisoformat, required=True)
    parser.add_argument("--to", dest="last", type=date.fromisoformat, required=True)
    parser.add_argument("--conf", default="{}")
    args = parser.parse_args()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    dag = bag.dags["premium_balance_daily"]
    tracking = bag.dags["premium_delivery_tracking"]
    conf = json.loads(args.conf)
    os.environ.setdefault("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps(DEMO_SETTINGS))
    day = args.first
    failed = 0
    import pendulum

    while day <= args.last:
        # 22:00 Asia/Jerusalem of `day`, as the schedule would run it
        logical = pendulum.datetime(day.year, day.month, day.day, 22, tz="Asia/Jerusalem").in_timezone(UTC)
        run = dag.test(logical_date=datetime.fromtimestamp(logical.timestamp(), UTC), run_conf=conf)
        with psycopg.connect(**premium_db_kwargs()) as conn:
            bal = conn.execute(
                "SELECT status, accounts_checked, accounts_passing FROM balance_check_runs WHERE check_date = %s",
                (day,),
            ).fetchone()
            sms = conn.execute(
                "SELECT mode, qualified, coalesce(submitted, 0) FROM sms_campaign_runs WHERE check_date = %s", (day,)
            ).fetchone()
        print(
            f"DEMO {day} run {run.state}: balances {bal[0] if bal else '-'} "
            f"(checked {bal[1] if bal else 0}, passing {bal[2] if bal else 0}); "
            f"qualified {sms[1] if sms else 0}, SMS submitted {sms[2] if sms else 0}",
            flush=True,
        )
        failed += str(run.state) != "success"
        if sms and sms[2]:
            # What the sms_submissions asset event does under the scheduler: track this submission
            # (accelerated: poll every second; the demo's deployment settings: a 20-second window).
            with psycopg.connect(**premium_db_kwargs()) as conn:
                batch_ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT batch_id FROM sms_batches WHERE check_date = %s AND status IN ('ACCEPTED', 'PARTIAL')",
                        (day,),
                    )
                ]
            from premium.notifications.window import campaign_id_for

            track = tracking.test(
                logical_date=datetime.now(UTC),
                run_conf={
                    "campaign_id": campaign_id_for(day),
                    "batch_ids": batch_ids,
                    "poll_interval_s": 1,
                },
            )
            with psycopg.connect(**premium_db_kwargs()) as conn:
                counts = conn.execute(
                    "SELECT counts FROM delivery_tracking_runs WHERE dag_run_id = %s", (track.run_id,)
                ).fetchone()
            print(f"DEMO {day} delivery tracking {track.state}: {counts[0] if counts else {}}", flush=True)
            failed += str(track.state) != "success"
        day += timedelta(days=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
