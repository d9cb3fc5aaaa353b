"""The core-banking simulator's deterministic data model (integration-architecture §2.2).

Every value derives from SHA-256 of stable strings, so it is identical in every run, process
and machine (no ``random``, no ``hash()``, no floats: Decimal arithmetic in a fixed context).

Hash helpers (``s`` is UTF-8 encoded)::

    H(s) = int.from_bytes(sha256(s).digest(), "big")            # full 256-bit integer
    U(s) = int.from_bytes(sha256(s).digest()[:8], "big") / 2**64  # uniform in [0, 1)

Rules for an account id ``A`` (``ACC-NNNNN-NNNNN``, see ``premium.identifiers``) and a day
``D`` (ISO ``YYYY-MM-DD``):

* format: ``A`` must satisfy ``identifiers.is_valid_account_id`` — otherwise
  :func:`account_facts` raises ``ValueError`` and the server answers 400 INVALID_REQUEST.
* existence: ``A`` does not exist (404 NOT_FOUND) iff ``H("exists|" + A) % 200 == 0`` (0.5%).
* customer: ``customerId = str(identifiers.customer_number_for(A))``.
* currency: ``"USD"`` iff ``H("currency|" + A) % 200 == 0`` (0.5%), else ``"NIS"``.
* status: ``s = H("status|" + A) % 1000``; ``s < 10`` → ``"FROZEN"`` (1%),
  ``10 <= s < 15`` → ``"CLOSED"`` (0.5%), else ``"ACTIVE"``. Same on every date.
* base balance (per account): ``u = U("base|" + A)``, threshold ``T = 15000``::

      u < 0.4        → base = T * 0.9 * exp(-1.5 * (0.4 - u) / 0.4)   # 40%: 3,012 .. 13,500
      0.4 <= u < 0.6 → base = T * (0.9 + (u - 0.4))                   # 20%: 13,500 .. 16,500 (±10%)
      u >= 0.6       → base = T * 1.1 * exp(1.5 * (u - 0.6) / 0.4)   # 40%: 16,500 .. 73,947

* daily factor: ``day = 0.95 + 0.10 * U("day|" + A + "|" + D)`` (in [0.95, 1.05)), times a
  dip of ``0.5`` iff ``H("dip|" + A + "|" + D) % 100 < 3`` (3% of (account, day) pairs, so
  customers near or above the threshold occasionally fail a day).
* amount: ``base * day * dip`` rounded half-up to 2 decimals (Decimal, context precision 28).
* reference: ``"REF-%09d" % (H("ref|" + A + "|" + D) % 10**9)``.

Success body (:func:`balance_response`), exactly §2.2; ``timestamp`` is asOfDate + asOfTime
read as Asia/Jerusalem wall-clock time, converted to UTC::

    {"accountId": A, "customerId": "12345",
     "balance": {"amount": 25000.00, "currency": "NIS", "asOfDate": D, "asOfTime": "21:00:00"},
     "accountStatus": "ACTIVE", "timestamp": "2025-11-18T19:00:00Z", "referenceId": "REF-123456789"}

Error body (:func:`error_body`), codes and default messages from the §2.2 table (:data:`ERRORS`)::

    {"error": {"code": "NOT_FOUND", "message": "Account not found", "status": 404},
     "timestamp": "2025-11-18T19:00:00.123Z"}   # time the error was produced, UTC
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, localcontext
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from premium import identifiers

THRESHOLD = Decimal(15000)
BANK_TZ = ZoneInfo("Asia/Jerusalem")

#: §2.2 error table: HTTP status → (code, message).
ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_REQUEST", "Invalid account ID format"),
    401: ("UNAUTHORIZED", "Authentication failed"),
    404: ("NOT_FOUND", "Account not found"),
    500: ("INTERNAL_ERROR", "Server error"),
    503: ("SERVICE_UNAVAILABLE", "Temporary unavailability"),
}

_CTX = Context(prec=28, rounding=ROUND_HALF_EVEN)
_TWO_64 = Decimal(2**64)
_CENT = Decimal("0.01")
_D = Decimal


def hash_int(s: str) -> int:
    """H(s): SHA-256 of ``s`` as a 256-bit big-endian integer."""
    return int.from_bytes(hashlib.sha256(s.encode()).digest(), "big")


def hash_unit(s: str) -> float:
    """U(s): the first 8 bytes of SHA-256 of ``s`` as a float in [0, 1)."""
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") / 2**64


def _hash_unit_dec(s: str) -> Decimal:
    return _D(int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big")) / _TWO_64


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """What the bank knows about one account on one day."""

    account_id: str
    customer_id: str
    as_of_date: dt.date
    amount: Decimal
    currency: str
    account_status: str
    reference_id: str


@dataclass(frozen=True, slots=True)
class _Traits:
    exists: bool
    customer_id: str
    currency: str
    status: str
    base: Decimal


@lru_cache(maxsize=1 << 16)
def _traits(account_id: str) -> _Traits:
    customer_id = str(identifiers.customer_number_for(account_id))  # ValueError on bad format
    s = hash_int("status|" + account_id) % 1000
    status = "FROZEN" if s < 10 else "CLOSED" if s < 15 else "ACTIVE"
    return _Traits(
        exists=hash_int("exists|" + account_id) % 200 != 0,
        customer_id=customer_id,
        currency="USD" if hash_int("currency|" + account_id) % 200 == 0 else "NIS",
        status=status,
        base=base_balance(account_id),
    )


def base_balance(account_id: str) -> Decimal:
    """The account's unrounded base balance (before the daily factor); see the module rules."""
    with localcontext(_CTX):
        u = _hash_unit_dec("base|" + account_id)
        if u < _D("0.4"):
            factor = _D("0.9") * (_D("-1.5") * (_D("0.4") - u) / _D("0.4")).exp()
        elif u < _D("0.6"):
            factor = _D("0.9") + (u - _D("0.4"))
        else:
            factor = _D("1.1") * (_D("1.5") * (u - _D("0.6")) / _D("0.4")).exp()
        return THRESHOLD * factor


