"""The SMS stages under the real scheduler and triggerer (``airflow standalone``, LocalExecutor).

``dag.test()`` runs a deferred task's trigger in its own process and never shows a deferral to
a scheduler; here the wait really leaves the worker, and the submission's asset event really
schedules the tracking DAG. One Airflow, asset-triggered runs on (``use_job_schedule=True``);
the tests run in file order:

1. ``premium_balance_daily``, triggered through the REST API, qualifies the customers of check
   date D and waits for the send window in ``wait_for_send_window``: that instance is DEFERRED
   (in the triggerer, DateTimeTrigger; its pool counts it as deferred, nothing runs) until the
   send time, then resumes within the same try and ``submit_sms_batches`` starts after it;
2. the ``sms_submissions`` event of that run triggers ``premium_delivery_tracking``, whose
   ``poll_delivery_status`` defers between polls (a new trigger each time, never running
   meanwhile), then ``finalize_deliveries`` closes the run: every notification ends in the
   final status the carrier model gives (customers whose numbers it never brings to one opt
   out beforehand, so that tracking ends before its window: see ``customers``);
3. no customer phone number, first name or balance in any log file or XCom of these runs.

No catch-up run: with the job schedule on, unpausing a cron DAG without catchup creates a run
for its latest past tick (22:00 Asia/Jerusalem), and pausing cannot hold it off (a paused DAG's
runs do not progress either). So the DAGs start paused, the test triggers its run with exactly
that tick's logical date and only then unpauses: the scheduler finds the run in place and skips
to the next tick. D is therefore the date of the latest 22:00 tick (yesterday during the day,
today after 22:00), and the window opens at D + ``sms_send_offset_days`` (1 or 0) at a
``sms_send_time`` :data:`SEND_LEAD` after the trigger. The default ``sms_max_lag_days`` (1) applies:
D is a day old at most, as for the real evening run. A test starting less than
:data:`QUIET_BEFORE_TICK` before 22:00 local first waits for the tick to pass.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers
import psycopg
import pytest

from premium.notifications.failures import may_retry
from premium.notifications.window import campaign_id_for
from premium.settings import SmsSettings
from premium.simulators import carrier_model
from premium.synthetic import generate_rows
from tests.support import carrier as sms
from tests.support import env
from tests.support.bank import connection_json, expected_outcomes, load_synthetic_customers
from tests.support.carrier import OPEN_WINDOW
from tests.support.pii import pii_patterns
from tests.support.standalone import AirflowStandalone, TaskSample

pytestmark = pytest.mark.e2e

DAG_ID = "premium_balance_daily"
TRACKING_DAG_ID = "premium_delivery_tracking"
WAIT_TASK, SUBMIT_TASK = "wait_for_send_window", "submit_sms_batches"
POLL_TASK, FINALIZE_TASK = "poll_delivery_status", "finalize_deliveries"
BANK_POOL = "core_banking_api"
LOCAL = ZoneInfo("Asia/Jerusalem")
CUSTOMERS, SEED = 150, 11
# One fetch task: the stages before the wait take 10-25 s under the scheduler.
FAST = {"chunk_size": 200, "max_mapped_tasks": 1, "in_flight": 16, "backoff_multiplier_s": 0.001}
# The send window opens this long after the trigger: the stages before the wait, then the wait.
SEND_LEAD = timedelta(seconds=40)
MIN_DEFERRED_S = 10.0  # the wait must have been observed deferred at least this long
QUIET_BEFORE_TICK = timedelta(minutes=5)
# The deployment settings the tracking run (an asset-triggered run, no conf) reads. Every wait
# between polls lasts the full interval (see `customers`): a few seconds more than the harness's
# margin against Airflow's stale-success race after short deferrals (tests/support/standalone.py).
SETTINGS = {"delivery": {"poll_interval_s": 4, "window_s": 120}, "sms": {"backoff_multiplier_s": 0.001, **OPEN_WINDOW}}
# Carrier statuses: SENT 2.5 s and final 15 s after acceptance: still open at the first poll.
CARRIER_TIME_SCALE = "0.5"
FINAL = {"DELIVERED", "FAILED", "UNDELIVERABLE", "UNCONFIRMED"}
DEFERRED_MARKER = "Pausing task as DEFERRED"
FIRED_MARKER = "Trigger fired event"


# -- the check date ----------------------------------------------------------------------------------


def latest_tick(now: datetime) -> datetime:
    """The latest 22:00 Asia/Jerusalem at or before ``now``: the logical date of the run the
    scheduler creates for ``0 22 * * *`` without catchup."""
    local = now.astimezone(LOCAL)
    tick = datetime.combine(local.date(), clock(22), tzinfo=LOCAL)
    if tick > local:
        tick = datetime.combine(local.date() - timedelta(days=1), clock(22), tzinfo=LOCAL)
    return tick


@pytest.fixture(scope="module")
def tick() -> datetime:
    """The tick our run stands in for; never one that falls while the module runs."""
    now = datetime.now(UTC)
    upcoming = datetime.combine(latest_tick(now).date() + timedelta(days=1), clock(22), tzinfo=LOCAL)
    if upcoming - now < QUIET_BEFORE_TICK:
        wait = (upcoming - now).total_seconds() + 5
        print(f"\n[e2e] {upcoming.isoformat()} is a scheduled tick: waiting {wait:.0f}s for it to pass")
        time.sleep(wait)
    return latest_tick(datetime.now(UTC))


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def customers(app_db, tick, tmp_path_factory) -> list[dict[str, str]]:
    """Every table emptied, our customers, and 29 passing days before D: whoever passes on D
    (fetched by the run) has 30 passing checks in the window and qualifies.

    Customers whose messages the carrier model never brings to a final status (SENT or
    NO_STATUS, first attempt or retry) withdraw their consent: with them, tracking would run to
    the end of its window, and its last wait, up to the deadline, could be arbitrarily short."""
    from tests.support.db import truncate_all

    truncate_all(app_db)
    load_synthetic_customers(app_db, tmp_path_factory.mktemp("customers"), CUSTOMERS, seed=SEED)
    sms.make_everyone_pass(app_db, tick.date() - timedelta(days=1), 29)
    rows = list(generate_rows(CUSTOMERS, SEED))
    phones = [p for r in rows if (p := _e164(r["phone_number"]))]
    assert len(phones) == len(set(phones)), "the carrier model counts attempts per number"
    stuck = [r["customer_id"] for r in rows if _carrier_outcome(r)[0] in ("SENT", "NO_STATUS")]
    with psycopg.connect(**app_db) as conn:
        conn.execute("UPDATE customers SET sms_consent = false WHERE customer_id = ANY(%s)", (stuck,))
    return [{**r, "sms_consent": "false"} if r["customer_id"] in stuck else r for r in rows]


@pytest.fixture(scope="module")
def core_bank():
    from premium.simulators.runner import SimulatorProcess

    with SimulatorProcess(
        args=["--auth", "api_key", "--secret-env", "BANK_SIM_SECRET"],
        env={"BANK_SIM_SECRET": env.TEST_BANK_API_KEY},
        name="core-banking-e2e-sms",
    ) as sim:
        yield sim


@pytest.fixture(scope="module")
def carrier():
    with sms.carrier("primary", env.TEST_SMS_API_KEY, "--time-scale", CARRIER_TIME_SCALE) as sim:
        yield sim


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory) -> Path:
    """The deployment's settings file (PREMIUM_SETTINGS_FILE): what an administrator changes, never a run."""
    path = tmp_path_factory.mktemp("deployment") / "premium-settings.json"
    path.write_text(json.dumps(SETTINGS))
    return path


