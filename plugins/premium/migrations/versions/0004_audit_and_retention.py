"""Audit events (partitioned), audit trail, archived partitions, encrypted balances.

Revision ID: 0004_audit_and_retention
Revises: 0003_delivery_tracking
"""

from premium.migrations import run_sql_file

revision = "0004_audit_and_retention"
down_revision = "0003_delivery_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0004_audit_and_retention.up.sql")


def downgrade() -> None:
    run_sql_file("0004_audit_and_retention.down.sql")
