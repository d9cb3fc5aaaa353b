"""PII protection: AES-256-GCM encryption of names and phone numbers, a keyed phone hash, key rotation.

The keyring lives in the Airflow connection ``premium_pii_keys`` (extra JSON)::

    {"current_key_id": "k2",
     "keys": {"k1": "<base64 of 32 bytes>", "k2": "<base64 of 32 bytes>"},
     "hash_key": "<base64 of >= 32 bytes>"}

New ciphertexts are written with the current key; older keys stay in the ring until
:func:`rotate_keys` has moved every row off them. A ciphertext is ``nonce (12 bytes) ||
ciphertext || tag`` and is bound to its row and field by the associated data
(:func:`aad_for`), so a blob copied to another customer or field does not decrypt.

Balances (§5.3, when ``BalanceSettings.encrypt_balances`` is on) use the same keyring:
``daily_balance_checks.balance_enc`` with ``balance_key_id``, bound to the row by
:func:`balance_aad`; :func:`read_balance` reads either form and :func:`rotate_balance_keys` moves
them to the current key like :func:`rotate_keys` does for customers.

:data:`ENCRYPTED_TABLES` lists every ciphertext column of the schema with its key-id column.
:func:`key_counts` counts rows per key id (``python -m premium.cli key-status``);
:func:`rotate_until_done` repeats a rotation pass, then waits (bounded) for locked rows, and
reports what is still under another key; :func:`check_keyring_covers` (or
:func:`load_keyring_for`) refuses a keyring that lacks a key some row still uses.

Nothing in this module logs or puts into an exception message a phone number, a name or any key
material; errors name key ids only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

import phonenumbers
import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

from premium.connections import PII_KEYS_CONN_ID, get_connection
from premium.db import connect

log = logging.getLogger(__name__)

KEY_BYTES = 32
MIN_HASH_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
DEFAULT_PHONE_REGION = "IL"
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_NOT_PHONE_CHARS = re.compile(r"[^0-9]")


class PiiKeyError(ValueError):
    """The keyring configuration is missing or malformed (the message never contains key material)."""


class PiiDecryptError(Exception):
    """A ciphertext cannot be decrypted: unknown key id, wrong key, tampered blob or wrong AAD."""


def aad_for(customer_id: str, field: str) -> bytes:
    """Associated data binding a ciphertext to one customer row and one field."""
    return f"customers/{customer_id}/{field}".encode()


def normalise_phone_for_hash(phone: str) -> str:
    """The canonical form of a phone number that is hashed.

    E.164 when ``phonenumbers`` parses it (default region IL) as a possible number, so
    ``050-1234567``, ``0501234567``, ``+972 50 123 4567`` and ``972501234567`` all give
    an E.164 number such as ``+9725XXXXXXXX``; otherwise the digits, keeping a leading ``+``.
    """
    text = phone.strip()
    try:
        number = phonenumbers.parse(text, DEFAULT_PHONE_REGION)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_possible_number(number):
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    digits = _NOT_PHONE_CHARS.sub("", text)
    return f"+{digits}" if text.startswith("+") else digits


def _b64_key(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise PiiKeyError(f"{what} must be a non-empty base64 string")
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PiiKeyError(f"{what} is not valid base64") from None


@dataclass(frozen=True)
class PiiKeyring:
    """The encryption keys by id, the id new ciphertexts use, and the phone hash key."""

    current_key_id: str
    keys: Mapping[str, bytes] = field(repr=False)
    hash_key: bytes = field(repr=False)
    _ciphers: Mapping[str, AESGCM] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.current_key_id, str) or not _KEY_ID_RE.match(self.current_key_id):
            raise PiiKeyError("current_key_id must be 1-64 characters of letters, digits, '.', '_' or '-'")
        if not isinstance(self.keys, Mapping) or not self.keys:
            raise PiiKeyError("keys must be a non-empty mapping of key id to key")
        for key_id, key in self.keys.items():
            if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
                raise PiiKeyError("key ids must be 1-64 characters of letters, digits, '.', '_' or '-'")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise PiiKeyError(f"key {key_id!r} must be exactly {KEY_BYTES} bytes")
        if self.current_key_id not in self.keys:
            raise PiiKeyError(f"current_key_id {self.current_key_id!r} is not among the keys")
        if not isinstance(self.hash_key, bytes) or len(self.hash_key) < MIN_HASH_KEY_BYTES:
            raise PiiKeyError(f"hash_key must be at least {MIN_HASH_KEY_BYTES} bytes")
        keys = MappingProxyType(dict(self.keys))
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "_ciphers", MappingProxyType({k: AESGCM(v) for k, v in keys.items()}))

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> PiiKeyring:
        """Parse the ``premium_pii_keys`` connection extra (keys base64-encoded)."""
        if not isinstance(extra, Mapping):
            raise PiiKeyError("the PII keyring must be a JSON object")
        missing = [name for name in ("current_key_id", "keys", "hash_key") if name not in extra]
        if missing:
            raise PiiKeyError(f"the PII keyring lacks {', '.join(missing)}")
        raw_keys = extra["keys"]
        if not isinstance(raw_keys, Mapping) or not raw_keys:
            raise PiiKeyError("keys must be a non-empty object of key id to base64 key")
        keys = {str(key_id): _b64_key(value, f"key {str(key_id)!r}") for key_id, value in raw_keys.items()}
        return cls(
            current_key_id=extra["current_key_id"],
            keys=keys,
            hash_key=_b64_key(extra["hash_key"], "hash_key"),
        )

    @classmethod
    def from_connection(cls, conn_id: str = PII_KEYS_CONN_ID) -> PiiKeyring:
        """The keyring of an Airflow connection (env var, metadata DB or secrets backend)."""
        try:
            extra = get_connection(conn_id).extra_dejson
        except Exception as exc:  # noqa: BLE001 - the lookup's errors depend on the secrets backend
            raise PiiKeyError(f"cannot read the PII keyring connection {conn_id!r}: {type(exc).__name__}") from exc
        try:
            return cls.from_extra(extra or {})
        except PiiKeyError as exc:
            raise PiiKeyError(f"connection {conn_id!r}: {exc}") from None

    @staticmethod
    def generate_extra(key_id: str = "k1") -> dict[str, Any]:
        """A fresh connection extra with random keys (see :func:`generate_extra`)."""
        return generate_extra(key_id)

    def encrypt(self, plaintext: str, aad: bytes) -> tuple[str, bytes]:
        """Encrypt with the current key: ``(key_id, nonce || ciphertext || tag)``."""
        nonce = os.urandom(NONCE_BYTES)
        return self.current_key_id, nonce + self._ciphers[self.current_key_id].encrypt(nonce, plaintext.encode(), aad)

    def decrypt(self, blob: bytes, key_id: str, aad: bytes) -> str:
        """Decrypt a blob written with ``key_id`` for ``aad``; :class:`PiiDecryptError` if impossible."""
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PiiDecryptError(f"PII key {key_id!r} is not in the keyring")
        data = bytes(blob)
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise PiiDecryptError(f"ciphertext for key {key_id!r} is truncated")
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], aad)
        except InvalidTag:
            raise PiiDecryptError(
                f"ciphertext does not authenticate with key {key_id!r} (wrong key, row/field or tampered)"
            ) from None
        return plain.decode()

    def phone_hash(self, phone: str) -> bytes:
        """HMAC-SHA256 (hash_key) of :func:`normalise_phone_for_hash`; equal for every format of a number."""
        return hmac.new(self.hash_key, normalise_phone_for_hash(phone).encode(), hashlib.sha256).digest()


def generate_extra(key_id: str = "k1") -> dict[str, Any]:
    """A connection extra with a fresh random encryption key ``key_id`` and hash key (first run of the demo)."""
    if not _KEY_ID_RE.match(key_id):
        raise PiiKeyError("key id must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return {
        "current_key_id": key_id,
        "keys": {key_id: base64.b64encode(os.urandom(KEY_BYTES)).decode()},
        "hash_key": base64.b64encode(os.urandom(MIN_HASH_KEY_BYTES)).decode(),
    }


_ROTATE_SELECT = """
SELECT id, customer_id, first_name_enc, phone_enc, pii_key_id
FROM customers
WHERE pii_key_id <> %(current)s AND id > %(after)s
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

