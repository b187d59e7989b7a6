"""Typed, frozen settings, read once from the environment at the edge (the CLI).

Nothing below the CLI reads ``os.environ``: every module gets a :class:`Settings`.
Durations carry their unit in the name. A bad value fails at start with a
:class:`~consumer.errors.ConfigError` that names the environment variable.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from consumer import limits
from consumer.errors import ConfigError

T = TypeVar("T")

CRASH_POINTS = (
    "after_lease",
    "after_insert",
    "after_commit",
    "after_publish",
    "after_offset_commit",
)
LOG_FORMATS = ("auto", "json", "console")
REDIS_OUTAGE_POLICIES = ("pause", "fence")
REDIS_MODES = ("standalone", "cluster")
KAFKA_IDEMPOTENCE_MODES = ("auto", "on", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


# Records per batch: each batch pays its round trips and one outbox row whatever its
# size, so a backlog goes faster in larger ones (docs/benchmarks.md, round seven).
DEFAULT_BATCH_MAX_RECORDS = 1000


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service needs to know, validated.

    Each field documents the environment variable that sets it (see README).
    """

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite+aiosqlite:///wamid-guard.db"
    inbound_topic: str = "whatsapp.webhooks"
    outbound_topic: str = "whatsapp.message_created"
    dlq_topic: str = "whatsapp.webhooks.dlq"
    consumer_group: str = "wamid-guard"

    redis_key_prefix: str = "wamid"
    # "standalone" (one Redis, or a primary with replicas behind one address) or
    # "cluster" (Redis Cluster: REDIS_URL names any node; the leases are grouped by slot).
    redis_mode: str = "standalone"
    # What to do while Redis is unreachable: "pause" (default) holds the partitions and
    # retries, keeping events exactly-once; "fence" keeps consuming on the database's
    # unique constraint alone (rows stay exactly-once, events at-least-once).
    redis_outage_policy: str = "pause"
    # Status updates of sent messages (sent, delivered, read, played, failed): stored
    # once, each message's state moved only forward, a message_status_changed event per
    # forward move. Off: counted (outcome "ignored"), nothing stored or announced.
    status_events: bool = True
    lease_ttl_s: float = 30.0
    # Meta retries a webhook for up to 7 days; the done marker outlives that.
    done_ttl_s: float = 8 * 24 * 3600.0

    batch_max_records: int = DEFAULT_BATCH_MAX_RECORDS
    # Batches one member runs at once, each of its own partitions (1: one at a time).
    max_inflight_batches: int = 4
    poll_timeout_s: float = 0.5
    # Meta's webhook bodies reach 3 MB (limits.DEFAULT_MAX_RECORD_BYTES); the request,
    # fetch and topic sizes follow from it (the `sizes` property).
    max_record_bytes: int = limits.DEFAULT_MAX_RECORD_BYTES
    max_pending_records: int = 5000
    # The bytes a member's unfinished records may hold (records of up to 3 MB deferred or
    # waiting for their retry pile up): each partition is paused at its share.
    max_pending_bytes: int = 128 * 1024 * 1024
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 5.0

    kafka_session_timeout_s: float = 10.0
    kafka_heartbeat_interval_s: float = 3.0
    kafka_max_poll_interval_s: float = 300.0
    kafka_request_timeout_s: float = 30.0
    kafka_fetch_max_wait_s: float = 0.05
    # Static group membership (KIP-345): this member's stable, unique id in the group,
    # e.g. a StatefulSet pod's name. Empty (default): dynamic membership.
    kafka_group_instance_id: str = ""
    # How old the client's cluster metadata may get before it is asked again (aiokafka's
    # metadata_max_age_ms, 5 minutes by default): bounds how long partitions added to a
    # topic go unread (the group's leader sees them, and the group rebalances) and how
    # long the producers keep writing to the old partitions only (docs/operations.md,
    # "Adding partitions"). 30 s: one small metadata request per client per 30 s.
    kafka_metadata_max_age_s: float = 30.0
    # The events producer's idempotence (no duplicate from its own retries): "on", "off",
    # or "auto" (on when the broker grants a producer id: Apache Kafka yes, Tansu no).
    kafka_idempotence: str = "auto"
    redis_timeout_s: float = 5.0
    db_pool_size: int = 5
    db_timeout_s: float = 30.0

    # How often the outbox relay looks for rows whose publish never happened.
    relay_interval_s: float = 5.0

    shutdown_grace_s: float = 20.0

    # The HTTP endpoint for /metrics (Prometheus), /healthz and /readyz; port 0 turns it off.
    # Loopback by default; a container sets METRICS_HOST=0.0.0.0 to be scraped.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    # /healthz fails when the poll loop has not come round for this long (a stuck batch).
    liveness_timeout_s: float = 120.0
    # Meta's App Secret: when set, every inbound record must carry a valid
    # X-Hub-Signature-256 header (HMAC-SHA256 of the raw body); others are dead-lettered.
    app_secret: str = ""

    log_level: str = "INFO"
    log_format: str = "auto"
    # Test-only: SIGKILL this process at a step of the flow, e.g. "after_commit" or
    # "after_commit:3" (the third time). Empty in production.
    crash_point: str = ""
    client_id: str = field(default="wamid-guard")

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from environment variables; unset ones keep their default."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = env_name(f.name)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            if raw.strip() == "" and f.name in SECRET_FIELDS:
                # Set, but to nothing usable: refusing beats silently turning the check off.
                raise ConfigError(name, "is only whitespace; unset it or give the real secret")
            if raw.strip() == "":
                continue
            values[f.name] = _parse(name, raw.strip(), _kind(f.default))
        pending = values.get("max_pending_records")
        if (
            "batch_max_records" not in values
            and pending is not None
            and 1 <= pending < DEFAULT_BATCH_MAX_RECORDS
        ):
            # A batch never holds more than the pending limit: with only that set (as
            # when the default batch was 500), the default batch shrinks to it, instead
            # of a configuration that started before failing now.
            values["batch_max_records"] = pending
        return cls(**values)

    @property
    def sizes(self) -> limits.Sizes:
        """The produce, fetch and topic sizes that follow from MAX_RECORD_BYTES."""
        return limits.sizes(self.max_record_bytes)

    @property
    def debug(self) -> bool:
        """LOG_LEVEL=DEBUG: the per-message and per-ack lines are only built then."""
        return self.log_level.upper() == "DEBUG"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """The settings as loggable values: credentials in URLs are masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                out[f.name] = "***" if value else ""
            else:
                out[f.name] = mask_url(value) if f.name.endswith("_url") else value
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.public().items())
        return f"Settings({inner})"


# Names the operator sees: unprefixed, as in the contract of docs/design.md.
_ENV_NAMES = {
    "crash_point": "WAMID_GUARD_CRASH_POINT",
    "client_id": "KAFKA_CLIENT_ID",
    "app_secret": "WHATSAPP_APP_SECRET",
}

# Fields that hold a secret: never shown by public(), repr() or an error message.
SECRET_FIELDS = frozenset({"app_secret"})


def env_name(field_name: str) -> str:
    """The environment variable that sets a field."""
    return _ENV_NAMES.get(field_name, field_name.upper())


def mask_url(value: object) -> object:
    """Hide the password of a URL such as ``postgresql://user:secret@host/db``.

    Parsed the way SQLAlchemy and redis-py parse it (the password runs to the last '@'
    of the authority), so a password holding '/', '?' or '#' is masked too.
    """
    if not isinstance(value, str):
        return value
    masked = _URL_PASSWORD.sub(r"\1***@", value)
    return _QUERY_PASSWORD.sub(r"\1***", masked)


_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*:)[^@]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def _kind(default: object) -> Callable[[str], object]:
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _parse(name: str, raw: str, kind: Callable[[str], T]) -> T:
    try:
        return kind(raw)
    except ValueError as exc:
        expected = {int: "an integer", float: "a number", _parse_bool: "a boolean"}.get(
            kind, "a string"
        )
        raise ConfigError(name, f"expected {expected}, got {raw!r}") from exc


def _require(ok: bool, field_name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(env_name(field_name), problem)


def _validate(s: Settings) -> None:
    _validate_endpoints(s)
    _validate_topics(s)
    for name in (
        "lease_ttl_s",
        "done_ttl_s",
        "poll_timeout_s",
        "retry_backoff_s",
        "retry_backoff_max_s",
        "kafka_session_timeout_s",
        "kafka_heartbeat_interval_s",
        "kafka_max_poll_interval_s",
        "kafka_request_timeout_s",
        "kafka_fetch_max_wait_s",
        "kafka_metadata_max_age_s",
        "redis_timeout_s",
        "db_timeout_s",
        "shutdown_grace_s",
        "relay_interval_s",
        "liveness_timeout_s",
    ):
        value = getattr(s, name)
        _require(math.isfinite(value) and value > 0, name, "must be a finite number above 0")
    for name in (
        "batch_max_records",
        "max_inflight_batches",
        "max_record_bytes",
        "max_pending_records",
        "db_pool_size",
    ):
        _require(getattr(s, name) >= 1, name, "must be at least 1")
    _require(s.lease_ttl_s >= 1, "lease_ttl_s", "must be at least 1 second")
    # Below a second (0.0001 becomes metadata_max_age_ms=0) every client would ask the
    # broker for metadata without pause.
    _require(
        s.kafka_metadata_max_age_s >= 1,
        "kafka_metadata_max_age_s",
        "must be at least 1 second: each client asks the broker for metadata this often",
    )
    _require(
        s.done_ttl_s > s.lease_ttl_s,
        "done_ttl_s",
        f"must be longer than LEASE_TTL_S ({s.lease_ttl_s:g})",
    )
    _require(
        s.kafka_heartbeat_interval_s < s.kafka_session_timeout_s,
        "kafka_heartbeat_interval_s",
        "must be shorter than KAFKA_SESSION_TIMEOUT_S",
    )
    _require(
        s.max_pending_bytes >= s.max_record_bytes,
        "max_pending_bytes",
        f"must be at least MAX_RECORD_BYTES ({s.max_record_bytes}): a member must be able "
        "to hold one record of the largest size",
    )
    _require(
        s.max_pending_records >= s.batch_max_records,
        "max_pending_records",
        "must be at least BATCH_MAX_RECORDS",
    )
    _require(s.log_level.upper() in LOG_LEVELS, "log_level", f"must be one of {LOG_LEVELS}")
    _require(s.log_format in LOG_FORMATS, "log_format", f"must be one of {LOG_FORMATS}")
    _require(
        s.kafka_idempotence in KAFKA_IDEMPOTENCE_MODES,
        "kafka_idempotence",
        f"must be one of {KAFKA_IDEMPOTENCE_MODES}, got {s.kafka_idempotence!r}",
    )
    _require(
        s.redis_outage_policy in REDIS_OUTAGE_POLICIES,
        "redis_outage_policy",
        f"must be one of {REDIS_OUTAGE_POLICIES}",
    )
    _require(
        s.redis_mode in REDIS_MODES,
        "redis_mode",
        f"must be one of {REDIS_MODES}, got {s.redis_mode!r}",
    )
    _require(
        bool(s.redis_key_prefix) and not set(s.redis_key_prefix) & {":", "#"},
        "redis_key_prefix",
        "must be non-empty and contain neither ':' nor '#' (they separate the key's parts)",
    )
    _require(
        s.app_secret == "" or s.app_secret.strip() != "",
        "app_secret",
        "is only whitespace; unset it or give the real secret",
    )
    _require(
        s.max_record_bytes <= limits.MAX_RECORD_BYTES_LIMIT,
        "max_record_bytes",
        f"must be at most {limits.MAX_RECORD_BYTES_LIMIT} (8 MiB; Meta sends up to 3 MB): "
        "the produce, fetch and decompression sizes of a member follow from it",
    )
    _require(
        0 <= s.metrics_port <= 65535,
        "metrics_port",
        f"{s.metrics_port} is not a TCP port: 1-65535, or 0 to turn the endpoint off",
    )
    _require(bool(s.metrics_host.strip()), "metrics_host", "must not be empty")
    _validate_crash_point(s.crash_point)


def _validate_endpoints(s: Settings) -> None:
    for part in s.kafka_bootstrap_servers.split(","):
        host, sep, port = part.strip().rpartition(":")
        _require(
            bool(host) and sep == ":" and port.isdigit(),
            "kafka_bootstrap_servers",
            f"expected host:port[,host:port...], got {s.kafka_bootstrap_servers!r}",
        )
    scheme = urlsplit(s.redis_url).scheme
    _require(
        scheme in ("redis", "rediss", "unix"),
        "redis_url",
        f"expected redis://host:port/db, rediss:// or unix://, got scheme {scheme!r}",
    )
    if s.redis_mode == "cluster":
        _validate_cluster_url(s.redis_url)
    db_scheme = urlsplit(s.database_url).scheme
    _require(
        db_scheme in ("postgresql+asyncpg", "sqlite+aiosqlite"),
        "database_url",
        f"expected postgresql+asyncpg://... or sqlite+aiosqlite:///path, got scheme {db_scheme!r}",
    )


def _validate_cluster_url(url: str) -> None:
    """REDIS_MODE=cluster: REDIS_URL names one node over TCP, in database 0 (a cluster
    has no other)."""
    parts = urlsplit(url)
    _require(
        parts.scheme in ("redis", "rediss") and bool(parts.hostname),
        "redis_url",
        f"REDIS_MODE=cluster needs redis://host:port or rediss://host:port (any node of "
        f"the cluster), got scheme {parts.scheme!r}",
    )
    db = parts.path.strip("/")
    _require(
        db in ("", "0"),
        "redis_url",
        f"REDIS_MODE=cluster: a Redis Cluster has database 0 only, got /{db}",
    )


def _validate_topics(s: Settings) -> None:
    topics = {
        "inbound_topic": s.inbound_topic,
        "outbound_topic": s.outbound_topic,
        "dlq_topic": s.dlq_topic,
    }
    for name, topic in topics.items():
        _require(bool(_TOPIC_RE.match(topic)), name, f"not a valid Kafka topic name: {topic!r}")
    _require(
        len(set(topics.values())) == 3,
        "outbound_topic",
        "INBOUND_TOPIC, OUTBOUND_TOPIC and DLQ_TOPIC must be three different topics",
    )
    _require(bool(s.consumer_group.strip()), "consumer_group", "must not be empty")
    _validate_group_instance_id(s.kafka_group_instance_id)


def _validate_group_instance_id(value: str) -> None:
    """The broker's rules for group.instance.id (those of a topic name): 1 to 249 of
    ASCII letters, digits, '.', '_', '-', and neither '.' nor '..'."""
    if not value:
        return
    _require(
        bool(_TOPIC_RE.match(value)) and value not in (".", ".."),
        "kafka_group_instance_id",
        "must be 1 to 249 of ASCII letters, digits, '.', '_' and '-' (not '.' or '..'), "
        f"unique in the group; got {value!r}",
    )


def _validate_crash_point(value: str) -> None:
    if not value:
        return
    point, _, nth = value.partition(":")
    _require(point in CRASH_POINTS, "crash_point", f"must be one of {CRASH_POINTS}")
    _require(
        nth == "" or (nth.isdigit() and int(nth) >= 1),
        "crash_point",
        "the count after ':' must be a positive integer",
    )
