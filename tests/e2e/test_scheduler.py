"""premium_balance_daily under the real scheduler (``airflow standalone``, LocalExecutor).

The only place where the pool, the scheduler's handling of mapped tasks, runs and backfills
created through the REST API, and task-log masking really run (``dag.test()`` ignores pools
and does not mask). The tests share one Airflow and run in file order:

1. a triggered run of 2025-11-18: the balance stage's records, the 3 mapped fetch tasks in the
   one-slot pool never overlapping, their rendered map indexes;
2. a backfill of 2025-11-03..04: exactly those two runs, each checked as of its own date;
3. a probe DAG logs the bank API key: masked in every file under AIRFLOW_HOME/logs;
4. every run above ended in success, all stages included;
5. a run of 2025-11-10 with the bank refusing every call (401): the run ends failed at
   record_run, after closing the day; qualification and sending never run; one alert;
6. no customer phone number, first name or balance in any log file or XCom.

The SMS stages as the scheduler runs them (the deferred send-window wait, the asset-triggered
delivery tracking) are in ``test_sms_flow.py``, on an Airflow of their own: they need the job
schedule, which this module keeps off.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest

from tests.support import env
from tests.support.bank import connection_json, expected_outcomes, load_synthetic_customers, recorded_outcomes
from tests.support.pii import pii_patterns
from tests.support.standalone import AirflowStandalone, StandaloneError

pytestmark = pytest.mark.e2e

DAG_ID = "premium_balance_daily"
PROBE_DAG_ID = "premium_probe_masking"
BANK_POOL = "core_banking_api"
CUSTOMERS, SEED = 150, 11
# The scheduled run of 2025-11-18: 22:00 Asia/Jerusalem = 20:00 UTC.
LOGICAL = datetime(2025, 11, 18, 20, 0, tzinfo=UTC)
DAY = date(2025, 11, 18)
REFUSED_LOGICAL = datetime(2025, 11, 10, 20, 0, tzinfo=UTC)
REFUSED_DAY = date(2025, 11, 10)
BACKFILL_DAYS = (date(2025, 11, 3), date(2025, 11, 4))
HOSTILE_LOGICAL = datetime(2025, 11, 12, 20, 0, tzinfo=UTC)
HOSTILE_DAY = date(2025, 11, 12)
BALANCE_TASKS = ("plan_chunks", "fetch_balances", "record_run")
FAST = {"chunk_size": 40, "max_mapped_tasks": 3, "in_flight": 8, "backoff_multiplier_s": 0.001}
PROBE_DIR = Path(__file__).parent / "probe_dags"


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def customers(app_db, tmp_path_factory) -> list[dict[str, str]]:
    """The `db` fixture's semantics for the module: every table emptied, then our customers."""
    from premium.synthetic import generate_rows
    from tests.support.db import truncate_all

    truncate_all(app_db)
    load_synthetic_customers(app_db, tmp_path_factory.mktemp("customers"), CUSTOMERS, seed=SEED)
    return list(generate_rows(CUSTOMERS, SEED))


@pytest.fixture(scope="module")
def core_bank():
    from premium.simulators.runner import SimulatorProcess

    with SimulatorProcess(
        args=["--auth", "api_key", "--secret-env", "BANK_SIM_SECRET"],
        env={"BANK_SIM_SECRET": env.TEST_BANK_API_KEY},
        name="core-banking-e2e",
    ) as sim:
        yield sim


@pytest.fixture(scope="module")
def airflow(app_db, customers, core_bank, tmp_path_factory):
    app = app_db
    connections = {
        "premium_db": f"postgresql://{app['user']}@{app['host']}:{app['port']}/{app['dbname']}",
        "premium_pii_keys": json.dumps({"conn_type": "generic", "extra": env.TEST_PII_KEYS}),
        "core_banking": connection_json(core_bank),
    }
    started = time.monotonic()
    with AirflowStandalone(
        workdir=tmp_path_factory.mktemp("airflow-e2e"),
        dag_files=[env.ROOT / "dags" / f"{DAG_ID}.py", *sorted(PROBE_DIR.glob("*.py"))],
        connections=connections,
    ) as af:
        pool = af.create_pool(BANK_POOL, 1, "core-banking API: one fetch task at a time (e2e)")
        assert pool["slots"] == 1
        dags = af.wait_for_dags([DAG_ID, PROBE_DAG_ID])
        assert not any(d["is_paused"] for d in dags.values())
        print(f"\n[e2e] Airflow up in {af.startup_seconds:.0f}s, DAGs parsed after {time.monotonic() - started:.0f}s")
        yield af


