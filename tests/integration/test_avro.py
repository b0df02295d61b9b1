"""Avro with a schema registry: interoperability with Confluent's serializers, the registry API,
and real workers (decode, publish, dead letters, a registry outage, SASL_SSL end to end)."""

from __future__ import annotations

import datetime
import decimal
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from agents.connectivity import run_in_thread
from agents.embedded.receiver import Receiver
from streams.avro.codec import AvroCodec, AvroSpec, EncodeError
from streams.avro.registry import RegistryClient, probe_registry
from streams.config.models import Integration
from streams.errors import DecodeError
from tests.support.herald import HeraldDeployment, ilert_target, webhook_target
from tests.support.kafka import consume, produce
from tests.support.schema_registry import CONTENT_TYPE, SchemaRegistryServer

ALARM = {
    "type": "record",
    "name": "Alarm",
    "namespace": "com.acme.plant",
    "fields": [
        {"name": "code", "type": "string"},
        {"name": "severity", "type": "int"},
        {
            "name": "state",
            "type": {"type": "enum", "name": "State", "symbols": ["SET", "ACK", "CLR"]},
        },
        {"name": "comment", "type": ["null", "string"], "default": None},
        {"name": "reading", "type": ["null", "double"], "default": None},
        {"name": "payload", "type": "bytes"},
        {
            "name": "amount",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
        },
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "labels", "type": {"type": "map", "values": "string"}},
        {
            "name": "site",
            "type": {
                "type": "record",
                "name": "Site",
                "fields": [
                    {"name": "name", "type": "string"},
                    {"name": "zone", "type": ["null", "int"], "default": None},
                ],
            },
        },
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}
ALARM_ID = "7d2b6a3e-9c44-4a9e-8e0f-0c1f6f4f5a10"
PYTHON_VALUE = {
    "code": "M-17",
    "severity": 3,
    "state": "SET",
    "comment": "Pump pressure low",
    "reading": None,
    "payload": b"\x00\x01\xff",
    "amount": decimal.Decimal("12.30"),
    "at": datetime.datetime(2024, 5, 1, 13, 45, 0, 250000, tzinfo=datetime.UTC),
    "day": datetime.date(2024, 5, 1),
    "id": ALARM_ID,
    "labels": {"line": "2"},
    "site": {"name": "plant-2", "zone": 3},
    "tags": ["pump", "pressure"],
}
# What Confluent's AvroDeserializer gives back (uuid as a UUID object).
DESERIALIZED = {**PYTHON_VALUE, "id": uuid.UUID(ALARM_ID)}
RENDERED = {
    "code": "M-17",
    "severity": 3,
    "state": "SET",
    "comment": "Pump pressure low",
    "reading": None,
    "payload": "AAH/",
    "amount": "12.30",
    "at": "2024-05-01T13:45:00.250Z",
    "day": "2024-05-01",
    "id": ALARM_ID,
    "labels": {"line": "2"},
    "site": {"name": "plant-2", "zone": 3},
    "tags": ["pump", "pressure"],
}
STRATEGIES = {
    "TopicNameStrategy": (topic_subject_name_strategy, "{topic}-value"),
    "io.confluent.kafka.serializers.subject.RecordNameStrategy": (
        record_subject_name_strategy,
        "com.acme.plant.Alarm",
    ),
    "io.confluent.kafka.serializers.subject.TopicRecordNameStrategy": (
        topic_record_subject_name_strategy,
        "{topic}-com.acme.plant.Alarm",
    ),
}


@pytest.fixture(scope="module")
def registry() -> Iterator[SchemaRegistryServer]:
    server = SchemaRegistryServer().start()
    yield server
    server.stop()


def avro_integration(url: str, **registry: Any) -> dict[str, Any]:
    return {"sendingProtocol": "AVRO", "schemaRegistry": {"url": url, **registry}}


def codec_for(url: str, **fields: Any) -> AvroCodec:
    integration = Integration(
        name="avro", bootstrapServers="127.0.0.1:9", **avro_integration(url, **fields)
    )
    return AvroCodec(integration, RegistryClient(integration))


def confluent_serializer(registry: SchemaRegistryServer, strategy: Any) -> AvroSerializer:
    client = SchemaRegistryClient({"url": registry.url})
    return AvroSerializer(client, json.dumps(ALARM), conf={"subject.name.strategy": strategy})


def decode(codec: AvroCodec, data: bytes) -> Any:
    async def run() -> Any:
        try:
            await codec.prepare(data, None)
            return codec.decode_value(data)
        finally:
            await codec.registry.close()

    return run_in_thread(run)


