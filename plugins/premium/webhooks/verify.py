"""Delivery callbacks (§3.5): Standard Webhooks signature verification, payload parsing, secrets.

Carriers: each carrier posts to its own route (``…/sms-delivery/primary``, ``…/sms-delivery/secondary``)
and signs with its own secrets (connection ``sms_carrier_webhook`` for the primary,
``sms_carrier_secondary_webhook`` for the secondary): a callback is verified against the secrets
of the carrier its route names only, so one carrier can never change another carrier's message.

Signature (https://www.standardwebhooks.com): headers ``webhook-id``, ``webhook-timestamp``
(integer unix seconds) and ``webhook-signature`` (space-separated ``v1,<base64>`` entries); each
signature is HMAC-SHA256, keyed with the secret (``whsec_<base64>``), over
``<webhook-id>.<webhook-timestamp>.<body>``. A callback is authentic when its timestamp lies within
±5 minutes of now and any ``v1`` entry matches any configured secret (several during a rotation).

The HMAC is computed by the reference package (``standardwebhooks.Webhook.sign``) and compared
with :func:`hmac.compare_digest`. ``Webhook.verify`` itself (standardwebhooks 1.1.0) is not called
because its clock cannot be injected, it takes one secret per call, it raises ``ValueError`` /
``binascii.Error`` / ``UnicodeDecodeError`` instead of ``WebhookVerificationError`` on a
malformed signature header or a non-UTF-8 body, and it accepts timestamps such as ``1.7e9`` and
then signs the floored value, not the header text the specification signs.

The payload is PII-bearing: ``phoneNumber`` is deliberately not a field of
:class:`DeliveryCallback` (it never enters the model, a log line or the database), and no error
message built here contains a submitted value.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError
from standardwebhooks import Webhook

if TYPE_CHECKING:
    from premium.notifications.state import StatusUpdate

log = logging.getLogger(__name__)

# carrier -> connection holding its webhook secrets: password = one secret; extra {"secrets": [...]} (rotation)
WEBHOOK_CONN_IDS = {"primary": "sms_carrier_webhook", "secondary": "sms_carrier_secondary_webhook"}
# carrier -> its API connection; fallback: extra "webhook_secret" / "webhook_secrets" there
CARRIER_CONN_IDS = {"primary": "sms_carrier", "secondary": "sms_carrier_secondary"}
CARRIERS = tuple(WEBHOOK_CONN_IDS)  # the names of delivery_status.carrier
WEBHOOK_CONN_ID = WEBHOOK_CONN_IDS["primary"]
CARRIER_CONN_ID = CARRIER_CONN_IDS["primary"]
SECRET_PREFIX = "whsec_"
TOLERANCE_S = 5 * 60
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAX_WEBHOOK_ID_LENGTH = 256
SECRETS_TTL_S = 60.0  # how long resolved secrets are reused before asking the secrets backend again
SECRETS_RETRY_S = 5.0  # after "no secret" or a lookup failure


# -- signatures ------------------------------------------------------------------------------------


class NotConfigured(Exception):
    """No webhook secret is configured: nothing can be verified (503)."""


class SignatureError(Exception):
    """Missing, malformed, stale or non-matching signature (401). The message is safe to return."""


def verify_signature(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: datetime | None = None
) -> str:
    """The ``webhook-id`` of an authentic callback; :class:`SignatureError` otherwise.

    ``secrets``: every accepted ``whsec_`` secret; ``headers``: the request headers (any case);
    ``body``: the raw request body, exactly as received; ``now``: the clock (tests).
    """
    if not secrets:
        raise NotConfigured("webhook secret not configured")
    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [name for name in HEADERS if not lowered.get(name)]
    if missing:
        raise SignatureError(f"missing {', '.join(missing)} header{'s' if len(missing) > 1 else ''}")
    webhook_id, timestamp_text, signature_header = (lowered[name] for name in HEADERS)
    if len(webhook_id) > MAX_WEBHOOK_ID_LENGTH or not (webhook_id.isascii() and webhook_id.isprintable()):
        raise SignatureError("invalid webhook-id header")
    if not (timestamp_text.isascii() and timestamp_text.isdigit() and len(timestamp_text) <= 12):
        raise SignatureError("invalid webhook-timestamp header (integer unix seconds expected)")
    timestamp = int(timestamp_text)
    current = now or datetime.now(UTC)
    if current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    age = current.timestamp() - timestamp
    if age > TOLERANCE_S:
        raise SignatureError("webhook timestamp too old")
    if age < -TOLERANCE_S:
        raise SignatureError("webhook timestamp too new")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError("no matching webhook signature") from None
    offered = _v1_signatures(signature_header)
    if offered:
        signed_at = datetime.fromtimestamp(timestamp, UTC)
        for secret in secrets:
            expected = base64.b64decode(Webhook(secret).sign(webhook_id, signed_at, text).partition(",")[2])
            if any(hmac.compare_digest(expected, candidate) for candidate in offered):
                return webhook_id
    raise SignatureError("no matching webhook signature")


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` entries of a ``webhook-signature`` header; malformed entries are skipped."""
    out: list[bytes] = []
    for entry in header.split():
        version, _, value = entry.partition(",")
        if version != "v1" or not value:
            continue
        try:
            out.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return out


