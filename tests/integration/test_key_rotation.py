"""Key rotation that leaves no row behind, ``key-status``, and keyrings refused for lacking a used key.

Every encrypted column (customers, SMS outbox payloads, balances) against real PostgreSQL: rows
locked by another session while the rotation runs, rows written under the old key by a process
that loaded its keyring before the switch, and the old key retired only once nothing uses it.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from premium import cli, crypto, synthetic
from premium.crypto import (
    ENCRYPTED_TABLES,
    KeyringCoverageError,
    PiiKeyring,
    aad_for,
    check_keyring_covers,
    encrypt_balance,
    encrypted_table,
    key_usage,
    load_keyring_for,
    read_balance,
    rotate_until_done,
)
from premium.customers import load_customers_csv, read_customer_pii
from premium.notifications.outbox import outbox_aad
from tests.support.env import TEST_PII_KEYS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BOTH = PiiKeyring.from_extra(TEST_PII_KEYS)  # the connection's keyring: current test-k1, test-k0 kept
OLD_ONLY = PiiKeyring.from_extra(  # what a process that loaded the keyring before the switch holds
    {**TEST_PII_KEYS, "current_key_id": "test-k0", "keys": {"test-k0": TEST_PII_KEYS["keys"]["test-k0"]}}
)
NEW_EXTRA = {**TEST_PII_KEYS, "keys": {"test-k1": TEST_PII_KEYS["keys"]["test-k1"]}}
NEW_ONLY = PiiKeyring.from_extra(NEW_EXTRA)  # the ring once test-k0 is retired

CUSTOMERS = 40
CAMPAIGN = "CMP-20251118"
D = date(2025, 11, 18)


def insert_customer(conn: psycopg.Connection, number: int, keyring: PiiKeyring) -> str:
    """A customer written by a process holding ``keyring`` (e.g. a loader with a stale keyring)."""
    customer_id = str(number)
    key_id, name_enc = keyring.encrypt(f"Late{number}", aad_for(customer_id, "first_name"))
    _, phone_enc = keyring.encrypt("050-7654321", aad_for(customer_id, "phone_number"))
    conn.execute(
        "INSERT INTO customers (customer_id, account_id, first_name_enc, phone_enc, phone_hash, pii_key_id, "
        "language, status, sms_consent) VALUES (%s, %s, %s, %s, %s, %s, 'en', 'ACTIVE', false)",
        (customer_id, f"LATE-{number}", name_enc, phone_enc, keyring.phone_hash("050-7654321"), key_id),
    )
    return customer_id


def insert_payload(conn: psycopg.Connection, customer_id: str, keyring: PiiKeyring | None) -> None:
    """An outbox notification with its payload under ``keyring`` (``None``: UNDELIVERABLE, no payload)."""
    content = phone = key_id = None
    status = "UNDELIVERABLE"
    if keyring is not None:
        key_id, content = keyring.encrypt(f"Hello {customer_id}", outbox_aad(CAMPAIGN, customer_id, "content"))
        _, phone = keyring.encrypt("+972501234567", outbox_aad(CAMPAIGN, customer_id, "phone_number"))
        status = "PENDING"
    conn.execute(
        "INSERT INTO sms_notifications (campaign_id, customer_id, check_date, status, language, template_id, "
        "encoding, segments, correlation_id, content_enc, phone_enc, pii_key_id) "
        "VALUES (%s, %s, %s, %s, 'en', 't1', 'GSM-7', 1, 'corr', %s, %s, %s)",
        (CAMPAIGN, customer_id, D, status, content, phone, key_id),
    )


def insert_balance(conn: psycopg.Connection, account_id: str, day: date, keyring: PiiKeyring | None) -> None:
    """A balance check, encrypted under ``keyring`` (``None``: plaintext, written before encryption)."""
    amount = Decimal("15000.50") + day.day
    balance, blob, key_id = amount, None, None
    if keyring is not None:
        balance = None
        key_id, blob = encrypt_balance(keyring, account_id, day, amount)
    conn.execute(
        "INSERT INTO daily_balance_checks (account_id, check_date, customer_id, balance, currency, threshold, "
        "passes_threshold, account_status, check_timestamp, correlation_id, balance_enc, balance_key_id) "
        "VALUES (%s, %s, '1', %s, 'ILS', 15000, true, 'ACTIVE', now(), 'corr', %s, %s)",
        (account_id, day, balance, blob, key_id),
    )


@pytest.fixture
def old_data(db: psycopg.Connection, app_db: dict, tmp_path: Path) -> dict:
    """Every encrypted table written under test-k0 (the old key), plus rows without ciphertext."""
    load_customers_csv(synthetic.write_csv(tmp_path / "customers.csv", count=CUSTOMERS), db, OLD_ONLY)
    for n in range(1, 11):
        insert_payload(db, str(n), OLD_ONLY)
    insert_payload(db, "11", None)
    for n in range(1, 6):
        insert_balance(db, f"ACC-{n}", D, OLD_ONLY)
    insert_balance(db, "ACC-9", D, None)
    return app_db


def readable(conn: psycopg.Connection, keyring: PiiKeyring) -> dict[str, dict]:
    """Every ciphertext of every table, decrypted with ``keyring`` (raises if one cannot be)."""
    ids = [r[0] for r in conn.execute("SELECT customer_id FROM customers")]
    payloads = {
        customer_id: (
            keyring.decrypt(content, key_id, outbox_aad(CAMPAIGN, customer_id, "content")),
            keyring.decrypt(phone, key_id, outbox_aad(CAMPAIGN, customer_id, "phone_number")),
        )
        for customer_id, content, phone, key_id in conn.execute(
            "SELECT customer_id, content_enc, phone_enc, pii_key_id FROM sms_notifications WHERE content_enc IS NOT NULL"
        )
    }
    balances = {
        r[0]: read_balance(keyring, *r)
        for r in conn.execute(f"SELECT {crypto.BALANCE_COLUMNS} FROM daily_balance_checks")
    }
    return {"customers": read_customer_pii(conn, keyring, ids), "payloads": payloads, "balances": balances}


def key_status(capsys: pytest.CaptureFixture) -> dict:
    capsys.readouterr()
    assert cli.main(["key-status", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def by_key(status: dict) -> dict[str, dict]:
    return {t["table"]: t["rows_by_key"] for t in status["tables"]}


def wait_for_lock_wait(conn: psycopg.Connection, deadline_s: float = 60.0) -> None:
    """Until some session of this database waits for a row lock (the rotation's waiting pass)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        waiting = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("the rotation never waited for the locked rows")


def test_every_encrypted_column_of_the_schema_is_registered(app_db: dict) -> None:
    with psycopg.connect(**app_db) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND (data_type = 'bytea' OR column_name LIKE '%key_id')"
        ).fetchall()
    ciphertexts = {(t, c) for t, c, kind in columns if kind == "bytea"} - {("customers", "phone_hash")}
    assert ciphertexts == {(t.table, c) for t in ENCRYPTED_TABLES for c in t.columns}
    assert {(t, c) for t, c, kind in columns if c.endswith("key_id")} == {
        (t.table, t.key_column) for t in ENCRYPTED_TABLES
    }


