"""A real Airflow for end-to-end tests: ``airflow standalone`` (scheduler + LocalExecutor,
dag-processor, API server, triggerer) in a throw-away AIRFLOW_HOME, with its own metadata DB.

Only here do pools, the execution API, task-log masking and the scheduler's own handling of
mapped tasks, retries and backfills really run (``dag.test()`` bypasses all of them)::

    with AirflowStandalone(
        workdir=tmp,
        dag_files=[ROOT / "dags" / "premium_balance_daily.py"],
        connections={"premium_db": "postgresql://…", "core_banking": '{"conn_type": "http", …}'},
    ) as af:
        af.create_pool("core_banking_api", 1)
        af.wait_for_dags(["premium_balance_daily"])
        run = af.trigger_dag("premium_balance_daily", logical_date=…, conf={…})
        af.wait_for_run("premium_balance_daily", run["dag_run_id"])

Everything goes through the public REST API (``/api/v2``) with a JWT from the simple auth
manager (``GET /auth/token``, allowed because every user is an admin here), except reads of the
metadata DB that the API does not offer in bulk (:meth:`xcom_rows`).

Choices worth knowing:

- The DAG folder holds symlinks to the given files only, so nothing else of ``dags/`` is parsed.
- ``[scheduler] use_job_schedule = False`` by default: a cron DAG with ``catchup=False`` gets a
  run for its latest past tick the moment it is unpaused, which would compete with the runs a
  test triggers. Manual runs and backfills still run. This also stops asset-triggered runs:
  pass ``use_job_schedule=True`` for a test that needs them. Such a test can still keep the
  cron DAG from getting its catch-up run: start with ``dags_paused_at_creation=True`` (the
  runs of a paused DAG do not progress, so pausing it is no cure by itself), trigger the
  test's run with the logical date the scheduler would use (:meth:`next_scheduled_logical_date`)
  and only then unpause it: the scheduler finds that run in place ("run already exists;
  skipping dagrun creation") and moves on to the next tick. A tick that falls while the test
  runs still gets its run (see ``tests/e2e/test_sms_flow.py``).
- Deferred task instances: :meth:`watch_task` samples a task instance, its trigger and its
  pool, for evidence that a wait really was deferred to the triggerer (no worker slot held).
  Deferring and resuming happen within one try, so the tries endpoint shows no trace of it;
  the task log does ("Pausing task as DEFERRED", once per deferral), and the triggerer writes
  a log next to it (``attempt=N.log.trigger.<triggerer job id>.log``, rewritten by each trigger
  of the try: it shows the last one).
- ``[workers] min_heartbeat_interval = 1`` (default 5): a task's supervisor can take that long
  to notice that its task process exited, and only then does the executor report the try.
  Airflow 3.3.2 mistakes such a late report of a deferring process for the end of the resumed
  one when the trigger fired in between, and fails the resumed task ("finished with state
  success, but the task instance's state attribute is running" in the scheduler's output,
  "Task Instance not found" in the task log; apache/airflow#71580, #72716). One second narrows
  that window; deferrals of a few seconds or less can still hit it.
- The API server and both log servers get free ports (never 8080/8793/8794), and the
  execution API URL follows the API port (it defaults to 8080 whatever ``[api] port`` says).
- With the LocalExecutor every task log line is also echoed to the scheduler's stdout, and
  that copy is NOT masked (Airflow 3.3.2: ``local_executor.py`` passes
  ``subprocess_logs_to_stdout=True``; only the task log file's processors redact). The console
  output goes to :attr:`output_log`, outside AIRFLOW_HOME/logs.
- The process runs in its own session. Task processes put themselves in their own process
  groups, so teardown signals every process of the session, not only the group, and this
  process becomes a child subreaper meanwhile so that orphans are reaped (the init of these
  machines does not reap zombies).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import psycopg

from tests.support import env
from tests.support.db import ensure_database
from tests.support.processes import file_tail, wait_healthy

DEFAULT_METADATA_DB = os.environ.get("PREMIUM_E2E_AIRFLOW_DB", "premium_e2e_airflow")
VENV_BIN = Path(sys.executable).parent
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
TERMINAL_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class TaskSample:
    """One look at a task instance (:meth:`AirflowStandalone.watch_task`): its state as read by a
    request sent at ``asked`` and answered at ``answered`` (UTC), then its pool's slots."""

    asked: datetime
    answered: datetime
    state: str | None
    try_number: int
    trigger_id: int | None
    trigger_classpath: str | None
    pool_running: int
    pool_deferred: int


