"""SMS-stage benchmark: qualification SQL at scale, and submission against a bare POST loop.

``.venv/bin/python bench/bench_sms.py [--customers 1000000] [--messages 100000] ...``. Prints figures,
it is not a timed test: it exits 0 whatever the ratio, and non-zero only when the stage produced wrong
results (a notification still PENDING, accepted + rejected != M, the carrier did not get exactly the M
message ids once each, or a batch/content that differs from what the outbox prescribes).

1. Qualification: N customers and N x ``--days`` daily_balance_checks rows made with set-based SQL
   (PII columns are dummy bytes: the qualification SQL never decrypts), VACUUM ANALYZE, then the exact
   statement of include/sql/qualify_customers.sql with qualify()'s parameters: a first run (all rows
   inserted), a rerun (all rows upserted, a task retry), and ``EXPLAIN (ANALYZE, BUFFERS)`` of the
   first-run case in a transaction that is rolled back. ``--qual-prototypes`` also times candidate
   index/SQL/setting changes, each in a rolled-back transaction.
2. Submission: M customers with real AES-GCM PII and valid Israeli mobiles, all qualifying; the real
   qualify(), render_qualified(), and the preparation the DAG does the evening before the send window
   (write_outbox(): payload rendered and encrypted; assign_batches()), timed as setup; then, per carrier latency
   (``--latencies 0,100``: 0 ms shows the stage's CPU cost, 100 ms a real carrier), ``--repeat`` times:
   *bare*: the same JSON bodies the stage sends (built beforehand from the outbox with the stage's
   own functions, and checked afterwards against what the carrier received), POSTed by
   ``in_flight_batches`` aiohttp workers to a reset simulator; *stage*: premium.notifications.engine.submit()
   (batching, building with decryption and rendering, POST, recording) against the same reset
   simulator, on a freshly written outbox. Ratio = best stage msg/s / best bare msg/s, goal >= 0.8.
   A last instrumented stage run (``--no-breakdown`` skips it) times the stage's phases.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
if str(PLUGINS) not in sys.path:  # appended: a PYTHONPATH naming another plugins copy (a prototype) wins
    sys.path.append(str(PLUGINS))

from benchlib import (  # noqa: E402
    add_database_arguments,
    clock_ticks,
    finish,
    machine_cpu_s,
    postmaster_pid,
    proc_cpu_s,
    recreate_database,
)

CHECK_DATE = date(2025, 11, 18)  # campaign premium-monthly-nov-2025
EARLIER_NOTIFICATION_DATE = date(2025, 11, 8)  # "already notified" customers were sent on this date
GOAL = 0.8  # minimum stage/bare ratio
SEED = 20251118
HASH_BUCKETS = 1 << 20

# -- small helpers -------------------------------------------------------------------------------------


def _machine_busy_s() -> float | None:
    both = machine_cpu_s()
    return None if both is None else both[0]


def postgres_cpu_s(postmaster: int | None) -> float | None:
    """CPU seconds of the whole PostgreSQL server so far: the postmaster's live children plus the
    reaped ones (cutime/cstime of the postmaster: short-lived backends, e.g. a connection per step)."""
    if postmaster is None:
        return None
    try:
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    except (OSError, IndexError):
        return None
    total = (int(fields[13]) + int(fields[14])) / clock_ticks()
    return total + sum(proc_cpu_s(int(pid)) or 0.0 for pid in children)


class CpuWindow:
    """CPU seconds over a measurement, from /proc: this process (all threads), the simulator, this
    database's PostgreSQL backends (sampled every 10 ms by a thread: a backend's CPU after its last
    sample is missed, so it is a lower bound when connections are short-lived), the whole PostgreSQL
    server (exact, all databases: reaped backends are in the postmaster's cutime), and the rest of the
    machine (other users of these cores)."""

    postmaster: int | None = None  # set once by main()
    dbname: str = ""

    def __init__(self, sim_pid: int | None = None) -> None:
        self.sim_pid = sim_pid
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._kinds: dict[int, bool | int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _ours(self, pid: int) -> bool:
        """A backend shows its database in its title only once connected: "not ours" from the 3rd look."""
        kind = self._kinds.get(pid)
        if isinstance(kind, bool):
            return kind
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        if f" {self.dbname} " in title + " ":
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
            if self._ours(pid):
                cpu = proc_cpu_s(pid)
                if cpu is not None:
                    self._first.setdefault(pid, cpu if initial else 0.0)
                    self._last[pid] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self._sample()

    def __enter__(self) -> CpuWindow:
        self._sample(initial=True)
        self.t0, self.self0 = time.monotonic(), time.process_time()
        self.sim0, self.pg0, self.machine0 = (
            proc_cpu_s(self.sim_pid),
            postgres_cpu_s(self.postmaster),
            _machine_busy_s(),
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.monotonic() - self.t0
        self.self_s = time.process_time() - self.self0
        sim1, pg1, machine1 = proc_cpu_s(self.sim_pid), postgres_cpu_s(self.postmaster), _machine_busy_s()
        self._stop.set()
        self._thread.join()
        self._sample()
        self.sim_s = None if sim1 is None or self.sim0 is None else sim1 - self.sim0
        self.pg_all_s = None if pg1 is None or self.pg0 is None else pg1 - self.pg0
        self.pg_s = sum(self._last[p] - self._first[p] for p in self._last) if self.postmaster else None
        self.other_s = None
        if machine1 is not None and self.machine0 is not None:
            ours = self.self_s + (self.sim_s or 0.0) + (self.pg_all_s or 0.0)
            self.other_s = max(0.0, machine1 - self.machine0 - ours)

    def figures(self) -> dict[str, float | None]:
        return {
            "wall_s": self.wall_s,
            "client_cpu_s": self.self_s,
            "sim_cpu_s": self.sim_s,
            "pg_cpu_s": self.pg_s,
            "pg_all_dbs_cpu_s": self.pg_all_s,
            "other_cpu_s": self.other_s,
        }


def us_each(cpu_s: float | None, n: int) -> str:
    return "-" if cpu_s is None or not n else f"{cpu_s / n * 1e6:.0f}"


def core_share(cpu_s: float | None, wall_s: float) -> str:
    return "-" if cpu_s is None or not wall_s else f"{100 * cpu_s / wall_s:.0f}%"


# -- database ------------------------------------------------------------------------------------------


@contextmanager
def setup_connection(conninfo: dict[str, Any]) -> Generator[Any, None, None]:
    """An autocommit connection for bulk setup work (no fsync wait per commit, big sort memory)."""
    import psycopg

    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET work_mem = '256MB'")
        yield conn


def index_definitions(conn: Any, table: str) -> list[tuple[str, str, str | None, str | None]]:
    """(index name, CREATE INDEX statement, constraint name, constraint definition) of ``table``."""
    return conn.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname, pg_get_constraintdef(c.oid)
        FROM pg_index i
        LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u')
        WHERE i.indrelid = %s::regclass
        ORDER BY 1
        """,
        (table,),
    ).fetchall()


@contextmanager
def indexes_dropped(
    conninfo: dict[str, Any], tables: list[str], timings: dict[str, float]
) -> Generator[None, None, None]:
    """Drop the tables' indexes (and PK/unique constraints) for a bulk load; rebuild exactly the same
    definitions afterwards (checked), timing the rebuild into ``timings["indexes_s"]``."""
    from psycopg import sql

    with setup_connection(conninfo) as conn:
        saved = {t: index_definitions(conn, t) for t in tables}
        for table, defs in saved.items():
            for name, _indexdef, conname, _condef in defs:
                if conname:
                    conn.execute(
                        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                            sql.Identifier(table), sql.Identifier(conname)
                        )
                    )
                else:
                    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    yield
    t0 = time.monotonic()
    with setup_connection(conninfo) as conn:
        conn.execute("SET max_parallel_maintenance_workers = 2")
        for table, defs in saved.items():
            for _name, indexdef, conname, condef in defs:
                if conname:
                    conn.execute(
                        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                            sql.Identifier(table), sql.Identifier(conname), sql.SQL(condef)
                        )
                    )
                else:
                    conn.execute(indexdef)
        for table, defs in saved.items():
            again = index_definitions(conn, table)
            if sorted(again) != sorted(defs):
                raise RuntimeError(f"indexes of {table} differ after the rebuild: {defs} != {again}")
    timings["indexes_s"] = timings.get("indexes_s", 0.0) + time.monotonic() - t0


