"""Qualification outcomes, SMS outbox, messages, batches, campaign runs.

Revision ID: 0002_qualification_and_sms
Revises: 0001_foundation
"""

from premium.migrations import run_sql_file

revision = "0002_qualification_and_sms"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0002_qualification_and_sms.up.sql")


def downgrade() -> None:
    run_sql_file("0002_qualification_and_sms.down.sql")
