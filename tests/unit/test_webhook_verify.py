"""Delivery-callback verification, parsing and secrets (no database, no server).

Signatures are made by the reference implementation, ``standardwebhooks.Webhook(secret).sign``.
"""

from __future__ import annotations

import base64
import json
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from standardwebhooks import Webhook

from premium.webhooks import app as webhook_app
from premium.webhooks.verify import (
    TOLERANCE_S,
    CarrierSecrets,
    NotConfigured,
    PayloadError,
    SecretStore,
    SecretsUnavailable,
    SignatureError,
    parse_payload,
    secrets_from_connections,
    usable_secrets,
    verify_signature,
)
from tests.support import env

NEW = env.TEST_WEBHOOK_SECRET
SECONDARY = env.TEST_SECONDARY_WEBHOOK_SECRET
OLD = "whsec_" + base64.b64encode(b"premium-old-webhook-key!").decode()
OTHER = "whsec_" + base64.b64encode(b"somebody-else-webhook-key").decode()
NOW = datetime(2025, 11, 18, 9, 5, 30, tzinfo=UTC)
PHONE = "+972521234567"
PAYLOAD = {
    "trackingId": "PRIMARY-TRACK-00000001",
    "messageId": "MSG-001",
    "status": "DELIVERED",
    "deliveryTimestamp": "2025-11-18T09:05:30Z",
    "phoneNumber": PHONE,
    "statusCode": "0",
}
BODY = json.dumps(PAYLOAD).encode()


