"""Settings: defaults, STREAMHOUSE_* variables, the TOML file, precedence and validation."""

from __future__ import annotations

import pathlib

import msgspec
import pytest

from streamhouse.config import ConfigError, MiB, Settings, load_settings


def write_toml(tmp_path: pathlib.Path, text: str) -> dict[str, str]:
    """Writes a TOML file and returns an environ pointing STREAMHOUSE_CONFIG at it."""
    path = tmp_path / "streamhouse.toml"
    path.write_text(text)
    return {"STREAMHOUSE_CONFIG": str(path)}


def test_defaults_with_an_empty_environment() -> None:
    """No variables and no file give the documented defaults."""
    s = load_settings({})
    assert s == Settings()
    assert s.data_dir == "./data"
    assert s.grpc_listen == "127.0.0.1:50051"
    assert s.kafka_listen == "127.0.0.1:9092"
    assert s.object_store == ""
    assert s.flush_interval_ms == 50
    assert s.max_segment_bytes == 8 * MiB
    assert s.cache_bytes == 512 * MiB
    assert s.max_record_bytes == 1 * MiB
    assert s.max_batch_bytes == 16 * MiB
    assert s.log_level == "INFO"


def test_default_object_store_is_the_data_dir_objects_folder(tmp_path: pathlib.Path) -> None:
    """An empty object_store means <data_dir>/objects as a file:// URL; paths derive from it."""
    s = load_settings({"STREAMHOUSE_DATA_DIR": str(tmp_path / "d")})
    assert s.data_path == (tmp_path / "d").resolve()
    assert s.object_store_url == (tmp_path / "d" / "objects").resolve().as_uri()
    assert s.metadata_path == s.data_path / "metadata.sqlite"
    assert s.run_dir == s.data_path / "run"
    assert s.log_dir == s.data_path / "logs"


def test_stack_id_depends_on_the_data_dir(tmp_path: pathlib.Path) -> None:
    """Two data dirs get different stack ids; the same dir gets the same one."""
    a = load_settings({"STREAMHOUSE_DATA_DIR": str(tmp_path / "a")})
    a2 = load_settings({"STREAMHOUSE_DATA_DIR": str(tmp_path / "a")})
    b = load_settings({"STREAMHOUSE_DATA_DIR": str(tmp_path / "b")})
    assert a.stack_id == a2.stack_id != b.stack_id
    assert len(a.stack_id) == 10


def test_environment_overrides_defaults() -> None:
    """STREAMHOUSE_<FIELD> sets the field, ints parsed (underscores allowed)."""
    s = load_settings(
        {
            "STREAMHOUSE_FLUSH_INTERVAL_MS": "7",
            "STREAMHOUSE_CACHE_BYTES": "1_000_000",
            "STREAMHOUSE_GRPC_LISTEN": "0.0.0.0:6000",
            "STREAMHOUSE_OBJECT_STORE": "memory://",
            "STREAMHOUSE_LOG_LEVEL": "DEBUG",
            "STREAMHOUSE_PREFETCH_BLOCKS": "0",
        }
    )
    assert s.flush_interval_ms == 7
    assert s.cache_bytes == 1_000_000
    assert s.grpc_listen == "0.0.0.0:6000"
    assert s.object_store_url == "memory://"
    assert s.log_level == "DEBUG"
    assert s.prefetch_blocks == 0


def test_empty_variable_is_ignored() -> None:
    """An empty STREAMHOUSE_* variable leaves the default in place."""
    s = load_settings({"STREAMHOUSE_FLUSH_INTERVAL_MS": "", "STREAMHOUSE_LOG_LEVEL": ""})
    assert s.flush_interval_ms == 50
    assert s.log_level == "INFO"


def test_unrelated_variables_are_ignored() -> None:
    """Variables without the prefix do not change settings."""
    assert load_settings({"FLUSH_INTERVAL_MS": "1", "HOME": "/root"}) == Settings()


