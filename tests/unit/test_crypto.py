"""PII encryption, keyring parsing and the keyed phone hash (no database)."""

from __future__ import annotations

import base64
import logging

import pytest

from premium import crypto
from premium.crypto import PiiDecryptError, PiiKeyError, PiiKeyring, aad_for, normalise_phone_for_hash
from tests.support.env import TEST_PII_KEYS

NAME = "שָׂרָה\u200f"
PHONE = "050-1234567"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def keyring() -> PiiKeyring:
    return PiiKeyring.from_extra(TEST_PII_KEYS)


def test_round_trip_uses_current_key(keyring: PiiKeyring) -> None:
    aad = aad_for("42", "first_name")
    key_id, blob = keyring.encrypt(NAME, aad)
    assert key_id == "test-k1"
    assert len(blob) == 12 + len(NAME.encode()) + 16
    assert NAME.encode() not in blob
    assert keyring.decrypt(blob, key_id, aad) == NAME


def test_nonce_is_random(keyring: PiiKeyring) -> None:
    aad = aad_for("42", "first_name")
    assert keyring.encrypt(NAME, aad)[1] != keyring.encrypt(NAME, aad)[1]


def test_aad_binds_row_and_field(keyring: PiiKeyring) -> None:
    key_id, blob = keyring.encrypt(PHONE, aad_for("42", "phone_number"))
    for other in (aad_for("43", "phone_number"), aad_for("42", "first_name")):
        with pytest.raises(PiiDecryptError) as err:
            keyring.decrypt(blob, key_id, other)
        assert "test-k1" in str(err.value)
        assert PHONE not in str(err.value)


def test_tampered_blob_fails(keyring: PiiKeyring) -> None:
    aad = aad_for("42", "phone_number")
    key_id, blob = keyring.encrypt(PHONE, aad)
    for position in (0, 12, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(PiiDecryptError):
            keyring.decrypt(bytes(tampered), key_id, aad)
    with pytest.raises(PiiDecryptError, match="truncated"):
        keyring.decrypt(blob[:20], key_id, aad)


def test_wrong_key_id_fails(keyring: PiiKeyring) -> None:
    aad = aad_for("42", "phone_number")
    _, blob = keyring.encrypt(PHONE, aad)
    with pytest.raises(PiiDecryptError, match="test-k0"):
        keyring.decrypt(blob, "test-k0", aad)


def test_unknown_key_id(keyring: PiiKeyring) -> None:
    aad = aad_for("42", "phone_number")
    _, blob = keyring.encrypt(PHONE, aad)
    with pytest.raises(PiiDecryptError, match="'retired-k9' is not in the keyring"):
        keyring.decrypt(blob, "retired-k9", aad)


def test_blobs_of_both_keys_readable() -> None:
    old = PiiKeyring.from_extra({**TEST_PII_KEYS, "current_key_id": "test-k0"})
    new = PiiKeyring.from_extra(TEST_PII_KEYS)
    aad = aad_for("7", "first_name")
    old_id, old_blob = old.encrypt("Olivia", aad)
    new_id, new_blob = new.encrypt("Noah", aad)
    assert (old_id, new_id) == ("test-k0", "test-k1")
    assert new.decrypt(old_blob, old_id, aad) == "Olivia"
    assert new.decrypt(new_blob, new_id, aad) == "Noah"
    assert old.decrypt(new_blob, new_id, aad) == "Noah"


def test_from_extra_parses_test_keys(keyring: PiiKeyring) -> None:
    assert keyring.current_key_id == "test-k1"
    assert set(keyring.keys) == {"test-k1", "test-k0"}
    assert keyring.keys["test-k0"] == b"\x22" * 32
    assert keyring.hash_key == b"\x33" * 32
    assert "keys" not in repr(keyring) and "\\x11" not in repr(keyring)


SECRET = _b64(b"\x44" * 32)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"keys": {"a": SECRET}, "hash_key": SECRET}, "lacks current_key_id"),
        ({"current_key_id": "a", "hash_key": SECRET}, "lacks keys"),
        ({"current_key_id": "a", "keys": {"a": SECRET}}, "lacks hash_key"),
        ({"current_key_id": "a", "keys": {}, "hash_key": SECRET}, "non-empty"),
        ({"current_key_id": "a", "keys": ["x"], "hash_key": SECRET}, "non-empty object"),
        ({"current_key_id": "b", "keys": {"a": SECRET}, "hash_key": SECRET}, "'b' is not among the keys"),
        ({"current_key_id": "a", "keys": {"a": _b64(b"\x44" * 16)}, "hash_key": SECRET}, "key 'a' must be exactly 32"),
        ({"current_key_id": "a", "keys": {"a": "%%%not base64%%%"}, "hash_key": SECRET}, "key 'a' is not valid base64"),
        ({"current_key_id": "a", "keys": {"a": 12}, "hash_key": SECRET}, "non-empty base64 string"),
        ({"current_key_id": "a", "keys": {"a": SECRET}, "hash_key": _b64(b"\x44" * 8)}, "hash_key must be at least 32"),
        ({"current_key_id": "a b", "keys": {"a b": SECRET}, "hash_key": SECRET}, "current_key_id must be"),
        ("not a dict", "JSON object"),
    ],
)
def test_from_extra_errors(extra: object, message: str) -> None:
    with pytest.raises(PiiKeyError, match=message) as err:
        PiiKeyring.from_extra(extra)  # type: ignore[arg-type]
    assert SECRET not in str(err.value)
    assert "%%%" not in str(err.value)