_ROTATE_UPDATE = """
UPDATE customers AS c
SET first_name_enc = u.first_name_enc, phone_enc = u.phone_enc, pii_key_id = %(key_id)s
FROM unnest(%(ids)s::bigint[], %(blobs_0)s::bytea[], %(blobs_1)s::bytea[]) AS u(id, first_name_enc, phone_enc)
WHERE c.id = u.id
"""


def rotate_rows(
    conn: psycopg.Connection,
    keyring: PiiKeyring,
    select_sql: str,
    update_sql: str,
    blobs_of: Callable[[tuple], tuple[int, str, list[tuple[bytes, bytes]]]],
    batch_size: int,
    what: str,
) -> int:
    """Re-encrypt rows under the current key in batches; the number of rows moved.

    ``select_sql`` takes ``current``, ``after`` (the last row id done) and ``limit`` and returns
    rows in id order; ``blobs_of(row)`` gives ``(row id, key id, [(blob, aad), ...])``;
    ``update_sql`` takes ``key_id``, ``ids`` and ``blobs_<i>`` (the i-th blob of every row). One
    transaction per batch (use an autocommit connection, or one with no transaction open). One
    pass: rows locked by someone else are skipped (:func:`rotate_until_done` revisits them)."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    current = keyring.current_key_id
    moved = 0
    after = 0
    while True:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(select_sql, {"current": current, "after": after, "limit": batch_size})
            rows = cur.fetchall()
            if not rows:
                break
            params: dict[str, Any] = {"key_id": current, "ids": []}
            for row in rows:
                row_id, key_id, blobs = blobs_of(row)
                params["ids"].append(row_id)
                for i, (blob, aad) in enumerate(blobs):
                    params.setdefault(f"blobs_{i}", []).append(
                        keyring.encrypt(keyring.decrypt(blob, key_id, aad), aad)[1]
                    )
            cur.execute(update_sql, params)
            moved += len(rows)
            after = params["ids"][-1]
        log.info("%s key rotation: %d rows moved to key %s so far", what, moved, current)
        if len(rows) < batch_size:
            break
    log.info("%s key rotation done: %d rows moved to key %s", what, moved, current)
    return moved


def rotate_keys(conn: psycopg.Connection, keyring: PiiKeyring, batch_size: int = 1000) -> int:
    """Re-encrypt every customer row not under the current key; the number of rows moved.

    Batches of ``batch_size`` rows in ``id`` order, each in its own transaction (commit per batch
    needs an autocommit connection, or one with no transaction open), rows locked with ``FOR
    UPDATE SKIP LOCKED`` so loads and readers keep working. One pass: rows locked by someone else
    are skipped (:func:`rotate_until_done` comes back for them). ``updated_at`` is not touched
    (the customer's data does not change). Idempotent: a second call moves nothing. Raises
    :class:`PiiDecryptError` for a row whose key is not in the keyring (that batch is rolled back;
    earlier batches stay committed).
    """

    def blobs_of(row: tuple) -> tuple[int, str, list[tuple[bytes, bytes]]]:
        row_id, customer_id, name_enc, phone_enc, key_id = row
        return (
            row_id,
            key_id,
            [
                (name_enc, aad_for(customer_id, "first_name")),
                (phone_enc, aad_for(customer_id, "phone_number")),
            ],
        )

    return rotate_rows(conn, keyring, _ROTATE_SELECT, _ROTATE_UPDATE, blobs_of, batch_size, "PII")


# -- balances (§5.3) -------------------------------------------------------------------------------

#: The columns :func:`read_balance` takes, in order: ``read_balance(keyring, *row)``.
BALANCE_COLUMNS = "account_id, check_date, balance, balance_enc, balance_key_id"


def balance_aad(account_id: str, check_date: date | str) -> bytes:
    """Associated data binding a balance ciphertext to one ``daily_balance_checks`` row."""
    day = check_date.isoformat() if isinstance(check_date, date) else str(check_date)
    return f"daily_balance_checks/{account_id}/{day}".encode()


def encrypt_balance(keyring: PiiKeyring, account_id: str, check_date: date, amount: Decimal) -> tuple[str, bytes]:
    """``(key_id, blob)`` of an amount, with the keyring's current key."""
    return keyring.encrypt(format(amount, "f"), balance_aad(account_id, check_date))


def read_balance(
    keyring: PiiKeyring | None,
    account_id: str,
    check_date: date,
    balance: Decimal | None,
    balance_enc: bytes | None,
    balance_key_id: str | None,
) -> Decimal | None:
    """The amount of a ``daily_balance_checks`` row (columns :data:`BALANCE_COLUMNS`), plain or encrypted.

    The plaintext column when present; otherwise the ciphertext, decrypted with ``keyring``
    (:class:`PiiDecryptError` when it cannot be, :class:`PiiKeyError` when no keyring was given).
    """
    if balance is not None:
        return Decimal(balance)
    if balance_enc is None:
        return None
    if keyring is None:
        raise PiiKeyError("this balance is encrypted: a keyring is needed to read it")
    text = keyring.decrypt(balance_enc, balance_key_id or "", balance_aad(account_id, check_date))
    try:
        return Decimal(text)
    except InvalidOperation:
        raise PiiDecryptError(f"balance ciphertext under key {balance_key_id!r} is not an amount") from None


_ROTATE_BALANCES_SELECT = """
SELECT account_id, check_date, balance_enc, balance_key_id
FROM daily_balance_checks
WHERE balance_enc IS NOT NULL AND balance_key_id IS DISTINCT FROM %(current)s
  AND (account_id, check_date) > (%(after_account)s::text, %(after_date)s::date)
ORDER BY account_id, check_date
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

_ROTATE_BALANCES_UPDATE = """
UPDATE daily_balance_checks AS d
SET balance_enc = u.balance_enc, balance_key_id = %(key_id)s
FROM unnest(%(accounts)s::text[], %(dates)s::date[], %(blobs)s::bytea[]) AS u(account_id, check_date, balance_enc)
WHERE d.account_id = u.account_id AND d.check_date = u.check_date
"""


def rotate_balance_keys(conn: psycopg.Connection, keyring: PiiKeyring, batch_size: int = 1000) -> int:
    """Re-encrypt every encrypted balance not under the current key; the number of rows moved.

    As :func:`rotate_keys`: batches of ``batch_size`` rows in primary-key order, one transaction
    each (use an autocommit connection, or one with no transaction open), ``FOR UPDATE SKIP
    LOCKED`` so that the fetch stage and readers keep working; one pass: rows locked by someone
    else are skipped (:func:`rotate_until_done` comes back for them). Until it is done the table
    holds both key ids, so the keyring must keep the old key(s) beside the current one. Plaintext
    rows (written before encryption was configured) are not touched. Idempotent: a second call
    moves nothing. Raises :class:`PiiDecryptError` for a row whose key is not in the keyring (that
    batch is rolled back; earlier batches stay).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    current = keyring.current_key_id
    moved = 0
    after: tuple[str, date | str] = ("", "-infinity")
    while True:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                _ROTATE_BALANCES_SELECT,
                {"current": current, "after_account": after[0], "after_date": after[1], "limit": batch_size},
            )
            rows = cur.fetchall()
            if not rows:
                break
            accounts: list[str] = []
            dates: list[date] = []
            blobs: list[bytes] = []
            for account_id, check_date, blob, key_id in rows:
                aad = balance_aad(account_id, check_date)
                accounts.append(account_id)
                dates.append(check_date)
                blobs.append(keyring.encrypt(keyring.decrypt(blob, key_id or "", aad), aad)[1])
            cur.execute(
                _ROTATE_BALANCES_UPDATE, {"key_id": current, "accounts": accounts, "dates": dates, "blobs": blobs}
            )
            moved += len(rows)
            after = (accounts[-1], dates[-1])
        log.info("balance key rotation: %d rows moved to key %s so far", moved, current)
        if len(rows) < batch_size:
            break
    log.info("balance key rotation done: %d rows moved to key %s", moved, current)
    return moved


