"""The console's Kafka admin calls: which groups exist, their members and committed offsets.

A thin asyncio shell over the repo's generated codec (streamhouse/kafka/framing.py): one short
connection per agent per look, requests answered in order. Groups are read the way Kafka admin
tools read them, so a cluster of agents is seen whole:

1. Metadata v1 (no topics) to the local agent: every live agent (broker) of the cluster.
2. ListGroups v4 to each agent: the groups it coordinates (each group on exactly one agent).
3. DescribeGroups v4 and OffsetFetch v7 (all topics) to that agent: state, members, and the
   group's committed offsets.

On a secured listener every connection first logs in as the console's own principal
(`KafkaSecurity`, from the console_* settings): TLS (SSL, SASL_SSL) verified against the
console's CA; SASL (SASL_PLAINTEXT, SASL_SSL) as Kafka clients do it, SaslHandshake v1 naming
the mechanism, then SaslAuthenticate v2 rounds: PLAIN in one (``\0user\0password``), SCRAM
in two (client-first, client-final; the server's signature is verified, streamhouse/scram.py).
A refused login is a `KafkaAdminError` that names the settings to give.

Only read requests are sent; nothing is joined, committed or changed. A failure is a
`KafkaAdminError` naming the agent and what to check: raised when the local agent does not
answer Metadata, and returned beside the groups of the others when one agent of a cluster
does not answer (its groups are missing until it does, or until it leaves the cluster).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass

from console.groups import GroupMember, GroupView, decode_assignment, group_lag
from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import (
    DescribeGroupsRequest,
    ListGroupsRequest,
    MetadataRequest,
    OffsetFetchRequest,
    RequestHeader,
    SaslAuthenticateRequest,
    SaslHandshakeRequest,
)
from streamhouse.kafka.primitives import DecodeError
from streamhouse.scram import ScramClient, ScramError

__all__ = ["KafkaAdminError", "KafkaSecurity", "list_group_views"]

CLIENT_ID = "streamhouse-console"
_SIZE = struct.Struct(">i")
_MAX_RESPONSE = 64 * 1024 * 1024


class KafkaAdminError(RuntimeError):
    pass


@dataclass(frozen=True)
class KafkaSecurity:
    """How the console logs in: the listener's protocol, the SASL mechanism and credentials,
    and the TLS context (None for PLAINTEXT / SASL_PLAINTEXT)."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-256"
    username: str = ""
    password: str = ""
    tls: ssl.SSLContext | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL")


_PLAINTEXT = KafkaSecurity()


