"""Retention of the audit tables: partitions ahead, expiry by partition drop, export before drop."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from premium.retention import apply, existing_partitions
from premium.settings import RetentionSettings

pytestmark = pytest.mark.integration

TODAY = date(2026, 3, 15)


def _settings(tmp_path) -> RetentionSettings:
    return RetentionSettings(events_hot_days=90, audit_hot_days=365, archive_years=7, archive_dir=str(tmp_path))


def _names(conn, parent) -> list[str]:
    return [p.name for p in existing_partitions(conn, parent)]


def test_partitions_are_created_ahead_and_stray_rows_moved(db, app_db, tmp_path) -> None:
    # an event arrived before its partition existed: it sits in the default partition
    db.execute(
        "INSERT INTO system_events (event_type, event_data, created_at) VALUES ('banking_api_call', '{}', %s)",
        (datetime(2026, 3, 16, 10, tzinfo=UTC),),
    )
    report = apply(app_db, TODAY, _settings(tmp_path))
    assert "system_events_p20260316" in report.created and "audit_trail_p202603" in report.created
    names = _names(db, "system_events")
    assert names[0] == "system_events_p20260314" and names[-1] == "system_events_p20260329"
    assert db.execute("SELECT count(*) FROM system_events_default").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM system_events_p20260316").fetchone()[0] == 1
    again = apply(app_db, TODAY, _settings(tmp_path))
    assert again.created == [] and again.dropped == []  # idempotent


def test_expired_event_partitions_are_dropped_and_only_them(db, app_db, tmp_path) -> None:
    settings = _settings(tmp_path)
    apply(app_db, TODAY - timedelta(days=120), settings)  # partitions of 4 months ago
    apply(app_db, TODAY - timedelta(days=80), settings)
    for days_ago in (120, 95, 91, 89, 80):
        db.execute(
            "INSERT INTO system_events (event_type, event_data, created_at) VALUES ('banking_api_call', '{}', %s)",
            (datetime.combine(TODAY - timedelta(days=days_ago), datetime.min.time(), UTC) + timedelta(hours=12),),
        )
    report = apply(app_db, TODAY, settings)
    cutoff = TODAY - timedelta(days=90)
    assert report.dropped and all(n.startswith("system_events_p") for n in report.dropped)
    remaining = existing_partitions(db, "system_events")
    assert all(p.end.date() > cutoff for p in remaining)
    assert db.execute("SELECT count(*) FROM system_events").fetchone()[0] == 2  # 89 and 80 days ago kept


def test_old_audit_partitions_are_exported_with_a_checksum_before_they_are_dropped(db, app_db, tmp_path) -> None:
    settings = _settings(tmp_path)
    old = TODAY - timedelta(days=400)
    apply(app_db, old, settings)
    for i in range(25):
        db.execute(
            "INSERT INTO audit_trail (occurred_at, action, customer_id, campaign_id, outcome, correlation_id) "
            "VALUES (%s, 'sms_submitted', %s, 'premium-monthly-feb-2025', 'accepted', 'corr-x')",
            (datetime.combine(old, datetime.min.time(), UTC) + timedelta(hours=i), str(i)),
        )
    report = apply(app_db, TODAY, settings)
    name = f"audit_trail_p{old:%Y%m}"
    assert name in report.exported and name in report.dropped
    row = db.execute(
        "SELECT file_path, sha256, rows, dropped_at FROM archived_partitions WHERE partition_name = %s", (name,)
    ).fetchone()
    path, checksum, rows, dropped_at = row
    assert rows == 25 and dropped_at is not None
    data = open(path, "rb").read()
    assert hashlib.sha256(data).hexdigest() == checksum
    assert open(path + ".sha256").read().split()[0] == checksum
    lines = [json.loads(line) for line in gzip.decompress(data).splitlines()]
    assert len(lines) == 25 and {ln["customer_id"] for ln in lines} == {str(i) for i in range(25)}
    assert name not in _names(db, "audit_trail")
    # the next day's run changes nothing
    again = apply(app_db, TODAY + timedelta(days=1), settings)
    assert name not in again.exported and name not in again.dropped


def test_a_failed_export_keeps_the_partition(db, app_db, tmp_path, monkeypatch) -> None:
    from premium import retention

    settings = _settings(tmp_path)
    old = TODAY - timedelta(days=400)
    apply(app_db, old, settings)
    db.execute(
        "INSERT INTO audit_trail (occurred_at, action, customer_id, outcome) VALUES (%s, 'x', '1', 'y')",
        (datetime.combine(old, datetime.min.time(), UTC),),
    )
    monkeypatch.setattr(retention, "verify_export", lambda path, checksum: False)
    with pytest.raises(RuntimeError, match="partition kept"):
        apply(app_db, TODAY, settings)
    assert f"audit_trail_p{old:%Y%m}" in _names(db, "audit_trail")
    assert psycopg is not None


# -- durability and completeness of the export before the drop ------------------------------------


def _old_audit_rows(db, app_db, settings, n: int) -> tuple[date, str]:
    old = TODAY - timedelta(days=400)
    apply(app_db, old, settings)
    for i in range(n):
        db.execute(
            "INSERT INTO audit_trail (occurred_at, action, customer_id, outcome) VALUES (%s, 'x', %s, 'y')",
            (datetime.combine(old, datetime.min.time(), UTC) + timedelta(hours=i), str(i)),
        )
    return old, f"audit_trail_p{old:%Y%m}"


def test_the_export_and_its_directory_are_fsynced_before_the_drop(db, app_db, tmp_path, monkeypatch) -> None:
    import os

    from psycopg import sql

    settings = _settings(tmp_path)
    _, name = _old_audit_rows(db, app_db, settings, 3)
    events: list[tuple[str, str]] = []
    real_fsync, real_execute = os.fsync, psycopg.Connection.execute

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def execute(self, query, *args, **kwargs):
        text = query.as_string(self) if isinstance(query, sql.Composable) else str(query)
        if text.startswith("DROP TABLE"):
            events.append(("drop", text))
        return real_execute(self, query, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(psycopg.Connection, "execute", execute)
    report = apply(app_db, TODAY, settings)
    assert name in report.dropped
    drop_at = next(i for i, (kind, what) in enumerate(events) if kind == "drop" and name in what)
    synced = [what for kind, what in events[:drop_at] if kind == "fsync"]
    assert any(Path(p).name.startswith(f"{name}.jsonl.gz") for p in synced), events
    assert str(tmp_path) in synced, events  # the directory, so the rename itself is durable


def test_an_export_missing_a_row_keeps_the_partition(db, app_db, tmp_path, monkeypatch) -> None:
    from premium import retention

    settings = _settings(tmp_path)
    _, name = _old_audit_rows(db, app_db, settings, 4)
    real_export = retention.export_partition

    def export_missing_the_last_row(conn, p, archive):
        path, _, rows = real_export(conn, p, archive)
        kept = gzip.decompress(path.read_bytes()).splitlines(keepends=True)[:-1]
        path.write_bytes(gzip.compress(b"".join(kept)))  # a consistent file (and checksum) of 3 rows
        return path, hashlib.sha256(path.read_bytes()).hexdigest(), rows

    monkeypatch.setattr(retention, "export_partition", export_missing_the_last_row)
    with pytest.raises(RuntimeError) as raised:
        apply(app_db, TODAY, settings)
    message = str(raised.value)
    assert name in message and "3" in message and "4" in message and "partition kept" in message
    assert name in _names(db, "audit_trail")
    assert db.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == 4
    # once the export is whole again, the next run drops it
    monkeypatch.setattr(retention, "export_partition", real_export)
    assert name in apply(app_db, TODAY, settings).dropped


def test_a_row_that_arrived_after_the_export_is_exported_before_the_drop(db, app_db, tmp_path) -> None:
    from premium import retention

    settings = _settings(tmp_path)
    old, name = _old_audit_rows(db, app_db, settings, 2)
    # an earlier run exported the partition and stopped before the drop; then a late row landed
    partition = next(p for p in existing_partitions(db, "audit_trail") if p.name == name)
    path, checksum, rows = retention.export_partition(db, partition, tmp_path)
    db.execute(
        "INSERT INTO archived_partitions (partition_name, parent_table, range_start, range_end, rows, file_path, "
        "sha256) VALUES (%s, 'audit_trail', %s, %s, %s, %s, %s)",
        (name, partition.start, partition.end, rows, str(path), checksum),
    )
    db.execute(
        "INSERT INTO audit_trail (occurred_at, action, customer_id, outcome) VALUES (%s, 'late', '99', 'y')",
        (datetime.combine(old, datetime.min.time(), UTC) + timedelta(hours=20),),
    )
    report = apply(app_db, TODAY, settings)
    assert name in report.exported and name in report.dropped
    lines = gzip.decompress(Path(path).read_bytes()).splitlines()
    assert len(lines) == 3 and any(json.loads(line)["action"] == "late" for line in lines)


def test_retention_on_a_leap_day(db, app_db, tmp_path) -> None:
    report = apply(app_db, date(2028, 2, 29), _settings(tmp_path))
    assert "audit_trail_p202802" in report.created


@pytest.mark.parametrize("how", ["run conf", "deployment settings"])
def test_maintenance_told_to_destroy_refuses_and_drops_nothing(db, app_db, tmp_path, airflow_db, monkeypatch, how):
    """events_hot_days=1 would drop the 90-day API-call log: refused from a trigger and from the deployment."""
    from tests.support.airflow import run_dag, task_states

    monkeypatch.setenv("PREMIUM_ARCHIVE_DIR", str(tmp_path))
    run_day = date(2026, 3, 15)
    apply(app_db, run_day - timedelta(days=10), _settings(tmp_path))  # partitions from 11 days ago on
    before = _names(db, "system_events")
    conf = {}
    if how == "run conf":
        conf = {"events_hot_days": 1, "archive_years": 1, "archive_dir": "/tmp"}
    else:
        monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps({"retention": {"events_hot_days": 1}}))
    dag_run = run_dag("premium_maintenance", datetime(2026, 3, 15, 1, 30, tzinfo=UTC), conf)
    assert str(dag_run.state) == "failed"
    assert task_states(dag_run)["apply_retention"] == ["failed"]
    assert _names(db, "system_events") == before
