"""The fetch stage of ``premium_balance_daily``: plan, fetch, finish (§2, §4.1, §7.1).

- :func:`plan_run` cuts the active accounts into chunks of ``chunk_size`` and groups the
  chunks into at most ``max_mapped_tasks`` contiguous id ranges: the descriptors the fetch task
  is mapped over (ids and counts only).
- :func:`fetch_range` fetches every active account of one range: a producer pages through
  the range (keyset, ``chunk_size`` a page), ``in_flight`` workers call the bank concurrently
  over one pooled client, and a writer upserts each chunk of results in bulk (COPY into a
  session staging table, then one INSERT … ON CONFLICT) while the workers keep going. Each bank
  call's audit event is written apart from the chunks, by a :class:`premium.audit.AuditWriter` on
  its own connection (within a second), so a task killed mid-chunk leaves its calls audited.
- :func:`finish_run` gives every unresolved account of the day a reason, counts the outcome
  from the tables and closes the run record: COMPLETE, PARTIAL, SKIPPED_OUTAGE or FAILED. A day on
  which the bank refused our credentials is FAILED whatever the tables hold (a rerun of a date
  fetched before still has its earlier checks), with the reason in the record's ``detail``.

Idempotent throughout: rows are keyed on (account, check date), so a retried task, a cleared
run or a backfill of the same date converges to one row per account with the latest values.

Outage (§7.1): when the breaker is open, workers wait for it to let a probe through. The moment
the bank became unavailable is kept in the run record (shared by all fetch tasks of the date);
once it is older than ``outage_threshold_s`` the day is declared an outage and the tasks stop.
Only a definite answer about an account (a balance, 404, 400, an invalid body) proves the bank
available and resets that clock; an account that ends ``failed_after_retries`` does not. The
breaker sees each account once (see :mod:`premium.banking.client`): a few accounts that fail on
every call end ``failed_after_retries`` after their retries, and since the half-open probe is
always an account not tried yet, they cannot hold the breaker open until the threshold; a real
outage, where every probe fails, still reaches it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import psycopg

from premium.audit import AuditWriter
from premium.banking.client import (
    BalanceResult,
    BankEndpoint,
    BreakerOpen,
    CoreBankingClient,
)
from premium.crypto import PiiKeyring, encrypt_balance, load_keyring_for
from premium.paths import read_sql
from premium.settings import BalanceSettings

log = logging.getLogger(__name__)

SHEKEL_CODES = frozenset({"NIS", "ILS"})  # ILS is the ISO 4217 code of the new shekel


class BankOutageError(Exception):
    """The bank stayed unavailable past the outage threshold."""


@dataclass(frozen=True)
class ChunkDescriptor:
    """One fetch task's share of the day: a contiguous id range of whole chunks."""

    index: int
    label: str
    id_lo: int
    id_hi: int
    chunks: int
    accounts: int

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> ChunkDescriptor:
        return cls(**value)


@dataclass
class FetchSummary:
    accounts: int = 0
    outcomes: Counter = field(default_factory=Counter)
    passing: int = 0
    retries: int = 0
    requests: int = 0
    chunks_written: int = 0
    outage: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "accounts": self.accounts,
            "outcomes": dict(self.outcomes),
            "passing": self.passing,
            "retries": self.retries,
            "requests": self.requests,
            "chunks_written": self.chunks_written,
            "outage": self.outage,
            "seconds": round(self.seconds, 3),
        }


def correlation_id_for(dag_run_id: str, check_date: date) -> str:
    """One correlation id per DAG run, stable across task retries: corr-<yyyymmdd>-<hash>."""
    digest = hashlib.sha256(dag_run_id.encode()).hexdigest()[:12]
    return f"corr-{check_date:%Y%m%d}-{digest}"


def group_chunks(chunks: Sequence[tuple[int, int, int]], max_groups: int) -> list[ChunkDescriptor]:
    """Group (id_lo, id_hi, accounts) chunks into at most ``max_groups`` contiguous ranges.

    Chunks are spread as evenly as possible: with 23 chunks and 5 groups, the groups take
    5, 5, 5, 4 and 4 chunks.
    """
    if max_groups < 1:
        raise ValueError("max_groups must be at least 1")
    total = len(chunks)
    groups = min(max_groups, total)
    result: list[ChunkDescriptor] = []
    start = 0
    for g in range(groups):
        size = total // groups + (1 if g < total % groups else 0)
        part = chunks[start : start + size]
        first, last = start + 1, start + size
        accounts = sum(c[2] for c in part)
        span = f"chunk {first}" if first == last else f"chunks {first}-{last}"
        result.append(
            ChunkDescriptor(
                index=g,
                label=f"{span} of {total} ({accounts} accounts)",
                id_lo=part[0][0],
                id_hi=part[-1][1],
                chunks=size,
                accounts=accounts,
            )
        )
        start += size
    return result


