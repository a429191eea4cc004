"""One blocking Kafka connection for command-line tools (`streamctl acl --bootstrap-server`).

It speaks the generated codec (messages.py, framing.py) over a socket, optionally TLS, and
authenticates with SASL as Kafka clients do: SaslHandshake v1 naming the mechanism, then
SaslAuthenticate v2 exchanges — PLAIN in one (``\\0user\\0password``), SCRAM-SHA-256/512 in
two (client-first, client-final; the server's signature is verified, streamhouse/scram.py).
One request at a time; every failure is a :class:`KafkaConnectionError` saying what to fix.
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import (
    RequestHeader,
    SaslAuthenticateRequest,
    SaslHandshakeRequest,
)
from streamhouse.scram import ScramClient, ScramError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36
CLIENT_ID = "streamctl"


class KafkaConnectionError(Exception):
    """The broker could not be reached, refused the login, or answered nonsense."""


class BlockingKafkaConnection:
    """A connected, authenticated Kafka connection: :meth:`call` sends one request."""

    def __init__(
        self,
        address: str,
        security_protocol: str = "PLAINTEXT",
        mechanism: str = "",
        user: str = "",
        password: str = "",
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if security_protocol not in SECURITY_PROTOCOLS:
            raise KafkaConnectionError(
                f"security protocol {security_protocol!r}: use one of "
                + ", ".join(SECURITY_PROTOCOLS)
            )
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise KafkaConnectionError(f"bootstrap server {address!r} is not HOST:PORT")
        self._address = address
        self._correlation = 0
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        except OSError as exc:
            raise KafkaConnectionError(f"cannot connect to {address}: {exc}") from None
        if security_protocol.endswith("SSL"):
            context = ssl.create_default_context(cafile=ca_file)
            try:
                sock = context.wrap_socket(sock, server_hostname=host.strip("[]"))
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise KafkaConnectionError(f"TLS with {address} failed: {exc}") from None
        self._sock = sock
        self._reader = sock.makefile("rb")
        if security_protocol.startswith("SASL"):
            try:
                self._authenticate(mechanism, user, password)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> BlockingKafkaConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, api_key: int, version: int, request: Any) -> Any:
        """Sends one request and returns the decoded response body."""
        self._correlation += 1
        header = RequestHeader(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=self._correlation,
            client_id=CLIENT_ID,
        )
        try:
            self._sock.sendall(encode_request(header, request))
            head = self._reader.read(4)
            if len(head) < 4:
                raise KafkaConnectionError(
                    f"{self._address} closed the connection instead of answering API key "
                    f"{api_key} (not authenticated, or the API or version is not served)"
                )
            (size,) = struct.unpack(">i", head)
            _, body = decode_response(self._reader.read(size), api_key, version)
        except OSError as exc:
            raise KafkaConnectionError(f"talking to {self._address} failed: {exc}") from None
        return body

    def _authenticate(self, mechanism: str, user: str, password: str) -> None:
        if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise KafkaConnectionError(
                f"SASL mechanism {mechanism!r}: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            )
        if not user:
            raise KafkaConnectionError("SASL needs a user name")
        handshake = self.call(SASL_HANDSHAKE, 1, SaslHandshakeRequest(mechanism=mechanism))
        if handshake.error_code:
            raise KafkaConnectionError(
                f"{self._address} does not offer SASL mechanism {mechanism} (it offers "
                f"{', '.join(handshake.mechanisms) or 'none'})"
            )
        if mechanism == "PLAIN":
            self._sasl_step(f"\0{user}\0{password}".encode())
            return
        client = ScramClient(mechanism, user, password)
        server_first = self._sasl_step(client.first())
        try:
            server_final = self._sasl_step(client.final(server_first))
            client.verify(server_final)
        except ScramError as exc:
            raise KafkaConnectionError(f"SCRAM with {self._address} failed: {exc}") from None

    def _sasl_step(self, token: bytes) -> bytes:
        answer = self.call(SASL_AUTHENTICATE, 2, SaslAuthenticateRequest(auth_bytes=token))
        if answer.error_code:
            raise KafkaConnectionError(
                f"SASL authentication with {self._address} failed: "
                f"{answer.error_message or answer.error_code}"
            )
        return bytes(answer.auth_bytes)
