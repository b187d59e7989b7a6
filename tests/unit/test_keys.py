"""Keys cannot collide (docs/design.md, rule 11): the Redis lease key, the derived
message and event ids, and the Kafka key, built from outside strings, differ for any two
different inputs; and the lease keys of this version never meet the old format's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumer import dedup, events, intake
from consumer.records import MessageKey, Webhook
from consumer.testing import message, record, webhook

# Identifiers as intake admits them: any characters but control characters, the
# separators of every key format included.
_ID_CHARS = st.characters(blacklist_categories=("Cc", "Cs"))
_SEPARATORS = st.sampled_from([":", "#", "/", "1", "12:", ":3", "#1:", "\u202e"])
IDS = st.lists(st.one_of(_ID_CHARS, _SEPARATORS), min_size=1, max_size=12).map("".join)
KEYS = st.builds(MessageKey, IDS, IDS)
_SETTINGS = hsettings(max_examples=400, database=None, deadline=None)


def test_the_separator_collisions_of_the_old_format_are_two_keys() -> None:
    """("1:2", "3") and ("1", "2:3") gave one lease key before; now two, and two ids."""
    a, b = MessageKey("1:2", "3"), MessageKey("1", "2:3")
    assert dedup.lease_key("p", a) != dedup.lease_key("p", b)
    assert a.event_id != b.event_id
    assert a.message_id != b.message_id
    assert events.conversation_key("1:2", "3") != events.conversation_key("1", "2:3")
    c, d = MessageKey("1#2", "3"), MessageKey("1", "2#3")
    assert dedup.lease_key("p", c) != dedup.lease_key("p", d)


@_SETTINGS
@given(KEYS, KEYS)
def test_lease_keys_and_ids_differ_for_different_messages(a: MessageKey, b: MessageKey) -> None:
    """Two different (phone_number_id, wamid) pairs never share a lease key, a message
    id or an event id."""
    if a == b:
        return
    assert dedup.lease_key("wamid", a) != dedup.lease_key("wamid", b)
    assert a.event_id != b.event_id
    assert a.message_id != b.message_id


@_SETTINGS
@given(IDS, IDS, IDS, IDS)
def test_conversation_keys_differ_for_different_conversations(
    pnid_a: str, from_a: str, pnid_b: str, from_b: str
) -> None:
    """Two different (phone_number_id, from) pairs never share a Kafka key."""
    if (pnid_a, from_a) == (pnid_b, from_b):
        return
    assert events.conversation_key(pnid_a, from_a) != events.conversation_key(pnid_b, from_b)


def test_conversation_key_of_a_numeric_phone_number_id_is_unchanged() -> None:
    """Meta's numeric phone_number_ids keep the key they always had, so an upgrade moves
    no conversation to another partition."""
    assert events.conversation_key("106540352242922", "16505551234") == (
        b"106540352242922:16505551234"
    )


@_SETTINGS
@given(KEYS, IDS, IDS)
def test_new_lease_keys_never_equal_an_old_format_key(
    new: MessageKey, old_pnid: str, old_wamid: str
) -> None:
    """An old-format key ``{prefix}:{pnid}:{wamid}`` (versions before 0.2) is never a key
    of this version: old done markers are not misread, they run out (the database fence
    catches redeliveries meanwhile)."""
    assert dedup.lease_key("wamid", new) != f"wamid:{old_pnid}:{old_wamid}"


@_SETTINGS
@given(IDS, IDS)
def test_what_intake_admits_is_what_the_keys_assume(pnid: str, wamid: str) -> None:
    """The ids above are the ones intake lets through: no control character ever reaches
    a key (the derived ids rely on it), everything else does."""
    decoded = intake.decode(record(webhook([message(wamid)], pnid=pnid)), max_bytes=1 << 20)
    assert isinstance(decoded, Webhook), decoded
    assert decoded.messages[0].key == MessageKey(pnid, wamid)