# -- every ciphertext column, key usage, rotation until done -------------------------------------


@dataclass(frozen=True)
class EncryptedTable:
    """The ciphertext columns of one table and the column naming the key that wrote them."""

    table: str
    columns: tuple[str, ...]
    key_column: str
    order_by: tuple[str, ...]  # the order rows are locked in (the rotation's own order)

    def describe(self) -> str:
        return ", ".join(f"{self.table}.{column}" for column in self.columns)

    def _holds_ciphertext(self) -> sql.Composable:
        return sql.SQL("({})").format(
            sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in self.columns)
        )

    def _not_under(self) -> sql.Composable:
        """Rows holding a ciphertext under another key than ``%(current)s`` (what a rotation must move)."""
        return sql.SQL("{} AND {} IS DISTINCT FROM %(current)s").format(
            self._holds_ciphertext(), sql.Identifier(self.key_column)
        )


#: Every encrypted column of the schema (migrations 0001, 0004, 0006), grouped by table.
ENCRYPTED_TABLES: tuple[EncryptedTable, ...] = (
    EncryptedTable("customers", ("first_name_enc", "phone_enc"), "pii_key_id", ("id",)),
    EncryptedTable("sms_notifications", ("content_enc", "phone_enc"), "pii_key_id", ("notification_id",)),
    EncryptedTable("daily_balance_checks", ("balance_enc",), "balance_key_id", ("account_id", "check_date")),
)


