"""`python -m consumer produce`: send webhook bodies to the inbound topic, the way Meta
would: each body once, or with duplicates, optionally spread over partitions (a
redelivery lands wherever the producer's partitioner puts it). With WHATSAPP_APP_SECRET
set, each record carries Meta's X-Hub-Signature-256 header over its value."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumer import intake
from consumer.errors import BrokerError, ConfigError
from consumer.intake import SIGNATURE_HEADER, sign
from consumer.records import InboundRecord, Webhook
from consumer.tools.topics import default_max_message_bytes, partition_count


@dataclass(frozen=True, slots=True)
class Sent:
    partition: int
    offset: int


def sample_bodies() -> list[tuple[str, bytes]]:
    """The webhook samples shipped with the package (Meta's documented shapes)."""
    folder = resources.files("consumer") / "samples"
    return sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.name.endswith(".json"))


def synthetic_bodies(
    messages: int, *, run: str, numbers: int = 2, contacts: int = 20, per_body: int = 3
) -> list[tuple[str, bytes]]:
    """Webhooks in Meta's shape carrying `messages` unique text messages, batched up to
    `per_body` per body (as Meta batches), over a few business numbers and contacts."""
    bodies = []
    for start in range(0, messages, per_body):
        count = min(per_body, messages - start)
        pnid = f"10654035224{start % numbers:04d}"
        sender = f"1650555{(start // per_body) % contacts:04d}"
        msgs = [
            {
                "from": sender,
                "id": f"wamid.{run}.{start + i:08d}",
                "timestamp": str(1749416383 + start + i),
                "type": "text",
                "text": {"body": f"synthetic message {start + i}"},
            }
            for i in range(count)
        ]
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": pnid},
            "contacts": [{"profile": {"name": f"Contact {sender[-4:]}"}, "wa_id": sender}],
            "messages": msgs,
        }
        body = {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}
            ],
        }
        bodies.append((f"synthetic-{start}", orjson.dumps(body)))
    return bodies


def synthetic_status_bodies(
    sent_messages: int, *, run: str, numbers: int = 2, contacts: int = 20, per_body: int = 4
) -> list[tuple[str, bytes]]:
    """Status webhooks for `sent_messages` messages a business sent, in Meta's mix: each
    message sent, delivered and read (every fifth played too, every seventh failed
    after delivered), the statuses of a few messages batched up to `per_body` per
    body, and out of order: each body's statuses in the reverse of the order they
    happened, the bodies in an order of their own (so a read often comes before its
    delivered, as Meta does not promise the order)."""
    updates: list[tuple[str, str, str, str]] = []  # (pnid, wamid, recipient, word)
    for n in range(sent_messages):
        pnid = f"10654035224{n % numbers:04d}"
        recipient = f"1650555{n % contacts:04d}"
        words = ["sent", "delivered", "read"]
        if n % 7 == 6:
            words = ["sent", "delivered", "failed"]
        elif n % 5 == 4:
            words.append("played")
        updates += [(pnid, f"wamid.out.{run}.{n:08d}", recipient, w) for w in words]
    bodies = []
    for start in range(0, len(updates), per_body):
        chunk = updates[start : start + per_body]
        by_number: dict[str, list[dict[str, str]]] = {}
        for pnid, wamid, recipient, word in reversed(chunk):
            by_number.setdefault(pnid, []).append(
                {
                    "id": wamid,
                    "status": word,
                    "timestamp": str(1749416383 + start),
                    "recipient_id": recipient,
                }
            )
        changes = [
            {
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550783881", "phone_number_id": pnid},
                    "statuses": statuses,
                },
            }
            for pnid, statuses in sorted(by_number.items())
        ]
        body = {
            "object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": changes}],
        }
        bodies.append((f"statuses-{start}", orjson.dumps(body)))
    # Out of order across bodies too: every other body moved to the end.
    return bodies[::2][::-1] + bodies[1::2]


