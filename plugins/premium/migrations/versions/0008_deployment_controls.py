"""Deployment controls: late sends authorised by an operator (who, why, when); key-id indexes for the keyring check.

Revision ID: 0008_deployment_controls
Revises: 0007_submission_engine
"""

from premium.migrations import run_sql_file

revision = "0008_deployment_controls"
down_revision = "0007_submission_engine"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0008_deployment_controls.up.sql")


def downgrade() -> None:
    run_sql_file("0008_deployment_controls.down.sql")