def encrypted_table(name: str) -> EncryptedTable:
    """The :data:`ENCRYPTED_TABLES` entry of a table."""
    for target in ENCRYPTED_TABLES:
        if target.table == name:
            return target
    raise KeyError(name)


@dataclass(frozen=True)
class TableKeyCounts:
    """How many rows of one table hold ciphertexts under each key id (``None``: a ciphertext without one)."""

    target: EncryptedTable
    rows: Mapping[str | None, int]  # rows holding any ciphertext, by key id
    cells: Mapping[str, Mapping[str | None, int]]  # column -> key id -> non-NULL ciphertexts


def key_counts(conn: psycopg.Connection, targets: Iterable[EncryptedTable] = ENCRYPTED_TABLES) -> list[TableKeyCounts]:
    """Rows per key id of every encrypted table (a full scan of each: an operator's command, not a task's)."""
    found = []
    with conn.transaction(), conn.cursor() as cur:
        for target in targets:
            query = sql.SQL("SELECT {key}, count(*), {counts} FROM {table} WHERE {holds} GROUP BY 1 ORDER BY 1").format(
                key=sql.Identifier(target.key_column),
                counts=sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(c)) for c in target.columns),
                table=sql.Identifier(target.table),
                holds=target._holds_ciphertext(),
            )
            result = cur.execute(query).fetchall()
            found.append(
                TableKeyCounts(
                    target,
                    {r[0]: r[1] for r in result},
                    {c: {r[0]: r[2 + i] for r in result if r[2 + i]} for i, c in enumerate(target.columns)},
                )
            )
    return found


