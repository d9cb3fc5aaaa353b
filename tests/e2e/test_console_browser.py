"""The Premium console in the Airflow UI, as an operator sees it: headless chromium (Playwright) on a real
``airflow standalone`` with a real user and password.

The operator signs in through Airflow's login form, finds "Premium" in the navigation, reads each
console page inside the UI (the pages' figures equal their SQL on the known data of
tests/integration/test_console.py), opens a ``premium_balance_daily`` run and its "Premium day"
tab, which shows that run's day. A browser without Airflow's cookie gets no page. Screenshots of
each step land in ``.artifacts/screenshots/console/``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tests.integration.test_console import (
    CAMPAIGN,
    CUSTOMERS,
    SETTINGS,
    Page,
    assert_cell,
    assert_table,
    load_known_data,
)
from tests.support import env
from tests.support.browser import SignedInStandalone, chromium, chromium_path, screenshot_dir
from tests.support.pii import pii_patterns

pytestmark = pytest.mark.e2e

DAG_ID = "premium_balance_daily"
USER, PASSWORD = "operator", "operator-console-password-7"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def known(app_db, tmp_path_factory) -> dict:
    chromium_path()  # skip (or fail in CI) before starting anything
    from tests.support.db import truncate_all

    truncate_all(app_db)
    with psycopg.connect(**app_db) as conn:
        load_known_data(conn, tmp_path_factory.mktemp("console-e2e"), datetime.now(UTC).replace(microsecond=0))
    return app_db


@pytest.fixture(scope="module")
def sql(known):
    from tests.support.db import sql_runner

    with sql_runner(known) as run:
        yield run


@pytest.fixture(scope="module")
def airflow(known):
    with SignedInStandalone(
        username=USER,
        password=PASSWORD,
        dag_files=[env.ROOT / "dags" / f"{DAG_ID}.py"],
        connections={"premium_db": f"postgresql://{env.PG_USER}@{env.PG_HOST}:{env.PG_PORT}/{env.APP_DB}"},
        extra_env={"AIRFLOW_VAR_PREMIUM_SETTINGS": json.dumps(SETTINGS)},
        dags_paused_at_creation=True,
    ) as af:
        af.wait_for_dags([DAG_ID])
        yield af


@pytest.fixture(scope="module")
def browser(airflow):
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def shots():
    return screenshot_dir("console")


@pytest.fixture(scope="module")
def ui(airflow, browser, shots):
    """A page of the Airflow UI, signed in through the login form."""
    context = browser.new_context(base_url=airflow.base_url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/")
    page.wait_for_url(re.compile(r".*/auth/login.*"))
    page.get_by_label(re.compile("username", re.I)).fill(USER)
    page.get_by_label(re.compile("password", re.I)).fill(PASSWORD)
    page.screenshot(path=shots / "00-login.png")
    page.get_by_role("button", name=re.compile("sign in|log in|login", re.I)).click()
    page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))
    assert any(c["name"] == "_token" for c in context.cookies())
    yield page
    context.close()


def console_frame(page: Any, title: str) -> Any:
    """The console shown in the UI's iframe named ``title`` (a locator: the UI may replace the iframe
    element as it mirrors the frame's path into its own URL), once a page has rendered in it."""
    frame = page.frame_locator(f"iframe[title='{title}']")
    frame.locator("header .brand").wait_for()
    return frame


def frame_page(frame: Any) -> Page:
    """What the console page in ``frame`` shows (its DOM, read through the frame locator)."""
    return Page(frame.locator(":root").evaluate("root => root.outerHTML"))


def test_the_premium_entry_opens_today_with_the_db_figures(ui, sql, shots) -> None:
    nav = ui.get_by_role("link", name="Premium")
    nav.first.wait_for()
    ui.screenshot(path=shots / "01-ui-with-premium-nav.png")
    nav.first.click()
    ui.wait_for_url(re.compile(r".*/plugin/premium-console.*"))
    frame = console_frame(ui, "Premium")
    frame.locator("[data-figure='run.checked']").wait_for()
    ui.screenshot(path=shots / "02-today.png", full_page=True)

    shown = frame_page(frame)
    run = sql("console_balance_run.sql", check_date=None)[0]
    for column in ("status", "planned", "checked", "passing", "skipped", "failed", "duration_s", "correlation_id"):
        assert_cell(shown.figures[f"run.{column}"], run[column], column)
    assert_table(shown, "failures", sql("console_balance_failures.sql", check_date=run["check_date"]), "reason")
    assert shown.figures["bank.calls"] == "160" and shown.figures["bank.availability_pct"] == "98.75"