def plan_run(
    conninfo: dict[str, Any], check_date: date, dag_run_id: str, settings: BalanceSettings
) -> list[ChunkDescriptor]:
    """Plan the date's fetch and (re)start its run record; returns the fetch task descriptors."""
    with psycopg.connect(**conninfo) as conn:
        rows = conn.execute(read_sql("plan_balance_chunks.sql"), {"chunk_size": settings.chunk_size}).fetchall()
        descriptors = group_chunks([(r[1], r[2], r[3]) for r in rows], settings.max_mapped_tasks)
        conn.execute(
            read_sql("start_balance_run.sql"),
            {
                "check_date": check_date,
                "dag_run_id": dag_run_id,
                "correlation_id": correlation_id_for(dag_run_id, check_date),
                "threshold": settings.threshold_nis,
                "accounts_planned": sum(d.accounts for d in descriptors),
                "chunks": len(rows),
                "mapped_tasks": len(descriptors),
            },
        )
        # Reasons derived at the end of a previous run of this date are recomputed at the end of this one.
        conn.execute(
            "DELETE FROM balance_check_failures WHERE check_date = %s AND reason IN ('skipped_outage', 'not_attempted')",
            (check_date,),
        )
    log.info(
        "planned %s: %d active accounts in %d chunks of <= %d, %d fetch task(s)",
        check_date,
        sum(d.accounts for d in descriptors),
        len(rows),
        settings.chunk_size,
        len(descriptors),
    )
    return descriptors


# -- outage bookkeeping (shared by every fetch task of the date, through the run record) ----------


class OutageMonitor:
    def __init__(self, conninfo: dict[str, Any], check_date: date, settings: BalanceSettings, client) -> None:
        self.conninfo = conninfo
        self.check_date = check_date
        self.settings = settings
        self.client = client
        self._lock = asyncio.Lock()
        self._marked = False

    async def _execute(self, query: str, params: tuple) -> Any:
        async with await psycopg.AsyncConnection.connect(**self.conninfo, autocommit=True) as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchone() if cur.description else None

    async def declared(self) -> bool:
        row = await self._execute(
            "SELECT outage_declared_at IS NOT NULL FROM balance_check_runs WHERE check_date = %s", (self.check_date,)
        )
        return bool(row and row[0])

    async def wait_for_bank(self) -> None:
        """Called while the breaker is open: wait for a probe slot, or declare the outage."""
        async with self._lock:
            if self.client.breaker_state == "opened" and self.client.breaker_wait_s() > 0:
                row = await self._execute(
                    """
                    UPDATE balance_check_runs SET outage_since = coalesce(outage_since, now())
                    WHERE check_date = %s
                    RETURNING extract(epoch FROM now() - outage_since)::float8, outage_declared_at IS NOT NULL
                    """,
                    (self.check_date,),
                )
                self._marked = True
                unavailable_s, already_declared = row or (0.0, False)
                if already_declared or unavailable_s >= self.settings.outage_threshold_s:
                    await self._execute(
                        "UPDATE balance_check_runs SET outage_declared_at = coalesce(outage_declared_at, now()) "
                        "WHERE check_date = %s",
                        (self.check_date,),
                    )
                    raise BankOutageError(
                        f"core banking unavailable for {unavailable_s:.0f}s "
                        f"(outage threshold {self.settings.outage_threshold_s:.0f}s)"
                    )
                pause = min(self.client.breaker_wait_s(), self.settings.outage_threshold_s - unavailable_s)
                log.warning(
                    "core banking unavailable for %.1fs; breaker open, next probe in %.1fs", unavailable_s, pause
                )
                await asyncio.sleep(max(pause, 0.0) + 0.01)

    async def bank_answered(self) -> None:
        if self._marked:
            self._marked = False
            await self._execute(
                "UPDATE balance_check_runs SET outage_since = NULL WHERE check_date = %s AND outage_declared_at IS NULL",
                (self.check_date,),
            )
            log.info("core banking answers again; outage clock reset")


# -- writing ---------------------------------------------------------------------------------------

