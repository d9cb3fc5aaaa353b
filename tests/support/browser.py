"""A real browser for end-to-end tests: Playwright (Python) driving Debian's chromium, headless.

Playwright's own browser download cannot work on these machines (no network but the package
registries), so the browser is the ``chromium`` Debian package (``make tools`` installs it), launched
by path. Without it a test is skipped with the reason, except in CI (``CI`` set), where it fails.

Screenshots go to ``.artifacts/screenshots/`` (the directory ignores itself: it holds a ``.gitignore``
of ``*``), one PNG per step, to look at after a run.

:class:`SignedInStandalone` is ``airflow standalone`` with a real user and password (the simple auth
manager, not "every user is an admin"), so that the browser signs in through Airflow's login form.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import env
from tests.support.standalone import AirflowStandalone, StandaloneError

SCREENSHOTS = env.ROOT / ".artifacts" / "screenshots"


def chromium_path() -> str:
    """Debian's chromium; skips the test without it (fails in CI, where it must run)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: `make tools` installs Debian's chromium for the browser tests")
    pytest.skip("chromium is not installed (apt-get install chromium, or make tools); not in CI, so skipped")
    raise AssertionError("unreachable")


@contextmanager
def chromium() -> Generator[Any]:
    """A headless chromium (Playwright ``Browser``)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
        try:
            yield browser
        finally:
            browser.close()


def screenshot_dir(name: str) -> Path:
    """``.artifacts/screenshots/<name>/``, emptied; the artifacts directory ignores itself in git."""
    root = SCREENSHOTS.parent
    root.mkdir(parents=True, exist_ok=True)
    (root / ".gitignore").write_text("# test artifacts (screenshots): never committed\n*\n", encoding="utf-8")
    target = SCREENSHOTS / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    return target


class SignedInStandalone(AirflowStandalone):
    """``airflow standalone`` whose users sign in with a password: ``username`` (role ``role``).

    The base class fetches its REST token with ``GET /auth/token``, which only the "all admins" mode
    answers; here that one request becomes ``POST /auth/token`` with the user's credentials."""

    def __init__(self, *, username: str, password: str, role: str = "admin", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.username, self.password = username, password
        passwords = self.workdir / "simple_auth_manager_passwords.json"
        passwords.parent.mkdir(parents=True, exist_ok=True)
        passwords.write_text(json.dumps({username: password}), encoding="utf-8")
        self.extra_env.update(
            {
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{username}:{role}",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            }
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if (method, path) == ("GET", "/auth/token"):
            assert self._client is not None
            resp = self._client.post("/auth/token", json={"username": self.username, "password": self.password})
            if resp.status_code not in (200, 201):
                raise StandaloneError(f"POST /auth/token -> {resp.status_code}: {resp.text[:500]}")
            return resp.json()
        return super()._request(method, path, **kwargs)

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, trust_env=False, timeout=30.0)
