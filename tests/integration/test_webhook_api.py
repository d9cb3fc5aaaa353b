"""Delivery callbacks through the real Airflow API server (``airflow api-server``) and PostgreSQL.

The plugin (plugins/premium_webhooks_plugin.py) mounts the webhook app at /premium; each carrier's
signed callbacks, on its own route, change its own messages' delivery_status through
premium.notifications.state.record_webhook.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from standardwebhooks import Webhook

from premium.notifications.outbox import outbox_aad
from premium.notifications.state import CARRIER_STATUSES, StatusUpdate, apply_updates
from premium.settings import SmsSettings
from premium.simulators import carrier_model as cm
from tests.support import env
from tests.support.apiserver import ApiServer
from tests.support.bank import KEYRING
from tests.support.carrier import carrier
from tests.support.customers import add_customer

pytestmark = pytest.mark.integration

ROUTE = "/premium/api/webhooks/sms-delivery"  # retired: 410
PRIMARY_ROUTE = ROUTE + "/primary"
SECONDARY_ROUTE = ROUTE + "/secondary"
ROUTES = {"primary": PRIMARY_ROUTE, "secondary": SECONDARY_ROUTE}
NEW = env.TEST_WEBHOOK_SECRET
SECONDARY = env.TEST_SECONDARY_WEBHOOK_SECRET
OLD = "whsec_" + base64.b64encode(b"premium-old-webhook-key!").decode()  # still accepted (rotation)
OTHER = "whsec_" + base64.b64encode(b"somebody-else-webhook-key").decode()
PHONE = "+972521234567"
RANK = {ours: rank for ours, rank in CARRIER_STATUSES.values()}
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def api(app_db):
    webhook_conn = {"conn_type": "generic", "password": NEW, "extra": {"secrets": [OLD]}}
    secondary_conn = {"conn_type": "generic", "password": SECONDARY}
    connections = {
        "sms_carrier_webhook": json.dumps(webhook_conn),
        "sms_carrier_secondary_webhook": json.dumps(secondary_conn),
    }
    with ApiServer(connections=connections) as server:
        yield server


@pytest.fixture(scope="module")
def client(api):
    with httpx.Client(base_url=api.base_url, trust_env=False, timeout=30.0) as c:
        yield c


# -- helpers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    message_id: str
    tracking_id: str


def make_messages(
    conn: psycopg.Connection, n: int, tracking_ids: list[str] | None = None, carrier: str = "primary"
) -> list[Msg]:
    """``n`` messages submitted to ``carrier`` (customer, notification, message, delivery_status Queued/rank 10)."""
    batch = next(_numbers)
    batch_id = f"BATCH-20251118-{batch:03d}"
    out: list[Msg] = []
    with conn.transaction():
        conn.execute(
            "INSERT INTO sms_batches (batch_id, campaign_id, check_date, seq, carrier, status, messages, "
            "correlation_id, submitted_at) VALUES (%s, 'CAMP-WH', '2025-11-18', %s, %s, 'ACCEPTED', %s, "
            "'corr-wh', now())",
            (batch_id, batch, carrier, n),
        )
        for i in range(n):
            number = batch * 10_000 + i
            customer_id = add_customer(conn, number)
            message_id = f"MSG-WH-{number}"
            tracking_id = tracking_ids[i] if tracking_ids else f"WH-TRACK-{number:08d}"
            key_id, content_enc = KEYRING.encrypt("text", outbox_aad("CAMP-WH", customer_id, "content"))
            _, phone_enc = KEYRING.encrypt(f"+97252{number:07d}", outbox_aad("CAMP-WH", customer_id, "phone_number"))
            (notification_id,) = conn.execute(
                "INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, attempts, "
                "current_message_id, language, template_id, encoding, segments, correlation_id, content_enc, "
                "phone_enc, pii_key_id) "
                "VALUES ('CAMP-WH', %s, '2025-11-18', 'QUEUED', 1, %s, 'he', 'balance_he', 'UCS2', 1, 'corr-wh', "
                "%s, %s, %s) RETURNING notification_id",
                (customer_id, message_id, content_enc, phone_enc, key_id),
            ).fetchone()
            conn.execute(
                "INSERT INTO sms_messages (message_id, notification_id, campaign_id, customer_id, attempt, batch_id, "
                "carrier, tracking_id, status, encoding, segments, correlation_id, submitted_at) "
                "VALUES (%s, %s, 'CAMP-WH', %s, 1, %s, %s, %s, 'QUEUED', 'UCS2', 1, 'corr-wh', now())",
                (message_id, notification_id, customer_id, batch_id, carrier, tracking_id),
            )
            conn.execute(
                "INSERT INTO delivery_status (message_id, notification_id, campaign_id, customer_id, carrier, "
                "tracking_id, status, status_rank, last_source, created_at) "
                "VALUES (%s, %s, 'CAMP-WH', %s, %s, %s, 'Queued', 10, 'submission', now())",
                (message_id, notification_id, customer_id, carrier, tracking_id),
            )
            out.append(Msg(message_id, tracking_id))
    return out


def payload(tracking_id: str, status: str = "DELIVERED", **extra) -> dict:
    body = {
        "trackingId": tracking_id,
        "messageId": "MSG-X",
        "status": status,
        "deliveryTimestamp": "2025-11-18T09:05:30Z" if status == "DELIVERED" else None,
        "phoneNumber": PHONE,
        "statusCode": "0" if status == "DELIVERED" else None,
    }
    body.update(extra)
    return body


def signed(
    body: dict | bytes, secret: str = NEW, webhook_id: str | None = None, at: datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    webhook_id = webhook_id or f"evt_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, raw.decode()),
    }
    return raw, headers


def post(client: httpx.Client, body: dict | bytes, route: str = PRIMARY_ROUTE, **kw) -> httpx.Response:
    raw, headers = signed(body, **kw)
    return client.post(route, content=raw, headers=headers)


def status_of(conn: psycopg.Connection, message_id: str) -> str:
    return conn.execute("SELECT status FROM delivery_status WHERE message_id = %s", (message_id,)).fetchone()[0]


def history(conn: psycopg.Connection, message_id: str) -> list[tuple[str, str, str]]:
    return conn.execute(
        "SELECT from_status, to_status, source FROM delivery_status_history WHERE message_id = %s ORDER BY id",
        (message_id,),
    ).fetchall()


def assert_monotonic(rows: list[tuple[str, str, str]], final: str) -> None:
    """Each change starts where the previous ended and ranks higher: no downgrade, ever."""
    current = "Queued"
    for from_status, to_status, _ in rows:
        assert from_status == current and RANK[to_status] > RANK[from_status], rows
        current = to_status
    assert current == final, rows


def count(conn: psycopg.Connection, sql: str, *args) -> int:
    return conn.execute(sql, args).fetchone()[0]


# -- answers ---------------------------------------------------------------------------------------


def test_valid_callback_is_processed(api, client, db):
    (m,) = make_messages(db, 1)
    resp = post(client, payload(m.tracking_id), webhook_id="evt_valid_1")
    assert (resp.status_code, resp.json()) == (200, {"status": "processed"})
    assert status_of(db, m.message_id) == "Delivered"
    assert history(db, m.message_id) == [("Queued", "Delivered", "webhook")]
    row = db.execute(
        "SELECT m.status, n.status, d.status_code, d.delivered_at, d.last_source FROM sms_messages m "
        "JOIN sms_notifications n USING (notification_id) JOIN delivery_status d USING (message_id) "
        "WHERE m.message_id = %s",
        (m.message_id,),
    ).fetchone()
    assert row == ("DELIVERED", "DELIVERED", "0", datetime(2025, 11, 18, 9, 5, 30, tzinfo=UTC), "webhook")
    events = db.execute("SELECT carrier, webhook_id, tracking_id, status, outcome FROM webhook_events").fetchall()
    assert events == [("primary", "evt_valid_1", m.tracking_id, "DELIVERED", "applied")]


def test_rotated_old_secret_is_accepted_and_no_airflow_auth_is_needed(api, client, db):
    (m,) = make_messages(db, 1)
    resp = post(client, payload(m.tracking_id, "SENT"), secret=OLD)  # no Airflow token or cookie either
    assert (resp.status_code, resp.json()) == (200, {"status": "processed"})
    assert status_of(db, m.message_id) == "Sent"
    assert history(db, m.message_id) == [("Queued", "Sent", "webhook")]


def test_failed_status_decides_the_retry_with_the_sms_settings(api, client, db):
    (m,) = make_messages(db, 1)
    resp = post(client, payload(m.tracking_id, "FAILED", statusCode="21614"))
    assert resp.status_code == 200
    row = db.execute(
        "SELECT d.status, d.retry_decision, n.status, n.current_message_id FROM delivery_status d "
        "JOIN sms_notifications n USING (notification_id) WHERE d.message_id = %s",
        (m.message_id,),
    ).fetchone()
    assert row == ("Failed", "retry", "PENDING", None)


@pytest.mark.parametrize("case", ["wrong_secret", "stale", "future", "unsigned", "tampered"])
def test_bad_signatures_are_401_and_change_nothing(api, client, db, case):
    (m,) = make_messages(db, 1)
    body = payload(m.tracking_id)
    if case == "wrong_secret":
        resp = post(client, body, secret=OTHER)
    elif case == "stale":
        resp = post(client, body, at=datetime.now(UTC) - timedelta(minutes=6))
    elif case == "future":
        resp = post(client, body, at=datetime.now(UTC) + timedelta(minutes=6))
    elif case == "unsigned":
        resp = client.post(PRIMARY_ROUTE, json=body)
    else:
        raw, headers = signed(payload(m.tracking_id, "SENT"))
        resp = client.post(PRIMARY_ROUTE, content=raw.replace(b'"SENT"', b'"DELIVERED"'), headers=headers)
    assert resp.status_code == 401, resp.text
    assert set(resp.json()) == {"detail"}
    assert status_of(db, m.message_id) == "Queued"
    assert count(db, "SELECT count(*) FROM delivery_status_history") == 0
    assert count(db, "SELECT count(*) FROM webhook_events") == 0


def test_replayed_webhook_id_is_answered_200_without_a_second_effect(api, client, db):
    (m,) = make_messages(db, 1)
    first = post(client, payload(m.tracking_id), webhook_id="evt_replay")
    again = post(client, payload(m.tracking_id), webhook_id="evt_replay")  # re-signed, later timestamp
    other_body = post(client, payload(m.tracking_id, "FAILED", statusCode="21614"), webhook_id="evt_replay")
    assert [r.status_code for r in (first, again, other_body)] == [200, 200, 200]
    assert all(r.json() == {"status": "processed"} for r in (first, again, other_body))
    assert history(db, m.message_id) == [("Queued", "Delivered", "webhook")]
    assert count(db, "SELECT count(*) FROM webhook_events") == 1


def test_out_of_order_sent_after_delivered_changes_nothing(api, client, db):
    (m,) = make_messages(db, 1)
    assert post(client, payload(m.tracking_id, "DELIVERED")).status_code == 200
    late = post(client, payload(m.tracking_id, "SENT"))
    assert (late.status_code, late.json()) == (200, {"status": "processed"})
    assert status_of(db, m.message_id) == "Delivered"
    assert history(db, m.message_id) == [("Queued", "Delivered", "webhook")]
    outcomes = db.execute("SELECT status, outcome FROM webhook_events ORDER BY received_at").fetchall()
    assert outcomes == [("DELIVERED", "applied"), ("SENT", "no_change")]


def test_malformed_json_is_400(api, client, db):
    (m,) = make_messages(db, 1)
    resp = post(client, b'{"trackingId": "' + m.tracking_id.encode() + b'", "status": ')
    assert resp.status_code == 400
    assert resp.json()["detail"].startswith("malformed JSON body")
    assert count(db, "SELECT count(*) FROM webhook_events") == 0


def test_missing_tracking_id_is_422_naming_it_without_the_phone(api, client, db):
    body = payload("x")
    del body["trackingId"]
    resp = post(client, body)
    assert resp.status_code == 422
    detail = resp.json()
    assert "trackingId" in detail["detail"] and [e["field"] for e in detail["errors"]] == ["trackingId"]
    assert PHONE not in resp.text
    bad_status = post(client, payload("T-1", "delivered"))
    assert bad_status.status_code == 422 and "status" in bad_status.json()["detail"] and PHONE not in bad_status.text
    assert count(db, "SELECT count(*) FROM webhook_events") == 0


def test_unknown_tracking_id_is_recorded_and_answered_202(api, client, db):
    resp = post(client, payload("NOBODY-TRACK-00000001"), webhook_id="evt_unknown")
    assert (resp.status_code, resp.json()) == (202, {"status": "ignored", "reason": "unknown trackingId"})
    events = db.execute("SELECT carrier, webhook_id, tracking_id, outcome FROM webhook_events").fetchall()
    assert events == [("primary", "evt_unknown", "NOBODY-TRACK-00000001", "unknown_tracking_id")]


def test_no_secret_configured_is_503_and_nothing_is_processed(app_db, db):
    """A second API server without any webhook connection (nor carrier connection): 503 on both
    carriers' routes, nothing recorded."""
    (m,) = make_messages(db, 1)
    (s,) = make_messages(db, 1, carrier="secondary")
    with ApiServer() as bare, httpx.Client(base_url=bare.base_url, trust_env=False, timeout=30.0) as c:
        responses = [
            post(c, payload(m.tracking_id)),
            c.post(PRIMARY_ROUTE, content=b"{not json"),
            post(c, payload(s.tracking_id), route=SECONDARY_ROUTE, secret=SECONDARY),
            c.post(SECONDARY_ROUTE, content=b"{not json"),
        ]
    for resp in responses:
        assert (resp.status_code, resp.json()) == (503, {"detail": "webhook secret not configured"})
    assert status_of(db, m.message_id) == status_of(db, s.message_id) == "Queued"
    assert count(db, "SELECT count(*) FROM webhook_events") == 0


