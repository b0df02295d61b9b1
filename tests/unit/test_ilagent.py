"""`herald ilagent daemon`: ilagent's flags, compiled into a Herald configuration, send ilert
what ilagent sends for the same messages.

Each case routes one Kafka record through the compiled handlers (the source stage) and delivers
the resulting request to a loopback receiver (the sink's delivery code), then compares the
request with the one ilagent builds for that record (iLert/ilagent: `parse_event_json`,
`prepare_consumer_event`, `build_event_api_path("kafka", key)`). The runs through a broker and
the daemon's workers are in tests/integration/test_ilagent.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from agents.embedded.receiver import Receiver
from agents.ilagent import (
    DEFAULT_GROUP,
    DEFAULT_PORT,
    EVENT_KEY_ENV,
    HEARTBEAT_KEY_ENV,
    SASL_PASSWORD_ENV,
    UsageError,
    compile_config,
    main,
    parse,
    render_config,
)
from streams.actions.base import DeliveryContext
from streams.actions.registry import delivery as action_delivery
from streams.config.loader import load_config
from streams.config.models import HeraldConfig
from streams.handlers import Evaluation, compile_all
from streams.http1 import Http1Client
from streams.message import Envelope
from streams.routing import route

TOPIC = "ilert-events"


def daemon(*flags: str) -> list[str]:
    return ["daemon", "--kafka_brokers", "localhost:9092", *flags]


def compiled(tmp_path: Path, receiver: Receiver, *flags: str) -> HeraldConfig:
    """The configuration `herald ilagent daemon FLAGS` runs, loaded as the worker loads it."""
    options = parse(daemon("--ilert_base_url", receiver.url, *flags))
    path = tmp_path / "ilagent.yaml"
    path.write_text(render_config(options))
    return load_config(path, environ=options.secrets())


def evaluate(config: HeraldConfig, value: Any, *, key: str | None = "m-1", topic: str = TOPIC):
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    from streams import codecs

    envelope = Envelope(
        value=codecs.decode_string_value(raw),
        topic=topic,
        partition=0,
        offset=7,
        integration="ilagent",
        key=key,
        raw_value=raw,
        raw_key=key.encode() if key is not None else None,
    )
    return route(compile_all(config, file="ilagent.yaml"), envelope)


def sent(
    config: HeraldConfig, receiver: Receiver, value: Any, **kwargs: Any
) -> list[tuple[str, str, Any]]:
    """(method, path, JSON body) of each request the worker would send for the record."""
    evaluation = evaluate(config, value, **kwargs)
    assert evaluation.dead_letters == [], evaluation.dead_letters
    before = len(receiver.requests)
    targets = {t.name: t for t in config.targets}

    async def go() -> None:
        async with aiohttp.ClientSession() as session, Http1Client() as http:
            ctx = DeliveryContext(http=http, session=session, targets=targets, publish=_no_publish)
            for request in evaluation.requests:
                target = targets.get(request.target) if request.target else None
                await action_delivery(request.action).deliver(request, ctx, target)

    asyncio.run(go())
    return [(r.method, r.path, r.json) for r in receiver.requests[before:]]


async def _no_publish(*args: Any) -> dict:  # pragma: no cover
    raise AssertionError


def dead_letters(evaluation: Evaluation) -> list[tuple[str, str | None, str]]:
    return [(d.stage, d.handler, d.reason) for d in evaluation.dead_letters]


# --------------------------------------------------------------------------- ilagent's defaults


def test_an_event_as_ilagent_sends_it_with_the_default_custom_details(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = compiled(tmp_path, receiver, "-e", TOPIC)
    message = {"apiKey": "il1k", "eventType": "ALERT", "summary": "Server down", "alertKey": "a-1"}
    assert sent(config, receiver, message) == [
        (
            "POST",
            "/api/v1/events/kafka/il1k",
            {
                "integrationKey": "il1k",
                "eventType": "ALERT",
                "summary": "Server down",
                "alertKey": "a-1",
                "customDetails": {"messageKey": "m-1", "topic": TOPIC},
            },
        )
    ]


def test_alert_without_summary_or_type_and_a_record_without_key(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = compiled(tmp_path, receiver, "-e", TOPIC)
    assert sent(config, receiver, {"integrationKey": "il1k"}, key=None) == [
        (
            "POST",
            "/api/v1/events/kafka/il1k",
            {
                "integrationKey": "il1k",
                "eventType": "ALERT",
                "summary": f"New alert from {TOPIC}",
                "customDetails": {"messageKey": "", "topic": TOPIC},
            },
        )
    ]


def test_message_fields_pass_through_and_its_own_custom_details_are_kept(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = compiled(tmp_path, receiver, "-e", TOPIC)
    message = {
        "integrationKey": "il1k",
        "eventType": "RESOLVE",
        "summary": "fixed",
        "details": "d",
        "alertKey": "a-1",
        "priority": "LOW",
        "images": [{"src": "https://i/1.png"}],
        "links": [{"href": "https://l", "text": "t"}],
        "labels": {"site": "p2"},
        "severity": 2,
        "routingKey": "team-a",
        "customDetails": {"env": "prod"},
        "comments": [{"creator": "x", "content": "y"}],  # not in ilagent's event: not sent
        "somethingElse": 1,
    }
    ((_, _, body),) = sent(config, receiver, message)
    expected = {k: v for k, v in message.items() if k not in ("comments", "somethingElse")}
    assert body == expected


def test_forward_message_payload_sends_the_whole_message_as_custom_details(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = compiled(tmp_path, receiver, "-e", TOPIC, "--forward_message_payload")
    message = {"apiKey": "il1k", "uuid": "a1b2", "data": {"message": "x", "priority": 2}}
    ((_, _, body),) = sent(config, receiver, message, key=None)
    assert body["customDetails"] == message
    own = {"apiKey": "il1k", "customDetails": {"env": "prod"}}
    ((_, _, body),) = sent(config, receiver, own)
    assert body["customDetails"] == {"env": "prod"}  # explicit customDetails are preserved


def test_event_key_overwrites_the_messages_key(tmp_path: Path, receiver: Receiver) -> None:
    config = compiled(tmp_path, receiver, "-e", TOPIC, "--event_key", "il1-static")
    ((method, path, body),) = sent(config, receiver, {"apiKey": "original", "summary": "s"})
    assert (method, path) == ("POST", "/api/v1/events/kafka/il1-static")
    assert body["integrationKey"] == "il1-static"
    assert "il1-static" not in Path(tmp_path / "ilagent.yaml").read_text()  # from the environment


def test_the_full_mapping_pipeline(tmp_path: Path, receiver: Receiver) -> None:
    # ilagent's own test: parse_event_full_mapping_pipeline, with a dot path as well
    config = compiled(
        tmp_path,
        receiver,
        "-e",
        TOPIC,
        "--event_key",
        "static-api-key",
        "--map_key_etype",
        "state",
        "--map_key_alert_key",
        "mCode",
        "--map_key_summary",
        "data.comment",
        "--map_val_etype_alert",
        "SET",
        "--map_val_etype_accept",
        "ACK",
        "--map_val_etype_resolve",
        "CLR",
    )
    for state, expected in (("SET", "ALERT"), ("ACK", "ACCEPT"), ("CLR", "RESOLVE")):
        message = {"state": state, "mCode": "M-100", "data": {"comment": "Pump failure"}}
        ((_, path, body),) = sent(config, receiver, message)
        assert path == "/api/v1/events/kafka/static-api-key"
        assert body == {
            "integrationKey": "static-api-key",
            "eventType": expected,
            "summary": "Pump failure",
            "alertKey": "M-100",
            "customDetails": {"messageKey": "m-1", "topic": TOPIC},
        }


def test_a_mapped_field_that_is_missing_or_not_text_leaves_the_messages_own(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = compiled(
        tmp_path,
        receiver,
        "-e",
        TOPIC,
        "--map_key_summary",
        "comment",
        "--map_key_alert_key",
        "code",
        "--map_key_etype",
        "state",
        "--map_val_etype_resolve",
        "CLR",
    )
    message = {
        "apiKey": "k",
        "summary": "own summary",
        "alertKey": "own-key",
        "eventType": "ACCEPT",
        "code": 42,  # not text: ilagent keeps the message's alertKey
    }
    ((_, _, body),) = sent(config, receiver, message)
    assert (body["summary"], body["alertKey"], body["eventType"]) == (
        "own summary",
        "own-key",
        "ACCEPT",
    )
    ((_, _, body),) = sent(config, receiver, {"apiKey": "k", "state": "CLR"})
    assert body["eventType"] == "RESOLVE"
    assert "summary" not in body  # not an ALERT: no default summary
    # the etype map applies to the mapped field only: the message's own eventType is taken as
    # it is, so CLR there is no event type (ilagent drops it; Herald dead-letters it)
    evaluation = evaluate(config, {"apiKey": "k", "eventType": "CLR"})
    ((stage, _, reason),) = dead_letters(evaluation)
    assert stage == "template" and "'CLR'" in reason


def test_an_unmapped_etype_value_is_dead_lettered_where_ilagent_drops_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = compiled(
        tmp_path, receiver, "-e", TOPIC, "--map_key_etype", "state", "--map_val_etype_alert", "SET"
    )
    evaluation = evaluate(config, {"apiKey": "k", "state": "UNKNOWN"})
    assert evaluation.requests == []
    ((stage, handler, reason),) = dead_letters(evaluation)
    assert (stage, handler) == ("template", "ilagent-events")
    assert "'UNKNOWN'" in reason


@pytest.mark.parametrize(
    ("flags", "message", "passes"),
    [
        (("--filter_key", "type"), {"type": "ALARM"}, True),
        (("--filter_key", "type"), {"type": None}, True),  # present: ilagent's json.get
        (("--filter_key", "type"), {"kind": "ALARM"}, False),
        (("--filter_key", "type", "--filter_val", "ALARM"), {"type": "ALARM"}, True),
        (("--filter_key", "type", "--filter_val", "ALARM"), {"type": "INFO"}, False),
        (("--filter_key", "type", "--filter_val", "1"), {"type": 1}, False),  # not text
        (("--filter_val", "ALARM"), {"type": "INFO"}, True),  # a value without a key: ignored
    ],
)
def test_filters(
    tmp_path: Path, receiver: Receiver, flags: tuple[str, ...], message: dict, passes: bool
) -> None:
    config = compiled(tmp_path, receiver, "-e", TOPIC, *flags)
    for key in ("m-1", None):
        evaluation = evaluate(config, {"apiKey": "k", **message}, key=key)
        assert evaluation.dead_letters == []
        assert len(evaluation.requests) == (1 if passes else 0)


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]", b"null", b'"text"', b"42"])
def test_a_message_that_is_not_a_json_object_is_dead_lettered_once(
    tmp_path: Path, receiver: Receiver, value: bytes
) -> None:
    config = compiled(tmp_path, receiver, "-e", TOPIC)
    for key in ("m-1", None):
        evaluation = evaluate(config, value, key=key)
        ((stage, _, reason),) = dead_letters(evaluation)
        assert stage == "condition"
        assert "not a JSON object" in reason


def test_an_event_without_any_key_is_dead_lettered(tmp_path: Path, receiver: Receiver) -> None:
    config = compiled(tmp_path, receiver, "-e", TOPIC)
    ((stage, _, reason),) = dead_letters(evaluate(config, {"summary": "no key"}))
    assert stage == "template" and "no integrationKey" in reason


def test_heartbeat_messages_ping_their_heartbeat(tmp_path: Path, receiver: Receiver) -> None:
    config = compiled(tmp_path, receiver, "-r", "ilert-heartbeats")
    for field in ("integrationKey", "apiKey"):
        assert sent(config, receiver, {field: "il1hbt-1"}, topic="ilert-heartbeats") == [
            ("GET", "/api/heartbeats/il1hbt-1", None)
        ]
    evaluation = evaluate(config, {"key": "x"}, topic="ilert-heartbeats")
    ((stage, handler, reason),) = dead_letters(evaluation)
    assert (stage, handler) == ("condition", "ilagent-heartbeats")
    assert "needs integrationKey or apiKey" in reason


# --------------------------------------------------------------------------- flags


def test_ilagents_defaults() -> None:
    options = parse(daemon())
    assert options.kafka_group_id == DEFAULT_GROUP == "ilagent"
    assert options.port == DEFAULT_PORT == 8977
    assert options.offset_reset == "latest"
    config = compile_config(options)
    assert config["herald"]["webPort"] == 8977
    assert config["herald"]["ilertProxy"] == {"target": "ilert", "path": "/api/events"}
    assert config["integrations"][0]["consumerGroupId"] == "ilagent"
    assert config["targets"] == [
        {"name": "ilert", "type": "ilert", "baseUrl": "https://api.ilert.com"}
    ]
    assert config["eventHandlers"] == []


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (daemon(), "warn"),
        (daemon("-v"), "warn"),
        (["-vv", *daemon()], "info"),
        (["-v", *daemon("-v")], "info"),
        (daemon("-vvv"), "debug"),
        (daemon("-vvvv"), "debug"),
    ],
)
def test_verbosity_is_ilagents(argv: list[str], level: str) -> None:
    assert parse(argv).loglevel == level


def test_short_and_long_flags_and_heartbeat(tmp_path: Path, receiver: Receiver) -> None:
    short = parse(daemon("-e", "ev", "-r", "hb", "-p", "9000", "-b", "il1hbt-x"))
    long = parse(
        daemon(
            "--event_topic=ev", "--heartbeat_topic", "hb", "--port", "9000", "--heartbeat=il1hbt-x"
        )
    )
    assert compile_config(short) == compile_config(long)
    config = compile_config(short)
    assert config["herald"]["webPort"] == 9000
    assert config["herald"]["heartbeats"] == [{"target": "ilert-heartbeat", "intervalSeconds": 30}]
    assert {t["name"]: t.get("integrationKey") for t in config["targets"]} == {
        "ilert": None,
        "ilert-heartbeat": f"${{env:{HEARTBEAT_KEY_ENV}}}",
    }
    assert [h["name"] for h in config["eventHandlers"]] == [
        "ilagent-events",
        "ilagent-events-nokey",
        "ilagent-heartbeats",
    ]
    assert short.secrets() == {HEARTBEAT_KEY_ENV: "il1hbt-x"}


def test_tls_and_sasl_from_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    options = parse(
        daemon(
            "--kafka_security_protocol",
            "sasl_ssl",
            "--kafka_sasl_mechanism",
            "SCRAM-SHA-512",
            "--kafka_sasl_username",
            "herald",
            "--kafka_sasl_password",
            "s3cret",
            "--kafka_ssl_ca_location",
            "/etc/ca.pem",
        )
    )
    integration = compile_config(options)["integrations"][0]
    assert integration == {
        "name": "ilagent",
        "bootstrapServers": "localhost:9092",
        "consumerGroupId": "ilagent",
        "description": "compiled from ilagent's flags",
        "connectionSecurity": "SASL_SSL / SCRAM-SHA-512",
        "username": "herald",
        "password": f"${{env:{SASL_PASSWORD_ENV}}}",
        "truststoreType": "PEM",
        "truststorePath": "/etc/ca.pem",
    }
    assert options.secrets() == {SASL_PASSWORD_ENV: "s3cret"}
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", "/etc/ca.pem")
    from_env = compile_config(parse(daemon()))["integrations"][0]
    assert (from_env["connectionSecurity"], from_env["truststorePath"]) == ("SSL", "/etc/ca.pem")
    with pytest.raises(UsageError, match="needs --kafka_sasl_username"):
        parse(daemon("--kafka_security_protocol", "SASL_PLAINTEXT"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["daemon", "-e", "t"], "needs --kafka_brokers"),
        (daemon("--mqtt_host", "broker"), "MQTT and policy modes"),
        (daemon("--policy_topic", "p"), "MQTT and policy modes"),
        (["event", "-k", "x"], "runs ilagent's daemon"),
    ],
)
def test_what_herald_does_not_run(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(argv)


def test_print_config_shows_the_configuration_without_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(daemon("-e", "ev", "--event_key", "il1-secret", "-b", "il1hbt-s", "--print-config"))
    out = capsys.readouterr().out
    assert code == 0
    assert "il1-secret" not in out and "il1hbt-s" not in out
    assert "--event_key '***'" in out
    config = yaml.safe_load(out)
    assert config["targets"][1]["integrationKey"] == f"${{env:{EVENT_KEY_ENV}}}"
    assert config["eventHandlers"][0]["event"] == "kafka:ilagent:ev"


def test_unknown_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(daemon("--no_such_flag")) == 2
    assert main(["daemon", "-e", "t"]) == 2
    assert "needs --kafka_brokers" in capsys.readouterr().err


def test_heartbeats_and_the_ilert_api_must_name_ilert_targets(tmp_path: Path) -> None:
    from streams.errors import ConfigError

    def load(herald: dict[str, Any], targets: list[dict[str, Any]]) -> list[str]:
        path = tmp_path / "h.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "herald": herald,
                    "integrations": [{"name": "local", "bootstrapServers": "localhost:9092"}],
                    "targets": targets,
                }
            )
        )
        try:
            load_config(path)
        except ConfigError as exc:
            return [line.split(": ", 1)[1] for line in exc.problems]
        return []

    ilert = {"name": "ilert", "type": "ilert", "baseUrl": "https://api.ilert.com"}
    hooks = {"name": "hooks", "type": "webhook", "url": "https://h"}
    assert load({"heartbeats": [{"target": "ilert"}]}, [ilert]) == [
        "herald.heartbeats[0].target: target 'ilert' has no integrationKey (the heartbeat's "
        "key); set it"
    ]
    assert load({"ilertProxy": {"target": "hooks"}}, [ilert, hooks]) == [
        "herald.ilertProxy.target: 'hooks' is not an ilert target; define it under targets "
        "with type ilert"
    ]
    with_key = {**ilert, "integrationKey": "il1hbt"}
    assert (
        load({"heartbeats": [{"target": "ilert"}], "ilertProxy": {"target": "ilert"}}, [with_key])
        == []
    )
