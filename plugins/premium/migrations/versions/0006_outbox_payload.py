"""The outbox's encrypted payload (rendered text, E.164 number); HOT-friendly submission tables.

Revision ID: 0006_outbox_payload
Revises: 0005_alert_delivery
"""

from premium.migrations import run_sql_file

revision = "0006_outbox_payload"
down_revision = "0005_alert_delivery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0006_outbox_payload.up.sql")


def downgrade() -> None:
    run_sql_file("0006_outbox_payload.down.sql")
