"""Meta-shaped webhook bodies for the tests that send real records."""

from __future__ import annotations

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
