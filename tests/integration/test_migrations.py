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


def test_the_outbox_payload_migration_refuses_while_a_campaign_is_in_flight(app_db: dict) -> None:
    """0006 gives notifications their payload; one in flight before it could never be sent or retried."""
    migrations.downgrade(app_db, "0005_alert_delivery")
    try:
        with psycopg.connect(**app_db) as conn:
            conn.execute(
                "INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, language, template_id, "
                "encoding, segments, correlation_id) VALUES ('c', '1', '2025-11-18', 'PENDING', 'he', 't', 'UCS-2', "
                "1, 'corr')"
            )
        with pytest.raises(Exception, match="1 notifications are not final"):
            migrations.upgrade(app_db)
        assert migrations.current(app_db) == "0005_alert_delivery"
        with psycopg.connect(**app_db) as conn:
            conn.execute("UPDATE sms_notifications SET status = 'QUEUED'")  # submitted, still tracked
        with pytest.raises(Exception, match="1 notifications are not final"):
            migrations.upgrade(app_db)
        with psycopg.connect(**app_db) as conn:
            conn.execute("UPDATE sms_notifications SET status = 'DELIVERED'")
        migrations.upgrade(app_db)
    finally:
        with psycopg.connect(**app_db) as conn:
            conn.execute("DELETE FROM sms_notifications")
        migrations.upgrade(app_db)
    assert migrations.current(app_db) == "0008_deployment_controls"
