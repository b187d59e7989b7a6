"""The status updates of a business's sent messages: their order, and what one changes.

Meta sends ``sent``, ``delivered``, ``read``, ``played`` (a voice message listened to) and
``failed`` for each message a business sent, out of order and repeated for days. A
message's state is the highest status seen, and it only moves forward
(docs/design.md, "Statuses"):

    sent < delivered < failed < read < played

* ``read`` may come without ``delivered`` (and ``played`` without ``read``): a higher
  status simply moves past the ones that never came.
* ``failed`` moves past ``sent`` and ``delivered``: a late ``delivered`` (another device,
  or one that arrived late) never hides a failure the business must act on. Only proof
  that the recipient saw the message, ``read`` or ``played``, moves past ``failed``.
* A word Meta may add (not in :data:`ORDER`) is announced once, as sent, and moves
  nothing: the state stays where the known words put it.

A status is identified by (``phone_number_id``, its message ``id``, its word): the same
word for the same message again is a duplicate, whatever else differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from consumer.records import STATUS_EVENT_NAMESPACE, StatusKey

__all__ = ["ORDER", "STATUS_EVENT_NAMESPACE", "Outcome", "StatusKey", "apply", "rank"]

ORDER: Final[Mapping[str, int]] = {
    "sent": 1,
    "delivered": 2,
    "failed": 3,
    "read": 4,
    "played": 5,
}
"""Each known status word and its rank: a higher rank moves the state forward."""


def rank(status: str) -> int | None:
    """The word's place in :data:`ORDER`, or None for a word Meta may add."""
    return ORDER.get(status)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one status update, new to the fence, does to its message's state."""

    announce: bool  # publish a message_status_changed event
    state: str | None  # the message's state after it
    moved: bool  # the state changed


def apply(state: str | None, status: str) -> Outcome:
    """Apply a status update (not seen before) to a message whose state is `state`
    (None: nothing known yet). A known word above the state moves it and is announced;
    one at or below it is stale (stored as seen, not announced); an unknown word is
    announced and moves nothing."""
    new = ORDER.get(status)
    if new is None:
        return Outcome(announce=True, state=state, moved=False)
    if state is None or new > ORDER.get(state, 0):
        return Outcome(announce=True, state=status, moved=True)
    return Outcome(announce=False, state=state, moved=False)
