"""The project's integration health figures in Prometheus text format, on the Airflow API server.

``plugins/premium_metrics_plugin.py`` mounts :data:`app` at ``/premium-metrics``::

    GET /premium-metrics/metrics     text/plain; version=0.0.4  (Prometheus exposition format)

It serves the latest window-scope rows of ``integration_metrics`` (written hourly by the
``premium_monitoring`` DAG): per metric ``premium_<metric>{carrier=…}`` with its value (NaN: no
data), plus ``premium_integration_samples``, ``…_threshold``, ``…_breached`` (1/0; absent when
not judged) labelled by ``metric``, and ``premium_integration_computed_timestamp_seconds``. Figures
and names only: no PII, no run ids.

Authentication (the Airflow auth manager does not guard plugin apps by itself):

- a static scrape token: ``Authorization: Bearer <token>`` where the token is the password of
  the connection ``premium_metrics_scrape`` (for Prometheus, whose scrape config cannot refresh
  an Airflow JWT); or
- any authenticated Airflow user: an Airflow JWT as bearer token (``POST /auth/token``) or the
  UI's session cookie (``airflow.api_fastapi.core_api.security.get_user``).

Anything else is 401 (no credentials, expired) or 403 (invalid token).
"""

from __future__ import annotations

import hmac
import logging
import math
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from premium.cache import Expiring

log = logging.getLogger(__name__)

SCRAPE_CONN_ID = "premium_metrics_scrape"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CACHE_TTL_S = 60.0
MAX_AGE_DAYS = 7  # rows older than this are not served (the DAG stopped: the figures are stale)

_bearer = HTTPBearer(auto_error=False)

LATEST = """
SELECT DISTINCT ON (metric, labels) metric, labels, value, samples, threshold, breached,
       extract(epoch FROM computed_at) AS computed_at
FROM integration_metrics
WHERE scope = 'window' AND computed_at >= now() - make_interval(days => %s)
ORDER BY metric, labels, computed_at DESC
"""

HELP = {
    "banking_api_availability_pct": "Banking API calls answered (HTTP 1xx-4xx except 429), percent, last window",
    "banking_api_response_time_p95_seconds": "Banking API response time, 95th percentile, seconds, last window",
    "sms_carrier_availability_pct": "SMS carrier calls answered (HTTP 1xx-4xx except 429), percent, per carrier",
    "sms_delivery_rate_pct": "Delivered / final SMS messages submitted in the window, percent",
    "sms_delivery_in_flight_count": "SMS messages submitted in the window without a final status",
    "sms_retry_exhaustion_count": "SMS notifications that failed with no retry left in the window",
    "webhook_consecutive_failures_max": "Longest run of consecutive non-2xx delivery webhooks in the window",
    "webhook_consecutive_failures_current": "Consecutive non-2xx delivery webhooks at the end of the window",
}


def _load_scrape_token() -> str | None:
    try:
        from premium.connections import get_connection

        return get_connection(SCRAPE_CONN_ID).password or None
    except Exception as exc:  # noqa: BLE001 - not configured (or unavailable): Airflow auth only
        if type(exc).__name__ != "AirflowNotFoundException":
            log.warning("connection %s unavailable (%s): Airflow auth only", SCRAPE_CONN_ID, type(exc).__name__)
        return None


def _load_conninfo() -> dict[str, Any]:
    from premium.connections import premium_db_kwargs

    return {**premium_db_kwargs(), "connect_timeout": 5}


SCRAPE_TOKEN = Expiring(_load_scrape_token, CACHE_TTL_S)
CONNINFO = Expiring(_load_conninfo, CACHE_TTL_S)


async def authorized(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The scrape token, or an authenticated Airflow user; else HTTPException 401/403."""
    if credentials and credentials.scheme.lower() == "bearer":
        token = await run_in_threadpool(SCRAPE_TOKEN.get)
        if token and hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            return
    from airflow.api_fastapi.core_api.security import get_user

    await get_user(request, None, credentials)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(items: dict[str, Any]) -> str:
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(items.items())) + "}"


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    return repr(float(value))


def render(rows: list[dict[str, Any]]) -> str:
    """Prometheus text exposition of the latest integration_metrics rows."""
    lines: list[str] = []
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_metric.setdefault(row["metric"], []).append(row)
    for metric, items in sorted(by_metric.items()):
        family = f"premium_{metric}"
        lines.append(f"# HELP {family} {HELP.get(metric, metric)}")
        lines.append(f"# TYPE {family} gauge")
        for row in items:
            lines.append(f"{family}{_labels(row['labels'] or {})} {_number(row['value'])}")
    for family, column, text in (
        ("premium_integration_samples", "samples", "Calls, messages or events behind each figure"),
        ("premium_integration_threshold", "threshold", "Alert threshold of each figure (premium_settings.monitoring)"),
        ("premium_integration_breached", "breached", "1 when the figure breaches its threshold, 0 when not"),
    ):
        values = [(r, r[column]) for metric in sorted(by_metric) for r in by_metric[metric] if r[column] is not None]
        if not values:
            continue
        lines.append(f"# HELP {family} {text}")
        lines.append(f"# TYPE {family} gauge")
        for row, value in values:
            labels = _labels({"metric": row["metric"], **(row["labels"] or {})})
            number = (1.0 if value else 0.0) if isinstance(value, bool) else value
            lines.append(f"{family}{labels} {_number(number)}")
    if rows:
        lines.append("# HELP premium_integration_computed_timestamp_seconds When the figures were last computed")
        lines.append("# TYPE premium_integration_computed_timestamp_seconds gauge")
        lines.append(
            f"premium_integration_computed_timestamp_seconds {_number(max(float(r['computed_at']) for r in rows))}"
        )
    return "\n".join(lines) + "\n"


def latest_rows(conninfo: dict[str, Any]) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(**conninfo, row_factory=dict_row) as conn:
        return conn.execute(LATEST, (MAX_AGE_DAYS,)).fetchall()


def _collect() -> str:
    return render(latest_rows(CONNINFO.get()))


app = FastAPI(
    title="Premium notifications: integration metrics",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


@app.get("/metrics", dependencies=[Depends(authorized)])
async def metrics() -> Response:
    try:
        text = await run_in_threadpool(_collect)
    except Exception as exc:  # noqa: BLE001 - the scrape fails visibly, the server stays up
        CONNINFO.clear()
        log.error("integration metrics unavailable: %s", type(exc).__name__)
        raise HTTPException(status_code=503, detail="integration metrics unavailable") from None
    return Response(text, media_type=CONTENT_TYPE)
