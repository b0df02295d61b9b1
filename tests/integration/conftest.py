"""Integration fixtures: Herald deployments per test; the test PKI; the secured views onto the
session's Apache Kafka node (tests/conftest.py's `kafka`), started only when a test asks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agents.embedded.receiver import Reply
from tests.integration.test_secrets import EchoingReceiver
from tests.support.herald import HeraldDeployment
from tests.support.secured import SecuredCluster, secured_view
from tests.support.tls import Pki, make_pki


@pytest.fixture
def deployments() -> Iterator[list[HeraldDeployment]]:
    """Herald deployments a test creates; their workers are stopped after the test."""
    created: list[HeraldDeployment] = []
    yield created
    for deployment in created:
        deployment.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A PKI of its own, for TLS servers that are not the Kafka node (a schema registry).
    The secured clusters' PKI is the node's: `ssl_cluster.pki`."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def ssl_cluster(kafka: Any) -> SecuredCluster:
    """The Kafka node's SSL listener; `.extra` has a wrong-host and a mutual-TLS listener.
    Real Kafka even with HERALD_TEST_BROKER=tansu: tansu cannot do TLS."""
    return secured_view(kafka, "SSL")


@pytest.fixture(scope="session")
def sasl_cluster(kafka: Any) -> SecuredCluster:
    """The Kafka node's SASL_PLAINTEXT listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512);
    `.extra["scram-sha-512-only"]` enables SCRAM-SHA-512 alone."""
    return secured_view(kafka, "SASL_PLAINTEXT")


@pytest.fixture(scope="session")
def sasl_ssl_cluster(kafka: Any) -> SecuredCluster:
    """The Kafka node's SASL_SSL listener (the same mechanisms inside TLS)."""
    return secured_view(kafka, "SASL_SSL")


@pytest.fixture
def echoing() -> Iterator[EchoingReceiver]:
    """A receiver that answers 200 unless told otherwise, echoing a request's headers in the
    body of each refusal (test_secrets has its own, answering 400)."""
    server = EchoingReceiver(default=Reply(200))
    server.start()
    try:
        yield server
    finally:
        server.stop()
