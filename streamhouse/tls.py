"""TLS for the listeners: the Kafka listener's SSLContext, the gRPC server's credentials, and
the principal of a client certificate.

Files (settings): `tls_cert_file` is the PEM certificate chain of the server (leaf first),
`tls_key_file` its unencrypted PEM private key, `tls_ca_file` the PEM bundle client
certificates are verified against. They are read once, when the listener starts; a file that
cannot be read or does not match fails the start with a message naming the setting.

A client certificate's principal is ``User:<CN>`` (the subject's common name), or, when the
subject has no CN, ``User:<first DNS or URI subject alternative name>``. (Kafka's default
maps the whole distinguished name; StreamHouse keeps principals short and the same on the
Kafka and gRPC listeners.)
"""

from __future__ import annotations

import ssl
from typing import Any

from streamhouse.config import ConfigError, Settings
from streamhouse.principal import user_principal


def _read(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read STREAMHOUSE_{setting}={path!r}: {exc}") from None


def kafka_server_context(settings: Settings) -> ssl.SSLContext | None:
    """The Kafka listener's SSLContext, or None when its protocol has no TLS."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load STREAMHOUSE_TLS_CERT_FILE={settings.tls_cert_file!r} with "
            f"STREAMHOUSE_TLS_KEY_FILE={settings.tls_key_file!r}: {exc} (PEM chain and the "
            "matching unencrypted key)"
        ) from None
    if settings.kafka_ssl_client_auth != "none":
        try:
            context.load_verify_locations(cafile=settings.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load STREAMHOUSE_TLS_CA_FILE={settings.tls_ca_file!r}: {exc}"
            ) from None
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.kafka_ssl_client_auth == "required" else ssl.CERT_OPTIONAL
        )
    return context


def grpc_server_credentials(settings: Settings) -> Any:
    """The gRPC server's credentials, or None for a plaintext listener."""
    import grpc

    if not (settings.grpc_tls or settings.grpc_auth == "mtls"):
        return None
    key = _read(settings.tls_key_file, "TLS_KEY_FILE")
    chain = _read(settings.tls_cert_file, "TLS_CERT_FILE")
    if settings.grpc_auth == "mtls":
        return grpc.ssl_server_credentials(
            [(key, chain)],
            root_certificates=_read(settings.tls_ca_file, "TLS_CA_FILE"),
            require_client_auth=True,
        )
    return grpc.ssl_server_credentials([(key, chain)])


def principal_of_peercert(cert: dict[str, Any] | None) -> str | None:
    """The principal of a verified peer certificate (``ssl.SSLObject.getpeercert()``)."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return user_principal(value)
    for kind, value in cert.get("subjectAltName", ()):
        if kind in ("DNS", "URI") and value:
            return user_principal(value)
    return None


def principal_of_grpc_auth_context(auth: dict[str, list[bytes]]) -> str | None:
    """The principal of a gRPC call's verified client certificate (``context.auth_context()``)."""
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth.get(key) or []
        if values and values[0]:
            return user_principal(values[0].decode(errors="replace"))
    return None


def local_grpc_channel(settings: Settings, address: str) -> Any:
    """A channel to an agent's own gRPC listener (health checks of `streamhouse status`).

    With TLS the server is verified against `tls_ca_file`, else against its own certificate
    chain (a self-signed certificate); with mTLS the server's own certificate and key serve as
    the client certificate (so they must be signed by `tls_ca_file`)."""
    import grpc

    if not (settings.grpc_tls or settings.grpc_auth == "mtls"):
        return grpc.insecure_channel(address)
    root = _read(settings.tls_ca_file or settings.tls_cert_file, "TLS_CA_FILE")
    if settings.grpc_auth == "mtls":
        credentials = grpc.ssl_channel_credentials(
            root,
            _read(settings.tls_key_file, "TLS_KEY_FILE"),
            _read(settings.tls_cert_file, "TLS_CERT_FILE"),
        )
    else:
        credentials = grpc.ssl_channel_credentials(root)
    return grpc.secure_channel(address, credentials)
