"""The Premium operations console: read-only pages on the Airflow API server, for Airflow users.

``plugins/premium_console_plugin.py`` mounts :data:`app` at ``/premium/console``::

    GET /premium/console/                           Today: the balance run (latest, or ?date=YYYY-MM-DD),
                                                    the bank's health (30 days), open alerts
    GET /premium/console/campaign?month=YYYY-MM     Campaign: funnel per day and carrier, batches, §6.2
                                                    delivery rate by hour, retries and failovers
    GET /premium/console/bank?days=7|30|90          Bank API: §6.2 "Banking API health" and the §6.1
                                                    availability and response times, thresholds drawn
    GET /premium/console/customer?customer_id=N[&month=YYYY-MM]   Customer lookup (no name, no number)
    GET /premium/console/dag-runs/{dag_id}/{run_id} a DAG run's day: 303 to Today of its check date
    GET /premium/console/api/{today,campaign,bank,customer}       the same figures as JSON

Authentication: every route depends on :func:`airflow.api_fastapi.core_api.security.get_user`,
Airflow's own: a JWT as ``Authorization: Bearer`` (``POST /auth/token``) or, for a browser, the
UI's ``_token`` cookie. Anonymous: 401 (an HTML page with a sign-in link, or JSON under /api);
an invalid token: 403. Any authenticated user may read; nothing here writes.

No PII: names and phone numbers are stored encrypted and never read here (no query selects an
encrypted column, nothing is decrypted); account ids are masked; free text from the database
(alert summaries, carrier errors) is scrubbed of account ids and mobile numbers once more
(:data:`premium.console.queries.FREE_TEXT`). Errors name no value: a bad parameter says which form it needs,
a database failure is a 503 with no detail.

Database: a psycopg_pool pool of :func:`premium.db.pool` on connection ``premium_db``, read-only
sessions (``default_transaction_read_only``), a statement timeout, time zone Asia/Jerusalem.
Pages are HTML rendered by Jinja2 from include/templates/console/ with inline CSS and inline SVG
charts (:mod:`premium.console.charts`): no script, no request for anything else, so a page works
in the UI's sandboxed iframe and on a network without internet. Responses are ``no-store``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from premium import db
from premium.cache import Expiring
from premium.console import charts, queries
from premium.console.queries import LOCAL_TZ, BadParameter, Month
from premium.paths import include_dir

log = logging.getLogger(__name__)

APPLICATION_NAME = "premium-console"
STATEMENT_TIMEOUT_MS = 15_000
DB_POOL_TIMEOUT_S = 10.0
DB_CONNECT_TIMEOUT_S = 5
CACHE_TTL_S = 60.0
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Nothing to load, nothing to run: inline styles and SVG only; framed by the Airflow UI (same origin).
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'self'; base-uri 'none'"
    ),
}
PAGES = (("today", "", "Today"), ("campaign", "campaign", "Campaign"), ("bank", "bank", "Bank API"))
PAGES += (("customer", "customer", "Customer lookup"),)


# -- database and settings -------------------------------------------------------------------------


def _conninfo() -> dict[str, Any]:
    from premium.connections import premium_db_kwargs

    options = (
        f"-c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT_MS} -c TimeZone=Asia/Jerusalem"
    )
    return {
        **premium_db_kwargs(),
        "application_name": APPLICATION_NAME,
        "connect_timeout": DB_CONNECT_TIMEOUT_S,
        "options": options,
    }


def _monitoring_settings() -> Any:
    from premium.settings import load_monitoring

    return load_monitoring()


CONNINFO = Expiring(_conninfo, CACHE_TTL_S)  # connection premium_db, not looked up per request
MONITORING = Expiring(_monitoring_settings, CACHE_TTL_S)  # the §6.1 thresholds (premium_settings)
POOLS = db.AppPools(CONNINFO.get)  # the pools this app lent connections from (closed with the app)


def _pool() -> Any:
    return POOLS.get()


def _close_pools() -> None:
    POOLS.close()


class Unavailable(RuntimeError):
    """The figures could not be read (database, connection or settings): a 503 without detail."""


def read(page: Any, *args: Any) -> Any:
    """``page(conn, *args)`` on a pooled read-only connection; any failure but a bad parameter is
    logged by its type only (a database message may quote data) and raised as :class:`Unavailable`."""
    try:
        with _pool().connection(timeout=DB_POOL_TIMEOUT_S) as conn:
            return page(conn, *args)
    except BadParameter:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure is a 503 without detail (logged by type)
        CONNINFO.clear()  # the database may have moved: resolve connection premium_db again
        log.error("premium console: figures unavailable (%s)", type(exc).__name__)
        raise Unavailable from None


# -- authentication ------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)


async def require_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    """Airflow's authenticated user (bearer JWT or the UI's ``_token`` cookie); else 401/403."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, credentials)