_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS staging_balance_checks (
    account_id text, customer_id text, balance numeric(18, 2), currency text, threshold numeric(18, 2),
    passes_threshold boolean, account_status text, check_timestamp timestamptz, correlation_id text,
    banking_reference_id text, balance_enc bytea, balance_key_id text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS staging_balance_failures (
    account_id text, customer_id text, reason text, http_status integer, detail text, attempts integer,
    correlation_id text
) ON COMMIT DELETE ROWS;
"""


class BalanceWriter:
    """Bulk upserts of one task's results, one transaction per flushed chunk.

    With a ``keyring`` (``settings.encrypt_balances``, §5.3) the amount is stored only encrypted:
    ``balance`` NULL, ``balance_enc``/``balance_key_id`` under the keyring's current key, bound to
    the row (:func:`premium.crypto.balance_aad`). ``passes_threshold`` is computed from the
    plaintext before encryption, so qualification (which reads only the flag) is unchanged.
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection,
        check_date: date,
        settings: BalanceSettings,
        correlation_id: str,
        keyring: PiiKeyring | None = None,
    ):
        self.conn = conn
        self.check_date = check_date
        self.threshold = settings.threshold_nis
        self.correlation_id = correlation_id
        self.keyring = keyring

    @classmethod
    async def open(cls, conninfo, check_date, settings, correlation_id, keyring=None) -> BalanceWriter:
        if settings.encrypt_balances and keyring is None:
            raise ValueError("encrypt_balances is on: the balance writer needs the PII keyring")
        conn = await psycopg.AsyncConnection.connect(**conninfo)
        await conn.execute(_STAGING_DDL)
        await conn.commit()
        return cls(conn, check_date, settings, correlation_id, keyring if settings.encrypt_balances else None)

    async def close(self) -> None:
        await self.conn.close()

    def passes(self, result: BalanceResult) -> bool:
        return result.currency in SHEKEL_CODES and result.amount is not None and result.amount >= self.threshold

    def _stored_amount(self, r: BalanceResult) -> tuple[Any, bytes | None, str | None]:
        """(balance, balance_enc, balance_key_id) as stored: plaintext, or only the ciphertext."""
        if self.keyring is None or r.amount is None:
            return r.amount, None, None
        key_id, blob = encrypt_balance(self.keyring, r.account_id, self.check_date, r.amount)
        return None, blob, key_id

    async def write(self, batch: Sequence[tuple[str, BalanceResult]]) -> None:
        """``batch``: (our customer_id, result) pairs."""
        params = {"check_date": self.check_date}
        async with self.conn.transaction():
            async with self.conn.cursor() as cur:
                async with cur.copy(
                    "COPY staging_balance_checks (account_id, customer_id, balance, currency, threshold, "
                    "passes_threshold, account_status, check_timestamp, correlation_id, banking_reference_id, "
                    "balance_enc, balance_key_id) FROM STDIN"
                ) as copy:
                    for customer_id, r in batch:
                        if r.ok:
                            passes = self.passes(r)  # from the plaintext, before any encryption
                            balance, balance_enc, balance_key_id = self._stored_amount(r)
                            await copy.write_row(
                                (
                                    r.account_id,
                                    customer_id,
                                    balance,
                                    r.currency,
                                    self.threshold,
                                    passes,
                                    r.account_status,
                                    r.check_timestamp,
                                    self.correlation_id,
                                    r.reference_id,
                                    balance_enc,
                                    balance_key_id,
                                )
                            )
                await cur.execute(read_sql("upsert_balance_checks.sql"), params)
                async with cur.copy(
                    "COPY staging_balance_failures (account_id, customer_id, reason, http_status, detail, "
                    "attempts, correlation_id) FROM STDIN"
                ) as copy:
                    for customer_id, r in batch:
                        if not r.ok:
                            await copy.write_row(
                                (
                                    r.account_id,
                                    customer_id,
                                    r.outcome,
                                    r.http_status,
                                    r.detail,
                                    r.attempts,
                                    self.correlation_id,
                                )
                            )
                await cur.execute(read_sql("upsert_balance_failures.sql"), params)


# -- fetching --------------------------------------------------------------------------------------


def _customer_mismatch(result: BalanceResult, customer_id: str) -> BalanceResult:
    return BalanceResult(
        result.account_id,
        "invalid_response",
        result.attempts,
        200,
        "customerId in the body differs from the account's customer",
    )


