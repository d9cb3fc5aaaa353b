"""Late sends: an operator's explicit, audited decision that an old check date may still send.

A run whose check date is older than the deployment's ``max_lag_days`` (a backfill, a late rerun)
records qualification and sends nothing. Sending it anyway is not a run param anyone allowed to
trigger could set: it is authorised per check date with ``python -m premium.cli
authorise-late-send --check-date D --by NAME --reason TEXT``, stored in ``late_send_authorisations``
and written to ``audit_trail`` in the same transaction. The send window and every other rail still
apply; ``plan_send`` of that date's run (a rerun after the authorisation) then sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import orjson
import psycopg

AUDIT_ACTION = "late_send_authorised"
ALL_CUSTOMERS = "*"  # audit_trail.customer_id of an action on a whole check date


@dataclass(frozen=True)
class Authorisation:
    check_date: date
    authorised_by: str
    reason: str
    authorised_at: datetime


def authorise(conn: psycopg.Connection, check_date: date, authorised_by: str, reason: str) -> Authorisation:
    """Record (or renew) the authorisation of ``check_date``, audited in the same transaction."""
    authorised_by, reason = authorised_by.strip(), reason.strip()
    if not authorised_by or not reason:
        raise ValueError("a late send needs who authorises it (--by) and why (--reason)")
    with conn.transaction():
        row = conn.execute(
            """
            INSERT INTO late_send_authorisations (check_date, authorised_by, reason) VALUES (%s, %s, %s)
            ON CONFLICT (check_date) DO UPDATE
                SET authorised_by = EXCLUDED.authorised_by, reason = EXCLUDED.reason, authorised_at = now()
            RETURNING authorised_at
            """,
            (check_date, authorised_by, reason),
        ).fetchone()
        conn.execute(
            "INSERT INTO audit_trail (action, customer_id, check_date, outcome, details) VALUES (%s, %s, %s, %s, %s)",
            (
                AUDIT_ACTION,
                ALL_CUSTOMERS,
                check_date,
                "AUTHORISED",
                orjson.dumps({"authorised_by": authorised_by, "reason": reason}).decode(),
            ),
        )
    return Authorisation(check_date, authorised_by, reason, row[0])


def authorisation_for(conn: psycopg.Connection, check_date: date) -> Authorisation | None:
    row = conn.execute(
        "SELECT check_date, authorised_by, reason, authorised_at FROM late_send_authorisations WHERE check_date = %s",
        (check_date,),
    ).fetchone()
    return Authorisation(*row) if row else None
