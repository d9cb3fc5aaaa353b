"""The submission engine's promise, attacked: SIGKILL at every step, racing submitters, ambiguous carrier
answers, refusals, the send window, late statuses. After each: at most one SMS per customer that may
have reached the phone (across both carriers), nothing POSTed outside the window, every notification
final once tracking ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from premium.delivery.tracking import finalize, load_run, poll_once, register
from premium.notifications import outbox
from premium.notifications.engine import submit
from premium.notifications.state import StatusUpdate, apply_updates
from premium.notifications.window import campaign_id_for
from premium.settings import DeliverySettings, SmsSettings
from premium.sms.qualify import qualify, render_qualified
from premium.sms.render import SmsRenderer
from tests.support import env
from tests.support.bank import KEYRING, load_synthetic_customers
from tests.support.carrier import OPEN_WINDOW, endpoint, make_everyone_pass, window_clock

pytestmark = pytest.mark.integration

D = date(2025, 11, 18)
CAMPAIGN = campaign_id_for(D)
CORR = "corr-20251118-once"
LOCAL = ZoneInfo("Asia/Jerusalem")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = {
    "backoff_multiplier_s": 0.001,
    "breaker_reset_s": 0.5,
    "request_timeout_s": 1.5,
    "retry_backoff_s": 0,
    "lease_ttl_s": 1.0,
    "lease_wait_s": 10.0,
    "in_flight_batches": 1,
}


def prepare(conninfo, tmp_path, count=700, seed=11, check_date=D) -> int:
    load_synthetic_customers(conninfo, tmp_path, count, seed=seed)
    make_everyone_pass(conninfo, check_date)
    summary = qualify(conninfo, check_date, "manual__once", SmsSettings())
    render_qualified(conninfo, check_date, KEYRING, SmsRenderer())
    campaign = campaign_id_for(check_date)
    with psycopg.connect(**conninfo) as conn:
        outbox.write_outbox(conn, check_date, campaign, CORR, keyring=KEYRING, renderer=SmsRenderer())
        outbox.assign_batches(conn, campaign, 500, CORR)
    return summary.qualified


@pytest.fixture
def prepared(db, app_db, tmp_path):
    """~540 qualified customers, their outbox prepared in two batches (500 + the rest)."""
    return app_db, prepare(app_db, tmp_path)


def endpoints(primary, secondary=None) -> dict:
    out = {"primary": endpoint(primary, "primary", env.TEST_SMS_API_KEY)}
    if secondary is not None:
        out["secondary"] = endpoint(secondary, "secondary", env.TEST_SMS_SECONDARY_API_KEY)
    return out


def drive(conninfo, primary, secondary=None, *, crash_at=None, holder="driver", **settings) -> dict | None:
    """The engine in a process of its own; None when it was killed (SIGKILL)."""
    eps = {"primary": [primary.base_url, env.TEST_SMS_API_KEY]}
    if secondary is not None:
        eps["secondary"] = [secondary.base_url, env.TEST_SMS_SECONDARY_API_KEY]
    offset = (window_clock()() - datetime.now(UTC)).total_seconds()
    args = {
        "conninfo": conninfo,
        "campaign_id": CAMPAIGN,
        "correlation_id": CORR,
        "settings": {**FAST, **settings},
        "endpoints": eps,
        "holder": holder,
        "clock_offset_s": offset,
        "crash_at": crash_at,
        "sent_after_s": 0.3,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.engine_driver", json.dumps(args)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}/plugins:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode == -9:
        return None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def received(*sims) -> list[dict]:
    return [m for sim in sims for m in sim.call("GET", "/_sim/received")]


def carrier_status(sim, tracking_id: str) -> str:
    """The carrier's own word on a message (§3.3), asked with its API key."""
    key = env.TEST_SMS_SECONDARY_API_KEY if sim.name.endswith("secondary") else env.TEST_SMS_API_KEY
    request = urllib.request.Request(
        f"{sim.base_url}/api/v1/messages/{tracking_id}/status", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback simulator
        return json.loads(resp.read())["status"]


def assert_at_most_one_reached(*sims) -> None:
    """Per customer, every message the carriers accepted except the last one ended FAILED at its carrier
    (a retry), so at most one may have reached the phone; and no message id was accepted twice."""
    by_customer: dict[str, list[tuple[object, dict]]] = defaultdict(list)
    ids = Counter()
    for sim in sims:
        for m in sim.call("GET", "/_sim/received"):
            ids[m["messageId"]] += 1
            by_customer[m["messageId"].rsplit("-", 2)[-2]].append((sim, m))
    assert not [i for i, n in ids.items() if n > 1], "a message id was accepted by two carriers"
    for customer, messages in by_customer.items():
        if len(messages) == 1:
            continue
        messages.sort(key=lambda sm: int(sm[1]["messageId"].rsplit("-", 1)[-1]))
        for sim, m in messages[:-1]:
            assert carrier_status(sim, m["trackingId"]) == "FAILED", (
                f"customer {customer}: attempt {m['messageId']} may have arrived and was sent again"
            )


def notification_statuses(conninfo) -> Counter:
    with psycopg.connect(**conninfo) as conn:
        return Counter(dict(conn.execute("SELECT status, count(*) FROM sms_notifications GROUP BY 1").fetchall()))


def track_to_the_end(conninfo, primary, secondary=None, rounds=60) -> dict:
    """A tracking run over D's notifications: poll (and resubmit through the engine) until all are final."""
    settings = SmsSettings(**{**FAST, "in_flight_batches": 4})
    eps = endpoints(primary, secondary)
    clock = window_clock(settings)
    tracking = DeliverySettings(poll_interval_s=0.2, window_s=120, request_timeout_s=2, backoff_multiplier_s=0.001)
    with psycopg.connect(**conninfo) as conn:
        batches = [r[0] for r in conn.execute("SELECT batch_id FROM sms_batches WHERE campaign_id = %s", (CAMPAIGN,))]
    run_id = f"track-{time.monotonic_ns()}"
    run = register(conninfo, run_id, CAMPAIGN, batches, tracking, [D])

    def resubmit(campaign_id):
        return submit(
            conninfo, campaign_id, settings, eps, KEYRING, CORR, holder="tracking", wait_s=5, clock=clock
        ).messages_accepted

    for _ in range(rounds):
        with psycopg.connect(**conninfo) as conn:
            run = load_run(conn, run_id)
        outcome = poll_once(conninfo, run, tracking, settings, eps, resubmit)
        if outcome.done:
            break
        time.sleep(0.3)
    return finalize(conninfo, run, settings)


FINAL = {"DELIVERED", "FAILED", "UNDELIVERABLE", "UNCONFIRMED"}


@pytest.mark.parametrize("point", ["binding", "in_flight", "sent", "answered", "recording", "recorded"])
def test_a_kill_at_any_step_then_a_failing_primary_sends_no_customer_twice(prepared, carriers, point) -> None:
    conninfo, qualified = prepared
    primary, secondary = carriers
    if point == "sent":
        primary.set_faults({"latency_ms": 800})  # the request is at the carrier when the process dies
    assert drive(conninfo, primary, secondary, crash_at=point) is None, "the driver was not killed"
    primary.set_faults({})
    with psycopg.connect(**conninfo) as conn:
        # Batches are bound concurrently (in_flight_batches): the one the process died after is
        # whichever was bound first, not necessarily the first by id.
        bound = conn.execute("SELECT carrier, in_flight FROM sms_batches WHERE carrier IS NOT NULL").fetchall()
    if point in ("in_flight", "sent", "answered", "recording"):
        assert ("primary", True) in bound, "the batch was not marked in flight before the POST"
    # The next attempt meets a primary that answers 503 (with its error body) to every new POST:
    # a batch the killed process may have sent must stay with the primary; the others fail over.
    primary.set_faults({"fail_next": {"status": 503, "count": 1000}})
    second = drive(conninfo, primary, secondary, holder="retry", breaker_failures=2, failover_failure_rate=0.0)
    assert second is not None and not second["lease_busy"]
    primary.set_faults({})
    drive(conninfo, primary, secondary, holder="recovered")
    assert_at_most_one_reached(primary, secondary)
    track_to_the_end(conninfo, primary, secondary)
    assert_at_most_one_reached(primary, secondary)
    statuses = notification_statuses(conninfo)
    assert set(statuses) <= FINAL, statuses
    assert sum(statuses.values()) == qualified


@pytest.mark.parametrize("answer", [500, 502, 504, 0], ids=["commit-500", "commit-502", "commit-504", "commit-drop"])
def test_a_batch_the_primary_committed_but_answered_badly_never_moves_to_the_secondary(
    prepared, carriers, answer
) -> None:
    conninfo, qualified = prepared
    primary, secondary = carriers
    # Every new batch is taken by the primary and answered with an error or a dropped connection;
    # failover trips at once. Only replays (the same batch, same ids) get the primary's 202.
    primary.set_faults({"commit_then": {"status": answer, "count": 1000}})
    summary = drive(conninfo, primary, secondary, breaker_failures=1, failover_failure_rate=0.0, post_retries=2)
    assert summary["ambiguous_posts"] >= 1
    at_primary = {m["batchId"] for m in received(primary)}
    assert at_primary, "the primary took no batch"
    assert not at_primary & {m["batchId"] for m in received(secondary)}, (
        "a batch the primary took went to the secondary"
    )
    assert_at_most_one_reached(primary, secondary)
    with psycopg.connect(**conninfo) as conn:
        pinned = conn.execute("SELECT count(*) FROM sms_batches WHERE carrier = 'primary' AND ambiguous").fetchone()[0]
    assert pinned >= 1


def test_a_carrier_that_commits_every_batch_and_answers_504_sends_each_customer_once(prepared, carriers) -> None:
    """The spec-only carrier: commits every batch, then answers 504 to every request, replays included."""
    conninfo, _ = prepared
    primary, secondary = carriers
    primary.set_faults({"commit_then": {"status": 504, "count": 1000}})
    drive(conninfo, primary, secondary, breaker_failures=1, failover_failure_rate=0.0)
    drive(conninfo, primary, secondary, holder="again", breaker_failures=1, failover_failure_rate=0.0)
    at_primary = {m["batchId"] for m in received(primary)}
    assert at_primary and not at_primary & {m["batchId"] for m in received(secondary)}
    assert_at_most_one_reached(primary, secondary)
    primary_ids = [m["messageId"] for m in primary.call("GET", "/_sim/received")]
    assert len(primary_ids) == len(set(primary_ids))
    customers = [i.rsplit("-", 2)[-2] for i in primary_ids]
    assert len(customers) == len(set(customers))


def test_a_503_with_the_carriers_error_body_is_a_definite_no_and_may_fail_over(prepared, carriers) -> None:
    conninfo, qualified = prepared
    primary, secondary = carriers
    primary.set_faults({"fail_next": {"status": 503, "count": 1000}})
    summary = drive(conninfo, primary, secondary, breaker_failures=2, failover_failure_rate=0.0)
    assert summary["failed_over_batches"] >= 1
    assert received(primary) == []
    assert_at_most_one_reached(primary, secondary)
    assert sum(notification_statuses(conninfo).values()) == qualified


def test_a_refused_batch_fails_only_the_message_it_names_and_sends_the_rest(prepared, carriers) -> None:
    conninfo, qualified = prepared
    primary, _ = carriers
    with psycopg.connect(**conninfo) as conn:
        bad = conn.execute("SELECT message_id FROM sms_messages ORDER BY message_id OFFSET 7 LIMIT 1").fetchone()[0]
    primary.set_faults({"refuse": {"message_ids": [bad], "status": 422}})
    summary = submit(conninfo, CAMPAIGN, SmsSettings(**FAST), endpoints(primary), KEYRING, CORR, clock=window_clock())
    assert summary.refused_batches == 1 and summary.refused_messages == 1
    with psycopg.connect(**conninfo) as conn:
        row = conn.execute(
            "SELECT n.status, n.error_detail FROM sms_notifications n JOIN sms_messages m USING (notification_id) "
            "WHERE m.message_id = %s",
            (bad,),
        ).fetchone()
        refused = conn.execute("SELECT count(*) FROM sms_batches WHERE status = 'REFUSED'").fetchone()[0]
    assert row[0] == "FAILED" and "refused by the carrier" in row[1]
    assert refused == 1
    statuses = notification_statuses(conninfo)
    assert "PENDING" not in statuses, statuses
    sent = {m["messageId"] for m in primary.call("GET", "/_sim/received")}
    assert bad not in sent and len(sent) == statuses["QUEUED"]


def test_a_429_with_a_long_retry_after_waits_for_a_later_run(prepared, carriers) -> None:
    conninfo, _ = prepared
    primary, _ = carriers
    primary.set_faults({"fail_next": {"status": 429, "count": 1}})  # Retry-After: 1
    settings = SmsSettings(**{**FAST, "max_retry_after_s": 0.1})
    clock = window_clock()  # one clock for both runs: each new one restarts at the window's opening
    first = submit(conninfo, CAMPAIGN, settings, endpoints(primary), KEYRING, CORR, clock=clock)
    assert first.rate_limited_posts == 1
    with psycopg.connect(**conninfo) as conn:
        waiting = conn.execute(
            "SELECT count(*) FROM sms_batches WHERE not_before IS NOT NULL AND status = 'PENDING'"
        ).fetchone()[0]
    assert waiting == 1
    time.sleep(1.1)
    second = submit(conninfo, CAMPAIGN, settings, endpoints(primary), KEYRING, CORR, clock=clock)
    assert second.messages_accepted > 0
    assert "PENDING" not in notification_statuses(conninfo)


def _local(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=LOCAL)


def test_nothing_is_posted_outside_the_window_and_the_same_work_goes_in_the_next_one(
    db, app_db, tmp_path, carriers
) -> None:
    """Friday's batches are prepared Friday evening: Saturday is a no-send day, so they go Sunday morning."""
    friday = date(2025, 11, 21)
    campaign = campaign_id_for(friday)
    prepare(app_db, tmp_path, check_date=friday)
    primary, _ = carriers
    settings = SmsSettings(**FAST)
    for moment in (
        _local(friday, 23),
        _local(friday + timedelta(1), 3),
        _local(friday + timedelta(1), 10),
        _local(friday + timedelta(2), 8, 59),
        _local(friday + timedelta(2), 20, 30),
    ):
        summary = submit(app_db, campaign, settings, endpoints(primary), KEYRING, CORR, clock=lambda m=moment: m)
        assert summary.post_attempts == 0 and summary.window_closed, moment
    assert received(primary) == []
    sunday = _local(friday + timedelta(2), 10)
    summary = submit(app_db, campaign, settings, endpoints(primary), KEYRING, CORR, clock=lambda: sunday)
    assert summary.messages_accepted > 0
    with psycopg.connect(**app_db) as conn:
        assert (
            conn.execute("SELECT count(*) FROM sms_batches WHERE status IN ('PENDING', 'BUFFERED')").fetchone()[0] == 0
        )


def test_a_late_delivered_outranks_failed_and_cancels_the_retry(prepared, carriers) -> None:
    conninfo, _ = prepared
    primary, _ = carriers
    settings = SmsSettings(**FAST)
    submit(conninfo, CAMPAIGN, settings, endpoints(primary), KEYRING, CORR, clock=window_clock())
    with psycopg.connect(**conninfo) as conn:
        message_id, tracking_id = conn.execute(
            "SELECT message_id, tracking_id FROM sms_messages WHERE status = 'QUEUED' ORDER BY message_id LIMIT 1"
        ).fetchone()
        apply_updates(conn, [StatusUpdate("primary", tracking_id, "FAILED", "50001")], "webhook", settings)
        assert (
            conn.execute(
                "SELECT n.status FROM sms_notifications n JOIN sms_messages m USING (notification_id) "
                "WHERE m.message_id = %s",
                (message_id,),
            ).fetchone()[0]
            == "PENDING"
        )
        apply_updates(conn, [StatusUpdate("primary", tracking_id, "DELIVERED", "0")], "webhook", settings)
        status, current = conn.execute(
            "SELECT n.status, n.current_message_id FROM sms_notifications n JOIN sms_messages m USING (notification_id) "
            "WHERE m.message_id = %s",
            (message_id,),
        ).fetchone()
    assert (status, current) == ("DELIVERED", message_id)
    again = submit(conninfo, CAMPAIGN, settings, endpoints(primary), KEYRING, CORR, clock=window_clock())
    assert again.post_attempts == 0, "a delivered customer was sent a retry"


def test_messages_moved_out_of_a_partial_202_are_followed_by_tracking(prepared, carriers) -> None:
    conninfo, qualified = prepared
    primary, _ = carriers
    primary.set_faults({"omit_rate": 0.05})
    settings = SmsSettings(**FAST)
    with psycopg.connect(**conninfo) as conn:
        original = [r[0] for r in conn.execute("SELECT batch_id FROM sms_batches ORDER BY batch_id")]
    submit(conninfo, CAMPAIGN, settings, endpoints(primary), KEYRING, CORR, clock=window_clock())
    with psycopg.connect(**conninfo) as conn:
        moved = conn.execute(
            "SELECT count(*) FROM sms_messages WHERE NOT (batch_id = ANY(%s))", (original,)
        ).fetchone()[0]
    assert moved > 0
    track_to_the_end(conninfo, primary)
    statuses = notification_statuses(conninfo)
    assert set(statuses) <= FINAL, statuses
    assert sum(statuses.values()) == qualified
    with psycopg.connect(**conninfo) as conn:
        left = conn.execute(
            "SELECT count(*) FROM delivery_status d JOIN sms_messages m USING (message_id) "
            "WHERE NOT (m.batch_id = ANY(%s)) AND d.status_rank < 30",
            (original,),
        ).fetchone()[0]
    assert left == 0, "a message moved to a new batch was never followed to a final state"


def race(conninfo, primary, secondary) -> list[dict]:
    """The daily submission, two tracking runs and a manual run: four engine processes on one campaign."""
    eps = {
        "primary": [primary.base_url, env.TEST_SMS_API_KEY],
        "secondary": [secondary.base_url, env.TEST_SMS_SECONDARY_API_KEY],
    }
    offset = (window_clock()() - datetime.now(UTC)).total_seconds()
    procs = []
    for holder, wait in (("daily", 30), ("tracking-1", 0), ("tracking-2", 0), ("manual", 30)):
        args = {
            "conninfo": conninfo,
            "campaign_id": CAMPAIGN,
            "settings": {**FAST, "breaker_failures": 1, "failover_failure_rate": 0.0, "lease_wait_s": wait},
            "endpoints": eps,
            "holder": holder,
            "wait_s": wait,
            "clock_offset_s": offset,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.support.engine_driver", json.dumps(args)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": f"{ROOT}/plugins:{ROOT}"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_racing_submitters_with_the_primary_failing_part_way_send_each_customer_once(prepared, carriers) -> None:
    """Four submitters race on the first sends, then again on the retries of the failures the first
    poll found, the primary failing over part-way each time."""
    conninfo, qualified = prepared
    primary, secondary = carriers
    primary.set_faults({"fail_next": {"status": 503, "count": 1}, "latency_ms": 150})
    results = race(conninfo, primary, secondary)
    assert sum(1 for r in results if r["post_attempts"]) >= 1
    assert_at_most_one_reached(primary, secondary)
    assert "PENDING" not in notification_statuses(conninfo)
    time.sleep(0.5)  # every message final at its carrier: the model fails some, retryably
    with psycopg.connect(**conninfo) as conn:
        batches = [r[0] for r in conn.execute("SELECT batch_id FROM sms_batches")]
    register(conninfo, "track-race", CAMPAIGN, batches, DeliverySettings(request_timeout_s=2), [D])
    with psycopg.connect(**conninfo) as conn:
        run = load_run(conn, "track-race")
    poll_once(
        conninfo,
        run,
        DeliverySettings(request_timeout_s=2),
        SmsSettings(**FAST),
        endpoints(primary, secondary),
        lambda c: 0,
    )
    assert notification_statuses(conninfo)["PENDING"] > 0, "no retryable failure to race on"
    primary.set_faults({"fail_next": {"status": 503, "count": 1}, "latency_ms": 150})
    race(conninfo, primary, secondary)
    assert_at_most_one_reached(primary, secondary)
    statuses = notification_statuses(conninfo)
    assert "PENDING" not in statuses, statuses
    assert sum(statuses.values()) == qualified


def test_a_retry_waits_its_backoff_and_a_status_read_again_can_settle_it(prepared, carriers) -> None:
    """A FAILED (50001) of a message the carrier in truth delivered: the retry is not sent before its
    backoff, and when it falls due the status read just before it finds DELIVERED: no second SMS."""
    conninfo, _ = prepared
    primary, _ = carriers
    # A window open at any hour, so the engine's clock is the real one: the retry's due time is the
    # database's now() + backoff, which a clock shifted to the next window would overtake.
    settings = SmsSettings(**{**FAST, **OPEN_WINDOW, "retry_backoff_s": 600})
    clock = window_clock(settings)
    submit(conninfo, CAMPAIGN, settings, endpoints(primary), KEYRING, CORR, clock=clock)
    with psycopg.connect(**conninfo) as conn:
        queued = conn.execute("SELECT tracking_id FROM sms_messages WHERE status = 'QUEUED' ORDER BY 1").fetchall()
    time.sleep(0.5)  # the simulator settles a message 0.3 s after acceptance
    delivered = next(t for (t,) in queued if carrier_status(primary, t) == "DELIVERED")
    with psycopg.connect(**conninfo) as conn:
        applied = apply_updates(conn, [StatusUpdate("primary", delivered, "FAILED", "50001")], "poll", settings)
    assert [a.retry for a in applied] == ["retry"]
    posts = primary.stats()["batches_received"]
    early = submit(conninfo, CAMPAIGN, settings, endpoints(primary), KEYRING, CORR, clock=clock)
    assert early.post_attempts == 0 and primary.stats()["batches_received"] == posts, "retried before its backoff"
    later = submit(
        conninfo, CAMPAIGN, settings, endpoints(primary), KEYRING, CORR, clock=lambda: clock() + timedelta(seconds=601)
    )
    assert later.settled_before_retry == 1 and later.post_attempts == 0
    with psycopg.connect(**conninfo) as conn:
        status = conn.execute(
            "SELECT n.status FROM sms_notifications n JOIN sms_messages m ON m.message_id = n.current_message_id "
            "WHERE m.tracking_id = %s",
            (delivered,),
        ).fetchone()[0]
    assert status == "DELIVERED"


def test_a_tracking_poll_at_night_or_on_saturday_sends_no_retry_and_the_next_window_does(prepared, carriers) -> None:
    conninfo, _ = prepared
    primary, _ = carriers
    settings = SmsSettings(**FAST)
    submit(conninfo, CAMPAIGN, settings, endpoints(primary), KEYRING, CORR, clock=window_clock(settings))
    time.sleep(0.5)  # every message final at the simulator; the carrier model fails some, retryably
    with psycopg.connect(**conninfo) as conn:
        batches = [r[0] for r in conn.execute("SELECT batch_id FROM sms_batches")]
    tracking = DeliverySettings(poll_interval_s=0.2, window_s=600, request_timeout_s=2, backoff_multiplier_s=0.001)
    register(conninfo, "track-night", CAMPAIGN, batches, tracking, [D])
    real = datetime.now(UTC).astimezone(LOCAL)
    tomorrow = real.date() + timedelta(days=1)
    saturday = tomorrow + timedelta(days=(5 - tomorrow.weekday()) % 7)
    nights = [_local(tomorrow, 23), _local(tomorrow + timedelta(days=1), 3), _local(saturday, 11)]
    for moment in [*nights, None]:
        moment = moment or window_clock(settings)()  # the next window, after the night polls
        posts = primary.stats()["batches_received"]
        with psycopg.connect(**conninfo) as conn:
            run = load_run(conn, "track-night")

        def resubmit(campaign_id: str, m: datetime = moment) -> int:
            return submit(
                conninfo, campaign_id, settings, endpoints(primary), KEYRING, CORR, clock=lambda: m, wait_s=0
            ).messages_accepted

        poll_once(conninfo, run, tracking, settings, endpoints(primary), resubmit)
        sent = primary.stats()["batches_received"] - posts
        if moment in nights:
            assert sent == 0, f"a retry went out at {moment.isoformat()}"
    assert sent >= 1, "the retries did not go out in the next window"
    with psycopg.connect(**conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM sms_messages WHERE attempt = 2").fetchone()[0] >= 1