class _Connection:
    """One connection to one agent's Kafka listener."""

    def __init__(
        self, address: str, timeout_s: float, security: KafkaSecurity = _PLAINTEXT
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.security = security
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._correlation = 0

    async def call(self, api_key: int, version: int, request: object) -> object:
        try:
            return await asyncio.wait_for(self._call(api_key, version, request), self.timeout_s)
        except KafkaAdminError:
            await self.close()
            raise
        except (OSError, TimeoutError, DecodeError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise KafkaAdminError(
                f"Kafka API {api_key} v{version} to {self.address} failed "
                f"({type(exc).__name__}: {exc}); is the stack's ingest up on that address?"
            ) from exc

    async def _call(self, api_key: int, version: int, request: object) -> object:
        if self._writer is None:
            await self._connect()
        return await self._exchange(api_key, version, request)

    async def _connect(self) -> None:
        host, _, port = self.address.rpartition(":")
        tls = self.security.tls
        self._reader, self._writer = await asyncio.open_connection(
            host.strip("[]"),
            int(port),
            ssl=tls,
            server_hostname=host.strip("[]") if tls is not None else None,
        )
        if self.security.sasl:
            await self._login()

    async def _login(self) -> None:
        security = self.security
        if not security.username:
            raise KafkaAdminError(
                f"the Kafka listener at {self.address} needs a SASL login: give the console "
                "one with STREAMHOUSE_CONSOLE_SASL_USERNAME and _PASSWORD (a user made by "
                "streamctl user add)"
            )
        shake = await self._exchange(17, 1, SaslHandshakeRequest(mechanism=security.mechanism))
        if shake.error_code:  # type: ignore[attr-defined]
            offered = ", ".join(shake.mechanisms)  # type: ignore[attr-defined]
            raise KafkaAdminError(
                f"the Kafka listener at {self.address} does not offer SASL "
                f"{security.mechanism} (it offers {offered}): set "
                "STREAMHOUSE_CONSOLE_SASL_MECHANISM to one of those"
            )
        if security.mechanism == "PLAIN":
            token = f"\0{security.username}\0{security.password}".encode()
            await self._authenticate(token)
            return
        scram = ScramClient(security.mechanism, security.username, security.password)
        try:
            server_first = await self._authenticate(scram.first())
            scram.verify(await self._authenticate(scram.final(server_first)))
        except ScramError as exc:
            raise KafkaAdminError(f"SCRAM with {self.address} failed: {exc}") from None

    async def _authenticate(self, auth_bytes: bytes) -> bytes:
        reply = await self._exchange(36, 2, SaslAuthenticateRequest(auth_bytes=auth_bytes))
        if reply.error_code:  # type: ignore[attr-defined]
            raise KafkaAdminError(
                f"the Kafka listener at {self.address} refused the console's SASL login as "
                f"{self.security.username!r}: {reply.error_message}; check "  # type: ignore[attr-defined]
                "STREAMHOUSE_CONSOLE_SASL_USERNAME, _PASSWORD and _MECHANISM"
            )
        return bytes(reply.auth_bytes)  # type: ignore[attr-defined]

    async def _exchange(self, api_key: int, version: int, request: object) -> object:
        assert self._reader is not None and self._writer is not None
        self._correlation += 1
        header = RequestHeader(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=self._correlation,
            client_id=CLIENT_ID,
        )
        self._writer.write(encode_request(header, request))
        await self._writer.drain()
        (size,) = _SIZE.unpack(await self._reader.readexactly(4))
        if not 0 <= size <= _MAX_RESPONSE:
            raise DecodeError(f"response frame of {size} bytes")
        _, body = decode_response(await self._reader.readexactly(size), api_key, version)
        return body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None


async def _brokers(local: _Connection) -> list[str]:
    body = await local.call(3, 1, MetadataRequest(topics=[]))
    addresses = sorted(f"{b.host}:{b.port}" for b in body.brokers)  # type: ignore[attr-defined]
    return addresses or [local.address]


async def _groups_of(
    conn: _Connection, high_watermarks: dict[tuple[str, int], int]
) -> list[GroupView]:
    listed = await conn.call(16, 4, ListGroupsRequest())
    if listed.error_code:  # type: ignore[attr-defined]
        raise KafkaAdminError(
            f"ListGroups on {conn.address} answered error {listed.error_code}"  # type: ignore[attr-defined]
        )
    ids = sorted(g.group_id for g in listed.groups)  # type: ignore[attr-defined]
    if not ids:
        return []
    described = await conn.call(15, 4, DescribeGroupsRequest(groups=ids))
    views = []
    for d in described.groups:  # type: ignore[attr-defined]
        fetched = await conn.call(9, 7, OffsetFetchRequest(group_id=d.group_id, topics=None))
        committed = {
            (t.name, p.partition_index): p.committed_offset
            for t in fetched.topics  # type: ignore[attr-defined]
            for p in t.partitions
            if p.error_code == 0 and p.committed_offset >= 0
        }
        members = []
        error = f"DescribeGroups error {d.error_code}" if d.error_code else ""
        for m in d.members:
            try:
                assignment = decode_assignment(m.member_assignment)
            except DecodeError as exc:
                assignment = {}
                error = f"member {m.member_id}: assignment not readable ({exc})"
            members.append(
                GroupMember(
                    member_id=m.member_id,
                    client_id=m.client_id,
                    client_host=m.client_host,
                    assignment=assignment if d.protocol_type == "consumer" else {},
                    instance_id=m.group_instance_id,
                )
            )
        views.append(
            GroupView(
                group_id=d.group_id,
                state=d.group_state,
                protocol_type=d.protocol_type,
                protocol=d.protocol_data,
                coordinator=conn.address,
                members=members,
                partitions=group_lag(
                    committed,
                    high_watermarks,
                    [(t, p) for m in members for t, parts in m.assignment.items() for p in parts],
                ),
                error=error,
            )
        )
    return views


async def list_group_views(
    bootstrap: str,
    high_watermarks: dict[tuple[str, int], int],
    timeout_s: float = 5.0,
    security: KafkaSecurity = _PLAINTEXT,
) -> tuple[list[GroupView], list[str]]:
    """Every consumer group of the cluster `bootstrap` (host:port of a Kafka listener) belongs
    to, with lag against `high_watermarks` ((topic, partition) -> high watermark), by id; and
    what went wrong with agents that did not answer. Every connection logs in per
    `security`."""
    local = _Connection(bootstrap, timeout_s, security)
    try:
        brokers = await _brokers(local)
    finally:
        await local.close()
    views: list[GroupView] = []
    problems: list[str] = []
    for address in brokers:
        conn = _Connection(address, timeout_s, security)
        try:
            views.extend(await _groups_of(conn, high_watermarks))
        except KafkaAdminError as exc:
            problems.append(f"the groups coordinated by {address} are missing: {exc}")
        finally:
            await conn.close()
    return sorted(views, key=lambda v: v.group_id), problems
