"""Base URLs of the HTTP clients (bank, SMS carriers, alert webhook) from their Airflow connections:
https by default, the scheme read case-insensitively wherever a connection can carry it, and plain
http only to loopback or when the connection says ``allow_plain_http``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk.definitions.connection import Connection

from premium import notify
from premium.banking.client import BankEndpoint
from premium.connections import base_url
from premium.notifications.carrier import CarrierEndpoint

KEY = "bank-api-key-7c1d"


def _conn(**kw) -> SimpleNamespace:
    base = {"conn_id": "core_banking", "conn_type": "http", "host": None, "port": None, "schema": None}
    base.update({"login": None, "password": None})
    base.update(kw)
    extra = base.pop("extra", {})
    return SimpleNamespace(**base, extra_dejson=extra)


def test_an_https_uri_gives_an_https_base_url_with_tls() -> None:
    conn = Connection.from_uri(f"https://:{KEY}@core-banking.bank.internal:443", conn_id="core_banking")
    endpoint = BankEndpoint.from_connection(conn)
    assert endpoint.base_url == "https://core-banking.bank.internal:443"
    assert endpoint.ssl_context is not None and endpoint.headers["X-API-Key"] == KEY
    carrier = CarrierEndpoint.from_connection(
        Connection.from_uri(f"HTTPS://:{KEY}@sms.carrier.example", conn_id="sms_carrier"), "primary"
    )
    assert carrier.base_url == "https://sms.carrier.example" and carrier.ssl_context is not None


@pytest.mark.parametrize(
    ("kw", "url"),
    [
        ({"host": "bank.example", "conn_type": None}, "https://bank.example"),  # https by default
        ({"host": "bank.example", "conn_type": "generic"}, "https://bank.example"),
        ({"host": "bank.example", "conn_type": "HTTPS", "port": 8443}, "https://bank.example:8443"),
        ({"host": "bank.example", "schema": "HTTPS"}, "https://bank.example"),
        ({"host": "HTTPS://Bank.example", "port": 8443}, "https://bank.example:8443"),
        ({"host": "Https://bank.example:9443/api/"}, "https://bank.example:9443/api/"),
        ({"host": "bank.example", "conn_type": "https", "schema": "v1/api"}, "https://bank.example/v1/api"),
        ({"host": "127.0.0.1", "port": 8080, "schema": "http"}, "http://127.0.0.1:8080"),
        ({"host": "HTTP://127.0.0.1:8080"}, "http://127.0.0.1:8080"),
        ({"host": "127.0.0.1", "schema": "alerts"}, "http://127.0.0.1/alerts"),  # conn_type http (URI)
        ({"host": "localhost", "schema": "http"}, "http://localhost"),
        ({"host": "127.8.0.3", "schema": "http"}, "http://127.8.0.3"),
        ({"host": "::1", "port": 81, "schema": "http"}, "http://[::1]:81"),
        ({"host": "http://[::1]:81"}, "http://[::1]:81"),
        ({"host": "bank.example", "schema": "http", "extra": {"allow_plain_http": True}}, "http://bank.example"),
    ],
)
def test_base_url(kw, url) -> None:
    assert base_url(_conn(**kw), what="core banking") == url


@pytest.mark.parametrize(
    "kw",
    [
        {"host": "bank.example", "schema": "http"},
        {"host": "bank.example", "conn_type": "http", "schema": "api"},
        {"host": "HTTP://bank.example"},
        {"host": "10.0.0.5", "schema": "HTTP"},
        {"host": "bank.example", "schema": "http", "extra": {"allow_plain_http": "yes"}},  # only true itself
        {"host": "127.0.0.1.evil.example", "schema": "http"},
    ],
)
def test_plain_http_to_another_host_is_refused(kw) -> None:
    conn = _conn(password=KEY, login="bank-user", **kw)
    with pytest.raises(ValueError, match="core_banking") as raised:
        base_url(conn, what="core banking")
    assert "allow_plain_http" in str(raised.value)
    assert KEY not in str(raised.value)


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="http or https"):
        base_url(_conn(host="ftp://bank.example"), what="core banking")


def test_every_client_refuses_plain_http_to_another_host() -> None:
    plain = {"host": "bank.example", "port": 8443, "schema": "http", "password": KEY}
    with pytest.raises(ValueError, match="core_banking"):
        BankEndpoint.from_connection(_conn(**plain))
    with pytest.raises(ValueError, match="sms_carrier"):
        CarrierEndpoint.from_connection(_conn(**{**plain, "conn_id": "sms_carrier"}), "primary")
    with pytest.raises(notify.NotifierMisconfigured, match="premium_alerts_webhook"):
        notify.webhook_url(_conn(conn_id="premium_alerts_webhook", host="http://hooks.example.com/x"))
    with pytest.raises(notify.NotifierMisconfigured, match="premium_alerts_webhook"):
        notify.webhook_url(_conn(conn_id="premium_alerts_webhook", extra={"url": "http://10.0.0.5/a"}))
    allowed = {**plain, "extra": {"allow_plain_http": True}}
    assert BankEndpoint.from_connection(_conn(**allowed)).base_url == "http://bank.example:8443"
    assert BankEndpoint.from_connection(_conn(**allowed)).ssl_context is None
    carrier = CarrierEndpoint.from_connection(_conn(**allowed), "primary")
    assert carrier.base_url == "http://bank.example:8443" and carrier.ssl_context is None


def test_the_webhook_url_keeps_its_path_and_takes_the_scheme_from_the_connection() -> None:
    uri = Connection.from_uri("HTTPS://:tok@hooks.example.com:8443/services/T0/B0", conn_id="premium_alerts_webhook")
    assert notify.webhook_url(uri) == "https://hooks.example.com:8443/services/T0/B0"
    loopback = Connection.from_uri("http://127.0.0.1:8123/alerts", conn_id="premium_alerts_webhook")
    assert notify.webhook_url(loopback) == "http://127.0.0.1:8123/alerts"
    assert notify.webhook_url(_conn(extra={"url": "HTTPS://hooks.example.com/a?b=1"})) == (
        "https://hooks.example.com/a?b=1"
    )
