"""wamid-guard: store every WhatsApp message exactly once and announce it once.

The flow, one module a stage (see README.md and docs/design.md):

    intake      raw Kafka record -> Webhook (messages, statuses) or Invalid(reason)
    dedup       Redis lease per (phone_number_id, wamid): acquired, held, or done
    store       one transaction: messages INSERT ... ON CONFLICT DO NOTHING + outbox rows
    publish     message_created events after the commit; dead letters for bad input
    offsets     per-partition ledger: commit only `lowest not-yet-durable offset`
    pipeline    one batch through all of the above
    service     lifecycle: startup, poll loop, rebalances, shutdown

The operator's and developer's tools (dlq, produce, tail's reader, demo, bench) are in
``consumer.tools``; nothing there is imported by ``python -m consumer run``.
"""

__version__ = "0.3.1"
