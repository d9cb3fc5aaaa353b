"""§3.6 failure categories: what a carrier status code means for a message."""

from __future__ import annotations

from dataclasses import dataclass

from premium.settings import SmsSettings


@dataclass(frozen=True)
class FailurePolicy:
    category: str  # invalid_number | carrier_reject | rate_limit | provider_error | network_error | unknown
    retryable: bool
    max_retries: int | None  # None: bounded only by max_attempts
    escalate: bool


def classify(code: str | None, settings: SmsSettings) -> FailurePolicy:
    code = (code or "").strip()
    if code == "21211":
        return FailurePolicy("invalid_number", False, 0, True)
    if code == "21614":
        return FailurePolicy("carrier_reject", True, settings.carrier_reject_max_retries, False)
    if code == "20429":
        return FailurePolicy("rate_limit", True, None, False)
    if code.isdigit() and 50001 <= int(code) <= 50999:
        return FailurePolicy("provider_error", True, None, False)
    if code == "503":
        return FailurePolicy("network_error", True, None, False)
    return FailurePolicy("unknown", False, 0, True)


def may_retry(code: str | None, attempts_so_far: int, settings: SmsSettings) -> bool:
    """Whether a message that failed with ``code`` after ``attempts_so_far`` attempts gets another."""
    policy = classify(code, settings)
    if not policy.retryable or attempts_so_far >= settings.max_attempts:
        return False
    return policy.max_retries is None or attempts_so_far - 1 < policy.max_retries
