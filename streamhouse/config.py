"""StreamHouse settings: one typed object read from `STREAMHOUSE_*` variables and a TOML file.

Precedence, lowest first: the defaults below, the TOML file named by `STREAMHOUSE_CONFIG`
(keys are the field names, e.g. `flush_interval_ms = 50`), then `STREAMHOUSE_<FIELD>`
environment variables (e.g. `STREAMHOUSE_FLUSH_INTERVAL_MS=50`). Every field is documented in
the README's settings table; keep the two in step.
"""

from __future__ import annotations

import os
import pathlib
import re
import tomllib
from typing import Any

import msgspec
import xxhash

MiB = 1024 * 1024


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names it."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every tunable of a StreamHouse stack, with defaults that suit a 2-core, 24 GiB machine."""

    data_dir: str = "./data"
    grpc_listen: str = "127.0.0.1:50051"
    kafka_listen: str = "127.0.0.1:9092"
    # file:///abs/path, s3://bucket[/prefix], memory:// ; empty means <data_dir>/objects
    object_store: str = ""
    # Metadata store: empty means the SQLite file <data_dir>/metadata.sqlite (one agent); a
    # postgresql://user@host:port/db URL is the shared metadata of a cluster of agents.
    metadata: str = ""
    flush_interval_ms: int = 50
    max_segment_bytes: int = 8 * MiB
    # Group commit (segmenter/policy.py): a segment is sealed before flush_interval_ms when
    # the uploader is idle and the buffer holds the cost rule's minimum object: up to
    # seal_target_bytes, less in proportion below seal_cost_rate_bytes_per_second of produce.
    seal_target_bytes: int = 2 * MiB
    seal_cost_rate_bytes_per_second: int = 10_000_000
    # ... and "idle" means fewer than this many of its segments are still uploading.
    seal_uploads_in_flight: int = 1
    # ... and early seals smaller than seal_target_bytes come at most this often (the PUT
    # budget of a trickle: 50/s is about $650 a month at S3 list prices).
    seal_max_puts_per_second: int = 50
    # Rings (shared memory); each frame must fit in half a ring.
    produce_ring_bytes: int = 64 * MiB
    sealed_ring_bytes: int = 64 * MiB
    ack_ring_bytes: int = 8 * MiB
    committed_ring_bytes: int = 64 * MiB
    fetch_request_ring_bytes: int = 4 * MiB
    fetch_response_ring_bytes: int = 64 * MiB
    # Reader memory cache of decoded blocks.
    cache_bytes: int = 512 * MiB
    prefetch_blocks: int = 2
    # Largest range GET of a cold read, which caches every block of the object it covers
    # (reader/readplan.py); 0 reads each cold block alone. At most a quarter of cache_bytes.
    read_window_bytes: int = 16 * MiB
    # Limits at the edge.
    max_record_bytes: int = 1 * MiB
    max_batch_bytes: int = 16 * MiB
    max_fetch_bytes: int = 8 * MiB
    default_partitions: int = 1
    # Uploads.
    upload_concurrency: int = 4
    upload_attempts: int = 8
    store_timeout_ms: int = 30_000
    # How long a produce waits for its durable commit before failing with UNAVAILABLE.
    produce_timeout_ms: int = 30_000
    # Kafka listener.
    # host:port clients are told to connect to; empty means kafka_listen.
    kafka_advertised: str = ""
    # gRPC host:port other agents and `streamctl cluster` show for this agent; empty means
    # grpc_listen.
    grpc_advertised: str = ""
    # Agents (ingest/cluster.py): this agent's stable name in the cluster (empty means its
    # Kafka advertised host:port), its zone ("" = none), how often it renews its lease in
    # metadata and how long a lease lasts (an agent silent that long is dead to the others).
    agent_id: str = ""
    agent_zone: str = ""
    agent_heartbeat_ms: int = 1000
    agent_lease_ms: int = 4000
    kafka_auto_create_topics: bool = True
    # Like Kafka's group.initial.rebalance.delay.ms.
    group_initial_rebalance_delay_ms: int = 3000
    group_min_session_timeout_ms: int = 6000
    group_max_session_timeout_ms: int = 1_800_000
    # Transactions: the largest transaction.timeout.ms a producer may ask for (Kafka's
    # transaction.max.timeout.ms), and how often the coordinator completes interrupted
    # transactions and aborts timed-out ones; an idle transactional id unused this long is
    # forgotten (Kafka's transactional.id.expiration.ms).
    transaction_max_timeout_ms: int = 900_000
    transaction_check_interval_ms: int = 1000
    transactional_id_expiration_ms: int = 604_800_000
    # Largest Kafka request frame accepted (Kafka's socket.request.max.bytes).
    kafka_max_request_bytes: int = 100 * MiB
    # Listener limits: beyond each one a client gets an error or back-pressure (README).
    kafka_max_connections: int = 1024
    kafka_max_non_produce_request_bytes: int = 1 * MiB
    kafka_max_queued_request_bytes: int = 256 * MiB
    kafka_max_in_flight_requests: int = 64
    kafka_max_in_flight_bytes: int = 16 * MiB
    kafka_send_buffer_bytes: int = 1 * MiB
    kafka_idle_timeout_ms: int = 600_000
    slow_client_timeout_ms: int = 30_000
    max_partitions_per_request: int = 2000
    # Batches one request may write to one partition (Kafka clients send one); more get
    # RECORD_LIST_TOO_LARGE up front, so every ring frame they make fits by construction.
    max_batches_per_partition: int = 1000
    grpc_max_message_bytes: int = 0  # 0: max(max_batch_bytes, max_fetch_bytes) + 4 MiB
    grpc_max_connections: int = 1024
    grpc_max_concurrent_streams: int = 100
    grpc_max_concurrent_rpcs: int = 1000
    grpc_stream_max_in_flight: int = 32
    grpc_idle_timeout_ms: int = 600_000
    reader_max_fetches: int = 256
    reader_max_waiting_fetches: int = 192
    reader_max_wait_ms: int = 60_000
    # The reader caches a committed segment's block only for a partition fetched within this
    # long (a consumer at or near its tail); others are read from the object store when asked
    # for. 0: cache every committed block.
    reader_tail_interest_ms: int = 60_000
    # Data lifecycle (lifecycle/): how often a pass runs; how long a dead segment's object and
    # an unknown object are kept before deletion (longer than any produce or read in flight);
    # the object-store budget it may take from produce/consume (concurrent delete requests,
    # objects deleted per second); whether the process does anything at all.
    lifecycle_interval_ms: int = 30_000
    lifecycle_grace_ms: int = 600_000
    lifecycle_delete_concurrency: int = 4
    lifecycle_deletes_per_second: int = 200
    lifecycle_enabled: bool = True
    # Rewrites (lifecycle/, one agent of a cluster at a time): objects under
    # lifecycle_small_object_bytes and older than lifecycle_compaction_min_age_ms are merged
    # into objects of about lifecycle_target_object_bytes; an object whose live bytes are
    # under lifecycle_min_live_percent of its size is rewritten; key compaction keeps at most
    # lifecycle_key_map_bytes of key hashes in memory per pass. Rewrites read and write at
    # most lifecycle_rewrite_bytes_per_second with lifecycle_upload_concurrency PUTs at once.
    lifecycle_compaction_enabled: bool = True
    lifecycle_small_object_bytes: int = 8 * 1024 * 1024
    lifecycle_target_object_bytes: int = 64 * 1024 * 1024
    lifecycle_compaction_min_age_ms: int = 60_000
    lifecycle_min_live_percent: int = 50
    lifecycle_rewrite_bytes_per_second: int = 64 * 1024 * 1024
    lifecycle_upload_concurrency: int = 2
    lifecycle_key_map_bytes: int = 64 * 1024 * 1024
    # Expiry of idle state, as Kafka's broker settings of the same names: a producer id's
    # idempotence state after producer.id.expiration.ms without a write; an empty group's
    # committed offsets after offsets.retention.minutes without a commit.
    producer_id_expiration_ms: int = 86_400_000
    offsets_retention_minutes: int = 10_080
    # Streaming SQL (sql/): the sql process's gRPC listener (ad-hoc queries as Arrow IPC,
    # continuous-query management); whether it runs continuous queries at all; how often a
    # continuous query commits its output together with its checkpoint (results become
    # visible then: the exactly-once latency); most input bytes a query decodes per step;
    # how long a failed query runner waits before its restart (doubling up to 30 s).
    sql_listen: str = "127.0.0.1:50053"
    sql_enabled: bool = True
    sql_checkpoint_interval_ms: int = 1_000
    sql_max_step_bytes: int = 16 * 1024 * 1024
    sql_restart_backoff_ms: int = 500
    log_level: str = "INFO"
    # Operations: the stack's one Prometheus scrape address (every process's metrics, served
    # by ingest); log lines as text or JSON lines (one object per event).
    metrics_listen: str = "127.0.0.1:9464"
    metrics_enabled: bool = True
    log_format: str = "text"
    # How often ingest samples consumer group lag (and, every 12th time, what the object
    # store holds) from metadata for the metrics endpoint (ingest/sampler.py).
    metrics_sample_interval_ms: int = 5_000
    # The web console (console/): where it serves (HTTP, 127.0.0.1 only by default) and how
    # often it samples offsets, produced bytes and group lag for its rates and charts.
    console_listen: str = "127.0.0.1:8080"
    console_sample_ms: int = 5_000
    # The console's own credentials on a secured stack (README "Security"; console/sources.py):
    # its gRPC token (for the gRPC API and the sql service, grpc_auth=token), the CA it
    # verifies TLS listeners against (empty: tls_ca_file, else tls_cert_file), its client
    # certificate and key (grpc_auth=mtls), and its SASL login on the Kafka listener. Its
    # pages ask for HTTP Basic credentials when console_http_password is set.
    console_token: str = ""
    console_tls_ca_file: str = ""
    console_tls_cert_file: str = ""
    console_tls_key_file: str = ""
    console_sasl_mechanism: str = "SCRAM-SHA-256"
    console_sasl_username: str = ""
    console_sasl_password: str = ""
    console_http_user: str = "admin"
    console_http_password: str = ""
    # Debugging: every metadata call made on an event loop raises (the test stacks turn it on).
    debug_loop_calls: bool = False
    # Authentication and TLS (README "Security"; streamhouse/tls.py, ingest/kafka/sasl.py,
    # ingest/grpc_auth.py). The Kafka listener's protocol: PLAINTEXT | SSL | SASL_PLAINTEXT |
    # SASL_SSL; the SASL mechanisms it offers (comma list of PLAIN, SCRAM-SHA-256,
    # SCRAM-SHA-512; PLAIN checks the password against the stored SCRAM credentials); the PEM
    # certificate chain and key of both listeners' TLS; the CA bundle client certificates are
    # verified against; whether the Kafka SSL listener asks for client certificates (none |
    # requested | required); TLS on the gRPC listener; gRPC authentication (none | token |
    # mtls, mtls implies grpc_tls and requires a client certificate signed by tls_ca_file).
    kafka_security_protocol: str = "PLAINTEXT"
    sasl_mechanisms: str = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    kafka_ssl_client_auth: str = "none"
    grpc_tls: bool = False
    grpc_auth: str = "none"
    # Authorisation (README "Security"; streamhouse/acl.py, ingest/authorizer.py): "acl"
    # checks every Kafka and gRPC request against the ACLs stored in metadata ("none": every
    # caller may do everything, as before); the principals that may do everything (Kafka's
    # super.users: "User:admin;User:ops"); whether what no ACL mentions is allowed to all.
    authorizer: str = "none"
    super_users: str = ""
    allow_everyone_if_no_acl_found: bool = False

    @property
    def data_path(self) -> pathlib.Path:
        return pathlib.Path(self.data_dir).resolve()

    @property
    def run_dir(self) -> pathlib.Path:
        return self.data_path / "run"

    @property
    def log_dir(self) -> pathlib.Path:
        return self.data_path / "logs"

    @property
    def metadata_path(self) -> pathlib.Path:
        return self.data_path / "metadata.sqlite"

    @property
    def metadata_target(self) -> str | pathlib.Path:
        """What `metadata.open_store` opens: the PostgreSQL URL, or the SQLite file's path."""
        return self.metadata or self.metadata_path

    @property
    def object_store_url(self) -> str:
        if self.object_store:
            return self.object_store
        return (self.data_path / "objects").as_uri()

    @property
    def kafka_advertised_address(self) -> tuple[str, int]:
        host, _, port = (self.kafka_advertised or self.kafka_listen).rpartition(":")
        return host, int(port)

    @property
    def grpc_advertised_address(self) -> str:
        """host:port this agent's gRPC service is reached at (grpc_advertised or grpc_listen)."""
        return self.grpc_advertised or self.grpc_listen

    @property
    def agent_name(self) -> str:
        """This agent's id in the cluster: agent_id, or else its Kafka advertised host:port."""
        if self.agent_id:
            return self.agent_id
        host, port = self.kafka_advertised_address
        return f"{host}:{port}"

    @property
    def grpc_message_limit(self) -> int:
        """Largest gRPC message received or sent (grpc_max_message_bytes, or derived)."""
        if self.grpc_max_message_bytes:
            return self.grpc_max_message_bytes
        return max(self.max_batch_bytes, self.max_fetch_bytes) + 4 * MiB

    @property
    def stack_id(self) -> str:
        """Short id unique to this data dir, so stacks side by side never share a ring."""
        return xxhash.xxh64_hexdigest(str(self.data_path).encode())[:10]


