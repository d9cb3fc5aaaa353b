"""A throw-away PKI for TLS tests, made with `cryptography`: a CA, a server certificate for
127.0.0.1, a client certificate, and a client certificate from another ("rogue") CA; and, for the
refusal tests, an expired server certificate and one for another host (both from the CA), a
server certificate for 127.0.0.1 from another CA, and a second valid server certificate (the
next one, for pin rotation)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    expired_cert: Path | None = None  # from the CA, for 127.0.0.1, expired yesterday
    expired_key: Path | None = None
    wrong_host_cert: Path | None = None  # from the CA, valid, for bank.example only
    wrong_host_key: Path | None = None
    other_ca: Path | None = None  # the rogue CA
    other_server_cert: Path | None = None  # for 127.0.0.1, signed by the rogue CA
    other_server_key: Path | None = None
    next_server_cert: Path | None = None  # a second valid server certificate from the CA (rotation)
    next_server_key: Path | None = None


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    expired: bool = False,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    validity = (now - dt.timedelta(days=3), now - dt.timedelta(days=1)) if expired else None
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0] if validity else now - dt.timedelta(minutes=5))
        .not_valid_after(validity[1] if validity else now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if server:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(d: Path) -> Pki:
    pem = serialization.Encoding.PEM
    ca_key, rogue_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test Bank CA", ca_key, "Test Bank CA", ca_key, ca=True)
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    rogue_ca = _cert("Rogue CA", rogue_ca_key, "Rogue CA", rogue_ca_key, ca=True)
    (d / "rogue-ca.crt").write_bytes(rogue_ca.public_bytes(pem))
    files: dict[str, Path] = {}
    for name, issuer, issuer_key, server, extra in (
        ("server", "Test Bank CA", ca_key, True, {}),
        ("client", "Test Bank CA", ca_key, False, {}),
        ("rogue", "Rogue CA", rogue_ca_key, False, {}),
        ("expired", "Test Bank CA", ca_key, True, {"expired": True}),
        ("wrong-host", "Test Bank CA", ca_key, True, {"hosts": ("bank.example",)}),
        ("other-server", "Rogue CA", rogue_ca_key, True, {}),
        ("next-server", "Test Bank CA", ca_key, True, {}),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        (d / f"{name}.crt").write_bytes(_cert(name, key, issuer, issuer_key, server=server, **extra).public_bytes(pem))
        files[name] = _write_key(key, d / f"{name}.key")
    return Pki(
        d / "ca.crt",
        d / "server.crt",
        files["server"],
        d / "client.crt",
        files["client"],
        d / "rogue.crt",
        files["rogue"],
        expired_cert=d / "expired.crt",
        expired_key=files["expired"],
        wrong_host_cert=d / "wrong-host.crt",
        wrong_host_key=files["wrong-host"],
        other_ca=d / "rogue-ca.crt",
        other_server_cert=d / "other-server.crt",
        other_server_key=files["other-server"],
        next_server_cert=d / "next-server.crt",
        next_server_key=files["next-server"],
    )
