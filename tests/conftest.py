"""Shared fixtures: one broker per session, unique topic names, an HTTP receiver.

`broker` is Apache Kafka (one KRaft node, tests.support.apache_kafka) unless
$HERALD_TEST_BROKER is `tansu`; `tansu` is the embedded broker of `herald demo`, for the tests
that keep the embedded default honest. Brokers are session-scoped (a JVM start is seconds);
every test still gets isolation through unique topic (and group) names. The receiver is per
test because its script of answers and its record of requests are test-specific.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agents.embedded.broker import EmbeddedBroker
from agents.embedded.receiver import Receiver
from tests.support.brokers import TANSU_BOOTSTRAPS, default_kind


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A tansu broker on a free loopback port for the whole session (log in the session tmp)."""
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    embedded = EmbeddedBroker(log_path=log_path)
    embedded.start()
    TANSU_BOOTSTRAPS.add(embedded.bootstrap)
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Apache Kafka KRaft node ($HERALD_KAFKA_VERSION, default the 4.x line) with every
    listener (tests.support.apache_kafka), for the whole session."""
    from tests.support.apache_kafka import KafkaNode, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(
            f"Apache Kafka cannot run here: {reason}. Run the tests with ./run-tests, which "
            "installs Java and Maven, or set HERALD_TEST_BROKER=tansu",
            pytrace=False,
        )
    node = KafkaNode(tmp_path_factory.mktemp("kafka"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Any:
    """The session's broker: Apache Kafka, or tansu with HERALD_TEST_BROKER=tansu. Tests use
    only `.bootstrap` (and the deployments pick the broker's settings from it)."""
    return request.getfixturevalue("kafka" if default_kind() == "kafka" else "tansu")


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
