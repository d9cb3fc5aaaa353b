"""The Premium operations console through a real Airflow API server (``airflow api-server``) and PostgreSQL.

Known data is written to the test application DB (customers through the CSV loader, so their
names and numbers are really encrypted), then every page is read as a user would, and:

- each figure on a page (``data-figure`` cards, ``data-table``/``data-row``/``data-col`` cells,
  ``data-chart`` bars and ``data-threshold`` lines) equals what its include/sql/console_*.sql
  returns, run here with the page's own parameters, and equals the figure worked out by hand;
- the JSON twin of each page equals the SQL rows;
- no first name, phone number or balance appears in any page, JSON or error;
- anonymous requests are refused, any signed-in Airflow user may read (bearer JWT or the UI cookie);
- the thresholds drawn are the deployment's (Variable ``premium_settings``), not the defaults.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from fastapi.encoders import jsonable_encoder

from premium.alerts import scrub
from premium.customers import load_customers_csv
from premium.identifiers import account_id_for
from premium.notifications.outbox import outbox_aad
from tests.support.bank import KEYRING
from tests.support.pii import pii_patterns

pytestmark = pytest.mark.integration

LOCAL = ZoneInfo("Asia/Jerusalem")
CAMPAIGN = "premium-monthly-nov-2025"
D17, D18 = date(2025, 11, 17), date(2025, 11, 18)
RUN_18 = "scheduled__2025-11-18T20:00:00+00:00"
PASSWORD = "ops-console-password-1"
# The deployment's thresholds (not the defaults: 99.5 %, 5 s, 98 %, 95 %), as the Variable.
SETTINGS = {
    "monitoring": {
        "banking_availability_min_pct": 99.0,
        "banking_response_p95_max_s": 4.0,
        "delivery_rate_min_pct": 97.0,
        "carrier_outage_delivery_rate_pct": 90.0,
    }
}
CUSTOMERS = [  # customer_id, first_name, phone_number (as a bank's file would hold them)
    ("1001", "Avigail", "052-1000001"),
    ("1002", "Benyamin", "+972521000002"),
    ("1003", "Carmela", "0521000003"),
    ("1004", "Dorit", "052 100 0004"),
    ("1005", "נועה", "0521000005"),
    ("1006", "Efrayim", "0521000006"),
]
BALANCE_1001 = Decimal("23456.78")


def msg(customer_id: str, attempt: int) -> str:
    return f"MSG-{CAMPAIGN}-{customer_id}-{attempt}"


# -- known data ------------------------------------------------------------------------------------


def load_known_data(conn: psycopg.Connection, tmp_dir: Path, now: datetime) -> None:
    """The month of November 2025 (two days of campaign premium-monthly-nov-2025) and the bank's
    recent calls (relative to ``now``). Every figure the tests expect is worked out from this."""
    path = tmp_dir / "console-customers.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["customer_id", "account_id", "first_name", "phone_number", "language", "status", "sms_consent"])
        for customer_id, name, phone in CUSTOMERS:
            consent = "false" if customer_id == "1006" else "true"
            out.writerow([customer_id, account_id_for(int(customer_id)), name, phone, "he", "ACTIVE", consent])
    report = load_customers_csv(path, conn, KEYRING)
    assert report.accepted == len(CUSTOMERS), report.summary()
    with conn.transaction():
        _balance(conn)
        _bank_calls(conn, now)
        _campaign(conn)
        _alerts_and_metrics(conn, now)


def _balance(conn: psycopg.Connection) -> None:
    for day, status, checked, passing, failed, dag_run_id in (
        (D17, "COMPLETE", 1000, 398, 0, "scheduled__2025-11-17T20:00:00+00:00"),
        (D18, "PARTIAL", 990, 400, 10, RUN_18),
    ):
        started = datetime(day.year, day.month, day.day, 20, 0, 0, tzinfo=UTC)
        conn.execute(
            "INSERT INTO balance_check_runs (check_date, dag_run_id, correlation_id, status, threshold, "
            "accounts_planned, chunks, mapped_tasks, accounts_checked, accounts_passing, accounts_skipped, "
            "accounts_failed, started_at, finished_at) VALUES (%s, %s, %s, %s, 15000, 1000, 1, 1, %s, %s, 0, %s, %s, %s)",
            (day, dag_run_id, f"corr-{day:%Y%m%d}-console", status, checked, passing, failed, started,
             started + timedelta(seconds=123.5)),
        )  # fmt: skip
    for i in range(10):
        reason = "failed_after_retries" if i < 6 else "not_found"
        conn.execute(
            "INSERT INTO balance_check_failures (account_id, check_date, customer_id, reason, http_status, attempts, "
            "correlation_id) VALUES (%s, %s, %s, %s, %s, 3, 'corr-20251118-console')",
            (account_id_for(5000 + i), D18, str(5000 + i), reason, 503 if i < 6 else 404),
        )
    conn.execute(
        "INSERT INTO daily_balance_checks (account_id, check_date, customer_id, balance, currency, threshold, "
        "passes_threshold, account_status, check_timestamp, correlation_id) "
        "VALUES (%s, %s, '1001', %s, 'NIS', 15000, true, 'ACTIVE', %s, 'corr-20251118-console')",
        (account_id_for(1001), D18, BALANCE_1001, datetime(2025, 11, 18, 20, 0, 1, tzinfo=UTC)),
    )


def _event(conn: psycopg.Connection, at: datetime, status: str, duration_ms: float | None) -> None:
    data: dict[str, Any] = {"timestamp": at.isoformat(), "endpoint": "/accounts/balance", "method": "GET"}
    data |= {"status": status, "attempt": 1, "correlation_id": f"corr-{at:%Y%m%d}-console"}
    if duration_ms is not None:
        data["duration_ms"] = duration_ms
    conn.execute(
        "INSERT INTO system_events (event_type, event_data, created_at) VALUES ('banking_api_call', %s, %s)",
        (json.dumps(data), at),
    )


NOV_EVENTS = (
    [("200", 100.0 + i) for i in range(190)]
    + [("404", 80.0)] * 4
    + [("503", 3000.0)] * 3
    + [("timeout", 10000.0)] * 2
    + [("breaker_open", None)]
)


def recent_events(now: datetime) -> list[tuple[datetime, str, float]]:
    out = [(now - timedelta(days=3, seconds=i), "200", 200.0) for i in range(100)]
    out += [(now - timedelta(days=1, seconds=i), "200", 300.0) for i in range(48)]
    out += [(now - timedelta(days=1, seconds=60), "500", 100.0), (now - timedelta(days=1, seconds=61), "429", 50.0)]
    out += [(now - timedelta(hours=2, seconds=i), "200", 6000.0) for i in range(10)]
    return out


def _bank_calls(conn: psycopg.Connection, now: datetime) -> None:
    base = datetime(2025, 11, 18, 20, 0, 0, tzinfo=UTC)
    for i, (status, duration) in enumerate(NOV_EVENTS):
        _event(conn, base + timedelta(seconds=i), status, duration)
    for at, status, duration in recent_events(now):
        _event(conn, at, status, duration)


def _campaign(conn: psycopg.Connection) -> None:
    outcomes = {  # (customer, day) -> outcome
        ("1001", D17): "qualified", ("1002", D17): "qualified", ("1003", D17): "below_threshold",
        ("1004", D17): "too_few_checks", ("1005", D17): "too_few_checks", ("1006", D17): "no_consent",
        ("1001", D18): "already_notified", ("1002", D18): "already_notified", ("1003", D18): "qualified",
        ("1004", D18): "qualified", ("1005", D18): "qualified", ("1006", D18): "no_consent",
    }  # fmt: skip
    for (customer_id, day), outcome in outcomes.items():
        conn.execute(
            "INSERT INTO qualification_outcomes (check_date, customer_id, campaign_id, outcome, passing_checks, "
            "failing_checks, window_start, dag_run_id) VALUES (%s, %s, %s, %s, %s, 0, '2025-11-01', %s)",
            (day, customer_id, CAMPAIGN, outcome, day.day, f"scheduled__{day}T20:00:00+00:00"),
        )
    for day, qualified, batches, submitted, rejected, failed_over in ((D17, 2, 1, 2, 0, 0), (D18, 3, 2, 2, 1, 1)):
        conn.execute(
            "INSERT INTO sms_campaign_runs (check_date, campaign_id, dag_run_id, correlation_id, mode, qualified, "
            "send_after, batches, submitted, rejected, failed_over, buffered, status) "
            "VALUES (%s, %s, %s, %s, 'SEND', %s, %s, %s, %s, %s, %s, 0, 'DONE')",
            (day, CAMPAIGN, f"scheduled__{day}T20:00:00+00:00", f"corr-{day:%Y%m%d}-console", qualified,
             datetime(day.year, day.month, day.day + 1, 7, 0, tzinfo=UTC), batches, submitted, rejected, failed_over),
        )  # fmt: skip
    batches = [  # batch, day, seq, carrier, status, messages, last_error
        ("BATCH-20251117-001", D17, 1, "primary", "ACCEPTED", 2, None),
        ("BATCH-20251117-002", D17, 2, "secondary", "ACCEPTED", 1, None),
        ("BATCH-20251118-001", D18, 1, "primary", "PARTIAL", 2, "1 message rejected (21211)"),
        ("BATCH-20251118-002", D18, 2, "secondary", "ACCEPTED", 1, None),
    ]
    for batch_id, day, seq, carrier, status, messages, last_error in batches:
        conn.execute(
            "INSERT INTO sms_batches (batch_id, campaign_id, check_date, seq, carrier, status, post_attempts, "
            "messages, last_error, correlation_id, submitted_at) VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s, %s, %s)",
            (batch_id, CAMPAIGN, day, seq, carrier, status, messages, last_error, f"corr-{day:%Y%m%d}-console",
             datetime(day.year, day.month, day.day + 1, 7, 0, tzinfo=UTC)),
        )  # fmt: skip
    t = datetime(2025, 11, 18, 7, 0, 0, tzinfo=UTC)
    t19 = datetime(2025, 11, 19, 7, 0, 0, tzinfo=UTC)
    notifications = [  # customer, day, status, attempts
        ("1001", D17, "DELIVERED", 1), ("1002", D17, "DELIVERED", 2), ("1003", D18, "UNDELIVERABLE", 1),
        ("1004", D18, "UNCONFIRMED", 1), ("1005", D18, "SENT", 1),
    ]  # fmt: skip
    ids: dict[str, int] = {}
    for customer_id, day, status, attempts in notifications:
        phone = next(p for c, _, p in CUSTOMERS if c == customer_id)
        key_id, content_enc = KEYRING.encrypt("Thank you", outbox_aad(CAMPAIGN, customer_id, "content"))
        _, phone_enc = KEYRING.encrypt(phone, outbox_aad(CAMPAIGN, customer_id, "phone_number"))
        (ids[customer_id],) = conn.execute(
            "INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, attempts, current_message_id, "
            "language, template_id, encoding, segments, error_code, correlation_id, content_enc, phone_enc, pii_key_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, 'he', 'balance_he', 'UCS2', 1, %s, %s, %s, %s, %s) RETURNING notification_id",
            (CAMPAIGN, customer_id, day, status, attempts, msg(customer_id, attempts),
             "21211" if status == "UNDELIVERABLE" else None, f"corr-{day:%Y%m%d}-console", content_enc, phone_enc,
             key_id),
        ).fetchone()  # fmt: skip
    messages = [  # customer, attempt, batch, carrier, message status, delivery status (None: not accepted), accepted at
        ("1001", 1, "BATCH-20251117-001", "primary", "DELIVERED", "Delivered", t),
        ("1002", 1, "BATCH-20251117-001", "primary", "FAILED", "Failed", t + timedelta(seconds=5)),
        ("1002", 2, "BATCH-20251117-002", "secondary", "DELIVERED", "Delivered", t + timedelta(hours=2, minutes=10)),
        ("1003", 1, "BATCH-20251118-001", "primary", "UNDELIVERABLE", None, t19),
        ("1004", 1, "BATCH-20251118-001", "primary", "UNCONFIRMED", "Unconfirmed", t19),
        ("1005", 1, "BATCH-20251118-002", "secondary", "SENT", "Sent", t19 + timedelta(minutes=2)),
    ]
    rank = {"Delivered": 35, "Failed": 30, "Unconfirmed": 30, "Sent": 20}
    for customer_id, attempt, batch_id, carrier, m_status, d_status, at in messages:
        message_id = msg(customer_id, attempt)
        tracking_id = None if d_status is None else f"TRK-{customer_id}-{attempt}"
        conn.execute(
            "INSERT INTO sms_messages (message_id, notification_id, campaign_id, customer_id, attempt, batch_id, "
            "carrier, tracking_id, status, status_code, encoding, segments, correlation_id, submitted_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'UCS2', 1, 'corr-console', %s)",
            (message_id, ids[customer_id], CAMPAIGN, customer_id, attempt, batch_id, carrier, tracking_id, m_status,
             "21211" if m_status == "UNDELIVERABLE" else None, at),
        )  # fmt: skip
        if d_status is None:
            continue
        conn.execute(
            "INSERT INTO delivery_status (message_id, notification_id, campaign_id, customer_id, carrier, tracking_id, "
            "status, status_rank, delivered_at, last_source, polls, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s)",
            (message_id, ids[customer_id], CAMPAIGN, customer_id, carrier, tracking_id, d_status, rank[d_status],
             at + timedelta(minutes=1) if d_status == "Delivered" else None,
             "webhook" if d_status == "Delivered" else "poll", at),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO delivery_status_history (message_id, from_status, to_status, source, event_at) "
            "VALUES (%s, NULL, 'Queued', 'submission', %s)",
            (message_id, at),
        )
        if d_status != "Queued":
            conn.execute(
                "INSERT INTO delivery_status_history (message_id, from_status, to_status, source, event_at) "
                "VALUES (%s, 'Queued', %s, %s, %s)",
                (message_id, d_status, "webhook" if d_status == "Delivered" else "poll", at + timedelta(minutes=1)),
            )


def _alerts_and_metrics(conn: psycopg.Connection, now: datetime) -> None:
    alerts = [  # raised_at, severity, kind, summary, details
        (datetime(2025, 11, 18, 19, 3, tzinfo=UTC), "warning", "balance_checks_partial",
         "2025-11-18: 10 accounts failed after retries or answered invalidly", {"failed": 10}),
        (datetime(2025, 11, 19, 7, 1, tzinfo=UTC), "warning", "sms_carrier_failover",
         f"{CAMPAIGN}: 1 batches failed over to the secondary carrier", {"check_date": "2025-11-18"}),
        (datetime(2025, 11, 19, 7, 2, tzinfo=UTC), "warning", "sms_undeliverable_numbers",
         f"{CAMPAIGN}: 1 messages rejected as invalid numbers (21211)", {"count": 1}),
        (datetime(2025, 11, 18, 7, 30, tzinfo=UTC), "info", "sms_retry_scheduled",
         "a retry was scheduled", {"message_id": msg("1002", 1)}),
        (datetime(2025, 11, 20, 8, 0, tzinfo=UTC), "warning", "customer_review",
         "a customer to review", {"customer_id": "1004"}),
        # A text that should never carry a number, carrying one: the console must not show it.
        (now - timedelta(hours=1), "critical", "task_failed",
         f"submit_sms_batches failed: could not reach {CUSTOMERS[0][2]}", {}),
        (now - timedelta(hours=3), "warning", "threshold_banking_response_time",
         "Banking API response time p95 6.2 s above 4.0 s", {"key": "window"}),
    ]  # fmt: skip
    for raised_at, severity, kind, summary, details in alerts:
        conn.execute(
            "INSERT INTO alerts (raised_at, severity, kind, summary, details) VALUES (%s, %s, %s, %s, %s)",
            (raised_at, severity, kind, summary, json.dumps(details)),
        )
    computed = now - timedelta(minutes=30)
    for metric, value, threshold, breached in (
        ("banking_api_response_time_p95_seconds", 6.2, 4.0, True),
        ("banking_api_availability_pct", 99.9, 99.0, False),
    ):
        conn.execute(
            "INSERT INTO integration_metrics (computed_at, metric, scope, value, samples, threshold, breached, "
            "window_start, window_end) VALUES (%s, %s, 'window', %s, 200, %s, %s, %s, %s)",
            (computed, metric, value, threshold, breached, computed - timedelta(hours=24), computed),
        )


# -- reading pages ---------------------------------------------------------------------------------


class Page(HTMLParser):
    """What a console page shows, by the markers its templates put on figures."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.figures: dict[str, str] = {}
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.charts: dict[str, list[tuple[str, float]]] = {}
        self.thresholds: dict[str, list[float]] = {}
        self._open: list[tuple[str, str, Any]] = []  # (tag, kind, key) of elements being read
        self._text: list[str] = []
        self._table: str | None = None
        self._row: str | None = None
        self._chart: str | None = None
        self.feed(html)
        self.text = re.sub(r"\s+", " ", "".join(self._all_text))

    _all_text: list[str]

    def reset(self) -> None:
        super().reset()
        self._all_text = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-table" in a:
            self._table = a["data-table"]
            self.tables.setdefault(self._table, {})
        if tag == "tr" and "data-row" in a and self._table:
            self._row = a["data-row"]
            self.tables[self._table][self._row] = {}
        if "data-chart" in a:
            self._chart = a["data-chart"]
            self.charts[self._chart] = []
            self.thresholds[self._chart] = []
        if tag == "rect" and "data-value" in a and self._chart is not None:
            self.charts[self._chart].append((a["data-label"], float(a["data-value"])))
        if tag == "line" and "data-threshold" in a and self._chart is not None:
            self.thresholds[self._chart].append(float(a["data-threshold"]))
        if "data-figure" in a:
            self._open.append((tag, "figure", a["data-figure"]))
            self._text = []
        elif tag == "td" and "data-col" in a and self._row is not None:
            self._open.append((tag, "cell", a["data-col"]))
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            _, kind, key = self._open.pop()
            text = re.sub(r"\s+", " ", "".join(self._text)).strip()
            if kind == "figure":
                self.figures[key] = text
            else:
                self.tables[self._table][self._row][key] = text
        if tag == "tr":
            self._row = None
        if tag == "table":
            self._table = None
        if tag == "svg":
            self._chart = None

    def handle_data(self, data: str) -> None:
        self._text.append(data)
        self._all_text.append(data)


