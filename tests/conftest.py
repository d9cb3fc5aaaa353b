"""Shared fixtures. The test environment is applied before anything imports Airflow."""

from __future__ import annotations

import socket

import pytest

from tests.support import env

env.apply()


def _postgres_reachable() -> bool:
    try:
        with socket.create_connection((env.PG_HOST, env.PG_PORT), timeout=3):
            return True
    except OSError:
        return False


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _postgres_reachable():
        pytest.exit(
            f"PostgreSQL is not reachable at {env.PG_HOST}:{env.PG_PORT} (user {env.PG_USER}). "
            "Every machine of this project runs it; start it with "
            "`pg_ctlcluster --skip-systemctl-redirect 15 main start` and run the tests again.",
            returncode=3,
        )


@pytest.fixture(scope="session")
def app_db() -> dict:
    """A freshly created, migrated application database; its psycopg conninfo."""
    from tests.support.db import recreate_app_db

    return recreate_app_db()


@pytest.fixture
def db(app_db: dict):
    """The migrated application DB with every table emptied; yields a psycopg connection."""
    import psycopg

    from tests.support.db import truncate_all

    truncate_all(app_db)
    with psycopg.connect(**app_db, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's own metadata DB for dag.test(), migrated (idempotent, a few seconds when current)."""
    from tests.support.airflow import migrate_airflow_db

    migrate_airflow_db()


@pytest.fixture(scope="session")
def bank_sim():
    """The core-banking simulator (API-key auth) for the whole session."""
    from premium.simulators.runner import SimulatorProcess

    with SimulatorProcess(
        args=["--auth", "api_key", "--secret-env", "BANK_SIM_SECRET"],
        env={"BANK_SIM_SECRET": env.TEST_BANK_API_KEY},
    ) as sim:
        yield sim


@pytest.fixture
def bank(bank_sim):
    """The simulator with no faults and fresh statistics."""
    bank_sim.set_faults({})
    bank_sim.reset()
    return bank_sim
