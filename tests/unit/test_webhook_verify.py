"""Delivery-callback verification, parsing and secrets (no database, no server).

Signatures are made by the reference implementation, ``standardwebhooks.Webhook(secret).sign``.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from standardwebhooks import Webhook

from premium.webhooks import app as webhook_app
from premium.webhooks.verify import (
    TOLERANCE_S,
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


def test_full_payload_parses_into_a_status_update():
    cb = parse_payload(BODY)
    update = cb.to_update()
    assert (update.carrier, update.tracking_id, update.carrier_status, update.status_code) == (
        "",
        "PRIMARY-TRACK-00000001",
        "DELIVERED",
        "0",
    )
    assert update.event_at == datetime(2025, 11, 18, 9, 5, 30, tzinfo=UTC)


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
        ({"statusCode": 0}, "statusCode"),
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
        ({"SMS_CARRIER_WEBHOOK": {"password": NEW, "extra": {"secrets": [OLD]}}}, (NEW, OLD)),
        ({"SMS_CARRIER": {"password": "api-key-123", "extra": {"webhook_secrets": [OLD, NEW]}}}, (OLD, NEW)),
        ({}, ()),
    ],
)
def test_secrets_resolved_through_airflow_connections(monkeypatch, conns, expected):
    """Real resolution (premium.connections.get_connection, AIRFLOW_CONN_* env vars, Airflow's NotFound)."""
    from premium.connections import get_connection

    for name in ("SMS_CARRIER_WEBHOOK", "SMS_CARRIER"):
        monkeypatch.delenv(f"AIRFLOW_CONN_{name}", raising=False)
    for name, conn in conns.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", json.dumps({"conn_type": "generic", **conn}))
    assert secrets_from_connections(get_connection) == expected


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


# -- the route's handler, with fakes (no database) ------------------------------------------------


@pytest.fixture
def handler(monkeypatch):
    """webhook_app.handle with secrets (NEW, OLD) and a recorder that must not be reached unless set."""
    recorded = []
    monkeypatch.setattr(webhook_app, "SECRETS", SecretStore(lambda: (NEW, OLD)))
    monkeypatch.setattr(webhook_app, "SETTINGS", SimpleNamespace(get=lambda: "settings"))

    def record(webhook_id, update, settings):
        recorded.append((webhook_id, update))
        return recorded_outcome[0]

    recorded_outcome = ["applied"]
    monkeypatch.setattr(webhook_app, "record", record)
    return SimpleNamespace(recorded=recorded, outcome=recorded_outcome)


def now_signed(body: bytes = BODY, **kw) -> dict[str, str]:
    return signed(body, at=datetime.now(UTC), **kw)


def test_handler_answers(handler):
    assert webhook_app.handle(now_signed(), BODY) == (200, {"status": "processed"})
    handler.outcome[0] = "unknown_tracking_id"
    assert webhook_app.handle(now_signed(), BODY) == (202, {"status": "ignored", "reason": "unknown trackingId"})
    for outcome in ("replayed", "no_change"):
        handler.outcome[0] = outcome
        assert webhook_app.handle(now_signed(), BODY) == (200, {"status": "processed"})
    assert [u.carrier for _, u in handler.recorded] == [""] * 4


def test_handler_verifies_before_parsing_and_records_nothing_on_errors(handler):
    garbage = b"{not json"
    assert webhook_app.handle(now_signed(garbage, secret=OTHER), garbage)[0] == 401
    assert webhook_app.handle({}, garbage)[0] == 401
    assert webhook_app.handle(now_signed(garbage), garbage)[0] == 400
    bad = json.dumps({"phoneNumber": PHONE, "status": "SENT"}).encode()
    status, body = webhook_app.handle(now_signed(bad), bad)
    assert status == 422 and "trackingId" in body["detail"] and PHONE not in json.dumps(body)
    assert handler.recorded == []


def test_no_secret_configured_is_503_and_nothing_is_processed(handler, monkeypatch):
    monkeypatch.setattr(webhook_app, "SECRETS", SecretStore(lambda: ()))
    assert webhook_app.handle(now_signed(), BODY) == (503, {"detail": "webhook secret not configured"})
    assert webhook_app.handle({}, b"junk") == (503, {"detail": "webhook secret not configured"})
    assert handler.recorded == []


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_route_in_process_size_cap_and_no_auth_needed(handler):
    from fastapi.testclient import TestClient

    with TestClient(webhook_app.app) as client:
        ok = client.post(webhook_app.ROUTE, content=BODY, headers=now_signed())
        assert (ok.status_code, ok.json()) == (200, {"status": "processed"})
        big = b" " * (webhook_app.MAX_BODY_BYTES + 1)
        assert client.post(webhook_app.ROUTE, content=big, headers=now_signed(big)).status_code == 413
        assert client.post(webhook_app.ROUTE, content=BODY).status_code == 401


def test_database_trouble_is_503_and_retryable(handler, monkeypatch):
    import psycopg

    def broken(webhook_id, update, settings):
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(webhook_app, "record", broken)
    assert webhook_app.handle(now_signed(), BODY) == (503, {"detail": "temporarily unavailable"})


class FakeConn:
    def __init__(self):
        from psycopg.pq import TransactionStatus

        self.closed = False
        self.info = SimpleNamespace(transaction_status=TransactionStatus.IDLE)

    def close(self):
        self.closed = True


def test_connection_pool_reuses_clean_connections_and_drops_failed_ones(monkeypatch):
    import psycopg

    made: list[FakeConn] = []

    def connect(**kwargs):
        assert kwargs["autocommit"] is True and kwargs["application_name"] == "premium-webhooks"
        made.append(FakeConn())
        return made[-1]

    monkeypatch.setattr(psycopg, "connect", connect)
    pool = webhook_app.ConnectionPool(lambda: {"host": "db"}, size=1, timeout=0.05)
    with pool.connection() as first:
        with pytest.raises(webhook_app.PoolTimeout), pool.connection():
            pass  # the only slot is taken
    with pool.connection() as second:
        assert second is first  # reused
    with pytest.raises(RuntimeError), pool.connection() as third:
        assert third is first
        raise RuntimeError("boom")
    assert first.closed  # dropped after an error
    with pool.connection() as fourth:
        assert fourth is not first
    pool.close()
    assert len(made) == 2 and all(c.closed for c in made)