# -- carriers --------------------------------------------------------------------------------------


def _row(conn: psycopg.Connection, message_id: str) -> tuple:
    return conn.execute(
        "SELECT d.status, d.status_code, d.last_source, m.status, n.status FROM delivery_status d "
        "JOIN sms_messages m USING (message_id) JOIN sms_notifications n ON n.notification_id = d.notification_id "
        "WHERE d.message_id = %s",
        (message_id,),
    ).fetchone()


def test_a_callback_changes_only_its_own_carriers_message(api, client, db):
    """Both carriers hold a message with the same tracking id: each route changes its carrier's only."""
    shared = "SHARED-TRACK-00000001"
    (p,) = make_messages(db, 1, tracking_ids=[shared], carrier="primary")
    (s,) = make_messages(db, 1, tracking_ids=[shared], carrier="secondary")
    resp = post(client, payload(shared, "DELIVERED"), route=PRIMARY_ROUTE, webhook_id="evt_shared_1")
    assert (resp.status_code, resp.json()) == (200, {"status": "processed"})
    assert _row(db, p.message_id) == ("Delivered", "0", "webhook", "DELIVERED", "DELIVERED")
    assert _row(db, s.message_id) == ("Queued", None, "submission", "QUEUED", "QUEUED")
    assert history(db, s.message_id) == []

    resp = post(client, payload(shared, "FAILED", statusCode="30003"), route=SECONDARY_ROUTE, secret=SECONDARY)
    assert resp.status_code == 200
    assert _row(db, s.message_id)[:2] == ("Failed", "30003")
    assert _row(db, p.message_id)[:2] == ("Delivered", "0")
    events = db.execute("SELECT carrier, tracking_id, outcome FROM webhook_events ORDER BY received_at").fetchall()
    assert events == [("primary", shared, "applied"), ("secondary", shared, "applied")]


