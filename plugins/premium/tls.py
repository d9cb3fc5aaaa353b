"""Client TLS for every outbound call: the core-banking API and the SMS carriers (§2.3, §5.1).

:func:`client_context` is the one place that builds a client :class:`ssl.SSLContext`:

- **TLS 1.3 minimum** (``min_version="1.2"`` only when a deployment explicitly lowers the floor
  for a peer that cannot do better; TLS 1.2 is then limited to ECDHE with AES-GCM or
  ChaCha20-Poly1305).
- **Cipher suites (§5.1).** Python's :mod:`ssl` cannot restrict TLS 1.3 suites
  (``set_ciphers`` only affects TLS 1.2 and below; there is no binding for OpenSSL's
  ``SSL_CTX_set_ciphersuites``). OpenSSL's default TLS 1.3 suites are exactly §5.1's three:
  ``TLS_AES_256_GCM_SHA384``, ``TLS_CHACHA20_POLY1305_SHA256``, ``TLS_AES_128_GCM_SHA256``. We
  rely on that, and check it twice: when the context is built (a system OpenSSL configuration
  enabling another TLS 1.3 suite, e.g. CCM, is refused with :class:`TlsConfigError`), and after
  every handshake (a negotiated suite outside the three fails the handshake). The integration
  tests assert the suite negotiated with the simulators.
- **Verification on**: the server's chain and host name are always verified. With ``ca_cert``
  only that CA is trusted (the bank's CA pinned, not the system store); without it, the system
  store.
- **mTLS**: ``client_cert``/``client_key`` are presented when given.
- **Certificate pinning** (optional): ``fingerprints`` is one SHA-256 fingerprint of the
  server's (leaf) certificate, or several (the current and the next certificate, for rotation).
  The pin is in addition to CA verification, not instead of it.

How the checks after the handshake are enforced: the context's ``sslobject_class`` (used by
asyncio, hence aiohttp, through ``SSLContext.wrap_bio``) and ``sslsocket_class`` (blocking
sockets: urllib, http.client) are subclasses whose ``do_handshake()`` runs
:func:`_verify_session` once OpenSSL reports the handshake complete. A failure raises
:class:`CertificatePinError`, an :class:`ssl.SSLCertVerificationError`, from inside the
handshake: asyncio treats it as a failed handshake (aiohttp raises
``ClientConnectorCertificateError``) before a single byte of application data is sent.

Nothing here logs or raises with key material; error messages name files, versions, suites and
certificate fingerprints (which are public) only.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: §5.1: the only TLS 1.3 cipher suites we accept (OpenSSL's default TLS 1.3 suites).
TLS13_SUITES = frozenset({"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"})
#: TLS 1.2 suites, only used when a deployment lowers the floor to 1.2: forward secret AEAD only.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class TlsConfigError(ValueError):
    """The TLS settings of a connection are unusable (the message never contains key material)."""


class CertificatePinError(ssl.SSLCertVerificationError):
    """The server's certificate or session failed a check made after the handshake."""

    def __init__(self, message: str) -> None:
        super().__init__(1, message)  # (errno, strerror), as OpenSSL's own verification errors
        self.verify_code = None
        self.verify_message = message


# -- fingerprints --------------------------------------------------------------------------------