@pytest.fixture(scope="module")
def airflow(app_db, customers, core_bank, carrier, settings_file, tmp_path_factory):
    app = app_db
    connections = {
        "premium_db": f"postgresql://{app['user']}@{app['host']}:{app['port']}/{app['dbname']}",
        "premium_pii_keys": json.dumps({"conn_type": "generic", "extra": env.TEST_PII_KEYS}),
        "core_banking": connection_json(core_bank),
        "sms_carrier": sms.connection_json(carrier, env.TEST_SMS_API_KEY),
    }
    started = time.monotonic()
    with AirflowStandalone(
        workdir=tmp_path_factory.mktemp("airflow-e2e-sms"),
        dag_files=[env.ROOT / "dags" / f"{DAG_ID}.py", env.ROOT / "dags" / f"{TRACKING_DAG_ID}.py"],
        connections=connections,
        extra_env={"PREMIUM_SETTINGS_FILE": str(settings_file)},
        use_job_schedule=True,
        dags_paused_at_creation=True,
    ) as af:
        af.create_pool(BANK_POOL, 1, "core-banking API: one fetch task at a time (e2e)")
        dags = af.wait_for_dags([DAG_ID, TRACKING_DAG_ID])
        assert all(d["is_paused"] for d in dags.values())
        af.set_paused(TRACKING_DAG_ID, False)  # asset-scheduled: no run until the event
        print(f"\n[e2e] Airflow up in {af.startup_seconds:.0f}s, DAGs parsed after {time.monotonic() - started:.0f}s")
        yield af