# -- payload ---------------------------------------------------------------------------------------

CarrierStatus = Literal["QUEUED", "SENT", "DELIVERED", "FAILED", "UNDELIVERABLE", "NO_STATUS"]


def _iso_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 date-time string") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _status_code(value: Any) -> Any:
    """A string, or a JSON integer (``50001`` as well as ``"50001"``), as a string."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():  # 50001.0
        return str(int(value))
    raise ValueError("must be a string or an integer")


class DeliveryCallback(BaseModel):
    """The §3.5 payload, minus ``phoneNumber`` (ignored on purpose, like any other extra field)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    tracking_id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)] = Field(
        alias="trackingId"
    )
    message_id: Annotated[str, StringConstraints(max_length=128)] | None = Field(default=None, alias="messageId")
    status: CarrierStatus
    delivery_timestamp: Annotated[datetime | None, BeforeValidator(_iso_datetime)] = Field(
        default=None, alias="deliveryTimestamp"
    )
    status_code: Annotated[Annotated[str, StringConstraints(max_length=64)] | None, BeforeValidator(_status_code)] = (
        Field(default=None, alias="statusCode")
    )

    def to_update(self, carrier: str) -> StatusUpdate:
        """The state change to record for ``carrier``'s message (the carrier the route names)."""
        from premium.notifications.state import StatusUpdate

        if carrier not in CARRIERS:
            raise ValueError(f"unknown carrier {carrier!r}")
        return StatusUpdate(
            carrier=carrier,
            tracking_id=self.tracking_id,
            carrier_status=self.status,
            status_code=self.status_code,
            event_at=self.delivery_timestamp,
        )


class PayloadError(ValueError):
    """A malformed (400) or invalid (422) body. ``detail`` and ``errors`` never hold submitted values."""

    def __init__(self, status_code: int, detail: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.errors = errors or []

    @property
    def fields(self) -> list[str]:
        return [e["field"] for e in self.errors]

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "errors": self.errors} if self.errors else {"detail": self.detail}


def parse_payload(body: bytes) -> DeliveryCallback:
    """The callback in ``body`` (call only after :func:`verify_signature`); :class:`PayloadError` otherwise."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise PayloadError(400, f"malformed JSON body: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError):  # not UTF-8/16/32, or nested beyond the parser's limit
        raise PayloadError(400, "malformed JSON body") from None
    if not isinstance(data, dict):
        errors = [{"field": "body", "message": "must be a JSON object"}]
        raise PayloadError(422, "invalid payload: body: must be a JSON object", errors)
    try:
        return DeliveryCallback.model_validate(data)
    except ValidationError as exc:
        # Built from loc and msg only: a ValidationError's own text includes the submitted values.
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        detail = "invalid payload: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        phone = data.get("phoneNumber")
        if isinstance(phone, str) and len(phone) >= 4 and phone in detail:  # defensive: never echo it
            detail = detail.replace(phone, "***")
            errors = [{**e, "message": e["message"].replace(phone, "***")} for e in errors]
        raise PayloadError(422, detail, errors) from None


# -- secrets ---------------------------------------------------------------------------------------


class SecretsUnavailable(Exception):
    """The secrets backend could not be asked (and no earlier answer is at hand)."""


def usable_secrets(candidates: Iterable[Any], source: str) -> tuple[str, ...]:
    """The well-formed ``whsec_<base64>`` secrets of ``candidates`` (deduplicated, in order); others
    are skipped with a warning that names where they came from, never the value."""
    out: list[str] = []
    for i, value in enumerate(candidates):
        if value is None or value == "":
            continue
        secret = value.strip() if isinstance(value, str) else value
        if not _well_formed(secret):
            log.warning("webhook secret #%d of %s is not a whsec_<base64> secret: ignored", i, source)
            continue
        if secret not in out:
            out.append(secret)
    return tuple(out)


def _well_formed(secret: Any) -> bool:
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        return False
    raw = secret[len(SECRET_PREFIX) :]
    try:
        return len(base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)) > 0
    except (binascii.Error, ValueError):
        return False


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def secrets_from_connections(get_connection: Callable[[str], Any], carrier: str = "primary") -> tuple[str, ...]:
    """Every secret accepted from ``carrier``: its webhook connection (``sms_carrier_webhook`` /
    ``sms_carrier_secondary_webhook``: password + extra ``secrets``), or, only when that connection
    does not exist, extra ``webhook_secret`` / ``webhook_secrets`` of the carrier's own connection
    (``sms_carrier`` / ``sms_carrier_secondary``). Never another carrier's. Empty when none is configured."""
    webhook_conn_id, carrier_conn_id = WEBHOOK_CONN_IDS[carrier], CARRIER_CONN_IDS[carrier]
    conn = _optional_connection(get_connection, webhook_conn_id)
    if conn is not None:
        extra = conn.extra_dejson or {}
        return usable_secrets([conn.password, *_listed(extra.get("secrets"))], f"connection {webhook_conn_id}")
    api_conn = _optional_connection(get_connection, carrier_conn_id)
    if api_conn is None:
        return ()
    extra = api_conn.extra_dejson or {}
    candidates = [*_listed(extra.get("webhook_secret")), *_listed(extra.get("webhook_secrets"))]
    return usable_secrets(candidates, f"connection {carrier_conn_id}")


