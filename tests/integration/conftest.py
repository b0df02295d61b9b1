"""Integration fixtures: Herald deployments per test; secured clusters and the test PKI,
started once per session and only when a test asks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.herald import HeraldDeployment
from tests.support.secured import SecuredCluster, start_cluster
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
    return make_pki(tmp_path_factory.mktemp("pki"))


def _cluster(kind: str, tmp_path_factory: pytest.TempPathFactory, pki: Pki):
    cluster = start_cluster(kind, tmp_path_factory.mktemp(kind.lower()), pki)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ssl_cluster(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[SecuredCluster]:
    """TLS in front of tansu (stunnel), plus a wrong-host port and a mutual-TLS port."""
    yield from _cluster("SSL", tmp_path_factory, pki)


@pytest.fixture(scope="session")
def sasl_cluster(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[SecuredCluster]:
    """The SASL gateway (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) in front of tansu."""
    yield from _cluster("SASL_PLAINTEXT", tmp_path_factory, pki)


@pytest.fixture(scope="session")
def sasl_ssl_cluster(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[SecuredCluster]:
    """TLS (stunnel) in front of the SASL gateway in front of tansu."""
    yield from _cluster("SASL_SSL", tmp_path_factory, pki)
