"""Partitions and retention of the audit tables (§5.4), applied daily by premium_maintenance.

- ``system_events`` (external calls) is partitioned by day and kept ``events_hot_days`` (90):
  expiry is ``DROP TABLE`` of whole partitions, never a mass DELETE.
- ``audit_trail`` (notification decisions and sends) is partitioned by month, kept hot for
  ``audit_hot_days`` and then exported — gzip JSON lines plus a SHA-256 checksum, recorded in
  ``archived_partitions`` — before its partition is dropped; archive files are kept
  ``archive_years`` (7).
- Partitions are created ``partitions_ahead_days`` ahead; rows that landed in a DEFAULT partition
  (no partition existed yet) are moved into the partition created for them.

Everything is relative to the run's date (``today`` argument), so a rerun or a backfill does the
same thing, and every step is idempotent.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionSettings:
    events_hot_days: int = 90
    audit_hot_days: int = 365
    archive_years: int = 7
    partitions_ahead_days: int = 14
    archive_dir: str = ""  # empty: $PREMIUM_ARCHIVE_DIR, else <AIRFLOW_HOME>/archive

    def archive_path(self) -> Path:
        base = self.archive_dir or os.environ.get("PREMIUM_ARCHIVE_DIR") or ""
        if not base:
            base = str(Path(os.environ.get("AIRFLOW_HOME", ".")) / "archive")
        return Path(base)


@dataclass(frozen=True)
class Partition:
    parent: str
    name: str
    start: datetime
    end: datetime


def _day(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _month_start(d: date) -> date:
    return d.replace(day=1)


def _next_month(d: date) -> date:
    return (d.replace(day=28) + timedelta(days=4)).replace(day=1)


def wanted_partitions(today: date, settings: RetentionSettings) -> list[Partition]:
    """Daily system_events partitions from yesterday to today + ahead; monthly audit_trail ones."""
    out = []
    for offset in range(-1, settings.partitions_ahead_days + 1):
        d = today + timedelta(days=offset)
        out.append(Partition("system_events", f"system_events_p{d:%Y%m%d}", _day(d), _day(d + timedelta(days=1))))
    month = _month_start(today)
    last = _month_start(today + timedelta(days=settings.partitions_ahead_days))
    while month <= last:
        out.append(Partition("audit_trail", f"audit_trail_p{month:%Y%m}", _day(month), _day(_next_month(month))))
        month = _next_month(month)
    return out


def existing_partitions(conn: psycopg.Connection, parent: str) -> list[Partition]:
    rows = conn.execute(
        """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = %s AND NOT c.relname LIKE '%%_default'
        """,
        (parent,),
    ).fetchall()
    out = []
    for name, bound in rows:
        # FOR VALUES FROM ('2025-11-01 00:00:00+00') TO ('2025-11-02 00:00:00+00')
        lo, hi = (part.split("'")[1] for part in bound.split(" TO "))
        out.append(Partition(parent, name, datetime.fromisoformat(lo), datetime.fromisoformat(hi)))
    return sorted(out, key=lambda p: p.start)


def ensure_partition(conn: psycopg.Connection, p: Partition) -> bool:
    """Create ``p`` if missing, moving any of its rows out of the DEFAULT partition first."""
    if conn.execute("SELECT to_regclass(%s)", (p.name,)).fetchone()[0] is not None:
        return False
    parent, default = sql.Identifier(p.parent), sql.Identifier(f"{p.parent}_default")
    time_col = sql.Identifier("created_at" if p.parent == "system_events" else "occurred_at")
    with conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(parent))
        stray = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} >= %s AND {} < %s").format(default, time_col, time_col),
            (p.start, p.end),
        ).fetchone()[0]
        if stray:
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, default))
        conn.execute(  # DDL takes no bind parameters: the bounds are quoted literals
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(p.name), parent, sql.Literal(p.start.isoformat()), sql.Literal(p.end.isoformat())
            )
        )
        if stray:
            conn.execute(
                sql.SQL("INSERT INTO {} OVERRIDING SYSTEM VALUE SELECT * FROM {} WHERE {} >= %s AND {} < %s").format(
                    parent, default, time_col, time_col
                ),
                (p.start, p.end),
            )
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE {} >= %s AND {} < %s").format(default, time_col, time_col),
                (p.start, p.end),
            )
            conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(parent, default))
            log.info("moved %d rows of %s out of the default partition", stray, p.name)
    return True


def stray_partitions(conn: psycopg.Connection) -> list[Partition]:
    """Partitions for the days/months that have rows in a DEFAULT partition (late or early rows)."""
    out = []
    for (day,) in conn.execute(
        "SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM system_events_default ORDER BY 1"
    ).fetchall():
        out.append(Partition("system_events", f"system_events_p{day:%Y%m%d}", _day(day), _day(day + timedelta(days=1))))
    for (month,) in conn.execute(
        "SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date FROM audit_trail_default ORDER BY 1"
    ).fetchall():
        out.append(Partition("audit_trail", f"audit_trail_p{month:%Y%m}", _day(month), _day(_next_month(month))))
    return out


def export_partition(conn: psycopg.Connection, p: Partition, archive: Path) -> tuple[Path, str, int]:
    """Write the partition as gzip JSON lines with a .sha256 beside it; returns (file, sha256, rows)."""
    archive.mkdir(parents=True, exist_ok=True)
    target = archive / f"{p.name}.jsonl.gz"
    tmp = target.with_suffix(".gz.tmp")
    rows = 0
    digest = hashlib.sha256()
    with gzip.open(tmp, "wb") as out, conn.transaction(), conn.cursor(name=f"export_{p.name}") as cur:
        cur.execute(sql.SQL("SELECT to_jsonb(t) FROM {} t ORDER BY id").format(sql.Identifier(p.name)))
        for (row,) in cur:
            out.write(orjson.dumps(row) + b"\n")
            rows += 1
    with open(tmp, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    checksum = digest.hexdigest()
    os.replace(tmp, target)
    target.with_name(target.name + ".sha256").write_text(f"{checksum}  {target.name}\n", encoding="utf-8")
    return target, checksum, rows


def verify_export(path: Path, checksum: str) -> bool:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == checksum


@dataclass
class RetentionReport:
    created: list[str]
    exported: list[str]
    dropped: list[str]
    archives_deleted: list[str]

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def apply(conninfo: dict[str, Any], today: date, settings: RetentionSettings) -> RetentionReport:
    """Create partitions ahead, drop expired event partitions, export then drop old audit partitions."""
    report = RetentionReport([], [], [], [])
    archive = settings.archive_path()
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        for p in wanted_partitions(today, settings) + stray_partitions(conn):
            if ensure_partition(conn, p):
                report.created.append(p.name)
        events_cutoff = _day(today - timedelta(days=settings.events_hot_days))
        for p in existing_partitions(conn, "system_events"):
            if p.end <= events_cutoff:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(p.name)))
                report.dropped.append(p.name)
        audit_cutoff = _day(today - timedelta(days=settings.audit_hot_days))
        for p in existing_partitions(conn, "audit_trail"):
            if p.end > audit_cutoff:
                continue
            known = conn.execute(
                "SELECT file_path, sha256 FROM archived_partitions WHERE partition_name = %s", (p.name,)
            ).fetchone()
            if known and Path(known[0]).exists() and verify_export(Path(known[0]), known[1]):
                path, checksum = Path(known[0]), known[1]
            else:
                path, checksum, rows = export_partition(conn, p, archive)
                if not verify_export(path, checksum):
                    raise RuntimeError(f"export of {p.name} does not match its checksum; partition kept")
                conn.execute(
                    """
                    INSERT INTO archived_partitions (partition_name, parent_table, range_start, range_end, rows,
                                                     file_path, sha256)
                    VALUES (%s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (partition_name) DO UPDATE SET file_path = EXCLUDED.file_path,
                        sha256 = EXCLUDED.sha256, rows = EXCLUDED.rows, exported_at = now()
                    """,
                    (p.name, p.parent, p.start, p.end, rows, str(path), checksum),
                )
                report.exported.append(p.name)
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(p.name)))
                conn.execute(
                    "UPDATE archived_partitions SET dropped_at = coalesce(dropped_at, now()) WHERE partition_name = %s",
                    (p.name,),
                )
            report.dropped.append(p.name)
        keep_from = _day(today.replace(year=today.year - settings.archive_years))
        for name, path in conn.execute(
            "SELECT partition_name, file_path FROM archived_partitions WHERE range_end <= %s", (keep_from,)
        ).fetchall():
            for f in (Path(path), Path(path + ".sha256")):
                f.unlink(missing_ok=True)
            report.archives_deleted.append(name)
    log.info(
        "retention as of %s: created %s, exported %s, dropped %s, archives past %d years deleted %s",
        today,
        report.created,
        report.exported,
        report.dropped,
        settings.archive_years,
        report.archives_deleted,
    )
    return report
