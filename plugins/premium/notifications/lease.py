"""One writer per campaign: a lease row in PostgreSQL with an expiry and a fencing token.

Whoever holds the unexpired lease of a campaign is its only submitter: the daily submission, its
retries, every delivery-tracking run and a manual run all go through :class:`CampaignLease`.

- :meth:`acquire` takes the lease when it is free, expired, or already ours; each take gives a
  new, larger ``token``.
- :meth:`renew` pushes the expiry forward while the holder works (the engine renews every third
  of the lease's time to live); it fails once someone else has taken the lease.
- :meth:`fence` is the first statement of every state-changing transaction of the engine: it
  locks the lease row ``FOR SHARE`` with our token. A holder whose lease was taken over (a
  process that was paused, lost its heartbeat, then woke up) raises :class:`LeaseLost` there and
  records nothing; a takeover waits for a transaction that passed its fence to commit, so the new
  holder sees all of it (a batch marked in flight, for instance).
- A holder that dies (SIGKILL, lost machine) simply stops renewing: the lease expires after its
  time to live and the next engine takes it over.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

import psycopg

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """This engine's lease of the campaign was taken over: it must stop and record nothing."""


def holder_name(label: str) -> str:
    """A holder id unique to this process and call: ``<label>@<host>:<pid>:<random>``."""
    return f"{label}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:200]


class CampaignLease:
    def __init__(self, campaign_id: str, holder: str, ttl_s: float) -> None:
        self.campaign_id = campaign_id
        self.holder = holder
        self.ttl_s = ttl_s
        self.token: int | None = None

    def try_acquire(self, conn: psycopg.Connection) -> bool:
        row = conn.execute(
            """
            INSERT INTO sms_campaign_leases AS l (campaign_id, holder, token, acquired_at, expires_at)
            VALUES (%(campaign)s, %(holder)s, 1, now(), now() + make_interval(secs => %(ttl)s))
            ON CONFLICT (campaign_id) DO UPDATE
                SET holder = EXCLUDED.holder, token = l.token + 1, acquired_at = now(), expires_at = EXCLUDED.expires_at
                WHERE l.expires_at < now() OR l.holder = EXCLUDED.holder
            RETURNING token
            """,
            {"campaign": self.campaign_id, "holder": self.holder, "ttl": self.ttl_s},
        ).fetchone()
        conn.commit()
        if row is None:
            return False
        self.token = row[0]
        log.info("submission lease of %s taken (token %d)", self.campaign_id, self.token)
        return True

    def acquire(self, conn: psycopg.Connection, wait_s: float) -> bool:
        """Take the lease, waiting up to ``wait_s`` for another holder to finish or expire."""
        deadline = time.monotonic() + wait_s
        while True:
            if self.try_acquire(conn):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(1.0, max(0.05, self.ttl_s / 10), max(0.0, deadline - time.monotonic())))

    def renew(self, conn: psycopg.Connection) -> None:
        row = conn.execute(
            "UPDATE sms_campaign_leases SET expires_at = now() + make_interval(secs => %s) "
            "WHERE campaign_id = %s AND token = %s RETURNING token",
            (self.ttl_s, self.campaign_id, self.token),
        ).fetchone()
        conn.commit()
        if row is None:
            raise LeaseLost(f"submission lease of {self.campaign_id} (token {self.token}) was taken over")

    def release(self, conn: psycopg.Connection) -> None:
        """Let the next engine take over at once (only our own token is released)."""
        conn.execute(
            "UPDATE sms_campaign_leases SET expires_at = now() - interval '1 microsecond' "
            "WHERE campaign_id = %s AND token = %s",
            (self.campaign_id, self.token),
        )
        conn.commit()

    def fence(self, cur: Any) -> None:
        """First statement of a state-changing transaction: still ours, and held until it commits."""
        row = cur.execute(
            "SELECT 1 FROM sms_campaign_leases WHERE campaign_id = %s AND token = %s FOR SHARE",
            (self.campaign_id, self.token),
        ).fetchone()
        if row is None:
            raise LeaseLost(f"submission lease of {self.campaign_id} (token {self.token}) was taken over")