def _login_url(request: Request) -> str | None:
    try:
        from airflow.api_fastapi.app import get_auth_manager

        # Back to the page, without its query: what was typed (a customer id…) is not carried along.
        return get_auth_manager().get_url_login(next_url=str(request.url.replace(query="")))
    except Exception:  # noqa: BLE001 - no auth manager (not on the API server): no link
        return None


# -- rendering -------------------------------------------------------------------------------------


def _fmt_number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Decimal | float):
        return f"{value:,}"
    return str(value)


def _fmt_time(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, datetime):
        return value.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M:%S %z")
    return str(value)


def _label(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")
    return str(value)


def _points(found: list[dict[str, Any]], label: str, value: str) -> list[tuple[str, Any]]:
    """(label, value) of each row, for :func:`premium.console.charts.bar_chart`."""
    return [(_label(r[label]), r[value]) for r in found]


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(Path(include_dir()) / "templates" / "console")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_fmt_number, ts=_fmt_time)
    env.globals.update(bar_chart=charts.bar_chart, Threshold=charts.Threshold, points=_points)
    return env


TEMPLATES = _environment()


def _base(request: Request) -> str:
    """The console's own path (``/premium/console``, behind any [api] base_url prefix)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _html(request: Request, template: str, status_code: int = 200, **data: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(base=_base(request), pages=PAGES, **data)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def _json(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(jsonable_encoder(data), status_code=status_code, headers=SECURITY_HEADERS)


def _is_api(request: Request) -> bool:
    return str(request.scope.get("path", "")).removeprefix(_base(request)).startswith("/api/")


def _error(request: Request, status_code: int, message: str, **extra: Any) -> Response:
    if _is_api(request):
        return _json({"detail": message}, status_code)
    return _html(request, "error.html", status_code, page="error", status=status_code, message=message, **extra)


# -- the app -------------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(_app: FastAPI):
    yield
    await run_in_threadpool(_close_pools)  # the API server enters the lifespan of every mounted app


app = FastAPI(
    title="Premium operations console",
    lifespan=lifespan,
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
    dependencies=[Depends(require_user)],
)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 401 and not _is_api(request):
        return _error(request, 401, "Sign in to Airflow to see the Premium console.", login_url=_login_url(request))
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    return _error(request, exc.status_code, message)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, _exc: RequestValidationError) -> Response:
    return _error(request, 422, "invalid request")  # never echo the input: it may be anything


@app.exception_handler(BadParameter)
async def _bad_parameter(request: Request, exc: BadParameter) -> Response:
    return _error(request, 400, str(exc))  # names the expected form, not the value given


@app.exception_handler(Unavailable)
async def _unavailable(request: Request, _exc: Unavailable) -> Response:
    return _error(request, 503, "console data unavailable; see the API server's log")


def _now() -> datetime:
    return queries.utc_now()


def _settings() -> Any:
    try:
        return MONITORING.get()
    except Exception as exc:  # noqa: BLE001 - SettingsError, a Variable that is not JSON, …
        log.error("premium console: monitoring settings unusable (%s)", type(exc).__name__)
        raise Unavailable from None


def _today_data(check_date: str | None) -> dict[str, Any]:
    day = queries.parse_date(check_date)
    return read(queries.today, day, _now(), _settings())


def _campaign_data(month: str | None) -> dict[str, Any]:
    settings = _settings()

    def page(conn: Any) -> dict[str, Any]:
        chosen = Month.parse(month) if month else queries.default_month(conn, _now())
        return queries.campaign(conn, chosen, settings)

    return read(page)


def _bank_days(days: str | None) -> int:
    if not days:
        return queries.BANK_HEALTH_DAYS
    if not days.isdigit() or int(days) not in queries.BANK_PAGE_DAYS:
        raise BadParameter(f"days must be one of {', '.join(map(str, queries.BANK_PAGE_DAYS))}")
    return int(days)


def _bank_data(days: str | None) -> dict[str, Any]:
    return read(queries.bank, _bank_days(days), _now(), _settings())


def _customer_data(customer_id: str | None, month: str | None) -> dict[str, Any]:
    wanted = queries.parse_customer_id(customer_id)

    def page(conn: Any) -> dict[str, Any]:
        chosen = Month.parse(month) if month else queries.default_month(conn, _now())
        found = queries.customer(conn, wanted, chosen) if wanted else None
        return {
            "customer_id": wanted,
            "month": chosen.key,
            "campaigns": queries.campaigns(conn),
            "found": found,
        }

    return read(page)


DateParam = Annotated[str | None, Query(alias="date")]

# Sync routes: FastAPI runs them in its thread pool, so the API server's event loop never waits on
# PostgreSQL.


@app.get("/", response_class=HTMLResponse)
def today_page(request: Request, check_date: DateParam = None) -> Response:
    return _html(request, "today.html", page="today", **_today_data(check_date))


@app.get("/campaign", response_class=HTMLResponse)
def campaign_page(request: Request, month: str | None = None) -> Response:
    return _html(request, "campaign.html", page="campaign", **_campaign_data(month))


@app.get("/bank", response_class=HTMLResponse)
def bank_page(request: Request, days: str | None = None) -> Response:
    return _html(request, "bank.html", page="bank", choices=queries.BANK_PAGE_DAYS, **_bank_data(days))


@app.get("/customer", response_class=HTMLResponse)
def customer_page(request: Request, customer_id: str | None = None, month: str | None = None) -> Response:
    data = _customer_data(customer_id, month)
    status = 404 if data["customer_id"] and data["found"] is None else 200
    return _html(request, "customer.html", status, page="customer", **data)


@app.get("/api/today")
def today_json(check_date: DateParam = None) -> Response:
    return _json(_today_data(check_date))


@app.get("/api/campaign")
def campaign_json(month: str | None = None) -> Response:
    return _json(_campaign_data(month))


@app.get("/api/bank")
def bank_json(days: str | None = None) -> Response:
    return _json(_bank_data(days))


@app.get("/api/customer")
def customer_json(customer_id: str | None = None, month: str | None = None) -> Response:
    data = _customer_data(customer_id, month)
    if data["customer_id"] is None:
        raise BadParameter("customer_id is required")
    if data["found"] is None:
        return _json({"detail": "no such customer"}, 404)
    return _json(data)


def _check_date_of_run(dag_id: str, run_id: str) -> date | None:
    """The check date of a DAG run: the date whose balance run it is (balance_check_runs), else the
    run's as-of date by the tasks' own rule (premium.runtime.as_of_date) from Airflow's metadata DB."""
    found = read(queries.balance_date_of_run, run_id)
    if found is not None:
        return found
    from types import SimpleNamespace

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from premium.runtime import as_of_date

    try:
        with create_session() as session:
            run = session.execute(
                select(DagRun.logical_date, DagRun.run_after).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            ).first()
    except Exception as exc:  # noqa: BLE001 - the metadata DB: a 503 without detail
        log.error("premium console: DAG run lookup failed (%s)", type(exc).__name__)
        raise Unavailable from None
    if run is None:
        return None
    return as_of_date({"logical_date": run.logical_date, "dag_run": SimpleNamespace(run_after=run.run_after)})


@app.get("/dag-runs/{dag_id}/{run_id}")
def dag_run_day(request: Request, dag_id: str, run_id: str) -> Response:
    """The day of a DAG run in the console (the "Premium day" tab of a run page)."""
    day = _check_date_of_run(dag_id, run_id)
    if day is None:
        return _error(request, 404, "no such DAG run")
    return RedirectResponse(f"{_base(request)}/?{urlencode({'date': day.isoformat()})}", 303, SECURITY_HEADERS)
