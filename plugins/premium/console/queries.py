"""What each console page shows, read from the application DB: include/sql/console_*.sql, parameters bound.

Each page is one function taking a connection and returning a plain dict of rows (dates, numbers,
ids; never a name, a phone number or a balance), used alike by the HTML page and its JSON twin.
The figures are the SQL's, as it returns them: nothing is summed, rounded or recomputed here.
Windows ("the last 30 days", "as of") are computed once here and returned with the page, so the
SQL can be rerun with exactly the same parameters.

The connections are read-only (``default_transaction_read_only``) with a statement timeout, in
the Asia/Jerusalem time zone (hours and days as the operators read them): see :mod:`premium.console.app`.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from psycopg.rows import dict_row

from premium.alerts import scrub
from premium.identifiers import CUSTOMER_ID_RE
from premium.notifications.window import campaign_id_for
from premium.paths import read_sql
from premium.settings import MonitoringSettings

LOCAL_TZ = ZoneInfo("Asia/Jerusalem")
BANK_HEALTH_DAYS = 30
BANK_PAGE_DAYS = (7, 30, 90)  # the Bank API page's choices (system_events keeps 90 days)
RECENT_RUNS = 14
ALERTS_LIMIT = 100
BATCHES_LIMIT = 500
CAMPAIGNS_LIMIT = 24
MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


class BadParameter(ValueError):
    """A page parameter that is not of its form; the message names the form, never the value."""


# Free text written by the code or a carrier (ids, codes and counts by design): scrubbed of account
# ids and mobile numbers once more before it is shown, in case one ever slipped in.
FREE_TEXT = frozenset({"summary", "detail", "last_error", "error_detail", "delivery_error"})


def rows(conn: Any, sql_file: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row of include/sql/``sql_file`` run with ``params`` (bound), as dicts; the free-text
    columns (:data:`FREE_TEXT`) scrubbed by :func:`premium.alerts.scrub`."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(read_sql(sql_file), params)
        found = cur.fetchall()
    for row in found:
        for column in FREE_TEXT.intersection(row):
            if row[column] is not None:
                row[column] = scrub(str(row[column]))
    return found


def one(conn: Any, sql_file: str, params: dict[str, Any]) -> dict[str, Any] | None:
    found = rows(conn, sql_file, params)
    return found[0] if found else None


def split_total(found: list[dict[str, Any]], key: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Rows of a GROUPING SETS query: (the grouped rows, the total row whose ``key`` is NULL)."""
    body = [r for r in found if r[key] is not None]
    total = next((r for r in found if r[key] is None), None)
    return body, total


# -- parameters --------------------------------------------------------------------------------------


def parse_date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadParameter("date must be YYYY-MM-DD") from None


@dataclass(frozen=True)
class Month:
    """A calendar month and its campaign (premium-monthly-<mon>-<yyyy>)."""

    first: date

    @classmethod
    def parse(cls, value: str) -> Month:
        m = MONTH_RE.match(value or "")
        if not m or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 2000:
            raise BadParameter("month must be YYYY-MM")
        return cls(date(int(m.group(1)), int(m.group(2)), 1))

    @property
    def key(self) -> str:
        return f"{self.first:%Y-%m}"

    @property
    def end(self) -> date:
        days = calendar.monthrange(self.first.year, self.first.month)[1]
        return self.first + timedelta(days=days)

    @property
    def campaign_id(self) -> str:
        return campaign_id_for(self.first)


def parse_customer_id(value: str | None) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if not CUSTOMER_ID_RE.match(value):
        raise BadParameter("a customer id is 1 to 12 digits")
    return value


def local_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=LOCAL_TZ)


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- pages ----------------------------------------------------------------------------------------


def campaigns(conn: Any) -> list[dict[str, Any]]:
    """The campaigns with a recorded day, newest first, each with its month key."""
    found = rows(conn, "console_campaigns.sql", {"limit": CAMPAIGNS_LIMIT})
    for r in found:
        r["month"] = f"{r['last_day']:%Y-%m}"
    return found


def default_month(conn: Any, now: datetime) -> Month:
    """The latest campaign's month, or the current month (Asia/Jerusalem) when there is none."""
    found = campaigns(conn)
    return Month.parse(found[0]["month"]) if found else Month(now.astimezone(LOCAL_TZ).date().replace(day=1))