def run_parallel(conninfo: dict[str, Any], statements: list[tuple[str, Any]], workers: int) -> None:
    """Execute ``statements`` (sql, params) on ``workers`` connections at once, each its own transaction."""
    import queue

    work: queue.Queue = queue.Queue()
    for item in statements:
        work.put(item)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with setup_connection(conninfo) as conn:
                while True:
                    try:
                        query, params = work.get_nowait()
                    except queue.Empty:
                        return
                    conn.execute(query, params)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def vacuum_analyze(conninfo: dict[str, Any], tables: list[str]) -> None:
    with setup_connection(conninfo) as conn:
        conn.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")
        conn.execute("CHECKPOINT")


def table_sizes(conninfo: dict[str, Any], tables: list[str]) -> dict[str, dict[str, Any]]:
    import psycopg
    from psycopg import sql

    with psycopg.connect(**conninfo) as conn:
        out = {}
        for t in tables:
            query = sql.SQL(
                "SELECT (SELECT count(*) FROM {}), pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)"
            )
            rows, heap, idx = conn.execute(query.format(sql.Identifier(t)), (t, t)).fetchone()
            out[t] = {"rows": rows, "heap_mb": heap / 2**20, "indexes_mb": idx / 2**20}
        return out


# -- part 1: qualification at scale --------------------------------------------------------------------

# bench_u(x, salt): a deterministic draw in [0, 1) (inlined SQL function, created in the bench database);
# bench_u(id, salt) per customer, bench_u(id * 1000 + day, salt) per customer and day.
_HELPER_SQL = f"""
CREATE OR REPLACE FUNCTION bench_u(x bigint, salt bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS 'SELECT (hashint8extended(x, salt) & {HASH_BUCKETS - 1})::float8 / {HASH_BUCKETS}'
"""

# Customers 1..N: 93% ACTIVE (4% INACTIVE, 2% SUSPENDED, 1% CLOSED), 88% consent, 95% valid mobiles,
# languages he/en/ar/ru 60/30/6/4 (the synthetic base's mix). PII columns: dummy bytes of the real sizes.
_CUSTOMERS_SQL = """
INSERT INTO customers (customer_id, account_id, first_name_enc, phone_enc, phone_hash, pii_key_id, language,
                       status, sms_consent, sms_consent_at, phone_valid)
SELECT g::text,
       'ACC-' || lpad((g / 100000)::text, 5, '0') || '-' || lpad((g %% 100000)::text, 5, '0'),
       sha256(int8send(g)) || '\\x0011223344556677'::bytea,
       sha256(int8send(-g)) || '\\x00112233'::bytea,
       sha256(int8send(g + 7)),
       'bench',
       CASE WHEN bench_u(g, 1) < 0.60 THEN 'he' WHEN bench_u(g, 1) < 0.90 THEN 'en'
            WHEN bench_u(g, 1) < 0.96 THEN 'ar' ELSE 'ru' END,
       CASE WHEN bench_u(g, 2) < 0.93 THEN 'ACTIVE' WHEN bench_u(g, 2) < 0.97 THEN 'INACTIVE'
            WHEN bench_u(g, 2) < 0.99 THEN 'SUSPENDED' ELSE 'CLOSED' END,
       bench_u(g, 3) < 0.88,
       CASE WHEN bench_u(g, 3) < 0.88 THEN now() END,
       bench_u(g, 4) < 0.95
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g
"""

# One day of checks for every ACTIVE customer (the fetch stage checks active customers only), as the
# daily run writes them. Balance profiles by customer: 40% comfortably above the 15,000 threshold every
# day, 15% hovering around it (12,000-20,000: some failing days), 45% below it. 0.5% of (customer, day)
# have no row (not found, failed after retries: "count neither way"); 1% of accounts are FROZEN and
# 0.5% CLOSED at the bank.
_CHECKS_SQL = """
INSERT INTO daily_balance_checks (account_id, check_date, customer_id, balance, currency, threshold,
    passes_threshold, account_status, check_timestamp, correlation_id, banking_reference_id)
SELECT c.account_id, %(day)s::date, c.customer_id, b.balance, 'NIS', 15000, b.balance >= 15000,
       CASE WHEN bench_u(c.id, 6) < 0.010 THEN 'FROZEN' WHEN bench_u(c.id, 6) < 0.015 THEN 'CLOSED' ELSE 'ACTIVE' END,
       %(day)s::date + time '20:00' + (c.id %% 3600) * interval '1 second',
       %(correlation_id)s,
       'BNK-' || to_char(%(day)s::date, 'YYYYMMDD') || '-' || lpad(c.id::text, 8, '0')
FROM customers c
CROSS JOIN LATERAL (
    SELECT round((CASE
        WHEN bench_u(c.id, 5) < 0.40 THEN 15500 + 250000 * bench_u(c.id * 1000 + %(dayno)s, 7) ^ 2
        WHEN bench_u(c.id, 5) < 0.55 THEN 12000 + 8000 * bench_u(c.id * 1000 + %(dayno)s, 7)
        ELSE 200 + 14000 * bench_u(c.id * 1000 + %(dayno)s, 7)
    END)::numeric, 2) AS balance
) b
WHERE c.status = 'ACTIVE' AND bench_u(c.id * 1000 + %(dayno)s, 8) >= 0.005
"""

# 10% of customers were already sent this month's SMS for an earlier check date.
_NOTIFIED_SQL = """
INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, attempts, current_message_id,
    language, template_id, encoding, segments, correlation_id)
SELECT %(campaign_id)s, c.customer_id, %(earlier)s, 'DELIVERED', 1,
       'MSG-' || %(campaign_id)s || '-' || c.customer_id || '-1', c.language, 'premium_appreciation.he', 'UCS-2', 2,
       'corr-bench-earlier'
FROM customers c WHERE bench_u(c.id, 9) < 0.10
"""