def test_a_tracking_id_known_only_to_the_other_carrier_is_unknown(api, client, db):
    (s,) = make_messages(db, 1, carrier="secondary")
    resp = post(client, payload(s.tracking_id), route=PRIMARY_ROUTE)
    assert (resp.status_code, resp.json()) == (202, {"status": "ignored", "reason": "unknown trackingId"})
    assert status_of(db, s.message_id) == "Queued"
    assert db.execute("SELECT carrier, outcome FROM webhook_events").fetchall() == [("primary", "unknown_tracking_id")]


def test_a_callback_signed_with_the_other_carriers_secret_is_401(api, client, db):
    (p,) = make_messages(db, 1, carrier="primary")
    (s,) = make_messages(db, 1, carrier="secondary")
    for route, secret, m in (
        (SECONDARY_ROUTE, NEW, s),  # the primary's current secret on the secondary's route
        (SECONDARY_ROUTE, OLD, s),  # the primary's rotation secret
        (PRIMARY_ROUTE, SECONDARY, p),
    ):
        resp = post(client, payload(m.tracking_id), route=route, secret=secret)
        assert resp.status_code == 401, resp.text
        assert resp.json() == {"detail": "no matching webhook signature"}
    assert status_of(db, p.message_id) == status_of(db, s.message_id) == "Queued"
    assert count(db, "SELECT count(*) FROM delivery_status_history") == 0
    assert count(db, "SELECT count(*) FROM webhook_events") == 0
    ok = post(client, payload(s.tracking_id), route=SECONDARY_ROUTE, secret=SECONDARY)
    assert (ok.status_code, status_of(db, s.message_id)) == (200, "Delivered")