@pytest.fixture(scope="module")
def campaign(airflow, tick, settings_file) -> dict:
    """Our run of D, in place of the scheduler's run of the latest tick; the samples of its wait."""
    # The scheduler's next run is that of the latest tick, and nothing has run yet.
    assert airflow.next_scheduled_logical_date(DAG_ID) == tick
    assert airflow.dag_runs(DAG_ID) == []
    day = tick.date()
    target = (datetime.now(UTC) + SEND_LEAD).replace(microsecond=0)
    local = target.astimezone(LOCAL)
    # The window is the deployment's (a run cannot move it): opened SEND_LEAD from now, any weekday, any hour.
    window = {"send_offset_days": (local.date() - day).days, "send_time": local.strftime("%H:%M:%S")}
    settings_file.write_text(json.dumps({**SETTINGS, "sms": {**SETTINGS["sms"], **window}}))
    conf = {**FAST, "sms_backoff_multiplier_s": 0.001}
    started = time.monotonic()
    run = airflow.trigger_dag(DAG_ID, logical_date=tick, conf=conf)
    airflow.set_paused(DAG_ID, False)
    samples = airflow.watch_task(DAG_ID, run["dag_run_id"], WAIT_TASK, timeout=SEND_LEAD.total_seconds() + 180)
    final = airflow.wait_for_run(DAG_ID, run["dag_run_id"], timeout=120)
    # Our run is the DAG's only one: the scheduler skipped the tick it stands in for.
    runs = airflow.dag_runs(DAG_ID)
    airflow.set_paused(DAG_ID, True)
    print(
        f"[e2e] run of {day} done in {time.monotonic() - started:.0f}s "
        f"(window opened {SEND_LEAD.total_seconds():.0f}s after the trigger)"
    )
    return {"tick": tick, "day": day, "target": target, "run": final, "runs": runs, "samples": samples}


@pytest.fixture(scope="module")
def tracking(airflow, campaign) -> dict:
    """The tracking run the submission's event triggered; the samples of its poll task."""
    started = time.monotonic()
    deadline = started + 90
    while not (runs := airflow.dag_runs(TRACKING_DAG_ID)):
        assert time.monotonic() < deadline, f"no {TRACKING_DAG_ID} run 90s after the submission"
        time.sleep(1.0)
    run_id = runs[0]["dag_run_id"]
    samples = airflow.watch_task(TRACKING_DAG_ID, run_id, POLL_TASK, timeout=240)
    final = airflow.wait_for_run(TRACKING_DAG_ID, run_id, timeout=120)
    print(f"[e2e] tracking run {run_id} done {time.monotonic() - started:.0f}s after the submission")
    return {"run": final, "runs": airflow.dag_runs(TRACKING_DAG_ID), "samples": samples}