def test_from_connection_reads_airflow_connection() -> None:
    keyring = PiiKeyring.from_connection()
    assert keyring.current_key_id == "test-k1"
    assert keyring == PiiKeyring.from_extra(TEST_PII_KEYS)


def test_from_connection_missing_connection() -> None:
    with pytest.raises(PiiKeyError, match="no_such_keyring"):
        PiiKeyring.from_connection("no_such_keyring")


def test_generate_extra_is_fresh_and_valid() -> None:
    first, second = crypto.generate_extra("demo-k1"), PiiKeyring.generate_extra("demo-k1")
    assert first["keys"]["demo-k1"] != second["keys"]["demo-k1"]
    assert first["hash_key"] != second["hash_key"]
    keyring = PiiKeyring.from_extra(first)
    assert keyring.current_key_id == "demo-k1"
    key_id, blob = keyring.encrypt("x", b"aad")
    assert keyring.decrypt(blob, key_id, b"aad") == "x"


@pytest.mark.parametrize(
    "phone",
    [
        "050-1234567",
        "0501234567",
        "+972 50 123 4567",
        "972501234567",
        "+972-50-1234567",
        "(050) 123 4567",
        " 050 123 4567 ",
    ],
)
def test_phone_formats_normalise_and_hash_alike(keyring: PiiKeyring, phone: str) -> None:
    assert normalise_phone_for_hash(phone) == "+972501234567"
    assert keyring.phone_hash(phone) == keyring.phone_hash("+972501234567")


@pytest.mark.parametrize(
    ("phone", "normalised"),
    [
        ("02-6251234", "+97226251234"),
        ("12345", "12345"),
        ("+1 555", "+1555"),
        ("not-a-number", ""),
    ],
)
def test_phone_normalisation_of_landlines_and_garbage(phone: str, normalised: str) -> None:
    assert normalise_phone_for_hash(phone) == normalised


def test_phone_hash_is_keyed(keyring: PiiKeyring) -> None:
    other = PiiKeyring.from_extra({**TEST_PII_KEYS, "hash_key": _b64(b"\x55" * 32)})
    digest = keyring.phone_hash(PHONE)
    assert len(digest) == 32
    assert digest != other.phone_hash(PHONE)
    assert digest != keyring.phone_hash("050-1234568")


def test_nothing_is_logged(keyring: PiiKeyring, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key_id, blob = keyring.encrypt(PHONE, b"a")
    keyring.decrypt(blob, key_id, b"a")
    keyring.phone_hash(PHONE)
    with pytest.raises(PiiDecryptError):
        keyring.decrypt(blob, key_id, b"b")
    assert caplog.records == []


def test_encrypted_tables_name_every_rotation_and_command() -> None:
    from premium import cli

    tables = {t.table for t in crypto.ENCRYPTED_TABLES}
    assert tables == {"customers", "sms_notifications", "daily_balance_checks"}
    assert set(cli._rotation_passes()) == tables  # each table has its rotation pass
    assert {t for covered in cli.ROTATE_COMMANDS.values() for t in covered} == tables
    assert crypto.encrypted_table("customers").key_column == "pii_key_id"
    with pytest.raises(KeyError):
        crypto.encrypted_table("audit_trail")


def test_rotate_commands_and_key_status_parse() -> None:
    from premium import cli

    parser = cli.build_parser()
    for command in ("rotate", "rotate-pii-keys", "rotate-balance-keys"):
        args = parser.parse_args([command])
        assert (args.batch_size, args.max_passes, args.lock_wait) == (1000, 6, 30.0)
    args = parser.parse_args(["rotate", "--lock-wait", "2.5", "--max-passes", "3"])
    assert (args.lock_wait, args.max_passes) == (2.5, 3)
    assert parser.parse_args(["key-status", "--json"]).json is True


def test_rotate_until_done_validates_its_bounds(keyring: PiiKeyring) -> None:
    target = crypto.encrypted_table("customers")
    with pytest.raises(ValueError, match="max_passes"):
        crypto.rotate_until_done(None, keyring, target, crypto.rotate_keys, max_passes=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lock_wait_s"):
        crypto.rotate_until_done(None, keyring, target, crypto.rotate_keys, lock_wait_s=0)  # type: ignore[arg-type]


def test_coverage_error_names_key_ids_and_columns_only() -> None:
    err = crypto.KeyringCoverageError(
        {"k0": ["customers.first_name_enc, customers.phone_enc"], "k9": ["daily_balance_checks.balance_enc"]}
    )
    message = str(err)
    assert "'k0' (customers.first_name_enc, customers.phone_enc)" in message
    assert "'k9' (daily_balance_checks.balance_enc)" in message
    assert "key-status" in message
    assert isinstance(err, PiiKeyError)
    assert set(err.missing) == {"k0", "k9"}
    assert TEST_PII_KEYS["keys"]["test-k0"] not in message
