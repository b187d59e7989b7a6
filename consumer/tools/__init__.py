"""The operator's and developer's tools, beside the flow and apart from it.

    dlq          python -m consumer dlq list | replay: the dead-letter topic
    produce      python -m consumer produce: webhook bodies to the inbound topic
    topics       create topics, read a topic from offset 0 completely (tail, dlq, tests)
    demo         python -m consumer demo: the whole flow on embedded services
    bench        python -m consumer bench: the pipeline against its reference modes
    passthrough  the bench's pass-through reference member (python -m consumer.tools.passthrough)
    members      start member processes (the demo, the bench, the tests)
    embedded     the services the demo, the bench and the tests start themselves

The runtime (``python -m consumer run``) imports none of them.
"""
