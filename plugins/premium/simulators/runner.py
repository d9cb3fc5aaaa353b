"""Start and stop simulator processes (tests, the demo, the benchmark, the Makefile).

Works for any simulator module honouring the contract: ``--port P`` (0 = ephemeral),
``--ready-file PATH`` (JSON ``{"port", "pid", "base_url"}`` written atomically once listening),
``GET /_sim/health`` → 200, clean exit on SIGTERM; optional ``/_sim/faults|stats|reset``.

In Python::

    with SimulatorProcess(args=["--auth", "api_key"], env={"BANK_SIM_SECRET": "k"}) as sim:
        sim.set_faults({"latency_ms": 5})
        ... sim.base_url ...

Command line (Makefile)::

    python -m premium.simulators.runner start  --name N --state-dir DIR [--module M] [--timeout S]
                                                [--client-cert CRT --client-key KEY] -- <module args>
    python -m premium.simulators.runner stop   --name N --state-dir DIR
    python -m premium.simulators.runner status --name N --state-dir DIR

``start`` runs the simulator detached (own session, output appended to DIR/N.log, state in
DIR/N.json), waits for health and prints the base URL; if N is already running and healthy it
only prints the URL. ``stop`` sends SIGTERM (SIGKILL after 5 s); no error if not running.
``status`` prints the URL and exits 0 if healthy, else exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

PLUGINS_DIR = Path(__file__).resolve().parents[2]
DEFAULT_MODULE = "premium.simulators.core_banking"


class SimulatorError(RuntimeError):
    """A simulator failed to start or a control call was refused."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _opener(client_cert: tuple[str, str] | None = None) -> urllib.request.OpenerDirector:
    """urllib opener without proxies; HTTPS is not verified (control/health calls on loopback)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client_cert:
        ctx.load_cert_chain(*client_cert)
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))


def call_json(
    opener: urllib.request.OpenerDirector, method: str, url: str, body: Any = None, timeout: float = 10.0
) -> Any:
    """One JSON request; returns the decoded body, SimulatorError on a non-2xx answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            detail: Any = json.loads(raw)
        except ValueError:
            detail = raw.decode(errors="replace")
        raise SimulatorError(f"{method} {url} -> {exc.code}: {detail}", exc.code, detail) from None
    return json.loads(raw) if raw else None


def is_healthy(base_url: str, client_cert: tuple[str, str] | None = None, timeout: float = 2.0) -> bool:
    try:
        call_json(_opener(client_cert), "GET", base_url + "/_sim/health", timeout=timeout)
    except (OSError, SimulatorError, ValueError):
        return False
    return True