def rows_not_under(conn: psycopg.Connection, target: EncryptedTable, key_id: str) -> dict[str | None, int]:
    """Rows of ``target`` holding a ciphertext under a key other than ``key_id``, by key id."""
    query = sql.SQL("SELECT {key}, count(*) FROM {table} WHERE {pending} GROUP BY 1 ORDER BY 1").format(
        key=sql.Identifier(target.key_column), table=sql.Identifier(target.table), pending=target._not_under()
    )
    with conn.transaction():
        return dict(conn.execute(query, {"current": key_id}).fetchall())


_INDEXED_KEY_COLUMNS = """
SELECT t.relname, a.attname
FROM pg_index i
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_class x ON x.oid = i.indexrelid
JOIN pg_am am ON am.oid = x.relam
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid IN (SELECT to_regclass(name) FROM unnest(%s::text[]) AS name)
  AND am.amname = 'btree' AND i.indpred IS NULL AND i.indisvalid
"""

# With a btree index on the key column: one index probe per distinct key id (a loose index scan,
# well under a millisecond at any size). Without one: a single scan (~0.1 s per 400k rows).
_DISTINCT_KEYS_BY_INDEX = """
WITH RECURSIVE k(key_id) AS (
    (SELECT {key} FROM {table} WHERE {key} IS NOT NULL ORDER BY 1 LIMIT 1)
    UNION ALL
    SELECT (SELECT {key} FROM {table} WHERE {key} > k.key_id ORDER BY 1 LIMIT 1) FROM k WHERE k.key_id IS NOT NULL
)
SELECT key_id FROM k WHERE key_id IS NOT NULL
"""
_DISTINCT_KEYS_BY_SCAN = "SELECT DISTINCT {key} FROM {table} WHERE {key} IS NOT NULL"