# -- helpers -----------------------------------------------------------------------------------------


def _run_record(conninfo: dict, day: date) -> tuple | None:
    with psycopg.connect(**conninfo) as conn:
        return conn.execute(
            "SELECT status, accounts_planned, accounts_checked, mapped_tasks, dag_run_id FROM balance_check_runs "
            "WHERE check_date = %s",
            (day,),
        ).fetchone()


def _active_accounts(conninfo: dict) -> int:
    with psycopg.connect(**conninfo) as conn:
        return conn.execute("SELECT count(*) FROM customers WHERE status = 'ACTIVE'").fetchone()[0]


def _expected_labels(active: int, chunk_size: int, max_tasks: int) -> list[str]:
    """Chunks of chunk_size accounts, spread evenly over at most max_tasks (first ones bigger)."""
    sizes = [min(chunk_size, active - i * chunk_size) for i in range(math.ceil(active / chunk_size))]
    total, groups = len(sizes), min(max_tasks, len(sizes))
    labels, start = [], 0
    for g in range(groups):
        n = total // groups + (1 if g < total % groups else 0)
        first, last = start + 1, start + n
        span = f"chunk {first}" if n == 1 else f"chunks {first}-{last}"
        labels.append(f"{span} of {total} ({sum(sizes[start : start + n])} accounts)")
        start += n
    return labels


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _assert_serialized(tis: list[dict]) -> None:
    """No two task instances ran at the same time: each ended before the next one started."""
    spans = sorted((_ts(ti["start_date"]), _ts(ti["end_date"]), f"{ti['dag_run_id']}[{ti['map_index']}]") for ti in tis)
    for (s1, e1, a), (s2, _, b) in zip(spans, spans[1:], strict=False):
        assert s1 <= e1 <= s2, f"{a} ran {s1}..{e1}, overlapping {b} which started {s2}"


def _fetch_tis(tis: list[dict]) -> list[dict]:
    return sorted((ti for ti in tis if ti["task_id"] == "fetch_balances"), key=lambda ti: ti["map_index"])


def _balance_stage(airflow: AirflowStandalone, run_id: str) -> list[dict]:
    """Wait for the balance stage of a run (record_run runs last, whatever the fetches did) and
    require every task of it to have succeeded; its task instances. The stages after it are
    checked by test_every_run_of_the_module_succeeds."""
    tis = airflow.wait_for_tasks(DAG_ID, run_id, BALANCE_TASKS, timeout=240)
    states = {(ti["task_id"], ti["state"]) for ti in tis if ti["task_id"] in BALANCE_TASKS}
    assert states == {(t, "success") for t in BALANCE_TASKS}, airflow.describe_run(DAG_ID, run_id)
    return tis


# -- tests -------------------------------------------------------------------------------------------


def test_triggered_run_fetches_through_the_one_slot_pool(airflow, app_db) -> None:
    started = time.monotonic()
    run = airflow.trigger_dag(DAG_ID, logical_date=LOGICAL, conf=FAST)
    assert run["logical_date"].startswith("2025-11-18T20:00:00")
    tis = _balance_stage(airflow, run["dag_run_id"])
    print(f"[e2e] balance stage of the triggered run of {DAY} done in {time.monotonic() - started:.0f}s")

    status, planned, checked, mapped, dag_run_id = _run_record(app_db, DAY)
    assert (status, mapped, dag_run_id) == ("COMPLETE", 3, run["dag_run_id"])
    assert planned == _active_accounts(app_db)
    assert recorded_outcomes(app_db, DAY) == expected_outcomes(app_db, DAY)

    fetch = _fetch_tis(tis)
    assert [ti["map_index"] for ti in fetch] == [0, 1, 2]
    assert {(ti["pool"], ti["pool_slots"], ti["state"]) for ti in fetch} == {(BANK_POOL, 1, "success")}
    # One slot: the scheduler never ran two of them at once (dag.test() would not even look).
    _assert_serialized(fetch)
    labels = _expected_labels(_active_accounts(app_db), FAST["chunk_size"], FAST["max_mapped_tasks"])
    assert labels[0] == "chunks 1-2 of 4 (80 accounts)"
    assert [ti["rendered_map_index"] for ti in fetch] == labels