def signed(
    body: bytes = BODY, secret: str = NEW, webhook_id: str = "evt_1", at: datetime = NOW, *, sign_id: str | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, signed by the reference implementation."""
    signature = Webhook(secret).sign(sign_id or webhook_id, at, body.decode())
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


# -- signatures ------------------------------------------------------------------------------------


def test_valid_signature_returns_the_webhook_id():
    assert verify_signature([NEW], signed(), BODY, now=NOW) == "evt_1"


def test_agrees_with_the_reference_verifier():
    now = datetime.now(UTC)
    headers = signed(at=now)
    Webhook(NEW).verify(BODY, headers)  # the reference accepts what we accept …
    assert verify_signature([NEW], headers, BODY) == "evt_1"  # … with the real clock too


def test_wrong_secret_is_rejected():
    with pytest.raises(SignatureError, match="no matching webhook signature"):
        verify_signature([NEW], signed(secret=OTHER), BODY, now=NOW)


def test_old_and_new_secret_both_accepted_during_rotation():
    for secret in (OLD, NEW):
        assert verify_signature([NEW, OLD], signed(secret=secret), BODY, now=NOW) == "evt_1"
    with pytest.raises(SignatureError):
        verify_signature([NEW, OLD], signed(secret=OTHER), BODY, now=NOW)


def test_any_matching_entry_of_a_multi_signature_header_is_enough():
    headers = signed()
    wrong = signed(secret=OTHER)["webhook-signature"]
    headers["webhook-signature"] = f"v2,abc {wrong} garbage v1,!!! {headers['webhook-signature']}"
    assert verify_signature([NEW], headers, BODY, now=NOW) == "evt_1"


@pytest.mark.parametrize(
    ("offset_s", "message"),
    [(TOLERANCE_S + 1, "too old"), (10 * 60, "too old"), (-(TOLERANCE_S + 1), "too new"), (-3600, "too new")],
)
def test_stale_and_future_timestamps_are_rejected(offset_s, message):
    headers = signed(at=NOW - timedelta(seconds=offset_s))
    with pytest.raises(SignatureError, match=message):
        verify_signature([NEW], headers, BODY, now=NOW)


@pytest.mark.parametrize("offset_s", [TOLERANCE_S, -TOLERANCE_S, 0])
def test_timestamps_inside_the_tolerance_are_accepted(offset_s):
    assert verify_signature([NEW], signed(at=NOW - timedelta(seconds=offset_s)), BODY, now=NOW) == "evt_1"


def test_tampered_body_id_or_timestamp_is_rejected():
    tampered_body = BODY.replace(b"DELIVERED", b"FAILED")
    with pytest.raises(SignatureError):
        verify_signature([NEW], signed(), tampered_body, now=NOW)
    with pytest.raises(SignatureError):
        verify_signature([NEW], signed(webhook_id="evt_2", sign_id="evt_1"), BODY, now=NOW)
    headers = signed()
    headers["webhook-timestamp"] = str(int(NOW.timestamp()) + 1)
    with pytest.raises(SignatureError):
        verify_signature([NEW], headers, BODY, now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header_is_named(missing):
    headers = signed()
    del headers[missing]
    with pytest.raises(SignatureError, match=f"missing {missing} header"):
        verify_signature([NEW], headers, BODY, now=NOW)
    with pytest.raises(SignatureError, match="missing"):
        verify_signature([NEW], {}, BODY, now=NOW)


def test_header_names_are_case_insensitive():
    headers = {k.upper(): v for k, v in signed().items()}
    assert verify_signature([NEW], headers, BODY, now=NOW) == "evt_1"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-timestamp", "abc"),
        ("webhook-timestamp", "1.763456730e9"),  # the reference would accept and floor this
        ("webhook-timestamp", "-1"),
        ("webhook-timestamp", "1763456730.5"),
        ("webhook-signature", "v1"),
        ("webhook-signature", "v1,"),
        ("webhook-signature", "v1,not base64!"),
        ("webhook-signature", "v1,a,b"),  # the reference raises ValueError on this one
        ("webhook-signature", "nonsense"),
        ("webhook-id", "x" * 300),
        ("webhook-id", "evt\x00"),
    ],
)
def test_malformed_headers_are_signature_errors_not_crashes(header, value):
    headers = signed()
    headers[header] = value
    with pytest.raises(SignatureError):
        verify_signature([NEW], headers, BODY, now=NOW)


def test_a_non_utf8_body_is_rejected_as_unsigned():
    with pytest.raises(SignatureError):
        verify_signature([NEW], signed(), b"\xff\xfe" + BODY, now=NOW)


def test_no_secret_means_not_configured():
    with pytest.raises(NotConfigured):
        verify_signature([], signed(), BODY, now=NOW)


# -- payload ---------------------------------------------------------------------------------------


def test_full_payload_parses_into_a_status_update_of_the_routes_carrier():
    cb = parse_payload(BODY)
    for carrier in ("primary", "secondary"):
        update = cb.to_update(carrier)
        assert (update.carrier, update.tracking_id, update.carrier_status, update.status_code) == (
            carrier,
            "PRIMARY-TRACK-00000001",
            "DELIVERED",
            "0",
        )
        assert update.event_at == datetime(2025, 11, 18, 9, 5, 30, tzinfo=UTC)
    for carrier in ("", "tertiary"):
        with pytest.raises(ValueError, match="unknown carrier"):
            cb.to_update(carrier)


@pytest.mark.parametrize(
    ("code", "expected"), [("50001", "50001"), (50001, "50001"), (0, "0"), ("0", "0"), (21614.0, "21614"), (None, None)]
)
def test_status_code_is_a_string_or_a_number_normalised_to_a_string(code, expected):
    cb = parse_payload(json.dumps({**PAYLOAD, "status": "FAILED", "statusCode": code}).encode())
    assert cb.status_code == expected
    assert cb.to_update("primary").status_code == expected


def test_minimal_payload_and_nulls():
    cb = parse_payload(b'{"trackingId": "T-1", "status": "SENT", "deliveryTimestamp": null, "statusCode": null}')
    assert (cb.tracking_id, cb.status, cb.delivery_timestamp, cb.status_code) == ("T-1", "SENT", None, None)
    naive = parse_payload(b'{"trackingId": "T-1", "status": "DELIVERED", "deliveryTimestamp": "2025-11-18T09:05:30"}')
    assert naive.delivery_timestamp == datetime(2025, 11, 18, 9, 5, 30, tzinfo=UTC)


def test_phone_number_never_enters_the_model():
    cb = parse_payload(BODY)
    assert PHONE not in repr(cb)
    assert PHONE not in json.dumps(cb.model_dump(mode="json"))
    assert not hasattr(cb, "phoneNumber") and not hasattr(cb, "phone_number")


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"trackingId": "T-1",}', b"[" * 100_000, b"\xff\xfe{}"])
def test_malformed_json_is_400(body):
    with pytest.raises(PayloadError) as err:
        parse_payload(body)
    assert err.value.status_code == 400
    assert err.value.detail.startswith("malformed JSON body")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"trackingId": None}, "trackingId"),
        ({"trackingId": ""}, "trackingId"),
        ({"trackingId": "   "}, "trackingId"),
        ({"trackingId": 12345}, "trackingId"),
        ({"trackingId": [PHONE]}, "trackingId"),
        ({"trackingId": "T" * 129}, "trackingId"),
        ({"status": None}, "status"),
        ({"status": "delivered"}, "status"),
        ({"status": "READ"}, "status"),
        ({"status": PHONE}, "status"),
        ({"deliveryTimestamp": "yesterday"}, "deliveryTimestamp"),
        ({"deliveryTimestamp": PHONE}, "deliveryTimestamp"),
        ({"deliveryTimestamp": 1763456730}, "deliveryTimestamp"),
        ({"statusCode": True}, "statusCode"),
        ({"statusCode": 500.5}, "statusCode"),
        ({"statusCode": [50001]}, "statusCode"),
        ({"statusCode": 10**70}, "statusCode"),
        ({"statusCode": {"code": PHONE}}, "statusCode"),
        ({"messageId": 7}, "messageId"),
    ],
)
def test_invalid_fields_are_422_naming_the_field_never_the_phone(change, field):
    payload = {k: v for k, v in {**PAYLOAD, **change}.items() if v is not None}
    with pytest.raises(PayloadError) as err:
        parse_payload(json.dumps(payload).encode())
    exc = err.value
    assert exc.status_code == 422
    assert exc.fields == [field]
    assert f"{field}:" in exc.detail
    rendered = json.dumps(exc.body()) + str(exc) + repr(exc)
    assert PHONE not in rendered and "1763456730" not in rendered and "yesterday" not in rendered
    assert exc.__cause__ is None and exc.__suppress_context__  # no ValidationError (with inputs) chained


def test_a_body_that_is_not_an_object_is_422():
    for body in (b"[]", b'"DELIVERED"', b"42", b"null"):
        with pytest.raises(PayloadError) as err:
            parse_payload(body)
        assert (err.value.status_code, err.value.fields) == (422, ["body"])


def test_several_problems_are_all_named():
    with pytest.raises(PayloadError) as err:
        parse_payload(json.dumps({"phoneNumber": PHONE, "status": "NOPE"}).encode())
    assert sorted(err.value.fields) == ["status", "trackingId"]
    assert PHONE not in json.dumps(err.value.body())


# -- secrets ---------------------------------------------------------------------------------------


def fake_connections(**conns):
    from airflow.sdk.exceptions import AirflowNotFoundException

    def get(conn_id):
        if conn_id not in conns:
            raise AirflowNotFoundException(f"The conn_id `{conn_id}` isn't defined")
        password, extra = conns[conn_id]
        return SimpleNamespace(password=password, extra_dejson=extra)

    return get


def test_secrets_from_the_webhook_connection_password_and_rotation_extra():
    get = fake_connections(
        sms_carrier_webhook=(NEW, {"secrets": [OLD, NEW]}), sms_carrier=(None, {"webhook_secret": OTHER})
    )
    assert secrets_from_connections(get) == (NEW, OLD)
    get = fake_connections(sms_carrier_webhook=(None, {"secrets": OLD}))
    assert secrets_from_connections(get) == (OLD,)


def test_each_carrier_has_its_own_secrets_and_never_the_others():
    get = fake_connections(
        sms_carrier_webhook=(NEW, {"secrets": [OLD]}),
        sms_carrier_secondary_webhook=(SECONDARY, {}),
        sms_carrier=("api-key", {"webhook_secret": OTHER}),
        sms_carrier_secondary=("api-key-2", {"webhook_secret": OTHER}),
    )
    assert secrets_from_connections(get, "primary") == (NEW, OLD)
    assert secrets_from_connections(get) == (NEW, OLD)  # the primary by default (existing contract)
    assert secrets_from_connections(get, "secondary") == (SECONDARY,)
    # the secondary falls back to its own API connection, never to the primary's connections
    only_primary = fake_connections(sms_carrier_webhook=(NEW, {}), sms_carrier=("api-key", {"webhook_secret": OLD}))
    assert secrets_from_connections(only_primary, "secondary") == ()
    fallback = fake_connections(
        sms_carrier_webhook=(NEW, {}), sms_carrier_secondary=("k", {"webhook_secrets": [OTHER]})
    )
    assert secrets_from_connections(fallback, "secondary") == (OTHER,)


def test_the_carrier_connection_is_only_a_fallback():
    get = fake_connections(sms_carrier=("api-key", {"webhook_secret": NEW, "webhook_secrets": [OLD]}))
    assert secrets_from_connections(get) == (NEW, OLD)
    # the webhook connection exists but holds nothing usable: no fallback, nothing accepted
    get = fake_connections(sms_carrier_webhook=("", {}), sms_carrier=(None, {"webhook_secret": NEW}))
    assert secrets_from_connections(get) == ()
    assert secrets_from_connections(fake_connections()) == ()
    assert secrets_from_connections(fake_connections(sms_carrier=("api-key", {}))) == ()


@pytest.mark.parametrize(
    ("conns", "expected"),
    [
        ({"SMS_CARRIER_WEBHOOK": {"password": NEW, "extra": {"secrets": [OLD]}}}, {"primary": (NEW, OLD)}),
        (
            {"SMS_CARRIER": {"password": "api-key-123", "extra": {"webhook_secrets": [OLD, NEW]}}},
            {"primary": (OLD, NEW)},
        ),
        ({"SMS_CARRIER_SECONDARY_WEBHOOK": {"password": SECONDARY}}, {"secondary": (SECONDARY,)}),
        ({"SMS_CARRIER_SECONDARY": {"password": "k", "extra": {"webhook_secret": OLD}}}, {"secondary": (OLD,)}),
        ({}, {}),
    ],
)
def test_secrets_resolved_through_airflow_connections(monkeypatch, conns, expected):
    """Real resolution (premium.connections.get_connection, AIRFLOW_CONN_* env vars, Airflow's NotFound)."""
    from premium.connections import get_connection

    for name in ("SMS_CARRIER_WEBHOOK", "SMS_CARRIER", "SMS_CARRIER_SECONDARY_WEBHOOK", "SMS_CARRIER_SECONDARY"):
        monkeypatch.delenv(f"AIRFLOW_CONN_{name}", raising=False)
    for name, conn in conns.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", json.dumps({"conn_type": "generic", **conn}))
    for carrier in ("primary", "secondary"):
        assert secrets_from_connections(get_connection, carrier) == expected.get(carrier, ())


def test_malformed_secrets_are_skipped_without_logging_them(caplog):
    bad = ["not-a-secret", "whsec_", "whsec_***not-base64***", 42, None, ""]
    assert usable_secrets([*bad, NEW], "connection x") == (NEW,)
    assert "not-a-secret" not in caplog.text and "not-base64" not in caplog.text
    assert "connection x" in caplog.text


def test_secret_store_caches_and_refreshes():
    clock = [0.0]
    calls = []

    def loader():
        calls.append(clock[0])
        return (NEW,) if clock[0] < 100 else (NEW, OLD)

    store = SecretStore(loader, ttl=60, retry=5, clock=lambda: clock[0])
    assert store.get() == (NEW,)
    clock[0] = 59.0
    assert store.get() == (NEW,)
    assert len(calls) == 1
    clock[0] = 120.0
    assert store.get() == (NEW, OLD)
    assert len(calls) == 2


def test_secret_store_retries_soon_after_nothing_or_a_failure():
    clock = [0.0]
    answers: list = [RuntimeError("vault down"), (), (NEW,), RuntimeError("vault down")]

    def loader():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    store = SecretStore(loader, ttl=60, retry=5, clock=lambda: clock[0])
    with pytest.raises(SecretsUnavailable):  # a failure, and nothing known yet
        store.get()
    clock[0] = 2.0
    with pytest.raises(SecretsUnavailable):  # not asked again within 5 s
        store.get()
    clock[0] = 6.0
    assert store.get() == ()  # not configured: asked again after 5 s, not 60
    clock[0] = 10.0
    assert store.get() == ()
    clock[0] = 12.0
    assert store.get() == (NEW,)
    clock[0] = 80.0
    assert store.get() == (NEW,)  # a failed refresh keeps serving the last secrets
    assert answers == []


def test_carrier_secrets_are_separate_and_a_shared_secret_is_accepted_for_neither(caplog):
    configured = {"primary": (NEW, OLD), "secondary": (SECONDARY, OLD)}
    secrets = CarrierSecrets(lambda carrier: configured[carrier])
    assert secrets.get("primary") == (NEW,)
    assert secrets.get("secondary") == (SECONDARY,)
    assert "also configured for another carrier" in caplog.text and "sms_carrier_secondary_webhook" in caplog.text
    assert OLD not in caplog.text
    errors = len([r for r in caplog.records if r.levelname == "ERROR"])
    secrets.get("primary")
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == errors  # said once, not per request


def test_carrier_secrets_one_carriers_lookup_failing_does_not_stop_the_other():
    def loader(carrier):
        if carrier == "secondary":
            raise RuntimeError("vault down")
        return (NEW,)

    secrets = CarrierSecrets(loader)
    assert secrets.get("primary") == (NEW,)
    with pytest.raises(SecretsUnavailable):
        secrets.get("secondary")


# -- the route's handler, with fakes (no database) ------------------------------------------------


@pytest.fixture
def handler(monkeypatch):
    """webhook_app.handle with secrets primary (NEW, OLD), secondary (SECONDARY), and a recorder."""
    recorded = []
    configured = {"primary": (NEW, OLD), "secondary": (SECONDARY,)}
    monkeypatch.setattr(webhook_app, "SECRETS", CarrierSecrets(lambda carrier: configured[carrier]))
    monkeypatch.setattr(webhook_app, "SETTINGS", SimpleNamespace(get=lambda: "settings"))
    webhook_app.AUDIT.drain()  # events another test's app left in the process-wide buffer
    audited: list = []
    monkeypatch.setattr(webhook_app, "_flush_audit", lambda: audited.extend(webhook_app.AUDIT.drain()))

    def record(webhook_id, update, settings):
        recorded.append((webhook_id, update))
        return recorded_outcome[0]

    recorded_outcome = ["applied"]
    monkeypatch.setattr(webhook_app, "record", record)
    return SimpleNamespace(recorded=recorded, outcome=recorded_outcome, audited=audited)


def now_signed(body: bytes = BODY, **kw) -> dict[str, str]:
    return signed(body, at=datetime.now(UTC), **kw)


def test_handler_answers(handler):
    assert webhook_app.handle("primary", now_signed(), BODY) == (200, {"status": "processed"})
    handler.outcome[0] = "unknown_tracking_id"
    assert webhook_app.handle("primary", now_signed(), BODY) == (
        202,
        {"status": "ignored", "reason": "unknown trackingId"},
    )
    for outcome in ("replayed", "no_change"):
        handler.outcome[0] = outcome
        assert webhook_app.handle("secondary", now_signed(secret=SECONDARY), BODY) == (200, {"status": "processed"})
    assert [u.carrier for _, u in handler.recorded] == ["primary", "primary", "secondary", "secondary"]


def test_handler_accepts_only_the_routes_carriers_secrets(handler):
    assert webhook_app.handle("secondary", now_signed(secret=NEW), BODY)[0] == 401
    assert webhook_app.handle("secondary", now_signed(secret=OLD), BODY)[0] == 401
    assert webhook_app.handle("primary", now_signed(secret=SECONDARY), BODY)[0] == 401
    assert handler.recorded == []


def test_handler_verifies_before_parsing_and_records_nothing_on_errors(handler):
    garbage = b"{not json"
    assert webhook_app.handle("primary", now_signed(garbage, secret=OTHER), garbage)[0] == 401
    assert webhook_app.handle("primary", {}, garbage)[0] == 401
    assert webhook_app.handle("primary", now_signed(garbage), garbage)[0] == 400
    bad = json.dumps({"phoneNumber": PHONE, "status": "SENT"}).encode()
    status, body = webhook_app.handle("primary", now_signed(bad), bad)
    assert status == 422 and "trackingId" in body["detail"] and PHONE not in json.dumps(body)
    assert handler.recorded == []


def test_no_secret_configured_is_503_and_nothing_is_processed(handler, monkeypatch, caplog):
    configured = {"primary": (NEW,), "secondary": ()}
    monkeypatch.setattr(webhook_app, "SECRETS", CarrierSecrets(lambda carrier: configured[carrier]))
    signed_secondary = now_signed(secret=SECONDARY)
    assert webhook_app.handle("secondary", signed_secondary, BODY) == (503, {"detail": "webhook secret not configured"})
    assert webhook_app.handle("secondary", {}, b"junk") == (503, {"detail": "webhook secret not configured"})
    assert "connection sms_carrier_secondary_webhook" in caplog.text
    assert handler.recorded == []
    assert webhook_app.handle("primary", now_signed(), BODY) == (200, {"status": "processed"})


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_route_in_process_per_carrier_size_cap_and_no_auth_needed(handler):
    from fastapi.testclient import TestClient

    primary, secondary = webhook_app.carrier_route("primary"), webhook_app.carrier_route("secondary")
    with TestClient(webhook_app.app) as client:
        ok = client.post(primary, content=BODY, headers=now_signed())
        assert (ok.status_code, ok.json()) == (200, {"status": "processed"})
        ok = client.post(secondary, content=BODY, headers=now_signed(secret=SECONDARY))
        assert (ok.status_code, ok.json()) == (200, {"status": "processed"})
        assert client.post(secondary, content=BODY, headers=now_signed()).status_code == 401  # the primary's secret
        big = b" " * (webhook_app.MAX_BODY_BYTES + 1)
        assert client.post(primary, content=big, headers=now_signed(big)).status_code == 413
        assert client.post(primary, content=BODY).status_code == 401
    assert [u.carrier for _, u in handler.recorded] == ["primary", "secondary"]
    endpoints = [json.loads(data)["endpoint"] for _, data, _ in handler.audited]
    assert endpoints[:2] == [
        "/premium/api/webhooks/sms-delivery/primary",
        "/premium/api/webhooks/sms-delivery/secondary",
    ]
    assert [json.loads(data)["carrier"] for _, data, _ in handler.audited][:2] == ["primary", "secondary"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
@pytest.mark.parametrize("path", ["/api/webhooks/sms-delivery/tertiary", "/api/webhooks/sms-delivery/PRIMARY"])
def test_unknown_carrier_route_is_404_naming_the_routes(handler, path):
    from fastapi.testclient import TestClient

    with TestClient(webhook_app.app) as client:
        resp = client.post(path, content=BODY, headers=now_signed())
    assert resp.status_code == 404
    detail = resp.json()["detail"]
    assert detail.startswith("unknown carrier") and "/premium/api/webhooks/sms-delivery/primary" in detail
    assert path.rsplit("/", 1)[1] not in detail  # the path is not echoed
    assert handler.recorded == []


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_the_route_without_a_carrier_is_gone(handler, caplog):
    from fastapi.testclient import TestClient

    with TestClient(webhook_app.app) as client:
        resp = client.post(webhook_app.ROUTE, content=BODY, headers=now_signed())
    assert resp.status_code == 410
    detail = resp.json()["detail"]
    assert "/premium/api/webhooks/sms-delivery/primary" in detail
    assert "/premium/api/webhooks/sms-delivery/secondary" in detail
    assert handler.recorded == []
    assert "retired route" in caplog.text and PHONE not in caplog.text
    (event,) = [json.loads(data) for _, data, _ in handler.audited]
    assert (event["endpoint"], event["status"]) == ("/premium/api/webhooks/sms-delivery", "410")


def test_database_trouble_is_503_and_retryable(handler, monkeypatch):
    import psycopg
    from psycopg_pool import PoolTimeout

    for exc in (psycopg.OperationalError("connection refused"), PoolTimeout("no connection within 10s")):

        def broken(webhook_id, update, settings, exc=exc):
            raise exc

        monkeypatch.setattr(webhook_app, "record", broken)
        assert webhook_app.handle("primary", now_signed(), BODY) == (503, {"detail": "temporarily unavailable"})


class FakePool:
    """Stands in for the psycopg_pool pool: each connection() raises the next exception, if any."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.lent: list[float | None] = []

    @contextmanager
    def connection(self, timeout: float | None = None):
        self.lent.append(timeout)
        if self.failures:
            raise self.failures.pop(0)
        yield "conn"


@pytest.fixture
def fake_pool(monkeypatch):
    """webhook_app.record with a fake pool and a fake record_webhook (no database)."""
    from premium.notifications import state

    applied = []

    def record_webhook(conn, webhook_id, update, settings):
        applied.append((conn, webhook_id, update.carrier))
        return "applied", []

    monkeypatch.setattr(state, "record_webhook", record_webhook)
    holder = SimpleNamespace(pool=FakePool(), applied=applied)
    monkeypatch.setattr(webhook_app, "_pool", lambda: holder.pool)
    return holder


def test_record_retries_once_on_a_lost_connection_not_on_a_pool_timeout(fake_pool):
    import psycopg
    from psycopg_pool import PoolTimeout

    update = parse_payload(BODY).to_update("secondary")
    fake_pool.pool = FakePool(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert webhook_app.record("evt_1", update, "settings") == "applied"
    assert fake_pool.applied == [("conn", "evt_1", "secondary")]
    assert fake_pool.pool.lent == [webhook_app.DB_POOL_TIMEOUT_S] * 2

    fake_pool.pool = FakePool(psycopg.OperationalError("lost"), psycopg.OperationalError("lost again"))
    with pytest.raises(psycopg.OperationalError):
        webhook_app.record("evt_2", update, "settings")
    fake_pool.pool = FakePool(PoolTimeout("no connection within 10s"))
    with pytest.raises(PoolTimeout):
        webhook_app.record("evt_3", update, "settings")
    assert len(fake_pool.pool.lent) == 1  # a pool timeout is not retried: the carrier retries the 503
    assert len(fake_pool.applied) == 1


def test_the_app_uses_the_projects_pool(monkeypatch):
    """premium.db.pool (psycopg_pool) with the premium_db connection, under its own application name."""
    from premium import db

    seen = []
    monkeypatch.setattr(db, "pool", lambda conninfo: seen.append(conninfo) or "the-pool")
    monkeypatch.setattr(
        "premium.connections.premium_db_kwargs", lambda: {"host": "db.example", "dbname": "premium_app"}
    )
    webhook_app.CONNINFO.clear()
    try:
        assert webhook_app._pool() == "the-pool"
    finally:
        webhook_app.CONNINFO.clear()
        webhook_app.POOLS._lent.clear()  # "the-pool" is no pool to close
    assert seen == [
        {"host": "db.example", "dbname": "premium_app", "application_name": "premium-webhooks", "connect_timeout": 5}
    ]
    assert not hasattr(webhook_app, "ConnectionPool")  # the hand-written pool is gone