# -- helpers -----------------------------------------------------------------------------------------


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _states(samples: list[TaskSample]) -> str:
    """The sequence of states, runs collapsed: "None scheduled queued running deferred×23 …"."""
    out: list[str] = []
    for s in samples:
        label = str(s.state)
        if out and out[-1].split("×")[0] == label:
            n = int(out[-1].split("×")[1]) if "×" in out[-1] else 1
            out[-1] = f"{label}×{n + 1}"
        else:
            out.append(label)
    return " ".join(out)


def _torn(samples: list[TaskSample], i: int) -> bool:
    """Whether sample ``i`` is a torn read at the end of a deferral: the REST API reads the task
    instance row and then lazy-loads its trigger in a second SELECT, so a read that straddles the
    trigger firing (instance rescheduled, trigger row cleaned up) shows "deferred" with no trigger.
    Only a single such sample, with no deferred pool slot, counts as torn; an instance that stays
    deferred without a trigger is still caught."""
    s = samples[i]
    if s.state != "deferred" or s.trigger_id is not None:
        return False
    after = samples[i + 1] if i + 1 < len(samples) else None
    return (after is None or after.state != "deferred" or after.trigger_id is not None) and s.pool_deferred == 0


def _deferrals(samples: list[TaskSample]) -> list[list[TaskSample]]:
    """The samples of each observed deferral (consecutive deferred samples of one trigger)."""
    episodes: list[list[TaskSample]] = []
    torn = {i for i in range(len(samples)) if _torn(samples, i)}
    samples = [s for i, s in enumerate(samples) if i not in torn]
    for prev, s in zip([None, *samples], samples, strict=False):
        if s.state != "deferred":
            continue
        if prev is not None and prev.state == "deferred" and prev.trigger_id == s.trigger_id:
            episodes[-1].append(s)
        else:
            episodes.append([s])
    return episodes


def _assert_nothing_ran_while_deferred(samples: list[TaskSample], trigger_class: str) -> None:
    """Between the first and the last deferred sample of a wait the instance was never anything
    but deferred on a trigger of ``trigger_class`` run by the triggerer; each pool reading taken
    between two deferred samples of one trigger shows no running slot and the deferred one."""
    for episode in _deferrals(samples):
        assert all(s.trigger_classpath and s.trigger_classpath.endswith(trigger_class) for s in episode), episode
        assert {s.try_number for s in episode} == {1}
        for s in episode[:-1]:  # read after s and before the next sample, deferred on the same trigger
            assert (s.pool_running, s.pool_deferred) == (0, 1), f"pool while deferred: {s}"


def _task_log(airflow: AirflowStandalone, dag_id: str, run_id: str, task_id: str) -> tuple[str, list[str]]:
    """The worker's log of try 1 and the texts of the trigger logs written next to it."""
    files = airflow.log_files(dag_id, run_id, task_id)
    worker = [p for p in files if p.name == "attempt=1.log"]
    triggers = [p for p in files if p.name.startswith("attempt=1.log.trigger.")]
    assert worker, f"no task log of {task_id} among {files}"
    read = lambda p: p.read_text(encoding="utf-8", errors="replace")  # noqa: E731
    return read(worker[0]), [read(p) for p in triggers]


def _e164(raw: str) -> str | None:
    try:
        parsed = phonenumbers.parse(raw, "IL")
    except phonenumbers.NumberParseException:
        return None
    if not (
        phonenumbers.is_valid_number(parsed) and phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.MOBILE
    ):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _carrier_outcome(row: dict[str, str]) -> tuple[str | None, int]:
    """(final notification status, attempts) of a message to the row's number, from the carrier
    model and the retry rules alone; (None, 0) for a number that is no valid mobile."""
    phone = _e164(row["phone_number"])
    if phone is None:
        return None, 0
    if carrier_model.invalid_at_submission(phone):
        return "UNDELIVERABLE", 1
    attempt, settings = 1, SmsSettings()
    while True:
        outcome = carrier_model.outcome_for(phone, attempt - 1)
        if outcome.status == "FAILED" and may_retry(outcome.status_code, attempt, settings):
            attempt += 1
            continue
        return outcome.status, attempt


