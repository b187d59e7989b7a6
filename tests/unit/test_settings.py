"""Settings: defaults, parsing from the environment, errors naming the variable, masking."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import structlog

from consumer import cli, limits
from consumer import service as service_module
from consumer.errors import ConfigError
from consumer.service import Service
from consumer.settings import Settings, env_name, mask_url

ENV_NAMES = [env_name(f.name) for f in dataclasses.fields(Settings)]
SENSITIVE = "s3cr3t-Pw"
MASKED = "***"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No setting inherited from the machine; cwd is a scratch directory."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults_are_valid() -> None:
    """Settings() with no arguments validates and has the documented defaults."""
    s = Settings()
    assert s.lease_ttl_s == 30.0
    assert s.done_ttl_s > s.lease_ttl_s
    assert s.max_pending_records >= s.batch_max_records
    assert s.crash_point == ""


def test_from_env_empty_is_defaults() -> None:
    """An empty environment (or blank values) gives the defaults."""
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({"LEASE_TTL_S": "  ", "INBOUND_TOPIC": ""}) == Settings()


def test_from_env_parses_ints_floats_and_strings() -> None:
    """Numbers are parsed to the field's type, whitespace stripped, strings kept."""
    s = Settings.from_env(
        {
            "BATCH_MAX_RECORDS": " 100 ",
            "MAX_PENDING_RECORDS": "1000",
            "LEASE_TTL_S": "12.5",
            "DONE_TTL_S": "60",
            "RETRY_BACKOFF_S": "1e-1",
            "INBOUND_TOPIC": "in.topic",
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9093",
            "WAMID_GUARD_CRASH_POINT": "after_commit:3",
            "KAFKA_CLIENT_ID": "me",
            "LOG_LEVEL": "debug",
        }
    )
    assert s.batch_max_records == 100
    assert isinstance(s.batch_max_records, int)
    assert s.max_pending_records == 1000
    assert s.lease_ttl_s == 12.5
    assert s.done_ttl_s == 60.0
    assert isinstance(s.done_ttl_s, float)
    assert s.retry_backoff_s == pytest.approx(0.1)
    assert s.inbound_topic == "in.topic"
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9093"
    assert s.crash_point == "after_commit:3"
    assert s.client_id == "me"