def encode(codec: AvroCodec, topic: str, value: Any, spec: AvroSpec) -> bytes:
    async def run() -> bytes:
        try:
            return await codec.encode(topic, value, spec)
        finally:
            await codec.registry.close()

    return run_in_thread(run)


# --------------------------------------------------------------------------- interop


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_confluent_serializer_output_decodes_in_herald(registry, unique_topic, strategy) -> None:
    topic = unique_topic("in")
    confluent_strategy, subject = STRATEGIES[strategy]
    data = confluent_serializer(registry, confluent_strategy)(
        PYTHON_VALUE, SerializationContext(topic, MessageField.VALUE)
    )
    assert subject.format(topic=topic) in registry.subjects
    assert decode(codec_for(registry.url, valueSubjectNameStrategy=strategy), data) == RENDERED


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_herald_output_decodes_with_confluent_deserializer(
    registry, unique_topic, strategy
) -> None:
    topic = unique_topic("out")
    _, subject = STRATEGIES[strategy]
    codec = codec_for(registry.url, valueSubjectNameStrategy=strategy)
    data = encode(codec, topic, RENDERED, AvroSpec(schema=json.dumps(ALARM)))
    assert subject.format(topic=topic) in registry.subjects  # registered where Confluent looks
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    assert deserializer(data, SerializationContext(topic, MessageField.VALUE)) == DESERIALIZED


def test_publish_without_auto_registration_and_by_subject(registry, unique_topic) -> None:
    topic = unique_topic("strict")
    schema = json.dumps({**ALARM, "name": "Strict"})
    codec = codec_for(registry.url, autoRegisterSchemas=False)
    with pytest.raises(EncodeError) as info:
        encode(codec, topic, RENDERED, AvroSpec(schema=schema))
    assert not info.value.retryable
    assert f"not registered under subject '{topic}-value'" in str(info.value)
    schema_id = registry.register(f"{topic}-value", schema)
    data = encode(
        codec_for(registry.url, autoRegisterSchemas=False), topic, RENDERED, AvroSpec(schema=schema)
    )
    assert int.from_bytes(data[1:5], "big") == schema_id
    by_subject = encode(
        codec_for(registry.url), topic, RENDERED, AvroSpec(subject=f"{topic}-value", version="1")
    )
    assert by_subject == data
    latest = encode(codec_for(registry.url), topic, RENDERED, AvroSpec())  # <topic>-value latest
    assert latest == data


def test_bad_bytes_and_unknown_ids_are_decode_errors(registry) -> None:
    codec = codec_for(registry.url)
    for data, reason in (
        (b'{"code": 1}', "not in the Confluent Avro wire format"),
        (b"\x00\x00\x0f\x42\x3f\x02", "unknown schema id 999999"),
    ):
        with pytest.raises(DecodeError, match=reason):
            decode(codec, data)
    schema_id = registry.register("garbage-value", ALARM)
    with pytest.raises(DecodeError, match="do not parse as Avro"):
        decode(codec_for(registry.url), b"\x00" + schema_id.to_bytes(4, "big") + b"\x08")


# --------------------------------------------------------------------------- the registry


def http(url: str, body: Any = None, auth: str | None = None) -> tuple[int, str, Any]:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", CONTENT_TYPE)
    if auth:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


def test_test_registry_speaks_the_confluent_api(registry, unique_topic) -> None:
    subject = unique_topic("api")
    base = registry.url
    assert http(f"{base}/schemas/ids/424242")[::2] == (
        404,
        {"error_code": 40403, "message": "Schema not found"},
    )
    assert http(f"{base}/subjects/{subject}/versions/latest")[2]["error_code"] == 40401
    status, kind, body = http(f"{base}/subjects/{subject}/versions", {"schema": json.dumps(ALARM)})
    assert (status, kind) == (200, CONTENT_TYPE) and set(body) == {"id"}
    assert http(f"{base}/subjects/{subject}/versions/2")[2]["error_code"] == 40402
    assert http(f"{base}/subjects/{subject}/versions/x")[2]["error_code"] == 42202
    latest = http(f"{base}/subjects/{subject}/versions/latest")[2]
    assert latest["id"] == body["id"] and latest["version"] == 1
    assert http(f"{base}/subjects/{subject}", {"schema": json.dumps(ALARM)})[2]["id"] == body["id"]
    assert http(f"{base}/subjects/{subject}", {"schema": '"string"'})[2]["error_code"] == 40403
    assert http(f"{base}/subjects/{subject}/versions", {"schema": "{"})[2]["error_code"] == 42201