def key_usage(conn: psycopg.Connection) -> dict[EncryptedTable, frozenset[str]]:
    """The key ids stored rows use, per encrypted table; cheap enough to run whenever a keyring is loaded."""
    usage = {}
    with conn.transaction(), conn.cursor() as cur:
        indexed = set(cur.execute(_INDEXED_KEY_COLUMNS, ([t.table for t in ENCRYPTED_TABLES],)).fetchall())
        for target in ENCRYPTED_TABLES:
            template = (
                _DISTINCT_KEYS_BY_INDEX if (target.table, target.key_column) in indexed else _DISTINCT_KEYS_BY_SCAN
            )
            query = sql.SQL(template).format(key=sql.Identifier(target.key_column), table=sql.Identifier(target.table))
            usage[target] = frozenset(r[0] for r in cur.execute(query))
    return usage


class KeyringCoverageError(PiiKeyError):
    """The keyring lacks a key that stored ciphertexts still use; ``missing`` maps key id to the columns."""

    def __init__(self, missing: Mapping[str, list[str]]) -> None:
        self.missing = dict(missing)
        uses = "; ".join(f"{key_id!r} ({', '.join(where)})" for key_id, where in sorted(self.missing.items()))
        super().__init__(
            f"the PII keyring lacks key(s) still used by stored rows: {uses}. Put the key(s) back into "
            f"{PII_KEYS_CONN_ID!r}: a key leaves the ring only once `python -m premium.cli key-status` shows "
            "no row under it (docs/security.md, key rotation)"
        )


def check_keyring_covers(conn: psycopg.Connection, keyring: PiiKeyring) -> None:
    """Raise :class:`KeyringCoverageError` when a key id used by any stored row is not in ``keyring``."""
    missing: dict[str, list[str]] = {}
    for target, used in key_usage(conn).items():
        for key_id in sorted(used - set(keyring.keys)):
            missing.setdefault(key_id, []).append(target.describe())
    if missing:
        raise KeyringCoverageError(missing)


def load_keyring_for(conninfo: dict[str, Any] | None = None, conn_id: str = PII_KEYS_CONN_ID) -> PiiKeyring:
    """The keyring of ``conn_id``, refused (:class:`KeyringCoverageError`) if it cannot read every stored row.

    ``conninfo``: the application database (default: connection ``premium_db``)."""
    keyring = PiiKeyring.from_connection(conn_id)
    with connect(conninfo) as conn:
        check_keyring_covers(conn, keyring)
    return keyring