async def fetch_range(
    conninfo: dict[str, Any],
    descriptor: ChunkDescriptor,
    check_date: date,
    settings: BalanceSettings,
    endpoint: BankEndpoint,
    correlation_id: str,
    *,
    keyring: PiiKeyring | None = None,
) -> FetchSummary:
    """Fetch and record every active account with id in [id_lo, id_hi] for ``check_date``.

    ``keyring``: for ``settings.encrypt_balances`` (read from ``premium_pii_keys`` when not given).
    """
    if settings.encrypt_balances and keyring is None:
        keyring = load_keyring_for(conninfo)  # before any bank call: a missing or short keyring fails at once
    started = time.monotonic()
    summary = FetchSummary()
    workers = max(1, min(settings.in_flight, descriptor.accounts or 1))
    work: asyncio.Queue = asyncio.Queue(maxsize=workers * 4)
    pending: list[tuple[str, BalanceResult]] = []
    flushes: asyncio.Queue = asyncio.Queue(maxsize=2)
    chunk_started = time.monotonic()

    async with (
        CoreBankingClient(endpoint, settings, correlation_id) as client,
        AuditWriter(client.audit, conninfo, name="bank-audit"),  # each call in system_events within a second
    ):
        monitor = OutageMonitor(conninfo, check_date, settings, client)
        if await monitor.declared():
            log.warning("%s already declared an outage day by another task; nothing fetched", check_date)
            summary.outage = True
            return summary
        writer = await BalanceWriter.open(conninfo, check_date, settings, correlation_id, keyring)

        async def produce() -> None:
            after_id = descriptor.id_lo - 1
            async with await psycopg.AsyncConnection.connect(**conninfo, autocommit=True) as conn:
                while True:
                    cur = await conn.execute(
                        read_sql("select_chunk_accounts.sql"),
                        {"after_id": after_id, "id_hi": descriptor.id_hi, "page_size": settings.chunk_size},
                    )
                    page = await cur.fetchall()
                    if not page:
                        break
                    for _id, customer_id, account_id in page:
                        await work.put((customer_id, account_id))
                    after_id = page[-1][0]
            for _ in range(workers):
                await work.put(None)

        async def flush_pending(final: bool = False) -> None:
            nonlocal pending, chunk_started
            if pending and (final or len(pending) >= settings.chunk_size):
                batch, pending = pending, []
                await flushes.put((batch, time.monotonic() - chunk_started))
                chunk_started = time.monotonic()

        async def work_loop() -> None:
            while (item := await work.get()) is not None:
                customer_id, account_id = item
                while True:
                    try:
                        result = await client.get_balance(account_id, check_date)
                        break
                    except BreakerOpen:
                        await monitor.wait_for_bank()
                if result.bank_available:
                    await monitor.bank_answered()
                if result.ok and result.customer_id != customer_id:
                    result = _customer_mismatch(result, customer_id)
                summary.outcomes[result.outcome] += 1
                pending.append((customer_id, result))
                await flush_pending()

        async def write_loop() -> None:
            while (item := await flushes.get()) is not None:
                batch, fetch_s = item
                t0 = time.monotonic()
                await writer.write(batch)
                summary.chunks_written += 1
                counts = Counter(r.outcome for _, r in batch)
                passing = sum(1 for _, r in batch if r.ok and writer.passes(r))
                summary.passing += passing
                log.info(
                    "wrote chunk %d/%d of %s: %d accounts -> %d checked (%d passing), %d not found, %d failed; "
                    "fetched in %.2fs, written in %.2fs; retries so far %d, breaker %s",
                    summary.chunks_written,
                    descriptor.chunks,
                    descriptor.label,
                    len(batch),
                    counts["ok"],
                    passing,
                    counts["not_found"],
                    len(batch) - counts["ok"] - counts["not_found"],
                    fetch_s,
                    time.monotonic() - t0,
                    client.stats.retries,
                    client.breaker_state,
                )

        writer_task = asyncio.create_task(write_loop())
        tasks = [asyncio.create_task(produce())] + [asyncio.create_task(work_loop()) for _ in range(workers)]
        fetching = asyncio.gather(*tasks)
        failure: BaseException | None = None
        try:
            done, _ = await asyncio.wait({fetching, writer_task}, return_when=asyncio.FIRST_COMPLETED)
            if writer_task in done:  # the writer only ends early when a write failed
                failure = writer_task.exception() or RuntimeError("balance writer stopped early")
            else:
                failure = fetching.exception()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(fetching, return_exceptions=True)
            try:
                if not writer_task.done():
                    await flush_pending(final=True)  # what was fetched before a failure is still recorded
                    await flushes.put(None)
                    await writer_task
            finally:
                await writer.close()
        summary.accounts = sum(summary.outcomes.values())
        summary.retries = client.stats.retries
        summary.requests = client.stats.requests
        summary.seconds = time.monotonic() - started
        if isinstance(failure, BankOutageError):
            summary.outage = True
            log.error(
                "outage declared for %s: %s; %d accounts recorded before it", check_date, failure, summary.accounts
            )
            if not settings.skip_on_outage:
                raise failure
            return summary
        if failure is not None:
            raise failure
    log.info(
        "%s done: %d accounts in %.1fs (%.0f/s), %s, %d requests, %d retries",
        descriptor.label,
        summary.accounts,
        summary.seconds,
        summary.accounts / summary.seconds if summary.seconds else 0.0,
        dict(summary.outcomes),
        summary.requests,
        summary.retries,
    )
    return summary


