"""Fetch-stage benchmark: the real stage against a bare aiohttp loop, same simulator, same accounts.

``make bench`` (``BENCH_ARGS="--accounts 1000000 --latencies 0"`` to pass options). Prints
figures, it is not a timed test: it exits 0 whatever the ratios, and non-zero only when the
stage produced wrong results (a fetch task failed, the run is not COMPLETE, checked + skipped is
not the planned count, or a sampled balance differs from the simulator's model).

For each latency L (simulator fault ``latency_ms``):

- *bare*: one process, ``in_flight`` workers, one ``aiohttp.ClientSession`` with
  ``TCPConnector(limit=in_flight)``, the stage's URLs, query and headers, reading each body and
  nothing else (no parsing, no database), over the planned accounts;
- *stage*: ``plan_run``, then every descriptor's ``fetch_chunk`` in its own subprocess, one after
  another (a pool of one slot; one subprocess = one fetch task instance), then ``finish_run``.
  Stage accounts/s = planned accounts / the summed wall time of the ``fetch_chunk`` calls
  (interpreter start-up and imports are excluded from the rate and reported separately);
- ratio = stage / bare, with a goal of >= 0.6 at 0 ms and >= 0.9 at 20 ms.

The stage also runs at N/10 accounts (0 ms), to compare a fetch task's peak RSS at both sizes.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import os
import platform
import pstats
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
if str(PLUGINS) not in sys.path:  # appended: a PYTHONPATH naming another plugins copy (a prototype) wins
    sys.path.append(str(PLUGINS))

from benchlib import (  # noqa: E402
    add_database_arguments,
    finish,
    machine_cpu_s,
    postmaster_pid,
    proc_cpu_s,
    recreate_database,
)

GOALS = {0: 0.6, 20: 0.9}  # latency_ms -> minimum stage/bare ratio
FIRST_CHECK_DATE = date(2025, 11, 18)
SEED = 20251118
QUIET_SHARE = 0.15  # machine CPU (share of one core) under which it counts as quiet before a measurement
NOISY_SHARE = 0.25  # other processes' CPU (share of one core) above which a measurement is marked NOISY
SAMPLE_CHECK = 500  # recorded balances compared with the simulator's model, per stage run
CHILD_FLAG = "--child"

# -- small helpers -----------------------------------------------------------------------------------


def vm_hwm_kb() -> int | None:
    """Peak resident set size of this process (VmHWM), in kB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kb(result: dict[str, Any]) -> int:
    """A child's peak RSS: its own VmHWM (``ru_maxrss`` from wait4 is no good on Linux: exec folds the
    forking parent's high-water mark into it, so every child would report at least the parent's size)."""
    return result.get("vm_hwm_kb") or result["maxrss_kb"]


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def spawn(mode: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run this script in ``--child MODE`` with ``spec``; its JSON result plus wall, rusage and exit code.

    ``os.wait4`` gives the child's own rusage (peak RSS, CPU) whatever other children ran before.
    """
    fd, spec_path = tempfile.mkstemp(prefix=f"{mode}-", suffix=".spec.json", dir=workdir)
    os.close(fd)
    out_path = spec_path.replace(".spec.json", ".out.json")
    Path(spec_path).write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(PLUGINS)) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, mode, spec_path, out_path]
    t_spawn = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    t_exit = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        result = json.loads(Path(out_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = {"error": f"child {mode} wrote no result (exit code {proc.returncode})"}
    for path in (spec_path, out_path):
        Path(path).unlink(missing_ok=True)
    result.update(
        exit_code=proc.returncode,
        t_spawn=t_spawn,
        t_exit=t_exit,
        wall_s=t_exit - t_spawn,
        maxrss_kb=usage.ru_maxrss,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )
    if "t_ready" in result:
        result["startup_s"] = result["t_ready"] - t_spawn
        result["teardown_s"] = t_exit - result["t_done"]
    return result


# -- children ----------------------------------------------------------------------------------------


def child_fetch(spec: dict[str, Any]) -> dict[str, Any]:
    """One fetch task instance: ``fetch_chunk`` of one descriptor, as the Airflow task calls it."""
    from premium.banking.client import BankEndpoint
    from premium.banking.stage import ChunkDescriptor, fetch_chunk
    from premium.settings import BalanceSettings

    settings = BalanceSettings(**spec["settings"])
    endpoint = BankEndpoint.from_connection(SimpleNamespace(**spec["connection"]))
    descriptor = ChunkDescriptor.from_xcom(spec["descriptor"])
    check_date = date.fromisoformat(spec["check_date"])
    args = (spec["conninfo"], descriptor, check_date, settings, endpoint, spec["correlation_id"])
    cpu_ready, t_ready = time.process_time(), time.monotonic()
    if spec.get("profile_path"):
        profiler = cProfile.Profile()
        summary = profiler.runcall(fetch_chunk, *args)
        profiler.dump_stats(spec["profile_path"])
    else:
        summary = fetch_chunk(*args)
    t_done, cpu_done = time.monotonic(), time.process_time()
    return {
        "t_ready": t_ready,
        "t_done": t_done,
        "fetch_s": t_done - t_ready,
        "fetch_cpu_s": cpu_done - cpu_ready,
        "summary": summary.as_dict(),
        "vm_hwm_kb": vm_hwm_kb(),
    }


async def bare_loop(
    base_url: str, headers: dict[str, str], accounts: list[str], in_flight: int, params: dict[str, str]
) -> Counter:
    """GET every account's balance with ``in_flight`` workers over one session; read the body, nothing else."""
    from urllib.parse import quote

    import aiohttp

    statuses: Counter = Counter()
    pending = iter(accounts)
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            for account_id in pending:
                url = f"{base_url}/api/v1/accounts/{quote(account_id, safe='')}/balance"
                async with session.get(url, params=params) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return statuses


def child_bare(spec: dict[str, Any]) -> dict[str, Any]:
    from premium.banking.client import BankEndpoint

    endpoint = BankEndpoint.from_connection(SimpleNamespace(**spec["connection"]))
    headers = {**endpoint.headers, "X-Correlation-Id": spec["correlation_id"]}
    accounts = Path(spec["accounts_path"]).read_text(encoding="ascii").split()
    params = {"asOfDate": spec["check_date"], "asOfTime": spec["as_of_time"]}
    cpu_ready, t_ready = time.process_time(), time.monotonic()
    statuses = asyncio.run(bare_loop(endpoint.base_url, headers, accounts, spec["in_flight"], params))
    t_done, cpu_done = time.monotonic(), time.process_time()
    return {
        "t_ready": t_ready,
        "t_done": t_done,
        "fetch_s": t_done - t_ready,
        "fetch_cpu_s": cpu_done - cpu_ready,
        "requests": len(accounts),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "vm_hwm_kb": vm_hwm_kb(),
    }


def child_main(argv: list[str]) -> int:
    import logging

    mode, spec_path, out_path = argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if spec.get("cpus"):
        os.sched_setaffinity(0, set(spec["cpus"]))
    try:
        result = {"fetch": child_fetch, "bare": child_bare}[mode](spec)
        code = 0
    except Exception:  # noqa: BLE001 - reported to the parent, which decides
        result = {"error": traceback.format_exc()}
        code = 1
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, out_path)
    return code


