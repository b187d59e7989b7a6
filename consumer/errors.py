"""The project's exceptions, one root.

    WamidGuardError
    ├── ConfigError            a setting or an argument is missing or malformed (names it)
    ├── MissingTopicError      a topic a command needs is not on the broker (names the setting)
    ├── EndpointError          the HTTP endpoint cannot listen (METRICS_PORT taken)
    ├── DependencyError        a backing service failed; `retriable` says if waiting helps
    │   ├── LeaseStoreError    Redis (the lease / done-marker store)
    │   ├── StoreError         the SQL database
    │   └── BrokerError        Kafka: produce, commit, fetch, admin
    │       ├── PublishPendingError   a publish ended with sends that may still land
    │       │   └── PartlyPublishedError  ... or with some acknowledged, others failed
    │       └── UnreadableFetchError  a fetch whose records the client could not read
    ├── UnstorableError        a record's data was refused (by the database, or the event
    │                          encoder): retrying cannot help; isolate it and dead-letter it
    └── EmbeddedServiceError   a service the demo or tests start themselves would not start

The two failure classes of docs/design.md, rule 10: a DependencyError is an outage (wait,
retry without limit, pause, never dead-letter); an UnstorableError is one record's data
(find the record, dead-letter it, let its neighbours go on).

Only the adapter modules (dedup, store, publish, service) see redis, SQLAlchemy or
aiokafka exceptions; they translate them here with ``raise ... from exc`` so the cause
stays chained for the operator.
"""

from __future__ import annotations


class WamidGuardError(Exception):
    """Root of every error this package raises on purpose."""

    retriable: bool = False


class ConfigError(WamidGuardError):
    """A setting is invalid. The message names the environment variable."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


class MissingTopicError(WamidGuardError):
    """A topic is not on the broker. Never created as a side effect (a typo must not
    leave a topic behind): the message names the setting or option and how to create it."""


class EndpointError(WamidGuardError):
    """The member's HTTP endpoint cannot listen where METRICS_HOST/METRICS_PORT say."""


class DependencyError(WamidGuardError):
    """A backing service did not do what we asked. Usually worth a retry."""

    retriable = True


class LeaseStoreError(DependencyError):
    """Redis failed while taking, releasing or finishing a lease."""


class StoreError(DependencyError):
    """The database failed; the transaction did not (or may not) commit."""


class BrokerError(DependencyError):
    """Kafka failed: to take a record we produced or an offset we committed, to answer a
    fetch or an admin request."""

    from_broker = True  # the broker (or the way to it) failed, not the client


class PublishPendingError(BrokerError):
    """A publish gave up waiting for its acknowledgements while its sends go on inside an
    idempotent producer (never expired): they may still land. Whoever holds the outbox
    claims of those events keeps them, so that no other member's relay sends the events
    again meanwhile; the holder's own retry waits for (or counts) the same sends."""


class PartlyPublishedError(PublishPendingError):
    """Some events of a publish were acknowledged and the others failed. Sending their
    outbox rows again would land copies of the acknowledged ones, so the claims stand as
    for a pending publish, and the publisher remembers the acknowledged sends: the
    holder's retry sends only the events that failed."""


class UnreadableFetchError(BrokerError):
    """A fetch came back, but the client failed while unpacking its records (a record it
    cannot decode): the member rewinds and tries again, loudly."""

    from_broker = False


class UnstorableError(WamidGuardError):
    """The data of one of the records in a write was refused: a value the database will
    not take, an event that cannot be encoded. The message is the refusal's own (the
    database's message, without the statement or its parameters)."""


class EmbeddedServiceError(WamidGuardError):
    """A locally started service (Tansu, redis-server) did not come up."""
