"""premium.tls: the client contexts of the bank and the carriers, and their post-handshake checks.

The handshakes here run in memory (``SSLContext.wrap_bio`` over ``MemoryBIO`` pairs, the same path
asyncio and aiohttp take), so pin and cipher checks are exercised without a network.
"""

from __future__ import annotations

import ssl
from types import SimpleNamespace

import pytest

from premium import tls
from premium.banking.client import BankEndpoint, build_ssl_context
from premium.notifications.carrier import CarrierEndpoint
from tests.support.pki import Pki, make_pki

FP = "ab" * 32


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(cert, key, *, tls_max: str | None = None, client_ca=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    if tls_max:
        ctx.maximum_version = tls.TLS_VERSIONS[tls_max]
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    return ctx


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, host: str = "127.0.0.1") -> ssl.SSLObject:
    """Run a TLS handshake between two in-memory endpoints; the client's SSLObject, or the client's error."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=host)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    for _ in range(20):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if client_done and server_done:
            return client
    raise AssertionError("handshake did not finish")


# -- fingerprints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", [FP, FP.upper(), ":".join(FP[i : i + 2] for i in range(0, 64, 2)), f"sha256:{FP}"])
def test_fingerprint_forms_normalise_to_lowercase_hex(form: str) -> None:
    assert tls.normalise_fingerprint(form) == FP


@pytest.mark.parametrize("bad", ["", "ab" * 31, "zz" * 32, "ab" * 33, 42])
def test_malformed_fingerprints_are_refused(bad) -> None:
    with pytest.raises(tls.TlsConfigError):
        tls.normalise_fingerprint(bad)


def test_one_or_several_fingerprints_for_rotation() -> None:
    other = "cd" * 32
    assert tls.parse_fingerprints(None) == frozenset()
    assert tls.parse_fingerprints(FP) == {FP}
    assert tls.parse_fingerprints([FP, other.upper()]) == {FP, other}
    assert tls.parse_fingerprints(f"{FP}, {other}") == {FP, other}
    with pytest.raises(tls.TlsConfigError):
        tls.parse_fingerprints([" "])


def test_fingerprint_of_a_pem_file_is_sha256_of_its_der(pki: Pki) -> None:
    import hashlib

    der = ssl.PEM_cert_to_DER_cert(pki.server_cert.read_text())
    assert tls.fingerprint_of_pem(pki.server_cert) == hashlib.sha256(der).hexdigest()


# -- the context -----------------------------------------------------------------------------------


def test_defaults_tls13_minimum_verification_on_and_the_checking_classes(pki: Pki) -> None:
    ctx = tls.client_context(ca_cert=str(pki.ca))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.sslobject_class is tls.PinnedSSLObject and ctx.sslsocket_class is tls.PinnedSSLSocket
    assert tls.pinned_fingerprints(ctx) == frozenset()
    # §5.1: the TLS 1.3 suites this OpenSSL offers are exactly the three allowed ones
    assert {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"} == tls.TLS13_SUITES
    # a lowered floor still offers only forward-secret AEAD suites for TLS 1.2
    legacy = tls.client_context(ca_cert=str(pki.ca), min_version="1.2")
    assert legacy.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in legacy.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)


def test_a_given_ca_is_the_only_one_trusted(pki: Pki) -> None:
    ctx = tls.client_context(ca_cert=str(pki.ca))
    assert [dict(x[0] for x in c["subject"])["commonName"] for c in ctx.get_ca_certs()] == ["Test Bank CA"]


@pytest.mark.parametrize("version", ["1.1", "1.0", "tls1.3", ""])
def test_unknown_minimum_versions_are_refused(version: str, pki: Pki) -> None:
    with pytest.raises(ValueError, match="tls_min_version must be 1.2 or 1.3"):
        tls.client_context(ca_cert=str(pki.ca), min_version=version)


def test_unreadable_files_and_a_key_without_a_certificate_are_configuration_errors(pki: Pki, tmp_path) -> None:
    with pytest.raises(tls.TlsConfigError, match="cannot load"):
        tls.client_context(ca_cert=str(tmp_path / "missing.crt"))
    with pytest.raises(tls.TlsConfigError, match="cannot load"):
        tls.client_context(ca_cert=str(pki.ca), client_cert=str(pki.client_cert), client_key=str(pki.rogue_key))
    with pytest.raises(tls.TlsConfigError, match="client_key given without client_cert"):
        tls.client_context(ca_cert=str(pki.ca), client_key=str(pki.client_key))


def test_an_openssl_offering_another_tls13_suite_is_refused() -> None:
    fake = SimpleNamespace(
        get_ciphers=lambda: [
            {"name": "TLS_AES_256_GCM_SHA384", "protocol": "TLSv1.3"},
            {"name": "TLS_AES_128_CCM_SHA256", "protocol": "TLSv1.3"},
        ]
    )
    with pytest.raises(tls.TlsConfigError, match="TLS_AES_128_CCM_SHA256"):
        tls._check_tls13_suites(fake)


# -- handshakes in memory ----------------------------------------------------------------------------


def test_tls13_is_negotiated_with_a_section_5_1_suite(pki: Pki) -> None:
    client = handshake(tls.client_context(ca_cert=str(pki.ca)), server_context(pki.server_cert, pki.server_key))
    assert isinstance(client, tls.PinnedSSLObject)
    assert client.version() == "TLSv1.3" and client.cipher()[0] in tls.TLS13_SUITES


def test_a_tls12_only_server_is_refused(pki: Pki) -> None:
    server = server_context(pki.server_cert, pki.server_key, tls_max="1.2")
    with pytest.raises(ssl.SSLError, match="(?i)protocol"):
        handshake(tls.client_context(ca_cert=str(pki.ca)), server)
    # only when a deployment lowers the floor explicitly
    assert handshake(tls.client_context(ca_cert=str(pki.ca), min_version="1.2"), server).version() == "TLSv1.2"


def test_the_pinned_fingerprint_is_accepted_and_another_refused(pki: Pki) -> None:
    server = server_context(pki.server_cert, pki.server_key)
    good = tls.fingerprint_of_pem(pki.server_cert)
    assert handshake(tls.client_context(ca_cert=str(pki.ca), fingerprints=good), server).version() == "TLSv1.3"
    with pytest.raises(tls.CertificatePinError, match=f"sha256:{good} matches none"):
        handshake(tls.client_context(ca_cert=str(pki.ca), fingerprints=FP), server)
    with pytest.raises(ssl.SSLCertVerificationError):  # what asyncio/aiohttp treat as a certificate failure
        handshake(tls.client_context(ca_cert=str(pki.ca), fingerprints=FP), server)


def test_a_rotation_list_accepts_either_certificate(pki: Pki) -> None:
    current, upcoming = (
        server_context(pki.server_cert, pki.server_key),
        server_context(pki.next_server_cert, pki.next_server_key),
    )
    pins = [tls.fingerprint_of_pem(pki.server_cert), tls.fingerprint_of_pem(pki.next_server_cert)]
    during = tls.client_context(ca_cert=str(pki.ca), fingerprints=pins)
    assert handshake(during, current).version() == handshake(during, upcoming).version() == "TLSv1.3"
    before = tls.client_context(ca_cert=str(pki.ca), fingerprints=pins[0])  # valid CA, but not pinned yet
    with pytest.raises(tls.CertificatePinError):
        handshake(before, upcoming)


def test_the_pin_does_not_replace_ca_verification(pki: Pki) -> None:
    other = tls.fingerprint_of_pem(pki.other_server_cert)
    ctx = tls.client_context(ca_cert=str(pki.ca), fingerprints=other)  # pinned, but not from the bank's CA
    with pytest.raises(ssl.SSLCertVerificationError, match="(?i)unable to get local issuer"):
        handshake(ctx, server_context(pki.other_server_cert, pki.other_server_key))


@pytest.mark.parametrize(
    ("which", "reason"),
    [("expired", "(?i)expired"), ("wrong_host", "(?i)mismatch"), ("other_server", "(?i)local issuer")],
)
def test_expired_wrong_host_and_other_ca_certificates_are_refused(pki: Pki, which: str, reason: str) -> None:
    server = server_context(getattr(pki, f"{which}_cert"), getattr(pki, f"{which}_key"))
    with pytest.raises(ssl.SSLCertVerificationError, match=reason):
        handshake(tls.client_context(ca_cert=str(pki.ca)), server)


def test_a_disallowed_negotiated_suite_fails_the_handshake_check(pki: Pki) -> None:
    ctx = tls.client_context(ca_cert=str(pki.ca))
    conn = SimpleNamespace(
        context=ctx, version=lambda: "TLSv1.3", cipher=lambda: ("TLS_AES_128_CCM_8_SHA256", "TLSv1.3", 128)
    )
    with pytest.raises(tls.CertificatePinError, match="not allowed"):
        tls._verify_session(conn)
    conn.context = ssl.create_default_context()  # a context without our policy: fail closed
    with pytest.raises(tls.CertificatePinError, match="no policy"):
        tls._verify_session(conn)


def test_blocking_sockets_are_checked_too(pki: Pki) -> None:
    ctx = tls.client_context(ca_cert=str(pki.ca), fingerprints=FP)
    assert ctx.sslsocket_class is tls.PinnedSSLSocket
    assert issubclass(tls.PinnedSSLSocket, ssl.SSLSocket) and issubclass(tls.PinnedSSLObject, ssl.SSLObject)


# -- connections -----------------------------------------------------------------------------------


def _conn(schema="https", password=None, **extra) -> SimpleNamespace:
    return SimpleNamespace(host="127.0.0.1", port=8443, schema=schema, password=password, extra_dejson=extra)


def test_bank_connection_extras_reach_the_context(pki: Pki) -> None:
    pins = [FP, "cd" * 32]
    endpoint = BankEndpoint.from_connection(
        _conn(
            ca_cert=str(pki.ca),
            client_cert=str(pki.client_cert),
            client_key=str(pki.client_key),
            cert_fingerprint_sha256=pins,
        )
    )
    assert endpoint.auth_type == "mtls"
    assert tls.pinned_fingerprints(endpoint.ssl_context) == frozenset(pins)
    assert endpoint.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    single = BankEndpoint.from_connection(_conn(ca_cert=str(pki.ca), cert_fingerprint_sha256=FP.upper()))
    assert tls.pinned_fingerprints(single.ssl_context) == {FP}
    with pytest.raises(ValueError, match="needs schema https"):
        BankEndpoint.from_connection(_conn(schema="http", password="k", cert_fingerprint_sha256=FP))
    with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
        BankEndpoint.from_connection(_conn(ca_cert=str(pki.ca), cert_fingerprint_sha256="nope"))
    # the old entry point keeps its signature and now builds the same context
    assert isinstance(build_ssl_context(ca_cert=str(pki.ca), client_cert=None, client_key=None), ssl.SSLContext)


def test_carrier_connection_builds_a_tls13_context_for_https(pki: Pki) -> None:
    plain_https = CarrierEndpoint.from_connection(_conn(password="k"), "primary")
    assert plain_https.base_url == "https://127.0.0.1:8443"
    assert plain_https.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    pinned = CarrierEndpoint.from_connection(
        _conn(
            password="k",
            ca_cert=str(pki.ca),
            client_cert=str(pki.client_cert),
            client_key=str(pki.client_key),
            cert_fingerprint_sha256=[FP],
            tls_min_version="1.2",
        ),
        "secondary",
    )
    assert tls.pinned_fingerprints(pinned.ssl_context) == {FP}
    assert pinned.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert CarrierEndpoint.from_connection(_conn(schema="http", password="k"), "primary").ssl_context is None
    with pytest.raises(ValueError, match="need schema https"):
        CarrierEndpoint.from_connection(_conn(schema="http", password="k", ca_cert=str(pki.ca)), "primary")
    # a hand-built endpoint (tests, the benchmark) still constructs as before
    assert CarrierEndpoint("primary", "http://x", {}).ssl_context is None


def test_an_upper_case_https_host_still_gets_the_ca_and_the_pin(pki: Pki) -> None:
    conn = SimpleNamespace(
        host="HTTPS://127.0.0.1", port=8443, schema=None, password="k", extra_dejson={"ca_cert": str(pki.ca)}
    )
    conn.extra_dejson["cert_fingerprint_sha256"] = FP
    bank = BankEndpoint.from_connection(conn)
    assert bank.base_url == "https://127.0.0.1:8443"
    assert bank.ssl_context is not None and tls.pinned_fingerprints(bank.ssl_context) == {FP}
    carrier = CarrierEndpoint.from_connection(conn, "primary")
    assert carrier.base_url == "https://127.0.0.1:8443"
    assert carrier.ssl_context is not None and tls.pinned_fingerprints(carrier.ssl_context) == {FP}