def test_toml_file_sets_fields(tmp_path: pathlib.Path) -> None:
    """Keys of the STREAMHOUSE_CONFIG file are field names."""
    env = write_toml(
        tmp_path,
        'flush_interval_ms = 20\nmax_segment_bytes = 1_048_576\nlog_level = "WARNING"\n'
        'object_store = "memory://"\n',
    )
    s = load_settings(env)
    assert s.flush_interval_ms == 20
    assert s.max_segment_bytes == MiB
    assert s.log_level == "WARNING"
    assert s.object_store == "memory://"
    assert s.cache_bytes == 512 * MiB  # untouched default


def test_environment_beats_toml_beats_defaults(tmp_path: pathlib.Path) -> None:
    """Precedence, lowest first: defaults, TOML, environment."""
    env = write_toml(tmp_path, "flush_interval_ms = 20\nupload_attempts = 3\n")
    env["STREAMHOUSE_FLUSH_INTERVAL_MS"] = "99"
    s = load_settings(env)
    assert s.flush_interval_ms == 99  # env over TOML
    assert s.upload_attempts == 3  # TOML over default
    assert s.upload_concurrency == 4  # default


def test_empty_variable_does_not_hide_toml_value(tmp_path: pathlib.Path) -> None:
    """An empty variable does not reset a TOML value to the default."""
    env = write_toml(tmp_path, "flush_interval_ms = 20\n")
    env["STREAMHOUSE_FLUSH_INTERVAL_MS"] = ""
    assert load_settings(env).flush_interval_ms == 20


@pytest.mark.parametrize("raw", ["abc", "1.5", "10ms", "0x10", " "])
def test_bad_int_variable_names_the_variable(raw: str) -> None:
    """A non-integer value for an int field is a ConfigError naming the variable and value."""
    with pytest.raises(ConfigError) as exc:
        load_settings({"STREAMHOUSE_MAX_SEGMENT_BYTES": raw})
    assert "STREAMHOUSE_MAX_SEGMENT_BYTES" in str(exc.value)
    assert repr(raw) in str(exc.value)


def test_unknown_toml_key_is_refused(tmp_path: pathlib.Path) -> None:
    """A typo in the TOML file is an error naming the key and the file."""
    env = write_toml(tmp_path, "flush_interval = 20\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(env)
    assert "'flush_interval'" in str(exc.value)
    assert env["STREAMHOUSE_CONFIG"] in str(exc.value)


def test_wrong_toml_type_names_the_setting(tmp_path: pathlib.Path) -> None:
    """A string where an int belongs (or the reverse) names the field."""
    env = write_toml(tmp_path, 'cache_bytes = "lots"\n')
    with pytest.raises(ConfigError, match="cache_bytes"):
        load_settings(env)
    env = write_toml(tmp_path, "log_level = 3\n")
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(env)


def test_missing_toml_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    """A STREAMHOUSE_CONFIG that cannot be read names the file."""
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="nope.toml"):
        load_settings({"STREAMHOUSE_CONFIG": missing})


def test_malformed_toml_is_a_config_error(tmp_path: pathlib.Path) -> None:
    """A file that is not TOML is a ConfigError saying so."""
    env = write_toml(tmp_path, "flush_interval_ms = = 3\n")
    with pytest.raises(ConfigError, match="not TOML"):
        load_settings(env)