def number(text: str) -> Decimal | None:
    return None if text == "–" else Decimal(text.replace(",", ""))


def shown_time(value: datetime | None) -> str:
    return "–" if value is None else value.astimezone(LOCAL).strftime("%Y-%m-%d %H:%M:%S %z")


def assert_cell(text: str, value: Any, column: str) -> None:
    if value is None:
        assert text == "–", column
    elif isinstance(value, bool):
        assert text == ("yes" if value else "no"), column
    elif isinstance(value, int | Decimal | float):
        assert number(text) == Decimal(str(value)), (column, text, value)
    elif isinstance(value, datetime):
        assert text == shown_time(value), column
    elif isinstance(value, dict):
        assert text == ", ".join(f"{k}={v}" for k, v in sorted(value.items())), column
    else:
        assert text == str(value), (column, text, value)


def row_key(row: dict[str, Any], key: str | tuple[str, ...]) -> str:
    if isinstance(key, str):
        return str(row[key])
    return "/".join(str(row[k]) for k in key)


def assert_table(page: Page, name: str, sql_rows: list[dict[str, Any]], key: str | tuple[str, ...],
                 total: dict[str, Any] | None = None) -> None:  # fmt: skip
    """The page's table ``name`` shows exactly ``sql_rows`` (every column it has), and ``total``."""
    shown = page.tables[name]
    expected = {row_key(r, key): r for r in sql_rows}
    assert set(shown) - {"total"} == set(expected), name
    for k, row in expected.items():
        assert shown[k], (name, k)
        for column, text in shown[k].items():
            assert_cell(text, row[column], f"{name}[{k}].{column}")
    if total is not None:
        for column, text in shown["total"].items():
            if column != next(iter(shown["total"])):
                assert_cell(text, total[column], f"{name}[total].{column}")


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def known(app_db, tmp_path_factory, now) -> dict:
    from tests.support.db import truncate_all

    truncate_all(app_db)
    with psycopg.connect(**app_db) as conn:
        load_known_data(conn, tmp_path_factory.mktemp("console"), now)
    return app_db