def test_registry_authentication_types_and_https(pki, unique_topic) -> None:
    server = SchemaRegistryServer(
        users={"sr-key": "sr-Secret-1"}, tls=(pki.path("server.pem"), pki.path("server.key"))
    ).start()
    host = f"127.0.0.1:{server.port}"
    trust = {"truststoreType": "PEM", "truststorePath": pki.ca}
    try:
        cases = {
            "user-info": (
                {"authType": "USER_INFO", "apiKey": "sr-key", "apiSecret": "sr-Secret-1"},
                trust,
                True,
            ),
            "password-in-url": (
                {"url": f"https://sr-key:sr-Secret-1@{host}", "authType": "PASSWORD_IN_URL"},
                trust,
                True,
            ),
            "wrong-secret": (
                {"authType": "USER_INFO", "apiKey": "sr-key", "apiSecret": "Wrong-sr-2"},
                trust,
                False,
            ),
            "untrusted": (
                {"authType": "USER_INFO", "apiKey": "sr-key", "apiSecret": "sr-Secret-1"},
                {},
                False,
            ),
        }
        for name, (registry_fields, tls, ok) in cases.items():
            fields = {"url": f"https://{host}", **registry_fields}
            integration = Integration(
                name="avro", bootstrapServers="h:1", **tls, **avro_integration(**fields)
            )
            result = run_in_thread(lambda i=integration: probe_registry(i, timeout=5))
            assert result.ok == ok, (name, result.summary)
            assert "sr-Secret-1" not in result.summary and "Wrong-sr-2" not in result.summary
            if name == "wrong-secret":
                assert "401" in result.summary and result.permanent
            if name == "untrusted":
                assert "not trusted" in result.summary
        assert all(method == "GET" for method, _ in server.requests)
    finally:
        server.stop()


# --------------------------------------------------------------------------- workers


def serialized(registry: SchemaRegistryServer, topic: str, value: dict, schema=ALARM) -> bytes:
    client = SchemaRegistryClient({"url": registry.url})
    serializer = AvroSerializer(client, json.dumps(schema))
    return serializer(value, SerializationContext(topic, MessageField.VALUE))


def dead_letters(broker, herald, count: int, **kwargs: Any) -> list[dict]:
    return [r["json"] for r in consume(broker.bootstrap, herald.dlq_topic, count, **kwargs)]


def test_worker_decodes_avro_dead_letters_bad_records_and_waits_out_an_outage(
    broker, registry, receiver: Receiver, tmp_path, unique_topic, deployments
) -> None:
    topic = unique_topic("alarms")
    handler = {
        "name": "avro-hook",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {
                "action": "webhook",
                "webhook": {
                    "body": {"alarm": "${$}", "amount": "${amount}", "key": "${_kafka.key}"}
                },
            }
        ],
    }
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[handler],
        targets=[webhook_target(receiver.url)],
        integration=avro_integration(registry.url),
        source_partitions=1,
    )
    deployments.append(herald)
    worker = herald.start_worker()
    good = serialized(registry, topic, PYTHON_VALUE)
    produce(
        broker.bootstrap,
        topic,
        [
            {"key": "M-17", "value": good},
            {"key": "text", "value": b'{"code": "M-18"}'},  # not Avro
            {"key": "unknown", "value": b"\x00\x00\x0f\x42\x3f" + good[5:]},  # unknown schema id
            {"key": "M-17", "value": good},
        ],
    )
    hooks = receiver.wait_for(2, timeout=60)
    assert hooks[0].json == {"alarm": RENDERED, "amount": "12.30", "key": "M-17"}
    letters = dead_letters(broker, herald, 2, timeout=30)
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert "not in the Confluent Avro wire format" in reasons
    assert "unknown schema id 999999" in reasons
    assert all(letter["stage"] == "decode" for letter in letters)

    # A registry outage while a record needs a schema not cached yet: no dead letter, wait.
    other = {**ALARM, "name": "Alarm2"}
    fresh = serialized(registry, topic, PYTHON_VALUE, schema=other)
    registry.unavailable = True
    try:
        produce(broker.bootstrap, topic, [{"key": "after-outage", "value": fresh}])
        worker.wait_for_log("cannot fetch the Avro schema", timeout=60)
    finally:
        registry.unavailable = False
    after = receiver.wait_for(3, timeout=90)
    assert after[2].json["key"] == "after-outage" and after[2].json["alarm"] == RENDERED
    assert len(dead_letters(broker, herald, 3, timeout=3)) == 2  # still only the two


