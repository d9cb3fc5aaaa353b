"""The submission engine: campaign leases, batches in flight, retry backoff, tracking by date, webhooks per carrier.

Revision ID: 0007_submission_engine
Revises: 0006_outbox_payload
"""

from premium.migrations import run_sql_file

revision = "0007_submission_engine"
down_revision = "0006_outbox_payload"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0007_submission_engine.up.sql")


def downgrade() -> None:
    run_sql_file("0007_submission_engine.down.sql")
