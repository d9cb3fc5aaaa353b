"""Delivery status, history, webhook events, tracking runs.

Revision ID: 0003_delivery_tracking
Revises: 0002_qualification_and_sms
"""

from premium.migrations import run_sql_file

revision = "0003_delivery_tracking"
down_revision = "0002_qualification_and_sms"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0003_delivery_tracking.up.sql")


def downgrade() -> None:
    run_sql_file("0003_delivery_tracking.down.sql")
