"""Insert hand-made customers and balance checks for SQL-level tests."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import psycopg

from premium.crypto import aad_for
from premium.identifiers import account_id_for
from tests.support.bank import KEYRING


def add_customer(
    conn: psycopg.Connection,
    number: int,
    *,
    name: str = "Dana",
    phone: str = "050-1234567",
    language: str = "he",
    status: str = "ACTIVE",
    consent: bool = True,
    phone_valid: bool = True,
) -> str:
    customer_id = str(number)
    key_id, name_enc = KEYRING.encrypt(name, aad_for(customer_id, "first_name"))
    _, phone_enc = KEYRING.encrypt(phone, aad_for(customer_id, "phone_number"))
    conn.execute(
        """
        INSERT INTO customers (customer_id, account_id, first_name_enc, phone_enc, phone_hash, pii_key_id, language,
                               status, sms_consent, sms_consent_at, phone_valid)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END, %s)
        """,
        (
            customer_id,
            account_id_for(number),
            name_enc,
            phone_enc,
            KEYRING.phone_hash(phone),
            key_id,
            language,
            status,
            consent,
            consent,
            phone_valid,
        ),
    )
    return customer_id


def add_checks(
    conn: psycopg.Connection,
    customer_id: str,
    end: date,
    days: int,
    *,
    balance: Decimal = Decimal("20000"),
    failing_days: tuple[int, ...] = (),
    skipped_days: tuple[int, ...] = (),
    status_on_end: str = "ACTIVE",
) -> None:
    """``days`` daily checks ending at ``end``; offsets (0 = end) in failing_days are below 15,000,
    offsets in skipped_days have no row (an outage, a 404, a failure)."""
    account_id = account_id_for(int(customer_id))
    for offset in range(days):
        if offset in skipped_days:
            continue
        day = end - timedelta(days=offset)
        amount = Decimal("1000") if offset in failing_days else balance
        conn.execute(
            """
            INSERT INTO daily_balance_checks (account_id, check_date, customer_id, balance, currency, threshold,
                passes_threshold, account_status, check_timestamp, correlation_id, banking_reference_id)
            VALUES (%s, %s, %s, %s, 'NIS', 15000, %s, %s, %s, 'corr-test', 'REF-1')
            """,
            (
                account_id,
                day,
                customer_id,
                amount,
                amount >= 15000,
                status_on_end if offset == 0 else "ACTIVE",
                f"{day}T20:00:00+00:00",
            ),
        )
