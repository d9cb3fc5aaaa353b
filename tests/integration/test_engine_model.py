"""A model-based test of the submission engine (Hypothesis stateful testing).

Hypothesis drives random sequences of: carrier behaviours (202, partial 202, a refusal naming a
message, 503 with the carrier's body, a gateway's 502/504, commit-then-500/504/drop, 429), engine
runs at random moments (inside the window, at 23:00, at 03:00, on a Saturday), runs that crash
mid-way, webhooks (late, duplicated, out of order, per carrier) and tracking polls, against the two
carrier simulators and PostgreSQL. After every step:

- no customer has more than one message that may have reached the phone (every earlier accepted
  attempt of a customer ended FAILED at its carrier), and no message id reached two carriers;
- nothing was POSTed while the window was closed;
and when the sequence ends, everything is driven to its end: every notification is final.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from unittest import mock
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from premium.delivery.tracking import finalize, load_run, poll_once, register
from premium.notifications import engine, outbox, window
from premium.notifications.state import StatusUpdate, record_webhook
from premium.notifications.window import campaign_id_for
from premium.settings import DeliverySettings, SmsSettings
from premium.sms.qualify import qualify, render_qualified
from premium.sms.render import SmsRenderer
from tests.integration.test_exactly_once import carrier_status
from tests.support import env
from tests.support.bank import KEYRING, load_synthetic_customers
from tests.support.carrier import endpoint, make_everyone_pass, window_clock
from tests.support.db import truncate_all

pytestmark = pytest.mark.integration

D = date(2025, 11, 18)
CAMPAIGN = campaign_id_for(D)
CORR = "corr-model"
LOCAL = ZoneInfo("Asia/Jerusalem")
SETTINGS = SmsSettings(
    backoff_multiplier_s=0.001,
    breaker_reset_s=0.2,
    breaker_failures=2,
    failover_failure_rate=0.0,
    request_timeout_s=1.0,
    retry_backoff_s=0,
    max_retry_after_s=0.05,
    lease_ttl_s=1.0,
    lease_wait_s=5.0,
    post_retries=1,
)
TRACKING = DeliverySettings(poll_interval_s=0.1, window_s=600, request_timeout_s=2, backoff_multiplier_s=0.001)
BEHAVIOURS = {
    "ok": {},
    "partial_202": {"omit_rate": 0.3},
    "refuse_one": None,  # filled in with a message of the outbox
    "503_with_body": {"fail_next": {"status": 503, "count": 3}},
    "gateway_502": {"fail_next": {"status": 502, "count": 2}},
    "gateway_504": {"fail_next": {"status": 504, "count": 2}},
    "commit_then_500": {"commit_then": {"status": 500, "count": 2}},
    "commit_then_504": {"commit_then": {"status": 504, "count": 2}},
    "commit_then_drop": {"commit_then": {"status": 0, "count": 2}},
    "commits_and_answers_504_always": {"commit_then": {"status": 504, "count": 1000}},
    "rate_limited": {"fail_next": {"status": 429, "count": 2}},
}
FINAL = {"DELIVERED", "FAILED", "UNDELIVERABLE", "UNCONFIRMED"}


class Crash(Exception):
    """The engine's process dying mid-run, as far as the database and the carriers can tell."""


def moments() -> dict[str, datetime]:
    """Moments, all after the real time (so retries scheduled by the database are due): open, 23:00, 03:00, Saturday."""
    now = datetime.now(UTC)
    local = now.astimezone(LOCAL)
    day = local.date() + timedelta(days=1)
    saturday = day + timedelta(days=(5 - day.weekday()) % 7)
    return {
        "open": window_clock(SETTINGS)(),
        "23:00": datetime(day.year, day.month, day.day, 23, tzinfo=LOCAL),
        "03:00": datetime(day.year, day.month, day.day, 3, tzinfo=LOCAL) + timedelta(days=1),
        "saturday": datetime(saturday.year, saturday.month, saturday.day, 10, tzinfo=LOCAL),
    }