def today(conn: Any, check_date: date | None, now: datetime, settings: MonitoringSettings) -> dict[str, Any]:
    """The Today page: the balance run of ``check_date`` (the latest run when None), the bank's
    health over the 30 days before the page's moment, the open alerts and breached §6.1 figures.

    The moment (``as_of``) is now, or for a chosen past day the end of that day (Asia/Jerusalem);
    open alerts are those raised in the ``window_hours`` (the monitoring window) before it."""
    run = one(conn, "console_balance_run.sql", {"check_date": check_date})
    as_of = now if check_date is None else min(now, local_midnight(check_date + timedelta(days=1)))
    health_window = {"start": as_of - timedelta(days=BANK_HEALTH_DAYS), "end": as_of}
    alerts_window = {"start": as_of - timedelta(hours=settings.window_hours), "end": as_of}
    return {
        "check_date": run["check_date"] if run else check_date,
        "as_of": as_of,
        "run": run,
        "failures": rows(conn, "console_balance_failures.sql", {"check_date": run["check_date"]}) if run else [],
        "recent_runs": rows(conn, "console_balance_runs.sql", {"limit": RECENT_RUNS}),
        "bank_health": {**health_window, **(one(conn, "console_bank_health.sql", health_window) or {})},
        "alerts_window": alerts_window,
        "alerts": rows(conn, "console_open_alerts.sql", {**alerts_window, "limit": ALERTS_LIMIT}),
        "breached": rows(conn, "console_breached_metrics.sql", {"end": as_of}),
        "thresholds": bank_thresholds(settings),
    }


def campaign(conn: Any, month: Month, settings: MonitoringSettings) -> dict[str, Any]:
    """The Campaign page of ``month``: funnel per day and per carrier, batches, delivery rate by
    hour (§6.2) with the §6.1 delivery-rate thresholds, retries and failovers, the runs and the
    campaign's alerts."""
    params = {"campaign_id": month.campaign_id}
    days, days_total = split_total(rows(conn, "console_campaign_funnel.sql", params), "check_date")
    carriers, carriers_total = split_total(rows(conn, "console_campaign_carriers.sql", params), "carrier")
    summary, summary_total = split_total(rows(conn, "console_campaign_batch_summary.sql", params), "check_date")
    retries, retries_total = split_total(rows(conn, "console_campaign_retries.sql", params), "check_date")
    return {
        "month": month.key,
        "campaign_id": month.campaign_id,
        "campaigns": campaigns(conn),
        "funnel_by_day": days,
        "funnel_total": days_total,
        "funnel_by_carrier": carriers,
        "carrier_total": carriers_total,
        "runs": rows(conn, "console_campaign_runs.sql", params),
        "batch_summary": summary,
        "batch_total": summary_total,
        "batches": rows(conn, "console_campaign_batches.sql", {**params, "limit": BATCHES_LIMIT}),
        "batches_limit": BATCHES_LIMIT,
        "delivery_by_hour": rows(conn, "console_sms_delivery_rate.sql", params),
        "retries_by_day": retries,
        "retries_total": retries_total,
        "alerts": rows(conn, "console_campaign_alerts.sql", {**params, "limit": ALERTS_LIMIT}),
        "thresholds": {
            "delivery_rate_min_pct": settings.delivery_rate_min_pct,
            "carrier_outage_delivery_rate_pct": settings.carrier_outage_delivery_rate_pct,
        },
    }


def bank(conn: Any, days: int, now: datetime, settings: MonitoringSettings) -> dict[str, Any]:
    """The Bank API page: §6.2 "Banking API health" by day and the §6.1 figures by day over the last
    ``days`` days, with the §6.1 thresholds in force."""
    window = {"start": now - timedelta(days=days), "end": now}
    return {
        "days": days,
        **window,
        "health": rows(conn, "console_banking_api_health.sql", window),
        "daily": rows(conn, "console_banking_api_daily.sql", window),
        "thresholds": bank_thresholds(settings),
    }


def bank_thresholds(settings: MonitoringSettings) -> dict[str, float]:
    """The §6.1 Banking API thresholds in force (premium_settings → monitoring)."""
    return {
        "banking_availability_min_pct": settings.banking_availability_min_pct,
        "banking_response_p95_max_s": settings.banking_response_p95_max_s,
    }


def customer(conn: Any, customer_id: str, month: Month) -> dict[str, Any] | None:
    """The Customer lookup of ``customer_id`` in ``month``; None when there is no such customer."""
    record = one(conn, "console_customer.sql", {"customer_id": customer_id})
    if record is None:
        return None
    params = {"customer_id": customer_id, "campaign_id": month.campaign_id}
    return {
        "customer": record,
        "month": month.key,
        "campaign_id": month.campaign_id,
        "qualification": rows(
            conn,
            "console_customer_qualification.sql",
            {"customer_id": customer_id, "start": month.first, "end": month.end},
        ),
        "notification": one(conn, "console_customer_notification.sql", params),
        "attempts": rows(conn, "console_customer_attempts.sql", params),
        "history": rows(conn, "console_customer_history.sql", params),
        "alerts": rows(conn, "console_customer_alerts.sql", {"customer_id": customer_id, "limit": ALERTS_LIMIT}),
    }


def balance_date_of_run(conn: Any, dag_run_id: str) -> date | None:
    """The check date whose latest balance run is ``dag_run_id`` (balance_check_runs), if any."""
    found = one(conn, "console_balance_date_of_run.sql", {"dag_run_id": dag_run_id})
    return found["check_date"] if found else None
