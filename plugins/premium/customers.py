"""Load the customer base from CSV into ``customers`` (PII encrypted), and read PII back.

The file has a header with exactly the columns of :data:`COLUMNS` (any order), UTF-8 with or
without a BOM. Every row is validated; invalid rows are reported as :class:`Rejection` (physical
line number, customer id, a specific reason) and skipped. Reasons and file errors name columns,
positions and line numbers, never a cell's content: a shifted column or a missing header would
otherwise put a name or a phone number into logs and task output. Valid rows are upserted by customer_id in one transaction: COPY into a temporary table,
then one ``INSERT … SELECT … ON CONFLICT (customer_id) DO UPDATE``. Rows identical to what is
stored (compared after decrypting) are left untouched, so a reload keeps ``updated_at``.

Phone numbers are only required to be present and at most 32 characters here; whether a number
is an Israeli mobile is decided by a later stage.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import psycopg

from premium.crypto import PiiKeyring, aad_for
from premium.identifiers import ACCOUNT_ID_RE, CUSTOMER_ID_RE
from premium.sms.phones import is_valid_mobile

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "customer_id",
    "account_id",
    "first_name",
    "phone_number",
    "language",
    "status",
    "sms_consent",
)
LANGUAGES: tuple[str, ...] = ("he", "en", "ar", "ru")
STATUSES: tuple[str, ...] = ("ACTIVE", "INACTIVE", "SUSPENDED", "CLOSED")
MAX_FIRST_NAME_CHARS = 100
MAX_PHONE_CHARS = 32
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


class CustomerFileError(ValueError):
    """The file as a whole cannot be loaded (missing/extra columns, not UTF-8, not CSV); nothing was loaded."""


@dataclass(frozen=True)
class Rejection:
    """A row that was not loaded: its physical line (header = 1), customer id when valid, and why."""

    line: int
    customer_id: str | None
    reason: str


@dataclass
class LoadReport:
    """What a load did. ``rows_read`` counts data rows (blank lines excluded)."""

    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.inserted + self.updated + self.unchanged

    def summary(self) -> str:
        return (
            f"{self.rows_read} rows read: {self.inserted} inserted, {self.updated} updated, "
            f"{self.unchanged} unchanged, {len(self.rejected)} rejected"
        )


class _Row(NamedTuple):
    line: int
    customer_id: str
    account_id: str
    first_name: str
    phone_number: str
    language: str
    status: str
    sms_consent: bool


def _parse_bool(value: str) -> bool | None:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def _validate(values: dict[str, str]) -> tuple[list[str], bool | None]:
    """The problems of one row (naming columns, never quoting a value), and the parsed consent."""
    problems: list[str] = []
    customer_id = values["customer_id"]
    if not customer_id:
        problems.append("customer_id is empty")
    elif not CUSTOMER_ID_RE.match(customer_id):
        problems.append("customer_id is not 1 to 12 digits")
    account_id = values["account_id"]
    if not account_id:
        problems.append("account_id is empty")
    elif not ACCOUNT_ID_RE.match(account_id):
        problems.append("account_id is not in ACC-NNNNN-NNNNN format")
    first_name = values["first_name"]
    if not first_name:
        problems.append("first_name is empty")
    elif len(first_name) > MAX_FIRST_NAME_CHARS:
        problems.append(f"first_name is longer than {MAX_FIRST_NAME_CHARS} characters")
    phone = values["phone_number"]
    if not phone:
        problems.append("phone_number is empty")
    elif len(phone) > MAX_PHONE_CHARS:
        problems.append(f"phone_number is longer than {MAX_PHONE_CHARS} characters")
    language = values["language"]
    if not language:
        problems.append("language is empty")
    elif language.lower() not in LANGUAGES:
        problems.append(f"language is not one of {', '.join(LANGUAGES)}")
    status = values["status"]
    if not status:
        problems.append("status is empty")
    elif status.upper() not in STATUSES:
        problems.append(f"status is not one of {', '.join(STATUSES)}")
    consent = _parse_bool(values["sms_consent"])
    if not values["sms_consent"]:
        problems.append("sms_consent is empty")
    elif consent is None:
        problems.append("sms_consent is not a boolean")
    return problems, consent


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(physical line where the record starts, fields) for every non-blank CSV record."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            previous_end = 0
            try:
                for record in reader:
                    start = previous_end + 1
                    previous_end = reader.line_num
                    if record and any(cell.strip() for cell in record):
                        yield start, record
            except csv.Error as exc:
                raise CustomerFileError(f"line {reader.line_num}: not valid CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise CustomerFileError(f"the file is not UTF-8 (invalid byte at offset {exc.start})") from None


def _parse_file(path: Path, report: LoadReport) -> list[_Row]:
    """Validate the whole file; the valid rows (duplicates within the file rejected)."""
    records = _records(path)
    first = next(records, None)
    if first is None:
        raise CustomerFileError("the file is empty (a header row is required)")
    header = [name.strip() for name in first[1]]
    if not set(header) & set(COLUMNS):  # most likely a data row: never quote it
        raise CustomerFileError(
            f"line {first[0]} is not a header row (none of the expected column names); "
            f"the file must start with the header {', '.join(COLUMNS)}"
        )
    missing = [name for name in COLUMNS if name not in header]
    extra = [position for position, name in enumerate(header, 1) if name not in COLUMNS]
    duplicated = sorted({name for name in header if header.count(name) > 1 and name in COLUMNS})
    if missing or extra or duplicated:
        parts = []
        if missing:
            parts.append(f"missing columns: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected columns in positions {', '.join(map(str, extra))}")
        if duplicated:
            parts.append(f"duplicated columns: {', '.join(duplicated)}")
        raise CustomerFileError(f"header (line {first[0]}): {'; '.join(parts)}; expected {', '.join(COLUMNS)}")
    index = {name: header.index(name) for name in COLUMNS}

    rows: list[_Row] = []
    first_seen: dict[str, int] = {}
    account_owner: dict[str, tuple[str, int]] = {}
    for line, record in records:
        report.rows_read += 1
        if len(record) != len(header):
            report.rejected.append(Rejection(line, None, f"row has {len(record)} fields, expected {len(header)}"))
            continue
        values = {name: record[i].strip() for name, i in index.items()}
        problems, consent = _validate(values)
        customer_id = values["customer_id"] if CUSTOMER_ID_RE.match(values["customer_id"]) else None
        if customer_id is not None:
            if customer_id in first_seen:
                problems.insert(0, f"duplicate customer_id (first seen on line {first_seen[customer_id]})")
            else:
                first_seen[customer_id] = line
        account_id = values["account_id"]
        if not problems and customer_id is not None:
            owner = account_owner.get(account_id)
            if owner is not None:
                problems.append(f"account_id already belongs to customer {owner[0]} (line {owner[1]})")
            else:
                account_owner[account_id] = (customer_id, line)
        if problems:
            report.rejected.append(Rejection(line, customer_id, "; ".join(problems)))
            continue
        assert customer_id is not None and consent is not None
        rows.append(
            _Row(
                line=line,
                customer_id=customer_id,
                account_id=account_id,
                first_name=values["first_name"],
                phone_number=values["phone_number"],
                language=values["language"].lower(),
                status=values["status"].upper(),
                sms_consent=consent,
            )
        )
    return rows


_EXISTING_SQL = """
SELECT customer_id, account_id, first_name_enc, phone_enc, pii_key_id, language, status, sms_consent, phone_valid
FROM customers WHERE customer_id = ANY(%s)
"""
_ACCOUNT_OWNERS_SQL = "SELECT account_id, customer_id FROM customers WHERE account_id = ANY(%s)"
_STAGE_SQL = """
CREATE TEMPORARY TABLE premium_customers_load (
    customer_id text NOT NULL, account_id text NOT NULL, first_name_enc bytea NOT NULL,
    phone_enc bytea NOT NULL, phone_hash bytea NOT NULL, pii_key_id text NOT NULL,
    language text NOT NULL, status text NOT NULL, sms_consent boolean NOT NULL, phone_valid boolean NOT NULL
) ON COMMIT DROP
"""
_COPY_SQL = (
    "COPY premium_customers_load (customer_id, account_id, first_name_enc, phone_enc, phone_hash, "
    "pii_key_id, language, status, sms_consent, phone_valid) FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ("text", "text", "bytea", "bytea", "bytea", "text", "text", "text", "bool", "bool")
_UPSERT_SQL = """
WITH upserted AS (
    INSERT INTO customers AS c (customer_id, account_id, first_name_enc, phone_enc, phone_hash, pii_key_id,
                                language, status, sms_consent, sms_consent_at, phone_valid)
    SELECT customer_id, account_id, first_name_enc, phone_enc, phone_hash, pii_key_id,
           language, status, sms_consent, CASE WHEN sms_consent THEN now() END, phone_valid
    FROM premium_customers_load
    ON CONFLICT (customer_id) DO UPDATE SET
        account_id = EXCLUDED.account_id,
        first_name_enc = EXCLUDED.first_name_enc,
        phone_enc = EXCLUDED.phone_enc,
        phone_hash = EXCLUDED.phone_hash,
        pii_key_id = EXCLUDED.pii_key_id,
        language = EXCLUDED.language,
        status = EXCLUDED.status,
        sms_consent = EXCLUDED.sms_consent,
        phone_valid = EXCLUDED.phone_valid,
        sms_consent_at = CASE
            WHEN NOT EXCLUDED.sms_consent THEN NULL
            WHEN c.sms_consent AND c.sms_consent_at IS NOT NULL THEN c.sms_consent_at
            ELSE now()
        END,
        updated_at = now()
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted
"""


def _same_as_stored(row: _Row, stored: tuple, keyring: PiiKeyring) -> bool:
    _, account_id, name_enc, phone_enc, key_id, language, status, consent, phone_valid = stored
    if (account_id, language, status, consent) != (row.account_id, row.language, row.status, row.sms_consent):
        return False
    if phone_valid is None:  # loaded before numbers were validated: rewrite to record the verdict
        return False
    return keyring.decrypt(name_enc, key_id, aad_for(row.customer_id, "first_name")) == row.first_name and (
        keyring.decrypt(phone_enc, key_id, aad_for(row.customer_id, "phone_number")) == row.phone_number
    )


def load_customers_csv(path: Path, conn: psycopg.Connection, keyring: PiiKeyring) -> LoadReport:
    """Validate ``path`` and upsert its valid rows into ``customers`` in one transaction.

    Raises :class:`CustomerFileError` (nothing loaded) when the file itself is unusable. Any
    exception during the load rolls the whole load back. An account_id that the database already
    holds for another customer is rejected (accounts are not moved between customers by a load).
    """
    report = LoadReport()
    rows = _parse_file(Path(path), report)
    with conn.transaction(), conn.cursor() as cur:
        # One loader at a time; readers (and the SMS stage) are not blocked.
        cur.execute("LOCK TABLE customers IN SHARE ROW EXCLUSIVE MODE")
        cur.execute(_EXISTING_SQL, ([r.customer_id for r in rows],))
        existing = {rec[0]: rec for rec in cur.fetchall()}
        cur.execute(_ACCOUNT_OWNERS_SQL, ([r.account_id for r in rows],))
        owners = dict(cur.fetchall())

        to_write: list[_Row] = []
        for row in rows:
            owner = owners.get(row.account_id)
            if owner is not None and owner != row.customer_id:
                report.rejected.append(
                    Rejection(row.line, row.customer_id, f"account_id already belongs to customer {owner}")
                )
            elif row.customer_id in existing and _same_as_stored(row, existing[row.customer_id], keyring):
                report.unchanged += 1
            else:
                to_write.append(row)

        if to_write:
            cur.execute("DROP TABLE IF EXISTS premium_customers_load")
            cur.execute(_STAGE_SQL)
            with cur.copy(_COPY_SQL) as copy:
                copy.set_types(list(_COPY_TYPES))
                for row in to_write:
                    key_id, name_enc = keyring.encrypt(row.first_name, aad_for(row.customer_id, "first_name"))
                    _, phone_enc = keyring.encrypt(row.phone_number, aad_for(row.customer_id, "phone_number"))
                    copy.write_row(
                        (
                            row.customer_id,
                            row.account_id,
                            name_enc,
                            phone_enc,
                            keyring.phone_hash(row.phone_number),
                            key_id,
                            row.language,
                            row.status,
                            row.sms_consent,
                            is_valid_mobile(row.phone_number),
                        )
                    )
            cur.execute(_UPSERT_SQL)
            inserted, updated = cur.fetchone() or (0, 0)
            report.inserted, report.updated = int(inserted), int(updated)
            cur.execute("DROP TABLE premium_customers_load")
    report.rejected.sort(key=lambda r: r.line)
    log.info("customer load %s: %s", Path(path).name, report.summary())
    return report


def read_customer_pii(
    conn: psycopg.Connection, keyring: PiiKeyring, customer_ids: Iterable[str]
) -> dict[str, tuple[str, str]]:
    """Decrypted ``(first_name, phone_number)`` by customer_id; unknown ids are absent."""
    ids = list(dict.fromkeys(customer_ids))
    if not ids:
        return {}
    with conn.cursor() as cur:
        cur.execute(
            "SELECT customer_id, first_name_enc, phone_enc, pii_key_id FROM customers WHERE customer_id = ANY(%s)",
            (ids,),
        )
        result: dict[str, tuple[str, str]] = {}
        for customer_id, name_enc, phone_enc, key_id in cur:
            result[customer_id] = (
                keyring.decrypt(name_enc, key_id, aad_for(customer_id, "first_name")),
                keyring.decrypt(phone_enc, key_id, aad_for(customer_id, "phone_number")),
            )
        return result
