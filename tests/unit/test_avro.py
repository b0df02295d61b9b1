"""Avro without a registry: wire format, rendering, JSON → datum, subjects, publish params."""

from __future__ import annotations

import datetime
import decimal
import io
import json
import math

import fastavro
import pytest

from streams.actions.publish import PublishParams
from streams.avro import wire
from streams.avro.codec import subject_name
from streams.avro.datum import SchemaMismatch, to_datum
from streams.avro.render import render
from streams.avro.schemas import SchemaError, load, parse
from streams.config.capabilities import check_supported
from streams.config.models import HeraldConfig, SchemaRegistry, SubjectNameStrategy
from streams.errors import ConfigError, DecodeError

RECORD = {
    "type": "record",
    "name": "Reading",
    "namespace": "com.acme",
    "fields": [
        {"name": "n", "type": "int"},
        {"name": "v", "type": ["null", "long", "double", "string"], "default": None},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
        {"name": "blob", "type": {"type": "fixed", "name": "Four", "size": 4}, "default": "abcd"},
        {
            "name": "price",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2},
        },
        {"name": "when", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "other", "type": ["null", "Kind"], "default": None},
    ],
}


def roundtrip(schema_json: dict, value: object) -> object:
    schema = parse(schema_json)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema.parsed, to_datum(schema, value))
    buffer.seek(0)
    return render(fastavro.schemaless_reader(buffer, schema.parsed, None))


def test_wire_format() -> None:
    framed = wire.frame(7, b"xyz")
    assert framed == b"\x00\x00\x00\x00\x07xyz"
    assert wire.split(framed) == (7, b"xyz")
    assert wire.schema_id(b"\x00\x00\x00\x00\x00abc") is None  # id 0 is not a registry id
    with pytest.raises(DecodeError, match="first byte is 0x7b"):
        wire.split(b'{"a": 1}')
    with pytest.raises(DecodeError, match="too short"):
        wire.split(b"\x00\x00")


def test_render_rules() -> None:
    assert render(
        {
            "b": b"\x00\x01\xff",
            "d": decimal.Decimal("1.50"),
            "t": datetime.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=datetime.UTC),
            "ms": datetime.datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=datetime.UTC),
            "local": datetime.datetime(2024, 1, 2, 3, 4, 5),
            "day": datetime.date(2024, 1, 2),
            "time": datetime.time(13, 45, 0, 250000),
            "nan": math.nan,
            "inf": -math.inf,
            "list": [1, None],
        }
    ) == {
        "b": "AAH/",
        "d": "1.50",
        "t": "2024-01-02T03:04:05.123456Z",
        "ms": "2024-01-02T03:04:05.123Z",
        "local": "2024-01-02T03:04:05.000",
        "day": "2024-01-02",
        "time": "13:45:00.250",
        "nan": "NaN",
        "inf": "-Infinity",
        "list": [1, None],
    }


def test_rendered_data_converts_back_exactly() -> None:
    value = {
        "n": 1,
        "v": 5,
        "kind": "B",
        "price": "12.30",
        "when": "2024-05-01T13:45:00.000001Z",
        "other": "A",
    }
    assert roundtrip(RECORD, value) == {**value, "blob": "YWJjZA=="}
    assert roundtrip(RECORD, {**value, "v": 2.5})["v"] == 2.5
    assert roundtrip(RECORD, {**value, "v": "x"})["v"] == "x"
    assert roundtrip(RECORD, {**value, "v": {"double": 3}})["v"] == 3.0  # Avro JSON union form
    assert roundtrip(RECORD, {**value, "price": 7})["price"] == "7.00"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": "one"}, "$.n: expected int, got the text 'one'"),
        ({"n": 2**40}, "$.n: 1099511627776 is out of the range of an Avro int"),
        ({"kind": "C"}, "$.kind: expected one of the symbols A, B"),
        ({"price": "1.234"}, "$.price: 1.234 has more than the 2 decimal places"),
        ({"price": "12345.6"}, "more than the 5 digits"),
        ({"extra": 1}, "record com.acme.Reading has no field 'extra'"),
        ({"when": "yesterday"}, "$.when: expected an ISO 8601 timestamp"),
        ({"blob": "AAE="}, "$.blob: fixed com.acme.Four needs 4 bytes, got 2"),
        ({"v": [1]}, "$.v: fits no branch of the union [null, long, double, string]"),
    ],
)
def test_mismatches_say_where_and_why(change: dict, message: str) -> None:
    value = {"n": 1, "kind": "A", "price": "1", "when": 0, **change}
    with pytest.raises(SchemaMismatch) as info:
        to_datum(parse(RECORD), value)
    assert message in str(info.value)