def test_key_status_counts_rows_per_key_and_flags_unknown_keys(old_data, db, capsys) -> None:
    for n in range(CUSTOMERS + 1, CUSTOMERS + 4):
        insert_customer(db, n, BOTH)
    insert_balance(db, "ACC-7", D, BOTH)
    lost = PiiKeyring.from_extra({**TEST_PII_KEYS, "current_key_id": "gone-k9", "keys": {"gone-k9": "A" * 43 + "="}})
    insert_balance(db, "ACC-8", D, lost)

    status = key_status(capsys)
    assert status["current_key_id"] == "test-k1"
    assert status["keyring_key_ids"] == ["test-k0", "test-k1"]
    assert by_key(status) == {
        "customers": {"test-k0": CUSTOMERS, "test-k1": 3},
        "sms_notifications": {"test-k0": 10},  # the UNDELIVERABLE row holds no ciphertext
        "daily_balance_checks": {"gone-k9": 1, "test-k0": 5, "test-k1": 1},  # plaintext rows are not counted
    }
    columns = {t["table"]: t["columns"] for t in status["tables"]}
    assert columns["customers"] == {
        "first_name_enc": {"test-k0": CUSTOMERS, "test-k1": 3},
        "phone_enc": {"test-k0": CUSTOMERS, "test-k1": 3},
    }
    assert columns["daily_balance_checks"] == {"balance_enc": {"gone-k9": 1, "test-k0": 5, "test-k1": 1}}
    assert status["rows_not_under_current_key"] == {
        "customers": CUSTOMERS,
        "sms_notifications": 10,
        "daily_balance_checks": 6,
    }
    assert status["missing_key_ids"] == ["gone-k9"]
    assert status["unused_key_ids"] == []

    assert cli.main(["key-status"]) == 0
    text = capsys.readouterr().out
    assert "current key test-k1" in text
    assert "gone-k9" in text and "NOT IN KEYRING" in text
    assert f"rows under a key other than test-k1: {CUSTOMERS + 16}" in text

    # The cheap usage query (loose index scan on customers, a scan elsewhere) agrees with the counts.
    assert {t.table: set(keys) for t, keys in key_usage(db).items()} == {
        table: set(counts) for table, counts in by_key(status).items()
    }


