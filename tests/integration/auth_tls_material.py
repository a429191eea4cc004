"""Test-time certificates for the auth tests: a CA, a server certificate for 127.0.0.1 and
localhost, client certificates, and a second (untrusted) CA. Nothing is committed; every run
makes fresh keys in its own temporary directory."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pem:
    cert: pathlib.Path
    key: pathlib.Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(directory: pathlib.Path, name: str, cert: x509.Certificate, key: object) -> Pem:
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return Pem(cert_path, key_path)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: pathlib.Path, name: str) -> tuple[Pem, x509.Certificate, object]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} test CA"))
        .issuer_name(_name(f"{name} test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, name, cert, key), cert, key


def issue(
    directory: pathlib.Path,
    name: str,
    cn: str,
    ca: tuple[Pem, x509.Certificate, object],
    server: bool = False,
) -> Pem:
    _, ca_cert, ca_key = ca
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return _write(directory, name, cert, key)


@dataclass(frozen=True)
class Material:
    ca: Pem
    server: Pem
    alice: Pem  # client certificate, CN=alice, signed by the CA
    bob: Pem  # client certificate, CN=bob, signed by the CA
    rogue: Pem  # client certificate, CN=alice, signed by another CA


def make_material(directory: pathlib.Path) -> Material:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, "ca")
    other = make_ca(directory, "other")
    return Material(
        ca=ca[0],
        server=issue(directory, "server", "localhost", ca, server=True),
        alice=issue(directory, "alice", "alice", ca),
        bob=issue(directory, "bob", "bob", ca),
        rogue=issue(directory, "rogue", "alice", other),
    )
