"""Fuzzing intake.decode: generators of record values, the contract an accepted webhook
must satisfy, and a runner (``python -m tests.fuzz.decoder --cases 50000``)."""
