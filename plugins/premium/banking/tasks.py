"""Task bodies of the fetch stage of ``premium_balance_daily`` (the DAG file only wires them).

Each takes the Airflow context, resolves connections and settings, and hands plain values to
:mod:`premium.banking.stage`. XCom carries chunk descriptors (id ranges and counts) only, plus
the HTTP status of a credentials refusal (below).

A day that is not a normal day ends the DAG run failed, at ``record_run``: it still does the
bookkeeping (every account resolved, the run record closed), then raises a
:class:`BalanceDayFailed` (an ``AirflowFailException``: no retry), so that nothing downstream
(qualification, sending) runs, the asset ``daily_balance_checks`` is not published and the alert
is raised once, by its failure callback. Such days: the bank refused our credentials (401/403)
in any fetch task of the run, the day was skipped for an outage, or accounts were left unreached.

A 401/403 fails the fetch task at once (:class:`BankCredentialsRejected`, no retry) and tells
``record_run`` through the XCom ``bank_credentials_rejected`` of that task instance; Airflow
clears it when the task runs again, so a run cleared after the connection is fixed starts clean.
The fetch task raises no alert of its own: ``record_run`` raises the one alert of the day.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from premium import runtime
from premium.settings import BalanceSettings

log = logging.getLogger(__name__)

# Pushed by a fetch task the bank refused (value: the HTTP status), read by record_run.
CREDENTIALS_REJECTED_XCOM = "bank_credentials_rejected"


class BalanceDayFailed(AirflowFailException):
    """Raised by record_run once the day is recorded: not a normal day; nothing downstream may run."""


class CredentialsRejectedDay(BalanceDayFailed):
    """The bank refused our credentials (401/403) during the day's fetch (§2.2: check, escalate)."""

    alert_kind = "bank_credentials_rejected"


class BankOutageSkip(BalanceDayFailed):
    """The day was skipped for a bank outage (§7.1); fails the run so that it shows and alerts."""

    alert_kind = "bank_outage_day_skipped"


class AccountsNotReached(BalanceDayFailed):
    """A fetch task failed before reaching all its accounts."""

    alert_kind = "balance_accounts_not_reached"


class BankCredentialsRejected(AirflowFailException):
    """401/403 from the bank in a fetch task: no retry can help. Its alert is record_run's."""

    alert_kind = "bank_credentials_rejected"
    alert_raised_by = "record_run"  # premium.alerts.task_failure_alert leaves it to that task


def _settings(context: Any) -> BalanceSettings:
    return runtime.run_settings(context, "balance")


def plan(context: Any) -> list[dict[str, Any]]:
    from premium.banking.stage import plan_run
    from premium.connections import premium_db_kwargs

    check_date = runtime.as_of_date(context)
    settings = _settings(context)
    log.info("check date %s (from the run), threshold %s NIS", check_date, settings.threshold_nis)
    descriptors = plan_run(premium_db_kwargs(), check_date, context["dag_run"].run_id, settings)
    return [d.to_xcom() for d in descriptors]


def fetch(chunk: dict[str, Any], context: Any) -> dict[str, Any]:
    from premium.banking.client import BankAuthError, BankEndpoint
    from premium.banking.stage import BankOutageError, ChunkDescriptor, correlation_id_for, fetch_chunk
    from premium.connections import CORE_BANKING_CONN_ID, get_connection, premium_db_kwargs

    descriptor = ChunkDescriptor.from_xcom(chunk)
    context["chunk_label"] = descriptor.label
    check_date = runtime.as_of_date(context)
    settings = _settings(context)
    correlation_id = correlation_id_for(context["dag_run"].run_id, check_date)
    endpoint = BankEndpoint.from_connection(get_connection(CORE_BANKING_CONN_ID))
    log.info(
        "fetching %s for %s: ids %d..%d, %d in flight, timeout %ss, %d retries, correlation id %s",
        descriptor.label,
        check_date,
        descriptor.id_lo,
        descriptor.id_hi,
        settings.in_flight,
        settings.request_timeout_s,
        settings.max_retries,
        correlation_id,
    )
    try:
        summary = fetch_chunk(premium_db_kwargs(), descriptor, check_date, settings, endpoint, correlation_id)
    except BankAuthError as exc:
        # 401/403: retrying cannot help; fail this task without retries. record_run reads this
        # XCom, fails the day and raises the alert (once for the run, not once per fetch task).
        context["ti"].xcom_push(key=CREDENTIALS_REJECTED_XCOM, value=exc.status)
        raise BankCredentialsRejected(f"{exc}; record_run fails the day and raises the alert") from exc
    except BankOutageError as exc:
        # skip_on_outage is off: fail, and let the task's retries try again later.
        raise RuntimeError(f"core banking outage and skip_on_outage is off: {exc}") from exc
    return summary.as_dict()