@pytest.fixture(scope="module")
def sql(known) -> Iterator[Any]:
    """Runs a console SQL file as the console does (read-only, Asia/Jerusalem), for the expected figures."""
    from tests.support.db import sql_runner

    with sql_runner(known) as run:
        yield run


@pytest.fixture(scope="module")
def api(known, tmp_path_factory) -> Iterator[Any]:
    from tests.support.apiserver import ApiServer

    passwords = tmp_path_factory.mktemp("auth") / "passwords.json"
    passwords.write_text(json.dumps({"ops": PASSWORD}))
    with ApiServer(
        extra_env={
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "ops:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW_VAR_PREMIUM_SETTINGS": json.dumps(SETTINGS),
        }
    ) as server:
        yield server


@pytest.fixture(scope="module")
def token(api) -> str:
    with httpx.Client(base_url=api.base_url, trust_env=False, timeout=30.0) as c:
        resp = c.post("/auth/token", json={"username": "ops", "password": PASSWORD})
    assert resp.status_code == 201, resp.text
    return resp.json()["access_token"]


@pytest.fixture(scope="module")
def client(api, token) -> Iterator[httpx.Client]:
    """A signed-in viewer, as a browser is: the UI's ``_token`` cookie, no Authorization header."""
    with httpx.Client(base_url=api.base_url, trust_env=False, timeout=60.0, cookies={"_token": token}) as c:
        yield c