def test_avro_on_sasl_ssl_flows_to_ilert_and_to_an_avro_publish(
    sasl_ssl_cluster, registry, receiver: Receiver, tmp_path, unique_topic, deployments
) -> None:
    source, sink = unique_topic("alarms"), unique_topic("normalized")
    out_schema = {
        "type": "record",
        "name": "Normalized",
        "namespace": "com.acme.events",
        "fields": [
            {"name": "code", "type": "string"},
            {"name": "severity", "type": "int"},
            {
                "name": "amount",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
            },
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "zone", "type": ["null", "int"]},
        ],
    }
    handler = {
        "name": "avro-alarms",
        "event": f"kafka:local:{source}",
        "condition": "$.state == 'SET'",
        "active": True,
        "actions": [
            {
                "action": "ilert_event",
                "ilert_event": {
                    "eventType": "ALERT",
                    "alertKey": "${code}",
                    "summary": "${comment}",
                    "customDetails": {"amount": "${amount}", "at": "${at}"},
                },
            },
            {
                "action": "publish",
                "publish": {
                    "to": f"kafka:local:{sink}",
                    "key": "${code}",
                    "schema": out_schema,
                    "value": {
                        "code": "${code}",
                        "severity": "${severity}",
                        "amount": "${amount}",
                        "at": "${at}",
                        "zone": "${site.zone}",
                    },
                },
            },
        ],
    }
    herald = HeraldDeployment(
        tmp_path,
        sasl_ssl_cluster.bootstrap,
        handlers=[handler],
        targets=[ilert_target(receiver.url)],
        integration={
            **sasl_ssl_cluster.integration("SCRAM-SHA-512", **sasl_ssl_cluster.jks()),
            **avro_integration(registry.url, valueSubjectNameStrategy="TopicRecordNameStrategy"),
        },
        client_kwargs=sasl_ssl_cluster.client_kwargs(),
        extra_topics={sink: 1},
    )
    deployments.append(herald)
    herald.start_worker()
    produce(
        sasl_ssl_cluster.bootstrap,
        source,
        [{"key": "M-17", "value": serialized(registry, source, PYTHON_VALUE)}],
        client_kwargs=sasl_ssl_cluster.client_kwargs(),
    )
    (event,) = receiver.wait_for(1, timeout=60, path="/api/events")
    assert event.json["alertKey"] == "M-17" and event.json["summary"] == "Pump pressure low"
    assert event.json["customDetails"] == {"amount": "12.30", "at": "2024-05-01T13:45:00.250Z"}
    (record,) = consume(
        sasl_ssl_cluster.bootstrap,
        sink,
        1,
        timeout=60,
        client_kwargs=sasl_ssl_cluster.client_kwargs(),
    )
    assert record["key"] == b"M-17"
    assert f"{sink}-com.acme.events.Normalized" in registry.subjects
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    assert deserializer(record["value"], SerializationContext(sink, MessageField.VALUE)) == {
        "code": "M-17",
        "severity": 3,
        "amount": decimal.Decimal("12.30"),
        "at": datetime.datetime(2024, 5, 1, 13, 45, 0, 250000, tzinfo=datetime.UTC),
        "zone": 3,
    }


def test_publish_value_not_matching_the_schema_is_dead_lettered_with_the_reason(
    broker, registry, tmp_path, unique_topic, deployments
) -> None:
    source, sink = unique_topic("in"), unique_topic("out")
    schema = {"type": "record", "name": "Out", "fields": [{"name": "n", "type": "int"}]}
    handler = {
        "name": "bad-publish",
        "event": f"kafka:local:{source}",
        "active": True,
        "actions": [
            {
                "action": "publish",
                "publish": {"to": f"kafka:local:{sink}", "schema": schema, "value": {"n": "${n}"}},
            }
        ],
    }
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[handler],
        integration={"schemaRegistry": {"url": registry.url}},
        extra_topics={sink: 1},
        source_partitions=1,
    )
    deployments.append(herald)
    herald.start_worker()
    produce(broker.bootstrap, source, [{"value": {"n": "many"}}, {"value": {"n": 7}}])
    (letter,) = dead_letters(broker, herald, 1, timeout=30)
    assert letter["stage"] == "template" and letter["handler"] == "bad-publish"
    assert "does not match the Avro schema Out" in letter["reason"]
    assert "$.n: expected int, got the text 'many'" in letter["reason"]
    (record,) = consume(broker.bootstrap, sink, 1, timeout=30)
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    assert deserializer(record["value"], SerializationContext(sink, MessageField.VALUE)) == {"n": 7}
