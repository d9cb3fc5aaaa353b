"""Airflow connections the project relies on, and how each is turned into client settings.

Connection ids are contracts shared with deployments and other tools:

- ``premium_db``: the application's PostgreSQL (conn_type postgres; schema = database name).
- ``core_banking``: the core-banking REST API (see :mod:`premium.banking.client`).
- ``premium_pii_keys``: the PII encryption keyring (see :mod:`premium.crypto`).

Connections are resolved through Airflow's own machinery (``AIRFLOW_CONN_<ID>`` environment
variables, the metadata DB, or any configured secrets backend such as HashiCorp Vault), so no
secret ever appears in code, DAG params or the repository.

The HTTP clients (core banking, the SMS carriers, the alert webhook) take their base URL from
:func:`base_url`: https unless the connection says http, and plain http only to loopback or with
``"allow_plain_http": true`` in the extra.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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


ALLOW_PLAIN_HTTP = "allow_plain_http"
_SCHEMES = ("http", "https")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: traffic that never leaves the machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _plain_http_allowed(extra: dict[str, Any]) -> bool:
    flag = extra.get(ALLOW_PLAIN_HTTP)
    return flag is True or (isinstance(flag, str) and flag.strip().lower() == "true")  # a URI's extra is text


def base_url(conn: Any, *, what: str, url: str | None = None, default_host: str | None = "127.0.0.1") -> str:
    """``scheme://host[:port][/path]`` of an HTTP(S) connection, the scheme always lower case.

    The scheme is the first of: a scheme written into the host (``https://bank.example``), the
    ``schema`` field when it is http or https, the ``conn_type`` when it is http or https (a URI
    ``https://:key@host:443`` gives conn_type ``https``), and otherwise https; all case-insensitive.
    A ``schema`` that is not a scheme is the URI's path (``http://host/alerts`` gives schema
    ``alerts``) and becomes the URL's path. ``url``, when given, stands for the host (a full URL).

    Plain http is refused (ValueError naming the connection, never its secrets) unless the host is
    loopback or the connection's extra has ``"allow_plain_http": true``: credentials sent in clear
    to another host would be readable on the way.
    """
    conn_id = getattr(conn, "conn_id", None)
    label = f"connection {conn_id} ({what})" if conn_id else f"{what} connection"
    extra = conn.extra_dejson or {}
    raw = (url if url is not None else conn.host or "").strip()
    scheme: str | None = None
    path = query = ""
    port = conn.port
    if "://" in raw:
        parts = urlsplit(raw)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        try:
            port = parts.port or port
        except ValueError:
            raise ValueError(f"{label}: the port in its host URL is not a number") from None
        path, query = parts.path, parts.query
    else:
        host = raw or (default_host or "")
    if not host:
        raise ValueError(f"{label} has no host")
    schema = (getattr(conn, "schema", None) or "").strip()
    if schema.lower() in _SCHEMES:
        scheme = scheme or schema.lower()
    elif schema and not path:
        path = "/" + schema.lstrip("/")
    conn_type = (getattr(conn, "conn_type", None) or "").strip().lower()
    scheme = scheme or (conn_type if conn_type in _SCHEMES else "https")
    if scheme not in _SCHEMES:
        raise ValueError(f"{label}: the scheme must be http or https, not {scheme!r}")
    if scheme == "http" and not is_loopback(host) and not _plain_http_allowed(extra):
        raise ValueError(
            f"{label}: plain http to {host} would send its credentials and data in clear; use https "
            f"(conn_type or schema https, or an https:// host), or, on a trusted network only, set "
            f'"{ALLOW_PLAIN_HTTP}": true in its extra'
        )
    netloc = f"[{host}]" if ":" in host else host
    if port:
        netloc += f":{int(port)}"
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")