def page(client: httpx.Client, path: str, status: int = 200) -> Page:
    resp = client.get("/premium/console" + path)
    assert resp.status_code == status, resp.text[-2000:]
    assert resp.headers["content-type"].startswith("text/html")
    assert resp.headers["cache-control"] == "no-store"
    return Page(resp.text)


def as_json(rows: Any) -> Any:
    return json.loads(json.dumps(jsonable_encoder(rows)))


# -- authentication --------------------------------------------------------------------------------


def test_anonymous_requests_are_refused(api) -> None:
    with httpx.Client(base_url=api.base_url, trust_env=False, timeout=30.0) as anonymous:
        for path in ("/", "/campaign", "/bank", "/customer?customer_id=1001", "/dag-runs/premium_balance_daily/x"):
            resp = anonymous.get("/premium/console" + path)
            assert resp.status_code == 401, path
            assert "Sign in" in resp.text and "/auth/login?next=" in resp.text, path
            assert "1001" not in resp.text, path  # the way back to the page does not carry what was typed
        resp = anonymous.get("/premium/console/api/today")
        assert resp.status_code == 401 and resp.json() == {"detail": "Not authenticated"}
        forged = anonymous.get("/premium/console/api/today", headers={"Authorization": "Bearer not-a-jwt"})
        assert forged.status_code == 403
        cookie = anonymous.get("/premium/console/", cookies={"_token": "not-a-jwt"})
        assert cookie.status_code == 403


