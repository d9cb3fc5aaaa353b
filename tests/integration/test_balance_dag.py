"""premium_balance_daily under dag.test(): the DAG wiring, the run record, alerts and the asset."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import psycopg
import pytest

from tests.support.bank import connection_json, expected_outcomes, load_synthetic_customers, recorded_outcomes

pytestmark = pytest.mark.integration

DAG_ID = "premium_balance_daily"
# The scheduled run of 2025-11-18: 22:00 Asia/Jerusalem = 20:00 UTC.
LOGICAL = datetime(2025, 11, 18, 20, 0, tzinfo=UTC)
DAY = date(2025, 11, 18)
FAST = {"chunk_size": 40, "max_mapped_tasks": 3, "in_flight": 8, "backoff_multiplier_s": 0.001}


@pytest.fixture
def base(db, app_db, tmp_path, airflow_db, bank, monkeypatch):
    load_synthetic_customers(app_db, tmp_path, 150, seed=11)
    monkeypatch.setenv("AIRFLOW_CONN_CORE_BANKING", connection_json(bank))
    return app_db


def _run_record(conninfo, day=DAY):
    with psycopg.connect(**conninfo) as conn:
        return conn.execute(
            "SELECT status, accounts_planned, accounts_checked, mapped_tasks FROM balance_check_runs "
            "WHERE check_date = %s",
            (day,),
        ).fetchone()


def _alerts(conninfo):
    with psycopg.connect(**conninfo) as conn:
        return [r[0] for r in conn.execute("SELECT kind FROM alerts ORDER BY id")]


def test_daily_run_records_every_account_and_publishes_the_asset(base) -> None:
    from tests.support.airflow import run_dag, task_states

    dag_run = run_dag(DAG_ID, LOGICAL, FAST)
    assert str(dag_run.state) == "success", task_states(dag_run)
    states = task_states(dag_run)
    assert len(states["fetch_balances"]) == 3  # mapped, bounded by max_mapped_tasks
    status, planned, checked, mapped = _run_record(base)
    assert status == "COMPLETE" and mapped == 3
    assert recorded_outcomes(base, DAY) == expected_outcomes(base, DAY)

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "daily_balance_checks", AssetEvent.source_run_id == dag_run.run_id)
            .all()
        )
        assert len(events) == 1
        extra = dict(events[0].extra)
    assert extra["check_date"] == "2025-11-18" and extra["status"] == "COMPLETE"
    assert extra["accounts_checked"] == checked
    assert set(extra) == {"check_date", "status", "accounts_checked", "accounts_passing", "correlation_id"}

    # The same date again (a cleared-and-rerun or backfilled run): nothing added.
    before = recorded_outcomes(base, DAY)
    dag_run = run_dag(DAG_ID, LOGICAL, FAST)
    assert str(dag_run.state) == "success"
    assert recorded_outcomes(base, DAY) == before


DOWNSTREAM = ("qualify_customers", "plan_send", "wait_for_send_window", "submit_sms_batches")


def _qualification_rows(conninfo, day=DAY) -> int:
    with psycopg.connect(**conninfo) as conn:
        return conn.execute("SELECT count(*) FROM qualification_outcomes WHERE check_date = %s", (day,)).fetchone()[0]


def _asset_events(dag_run) -> int:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "daily_balance_checks", AssetEvent.source_run_id == dag_run.run_id)
            .count()
        )


def _assert_refused_day(conninfo, dag_run, unresolved: int) -> None:
    """The day failed at record_run after its bookkeeping; nothing downstream ran; one alert."""
    from tests.support.airflow import task_states

    states = task_states(dag_run)
    assert str(dag_run.state) == "failed", states
    assert set(states["fetch_balances"]) == {"failed"}
    assert states["record_run"] == ["failed"]
    for task_id in DOWNSTREAM:
        assert set(states.get(task_id, ["none"])) <= {"upstream_failed", "none", "None"}, (task_id, states)
    assert _qualification_rows(conninfo) == 0
    assert _asset_events(dag_run) == 0
    assert _alerts(conninfo) == ["bank_credentials_rejected"]  # once for the day, not once per fetch task
    with psycopg.connect(**conninfo) as conn:
        status, detail, finished = conn.execute(
            "SELECT status, detail, finished_at IS NOT NULL FROM balance_check_runs WHERE check_date = %s", (DAY,)
        ).fetchone()
        reasons = conn.execute(
            "SELECT reason, detail, count(*) FROM balance_check_failures WHERE check_date = %s "
            "AND reason = 'not_attempted' GROUP BY 1, 2",
            (DAY,),
        ).fetchall()
    assert (status, finished) == ("FAILED", True) and detail == "core banking refused the credentials (HTTP 401)"
    assert reasons == ([("not_attempted", detail, unresolved)] if unresolved else [])


def test_a_401_fails_the_run_loudly_and_alerts(base, bank, monkeypatch) -> None:
    from tests.support.airflow import run_dag

    monkeypatch.setenv("AIRFLOW_CONN_CORE_BANKING", connection_json(bank, api_key="revoked-key"))
    dag_run = run_dag(DAG_ID, LOGICAL, FAST)
    planned = _run_record(base)[1]
    _assert_refused_day(base, dag_run, unresolved=planned)  # every account resolved, as not reached
    assert recorded_outcomes(base, DAY) == {a: ("not_attempted",) for a in expected_outcomes(base, DAY)}
    # never retried: at most the requests that were in flight when the first 401 came back
    assert bank.stats()["by_status"]["401"] <= 3 * FAST["in_flight"]


def test_a_401_on_a_rerun_of_a_fetched_date_still_fails_the_run(base, bank, monkeypatch) -> None:
    """Every account of the date already has its check from an earlier run, so the tables alone
    look complete: the refusal itself must fail the day."""
    from tests.support.airflow import run_dag

    dag_run = run_dag(DAG_ID, LOGICAL, {**FAST, "dry_run": True})
    assert str(dag_run.state) == "success"
    before = recorded_outcomes(base, DAY)
    with psycopg.connect(**base, autocommit=True) as conn:
        conn.execute("DELETE FROM qualification_outcomes WHERE check_date = %s", (DAY,))

    bank.set_faults({"error_rates": {"401": 1.0}})  # the bank now refuses every call
    dag_run = run_dag(DAG_ID, LOGICAL, {**FAST, "dry_run": True})
    _assert_refused_day(base, dag_run, unresolved=0)
    assert recorded_outcomes(base, DAY) == before  # the earlier checks stand


def test_an_outage_past_the_threshold_skips_the_day_and_alerts(base, bank, monkeypatch) -> None:
    from tests.support.airflow import run_dag

    bank.set_faults({"outage": {"seconds": 120}})
    monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps({"balance": {"outage_threshold_s": 1}}))
    conf = {**FAST, "breaker_failures": 3, "breaker_reset_s": 0.2, "max_retries": 1}
    dag_run = run_dag(DAG_ID, LOGICAL, conf)
    assert str(dag_run.state) == "failed"
    assert _run_record(base)[0] == "SKIPPED_OUTAGE"
    assert "bank_outage_day_skipped" in _alerts(base)
    reasons = {v[0] for v in recorded_outcomes(base, DAY).values()}
    # the accounts tried once the bank was down (in flight, the probes) used up their retries; the rest were skipped
    assert "skipped_outage" in reasons and reasons <= {"skipped_outage", "failed_after_retries", "not_found", "ok"}
    # Later caught up by a backfill of the same date, as of that date.
    bank.set_faults({})
    dag_run = run_dag(DAG_ID, LOGICAL, FAST)
    assert str(dag_run.state) == "success"
    assert _run_record(base)[0] == "COMPLETE"
    assert recorded_outcomes(base, DAY) == expected_outcomes(base, DAY)
