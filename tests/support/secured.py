"""Secured views onto the session's Apache Kafka node: one per security protocol.

The `ssl_cluster`, `sasl_cluster` and `sasl_ssl_cluster` fixtures used to be a tansu each,
behind stunnel (TLS) and a home-made SASL gateway. They are now listeners of the one real
broker (tests.support.apache_kafka.KafkaNode), so TLS, SASL and ACLs are Kafka's own:

    SSL             the SSL listener; extra: `wrong-host` (the WRONGHOST listener, whose
                    certificate does not name 127.0.0.1) and `mtls` (client certificate required)
    SASL_PLAINTEXT  the SASL_PLAINTEXT listener; extra: `scram-sha-512-only` (SCRAM512)
    SASL_SSL        the SASL_SSL listener

Every view shares the node, its PKI and its users, so a record written through one is read
through another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.support.apache_kafka import USERS, KafkaNode
from tests.support.tls import TRUSTSTORE_PASSWORD, Pki

__all__ = ["PASSWORD", "USER", "USERS", "SecuredCluster", "secured_view"]

USER = "herald"
PASSWORD = USERS[USER]

#: Extra addresses of each view, by the names the tests use -> the node's listener.
_EXTRA: dict[str, dict[str, str]] = {
    "SSL": {"wrong-host": "WRONGHOST", "mtls": "MTLS"},
    "SASL_PLAINTEXT": {"scram-sha-512-only": "SCRAM512"},
    "SASL_SSL": {},
}


@dataclass(frozen=True)
class SecuredCluster:
    """One security protocol of the session's Kafka node, with the settings tests need."""

    kind: str  # SSL, SASL_PLAINTEXT, SASL_SSL: also the node's listener name
    node: KafkaNode

    @property
    def bootstrap(self) -> str:
        return self.node.address(self.kind)

    @property
    def pki(self) -> Pki:
        assert self.node.pki is not None
        return self.node.pki

    @property
    def extra(self) -> dict[str, str]:
        """Other listeners of the same broker, by purpose (see the module docstring)."""
        return {name: self.node.address(listener) for name, listener in _EXTRA[self.kind].items()}

    def integration(self, mechanism: str = "SCRAM-SHA-256", **overrides: Any) -> dict[str, Any]:
        """Herald integration fields for this listener as `herald` (PEM truststore)."""
        return self.node.integration(self.kind, user=USER, mechanism=mechanism, **overrides)

    def jks(self) -> dict[str, Any]:
        return {
            "truststoreType": "JKS",
            "truststorePath": self.pki.jks,
            "truststorePassword": TRUSTSTORE_PASSWORD,
        }

    def client_kwargs(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, Any]:
        """aiokafka settings for the test harness's own clients (topic setup, read-back)."""
        return self.node.client_kwargs(self.kind, user=USER, mechanism=mechanism)

    def confluent_config(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, Any]:
        """librdkafka (confluent-kafka) settings for this listener."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.kind,
        }
        if self.kind.endswith("SSL"):
            config["ssl.ca.location"] = self.pki.ca
        if self.kind.startswith("SASL"):
            config.update(
                {"sasl.mechanisms": mechanism, "sasl.username": USER, "sasl.password": PASSWORD}
            )
        return config


def secured_view(node: KafkaNode, kind: str) -> SecuredCluster:
    """The `kind` view of `node`; KeyError when the node lacks one of its listeners."""
    if kind not in _EXTRA:
        raise ValueError(f"kind must be one of {sorted(_EXTRA)}")
    view = SecuredCluster(kind, node)
    _ = (view.bootstrap, view.extra)  # a missing listener fails the fixture, not the test
    return view
