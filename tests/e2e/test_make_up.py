"""``make up`` and ``make down``: the local stack as a user starts and stops it.

One stack for the module, on this test's own databases, ports and directories (environment:
``AIRFLOW_DB_NAME``, ``PREMIUM_DB_NAME``, ``PREMIUM_UI_PORT``, the log-server ports,
``PREMIUM_STATE_DIR``, ``AIRFLOW_HOME``) and a small customer base. The tests run in file order:

1. ``make up`` starts the simulators and Airflow's four components; the API server is healthy,
   and anonymous requests are refused (a real login, not ``simple_auth_manager_all_admins``);
2. with a JWT from ``POST /auth/token`` and the generated admin password (kept in the local
   secrets file, mode 600), a run of ``premium_balance_daily`` triggered through the REST API
   succeeds, its task logs are readable through the API (``…/logs/{try}``), and its
   ``sms_submissions`` event starts ``premium_delivery_tracking``;
3. ``make up`` again changes nothing (same processes) and prints the address again;
4. ``make down`` leaves nothing running: every recorded process and every process of their
   sessions has exited, and no port of the stack answers.

This process is the child subreaper meanwhile, so that the stack's processes, orphaned when
``make up`` exits, are reaped here (the init of these machines does not reap zombies).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support import env
from tests.support.db import ensure_database
from tests.support.standalone import DEFAULT_METADATA_DB, free_ports

pytestmark = pytest.mark.e2e

DAG_ID = "premium_balance_daily"
TRACKING_DAG_ID = "premium_delivery_tracking"
AIRFLOW_DB = f"{DEFAULT_METADATA_DB}_up"
APP_DB = f"{env.APP_DB}_up"
CUSTOMERS = 60
COMPONENTS = {"scheduler", "dag-processor", "triggerer", "api-server"}
SIMULATORS = {"core-banking", "sms-primary", "sms-secondary"}
_PR_SET_CHILD_SUBREAPER = 36


def _subreaper(on: bool) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _reap(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


class Stack:
    """The checkout's Makefile run with this test's environment."""

    def __init__(self, root: Path) -> None:
        ui, worker_log, trigger_log = free_ports(3)
        self.ports = {"ui": ui, "worker_log": worker_log, "trigger_log": trigger_log}
        self.state_dir = root / "run" / "up"
        self.airflow_home = root / "airflow"
        self.secrets_file = self.airflow_home / "secrets.env"
        self.base_url = f"http://127.0.0.1:{ui}"
        # Nothing of the test session's Airflow or project settings leaks in.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PREMIUM_", "DEMO_"))}
        self.env = {
            **base,
            "PREMIUM_PG_HOST": env.PG_HOST,
            "PREMIUM_PG_PORT": str(env.PG_PORT),
            "PREMIUM_PG_USER": env.PG_USER,
            "AIRFLOW_DB_NAME": AIRFLOW_DB,
            "PREMIUM_DB_NAME": APP_DB,
            "PREMIUM_STATE_DIR": str(root / "run"),
            "AIRFLOW_HOME": str(self.airflow_home),
            "PREMIUM_UI_PORT": str(ui),
            "PREMIUM_WORKER_LOG_PORT": str(worker_log),
            "PREMIUM_TRIGGER_LOG_PORT": str(trigger_log),
            "DEMO_CUSTOMERS": str(CUSTOMERS),
            "PREMIUM_DOWN_GRACE_S": "20",
        }
        self.seen: set[int] = set()

    def make(self, target: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["make", "--no-print-directory", target],
            cwd=env.ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        print(f"\n[make {target}] exit {result.returncode}\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
        return result

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.state_dir / "stack.json").read_text(encoding="utf-8"))
        except OSError:
            return None

    def secret(self, name: str) -> str:
        for line in self.secrets_file.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key == name:
                return shlex.split(value)[0]
        raise KeyError(name)

    def processes(self) -> dict[str, int]:
        """name -> pid of every process make up recorded (Airflow's components, the simulators)."""
        state = self.state() or {}
        found = {name: int(p["pid"]) for name, p in state.get("processes", {}).items()}
        for name in SIMULATORS:
            with contextlib.suppress(OSError, ValueError):
                found[name] = int(json.loads((self.state_dir / f"{name}.json").read_text())["pid"])
        return found

    def sessions(self) -> set[int]:
        """Every live process of the recorded processes' sessions (task processes, log servers …)."""
        leaders = set(self.processes().values())
        members = set()
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(OSError, psutil.Error):
                if os.getsid(proc.pid) in leaders:
                    members.add(proc.pid)
        self.seen |= members
        return members

    def simulator_ports(self) -> list[int]:
        ports = []
        for name in SIMULATORS:
            with contextlib.suppress(OSError, ValueError):
                ports.append(int(json.loads((self.state_dir / f"{name}.json").read_text())["port"]))
        return ports


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    ensure_database(AIRFLOW_DB, recreate=True)
    ensure_database(APP_DB, recreate=True)
    s = Stack(tmp_path_factory.mktemp("make-up"))
    _subreaper(True)
    try:
        yield s
    finally:
        if s.state() is not None:
            s.make("down")
        _reap(s.seen)
        _subreaper(False)


@pytest.fixture(scope="module")
def api(stack) -> httpx.Client:
    with httpx.Client(base_url=stack.base_url, timeout=30.0, trust_env=False) as client:
        yield client


def _token(api: httpx.Client, password: str) -> httpx.Response:
    return api.post("/auth/token", json={"username": "admin", "password": password})


def _wait(what: str, check, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def _log_text(api: httpx.Client, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
    resp = api.get(
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
        params={"map_index": map_index},
        headers={"Accept": "application/json"},
    )
    assert resp.status_code == 200, resp.text[:500]
    return "\n".join(e.get("event", "") if isinstance(e, dict) else str(e) for e in resp.json()["content"])


def test_make_up_starts_a_healthy_stack(stack, api) -> None:
    result = stack.make("up")
    assert result.returncode == 0
    assert f"Airflow UI   {stack.base_url}" in result.stdout
    assert "user admin" in result.stdout

    health = api.get("/api/v2/monitor/health").json()
    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[part]["status"] == "healthy", health
    procs = stack.processes()
    assert set(procs) == COMPONENTS | SIMULATORS
    assert all(_alive(pid) for pid in procs.values()), procs
    # Each component writes its own log in the state directory.
    assert {p.stem for p in stack.state_dir.glob("*.log")} >= COMPONENTS | SIMULATORS

    # A real login: the generated password sits in the local secrets file, readable by its owner only.
    assert stat.S_IMODE(stack.secrets_file.stat().st_mode) == 0o600
    assert api.get(f"/api/v2/dags/{DAG_ID}").status_code in (401, 403)
    assert _token(api, "not-the-password").status_code == 401


def test_triggered_run_succeeds_and_its_logs_are_readable(stack, api) -> None:
    token = _token(api, stack.secret("AIRFLOW_ADMIN_PASSWORD"))
    assert token.status_code == 201, token.text
    api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    pools = {p["name"]: p["slots"] for p in api.get("/api/v2/pools").json()["pools"]}
    assert pools.get("core_banking_api") == 4
    dag = api.get(f"/api/v2/dags/{DAG_ID}").json()
    assert dag["is_paused"], "make up leaves the daily DAG paused"
    assert not api.get(f"/api/v2/dags/{TRACKING_DAG_ID}").json()["is_paused"]

    # The run of the tick the scheduler would run next, triggered before unpausing: the scheduler
    # finds it in place and creates no catch-up run of its own (tests/support/standalone.py).
    tick = dag["next_dagrun_logical_date"]
    resp = api.post(
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        json={"logical_date": tick, "conf": {"chunk_size": 20, "max_mapped_tasks": 2}},
    )
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["dag_run_id"]
    assert api.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
    run = _wait(
        f"{run_id} ended",
        lambda: (
            (r := api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json())["state"] in ("success", "failed") and r
        ),
        timeout=300,
    )
    tis = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    assert run["state"] == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    fetches = sorted((t for t in tis if t["task_id"] == "fetch_balances"), key=lambda t: t["map_index"])
    assert len(fetches) == 2 and all(t["rendered_map_index"].startswith("chunk") for t in fetches), fetches

    # Each task's log, through the API as the UI reads it.
    plan = _log_text(api, run_id, "plan_chunks", 1)
    assert "check date" in plan and "threshold" in plan, plan[:2000]
    fetch = _log_text(api, run_id, "fetch_balances", 1, map_index=0)
    assert "fetching chunk" in fetch, fetch[:2000]

    # The submission's sms_submissions event starts the tracking DAG (unpaused by make up).
    tracking = _wait(
        "an asset-triggered premium_delivery_tracking run that ended",
        lambda: [
            r
            for r in api.get(f"/api/v2/dags/{TRACKING_DAG_ID}/dagRuns").json()["dag_runs"]
            if r["run_type"] == "asset_triggered" and r["state"] in ("success", "failed")
        ],
        timeout=180,
    )
    assert tracking[0]["state"] == "success"


def test_make_up_again_is_harmless(stack, api) -> None:
    before = stack.processes()
    result = stack.make("up", timeout=120)
    assert result.returncode == 0
    assert "already running" in result.stdout
    assert f"Airflow UI   {stack.base_url}" in result.stdout
    assert stack.processes() == before
    assert api.get("/api/v2/monitor/health").json()["scheduler"]["status"] == "healthy"


def test_make_down_leaves_nothing_running(stack) -> None:
    recorded = set(stack.processes().values())
    members = stack.sessions()
    assert recorded <= members
    ports = [*stack.ports.values(), *stack.simulator_ports()]
    assert len(ports) == 6

    result = stack.make("down", timeout=180)
    assert result.returncode == 0
    assert "The stack is stopped." in result.stdout
    _reap(stack.seen)
    assert [pid for pid in members if _alive(pid)] == []
    assert [port for port in ports if _answers(port)] == []
    assert stack.state() is None
    assert stack.processes() == {}
    # Nothing to stop a second time.
    assert stack.make("down").returncode == 0
