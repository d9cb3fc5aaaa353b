"""Submission against the carrier simulators and PostgreSQL: exactly once, batches, failures, failover."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date

import psycopg
import pytest

from premium.crypto import PiiKeyring, aad_for
from premium.notifications import outbox
from premium.notifications.carrier import CarrierAuthError
from premium.notifications.engine import SubmissionEngine, submit
from premium.notifications.outbox import outbox_aad, rotate_payload_keys
from premium.notifications.window import campaign_id_for
from premium.settings import SmsSettings
from premium.sms.phones import normalise_mobile
from premium.sms.qualify import qualify, render_qualified
from premium.sms.render import SmsRenderer
from tests.support import env
from tests.support.bank import KEYRING, load_synthetic_customers
from tests.support.carrier import endpoint, make_everyone_pass, received_message_ids, window_clock
from tests.support.env import TEST_PII_KEYS

pytestmark = pytest.mark.integration

D = date(2025, 11, 18)
CAMPAIGN = campaign_id_for(D)
CORR = "corr-20251118-test"


@pytest.fixture
def qualified(db, app_db, tmp_path):
    """~1,150 customers; everyone active with consent and a mobile qualifies for D."""
    load_synthetic_customers(app_db, tmp_path, 1500, seed=3)
    make_everyone_pass(app_db, D)
    settings = SmsSettings()
    summary = qualify(app_db, D, "manual__test", settings)
    render_qualified(app_db, D, KEYRING, SmsRenderer())
    with psycopg.connect(**app_db) as conn:
        outbox.write_outbox(conn, D, CAMPAIGN, CORR, keyring=KEYRING, renderer=SmsRenderer())
    return app_db, summary.qualified


def fast(**kw) -> SmsSettings:
    base = {
        "backoff_multiplier_s": 0.001,
        "breaker_reset_s": 0.5,
        "request_timeout_s": 2.0,
        "retry_backoff_s": 0,
        "lease_ttl_s": 1.0,
    }
    base.update(kw)
    return SmsSettings(**base)


def run(conninfo, settings, endpoints, **options):
    options.setdefault("clock", window_clock(settings))
    return submit(conninfo, CAMPAIGN, settings, endpoints, KEYRING, CORR, **options)


def primary_only(primary):
    return {"primary": endpoint(primary, "primary", env.TEST_SMS_API_KEY)}


def both(primary, secondary):
    return {
        "primary": endpoint(primary, "primary", env.TEST_SMS_API_KEY),
        "secondary": endpoint(secondary, "secondary", env.TEST_SMS_SECONDARY_API_KEY),
    }


def statuses(conninfo) -> Counter:
    with psycopg.connect(**conninfo) as conn:
        return Counter(dict(conn.execute("SELECT status, count(*) FROM sms_notifications GROUP BY 1").fetchall()))


def assert_once_per_customer(*sims) -> list[str]:
    ids = [i for sim in sims for i in received_message_ids(sim)]
    assert len(ids) == len(set(ids)), "a message reached the carriers twice"
    customers = [i.rsplit("-", 2)[-2] for i in ids]
    assert len(customers) == len(set(customers)), "a customer was sent two attempts in one submission"
    return ids


def test_batches_of_500_each_customer_once_and_a_rerun_sends_nothing(qualified, carriers) -> None:
    conninfo, n = qualified
    primary, _ = carriers
    summary = run(conninfo, fast(), primary_only(primary))
    ids = assert_once_per_customer(primary)
    assert summary.messages_accepted + summary.messages_rejected == n
    assert len(ids) == summary.messages_accepted
    with psycopg.connect(**conninfo) as conn:
        batches = conn.execute("SELECT batch_id, messages FROM sms_batches ORDER BY seq").fetchall()
        tracked = conn.execute(
            "SELECT count(*) FROM sms_messages WHERE tracking_id IS NOT NULL AND carrier = 'primary'"
        ).fetchone()[0]
    assert [b[0] for b in batches][:2] == ["BATCH-20251118-001", "BATCH-20251118-002"]
    assert all(m <= 500 for _, m in batches) and batches[0][1] == 500
    assert tracked == summary.messages_accepted
    # invalid numbers at submission (§3.6 21211) are undeliverable, not retried
    assert statuses(conninfo)["UNDELIVERABLE"] == summary.undeliverable
    # every field of §3.2 went out
    sample = primary.call("GET", "/_sim/received?content=1")[0]
    assert sample["priority"] == "HIGH" and sample["campaignId"] == CAMPAIGN and sample["correlationId"] == CORR
    assert sample["content"].startswith(("פרסומת", "Advertisement"))
    # the same submission again (task retry, cleared run): nothing new reaches the carrier
    again = run(conninfo, fast(), primary_only(primary))
    assert again.messages_accepted == 0 and again.post_attempts == 0
    assert len(received_message_ids(primary)) == len(ids)


def test_ambiguous_accept_is_resolved_without_a_duplicate(qualified, carriers) -> None:
    conninfo, n = qualified
    primary, secondary = carriers
    primary.set_faults({"accept_then_drop_rate": 1.0})  # every first POST of a batch is accepted, then dropped
    summary = run(conninfo, fast(), both(primary, secondary))
    assert summary.ambiguous_posts >= 1
    assert summary.failed_over_batches == 0  # an ambiguous batch never moves carrier
    assert received_message_ids(secondary) == []
    ids = assert_once_per_customer(primary)
    assert len(ids) == summary.messages_accepted
    assert statuses(conninfo)["PENDING"] == 0


def test_a_202_lacking_messages_is_completed_under_the_same_ids(qualified, carriers) -> None:
    conninfo, _ = qualified
    primary, _ = carriers
    primary.set_faults({"omit_rate": 0.2})
    summary = run(conninfo, fast(), primary_only(primary))
    assert summary.split_batches >= 1
    ids = assert_once_per_customer(primary)
    with psycopg.connect(**conninfo) as conn:
        tracked = conn.execute("SELECT count(*) FROM sms_messages WHERE tracking_id IS NOT NULL").fetchone()[0]
        pending = conn.execute("SELECT count(*) FROM sms_messages WHERE status = 'PENDING'").fetchone()[0]
    assert tracked == len(ids) and pending == 0


def test_rate_limits_and_provider_errors_are_retried(qualified, carriers) -> None:
    conninfo, _ = qualified
    primary, _ = carriers
    primary.set_faults({"fail_next": {"status": 429, "count": 2}})
    summary = run(conninfo, fast(), primary_only(primary))
    assert summary.buffered_batches == 0 and summary.post_attempts >= summary.batches_posted + 2
    primary.call("POST", "/_sim/reset")
    assert statuses(conninfo)["PENDING"] == 0


def test_outage_with_a_secondary_carrier_fails_over_and_nothing_goes_to_both(qualified, carriers) -> None:
    conninfo, _ = qualified
    primary, secondary = carriers
    primary.set_faults({"outage": {"seconds": 60}})
    summary = run(conninfo, fast(breaker_failures=3, post_retries=1), both(primary, secondary))
    assert summary.failed_over_batches >= 1 and summary.buffered_batches == 0
    assert received_message_ids(primary) == []
    ids = assert_once_per_customer(primary, secondary)
    assert len(ids) == summary.messages_accepted
    with psycopg.connect(**conninfo) as conn:
        by_carrier = dict(conn.execute("SELECT carrier, count(*) FROM sms_batches GROUP BY 1").fetchall())
    assert by_carrier == {"secondary": by_carrier["secondary"]}


def test_outage_without_a_secondary_buffers_then_sends_on_recovery(qualified, carriers) -> None:
    conninfo, n = qualified
    primary, _ = carriers
    primary.set_faults({"outage": {"seconds": 60}})
    first = run(conninfo, fast(breaker_failures=3, post_retries=1), primary_only(primary))
    assert first.messages_accepted == 0 and first.buffered_batches >= 1
    with psycopg.connect(**conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM sms_batches WHERE status <> 'BUFFERED'").fetchone()[0] == 0
    assert received_message_ids(primary) == []
    primary.set_faults({})  # the carrier recovers; the next attempt sends the buffered batches
    second = run(conninfo, fast(), primary_only(primary))
    assert second.messages_accepted + second.messages_rejected == n
    assert_once_per_customer(primary)


def test_a_crash_between_post_and_storing_tracking_ids_sends_nothing_twice(qualified, carriers, monkeypatch) -> None:
    conninfo, _ = qualified
    primary, _ = carriers
    original = SubmissionEngine._record
    calls = {"n": 0}

    def crash_once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker killed after the carrier accepted")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SubmissionEngine, "_record", crash_once)
    with pytest.raises(RuntimeError, match="killed"):
        run(conninfo, fast(in_flight_batches=1), primary_only(primary))
    monkeypatch.setattr(SubmissionEngine, "_record", original)
    summary = run(conninfo, fast(), primary_only(primary))  # the task's retry
    ids = assert_once_per_customer(primary)
    with psycopg.connect(**conninfo) as conn:
        tracked = conn.execute("SELECT count(*) FROM sms_messages WHERE tracking_id IS NOT NULL").fetchone()[0]
    assert tracked == len(ids)
    assert summary.messages_accepted > 0


def test_rejected_credentials_fail_loudly(qualified, carriers) -> None:
    conninfo, _ = qualified
    primary, _ = carriers
    with pytest.raises(CarrierAuthError):
        run(conninfo, fast(), {"primary": endpoint(primary, "primary", "revoked")})
    assert received_message_ids(primary) == []


def _payloads(conninfo) -> dict[str, tuple]:
    """customer_id -> (status, error_code, content_enc, phone_enc, pii_key_id, language) of the campaign's outbox."""
    with psycopg.connect(**conninfo) as conn:
        rows = conn.execute(
            "SELECT customer_id, status, error_code, content_enc, phone_enc, pii_key_id, language "
            "FROM sms_notifications WHERE campaign_id = %s",
            (CAMPAIGN,),
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def _customer_pii(conninfo) -> dict[str, tuple[str, str]]:
    with psycopg.connect(**conninfo) as conn:
        rows = conn.execute("SELECT customer_id, first_name_enc, phone_enc, pii_key_id FROM customers").fetchall()
    return {
        cid: (
            KEYRING.decrypt(name, key, aad_for(cid, "first_name")),
            KEYRING.decrypt(phone, key, aad_for(cid, "phone_number")),
        )
        for cid, name, phone, key in rows
    }


def test_the_outbox_holds_the_rendered_payload_encrypted_and_that_is_what_is_sent(qualified, carriers) -> None:
    conninfo, n = qualified
    primary, _ = carriers
    payloads, pii, renderer = _payloads(conninfo), _customer_pii(conninfo), SmsRenderer()
    assert len(payloads) == n
    expected = {}
    for cid, (status, _code, content_enc, phone_enc, key_id, language) in payloads.items():
        assert status == "PENDING" and key_id == KEYRING.current_key_id
        name, raw_phone = pii[cid]
        content = KEYRING.decrypt(content_enc, key_id, outbox_aad(CAMPAIGN, cid, "content"))
        phone = KEYRING.decrypt(phone_enc, key_id, outbox_aad(CAMPAIGN, cid, "phone_number"))
        assert content == renderer.render(name, language).text and phone == normalise_mobile(raw_phone)
        assert phone.encode() not in phone_enc and name.encode() not in content_enc  # encrypted at rest
        expected[cid] = (phone, content)
    # a payload is bound to its notification: another customer's blob does not decrypt
    (a, pa), (b, _pb) = list(payloads.items())[:2]
    with pytest.raises(Exception, match="does not authenticate"):
        KEYRING.decrypt(pa[2], pa[4], outbox_aad(CAMPAIGN, b, "content"))

    summary = run(conninfo, fast(), primary_only(primary))
    sent = {
        m["messageId"].rsplit("-", 2)[-2]: (m["phoneNumber"], m["content"])
        for m in primary.call("GET", "/_sim/received?content=1")
    }
    assert summary.messages_accepted + summary.messages_rejected == n
    assert len(sent) == summary.messages_accepted > 0  # the simulator lists what it accepted
    assert sent == {cid: expected[cid] for cid in sent}


def test_a_number_that_is_no_longer_a_mobile_is_undeliverable_in_the_outbox_and_never_sent(
    db, app_db, tmp_path, carriers
) -> None:
    load_synthetic_customers(app_db, tmp_path, 300, seed=4)
    make_everyone_pass(app_db, D)
    qualify(app_db, D, "manual__test", SmsSettings())
    with psycopg.connect(**app_db) as conn:
        stale = conn.execute(
            "SELECT customer_id FROM qualification_outcomes WHERE outcome = 'qualified' ORDER BY customer_id LIMIT 1"
        ).fetchone()[0]
        key_id, blob = KEYRING.encrypt("02-6251234", aad_for(stale, "phone_number"))  # a landline; flag still valid
        conn.execute(
            "UPDATE customers SET phone_enc = %s, pii_key_id = %s WHERE customer_id = %s", (blob, key_id, stale)
        )
        conn.execute(
            "UPDATE customers SET first_name_enc = %s WHERE customer_id = %s",
            (KEYRING.encrypt("Dana", aad_for(stale, "first_name"))[1], stale),
        )
        created = outbox.write_outbox(conn, D, CAMPAIGN, CORR, "manual__test", keyring=KEYRING, renderer=SmsRenderer())
        trail = conn.execute(
            "SELECT outcome, details->>'reason' FROM audit_trail WHERE customer_id = %s AND action = 'notification_decided'",
            (stale,),
        ).fetchall()
    payloads = _payloads(app_db)
    assert created == len(payloads)
    status, code, content_enc, phone_enc, key, _language = payloads[stale]
    assert (status, code, content_enc, phone_enc, key) == ("UNDELIVERABLE", "21211", None, None, None)
    assert trail == [("undeliverable:21211", "invalid_number: landline, not a mobile")]
    primary, _ = carriers
    summary = run(app_db, fast(), primary_only(primary))
    assert summary.messages_accepted + summary.messages_rejected == len(payloads) - 1
    assert all(i.rsplit("-", 2)[-2] != stale for i in received_message_ids(primary))
    # a rerun of the preparation adds nothing and leaves the decision alone
    with psycopg.connect(**app_db) as conn:
        again = outbox.write_outbox(conn, D, CAMPAIGN, CORR, keyring=KEYRING, renderer=SmsRenderer())
    assert again == 0 and _payloads(app_db)[stale][0] == "UNDELIVERABLE"


def test_payload_key_rotation_moves_every_payload_to_the_current_key(qualified) -> None:
    conninfo, n = qualified
    old = PiiKeyring.from_extra({**TEST_PII_KEYS, "current_key_id": "test-k0"})
    with psycopg.connect(**conninfo) as conn:
        conn.execute("DELETE FROM sms_messages")
        conn.execute("DELETE FROM sms_batches")
        conn.execute("DELETE FROM sms_notifications")
        conn.execute("DELETE FROM audit_trail WHERE action = 'notification_decided'")
        assert outbox.write_outbox(conn, D, CAMPAIGN, CORR, keyring=old, renderer=SmsRenderer()) == n
    before = {
        cid: (KEYRING.decrypt(p[2], p[4], outbox_aad(CAMPAIGN, cid, "content")), p[3])
        for cid, p in _payloads(conninfo).items()
    }
    assert {p[4] for p in _payloads(conninfo).values()} == {"test-k0"}
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        assert rotate_payload_keys(conn, KEYRING, batch_size=100) == n
        assert rotate_payload_keys(conn, KEYRING, batch_size=100) == 0
    after = _payloads(conninfo)
    assert {p[4] for p in after.values()} == {KEYRING.current_key_id}
    for cid, p in after.items():
        assert KEYRING.decrypt(p[2], p[4], outbox_aad(CAMPAIGN, cid, "content")) == before[cid][0]
        assert p[3] != before[cid][1]  # re-encrypted, not relabelled


ON_TIME = {"sms": {"max_lag_days": 100000}}  # deployment settings: "on time" whatever today's date is


def _plan_context(**params) -> dict:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    return {
        "params": params,
        "dag_run": SimpleNamespace(run_id=f"scheduled__{D}"),
        "dag": SimpleNamespace(dag_id="premium_balance_daily"),
        "ti": SimpleNamespace(task_id="plan_send"),
        "logical_date": datetime(D.year, D.month, D.day, 20, 0, tzinfo=UTC),  # 22:00 Asia/Jerusalem
    }


@pytest.mark.parametrize("dry_run", [False, True])
def test_plan_send_prepares_the_outbox_and_batches_the_evening_before_only_when_sending(
    db, app_db, tmp_path, dry_run, monkeypatch
) -> None:
    from premium.sms import tasks

    monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps(ON_TIME))
    load_synthetic_customers(app_db, tmp_path, 1400, seed=6)
    make_everyone_pass(app_db, D)
    n = qualify(app_db, D, f"scheduled__{D}", SmsSettings()).qualified
    with psycopg.connect(**app_db) as conn:  # one number stopped being a mobile since its flag was set
        stale = conn.execute(
            "SELECT customer_id FROM qualification_outcomes WHERE outcome = 'qualified' ORDER BY customer_id LIMIT 1"
        ).fetchone()[0]
        key_id, blob = KEYRING.encrypt("02-6251234", aad_for(stale, "phone_number"))
        conn.execute(
            "UPDATE customers SET phone_enc = %s, pii_key_id = %s WHERE customer_id = %s", (blob, key_id, stale)
        )
    opens = tasks.plan_send(_plan_context(dry_run=dry_run))
    with psycopg.connect(**app_db) as conn:
        notifications = conn.execute("SELECT count(*) FROM sms_notifications").fetchone()[0]
        batches = conn.execute("SELECT seq, status, messages FROM sms_batches ORDER BY seq").fetchall()
        messages = conn.execute("SELECT count(*) FROM sms_messages WHERE status = 'PENDING'").fetchone()[0]
        alerts = conn.execute("SELECT kind, task_id, details->>'count' FROM alerts").fetchall()
    if dry_run:
        assert (notifications, batches, messages, alerts) == (0, [], 0, [])
        return
    assert opens == "2025-11-19T09:00:00+02:00"  # nothing is sent before this: no carrier is configured here
    assert notifications == messages + 1 == n > 1000
    assert alerts == [("sms_undeliverable_numbers", "plan_send", "1")]
    assert [b[0] for b in batches] == list(range(1, len(batches) + 1)) and len(batches) == -(-(n - 1) // 500)
    assert {b[1] for b in batches} == {"PENDING"} and sum(b[2] for b in batches) == n - 1
    tasks.plan_send(_plan_context())  # a retry or a cleared task: nothing new
    with psycopg.connect(**app_db) as conn:
        assert conn.execute("SELECT count(*) FROM sms_batches").fetchone()[0] == len(batches)
        assert conn.execute("SELECT count(*) FROM sms_notifications").fetchone()[0] == n
