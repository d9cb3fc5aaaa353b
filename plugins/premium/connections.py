"""Airflow connections the project relies on, and how each is turned into client settings.

Connection ids are contracts shared with deployments and other tools:

- ``premium_db``: the application's PostgreSQL (conn_type postgres; schema = database name).
- ``core_banking``: the core-banking REST API (see :mod:`premium.banking.client`).
- ``premium_pii_keys``: the PII encryption keyring (see :mod:`premium.crypto`).

Connections are resolved through Airflow's own machinery (``AIRFLOW_CONN_<ID>`` environment
variables, the metadata DB, or any configured secrets backend such as HashiCorp Vault), so no
secret ever appears in code, DAG params or the repository.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Connection

PREMIUM_DB_CONN_ID = "premium_db"
CORE_BANKING_CONN_ID = "core_banking"
PII_KEYS_CONN_ID = "premium_pii_keys"


def get_connection(conn_id: str) -> Connection:
    """The Airflow connection ``conn_id`` (inside a task, in the CLI and in tests alike)."""
    from airflow.sdk import Connection

    return Connection.get(conn_id)


def postgres_kwargs(conn: Any) -> dict[str, Any]:
    """psycopg connect() keyword arguments for a postgres connection."""
    kwargs: dict[str, Any] = {
        "host": conn.host or "127.0.0.1",
        "port": int(conn.port or 5432),
        "user": conn.login or "postgres",
        "dbname": conn.schema or "postgres",
        "application_name": "premium",
    }
    if conn.password:
        kwargs["password"] = conn.password
    extra = conn.extra_dejson or {}
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout"):
        if key in extra:
            kwargs[key] = extra[key]
    kwargs.setdefault("connect_timeout", 10)
    return kwargs


def premium_db_kwargs() -> dict[str, Any]:
    return postgres_kwargs(get_connection(PREMIUM_DB_CONN_ID))