def test_backfill_of_two_earlier_dates_checks_each_as_of_its_date(airflow, app_db) -> None:
    # Naive dates are UTC midnight and the runs are at 22:00 Asia/Jerusalem (20:00 UTC in November):
    # 2025-11-03..2025-11-04 as naive dates would miss the 4th's run (2025-11-04T20:00Z > to_date).
    naive = airflow.create_backfill(DAG_ID, "2025-11-03", "2025-11-04", conf=FAST, dry_run=True)
    assert [b["logical_date"][:16] for b in naive["backfills"]] == ["2025-11-03T20:00"]
    # Local-day bounds select exactly the runs that check 2025-11-03 and 2025-11-04.
    frm, to = "2025-11-03T00:00:00+02:00", "2025-11-04T23:59:59+02:00"
    dry = airflow.create_backfill(DAG_ID, frm, to, conf=FAST, dry_run=True)
    assert [b["logical_date"][:16] for b in dry["backfills"]] == ["2025-11-03T20:00", "2025-11-04T20:00"]

    started = time.monotonic()
    # The backfill's own max_active_runs applies, not the DAG's (1): both dates run at once.
    backfill = airflow.create_backfill(DAG_ID, frm, to, conf=FAST, max_active_runs=2)
    runs = [r for r in airflow.dag_runs(DAG_ID) if r["run_type"] == "backfill"]
    assert sorted(r["logical_date"][:16] for r in runs) == ["2025-11-03T20:00", "2025-11-04T20:00"]
    assert all(r["conf"] == FAST for r in runs)
    for r in runs:
        _balance_stage(airflow, r["dag_run_id"])
    print(
        f"[e2e] balance stage of backfill {backfill['id']} ({len(runs)} runs) done in {time.monotonic() - started:.0f}s"
    )

    for day in BACKFILL_DAYS:
        record = _run_record(app_db, day)
        assert record is not None and record[0] == "COMPLETE", (day, record)
        assert recorded_outcomes(app_db, day) == expected_outcomes(app_db, day)
    # Balances are as of each run's date, not of today: the two days differ from each other.
    assert recorded_outcomes(app_db, BACKFILL_DAYS[0]) != recorded_outcomes(app_db, BACKFILL_DAYS[1])

    # The pool held across every run of the module, the two concurrent backfill runs included.
    all_fetch = [
        ti for r in airflow.dag_runs(DAG_ID) for ti in _fetch_tis(airflow.task_instances(DAG_ID, r["dag_run_id"]))
    ]
    assert len(all_fetch) == 9
    _assert_serialized(all_fetch)


def test_connection_secret_is_masked_in_task_logs(airflow) -> None:
    secret = env.TEST_BANK_API_KEY
    run = airflow.trigger_dag(PROBE_DAG_ID, logical_date=None)
    airflow.wait_for_run(PROBE_DAG_ID, run["dag_run_id"], timeout=120)

    files = airflow.log_files(PROBE_DAG_ID, run["dag_run_id"], "log_bank_credentials")
    assert files, f"no task log under {airflow.logs_dir}"
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    sentence = [line for line in text.splitlines() if "probe sentence" in line]
    headers = [line for line in text.splitlines() if "probe headers" in line]
    stdout = [line for line in text.splitlines() if "probe stdout" in line]
    assert sentence and headers and stdout, f"the probe's lines are missing from {files}"
    for line in sentence + headers + stdout:
        assert "***" in line and secret not in line

    leaking = [
        str(p.relative_to(airflow.logs_dir)) for p in airflow.all_log_files() if secret.encode() in p.read_bytes()
    ]
    assert not leaking, f"the bank API key appears in {leaking}"


@pytest.mark.xfail(
    strict=True,
    reason="Airflow 3.3.2: the LocalExecutor echoes every task log line to the scheduler's stdout "
    "(subprocess_logs_to_stdout=True in local_executor.py) without the task log's masking; "
    "docker-compose.yaml runs the LocalExecutor, so its scheduler container log shows connection secrets",
)
def test_scheduler_console_does_not_repeat_secrets(airflow) -> None:
    """Runs after the probe: its secret must not be in the components' console output either."""
    assert env.TEST_BANK_API_KEY.encode() not in airflow.output_log.read_bytes()