def test_unrelated_environment_is_ignored() -> None:
    """Variables that are not settings (or lower-case field names) change nothing."""
    assert Settings.from_env({"lease_ttl_s": "abc", "PATH": "/bin", "HOME": "/x"}) == Settings()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LEASE_TTL_S": "abc"}, "LEASE_TTL_S"),
        ({"LEASE_TTL_S": "0"}, "LEASE_TTL_S"),
        ({"LEASE_TTL_S": "-5"}, "LEASE_TTL_S"),
        ({"LEASE_TTL_S": "0.5"}, "LEASE_TTL_S"),
        ({"LEASE_TTL_S": "nan"}, "LEASE_TTL_S"),
        ({"LEASE_TTL_S": "60", "DONE_TTL_S": "30"}, "DONE_TTL_S"),
        ({"LEASE_TTL_S": "60", "DONE_TTL_S": "60"}, "DONE_TTL_S"),
        ({"BATCH_MAX_RECORDS": "1.5"}, "BATCH_MAX_RECORDS"),
        ({"BATCH_MAX_RECORDS": "0"}, "BATCH_MAX_RECORDS"),
        ({"BATCH_MAX_RECORDS": "600", "MAX_PENDING_RECORDS": "500"}, "MAX_PENDING_RECORDS"),
        ({"MAX_RECORD_BYTES": "lots"}, "MAX_RECORD_BYTES"),
        ({"DATABASE_URL": "mysql://u@db/wg"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u@db/wg"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "nohostport"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "k1:port"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"INBOUND_TOPIC": "same", "OUTBOUND_TOPIC": "same"}, "OUTBOUND_TOPIC"),
        ({"DLQ_TOPIC": "whatsapp.webhooks"}, "DLQ_TOPIC"),
        ({"INBOUND_TOPIC": "has space"}, "INBOUND_TOPIC"),
        ({"WAMID_GUARD_CRASH_POINT": "bogus"}, "WAMID_GUARD_CRASH_POINT"),
        ({"WAMID_GUARD_CRASH_POINT": "after_commit:0"}, "WAMID_GUARD_CRASH_POINT"),
        ({"WAMID_GUARD_CRASH_POINT": "after_commit:x"}, "WAMID_GUARD_CRASH_POINT"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"REDIS_KEY_PREFIX": "a:b"}, "REDIS_KEY_PREFIX"),
        ({"REDIS_KEY_PREFIX": "a#b"}, "REDIS_KEY_PREFIX"),
        ({"MAX_RECORD_BYTES": str(limits.MAX_RECORD_BYTES_LIMIT + 1)}, "MAX_RECORD_BYTES"),
        ({"WHATSAPP_APP_SECRET": "   "}, "WHATSAPP_APP_SECRET"),
        ({"WHATSAPP_APP_SECRET": "\t\n"}, "WHATSAPP_APP_SECRET"),
        ({"KAFKA_HEARTBEAT_INTERVAL_S": "10"}, "KAFKA_HEARTBEAT_INTERVAL_S"),
        ({"KAFKA_IDEMPOTENCE": "yes"}, "KAFKA_IDEMPOTENCE"),
        ({"KAFKA_IDEMPOTENCE": "ON"}, "KAFKA_IDEMPOTENCE"),
        ({"MAX_PENDING_BYTES": "0"}, "MAX_PENDING_BYTES"),
        ({"MAX_RECORD_BYTES": "4096", "MAX_PENDING_BYTES": "4095"}, "MAX_PENDING_BYTES"),
    ],
)
def test_bad_value_raises_config_error_naming_variable(env: dict[str, str], named: str) -> None:
    """Each malformed or inconsistent value fails with a ConfigError naming its variable."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert named in str(info.value)
    assert info.value.setting in ENV_NAMES


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_an_out_of_range_port_is_refused_saying_the_value(port: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"METRICS_PORT": port})
    assert str(info.value) == (
        f"METRICS_PORT: {port} is not a TCP port: 1-65535, or 0 to turn the endpoint off"
    )


@pytest.mark.parametrize("name", ["DONE_TTL_S", "POLL_TIMEOUT_S", "KAFKA_REQUEST_TIMEOUT_S"])
def test_infinite_duration_is_rejected(name: str) -> None:
    """An infinite duration fails at start with a ConfigError, not later in int(s * 1000)."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "inf"})


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_kafka_idempotence_modes(mode: str) -> None:
    """KAFKA_IDEMPOTENCE takes auto (the default), on or off."""
    assert Settings().kafka_idempotence == "auto"
    assert Settings.from_env({"KAFKA_IDEMPOTENCE": f" {mode} "}).kafka_idempotence == mode