# -- setup -------------------------------------------------------------------------------------------


_COPY_CUSTOMERS = (
    "COPY customers (customer_id, account_id, first_name_enc, phone_enc, phone_hash, pii_key_id, "
    "language, status, sms_consent, sms_consent_at) FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ["text", "text", "bytea", "bytea", "bytea", "text", "text", "text", "bool", "timestamptz"]


def insert_customers(conninfo: dict[str, Any], keyring: Any, rows: Any, count: int) -> int:
    """COPY ``count`` synthetic rows into ``customers``, PII encrypted with the real keyring; rows written.

    Same encryption, associated data and phone hash as ``premium.customers.load_customers_csv``,
    without its CSV parsing, validation and compare-with-stored pass (the rows are known good).
    """
    from datetime import UTC, datetime

    import psycopg

    from premium.crypto import aad_for

    now = datetime.now(UTC)
    written = 0
    if count <= 0:
        return written
    with psycopg.connect(**conninfo) as conn, conn.cursor() as cur:
        with cur.copy(_COPY_CUSTOMERS) as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                customer_id = row["customer_id"]
                key_id, name_enc = keyring.encrypt(row["first_name"], aad_for(customer_id, "first_name"))
                _, phone_enc = keyring.encrypt(row["phone_number"], aad_for(customer_id, "phone_number"))
                consent = row["sms_consent"] == "true"
                copy.write_row(
                    (
                        customer_id,
                        row["account_id"],
                        name_enc,
                        phone_enc,
                        keyring.phone_hash(row["phone_number"]),
                        key_id,
                        row["language"],
                        row["status"],
                        consent,
                        now if consent else None,
                    )
                )
                written += 1
                if written == count:
                    break
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE customers")
    return written


def settle_database(conninfo: dict[str, Any]) -> None:
    """Between measurements: fresh statistics, no dead tuples, no checkpoint due in the next run."""
    import psycopg

    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE customers, daily_balance_checks, balance_check_failures, balance_check_runs")
        conn.execute("CHECKPOINT")


def active_accounts(conninfo: dict[str, Any]) -> list[str]:
    import psycopg

    with psycopg.connect(**conninfo) as conn:
        return [r[0] for r in conn.execute("SELECT account_id FROM customers WHERE status = 'ACTIVE' ORDER BY id")]


# -- CPU accounting ----------------------------------------------------------------------------------


def wait_for_quiet(max_wait_s: float, threshold: float = QUIET_SHARE) -> float | None:
    """Wait (at most ``max_wait_s``) until the machine uses under ``threshold`` of a core for 1 s.

    The benchmark's own processes are idle between measurements, so what is left is other work on
    the machine. Returns the seconds waited, None if the machine never quieted down.
    """
    started = time.monotonic()
    announced = False
    while True:
        before = machine_cpu_s()
        time.sleep(1.0)
        after = machine_cpu_s()
        if before is None or after is None:
            return 0.0
        busy = after[0] - before[0]
        waited = time.monotonic() - started
        if busy < threshold:
            if announced:
                print(f"  ... quiet after {waited:.0f} s", flush=True)
            return waited
        if waited >= max_wait_s:
            if max_wait_s > 0:
                print(f"  ... still busy after {waited:.0f} s ({busy:.0%} of a core); measuring anyway", flush=True)
            return None
        if not announced:
            print(f"  waiting for other work on the machine to stop ({busy:.0%} of a core busy) ...", flush=True)
            announced = True


class CpuMonitor:
    """CPU time spent during one measurement, by whom: a thread samples /proc every 10 ms.

    - ``sim``: the simulator process;
    - ``pg``: this benchmark's PostgreSQL backends (process title names the database) plus the
      WAL writer, background writer and checkpointer (they write what the stage wrote);
    - ``other``: everything else on the machine (other users of these cores), derived as the
      machine's busy time minus ours (client processes, simulator, pg, this process);
    - ``steal``: time the hypervisor gave to other guests.

    A backend's CPU after its last sample is missed (~10 ms of it at most), so ``pg`` is a little low.
    """

    AUX = ("walwriter", "background writer", "checkpointer")

    def __init__(self, sim_pid: int, postmaster: int | None, dbname: str) -> None:
        import threading

        self.sim_pid = sim_pid
        self.postmaster = postmaster
        self.tag = f" {dbname} "
        self._kinds: dict[int, bool | int] = {}  # pid -> ours? (an int: times seen, undecided)
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _ours(self, pid: int) -> bool:
        """Whether a postmaster child is ours. A new backend shows its database in its title only once
        connected, so "not ours" is only believed from the third look on."""
        kind = self._kinds.get(pid)
        if isinstance(kind, bool):
            return kind
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        if self.tag in title + " " or any(aux in title for aux in self.AUX):
            self._kinds[pid] = True
            return True
        looks = (kind or 0) + 1
        self._kinds[pid] = False if looks >= 3 else looks
        return False

    def _sample(self, initial: bool = False) -> None:
        if self.postmaster is None:
            return
        try:
            children = Path(f"/proc/{self.postmaster}/task/{self.postmaster}/children").read_text().split()
        except OSError:
            return
        for pid in map(int, children):
            if not self._ours(pid):
                continue
            cpu = proc_cpu_s(pid)
            if cpu is None:
                continue
            self._first.setdefault(pid, cpu if initial else 0.0)
            self._last[pid] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self._sample()

    def __enter__(self) -> CpuMonitor:
        self.t0 = time.monotonic()
        self.machine0 = machine_cpu_s()
        self.sim0 = proc_cpu_s(self.sim_pid)
        self.self0 = time.process_time()
        self._sample(initial=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall_s = time.monotonic() - self.t0
        machine1 = machine_cpu_s()
        self.machine = None
        if self.machine0 and machine1:
            self.machine = (machine1[0] - self.machine0[0], machine1[1] - self.machine0[1])
        self.sim_s = _delta(proc_cpu_s(self.sim_pid), self.sim0)
        self.pg_s = sum(self._last[p] - self._first[p] for p in self._last) if self.postmaster else None
        self.self_s = time.process_time() - self.self0

    def figures(self, client_cpu_s: float) -> dict[str, float | None]:
        """CPU seconds by consumer over the measurement; ``client_cpu_s``: the client processes' total."""
        other = None
        if self.machine is not None and self.sim_s is not None and self.pg_s is not None:
            other = max(0.0, self.machine[0] - client_cpu_s - self.sim_s - self.pg_s - self.self_s)
        return {
            "window_s": self.wall_s,
            "sim_cpu_s": self.sim_s,
            "pg_cpu_s": self.pg_s,
            "other_cpu_s": other,
            "steal_cpu_s": self.machine[1] if self.machine else None,
        }


# -- measurements ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Bench:
    args: argparse.Namespace
    conninfo: dict[str, Any]
    sim: Any
    connection: dict[str, Any]
    workdir: Path
    pg_pid: int | None
    settings: Any
    client_cpus: list[int] | None = None
    run_no: int = 0

    def next_date(self) -> date:
        self.run_no += 1
        return FIRST_CHECK_DATE + timedelta(days=self.run_no)

    def monitor(self) -> CpuMonitor:
        return CpuMonitor(self.sim.pid, self.pg_pid, self.args.db)

    def bare(self, latency: int, accounts: list[str]) -> dict[str, Any]:
        from premium.banking.stage import correlation_id_for

        check_date = self.next_date()
        accounts_path = self.workdir / "accounts.txt"
        accounts_path.write_text("\n".join(accounts), encoding="ascii")
        self.sim.set_faults({"latency_ms": latency})
        self.sim.reset()
        quiet_wait = wait_for_quiet(self.args.quiet_wait)
        spec = {
            "connection": self.connection,
            "correlation_id": correlation_id_for(f"bench-bare-{check_date}", check_date),
            "accounts_path": str(accounts_path),
            "check_date": check_date.isoformat(),
            "as_of_time": self.settings.as_of_time,
            "in_flight": self.args.in_flight,
            "cpus": self.client_cpus,
        }
        with self.monitor() as monitor:
            result = spawn("bare", spec, self.workdir)
        accounts_path.unlink(missing_ok=True)
        if result.get("error"):
            raise RuntimeError(f"bare loop failed:\n{result['error']}")
        stats = self.sim.stats()
        return {
            "kind": "bare",
            "latency_ms": latency,
            "quiet_wait_s": quiet_wait,
            "accounts": len(accounts),
            "seconds": result["fetch_s"],
            "rate": len(accounts) / result["fetch_s"],
            "statuses": result["statuses"],
            "startup_s": result["startup_s"],
            "client_cpu_s": result["fetch_cpu_s"],
            **monitor.figures(result["cpu_s"]),
            "sim_requests": stats["requests_total"],
            "sim_max_concurrent": stats["max_concurrent"],
            "peak_rss_mb": peak_rss_kb(result) / 1024,
        }

    def stage(self, latency: int, expected_accounts: int, tag: str) -> dict[str, Any]:
        from premium.banking.stage import correlation_id_for, finish_run, plan_run

        check_date = self.next_date()
        dag_run_id = f"bench__{tag}__{latency}ms__{check_date}"
        correlation_id = correlation_id_for(dag_run_id, check_date)
        self.sim.set_faults({"latency_ms": latency})
        self.sim.reset()
        quiet_wait = wait_for_quiet(self.args.quiet_wait)
        settings = {
            "in_flight": self.settings.in_flight,
            "max_mapped_tasks": self.settings.max_mapped_tasks,
            "chunk_size": self.settings.chunk_size,
        }
        tasks = []
        with self.monitor() as monitor:
            t0 = time.monotonic()
            descriptors = plan_run(self.conninfo, check_date, dag_run_id, self.settings)
            t_plan = time.monotonic()
            for i, descriptor in enumerate(descriptors):
                profile_path = None
                if self.args.profile:
                    profile_path = str(Path(self.args.profile) / f"fetch-{tag}-{latency}ms-{self.run_no}-{i:03d}.prof")
                spec = {
                    "conninfo": self.conninfo,
                    "descriptor": descriptor.to_xcom(),
                    "check_date": check_date.isoformat(),
                    "settings": settings,
                    "connection": self.connection,
                    "correlation_id": correlation_id,
                    "profile_path": profile_path,
                    "cpus": self.client_cpus,
                }
                tasks.append(spawn("fetch", spec, self.workdir))
            t_fetched = time.monotonic()
            outcome = finish_run(self.conninfo, check_date, descriptors)
            t_finished = time.monotonic()
        stats = self.sim.stats()

        problems = [f"task {i}: {t['error'].strip().splitlines()[-1]}" for i, t in enumerate(tasks) if t.get("error")]
        problems += [f"task {i}: exit code {t['exit_code']}" for i, t in enumerate(tasks) if t["exit_code"]]
        planned = sum(d.accounts for d in descriptors)
        summaries = [t["summary"] for t in tasks if "summary" in t]
        fetched = sum(s["accounts"] for s in summaries)
        if outcome.status != "COMPLETE":
            problems.append(f"run status {outcome.status}, expected COMPLETE")
        if outcome.checked + outcome.skipped != outcome.planned:
            problems.append(f"checked {outcome.checked} + skipped {outcome.skipped} != planned {outcome.planned}")
        if planned != expected_accounts:
            problems.append(f"planned {planned} accounts, the database has {expected_accounts} active")
        if fetched != planned:
            problems.append(f"fetch tasks report {fetched} accounts, planned {planned}")
        problems += sample_check(self.conninfo, check_date, self.args.seed)
        settle_database(self.conninfo)

        fetch_s = sum(t.get("fetch_s", 0.0) for t in tasks)
        startup = [t.get("startup_s", 0.0) for t in tasks]
        return {
            "kind": "stage",
            "tag": tag,
            "latency_ms": latency,
            "quiet_wait_s": quiet_wait,
            "check_date": check_date.isoformat(),
            "accounts": planned,
            "tasks": len(tasks),
            "chunks": sum(d.chunks for d in descriptors),
            "seconds": fetch_s,
            "rate": planned / fetch_s if fetch_s else 0.0,
            "task_fetch_s": [round(t.get("fetch_s", 0.0), 3) for t in tasks],
            "task_accounts": [d.accounts for d in descriptors],
            "plan_s": t_plan - t0,
            "finish_s": t_finished - t_fetched,
            "tasks_wall_s": t_fetched - t_plan,
            "end_to_end_s": t_finished - t0,
            "startup_s_total": sum(startup),
            "startup_s_mean": sum(startup) / max(1, len(startup)),
            "teardown_s_total": sum(t.get("teardown_s", 0.0) for t in tasks),
            "client_cpu_s": sum(t.get("fetch_cpu_s", 0.0) for t in tasks),
            "client_cpu_s_with_startup": sum(t["cpu_s"] for t in tasks),
            **monitor.figures(sum(t["cpu_s"] for t in tasks)),
            "requests": sum(s["requests"] for s in summaries),
            "retries": sum(s["retries"] for s in summaries),
            "sim_requests": stats["requests_total"],
            "sim_max_concurrent": stats["max_concurrent"],
            "peak_rss_mb": max(peak_rss_kb(t) for t in tasks) / 1024 if tasks else 0.0,
            "peak_rss_mb_per_task": [round(peak_rss_kb(t) / 1024, 1) for t in tasks],
            "outcome": outcome.as_dict(),
            "problems": problems,
        }


def sample_check(conninfo: dict[str, Any], check_date: date, seed: int) -> list[str]:
    """Compare a sample of recorded balances (and not-found accounts) with the simulator's model."""
    import psycopg

    from premium.simulators import bank_model

    with psycopg.connect(**conninfo) as conn:
        checks = conn.execute(
            "SELECT account_id, balance, currency, account_status FROM daily_balance_checks WHERE check_date = %s",
            (check_date,),
        ).fetchall()
        missing = conn.execute(
            "SELECT account_id FROM balance_check_failures WHERE check_date = %s AND reason = 'not_found'",
            (check_date,),
        ).fetchall()
    rng = random.Random(seed)
    problems = []
    for account_id, balance, currency, status in rng.sample(checks, min(SAMPLE_CHECK, len(checks))):
        facts = bank_model.account_facts(account_id, check_date)
        if facts is None or (facts.amount, facts.currency, facts.account_status) != (balance, currency, status):
            problems.append(f"{account_id}: recorded {balance} {currency} {status}, the model says {facts}")
    for (account_id,) in missing[:SAMPLE_CHECK]:
        if bank_model.account_facts(account_id, check_date) is not None:
            problems.append(f"{account_id}: recorded not_found, the model has the account")
    return problems[:10]


# -- report ------------------------------------------------------------------------------------------


def environment(conninfo: dict[str, Any]) -> dict[str, Any]:
    import aiohttp
    import psycopg

    import premium

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(**conninfo) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "psycopg": psycopg.__version__,
        "postgresql": server.split()[0],
        "platform": platform.platform(),
        "plugins": str(Path(premium.__file__).resolve().parents[1]),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def us_per_account(cpu_s: float | None, accounts: int) -> str:
    return "-" if cpu_s is None or not accounts else f"{cpu_s / accounts * 1e6:.0f}"


def share(cpu_s: float | None, seconds: float) -> str:
    """CPU seconds over a wall time, as a share of one core."""
    return "-" if cpu_s is None or not seconds else f"{100 * cpu_s / seconds:.0f}%"


def describe(m: dict[str, Any], label: str) -> str:
    """One line for a measurement: rate, time, CPU per account and share of a core, by consumer."""
    n, wall = m["accounts"], m["seconds"]
    window = m["window_s"]
    return (
        f"  {label:<9}{m['rate']:8.0f} acc/s {wall:7.2f} s | CPU us/acc (share of a core): "
        f"client {us_per_account(m['client_cpu_s'], n)} ({share(m['client_cpu_s'], wall)}), "
        f"sim {us_per_account(m['sim_cpu_s'], n)} ({share(m['sim_cpu_s'], wall)}), "
        f"pg {us_per_account(m['pg_cpu_s'], n)} ({share(m['pg_cpu_s'], wall)}) | "
        f"other load {share(m['other_cpu_s'], window)}, steal {share(m['steal_cpu_s'], window)}"
        + ("  << NOISY" if noisy(m) else "")
    )


def noisy(m: dict[str, Any]) -> bool:
    """Other processes used more than NOISY_SHARE of a core during the measurement."""
    other = m.get("other_cpu_s")
    return other is not None and other > NOISY_SHARE * m["window_s"]


def print_stage_details(stage: dict[str, Any]) -> None:
    outcome = stage["outcome"]
    n = stage["accounts"]
    print(
        f"           {stage['tasks']} tasks, {stage['chunks']} chunks, {stage['requests']} requests, "
        f"{stage['retries']} retries; start-up {stage['startup_s_total']:.2f} s ({stage['startup_s_mean']:.2f} s a "
        f"task, excluded), exit {stage['teardown_s_total']:.2f} s, plan {stage['plan_s']:.2f} s, finish "
        f"{stage['finish_s']:.2f} s; end to end {stage['end_to_end_s']:.1f} s ({n / stage['end_to_end_s']:.0f} acc/s)"
    )
    print(
        f"           run {outcome['status']}: planned {outcome['planned']}, checked {outcome['checked']} "
        f"(passing {outcome['passing']}), skipped {outcome['skipped']}, failed {outcome['failed']}; "
        f"peak RSS {stage['peak_rss_mb']:.1f} MB (tasks {min(stage['peak_rss_mb_per_task'])}-"
        f"{max(stage['peak_rss_mb_per_task'])} MB)"
    )
    for problem in stage["problems"]:
        print(f"           WRONG: {problem}")


def verdict(latency: int, ratio: float) -> str:
    goal = GOALS.get(latency)
    return "-" if goal is None else f">={goal:.1f} {'PASS' if ratio >= goal else 'MISS'}"


def print_profile(profile_dir: str, tag: str, latency: int, top: int = 30) -> None:
    files = sorted(Path(profile_dir).glob(f"fetch-{tag}-{latency}ms-*.prof"))
    if not files:
        return
    stats = pstats.Stats(str(files[0]), stream=sys.stdout)
    for path in files[1:]:
        stats.add(str(path))
    print(f"\n-- cProfile of the fetch tasks, {tag} at {latency} ms (tottime, top {top}) --")
    stats.sort_stats("tottime").print_stats(top)


def print_table(results: list[dict[str, Any]], small: dict[str, Any] | None, env: dict[str, Any]) -> None:
    print("\n" + "=" * 104)
    print(
        f"{'latency':>7}  {'accounts':>8}  {'stage acc/s':>11}  {'bare acc/s':>10}  {'ratio':>5}  {'goal':<10}  "
        f"{'tasks':>5}  {'peak RSS MB':>11}  {'start-up s':>10}  {'runs':>4}"
    )
    for r in results:
        stage, bare = r["stage"], r["bare"]
        print(
            f"{r['latency_ms']:>4} ms  {stage['accounts']:>8}  {stage['rate']:>11.0f}  {bare['rate']:>10.0f}  "
            f"{r['ratio']:>5.2f}  {verdict(r['latency_ms'], r['ratio']):<10}  {stage['tasks']:>5}  "
            f"{r['peak_rss_mb']:>11.1f}  {stage['startup_s_total']:>10.2f}  {len(r['stages']):>4}"
            + ("  NOISY" if noisy(stage) or noisy(bare) else "")
        )
    if small is not None:
        print(
            f"{small['latency_ms']:>4} ms  {small['accounts']:>8}  {small['rate']:>11.0f}  {'-':>10}  {'-':>5}  "
            f"{'(N/10)':<10}  {small['tasks']:>5}  {small['peak_rss_mb']:>11.1f}  {small['startup_s_total']:>10.2f}  "
            f"{1:>4}"
        )
        big = next((r for r in results if r["latency_ms"] == small["latency_ms"]), results[0] if results else None)
        if big is not None:
            print(
                f"peak RSS of a fetch task at {small['latency_ms']} ms: {big['stage']['accounts']} accounts "
                f"{big['peak_rss_mb']:.1f} MB, {small['accounts']} accounts {small['peak_rss_mb']:.1f} MB: "
                f"ratio {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}"
            )
    if any(noisy(r["stage"]) or noisy(r["bare"]) for r in results):
        print(f"NOISY: other processes used > {NOISY_SHARE:.0%} of a core during a measurement used above")
    print(
        f"environment: {env['usable_cores']} cores ({env['cpu']}), {env['memory_gb']} GB, Python {env['python']}, "
        f"aiohttp {env['aiohttp']}, psycopg {env['psycopg']}, PostgreSQL {env['postgresql']}; plugins {env['plugins']}"
    )


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000, help="customers in the base (default 100000)")
    parser.add_argument("--latencies", default="0,20", help="simulator latencies in ms, comma-separated")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--max-mapped-tasks", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=1000)
    add_database_arguments(parser, "premium_bench")
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="bare + stage pairs per latency; the best rate of each side is used (default 2)",
    )
    parser.add_argument(
        "--pin",
        choices=["split", "none"],
        default="split",
        help="split: simulator on the last CPU, bare loop and fetch tasks on the others (default); none: no affinity",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        metavar="S",
        help="before each measurement wait up to S seconds for other work on the machine to stop (default 120; 0: off)",
    )
    parser.add_argument("--auth", choices=["none", "api_key"], default="api_key", help="simulator auth mode")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--no-rss-run", action="store_true", help="skip the stage run at N/10 accounts")
    parser.add_argument("--profile", metavar="DIR", help="cProfile every fetch task into DIR (slows them down)")
    args = parser.parse_args(argv)
    try:
        args.latency_list = [int(x) for x in args.latencies.split(",") if x.strip()]
    except ValueError:
        parser.error("--latencies must be comma-separated integers (ms)")
    if not args.latency_list or any(x < 0 for x in args.latency_list):
        parser.error("--latencies needs at least one latency >= 0")
    if args.accounts < 10:
        parser.error("--accounts must be at least 10")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import secrets

    from premium.crypto import PiiKeyring, generate_extra
    from premium.settings import BalanceSettings
    from premium.simulators.runner import SimulatorProcess
    from premium.synthetic import generate_rows

    settings = BalanceSettings(
        in_flight=args.in_flight, max_mapped_tasks=args.max_mapped_tasks, chunk_size=args.chunk_size
    )
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        print("NOTE: --profile: fetch tasks run under cProfile, their rates are not comparable", flush=True)
    started = time.monotonic()
    api_key = secrets.token_urlsafe(24)
    sim_args = ["--auth", args.auth] + (["--secret-env", "BENCH_BANK_SECRET"] if args.auth != "none" else [])

    with (
        tempfile.TemporaryDirectory(prefix="premium-bench-") as tmp,
        SimulatorProcess(args=sim_args, env={"BENCH_BANK_SECRET": api_key}, name="bench-core-banking") as sim,
    ):
        workdir = Path(tmp)
        t0 = time.monotonic()
        conninfo = recreate_database(args)
        setup: dict[str, Any] = {"database_s": time.monotonic() - t0, "customers_s": 0.0}
        env = environment(conninfo)
        print(
            f"environment: {env['usable_cores']} cores, Python {env['python']}, aiohttp {env['aiohttp']}, "
            f"psycopg {env['psycopg']}, PostgreSQL {env['postgresql']}; load average {env['loadavg_at_start']}; "
            f"plugins {env['plugins']}"
        )
        connection = {
            "host": "127.0.0.1",
            "port": sim.port,
            "schema": "http",
            "password": api_key if args.auth == "api_key" else None,
            "extra_dejson": {"auth_type": args.auth},
        }
        bench = Bench(args, conninfo, sim, connection, workdir, postmaster_pid(conninfo), settings)
        cpus = sorted(os.sched_getaffinity(0))
        pinning = "none"
        if args.pin == "split" and len(cpus) >= 2:
            os.sched_setaffinity(sim.pid, {cpus[-1]})
            bench.client_cpus = cpus[:-1]
            pinning = f"simulator on CPU {cpus[-1]}, bare loop and fetch tasks on CPU {','.join(map(str, cpus[:-1]))}"
        print(
            f"settings: in_flight {settings.in_flight}, max_mapped_tasks {settings.max_mapped_tasks}, chunk_size "
            f"{settings.chunk_size}; simulator {sim.base_url} (pid {sim.pid}, auth {args.auth}); pinning: {pinning}; "
            f"database {args.db}; {args.repeat} bare + stage pair(s) per latency",
            flush=True,
        )

        keyring = PiiKeyring.from_extra(generate_extra("bench"))
        rows = generate_rows(args.accounts, args.seed)
        # Customers 1..N/10 first (for the RSS run), then the rest: one deterministic base.
        small_n = max(1, args.accounts // 10)
        first = args.accounts if args.no_rss_run else small_n
        t0 = time.monotonic()
        insert_customers(conninfo, keyring, rows, first)
        setup["customers_s"] += time.monotonic() - t0
        print(
            f"setup: database + migrations {setup['database_s']:.1f} s, {first} customers {setup['customers_s']:.1f} s"
        )

        # Warm the simulator (code paths, connections) before anything is measured.
        bench.bare(0, active_accounts(conninfo)[:2000])

        small = None
        if not args.no_rss_run:
            small = bench.stage(0, len(active_accounts(conninfo)), "small")
            print(f"\n== N/10: stage at {small['accounts']} active accounts, 0 ms (for peak RSS) ==")
            print(describe(small, "stage"))
            print_stage_details(small)
            t0 = time.monotonic()
            insert_customers(conninfo, keyring, rows, args.accounts - small_n)
            more = time.monotonic() - t0
            setup["customers_s"] += more
            print(f"\nsetup: {args.accounts - small_n} more customers {more:.1f} s", flush=True)
        setup["total_s"] = setup["database_s"] + setup["customers_s"]

        accounts = active_accounts(conninfo)
        results = []
        for latency in args.latency_list:
            print(f"\n== latency {latency} ms, {len(accounts)} active accounts ==", flush=True)
            bares, stages = [], []
            for run in range(1, args.repeat + 1):
                bares.append(bench.bare(latency, accounts))
                print(describe(bares[-1], f"bare #{run}"))
                stages.append(bench.stage(latency, len(accounts), "main"))
                print(describe(stages[-1], f"stage #{run}"))
                print_stage_details(stages[-1])
                sys.stdout.flush()
            bare = max(bares, key=lambda m: m["rate"])
            stage = max(stages, key=lambda m: m["rate"])
            ratio = stage["rate"] / bare["rate"]
            results.append(
                {
                    "latency_ms": latency,
                    "ratio": ratio,
                    "goal": GOALS.get(latency),
                    "bare": bare,
                    "stage": stage,
                    "peak_rss_mb": max(s["peak_rss_mb"] for s in stages),
                    "bares": bares,
                    "stages": stages,
                }
            )
            print(
                f"  best of {args.repeat}: stage {stage['rate']:.0f} acc/s / bare {bare['rate']:.0f} acc/s = "
                f"ratio {ratio:.2f}  goal {verdict(latency, ratio)}"
            )
            if args.profile:
                print_profile(args.profile, "main", latency)

    wrong = [p for r in results for s in r["stages"] for p in s["problems"]] + (small["problems"] if small else [])
    print(
        f"\nsetup: {setup['total_s']:.1f} s ({args.accounts} customers {setup['customers_s']:.1f} s, database + "
        f"migrations {setup['database_s']:.1f} s); benchmark total {time.monotonic() - started:.0f} s"
    )
    print_table(results, small, env)
    report = {"environment": env, "setup": setup, "results": results, "rss_run": small, "wrong_results": wrong}
    return finish(args, report, wrong)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(main())
