"""The balance client over TLS: mTLS to the bank (§2.3), TLS 1.3 minimum (§5.1)."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from types import SimpleNamespace

import pytest

from premium.banking.client import BankEndpoint, CoreBankingClient
from premium.settings import BalanceSettings
from premium.simulators import bank_model
from premium.simulators.runner import SimulatorProcess
from tests.support.pki import Pki, make_pki

pytestmark = pytest.mark.integration

ACC = "ACC-00000-00042"
DAY = date(2025, 11, 18)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _conn(port: int, **extra) -> SimpleNamespace:
    return SimpleNamespace(
        host="127.0.0.1", port=port, schema="https", password=None, extra_dejson=extra, extra=json.dumps(extra)
    )


def _fetch(endpoint: BankEndpoint):
    settings = BalanceSettings(max_retries=0, request_timeout_s=5)

    async def main():
        async with CoreBankingClient(endpoint, settings, "corr-tls") as client:
            return await client.get_balance(ACC, DAY)

    return asyncio.run(main())


def _server(pki: Pki, *extra: str) -> SimulatorProcess:
    return SimulatorProcess(
        args=["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), *extra],
        client_cert=(str(pki.client_cert), str(pki.client_key)),
    )


def test_mtls_with_the_banks_ca_and_our_client_certificate(pki: Pki) -> None:
    with _server(pki, "--client-ca", str(pki.ca)) as sim:
        endpoint = BankEndpoint.from_connection(
            _conn(sim.port, ca_cert=str(pki.ca), client_cert=str(pki.client_cert), client_key=str(pki.client_key))
        )
        assert endpoint.auth_type == "mtls" and endpoint.base_url.startswith("https://")
        result = _fetch(endpoint)
        assert result.ok and result.amount == bank_model.account_facts(ACC, DAY).amount


def test_a_client_certificate_from_another_ca_is_refused(pki: Pki) -> None:
    with _server(pki, "--client-ca", str(pki.ca)) as sim:
        endpoint = BankEndpoint.from_connection(
            _conn(sim.port, ca_cert=str(pki.ca), client_cert=str(pki.rogue_cert), client_key=str(pki.rogue_key))
        )
        result = _fetch(endpoint)
        assert result.outcome == "failed_after_retries" and "connection error" in result.detail
        assert sim.stats()["requests_total"] == 0


def test_a_server_not_signed_by_the_banks_ca_is_refused(pki: Pki, tmp_path) -> None:
    other = make_pki(tmp_path)  # a different CA: the simulator's certificate is not the bank's
    with _server(pki) as sim:
        endpoint = BankEndpoint.from_connection(_conn(sim.port, ca_cert=str(other.ca)))
        result = _fetch(endpoint)
        assert result.outcome == "failed_after_retries"


def test_a_tls12_only_server_is_refused(pki: Pki) -> None:
    with _server(pki, "--tls-max", "1.2") as sim:
        refused = _fetch(BankEndpoint.from_connection(_conn(sim.port, ca_cert=str(pki.ca))))
        assert refused.outcome == "failed_after_retries"
        allowed = _fetch(BankEndpoint.from_connection(_conn(sim.port, ca_cert=str(pki.ca), tls_min_version="1.2")))
        assert allowed.ok  # only when a deployment explicitly lowers the floor
