"""Retention of the audit tables: partitions ahead, expiry by partition drop, export before drop."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from premium.retention import RetentionSettings, apply, existing_partitions

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