# Agent ids and zones: what a client.id token, a log line and a table cell carry unharmed.
_AGENT_ID = re.compile(r"[A-Za-z0-9._:\[\]\-]{1,200}")
_ZONE = re.compile(r"[A-Za-z0-9._\-]{1,64}")

_FIELDS = {f.name: f for f in msgspec.structs.fields(Settings)}


def _coerce(name: str, raw: str) -> Any:
    kind = _FIELDS[name].type
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"STREAMHOUSE_{name.upper()}={raw!r} is not a boolean (true/false)")
    if kind is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"STREAMHOUSE_{name.upper()}={raw!r} is not an integer") from None
    return raw


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Builds Settings from the optional TOML file and the environment; raises ConfigError."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    toml_path = env.get("STREAMHOUSE_CONFIG")
    if toml_path:
        try:
            with open(toml_path, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read STREAMHOUSE_CONFIG file {toml_path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"STREAMHOUSE_CONFIG file {toml_path} is not TOML: {exc}") from None
        for key, value in doc.items():
            if key not in _FIELDS:
                raise ConfigError(f"unknown setting {key!r} in {toml_path}")
            values[key] = value
    for name in _FIELDS:
        raw = env.get(f"STREAMHOUSE_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw)
    try:
        settings = msgspec.convert(values, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    positive = [
        "flush_interval_ms",
        "max_segment_bytes",
        "seal_target_bytes",
        "seal_cost_rate_bytes_per_second",
        "seal_uploads_in_flight",
        "seal_max_puts_per_second",
        "cache_bytes",
        "max_record_bytes",
        "max_batch_bytes",
        "max_fetch_bytes",
        "default_partitions",
        "upload_concurrency",
        "upload_attempts",
        "store_timeout_ms",
        "produce_timeout_ms",
        "metrics_sample_interval_ms",
        "group_min_session_timeout_ms",
        "group_max_session_timeout_ms",
        "transaction_max_timeout_ms",
        "transaction_check_interval_ms",
        "transactional_id_expiration_ms",
        "kafka_max_request_bytes",
        "kafka_max_connections",
        "kafka_max_non_produce_request_bytes",
        "kafka_max_queued_request_bytes",
        "kafka_max_in_flight_requests",
        "kafka_max_in_flight_bytes",
        "kafka_send_buffer_bytes",
        "kafka_idle_timeout_ms",
        "slow_client_timeout_ms",
        "max_partitions_per_request",
        "max_batches_per_partition",
        "grpc_max_connections",
        "grpc_max_concurrent_streams",
        "grpc_max_concurrent_rpcs",
        "grpc_stream_max_in_flight",
        "grpc_idle_timeout_ms",
        "reader_max_fetches",
        "reader_max_wait_ms",
        "agent_heartbeat_ms",
        "agent_lease_ms",
        "lifecycle_interval_ms",
        "lifecycle_grace_ms",
        "lifecycle_delete_concurrency",
        "lifecycle_deletes_per_second",
        "lifecycle_small_object_bytes",
        "lifecycle_target_object_bytes",
        "lifecycle_compaction_min_age_ms",
        "lifecycle_rewrite_bytes_per_second",
        "lifecycle_upload_concurrency",
        "lifecycle_key_map_bytes",
        "producer_id_expiration_ms",
        "offsets_retention_minutes",
        "sql_checkpoint_interval_ms",
        "sql_max_step_bytes",
        "sql_restart_backoff_ms",
        "console_sample_ms",
    ]
    for name in positive:
        if getattr(s, name) <= 0:
            raise ConfigError(f"STREAMHOUSE_{name.upper()} must be positive")
    listens = ["grpc_listen", "kafka_listen", "sql_listen", "metrics_listen", "console_listen"]
    listens += [name for name in ("kafka_advertised", "grpc_advertised") if getattr(s, name)]
    for listen in listens:
        host, _, port = getattr(s, listen).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"STREAMHOUSE_{listen.upper()}={getattr(s, listen)!r} must be HOST:PORT "
                "with a port from 1 to 65535"
            )
    if s.agent_lease_ms > 86_400_000:  # metadata.store.MAX_LEASE_MS
        raise ConfigError(
            f"STREAMHOUSE_AGENT_LEASE_MS={s.agent_lease_ms} is over a day (86400000): a dead "
            "agent would keep its partitions that long"
        )
    if s.agent_lease_ms <= 2 * s.agent_heartbeat_ms:
        raise ConfigError(
            f"STREAMHOUSE_AGENT_LEASE_MS={s.agent_lease_ms} must exceed twice "
            f"STREAMHOUSE_AGENT_HEARTBEAT_MS={s.agent_heartbeat_ms}, so one late heartbeat "
            "does not make a live agent look dead"
        )
    if not _AGENT_ID.fullmatch(s.agent_name):
        raise ConfigError(
            f"STREAMHOUSE_AGENT_ID={s.agent_name!r}: use 1 to 200 characters from letters, "
            "digits and . _ - : [ ] (defaults to the Kafka advertised host:port)"
        )
    if s.agent_zone and not _ZONE.fullmatch(s.agent_zone):
        raise ConfigError(
            f"STREAMHOUSE_AGENT_ZONE={s.agent_zone!r}: use 1 to 64 characters from letters, "
            "digits and . _ - (or leave it empty for no zone)"
        )
    longest_in_flight = max(s.produce_timeout_ms, s.reader_max_wait_ms, s.store_timeout_ms)
    if s.lifecycle_grace_ms <= longest_in_flight:
        raise ConfigError(
            f"STREAMHOUSE_LIFECYCLE_GRACE_MS={s.lifecycle_grace_ms} must exceed "
            f"PRODUCE_TIMEOUT_MS, READER_MAX_WAIT_MS and STORE_TIMEOUT_MS (largest "
            f"{longest_in_flight}): a read or upload in flight must still find its object"
        )
    if not 0 <= s.lifecycle_min_live_percent <= 100:
        raise ConfigError(
            f"STREAMHOUSE_LIFECYCLE_MIN_LIVE_PERCENT={s.lifecycle_min_live_percent} must be "
            "0..100 (0: never rewrite an object for its dead bytes)"
        )
    if s.lifecycle_small_object_bytes > s.lifecycle_target_object_bytes:
        raise ConfigError(
            f"STREAMHOUSE_LIFECYCLE_SMALL_OBJECT_BYTES={s.lifecycle_small_object_bytes} must "
            f"not exceed LIFECYCLE_TARGET_OBJECT_BYTES={s.lifecycle_target_object_bytes}"
        )
    if s.seal_uploads_in_flight > s.upload_concurrency:
        raise ConfigError(
            f"STREAMHOUSE_SEAL_UPLOADS_IN_FLIGHT={s.seal_uploads_in_flight} must not exceed "
            f"UPLOAD_CONCURRENCY={s.upload_concurrency} (the uploads the uploader runs at once)"
        )
    if s.max_batch_bytes * 2 > s.produce_ring_bytes:
        raise ConfigError("STREAMHOUSE_PRODUCE_RING_BYTES must be at least twice MAX_BATCH_BYTES")
    if s.max_segment_bytes * 2 > min(s.sealed_ring_bytes, s.committed_ring_bytes):
        raise ConfigError(
            "STREAMHOUSE_SEALED_RING_BYTES and COMMITTED_RING_BYTES must be at least twice "
            "MAX_SEGMENT_BYTES"
        )
    if s.max_fetch_bytes * 2 > s.fetch_response_ring_bytes:
        raise ConfigError(
            "STREAMHOUSE_FETCH_RESPONSE_RING_BYTES must be at least twice MAX_FETCH_BYTES"
        )
    for ring in ("ack_ring_bytes", "fetch_request_ring_bytes"):
        # An ack or fetch request of one partition, with its error message, must fit a frame.
        if getattr(s, ring) < 64 * 1024:
            raise ConfigError(f"STREAMHOUSE_{ring.upper()} must be at least 65536 (64 KiB)")
    if s.read_window_bytes < 0:
        raise ConfigError("STREAMHOUSE_READ_WINDOW_BYTES must be >= 0 (0: cold blocks alone)")
    if s.reader_tail_interest_ms < 0:
        raise ConfigError(
            "STREAMHOUSE_READER_TAIL_INTEREST_MS must be >= 0 (0: cache every committed block)"
        )
    if s.grpc_max_message_bytes < 0:
        raise ConfigError("STREAMHOUSE_GRPC_MAX_MESSAGE_BYTES must be >= 0 (0: derived)")
    if not 0 <= s.reader_max_waiting_fetches < s.reader_max_fetches:
        raise ConfigError(
            "STREAMHOUSE_READER_MAX_WAITING_FETCHES must be >= 0 and below "
            "READER_MAX_FETCHES, so that fetches with data are never stuck behind long polls"
        )
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("STREAMHOUSE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
    if s.log_format not in ("text", "json"):
        raise ConfigError(f"STREAMHOUSE_LOG_FORMAT={s.log_format!r}: use text or json")
    if s.metadata and not s.metadata.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"STREAMHOUSE_METADATA={s.metadata!r}: use postgresql://user@host:port/dbname "
            "(or leave it empty for the SQLite file in the data dir)"
        )
    _validate_security(s)
    _validate_authorizer(s)
    scheme = s.object_store_url.split("://", 1)[0]
    if scheme not in ("file", "s3", "memory"):
        raise ConfigError(
            f"STREAMHOUSE_OBJECT_STORE={s.object_store!r}: use file:///path, s3://bucket or memory://"
        )


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _validate_security(s: Settings) -> None:
    """The authentication and TLS settings (files are read, and checked, when listening)."""
    if s.kafka_security_protocol not in KAFKA_SECURITY_PROTOCOLS:
        raise ConfigError(
            f"STREAMHOUSE_KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol!r}: use one of "
            + ", ".join(KAFKA_SECURITY_PROTOCOLS)
        )
    mechanisms = [m.strip() for m in s.sasl_mechanisms.split(",") if m.strip()]
    unknown = [m for m in mechanisms if m not in SASL_MECHANISMS]
    if unknown or (not mechanisms and s.kafka_security_protocol.startswith("SASL")):
        raise ConfigError(
            f"STREAMHOUSE_SASL_MECHANISMS={s.sasl_mechanisms!r}: give a comma list of "
            + ", ".join(SASL_MECHANISMS)
        )
    if s.kafka_ssl_client_auth not in ("none", "requested", "required"):
        raise ConfigError(
            f"STREAMHOUSE_KAFKA_SSL_CLIENT_AUTH={s.kafka_ssl_client_auth!r}: use none, "
            "requested or required"
        )
    if s.console_sasl_mechanism not in SASL_MECHANISMS:
        raise ConfigError(
            f"STREAMHOUSE_CONSOLE_SASL_MECHANISM={s.console_sasl_mechanism!r}: use one of "
            + ", ".join(SASL_MECHANISMS)
        )
    if bool(s.console_tls_cert_file) != bool(s.console_tls_key_file):
        raise ConfigError(
            "STREAMHOUSE_CONSOLE_TLS_CERT_FILE and STREAMHOUSE_CONSOLE_TLS_KEY_FILE go together "
            "(the console's client certificate and its key): set both or neither"
        )
    if s.console_http_password and not s.console_http_user:
        raise ConfigError(
            "STREAMHOUSE_CONSOLE_HTTP_PASSWORD needs STREAMHOUSE_CONSOLE_HTTP_USER (the user "
            "name the browser sends)"
        )
    if s.grpc_auth not in ("none", "token", "mtls"):
        raise ConfigError(f"STREAMHOUSE_GRPC_AUTH={s.grpc_auth!r}: use none, token or mtls")
    needs_tls = []
    if s.kafka_security_protocol in ("SSL", "SASL_SSL"):
        needs_tls.append(f"KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol}")
    if s.grpc_tls or s.grpc_auth == "mtls":
        needs_tls.append("GRPC_TLS" if s.grpc_tls else "GRPC_AUTH=mtls")
    if needs_tls and not (s.tls_cert_file and s.tls_key_file):
        raise ConfigError(
            f"STREAMHOUSE_{needs_tls[0]} needs STREAMHOUSE_TLS_CERT_FILE and "
            "STREAMHOUSE_TLS_KEY_FILE (PEM certificate chain and private key)"
        )
    wants_ca = s.grpc_auth == "mtls" or (
        s.kafka_ssl_client_auth != "none" and s.kafka_security_protocol in ("SSL", "SASL_SSL")
    )
    if wants_ca and not s.tls_ca_file:
        raise ConfigError(
            "client certificates (STREAMHOUSE_GRPC_AUTH=mtls or KAFKA_SSL_CLIENT_AUTH) are "
            "verified against STREAMHOUSE_TLS_CA_FILE: set it to the CA bundle (PEM)"
        )


def _validate_authorizer(s: Settings) -> None:
    """The authorisation settings: a known authorizer, well-formed super users."""
    from streamhouse.acl import parse_super_users

    if s.authorizer not in ("none", "acl"):
        raise ConfigError(f"STREAMHOUSE_AUTHORIZER={s.authorizer!r}: use none or acl")
    try:
        parse_super_users(s.super_users)
    except ValueError as exc:
        raise ConfigError(f"STREAMHOUSE_SUPER_USERS={s.super_users!r}: {exc}") from None
    if s.authorizer == "none" and (s.super_users or s.allow_everyone_if_no_acl_found):
        raise ConfigError(
            "STREAMHOUSE_SUPER_USERS and STREAMHOUSE_ALLOW_EVERYONE_IF_NO_ACL_FOUND take effect "
            "only with STREAMHOUSE_AUTHORIZER=acl: set it (or unset them)"
        )
