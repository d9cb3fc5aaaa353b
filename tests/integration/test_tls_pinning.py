"""Outbound TLS (§2.3, §5.1) against the simulators serving TLS with certificates made here.

Both clients (the core-banking client and the SMS carrier client) go through aiohttp; the checks of
:mod:`premium.tls` (fingerprint pin, negotiated suite) run inside its handshake, which a spy on
``premium.tls._verify_session`` shows. A refused connection never reaches the application: the
simulators count no request.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date
from types import SimpleNamespace

import pytest

from premium import tls
from premium.banking.client import BankEndpoint, CoreBankingClient
from premium.notifications.carrier import CarrierEndpoint, SmsCarrierClient
from premium.settings import BalanceSettings
from premium.simulators import bank_model
from premium.simulators.runner import SimulatorProcess
from tests.support import env
from tests.support.pki import Pki, make_pki

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ACC = "ACC-00000-00042"
DAY = date(2025, 11, 18)
WRONG_PIN = "00" * 32


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def handshakes(monkeypatch) -> list[tuple[str, str, str]]:
    """(SSL object class, version, cipher) of every completed client handshake checked by premium.tls."""
    seen: list[tuple[str, str, str]] = []
    real = tls._verify_session

    def spy(conn):
        seen.append((type(conn).__name__, conn.version(), conn.cipher()[0]))
        return real(conn)

    monkeypatch.setattr(tls, "_verify_session", spy)
    return seen


def _conn(port: int, password: str | None = None, **extra) -> SimpleNamespace:
    return SimpleNamespace(
        host="127.0.0.1", port=port, schema="https", password=password, extra_dejson=extra, extra=json.dumps(extra)
    )


# -- the bank ----------------------------------------------------------------------------------------


def bank(pki: Pki, cert: str = "server", *extra: str, mtls: bool = True) -> SimulatorProcess:
    args = ["--tls-cert", str(getattr(pki, f"{cert}_cert")), "--tls-key", str(getattr(pki, f"{cert}_key"))]
    if mtls:
        args += ["--client-ca", str(pki.ca)]
    return SimulatorProcess(
        args=[*args, *extra], client_cert=(str(pki.client_cert), str(pki.client_key)), name="bank-tls"
    )


def bank_extra(pki: Pki, **overrides) -> dict:
    return {
        "ca_cert": str(pki.ca),
        "client_cert": str(pki.client_cert),
        "client_key": str(pki.client_key),
        **overrides,
    }


def fetch(port: int, **extra):
    endpoint = BankEndpoint.from_connection(_conn(port, **extra))
    settings = BalanceSettings(max_retries=0, request_timeout_s=5)

    async def main():
        async with CoreBankingClient(endpoint, settings, "corr-tls") as client:
            return await client.get_balance(ACC, DAY)

    return asyncio.run(main())


def assert_refused(result, sim: SimulatorProcess, error: str = "") -> None:
    """Refused during the handshake: a connection error, and no request reached the bank (since its last reset)."""
    assert result.outcome == "failed_after_retries" and "connection error" in result.detail, result
    assert error in result.detail
    assert sim.stats()["requests_total"] == 0


def test_bank_mtls_negotiates_tls13_with_a_section_5_1_suite(pki: Pki, handshakes) -> None:
    with bank(pki) as sim:
        result = fetch(sim.port, **bank_extra(pki))
    assert result.ok and result.amount == bank_model.account_facts(ACC, DAY).amount
    # the check ran inside aiohttp's handshake (asyncio's SSLObject path)
    assert handshakes and all(h[0] == "PinnedSSLObject" and h[1] == "TLSv1.3" for h in handshakes)
    assert {h[2] for h in handshakes} <= tls.TLS13_SUITES


def test_bank_tls12_only_server_is_refused(pki: Pki) -> None:
    with bank(pki, "server", "--tls-max", "1.2") as sim:
        # the simulator (asyncio) drops the connection: the client sees a reset, not an alert
        assert_refused(fetch(sim.port, **bank_extra(pki)), sim)
        # the same server is reachable only when a deployment explicitly lowers the floor
        assert fetch(sim.port, **bank_extra(pki, tls_min_version="1.2")).ok


def test_bank_refuses_a_wrong_or_missing_client_certificate(pki: Pki) -> None:
    with bank(pki) as sim:
        rogue = fetch(sim.port, **bank_extra(pki, client_cert=str(pki.rogue_cert), client_key=str(pki.rogue_key)))
        assert_refused(rogue, sim)
        none = fetch(sim.port, ca_cert=str(pki.ca), auth_type="none")  # no client certificate at all
        assert_refused(none, sim)
        assert fetch(sim.port, **bank_extra(pki)).ok  # the right one still works


@pytest.mark.parametrize("cert", ["expired", "other_server", "wrong_host"])
def test_bank_server_certificate_expired_from_another_ca_or_for_another_host_is_refused(pki: Pki, cert: str) -> None:
    with bank(pki, cert) as sim:
        assert_refused(fetch(sim.port, **bank_extra(pki)), sim, "ClientConnectorCertificateError")


def test_bank_fingerprint_pin_match_mismatch_and_rotation(pki: Pki, handshakes) -> None:
    current = tls.fingerprint_of_pem(pki.server_cert)
    upcoming = tls.fingerprint_of_pem(pki.next_server_cert)
    with bank(pki) as sim:
        assert fetch(sim.port, **bank_extra(pki, cert_fingerprint_sha256=current)).ok
        assert fetch(sim.port, **bank_extra(pki, cert_fingerprint_sha256=[upcoming, current.upper()])).ok
        sim.reset()
        before = len(handshakes)
        refused = fetch(sim.port, **bank_extra(pki, cert_fingerprint_sha256=[WRONG_PIN, upcoming]))
        assert_refused(refused, sim, "ClientConnectorCertificateError")
        assert len(handshakes) == before + 1  # refused by our check, after OpenSSL's own verification
    with bank(pki, "next_server") as sim:  # the bank rotated its certificate: the list still matches
        assert fetch(sim.port, **bank_extra(pki, cert_fingerprint_sha256=[current, upcoming])).ok
        sim.reset()
        assert_refused(fetch(sim.port, **bank_extra(pki, cert_fingerprint_sha256=current)), sim)


# -- the carriers ------------------------------------------------------------------------------------


def carrier(pki: Pki, cert: str = "server", *extra: str) -> SimulatorProcess:
    args = ["--name", "primary", "--secret-env", "SMS_SIM_SECRET", "--time-scale", "0.01", "--callbacks", "off"]
    args += ["--tls-cert", str(getattr(pki, f"{cert}_cert")), "--tls-key", str(getattr(pki, f"{cert}_key"))]
    return SimulatorProcess(
        module="premium.simulators.sms_carrier",
        args=[*args, *extra],
        env={"SMS_SIM_SECRET": env.TEST_SMS_API_KEY},
        name="sms-tls",
    )


def post(port: int, **extra):
    endpoint = CarrierEndpoint.from_connection(_conn(port, env.TEST_SMS_API_KEY, **extra), "primary")
    message = {
        "messageId": "MSG-TLS-1",
        "phoneNumber": "+972521234567",
        "content": "Thank you for being a premium customer.",
        "priority": "HIGH",
        "callbackUrl": "https://notification-service/callbacks/sms-delivery",
    }

    async def main():
        async with SmsCarrierClient(endpoint, timeout_s=5, breaker_failures=100, breaker_reset_s=1) as client:
            return await client.post_batch(
                "BATCH-20251118-001", [message], {"campaignId": "premium-monthly-nov-2025", "correlationId": "corr-tls"}
            )

    return asyncio.run(main())


def assert_unreachable(result, sim: SimulatorProcess, error: str = "") -> None:
    assert result.kind == "unreachable", result  # nothing was sent: safe to fail over
    assert error in (result.detail or "")
    assert sim.stats()["batches_received"] == 0


def test_carrier_negotiates_tls13_with_a_section_5_1_suite(pki: Pki, handshakes) -> None:
    with carrier(pki) as sim:
        result = post(sim.port, ca_cert=str(pki.ca))
        assert result.kind == "accepted" and list(result.accepted) == ["MSG-TLS-1"]
    assert handshakes and all(h[0] == "PinnedSSLObject" and h[1] == "TLSv1.3" for h in handshakes)
    assert {h[2] for h in handshakes} <= tls.TLS13_SUITES


def test_carrier_tls12_only_server_is_refused(pki: Pki) -> None:
    with carrier(pki, "server", "--tls-max", "1.2") as sim:
        assert_unreachable(post(sim.port, ca_cert=str(pki.ca)), sim)
        # only when the carrier's connection explicitly lowers the floor
        assert post(sim.port, ca_cert=str(pki.ca), tls_min_version="1.2").kind == "accepted"


@pytest.mark.parametrize("cert", ["expired", "other_server"])
def test_carrier_server_certificate_expired_or_from_another_ca_is_refused(pki: Pki, cert: str) -> None:
    with carrier(pki, cert) as sim:
        assert_unreachable(post(sim.port, ca_cert=str(pki.ca)), sim, "ClientConnectorCertificateError")


def test_carrier_fingerprint_pin_match_mismatch_and_rotation(pki: Pki) -> None:
    current = tls.fingerprint_of_pem(pki.server_cert)
    with carrier(pki) as sim:
        refused = post(sim.port, ca_cert=str(pki.ca), cert_fingerprint_sha256=WRONG_PIN)
        assert_unreachable(refused, sim, "ClientConnectorCertificateError")
        assert post(sim.port, ca_cert=str(pki.ca), cert_fingerprint_sha256=current).kind == "accepted"
        rotation = [tls.fingerprint_of_pem(pki.next_server_cert), current]
        assert post(sim.port, ca_cert=str(pki.ca), cert_fingerprint_sha256=rotation).kind == "accepted"