def test_a_numeric_status_code_is_applied_as_a_string(api, client, db):
    (m,) = make_messages(db, 1)
    body = json.dumps(payload(m.tracking_id, "FAILED", statusCode=50001)).encode()
    assert b'"statusCode": 50001' in body  # a JSON number, not a string
    resp = post(client, body)
    assert (resp.status_code, resp.json()) == (200, {"status": "processed"})
    row = db.execute(
        "SELECT d.status, d.status_code, d.retry_decision, m.status_code FROM delivery_status d "
        "JOIN sms_messages m USING (message_id) WHERE d.message_id = %s",
        (m.message_id,),
    ).fetchone()
    assert row[:2] == ("Failed", "50001") and row[3] == "50001"
    assert row[2] in ("retry", "exhausted")  # §3.6 decided on the code, as for a string


def test_an_unknown_carrier_route_is_404(api, client, db):
    (m,) = make_messages(db, 1)
    for name in ("tertiary", "Primary", "sms_carrier"):
        resp = post(client, payload(m.tracking_id), route=f"{ROUTE}/{name}")
        assert resp.status_code == 404, resp.text
        detail = resp.json()["detail"]
        assert detail.startswith("unknown carrier") and PRIMARY_ROUTE in detail and SECONDARY_ROUTE in detail
    assert status_of(db, m.message_id) == "Queued"
    assert count(db, "SELECT count(*) FROM webhook_events") == 0