def _credentials_rejected(context: Any) -> int | None:
    """The HTTP status with which the bank refused one of this run's fetch tasks (the upstream
    tasks of record_run, every map index, their latest try), or None."""
    upstream = sorted(context["task"].upstream_task_ids)
    pulled = context["ti"].xcom_pull(task_ids=upstream, key=CREDENTIALS_REJECTED_XCOM) or []
    statuses = sorted({int(v) for v in pulled if v})
    return statuses[0] if statuses else None


def finish(chunks: list[dict[str, Any]], context: Any) -> dict[str, Any]:
    from premium.alerts import raise_alert
    from premium.banking.stage import ChunkDescriptor, finish_run
    from premium.connections import premium_db_kwargs

    runtime.check_run_conf(context)  # runs after a refused plan_chunks too (all_done): refused as fast, no retry
    check_date = runtime.as_of_date(context)
    descriptors = [ChunkDescriptor.from_xcom(c) for c in chunks or []]
    rejected = _credentials_rejected(context)
    outcome = finish_run(premium_db_kwargs(), check_date, descriptors, credentials_rejected=rejected)
    log.info(
        "balance checks of %s: %s - planned %d, checked %d (%d passing), skipped %d (not found %d, outage %d), "
        "failed %d (not attempted %d)",
        check_date,
        outcome.status,
        outcome.planned,
        outcome.checked,
        outcome.passing,
        outcome.skipped + outcome.skipped_outage,
        outcome.skipped,
        outcome.skipped_outage,
        outcome.failed + outcome.not_attempted,
        outcome.not_attempted,
    )
    ids = {"dag_id": context["dag"].dag_id, "run_id": context["dag_run"].run_id}
    # A failed day: the run record is closed; fail here so that nothing downstream runs and the
    # asset is not published (the failure callback raises the one alert).
    if outcome.credentials_rejected:
        raise CredentialsRejectedDay(
            f"core banking refused the credentials (HTTP {outcome.credentials_rejected}): {check_date} marked FAILED "
            f"({outcome.checked} accounts with a check, {outcome.not_attempted} not reached); qualification and "
            "sending do not run. Fix the core_banking connection, then clear this run."
        )
    if outcome.status == "SKIPPED_OUTAGE":
        raise BankOutageSkip(
            f"core banking unavailable past the outage threshold: {check_date} marked SKIPPED_OUTAGE "
            f"({outcome.checked} accounts checked before the outage). Catch it up later with a backfill of {check_date}."
        )
    if outcome.status == "FAILED":
        raise AccountsNotReached(
            f"{outcome.not_attempted} accounts of {check_date} were not reached (a fetch task failed); "
            "see the failed fetch_balances instance"
        )
    if outcome.status == "PARTIAL":
        raise_alert(
            "balance_checks_partial",
            f"{check_date}: {outcome.failed} accounts failed after retries or answered invalidly",
            severity="warning",
            details=outcome.as_dict(),
            **ids,
        )
    from premium.assets import BALANCE_CHECKS

    context["outlet_events"][BALANCE_CHECKS].extra = {
        "check_date": check_date.isoformat(),
        "status": outcome.status,
        "accounts_checked": outcome.checked,
        "accounts_passing": outcome.passing,
        "correlation_id": outcome.correlation_id,
    }
    return outcome.as_dict()
