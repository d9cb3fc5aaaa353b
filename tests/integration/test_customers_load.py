"""Loading the customer CSV into PostgreSQL: validation, encryption at rest, upsert, atomicity, rotation."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import psycopg
import pytest

from premium import synthetic
from premium.crypto import PiiKeyring, aad_for, rotate_keys
from premium.customers import COLUMNS, CustomerFileError, Rejection, load_customers_csv, read_customer_pii
from tests.support.env import TEST_PII_KEYS

pytestmark = pytest.mark.integration

HEADER = ",".join(COLUMNS)


@pytest.fixture
def keyring() -> PiiKeyring:
    return PiiKeyring.from_extra(TEST_PII_KEYS)


@pytest.fixture
def old_keyring() -> PiiKeyring:
    return PiiKeyring.from_extra({**TEST_PII_KEYS, "current_key_id": "test-k0"})


def _write(tmp_path: Path, lines: list[str], name: str = "customers.csv", bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def _snapshot(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT * FROM customers ORDER BY customer_id").fetchall()


GOOD = [
    "1,ACC-00000-00001,נועה,050-1234567,he,ACTIVE,true",
    "2,ACC-00000-00002,O'Brien,+972 52 765 4321,en,ACTIVE,false",
    '3,ACC-00000-00003,"Zoë, Jr",0537654321,en,INACTIVE,yes',
    "4,ACC-00000-00004,محمد,972541112233,ar,SUSPENDED,0",
    "5,ACC-00000-00005,Анна,02-6251234,ru,CLOSED,TRUE",
]
GOOD_NAMES = ["נועה", "O'Brien", "Zoë, Jr", "محمد", "Анна"]
GOOD_PHONES = ["050-1234567", "+972 52 765 4321", "0537654321", "972541112233", "02-6251234"]


def test_load_good_and_bad_rows(db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path) -> None:
    long_name = "א" * 101
    lines = [
        HEADER,  # 1
        *GOOD,  # 2-6
        "6,ACC-00000-00006,Liam,050-9998887,fr,ACTIVE,true",  # 7
        "7,ACC-7,Liam,050-9998886,en,ACTIVE,true",  # 8
        "8,ACC-00000-00008,Grace,,en,ACTIVE,true",  # 9
        f"9,ACC-00000-00009,{long_name},050-9998885,he,ACTIVE,true",  # 10
        "3,ACC-00000-00010,Emma,050-9998884,en,ACTIVE,true",  # 11
        "11,ACC-00000-00001,Emma,050-9998883,en,ACTIVE,true",  # 12
        "12,ACC-00000-00012,Emma,050-9998882,en,ACTIVE,maybe",  # 13
        "13,ACC-00000-00013,Emma,050-9998881,en,DELETED,true",  # 14
        "C14,ACC-00000-00014,Emma,050-9998880,en,ACTIVE,true",  # 15
        "",  # 16: blank lines are skipped but counted as lines
        "15,ACC-00000-00015,Emma,050-9998879",  # 17
        "16,ACC-00000-00016,Emma,050-99988790000000000000000000000000,en,ACTIVE,true",  # 18
        " 17 , ACC-00000-00017 , Olivia , 050-9998878 , EN , active , False ",  # 19: whitespace and case
        "18,,,,,,",  # 20
    ]
    report = load_customers_csv(_write(tmp_path, lines, bom=True), db, keyring)

    assert report.rejected == [
        Rejection(7, "6", "language is not one of he, en, ar, ru"),
        Rejection(8, "7", "account_id is not in ACC-NNNNN-NNNNN format"),
        Rejection(9, "8", "phone_number is empty"),
        Rejection(10, "9", "first_name is longer than 100 characters"),
        Rejection(11, "3", "duplicate customer_id (first seen on line 4)"),
        Rejection(12, "11", "account_id already belongs to customer 1 (line 2)"),
        Rejection(13, "12", "sms_consent is not a boolean"),
        Rejection(14, "13", "status is not one of ACTIVE, INACTIVE, SUSPENDED, CLOSED"),
        Rejection(15, None, "customer_id is not 1 to 12 digits"),
        Rejection(17, None, "row has 4 fields, expected 7"),
        Rejection(18, "16", "phone_number is longer than 32 characters"),
        Rejection(
            20,
            "18",
            "account_id is empty; first_name is empty; phone_number is empty; language is empty; "
            "status is empty; sms_consent is empty",
        ),
    ]
    assert (report.rows_read, report.inserted, report.updated, report.unchanged) == (18, 6, 0, 0)
    assert report.summary() == "18 rows read: 6 inserted, 0 updated, 0 unchanged, 12 rejected"
    for rejection in report.rejected:
        for secret in ("Liam", "Grace", "Emma", long_name[:10], "050-99988", "0509998"):
            assert secret not in rejection.reason

    rows = db.execute(
        "SELECT customer_id, account_id, language, status, sms_consent, sms_consent_at IS NOT NULL, pii_key_id "
        "FROM customers ORDER BY id"
    ).fetchall()
    assert rows == [
        ("1", "ACC-00000-00001", "he", "ACTIVE", True, True, "test-k1"),
        ("2", "ACC-00000-00002", "en", "ACTIVE", False, False, "test-k1"),
        ("3", "ACC-00000-00003", "en", "INACTIVE", True, True, "test-k1"),
        ("4", "ACC-00000-00004", "ar", "SUSPENDED", False, False, "test-k1"),
        ("5", "ACC-00000-00005", "ru", "CLOSED", True, True, "test-k1"),
        ("17", "ACC-00000-00017", "en", "ACTIVE", False, False, "test-k1"),
    ]
    pii = read_customer_pii(db, keyring, ["1", "2", "3", "4", "5", "17", "999"])
    assert pii == {
        **{str(i): (name, phone) for i, (name, phone) in enumerate(zip(GOOD_NAMES, GOOD_PHONES, strict=True), 1)},
        "17": ("Olivia", "050-9998878"),
    }
    hashes = dict(db.execute("SELECT customer_id, phone_hash FROM customers").fetchall())
    assert hashes["1"] == keyring.phone_hash("+972501234567")
    assert hashes["4"] == keyring.phone_hash("054-1112233")


def test_no_plaintext_in_the_database(db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path) -> None:
    load_customers_csv(_write(tmp_path, [HEADER, *GOOD]), db, keyring)
    blobs = db.execute("SELECT first_name_enc, phone_enc, phone_hash FROM customers").fetchall()
    assert len(blobs) == len(GOOD)
    everything = b"".join(bytes(b) for row in blobs for b in row)
    for text in [*GOOD_NAMES, *GOOD_PHONES, "1234567", "7654321", "6251234"]:
        for encoded in (text.encode("utf-8"), text.encode("utf-16-le")):
            assert encoded not in everything
    # Nothing plaintext in the text columns either.
    dump = " ".join(str(v) for row in _snapshot(db) for v in row)
    for text in [*GOOD_NAMES, *GOOD_PHONES]:
        assert text not in dump


def test_ciphertexts_are_bound_to_their_row(db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path) -> None:
    load_customers_csv(_write(tmp_path, [HEADER, *GOOD]), db, keyring)
    blob, key_id = db.execute("SELECT phone_enc, pii_key_id FROM customers WHERE customer_id = '1'").fetchone()
    assert keyring.decrypt(blob, key_id, aad_for("1", "phone_number")) == "050-1234567"
    db.execute("UPDATE customers SET phone_enc = %s WHERE customer_id = '2'", (blob,))
    with pytest.raises(Exception, match="does not authenticate"):
        read_customer_pii(db, keyring, ["2"])


def test_reload_upserts_without_duplicates(db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path) -> None:
    first = load_customers_csv(_write(tmp_path, [HEADER, *GOOD], "a.csv"), db, keyring)
    assert (first.inserted, first.updated) == (5, 0)
    before = {r[0]: r for r in db.execute("SELECT customer_id, updated_at, sms_consent_at, id FROM customers")}
    time.sleep(0.01)

    same = load_customers_csv(_write(tmp_path, [HEADER, *GOOD], "b.csv"), db, keyring)
    assert (same.inserted, same.updated, same.unchanged) == (0, 0, 5)
    assert {r[0]: r for r in db.execute("SELECT customer_id, updated_at, sms_consent_at, id FROM customers")} == before

    changed = [
        "1,ACC-00000-00001,נועה,050-1234567,en,ACTIVE,true",  # language changed, consent kept
        "2,ACC-00000-00002,O'Brien,+972 52 765 4321,en,ACTIVE,true",  # consent given now
        '3,ACC-00000-00003,"Zoë, Jr",0537654321,en,INACTIVE,false',  # consent withdrawn
        "4,ACC-00000-00004,أحمد,054-9990000,ar,ACTIVE,0",  # name, phone and status changed
        GOOD[4],  # unchanged
        "6,ACC-00000-00006,Liam,050-5550000,en,ACTIVE,true",  # new
    ]
    report = load_customers_csv(_write(tmp_path, [HEADER, *changed], "c.csv"), db, keyring)
    assert (report.inserted, report.updated, report.unchanged, report.rejected) == (1, 4, 1, [])
    after = {r[0]: r for r in db.execute("SELECT customer_id, updated_at, sms_consent_at, id FROM customers")}
    assert db.execute("SELECT count(*) FROM customers").fetchone() == (6,)
    assert after["1"][1] > before["1"][1]
    assert after["1"][2] == before["1"][2]  # already consented: timestamp kept
    assert before["2"][2] is None and after["2"][2] is not None
    assert after["3"][2] is None
    assert after["5"] == before["5"]
    assert after["4"][3] == before["4"][3]  # same row, not re-inserted
    assert read_customer_pii(db, keyring, ["4"]) == {"4": ("أحمد", "054-9990000")}
    assert db.execute("SELECT phone_hash FROM customers WHERE customer_id = '4'").fetchone()[0] == keyring.phone_hash(
        "+972549990000"
    )
    rows = db.execute("SELECT customer_id, language, status FROM customers WHERE customer_id IN ('1', '4') ORDER BY 1")
    assert rows.fetchall() == [("1", "en", "ACTIVE"), ("4", "ar", "ACTIVE")]


def test_account_of_another_customer_in_db_rejected(
    db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path
) -> None:
    load_customers_csv(_write(tmp_path, [HEADER, *GOOD], "a.csv"), db, keyring)
    lines = [
        HEADER,
        "9,ACC-00000-00002,Liam,050-5550001,en,ACTIVE,true",
        "1,ACC-00000-00099,נועה,050-1234567,he,ACTIVE,true",  # a customer may change account
    ]
    report = load_customers_csv(_write(tmp_path, lines, "b.csv"), db, keyring)
    assert report.rejected == [Rejection(2, "9", "account_id already belongs to customer 2")]
    assert (report.inserted, report.updated) == (0, 1)
    assert db.execute("SELECT account_id FROM customers WHERE customer_id = '1'").fetchone() == ("ACC-00000-00099",)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("customer_id,account_id,first_name,phone_number,language,status", "missing columns: sms_consent"),
        (HEADER + ",email", "unexpected columns in positions 8"),
        ("id,account_id,first_name,phone_number,language,status,sms_consent", "missing columns: customer_id"),
    ],
)
def test_bad_header_loads_nothing(
    db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path, header: str, message: str
) -> None:
    with pytest.raises(CustomerFileError, match=message):
        load_customers_csv(_write(tmp_path, [header, *GOOD]), db, keyring)
    assert _snapshot(db) == []


def test_header_columns_in_any_order(db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path) -> None:
    lines = [
        "sms_consent,status,language,phone_number,first_name,account_id,customer_id",
        "true,ACTIVE,he,0501112222,דן,ACC-00000-00001,1",
    ]
    report = load_customers_csv(_write(tmp_path, lines), db, keyring)
    assert report.inserted == 1
    assert read_customer_pii(db, keyring, ["1"]) == {"1": ("דן", "0501112222")}


def test_unusable_files(db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(CustomerFileError, match="empty"):
        load_customers_csv(empty, db, keyring)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes((HEADER + "\n1,ACC-00000-00001,Zoë,0501234567,en,ACTIVE,true\n").encode("latin-1"))
    with pytest.raises(CustomerFileError, match="not UTF-8"):
        load_customers_csv(latin1, db, keyring)
    assert _snapshot(db) == []


def test_crash_mid_load_rolls_everything_back(
    db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_customers_csv(synthetic.write_csv(tmp_path / "base.csv", count=40), db, keyring)
    before = _snapshot(db)
    assert len(before) == 40

    # Rows 1-40 changed (another seed), 41-100 new; encryption fails at the 50th row written.
    path = tmp_path / "next.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(synthetic.generate_rows(100, seed=99))
    calls = {"n": 0}
    real_encrypt = PiiKeyring.encrypt

    def failing_encrypt(self: PiiKeyring, plaintext: str, aad: bytes) -> tuple[str, bytes]:
        if aad.endswith(b"/first_name"):
            calls["n"] += 1
            if calls["n"] == 50:
                raise RuntimeError("simulated crash")
        return real_encrypt(self, plaintext, aad)

    monkeypatch.setattr(PiiKeyring, "encrypt", failing_encrypt)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_customers_csv(path, db, keyring)
    assert calls["n"] == 50
    assert _snapshot(db) == before
    monkeypatch.undo()

    # The connection is usable and the same file loads fine afterwards.
    report = load_customers_csv(path, db, keyring)
    assert report.inserted == 60 and report.updated + report.unchanged == 40


def test_crash_in_non_autocommit_connection(
    app_db: dict, keyring: PiiKeyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.db import truncate_all

    truncate_all(app_db)
    path = synthetic.write_csv(tmp_path / "base.csv", count=60)
    monkeypatch.setattr(PiiKeyring, "phone_hash", lambda self, phone: (_ for _ in ()).throw(OSError("disk gone")))
    with psycopg.connect(**app_db) as conn:
        with pytest.raises(OSError):
            load_customers_csv(path, conn, keyring)
    monkeypatch.undo()
    with psycopg.connect(**app_db) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (0,)
        report = load_customers_csv(path, conn, keyring)
    with psycopg.connect(**app_db) as conn:  # committed by the load's own transaction
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (report.inserted,) == (60,)


def test_rotate_keys(db: psycopg.Connection, keyring: PiiKeyring, old_keyring: PiiKeyring, tmp_path: Path) -> None:
    count = 250
    path = synthetic.write_csv(tmp_path / "base.csv", count=count)
    load_customers_csv(path, db, old_keyring)
    ids = [str(n) for n in range(1, count + 1)]
    expected = {r["customer_id"]: (r["first_name"], r["phone_number"]) for r in synthetic.generate_rows(count)}
    assert db.execute("SELECT pii_key_id, count(*) FROM customers GROUP BY 1").fetchall() == [("test-k0", count)]
    assert read_customer_pii(db, keyring, ids) == expected
    hashes_before = dict(db.execute("SELECT customer_id, phone_hash FROM customers").fetchall())
    updated_before = dict(db.execute("SELECT customer_id, updated_at FROM customers").fetchall())

    # Rotate in batches of 100 while a reader keeps decrypting through its own connection.
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            with psycopg.connect(**db.info.get_parameters(), autocommit=True) as other:
                while not stop.is_set():
                    assert read_customer_pii(other, keyring, ids) == expected
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        moved = rotate_keys(db, keyring, batch_size=100)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert moved == count
    assert db.execute("SELECT pii_key_id, count(*) FROM customers GROUP BY 1").fetchall() == [("test-k1", count)]
    assert read_customer_pii(db, keyring, ids) == expected
    assert dict(db.execute("SELECT customer_id, phone_hash FROM customers").fetchall()) == hashes_before
    assert dict(db.execute("SELECT customer_id, updated_at FROM customers").fetchall()) == updated_before
    assert rotate_keys(db, keyring, batch_size=100) == 0

    # Once rotated, the old key can be retired from the ring.
    only_new = PiiKeyring.from_extra({**TEST_PII_KEYS, "keys": {"test-k1": TEST_PII_KEYS["keys"]["test-k1"]}})
    assert read_customer_pii(db, only_new, ids) == expected


def test_rotate_keys_mixed_rows_and_partial_progress(
    db: psycopg.Connection, keyring: PiiKeyring, old_keyring: PiiKeyring, tmp_path: Path
) -> None:
    load_customers_csv(synthetic.write_csv(tmp_path / "old.csv", count=30), db, old_keyring)
    # Customers 31-40 written with the new key already.
    rows = list(synthetic.generate_rows(40))[30:]
    new = tmp_path / "new.csv"
    with new.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    load_customers_csv(new, db, keyring)
    # A row locked by another transaction is skipped now and moved by the next call.
    with psycopg.connect(**db.info.get_parameters()) as locker:
        locker.execute("SELECT 1 FROM customers WHERE customer_id = '5' FOR UPDATE")
        assert rotate_keys(db, keyring, batch_size=7) == 29
        locker.rollback()
    assert rotate_keys(db, keyring, batch_size=7) == 1
    assert rotate_keys(db, keyring, batch_size=7) == 0
    ids = [str(n) for n in range(1, 41)]
    expected = {r["customer_id"]: (r["first_name"], r["phone_number"]) for r in synthetic.generate_rows(40)}
    assert read_customer_pii(db, keyring, ids) == expected


def test_rotate_keys_needs_the_old_key(db: psycopg.Connection, old_keyring: PiiKeyring, tmp_path: Path) -> None:
    load_customers_csv(synthetic.write_csv(tmp_path / "old.csv", count=5), db, old_keyring)
    only_new = PiiKeyring.from_extra({**TEST_PII_KEYS, "keys": {"test-k1": TEST_PII_KEYS["keys"]["test-k1"]}})
    with pytest.raises(Exception, match="'test-k0' is not in the keyring"):
        rotate_keys(db, only_new)
    assert db.execute("SELECT DISTINCT pii_key_id FROM customers").fetchall() == [("test-k0",)]


def test_load_10000_rows(db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path) -> None:
    count = 10_000
    path = synthetic.write_csv(tmp_path / "big.csv", count=count)
    started = time.monotonic()
    report = load_customers_csv(path, db, keyring)
    elapsed = time.monotonic() - started
    assert (report.rows_read, report.inserted, report.rejected) == (count, count, [])
    assert elapsed < 30
    mix = synthetic.expected_mix(count)
    counts = dict(db.execute("SELECT language, count(*) FROM customers GROUP BY 1").fetchall())
    assert counts == {k: v for k, v in mix["language"].items() if v}
    assert db.execute("SELECT count(DISTINCT phone_hash) FROM customers").fetchone() == (count,)
    sample = ["1", "5000", "10000"]
    rows = {r["customer_id"]: r for r in synthetic.generate_rows(count) if r["customer_id"] in sample}
    assert read_customer_pii(db, keyring, sample) == {
        cid: (rows[cid]["first_name"], rows[cid]["phone_number"]) for cid in sample
    }
    again = load_customers_csv(path, db, keyring)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, count)


def test_a_file_without_its_header_never_echoes_the_first_row(
    db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path
) -> None:
    """The first data row taken for a header: the error names columns and lines, never a cell."""
    first_row = GOOD[0].split(",")
    with pytest.raises(CustomerFileError) as raised:
        load_customers_csv(_write(tmp_path, GOOD), db, keyring)
    message = str(raised.value)
    assert "line 1" in message and "header" in message and "customer_id" in message
    for cell in [*first_row, "ACC-00000", "1234567", "נועה"]:
        if cell not in COLUMNS and len(cell) > 2:
            assert cell not in message, cell
    assert _snapshot(db) == []


def test_row_errors_never_quote_a_cell(db: psycopg.Connection, keyring: PiiKeyring, tmp_path: Path) -> None:
    """Columns shifted by a stray comma put a name or a number where an id or a code belongs: the
    reasons name the column, not its content."""
    lines = [
        HEADER,
        "1,Noa Levi,ACC-00000-00001,050-1234567,he,ACTIVE,true",  # name in account_id
        "+972501234567,ACC-00000-00002,Dana,050-7654321,he,ACTIVE,true",  # phone in customer_id
        "3,ACC-00000-00003,Dana,050-7654322,Dana Cohen,054-1112223,Yossi",  # language, status, consent
    ]
    report = load_customers_csv(_write(tmp_path, lines), db, keyring)
    assert [r.line for r in report.rejected] == [2, 3, 4]
    reasons = " | ".join(r.reason for r in report.rejected)
    for cell in ("Noa Levi", "972501234567", "Dana Cohen", "054-1112223", "Yossi"):
        assert cell not in reasons, cell
    assert "account_id is not in ACC-NNNNN-NNNNN format" in reasons
    assert "language is not one of he, en, ar, ru" in reasons
