"""The SMS-carrier simulator's deterministic delivery model (integration-architecture §3.3, §3.6).

Every outcome derives from SHA-256 of stable strings, so it is identical in every run, process
and machine (no ``random``, no ``hash()``). Hash helpers as in :mod:`bank_model` (UTF-8)::

    H(s) = int.from_bytes(sha256(s).digest(), "big")              # 256-bit integer
    U(s) = int.from_bytes(sha256(s).digest()[:8], "big") / 2**64  # uniform in [0, 1)

Rules for an E.164 number ``P`` (e.g. ``"+972521234567"``):

* invalid at submission (:func:`invalid_at_submission`): ``P`` starts with
  :data:`INVALID_PREFIX` ``"+972500000"`` (050-000-0xxx, a never-assigned range, for tests), or
  ``H("invalid|" + P) % 100 == 0`` (≈1% of numbers). The carrier answers the message in the
  202 body with ``{"status": "REJECTED", "errorCode": "21211", "errorMessage": "Invalid phone
  number"}``; it is not accepted (no tracking id, no attempt counted).
* outcome of an accepted message (:func:`outcome_for`): ``k`` is the attempt index — how many
  distinct messageIds the same carrier instance accepted earlier for ``P`` (0 for the first).
  ``u = U("outcome|" + P + "|" + str(k))`` picks a band (shares of accepted messages)::

      u < 0.89  DELIVERED      statusCode "0"      "Message successfully delivered"   89%
      u < 0.92  FAILED         "21614"             "SMS rejected by carrier"           3%
      u < 0.94  FAILED         "5xxxx"             "Provider error"                    2%
                    code = 50001 + H("provider|" + P + "|" + str(k)) % 999  (50001..50999)
      u < 0.96  UNDELIVERABLE  "21211"             "Invalid phone number"              2%
      u < 0.98  SENT (stuck: never reaches a final status)                              2%
      else      NO_STATUS (the carrier never reports anything after QUEUED)             2%

  A retry (a new messageId for the same number) has ``k + 1`` and an independent draw, so a
  FAILED number is DELIVERED on the next attempt with probability 0.89 — usually, not always.
  Overall (valid + invalid numbers): ≈88% delivered, ≈1% rejected at submission.
* progression (:func:`status_at`), ``t`` seconds after acceptance, ``sent_after`` /
  ``final_after`` the instance's delays (defaults 5 s and 30 s, times ``time_scale``)::

      t < sent_after                     QUEUED
      outcome NO_STATUS, t >= sent_after NO_STATUS (forever)
      t < final_after or outcome SENT    SENT
      otherwise                          the outcome's final status (DELIVERED/FAILED/UNDELIVERABLE)

  Status-body ``statusCode``: ``"0"`` when DELIVERED, the failure code when FAILED or
  UNDELIVERABLE, ``null`` otherwise; ``statusMessage`` from :data:`STATUS_MESSAGES` or the
  outcome's message once final. ``deliveryTimestamp`` only when DELIVERED.
* tracking ids (:func:`tracking_id`): ``<NAME>-TRACK-<seq:08d>``, NAME the instance name upper-
  cased with anything but ``A-Z0-9`` replaced by ``-`` (``primary`` → ``PRIMARY-TRACK-00000001``);
  ``seq`` counts accepted messages of the instance from 1 and never restarts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from premium.simulators.bank_model import hash_int, hash_unit

QUEUED = "QUEUED"
SENT = "SENT"
DELIVERED = "DELIVERED"
FAILED = "FAILED"
UNDELIVERABLE = "UNDELIVERABLE"
NO_STATUS = "NO_STATUS"
REJECTED = "REJECTED"  # only in the 202 body: refused at submission, never tracked

FINAL_STATUSES = frozenset({DELIVERED, FAILED, UNDELIVERABLE})
#: statuses that produce a delivery callback (§3.5); QUEUED and NO_STATUS do not
CALLBACK_STATUSES = frozenset({SENT, DELIVERED, FAILED, UNDELIVERABLE})

DEFAULT_SENT_AFTER_S = 5.0
DEFAULT_FINAL_AFTER_S = 30.0

INVALID_PREFIX = "+972500000"
INVALID_NUMBER_CODE = "21211"
INVALID_NUMBER_MESSAGE = "Invalid phone number"
CARRIER_REJECT_CODE = "21614"

#: (upper bound of u, status, statusCode, statusMessage); the 5xxxx code is drawn per (P, k)
BANDS: tuple[tuple[float, str, str | None, str], ...] = (
    (0.89, DELIVERED, "0", "Message successfully delivered"),
    (0.92, FAILED, CARRIER_REJECT_CODE, "SMS rejected by carrier"),
    (0.94, FAILED, "5xxxx", "Provider error"),
    (0.96, UNDELIVERABLE, INVALID_NUMBER_CODE, INVALID_NUMBER_MESSAGE),
    (0.98, SENT, None, "Sent to carrier network"),
    (1.0, NO_STATUS, None, "No update from carrier"),
)

#: statusMessage of the non-final statuses
STATUS_MESSAGES: dict[str, str] = {
    QUEUED: "Awaiting send",
    SENT: "Sent to carrier network",
    NO_STATUS: "No update from carrier",
}

_NON_ALNUM = re.compile(r"[^A-Z0-9]+")


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where an accepted message ends up: ``status`` is final unless SENT (stuck) or NO_STATUS."""

    status: str
    status_code: str | None
    status_message: str

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


_FIXED = {(status, code): Outcome(status, code, message) for _, status, code, message in BANDS if code != "5xxxx"}


def invalid_at_submission(phone: str) -> bool:
    """True if the carrier rejects ``phone`` at submission (21211, see the module rules)."""
    return phone.startswith(INVALID_PREFIX) or hash_int("invalid|" + phone) % 100 == 0


def outcome_for(phone: str, attempt_index: int) -> Outcome:
    """The outcome of the ``attempt_index``-th accepted message (0-based) to ``phone``."""
    suffix = f"{phone}|{attempt_index}"
    u = hash_unit("outcome|" + suffix)
    for upper, status, code, message in BANDS:
        if u < upper:
            if code == "5xxxx":
                return Outcome(status, str(50001 + hash_int("provider|" + suffix) % 999), message)
            return _FIXED[(status, code)]
    return _FIXED[(NO_STATUS, None)]  # pragma: no cover - u < 1.0 always


def status_at(outcome: Outcome, elapsed_s: float, sent_after_s: float, final_after_s: float) -> str:
    """The reported status ``elapsed_s`` seconds after acceptance."""
    if elapsed_s < sent_after_s:
        return QUEUED
    if outcome.status == NO_STATUS:
        return NO_STATUS
    if elapsed_s < final_after_s or not outcome.final:
        return SENT
    return outcome.status


def status_fields(outcome: Outcome, status: str) -> tuple[str | None, str]:
    """(statusCode, statusMessage) reported with ``status`` for a message with ``outcome``."""
    if status in FINAL_STATUSES:
        return outcome.status_code, outcome.status_message
    return None, STATUS_MESSAGES[status]


def tracking_prefix(name: str) -> str:
    """``"primary"`` → ``"PRIMARY-TRACK-"``."""
    cleaned = _NON_ALNUM.sub("-", name.upper()).strip("-")
    if not cleaned:
        raise ValueError("the carrier name needs at least one letter or digit")
    return cleaned + "-TRACK-"


def tracking_id(name: str, seq: int) -> str:
    """The tracking id of the ``seq``-th (1-based) accepted message of instance ``name``."""
    return f"{tracking_prefix(name)}{seq:08d}"
