"""Shared fixtures: one embedded Kafka broker per session, unique topic names, an HTTP receiver.

The broker is session-scoped because tansu starts in milliseconds but every test still gets
isolation through unique topic (and group) names; the receiver is per test because its script
of answers and its record of requests are test-specific.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from agents.embedded.broker import EmbeddedBroker
from agents.embedded.receiver import Receiver


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A tansu broker on a free loopback port for the whole session (log in the session tmp)."""
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    embedded = EmbeddedBroker(log_path=log_path)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of topic names unique to this test and run: ``make("events")``.

    The prefix comes from the test name so a topic seen in the broker log points back to its
    test; the random part keeps reruns and parametrized cases apart on the shared broker.
    """
    prefix = _TOPIC_UNSAFE.sub("-", request.node.name).strip("-._")[:80] or "test"
    run = uuid.uuid4().hex[:8]
    counter = itertools.count()

    def make(suffix: str = "") -> str:
        parts = [prefix, _TOPIC_UNSAFE.sub("-", suffix).strip("-") if suffix else "", run]
        parts.append(str(next(counter)))
        return "-".join(p for p in parts if p)

    return make


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A fresh HTTP receiver on a free loopback port, stopped after the test."""
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()
