"""make demo: the demo's month through the running scheduler, then the summary; the stack stays up.

1. ``make up`` (scripts/stack.py): started unless it runs.
2. ``premium_balance_daily`` is unpaused (a backfill's runs only start on an unpaused DAG);
   without catchup, Airflow then also runs the DAG's latest 22:00 tick. That run, its tracking
   and any other run of the two DAGs in progress are waited for, so that no other
   ``sms_submissions`` event (another campaign) is folded into a tracking run of the month's.
3. The application DB is recreated, migrated and loaded with the synthetic customers (the same
   month every time).
4. Airflow's own backfill of DEMO_FROM..DEMO_DATE (``POST /api/v2/backfills``, one run at a time,
   every date rerun), with a line per day as its run ends and one per delivery tracking run
   (started by the ``sms_submissions`` asset) that follows messages.
5. Once the backfill and every tracking run have ended: the summary (balances; qualification;
   batches, submitted, failed over, buffered; delivered / failed / undeliverable / retried /
   unconfirmed). ``premium_balance_daily`` is paused again if it was.

The stack's deployment settings are the demo's (scripts/stack.py LOCAL_SETTINGS): the window
open at any hour, the late-run rail raised so that November 2025 sends, tracking in 30 seconds.

Environment: DEMO_FROM (2025-11-01), DEMO_DATE (2025-11-30), DEMO_CUSTOMERS (2000), DEMO_SEED,
DEMO_TIMEOUT_S (5400), and those of scripts/stack.py. Run through scripts/env.sh (make demo).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import stack
from stack import BALANCE_DAG, PYTHON, TRACKING_DAG, Api, Config, StackError, say, step

LOCAL = ZoneInfo("Asia/Jerusalem")
TERMINAL = frozenset({"success", "failed"})
POLL_S = 3.0
LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _local_day(run: dict[str, Any]) -> date | None:
    logical = _ts(run.get("logical_date"))
    return logical.astimezone(LOCAL).date() if logical else None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def active_work(api: Api) -> list[str]:
    """Runs of the two DAGs queued or running, and asset events waiting to start a tracking run."""
    active = [
        f"{dag_id} {run['dag_run_id']} ({run['state']})"
        for dag_id in (BALANCE_DAG, TRACKING_DAG)
        for run in api.dag_runs(dag_id, state=["queued", "running"])
    ]
    queued = api.client.get(f"/api/v2/dags/{TRACKING_DAG}/assets/queuedEvents")
    if queued.status_code == 200 and queued.json().get("total_entries"):
        active.append(f"{queued.json()['total_entries']} sms_submissions event(s) not yet tracked")
    return active


def wait_idle(api: Api, timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    shown = False
    while active := active_work(api):
        if not shown:
            say(f"  waiting for {why}: {'; '.join(active[:4])}{' …' if len(active) > 4 else ''}")
            shown = True
        if time.monotonic() > deadline:
            raise StackError(f"still in progress after {timeout:.0f}s: {active}")
        time.sleep(POLL_S)


def unpause_balance_dag(api: Api) -> bool:
    """Unpause premium_balance_daily; wait for the run of its latest tick that this starts. Whether
    it was paused."""
    dag = api.dag(BALANCE_DAG)
    if dag is None:
        raise StackError(f"{BALANCE_DAG} is not parsed")
    if not dag["is_paused"]:
        return False
    tick, run_after = _ts(dag.get("next_dagrun_logical_date")), _ts(dag.get("next_dagrun_run_after"))
    api.set_paused(BALANCE_DAG, False)
    say(f"  {BALANCE_DAG} unpaused (a backfill's runs only start on an unpaused DAG)")
    if tick is None or run_after is None or run_after > datetime.now(UTC):
        return True
    say(
        f"  without catchup, Airflow now runs its latest tick ({tick.astimezone(LOCAL):%Y-%m-%d %H:%M %Z}): "
        "that run and its delivery tracking end before the month starts"
    )
    deadline = time.monotonic() + 120
    while not any(_ts(r.get("logical_date")) == tick for r in api.dag_runs(BALANCE_DAG)):
        if time.monotonic() > deadline:
            say("  (the scheduler did not create it within 120s; going on)")
            break
        time.sleep(1.0)
    return True


def reset_application_db(cfg: Config, customers: int, seed: int) -> None:
    """Recreated, migrated, the synthetic customers loaded through the CSV command; each command's
    own lines shown (its whole output in setup.log)."""
    cli = [PYTHON, "-m", "premium.cli"]
    pg = ["--host", cfg.pg_host, "--port", str(cfg.pg_port), "--user", cfg.pg_user]
    csv = cfg.state_dir / "demo-customers.csv"
    log = cfg.state_dir / "setup.log"
    for cmd in (
        [*cli, "create-databases", cfg.app_db, "--recreate", *pg],
        [*cli, "migrate"],
        [*cli, "gen-customers", "--count", str(customers), "--seed", str(seed), "--out", str(csv)],
        [*cli, "load-customers", str(csv), "--show-rejections", "5"],
    ):
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        with open(log, "a", encoding="utf-8") as out:
            out.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise StackError(f"{' '.join(cmd[3:5])} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
        for line in result.stdout.strip().splitlines():
            if not LOG_LINE.match(line):  # the command's own lines, not Airflow's and alembic's log
                say(f"  {line}")


def day_line(cfg: Config, run: dict[str, Any], day: date) -> str:
    with psycopg.connect(**cfg.app_conninfo) as conn:
        bal = conn.execute(
            "SELECT status, accounts_checked, accounts_passing FROM balance_check_runs WHERE check_date = %s", (day,)
        ).fetchone()
        sms = conn.execute(
            "SELECT mode, qualified, coalesce(submitted, 0) FROM sms_campaign_runs WHERE check_date = %s", (day,)
        ).fetchone()
    return (
        f"{day} run {run['state']} in {_duration(run.get('duration') or 0)}: balances {bal[0] if bal else '-'} "
        f"(checked {bal[1] if bal else 0}, passing {bal[2] if bal else 0}); "
        f"qualified {sms[1] if sms else 0}, SMS submitted {sms[2] if sms else 0}"
    )


def tracking_line(cfg: Config, run: dict[str, Any]) -> str | None:
    """A line for a tracking run that followed messages (None for one that had nothing to follow)."""
    with psycopg.connect(**cfg.app_conninfo) as conn:
        row = conn.execute(
            "SELECT check_dates, cardinality(batch_ids), polls, counts FROM delivery_tracking_runs "
            "WHERE dag_run_id = %s",
            (run["dag_run_id"],),
        ).fetchone()
    if row is not None and not row[1]:
        return None
    if row is None:
        return f"delivery tracking {run['dag_run_id']} {run['state']} (no tracking record)"
    days = ", ".join(str(d) for d in row[0]) or "-"
    counts = ", ".join(f"{k} {v}" for k, v in (row[3] or {}).items())
    return (
        f"{days} delivery tracking {run['state']} in {_duration(run.get('duration') or 0)} "
        f"({row[1]} batches, {row[2]} polls): {counts}"
    )


def untracked_days(cfg: Config, first: date, last: date) -> list[date]:
    """Days of the month whose accepted batches no finished tracking run has followed yet."""
    with psycopg.connect(**cfg.app_conninfo) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT c.check_date FROM sms_campaign_runs c WHERE c.check_date BETWEEN %s AND %s "
                "AND coalesce(c.batches, 0) > 0 AND NOT EXISTS (SELECT 1 FROM delivery_tracking_runs t "
                "WHERE t.status = 'DONE' AND c.check_date = ANY(t.check_dates)) ORDER BY 1",
                (first, last),
            )
        ]


def failed_tasks(api: Api, dag_id: str, run_id: str) -> list[str]:
    tis = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=100)["task_instances"]
    return sorted({ti["task_id"] for ti in tis if ti["state"] in ("failed", "upstream_failed")})


def run_backfill(cfg: Config, api: Api, first: date, last: date, timeout: float) -> int:
    """The backfill through the REST API; progress until it and every tracking run have ended.
    The number of runs that failed."""
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    tracking_before = {r["dag_run_id"] for r in api.dag_runs(TRACKING_DAG)}
    body = {
        "dag_id": BALANCE_DAG,
        # Local-day bounds: the 22:00 Asia/Jerusalem run of each day (naive dates are UTC midnight).
        "from_date": datetime.combine(first, clock(0), tzinfo=LOCAL).isoformat(),
        "to_date": datetime.combine(last, clock(23, 59, 59), tzinfo=LOCAL).isoformat(),
        "max_active_runs": 1,  # in date order, one at a time: each day's qualification reads the days before
        "reprocess_behavior": "completed",  # every date again, including those of an earlier demo
    }
    backfill = api.request("POST", "/api/v2/backfills", expect=(200, 201), json=body)
    created = _ts(backfill["created_at"])
    assert created is not None
    say(
        f"  backfill {backfill['id']}: {len(days)} runs, one at a time "
        f"(live in the UI: {api.base_url}/dags/{BALANCE_DAG})"
    )
    started = time.monotonic()
    reported: set[str] = set()
    tracked: set[str] = set()
    failures = 0
    quiet_tracking = 0
    idle_polls = 0
    try:
        while True:
            runs = [
                r
                for r in api.dag_runs(BALANCE_DAG, run_type=["backfill"])
                if r["run_type"] == "backfill" and (_local_day(r) or first) in days
            ]
            ended = [
                r
                for r in runs
                if r["state"] in TERMINAL
                and r["dag_run_id"] not in reported
                and (_ts(r.get("end_date")) or created) >= created
            ]
            for run in sorted(ended, key=lambda r: r["logical_date"]):
                reported.add(run["dag_run_id"])
                day = _local_day(run)
                assert day is not None
                line = day_line(cfg, run, day)
                if run["state"] != "success":
                    failures += 1
                    line += f"; failed: {', '.join(failed_tasks(api, BALANCE_DAG, run['dag_run_id']))}"
                say(f"  {line}   [{len(reported)}/{len(days)}, {_duration(time.monotonic() - started)}]")
            for run in api.dag_runs(TRACKING_DAG):
                rid = run["dag_run_id"]
                if rid in tracking_before or rid in tracked or run["state"] not in TERMINAL:
                    continue
                tracked.add(rid)
                failures += run["state"] != "success"
                line = tracking_line(cfg, run)
                if line is None:
                    quiet_tracking += 1
                else:
                    say(f"  {line}")
            done = len(reported) >= len(days) and api.get(f"/api/v2/backfills/{backfill['id']}")["completed_at"]
            # Then: no sms_submissions event waiting, no tracking run in progress, every day with
            # accepted batches followed to the end (twice in a row: an event becomes a run within a loop).
            if done and not active_work(api) and not untracked_days(cfg, first, last):
                idle_polls += 1
                if idle_polls >= 2:
                    break
            else:
                idle_polls = 0
            if time.monotonic() - started > timeout:
                raise StackError(f"the demo did not end within {timeout:.0f}s (DEMO_TIMEOUT_S)")
            time.sleep(POLL_S)
    except BaseException:
        api.client.put(f"/api/v2/backfills/{backfill['id']}/cancel")
        say(f"\n  backfill {backfill['id']} cancelled (runs already started finish); the stack stays up")
        raise
    say(
        f"  {len(reported)} runs and {len(tracked)} delivery tracking runs ended in "
        f"{_duration(time.monotonic() - started)} ({quiet_tracking} tracking runs had no batch to follow)"
    )
    return failures


def main() -> int:
    started = time.monotonic()
    cfg = Config.from_env()
    first = date.fromisoformat(os.environ.get("DEMO_FROM", "2025-11-01"))
    last = date.fromisoformat(os.environ.get("DEMO_DATE", "2025-11-30"))
    customers = int(os.environ.get("DEMO_CUSTOMERS", "2000"))
    seed = int(os.environ.get("DEMO_SEED", "20251118"))
    timeout = float(os.environ.get("DEMO_TIMEOUT_S", "5400"))
    try:
        state = stack.up(cfg)
        api = stack.login(cfg, state)
        step(f"{BALANCE_DAG} unpaused; runs in progress waited for")
        was_paused = unpause_balance_dag(api)
        wait_idle(api, 900, "runs in progress")

        step(f"Application DB {cfg.app_db} recreated; {customers} synthetic customers (seed {seed})")
        reset_application_db(cfg, customers, seed)

        step(f"Backfill of {BALANCE_DAG}, {first} to {last}, through the scheduler; delivery tracking by asset")
        failures = run_backfill(cfg, api, first, last, timeout)

        step("Summary")
        subprocess.run([PYTHON, "-m", "premium.cli", "balance-summary", "--date", last.isoformat()], check=False)
        subprocess.run([PYTHON, "-m", "premium.cli", "campaign-summary", "--date", last.isoformat()], check=False)
        if was_paused:
            wait_idle(api, 300, "the last runs")
            api.set_paused(BALANCE_DAG, True)
        api.close()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    say(
        f"""
The stack stays up for you to explore: {state["ui_url"]} (user admin, password as shown above).
  {BALANCE_DAG}: a backfill run per day, mapped fetch_balances named by their chunks, every task's log
  {TRACKING_DAG}: runs started by the sms_submissions asset; poll_delivery_status deferred between polls
  {BALANCE_DAG} is {"paused again, as make up leaves it" if was_paused else "unpaused"}
Stop everything with: make down"""
    )
    say(f"  demo wall time     {_duration(time.monotonic() - started)}")
    if failures:
        print(f"{failures} run(s) failed: their task logs are in the UI", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
