"""Notifier routing of alerts: email over SMTP and/or an HTTP webhook, each set up by a connection.

:func:`premium.alerts.raise_alert` records an alert and then calls :func:`deliver`, which sends
it to every notifier whose connection exists:

- ``premium_alerts_smtp`` (conn type ``smtp``): an email through the SMTP provider's
  :class:`~airflow.providers.smtp.hooks.smtp.SmtpHook`. host, port, login/password as usual;
  extra: ``to`` (required: a list, or addresses separated by , or ;), ``from_email`` (or
  ``from``), and the provider's own keys (``disable_ssl``, ``disable_tls``, ``ssl_context``,
  ``timeout``, ``retry_limit``). The hook is used directly rather than ``SmtpNotifier``: the
  notifier renders its subject and body as Jinja templates, and an alert text is data, never a
  template.
- ``premium_alerts_webhook`` (conn type ``http``): ``POST`` of the alert as JSON
  ``{alert_id, kind, severity, summary, dag_id, run_id, task_id, details, raised_at}``. URL: the
  host when it holds a full URL (``https://hooks.example.com/premium``), otherwise
  scheme://host[:port]/path as the connection URI gives it (extra ``url`` overrides both); extra
  ``endpoint`` appends a path. https unless the connection says http, and plain http only to
  loopback or with extra ``allow_plain_http`` (:func:`premium.connections.base_url`).
  password alone -> ``Authorization: Bearer <password>``; login + password -> basic auth.
  extra: ``headers`` (dict), ``timeout`` (s, 10), ``retries`` (2, on connection errors, 429 and
  5xx), ``backoff_s`` (0.5), ``verify`` (TLS: true, false or a CA bundle path), ``trust_env``
  (proxies from the environment: true).

Both take extra ``min_severity`` (info | warning | critical; default info: everything).
Neither configured: the alert stays in the ``alerts`` table and the log (``PREMIUM_ALERT``).
A notifier that fails never raises: the error is logged and returned, and ``raise_alert``
records it in ``alerts.delivery_error``, reduced to the exception class, the host and the HTTP
(or SMTP) status: never the exception's text, which can quote the webhook URL (whose path and
query are often its credential), a server's answer or a recipient. Nothing here adds PII: the
alert's own text (ids and counts) is all that is sent.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SMTP_CONN_ID = "premium_alerts_smtp"
WEBHOOK_CONN_ID = "premium_alerts_webhook"
SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}
MAX_ERROR_CHARS = 300


class NotifierMisconfigured(ValueError):
    """A notifier connection exists but cannot be used as it is."""


class WebhookRejected(RuntimeError):
    def __init__(self, status: int) -> None:
        super().__init__(f"webhook answered HTTP {status}")
        self.status = status


@dataclass(frozen=True)
class AlertMessage:
    """One alert as the notifiers send it."""

    kind: str
    severity: str
    summary: str
    raised_at: datetime
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    alert_id: int | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "severity": self.severity,
            "summary": self.summary,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "details": self.details,
            "raised_at": self.raised_at.isoformat(),
        }

    def subject(self) -> str:
        text = f"[premium][{self.severity}] {self.kind}: {self.summary}"
        text = re.sub(r"[\r\n\t]+", " ", text)
        return text if len(text) <= 200 else text[:199] + "…"

    def html_body(self) -> str:
        rows = [
            ("Kind", self.kind),
            ("Severity", self.severity),
            ("Summary", self.summary),
            ("DAG", self.dag_id or ""),
            ("Run", self.run_id or ""),
            ("Task", self.task_id or ""),
            ("Raised at", self.raised_at.isoformat()),
            ("Alert id", "" if self.alert_id is None else str(self.alert_id)),
        ]
        cells = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        details = html.escape(json.dumps(self.details, indent=2, sort_keys=True, default=str))
        return (
            "<html><body><h3>Premium notifications alert</h3>"
            f"<table>{cells}</table><h4>Details</h4><pre>{details}</pre>"
            "<p>Recorded in the <code>alerts</code> table of the application database.</p></body></html>"
        )


@dataclass
class DeliveryReport:
    """What :func:`deliver` did: notifiers that accepted the alert, and errors by notifier."""

    delivered_to: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # configured, but below their min_severity
    configured: list[str] = field(default_factory=list)

    @property
    def error_text(self) -> str | None:
        if not self.errors:
            return None
        return "; ".join(f"{name}: {text}" for name, text in sorted(self.errors.items()))


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    text = re.sub(r"\s+", " ", text)
    return text[:MAX_ERROR_CHARS]


def _host_of(conn: Any) -> str | None:
    """The host a notifier connection points at, without scheme, credentials, path or query."""
    try:
        raw = str((conn.extra_dejson or {}).get("url") or conn.host or "").strip()
        return urlsplit(raw if "://" in raw else f"//{raw}").hostname or None
    except (AttributeError, ValueError):
        return None


def _status_of(exc: BaseException) -> str | None:
    if isinstance(exc, WebhookRejected):
        return f"HTTP {exc.status}"
    response_status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(response_status, int):
        return f"HTTP {response_status}"
    smtp_code = getattr(exc, "smtp_code", None)
    if isinstance(smtp_code, int) and smtp_code > 0:
        return f"SMTP {smtp_code}"
    return None


def failure_text(exc: BaseException, conn: Any) -> str:
    """How a notifier's failure is recorded and logged: exception class, host, HTTP/SMTP status.

    The exception's own text is left out: a requests error quotes the URL (a webhook's path and
    query are often its credential), an SMTP error the server's answer or the recipients. Only
    :class:`NotifierMisconfigured`, whose text is ours (settings by name, never their values),
    keeps it.
    """
    if isinstance(exc, NotifierMisconfigured):
        return _describe(exc)
    details = [f"host {host}"] if (host := _host_of(conn)) else []
    if status := _status_of(exc):
        details.append(status)
    return type(exc).__name__ + (f" ({', '.join(details)})" if details else "")


def _default_lookup(conn_id: str) -> Any:
    from premium.connections import get_connection

    return get_connection(conn_id)


def _is_not_found(exc: BaseException) -> bool:
    return any(cls.__name__ in ("AirflowNotFoundException", "ConnectionNotFound") for cls in type(exc).__mro__)


def wants(conn: Any, severity: str) -> bool:
    """Whether a notifier connection takes alerts of ``severity`` (its extra ``min_severity``)."""
    minimum = str((conn.extra_dejson or {}).get("min_severity") or "info").lower()
    if minimum not in SEVERITY_ORDER:
        raise NotifierMisconfigured(f"min_severity must be one of {', '.join(SEVERITY_ORDER)}, not {minimum!r}")
    return SEVERITY_ORDER.get(severity, 2) >= SEVERITY_ORDER[minimum]


# -- SMTP ------------------------------------------------------------------------------------------


def recipients(extra: dict[str, Any]) -> list[str]:
    raw = extra.get("to")
    if isinstance(raw, str):
        items = re.split(r"\s*[,;]\s*", raw)
    elif isinstance(raw, list | tuple):
        items = [str(i) for i in raw]
    else:
        items = []
    items = [i.strip() for i in items if i and i.strip()]
    if not items:
        raise NotifierMisconfigured("extra 'to' (the recipients) is missing")
    return items


def send_email(conn: Any, conn_id: str, alert: AlertMessage) -> None:
    """One email through the SMTP provider's hook (it reads host, port, credentials, TLS itself)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    extra = conn.extra_dejson or {}
    to = recipients(extra)
    from_email = extra.get("from_email") or extra.get("from")
    if not from_email:
        raise NotifierMisconfigured("extra 'from_email' is missing")
    with SmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(
            to=to,
            from_email=from_email,
            subject=alert.subject(),
            html_content=alert.html_body(),
            custom_headers={
                "X-Premium-Alert-Kind": alert.kind,
                "X-Premium-Alert-Severity": alert.severity,
                "X-Premium-Alert-Id": "" if alert.alert_id is None else str(alert.alert_id),
            },
        )


