"""Secured connections against real TLS (stunnel) and a real SASL authenticator (scramp).

Every case goes through `streams.security`, the one place Herald turns an integration into
client settings, so what passes here is what the worker, `publish`, replay and check use.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.embedded.broker import free_port
from agents.embedded.receiver import Receiver
from agents.embedded.worker import REPO_ROOT
from streams.config.capabilities import check_supported
from streams.config.models import HeraldConfig, Integration
from streams.errors import ConfigError
from streams.security import aiokafka_kwargs, probe
from tests.support.herald import HeraldDeployment, ilert_target
from tests.support.kafka import consume, create_topics, produce
from tests.support.sasl_gateway import SaslGateway
from tests.support.secured import PASSWORD, USER, SecuredCluster
from tests.support.tls import TRUSTSTORE_PASSWORD, keytool_jks

from agents.connectivity import run_in_thread  # isort: skip


def integration(**fields: Any) -> Integration:
    return Integration(name=fields.pop("name", "secure"), **fields)


def check(fields: dict[str, Any]):  # noqa: ANN201 - ProbeResult
    return run_in_thread(lambda: probe(integration(**fields), timeout=10))


def roundtrip(cluster: SecuredCluster, fields: dict[str, Any], topic: str) -> None:
    """Produce with Herald's client settings, read back with the harness's own client."""
    create_topics(cluster.bootstrap, {topic: 1}, client_kwargs=cluster.client_kwargs())

    async def send() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(acks="all", **aiokafka_kwargs(integration(**fields)))
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"secured hello", key=b"k")
        finally:
            await producer.stop()

    run_in_thread(send)
    records = consume(
        cluster.bootstrap, topic, 1, timeout=20, client_kwargs=cluster.client_kwargs()
    )
    assert [r["value"] for r in records] == [b"secured hello"]


# --------------------------------------------------------------------------- TLS


def test_tls_with_a_pem_truststore_produces_and_consumes(ssl_cluster, unique_topic) -> None:
    fields = ssl_cluster.integration()
    result = check(fields)
    assert result.ok, result.summary
    assert "SSL" in result.summary
    roundtrip(ssl_cluster, fields, unique_topic("tls-pem"))


@pytest.mark.parametrize("store", ["pyjks", "keytool", "pkcs12"])
def test_tls_with_java_truststores_read_directly(ssl_cluster, tmp_path, store) -> None:
    """JKS written by pyjks or by Java's own keytool, and a PKCS#12 truststore (keytool's
    default format), all given as truststoreType JKS with their password."""
    path = ssl_cluster.pki.jks
    if store == "keytool":
        path = str(tmp_path / "keytool.jks")
        if not keytool_jks(ssl_cluster.pki, Path(path), TRUSTSTORE_PASSWORD):
            pytest.skip("keytool (Java) is not installed")
    elif store == "pkcs12":
        path = ssl_cluster.pki.p12
    fields = ssl_cluster.integration(
        connectionSecurity="SSL",
        truststoreType="JKS",
        truststorePath=path,
        truststorePassword=TRUSTSTORE_PASSWORD,
    )
    result = check(fields)
    assert result.ok, result.summary


def test_tls_untrusted_certificate_is_reported_not_retried(ssl_cluster) -> None:
    for fields in (
        ssl_cluster.integration(truststorePath=ssl_cluster.pki.other_ca),  # wrong CA
        ssl_cluster.integration(truststoreType="NONE", truststorePath=None),  # system CAs
    ):
        result = check(fields)
        assert not result.ok and result.permanent
        assert "integration 'secure'" in result.summary
        assert "not trusted" in result.summary
        assert "truststore" in result.summary


def test_tls_hostname_mismatch_and_turning_verification_off(ssl_cluster, caplog) -> None:
    wrong_host = ssl_cluster.extra["wrong-host"]
    result = check(ssl_cluster.integration(bootstrapServers=wrong_host))
    assert not result.ok and result.permanent
    assert "not valid for this host name" in result.summary
    assert "127.0.0.1" in result.summary

    with caplog.at_level(logging.WARNING, logger="herald.security"):
        relaxed = check(
            ssl_cluster.integration(bootstrapServers=wrong_host, sslHostnameVerification=False)
        )
    assert relaxed.ok, relaxed.summary
    assert "hostname verification is OFF" in caplog.text


def test_mutual_tls_needs_the_client_certificate(ssl_cluster) -> None:
    mtls = ssl_cluster.extra["mtls"]
    without = check(ssl_cluster.integration(bootstrapServers=mtls))
    assert not without.ok
    with_cert = check(
        ssl_cluster.integration(
            bootstrapServers=mtls,
            sslClientCertificatePath=ssl_cluster.pki.path("client.pem"),
            sslClientKeyPath=ssl_cluster.pki.path("client.key"),
        )
    )
    assert with_cert.ok, with_cert.summary


def test_truststore_problems_stop_the_configuration(ssl_cluster, tmp_path) -> None:
    base = {"name": "local", **ssl_cluster.integration()}
    cases = {
        "missing": ({"truststorePath": str(tmp_path / "nope.pem")}, "does not exist"),
        "wrong password": (
            {**ssl_cluster.jks(), "truststorePassword": "not-the-password"},
            "wrong truststorePassword",
        ),
        "wrong p12 password": (
            {
                **ssl_cluster.jks(),
                "truststorePath": ssl_cluster.pki.p12,
                "truststorePassword": "not-the-password",
            },
            "wrong truststorePassword",
        ),
        "pem that is a jks": ({"truststorePath": ssl_cluster.pki.jks}, "not a PEM file"),
    }
    for name, (overrides, expected) in cases.items():
        config = HeraldConfig(integrations=[{**base, **overrides}])
        with pytest.raises(ConfigError) as info:
            check_supported(config, "herald.yaml")
        text = "\n".join(info.value.problems)
        assert "integrations[0](name=local)" in text, name
        assert expected in text, (name, text)
        assert "not-the-password" not in text


# --------------------------------------------------------------------------- SASL


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_mechanisms_succeed_with_the_right_credentials(
    sasl_cluster, unique_topic, mechanism
) -> None:
    fields = sasl_cluster.integration(mechanism)
    result = check(fields)
    assert result.ok, result.summary
    assert (mechanism, USER) in sasl_cluster.gateway.stats.authenticated
    roundtrip(sasl_cluster, fields, unique_topic(mechanism))


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_wrong_password_and_unknown_user_fail_clearly(sasl_cluster, mechanism) -> None:
    for user, password in ((USER, "wrong-password-1"), ("nobody", PASSWORD)):
        result = check(sasl_cluster.integration(mechanism, username=user, password=password))
        assert not result.ok and result.permanent
        assert f"authentication as {user!r} with {mechanism} failed" in result.summary
        assert "check username and password" in result.summary
        assert password not in result.summary
        assert (mechanism, user) in sasl_cluster.gateway.stats.failed


def test_unsupported_mechanism_names_what_the_broker_offers(sasl_cluster) -> None:
    gateway = SaslGateway(
        ("127.0.0.1", sasl_cluster.broker.port),
        {USER: PASSWORD},
        mechanisms=["SCRAM-SHA-512"],
    ).start()
    try:
        result = check(sasl_cluster.integration("PLAIN", bootstrapServers=gateway.address))
    finally:
        gateway.stop()
    assert not result.ok and result.permanent
    assert "does not accept SASL mechanism PLAIN" in result.summary
    assert "SCRAM-SHA-512" in result.summary


def test_plaintext_client_against_a_sasl_listener_is_explained(sasl_cluster) -> None:
    result = check({"bootstrapServers": sasl_cluster.bootstrap})
    assert not result.ok
    assert "closed during the handshake" in result.summary


@pytest.mark.parametrize(
    "label", ["SASL_SSL / SCRAM-SHA-256 / JKS", "SASL_SSL/SCRAM-SHA-512", "SASL_SSL / PLAIN"]
)
def test_sasl_ssl_combines_tls_and_sasl(sasl_ssl_cluster, unique_topic, label) -> None:
    fields = sasl_ssl_cluster.integration(connectionSecurity=label, **sasl_ssl_cluster.jks())
    result = check(fields)
    assert result.ok, result.summary
    roundtrip(sasl_ssl_cluster, fields, unique_topic("sasl-ssl"))
    wrong = check({**fields, "password": "wrong-password-2"})
    assert not wrong.ok and "failed: wrong username or password" in wrong.summary


# --------------------------------------------------------------------------- herald check


def run_herald(args: list[str], env: dict[str, str], timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_herald_check_connect_reports_every_integration_without_secrets(
    sasl_ssl_cluster, ssl_cluster, tmp_path
) -> None:
    config = {
        "integrations": [
            {
                "name": "good",
                **sasl_ssl_cluster.integration(
                    "SCRAM-SHA-512", password="${env:GOOD_PW}", **sasl_ssl_cluster.jks()
                ),
            },
            {
                "name": "badpw",
                **sasl_ssl_cluster.integration("SCRAM-SHA-256", password="${env:BAD_PW}"),
            },
            {
                "name": "untrusted",
                **ssl_cluster.integration(truststorePath=ssl_cluster.pki.other_ca),
            },
            {"name": "down", "bootstrapServers": f"127.0.0.1:{free_port()}"},
            {"name": "off", "bootstrapServers": "127.0.0.1:9", "active": False},
        ]
    }
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"GOOD_PW": PASSWORD, "BAD_PW": "Wrong-Secret-pw-9"}
    result = run_herald(["check", "--config", str(path), "--connect", "--timeout", "5"], env)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    lines = out.split("Connections:", 1)[1].strip().splitlines()
    assert len(lines) == 4  # the inactive integration is not tried
    by_name = {line.split("'")[1]: line.strip() for line in lines}
    assert by_name["good"].startswith("OK") and "SASL_SSL / SCRAM-SHA-512" in by_name["good"]
    assert by_name["badpw"].startswith("FAIL") and "wrong username or password" in by_name["badpw"]
    assert by_name["untrusted"].startswith("FAIL") and "not trusted" in by_name["untrusted"]
    assert by_name["down"].startswith("FAIL") and "connection refused" in by_name["down"]
    for secret in (PASSWORD, "Wrong-Secret-pw-9", TRUSTSTORE_PASSWORD):
        assert secret not in out + result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- workers


def test_worker_with_a_wrong_password_stops_at_once_naming_the_integration(
    sasl_ssl_cluster, tmp_path, unique_topic, deployments
) -> None:
    topic = unique_topic("alarms")
    herald = HeraldDeployment(
        tmp_path,
        sasl_ssl_cluster.bootstrap,
        handlers=[
            {
                "name": "h",
                "event": f"kafka:local:{topic}",
                "active": True,
                "actions": [{"action": "webhook", "webhook": {"url": "http://127.0.0.1:9/"}}],
            }
        ],
        integration=sasl_ssl_cluster.integration("SCRAM-SHA-256", password="Wrong-Secret-pw-9"),
        client_kwargs=sasl_ssl_cluster.client_kwargs(),
    )
    deployments.append(herald)
    worker = herald.worker()
    worker.start()
    worker._process.wait(timeout=120)  # noqa: SLF001 - it must exit by itself
    log = worker.log_text(current_run=True)
    assert worker.returncode == 2, log[-3000:]
    assert "integration 'local'" in log
    assert "authentication as 'herald' with SCRAM-SHA-256 failed" in log
    assert "not starting" in log
    assert "Traceback" not in log
    assert "Wrong-Secret-pw-9" not in log


def test_worker_on_sasl_ssl_routes_and_publishes_to_a_tls_integration(
    sasl_ssl_cluster, ssl_cluster, receiver: Receiver, tmp_path, unique_topic, deployments
) -> None:
    """Faust's consumer, producer and tables on SASL_SSL; `publish` to another integration
    (SSL, JKS truststore) through Herald's own producer."""
    source, sink = unique_topic("alarms"), unique_topic("out")
    create_topics(ssl_cluster.bootstrap, {sink: 1}, client_kwargs=ssl_cluster.client_kwargs())
    handler = {
        "name": "secured",
        "event": f"kafka:local:{source}",
        "active": True,
        "actions": [
            {
                "action": "ilert_event",
                "ilert_event": {"eventType": "ALERT", "alertKey": "${code}", "summary": "${text}"},
            },
            {
                "action": "publish",
                "publish": {
                    "to": f"kafka:tls:{sink}",
                    "key": "${code}",
                    "value": {"code": "${code}"},
                },
            },
        ],
    }
    herald = HeraldDeployment(
        tmp_path,
        sasl_ssl_cluster.bootstrap,
        handlers=[handler],
        targets=[ilert_target(receiver.url)],
        integration=sasl_ssl_cluster.integration("SCRAM-SHA-512", **sasl_ssl_cluster.jks()),
        integrations=[{"name": "tls", **ssl_cluster.integration(**ssl_cluster.jks())}],
        client_kwargs=sasl_ssl_cluster.client_kwargs(),
    )
    deployments.append(herald)
    worker = herald.start_worker()
    produce(
        sasl_ssl_cluster.bootstrap,
        source,
        [{"key": "M-1", "value": {"code": "M-1", "text": "Pump down"}}],
        client_kwargs=sasl_ssl_cluster.client_kwargs(),
    )
    events = receiver.wait_for(1, timeout=60, path="/api/events")
    assert events[0].json["alertKey"] == "M-1" and events[0].json["summary"] == "Pump down"
    records = consume(
        ssl_cluster.bootstrap, sink, 1, timeout=60, client_kwargs=ssl_cluster.client_kwargs()
    )
    assert records[0]["json"] == {"code": "M-1"} and records[0]["key"] == b"M-1"
    log = worker.log_text()
    for secret in (PASSWORD, TRUSTSTORE_PASSWORD):
        assert secret not in log
