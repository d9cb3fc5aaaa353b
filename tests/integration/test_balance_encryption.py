"""Balances encrypted at rest (§5.3): the fetch stage with ``encrypt_balances`` on, qualification on
encrypted rows, and key rotation of the balance ciphertexts, against the simulator and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta

import psycopg
import pytest

from premium import cli
from premium.banking import stage
from premium.crypto import (
    BALANCE_COLUMNS,
    PiiDecryptError,
    PiiKeyError,
    PiiKeyring,
    balance_aad,
    read_balance,
    rotate_balance_keys,
)
from premium.settings import BalanceSettings, SmsSettings
from premium.sms.qualify import qualify
from tests.support import env
from tests.support.bank import endpoint_for, expected_outcomes, load_synthetic_customers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

D = date(2025, 11, 18)
DAYS = [D - timedelta(days=n) for n in (2, 1, 0)]
SMS = SmsSettings(window_days=3, min_passing_checks=2)

BOTH = PiiKeyring.from_extra(env.TEST_PII_KEYS)  # current test-k1, test-k0 still in the ring
OLD_ONLY = PiiKeyring.from_extra(
    {**env.TEST_PII_KEYS, "current_key_id": "test-k0", "keys": {"test-k0": env.TEST_PII_KEYS["keys"]["test-k0"]}}
)
NEW_ONLY = PiiKeyring.from_extra({**env.TEST_PII_KEYS, "keys": {"test-k1": env.TEST_PII_KEYS["keys"]["test-k1"]}})


@pytest.fixture
def customers(db, app_db, tmp_path):
    load_synthetic_customers(app_db, tmp_path, 300)
    return app_db


def settings(encrypt: bool) -> BalanceSettings:
    return BalanceSettings(
        chunk_size=50,
        max_mapped_tasks=2,
        in_flight=8,
        request_timeout_s=2.0,
        backoff_multiplier_s=0.001,
        encrypt_balances=encrypt,
    )


def run_days(conninfo, sim, days, *, encrypt: bool, keyring: PiiKeyring | None = None) -> list[stage.RunOutcome]:
    outcomes = []
    for day in days:
        run_id = f"manual__{'enc' if encrypt else 'plain'}_{day}"
        s = settings(encrypt)
        descriptors = stage.plan_run(conninfo, day, run_id, s)
        corr = stage.correlation_id_for(run_id, day)
        for d in descriptors:
            stage.fetch_chunk(conninfo, d, day, s, endpoint_for(sim), corr, keyring=keyring)
        outcomes.append(stage.finish_run(conninfo, day, descriptors))
    return outcomes


def rows(conninfo) -> list[tuple]:
    with psycopg.connect(**conninfo) as conn:
        return conn.execute(
            f"SELECT {BALANCE_COLUMNS}, passes_threshold, currency, account_status, recorded_at "
            "FROM daily_balance_checks ORDER BY account_id, check_date"
        ).fetchall()


def amounts(conninfo, keyring) -> dict[tuple[str, date], object]:
    return {(r[0], r[1]): read_balance(keyring, *r[:5]) for r in rows(conninfo)}


def model_amounts(conninfo) -> dict[tuple[str, date], object]:
    return {
        (account, day): v[1] for day in DAYS for account, v in expected_outcomes(conninfo, day).items() if v[0] == "ok"
    }


def qualification(conninfo) -> dict[str, tuple]:
    qualify(conninfo, D, "manual__qualify", SMS)
    with psycopg.connect(**conninfo) as conn:
        return {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT customer_id, outcome, passing_checks, failing_checks FROM qualification_outcomes "
                "WHERE check_date = %s",
                (D,),
            )
        }


def key_ids(conninfo) -> dict[str | None, int]:
    with psycopg.connect(**conninfo) as conn:
        return dict(conn.execute("SELECT balance_key_id, count(*) FROM daily_balance_checks GROUP BY 1").fetchall())


def test_encrypted_balances_store_no_plaintext_and_qualify_identically(customers, bank) -> None:
    plain_runs = run_days(customers, bank, DAYS, encrypt=False)
    plain_rows = rows(customers)
    plain_qualification = qualification(customers)
    assert all(r[2] is not None and r[3] is None and r[4] is None for r in plain_rows)
    outcomes = {o for o, *_ in plain_qualification.values()}
    assert {"qualified", "below_threshold"} <= outcomes  # the comparison below means something

    # The same days again with encryption on (keyring from the premium_pii_keys connection): every row is replaced.
    enc_runs = run_days(customers, bank, DAYS, encrypt=True)
    enc_rows = rows(customers)
    assert len(enc_rows) == len(plain_rows) > 0
    assert all(r[2] is None and r[3] is not None and r[4] == BOTH.current_key_id for r in enc_rows)
    with psycopg.connect(**customers) as conn:
        assert conn.execute("SELECT count(*) FROM daily_balance_checks WHERE balance IS NOT NULL").fetchone() == (0,)
    for r in enc_rows:  # the ciphertext is not the amount in disguise
        assert format(read_balance(BOTH, *r[:5]), "f").encode() not in bytes(r[3])

    # Same amounts once decrypted, same flags, same qualification, same run counts.
    assert amounts(customers, BOTH) == {(r[0], r[1]): r[2] for r in plain_rows} == model_amounts(customers)
    assert [r[5:8] for r in enc_rows] == [r[5:8] for r in plain_rows]
    assert qualification(customers) == plain_qualification
    strip = ("correlation_id", "started_at", "finished_at")
    assert [{k: v for k, v in o.as_dict().items() if k not in strip} for o in enc_runs] == [
        {k: v for k, v in o.as_dict().items() if k not in strip} for o in plain_runs
    ]

    # A ciphertext is bound to its row: moved to another row it does not decrypt; no keyring, no amount.
    a, b = enc_rows[0], enc_rows[1]
    with pytest.raises(PiiDecryptError):
        BOTH.decrypt(a[3], a[4], balance_aad(b[0], b[1]))
    with pytest.raises(PiiKeyError):
        read_balance(None, *a[:5])


def test_key_rotation_end_to_end(customers, bank, capsys) -> None:
    # Written under the old key.
    run_days(customers, bank, DAYS[:2], encrypt=True, keyring=OLD_ONLY)
    before = rows(customers)
    total = len(before)
    assert key_ids(customers) == {"test-k0": total}
    expected = {k: v for k, v in model_amounts(customers).items() if k[1] in DAYS[:2]}
    assert amounts(customers, OLD_ONLY) == expected

    # The move, interrupted: another session holds one day's rows, which the rotation skips.
    locker = psycopg.connect(**customers)
    try:
        locked = len(
            locker.execute("SELECT 1 FROM daily_balance_checks WHERE check_date = %s FOR UPDATE", (DAYS[0],)).fetchall()
        )
        assert 0 < locked < total
        with psycopg.connect(**customers, autocommit=True) as conn:
            assert rotate_balance_keys(conn, BOTH, batch_size=37) == total - locked

        # Mid-move: both key ids in the table, a new day written under the new key, every row readable
        # with the ring holding both keys, and qualification untouched.
        run_days(customers, bank, DAYS[2:], encrypt=True, keyring=BOTH)
        ids = key_ids(customers)
        assert ids["test-k0"] == locked and ids["test-k1"] > total - locked
        assert amounts(customers, BOTH) == model_amounts(customers)
        with pytest.raises(PiiDecryptError):  # the old ring alone cannot read what moved
            amounts(customers, OLD_ONLY)
        with pytest.raises(PiiDecryptError):  # nor the new key alone what has not moved yet
            amounts(customers, NEW_ONLY)
        assert qualification(customers)

        # The command does not hide them: still locked after its bounded wait, it exits 1 naming them.
        capsys.readouterr()
        assert cli.main(["rotate-balance-keys", "--lock-wait", "0.5"]) == 1
        assert f"daily_balance_checks: {locked} rows under key test-k0" in capsys.readouterr().err
    finally:
        locker.close()  # rolls back: the rows are free again

    # The rest moves on the next run; the run after that moves nothing (the CLI, same function).
    with psycopg.connect(**customers, autocommit=True) as conn:
        assert rotate_balance_keys(conn, BOTH, batch_size=37) == locked
        assert rotate_balance_keys(conn, BOTH, batch_size=37) == 0
    assert cli.main(["rotate-balance-keys", "--batch-size", "50"]) == 0
    out = capsys.readouterr().out
    assert "daily_balance_checks: re-encrypted 0 rows under key test-k1" in out
    assert "every encrypted row of daily_balance_checks is under key test-k1" in out
    after = rows(customers)
    assert set(key_ids(customers)) == {"test-k1"}
    assert amounts(customers, NEW_ONLY) == model_amounts(customers)  # the old key can now leave the ring
    # only the ciphertext and key id changed: flags, statuses and recorded_at are the rows' own
    unchanged = {(r[0], r[1]): r[5:] for r in before}
    assert {(r[0], r[1]): r[5:] for r in after if (r[0], r[1]) in unchanged} == unchanged
    old_blobs = {(r[0], r[1]): bytes(r[3]) for r in before}
    assert all(bytes(r[3]) != old_blobs[(r[0], r[1])] for r in after if (r[0], r[1]) in old_blobs)


def test_rotation_refuses_a_ciphertext_whose_key_left_the_ring_too_early(customers, bank) -> None:
    run_days(customers, bank, DAYS[:1], encrypt=True, keyring=OLD_ONLY)
    with psycopg.connect(**customers, autocommit=True) as conn:
        with pytest.raises(PiiDecryptError, match="test-k0"):
            rotate_balance_keys(conn, NEW_ONLY, batch_size=1000)
    assert set(key_ids(customers)) == {"test-k0"}  # the failed batch was rolled back


def test_encrypting_without_a_keyring_fails_before_any_bank_call(customers, bank, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_PREMIUM_PII_KEYS", '{"conn_type": "generic", "extra": {}}')
    s = settings(True)
    descriptors = stage.plan_run(customers, D, "manual__nokeys", s)
    with pytest.raises(PiiKeyError):
        stage.fetch_chunk(customers, descriptors[0], D, s, endpoint_for(bank), "corr-nokeys")
    assert bank.stats()["requests_total"] == 0
