"""Helpers shared by the benchmarks: CPU time from /proc, the benchmark database, the JSON report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_cpu_s(pid: int | None, *, children: bool = False) -> float | None:
    """CPU seconds (user + system) of a process from /proc; with ``children``, plus its reaped children."""
    if pid is None:
        return None
    try:
        fields = _stat_fields(pid)
    except (OSError, IndexError):
        return None
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / clock_ticks()


def proc_ppid(pid: int) -> int | None:
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


def machine_cpu_s() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / clock_ticks(), steal / clock_ticks()


def postmaster_pid(conninfo: dict[str, Any]) -> int | None:
    """The local PostgreSQL postmaster (parent of our backend), to read the server's CPU time; None if remote."""
    import psycopg

    with psycopg.connect(**conninfo) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    parent = proc_ppid(backend)
    return parent if parent and proc_cpu_s(parent) is not None else None


def conninfo_for(args: argparse.Namespace, dbname: str) -> dict[str, Any]:
    """Connection parameters from the benchmark's ``--pg-host/--pg-port/--pg-user`` for ``dbname``."""
    return {
        "host": args.pg_host,
        "port": args.pg_port,
        "user": args.pg_user,
        "dbname": dbname,
        "application_name": "premium-bench",
    }


def recreate_database(args: argparse.Namespace) -> dict[str, Any]:
    """Drop and create ``args.db``, migrate it to head; its conninfo."""
    import psycopg
    from psycopg import sql

    from premium import migrations

    with psycopg.connect(**conninfo_for(args, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.db)))
    conninfo = conninfo_for(args, args.db)
    migrations.upgrade(conninfo)
    return conninfo


def write_report(path: str, report: dict[str, Any]) -> None:
    """The figures as JSON at ``path`` (``--json``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(f"figures written to {path}")


def add_database_arguments(parser: argparse.ArgumentParser, default_db: str) -> None:
    """``--db`` (dropped, recreated, migrated), ``--json`` and the PostgreSQL connection options."""
    parser.add_argument("--db", default=default_db, help="database to drop, recreate and use")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--pg-host", default=os.environ.get("PREMIUM_PG_HOST", "127.0.0.1"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("PREMIUM_PG_PORT", "5432")))
    parser.add_argument("--pg-user", default=os.environ.get("PREMIUM_PG_USER", "postgres"))


def finish(args: argparse.Namespace, report: dict[str, Any], wrong: list[str]) -> int:
    """Write the report when ``--json`` was given (with the arguments); the exit code: 1 for wrong results."""
    if args.json:
        write_report(args.json, {"args": {k: v for k, v in vars(args).items() if k != "latency_list"}, **report})
    if wrong:
        print(f"WRONG RESULTS: {len(wrong)} problem(s), see above", file=sys.stderr)
        return 1
    return 0