def test_every_run_of_the_module_succeeds(airflow) -> None:
    """Every run above, all its stages (the SMS stage of those old dates is LATE_NO_SEND:
    it records qualification and sends nothing), ended in success."""
    deadline = time.monotonic() + 90
    runs = [(dag_id, r["dag_run_id"]) for dag_id in (DAG_ID, PROBE_DAG_ID) for r in airflow.dag_runs(dag_id)]
    assert len(runs) == 4
    failures = []
    for dag_id, run_id in runs:
        try:
            airflow.wait_for_run(dag_id, run_id, timeout=max(deadline - time.monotonic(), 1))
        except StandaloneError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)


def test_a_day_the_bank_refuses_our_credentials_fails_the_run_before_qualification(airflow, app_db, core_bank) -> None:
    """After the runs above (the DAG allows one active run): every call answered 401."""
    core_bank.set_faults({"error_rates": {"401": 1.0}})
    try:
        run = airflow.trigger_dag(DAG_ID, logical_date=REFUSED_LOGICAL, conf=FAST)
        airflow.wait_for_run(DAG_ID, run["dag_run_id"], timeout=240, expect="failed")
    finally:
        core_bank.set_faults({})
    tis = airflow.task_instances(DAG_ID, run["dag_run_id"])
    states: dict[str, set] = {}
    for ti in tis:
        states.setdefault(ti["task_id"], set()).add(ti["state"])
    assert states["fetch_balances"] == {"failed"} and states["record_run"] == {"failed"}, states
    for task_id in ("qualify_customers", "plan_send", "wait_for_send_window", "submit_sms_batches"):
        assert states.get(task_id, {None}) <= {"upstream_failed", None}, (task_id, states)
    assert _run_record(app_db, REFUSED_DAY)[0] == "FAILED"
    with psycopg.connect(**app_db) as conn:
        qualified = conn.execute(
            "SELECT count(*) FROM qualification_outcomes WHERE check_date = %s", (REFUSED_DAY,)
        ).fetchone()[0]
        alerts = [
            r[0] for r in conn.execute("SELECT kind FROM alerts WHERE run_id = %s ORDER BY id", (run["dag_run_id"],))
        ]
    assert qualified == 0
    assert alerts == ["bank_credentials_rejected"]  # once for the day, not once per fetch task


def test_a_trigger_cannot_change_what_customers_read(airflow, app_db, core_bank) -> None:
    """A user allowed to trigger runs, through the REST API the UI uses: a declared knob out of range is
    refused at trigger time; a deployment setting in the conf fails the run before anything is fetched."""
    refused = airflow.post(
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        {"logical_date": HOSTILE_LOGICAL.isoformat(), "conf": {**FAST, "chunk_size": 0}},
        expect=(400, 422),
    )
    assert "chunk_size" in str(refused)
    before = core_bank.stats()["requests_total"]
    hostile = {**FAST, "sms_bank_name": "Verify at premium-bank.example", "sms_callback_url": "https://x.example/c"}
    run = airflow.trigger_dag(DAG_ID, logical_date=HOSTILE_LOGICAL, conf=hostile)
    airflow.wait_for_run(DAG_ID, run["dag_run_id"], timeout=240, expect="failed")
    states = {ti["task_id"]: ti["state"] for ti in airflow.task_instances(DAG_ID, run["dag_run_id"])}
    assert states["plan_chunks"] == "failed", states
    assert "success" not in states.values(), states
    assert core_bank.stats()["requests_total"] == before
    assert _run_record(app_db, HOSTILE_DAY) is None


def test_no_customer_pii_in_task_logs_or_xcom(airflow, app_db, customers) -> None:
    """Runs last: every log file and every XCom the runs above produced, against the plaintext."""
    with psycopg.connect(**app_db) as conn:
        balances = [r[0] for r in conn.execute("SELECT balance FROM daily_balance_checks")]
        dates = {r[0] for r in conn.execute("SELECT DISTINCT check_date FROM daily_balance_checks")}
    assert dates == {DAY, *BACKFILL_DAYS} and len(balances) > 300
    patterns = pii_patterns(customers, balances)

    files = airflow.all_log_files()
    assert any("dag_id=premium_balance_daily" in str(p) for p in files)
    assert any(r[2] == "plan_chunks" for r in airflow.xcom_rows())
    # The console output too: with the LocalExecutor it repeats every task log line, unmasked.
    findings = airflow.find_in_logs_and_xcom(patterns)
    # Only where and what kind: the values themselves are PII and stay out of the report.
    assert not findings, f"customer PII found in: {sorted(set(findings))}"