def test_the_route_without_a_carrier_is_410_gone(api, client, db):
    (m,) = make_messages(db, 1)
    resp = post(client, payload(m.tracking_id), route=ROUTE, webhook_id="evt_legacy_1")
    assert resp.status_code == 410, resp.text
    detail = resp.json()["detail"]
    assert PRIMARY_ROUTE in detail and SECONDARY_ROUTE in detail
    assert PHONE not in resp.text
    assert status_of(db, m.message_id) == "Queued"
    assert count(db, "SELECT count(*) FROM webhook_events") == 0
    time.sleep(0.3)  # the log is written by another process
    log = api.log_text()
    assert "retired route /premium/api/webhooks/sms-delivery" in log and "evt_legacy_1" in log
    assert PHONE not in log


def test_webhook_ids_are_per_carrier_and_each_is_applied_once(api, client, db):
    """The two carriers may use the same webhook-id: each is applied once; a replay on either is not."""
    (p,) = make_messages(db, 1, carrier="primary")
    (s,) = make_messages(db, 1, carrier="secondary")
    first = post(client, payload(p.tracking_id), route=PRIMARY_ROUTE, webhook_id="evt_same")
    other = post(client, payload(s.tracking_id), route=SECONDARY_ROUTE, secret=SECONDARY, webhook_id="evt_same")
    replay_p = post(client, payload(p.tracking_id, "FAILED", statusCode="21614"), webhook_id="evt_same")
    replay_s = post(
        client,
        payload(s.tracking_id, "FAILED", statusCode="21614"),
        route=SECONDARY_ROUTE,
        secret=SECONDARY,
        webhook_id="evt_same",
    )
    assert [r.status_code for r in (first, other, replay_p, replay_s)] == [200] * 4
    assert history(db, p.message_id) == [("Queued", "Delivered", "webhook")]
    assert history(db, s.message_id) == [("Queued", "Delivered", "webhook")]
    events = db.execute("SELECT carrier, webhook_id, outcome FROM webhook_events ORDER BY carrier").fetchall()
    assert events == [("primary", "evt_same", "applied"), ("secondary", "evt_same", "applied")]


