"""Settings precedence and validation, chunk grouping, as-of dates, correlation ids."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest

from premium import runtime, settings
from premium.banking.stage import correlation_id_for, group_chunks


def test_defaults_are_the_specification_figures(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_PREMIUM_SETTINGS", raising=False)
    monkeypatch.delenv("PREMIUM_SETTINGS_FILE", raising=False)
    s = settings.load_balance()
    assert s.threshold_nis == Decimal("15000") and s.chunk_size == 1000 and s.request_timeout_s == 30
    assert s.max_retries == 3 and [s.backoff_s(n) for n in (1, 2, 3)] == [2, 4, 8]
    assert (s.breaker_failures, s.breaker_reset_s) == (5, 60)
    assert s.outage_threshold_s == 7200 and s.skip_on_outage is True


def test_file_then_variable_then_run_params(monkeypatch, tmp_path) -> None:
    f = tmp_path / "settings.json"
    f.write_text(json.dumps({"balance": {"threshold_nis": 20000, "chunk_size": 500, "in_flight": 10}}))
    monkeypatch.setenv("PREMIUM_SETTINGS_FILE", str(f))
    monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps({"balance": {"chunk_size": 250}}))
    s = settings.load_balance({"in_flight": 3, "max_retries": None})
    assert s.threshold_nis == Decimal("20000")  # file
    assert s.chunk_size == 250  # Variable beats file
    assert s.in_flight == 3  # run param beats both; a null param is no override
    assert s.max_retries == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"chunk_size": 0}, r"balance.chunk_size: Input should be greater than or equal to 1 \(got 0\)"),
        ({"in_flight": "many"}, r"balance.in_flight: Input should be a valid integer.*'many'"),
        ({"max_mapped_tasks": 5000}, r"balance.max_mapped_tasks: Input should be less than or equal to 512"),
        ({"threshhold_nis": 1}, "unknown balance settings in run params: threshhold_nis"),
        ({"threshold_nis": 1}, "balance settings threshold_nis belong to the deployment"),
        ({"skip_on_outage": False}, "balance settings skip_on_outage belong to the deployment"),
    ],
)
def test_bad_run_overrides_are_rejected_with_a_specific_message(monkeypatch, overrides, message) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_PREMIUM_SETTINGS", raising=False)
    with pytest.raises(settings.SettingsError, match=message):
        settings.load_balance(overrides)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"skip_on_outage": "perhaps"}, r"balance.skip_on_outage: Input should be a valid boolean"),
        ({"as_of_time": "22:00"}, r"balance.as_of_time: must be a local time HH:MM:SS \(got '22:00'\)"),
        ({"threshold_nis": -1}, r"balance.threshold_nis: Input should be greater than or equal to 0"),
    ],
)
def test_bad_deployment_values_are_rejected_naming_the_source(monkeypatch, layer, message) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps({"balance": layer}))
    with pytest.raises(settings.SettingsError, match=message + r".*\(from Variable premium_settings\)"):
        settings.load_balance()


def test_unknown_section_in_variable_is_rejected(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps({"balanse": {}}))
    with pytest.raises(settings.SettingsError, match="unknown settings sections"):
        settings.load_balance()


def test_group_chunks_bounds_the_task_count_and_covers_every_chunk() -> None:
    chunks = [(i * 1000 + 1, (i + 1) * 1000, 1000) for i in range(23)]
    groups = group_chunks(chunks, 5)
    assert [g.chunks for g in groups] == [5, 5, 5, 4, 4]
    assert groups[0].id_lo == 1 and groups[-1].id_hi == 23000
    assert all(a.id_hi < b.id_lo for a, b in zip(groups, groups[1:], strict=False))
    assert sum(g.accounts for g in groups) == 23000
    assert groups[0].label == "chunks 1-5 of 23 (5000 accounts)"
    # 1,000,000 accounts in chunks of 1,000 still give at most max_groups tasks
    many = [(i * 1000 + 1, (i + 1) * 1000, 1000) for i in range(1000)]
    assert len(group_chunks(many, 16)) == 16
    assert group_chunks([], 16) == []
    assert [g.label for g in group_chunks(chunks[:2], 16)] == [
        "chunk 1 of 2 (1000 accounts)",
        "chunk 2 of 2 (1000 accounts)",
    ]


def test_descriptor_xcom_is_ids_and_counts_only() -> None:
    d = group_chunks([(1, 10, 10)], 1)[0]
    assert set(d.to_xcom()) == {"index", "label", "id_lo", "id_hi", "chunks", "accounts"}
    assert type(d).from_xcom(d.to_xcom()) == d


def test_as_of_date_comes_from_the_run_in_jerusalem() -> None:
    # the scheduled run of 2025-11-18 22:00 Jerusalem (20:00 UTC)
    assert runtime.as_of_date({"logical_date": datetime(2025, 11, 18, 20, 0, tzinfo=UTC)}) == date(2025, 11, 18)
    # 23:30 UTC is already the next day in Jerusalem
    assert runtime.as_of_date({"logical_date": datetime(2025, 11, 18, 23, 30, tzinfo=UTC)}) == date(2025, 11, 19)
    # backfill dates given as naive UTC midnight
    assert runtime.as_of_date({"logical_date": datetime(2025, 11, 3, 0, 0, tzinfo=UTC)}) == date(2025, 11, 3)
    # a manual run with no logical date uses run_after
    run = SimpleNamespace(run_after=datetime(2025, 11, 20, 19, 0, tzinfo=UTC))
    assert runtime.as_of_date({"logical_date": None, "dag_run": run}) == date(2025, 11, 20)


def test_correlation_id_is_stable_per_run_and_distinct_between_runs() -> None:
    a = correlation_id_for("scheduled__2025-11-18T20:00:00+00:00", date(2025, 11, 18))
    assert a == correlation_id_for("scheduled__2025-11-18T20:00:00+00:00", date(2025, 11, 18))
    assert a.startswith("corr-20251118-")
    assert a != correlation_id_for("manual__2025-11-18T21:00:00+00:00", date(2025, 11, 18))
