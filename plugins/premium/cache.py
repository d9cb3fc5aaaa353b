"""A value recomputed at most every ``ttl`` seconds: settings and credentials read by the API-server apps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Expiring:
    """A value recomputed at most every ``ttl`` seconds (thread-safe); :meth:`clear` forces the next get."""

    def __init__(self, compute: Callable[[], Any], ttl: float) -> None:
        self._compute = compute
        self._ttl = ttl
        self._lock = threading.Lock()
        self._value: Any = None
        self._expires = float("-inf")

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() >= self._expires:
                self._value = self._compute()
                self._expires = time.monotonic() + self._ttl
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._expires = float("-inf")