def test_campaign_bank_and_customer_pages_inside_the_ui(ui, sql, shots) -> None:
    frame = console_frame(ui, "Premium")
    frame.locator("header nav").get_by_role("link", name="Campaign", exact=True).click()
    frame.locator("[data-figure='campaign_id']").wait_for()
    ui.screenshot(path=shots / "03-campaign.png", full_page=True)
    shown = frame_page(frame)
    assert shown.figures["campaign_id"] == CAMPAIGN
    funnel = sql("console_campaign_funnel.sql", campaign_id=CAMPAIGN)
    assert_table(shown, "funnel_by_day", funnel[:-1], "check_date", total=funnel[-1])
    hourly = sql("console_sms_delivery_rate.sql", campaign_id=CAMPAIGN)
    assert [v for _, v in shown.charts["delivery_rate"]] == [float(r["delivery_rate"]) for r in hourly]
    assert frame.locator("svg[data-chart='delivery_rate'] rect.bar").count() == len(hourly)

    frame.locator("header nav").get_by_role("link", name="Bank API", exact=True).click()
    frame.locator("svg[data-chart='p95']").wait_for()
    ui.screenshot(path=shots / "04-bank-api.png", full_page=True)
    shown = frame_page(frame)
    assert shown.thresholds["availability"] == [99.0] and shown.thresholds["p95"] == [4.0]
    assert len(shown.charts["p95"]) == len(shown.tables["daily"]) > 0

    frame.locator("header nav").get_by_role("link", name="Customer lookup", exact=True).click()
    frame.locator("#customer_id").fill("1002")
    frame.locator("#month").fill("2025-11")
    frame.get_by_role("button", name="Look up").click()
    frame.locator("[data-table='attempts']").wait_for()
    ui.screenshot(path=shots / "05-customer.png", full_page=True)
    shown = frame_page(frame)
    assert shown.figures["notification.status"] == "DELIVERED"
    attempts = sql("console_customer_attempts.sql", customer_id="1002", campaign_id=CAMPAIGN)
    assert_table(shown, "attempts", attempts, "attempt")
    patterns = pii_patterns([{"first_name": n, "phone_number": p} for _, n, p in CUSTOMERS], [])
    for kind, pattern in patterns.items():
        if kind != "balance":
            assert not pattern.search(ui.content() + shown.text), kind


def test_a_balance_run_page_has_its_day_in_the_console(airflow, ui, sql, shots) -> None:
    run = airflow.trigger_dag(DAG_ID, logical_date=datetime(2025, 11, 18, 20, 0, tzinfo=UTC))  # paused: stays queued
    ui.goto(f"/dags/{DAG_ID}/runs/{run['dag_run_id']}")
    tab = ui.get_by_role("link", name="Premium day")
    tab.first.click()
    frame = console_frame(ui, "Premium day")
    frame.locator("[data-figure='run.checked']").wait_for()
    ui.screenshot(path=shots / "06-run-premium-day.png", full_page=True)
    shown = frame_page(frame)
    expected = sql("console_balance_run.sql", check_date=datetime(2025, 11, 18).date())[0]
    assert shown.figures["run.dag_run_id"] == expected["dag_run_id"]  # the day of 2025-11-18
    assert_cell(shown.figures["run.checked"], expected["checked"], "checked")


def test_a_browser_without_airflows_cookie_gets_no_page(airflow, browser, shots) -> None:
    context = browser.new_context(base_url=airflow.base_url)
    try:
        page = context.new_page()
        response = page.goto("/premium/console/campaign?month=2025-11")
        assert response.status == 401
        assert page.get_by_role("link", name="Sign in").count() == 1
        assert CAMPAIGN not in page.content()
        page.screenshot(path=shots / "07-anonymous.png")
    finally:
        context.close()
