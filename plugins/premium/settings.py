"""Every business setting, declared once: type, range, default, documentation, and who may change it.

Two kinds of setting:

- **deployment settings** (the default): what customers read, where their numbers go, who
  qualifies, when anything may be sent, how long compliance data is kept. Changed only by whoever
  administers the deployment: a JSON file named by ``PREMIUM_SETTINGS_FILE`` (baked into an image
  or mounted), then the Airflow Variable ``premium_settings`` (``AIRFLOW_VAR_PREMIUM_SETTINGS``).
  Both are sectioned: ``{"balance": {"threshold_nis": 20000}}``.
- **per-run knobs** (declared with :func:`knob`): operational only (concurrency, chunking,
  timeouts, retries). The DAGs' ``Param``s are generated from them (:func:`run_params`); a run's
  params override the deployment value for that run (a null param keeps it).

Precedence, lowest first: the defaults below (the specification's figures), the settings file, the
Variable, the run's params. Values are checked wherever they come from; a value outside its range
or of the wrong type is refused with a message naming the setting. The retention floors (hot API
logs ≥ 90 days, archive ≥ 7 years) are ranges like any other, so no file, Variable or run can go
below them.

Read only inside tasks, never at DAG parse time (:func:`run_params` reads nothing).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from premium.connections import is_loopback

SETTINGS_VARIABLE = "premium_settings"
SETTINGS_FILE_ENV = "PREMIUM_SETTINGS_FILE"

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
HH_MM_SS = r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d$"
EVENTS_HOT_DAYS_FLOOR = 90  # §5.4: external-call logs kept 90 days
ARCHIVE_YEARS_FLOOR = 7  # §5.4: notification audit kept 7 years

# The sender as customers read it: letters (Latin or Hebrew), digits, spaces, & ' - ; no dot, so no
# URL or domain can be put into every customer's SMS under the bank's name.
BANK_NAME_PATTERN = re.compile(
    r"^[A-Za-z0-9\u05d0-\u05ea](?:[A-Za-z0-9\u05d0-\u05ea &'\-]{0,28}[A-Za-z0-9\u05d0-\u05ea])?$"
)
BANK_NAME_MAX = 30


class SettingsError(ValueError):
    """A setting is unknown, of the wrong type, out of range, or not allowed where it was given."""


def knob(default: Any, description: str, **constraints: Any) -> Any:
    """A per-run knob: operational, may be overridden by a run's params."""
    return Field(default, description=description, json_schema_extra={"per_run": True}, **constraints)


def setting(default: Any, description: str, **constraints: Any) -> Any:
    """A deployment setting: changed only through the settings file or the Variable."""
    return Field(default, description=description, **constraints)


