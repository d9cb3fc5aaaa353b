"""The whole product on this machine, kept running: ``make up``, ``make down``, ``make status``.

``up`` starts, each in its own session with its output in the state directory
(``$PREMIUM_STATE_DIR/up``, ``.run/up`` by default):

- the simulators on loopback (ephemeral ports): core banking; the primary and secondary SMS
  carriers, whose delivery callbacks are signed with the secrets the webhook connections hold
  and posted to ``/premium/api/webhooks/sms-delivery/{primary|secondary}`` on the API server;
- Airflow's scheduler (LocalExecutor), dag-processor, triggerer and api-server as separate
  processes, on the demo's databases (created and migrated when missing), with the
  connections as ``AIRFLOW_CONN_*``, the pool ``core_banking_api`` (deploy/pools.json) and the
  deployment settings file of the local stack (:data:`LOCAL_SETTINGS`).

The UI is at ``http://127.0.0.1:$PREMIUM_UI_PORT`` (8080). Login: the simple auth manager's
``admin`` (``[core] simple_auth_manager_users = admin:admin``), whose password is generated on
first use into the local secrets file (``AIRFLOW_ADMIN_PASSWORD`` in ``.airflow/demo/secrets.env``,
mode 600, by scripts/env.sh) and handed to the API server as its passwords file; never
``simple_auth_manager_all_admins``.

``up`` when the stack already runs only prints its address; a stack of which a process died is
stopped and started again. ``down`` stops what ``up`` recorded (``stack.json`` and the
simulators' state files), by PID: SIGTERM to each process, then, after a grace period, SIGKILL to
every process still in its session (task processes make their own process groups but stay in
the session), and it waits for them to exit.

Run through scripts/env.sh (the Makefile does): ``bash scripts/run.sh scripts/stack.py up``.
Environment: ``PREMIUM_UI_PORT`` (8080), ``PREMIUM_WORKER_LOG_PORT`` (8793),
``PREMIUM_TRIGGER_LOG_PORT`` (8794), ``AIRFLOW_DB_NAME``, ``PREMIUM_DB_NAME``,
``PREMIUM_STATE_DIR``, ``AIRFLOW_HOME``, ``DEMO_CUSTOMERS``/``DEMO_SEED`` (loaded when the
customers table is empty), ``PREMIUM_CARRIER_TIME_SCALE`` (0.1), ``PREMIUM_PARALLELISM`` (8),
``PREMIUM_DOWN_GRACE_S`` (30), ``PREMIUM_SETTINGS_FILE`` (your own deployment settings instead).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from premium.simulators import runner

ROOT = Path(os.environ.get("PREMIUM_ROOT") or Path(__file__).resolve().parents[1])
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
AIRFLOW = str(VENV_BIN / "airflow")
COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
BALANCE_DAG, TRACKING_DAG = "premium_balance_daily", "premium_delivery_tracking"
ADMIN = "admin"
# The local stack's deployment settings (the demo's): the send window open around the clock on
# every day, the late-run rail raised so that the demo's past dates send, the window opening on
# the check date itself, and delivery tracking accelerated (a 30-second window, a poll every
# 5 seconds, deferred in between: room for a message's three attempts, each resent at a poll,
# whatever the scheduler's latency, so that the demo ends the same every time). A deployment
# keeps 09:00-20:00 without Saturdays, the next morning, a one-day lag rail, 72 hours and 2
# hours. The callback URL follows the UI port.
LOCAL_SETTINGS: dict[str, dict[str, Any]] = {
    "sms": {
        "send_time": "00:00:00",
        "send_window_end": "23:59:59",
        "send_offset_days": 0,
        "no_send_days": [],
        "retry_backoff_s": 0,
        "max_lag_days": 100000,
    },
    "delivery": {"window_s": 30, "poll_interval_s": 5},
}
SIMULATORS = ("core-banking", "sms-primary", "sms-secondary")


class StackError(RuntimeError):
    """The stack did not start, or an API call failed."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n==> {text}")