def test_config_error_carries_setting_attribute() -> None:
    """ConfigError.setting is the environment variable's name."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"LOG_FORMAT": "xml"})
    assert info.value.setting == "LOG_FORMAT"


def test_replace_validates_again() -> None:
    """Settings.replace re-runs validation on the changed copy."""
    assert Settings().replace(lease_ttl_s=10.0).lease_ttl_s == 10.0
    with pytest.raises(ConfigError, match="LEASE_TTL_S"):
        Settings().replace(lease_ttl_s=0.0)


# -- credentials -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+asyncpg://app:{SENSITIVE}@db:5432/wg",
        f"postgresql+asyncpg://app:{SENSITIVE}@db/wg?ssl=require",
        f"postgresql+asyncpg://:{SENSITIVE}@db/wg",
    ],
)
def test_database_password_never_in_repr_or_public(url: str) -> None:
    """The DATABASE_URL password is masked in repr(), str() and public()."""
    s = Settings.from_env({"DATABASE_URL": url})
    assert s.database_url == url  # the real value is still there for connecting
    assert SENSITIVE not in repr(s)
    assert SENSITIVE not in str(s)
    assert SENSITIVE not in str(s.public())
    assert "***" in s.public()["database_url"]
    assert s.public()["database_url"].endswith(url.split("@", 1)[1])


@pytest.mark.parametrize("password", ["ab/cd+ef", "ab#cd", "ab?cd"])
def test_password_with_url_special_characters_is_masked(password: str) -> None:
    """A raw '/', '#' or '?' in the password (SQLAlchemy accepts it) is masked too."""
    s = Settings.from_env({"DATABASE_URL": f"postgresql+asyncpg://app:{password}@db:5432/wg"})
    assert password not in repr(s)
    assert password not in str(s.public())


def test_redis_password_masked() -> None:
    """A REDIS_URL password is masked like the database's."""
    s = Settings.from_env({"REDIS_URL": f"redis://:{SENSITIVE}@cache:6379/0"})
    assert SENSITIVE not in repr(s)
    assert s.public()["redis_url"] == "redis://:***@cache:6379/0"


def test_mask_url_leaves_urls_without_password_alone() -> None:
    """mask_url changes nothing when there is no password (or no URL)."""
    for value in ("sqlite+aiosqlite:///x.db", "redis://user@h:1/0", 5, "no-at-sign"):
        assert mask_url(value) == value


def test_bad_database_url_error_does_not_leak_password() -> None:
    """A rejected DATABASE_URL names the variable but not the password."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": f"mysql://app:{SENSITIVE}@db/wg"})
    assert "DATABASE_URL" in str(info.value)
    assert SENSITIVE not in str(info.value)


# -- the app secret (WHATSAPP_APP_SECRET) ---------------------------------------------


def test_app_secret_never_in_repr_str_or_public() -> None:
    """WHATSAPP_APP_SECRET is read, kept for the signature check, and shown only as ***."""
    s = Settings.from_env({"WHATSAPP_APP_SECRET": SENSITIVE})
    assert s.app_secret == SENSITIVE  # the real value is still there for checking
    assert SENSITIVE not in repr(s)
    assert SENSITIVE not in str(s)
    assert SENSITIVE not in str(s.public())
    assert SENSITIVE not in repr(s.replace(lease_ttl_s=10.0))
    assert s.public()["app_secret"] == MASKED
    assert "app_secret='***'" in repr(s)


def test_smallest_and_largest_legal_values_are_accepted() -> None:
    """Every limit at its edge is a working configuration: MAX_RECORD_BYTES from 1 to the
    largest an event can carry, one record a batch, one pending record."""
    Settings.from_env({"MAX_RECORD_BYTES": "1", "BATCH_MAX_RECORDS": "1"})
    Settings.from_env({"MAX_RECORD_BYTES": str(limits.MAX_RECORD_BYTES_LIMIT)})
    Settings.from_env({"MAX_PENDING_RECORDS": "1", "BATCH_MAX_RECORDS": "1"})
    Settings.from_env({"MAX_RECORD_BYTES": "4096", "MAX_PENDING_BYTES": "4096"})
    Settings.from_env({"MAX_RECORD_BYTES": "1", "MAX_PENDING_BYTES": "1"})


def test_the_default_batch_shrinks_to_a_lower_pending_limit() -> None:
    """BATCH_MAX_RECORDS defaults to 1000 (it was 500): a MAX_PENDING_RECORDS set lower,
    alone, makes the default batch that size, so a configuration that started with the
    old default still starts; both set and contradicting each other still fail."""
    assert Settings.from_env({}).batch_max_records == 1000
    assert Settings.from_env({"MAX_PENDING_RECORDS": "600"}).batch_max_records == 600
    assert Settings.from_env({"MAX_PENDING_RECORDS": "1"}).batch_max_records == 1
    assert Settings.from_env({"MAX_PENDING_RECORDS": "8000"}).batch_max_records == 1000
    with pytest.raises(ConfigError, match="MAX_PENDING_RECORDS"):
        Settings.from_env({"MAX_PENDING_RECORDS": "600", "BATCH_MAX_RECORDS": "1000"})
    with pytest.raises(ConfigError, match="MAX_PENDING_RECORDS"):
        Settings.from_env({"MAX_PENDING_RECORDS": "0"})


def test_whitespace_only_app_secret_is_refused_not_ignored() -> None:
    """WHATSAPP_APP_SECRET set to blanks would silently turn the signature check off: it
    is refused at start, naming the variable and never the value; an empty one is
    unset (no check), a real one keeps its characters."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"WHATSAPP_APP_SECRET": "  "})
    assert info.value.setting == "WHATSAPP_APP_SECRET"
    with pytest.raises(ConfigError):
        Settings(app_secret=" \t ")  # noqa: S106 - blanks, the point of the test
    assert Settings.from_env({"WHATSAPP_APP_SECRET": ""}).app_secret == ""