class EngineModel(RuleBasedStateMachine):
    sims: tuple = ()
    conninfo: dict = {}
    tmp_path = None

    @initialize()
    def prepare(self) -> None:
        truncate_all(self.conninfo)
        for sim in self.sims:
            sim.set_faults({})
            sim.call("POST", "/_sim/reset")
        load_synthetic_customers(self.conninfo, self.tmp_path, 60, seed=19)
        make_everyone_pass(self.conninfo, D)
        qualify(self.conninfo, D, "manual__model", SmsSettings())
        render_qualified(self.conninfo, D, KEYRING, SmsRenderer())
        with psycopg.connect(**self.conninfo) as conn:
            outbox.write_outbox(conn, D, CAMPAIGN, CORR, keyring=KEYRING, renderer=SmsRenderer())
            outbox.assign_batches(conn, CAMPAIGN, 500, CORR)
            self.message_ids = [r[0] for r in conn.execute("SELECT message_id FROM sms_messages ORDER BY 1")]
        self.endpoints = {
            "primary": endpoint(self.sims[0], "primary", env.TEST_SMS_API_KEY),
            "secondary": endpoint(self.sims[1], "secondary", env.TEST_SMS_SECONDARY_API_KEY),
        }
        self.tracking_run = f"model-{datetime.now(UTC).timestamp()}"
        register(self.conninfo, self.tracking_run, CAMPAIGN, [], TRACKING, [D])
        self.webhook_seq = 0

    # -- the world ------------------------------------------------------------------------------

    @rule(carrier=st.sampled_from([0, 1]), behaviour=st.sampled_from(sorted(BEHAVIOURS)), pick=st.integers(0, 10_000))
    def carrier_behaves(self, carrier: int, behaviour: str, pick: int) -> None:
        faults = BEHAVIOURS[behaviour]
        if faults is None:
            faults = {"refuse": {"message_ids": [self.message_ids[pick % len(self.message_ids)]], "status": 422}}
        self.sims[carrier].set_faults(faults)

    def _engine(self, moment: datetime, crash_after: int | None = None) -> None:
        before = [sim.stats()["batches_received"] for sim in self.sims]
        calls = {"n": 0}
        original = engine.SubmissionEngine._record

        def record(eng, *args, **kwargs):
            calls["n"] += 1
            if crash_after is not None and calls["n"] > crash_after:
                raise Crash("killed before recording the 202")
            return original(eng, *args, **kwargs)

        with mock.patch.object(engine.SubmissionEngine, "_record", record):
            try:
                engine.submit(
                    self.conninfo, CAMPAIGN, SETTINGS, self.endpoints, KEYRING, CORR, clock=lambda: moment, max_rounds=3
                )
            except Crash:
                pass
        if not window.is_open(moment, SETTINGS):
            after = [sim.stats()["batches_received"] for sim in self.sims]
            assert after == before, f"a batch was POSTed at {moment.isoformat()}, outside the send window"

    @rule(when=st.sampled_from(["open", "open", "23:00", "03:00", "saturday"]))
    def engine_runs(self, when: str) -> None:
        self._engine(moments()[when])

    @rule(crash_after=st.integers(0, 2))
    def engine_crashes(self, crash_after: int) -> None:
        self._engine(moments()["open"], crash_after)

    @rule(
        carrier=st.sampled_from(["primary", "secondary"]),
        pick=st.integers(0, 10_000),
        twice=st.booleans(),
        stale=st.booleans(),
    )
    def webhook_arrives(self, carrier: str, pick: int, twice: bool, stale: bool) -> None:
        with psycopg.connect(**self.conninfo) as conn:
            rows = conn.execute(
                "SELECT tracking_id FROM delivery_status WHERE carrier = %s ORDER BY tracking_id", (carrier,)
            ).fetchall()
        if not rows:
            return
        tracking_id = rows[pick % len(rows)][0]
        sim = self.sims[0 if carrier == "primary" else 1]
        truth = "SENT" if stale else carrier_status(sim, tracking_id)
        update = StatusUpdate(carrier, tracking_id, truth, "50001" if truth == "FAILED" else None)
        self.webhook_seq += 1
        for _ in range(2 if twice else 1):
            with psycopg.connect(**self.conninfo) as conn:
                record_webhook(conn, f"evt-{self.webhook_seq}", update, SETTINGS)

    @rule(when=st.sampled_from(["open", "23:00", "saturday"]))
    def tracking_polls(self, when: str) -> None:
        moment = moments()[when]
        before = [sim.stats()["batches_received"] for sim in self.sims]
        with psycopg.connect(**self.conninfo) as conn:
            run = load_run(conn, self.tracking_run)

        def resubmit(campaign_id: str) -> int:
            summary = engine.submit(
                self.conninfo, campaign_id, SETTINGS, self.endpoints, KEYRING, CORR, clock=lambda: moment, wait_s=0
            )
            return summary.messages_accepted

        poll_once(self.conninfo, run, TRACKING, SETTINGS, self.endpoints, resubmit)
        if not window.is_open(moment, SETTINGS):
            assert [sim.stats()["batches_received"] for sim in self.sims] == before, "a retry went out at night"

    # -- what must always hold -------------------------------------------------------------------

    @invariant()
    def at_most_one_sms_reached_each_customer(self) -> None:
        if not self.sims or not hasattr(self, "message_ids"):
            return
        by_customer: dict[str, list] = defaultdict(list)
        seen: set[str] = set()
        for sim in self.sims:
            for m in sim.call("GET", "/_sim/received"):
                assert m["messageId"] not in seen, f"{m['messageId']} reached both carriers"
                seen.add(m["messageId"])
                by_customer[m["messageId"].rsplit("-", 2)[-2]].append((sim, m))
        for customer, messages in by_customer.items():
            messages.sort(key=lambda sm: int(sm[1]["messageId"].rsplit("-", 1)[-1]))
            for sim, m in messages[:-1]:
                assert carrier_status(sim, m["trackingId"]) == "FAILED", f"customer {customer} may have two SMS"

    def teardown(self) -> None:
        if not hasattr(self, "message_ids"):
            return
        for sim in self.sims:
            sim.set_faults({})
        moment = moments()["open"]
        for _ in range(40):
            self._engine(moment)
            with psycopg.connect(**self.conninfo) as conn:
                run = load_run(conn, self.tracking_run)
            outcome = poll_once(
                self.conninfo,
                run,
                TRACKING,
                SETTINGS,
                self.endpoints,
                lambda c: (
                    engine.submit(
                        self.conninfo, c, SETTINGS, self.endpoints, KEYRING, CORR, clock=lambda: moment
                    ).messages_accepted
                ),
            )
            if outcome.open_messages == 0 and outcome.pending_retries == 0:
                break
        with psycopg.connect(**self.conninfo) as conn:
            conn.execute(
                "UPDATE delivery_tracking_runs SET deadline = now() WHERE dag_run_id = %s", (self.tracking_run,)
            )
            run = load_run(conn, self.tracking_run)
        finalize(self.conninfo, run, SETTINGS)
        self.at_most_one_sms_reached_each_customer()
        with psycopg.connect(**self.conninfo) as conn:
            statuses = dict(conn.execute("SELECT status, count(*) FROM sms_notifications GROUP BY 1").fetchall())
        assert set(statuses) <= FINAL, f"notifications left open: {statuses}"


def test_the_engine_keeps_its_promises_under_random_sequences(app_db, carriers, tmp_path_factory) -> None:
    EngineModel.sims = carriers
    EngineModel.conninfo = app_db
    EngineModel.tmp_path = tmp_path_factory.mktemp("model")
    runner = EngineModel.TestCase
    runner.settings = settings(
        max_examples=20,
        stateful_step_count=10,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    runner().runTest()