class _Section(BaseModel):
    """A frozen, validated section; construction errors become :class:`SettingsError`."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    section: ClassVar[str]
    param_prefix: ClassVar[str] = ""  # how its knobs are named among a DAG's params

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(describe(type(self), exc)) from None

    def with_overrides(self, overrides: Mapping[str, Any] | None, source: str) -> _Section:
        """A copy with ``overrides`` applied (None values ignored), validated as a whole."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(type(self).model_fields))
        if unknown:
            raise SettingsError(f"unknown {self.section} settings in {source}: {', '.join(unknown)}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        try:
            return type(self)(**{**self.model_dump(), **changes})
        except SettingsError as exc:
            raise SettingsError(f"{exc} (from {source})") from None

    @classmethod
    def knobs(cls) -> list[str]:
        return [name for name, f in cls.model_fields.items() if (f.json_schema_extra or {}).get("per_run")]

    @staticmethod
    def _backoff(multiplier: float, retry_number: int) -> float:
        return multiplier * 2**retry_number


_NOT_ECHOED = {"bank_name", "callback_url", "(section)"}  # customer-facing values are not repeated in logs


def describe(cls: type[_Section], exc: ValidationError) -> str:
    """One line per problem: ``sms.bank_name: <why>``; the offending value only for plain settings."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(section)"
        message = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if where in _NOT_ECHOED or isinstance(value, dict) else f" (got {value!r})"
        parts.append(f"{cls.section}.{where}: {message}{shown}")
    return "; ".join(parts)


def _hh_mm_ss(value: str) -> str:
    if not re.fullmatch(HH_MM_SS, value):
        raise ValueError("must be a local time HH:MM:SS")
    return value


Time = Annotated[str, AfterValidator(_hh_mm_ss)]


class BalanceSettings(_Section):
    """The balance verification stage (§2, §7.1)."""

    section: ClassVar[str] = "balance"

    threshold_nis: Decimal = setting(Decimal("15000"), "balance ≥ threshold passes (NIS only)", ge=0)
    chunk_size: int = knob(1000, "accounts per chunk: one DB page and one bulk write", ge=1, le=10_000)
    request_timeout_s: float = knob(30.0, "per bank request, seconds", gt=0, le=300)
    max_retries: int = knob(3, "retries of a bank request after the first attempt", ge=0, le=10)
    backoff_multiplier_s: float = knob(1.0, "wait before retry n = multiplier × 2ⁿ seconds", ge=0, le=60)
    breaker_failures: int = knob(
        5, "consecutive failures of distinct accounts that open the breaker", ge=1, le=1_000_000
    )
    breaker_reset_s: float = knob(60.0, "seconds the breaker stays open before one probe", gt=0, le=3_600)
    outage_threshold_s: float = setting(
        7200.0, "unavailability after which the day is an outage (§7.1)", ge=0, le=86_400
    )
    skip_on_outage: bool = setting(True, "an outage day is SKIPPED_OUTAGE (false: the fetch task fails and retries)")
    in_flight: int = knob(64, "concurrent bank requests per fetch task", ge=1, le=1_000)
    max_mapped_tasks: int = knob(16, "upper bound of fetch task instances per run", ge=1, le=512)
    as_of_time: Time = setting("22:00:00", "asOfTime sent to the bank (end of business day)")
    encrypt_balances: bool = setting(False, "store amounts only encrypted (§5.3); qualification is unchanged")

    def backoff_s(self, retry_number: int) -> float:
        return self._backoff(self.backoff_multiplier_s, retry_number)


class SmsSettings(_Section):
    """Qualification and SMS submission (§3, §4.2, §7.2)."""

    section: ClassVar[str] = "sms"
    param_prefix: ClassVar[str] = "sms_"  # the balance stage has knobs of the same names

    window_days: int = setting(30, "the qualification window W, in days, ending at the check date", ge=1, le=366)
    min_passing_checks: int = setting(28, "passing checks needed in W (outage days count neither way)", ge=1, le=366)
    batch_size: int = knob(500, "messages per carrier batch (§3.1)", ge=500, le=1000)
    max_segments: int = setting(3, "a template that can render past this fails the run before sending", ge=1, le=10)
    send_time: Time = setting("09:00:00", "the send window opens at this local time")
    send_offset_days: int = setting(1, "the window opens on D + offset (§4.2: the next morning)", ge=0, le=7)
    no_send_days: tuple[str, ...] = setting(("saturday",), "weekdays without sending; the window moves to the next")
    max_lag_days: int = setting(
        1, "a run whose D is older sends nothing (late sends: `authorise-late-send`)", ge=0, le=1_000_000
    )
    callback_url: str = setting(
        "http://127.0.0.1:8080/premium/api/webhooks/sms-delivery",
        "base of the delivery webhook routes given to the carrier (https; http only to loopback)",
    )
    callback_plain_http_hosts: tuple[str, ...] = setting(
        (), "hosts the callback may reach over plain http besides loopback (a private network's service name)"
    )
    priority: str = setting("HIGH", "§3.2 priority", pattern="^(HIGH|NORMAL|LOW)$")
    bank_name: str = setting("Premium Bank", "the sender named in the text (plain text, no URL)")
    max_attempts: int = setting(3, "attempts per message, all causes", ge=1, le=10)
    carrier_reject_max_retries: int = setting(2, "retries of a 21614 carrier rejection", ge=0, le=10)
    request_timeout_s: float = knob(30.0, "per carrier request, seconds", gt=0, le=300)
    post_retries: int = knob(2, "retries of one batch POST within a submission", ge=0, le=10)
    backoff_multiplier_s: float = knob(
        1.0, "wait before POST retry n = multiplier × 2ⁿ s (or Retry-After)", ge=0, le=60
    )
    breaker_failures: int = knob(5, "failures that open a carrier's breaker", ge=1, le=1_000_000)
    breaker_reset_s: float = knob(60.0, "seconds a carrier's breaker stays open", gt=0, le=3_600)
    failover_failure_rate: float = setting(0.5, "primary batch failure rate that triggers failover", ge=0, le=1)
    in_flight_batches: int = knob(4, "concurrent batch POSTs", ge=1, le=64)
    send_window_end: Time = setting("20:00:00", "nothing is POSTed after this local time (first sends and retries)")
    retry_backoff_s: float = setting(
        600.0, "a failed message's retry n waits this × 2^(n−1) (across polls)", ge=0, le=86_400
    )
    max_retry_after_s: float = setting(60.0, "a 429's Retry-After up to this is waited out in the run", ge=0, le=3_600)
    lease_ttl_s: float = setting(60.0, "the campaign's submission lease (renewed every third of it)", ge=0.05, le=3_600)
    lease_wait_s: float = setting(120.0, "how long the daily submission waits for another holder", ge=0, le=3_600)

    @field_validator("no_send_days", mode="before")
    @classmethod
    def _weekdays(cls, value: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)
        days = tuple(str(i).strip().lower() for i in items if str(i).strip())
        bad = [d for d in days if d not in WEEKDAYS]
        if bad or len(set(days)) >= 7:
            raise ValueError(f"must be weekday names ({', '.join(WEEKDAYS)}), leaving one allowed")
        return days

    @field_validator("bank_name")
    @classmethod
    def _bank_name(cls, value: str) -> str:
        check_bank_name(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SmsSettings:
        check_callback_url(self.callback_url, self.callback_plain_http_hosts)
        if self.min_passing_checks > self.window_days:
            raise ValueError(f"min_passing_checks ({self.min_passing_checks}) exceeds window_days ({self.window_days})")
        if self.send_window_end <= self.send_time:
            raise ValueError(f"send_window_end ({self.send_window_end}) must be after send_time ({self.send_time})")
        return self

    def check_customer_facing(self) -> None:
        """Again, right before the outbox is written: the sender name and the callback URL."""
        try:
            check_bank_name(self.bank_name)
            check_callback_url(self.callback_url, self.callback_plain_http_hosts)
        except ValueError as exc:
            raise SettingsError(f"sms: {exc}") from None

    def backoff_s(self, retry_number: int) -> float:
        return self._backoff(self.backoff_multiplier_s, retry_number)


class DeliverySettings(_Section):
    """Delivery tracking (§3.3, §4.2 part 3)."""

    section: ClassVar[str] = "delivery"

    poll_interval_s: float = knob(7200.0, "seconds between status polls (every 2 hours)", ge=0.1, le=86_400)
    window_s: float = setting(259200.0, "tracking window after submission, seconds (72 hours)", ge=0, le=30 * 86_400)
    in_flight: int = knob(64, "concurrent status requests per poll", ge=1, le=1_000)
    request_timeout_s: float = knob(30.0, "per status request, seconds", gt=0, le=300)
    max_retries: int = knob(3, "retries per status request", ge=0, le=10)
    backoff_multiplier_s: float = knob(1.0, "wait before retry n = multiplier × 2ⁿ s", ge=0, le=60)
    breaker_failures: int = knob(5, "failures that open the status breaker", ge=1, le=1_000_000)
    breaker_reset_s: float = knob(60.0, "seconds the status breaker stays open", gt=0, le=3_600)

    def backoff_s(self, retry_number: int) -> float:
        return self._backoff(self.backoff_multiplier_s, retry_number)


class MonitoringSettings(_Section):
    """Integration health monitoring (§6.1): the window and the alert thresholds."""

    section: ClassVar[str] = "monitoring"

    window_hours: int = setting(24, "the metrics cover the last window_hours before the run", ge=1, le=24 * 31)
    banking_availability_min_pct: float = setting(99.5, "alert below", ge=0, le=100)
    banking_response_p95_max_s: float = setting(5.0, "alert above (p95 of the calls' durations)", ge=0.001, le=3_600)
    carrier_availability_min_pct: float = setting(98.0, "alert below, per carrier", ge=0, le=100)
    delivery_rate_min_pct: float = setting(98.0, "alert below (warning)", ge=0, le=100)
    carrier_outage_delivery_rate_pct: float = setting(
        95.0, "below: the §7.2 carrier-outage signal (critical)", ge=0, le=100
    )
    retry_exhaustion_max: int = setting(0, "alert above (0: any)", ge=0, le=1_000_000)
    webhook_failures_max_consecutive: int = setting(5, "alert above: non-2xx callbacks in a row", ge=0, le=1_000_000)
    min_samples: int = setting(10, "rates of fewer calls/messages are recorded, not judged", ge=1, le=1_000_000)
    realert_after_hours: float = setting(
        6.0, "a persisting breach is alerted again after this (0: every run)", ge=0, le=24 * 31
    )
    retention_days: int = setting(90, "integration_metrics rows kept", ge=1, le=3_650)

    @model_validator(mode="after")
    def _consistent(self) -> MonitoringSettings:
        if self.carrier_outage_delivery_rate_pct > self.delivery_rate_min_pct:
            raise ValueError("carrier_outage_delivery_rate_pct must not exceed delivery_rate_min_pct")
        return self


class RetentionSettings(_Section):
    """Partitions and retention of the audit tables (§5.4), applied by premium_maintenance."""

    section: ClassVar[str] = "retention"

    events_hot_days: int = setting(
        90,
        f"system_events (external calls) kept, days; floor {EVENTS_HOT_DAYS_FLOOR}",
        ge=EVENTS_HOT_DAYS_FLOOR,
        le=3_650,
    )
    audit_hot_days: int = setting(365, "audit_trail kept in the database before export, days", ge=31, le=3_650)
    archive_years: int = setting(
        7, f"exported audit files kept, years; floor {ARCHIVE_YEARS_FLOOR}", ge=ARCHIVE_YEARS_FLOOR, le=100
    )
    partitions_ahead_days: int = setting(14, "partitions created ahead of time, days", ge=1, le=366)
    archive_dir: str = setting("", "archive location (empty: $PREMIUM_ARCHIVE_DIR, else $AIRFLOW_HOME/archive)")

    def archive_path(self) -> Path:
        base = self.archive_dir or os.environ.get("PREMIUM_ARCHIVE_DIR") or ""
        if not base:
            base = str(Path(os.environ.get("AIRFLOW_HOME", ".")) / "archive")
        return Path(base)


SECTIONS: dict[str, type[_Section]] = {
    cls.section: cls for cls in (BalanceSettings, SmsSettings, DeliverySettings, MonitoringSettings, RetentionSettings)
}


# -- values that reach customers or carry PII ------------------------------------------------------


def check_callback_url(url: str, plain_http_hosts: tuple[str, ...] = ()) -> None:
    """The carrier POSTs phone numbers here (§3.5): https, or http only to loopback (the simulators)
    or to a host the deployment names in ``callback_plain_http_hosts``."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if not host or scheme not in ("http", "https"):
        raise ValueError("callback_url must be an absolute https URL")
    if scheme == "http" and not (is_loopback(host) or host in plain_http_hosts):
        raise ValueError(
            "callback_url must use https (plain http is allowed only to a loopback address or a host named in "
            "callback_plain_http_hosts)"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("callback_url must not carry credentials, a query or a fragment")


def check_bank_name(name: str) -> None:
    """The sender as every customer reads it: short plain text, never a link."""
    if not BANK_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"bank_name must be 1-{BANK_NAME_MAX} letters, digits, spaces, & ' or - "
            "(plain text: no URL, no dot, no other symbol)"
        )


# -- loading -----------------------------------------------------------------------------------------


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


def deployment(section: str) -> _Section:
    """The deployment's value of ``section``: defaults, then the settings file, then the Variable."""
    cls = SECTIONS[section]
    value = cls()
    for source, layer in _deployment_layers():
        unknown_sections = sorted(set(layer) - set(SECTIONS))
        if unknown_sections:
            raise SettingsError(f"unknown settings sections in {source}: {', '.join(unknown_sections)}")
        value = value.with_overrides(layer.get(section), source)
    return value


def load(section: str, run_overrides: Mapping[str, Any] | None = None, *, deployment_layers: bool = True):
    """The effective settings of ``section``: the deployment's, with a run's knob overrides.

    ``run_overrides`` may only name knobs (:func:`knob`); anything else is refused, whatever its value.
    """
    cls = SECTIONS[section]
    base = deployment(section) if deployment_layers else cls()
    if run_overrides:
        not_knobs = sorted(k for k in run_overrides if k in cls.model_fields and k not in cls.knobs())
        if not_knobs:
            raise SettingsError(
                f"{section} settings {', '.join(not_knobs)} belong to the deployment (settings file or Variable "
                f"{SETTINGS_VARIABLE}), not to a run"
            )
    return base.with_overrides(run_overrides, "run params")


def load_balance(run_overrides: Mapping[str, Any] | None = None) -> BalanceSettings:
    return load("balance", run_overrides)


def load_sms(run_overrides: Mapping[str, Any] | None = None) -> SmsSettings:
    return load("sms", run_overrides)


def load_delivery(run_overrides: Mapping[str, Any] | None = None) -> DeliverySettings:
    return load("delivery", run_overrides)


def load_monitoring() -> MonitoringSettings:
    return load("monitoring")


def load_retention() -> RetentionSettings:
    return load("retention")


# -- what a run may change ---------------------------------------------------------------------------


def run_param_names(*sections: str) -> dict[str, tuple[str, str]]:
    """Param name → (section, knob) for the knobs of ``sections``."""
    out: dict[str, tuple[str, str]] = {}
    for section in sections:
        cls = SECTIONS[section]
        for name in cls.knobs():
            out[f"{cls.param_prefix}{name}"] = (section, name)
    return out


_JSON_TYPES = {"integer", "number", "boolean", "string"}
_SCHEMA_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern", "enum")


def run_params(*sections: str) -> dict[str, Any]:
    """Airflow ``Param``s for the knobs of ``sections`` (null: keep the deployment's value).

    Generated from the model, so the UI form, the trigger-time validation and the task-side check
    share one declaration. Reads nothing: safe at DAG parse time.
    """
    from airflow.sdk import Param

    params: dict[str, Any] = {}
    for section in sections:
        cls = SECTIONS[section]
        props = cls.model_json_schema()["properties"]
        for name in cls.knobs():
            schema = props[name]
            kind = schema.get("type")
            if kind not in _JSON_TYPES:
                raise TypeError(f"{section}.{name}: a knob must be a plain JSON type, not {schema!r}")
            default = cls.model_fields[name].default
            extra = {k: schema[k] for k in _SCHEMA_KEYS if k in schema}
            params[f"{cls.param_prefix}{name}"] = Param(
                None,
                type=["null", kind],
                description=f"{schema.get('description', '')} (deployment value by default; spec default {default})",
                **extra,
            )
    return params


def reference_markdown() -> str:
    """The settings tables of docs/configuration.md, generated from the model (one place per setting)."""
    lines: list[str] = []
    for section, cls in SECTIONS.items():
        knobs = set(cls.knobs())
        lines += [f"| `{section}` key | default | per run | range | meaning |", "|---|---|---|---|---|"]
        for name, field in cls.model_fields.items():
            default = field.default
            if isinstance(default, tuple):
                default = ", ".join(default)
            elif isinstance(default, bool):
                default = str(default).lower()
            bounds = _bounds(cls.model_json_schema()["properties"][name])
            per_run = f"`{cls.param_prefix}{name}`" if name in knobs else "no"
            lines.append(
                f"| `{name}` | {default if default != '' else '(empty)'} | {per_run} | {bounds} | {field.description} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _bounds(schema: Mapping[str, Any]) -> str:
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if lo is None and hi is None:
        return ""
    left = f"> {lo}" if "exclusiveMinimum" in schema else f"≥ {lo}"
    return left if hi is None else f"{left}, ≤ {hi}"