def build_qualification_base(args: argparse.Namespace, conninfo: dict[str, Any]) -> dict[str, Any]:
    from premium.banking.stage import correlation_id_for
    from premium.notifications.window import campaign_id_for

    timings: dict[str, float] = {}
    n, days = args.customers, args.days
    workers = max(1, min(4, len(os.sched_getaffinity(0))))
    t_all = time.monotonic()
    with setup_connection(conninfo) as conn:
        conn.execute(_HELPER_SQL)
    with indexes_dropped(conninfo, ["customers", "daily_balance_checks"], timings):
        t0 = time.monotonic()
        step = math.ceil(n / workers)
        run_parallel(
            conninfo,
            [(_CUSTOMERS_SQL, {"lo": lo, "hi": min(n, lo + step - 1)}) for lo in range(1, n + 1, step)],
            workers,
        )
        timings["customers_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        first_day = CHECK_DATE - timedelta(days=days - 1)
        statements = []
        for dayno in range(days):  # day by day, oldest first: the heap is in date order as in production
            day = first_day + timedelta(days=dayno)
            params = {
                "day": day,
                "dayno": dayno,
                "correlation_id": correlation_id_for(f"scheduled__{day}T22:00:00+00:00", day),
            }
            statements.append((_CHECKS_SQL, params))
        run_parallel(conninfo, statements, workers)
        timings["checks_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    with setup_connection(conninfo) as conn:
        conn.execute(_NOTIFIED_SQL, {"campaign_id": campaign_id_for(CHECK_DATE), "earlier": EARLIER_NOTIFICATION_DATE})
    timings["notified_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    vacuum_analyze(conninfo, ["customers", "daily_balance_checks", "sms_notifications", "qualification_outcomes"])
    timings["vacuum_analyze_s"] = time.monotonic() - t0
    timings["total_s"] = time.monotonic() - t_all
    return timings


def qualification_params(check_date: date, settings: Any, dag_run_id: str) -> dict[str, Any]:
    """Exactly the parameters premium.sms.qualify.qualify() passes to qualify_customers.sql."""
    from premium.notifications.window import campaign_id_for
    from premium.sms.qualify import window_start

    return {
        "check_date": check_date,
        "window_start": window_start(check_date, settings),
        "campaign_id": campaign_id_for(check_date),
        "min_passing": settings.min_passing_checks,
        "dag_run_id": dag_run_id,
    }


def time_statement(conninfo: dict[str, Any], query: str, params: dict[str, Any], *, commit: bool, setup=()) -> float:
    """Wall seconds of one execution of ``query`` in its own transaction (committed or rolled back)."""
    import psycopg

    with psycopg.connect(**conninfo) as conn:
        for statement in setup:
            conn.execute(statement)
        t0 = time.monotonic()
        conn.execute(query, params)
        if commit:
            conn.commit()
        seconds = time.monotonic() - t0
        if not commit:
            conn.rollback()
    return seconds


def truncate_outcomes(conninfo: dict[str, Any]) -> None:
    with setup_connection(conninfo) as conn:
        conn.execute("TRUNCATE qualification_outcomes")
        conn.execute("CHECKPOINT")


_NODE_RE = re.compile(
    r"^(?P<indent>\s*)(?:->\s+)?(?P<label>.+?)\s+\(cost=[^)]*\)\s+"
    r"\((?:actual time=(?P<start>[\d.]+)\.\.(?P<total>[\d.]+) rows=(?P<rows>\d+) loops=(?P<loops>\d+)|never executed)\)"
)


def plan_nodes(lines: list[str]) -> list[dict[str, Any]]:
    """Plan nodes of a text EXPLAIN ANALYZE with inclusive and exclusive milliseconds (x loops)."""
    nodes: list[dict[str, Any]] = []
    for line in lines:
        m = _NODE_RE.match(line)
        if not m:
            continue
        loops = int(m["loops"] or 0)
        inclusive = float(m["total"] or 0.0) * loops
        nodes.append(
            {
                "label": m["label"],
                "depth": m.start("label"),
                "rows": int(m["rows"] or 0),
                "loops": loops,
                "ms": inclusive,
                "self_ms": inclusive,
            }
        )
    for i, node in enumerate(nodes):  # subtract each node from its parent (nearest shallower node above)
        for j in range(i - 1, -1, -1):
            if nodes[j]["depth"] < node["depth"]:
                nodes[j]["self_ms"] -= node["ms"]
                break
    for node in nodes:
        node["self_ms"] = max(0.0, node["self_ms"])
    return nodes


def explain_qualification(conninfo: dict[str, Any], query: str, params: dict[str, Any]) -> list[str]:
    import psycopg

    with psycopg.connect(**conninfo) as conn:
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, params).fetchall()
        conn.rollback()  # it is an INSERT: nothing of it stays
    return [r[0] for r in rows]


def qualification_prototypes(
    conninfo: dict[str, Any], query: str, params: dict[str, Any], rounds: int
) -> list[dict[str, Any]]:
    """Candidate changes, timed on the first-run case (empty outcomes), each in a transaction that is
    rolled back (index drops included: DDL is transactional). Variants are interleaved over ``rounds``
    rounds and the best time of each is kept, so that load from other users of the machine evens out."""
    import psycopg

    single = single_scan_variant(query)
    drop_campaign = "DROP INDEX qualification_outcomes_campaign_outcome"
    drop_customer = "DROP INDEX qualification_outcomes_customer"
    variants: list[tuple[str, str | None, tuple[str, ...]]] = [
        ("baseline", query, ()),
        ("jit = off", query, ("SET LOCAL jit = off",)),
        ("work_mem = 256MB", query, ("SET LOCAL work_mem = '256MB'",)),
        ("single scan: D's check folded into the window aggregate", single, ()),
        ("without index qualification_outcomes_campaign_outcome", query, (drop_campaign,)),
        ("without both secondary indexes of qualification_outcomes", query, (drop_campaign, drop_customer)),
    ]
    if single is None:
        print("  (qualify_customers.sql changed: the single-scan variants are skipped)")
    best: dict[str, float] = {}

    def measure(todo: list[tuple[str, str | None, tuple[str, ...]]]) -> None:
        todo = [v for v in todo if v[1] is not None]
        for round_no in range(rounds):
            for name, q, setup in todo if round_no % 2 == 0 else list(reversed(todo)):
                truncate_outcomes(conninfo)
                seconds = time_statement(conninfo, q, params, commit=False, setup=setup)
                best[name] = min(seconds, best.get(name, seconds))
        for name, _q, _setup in todo:
            ratio = best["baseline"] / best[name]
            print(f"  {name:<66} {best[name]:7.2f} s  ({ratio:.2f}x baseline)", flush=True)

    measure(variants)
    t0 = time.monotonic()
    with setup_connection(conninfo) as conn:
        conn.execute("SET max_parallel_maintenance_workers = 2")
        conn.execute(
            "CREATE INDEX bench_dbc_date_customer ON daily_balance_checks (check_date, customer_id) "
            "INCLUDE (passes_threshold, account_status)"
        )
        conn.execute("VACUUM (ANALYZE) daily_balance_checks")
        size = conn.execute("SELECT pg_relation_size('bench_dbc_date_customer')").fetchone()[0]
    build_s = time.monotonic() - t0
    print(
        f"  (index (check_date, customer_id) INCLUDE (passes_threshold, account_status): {build_s:.1f} s to build, "
        f"{size / 2**20:.0f} MB)"
    )
    measure(
        [
            ("baseline", query, ()),
            ("+ index (check_date, customer_id) INCLUDE (...)", query, ()),
            ("+ that index + single scan", single, ()),
        ]
    )
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute("DROP INDEX bench_dbc_date_customer")
    truncate_outcomes(conninfo)
    results = [{"variant": k, "seconds": v} for k, v in best.items()]
    results.append({"variant": "index build", "seconds": build_s, "index_mb": size / 2**20})
    return results


def single_scan_variant(query: str) -> str | None:
    """qualify_customers.sql with D's check folded into the window aggregate (one pass over the window)."""
    old_window = """    SELECT customer_id,
           count(*) FILTER (WHERE passes_threshold) AS passing,
           count(*) FILTER (WHERE NOT passes_threshold) AS failing
    FROM daily_balance_checks"""
    new_window = """    SELECT customer_id,
           count(*) FILTER (WHERE passes_threshold) AS passing,
           count(*) FILTER (WHERE NOT passes_threshold) AS failing,
           min(account_status) FILTER (WHERE check_date = %(check_date)s) AS today_status
    FROM daily_balance_checks"""
    old_today = """today AS (
    SELECT customer_id, account_status
    FROM daily_balance_checks
    WHERE check_date = %(check_date)s
),
"""
    if old_window not in query or old_today not in query:
        return None  # qualify_customers.sql changed: the variant is skipped
    q = query.replace(old_window, new_window).replace(old_today, "")
    q = q.replace(
        "WHEN t.customer_id IS NULL THEN 'no_check_today'", "WHEN w.today_status IS NULL THEN 'no_check_today'"
    )
    q = q.replace("WHEN t.account_status <> 'ACTIVE'", "WHEN w.today_status <> 'ACTIVE'")
    q = q.replace("LEFT JOIN today t ON t.customer_id = c.customer_id\n", "")
    return q


def part_qualification(args: argparse.Namespace, conninfo: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    from premium.paths import read_sql
    from premium.settings import SmsSettings

    settings = SmsSettings()  # the specification's window (30 days) and minimum passing checks (28)
    print(f"\n== 1. qualification: {args.customers} customers x {args.days} days of checks ==", flush=True)
    setup = build_qualification_base(args, conninfo)
    sizes = table_sizes(conninfo, ["customers", "daily_balance_checks", "sms_notifications"])
    print(
        f"setup {setup['total_s']:.1f} s: customers {setup['customers_s']:.1f} s, checks {setup['checks_s']:.1f} s, "
        f"index rebuild {setup['indexes_s']:.1f} s, earlier notifications {setup['notified_s']:.1f} s, "
        f"VACUUM ANALYZE + CHECKPOINT {setup['vacuum_analyze_s']:.1f} s"
    )
    for t, s in sizes.items():
        print(f"  {t:<22} {s['rows']:>11,} rows  heap {s['heap_mb']:8.0f} MB  indexes {s['indexes_mb']:7.0f} MB")

    query = read_sql("qualify_customers.sql")
    params = qualification_params(CHECK_DATE, settings, f"bench__{CHECK_DATE}")
    first_s = time_statement(conninfo, query, params, commit=True)
    with psycopg.connect(**conninfo) as conn:
        outcomes = dict(
            conn.execute(
                "SELECT outcome, count(*) FROM qualification_outcomes WHERE check_date = %s GROUP BY 1 ORDER BY 2 DESC",
                (CHECK_DATE,),
            ).fetchall()
        )
    rows = sum(outcomes.values())
    print(f"first run (inserts):  {first_s:7.2f} s  {rows / first_s:9,.0f} customers/s")
    rerun_s = time_statement(conninfo, query, params, commit=True)
    print(f"rerun (upserts):      {rerun_s:7.2f} s  {rows / rerun_s:9,.0f} customers/s   (a task retry)")
    print("outcomes: " + ", ".join(f"{k} {v:,} ({100 * v / rows:.1f}%)" for k, v in outcomes.items()))

    truncate_outcomes(conninfo)
    plan = explain_qualification(conninfo, query, params)
    print("\nEXPLAIN (ANALYZE, BUFFERS), first-run case, rolled back:")
    for line in plan:
        print("  " + line)
    nodes = plan_nodes(plan)
    total_ms = nodes[0]["ms"] if nodes else 0.0
    top = sorted(nodes, key=lambda nd: nd["self_ms"], reverse=True)[:6]
    print("top plan nodes by own time:")
    for nd in top:
        share = 100 * nd["self_ms"] / total_ms if total_ms else 0.0
        print(f"  {nd['self_ms'] / 1000:7.2f} s {share:5.1f}%  {nd['label']}  (rows {nd['rows']:,} x {nd['loops']})")

    prototypes, prototypes_s = None, 0.0
    t_proto = time.monotonic()
    if args.qual_prototypes:
        print(
            f"\nprototypes (first-run case, rolled back; best of {args.prototype_rounds} interleaved rounds):",
            flush=True,
        )
        prototypes = qualification_prototypes(conninfo, query, params, args.prototype_rounds)
        prototypes_s = time.monotonic() - t_proto
    return {
        "setup": setup,
        "sizes": sizes,
        "params": {k: str(v) for k, v in params.items()},
        "first_run_s": first_s,
        "rerun_s": rerun_s,
        "customers": rows,
        "rate": rows / first_s,
        "rerun_rate": rows / rerun_s,
        "outcomes": outcomes,
        "plan": plan,
        "top_nodes": top,
        "prototypes": prototypes,
        "prototypes_s": prototypes_s,
    }


# -- part 2: submission --------------------------------------------------------------------------------

MOBILE_PREFIXES = ("50", "52", "53", "54")  # with a subscriber number starting 2-9: valid
_COPY_CUSTOMERS = (
    "COPY customers (customer_id, account_id, first_name_enc, phone_enc, phone_hash, pii_key_id, "
    "language, status, sms_consent, sms_consent_at, phone_valid) FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ["text", "text", "bytea", "bytea", "bytea", "text", "text", "text", "bool", "timestamptz", "bool"]


def synthetic_people(m: int, seed: int) -> Iterator[tuple[str, str, str, str]]:
    """(customer_id, first_name, phone as stored, language) for customers 1..m: the synthetic base's
    names and language mix, unique valid Israeli mobiles in the usual local/international formats."""
    from premium.synthetic import FIRST_NAMES, LANGUAGE_WEIGHTS

    rng = random.Random(seed)
    languages = [lang for lang, _ in LANGUAGE_WEIGHTS]
    weights = [w for _, w in LANGUAGE_WEIGHTS]
    used: set[str] = set()
    for n in range(1, m + 1):
        language = rng.choices(languages, weights)[0]
        name = rng.choice(FIRST_NAMES[language])
        while True:
            prefix = rng.choice(MOBILE_PREFIXES)
            subscriber = f"{rng.randint(2, 9)}{rng.randrange(1_000_000):06d}"
            if prefix + subscriber not in used:
                used.add(prefix + subscriber)
                break
        fmt = rng.randrange(4)
        phone = (
            f"0{prefix}-{subscriber}",
            f"0{prefix}{subscriber}",
            f"+972 {prefix} {subscriber[:3]} {subscriber[3:]}",
            f"+972{prefix}{subscriber}",
        )[fmt]
        yield str(n), name, phone, language


def insert_real_customers(conninfo: dict[str, Any], keyring: Any, m: int, seed: int) -> int:
    """COPY m customers with PII encrypted by the real keyring (same AAD, hash and phone_valid verdict as
    premium.customers.load_customers_csv), all ACTIVE and consenting; returns the invalid-phone count."""
    from datetime import UTC, datetime

    import psycopg

    from premium.crypto import aad_for
    from premium.identifiers import account_id_for
    from premium.sms.phones import is_valid_mobile

    now = datetime.now(UTC)
    invalid = 0
    with psycopg.connect(**conninfo) as conn, conn.cursor() as cur:
        with cur.copy(_COPY_CUSTOMERS) as copy:
            copy.set_types(_COPY_TYPES)
            for customer_id, name, phone, language in synthetic_people(m, seed):
                key_id, name_enc = keyring.encrypt(name, aad_for(customer_id, "first_name"))
                _, phone_enc = keyring.encrypt(phone, aad_for(customer_id, "phone_number"))
                valid = is_valid_mobile(phone)
                invalid += not valid
                copy.write_row(
                    (
                        customer_id,
                        account_id_for(int(customer_id)),
                        name_enc,
                        phone_enc,
                        keyring.phone_hash(phone),
                        key_id,
                        language,
                        "ACTIVE",
                        True,
                        now,
                        valid,
                    )
                )
    return invalid


_PASSING_CHECKS_SQL = """
INSERT INTO daily_balance_checks (account_id, check_date, customer_id, balance, currency, threshold,
    passes_threshold, account_status, check_timestamp, correlation_id, banking_reference_id)
SELECT c.account_id, %(day)s::date, c.customer_id, 20000 + (c.id %% 50000), 'NIS', 15000, true, 'ACTIVE',
       %(day)s::date + time '20:00', %(correlation_id)s, 'BNK-' || c.id
FROM customers c
"""


def build_submission_base(args: argparse.Namespace, conninfo: dict[str, Any], keyring: Any) -> dict[str, Any]:
    """M qualifying customers with real PII; the real qualify(), render_qualified(), write_outbox() and
    assign_batches() (plan_send's preparation of the outbox before the send window)."""
    import psycopg

    from premium.banking.stage import correlation_id_for
    from premium.notifications import outbox
    from premium.notifications.window import campaign_id_for
    from premium.settings import SmsSettings
    from premium.sms.qualify import qualify, render_qualified
    from premium.sms.render import SmsRenderer

    timings: dict[str, float] = {}
    with setup_connection(conninfo) as conn:
        conn.execute(
            "TRUNCATE customers, daily_balance_checks, qualification_outcomes, sms_messages, sms_batches, "
            "sms_notifications, sms_campaign_runs RESTART IDENTITY CASCADE"
        )
    t0 = time.monotonic()
    invalid = insert_real_customers(conninfo, keyring, args.messages, args.seed)
    timings["customers_s"] = time.monotonic() - t0
    if invalid:
        raise RuntimeError(f"{invalid} generated phone numbers are not valid Israeli mobiles")
    t0 = time.monotonic()
    first_day = CHECK_DATE - timedelta(days=args.days - 1)
    days = [first_day + timedelta(days=i) for i in range(args.days)]
    statements = [
        (_PASSING_CHECKS_SQL, {"day": d, "correlation_id": correlation_id_for(f"scheduled__{d}", d)}) for d in days
    ]
    with indexes_dropped(conninfo, ["daily_balance_checks"], timings):
        run_parallel(conninfo, statements, min(4, len(os.sched_getaffinity(0))))
    timings["checks_s"] = time.monotonic() - t0
    vacuum_analyze(conninfo, ["customers", "daily_balance_checks"])

    settings = SmsSettings(batch_size=args.batch_size, in_flight_batches=args.in_flight_batches)
    renderer = SmsRenderer(max_segments=settings.max_segments, bank_name=settings.bank_name)
    t0 = time.monotonic()
    summary = qualify(conninfo, CHECK_DATE, f"bench__{CHECK_DATE}", settings)
    timings["qualify_s"] = time.monotonic() - t0
    if summary.qualified != args.messages:
        raise RuntimeError(f"{summary.qualified} customers qualified, expected {args.messages}: {summary.reasons}")
    t0 = time.monotonic()
    renders = render_qualified(conninfo, CHECK_DATE, keyring, renderer)
    timings["render_qualified_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    with psycopg.connect(**conninfo) as conn:
        created = outbox.write_outbox(
            conn, CHECK_DATE, campaign_id_for(CHECK_DATE), "corr-bench-outbox", keyring=keyring, renderer=renderer
        )
        timings["write_outbox_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        outbox.assign_batches(conn, campaign_id_for(CHECK_DATE), settings.batch_size, "corr-bench-outbox")
        conn.commit()
    timings["assign_batches_s"] = time.monotonic() - t0
    if created != args.messages:
        raise RuntimeError(f"write_outbox created {created} notifications, expected {args.messages}")
    vacuum_analyze(conninfo, ["customers", "qualification_outcomes", "sms_notifications"])
    return {"timings": timings, "renders": renders}


def reset_outbox(conninfo: dict[str, Any], campaign_id: str, keyring: Any, renderer: Any, settings: Any) -> float:
    """A fresh outbox for the next stage run (what plan_send's preparation leaves before the window); seconds."""
    import psycopg

    from premium.notifications import outbox

    t0 = time.monotonic()
    with setup_connection(conninfo) as conn:
        conn.execute("TRUNCATE sms_messages, sms_batches, sms_notifications RESTART IDENTITY CASCADE")
    with psycopg.connect(**conninfo) as conn:
        outbox.write_outbox(conn, CHECK_DATE, campaign_id, "corr-bench-outbox", keyring=keyring, renderer=renderer)
        outbox.assign_batches(conn, campaign_id, settings.batch_size, "corr-bench-outbox")
        conn.commit()
    vacuum_analyze(conninfo, ["sms_notifications", "sms_messages", "sms_batches"])
    return time.monotonic() - t0


def expected_batches(
    conninfo: dict[str, Any], campaign_id: str, settings: Any, keyring: Any, renderer: Any
) -> list[tuple[str, list[dict[str, Any]]]]:
    """The batches submit() will send for the prepared outbox as it is now: the batches and messages
    assign_batches() made (PENDING messages, by message_id as batch_payload_rows() orders them), each
    message built independently of the outbox's payload: the customer's PII decrypted, the number
    normalised and the text rendered here, so that a payload that differs shows as a wrong result."""
    import psycopg

    from premium.crypto import aad_for
    from premium.notifications import outbox
    from premium.sms.phones import normalise_mobile

    with psycopg.connect(**conninfo) as conn:
        rows = conn.execute(
            """
            SELECT b.seq, m.message_id, m.customer_id, m.attempt, c.language, c.first_name_enc, c.phone_enc,
                   c.pii_key_id
            FROM sms_messages m
            JOIN sms_batches b USING (batch_id)
            JOIN customers c ON c.customer_id = m.customer_id
            WHERE m.campaign_id = %(campaign)s AND m.status = 'PENDING' AND b.check_date = %(day)s
            ORDER BY b.seq, m.message_id
            """,
            {"campaign": campaign_id, "day": CHECK_DATE},
        ).fetchall()
    batches: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for seq, message_id, customer_id, attempt, language, name_enc, phone_enc, key_id in rows:
        if message_id != outbox.message_id_for(campaign_id, customer_id, attempt):
            raise RuntimeError("message id format differs from premium.notifications.outbox.message_id_for")
        phone = normalise_mobile(keyring.decrypt(bytes(phone_enc), key_id, aad_for(customer_id, "phone_number")))
        name = keyring.decrypt(bytes(name_enc), key_id, aad_for(customer_id, "first_name"))
        rendered = renderer.render(name, language)
        batches[seq].append(
            {
                "messageId": message_id,
                "phoneNumber": phone,
                "content": rendered.text,
                "priority": settings.priority,
                "callbackUrl": settings.callback_url,
            }
        )
    return [(outbox.batch_id_for(CHECK_DATE, seq), batches[seq]) for seq in sorted(batches)]


def batch_bodies(batches: list[tuple[str, list[dict[str, Any]]]], metadata: dict[str, str]) -> list[bytes]:
    """The POST bodies, serialised as premium.notifications.carrier.SmsCarrierClient._post serialises them."""
    import orjson

    return [orjson.dumps({"batchId": b, "messages": msgs, "metadata": metadata}) for b, msgs in batches]


async def bare_loop(url: str, headers: dict[str, str], bodies: list[bytes], in_flight: int) -> Counter:
    """POST every body with ``in_flight`` workers over one session; read the answer, nothing else."""
    import aiohttp

    statuses: Counter = Counter()
    pending = iter(bodies)
    connector = aiohttp.TCPConnector(limit=in_flight)
    post_headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            for body in pending:
                async with session.post(url, data=body, headers=post_headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return statuses


class PhaseTimes:
    """Per-phase call counts, wall and thread-CPU seconds (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])

    def add(self, name: str, wall: float, cpu: float) -> None:
        with self.lock:
            entry = self.data[name]
            entry[0] += 1
            entry[1] += wall
            entry[2] += cpu

    def timed(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(name, time.perf_counter() - t0, time.thread_time() - c0)


def instrumented_submitter(phases: PhaseTimes) -> type:
    """A SubmissionEngine subclass timing its bookkeeping/build steps (a separate, instrumented run only)."""
    from premium.notifications.engine import SubmissionEngine

    class TimedSubmitter(SubmissionEngine):
        def _connect(self) -> Any:
            return phases.timed("  psycopg.connect", super()._connect)

        def _assign(self) -> Any:
            return phases.timed("_assign (assign_batches)", super()._assign)

        def _open(self) -> Any:
            return phases.timed("_open (open_batches)", super()._open)

        def _build(self, batch_id: str) -> Any:
            return phases.timed("_build (fetch + decrypt the payload)", super()._build, batch_id)

        def _bind(self, batch_id: str, carrier: str) -> Any:
            return phases.timed("_bind (UPDATE sms_batches)", super()._bind, batch_id, carrier)

        def _record(self, *args: Any) -> Any:
            return phases.timed("_record (COPY + UPDATEs)", super()._record, *args)

        def _mark(self, *args: Any, **kwargs: Any) -> Any:
            return phases.timed("_mark", super()._mark, *args, **kwargs)

    return TimedSubmitter


def build_cost_profile(conninfo: dict[str, Any], keyring: Any, renderer: Any, sample: int) -> dict[str, float]:
    """Per-message CPU microseconds over ``sample`` outbox rows (single thread): _build()'s steps, and
    the steps the preparation before the window does so that _build() need not."""
    import psycopg

    from premium.crypto import aad_for
    from premium.notifications.engine import _E164
    from premium.notifications.outbox import outbox_aad
    from premium.sms.encoding import analyse
    from premium.sms.phones import normalise_mobile

    with psycopg.connect(**conninfo) as conn:
        rows = conn.execute(
            """
            SELECT n.customer_id, c.language, c.first_name_enc, c.phone_enc, c.pii_key_id, n.campaign_id,
                   n.content_enc, n.phone_enc, n.pii_key_id
            FROM sms_notifications n JOIN customers c USING (customer_id)
            WHERE n.content_enc IS NOT NULL ORDER BY n.customer_id LIMIT %s
            """,
            (sample,),
        ).fetchall()
    n = len(rows) or 1
    out: dict[str, float] = {}

    def step(name: str, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        t0 = time.process_time()
        results = [fn(r) for r in items]
        out[name] = (time.process_time() - t0) / n * 1e6
        return results

    e164 = step(
        "decrypt phone (payload)", lambda r: keyring.decrypt(r[7], r[8], outbox_aad(r[5], r[0], "phone_number")), rows
    )
    step("decrypt content (payload)", lambda r: keyring.decrypt(r[6], r[8], outbox_aad(r[5], r[0], "content")), rows)
    step("E.164 check", _E164.fullmatch, e164)
    phones = step(
        "prep: decrypt phone + name",
        lambda r: (
            keyring.decrypt(r[3], r[4], aad_for(r[0], "phone_number")),
            keyring.decrypt(r[2], r[4], aad_for(r[0], "first_name")),
        ),
        rows,
    )
    numbers = step("prep: normalise_mobile", lambda p: normalise_mobile(p[0]), phones)
    texts = step(
        "prep: renderer.render",
        lambda pr: renderer.render(pr[0][1], pr[1][1]).text,
        list(zip(phones, rows, strict=True)),
    )
    step("prep:   of which encoding.analyse", analyse, texts)
    step(
        "prep: encrypt text + number",
        lambda tn: (keyring.encrypt(tn[0], b"content"), keyring.encrypt(tn[1], b"phone_number")),
        list(zip(texts, numbers, strict=True)),
    )
    return out


def submission_problems(
    conninfo: dict[str, Any],
    sim: Any,
    summary: Any,
    m: int,
    campaign_id: str,
    correlation_id: str,
    expected: list[tuple[str, list[dict[str, Any]]]],
) -> tuple[list[str], dict[str, Any]]:
    """Everything that must hold after a stage run; (problems, figures)."""
    import psycopg

    problems: list[str] = []
    with psycopg.connect(**conninfo) as conn:
        notif = dict(
            conn.execute(
                "SELECT status, count(*) FROM sms_notifications WHERE campaign_id = %s GROUP BY 1", (campaign_id,)
            ).fetchall()
        )
        messages = conn.execute(
            "SELECT message_id, batch_id, status, tracking_id FROM sms_messages WHERE campaign_id = %s", (campaign_id,)
        ).fetchall()
        batches = dict(
            conn.execute(
                "SELECT status, count(*) FROM sms_batches WHERE campaign_id = %s GROUP BY 1", (campaign_id,)
            ).fetchall()
        )
    accepted_db = {mid for mid, _b, st, tid in messages if st == "QUEUED" and tid}
    rejected_db = {mid for mid, _b, st, _t in messages if st == "REJECTED"}
    if notif.get("PENDING"):
        problems.append(f"{notif['PENDING']} notifications still PENDING")
    if sum(notif.values()) != m:
        problems.append(f"{sum(notif.values())} notifications, expected {m}")
    if notif.get("QUEUED", 0) != len(accepted_db):
        problems.append(f"{notif.get('QUEUED', 0)} notifications QUEUED but {len(accepted_db)} messages tracked")
    if len(accepted_db) + len(rejected_db) != m or len(messages) != m:
        problems.append(f"{len(accepted_db)} accepted + {len(rejected_db)} rejected of {len(messages)} messages != {m}")
    if summary.messages_accepted != len(accepted_db) or summary.messages_rejected != len(rejected_db):
        problems.append(
            f"summary says {summary.messages_accepted} accepted / {summary.messages_rejected} rejected, the database "
            f"{len(accepted_db)} / {len(rejected_db)}"
        )
    if set(batches) != {"ACCEPTED"} or batches.get("ACCEPTED") != len(expected):
        problems.append(f"batches {batches}, expected {len(expected)} ACCEPTED")
    layout = {mid: b for mid, b, _s, _t in messages}
    want = {msg["messageId"]: (b, msg) for b, msgs in expected for msg in msgs}
    if any(layout.get(mid) != b for mid, (b, _) in want.items()) or len(layout) != len(want):
        problems.append("the stage's batch layout differs from the bodies the bare loop posted")

    received = sim.call("GET", "/_sim/received?content=1")
    stats = sim.stats()
    ids = [r["messageId"] for r in received]
    if len(ids) != len(set(ids)):
        problems.append(f"the carrier accepted {len(ids) - len(set(ids))} message ids twice")
    if set(ids) != accepted_db:
        problems.append(f"carrier accepted {len(set(ids))} ids, the database tracks {len(accepted_db)} (or other ids)")
    if stats["messages_rejected"] != len(rejected_db):
        problems.append(f"carrier rejected {stats['messages_rejected']}, the database has {len(rejected_db)} REJECTED")
    seen = set(ids) | rejected_db
    if len(seen) != m or seen != set(want):
        problems.append(f"the carrier got {len(seen)} distinct message ids, expected exactly the {m} of the outbox")
    wrong = 0
    for r in received:
        _, msg = want.get(r["messageId"], (None, None))
        if (
            msg is None
            or r["content"] != msg["content"]
            or r["phoneNumber"] != msg["phoneNumber"]
            or r["priority"] != msg["priority"]
            or r["campaignId"] != campaign_id
            or r["correlationId"] != correlation_id
        ):
            wrong += 1
    if wrong:
        problems.append(f"{wrong} received messages differ (content/phone/priority/metadata) from the expected bodies")
    figures = {
        "accepted": len(accepted_db),
        "rejected": len(rejected_db),
        "batches": sum(batches.values()),
        "sim_batches_received": stats["batches_received"],
        "sim_duplicates_ignored": stats["duplicates_ignored"],
        "sim_max_concurrent": stats["max_concurrent"],
    }
    return problems, figures


def part_submission(args: argparse.Namespace, conninfo: dict[str, Any]) -> dict[str, Any]:
    import secrets

    from premium.banking.stage import correlation_id_for
    from premium.crypto import PiiKeyring, generate_extra
    from premium.notifications import engine as submit_module
    from premium.notifications.carrier import CarrierEndpoint, SmsCarrierClient
    from premium.notifications.window import campaign_id_for
    from premium.settings import SmsSettings
    from premium.simulators.runner import SimulatorProcess
    from premium.sms.render import SmsRenderer

    m = args.messages
    print(
        f"\n== 2. submission: {m} messages, batches of {args.batch_size}, {args.in_flight_batches} in flight ==",
        flush=True,
    )
    keyring = PiiKeyring.from_extra(generate_extra("bench"))
    base = build_submission_base(args, conninfo, keyring)
    t = base["timings"]
    print(
        f"setup: {m} customers with real encryption {t['customers_s']:.1f} s, {m} x {args.days} checks "
        f"{t['checks_s']:.1f} s (indexes {t['indexes_s']:.1f} s); qualify() {t['qualify_s']:.2f} s, "
        f"render_qualified() {t['render_qualified_s']:.1f} s ({m / t['render_qualified_s']:,.0f} msg/s), "
        f"preparation before the window: write_outbox() {t['write_outbox_s']:.2f} s "
        f"({m / t['write_outbox_s']:,.0f} msg/s), assign_batches() {t['assign_batches_s']:.2f} s"
    )
    print("renders (template/encoding/segments): " + ", ".join(f"{k} {v}" for k, v in sorted(base["renders"].items())))

    settings = SmsSettings(batch_size=args.batch_size, in_flight_batches=args.in_flight_batches)
    renderer = SmsRenderer(max_segments=settings.max_segments, bank_name=settings.bank_name)
    campaign_id = campaign_id_for(CHECK_DATE)
    api_key = secrets.token_urlsafe(24)
    sim_args = ["--name", "primary", "--secret-env", "SMS_SIM_SECRET", "--callbacks", "off"]
    runs: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    wrong: list[str] = []
    with SimulatorProcess(
        module="premium.simulators.sms_carrier", args=sim_args, env={"SMS_SIM_SECRET": api_key}, name="bench-sms"
    ) as sim:
        endpoint = CarrierEndpoint(
            "primary", sim.base_url, {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        )
        if args.pin == "split" and len(os.sched_getaffinity(0)) >= 2:
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(sim.pid, {cpus[-1]})
            os.sched_setaffinity(0, set(cpus[:-1]))
        url = f"{sim.base_url}/api/v1/messages/batch"
        t0 = time.monotonic()
        expected = expected_batches(conninfo, campaign_id, settings, keyring, renderer)
        print(f"expected batches built from the outbox in {time.monotonic() - t0:.1f} s ({len(expected)} batches)")
        # Warm the simulator and the client code paths on a few throw-away batches.
        warm_meta = {"campaignId": campaign_id, "correlationId": "corr-bench-warm-up"}
        sim.set_faults({})
        sim.reset()
        asyncio.run(bare_loop(url, endpoint.headers, batch_bodies(expected[:4], warm_meta), settings.in_flight_batches))

        outbox_fresh = True  # build_submission_base() left a fresh outbox
        for latency in args.latency_list:
            sim.set_faults({"latency_ms": latency})  # POST /_sim/reset keeps faults: set per latency, explicitly
            print(f"\n-- carrier latency {latency} ms --", flush=True)
            for run in range(1, args.repeat + 1):
                dag_run_id = f"bench__sms__{latency}ms__{run}__{CHECK_DATE}"
                correlation_id = correlation_id_for(dag_run_id, CHECK_DATE)
                metadata = {"campaignId": campaign_id, "correlationId": correlation_id}
                bodies = batch_bodies(expected, metadata)
                # bare: the same bodies, the same concurrency, a reset carrier
                sim.reset()
                with CpuWindow(sim.pid) as cpu:
                    statuses = asyncio.run(bare_loop(url, endpoint.headers, bodies, settings.in_flight_batches))
                stats = sim.stats()
                bare = {
                    "kind": "bare",
                    "latency_ms": latency,
                    "run": run,
                    "messages": m,
                    "batches": len(bodies),
                    "seconds": cpu.wall_s,
                    "rate": m / cpu.wall_s,
                    "statuses": dict(statuses),
                    "sim_accepted": stats["messages_accepted"],
                    "sim_rejected": stats["messages_rejected"],
                    "sim_max_concurrent": stats["max_concurrent"],
                    **cpu.figures(),
                }
                if (
                    statuses != Counter({202: len(bodies)})
                    or stats["messages_accepted"] + stats["messages_rejected"] != m
                ):
                    wrong.append(f"bare {latency} ms run {run}: statuses {dict(statuses)}, carrier counted {stats}")
                print(describe(bare, f"bare #{run}"), flush=True)
                runs.append(bare)
                del bodies
                # stage: submit() on a fresh outbox, against the reset carrier
                reset_s = 0.0 if outbox_fresh else reset_outbox(conninfo, campaign_id, keyring, renderer, settings)
                outbox_fresh = False
                sim.reset()
                with CpuWindow(sim.pid) as cpu:
                    summary = submit_module.submit(
                        conninfo,
                        campaign_id,
                        settings,
                        {"primary": endpoint},
                        keyring,
                        correlation_id,
                    )
                problems, figures = submission_problems(
                    conninfo, sim, summary, m, campaign_id, correlation_id, expected
                )
                stage = {
                    "kind": "stage",
                    "latency_ms": latency,
                    "run": run,
                    "messages": m,
                    "seconds": cpu.wall_s,
                    "rate": m / cpu.wall_s,
                    "summary": summary.as_dict(),
                    "outbox_reset_s": reset_s,
                    "problems": problems,
                    **figures,
                    **cpu.figures(),
                }
                print(describe(stage, f"stage #{run}"))
                print(
                    f"           {figures['batches']} batches, {summary.post_attempts} POSTs; accepted "
                    f"{figures['accepted']}, rejected {figures['rejected']} (carrier 21211); carrier max concurrent "
                    f"POSTs {figures['sim_max_concurrent']} (bare: {bare['sim_max_concurrent']})"
                )
                for problem in problems:
                    print(f"           WRONG: {problem}")
                wrong += [f"stage {latency} ms run {run}: {p}" for p in problems]
                runs.append(stage)
                sys.stdout.flush()
            best_bare = max((r for r in runs if r["kind"] == "bare" and r["latency_ms"] == latency), key=rate_of)
            best_stage = max((r for r in runs if r["kind"] == "stage" and r["latency_ms"] == latency), key=rate_of)
            ratio = best_stage["rate"] / best_bare["rate"]
            results.append(
                {
                    "latency_ms": latency,
                    "bare": best_bare,
                    "stage": best_stage,
                    "ratio": ratio,
                    "verdict": "PASS" if ratio >= GOAL else "MISS",
                }
            )
            print(
                f"  best of {args.repeat}: stage {best_stage['rate']:,.0f} msg/s / bare {best_bare['rate']:,.0f} msg/s "
                f"= ratio {ratio:.2f}  goal >= {GOAL} {'PASS' if ratio >= GOAL else 'MISS'}"
            )

        breakdown = None
        if not args.no_breakdown:
            sim.set_faults({"latency_ms": args.latency_list[0]})
            breakdown = instrumented_run(
                args, conninfo, sim, settings, endpoint, keyring, renderer, campaign_id, SmsCarrierClient
            )
    return {
        "setup": base["timings"],
        "renders": base["renders"],
        "runs": runs,
        "results": results,
        "breakdown": breakdown,
        "wrong": wrong,
    }


def rate_of(r: dict[str, Any]) -> float:
    return r["rate"]


def instrumented_run(
    args: argparse.Namespace,
    conninfo: dict[str, Any],
    sim: Any,
    settings: Any,
    endpoint: Any,
    keyring: Any,
    renderer: Any,
    campaign_id: str,
    client_cls: type,
) -> dict[str, Any]:
    """One more stage run with its phases timed (not used for the ratio), and per-message build costs."""
    from premium.banking.stage import correlation_id_for

    m = args.messages
    phases = PhaseTimes()
    reset_outbox(conninfo, campaign_id, keyring, renderer, settings)
    sim.reset()
    original_post = client_cls.post_batch

    async def timed_post(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await original_post(self, *args, **kwargs)
        finally:
            phases.add("post_batch (serialise, POST, parse 202)", time.perf_counter() - t0, 0.0)

    client_cls.post_batch = timed_post
    try:
        cls = instrumented_submitter(phases)
        correlation_id = correlation_id_for("bench__sms__instrumented", CHECK_DATE)
        endpoints = {"primary": endpoint}
        submitter = cls(conninfo, campaign_id, CHECK_DATE, settings, endpoints, keyring, correlation_id)
        with CpuWindow(sim.pid) as cpu:
            asyncio.run(submitter.run())
    finally:
        client_cls.post_batch = original_post
    costs = build_cost_profile(conninfo, keyring, renderer, min(m, args.profile_sample))
    wall = cpu.wall_s
    print(f"\n-- instrumented stage run (phases; not used for the ratio): {wall:.2f} s, {m / wall:,.0f} msg/s --")
    print(f"  {'phase':<46} {'calls':>6} {'wall s':>8} {'thread CPU s':>12} {'CPU us/msg':>10}")
    for name, (calls, w, c) in sorted(phases.data.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<46} {calls:>6.0f} {w:>8.2f} {c:>12.2f} {c / m * 1e6:>10.1f}")
    print(
        f"  process CPU {cpu.self_s:.2f} s ({us_each(cpu.self_s, m)} us/msg), simulator {us_each(cpu.sim_s, m)} "
        f"us/msg, PostgreSQL (this database) {us_each(cpu.pg_s, m)} us/msg; other load "
        f"{core_share(cpu.other_s + max(0.0, (cpu.pg_all_s or 0) - (cpu.pg_s or 0)), wall)}"
    )
    print(
        f"  per-message CPU of _build's steps and of the preparation's (prep:, before the window; single thread, "
        f"{min(m, args.profile_sample)} messages):"
    )
    for name, us in costs.items():
        print(f"    {name:<34} {us:8.1f} us")
    return {
        "seconds": wall,
        "rate": m / wall,
        "phases": {k: {"calls": v[0], "wall_s": v[1], "thread_cpu_s": v[2]} for k, v in phases.data.items()},
        "cpu": cpu.figures(),
        "build_costs_us": costs,
    }


def describe(r: dict[str, Any], label: str) -> str:
    n, wall = r["messages"], r["seconds"]
    return (
        f"  {label:<9}{r['rate']:9,.0f} msg/s {wall:7.2f} s | CPU us/msg (share of a core): "
        f"client {us_each(r['client_cpu_s'], n)} ({core_share(r['client_cpu_s'], wall)}), "
        f"simulator {us_each(r['sim_cpu_s'], n)} ({core_share(r['sim_cpu_s'], wall)}), "
        f"PostgreSQL {us_each(r['pg_cpu_s'], n)} ({core_share(r['pg_cpu_s'], wall)}) | other load: PostgreSQL "
        f"(other databases) {core_share((r['pg_all_dbs_cpu_s'] or 0) - (r['pg_cpu_s'] or 0), wall)}, rest "
        f"{core_share(r['other_cpu_s'], wall)}"
    )


# -- report --------------------------------------------------------------------------------------------


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
        pg = dict(
            conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN ('server_version', "
                "'shared_buffers', 'work_mem', 'jit', 'max_parallel_workers_per_gather', 'synchronous_commit', "
                "'effective_cache_size')"
            ).fetchall()
        )
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "psycopg": psycopg.__version__,
        "postgresql": pg.get("server_version", "?").split()[0],
        "pg_settings": pg,
        "platform": platform.platform(),
        "plugins": str(Path(premium.__file__).resolve().parents[1]),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(args: argparse.Namespace, qual: dict | None, sub: dict | None, env: dict, total_s: float) -> None:
    print("\n" + "=" * 100)
    print(f"{'measure':<44} {'figure':>20}  note")
    if qual:
        s = qual["setup"]
        print(
            f"{'qualification setup':<44} {s['total_s']:>18.1f} s  {args.customers:,} customers, "
            f"{qual['sizes']['daily_balance_checks']['rows']:,} checks"
        )
        print(f"{'qualification, first run':<44} {qual['first_run_s']:>18.2f} s  {qual['rate']:,.0f} customers/s")
        print(
            f"{'qualification, rerun (upsert)':<44} {qual['rerun_s']:>18.2f} s  {qual['rerun_rate']:,.0f} customers/s"
        )
        print(f"{'qualified':<44} {qual['outcomes'].get('qualified', 0):>20,}  of {qual['customers']:,}")
    if sub:
        s = sub["setup"]
        setup_s = sum(v for k, v in s.items() if k != "indexes_s")
        print(
            f"{'submission setup':<44} {setup_s:>18.1f} s  {args.messages:,} customers, checks, qualify(), "
            f"render_qualified() ({args.messages / s['render_qualified_s']:,.0f} msg/s), write_outbox() "
            f"{s['write_outbox_s']:.1f} s + assign_batches() {s['assign_batches_s']:.1f} s (before the window)"
        )
        for r in sub["results"]:
            st, bare, lat = r["stage"], r["bare"], r["latency_ms"]
            print(f"{f'stage submit(), {lat} ms carrier':<44} {st['rate']:>14,.0f} msg/s  {st['seconds']:.2f} s")
            print(f"{f'bare POST loop, {lat} ms carrier':<44} {bare['rate']:>14,.0f} msg/s  {bare['seconds']:.2f} s")
            print(f"{f'ratio stage/bare, {lat} ms carrier':<44} {r['ratio']:>20.2f}  goal >= {GOAL}: {r['verdict']}")
        print(f"{'stage results':<44} {'OK' if not sub['wrong'] else 'WRONG':>20}")
    proto_s = qual["prototypes_s"] if qual else 0.0
    note = f"of which --qual-prototypes {proto_s:.0f} s" if proto_s else ""
    print(f"{'benchmark total':<44} {total_s:>18.0f} s  {note}")
    pg = env["pg_settings"]
    print(
        f"environment: {env['usable_cores']} cores ({env['cpu']}), {env['memory_gb']} GB, Python {env['python']}, "
        f"aiohttp {env['aiohttp']}, psycopg {env['psycopg']}, PostgreSQL {env['postgresql']} (shared_buffers "
        f"{pg.get('shared_buffers')}, work_mem {pg.get('work_mem')}, jit {pg.get('jit')}, parallel workers/gather "
        f"{pg.get('max_parallel_workers_per_gather')}); load average at start {env['loadavg_at_start']}; "
        f"plugins {env['plugins']}"
    )


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="qualification: customers (1000000)")
    parser.add_argument("--days", type=int, default=30, help="days of balance checks ending at the check date (30)")
    parser.add_argument("--messages", type=int, default=100_000, help="submission: messages M (100000)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--in-flight-batches", type=int, default=4)
    add_database_arguments(parser, "premium_bench_sms")
    parser.add_argument("--skip-qualification", action="store_true")
    parser.add_argument("--skip-submission", action="store_true")
    parser.add_argument("--qual-prototypes", action="store_true", help="also time candidate index/SQL/setting changes")
    parser.add_argument("--prototype-rounds", type=int, default=2, help="rounds of --qual-prototypes (2)")
    parser.add_argument("--repeat", type=int, default=2, help="bare + stage pairs; the best of each is used (2)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the instrumented stage run")
    parser.add_argument("--profile-sample", type=int, default=20_000, help="messages for the build-cost profile")
    parser.add_argument(
        "--latencies",
        default="0,100",
        help="carrier latencies per POST in ms, comma-separated (0,100): 0 shows CPU cost, 100 a real carrier",
    )
    parser.add_argument(
        "--pin",
        choices=["none", "split"],
        default="none",
        help="none (default): no CPU affinity; split: simulator on the last CPU, this process on the others",
    )
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    try:
        args.latency_list = [int(x) for x in args.latencies.split(",") if x.strip()]
    except ValueError:
        parser.error("--latencies must be comma-separated integers (ms)")
    if not args.latency_list or any(x < 0 for x in args.latency_list):
        parser.error("--latencies needs at least one latency >= 0")
    if args.customers < 10 or args.messages < 1 or args.days < 1 or args.repeat < 1:
        parser.error("--customers >= 10, --messages >= 1, --days >= 1 and --repeat >= 1 are required")
    if not 500 <= args.batch_size <= 1000 or not 1 <= args.in_flight_batches <= 64:
        parser.error("--batch-size must be 500..1000 and --in-flight-batches 1..64 (SmsSettings' ranges)")
    if args.messages >= 10_000_000:
        parser.error("--messages must be below 10,000,000 (account id format)")
    return args


def main(argv: list[str] | None = None) -> int:
    import logging

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    t0 = time.monotonic()
    conninfo = recreate_database(args)
    db_s = time.monotonic() - t0
    CpuWindow.postmaster, CpuWindow.dbname = postmaster_pid(conninfo), args.db
    env = environment(conninfo)
    print(
        f"environment: {env['usable_cores']} cores, Python {env['python']}, aiohttp {env['aiohttp']}, psycopg "
        f"{env['psycopg']}, PostgreSQL {env['postgresql']}; load average {env['loadavg_at_start']}; plugins "
        f"{env['plugins']}; database {args.db} (drop, create, migrate: {db_s:.1f} s)",
        flush=True,
    )
    qual = None if args.skip_qualification else part_qualification(args, conninfo)
    sub = None if args.skip_submission else part_submission(args, conninfo)
    total_s = time.monotonic() - started
    print_table(args, qual, sub, env, total_s)
    wrong = sub["wrong"] if sub else []
    report = {"environment": env, "qualification": qual, "submission": sub, "total_s": total_s}
    return finish(args, report, wrong)


if __name__ == "__main__":
    sys.exit(main())