def test_unset_app_secret_shows_empty() -> None:
    """Without a secret public() says so (""), so the log shows no check is made."""
    assert Settings().public()["app_secret"] == ""


@pytest.mark.parametrize(
    "env",
    [
        {"LEASE_TTL_S": "abc"},
        {"LEASE_TTL_S": "60", "DONE_TTL_S": "30"},
        {"INBOUND_TOPIC": "same", "OUTBOUND_TOPIC": "same"},
        {"LOG_FORMAT": "xml"},
    ],
)
def test_config_error_never_mentions_app_secret(env: dict[str, str]) -> None:
    """A ConfigError raised while WHATSAPP_APP_SECRET is set (str, repr and its args) does
    not carry the secret."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"WHATSAPP_APP_SECRET": SENSITIVE, **env})
    assert SENSITIVE not in str(info.value)
    assert SENSITIVE not in repr(info.value)
    assert SENSITIVE not in repr(info.value.args)


def test_service_starting_log_line_masks_app_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `service.starting` line logs every setting, and the app secret only as ***."""

    class Stop(Exception):
        pass

    async def stop_here(*_args: object, **_kwargs: object) -> None:
        raise Stop

    service = Service(Settings(app_secret=SENSITIVE))
    monkeypatch.setattr(service_module, "open_backends", stop_here)
    with structlog.testing.capture_logs() as logs, pytest.raises(Stop):
        asyncio.run(service.startup())
    (starting,) = [e for e in logs if e["event"] == "service.starting"]
    assert starting["app_secret"] == MASKED
    assert starting["inbound_topic"] == Settings().inbound_topic  # the line does log settings
    assert SENSITIVE not in repr(logs)


def test_cli_bad_setting_with_app_secret_does_not_print_it(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad configuration stops the CLI; its message names the bad variable, not the
    secret set beside it."""
    clean_env.setenv("WHATSAPP_APP_SECRET", SENSITIVE)
    clean_env.setenv("LEASE_TTL_S", "abc")
    assert cli.main(["migrate"]) == 2
    captured = capsys.readouterr()
    assert "LEASE_TTL_S" in captured.err
    assert SENSITIVE not in captured.err + captured.out


# -- CLI -------------------------------------------------------------------------------


def test_cli_bad_setting_exits_2_naming_variable(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`migrate` with LEASE_TTL_S=abc exits 2, names LEASE_TTL_S on stderr, touches nothing."""
    clean_env.setenv("LEASE_TTL_S", "abc")
    clean_env.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'wg.db'}")
    assert cli.main(["migrate"]) == 2
    captured = capsys.readouterr()
    assert "LEASE_TTL_S" in captured.err
    assert "bad configuration" in captured.err
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []  # migrate never ran: no database file


def test_cli_bad_database_url_exits_2(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad DATABASE_URL also stops the CLI with exit code 2 and the variable's name."""
    clean_env.setenv("DATABASE_URL", f"mysql://app:{SENSITIVE}@db/wg")
    assert cli.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "DATABASE_URL" in err
    assert SENSITIVE not in err
