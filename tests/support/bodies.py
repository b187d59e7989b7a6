"""Meta-shaped webhook bodies for the tests that send real records."""

from __future__ import annotations

from typing import Any

import orjson

# Meta's sample timestamp (2025-06-08): old enough that no test mistakes it for "now".
TIMESTAMP = "1749416383"


def text_webhook(
    pnid: str,
    *wamids: str,
    sender: str = "16505551234",
    name: str = "Test",
    text: str = "hello",
) -> bytes:
    """One entry, one change, holding a text message per wamid (a wamid given twice is
    the same message twice in one webhook)."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": pnid},
        "contacts": [{"profile": {"name": name}, "wa_id": sender}],
        "messages": [
            {
                "from": sender,
                "id": w,
                "timestamp": TIMESTAMP,
                "type": "text",
                "text": {"body": text},
            }
            for w in wamids
        ],
    }
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
        }
    )


def status_update(
    wamid: str,
    status: str,
    *,
    recipient: str = "16505551234",
    timestamp: str = TIMESTAMP,
    category: str = "utility",
) -> dict[str, Any]:
    """Meta's status object of the business's sent message `wamid`, as Meta sends each
    word: `sent` and `delivered` with their pricing, `failed` with its errors, `read` and
    `played` bare (tests/fixtures/webhooks/status_*.json)."""
    update: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": timestamp,
        "recipient_id": recipient,
    }
    if status in ("sent", "delivered"):
        update["pricing"] = {
            "billable": True,
            "pricing_model": "PMP",
            "type": "regular",
            "category": category,
        }
    if status == "failed":
        title = "This message was not delivered to maintain healthy ecosystem engagement."
        update["errors"] = [
            {
                "code": 131049,
                "title": title,
                "message": title,
                "error_data": {"details": "The message failed to be delivered."},
                "href": "/documentation/business-messaging/whatsapp/support/error-codes",
            }
        ]
    return update


def status_webhook(pnid: str, *updates: dict[str, Any]) -> bytes:
    """One entry, one change, holding status objects (status_update) of `pnid`'s sent
    messages, in the order given: Meta batches a number's statuses, several messages'
    and several words of one message in one body."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": pnid},
        "statuses": list(updates),
    }
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
        }
    )


def combined_webhook(*bodies: bytes) -> bytes:
    """One body holding the changes of several (each a body of one entry, as above), in
    their order, as changes of one entry: a POST in which Meta batched, say, a message
    and statuses (tests/fixtures/webhooks/constructed_batch_multi_message.json)."""
    changes = [c for b in bodies for e in orjson.loads(b)["entry"] for c in e["changes"]]
    return orjson.dumps(
        {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": changes}]}
    )


LARGE_PNID = "106540352242922"
LARGE_WAMID_TAIL = "QTRBNjU5OUFFRTAzODEwMTQ0RgA="


def large_webhook(n: int, *, messages: int = 1000, size: int = 3_000_000) -> bytes:
    """A Meta-shaped body of about `size` bytes, at most (Meta's largest: 3 MB, 1,000
    updates): one entry, one change of `messages` text messages from as many senders,
    each with its contact (as Meta sends a batch). The texts fill it, each under Meta's
    4,096 characters. `n` makes its wamids and senders its own."""

    def body(text_chars: int) -> bytes:
        senders = [f"1650555{n:03d}{i:04d}" for i in range(messages)]
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": LARGE_PNID},
            "contacts": [{"profile": {"name": f"Customer {s[-6:]}"}, "wa_id": s} for s in senders],
            "messages": [
                {
                    "from": s,
                    "id": f"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQ{n:04d}{i:05d}{LARGE_WAMID_TAIL}",
                    "timestamp": TIMESTAMP,
                    "type": "text",
                    "text": {
                        "body": (f"record {n} message {i} " + "lorem ipsum " * 400)[:text_chars]
                    },
                }
                for i, s in enumerate(senders)
            ],
        }
        return orjson.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}
                ],
            }
        )

    bare = len(body(0))
    out = body((size - bare) // messages)
    assert len(out) <= size, len(out)
    return out


def json_depth(text: bytes) -> int:
    """The deepest nesting of objects and arrays in JSON text (the top level is 1),
    counted on the text itself, so any depth can be measured."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest
