"""Partitions and retention of the audit tables (§5.4), applied daily by premium_maintenance.

- ``system_events`` (external calls) is partitioned by day and kept ``events_hot_days`` (90):
  expiry is ``DROP TABLE`` of whole partitions, never a mass DELETE.
- ``audit_trail`` (notification decisions and sends) is partitioned by month, kept hot for
  ``audit_hot_days`` and then exported — gzip JSON lines plus a SHA-256 checksum, recorded in
  ``archived_partitions`` — before its partition is dropped; archive files are kept
  ``archive_years`` (7). The export is fsynced (file and directory) before the drop, and the drop
  happens only in a transaction that locks the partition and finds the file's checksum and its
  number of lines equal to the partition's row count: an export that is not whole keeps the
  partition.
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

from premium.settings import RetentionSettings

log = logging.getLogger(__name__)


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


def years_before(d: date, years: int) -> date:
    """The same day ``years`` earlier; 29 February becomes 28 February in a common year."""
    try:
        return d.replace(year=d.year - years)
    except ValueError:  # 29 February
        return d.replace(year=d.year - years, day=28)


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


def _fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a file created or renamed in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(target: Path, data: bytes) -> None:
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def export_partition(conn: psycopg.Connection, p: Partition, archive: Path) -> tuple[Path, str, int]:
    """Write the partition as gzip JSON lines with a .sha256 beside it; returns (file, sha256, rows).

    Both files are fsynced, and so is the directory once they are renamed into place: when this
    returns, the export survives a crash of the host.
    """
    created = not archive.exists()
    archive.mkdir(parents=True, exist_ok=True)
    if created:
        _fsync_dir(archive.parent)
    target = archive / f"{p.name}.jsonl.gz"
    tmp = target.with_suffix(".gz.tmp")
    rows = 0
    with open(tmp, "wb") as raw:
        with (
            gzip.GzipFile(fileobj=raw, mode="wb") as out,
            conn.transaction(),
            conn.cursor(name=f"export_{p.name}") as cur,
        ):
            cur.execute(sql.SQL("SELECT to_jsonb(t) FROM {} t ORDER BY id").format(sql.Identifier(p.name)))
            for (row,) in cur:
                out.write(orjson.dumps(row) + b"\n")
                rows += 1
        raw.flush()
        os.fsync(raw.fileno())
    checksum = _sha256(tmp)
    os.replace(tmp, target)
    _write_durably(target.with_name(target.name + ".sha256"), f"{checksum}  {target.name}\n".encode())
    _fsync_dir(archive)
    return target, checksum, rows


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_export(path: Path, checksum: str) -> bool:
    return _sha256(path) == checksum


def export_rows(path: Path) -> int | None:
    """The number of JSON lines in an export; None when the file is not a whole gzip stream."""
    lines = 0
    try:
        with gzip.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                lines += block.count(b"\n")
    except (OSError, EOFError):
        return None
    return lines


def _partition_rows(conn: psycopg.Connection, p: Partition) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(p.name))).fetchone()[0]


def _export_is_whole(conn: psycopg.Connection, p: Partition, path: Path, checksum: str) -> bool:
    """A recorded export still stands for the partition as it is now (checksum and row count)."""
    return path.exists() and verify_export(path, checksum) and export_rows(path) == _partition_rows(conn, p)


def drop_exported_partition(conn: psycopg.Connection, p: Partition, path: Path, checksum: str) -> None:
    """Drop ``p`` once its export is known to hold all of it, checked under a lock that keeps rows out.

    Raises RuntimeError (naming the partition and the two counts, nothing of the rows) and keeps the
    partition when the file does not match its checksum or has not one line per row of the partition.
    """
    with conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(p.name)))
        in_table = _partition_rows(conn, p)
        if not verify_export(path, checksum):
            raise RuntimeError(f"export of {p.name} does not match its checksum; partition kept")
        in_file = export_rows(path)
        if in_file != in_table:
            found = "no readable gzip stream" if in_file is None else f"{in_file} rows"
            raise RuntimeError(
                f"export of {p.name} holds {found} but the partition has {in_table} rows; partition kept"
            )
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(p.name)))
        conn.execute(
            "UPDATE archived_partitions SET dropped_at = coalesce(dropped_at, now()) WHERE partition_name = %s",
            (p.name,),
        )


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
            if known and _export_is_whole(conn, p, Path(known[0]), known[1]):
                path, checksum = Path(known[0]), known[1]
            else:  # never exported, or the file no longer holds the partition as it is (late rows)
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
            drop_exported_partition(conn, p, path, checksum)
            report.dropped.append(p.name)
        keep_from = _day(years_before(today, settings.archive_years))
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
