"""Submission against the carrier simulators and PostgreSQL: exactly once, batches, failures, failover."""

from __future__ import annotations

from collections import Counter
from datetime import date

import psycopg
import pytest

from premium.settings import SmsSettings
from premium.sms import outbox
from premium.sms.carrier import CarrierAuthError
from premium.sms.qualify import qualify, render_qualified
from premium.sms.render import SmsRenderer
from premium.sms.submit import Submitter, submit
from premium.sms.window import campaign_id_for
from tests.support import env
from tests.support.bank import KEYRING, load_synthetic_customers
from tests.support.carrier import carrier, endpoint, make_everyone_pass, received_message_ids

pytestmark = pytest.mark.integration

D = date(2025, 11, 18)
CAMPAIGN = campaign_id_for(D)
CORR = "corr-20251118-test"


@pytest.fixture(scope="module")
def primary():
    with carrier("primary", env.TEST_SMS_API_KEY) as sim:
        yield sim


@pytest.fixture(scope="module")
def secondary():
    with carrier("secondary", env.TEST_SMS_SECONDARY_API_KEY) as sim:
        yield sim


@pytest.fixture
def carriers(primary, secondary):
    for sim in (primary, secondary):
        sim.set_faults({})
        sim.call("POST", "/_sim/reset")
    return primary, secondary


@pytest.fixture
def qualified(db, app_db, tmp_path):
    """~1,150 customers; everyone active with consent and a mobile qualifies for D."""
    load_synthetic_customers(app_db, tmp_path, 1500, seed=3)
    make_everyone_pass(app_db, D)
    settings = SmsSettings()
    summary = qualify(app_db, D, "manual__test", settings)
    render_qualified(app_db, D, KEYRING, SmsRenderer())
    with psycopg.connect(**app_db) as conn:
        outbox.write_outbox(conn, D, CAMPAIGN, CORR)
    return app_db, summary.qualified


def fast(**kw) -> SmsSettings:
    base = {"backoff_multiplier_s": 0.001, "breaker_reset_s": 0.5, "request_timeout_s": 2.0}
    base.update(kw)
    return SmsSettings(**base)


def run(conninfo, settings, endpoints):
    return submit(conninfo, CAMPAIGN, D, settings, endpoints, KEYRING, SmsRenderer(), CORR)


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
    original = Submitter._record
    calls = {"n": 0}

    def crash_once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker killed after the carrier accepted")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Submitter, "_record", crash_once)
    with pytest.raises(RuntimeError, match="killed"):
        run(conninfo, fast(in_flight_batches=1), primary_only(primary))
    monkeypatch.setattr(Submitter, "_record", original)
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