def certificate_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, lowercase hex without separators."""
    return hashlib.sha256(der).hexdigest()


def fingerprint_of_pem(path: str | Path) -> str:
    """The SHA-256 fingerprint of the first certificate of a PEM file (for operators and tests)."""
    return certificate_fingerprint(ssl.PEM_cert_to_DER_cert(Path(path).read_text(encoding="ascii")))


def normalise_fingerprint(value: str) -> str:
    """``AB:CD:…``, ``abcd…`` or ``sha256:abcd…`` → 64 lowercase hex digits."""
    if not isinstance(value, str):
        raise TlsConfigError("a certificate fingerprint must be a string of 64 hex digits")
    text = value.strip().lower()
    for prefix in ("sha256:", "sha256/", "sha256="):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = re.sub(r"[\s:]", "", text)
    if not _HEX64.match(text):
        raise TlsConfigError(
            f"certificate fingerprint {value.strip()[:80]!r} is not a SHA-256 fingerprint (64 hex digits, ':' allowed)"
        )
    return text


def parse_fingerprints(value: str | Iterable[str] | None) -> frozenset[str]:
    """One fingerprint, a comma-separated string of them, or a list of them (rotation)."""
    if value is None or value == "":
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    pins = frozenset(normalise_fingerprint(item) for item in items if not (isinstance(item, str) and not item.strip()))
    if not pins:
        raise TlsConfigError("cert_fingerprint_sha256 is empty")
    return pins


# -- the context -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Policy:
    """What :func:`_verify_session` checks after a handshake (attached to the context)."""

    fingerprints: frozenset[str]


def _verify_session(conn: ssl.SSLObject | ssl.SSLSocket) -> None:
    policy: _Policy | None = getattr(conn.context, "_premium_tls_policy", None)
    if policy is None:  # the context was swapped (SNI callback): fail closed
        raise CertificatePinError("TLS session checks: the connection's context has no policy")
    cipher = conn.cipher()
    if conn.version() == "TLSv1.3" and (cipher is None or cipher[0] not in TLS13_SUITES):
        raise CertificatePinError(f"negotiated TLS 1.3 cipher suite {cipher and cipher[0]!r} is not allowed (§5.1)")
    if policy.fingerprints:
        der = conn.getpeercert(binary_form=True)
        if not der:
            raise CertificatePinError("the server presented no certificate to check against the pinned fingerprint")
        seen = certificate_fingerprint(der)
        if seen not in policy.fingerprints:
            raise CertificatePinError(
                f"server certificate fingerprint sha256:{seen} matches none of the "
                f"{len(policy.fingerprints)} pinned fingerprint(s)"
            )


class PinnedSSLObject(ssl.SSLObject):
    """What asyncio (and so aiohttp) wraps a connection in: checks the session after the handshake."""

    def do_handshake(self) -> None:
        super().do_handshake()  # SSLWantReadError etc. until complete; the checks run once, on completion
        _verify_session(self)


class PinnedSSLSocket(ssl.SSLSocket):
    """The blocking-socket counterpart of :class:`PinnedSSLObject`."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _verify_session(self)


def _check_tls13_suites(ctx: ssl.SSLContext) -> None:
    enabled = {c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"}
    extra = sorted(enabled - TLS13_SUITES)
    if extra:
        raise TlsConfigError(
            f"this OpenSSL enables TLS 1.3 cipher suites outside §5.1 ({', '.join(extra)}); "
            "fix the system OpenSSL configuration (Ciphersuites)"
        )


def client_context(
    *,
    ca_cert: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    min_version: str = "1.3",
    fingerprints: str | Iterable[str] | None = None,
) -> ssl.SSLContext:
    """A client context: verified server (only ``ca_cert`` trusted when given), TLS ``min_version``
    minimum, optional client certificate, optional SHA-256 fingerprint pin(s) of the server's
    certificate, enforced during the handshake."""
    min_version = str(min_version)
    if min_version not in TLS_VERSIONS:
        raise TlsConfigError(f"tls_min_version must be 1.2 or 1.3, not {min_version!r}")
    if client_key and not client_cert:
        raise TlsConfigError("client_key given without client_cert")
    pins = parse_fingerprints(fingerprints)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.minimum_version = TLS_VERSIONS[min_version]
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        if ca_cert:
            ctx.load_verify_locations(cafile=str(ca_cert))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if client_cert:
            ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load the TLS files ({type(exc).__name__}: {exc.strerror or exc})") from None
    _check_tls13_suites(ctx)
    ctx._premium_tls_policy = _Policy(pins)  # type: ignore[attr-defined]
    ctx.sslobject_class = PinnedSSLObject
    ctx.sslsocket_class = PinnedSSLSocket
    return ctx


def pinned_fingerprints(ctx: ssl.SSLContext) -> frozenset[str]:
    """The fingerprints a context built by :func:`client_context` pins (empty: no pin)."""
    policy: _Policy | None = getattr(ctx, "_premium_tls_policy", None)
    return policy.fingerprints if policy else frozenset()


# -- connection extras -----------------------------------------------------------------------------

TLS_EXTRA_KEYS = ("ca_cert", "client_cert", "client_key", "cert_fingerprint_sha256", "tls_min_version")


def has_tls_extras(extra: Mapping[str, Any]) -> bool:
    return any(extra.get(k) not in (None, "") for k in TLS_EXTRA_KEYS)


def context_from_extra(extra: Mapping[str, Any]) -> ssl.SSLContext:
    """A client context from a connection's extras: ``ca_cert``, ``client_cert``, ``client_key``
    (file paths), ``cert_fingerprint_sha256`` (string or list), ``tls_min_version`` ("1.3")."""
    return client_context(
        ca_cert=extra.get("ca_cert") or None,
        client_cert=extra.get("client_cert") or None,
        client_key=extra.get("client_key") or None,
        min_version=str(extra.get("tls_min_version") or "1.3"),
        fingerprints=extra.get("cert_fingerprint_sha256"),
    )