def test_a_signed_in_viewer_reads_with_the_ui_cookie_or_a_bearer_token(api, client, token) -> None:
    assert client.get("/premium/console/").status_code == 200  # the cookie, as a browser navigating
    with httpx.Client(base_url=api.base_url, trust_env=False, timeout=30.0) as c:
        resp = c.get("/premium/console/api/bank", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"


def test_the_plugin_adds_the_nav_entry_and_the_run_tab(client) -> None:
    plugins = client.get("/api/v2/plugins").json()["plugins"]
    console = next(p for p in plugins if p["name"] == "premium_console")
    views = {v["name"]: v for v in console["external_views"]}
    assert views["Premium"]["href"] == "/premium/console/"
    assert views["Premium"]["destination"] == "nav" and views["Premium"]["url_route"] == "premium-console"
    assert views["Premium day"]["destination"] == "dag_run"
    assert views["Premium day"]["href"] == "/premium/console/dag-runs/{DAG_ID}/{RUN_ID}"
    webhooks = next(p for p in plugins if p["name"] == "premium_webhooks")
    assert [a["url_prefix"] for a in webhooks["fastapi_apps"]] == ["/premium"]  # the console is served there


def test_the_webhook_routes_are_still_served_beside_the_console(api) -> None:
    with httpx.Client(base_url=api.base_url, trust_env=False, timeout=30.0) as c:
        resp = c.post("/premium/api/webhooks/sms-delivery", content=b"{}")  # the retired route: 410, no auth
    assert resp.status_code == 410


# -- Today -----------------------------------------------------------------------------------------


def test_today_shows_the_latest_balance_run_and_the_last_30_days(client, sql, now) -> None:
    data = client.get("/premium/console/api/today").json()
    assert data["check_date"] == "2025-11-18"
    as_of = datetime.fromisoformat(data["as_of"])
    health = {k: datetime.fromisoformat(data["bank_health"][k]) for k in ("start", "end")}
    assert health["end"] == as_of and health["start"] == as_of - timedelta(days=30)

    run = sql("console_balance_run.sql", check_date=None)[0]
    failures = sql("console_balance_failures.sql", check_date=D18)
    bank = sql("console_bank_health.sql", **health)[0]
    alerts_window = {k: datetime.fromisoformat(data["alerts_window"][k]) for k in ("start", "end")}
    alerts = sql("console_open_alerts.sql", **alerts_window, limit=100)
    breached = sql("console_breached_metrics.sql", end=as_of)
    assert data["run"] == as_json(run) and data["failures"] == as_json(failures)
    assert {k: v for k, v in data["bank_health"].items() if k not in health} == as_json(bank)
    assert data["breached"] == as_json(breached)
    assert data["alerts"] == as_json([{**a, "summary": scrub(a["summary"])} for a in alerts])

    # By hand: the run of 2025-11-18; the recent calls: 160, 158 answered (a 500 and a 429 are not).
    assert (run["status"], run["planned"], run["checked"], run["passing"], run["skipped"], run["failed"]) == (
        "PARTIAL", 1000, 990, 400, 0, 10)  # fmt: skip
    assert run["duration_s"] == Decimal("123.5") and run["correlation_id"] == "corr-20251118-console"
    assert {r["reason"]: r["accounts"] for r in failures} == {"failed_after_retries": 6, "not_found": 4}
    durations = [d for at, _, d in recent_events(now) if health["start"] <= at < health["end"]]
    assert (bank["calls"], bank["answered"]) == (160, 158)
    assert bank["availability_pct"] == Decimal("98.75")
    assert bank["p95_s"] == rounded(percentile_cont(durations, 0.95) / 1000)
    assert [a["kind"] for a in alerts] == ["task_failed", "threshold_banking_response_time"]
    assert [(m["metric"], m["value"]) for m in breached] == [("banking_api_response_time_p95_seconds", 6.2)]

    shown = page(client, "/")
    for column in ("status", "planned", "checked", "passing", "skipped", "failed", "duration_s", "correlation_id"):
        assert_cell(shown.figures[f"run.{column}"], run[column], column)
    assert_cell(shown.figures["run.started_at"], run["started_at"], "started_at")
    for column in ("availability_pct", "p95_s", "calls", "answered"):
        assert_cell(shown.figures[f"bank.{column}"], bank[column], column)
    assert_table(shown, "failures", failures, "reason")
    assert_table(shown, "breached", breached, "metric")
    assert_table(shown, "alerts", [{**a, "summary": scrub(a["summary"])} for a in alerts], "id")
    assert "[phone]" in shown.tables["alerts"][str(alerts[0]["id"])]["summary"]  # the number slipped in: masked


def test_today_of_a_chosen_day_is_as_of_the_end_of_that_day(client, sql) -> None:
    data = client.get("/premium/console/api/today", params={"date": "2025-11-17"}).json()
    assert data["run"]["status"] == "COMPLETE" and data["failures"] == []
    data = client.get("/premium/console/api/today", params={"date": "2025-11-18"}).json()
    as_of = datetime(2025, 11, 19, tzinfo=LOCAL)
    assert datetime.fromisoformat(data["as_of"]) == as_of
    window = {"start": as_of - timedelta(days=30), "end": as_of}
    bank = sql("console_bank_health.sql", **window)[0]
    # By hand: November's 200 events; breaker_open is no call (199), answered 190 + 4 (the 404s).
    assert (bank["calls"], bank["answered"], bank["availability_pct"]) == (199, 194, Decimal("97.49"))
    nov = [d for s, d in NOV_EVENTS if s != "breaker_open"]
    assert bank["p95_s"] == rounded(percentile_cont(nov, 0.95) / 1000)
    # The alerts of that day (Asia/Jerusalem), none of the later ones; no §6.1 figure computed then.
    assert [a["kind"] for a in data["alerts"]] == ["balance_checks_partial", "sms_retry_scheduled"]
    assert data["breached"] == []

    html = client.get("/premium/console/", params={"date": "2025-11-18"}).text
    shown = Page(html)
    assert_cell(shown.figures["bank.availability_pct"], bank["availability_pct"], "availability")
    assert_cell(shown.figures["bank.p95_s"], bank["p95_s"], "p95")
    # 97.49 % is below the deployment's 99.0 %: marked as a breach.
    assert re.search(r'class="value breach" data-figure="bank.availability_pct"', html)


def test_the_30_day_health_has_the_monitoring_definitions(sql, now) -> None:
    """console_bank_health.sql repeats the window row of metrics_banking_api.sql (premium_monitoring)."""
    for start, end in (
        (now - timedelta(days=30), now),
        (datetime(2025, 10, 20, tzinfo=UTC), datetime(2025, 11, 19, tzinfo=UTC)),
    ):
        mine = sql("console_bank_health.sql", start=start, end=end)[0]
        theirs = next(r for r in sql("metrics_banking_api.sql", start=start, end=end) if not r["per_run"])
        assert mine["calls"] == theirs["calls"] and mine["answered"] == theirs["answered"]
        assert mine["availability_pct"] == rounded(Decimal(100 * theirs["answered"]) / theirs["calls"], "0.01")
        assert mine["p95_s"] == rounded(theirs["p95_ms"] / 1000)


def rounded(value: float | Decimal, places: str = "0.001") -> Decimal:
    """PostgreSQL's round(numeric, n): half away from zero."""
    return Decimal(repr(value) if isinstance(value, float) else value).quantize(Decimal(places), ROUND_HALF_UP)


FUNNEL = (
    "qualified",
    "notifications",
    "submitted",
    "delivered",
    "failed",
    "undeliverable",
    "unconfirmed",
    "in_progress",
)


def pick(found: Any, key: str, columns: tuple[str, ...]) -> dict[Any, list[Any]]:
    """``key`` -> the values of ``columns`` of each row, to hold against figures worked out by hand."""
    return {r[key]: [r[c] for c in columns] for r in found}


def percentile_cont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# -- Campaign --------------------------------------------------------------------------------------


def test_campaign_shows_the_funnel_batches_delivery_rate_retries_and_failovers(client, sql) -> None:
    params = {"campaign_id": CAMPAIGN}
    funnel = sql("console_campaign_funnel.sql", **params)
    carriers = sql("console_campaign_carriers.sql", **params)
    summary = sql("console_campaign_batch_summary.sql", **params)
    batches = sql("console_campaign_batches.sql", **params, limit=500)
    hourly = sql("console_sms_delivery_rate.sql", **params)
    retries = sql("console_campaign_retries.sql", **params)
    runs = sql("console_campaign_runs.sql", **params)
    alerts = sql("console_campaign_alerts.sql", **params, limit=100)

    # By hand (see load_known_data).
    assert pick(funnel, "check_date", FUNNEL) == {
        D17: [2, 2, 2, 2, 0, 0, 0, 0],
        D18: [3, 3, 2, 0, 0, 1, 1, 1],
        None: [5, 5, 4, 2, 0, 1, 1, 1],
    }
    assert pick(carriers, "carrier", ("posted", "accepted", "delivered", "failed", "unconfirmed", "in_progress")) == {
        "primary": [4, 3, 1, 1, 1, 0],
        "secondary": [2, 2, 1, 0, 0, 1],
        None: [6, 5, 2, 1, 1, 1],
    }
    hours = {r["hour"].astimezone(LOCAL).strftime("%m-%d %H"): r for r in hourly}
    assert pick(hours.values(), "hour", ("notifications_sent", "delivered", "delivery_rate")) == {
        hours["11-18 09"]["hour"]: [2, 1, Decimal("50.00")],
        hours["11-18 11"]["hour"]: [1, 1, Decimal("100.00")],
        hours["11-19 09"]["hour"]: [2, 0, Decimal("0.00")],
    }
    retry_columns = ("retried", "retry_messages", "retry_primary", "retry_secondary", "failed_over", "buffered")
    assert pick(retries, "check_date", retry_columns) == {
        D17: [1, 1, 0, 1, 0, 0],
        D18: [0, 0, 0, 0, 1, 0],
        None: [1, 1, 0, 1, 1, 0],
    }
    assert [(r["carrier"], r["status"], r["batches"], r["messages"]) for r in summary] == [
        ("primary", "ACCEPTED", 1, 2),
        ("secondary", "ACCEPTED", 1, 1),
        ("primary", "PARTIAL", 1, 2),
        ("secondary", "ACCEPTED", 1, 1),
        (None, None, 4, 6),  # the total row
    ]
    assert [a["kind"] for a in alerts] == ["sms_undeliverable_numbers", "sms_carrier_failover"]

    data = client.get("/premium/console/api/campaign", params={"month": "2025-11"}).json()
    assert data["campaign_id"] == CAMPAIGN
    assert data["funnel_by_day"] + [data["funnel_total"]] == as_json(funnel)
    assert data["funnel_by_carrier"] + [data["carrier_total"]] == as_json(carriers)
    assert data["batch_summary"] + [data["batch_total"]] == as_json(summary)
    assert data["batches"] == as_json(batches) and data["delivery_by_hour"] == as_json(hourly)
    assert data["retries_by_day"] + [data["retries_total"]] == as_json(retries)
    assert data["runs"] == as_json(runs) and data["alerts"] == as_json(alerts)
    assert data["thresholds"] == {"delivery_rate_min_pct": 97.0, "carrier_outage_delivery_rate_pct": 90.0}
    assert client.get("/premium/console/api/campaign").json()["campaign_id"] == CAMPAIGN  # the latest by default

    shown = page(client, "/campaign?month=2025-11")
    assert shown.figures["campaign_id"] == CAMPAIGN
    for column in FUNNEL:
        assert_cell(shown.figures[f"funnel.{column}"], funnel[-1][column], column)
    assert_table(shown, "funnel_by_day", funnel[:-1], "check_date", total=funnel[-1])
    assert_table(shown, "funnel_by_carrier", [r for r in carriers if r["carrier"]], "carrier", total=carriers[-1])
    assert_table(shown, "batch_summary", [r for r in summary if r["check_date"]], ("check_date", "carrier", "status"),
                 total=summary[-1])  # fmt: skip
    assert_table(shown, "batches", batches, "batch_id")
    assert_table(shown, "delivery_by_hour", hourly, "hour")
    assert_table(shown, "retries_by_day", [r for r in retries if r["check_date"]], "check_date", total=retries[-1])
    assert_table(shown, "runs", runs, "check_date")
    assert_table(shown, "alerts", alerts, "id")
    assert shown.charts["delivery_rate"] == [
        (r["hour"].astimezone(LOCAL).strftime("%Y-%m-%d %H:%M"), float(r["delivery_rate"])) for r in hourly
    ]
    assert shown.thresholds["delivery_rate"] == [97.0, 90.0]  # the deployment's, not 98 / 95


# -- Bank API --------------------------------------------------------------------------------------


def test_bank_api_page_charts_the_section_6_queries_with_the_thresholds(client, sql, now) -> None:
    data = client.get("/premium/console/api/bank").json()
    window = {k: datetime.fromisoformat(data[k]) for k in ("start", "end")}
    assert data["days"] == 30 and window["end"] - window["start"] == timedelta(days=30)
    health = sql("console_banking_api_health.sql", **window)
    daily = sql("console_banking_api_daily.sql", **window)
    assert data["health"] == as_json(health) and data["daily"] == as_json(daily)
    assert data["thresholds"] == {"banking_availability_min_pct": 99.0, "banking_response_p95_max_s": 4.0}

    # By hand: per UTC date of the event's timestamp.
    expected: dict[str, list] = {}
    for at, status, duration in recent_events(now):
        expected.setdefault(at.date().isoformat(), []).append((status, duration))
    assert [str(r["date"]) for r in health] == sorted(expected)
    for r in health:
        calls = expected[str(r["date"])]
        ok = sum(1 for s, _ in calls if s[0] in "23")
        assert (r["total_calls"], r["successful_calls"]) == (len(calls), ok)
        assert r["success_rate"] == rounded(Decimal(100 * ok) / len(calls), "0.01")
    for r in daily:
        durations = [d for _, d in expected[str(r["date"])]]
        assert r["p95_s"] == rounded(percentile_cont(durations, 0.95) / 1000)

    shown = page(client, "/bank")
    assert_table(shown, "health", health, "date")
    assert_table(shown, "daily", daily, "date")
    assert shown.charts["success_rate"] == [(str(r["date"]), float(r["success_rate"])) for r in health]
    assert shown.charts["availability"] == [(str(r["date"]), float(r["availability_pct"])) for r in daily]
    assert shown.charts["p95"] == [(str(r["date"]), float(r["p95_s"])) for r in daily]
    assert shown.thresholds["availability"] == [99.0] and shown.thresholds["p95"] == [4.0]
    assert shown.thresholds["success_rate"] == []  # §6.2's success rate has no §6.1 threshold of its own
    seven = client.get("/premium/console/api/bank", params={"days": "7"}).json()
    assert seven["days"] == 7


# -- Customer lookup -------------------------------------------------------------------------------


def test_customer_lookup_shows_the_month_the_message_and_its_history(client, sql) -> None:
    params = {"customer_id": "1002", "campaign_id": CAMPAIGN}
    qualification = sql("console_customer_qualification.sql", customer_id="1002", start=date(2025, 11, 1),
                        end=date(2025, 12, 1))  # fmt: skip
    notification = sql("console_customer_notification.sql", **params)[0]
    attempts = sql("console_customer_attempts.sql", **params)
    history = sql("console_customer_history.sql", **params)
    alerts = sql("console_customer_alerts.sql", customer_id="1002", limit=100)
    record = sql("console_customer.sql", customer_id="1002")[0]

    assert [(r["check_date"], r["outcome"]) for r in qualification] == [(D17, "qualified"), (D18, "already_notified")]
    assert (notification["status"], notification["attempts"]) == ("DELIVERED", 2)
    assert [(a["attempt"], a["batch_id"], a["carrier"], a["message_id"], a["tracking_id"], a["delivery_status"]) for a in attempts] == [  # fmt: skip
        (1, "BATCH-20251117-001", "primary", msg("1002", 1), "TRK-1002-1", "Failed"),
        (2, "BATCH-20251117-002", "secondary", msg("1002", 2), "TRK-1002-2", "Delivered")]  # fmt: skip
    assert [(h["attempt"], h["to_status"], h["source"]) for h in history] == [
        (1, "Queued", "submission"), (1, "Failed", "poll"), (2, "Queued", "submission"), (2, "Delivered", "webhook")]  # fmt: skip
    assert [a["kind"] for a in alerts] == ["sms_retry_scheduled"]
    assert record["account_masked"] == "ACC-0****002"
    assert [a["kind"] for a in sql("console_customer_alerts.sql", customer_id="1004", limit=100)] == ["customer_review"]

    data = client.get("/premium/console/api/customer", params={"customer_id": "1002", "month": "2025-11"}).json()
    found = data["found"]
    assert found["customer"] == as_json(record) and found["notification"] == as_json(notification)
    assert found["qualification"] == as_json(qualification) and found["attempts"] == as_json(attempts)
    assert found["history"] == as_json(history) and found["alerts"] == as_json(alerts)

    shown = page(client, "/customer?customer_id=1002&month=2025-11")
    assert shown.figures["customer.account_masked"] == "ACC-0****002"
    assert shown.figures["notification.status"] == "DELIVERED" and shown.figures["notification.attempts"] == "2"
    assert_table(shown, "qualification", qualification, "check_date")
    assert_table(shown, "attempts", attempts, "attempt")
    assert_table(shown, "history", history, "id")
    assert_table(shown, "alerts", alerts, "id")
    assert "encrypted, not shown" in shown.text

    missing = page(client, "/customer?customer_id=999999", status=404)
    assert missing.figures["customer.none"] == "No customer with that id."
    assert "999999" not in missing.text  # what was typed is not repeated


def test_no_page_json_or_error_shows_a_name_a_phone_number_or_a_balance(client) -> None:
    customers = [{"first_name": n, "phone_number": p} for _, n, p in CUSTOMERS]
    patterns = pii_patterns(customers, [BALANCE_1001])
    paths = ["/", "/?date=2025-11-18", "/?date=2025-11-17", "/campaign?month=2025-11", "/bank?days=90"]
    paths += [f"/customer?customer_id={c}&month=2025-11" for c, _, _ in CUSTOMERS]
    paths += ["/api/today", "/api/today?date=2025-11-18", "/api/campaign?month=2025-11", "/api/bank?days=90"]
    paths += [f"/api/customer?customer_id={c}&month=2025-11" for c, _, _ in CUSTOMERS]
    answers = dict.fromkeys(paths, 200)
    # What a user may type, a phone number or a name included: refused or not found, never repeated.
    answers |= {
        "/customer?customer_id=0521000001": 404,  # digits: could be an id; none such
        "/api/customer?customer_id=0521000001": 404,
        "/customer?customer_id=Avigail": 400,
        "/api/customer?customer_id=052-1000001": 400,
        "/?date=Avigail": 400,
        "/api/today?date=0521000001": 400,
        "/campaign?month=052-1000001": 400,
        "/bank?days=0521000001": 400,
    }
    for path, status in answers.items():
        resp = client.get("/premium/console" + path)
        assert resp.status_code == status, (path, resp.text[-500:])
        for kind, pattern in patterns.items():
            assert not pattern.search(resp.text), f"{kind} in {path}"
        if status == 400:
            assert "must be" in resp.text or "1 to 12 digits" in resp.text, path


# -- the DAG run link ------------------------------------------------------------------------------


def test_a_balance_run_links_to_its_day(client) -> None:
    resp = client.get(f"/premium/console/dag-runs/premium_balance_daily/{RUN_18}", follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/premium/console/?date=2025-11-18"
    unknown = client.get("/premium/console/dag-runs/premium_balance_daily/manual__nothing", follow_redirects=False)
    assert unknown.status_code == 404


# -- mounting --------------------------------------------------------------------------------------


def test_one_app_serves_the_console_and_the_webhooks_under_premium(known) -> None:
    """The /premium prefix is one mount (premium.api_server): no dependence on the plugins' load order."""
    import premium_console_plugin
    import premium_webhooks_plugin
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from premium.api_server import app as premium_app
    from premium.console import app as console

    assert [a["url_prefix"] for a in premium_webhooks_plugin.PremiumWebhooksPlugin.fastapi_apps] == ["/premium"]
    assert not getattr(premium_console_plugin.PremiumConsolePlugin, "fastapi_apps", [])
    root = FastAPI()
    root.mount("/premium", premium_app)
    console.app.dependency_overrides[console.require_user] = lambda: None
    try:
        with TestClient(root) as c:
            resp = c.get("/premium/console/api/campaign", params={"month": "2025-11"})
            retired = c.post("/premium/api/webhooks/sms-delivery", content=b"{}")
    finally:
        console.app.dependency_overrides.clear()
    assert resp.status_code == 200 and resp.json()["campaign_id"] == CAMPAIGN
    assert retired.status_code == 410
