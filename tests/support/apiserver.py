"""A real Airflow API server for integration tests: ``airflow api-server`` as a subprocess.

Only the API server (no scheduler, no DAG processor): enough to exercise what plugins mount on it
(``fastapi_apps``), its middlewares and its auth manager, through real HTTP::

    with ApiServer(connections={"sms_carrier_webhook": '{"conn_type": "generic", "password": "whsec_…"}'}) as api:
        httpx.post(api.url("/premium/api/webhooks/sms-delivery/primary"), content=body, headers=headers)

Environment of the server (nothing of the calling process's ``AIRFLOW*`` settings leaks in):

- a throw-away AIRFLOW_HOME and an empty DAG folder; ``plugins/`` as the plugins folder and on
  PYTHONPATH (the ``premium`` package imports from there);
- the test metadata DB (``tests.support.env.AIRFLOW_DB`` unless ``metadata_db`` says otherwise),
  migrated first (:func:`tests.support.airflow.migrate_airflow_db`: seconds when current);
- ``AIRFLOW_CONN_PREMIUM_DB`` = the test application DB, then ``connections`` (conn_id → URI or
  JSON) as ``AIRFLOW_CONN_<ID>``, then ``extra_env``;
- the simple auth manager with every user an admin, a free port, ``workers`` uvicorn workers (1),
  fresh API and JWT secrets.

The server runs in its own session; teardown signals the whole process group (SIGTERM, SIGKILL
after ``stop_timeout``). Its console output goes to :attr:`output_log` (see :meth:`log_text`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tests.support import env
from tests.support.db import ensure_database
from tests.support.processes import file_tail, wait_healthy

HEALTH_PATH = "/api/v2/monitor/health"


class ApiServerError(RuntimeError):
    """The API server did not start or stop as expected."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_migrated: set[str] = set()


def migrate_metadata_db(metadata_db: str, server_env: Mapping[str, str]) -> None:
    """``airflow db migrate`` for ``metadata_db`` (once per test process): the shared helper for the
    test metadata DB."""
    from tests.support.airflow import migrate_airflow_db

    if metadata_db in _migrated:
        return
    configured = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if metadata_db == env.AIRFLOW_DB and configured.endswith(f"/{env.AIRFLOW_DB}"):
        migrate_airflow_db()
        _migrated.add(metadata_db)
        return
    ensure_database(metadata_db)
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(server_env),
    )
    if out.returncode != 0:
        raise ApiServerError(f"airflow db migrate failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    _migrated.add(metadata_db)


class ApiServer:
    """``airflow api-server`` on a free loopback port; a context manager."""

    def __init__(
        self,
        *,
        connections: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        metadata_db: str = env.AIRFLOW_DB,
        app_db: str = env.APP_DB,
        workers: int = 1,
        workdir: Path | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.connections = dict(connections or {})
        self.extra_env = dict(extra_env or {})
        self.metadata_db = metadata_db
        self.app_db = app_db
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="airflow-api-"))
        self.home = self.workdir / "airflow-home"
        self.output_log = self.workdir / "api-server.log"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return self.base_url + path

    def build_env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.lstrip("_").startswith("AIRFLOW")}
        plugins = str(env.ROOT / "plugins")
        base["PYTHONPATH"] = os.pathsep.join(p for p in (plugins, str(env.ROOT), os.environ.get("PYTHONPATH")) if p)
        base["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), os.environ.get("PATH")) if p)
        airflow = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.workdir / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": plugins,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                f"postgresql+psycopg2://{env.PG_USER}@{env.PG_HOST}:{env.PG_PORT}/{self.metadata_db}"
            ),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": f"{self.base_url}/",
            "AIRFLOW__API__WORKERS": str(self.workers),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_PREMIUM_DB": f"postgresql://{env.PG_USER}@{env.PG_HOST}:{env.PG_PORT}/{self.app_db}",
        }
        for conn_id, value in self.connections.items():
            airflow[f"AIRFLOW_CONN_{conn_id.upper()}"] = value
        return {**base, **airflow, **self.extra_env}

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> ApiServer:
        if self._proc is not None:
            raise ApiServerError("already started")
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.workdir / "dags").mkdir(exist_ok=True)
        server_env = self.build_env()
        migrate_metadata_db(self.metadata_db, server_env)
        cmd = [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", str(self.workers)]
        with open(self.output_log, "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=server_env,
                cwd=self.workdir,
                start_new_session=True,
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        wait_healthy(
            self._proc,
            self.base_url,
            HEALTH_PATH,
            lambda health: (health.get("metadatabase") or {}).get("status") == "healthy",
            timeout=self.startup_timeout,
            interval=0.5,
            what="airflow api-server",
            error=ApiServerError,
            log_tail=self.log_tail,
        )

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``stop_timeout``. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            # Workers (workers > 1) share the group: make sure none outlives the parent.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        return file_tail(self.output_log, None)

    def log_tail(self, lines: int = 60) -> str:
        return file_tail(self.output_log, lines)
