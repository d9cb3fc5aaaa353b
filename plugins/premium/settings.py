"""Business settings: defaults, per-deployment overrides, per-run overrides.

Precedence, lowest first:

1. the defaults below (the specification's figures);
2. a JSON settings file named by ``PREMIUM_SETTINGS_FILE`` (baked into an image, or mounted);
3. the Airflow Variable ``premium_settings`` (JSON; editable in the UI, or
   ``AIRFLOW_VAR_PREMIUM_SETTINGS``);
4. the DAG run's params, for the keys a DAG exposes (a null param means "not overridden").

Files and the Variable are sectioned: ``{"balance": {"threshold_nis": 20000}}``. Read only inside
tasks, never at DAG parse time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

SETTINGS_VARIABLE = "premium_settings"
SETTINGS_FILE_ENV = "PREMIUM_SETTINGS_FILE"


class SettingsError(ValueError):
    """A setting is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class BalanceSettings:
    """The balance verification stage (§2, §7.1)."""

    threshold_nis: Decimal = Decimal("15000")
    chunk_size: int = 1000  # accounts per chunk (one DB page, one bulk write)
    request_timeout_s: float = 30.0
    max_retries: int = 3  # retries after the first attempt
    backoff_multiplier_s: float = 1.0  # wait before retry n = multiplier * 2**n seconds
    breaker_failures: int = 5
    breaker_reset_s: float = 60.0
    outage_threshold_s: float = 7200.0
    skip_on_outage: bool = True
    in_flight: int = 64  # concurrent requests per fetch task
    max_mapped_tasks: int = 16  # upper bound of fetch task instances per run
    as_of_time: str = "22:00:00"  # asOfTime sent to the bank (end of business day)
    # §5.3: store the amount only encrypted (balance NULL, balance_enc + balance_key_id, keyring
    # premium_pii_keys); passes_threshold is still computed from the plaintext, so qualification is unchanged.
    encrypt_balances: bool = False

    def __post_init__(self) -> None:
        _check_range("chunk_size", self.chunk_size, 1, 10_000)
        _check_range("in_flight", self.in_flight, 1, 1_000)
        _check_range("max_mapped_tasks", self.max_mapped_tasks, 1, 512)
        _check_range("max_retries", self.max_retries, 0, 10)
        _check_range("breaker_failures", self.breaker_failures, 1, 1_000_000)
        _check_range("request_timeout_s", self.request_timeout_s, 0.001, 300)
        _check_range("breaker_reset_s", self.breaker_reset_s, 0.001, 3_600)
        _check_range("outage_threshold_s", self.outage_threshold_s, 0, 86_400)
        _check_range("backoff_multiplier_s", self.backoff_multiplier_s, 0, 60)
        if self.threshold_nis < 0:
            raise SettingsError("threshold_nis must not be negative")
        _check_time("as_of_time", self.as_of_time)

    def backoff_s(self, retry_number: int) -> float:
        return self.backoff_multiplier_s * 2**retry_number


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class SmsSettings:
    """Qualification and SMS submission (§3, §4.2, §7.2)."""

    window_days: int = 30  # the qualification window W ends at the check date
    min_passing_checks: int = 28  # passing checks needed in W (outage days count neither way)
    batch_size: int = 500  # messages per carrier batch (§3.1: 500-1000)
    max_segments: int = 3  # a template rendering past this fails the run before sending
    send_time: str = "09:00:00"  # local time of the send window
    send_offset_days: int = 1  # the window opens on D + offset (§4.2: the next morning)
    no_send_days: tuple = ("saturday",)  # the window moves to the next allowed morning
    max_lag_days: int = 1  # a run whose D is older than this (a backfill, a late rerun) sends nothing
    callback_url: str = "http://127.0.0.1:8080/premium/api/webhooks/sms-delivery"
    priority: str = "HIGH"
    bank_name: str = "Premium Bank"
    max_attempts: int = 3  # per message, all causes
    carrier_reject_max_retries: int = 2  # 21614
    request_timeout_s: float = 30.0
    post_retries: int = 2  # retries of one batch POST within a submission (3 attempts)
    backoff_multiplier_s: float = 1.0  # wait before retry n = multiplier * 2**n s (or Retry-After)
    breaker_failures: int = 5
    breaker_reset_s: float = 60.0
    failover_failure_rate: float = 0.5  # batch failure rate on the primary that triggers failover
    in_flight_batches: int = 4  # concurrent batch POSTs
    send_window_end: str = "20:00:00"  # local time after which nothing is POSTed (first sends and retries)
    retry_backoff_s: float = 600.0  # a failed message's retry n waits retry_backoff_s * 2**(n-1) (across polls)
    max_retry_after_s: float = 60.0  # a 429's Retry-After up to this is waited out in the run; longer: a later run
    lease_ttl_s: float = 60.0  # the campaign's submission lease; renewed every third of it while held
    lease_wait_s: float = 120.0  # how long the daily submission waits for another holder (tracking does not wait)

    def __post_init__(self) -> None:
        _check_range("window_days", self.window_days, 1, 366)
        _check_range("min_passing_checks", self.min_passing_checks, 1, self.window_days)
        _check_range("batch_size", self.batch_size, 500, 1000)
        _check_range("max_segments", self.max_segments, 1, 10)
        _check_range("send_offset_days", self.send_offset_days, 0, 7)
        _check_range("max_lag_days", self.max_lag_days, 0, 1_000_000)
        _check_range("max_attempts", self.max_attempts, 1, 10)
        _check_range("carrier_reject_max_retries", self.carrier_reject_max_retries, 0, 10)
        _check_range("request_timeout_s", self.request_timeout_s, 0.001, 300)
        _check_range("post_retries", self.post_retries, 0, 10)
        _check_range("backoff_multiplier_s", self.backoff_multiplier_s, 0, 60)
        _check_range("breaker_failures", self.breaker_failures, 1, 1_000_000)
        _check_range("breaker_reset_s", self.breaker_reset_s, 0.001, 3_600)
        _check_range("failover_failure_rate", self.failover_failure_rate, 0, 1)
        _check_range("in_flight_batches", self.in_flight_batches, 1, 64)
        _check_range("retry_backoff_s", self.retry_backoff_s, 0, 86_400)
        _check_range("max_retry_after_s", self.max_retry_after_s, 0, 3_600)
        _check_range("lease_ttl_s", self.lease_ttl_s, 0.05, 3_600)
        _check_range("lease_wait_s", self.lease_wait_s, 0, 3_600)
        _check_time("send_time", self.send_time)
        _check_time("send_window_end", self.send_window_end)
        if self.send_window_end <= self.send_time:
            raise SettingsError(f"send_window_end ({self.send_window_end}) must be after send_time ({self.send_time})")
        bad = [d for d in self.no_send_days if d not in WEEKDAYS]
        if bad or len(set(self.no_send_days)) >= 7:
            raise SettingsError(f"no_send_days must be weekday names ({', '.join(WEEKDAYS)}), leaving one allowed")
        if self.priority not in ("HIGH", "NORMAL", "LOW"):
            raise SettingsError(f"priority must be HIGH, NORMAL or LOW, not {self.priority!r}")
        if not self.callback_url.startswith(("http://", "https://")):
            raise SettingsError("callback_url must be an http(s) URL")

    def backoff_s(self, retry_number: int) -> float:
        return self.backoff_multiplier_s * 2**retry_number


