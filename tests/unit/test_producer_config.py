"""The producer's settings that the throughput and latency figures rest on."""

from __future__ import annotations

from consumer.publish import MAX_REQUEST_BYTES, producer_config


def test_the_producer_does_not_linger() -> None:
    """A linger made every batch's publish wait it out (5 ms cost 5.6 ms of each batch
    at 9,000 records/s, docs/benchmarks.md round six) and bought no batching: a batch's
    sends are all appended before the producer's sender runs."""
    config = producer_config(
        "127.0.0.1:9092", client_id="t", request_timeout_s=30, max_request_bytes=MAX_REQUEST_BYTES
    )
    assert config["linger_ms"] == 0
    assert config["acks"] == "all"
