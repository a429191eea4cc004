"""The authentication and TLS settings: defaults stay open, bad values are refused at load
with a message naming the setting and what to do."""

from __future__ import annotations

import pytest

from streamhouse.config import ConfigError, load_settings


def test_defaults_are_open() -> None:
    settings = load_settings({})
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert settings.grpc_auth == "none" and not settings.grpc_tls


@pytest.mark.parametrize(
    "env,message",
    [
        ({"STREAMHOUSE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "use one of PLAINTEXT"),
        ({"STREAMHOUSE_SASL_MECHANISMS": "PLAIN,GSSAPI"}, "comma list of PLAIN"),
        ({"STREAMHOUSE_GRPC_AUTH": "password"}, "none, token or mtls"),
        ({"STREAMHOUSE_KAFKA_SSL_CLIENT_AUTH": "maybe"}, "requested or required"),
        ({"STREAMHOUSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "TLS_CERT_FILE"),
        ({"STREAMHOUSE_GRPC_TLS": "true"}, "TLS_KEY_FILE"),
        (
            {
                "STREAMHOUSE_GRPC_AUTH": "mtls",
                "STREAMHOUSE_TLS_CERT_FILE": "c.pem",
                "STREAMHOUSE_TLS_KEY_FILE": "k.pem",
            },
            "TLS_CA_FILE",
        ),
    ],
)
def test_bad_security_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_unreadable_certificate_fails_with_the_setting_named(tmp_path: object) -> None:
    from streamhouse.tls import grpc_server_credentials, kafka_server_context

    settings = load_settings(
        {
            "STREAMHOUSE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "STREAMHOUSE_GRPC_TLS": "true",
            "STREAMHOUSE_TLS_CERT_FILE": "/nonexistent/cert.pem",
            "STREAMHOUSE_TLS_KEY_FILE": "/nonexistent/key.pem",
        }
    )
    with pytest.raises(ConfigError, match="STREAMHOUSE_TLS_CERT_FILE"):
        kafka_server_context(settings)
    with pytest.raises(ConfigError, match="STREAMHOUSE_TLS_KEY_FILE"):
        grpc_server_credentials(settings)
