"""Alert delivery columns, integration metrics.

Revision ID: 0005_alert_delivery
Revises: 0004_audit_and_retention
"""

from premium.migrations import run_sql_file

revision = "0005_alert_delivery"
down_revision = "0004_audit_and_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0005_alert_delivery.up.sql")


def downgrade() -> None:
    run_sql_file("0005_alert_delivery.down.sql")