def _expected_qualified(conninfo: dict, rows: list[dict[str, str]], day: date) -> dict[str, str]:
    """customer_id -> E.164 of those who qualify on ``day``: active, consenting, a valid mobile
    number, and a passing check of an active account on ``day`` (the 29 days before pass)."""
    outcomes = expected_outcomes(conninfo, day)
    out = {}
    for row in rows:
        phone = _e164(row["phone_number"])
        if row["status"] != "ACTIVE" or row["sms_consent"] != "true" or phone is None:
            continue
        outcome = outcomes.get(row["account_id"], ("not_found",))
        if outcome[0] == "ok" and outcome[3] == "ACTIVE" and outcome[4]:
            out[row["customer_id"]] = phone
    return out


# -- tests -------------------------------------------------------------------------------------------


def test_the_send_window_wait_is_deferred_and_resumes_at_the_send_time(
    airflow, campaign, app_db, customers, carrier
) -> None:
    run, samples, target = campaign["run"], campaign["samples"], campaign["target"]
    run_id = run["dag_run_id"]
    # Ours is the DAG's only run: the scheduler did not add one for the tick it stands in for.
    assert [r["dag_run_id"] for r in campaign["runs"]] == [run_id]
    assert (run["run_type"], _ts(run["logical_date"])) == ("manual", campaign["tick"])

    # The wait: deferred once, on its DateTimeTrigger, never running meanwhile, for most of the lead.
    episodes = _deferrals(samples)
    assert len(episodes) == 1, _states(samples)
    first, last = samples.index(episodes[0][0]), samples.index(episodes[0][-1])
    assert all(s.state == "deferred" for s in samples[first : last + 1]), _states(samples)
    _assert_nothing_ran_while_deferred(samples, "DateTimeTrigger")
    deferred_s = (episodes[0][-1].asked - episodes[0][0].answered).total_seconds()
    assert deferred_s >= MIN_DEFERRED_S, f"deferred for {deferred_s:.1f}s only: {_states(samples)}"
    # Still deferred a moment before the window opened, and resumed (same try) only after it.
    assert episodes[0][-1].asked >= target - timedelta(seconds=2), (episodes[0][-1], target)
    assert samples[-1].state == "success"
    tis = {ti["task_id"]: ti for ti in airflow.task_instances(DAG_ID, run_id)}
    assert _ts(tis[WAIT_TASK]["end_date"]) >= target
    assert [t["try_number"] for t in airflow.task_tries(DAG_ID, run_id, WAIT_TASK)] == [1]
    worker_log, trigger_logs = _task_log(airflow, DAG_ID, run_id, WAIT_TASK)
    assert worker_log.count(DEFERRED_MARKER) == 1
    assert len(trigger_logs) == 1 and FIRED_MARKER in trigger_logs[0]

    # Then the submission, after the window opened.
    assert {t: ti["state"] for t, ti in tis.items()} == dict.fromkeys(tis, "success")
    assert _ts(tis[SUBMIT_TASK]["start_date"]) >= target

    day = campaign["day"]
    expected = _expected_qualified(app_db, customers, day)
    assert expected, "the fixture should make some customers qualify"
    with psycopg.connect(**app_db) as conn:
        mode, status, send_after, qualified = conn.execute(
            "SELECT mode, status, send_after, qualified FROM sms_campaign_runs WHERE check_date = %s", (day,)
        ).fetchone()
        notified = {
            r[0] for r in conn.execute("SELECT customer_id FROM sms_notifications WHERE check_date = %s", (day,))
        }
    assert (mode, status, send_after, qualified) == ("SEND", "DONE", target, len(expected))
    assert notified == set(expected)
    # The carrier accepted one first attempt for each of them but the numbers it rejects as invalid
    # (the tracking run may have sent retries since: attempts 2 and 3).
    ids = [m["messageId"].rsplit("-", 2)[-2:] for m in carrier.call("GET", "/_sim/received")]
    firsts = sorted(customer for customer, attempt in ids if attempt == "1")
    assert firsts == sorted(c for c, phone in expected.items() if not carrier_model.invalid_at_submission(phone))