def fetch_chunk(
    conninfo: dict[str, Any],
    descriptor: ChunkDescriptor,
    check_date: date,
    settings: BalanceSettings,
    endpoint: BankEndpoint,
    correlation_id: str,
    *,
    keyring: PiiKeyring | None = None,
) -> FetchSummary:
    """Synchronous entry point for a task (the keyring, when needed, is read here, outside the loop)."""
    if settings.encrypt_balances and keyring is None:
        keyring = load_keyring_for(conninfo)
    return asyncio.run(
        fetch_range(conninfo, descriptor, check_date, settings, endpoint, correlation_id, keyring=keyring)
    )


# -- finishing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    check_date: date
    status: str
    planned: int
    checked: int
    passing: int
    skipped: int
    failed: int
    skipped_outage: int
    not_attempted: int
    correlation_id: str
    started_at: Any = None
    finished_at: Any = None
    credentials_rejected: int | None = None  # the HTTP status (401/403) a fetch task of the run got

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["check_date"] = self.check_date.isoformat()
        d["started_at"] = self.started_at.isoformat() if self.started_at else None
        d["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return d


def finish_run(
    conninfo: dict[str, Any],
    check_date: date,
    descriptors: Sequence[ChunkDescriptor],
    *,
    credentials_rejected: int | None = None,
) -> RunOutcome:
    """Resolve every account of the date, count, and close the run record.

    ``credentials_rejected``: the HTTP status (401/403) with which the bank refused a fetch task
    of this run, if one did. The day is then FAILED (before any outage: the credentials are what
    needs fixing), and the accounts no task reached are ``not_attempted`` with that as the detail.
    """
    with psycopg.connect(**conninfo) as conn:
        run = conn.execute(
            "SELECT correlation_id, accounts_planned, outage_declared_at IS NOT NULL FROM balance_check_runs "
            "WHERE check_date = %s FOR UPDATE",
            (check_date,),
        ).fetchone()
        if run is None:
            raise RuntimeError(f"no run record for {check_date}: plan_chunks did not run for this date")
        correlation_id, planned, outage = run
        refused = (
            f"core banking refused the credentials (HTTP {credentials_rejected})" if credentials_rejected else None
        )
        if refused:
            reason, detail = "not_attempted", refused
        elif outage:
            reason, detail = "skipped_outage", "bank outage past threshold"
        else:
            reason, detail = "not_attempted", "fetch task did not reach the account"
        if descriptors:
            conn.execute(
                read_sql("record_unresolved_accounts.sql"),
                {
                    "check_date": check_date,
                    "reason": reason,
                    "detail": detail,
                    "correlation_id": correlation_id,
                    "id_lo": min(d.id_lo for d in descriptors),
                    "id_hi": max(d.id_hi for d in descriptors),
                },
            )
        checked, passing, skipped, failed, skipped_outage, not_attempted = conn.execute(
            read_sql("summarise_balance_run.sql"), {"check_date": check_date}
        ).fetchone()
        if refused:
            status = "FAILED"
        elif outage:
            status = "SKIPPED_OUTAGE"
        elif not_attempted:
            status = "FAILED"
        elif failed:
            status = "PARTIAL"
        else:
            status = "COMPLETE"
        started_at, finished_at = conn.execute(
            """
            UPDATE balance_check_runs SET status = %s, accounts_checked = %s, accounts_passing = %s,
                accounts_skipped = %s, accounts_failed = %s, detail = %s, finished_at = now()
            WHERE check_date = %s RETURNING started_at, finished_at
            """,
            (status, checked, passing, skipped + skipped_outage, failed + not_attempted, refused, check_date),
        ).fetchone()
    return RunOutcome(
        check_date,
        status,
        planned,
        checked,
        passing,
        skipped,
        failed,
        skipped_outage,
        not_attempted,
        correlation_id,
        started_at,
        finished_at,
        credentials_rejected,
    )