@dataclass(frozen=True)
class DeliverySettings:
    """Delivery tracking (§3.3, §4.2 part 3)."""

    poll_interval_s: float = 7200.0  # every 2 hours
    window_s: float = 259200.0  # for 72 hours after submission
    in_flight: int = 64  # concurrent status requests per poll
    request_timeout_s: float = 30.0
    max_retries: int = 3  # per status request
    backoff_multiplier_s: float = 1.0
    breaker_failures: int = 5
    breaker_reset_s: float = 60.0

    def __post_init__(self) -> None:
        _check_range("poll_interval_s", self.poll_interval_s, 0.1, 86_400)
        _check_range("window_s", self.window_s, 0, 30 * 86_400)
        _check_range("in_flight", self.in_flight, 1, 1_000)
        _check_range("request_timeout_s", self.request_timeout_s, 0.001, 300)
        _check_range("max_retries", self.max_retries, 0, 10)
        _check_range("backoff_multiplier_s", self.backoff_multiplier_s, 0, 60)
        _check_range("breaker_failures", self.breaker_failures, 1, 1_000_000)
        _check_range("breaker_reset_s", self.breaker_reset_s, 0.001, 3_600)

    def backoff_s(self, retry_number: int) -> float:
        return self.backoff_multiplier_s * 2**retry_number