# -- HTTP webhook ----------------------------------------------------------------------------------


def webhook_url(conn: Any) -> str:
    """The URL an ``http`` connection names (see the module docstring)."""
    from premium.connections import base_url

    extra = conn.extra_dejson or {}
    try:
        url = base_url(
            conn, what="alert webhook", url=str(extra["url"]) if extra.get("url") else None, default_host=None
        )
    except ValueError as exc:  # its text names the connection and the host, never the secrets
        raise NotifierMisconfigured(str(exc)) from None
    endpoint = extra.get("endpoint")
    if endpoint:
        url = url.rstrip("/") + "/" + str(endpoint).lstrip("/")
    return url


def post_webhook(conn: Any, conn_id: str, alert: AlertMessage, *, sleep: Callable[[float], None] = time.sleep) -> None:
    import requests

    extra = conn.extra_dejson or {}
    url = webhook_url(conn)
    headers = {"Content-Type": "application/json", "User-Agent": "premium-notifications-alerts/1"}
    headers.update({str(k): str(v) for k, v in (extra.get("headers") or {}).items()})
    auth = None
    if conn.password:
        if conn.login:
            auth = (conn.login, conn.password)
        else:
            headers["Authorization"] = f"Bearer {conn.password}"
    timeout = float(extra.get("timeout", 10))
    retries = int(extra.get("retries", 2))
    backoff = float(extra.get("backoff_s", 0.5))
    body = json.dumps(alert.payload(), default=str).encode()
    last: BaseException | None = None
    with requests.Session() as session:
        session.trust_env = bool(extra.get("trust_env", True))
        for attempt in range(retries + 1):
            if attempt:
                sleep(backoff * 2 ** (attempt - 1))
            try:
                resp = session.post(
                    url,
                    data=body,
                    headers=headers,
                    auth=auth,
                    timeout=timeout,
                    verify=extra.get("verify", True),
                    allow_redirects=False,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = exc
                continue
            if 200 <= resp.status_code < 300:
                return
            last = WebhookRejected(resp.status_code)
            if resp.status_code != 429 and resp.status_code < 500:
                break  # the receiver refuses this request; sending it again will not help
    assert last is not None
    raise last


# -- routing ---------------------------------------------------------------------------------------

NOTIFIERS: tuple[tuple[str, str, Callable[[Any, str, AlertMessage], None]], ...] = (
    ("smtp", SMTP_CONN_ID, send_email),
    ("webhook", WEBHOOK_CONN_ID, post_webhook),
)


def deliver(alert: AlertMessage, *, lookup: Callable[[str], Any] | None = None) -> DeliveryReport:
    """Send ``alert`` to every configured notifier. Never raises."""
    lookup = lookup or _default_lookup
    report = DeliveryReport()
    for name, conn_id, send in NOTIFIERS:
        try:
            conn = lookup(conn_id)
        except Exception as exc:  # noqa: BLE001 - a missing connection means "not configured"
            if not _is_not_found(exc):
                report.errors[name] = f"connection {conn_id} unavailable: {_describe(exc)}"
                log.warning("PREMIUM_ALERT %s not sent via %s: %s", alert.kind, name, report.errors[name])
            continue
        report.configured.append(name)
        started = time.monotonic()
        try:
            if not wants(conn, alert.severity):
                report.skipped.append(name)
                continue
            send(conn, conn_id, alert)
        except Exception as exc:  # noqa: BLE001 - a failed notifier is recorded, never raised
            report.errors[name] = failure_text(exc, conn)
        if name in report.errors:  # logged outside the except: nothing chains the raw exception to it
            log.warning("PREMIUM_ALERT %s not delivered via %s: %s", alert.kind, name, report.errors[name])
            continue
        report.delivered_to.append(name)
        log.info("PREMIUM_ALERT %s delivered via %s in %.2fs", alert.kind, name, time.monotonic() - started)
    if not report.configured and not report.errors:
        log.info("PREMIUM_ALERT %s: no notifier configured (%s, %s)", alert.kind, SMTP_CONN_ID, WEBHOOK_CONN_ID)
    return report