@pytest.mark.parametrize(
    "name",
    [
        "flush_interval_ms",
        "max_segment_bytes",
        "cache_bytes",
        "max_record_bytes",
        "max_batch_bytes",
        "max_fetch_bytes",
        "default_partitions",
        "upload_concurrency",
        "upload_attempts",
        "store_timeout_ms",
        "produce_timeout_ms",
    ],
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_values_are_refused(name: str, value: str) -> None:
    """Sizes, counts and timeouts must be positive; the error names the variable."""
    var = f"STREAMHOUSE_{name.upper()}"
    with pytest.raises(ConfigError, match=var):
        load_settings({var: value})


@pytest.mark.parametrize("listen", ["50051", "localhost", ":50051", "host:", "host:port"])
@pytest.mark.parametrize("name", ["grpc_listen", "kafka_listen"])
def test_listen_addresses_need_host_and_port(name: str, listen: str) -> None:
    """Listen addresses are HOST:PORT with a numeric port."""
    var = f"STREAMHOUSE_{name.upper()}"
    with pytest.raises(ConfigError, match=var):
        load_settings({var: listen})


def test_ipv6_listen_address_is_accepted() -> None:
    """The port is split off the last colon, so [::1]:PORT works."""
    assert load_settings({"STREAMHOUSE_KAFKA_LISTEN": "[::1]:9093"}).kafka_listen == "[::1]:9093"


def test_produce_ring_must_hold_two_batches() -> None:
    """The produce ring must be at least twice max_batch_bytes."""
    with pytest.raises(ConfigError, match="STREAMHOUSE_PRODUCE_RING_BYTES"):
        load_settings({"STREAMHOUSE_MAX_BATCH_BYTES": str(33 * MiB)})
    assert load_settings({"STREAMHOUSE_MAX_BATCH_BYTES": str(32 * MiB)}).max_batch_bytes == (
        32 * MiB
    )
    with pytest.raises(ConfigError, match="STREAMHOUSE_PRODUCE_RING_BYTES"):
        load_settings({"STREAMHOUSE_PRODUCE_RING_BYTES": str(32 * MiB - 1)})


@pytest.mark.parametrize("ring", ["SEALED_RING_BYTES", "COMMITTED_RING_BYTES"])
def test_segment_rings_must_hold_two_segments(ring: str) -> None:
    """Sealed and committed rings must be at least twice max_segment_bytes."""
    with pytest.raises(ConfigError, match="SEALED_RING_BYTES and COMMITTED_RING_BYTES"):
        load_settings({f"STREAMHOUSE_{ring}": str(16 * MiB - 1)})
    assert load_settings({f"STREAMHOUSE_{ring}": str(16 * MiB)}) is not None


def test_fetch_response_ring_must_hold_two_fetches() -> None:
    """The fetch-response ring must be at least twice max_fetch_bytes."""
    with pytest.raises(ConfigError, match="STREAMHOUSE_FETCH_RESPONSE_RING_BYTES"):
        load_settings({"STREAMHOUSE_MAX_FETCH_BYTES": str(33 * MiB)})


@pytest.mark.parametrize("level", ["DEBUG", "info", "Warning", "ERROR"])
def test_log_levels_accepted(level: str) -> None:
    """The four levels are accepted in any case."""
    assert load_settings({"STREAMHOUSE_LOG_LEVEL": level}).log_level == level


@pytest.mark.parametrize("level", ["TRACE", "CRITICAL", "verbose"])
def test_bad_log_level(level: str) -> None:
    """Other levels are refused, naming the variable."""
    with pytest.raises(ConfigError, match="STREAMHOUSE_LOG_LEVEL"):
        load_settings({"STREAMHOUSE_LOG_LEVEL": level})


@pytest.mark.parametrize("url", ["file:///tmp/x", "s3://bucket", "s3://bucket/prefix", "memory://"])
def test_supported_object_store_urls(url: str) -> None:
    """file://, s3:// and memory:// URLs are accepted as given."""
    assert load_settings({"STREAMHOUSE_OBJECT_STORE": url}).object_store_url == url


@pytest.mark.parametrize("url", ["gs://bucket", "http://host/x", "/just/a/path"])
def test_unsupported_object_store_url(url: str) -> None:
    """Other schemes (or no scheme) are refused, naming the variable and the value."""
    with pytest.raises(ConfigError) as exc:
        load_settings({"STREAMHOUSE_OBJECT_STORE": url})
    assert "STREAMHOUSE_OBJECT_STORE" in str(exc.value)
    assert url in str(exc.value)


def test_validation_applies_to_toml_values(tmp_path: pathlib.Path) -> None:
    """A bad value from the TOML file is refused like one from the environment."""
    env = write_toml(tmp_path, "upload_attempts = 0\n")
    with pytest.raises(ConfigError, match="STREAMHOUSE_UPLOAD_ATTEMPTS"):
        load_settings(env)


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after loading."""
    s = load_settings({})
    with pytest.raises(AttributeError):
        s.flush_interval_ms = 1  # type: ignore[misc]
    assert msgspec.structs.replace(s, flush_interval_ms=1).flush_interval_ms == 1


def test_load_settings_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit environ, os.environ is read."""
    monkeypatch.setenv("STREAMHOUSE_FLUSH_INTERVAL_MS", "123")
    monkeypatch.delenv("STREAMHOUSE_CONFIG", raising=False)
    assert load_settings().flush_interval_ms == 123


def test_ack_and_fetch_request_rings_have_a_floor() -> None:
    """An ack or a fetch request with its error message must always fit one frame."""
    for name in ("ACK_RING_BYTES", "FETCH_REQUEST_RING_BYTES"):
        with pytest.raises(ConfigError, match=f"STREAMHOUSE_{name} must be at least 65536"):
            load_settings({f"STREAMHOUSE_{name}": "4096"})
        load_settings({f"STREAMHOUSE_{name}": "65536"})


# -- agents ----------------------------------------------------------------------------------


def test_agent_defaults_derive_from_the_listen_addresses() -> None:
    """agent_id defaults to the Kafka advertised host:port, grpc_advertised to grpc_listen."""
    s = load_settings(
        {"STREAMHOUSE_KAFKA_LISTEN": "0.0.0.0:9092", "STREAMHOUSE_GRPC_LISTEN": "h:1"}
    )
    assert (s.agent_id, s.agent_zone, s.grpc_advertised) == ("", "", "")
    assert (s.agent_heartbeat_ms, s.agent_lease_ms) == (1000, 4000)
    assert s.agent_name == "0.0.0.0:9092"
    assert s.grpc_advertised_address == "h:1"
    s = load_settings(
        {
            "STREAMHOUSE_KAFKA_ADVERTISED": "kafka.example:19092",
            "STREAMHOUSE_GRPC_ADVERTISED": "grpc.example:443",
        }
    )
    assert s.agent_name == "kafka.example:19092"
    assert s.grpc_advertised_address == "grpc.example:443"
    s = load_settings({"STREAMHOUSE_AGENT_ID": "agent-7", "STREAMHOUSE_AGENT_ZONE": "eu-west-1a"})
    assert (s.agent_name, s.agent_zone) == ("agent-7", "eu-west-1a")
    assert load_settings({"STREAMHOUSE_KAFKA_LISTEN": "[::1]:9093"}).agent_name == "[::1]:9093"


@pytest.mark.parametrize(
    ("heartbeat", "lease"), [("1000", "2000"), ("1000", "1500"), ("500", "1000"), ("10", "5")]
)
def test_lease_must_exceed_twice_the_heartbeat(heartbeat: str, lease: str) -> None:
    with pytest.raises(ConfigError, match="AGENT_LEASE_MS.*must exceed twice.*HEARTBEAT_MS"):
        load_settings(
            {"STREAMHOUSE_AGENT_HEARTBEAT_MS": heartbeat, "STREAMHOUSE_AGENT_LEASE_MS": lease}
        )
    ok = load_settings(
        {"STREAMHOUSE_AGENT_HEARTBEAT_MS": heartbeat, "STREAMHOUSE_AGENT_LEASE_MS": "100000"}
    )
    assert ok.agent_lease_ms == 100000


@pytest.mark.parametrize("name", ["AGENT_HEARTBEAT_MS", "AGENT_LEASE_MS"])
def test_agent_timings_must_be_positive(name: str) -> None:
    with pytest.raises(ConfigError, match=f"STREAMHOUSE_{name} must be positive"):
        load_settings({f"STREAMHOUSE_{name}": "0"})


def test_lease_of_more_than_a_day_is_refused() -> None:
    with pytest.raises(ConfigError, match="AGENT_LEASE_MS=86400001 is over a day"):
        load_settings({"STREAMHOUSE_AGENT_LEASE_MS": "86400001"})


@pytest.mark.parametrize("agent_id", ["has space", "a/b", "é", "x" * 201, "a,b"])
def test_bad_agent_ids_are_refused(agent_id: str) -> None:
    with pytest.raises(ConfigError, match="STREAMHOUSE_AGENT_ID=.*letters, digits"):
        load_settings({"STREAMHOUSE_AGENT_ID": agent_id})


@pytest.mark.parametrize("zone", ["eu west", "a:b", "z=1", "x" * 65, "a,b"])
def test_bad_zones_are_refused(zone: str) -> None:
    with pytest.raises(ConfigError, match="STREAMHOUSE_AGENT_ZONE=.*letters, digits"):
        load_settings({"STREAMHOUSE_AGENT_ZONE": zone})


@pytest.mark.parametrize("address", ["nohost", ":50051", "h:", "h:x", "h:0", "h:70000"])
def test_grpc_advertised_must_be_host_and_port(address: str) -> None:
    with pytest.raises(ConfigError, match="STREAMHOUSE_GRPC_ADVERTISED=.*HOST:PORT"):
        load_settings({"STREAMHOUSE_GRPC_ADVERTISED": address})


# -- streamhouse up / config flags -----------------------------------------------------------


def test_cli_flags_set_their_settings(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`streamhouse config` with the flags `up` takes prints the settings they give, and the
    flags beat STREAMHOUSE_* variables."""
    from streamhouse import cli

    monkeypatch.setenv("STREAMHOUSE_AGENT_ZONE", "from-env")
    monkeypatch.setenv("STREAMHOUSE_FLUSH_INTERVAL_MS", "33")
    argv = [
        "config",
        "--data-dir", str(tmp_path / "a2"),
        "--metadata", "postgresql://sh@db.example:5432/streamhouse",
        "--object-store", "s3://bucket/prefix",
        "--kafka-listen", "127.0.0.1:9192",
        "--kafka-advertised", "agent2.example:9192",
        "--grpc-listen", "127.0.0.1:50151",
        "--grpc-advertised", "agent2.example:50151",
        "--agent-id", "a2",
        "--zone", "z2",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = msgspec.json.decode(capsys.readouterr().out)
    assert printed["data_dir"] == str(tmp_path / "a2")
    assert printed["metadata"] == "postgresql://sh@db.example:5432/streamhouse"
    assert printed["object_store"] == "s3://bucket/prefix"
    assert printed["kafka_listen"] == "127.0.0.1:9192"
    assert printed["kafka_advertised"] == "agent2.example:9192"
    assert printed["grpc_listen"] == "127.0.0.1:50151"
    assert printed["grpc_advertised"] == "agent2.example:50151"
    assert (printed["agent_id"], printed["agent_zone"]) == ("a2", "z2")
    assert printed["flush_interval_ms"] == 33  # untouched settings still come from the env


def test_cli_flag_errors_name_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from streamhouse import cli

    assert cli.main(["config", "--zone", "bad zone"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamhouse: error: STREAMHOUSE_AGENT_ZONE='bad zone'")
    assert cli.main(["config", "--kafka-listen", ""]) == 2
    assert "--kafka-listen must not be empty" in capsys.readouterr().err
    assert cli.main(["config", "--metadata", "mysql://x"]) == 2
    assert "STREAMHOUSE_METADATA='mysql://x': use postgresql://" in capsys.readouterr().err


def test_cli_settings_environment_maps_flags_to_variables() -> None:
    from streamhouse.cli import settings_environment

    env = settings_environment({"agent_zone": "z", "metadata": None}, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "STREAMHOUSE_AGENT_ZONE": "z"}


def test_reader_tail_interest_is_a_non_negative_duration() -> None:
    assert load_settings({}).reader_tail_interest_ms == 60_000
    assert load_settings({"STREAMHOUSE_READER_TAIL_INTEREST_MS": "0"}).reader_tail_interest_ms == 0
    with pytest.raises(ConfigError, match="READER_TAIL_INTEREST_MS must be >= 0"):
        load_settings({"STREAMHOUSE_READER_TAIL_INTEREST_MS": "-1"})
