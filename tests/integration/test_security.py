"""Secured connections against real Apache Kafka: its TLS, SASL and ACLs, not stand-ins.

Every case goes through `streams.security`, the one place Herald turns an integration into
client settings, so what passes here is what the worker, `publish`, replay and check use. The
clusters are listeners of the session's Kafka node (tests/support/secured.py). A refused login
is checked on both sides: Herald's words, and the broker's own `Failed authentication` line.
Authorization (ACLs) is checked through `herald check --connect` and a worker that waits for a
missing permission instead of failing inside a fetch.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
from tests.support.secured import PASSWORD, USER, USERS, SecuredCluster
from tests.support.tls import TRUSTSTORE_PASSWORD, keytool_jks

from agents.connectivity import run_in_thread  # isort: skip


def integration(**fields: Any) -> Integration:
    return Integration(name=fields.pop("name", "secure"), **fields)


def check(fields: dict[str, Any]):  # noqa: ANN201 - ProbeResult
    return run_in_thread(lambda: probe(integration(**fields), timeout=10))


def failed_logins(cluster: SecuredCluster) -> int:
    """How many times the broker logged a refused SASL login so far."""
    return cluster.node.log_text().count("Failed authentication with /127.0.0.1")


def wait_failed_logins(cluster: SecuredCluster, more_than: int, timeout: float = 10.0) -> int:
    """The broker's count of refused logins once it exceeds `more_than` (its log is written
    a moment after it answers)."""
    deadline = time.monotonic() + timeout
    while (count := failed_logins(cluster)) <= more_than and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


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
    started = time.monotonic()
    without = check(ssl_cluster.integration(bootstrapServers=mtls))
    assert not without.ok and without.permanent
    assert "integration 'secure'" in without.summary
    assert "requires a TLS client certificate" in without.summary
    assert "sslClientCertificatePath" in without.summary
    assert time.monotonic() - started < 10
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
    before = failed_logins(sasl_cluster)
    result = check(fields)
    assert result.ok, result.summary
    assert f"SASL_PLAINTEXT / {mechanism} as {USER!r}" in result.summary
    roundtrip(sasl_cluster, fields, unique_topic(mechanism))
    assert failed_logins(sasl_cluster) == before


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_wrong_password_and_unknown_user_fail_clearly(sasl_cluster, mechanism) -> None:
    """aiokafka's own clients only say `Unable to bootstrap` here; Herald's probe speaks
    SASL itself and names the user and mechanism. The broker logs the refusal."""
    for user, password in ((USER, "wrong-password-1"), ("nobody", PASSWORD)):
        before = failed_logins(sasl_cluster)
        started = time.monotonic()
        result = check(sasl_cluster.integration(mechanism, username=user, password=password))
        assert time.monotonic() - started < 10
        assert not result.ok and result.permanent
        assert f"authentication as {user!r} with {mechanism} failed" in result.summary
        assert "check username and password" in result.summary
        assert password not in result.summary
        assert wait_failed_logins(sasl_cluster, before) > before


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_unsupported_mechanism_names_what_the_broker_offers(sasl_cluster, mechanism) -> None:
    """The SCRAM512 listener enables SCRAM-SHA-512 only (listener.name...sasl.enabled.
    mechanisms); the same user's SCRAM-SHA-512 login there works."""
    only = sasl_cluster.extra["scram-sha-512-only"]
    result = check(sasl_cluster.integration(mechanism, bootstrapServers=only))
    assert not result.ok and result.permanent
    assert f"does not accept SASL mechanism {mechanism} (it offers SCRAM-SHA-512)" in (
        result.summary
    )
    allowed = check(sasl_cluster.integration("SCRAM-SHA-512", bootstrapServers=only))
    assert allowed.ok, allowed.summary


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
    # The connections, up to the live handlers the check lists after them.
    lines = out.split("Connections:", 1)[1].split("\nLive handlers", 1)[0].strip().splitlines()
    # The one that connected was also asked what it may do (every resource is open to it).
    authorized = [line.strip() for line in lines if "refused none" in line]
    assert authorized == [
        "OK    integration 'good': the broker refused none of the permissions it needs on "
        "10 topic(s) and 1 group(s)"
    ]
    lines = [line for line in lines if "refused none" not in line]
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


# --------------------------------------------------------------------------- authorization


