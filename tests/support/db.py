"""Create, migrate and empty the test application database (real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from tests.support import env


def _admin() -> psycopg.Connection:
    return psycopg.connect(host=env.PG_HOST, port=env.PG_PORT, user=env.PG_USER, dbname="postgres", autocommit=True)


def ensure_database(name: str, *, recreate: bool = False) -> None:
    with _admin() as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and recreate:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            exists = None
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def recreate_app_db() -> dict:
    from premium import migrations

    ensure_database(env.APP_DB, recreate=True)
    conninfo = env.app_conninfo()
    migrations.upgrade(conninfo)
    return conninfo


def truncate_all(conninfo: dict) -> None:
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'premium_schema_version'"
            )
        ]
        if tables:
            conn.execute(
                sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(sql.SQL(", ").join(map(sql.Identifier, tables)))
            )


@contextmanager
def sql_runner(conninfo: dict) -> Generator[Callable[..., list[dict[str, Any]]], None, None]:
    """``run(name, **params)``: an include/sql file as the console runs it (Asia/Jerusalem), rows as dicts."""
    from psycopg.rows import dict_row

    from premium.paths import read_sql

    with psycopg.connect(**conninfo, autocommit=True, options="-c TimeZone=Asia/Jerusalem") as conn:

        def run(name: str, **params: Any) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(read_sql(name), params)
                return cur.fetchall()

        yield run