class StandaloneError(RuntimeError):
    """Airflow did not start, an API call failed, or a run did not end as expected."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free right now (on every interface)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _set_child_subreaper(on: bool) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def format_log_lines(text: str, limit: int | None = None) -> str:
    """Task logs are JSON lines; render them as ``time level event`` (other lines as they are)."""
    out: list[str] = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if not isinstance(rec, dict):
            out.append(line)
            continue
        rendered = f"{rec.get('timestamp', '')} {str(rec.get('level', '')).upper()} {rec.get('event', '')}"
        for exc in rec.get("error_detail") or []:
            if not isinstance(exc, dict):
                continue
            rendered += f"\n    {exc.get('exc_type')}: {str(exc.get('exc_value'))[:1500]}"
            for frame in (exc.get("frames") or [])[-6:]:
                rendered += f"\n      at {frame.get('filename')}:{frame.get('lineno')} in {frame.get('name')}"
        out.append(rendered)
    return "\n".join(out[-limit:] if limit else out)


class AirflowStandalone:
    """``airflow standalone`` with a fresh metadata DB and AIRFLOW_HOME; a context manager."""

    def __init__(
        self,
        *,
        dag_files: Iterable[Path],
        connections: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        metadata_db: str = DEFAULT_METADATA_DB,
        extra_env: Mapping[str, str] | None = None,
        use_job_schedule: bool = False,
        dags_paused_at_creation: bool = False,
        parallelism: int = 4,
        startup_timeout: float = 150.0,
    ) -> None:
        """``connections``: conn_id -> URI or JSON, passed as ``AIRFLOW_CONN_<ID>`` env vars.
        ``extra_env`` is applied last (any ``AIRFLOW__SECTION__KEY`` override). Without
        ``workdir`` a temporary directory is used and removed on exit."""
        self.dag_files = [Path(p).resolve() for p in dag_files]
        self.connections = dict(connections or {})
        self.metadata_db = metadata_db
        self.extra_env = dict(extra_env or {})
        self.use_job_schedule = use_job_schedule
        self.dags_paused_at_creation = dags_paused_at_creation
        self.parallelism = parallelism
        self.startup_timeout = startup_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="airflow-e2e-"))
        self.home = self.workdir / "airflow-home"
        self.dags_folder = self.workdir / "dags"
        self.logs_dir = self.home / "logs"
        # The components' console output, outside AIRFLOW_HOME/logs: it is not Airflow's log store
        # (and, with the LocalExecutor, it repeats every task log line unmasked; see the e2e test).
        self.output_log = self.workdir / "standalone-output.log"
        self.api_port, self.worker_log_port, self.trigger_log_port = free_ports(3)
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.env: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._subreaper = False
        self._seen_pids: set[int] = set()
        self.startup_seconds: float | None = None

    # -- environment -----------------------------------------------------------------------------

    @property
    def metadata_conninfo(self) -> dict[str, Any]:
        return {"host": env.PG_HOST, "port": env.PG_PORT, "user": env.PG_USER, "dbname": self.metadata_db}

    def build_env(self) -> dict[str, str]:
        # A clean slate: nothing of the calling test session's Airflow settings leaks in.
        base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        plugins = str(env.ROOT / "plugins")
        base["PYTHONPATH"] = os.pathsep.join(p for p in (plugins, os.environ.get("PYTHONPATH")) if p)
        # standalone starts its components as `airflow <command>`: the venv's bin must come first.
        base["PATH"] = os.pathsep.join(p for p in (str(VENV_BIN), os.environ.get("PATH")) if p)
        api = f"http://localhost:{self.api_port}"
        airflow = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": plugins,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(self.dags_paused_at_creation),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                f"postgresql+psycopg2://{env.PG_USER}@{env.PG_HOST}:{env.PG_PORT}/{self.metadata_db}"
            ),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": f"{api}/",
            "AIRFLOW__API__WORKERS": "1",
            # Shared by every component (JWTs of the execution API); fresh for each instance.
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "15",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(self.use_job_schedule),
        }
        for conn_id, value in self.connections.items():
            airflow[f"AIRFLOW_CONN_{conn_id.upper()}"] = value
        return {**base, **airflow, **self.extra_env}

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> AirflowStandalone:
        started = time.monotonic()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        for path in self.dag_files:
            if not path.is_file():
                raise StandaloneError(f"DAG file {path} does not exist")
            (self.dags_folder / path.name).symlink_to(path)
        self.env = self.build_env()
        ensure_database(self.metadata_db, recreate=True)
        migrate = subprocess.run(
            [str(VENV_BIN / "airflow"), "db", "migrate"],
            env=self.env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if migrate.returncode != 0:
            raise StandaloneError(f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}")
        self._subreaper = _set_child_subreaper(True)
        with open(self.output_log, "ab") as out:
            self._proc = subprocess.Popen(
                [str(VENV_BIN / "airflow"), "standalone"],
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_healthy()
            self._client = httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False)
            # The simple auth manager's token endpoint; GET needs no credentials when all users are admins.
            token = self._request("GET", "/auth/token", expect=(200, 201))["access_token"]
            self._client.headers["Authorization"] = f"Bearer {token}"
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
            "/api/v2/monitor/health",
            self._all_healthy,
            timeout=self.startup_timeout,
            interval=1.0,
            what="airflow standalone",
            error=StandaloneError,
            log_tail=self.log_tail,
        )

    @staticmethod
    def _all_healthy(health: dict[str, Any]) -> bool:
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

    def _session_members(self) -> list[psutil.Process]:
        """Every live process of the standalone's session (task processes have their own groups)."""
        if self._proc is None:
            return []
        sid = self._proc.pid
        members = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) == sid:
                    members.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        self._seen_pids.update(p.pid for p in members)
        return members

    def _reap(self) -> None:
        for pid in list(self._seen_pids):
            with contextlib.suppress(ChildProcessError, OSError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    self._seen_pids.discard(pid)

    def _alive(self) -> list[psutil.Process]:
        self._reap()
        alive = []
        for proc in self._session_members():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                continue
        return alive

    def _wait_gone(self, timeout: float) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        alive = self._alive()
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = self._alive()
        return alive

    def stop(self) -> list[str]:
        """Stop every process of the session: SIGINT to standalone (it terminates its components),
        SIGTERM to all after 20 s, SIGKILL after 10 more. Returns the processes that survived
        (an empty list). Idempotent."""
        if self._client is not None:
            self._client.close()
            self._client = None
        proc = self._proc
        survivors: list[str] = []
        if proc is not None:
            self._session_members()
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            alive = self._wait_gone(20.0)
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                if not alive:
                    break
                for p in alive:
                    with contextlib.suppress(psutil.Error):
                        p.send_signal(sig)
                alive = self._wait_gone(wait)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            survivors = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive if p.is_running()]
            self._reap()
            self._proc = None
        if self._subreaper:
            _set_child_subreaper(False)
            self._subreaper = False
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return survivors

    def __enter__(self) -> AirflowStandalone:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        survivors = self.stop()
        if survivors and exc_type is None:
            raise StandaloneError(f"processes left running after teardown: {survivors}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return file_tail(self.output_log, lines)

    # -- REST ------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> Any:
        if self._client is None:
            raise StandaloneError("Airflow is not running")
        resp = self._client.request(method, path, json=json_body, params=params)
        if resp.status_code not in expect:
            raise StandaloneError(f"{method} {path} -> {resp.status_code}: {resp.text[:2000]}")
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params or None)

    def post(self, path: str, body: Any, expect: tuple[int, ...] = (200, 201)) -> Any:
        return self._request("POST", path, json_body=body, expect=expect)

    def patch(self, path: str, body: Any) -> Any:
        return self._request("PATCH", path, json_body=body)

    @staticmethod
    def _q(value: str) -> str:
        return quote(value, safe="")

    def create_pool(self, name: str, slots: int, description: str = "") -> dict[str, Any]:
        body = {"name": name, "slots": slots, "description": description or f"{name} (e2e)"}
        try:
            return self.post("/api/v2/pools", body)
        except StandaloneError as exc:
            if "-> 409" not in str(exc):
                raise
            return self.patch(f"/api/v2/pools/{self._q(name)}", body)

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v2/importErrors", limit=100)["import_errors"])

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 120.0) -> dict[str, dict[str, Any]]:
        """Wait until the dag-processor has serialized every DAG; fail at once on an import error."""
        pending = set(dag_ids)
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for dag_id in sorted(pending):
                try:
                    found[dag_id] = self.get(f"/api/v2/dags/{self._q(dag_id)}")
                    pending.discard(dag_id)
                except StandaloneError as exc:
                    if "-> 404" not in str(exc):
                        raise
            if not pending:
                break
            errors = self.import_errors()
            if errors:
                raise StandaloneError(f"DAG import errors: {json.dumps(errors, indent=1)[:4000]}")
            if time.monotonic() > deadline:
                raise StandaloneError(f"DAGs {sorted(pending)} not parsed within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(1.0)
        return found

    def dag(self, dag_id: str) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{self._q(dag_id)}")

    def next_scheduled_logical_date(self, dag_id: str) -> datetime | None:
        """The logical date of the run the scheduler will create next (``next_dagrun``): for a cron
        DAG without catchup, its latest past tick until it has a run there."""
        value = self.dag(dag_id)["next_dagrun_logical_date"]
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        return self.patch(f"/api/v2/dags/{self._q(dag_id)}", {"is_paused": paused})

    def trigger_dag(
        self,
        dag_id: str,
        *,
        logical_date: datetime | None,
        conf: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "logical_date": logical_date.isoformat() if logical_date else None,
            "conf": dict(conf or {}),
        }
        if run_id:
            body["dag_run_id"] = run_id
        return self.post(f"/api/v2/dags/{self._q(dag_id)}/dagRuns", body)

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}")

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v2/dags/{self._q(dag_id)}/dagRuns", limit=100, **params)["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances"
        out: list[dict[str, Any]] = []
        while True:
            page = self.get(path, limit=100, offset=len(out))
            batch = list(page["task_instances"])
            out.extend(batch)
            if not batch or len(out) >= (page.get("total_entries") or 0):
                return out

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """One task instance, with its ``trigger`` while it is deferred."""
        path = f"/api/v2/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances/{self._q(task_id)}"
        return self.get(path if map_index < 0 else f"{path}/{map_index}")

    def task_tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """Every try of a task instance (earlier tries from the history, then the current one)."""
        path = f"/api/v2/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances/{self._q(task_id)}/tries"
        return list(self.get(path)["task_instances"])

    def pool(self, name: str) -> dict[str, Any]:
        return self.get(f"/api/v2/pools/{self._q(name)}")

    def upstream_asset_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The asset events that triggered an asset-scheduled run."""
        path = f"/api/v2/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/upstreamAssetEvents"
        return list(self.get(path)["asset_events"])

    def watch_task(
        self, dag_id: str, run_id: str, task_id: str, *, timeout: float = 240.0, interval: float = 0.5
    ) -> list[TaskSample]:
        """Sample a task instance (state, trigger) and then its pool's slots every ``interval`` s
        until it ends, or its run does; the samples in order. Evidence for deferral: the
        instance's state and trigger, and the pool's running / deferred slots in between."""
        samples: list[TaskSample] = []
        deadline = time.monotonic() + timeout
        while True:
            asked = datetime.now(UTC)
            ti = self.task_instance(dag_id, run_id, task_id)
            answered = datetime.now(UTC)
            pool = self.pool(ti["pool"])
            trigger = ti.get("trigger") or {}
            samples.append(
                TaskSample(
                    asked=asked,
                    answered=answered,
                    state=ti["state"],
                    try_number=ti["try_number"],
                    trigger_id=trigger.get("id"),
                    trigger_classpath=trigger.get("classpath"),
                    pool_running=pool["running_slots"],
                    pool_deferred=pool["deferred_slots"],
                )
            )
            if ti["state"] in TERMINAL_TI_STATES:
                return samples
            if len(samples) % 10 == 0 and self.dag_run(dag_id, run_id)["state"] in TERMINAL_RUN_STATES:
                return samples
            if time.monotonic() > deadline:
                raise StandaloneError(
                    f"{task_id} of {dag_id} {run_id} not done after {timeout:.0f}s\n{self.describe_run(dag_id, run_id)}"
                )
            if not self.running:
                raise StandaloneError(f"airflow standalone died:\n{self.log_tail()}")
            time.sleep(interval)

    def xcom_value(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        path = (
            f"/api/v2/dags/{self._q(dag_id)}/dagRuns/{self._q(run_id)}/taskInstances/{self._q(task_id)}"
            f"/xcomEntries/{self._q(key)}"
        )
        return self.get(path, map_index=map_index)["value"]

    def wait_for_run(
        self, dag_id: str, run_id: str, *, timeout: float = 240.0, expect: str | None = "success"
    ) -> dict[str, Any]:
        """Poll until the run ends; with ``expect``, fail with the task states and the logs of the
        failed tasks unless it ended in that state."""
        deadline = time.monotonic() + timeout
        run = self.dag_run(dag_id, run_id)
        while run["state"] not in TERMINAL_RUN_STATES:
            if time.monotonic() > deadline:
                raise StandaloneError(
                    f"{dag_id} {run_id} still {run['state']} after {timeout:.0f}s\n{self.describe_run(dag_id, run_id)}"
                )
            if not self.running:
                raise StandaloneError(f"airflow standalone died:\n{self.log_tail()}")
            time.sleep(2.0)
            run = self.dag_run(dag_id, run_id)
        if expect and run["state"] != expect:
            raise StandaloneError(
                f"{dag_id} {run_id} ended {run['state']}, expected {expect}\n{self.describe_run(dag_id, run_id)}"
            )
        return run

    def wait_for_tasks(
        self, dag_id: str, run_id: str, task_ids: Iterable[str], *, timeout: float = 240.0
    ) -> list[dict[str, Any]]:
        """Poll until every instance of ``task_ids`` in the run (all map indexes) has ended, or the
        run has; returns all the run's task instances. For a stage of a longer DAG."""
        wanted = set(task_ids)
        deadline = time.monotonic() + timeout
        while True:
            tis = self.task_instances(dag_id, run_id)
            mine = [ti for ti in tis if ti["task_id"] in wanted]
            if {ti["task_id"] for ti in mine} == wanted and all(ti["state"] in TERMINAL_TI_STATES for ti in mine):
                return tis
            if self.dag_run(dag_id, run_id)["state"] in TERMINAL_RUN_STATES:
                return self.task_instances(dag_id, run_id)
            if time.monotonic() > deadline:
                raise StandaloneError(
                    f"{sorted(wanted)} of {dag_id} {run_id} not done after {timeout:.0f}s\n"
                    f"{self.describe_run(dag_id, run_id)}"
                )
            if not self.running:
                raise StandaloneError(f"airflow standalone died:\n{self.log_tail()}")
            time.sleep(2.0)

    def create_backfill(
        self,
        dag_id: str,
        from_date: datetime | str,
        to_date: datetime | str,
        *,
        conf: Mapping[str, Any] | None = None,
        max_active_runs: int = 1,
        reprocess_behavior: str = "none",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """POST /api/v2/backfills (or its dry run: ``{"backfills": [{"logical_date": …}], …}``).

        The scheduler creates a run for every cron tick whose logical date lies in
        [from_date, to_date]; naive dates are UTC midnight, so pass aware local-day bounds."""

        def iso(d: datetime | str) -> str:
            return d if isinstance(d, str) else d.isoformat()

        body: dict[str, Any] = {
            "dag_id": dag_id,
            "from_date": iso(from_date),
            "to_date": iso(to_date),
            "max_active_runs": max_active_runs,
            "reprocess_behavior": reprocess_behavior,
        }
        if conf is not None:
            body["dag_run_conf"] = dict(conf)
        return self.post("/api/v2/backfills/dry_run" if dry_run else "/api/v2/backfills", body)

    def backfill(self, backfill_id: int) -> dict[str, Any]:
        return self.get(f"/api/v2/backfills/{backfill_id}")

    # -- logs and metadata -----------------------------------------------------------------------

    def log_files(self, dag_id: str | None = None, run_id: str | None = None, task_id: str | None = None) -> list[Path]:
        """Task log files (``dag_id=…/run_id=…/task_id=…/[map_index=…/]attempt=N.log``)."""
        pattern = (
            f"dag_id={dag_id or '*'}/run_id={glob_escape(run_id) if run_id else '*'}/task_id={task_id or '*'}/**/*.log"
        )
        return sorted(p for p in self.logs_dir.glob(pattern) if p.is_file())

    def all_log_files(self) -> list[Path]:
        return sorted(p for p in self.logs_dir.rglob("*") if p.is_file())

    def describe_run(self, dag_id: str, run_id: str, log_lines: int = 80) -> str:
        """Task states of a run, then the log tails of its failed / retried tasks."""
        try:
            tis = self.task_instances(dag_id, run_id)
        except (StandaloneError, httpx.HTTPError) as exc:
            return f"(task instances unavailable: {exc})\n{self.log_tail()}"
        lines = [f"task instances of {dag_id} {run_id}:"]
        bad: list[dict[str, Any]] = []
        for ti in sorted(tis, key=lambda t: (t["task_id"], t["map_index"])):
            lines.append(
                f"  {ti['task_id']}[{ti['map_index']}] {ti['state']} try {ti['try_number']} pool {ti['pool']} "
                f"{ti.get('rendered_map_index') or ''}"
            )
            if ti["state"] in ("failed", "up_for_retry", "upstream_failed") or ti["try_number"] > 1:
                bad.append(ti)
        for ti in bad:
            for path in self.log_files(dag_id, run_id, ti["task_id"]):
                if ti["map_index"] >= 0 and f"map_index={ti['map_index']}" not in path.parts:
                    continue
                text = path.read_text(encoding="utf-8", errors="replace")
                lines.append(f"--- {path.relative_to(self.logs_dir)} ---")
                lines.append(format_log_lines(text, log_lines))
        if not bad:
            lines.append("--- standalone output ---")
            lines.append(self.log_tail(40))
        lines += self.stale_success_races(dag_id, run_id)
        return "\n".join(lines)

    def stale_success_races(self, dag_id: str, run_id: str) -> list[str]:
        """A note for each task of the run that the scheduler failed because of Airflow's race
        after a deferral (see the module docstring): its console output says so."""
        try:
            text = self.output_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        tasks = re.findall(
            rf"reported that the task instance <TaskInstance: {re.escape(dag_id)}\.(\S+) {re.escape(run_id)} "
            r"\[(?:scheduled|queued|running)\][^>]*> finished with state success",
            text,
        )
        return [
            f"NOTE: {task} was failed by the scheduler: the executor's late report of its deferring process "
            "was taken for the end of the resumed one (Airflow 3.3.2 race, apache/airflow#71580 and #72716)"
            for task in sorted(set(tasks))
        ]

    def find_in_logs_and_xcom(self, patterns: Mapping[str, re.Pattern[str]]) -> list[tuple[str, str]]:
        """(where, kind) for every task or trigger log file, the console output (:attr:`output_log`)
        and every XCom that matches one of ``patterns`` (kind -> regex). Never the matched text."""
        findings: list[tuple[str, str]] = []
        for path in [*self.all_log_files(), self.output_log]:
            text = path.read_text(encoding="utf-8", errors="replace")
            findings += [
                (str(path.relative_to(self.workdir)), kind) for kind, rx in patterns.items() if rx.search(text)
            ]
        for dag_id, run_id, task_id, map_index, key, value in self.xcom_rows():
            where = f"xcom {dag_id}/{run_id}/{task_id}[{map_index}]/{key}"
            findings += [(where, kind) for kind, rx in patterns.items() if value and rx.search(value)]
        for dag_id, run_id, task_id, map_index, value in self.rendered_field_rows():
            where = f"rendered fields {dag_id}/{run_id}/{task_id}[{map_index}]"
            findings += [(where, kind) for kind, rx in patterns.items() if value and rx.search(value)]
        return findings

    def rendered_field_rows(self) -> Iterator[tuple[str, str, str, int, str]]:
        """Every task instance's rendered template fields (what the UI shows)."""
        with psycopg.connect(**self.metadata_conninfo) as conn:
            yield from conn.execute(
                "SELECT dag_id, run_id, task_id, map_index, rendered_fields::text FROM rendered_task_instance_fields"
            )

    def xcom_rows(self) -> Iterator[tuple[str, str, str, int, str, str]]:
        """Every XCom in the metadata DB: (dag_id, run_id, task_id, map_index, key, value as text)."""
        with psycopg.connect(**self.metadata_conninfo) as conn:
            yield from conn.execute(
                "SELECT dag_id, run_id, task_id, map_index, key, value::text FROM xcom ORDER BY dag_id, run_id, task_id"
            )


_GLOB_SPECIAL = re.compile(r"([*?\[])")


def glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"[\1]", text)
