"""Integration → client settings: protocols, truststores, client certificates, redaction."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from agents.connectivity import broker_credentials
from streams.config.capabilities import check_supported
from streams.config.models import HeraldConfig, Integration
from streams.errors import ConfigError
from streams.security import (
    SecurityError,
    aiokafka_kwargs,
    build_ssl_context,
    classify,
    client_security,
    redact,
)
from tests.support.tls import TRUSTSTORE_PASSWORD, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def integration(**fields) -> Integration:
    return Integration(name=fields.pop("name", "kafka"), bootstrapServers="h:9093", **fields)


def ca_names(context: ssl.SSLContext) -> list[str]:
    return [dict(x[0] for x in cert["subject"])["commonName"] for cert in context.get_ca_certs()]


def test_plaintext_has_no_tls_and_no_sasl() -> None:
    assert aiokafka_kwargs(integration()) == {
        "bootstrap_servers": "h:9093",
        "security_protocol": "PLAINTEXT",
    }
    assert broker_credentials(integration()) is None


@pytest.mark.parametrize(
    ("label", "protocol", "mechanism"),
    [
        ("SASL_PLAINTEXT / PLAIN", "SASL_PLAINTEXT", "PLAIN"),
        ("SASL_SSL / SCRAM-SHA-256 / JKS", "SASL_SSL", "SCRAM-SHA-256"),
        ("SASL_SSL/SCRAM-SHA-512", "SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_SSL_PLAIN", "SASL_SSL", "PLAIN"),
    ],
)
def test_sasl_labels_become_client_settings_and_faust_credentials(
    label: str, protocol: str, mechanism: str
) -> None:
    integ = integration(connectionSecurity=label, username="u", password="pw-123")
    kwargs = aiokafka_kwargs(integ)
    assert kwargs["security_protocol"] == protocol
    assert kwargs["sasl_mechanism"] == mechanism
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("u", "pw-123")
    assert isinstance(kwargs.get("ssl_context"), ssl.SSLContext) == (protocol == "SASL_SSL")
    # What Faust hands aiokafka for its consumer, producer and admin is the same.
    faust_kwargs = credentials_to_aiokafka_auth(broker_credentials(integ))
    assert faust_kwargs["security_protocol"] == protocol
    assert faust_kwargs["sasl_mechanism"] == mechanism
    assert faust_kwargs["sasl_plain_password"] == "pw-123"
    assert "pw-123" not in repr(client_security(integ))


def test_ssl_faust_credentials_carry_the_context(pki: Pki) -> None:
    integ = integration(connectionSecurity="SSL", truststoreType="PEM", truststorePath=pki.ca)
    faust_kwargs = credentials_to_aiokafka_auth(broker_credentials(integ))
    assert faust_kwargs["security_protocol"] == "SSL"
    assert ca_names(faust_kwargs["ssl_context"]) == ["Herald Test CA"]


@pytest.mark.parametrize("kind", ["PEM", "JKS", "P12"])
def test_truststores_replace_the_system_cas(pki: Pki, kind: str) -> None:
    fields = {"truststoreType": "PEM", "truststorePath": pki.ca}
    if kind != "PEM":
        fields = {
            "truststoreType": "JKS",
            "truststorePath": pki.jks if kind == "JKS" else pki.p12,
            "truststorePassword": TRUSTSTORE_PASSWORD,
        }
    context = build_ssl_context(integration(connectionSecurity="SSL", **fields))
    assert ca_names(context) == ["Herald Test CA"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_hostname_verification_off_warns(pki: Pki, caplog) -> None:
    integ = integration(
        connectionSecurity="SSL",
        truststoreType="PEM",
        truststorePath=pki.ca,
        sslHostnameVerification=False,
    )
    with caplog.at_level(logging.WARNING, logger="herald.security"):
        context = build_ssl_context(integ)
    assert not context.check_hostname
    assert "integration 'kafka': TLS hostname verification is OFF" in caplog.text


def test_client_certificate_is_loaded_and_its_errors_are_named(pki: Pki) -> None:
    ok = integration(
        connectionSecurity="SSL",
        sslClientCertificatePath=pki.path("client.pem"),
        sslClientKeyPath=pki.path("client.key"),
    )
    build_ssl_context(ok)
    mismatched = integration(
        connectionSecurity="SSL",
        sslClientCertificatePath=pki.path("client.pem"),
        sslClientKeyPath=pki.path("server.key"),
    )
    with pytest.raises(SecurityError, match="cannot use the client certificate"):
        build_ssl_context(mismatched)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"truststoreType": "PEM", "truststorePath": "/nonexistent/ca.pem"}, "does not exist"),
        ({"truststoreType": "JKS", "truststorePath": "{jks}"}, "needs truststorePassword"),
        (
            {"truststoreType": "JKS", "truststorePath": "{jks}", "truststorePassword": "bad-pw"},
            "wrong truststorePassword",
        ),
        (
            {"truststoreType": "JKS", "truststorePath": "{ca}", "truststorePassword": "x-pw"},
            "not a Java truststore",
        ),
        ({"truststoreType": "PEM", "truststorePath": "{p12}"}, "not a PEM file"),
    ],
)
def test_truststore_errors_name_the_integration_and_the_fix(
    pki: Pki, fields: dict, expected: str
) -> None:
    fields = {
        k: v.format(jks=pki.jks, ca=pki.ca, p12=pki.p12) if isinstance(v, str) else v
        for k, v in fields.items()
    }
    with pytest.raises(SecurityError) as info:
        build_ssl_context(integration(connectionSecurity="SSL", **fields))
    message = str(info.value)
    assert message.startswith("integration 'kafka': ")
    assert expected in message
    assert "bad-pw" not in message


def test_capabilities_no_longer_refuse_security_or_avro(pki: Pki) -> None:
    config = HeraldConfig(
        integrations=[
            {
                "name": "local",
                "bootstrapServers": "h:9093",
                "connectionSecurity": "SASL_SSL / SCRAM-SHA-256 / JKS",
                "username": "u",
                "password": "p-1234",
                "truststoreType": "JKS",
                "truststorePath": pki.jks,
                "truststorePassword": TRUSTSTORE_PASSWORD,
                "sendingProtocol": "AVRO",
                "schemaRegistry": {"url": "https://sr.example:8081"},
            }
        ]
    )
    check_supported(config, "f.yaml")  # no error


def test_capabilities_report_unreadable_truststores(tmp_path: Path) -> None:
    config = HeraldConfig(
        integrations=[
            {
                "name": "local",
                "bootstrapServers": "h:9093",
                "connectionSecurity": "SSL",
                "truststoreType": "PEM",
                "truststorePath": str(tmp_path / "missing.pem"),
            }
        ]
    )
    with pytest.raises(ConfigError) as info:
        check_supported(config, "f.yaml")
    assert info.value.problems[0].startswith("f.yaml: integrations[0](name=local): ")
    assert "does not exist" in info.value.problems[0]


def test_redact_masks_every_secret_of_the_integration() -> None:
    integ = integration(
        connectionSecurity="SASL_SSL / PLAIN",
        username="u",
        password="kafka-pw",
        sendingProtocol="AVRO",
        schemaRegistry={
            "url": "https://sr",
            "authType": "USER_INFO",
            "apiKey": "sr-key",
            "apiSecret": "sr-secret",
        },
    )
    text = redact("kafka-pw sr-key sr-secret visible", integ)
    assert text == "*** *** *** visible"


def test_classify_generic_errors_hides_secrets() -> None:
    integ = integration(connectionSecurity="SASL_PLAINTEXT / PLAIN", username="u", password="pw-9")
    problem = classify(RuntimeError("boom pw-9"), integ, "h:9093")
    assert problem.message == "integration 'kafka': h:9093: RuntimeError: boom ***"
    assert not problem.permanent
    refused = classify(ConnectionRefusedError(111, "refused"), integ, "h:9093")
    assert refused.kind == "unreachable" and not refused.permanent
