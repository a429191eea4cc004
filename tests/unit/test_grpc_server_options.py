"""streamhouse/grpc_options.py: both gRPC servers get their limits from the settings."""

from __future__ import annotations

import pytest

from streamhouse.config import load_settings
from streamhouse.grpc_options import server_options


def test_options_follow_the_settings() -> None:
    settings = load_settings(
        {
            "STREAMHOUSE_GRPC_MAX_MESSAGE_BYTES": str(2 << 20),
            "STREAMHOUSE_GRPC_MAX_CONNECTIONS": "7",
            "STREAMHOUSE_GRPC_MAX_CONCURRENT_STREAMS": "9",
            "STREAMHOUSE_GRPC_IDLE_TIMEOUT_MS": "1234",
            "STREAMHOUSE_SLOW_CLIENT_TIMEOUT_MS": "4321",
        }
    )
    options = dict(server_options(settings, send_limit=5 << 20))
    assert options["grpc.max_receive_message_length"] == 2 << 20
    assert options["grpc.max_send_message_length"] == 5 << 20
    assert options["grpc.max_allowed_incoming_connections"] == 7
    assert options["grpc.max_concurrent_streams"] == 9
    assert options["grpc.max_connection_idle_ms"] == 1234
    assert options["grpc.server_handshake_timeout_ms"] == 4321
    assert options["grpc.so_reuseport"] == 0
    assert len(options) == len(server_options(settings, send_limit=1)), "an option given twice"


def test_send_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="send_limit"):
        server_options(load_settings({}), send_limit=0)