@dataclass(frozen=True)
class Contents:
    """What a set of bodies holds, as the pipeline will read it."""

    messages: int  # unique (phone_number_id, wamid)
    statuses: int  # unique (phone_number_id, id, status)
    empty: int  # usable bodies that hold neither (value-level errors, other fields)
    unusable: int  # bodies the pipeline will dead-letter

    def describe(self) -> str:
        """One line: what to expect on the outbound and dead-letter topics."""
        parts = [
            f"they hold {count(self.messages, 'unique message', 'unique messages')} and "
            f"{count(self.statuses, 'unique status update', 'unique status updates')}: expect "
            f"{self.messages} message_created and at most {self.statuses} "
            "message_status_changed (a status at or below its message's state is stored, "
            "not announced)"
        ]
        if self.empty:
            parts.append(
                f"{count(self.empty, 'body', 'bodies')} holding neither (errors, other fields)"
            )
        if self.unusable:
            parts.append(f"{count(self.unusable, 'body', 'bodies')} for the dead-letter topic")
        return "; ".join(parts)


def contents(bodies: Sequence[tuple[str, bytes]], max_bytes: int) -> Contents:
    """Decode each body as the pipeline will, and count what it holds."""
    messages: set[object] = set()
    statuses: set[object] = set()
    empty = unusable = 0
    for _name, body in bodies:
        decoded = intake.decode(
            InboundRecord("produce", 0, 0, None, body, (), 0), max_bytes=max_bytes
        )
        if not isinstance(decoded, Webhook):
            unusable += 1
            continue
        messages.update(m.key for m in decoded.messages)
        statuses.update(u.key for u in decoded.statuses)
        empty += not decoded.messages and not decoded.statuses
    return Contents(len(messages), len(statuses), empty, unusable)


def count(n: int, one: str, many: str) -> str:
    """`1 body`, `2 bodies`: a number and its noun, agreeing."""
    return f"{n} {one if n == 1 else many}"


def read_bodies(paths: Sequence[str]) -> list[tuple[str, bytes]]:
    """The files' bytes, as named (the bundled samples when none is). A path that is not
    a readable file is a bad argument (ConfigError naming it)."""
    if not paths:
        return sample_bodies()
    bodies = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            raise ConfigError("FILE", f"{p} is a folder, not a webhook file")
        try:
            bodies.append((path.name, path.read_bytes()))
        except OSError as exc:
            raise ConfigError("FILE", f"{p}: {exc.strerror or exc}") from exc
    return bodies


def not_json(bodies: Sequence[tuple[str, bytes]]) -> list[str]:
    """The names of bodies that are not JSON (sent all the same: the pipeline will
    dead-letter them, which is what one may want to try)."""
    out = []
    for name, body in bodies:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            out.append(name)
    return out


async def produce(
    bootstrap: str,
    topic: str,
    bodies: Sequence[tuple[str, bytes]],
    *,
    duplicates: int = 0,
    spread: bool = False,
    headers: Sequence[tuple[str, bytes]] = (),
    app_secret: str = "",
) -> list[Sent]:
    """Send each body 1 + `duplicates` times. Copies go to different partitions when
    `spread`, else all copies of a body go to one partition (chosen by its checksum).
    With `app_secret`, each record is signed as Meta signs (replacing any signature
    header in `headers`)."""
    secret = app_secret.encode()
    if secret:
        headers = [(k, v) for k, v in headers if k.lower() != SIGNATURE_HEADER]
    partitions = await partition_count(bootstrap, topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        # Meta's bodies reach 3 MB: what `topics create` lets the inbound topic take.
        max_request_size=default_max_message_bytes(),
    )
    try:
        await producer.start()
        futures = []
        for _name, body in bodies:
            home = zlib.crc32(body) % partitions
            signed = [*headers, (SIGNATURE_HEADER, sign(secret, body))] if secret else headers
            for copy in range(1 + duplicates):
                partition = (home + copy) % partitions if spread else home
                futures.append(
                    await producer.send(topic, body, partition=partition, headers=list(signed))
                )
        sent = [await f for f in futures]
    except KafkaError as exc:
        raise BrokerError(f"producing to {topic!r} failed: {exc!r}") from exc
    finally:
        await producer.stop()
    return [Sent(m.partition, m.offset) for m in sent]