@dataclass(frozen=True)
class Config:
    """Where the stack lives: directories, databases, ports (all from the environment)."""

    state_dir: Path
    airflow_home: Path
    secrets_file: Path
    pg_host: str
    pg_port: int
    pg_user: str
    airflow_db: str
    app_db: str
    ui_port: int
    worker_log_port: int
    trigger_log_port: int

    @classmethod
    def from_env(cls) -> Config:
        env = os.environ
        home = Path(env.get("AIRFLOW_HOME") or ROOT / ".airflow" / "demo")
        return cls(
            state_dir=Path(env.get("PREMIUM_STATE_DIR") or ROOT / ".run") / "up",
            airflow_home=home,
            secrets_file=Path(env.get("PREMIUM_SECRETS_FILE") or home / "secrets.env"),
            pg_host=env.get("PREMIUM_PG_HOST", "127.0.0.1"),
            pg_port=int(env.get("PREMIUM_PG_PORT", "5432")),
            pg_user=env.get("PREMIUM_PG_USER", "postgres"),
            airflow_db=env.get("AIRFLOW_DB_NAME", "premium_airflow"),
            app_db=env.get("PREMIUM_DB_NAME", "premium_app"),
            ui_port=int(env.get("PREMIUM_UI_PORT", "8080")),
            worker_log_port=int(env.get("PREMIUM_WORKER_LOG_PORT", "8793")),
            trigger_log_port=int(env.get("PREMIUM_TRIGGER_LOG_PORT", "8794")),
        )

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def app_conninfo(self) -> dict[str, Any]:
        return {"host": self.pg_host, "port": self.pg_port, "user": self.pg_user, "dbname": self.app_db}

    def rel(self, path: Path) -> str:
        """``path`` relative to the checkout when it is inside it (shorter to read)."""
        with contextlib.suppress(ValueError):
            return str(path.resolve().relative_to(ROOT))
        return str(path)


# -- processes -----------------------------------------------------------------------------------