def test_rotate_moves_every_table_then_the_old_key_can_be_retired(old_data, db, capsys) -> None:
    before = readable(db, BOTH)
    assert cli.main(["rotate", "--batch-size", "7"]) == 0
    out = capsys.readouterr().out
    assert f"customers: re-encrypted {CUSTOMERS} rows under key test-k1" in out
    assert "sms_notifications: re-encrypted 10 rows" in out
    assert "daily_balance_checks: re-encrypted 5 rows" in out
    assert "every encrypted row of customers, sms_notifications, daily_balance_checks is under key test-k1" in out

    status = key_status(capsys)
    assert status["rows_not_under_current_key"] == {"customers": 0, "sms_notifications": 0, "daily_balance_checks": 0}
    assert status["unused_key_ids"] == ["test-k0"]

    # test-k0 retired: the ring without it is accepted and reads every row, unchanged.
    check_keyring_covers(db, NEW_ONLY)
    assert readable(db, NEW_ONLY) == before
    assert cli.main(["rotate"]) == 0  # idempotent
    assert "re-encrypted 0 rows" in capsys.readouterr().out


def test_a_row_locked_during_rotation_is_moved_once_released(old_data, db, capsys) -> None:
    """Another session holds a customer; while the rotation waits for it, that session rewrites the
    customer under the old key (a loader with a stale keyring) and commits."""
    outcome: list[int] = []
    rotation = threading.Thread(target=lambda: outcome.append(cli.main(["rotate", "--lock-wait", "120"])))
    with psycopg.connect(**old_data) as locker:
        locker.execute("SELECT 1 FROM customers WHERE customer_id = '5' FOR UPDATE")
        rotation.start()
        wait_for_lock_wait(db)
        key_id, name_enc = OLD_ONLY.encrypt("Renamed", aad_for("5", "first_name"))
        locker.execute(
            "UPDATE customers SET first_name_enc = %s, pii_key_id = %s WHERE customer_id = '5'", (name_enc, key_id)
        )
        locker.commit()
    rotation.join(timeout=240)
    assert outcome == [0]
    assert "every encrypted row" in capsys.readouterr().out
    assert db.execute("SELECT DISTINCT pii_key_id FROM customers").fetchall() == [("test-k1",)]
    after = readable(db, NEW_ONLY)
    assert after["customers"]["5"][0] == "Renamed"
    assert len(after["payloads"]) == 10


def test_a_row_held_past_the_wait_is_reported_with_a_non_zero_exit(old_data, db, capsys) -> None:
    with psycopg.connect(**old_data) as locker:
        locker.execute("SELECT 1 FROM customers WHERE customer_id = '5' FOR UPDATE")
        assert cli.main(["rotate", "--lock-wait", "0.5"]) == 1
        captured = capsys.readouterr()
        assert "rotation INCOMPLETE" in captured.err
        assert "customers: 1 rows under key test-k0" in captured.err
        assert "sms_notifications" not in captured.err and "daily_balance_checks" not in captured.err
        assert "every encrypted row" not in captured.out
        status = key_status(capsys)
        assert status["rows_not_under_current_key"] == {
            "customers": 1,
            "sms_notifications": 0,
            "daily_balance_checks": 0,
        }
        assert "test-k0" not in status["unused_key_ids"]
        # Retiring test-k0 now would strand that row: such a keyring is refused.
        with pytest.raises(KeyringCoverageError, match="'test-k0' \\(customers.first_name_enc, customers.phone_enc\\)"):
            check_keyring_covers(db, NEW_ONLY)
        locker.rollback()
    assert cli.main(["rotate-pii-keys", "--lock-wait", "0.5"]) == 0
    assert "customers: re-encrypted 1 rows" in capsys.readouterr().out
    check_keyring_covers(db, NEW_ONLY)