# -- concurrency -----------------------------------------------------------------------------------


async def _post_concurrently(base_url: str, requests: list[tuple[bytes, dict[str, str]]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=60.0, limits=limits) as c:
        return await asyncio.gather(*(c.post(PRIMARY_ROUTE, content=raw, headers=h) for raw, h in requests))


def test_200_concurrent_callbacks_nothing_lost_nothing_counted_twice(api, db):
    msgs = make_messages(db, 200)
    requests = [signed(payload(m.tracking_id), webhook_id=f"evt_conc_{i}") for i, m in enumerate(msgs)]
    # 50 of them delivered twice at the same moment (a carrier retry racing its first attempt)
    requests += [signed(payload(m.tracking_id), webhook_id=f"evt_conc_{i}") for i, m in enumerate(msgs[:50])]
    started = time.monotonic()
    responses = asyncio.run(_post_concurrently(api.base_url, requests))
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * 250, [r.text for r in responses if r.status_code != 200]
    assert count(db, "SELECT count(*) FROM delivery_status_history") == 200
    assert count(db, "SELECT count(DISTINCT message_id) FROM delivery_status_history") == 200
    assert count(db, "SELECT count(*) FROM delivery_status WHERE status = 'Delivered'") == 200
    assert count(db, "SELECT count(*) FROM webhook_events WHERE outcome = 'applied'") == 200
    assert elapsed < 30, elapsed


def test_webhook_racing_a_poll_never_downgrades(api, client, db, app_db):
    settings = SmsSettings()
    msgs = make_messages(db, 20)
    with psycopg.connect(**app_db, autocommit=True) as poll_conn, ThreadPoolExecutor(2) as pool:
        for i, m in enumerate(msgs):
            barrier = threading.Barrier(2)
            raw, headers = signed(payload(m.tracking_id, "DELIVERED"))

            def poll(m=m, barrier=barrier, delay=(i % 5) * 0.002):
                barrier.wait()
                time.sleep(delay)  # vary who wins
                return apply_updates(poll_conn, [StatusUpdate("primary", m.tracking_id, "SENT")], "poll", settings)

            def webhook(barrier=barrier, raw=raw, headers=headers):
                barrier.wait()
                return client.post(PRIMARY_ROUTE, content=raw, headers=headers)

            polled, hooked = pool.submit(poll), pool.submit(webhook)
            polled.result()
            assert hooked.result().status_code == 200
    for m in msgs:
        assert status_of(db, m.message_id) == "Delivered"
        assert_monotonic(history(db, m.message_id), "Delivered")
        assert (
            count(
                db,
                "SELECT count(*) FROM delivery_status_history WHERE to_status = 'Delivered' AND message_id = %s",
                m.message_id,
            )
            == 1
        )


# -- the carrier simulator's own signed callbacks --------------------------------------------------


def _phone_delivered_on_first_attempt() -> str:
    for i in range(1000):
        phone = f"+9725290{i:05d}"
        if not cm.invalid_at_submission(phone) and cm.outcome_for(phone, 0).status == cm.DELIVERED:
            return phone
    raise AssertionError("no phone found")


@pytest.mark.parametrize("name", ["primary", "secondary"])
def test_carrier_simulator_callbacks_reach_the_api_server(api, db, name):
    """Each carrier's simulator signs with its own secret and posts to the callbackUrl it was given:
    its own route."""
    tracking_id = cm.tracking_id(name, 1)  # the first message this fresh simulator accepts
    (m,) = make_messages(db, 1, tracking_ids=[tracking_id], carrier=name)
    phone = _phone_delivered_on_first_attempt()
    with carrier(name, env.TEST_SMS_API_KEY, webhooks=True, webhook_secret=env.TEST_WEBHOOK_SECRETS[name]) as sim:
        batch = {
            "batchId": "BATCH-20251118-901",
            "messages": [
                {
                    "messageId": m.message_id,
                    "phoneNumber": phone,
                    "content": "Your balance qualifies you for Premium.",
                    "priority": "HIGH",
                    "callbackUrl": api.url(ROUTES[name]),
                }
            ],
            "metadata": {"campaignId": "CAMP-WH", "correlationId": "corr-wh"},
        }
        resp = httpx.post(
            sim.base_url + "/api/v1/messages/batch",
            json=batch,
            headers={"Authorization": f"Bearer {env.TEST_SMS_API_KEY}"},
            trust_env=False,
        )
        assert resp.status_code == 202, resp.text
        assert resp.json()["messages"][0]["trackingId"] == tracking_id
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stats = sim.stats()
            if status_of(db, m.message_id) == "Delivered" and stats["callbacks_sent"] == 2:
                break
            time.sleep(0.1)
        assert status_of(db, m.message_id) == "Delivered", sim.stats()
        assert stats["callbacks_by_status"] == {"200": 2}, stats
    assert_monotonic(history(db, m.message_id), "Delivered")
    assert all(source == "webhook" for _, _, source in history(db, m.message_id))
    events = dict(db.execute("SELECT webhook_id, outcome FROM webhook_events WHERE carrier = %s", (name,)).fetchall())
    assert set(events) == {f"evt_{tracking_id}_SENT", f"evt_{tracking_id}_DELIVERED"}
    assert events[f"evt_{tracking_id}_DELIVERED"] == "applied"
    assert phone not in api.log_text()


# -- PII -------------------------------------------------------------------------------------------


def test_server_log_names_outcomes_never_the_phone(api, client, db):
    (m,) = make_messages(db, 1)
    assert post(client, payload(m.tracking_id), webhook_id="evt_logged").status_code == 200
    body = payload("T-1")
    del body["trackingId"]
    assert post(client, body).status_code == 422
    time.sleep(0.3)  # the log is written by another process
    log = api.log_text()
    assert f"primary webhook evt_logged tracking {m.tracking_id} status DELIVERED: applied" in log
    assert "invalid payload" in log
    assert PHONE not in log
    assert PHONE.removeprefix("+") not in log


def test_no_response_of_the_plugin_carries_the_phone_number(api, client, db):
    """Every answer class of the route, each sent a payload holding a phone number: none echoes it."""
    messages = make_messages(db, 1)
    digits = PHONE.lstrip("+")
    local = "0" + digits[3:]
    bodies = [
        post(client, payload(messages[0].tracking_id)),  # 200 processed
        post(client, payload("UNKNOWN-TRACK-1")),  # 202 ignored
        post(client, payload(messages[0].tracking_id), secret=OLD[:-4] + "AAA="),  # 401
        post(client, b'{"trackingId": "x", "phoneNumber": "' + PHONE.encode() + b'"'),  # 400
        post(client, payload("", status="LOST")),  # 422
        post(client, payload(messages[0].tracking_id, phoneNumber=local, status="BOGUS")),  # 422
    ]
    assert {r.status_code for r in bodies} >= {200, 202, 401, 400, 422}
    for response in bodies:
        assert digits not in response.text and local not in response.text and PHONE not in response.text
