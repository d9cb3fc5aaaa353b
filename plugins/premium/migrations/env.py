"""Alembic environment: online migrations only, against the URL handed in by premium.migrations."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from premium.migrations import VERSION_TABLE

config = context.config
engine = sa.create_engine(config.attributes["url"], poolclass=sa.pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, version_table=VERSION_TABLE, transaction_per_migration=True)
    with context.begin_transaction():
        # Serialise concurrent migrators (two inits starting together).
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(7421001)"))
        context.run_migrations()
engine.dispose()