def test_rows_written_under_the_old_key_meanwhile_are_caught(old_data, db, capsys, monkeypatch) -> None:
    """A writer that loaded the keyring before the switch adds a row under test-k0 after a pass."""
    one_pass = crypto.rotate_keys
    late = iter(range(1000, 2000))

    def pass_then_stale_write(conn, keyring, batch_size):
        moved = one_pass(conn, keyring, batch_size)
        with psycopg.connect(**old_data, autocommit=True) as writer:
            insert_customer(writer, next(late), OLD_ONLY)
        return moved

    # Once, after the first pass: a later pass moves it and the command succeeds.
    monkeypatch.setattr(crypto, "rotate_keys", pass_then_stale_write)
    assert cli.main(["rotate-pii-keys", "--max-passes", "1"]) == 1  # one pass only: caught, not hidden
    assert "customers: 1 rows under key test-k0" in capsys.readouterr().err
    monkeypatch.setattr(crypto, "rotate_keys", one_pass)
    assert cli.main(["rotate-pii-keys"]) == 0
    assert db.execute("SELECT DISTINCT pii_key_id FROM customers").fetchall() == [("test-k1",)]

    # A writer that keeps writing under the old key: never an exit 0 while its rows remain.
    insert_customer(db, next(late), OLD_ONLY)
    monkeypatch.setattr(crypto, "rotate_keys", pass_then_stale_write)
    capsys.readouterr()
    assert cli.main(["rotate-pii-keys", "--max-passes", "4", "--lock-wait", "5"]) == 1
    assert "customers: 1 rows under key test-k0" in capsys.readouterr().err
    assert db.execute("SELECT count(*) FROM customers WHERE pii_key_id = 'test-k0'").fetchone() == (1,)


def test_rotate_until_done_reports_passes_and_remaining(old_data, db) -> None:
    target = encrypted_table("daily_balance_checks")
    with psycopg.connect(**old_data, autocommit=True) as conn:
        result = rotate_until_done(conn, BOTH, target, crypto.rotate_balance_keys, batch_size=2)
        assert (result.moved, result.passes, result.done, dict(result.remaining)) == (5, 1, True, {})
        again = rotate_until_done(conn, BOTH, target, crypto.rotate_balance_keys)
        assert (again.moved, again.passes, again.done) == (0, 0, True)
        with pytest.raises(ValueError):
            rotate_until_done(conn, BOTH, target, crypto.rotate_balance_keys, lock_wait_s=0)


def test_a_keyring_lacking_a_used_key_refuses_to_load(old_data, db, capsys, monkeypatch, tmp_path) -> None:
    assert load_keyring_for(old_data) == BOTH
    monkeypatch.setenv("AIRFLOW_CONN_PREMIUM_PII_KEYS", json.dumps({"conn_type": "generic", "extra": NEW_EXTRA}))
    with pytest.raises(KeyringCoverageError) as err:
        load_keyring_for(old_data)
    message = str(err.value)
    assert "'test-k0'" in message
    for column in ("customers.first_name_enc", "customers.phone_enc", "sms_notifications.content_enc"):
        assert column in message
    assert "daily_balance_checks.balance_enc" in message
    assert TEST_PII_KEYS["keys"]["test-k1"] not in message
    assert set(err.value.missing) == {"test-k0"}

    # The CLI paths that load the keyring with a database at hand refuse it too, changing nothing.
    before = db.execute("SELECT customer_id, first_name_enc FROM customers ORDER BY 1").fetchall()
    assert cli.main(["rotate"]) == 2
    assert "'test-k0'" in capsys.readouterr().err
    path = synthetic.write_csv(tmp_path / "more.csv", count=CUSTOMERS + 5)
    assert cli.main(["load-customers", str(path)]) == 2
    assert "'test-k0'" in capsys.readouterr().err
    assert db.execute("SELECT customer_id, first_name_enc FROM customers ORDER BY 1").fetchall() == before

    # key-status still reports (exit 0) and flags the key the ring lacks.
    status = key_status(capsys)
    assert status["missing_key_ids"] == ["test-k0"]
