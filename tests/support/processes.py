"""Helpers shared by the test harnesses that run Airflow components as subprocesses."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


def file_tail(path: Path, lines: int | None) -> str:
    """The last ``lines`` lines of a log file, all of it with None ("" when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text if lines is None else "\n".join(text.splitlines()[-lines:])


def wait_healthy(
    proc: subprocess.Popen,
    base_url: str,
    health_path: str,
    healthy: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    interval: float,
    what: str,
    error: type[Exception],
    log_tail: Callable[[], str],
) -> None:
    """Poll ``health_path`` until ``healthy(json)``; ``error`` with the log's tail if ``proc`` exits
    or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    last: Any = None
    with httpx.Client(base_url=base_url, timeout=5.0, trust_env=False) as probe:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise error(f"{what} exited with {proc.returncode} during startup:\n{log_tail()}")
            try:
                resp = probe.get(health_path)
                last = resp.json() if resp.status_code == 200 else f"HTTP {resp.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                last = repr(exc)
            if isinstance(last, dict) and healthy(last):
                return
            time.sleep(interval)
    raise error(f"{what} not healthy within {timeout:.0f}s (last health: {last}):\n{log_tail()}")