@dataclass(frozen=True)
class MonitoringSettings:
    """Integration health monitoring (§6.1): the window and the alert thresholds."""

    window_hours: int = 24  # the metrics cover the last window_hours before the run
    banking_availability_min_pct: float = 99.5  # alert below
    banking_response_p95_max_s: float = 5.0  # alert above (95th percentile of the calls' durations)
    carrier_availability_min_pct: float = 98.0  # alert below, per carrier
    delivery_rate_min_pct: float = 98.0  # alert below (warning)
    carrier_outage_delivery_rate_pct: float = 95.0  # below: the §7.2 carrier-outage signal (critical)
    retry_exhaustion_max: int = 0  # alert above: "any"
    webhook_failures_max_consecutive: int = 5  # alert above: more than 5 non-2xx callbacks in a row
    min_samples: int = 10  # rates and percentiles of fewer calls/messages are recorded, not judged
    realert_after_hours: float = 6.0  # a breach that persists is alerted again after this (0: every run)
    retention_days: int = 90  # integration_metrics rows kept

    def __post_init__(self) -> None:
        _check_range("window_hours", self.window_hours, 1, 24 * 31)
        _check_range("banking_availability_min_pct", self.banking_availability_min_pct, 0, 100)
        _check_range("banking_response_p95_max_s", self.banking_response_p95_max_s, 0.001, 3_600)
        _check_range("carrier_availability_min_pct", self.carrier_availability_min_pct, 0, 100)
        _check_range("delivery_rate_min_pct", self.delivery_rate_min_pct, 0, 100)
        _check_range("carrier_outage_delivery_rate_pct", self.carrier_outage_delivery_rate_pct, 0, 100)
        _check_range("retry_exhaustion_max", self.retry_exhaustion_max, 0, 1_000_000)
        _check_range("webhook_failures_max_consecutive", self.webhook_failures_max_consecutive, 0, 1_000_000)
        _check_range("min_samples", self.min_samples, 1, 1_000_000)
        _check_range("realert_after_hours", self.realert_after_hours, 0, 24 * 31)
        _check_range("retention_days", self.retention_days, 1, 3_650)
        if self.carrier_outage_delivery_rate_pct > self.delivery_rate_min_pct:
            raise SettingsError("carrier_outage_delivery_rate_pct must not exceed delivery_rate_min_pct")


SECTIONS: dict[str, type] = {
    "balance": BalanceSettings,
    "sms": SmsSettings,
    "delivery": DeliverySettings,
    "monitoring": MonitoringSettings,
}


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value!r}")


def _check_time(name: str, value: str) -> None:
    parts = value.split(":")
    if len(parts) != 3 or not all(p.isdigit() and len(p) == 2 for p in parts) or int(parts[0]) > 23:
        raise SettingsError(f"{name} must be HH:MM:SS, got {value!r}")


def _coerce(cls: type, name: str, value: Any) -> Any:
    field_type = {f.name: f.type for f in fields(cls)}[name]
    try:
        if field_type in ("bool", bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if field_type in ("int", int):
            if isinstance(value, bool) or int(value) != float(value):
                raise ValueError(value)
            return int(value)
        if field_type in ("float", float):
            return float(value)
        if field_type in ("Decimal", Decimal):
            return Decimal(str(value))
        if field_type in ("tuple", tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip().lower() for i in items if str(i).strip())
        return str(value)
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise SettingsError(f"{cls.__name__}.{name}: cannot use {value!r} as {field_type}") from exc


def merge(cls: type, base: Any, overrides: Mapping[str, Any] | None, source: str) -> Any:
    """``base`` with ``overrides`` applied; None values are ignored, unknown keys rejected."""
    if not overrides:
        return base
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SettingsError(f"unknown {cls.__name__} settings in {source}: {', '.join(unknown)}")
    changes = {k: _coerce(cls, k, v) for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **changes)


def _deployment_layers() -> list[tuple[str, Mapping[str, Any]]]:
    layers: list[tuple[str, Mapping[str, Any]]] = []
    path = os.environ.get(SETTINGS_FILE_ENV)
    if path:
        layers.append((path, json.loads(Path(path).read_text(encoding="utf-8"))))
    raw = _variable_json()
    if raw is not None:
        layers.append((f"Variable {SETTINGS_VARIABLE}", raw))
    return layers


def _variable_json() -> Mapping[str, Any] | None:
    try:
        from airflow.sdk import Variable

        value = Variable.get(SETTINGS_VARIABLE, default=None)
    except Exception:  # noqa: BLE001 - no Airflow context (CLI, unit tests) means no Variable layer
        value = os.environ.get(f"AIRFLOW_VAR_{SETTINGS_VARIABLE.upper()}")
    if value is None:
        return None
    return json.loads(value) if isinstance(value, str) else value


def load(section: str, run_overrides: Mapping[str, Any] | None = None, *, deployment: bool = True):
    """The effective settings of ``section`` ("balance", …)."""
    cls = SECTIONS[section]
    value = cls()
    if deployment:
        for source, layer in _deployment_layers():
            unknown_sections = sorted(set(layer) - set(SECTIONS))
            if unknown_sections:
                raise SettingsError(f"unknown settings sections in {source}: {', '.join(unknown_sections)}")
            value = merge(cls, value, layer.get(section), source)
    return merge(cls, value, run_overrides, "run params")


def load_balance(run_overrides: Mapping[str, Any] | None = None, *, deployment: bool = True) -> BalanceSettings:
    return load("balance", run_overrides, deployment=deployment)


def load_sms(run_overrides: Mapping[str, Any] | None = None, *, deployment: bool = True) -> SmsSettings:
    return load("sms", run_overrides, deployment=deployment)


def load_delivery(run_overrides: Mapping[str, Any] | None = None, *, deployment: bool = True) -> DeliverySettings:
    return load("delivery", run_overrides, deployment=deployment)


def load_monitoring(run_overrides: Mapping[str, Any] | None = None, *, deployment: bool = True) -> MonitoringSettings:
    return load("monitoring", run_overrides, deployment=deployment)
