"""The fetch stage against the core-banking simulator and PostgreSQL (no Airflow scheduler)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date

import psycopg
import pytest

from premium.banking import stage
from premium.banking.client import BankAuthError
from premium.settings import BalanceSettings
from tests.support import env
from tests.support.bank import endpoint_for, expected_outcomes, load_synthetic_customers, recorded_outcomes

pytestmark = pytest.mark.integration

DAY = date(2025, 11, 18)
RUN_ID = "manual__test"


@pytest.fixture
def customers(db, app_db, tmp_path):
    load_synthetic_customers(app_db, tmp_path, 400)
    return app_db


def fast(**kw) -> BalanceSettings:
    base = {
        "chunk_size": 50,
        "max_mapped_tasks": 3,
        "in_flight": 8,
        "request_timeout_s": 2.0,
        "backoff_multiplier_s": 0.001,
        "breaker_reset_s": 0.2,
        "outage_threshold_s": 60.0,
    }
    base.update(kw)
    return BalanceSettings(**base)


def run_day(conninfo, sim, settings, day=DAY, run_id=RUN_ID, api_key=env.TEST_BANK_API_KEY):
    descriptors = stage.plan_run(conninfo, day, run_id, settings)
    corr = stage.correlation_id_for(run_id, day)
    summaries = [stage.fetch_chunk(conninfo, d, day, settings, endpoint_for(sim, api_key), corr) for d in descriptors]
    return descriptors, summaries, stage.finish_run(conninfo, day, descriptors)


def test_rows_equal_the_simulators_deterministic_balances(customers, bank) -> None:
    descriptors, summaries, outcome = run_day(customers, bank, fast())
    assert len(descriptors) == 3 and sum(d.chunks for d in descriptors) == outcome.planned // 50 + (
        1 if outcome.planned % 50 else 0
    )
    expected = expected_outcomes(customers, DAY)
    assert recorded_outcomes(customers, DAY) == expected
    assert outcome.status == "COMPLETE"
    assert outcome.planned == len(expected)
    assert outcome.checked == sum(1 for v in expected.values() if v[0] == "ok")
    assert outcome.passing == sum(1 for v in expected.values() if v[0] == "ok" and v[4])
    assert outcome.skipped == sum(1 for v in expected.values() if v[0] == "not_found")
    # one correlation id for the whole run, on every call and every row
    stats = bank.stats()
    assert set(stats["by_correlation_id"]) == {outcome.correlation_id}
    with psycopg.connect(**customers) as conn:
        assert conn.execute(
            "SELECT count(DISTINCT correlation_id) FROM account_check_outcomes WHERE check_date = %s", (DAY,)
        ).fetchone() == (1,)


def test_rerun_of_the_same_date_adds_nothing(customers, bank) -> None:
    run_day(customers, bank, fast())
    first = recorded_outcomes(customers, DAY)
    _, _, outcome = run_day(customers, bank, fast(), run_id="manual__rerun")
    assert recorded_outcomes(customers, DAY) == first
    with psycopg.connect(**customers) as conn:
        rows = conn.execute("SELECT count(*) FROM daily_balance_checks WHERE check_date = %s", (DAY,)).fetchone()[0]
        corr = {r[0] for r in conn.execute("SELECT DISTINCT correlation_id FROM daily_balance_checks")}
        runs = conn.execute("SELECT count(*), max(dag_run_id) FROM balance_check_runs").fetchone()
    assert rows == outcome.checked
    assert corr == {outcome.correlation_id}  # latest values win
    assert runs == (1, "manual__rerun")


def test_injected_503s_recover_through_retries(customers, bank) -> None:
    bank.set_faults({"fail_first": {"status": 503, "count": 2}})
    _, summaries, outcome = run_day(customers, bank, fast(breaker_failures=10_000))
    assert outcome.status == "COMPLETE"
    assert recorded_outcomes(customers, DAY) == expected_outcomes(customers, DAY)
    assert sum(s.retries for s in summaries) == 2 * outcome.planned


def test_random_500s_either_recover_or_are_recorded(customers, bank) -> None:
    bank.set_faults({"error_rates": {"500": 0.5}})
    _, summaries, outcome = run_day(customers, bank, fast(breaker_failures=10_000))
    recorded = recorded_outcomes(customers, DAY)
    reasons = Counter(v[0] for v in recorded.values())
    assert set(recorded) == set(expected_outcomes(customers, DAY))  # nobody lost
    assert reasons["failed_after_retries"] > 0 and reasons["ok"] > 0
    assert outcome.status == "PARTIAL" and outcome.failed == reasons["failed_after_retries"]
    assert sum(s.retries for s in summaries) > 0


def test_404_400_malformed_and_incomplete_are_recorded_and_the_run_goes_on(customers, bank) -> None:
    bank.set_faults({"error_rates": {"400": 0.05}, "malformed_rate": 0.05, "incomplete_rate": 0.05})
    _, _, outcome = run_day(customers, bank, fast())
    reasons = Counter(v[0] for v in recorded_outcomes(customers, DAY).values())
    assert reasons["not_found"] >= 1
    assert reasons["invalid_request"] > 0 and reasons["invalid_response"] > 0
    assert sum(reasons.values()) == outcome.planned
    with psycopg.connect(**customers) as conn:
        details = {r[0] for r in conn.execute("SELECT DISTINCT detail FROM balance_check_failures")}
    assert any("not valid JSON" in (d or "") for d in details)
    assert any("missing fields" in (d or "") for d in details)


def test_responses_slower_than_the_timeout_are_retried(customers, bank) -> None:
    bank.set_faults({"slow_rate": 0.1, "slow_ms": 1500})
    _, summaries, outcome = run_day(customers, bank, fast(request_timeout_s=0.3, in_flight=32))
    assert sum(s.retries for s in summaries) > 0
    reasons = Counter(v[0] for v in recorded_outcomes(customers, DAY).values())
    assert reasons["ok"] + reasons["not_found"] + reasons["failed_after_retries"] == outcome.planned


def test_401_fails_loudly_without_retries(customers, bank) -> None:
    settings = fast()
    descriptors = stage.plan_run(customers, DAY, RUN_ID, settings)
    with pytest.raises(BankAuthError):
        stage.fetch_chunk(customers, descriptors[0], DAY, settings, endpoint_for(bank, "wrong-key"), "corr-x")
    stats = bank.stats()
    assert stats["by_status"].get("401", 0) <= settings.in_flight  # in-flight ones only, never retried
    outcome = stage.finish_run(customers, DAY, descriptors)
    assert outcome.status == "FAILED" and outcome.not_attempted == outcome.planned


def test_outage_past_the_threshold_marks_the_day_skipped(customers, bank) -> None:
    bank.set_faults({"outage": {"seconds": 60}})
    settings = fast(breaker_failures=3, breaker_reset_s=0.2, outage_threshold_s=1.0, max_retries=1)
    descriptors, summaries, outcome = run_day(customers, bank, settings)
    assert all(s.outage for s in summaries)
    assert outcome.status == "SKIPPED_OUTAGE"
    reasons = Counter(v[0] for v in recorded_outcomes(customers, DAY).values())
    assert reasons["skipped_outage"] > 0
    assert sum(reasons.values()) == outcome.planned  # every account has a reason
    # later tasks of the same date did not wait out the threshold again
    assert summaries[-1].seconds < 1.0


def test_outage_shorter_than_the_threshold_is_ridden_out(customers, bank) -> None:
    bank.set_faults({"outage": {"seconds": 1.0}})
    settings = fast(breaker_failures=3, breaker_reset_s=0.2, outage_threshold_s=30.0, max_retries=1)
    _, _, outcome = run_day(customers, bank, settings)
    assert outcome.status in ("COMPLETE", "PARTIAL")
    assert outcome.skipped_outage == 0 and outcome.not_attempted == 0
    with psycopg.connect(**customers) as conn:
        assert conn.execute("SELECT outage_since, outage_declared_at FROM balance_check_runs").fetchone() == (
            None,
            None,
        )


def _outage_marks(conninfo) -> tuple:
    with psycopg.connect(**conninfo) as conn:
        return conn.execute("SELECT outage_since, outage_declared_at FROM balance_check_runs").fetchone()


# Hang guard, not a timing assertion: before the fix these runs waited for the outage threshold.
@pytest.mark.timeout(180)
def test_accounts_failing_on_every_call_at_a_chunk_tail_end_failed_not_an_outage(customers, bank) -> None:
    settings = fast(breaker_failures=5, breaker_reset_s=0.2, max_retries=3, outage_threshold_s=3600.0)
    with psycopg.connect(**customers) as conn:
        first_chunk = [
            r[0]
            for r in conn.execute(
                "SELECT account_id FROM customers WHERE status = 'ACTIVE' ORDER BY id LIMIT %s", (settings.chunk_size,)
            )
        ]
    broken = first_chunk[-7:]  # the tail of chunk 1: more than breaker_failures in a row
    bank.set_faults({"broken_accounts": {"status": 503, "ids": broken}})

    _, summaries, outcome = run_day(customers, bank, settings)

    assert not any(s.outage for s in summaries)
    assert outcome.status == "PARTIAL" and outcome.failed == len(broken)
    assert outcome.skipped_outage == 0 and outcome.not_attempted == 0
    expected = expected_outcomes(customers, DAY)
    expected.update({a: ("failed_after_retries",) for a in broken})
    assert recorded_outcomes(customers, DAY) == expected
    with psycopg.connect(**customers) as conn:
        attempts = dict(
            conn.execute(
                "SELECT account_id, attempts FROM balance_check_failures "
                "WHERE check_date = %s AND reason = 'failed_after_retries'",
                (DAY,),
            ).fetchall()
        )
    assert attempts == {a: 1 + settings.max_retries for a in broken}  # each its own budget, no more
    assert _outage_marks(customers) == (None, None)


@pytest.mark.timeout(180)
def test_every_account_failing_on_every_call_is_still_an_outage(customers, bank) -> None:
    bank.set_faults({"broken_accounts": {"status": 503, "rate": 1.0}})
    settings = fast(breaker_failures=3, breaker_reset_s=0.2, outage_threshold_s=1.0, max_retries=1)
    _, summaries, outcome = run_day(customers, bank, settings)
    assert all(s.outage for s in summaries)
    assert outcome.status == "SKIPPED_OUTAGE" and outcome.checked == 0
    reasons = Counter(v[0] for v in recorded_outcomes(customers, DAY).values())
    # the accounts that were tried (the probes among them) failed, the rest were skipped
    assert reasons["skipped_outage"] > 0 and set(reasons) <= {"failed_after_retries", "skipped_outage"}
    assert sum(reasons.values()) == outcome.planned
    assert _outage_marks(customers)[1] is not None


def test_a_task_that_dies_mid_chunk_and_is_retried_leaves_no_duplicates_and_no_gaps(
    customers, bank, monkeypatch
) -> None:
    settings = fast(max_mapped_tasks=1)
    descriptors = stage.plan_run(customers, DAY, RUN_ID, settings)
    corr = stage.correlation_id_for(RUN_ID, DAY)
    original = stage.BalanceWriter.write
    calls = {"n": 0}

    async def dying_write(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker killed mid-chunk")
        await original(self, batch)

    monkeypatch.setattr(stage.BalanceWriter, "write", dying_write)
    with pytest.raises(RuntimeError, match="killed"):
        stage.fetch_chunk(customers, descriptors[0], DAY, settings, endpoint_for(bank), corr)
    partial = recorded_outcomes(customers, DAY)
    assert 0 < len(partial) < descriptors[0].accounts
    monkeypatch.setattr(stage.BalanceWriter, "write", original)
    stage.fetch_chunk(customers, descriptors[0], DAY, settings, endpoint_for(bank), corr)  # the retry
    outcome = stage.finish_run(customers, DAY, descriptors)
    assert recorded_outcomes(customers, DAY) == expected_outcomes(customers, DAY)
    assert outcome.status == "COMPLETE"


def test_backfilled_date_fetches_as_of_that_date(customers, bank) -> None:
    other = date(2025, 11, 3)
    run_day(customers, bank, fast(), day=other, run_id="backfill__2025-11-03")
    assert recorded_outcomes(customers, other) == expected_outcomes(customers, other)
    assert recorded_outcomes(customers, DAY) == {}


def test_foreign_currency_is_recorded_and_never_passes(customers, bank) -> None:
    run_day(customers, bank, fast(), day=DAY)
    with psycopg.connect(**customers) as conn:
        rows = conn.execute(
            "SELECT count(*), bool_or(passes_threshold) FROM daily_balance_checks WHERE currency <> 'NIS'"
        ).fetchone()
    expected_usd = sum(1 for v in expected_outcomes(customers, DAY).values() if v[0] == "ok" and v[2] != "NIS")
    assert rows[0] == expected_usd
    assert not rows[1]


def test_group_sizes_stay_bounded_for_many_accounts(customers) -> None:
    d = stage.plan_run(customers, DAY, RUN_ID, fast(chunk_size=1, max_mapped_tasks=4))
    assert len(d) == 4 and sum(x.chunks for x in d) == sum(x.accounts for x in d)
    assert asyncio is not None