class SimulatorProcess:
    """A simulator subprocess on an ephemeral loopback port; a context manager."""

    def __init__(
        self,
        module: str = DEFAULT_MODULE,
        args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        name: str = "core-banking",
        *,
        startup_timeout: float = 20.0,
        client_cert: tuple[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        ready_file: str | os.PathLike[str] | None = None,
        detach: bool = False,
    ) -> None:
        """``client_cert`` (cert, key) is used for control calls to an mTLS server; ``detach``
        starts it in its own session and leaves it running when this object is dropped."""
        self.module = module
        self.args = list(args)
        self.env = dict(env or {})
        self.name = name
        self.startup_timeout = startup_timeout
        self.client_cert = client_cert
        self.log_path = Path(log_path) if log_path else None
        self.ready_file = Path(ready_file) if ready_file else None
        self.detach = detach
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: str | None = None
        self._info: dict[str, Any] | None = None
        self._opener = _opener(client_cert)

    # -- lifecycle -----------------------------------------------------------------------------

    def command(self, ready_file: Path) -> list[str]:
        cmd = [sys.executable, "-m", self.module]
        if "--port" not in self.args and not any(a.startswith("--port=") for a in self.args):
            cmd += ["--port", "0"]
        return [*cmd, "--ready-file", str(ready_file), *self.args]

    def start(self) -> SimulatorProcess:
        """Launch and wait (≤ startup_timeout) for the ready file and a healthy /_sim/health."""
        if self._proc is not None:
            raise SimulatorError(f"{self.name} already started")
        if self.ready_file is None or self.log_path is None:
            self._tmpdir = tempfile.mkdtemp(prefix=f"sim-{self.name}-")
        ready = self.ready_file or Path(self._tmpdir or "") / "ready.json"
        log_path = self.log_path or Path(self._tmpdir or "") / "output.log"
        ready.unlink(missing_ok=True)
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGINS_DIR), env.get("PYTHONPATH")) if p)
        self._log_path = log_path
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(ready),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=self.detach,
            )
        try:
            self._wait_ready(ready)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, ready: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SimulatorError(
                    f"{self.name} exited with {self._proc.returncode} during startup:\n{self.log_tail()}"
                )
            if self._info is None and ready.exists():
                info = json.loads(ready.read_text(encoding="utf-8"))
                if info.get("pid") == self._proc.pid:
                    self._info = info
            if self._info is not None and is_healthy(self._info["base_url"], self.client_cert, timeout=1.0):
                return
            time.sleep(0.05)
        raise SimulatorError(f"{self.name} not healthy within {self.startup_timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
        except (AttributeError, OSError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._info = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- accessors -----------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        if self._info is None:
            raise SimulatorError(f"{self.name} is not running")
        return self._info

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- control endpoints ---------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return call_json(self._opener, method, self.base_url + path, body)

    def set_faults(self, faults: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole fault config (missing keys = defaults); returns the stored config."""
        return self.call("PUT", "/_sim/faults", faults)

    def get_faults(self) -> dict[str, Any]:
        return self.call("GET", "/_sim/faults")

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "/_sim/stats")

    def reset(self) -> None:
        """Clear the simulator's stats and request counters (not its faults)."""
        self.call("POST", "/_sim/reset")


# -- command line --------------------------------------------------------------------------------


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (not reaped by a non-reaping init) is dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _ours(state: dict[str, Any]) -> bool:
    """The recorded pid is alive and still runs the recorded module (guards against pid reuse)."""
    pid = int(state.get("pid", 0))
    if pid <= 0 or not _alive(pid):
        return False
    cmdline = _cmdline(pid)
    return cmdline is None or str(state.get("module")) in cmdline


def stop_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM a process that is not our child; SIGKILL after ``timeout`` s."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _load_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _client_cert(state: dict[str, Any]) -> tuple[str, str] | None:
    cert = state.get("client_cert")
    return (cert[0], cert[1]) if cert else None


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sim_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, sim_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m premium.simulators.runner", description="Start/stop a simulator.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--name", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--module", default=DEFAULT_MODULE)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--client-cert", help="client certificate for health checks of an mTLS simulator")
    parser.add_argument("--client-key")
    opts = parser.parse_args(argv)

    state_dir: Path = opts.state_dir
    state_file = state_dir / f"{opts.name}.json"
    state = _load_state(state_file)
    running = state is not None and _ours(state)

    if opts.action == "status":
        if state and running and is_healthy(state["base_url"], _client_cert(state)):
            print(state["base_url"])
            return 0
        print(f"{opts.name}: not running", file=sys.stderr)
        return 1

    if opts.action == "stop":
        if state and running:
            stop_pid(int(state["pid"]))
            print(f"{opts.name}: stopped (pid {state['pid']})", file=sys.stderr)
        else:
            print(f"{opts.name}: not running", file=sys.stderr)
        state_file.unlink(missing_ok=True)
        return 0

    # start
    if state and running:
        if is_healthy(state["base_url"], _client_cert(state)):
            print(state["base_url"])
            return 0
        stop_pid(int(state["pid"]))  # alive but unhealthy: replace it
    state_dir.mkdir(parents=True, exist_ok=True)
    client_cert = (opts.client_cert, opts.client_key) if opts.client_cert else None
    sim = SimulatorProcess(
        opts.module,
        sim_args,
        name=opts.name,
        startup_timeout=opts.timeout,
        client_cert=client_cert,
        log_path=state_dir / f"{opts.name}.log",
        ready_file=state_dir / f"{opts.name}.ready.json",
        detach=True,
    )
    try:
        sim.start()
    except SimulatorError as exc:
        print(f"{opts.name}: failed to start: {exc}", file=sys.stderr)
        return 1
    new_state = {
        **sim.info,
        "module": opts.module,
        "args": sim_args,
        "log": str(state_dir / f"{opts.name}.log"),
        "client_cert": list(client_cert) if client_cert else None,
    }
    tmp = state_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new_state, indent=2), encoding="utf-8")
    os.replace(tmp, state_file)
    print(sim.base_url)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
