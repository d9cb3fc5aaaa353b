"""The schema is versioned: upgrade, downgrade to base and upgrade again all work."""

from __future__ import annotations

import psycopg
import pytest

from premium import migrations

pytestmark = pytest.mark.integration


def _tables(conninfo: dict) -> set[str]:
    with psycopg.connect(**conninfo) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_upgrade_downgrade_upgrade(app_db: dict) -> None:
    assert {"customers", "daily_balance_checks", "balance_check_failures", "balance_check_runs"} <= _tables(app_db)
    head = migrations.current(app_db)
    assert head is not None
    migrations.downgrade(app_db, "base")
    assert _tables(app_db) == {migrations.VERSION_TABLE}
    migrations.upgrade(app_db)
    migrations.upgrade(app_db)  # a second upgrade is a no-op
    assert migrations.current(app_db) == head
    assert "customers" in _tables(app_db)