def test_the_submission_triggers_delivery_tracking_which_defers_between_polls(
    airflow, campaign, tracking, app_db, customers
) -> None:
    run, samples = tracking["run"], tracking["samples"]
    run_id = run["dag_run_id"]
    assert [r["dag_run_id"] for r in tracking["runs"]] == [run_id]
    assert run["run_type"] == "asset_triggered"
    events = airflow.upstream_asset_events(TRACKING_DAG_ID, run_id)
    assert [(e["name"], e["source_dag_id"], e["source_run_id"], e["source_task_id"]) for e in events] == [
        ("sms_submissions", DAG_ID, campaign["run"]["dag_run_id"], SUBMIT_TASK)
    ]
    campaign_id = campaign_id_for(campaign["day"])
    assert events[0]["extra"]["campaign_id"] == campaign_id

    with psycopg.connect(**app_db) as conn:
        polls, status, counts, deadline, finished = conn.execute(
            "SELECT polls, status, counts, deadline, finished_at FROM delivery_tracking_runs WHERE dag_run_id = %s",
            (run_id,),
        ).fetchone()
        got = {
            r[0]: (r[1], r[2])
            for r in conn.execute(
                "SELECT customer_id, status, attempts FROM sms_notifications WHERE campaign_id = %s", (campaign_id,)
            )
        }
    # Every poll but the last deferred the sensor, each time on a new trigger; the instance was
    # never running while deferred, and all of it happened within its first try.
    assert polls >= 2, f"one poll only: nothing to defer for ({_states(samples)})"
    worker_log, trigger_logs = _task_log(airflow, TRACKING_DAG_ID, run_id, POLL_TASK)
    assert worker_log.count(DEFERRED_MARKER) == worker_log.count("next poll in") == polls - 1
    assert len(trigger_logs) == 1 and FIRED_MARKER in trigger_logs[0]
    episodes = _deferrals(samples)
    assert len(episodes) >= 1 and len({e[0].trigger_id for e in episodes}) == len(episodes), _states(samples)
    _assert_nothing_ran_while_deferred(samples, "DateTimeTrigger")
    assert [t["try_number"] for t in airflow.task_tries(TRACKING_DAG_ID, run_id, POLL_TASK)] == [1]
    tis = {ti["task_id"]: ti["state"] for ti in airflow.task_instances(TRACKING_DAG_ID, run_id)}
    assert tis == {"register_submissions": "success", POLL_TASK: "success", FINALIZE_TASK: "success"}

    # Tracking ended by itself, before its window closed: every notification in the final status
    # (and after the number of attempts) the carrier model and the retry rules give.
    assert status == "DONE" and finished < deadline
    expected = {c: _carrier_outcome(r) for r in customers if (c := r["customer_id"]) in got}
    assert set(got) == set(_expected_qualified(app_db, customers, campaign["day"]))
    assert got == expected
    assert {s for s, _ in got.values()} <= FINAL
    final = Counter(s for s, _ in got.values())
    assert {k: counts.get(k.lower(), 0) for k in final} == dict(final)
    print(f"[e2e] {polls} polls, {len(episodes)} deferrals observed, final statuses {dict(final)}")


def test_no_customer_pii_in_task_logs_or_xcom(airflow, tracking, app_db, customers) -> None:
    """Runs last: every log file (task and trigger logs), the console output and every XCom."""
    with psycopg.connect(**app_db) as conn:
        balances = [r[0] for r in conn.execute("SELECT balance FROM daily_balance_checks")]
    patterns = pii_patterns(customers, balances)
    files = airflow.all_log_files()
    for dag_id in (DAG_ID, TRACKING_DAG_ID):
        assert any(f"dag_id={dag_id}" in str(p) for p in files), dag_id
    assert any(r[2] == POLL_TASK for r in airflow.xcom_rows())
    findings = airflow.find_in_logs_and_xcom(patterns)
    # Only where and what kind: the values themselves are PII and stay out of the report.
    assert not findings, f"customer PII found in: {sorted(set(findings))}"
