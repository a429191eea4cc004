"""The Kafka connection on an SSL listener with client certificates (no stack: one
KafkaConnection behind a real uvloop TLS server made from the settings): a request's handler
runs with the certificate's principal (``User:<CN>``) in `current_principal`; a client
without a certificate, or with one of another CA, does not get through the handshake when
certificates are required; without one, when they are only requested, it is ANONYMOUS."""

from __future__ import annotations

import asyncio
import pathlib
import ssl
import struct
from typing import Any

import pytest
import uvloop
from auth_tls_material import Material, make_material

from ingest.kafka.connection import ConnectionLimits, KafkaConnection, RequestBytesPool
from ingest.kafka.sasl import ListenerSecurity, current_sasl
from streamhouse.config import load_settings
from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import ApiVersionsRequest, ApiVersionsResponse, RequestHeader
from streamhouse.principal import current_principal
from streamhouse.tls import kafka_server_context

LIMITS = ConnectionLimits(
    max_frame_bytes=1024 * 1024,
    max_non_produce_frame_bytes=64 * 1024,
    max_produce_entries=8,
    max_in_flight_requests=4,
    max_in_flight_bytes=1 << 20,
    send_buffer_bytes=1 << 20,
    idle_timeout=30.0,
    slow_client_timeout=10.0,
)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("auth-ssl-principal"))


async def _no_credentials(mechanism: str, user: str) -> None:
    return None


async def _serve_and_ask(
    material: Material, client_auth: str, cert: tuple[pathlib.Path, pathlib.Path] | None
) -> list[tuple[str, Any]]:
    settings = load_settings(
        {
            "STREAMHOUSE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "STREAMHOUSE_TLS_CERT_FILE": str(material.server.cert),
            "STREAMHOUSE_TLS_KEY_FILE": str(material.server.key),
            "STREAMHOUSE_TLS_CA_FILE": str(material.ca.cert),
            "STREAMHOUSE_KAFKA_SSL_CLIENT_AUTH": client_auth,
        }
    )
    seen: list[tuple[str, Any]] = []

    async def handler(header: RequestHeader, request: Any) -> ApiVersionsResponse:
        seen.append((current_principal.get(), current_sasl.get()))
        return ApiVersionsResponse(error_code=0, api_keys=[])

    security = ListenerSecurity("SSL", (), _no_credentials)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: KafkaConnection(
            lambda key, version: handler,
            lambda: ApiVersionsResponse(),
            LIMITS,
            lambda connection: None,
            RequestBytesPool(1 << 30),
            security,
        ),
        "127.0.0.1",
        0,
        ssl=kafka_server_context(settings),
    )
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(material.ca.cert))
    if cert is not None:
        client_context.load_cert_chain(str(cert[0]), str(cert[1]))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        header = RequestHeader(request_api_key=18, request_api_version=0, correlation_id=3)
        writer.write(encode_request(header, ApiVersionsRequest()))
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        _, response = decode_response(await reader.readexactly(size), 18, 0)
        assert response.error_code == 0
        writer.close()
    finally:
        server.close()
    return seen


def test_client_certificate_names_the_principal(material: Material) -> None:
    cert = (material.alice.cert, material.alice.key)
    seen = uvloop.run(_serve_and_ask(material, "required", cert))
    assert seen == [("User:alice", None)]


def test_requested_certificate_may_be_absent(material: Material) -> None:
    assert uvloop.run(_serve_and_ask(material, "requested", None)) == [("User:ANONYMOUS", None)]


@pytest.mark.parametrize("which", ["none", "rogue"])
def test_required_certificate_must_come_from_the_ca(material: Material, which: str) -> None:
    cert = (material.rogue.cert, material.rogue.key) if which == "rogue" else None
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        uvloop.run(_serve_and_ask(material, "required", cert))
