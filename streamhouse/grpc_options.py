"""The options every StreamHouse gRPC server is built with (ingest's `grpc_listen`, the sql
service's `sql_listen`): one place for the limits the README promises for both.

What each option does (grpc core channel arguments):

- `grpc.max_receive_message_length` = `grpc_message_limit`: a bigger request gets
  RESOURCE_EXHAUSTED. `grpc.max_send_message_length` = `send_limit` (the caller's): a bigger
  reply fails the call.
- `grpc.so_reuseport` = 0: a second server on a port in use fails to bind instead of sharing it.
- `grpc.max_allowed_incoming_connections` = `grpc_max_connections`: connections the server
  holds at once; one accepted over it is closed at once (its client gets UNAVAILABLE). grpc
  core counts a connection from its accept (connections still in the kernel's listen backlog
  are not counted yet) until its transport closes, whoever the client is: the stack's own
  console holds one of ingest's. A connection leaves the count when the server sees it closed
  or ends it itself: idle (`grpc.max_connection_idle_ms`), a keepalive ping unanswered, its
  HTTP/2 SETTINGS not read within the handshake timeout, or the server's SETTINGS not
  acknowledged within `grpc.http2.settings_timeout` (default: max(2 x keepalive timeout,
  1 min)). So a raw socket that only sent the HTTP/2 preface holds its place for a minute at
  most; tests hold connections with real channels (tests/integration/test_listener_limits.py).
- `grpc.max_concurrent_streams` = `grpc_max_concurrent_streams`: streams per HTTP/2
  connection (more wait in the client).
- `grpc.max_connection_idle_ms` = `grpc_idle_timeout_ms`: a connection without a call that
  long is sent GOAWAY.
- `grpc.server_handshake_timeout_ms` = `slow_client_timeout_ms`: a connection whose HTTP/2
  SETTINGS the server has not read that long after accepting it is dropped.
- `grpc.keepalive_time_ms` / `grpc.keepalive_timeout_ms` = 60 s / 20 s: the server pings a
  quiet connection and ends it when no answer comes within 20 s.
- `grpc.http2.min_ping_interval_without_data_ms` = 10 s with `grpc.http2.max_ping_strikes` = 2:
  a client pinging more often without data is sent GOAWAY (ping floods).
- `grpc.http2.bdp_probe` = 0 with `grpc.http2.lookahead_bytes` = 1 MiB: stream windows stay
  1 MiB instead of growing with the measured bandwidth-delay product, so what grpc core buffers
  for a stream whose requests wait is bounded (BDP probing grew it to tens of MiB under load).
"""

from __future__ import annotations

from streamhouse.config import Settings

GrpcOptions = list[tuple[str, int]]


def server_options(settings: Settings, *, send_limit: int) -> GrpcOptions:
    """The channel arguments of a StreamHouse gRPC server (table in the module docstring);
    `send_limit` is the largest reply message in bytes."""
    if send_limit <= 0:
        raise ValueError(f"send_limit must be a positive number of bytes, not {send_limit}")
    return [
        ("grpc.max_receive_message_length", settings.grpc_message_limit),
        ("grpc.max_send_message_length", send_limit),
        ("grpc.so_reuseport", 0),
        ("grpc.max_allowed_incoming_connections", settings.grpc_max_connections),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.max_connection_idle_ms", settings.grpc_idle_timeout_ms),
        ("grpc.server_handshake_timeout_ms", settings.slow_client_timeout_ms),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 1024 * 1024),
    ]