def test_missing_required_field() -> None:
    with pytest.raises(SchemaMismatch, match=r"\$.n: missing"):
        to_datum(parse(RECORD), {"kind": "A", "price": "1", "when": 0})


def test_subject_name_strategies() -> None:
    schema = parse(RECORD)
    assert subject_name(SubjectNameStrategy.TOPIC, "t", schema) == "t-value"
    assert subject_name(SubjectNameStrategy.TOPIC, "t", schema, key=True) == "t-key"
    assert subject_name(SubjectNameStrategy.RECORD, "t", schema) == "com.acme.Reading"
    assert subject_name(SubjectNameStrategy.TOPIC_RECORD, "t", schema) == "t-com.acme.Reading"
    assert parse('"string"').full_name == "string"
    long_name = SchemaRegistry(
        url="http://r",
        valueSubjectNameStrategy="io.confluent.kafka.serializers.subject.TopicRecordNameStrategy",
    )
    assert long_name.valueSubjectNameStrategy is SubjectNameStrategy.TOPIC_RECORD


def test_schema_files_and_invalid_schemas(tmp_path) -> None:
    path = tmp_path / "reading.avsc"
    path.write_text(json.dumps(RECORD))
    assert load(str(path)).full_name == "com.acme.Reading"
    with pytest.raises(SchemaError, match="cannot read schema file"):
        load(str(tmp_path / "missing.avsc"))
    with pytest.raises(SchemaError, match="invalid Avro schema"):
        parse({"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]})


def test_publish_params() -> None:
    params = PublishParams.model_validate({"to": "kafka:a:b", "schema": RECORD})
    assert params.wants_avro and json.loads(params.schema_) == RECORD
    assert not PublishParams.model_validate({"to": "kafka:a:b"}).wants_avro
    for bad, message in (
        ({"format": "xml"}, "unknown format"),
        ({"format": "json", "schema": RECORD}, "a schema is for Avro"),
        ({"schema": RECORD, "schemaSubject": "s"}, "not both"),
        ({"schemaSubject": "s", "schemaVersion": "first"}, "schemaVersion"),
        ({"schema": {"type": "nope"}}, "schema: invalid Avro schema"),
    ):
        with pytest.raises(ValueError, match=message):
            PublishParams.model_validate({"to": "kafka:a:b", **bad})


def test_capabilities_check_avro_publishes() -> None:
    def config(integration: dict, publish: dict) -> HeraldConfig:
        return HeraldConfig(
            integrations=[{"name": "local", "bootstrapServers": "h:1", **integration}],
            eventHandlers=[
                {
                    "name": "h",
                    "event": "kafka:t",
                    "active": True,
                    "actions": [
                        {"action": "publish", "publish": {"to": "kafka:local:out", **publish}}
                    ],
                }
            ],
        )

    with pytest.raises(ConfigError, match="needs its schemaRegistry"):
        check_supported(config({}, {"format": "avro"}), "f.yaml")
    record_strategy = {
        "sendingProtocol": "AVRO",
        "schemaRegistry": {"url": "http://r", "valueSubjectNameStrategy": "RecordNameStrategy"},
    }
    with pytest.raises(ConfigError, match="set schema"):
        check_supported(config(record_strategy, {}), "f.yaml")
    check_supported(config(record_strategy, {"schema": RECORD}), "f.yaml")
    check_supported(config({}, {}), "f.yaml")  # plain JSON publish