def _optional_connection(get_connection: Callable[[str], Any], conn_id: str) -> Any:
    from airflow.sdk.exceptions import AirflowNotFoundException  # also what airflow.exceptions exports

    try:
        return get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _default_loader(carrier: str = "primary") -> tuple[str, ...]:
    from premium.connections import get_connection

    return secrets_from_connections(get_connection, carrier)


class SecretStore:
    """The accepted secrets, resolved at most every ``ttl`` seconds (``retry`` seconds after "none
    configured" or a failed lookup), so a request does not reach the secrets backend each time.
    A failed refresh keeps serving the previous secrets. Thread-safe; one lookup at a time."""

    def __init__(
        self,
        loader: Callable[[], tuple[str, ...]] = _default_loader,
        ttl: float = SECRETS_TTL_S,
        retry: float = SECRETS_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
        label: str = "webhook",
    ) -> None:
        self._loader = loader
        self._label = label
        self._ttl = ttl
        self._retry = retry
        self._clock = clock
        self._lock = threading.Lock()
        self._value: tuple[str, ...] | None = None
        self._expires = float("-inf")

    def get(self) -> tuple[str, ...]:
        with self._lock:
            if self._clock() < self._expires:
                if self._value is None:
                    raise SecretsUnavailable("webhook secret unavailable")
                return self._value
            try:
                value = tuple(self._loader())
            except Exception as exc:
                self._expires = self._clock() + self._retry
                log.error("cannot resolve the %s secrets (%s)", self._label, type(exc).__name__)
                if self._value is None:
                    raise SecretsUnavailable("webhook secret unavailable") from exc
                return self._value
            if value != self._value:
                log.info("%s secrets (re)loaded: %d accepted", self._label, len(value))
            self._value = value
            self._expires = self._clock() + (self._ttl if value else self._retry)
            return value

    def clear(self) -> None:
        with self._lock:
            self._value, self._expires = None, float("-inf")


class CarrierSecrets:
    """One :class:`SecretStore` per carrier: ``get(carrier)`` is what that carrier's route accepts.

    A secret configured for both carriers would let either carrier's callbacks pass as the other's;
    it is accepted for neither (an error names the connections, never the value), so the
    misconfiguration shows at once instead of letting one carrier change another's messages.
    """

    def __init__(
        self,
        loader: Callable[[str], tuple[str, ...]] = _default_loader,
        ttl: float = SECRETS_TTL_S,
        retry: float = SECRETS_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stores = {
            c: SecretStore(functools.partial(loader, c), ttl, retry, clock, label=f"{c} carrier's webhook")
            for c in CARRIERS
        }
        self._reported: dict[str, frozenset[str]] = {}

    def get(self, carrier: str) -> tuple[str, ...]:
        """``carrier``'s secrets, minus any another carrier also has; :class:`SecretsUnavailable`
        when ``carrier``'s cannot be resolved (another carrier's lookup failing does not matter)."""
        own = self._stores[carrier].get()
        others: set[str] = set()
        for other, store in self._stores.items():
            if other != carrier:
                try:
                    others.update(store.get())
                except SecretsUnavailable:
                    pass
        shared = frozenset(s for s in own if s in others)
        if shared != self._reported.get(carrier, frozenset()):
            self._reported[carrier] = shared
            if shared:
                log.error(
                    "%d webhook secret(s) of %s are also configured for another carrier (%s): not accepted "
                    "on the %s route; give each carrier its own secret",
                    len(shared),
                    WEBHOOK_CONN_IDS[carrier],
                    ", ".join(WEBHOOK_CONN_IDS[o] for o in CARRIERS if o != carrier),
                    carrier,
                )
        return tuple(s for s in own if s not in shared)

    def clear(self) -> None:
        for store in self._stores.values():
            store.clear()
        self._reported.clear()