def test_herald_check_connect_names_each_missing_permission(
    sasl_cluster, unique_topic, tmp_path
) -> None:
    """`reader` may DESCRIBE the source topic but not READ it, may not use the consumer
    group, may READ the (pre-created) actions topic but not WRITE it; `herald` may not WRITE
    a publish target. Each is one FAIL line naming the integration, the resource and the
    permission, and the broker was only asked (nothing was created or joined)."""
    node = sasl_cluster.node
    prefix = f"authz{os.getpid()}{int(time.monotonic() * 1000) % 100000}"
    source, sink = unique_topic("alarms"), unique_topic("sink")
    group, actions = f"{prefix}-group", f"{prefix}-actions"
    create_topics(node.bootstrap, {source: 1, sink: 1, actions: 1})
    node.add_acl("User:reader", "TOPIC", source, "DESCRIBE")
    node.add_acl("User:herald", "GROUP", group, "READ")  # someone else's group
    for operation in ("DESCRIBE", "READ"):
        node.add_acl("User:reader", "TOPIC", actions, operation)
    node.add_acl("User:reader", "TOPIC", sink, "WRITE")  # not herald
    config = {
        "herald": {"topicPrefix": prefix},
        "integrations": [
            {
                "name": "local",
                "consumerGroupId": group,
                **node.integration("SASL_PLAINTEXT", user="reader", password="${env:READER_PW}"),
            },
            {"name": "out", **sasl_cluster.integration("SCRAM-SHA-512")},
        ],
        "eventHandlers": [
            {
                "name": "h",
                "event": f"kafka:local:{source}",
                "active": True,
                "actions": [{"action": "publish", "publish": {"to": f"kafka:out:{sink}"}}],
            }
        ],
    }
    path = tmp_path / "authz.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    result = run_herald(
        ["check", "--config", str(path), "--connect", "--timeout", "5"],
        {"READER_PW": USERS["reader"]},
    )
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    failing = [line.strip() for line in out.splitlines() if line.strip().startswith("FAIL")]
    expected = [
        ("'local'", "user 'reader' lacks READ on topic", source),
        ("'local'", "user 'reader' lacks DESCRIBE and READ on group", group),
        ("'local'", "user 'reader' lacks WRITE on topic", actions),
        ("'out'", "user 'herald' lacks DESCRIBE and WRITE on topic", sink),
    ]
    for integration, words, resource in expected:
        matching = [
            line
            for line in failing
            if f"integration {integration}" in line and words in line and f"'{resource}'" in line
        ]
        assert len(matching) == 1, (words, resource, out)
        assert "kafka-acls --add" in matching[0]
    assert len(failing) == len(expected), out
    assert "Herald's actions topic" in out and "source topic of handler 'h'" in out
    assert USERS["reader"] not in out + result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 30, elapsed  # the interpreter start is most of it
    created = run_in_thread(lambda: _topics(node.bootstrap))
    assert f"{prefix}-executions" not in created  # validate-only: CREATE asked, not done


async def _topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def _ready_status(worker) -> int | None:  # noqa: ANN001 - a WorkerProcess
    """/ready's HTTP status, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{worker.web_url}/ready", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_worker_waits_for_a_missing_read_permission_then_delivers(
    sasl_cluster, receiver: Receiver, tmp_path, unique_topic, deployments
) -> None:
    """Without READ on its source topic (DESCRIBE granted, so a raw client would fail with
    TopicAuthorizationFailedError inside a fetch), the worker says what is missing within
    seconds, keeps running, consumes nothing and is not ready; once READ is granted it
    starts and delivers the record that was waiting."""
    node = sasl_cluster.node
    topic = unique_topic("alarms")
    handler = {
        "name": "guarded",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {
                "action": "ilert_event",
                "ilert_event": {"eventType": "ALERT", "alertKey": "${code}", "summary": "${text}"},
            }
        ],
    }
    herald = HeraldDeployment(
        tmp_path,
        node.address("SASL_PLAINTEXT"),
        handlers=[handler],
        targets=[ilert_target(receiver.url)],
        integration=node.integration("SASL_PLAINTEXT", user="reader", mechanism="SCRAM-SHA-512"),
        client_kwargs=node.client_kwargs("SASL_PLAINTEXT", user="reader"),
    )
    deployments.append(herald)
    node.add_acl("User:reader", "TOPIC", topic, "DESCRIBE")
    produce(node.bootstrap, topic, [{"key": "A-1", "value": {"code": "A-1", "text": "waited"}}])

    worker = herald.worker()
    started = time.monotonic()
    worker.start()
    missing = worker.wait_for_log(
        rf"integration 'local': not authorized: user 'reader' lacks READ on topic "
        rf"'{re.escape(topic)}' \(source topic of handler 'guarded'\)",
        timeout=60,
    )
    assert missing is not None
    waited_for = time.monotonic() - started
    worker.wait_for_log("waiting for 1 missing permission", timeout=5)
    time.sleep(4)  # more than one recheck: still waiting, not crashed, nothing consumed
    assert worker.running, worker.log_text(current_run=True)[-3000:]
    assert _ready_status(worker) != 200
    assert receiver.requests == []
    log = worker.log_text(current_run=True)
    assert log.count("lacks READ on topic") == 1  # said once, not every recheck
    assert "Traceback" not in log and USERS["reader"] not in log

    node.add_acl("User:reader", "TOPIC", topic, "READ")
    worker.wait_for_log("the missing permissions were granted; starting", timeout=30)
    (event,) = receiver.wait_for(1, timeout=90, path="/api/events")
    assert event.json["alertKey"] == "A-1" and event.json["summary"] == "waited"
    worker.wait_http_ready(60)
    assert waited_for < 45, waited_for
