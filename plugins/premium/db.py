"""PostgreSQL access for the application database: one pool per process and database (psycopg_pool).

``connect()`` lends a connection from the process's pool for one unit of work: committed when the
block ends, rolled back on an exception, checked for liveness before it is lent (a connection the
server closed is replaced, not handed out). ``async_pool()`` is the same for asyncio code. Pools
are created on first use (never at import or DAG-parse time) and keyed by process id, so a forked
task process never shares its parent's sockets.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from premium.connections import premium_db_kwargs

POOL_MAX_SIZE = 8  # connections per process and database (submission threads, tracking, webhooks)
POOL_TIMEOUT_S = 30.0  # waiting for a free connection longer than this raises psycopg_pool.PoolTimeout
POOL_MAX_IDLE_S = 300.0

_pools: dict[tuple, ConnectionPool] = {}
_async_pools: dict[tuple, AsyncConnectionPool] = {}
_lock = threading.Lock()


def _options(conninfo: dict[str, Any], check: Any) -> dict[str, Any]:
    return {
        "kwargs": conninfo,
        "min_size": 0,
        "max_size": POOL_MAX_SIZE,
        "timeout": POOL_TIMEOUT_S,
        "max_idle": POOL_MAX_IDLE_S,
        "check": check,
    }


def _key(conninfo: dict[str, Any]) -> tuple:
    return (os.getpid(), tuple(sorted((k, str(v)) for k, v in conninfo.items())))


class AppPools:
    """The pools a web app lends connections from (:func:`pool` of ``conninfo()``), closed with the app.

    ``conninfo`` is called per lend (cache it: a connection lookup is not free); ``close()`` belongs
    in the app's lifespan, after its last request.
    """

    def __init__(self, conninfo: Any) -> None:
        self._conninfo = conninfo
        self._lent: set[ConnectionPool] = set()
        self._lock = threading.Lock()

    def get(self) -> ConnectionPool:
        found = pool(self._conninfo())
        with self._lock:
            self._lent.add(found)
        return found

    def close(self) -> None:
        with self._lock:
            lent, self._lent = list(self._lent), set()
        for p in lent:
            p.close()


def pool(conninfo: dict[str, Any] | None = None) -> ConnectionPool:
    """This process's pool for ``conninfo`` (default: connection ``premium_db``)."""
    conninfo = dict(conninfo or premium_db_kwargs())
    key = _key(conninfo)
    with _lock:
        found = _pools.get(key)
        if found is None or found.closed:
            found = _pools[key] = ConnectionPool(
                **_options(conninfo, ConnectionPool.check_connection), name=f"premium-{len(_pools)}", open=True
            )
        return found


@contextmanager
def connect(conninfo: dict[str, Any] | None = None) -> Generator[psycopg.Connection]:
    """A pooled connection to the application DB; commits on success, rolls back on error."""
    with pool(conninfo).connection() as conn:
        yield conn


async def async_pool(conninfo: dict[str, Any] | None = None) -> AsyncConnectionPool:
    """This process's asyncio pool for ``conninfo`` (opened on first use, in the running loop)."""
    import asyncio

    conninfo = dict(conninfo or premium_db_kwargs())
    key = (*_key(conninfo), id(asyncio.get_running_loop()))  # a pool belongs to one event loop
    found = _async_pools.get(key)
    if found is None or found.closed:
        found = _async_pools[key] = AsyncConnectionPool(
            **_options(conninfo, AsyncConnectionPool.check_connection), open=False
        )
        await found.open()
    return found


def close_all() -> None:
    """Close this process's sync pools (tests that drop the database; interpreter exit)."""
    with _lock:
        pools = [p for k, p in _pools.items() if k[0] == os.getpid()]
        _pools.clear()
    for p in pools:
        p.close()


async def close_async() -> None:
    pools = [p for k, p in _async_pools.items() if k[0] == os.getpid()]
    _async_pools.clear()
    for p in pools:
        await p.close()


atexit.register(close_all)
