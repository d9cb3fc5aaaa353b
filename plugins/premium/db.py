"""PostgreSQL access for the application database (psycopg 3, sync and async)."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import psycopg

from premium.connections import premium_db_kwargs


@contextmanager
def connect(conninfo: dict[str, Any] | None = None, **overrides: Any) -> Generator[psycopg.Connection]:
    """A connection to the application DB; commits on success, rolls back on error."""
    kwargs = dict(conninfo or premium_db_kwargs())
    kwargs.update(overrides)
    with psycopg.connect(**kwargs) as conn:
        yield conn


async def connect_async(conninfo: dict[str, Any] | None = None) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(**(conninfo or premium_db_kwargs()))