def daily_factor(account_id: str, as_of: dt.date) -> Decimal:
    """The day's multiplier: 0.95..1.05, halved on a dip day."""
    key = f"{account_id}|{as_of.isoformat()}"
    with localcontext(_CTX):
        factor = _D("0.95") + _D("0.10") * _hash_unit_dec("day|" + key)
        if hash_int("dip|" + key) % 100 < 3:
            factor *= _D("0.5")
        return factor


def account_facts(account_id: str, as_of: dt.date) -> AccountFacts | None:
    """The account's facts on ``as_of``; None if it does not exist. ValueError on a bad id format."""
    traits = _traits(account_id)
    if not traits.exists:
        return None
    key = f"{account_id}|{as_of.isoformat()}"
    with localcontext(_CTX):
        amount = (traits.base * daily_factor(account_id, as_of)).quantize(_CENT, rounding=ROUND_HALF_UP)
    return AccountFacts(
        account_id=account_id,
        customer_id=traits.customer_id,
        as_of_date=as_of,
        amount=amount,
        currency=traits.currency,
        account_status=traits.status,
        reference_id=f"REF-{hash_int('ref|' + key) % 10**9:09d}",
    )


def utc_timestamp(as_of: dt.date, as_of_time: str) -> str:
    """asOfDate + asOfTime (HH:MM:SS) as Asia/Jerusalem local time → ISO-8601 UTC ``…Z``."""
    local = dt.datetime.combine(as_of, dt.time.fromisoformat(as_of_time), tzinfo=BANK_TZ)
    return local.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def balance_response(facts: AccountFacts, as_of_time: str) -> dict[str, Any]:
    """The §2.2 success body; ``balance.amount`` is a Decimal (serialise with :func:`dumps`)."""
    return {
        "accountId": facts.account_id,
        "customerId": facts.customer_id,
        "balance": {
            "amount": facts.amount,
            "currency": facts.currency,
            "asOfDate": facts.as_of_date.isoformat(),
            "asOfTime": as_of_time,
        },
        "accountStatus": facts.account_status,
        "timestamp": utc_timestamp(facts.as_of_date, as_of_time),
        "referenceId": facts.reference_id,
    }


def now_timestamp() -> str:
    """The current UTC time, ISO-8601 with milliseconds and ``Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """The error body for ``status``; code and default message from :data:`ERRORS`."""
    code, default = ERRORS.get(status, (f"HTTP_{status}", "Error"))
    return {"error": {"code": code, "message": message or default, "status": status}, "timestamp": now_timestamp()}


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))  # exact JSON number, e.g. 25000.00
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """orjson serialisation that writes Decimals as exact JSON numbers."""
    return orjson.dumps(obj, default=_default)
