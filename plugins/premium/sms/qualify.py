"""Qualification (§3.1, §4.2) in SQL, then rendering of the qualified customers' messages.

:func:`qualify` writes one ``qualification_outcomes`` row per customer for the check date
(include/sql/qualify_customers.sql). :func:`render_qualified` renders each qualified customer's
SMS (decrypting the first name in memory only) to record template, encoding and segments;
the text is not stored here (only in the outbox, encrypted: :func:`premium.notifications.outbox.write_outbox`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import psycopg

from premium.crypto import PiiKeyring, aad_for
from premium.notifications.window import campaign_id_for
from premium.paths import read_sql
from premium.settings import SmsSettings

log = logging.getLogger(__name__)


@dataclass
class QualificationSummary:
    check_date: date
    campaign_id: str
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def qualified(self) -> int:
        return self.outcomes.get("qualified", 0)

    @property
    def reasons(self) -> dict[str, int]:
        return {k: v for k, v in self.outcomes.items() if k != "qualified"}


def window_start(check_date: date, settings: SmsSettings) -> date:
    return check_date - timedelta(days=settings.window_days - 1)


def qualify(conninfo: dict[str, Any], check_date: date, dag_run_id: str, settings: SmsSettings) -> QualificationSummary:
    campaign_id = campaign_id_for(check_date)
    params = {
        "check_date": check_date,
        "window_start": window_start(check_date, settings),
        "campaign_id": campaign_id,
        "min_passing": settings.min_passing_checks,
        "dag_run_id": dag_run_id,
    }
    with psycopg.connect(**conninfo) as conn:
        conn.execute(read_sql("qualify_customers.sql"), params)
        rows = conn.execute(
            "SELECT outcome, count(*) FROM qualification_outcomes WHERE check_date = %s GROUP BY outcome",
            (check_date,),
        ).fetchall()
    summary = QualificationSummary(check_date, campaign_id, dict(rows))
    log.info(
        "qualification of %s (%s, window %s..%s, >= %d passing checks): %d qualified; not qualified: %s",
        check_date,
        campaign_id,
        params["window_start"],
        check_date,
        settings.min_passing_checks,
        summary.qualified,
        summary.reasons,
    )
    return summary


def render_qualified(
    conninfo: dict[str, Any], check_date: date, keyring: PiiKeyring, renderer: Any, page_size: int = 5000
) -> dict[str, int]:
    """Render every qualified customer's SMS for D; records template/encoding/segments. Returns counts."""
    counts: dict[str, int] = {}
    with psycopg.connect(**conninfo) as conn:
        after = ""
        while True:
            rows = conn.execute(
                """
                SELECT q.customer_id, c.language, c.first_name_enc, c.pii_key_id
                FROM qualification_outcomes q JOIN customers c USING (customer_id)
                WHERE q.check_date = %s AND q.outcome = 'qualified' AND q.customer_id > %s
                ORDER BY q.customer_id LIMIT %s
                """,
                (check_date, after, page_size),
            ).fetchall()
            if not rows:
                break
            updates = []
            for customer_id, language, name_enc, key_id in rows:
                name = keyring.decrypt(bytes(name_enc), key_id, aad_for(customer_id, "first_name"))
                rendered = renderer.render(name, language)
                updates.append((customer_id, rendered.template_id, rendered.encoding, rendered.segments))
                key = f"{rendered.template_id}/{rendered.encoding}/{rendered.segments}"
                counts[key] = counts.get(key, 0) + 1
            with conn.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS staging_renders "
                    "(customer_id text, template_id text, encoding text, segments int) ON COMMIT DELETE ROWS"
                )
                with cur.copy("COPY staging_renders FROM STDIN") as copy:
                    for row in updates:
                        copy.write_row(row)
                cur.execute(
                    """
                    UPDATE qualification_outcomes q SET template_id = s.template_id, encoding = s.encoding,
                        segments = s.segments
                    FROM staging_renders s WHERE q.check_date = %s AND q.customer_id = s.customer_id
                    """,
                    (check_date,),
                )
            conn.commit()
            after = rows[-1][0]
    log.info("rendered qualified messages of %s: %s (template/encoding/segments: count)", check_date, counts)
    return counts