#: One rotation pass over a table (:func:`rotate_keys`, ``rotate_payload_keys``, :func:`rotate_balance_keys`).
RotationPass = Callable[[psycopg.Connection, PiiKeyring, int], int]


@dataclass(frozen=True)
class RotationResult:
    """What :func:`rotate_until_done` did to one table, and what is still under another key."""

    table: str
    key_id: str
    moved: int
    passes: int
    remaining: Mapping[str | None, int]  # key id -> rows not under ``key_id`` at the end

    @property
    def done(self) -> bool:
        return not self.remaining


def rotate_until_done(
    conn: psycopg.Connection,
    keyring: PiiKeyring,
    target: EncryptedTable,
    rotation_pass: RotationPass,
    *,
    batch_size: int = 1000,
    max_passes: int = 6,
    lock_wait_s: float = 30.0,
) -> RotationResult:
    """Move every row of ``target`` to the current key, revisiting what a pass could not take.

    Passes alternate: a ``SKIP LOCKED`` pass (``rotation_pass``: batches, one commit each, so
    readers and writers keep working), then, when rows are still under another key (locked by
    someone, or written meanwhile by a process holding a keyring loaded before the switch), a pass
    that first locks those rows, waiting at most ``lock_wait_s``, and moves them. It stops when no
    row is left, after ``max_passes``, or when a waiting pass timed out (the holder kept its locks
    past the bound). ``remaining`` is counted at the end: the rotation is complete only when it is
    empty (:attr:`RotationResult.done`), and only then may the old key leave the ring. Use an
    autocommit connection, or one with no transaction open.
    """
    if max_passes < 1:
        raise ValueError("max_passes must be positive")
    if lock_wait_s <= 0:
        raise ValueError("lock_wait_s must be positive")
    current = keyring.current_key_id
    moved = passes = 0
    remaining = rows_not_under(conn, target, current)
    wait = False
    while remaining and passes < max_passes:
        passes += 1
        if wait:
            taken = _rotate_waiting_for_locks(conn, keyring, target, rotation_pass, batch_size, lock_wait_s)
            if taken is None:
                remaining = rows_not_under(conn, target, current)
                break
            moved += taken
        else:
            moved += rotation_pass(conn, keyring, batch_size)
        remaining = rows_not_under(conn, target, current)
        wait = not wait
    if remaining:
        log.warning(
            "%s key rotation incomplete after %d passes: rows not under key %s: %s",
            target.table,
            passes,
            current,
            ", ".join(f"{k}: {n}" for k, n in remaining.items()),
        )
    return RotationResult(target.table, current, moved, passes, remaining)


def _rotate_waiting_for_locks(
    conn: psycopg.Connection,
    keyring: PiiKeyring,
    target: EncryptedTable,
    rotation_pass: RotationPass,
    batch_size: int,
    lock_wait_s: float,
) -> int | None:
    """Lock every row still to move (waiting at most ``lock_wait_s``), then run the pass in the same
    transaction (its batches become savepoints; our own locks are not skipped). ``None``: the locks
    were not obtained in time (nothing changed)."""
    lock_rows = sql.SQL("SELECT 1 FROM {table} WHERE {pending} ORDER BY {order} FOR UPDATE").format(
        table=sql.Identifier(target.table),
        pending=target._not_under(),
        order=sql.SQL(", ").join(map(sql.Identifier, target.order_by)),
    )
    bound = f"{max(1, round(lock_wait_s * 1000))}ms"
    try:
        with conn.transaction():
            previous = conn.execute("SELECT current_setting('statement_timeout')").fetchone()[0]
            conn.execute(
                "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                (bound, bound),
            )
            conn.execute(lock_rows, {"current": keyring.current_key_id})
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (previous,))
            return rotation_pass(conn, keyring, batch_size)
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled, psycopg.errors.DeadlockDetected) as exc:
        log.warning(
            "%s key rotation: rows still locked by another session after %.1f s (%s)",
            target.table,
            lock_wait_s,
            type(exc).__name__,
        )
        return None
