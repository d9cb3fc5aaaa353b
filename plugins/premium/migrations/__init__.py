"""Versioned schema migrations of the application database (Alembic; SQL in include/sql/migrations).

One entry point, used by the demo, the tests and deployments (the compose file's init service):
``python -m premium.cli migrate`` -> :func:`upgrade`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from premium.paths import sql_dir

VERSION_TABLE = "premium_schema_version"
SCRIPT_LOCATION = Path(__file__).resolve().parent


def run_sql_file(name: str) -> None:
    """Execute include/sql/migrations/<name> inside the current Alembic migration."""
    from alembic import op

    op.execute((sql_dir() / "migrations" / name).read_text(encoding="utf-8"))


def _config(conninfo: dict[str, Any]):
    from alembic.config import Config
    from sqlalchemy.engine import URL

    url = URL.create(
        "postgresql+psycopg",
        username=conninfo.get("user"),
        password=conninfo.get("password"),
        host=conninfo.get("host"),
        port=conninfo.get("port"),
        database=conninfo.get("dbname"),
    )
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.attributes["url"] = url
    return cfg


def upgrade(conninfo: dict[str, Any], revision: str = "head") -> None:
    from alembic import command

    command.upgrade(_config(conninfo), revision)


def downgrade(conninfo: dict[str, Any], revision: str) -> None:
    from alembic import command

    command.downgrade(_config(conninfo), revision)


def current(conninfo: dict[str, Any]) -> str | None:
    import sqlalchemy as sa

    engine = sa.create_engine(_config(conninfo).attributes["url"])
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(VERSION_TABLE):
                return None
            return conn.execute(sa.text("SELECT version_num FROM premium_schema_version")).scalar()
    finally:
        engine.dispose()
