"""Secured test clusters: tansu behind stunnel (TLS), the SASL gateway, or both.

    SSL             client --TLS--> stunnel --> tansu            (tansu advertises stunnel)
    SASL_PLAINTEXT  client --> SASL gateway --> tansu            (tansu advertises the gateway)
    SASL_SSL        client --TLS--> stunnel --> SASL gateway --> tansu (advertises stunnel)

Each kind is its own tansu (in memory), because a broker advertises one address. The SSL kind
also serves the same broker on a port whose certificate is for another host name (a hostname
mismatch) and on a port that requires a client certificate (mutual TLS).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.embedded.broker import EmbeddedBroker, free_port
from tests.support.sasl_gateway import SaslGateway
from tests.support.tls import TRUSTSTORE_PASSWORD, Pki, Stunnel, TlsService

USERS = {"herald": "herald-Secret-pw-7", "reader": "reader-Secret-pw-8"}
USER, PASSWORD = "herald", USERS["herald"]


@dataclass
class SecuredCluster:
    kind: str  # SSL, SASL_PLAINTEXT, SASL_SSL
    bootstrap: str
    broker: EmbeddedBroker
    pki: Pki
    gateway: SaslGateway | None = None
    stunnel: Stunnel | None = None
    extra: dict[str, str] = field(default_factory=dict)  # wrong-host, mtls addresses

    def integration(self, mechanism: str = "SCRAM-SHA-256", **overrides: Any) -> dict[str, Any]:
        """Herald integration fields that connect to this cluster (PEM truststore)."""
        fields: dict[str, Any] = {"bootstrapServers": self.bootstrap}
        if self.kind == "SSL":
            fields["connectionSecurity"] = "SSL"
        else:
            fields["connectionSecurity"] = f"{self.kind} / {mechanism}"
            fields.update(username=USER, password=PASSWORD)
        if self.kind.endswith("SSL"):
            fields.update(truststoreType="PEM", truststorePath=self.pki.ca)
        fields.update(overrides)
        return fields

    def jks(self) -> dict[str, Any]:
        return {
            "truststoreType": "JKS",
            "truststorePath": self.pki.jks,
            "truststorePassword": TRUSTSTORE_PASSWORD,
        }

    def client_kwargs(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, Any]:
        """aiokafka settings for the test harness's own clients (topic setup, read-back)."""
        kwargs: dict[str, Any] = {"security_protocol": self.kind}
        if self.kind.endswith("SSL"):
            kwargs["ssl_context"] = ssl.create_default_context(cafile=self.pki.ca)
        if self.kind.startswith("SASL"):
            kwargs.update(
                sasl_mechanism=mechanism, sasl_plain_username=USER, sasl_plain_password=PASSWORD
            )
        return kwargs

    def confluent_config(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, Any]:
        """librdkafka (confluent-kafka) settings for this cluster."""
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

    def stop(self) -> None:
        if self.stunnel is not None:
            self.stunnel.stop()
        if self.gateway is not None:
            self.gateway.stop()
        self.broker.stop()


def start_cluster(kind: str, workdir: Path, pki: Pki) -> SecuredCluster:
    workdir.mkdir(parents=True, exist_ok=True)
    tls = kind.endswith("SSL")
    sasl = kind.startswith("SASL")
    tls_port = free_port() if tls else None
    gateway_port = free_port() if sasl else None
    advertised = f"127.0.0.1:{tls_port or gateway_port}"
    broker = EmbeddedBroker(advertised=advertised, log_path=workdir / "tansu.log").start()
    cluster = SecuredCluster(kind, advertised, broker, pki)
    try:
        relay_port = broker.port
        if sasl:
            cluster.gateway = SaslGateway(
                ("127.0.0.1", broker.port), USERS, port=gateway_port
            ).start()
            relay_port = cluster.gateway.port
        if tls:
            assert tls_port is not None and relay_port is not None
            services = [
                TlsService(
                    "kafka", tls_port, relay_port, pki.path("server.pem"), pki.path("server.key")
                )
            ]
            if kind == "SSL":
                wrong, mtls = free_port(), free_port()
                services += [
                    TlsService(
                        "wrong-host",
                        wrong,
                        relay_port,
                        pki.path("wrong-host.pem"),
                        pki.path("wrong-host.key"),
                    ),
                    TlsService(
                        "mtls",
                        mtls,
                        relay_port,
                        pki.path("server.pem"),
                        pki.path("server.key"),
                        client_ca=pki.ca,
                    ),
                ]
                cluster.extra = {"wrong-host": f"127.0.0.1:{wrong}", "mtls": f"127.0.0.1:{mtls}"}
            cluster.stunnel = Stunnel(workdir, services).start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