def _alive(pid: int, create_time: float | None = None) -> bool:
    """Running (not a zombie), and the same process as recorded when ``create_time`` is given."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def _session(sid: int, since: float) -> list[psutil.Process]:
    """The live processes of session ``sid`` started at or after ``since`` (guards against PID reuse)."""
    found = []
    for proc in psutil.process_iter(["pid", "create_time", "status"]):
        try:
            if (
                os.getsid(proc.pid) == sid
                and proc.info["create_time"] >= since - 1.0
                and proc.info["status"] != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def stop_sessions(leaders: dict[str, dict[str, Any]], grace_s: float) -> list[str]:
    """SIGTERM each leader (``{name: {"pid", "create_time"}}``, each the leader of its own session),
    wait up to ``grace_s`` for every process of those sessions to exit, SIGKILL what is left and
    wait again. Returns the survivors (an empty list)."""

    def members() -> list[psutil.Process]:
        return [p for info in leaders.values() for p in _session(int(info["pid"]), float(info["create_time"]))]

    for name, info in leaders.items():
        if _alive(int(info["pid"]), info["create_time"]):
            say(f"  stopping {name} (pid {info['pid']})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(info["pid"]), signal.SIGTERM)
    for sig, wait_s in ((None, grace_s), (signal.SIGKILL, 10.0)):
        left = members()
        if left and sig is not None:
            say(f"  {len(left)} processes still running after {grace_s:.0f}s: SIGKILL")
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(sig)
        deadline = time.monotonic() + wait_s
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = members()
        if not left:
            return []
    return [f"{p.pid} {' '.join(p.cmdline())[:100]}" for p in left if p.is_running()]


def port_in_use(port: int) -> bool:
    """Something listens on ``port`` (loopback or any interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- state ---------------------------------------------------------------------------------------


def load_state(cfg: Config) -> dict[str, Any] | None:
    try:
        return json.loads(cfg.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_state(cfg: Config, state: dict[str, Any]) -> None:
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = cfg.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    os.replace(tmp, cfg.state_file)


def _simulator_states(cfg: Config) -> dict[str, dict[str, Any]]:
    """The simulators' own state files (written by premium.simulators.runner)."""
    found = {}
    for name in SIMULATORS:
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((cfg.state_dir / f"{name}.json").read_text(encoding="utf-8"))
            create_time = None
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(int(info["pid"]))
                if str(info.get("module")) in " ".join(proc.cmdline()):  # still that simulator, not a reused pid
                    create_time = proc.create_time()
            found[name] = {**info, "create_time": create_time}
    return found


def all_processes(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {**state.get("simulators", {}), **state.get("processes", {})}


def dead_processes(state: dict[str, Any]) -> list[str]:
    return [n for n, p in all_processes(state).items() if not _alive(int(p["pid"]), p.get("create_time"))]


# -- the REST API ----------------------------------------------------------------------------------


class Api:
    """Airflow's public REST API as the local admin (a JWT from ``POST /auth/token``)."""

    def __init__(self, base_url: str, password: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, timeout=timeout, trust_env=False)
        if password is not None:
            resp = self.client.post("/auth/token", json={"username": ADMIN, "password": password})
            if resp.status_code not in (200, 201):
                raise StackError(f"login as {ADMIN} refused: HTTP {resp.status_code} {resp.text[:300]}")
            self.client.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def request(self, method: str, path: str, *, expect: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        resp = self.client.request(method, path, **kwargs)
        if resp.status_code not in expect:
            raise StackError(f"{method} {path} -> {resp.status_code}: {resp.text[:1000]}")
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def health(self) -> dict[str, Any] | None:
        try:
            resp = self.client.get("/api/v2/monitor/health", timeout=5.0)
            return resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        resp = self.client.get(f"/api/v2/dags/{dag_id}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise StackError(f"GET dag {dag_id} -> {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused})

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        while True:
            page = self.get(f"/api/v2/dags/{dag_id}/dagRuns", limit=100, offset=len(runs), **params)
            batch = list(page["dag_runs"])
            runs += batch
            if not batch or len(runs) >= (page.get("total_entries") or 0):
                return runs

    def close(self) -> None:
        self.client.close()


def healthy(health: dict[str, Any] | None) -> bool:
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return bool(health) and all((health.get(p) or {}).get("status") == "healthy" for p in parts)


def admin_password(cfg: Config) -> str:
    """The local admin's password, generated by scripts/env.sh into the local secrets file."""
    password = os.environ.get("AIRFLOW_ADMIN_PASSWORD")
    if not password:
        raise StackError(f"AIRFLOW_ADMIN_PASSWORD is not set: run through scripts/env.sh ({cfg.rel(cfg.secrets_file)})")
    return password


def login(cfg: Config, state: dict[str, Any] | None = None) -> Api:
    return Api((state or {}).get("ui_url") or cfg.ui_url, admin_password(cfg))


# -- up ------------------------------------------------------------------------------------------


def _run(cmd: list[str], log: Path, env: dict[str, str], what: str) -> None:
    with open(log, "ab") as out:
        result = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise StackError(f"{what} failed (exit {result.returncode}); its output, {log}:\n{_tail(log)}")


def prepare_databases(cfg: Config, env: dict[str, str]) -> None:
    """Both databases created when missing, Airflow's and the application's migrations applied."""
    cli = [PYTHON, "-m", "premium.cli"]
    pg = ["--host", cfg.pg_host, "--port", str(cfg.pg_port)]
    log = cfg.state_dir / "setup.log"
    if subprocess.run([*cli, "check-postgres", *pg], env=env).returncode != 0:
        raise StackError(f"PostgreSQL is not reachable at {cfg.pg_host}:{cfg.pg_port}")
    _run(
        [*cli, "create-databases", cfg.airflow_db, cfg.app_db, *pg, "--user", cfg.pg_user], log, env, "create-databases"
    )
    say(f"  Airflow metadata DB {cfg.airflow_db}: airflow db migrate")
    _run([AIRFLOW, "db", "migrate"], log, env, "airflow db migrate")
    say(f"  application DB {cfg.app_db}: python -m premium.cli migrate")
    _run([*cli, "migrate"], log, env, "premium.cli migrate")


def customer_count(cfg: Config) -> int:
    with psycopg.connect(**cfg.app_conninfo) as conn:
        return conn.execute("SELECT count(*) FROM customers").fetchone()[0]


def load_customers(cfg: Config, env: dict[str, str], count: int, seed: int) -> None:
    """A deterministic synthetic base through the CSV command (the demo's)."""
    csv = cfg.state_dir / "customers.csv"
    log = cfg.state_dir / "setup.log"
    cli = [PYTHON, "-m", "premium.cli"]
    _run([*cli, "gen-customers", "--count", str(count), "--seed", str(seed), "--out", str(csv)], log, env, "gen")
    _run([*cli, "load-customers", str(csv), "--show-rejections", "5"], log, env, "load-customers")


def start_simulators(cfg: Config, time_scale: str) -> dict[str, dict[str, Any]]:
    """Core banking and both carriers, detached; their callbacks signed with the webhook secrets."""
    state_dir = str(cfg.state_dir)
    carrier = ["--secret-env", "SMS_SIM_SECRET", "--time-scale", time_scale]
    specs = {
        "core-banking": ["--auth", "api_key", "--secret-env", "BANK_SIM_SECRET"],
        "sms-primary": ["--name", "primary", *carrier, "--webhook-secret-env", "SMS_WEBHOOK_SECRET"],
        "sms-secondary": [
            "--name",
            "secondary",
            *carrier,
            "--webhook-secret-env",
            "SMS_CARRIER_SECONDARY_WEBHOOK_SECRET",
        ],
    }
    for name, args in specs.items():
        module = runner.DEFAULT_MODULE if name == "core-banking" else "premium.simulators.sms_carrier"
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # it prints the URL
            code = runner.cli(["start", "--name", name, "--state-dir", state_dir, "--module", module, "--", *args])
        if code != 0:
            raise StackError(f"simulator {name} did not start; its log: {cfg.state_dir / f'{name}.log'}")
    sims = _simulator_states(cfg)
    for name, info in sims.items():
        say(f"  {name:<14} {info['base_url']}  (pid {info['pid']})")
    return sims


def _http_conn(base_url: str, password: str, extra: dict[str, Any] | None = None) -> str:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    conn: dict[str, Any] = {
        "conn_type": "http",
        "host": host,
        "port": int(port),
        "schema": "http",
        "password": password,
    }
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)


def settings_file(cfg: Config) -> Path:
    """The deployment settings the stack runs with: yours (PREMIUM_SETTINGS_FILE) or the local stack's."""
    if os.environ.get("PREMIUM_SETTINGS_FILE"):
        return Path(os.environ["PREMIUM_SETTINGS_FILE"])
    path = cfg.state_dir / "settings.json"
    callback = f"{cfg.ui_url}/premium/api/webhooks/sms-delivery"
    settings = {**LOCAL_SETTINGS, "sms": {**LOCAL_SETTINGS["sms"], "callback_url": callback}}
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return path


def passwords_file(cfg: Config) -> Path:
    """The simple auth manager's passwords file, written from the local secrets file (mode 600)."""
    path = cfg.airflow_home / "simple_auth_manager_passwords.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({ADMIN: admin_password(cfg)}, out)
    os.chmod(path, 0o600)
    return path


def airflow_env(cfg: Config, sims: dict[str, dict[str, Any]], settings: Path, passwords: Path) -> dict[str, str]:
    """The environment of every Airflow component: scripts/env.sh's, plus the stack's."""
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_ADMIN_PASSWORD"}  # the UI's, not the tasks'
    env.setdefault("AIRFLOW__CORE__PARALLELISM", os.environ.get("PREMIUM_PARALLELISM", "8"))
    api = cfg.ui_url
    env.update(
        {
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(cfg.ui_port),
            "AIRFLOW__API__BASE_URL": f"{api}/",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(cfg.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(cfg.trigger_log_port),
            # A task's supervisor notices its process's exit within 1 s (default 5): narrows Airflow
            # 3.3.2's race after short deferrals (tests/support/standalone.py, apache/airflow#71580).
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "PREMIUM_SETTINGS_FILE": str(settings),
        }
    )
    if sims:
        env["AIRFLOW_CONN_CORE_BANKING"] = _http_conn(
            sims["core-banking"]["base_url"], env["BANK_API_KEY"], {"auth_type": "api_key"}
        )
        env["AIRFLOW_CONN_SMS_CARRIER"] = _http_conn(sims["sms-primary"]["base_url"], env["SMS_SIM_SECRET"])
        env["AIRFLOW_CONN_SMS_CARRIER_SECONDARY"] = _http_conn(sims["sms-secondary"]["base_url"], env["SMS_SIM_SECRET"])
    return env


def start_components(cfg: Config, env: dict[str, str], state: dict[str, Any]) -> None:
    for name in COMPONENTS:
        log = cfg.state_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [AIRFLOW, name],
                env=env,
                cwd=cfg.airflow_home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        state["processes"][name] = {
            "pid": proc.pid,
            "create_time": psutil.Process(proc.pid).create_time(),
            "log": str(log),
        }
        save_state(cfg, state)  # recorded at once: `make down` can stop it whatever happens next
        say(f"  {name:<14} pid {proc.pid}, log {cfg.rel(log)}")


def wait_healthy(cfg: Config, state: dict[str, Any], timeout: float) -> None:
    api = Api(cfg.ui_url)
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    try:
        while time.monotonic() < deadline:
            dead = dead_processes(state)
            if dead:
                name = dead[0]
                log = Path(all_processes(state)[name].get("log", cfg.state_dir / f"{name}.log"))
                raise StackError(f"{name} exited during startup; the end of {log}:\n{_tail(log)}")
            last = api.health()
            if healthy(last):
                return
            time.sleep(1.0)
    finally:
        api.close()
    raise StackError(f"Airflow not healthy within {timeout:.0f}s (last health: {last}); logs in {cfg.state_dir}")


def ensure_pools(api: Api) -> None:
    """The pools of deploy/pools.json, created when missing (a changed slot count is kept)."""
    pools = json.loads((ROOT / "deploy" / "pools.json").read_text(encoding="utf-8"))
    for name, spec in pools.items():
        if api.client.get(f"/api/v2/pools/{name}").status_code == 404:
            api.request("POST", "/api/v2/pools", expect=(200, 201), json={"name": name, **spec})
            say(f"  pool {name}: {spec['slots']} slots")


def wait_for_dag(api: Api, dag_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dag = api.dag(dag_id)
        if dag is not None:
            return dag
        errors = api.get("/api/v2/importErrors", limit=20)["import_errors"]
        if errors:
            raise StackError(f"DAG import errors: {json.dumps(errors)[:2000]}")
        time.sleep(1.0)
    raise StackError(f"{dag_id} not parsed within {timeout:.0f}s (dag-processor log: dag-processor.log)")


def print_address(cfg: Config, state: dict[str, Any]) -> None:
    url = state.get("ui_url", cfg.ui_url)
    settings = state.get("settings_file", "")
    say(f"""
Airflow UI   {url}
  log in     user {ADMIN}; password: AIRFLOW_ADMIN_PASSWORD in {cfg.rel(cfg.secrets_file)} (mode 600), e.g.
             sed -n 's/^AIRFLOW_ADMIN_PASSWORD=//p' {cfg.rel(cfg.secrets_file)}
  logs       {cfg.rel(cfg.state_dir)}/*.log (components, simulators); task logs in the UI
  settings   {cfg.rel(Path(settings)) if settings else "-"} (deployment settings of the local stack)
  stop       make down""")


def up(cfg: Config, *, wait_timeout: float = 300.0) -> dict[str, Any]:
    """Start the stack unless it runs; its state (``stack.json``)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.airflow_home.mkdir(parents=True, exist_ok=True)
    state = load_state(cfg)
    if state is not None:
        dead = dead_processes(state)
        api = Api(state["ui_url"])
        try:
            running = not dead and healthy(api.health())
        finally:
            api.close()
        if running:
            say(f"The stack is already running (started {state['started_at']}).")
            print_address(cfg, state)
            return state
        say(f"The stack recorded in {cfg.rel(cfg.state_file)} is not whole ({', '.join(dead) or 'unhealthy'}):")
        say("stopping what is left of it, then starting it again.")
        down(cfg)
    elif _simulator_states(cfg):
        down(cfg)  # simulators left behind by an interrupted `make up`

    busy = [p for p in (cfg.ui_port, cfg.worker_log_port, cfg.trigger_log_port) if port_in_use(p)]
    if busy:
        raise StackError(
            f"port(s) {busy} already in use by another program; choose others with PREMIUM_UI_PORT, "
            "PREMIUM_WORKER_LOG_PORT, PREMIUM_TRIGGER_LOG_PORT"
        )
    started = time.monotonic()
    state = {
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "ui_url": cfg.ui_url,
        "ports": {"ui": cfg.ui_port, "worker_log": cfg.worker_log_port, "trigger_log": cfg.trigger_log_port},
        "airflow_home": str(cfg.airflow_home),
        "databases": {"airflow": cfg.airflow_db, "app": cfg.app_db},
        "processes": {},
        "simulators": {},
    }
    try:
        step(f"Databases on {cfg.pg_host}:{cfg.pg_port}: {cfg.airflow_db} (Airflow), {cfg.app_db} (application)")
        settings = settings_file(cfg)
        env = airflow_env(cfg, {}, settings, passwords_file(cfg))
        prepare_databases(cfg, env)
        if customer_count(cfg) == 0:
            count, seed = int(os.environ.get("DEMO_CUSTOMERS", "2000")), int(os.environ.get("DEMO_SEED", "20251118"))
            say(f"  no customers yet: loading the demo's synthetic base ({count} customers, seed {seed})")
            load_customers(cfg, env, count, seed)

        step("Simulators on loopback (core banking; SMS carriers primary and secondary, callbacks signed)")
        state["simulators"] = start_simulators(cfg, os.environ.get("PREMIUM_CARRIER_TIME_SCALE", "0.1"))
        state["settings_file"] = str(settings)
        save_state(cfg, state)

        step("Airflow: scheduler (LocalExecutor), dag-processor, triggerer, api-server")
        env = airflow_env(cfg, state["simulators"], settings, passwords_file(cfg))
        start_components(cfg, env, state)
        wait_healthy(cfg, state, wait_timeout)
        api = login(cfg, state)
        try:
            ensure_pools(api)
            wait_for_dag(api, TRACKING_DAG, 180.0)
            api.set_paused(TRACKING_DAG, False)
            say(f"  {TRACKING_DAG} unpaused: it runs on every sms_submissions event")
            balance = wait_for_dag(api, BALANCE_DAG, 60.0)
            say(f"  {BALANCE_DAG} is {'paused' if balance['is_paused'] else 'unpaused'}")
        finally:
            api.close()
    except BaseException:
        say("\nmake up failed: stopping what it started")
        down(cfg)
        raise
    state["startup_s"] = round(time.monotonic() - started, 1)
    save_state(cfg, state)
    say(f"\nThe stack is up ({state['startup_s']:.0f}s).")
    print_address(cfg, state)
    return state


# -- down ----------------------------------------------------------------------------------------


def down(cfg: Config) -> int:
    state = load_state(cfg) or {}
    leaders = {**_simulator_states(cfg), **state.get("processes", {})}
    leaders = {n: p for n, p in leaders.items() if p.get("create_time") is not None}
    if not leaders and not state:
        say(f"Nothing recorded in {cfg.rel(cfg.state_dir)}: no stack to stop.")
        return 0
    grace = float(os.environ.get("PREMIUM_DOWN_GRACE_S", "30"))
    survivors = stop_sessions(leaders, grace)
    for name in SIMULATORS:
        for suffix in (".json", ".ready.json"):
            (cfg.state_dir / f"{name}{suffix}").unlink(missing_ok=True)
    if survivors:
        say(f"still running after SIGKILL: {survivors}")
        return 1
    cfg.state_file.unlink(missing_ok=True)
    ports = state.get("ports", {})
    busy = [p for p in ports.values() if port_in_use(int(p))]
    if busy:
        say(f"stopped; port(s) {busy} still in use (by another program?)")
        return 1
    say("The stack is stopped.")
    return 0


def status(cfg: Config) -> int:
    state = load_state(cfg)
    if state is None:
        say("not running")
        return 1
    for name, info in all_processes(state).items():
        alive = _alive(int(info["pid"]), info.get("create_time"))
        say(f"  {name:<14} pid {info['pid']:<8} {'running' if alive else 'NOT RUNNING'}")
    api = Api(state["ui_url"])
    try:
        health = api.health()
    finally:
        api.close()
    say(f"  health         {json.dumps(health) if health else 'no answer'}")
    ok = healthy(health) and not dead_processes(state)
    if ok:
        print_address(cfg, state)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/stack.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    cfg = Config.from_env()
    try:
        if args.action == "up":
            up(cfg)
            return 0
        if args.action == "down":
            return down(cfg)
        return status(cfg)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
