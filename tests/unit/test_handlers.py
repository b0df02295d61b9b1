"""The source stage: compiling handlers and evaluating a message into action requests and dead
letters, as Conductor's DefaultEventProcessor would (conditions on the expanded payload), with
ilagent's ilert mapping and exact, field-pathed configuration problems."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pytest

from streams import handlers as handlers_module
from streams.actions.base import ActionRequest
from streams.actions.ilert import IlertEventDelivery
from streams.config.models import EventHandler, HeraldConfig
from streams.deadletter import DeadLetter
from streams.errors import ConfigError
from streams.handlers import CompiledHandler, HandlerIndex, compile_all, compile_handler, evaluate
from streams.message import Envelope
from streams.routing import route

FILE = "herald.yaml"
ILERT_KEY = "il1-target-secret-0042"
INTEGRATIONS = [{"name": "local", "bootstrapServers": "localhost:9092"}]
TARGETS: list[dict[str, Any]] = [
    {
        "name": "ilert",
        "type": "ilert",
        "baseUrl": "https://api.ilert.com",
        "integrationKey": ILERT_KEY,
    },
    {"name": "hooks", "type": "webhook", "url": "http://hooks.example/in/"},
]
# ilagent's Kafka mapping: --map_key_etype state with SET/ACK/CLR, --map_key_alert_key mCode,
# --map_key_summary comment.
ILAGENT_EVENT: dict[str, Any] = {
    "action": "ilert_event",
    "ilert_event": {
        "target": "ilert",
        "eventType": "${state}",
        "eventTypeMap": {"SET": "ALERT", "ACK": "ACCEPT", "CLR": "RESOLVE"},
        "alertKey": "${mCode}",
        "summary": "${comment}",
    },
}


def make_config(*handlers: dict[str, Any], targets: list[dict[str, Any]] | None = None) -> Any:
    return HeraldConfig.model_validate(
        {
            "integrations": INTEGRATIONS,
            "targets": TARGETS if targets is None else targets,
            "eventHandlers": list(handlers),
        }
    )


def handler(name: str, *actions: dict[str, Any], condition: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "event": "kafka:local:alarms",
        "active": True,
        "actions": list(actions),
    }
    if condition is not None:
        spec["condition"] = condition
    return spec


def compiled(*handlers: dict[str, Any]) -> list[CompiledHandler]:
    return compile_all(make_config(*handlers), file=FILE)


def record(value: Any, *, offset: int = 7, key: bytes | None = b"M-1") -> Envelope:
    """A consumed record as the source agent builds it: raw bytes, value not yet decoded."""
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return Envelope(
        value=None,
        topic="alarms",
        partition=0,
        offset=offset,
        integration="local",
        key=None if key is None else key.decode(),
        headers={"trace": "t-1"},
        timestamp=1_700_000_000_000,
        raw_value=raw,
        raw_key=key,
    )


def expected_id(message_id: str, handler_name: str, index: int) -> str:
    return hashlib.sha256(f"{message_id}|{handler_name}|{index}".encode()).hexdigest()[:32]


def problems_of(*handlers: dict[str, Any], targets: list[dict[str, Any]] | None = None) -> list:
    with pytest.raises(ConfigError) as info:
        compile_all(make_config(*handlers, targets=targets), file=FILE)
    return info.value.problems


ALARM = {"type": "ALARM", "state": "SET", "mCode": "M-1", "comment": "Boiler pressure high"}


# --------------------------------------------------------------------------- requests


def test_evaluate_produces_exactly_the_expected_requests() -> None:
    hooks = {
        "action": "webhook",
        "orderingKey": "site-${site}",
        "dedupe": {"key": "${mCode}-${state}", "windowSeconds": 60},
        "webhook": {"url": "alarms/${mCode}", "body": {"code": "${mCode}", "raw": "${$}"}},
    }
    evaluation = route(
        compiled(handler("alarms", ILAGENT_EVENT, hooks, condition="$.type == 'ALARM'")),
        record({**ALARM, "site": "north"}),
    )

    assert evaluation.dead_letters == []
    assert evaluation.skipped == []
    assert [(r.handler, r.action, r.index) for r in evaluation.requests] == [
        ("alarms", "ilert_event", 0),
        ("alarms", "webhook", 1),
    ]
    ilert, webhook = evaluation.requests
    source = {
        "topic": "alarms",
        "partition": 0,
        "offset": 7,
        "timestamp": 1_700_000_000_000,
        "key": base64.b64encode(b"M-1").decode(),
        "headers": {"trace": "t-1"},
        "messageId": "local/alarms/0/7",
    }
    assert ilert.id == expected_id("local/alarms/0/7", "alarms", 0)
    assert ilert.event == "kafka:local:alarms"
    assert ilert.integration == "local"
    assert ilert.target == "ilert"
    assert ilert.source == source
    # ilert's body exactly; the target's integrationKey is added only at delivery.
    assert ilert.payload == {
        "path": "/api/events",
        "body": {"eventType": "ALERT", "summary": "Boiler pressure high", "alertKey": "M-1"},
    }
    assert ilert.ordering_key == "ilert:M-1"
    assert ilert.dedupe_key is None
    assert ilert.dedupe_window_s is None

    assert webhook.id == expected_id("local/alarms/0/7", "alarms", 1)
    assert webhook.target == "hooks"
    assert webhook.payload == {
        "url": "http://hooks.example/in/alarms/M-1",
        "method": "POST",
        "headers": {},
        "body": {"code": "M-1", "raw": {**ALARM, "site": "north"}},
    }
    assert webhook.ordering_key == "site-north"
    assert webhook.dedupe_key == "M-1-SET"
    assert webhook.dedupe_window_s == 60.0
    assert webhook.source == source


def test_request_id_is_stable_per_message_identity_and_differs_per_handler_and_action() -> None:
    handlers = compiled(
        handler("first", ILAGENT_EVENT, ILAGENT_EVENT), handler("second", ILAGENT_EVENT)
    )

    first = [r.id for r in route(handlers, record(ALARM)).requests]
    redelivered = [r.id for r in route(handlers, record({**ALARM, "comment": "x"})).requests]
    next_offset = [r.id for r in route(handlers, record(ALARM, offset=8)).requests]

    assert first == [
        expected_id("local/alarms/0/7", "first", 0),
        expected_id("local/alarms/0/7", "first", 1),
        expected_id("local/alarms/0/7", "second", 0),
    ]
    assert len(set(first)) == 3
    assert redelivered == first  # identity is the record's coordinates, not its content
    assert set(next_offset).isdisjoint(first)


def test_ordering_key_falls_back_to_record_key_then_topic_partition() -> None:
    hook = {"action": "webhook", "webhook": {"url": "x"}}
    handlers = compiled(handler("h", hook))

    assert route(handlers, record(ALARM, key=b"rec-key")).requests[0].ordering_key == "rec-key"
    assert route(handlers, record(ALARM, key=None)).requests[0].ordering_key == "alarms/0"


def test_condition_false_skips_the_handler() -> None:
    handlers = compiled(handler("alarms", ILAGENT_EVENT, condition="$.type == 'ALARM'"))

    evaluation = route(handlers, record({**ALARM, "type": "INFO"}))

    assert evaluation.requests == []
    assert evaluation.dead_letters == []
    assert evaluation.skipped == ["alarms"]


def test_throwing_condition_dead_letters_only_its_handler() -> None:
    raw = orjson.dumps(ALARM)
    handlers = compiled(
        handler("broken", ILAGENT_EVENT, condition="$.detail.code > 1"),
        handler("fine", ILAGENT_EVENT, condition="$.type == 'ALARM'"),
    )

    evaluation = route(handlers, record(raw))

    assert [r.handler for r in evaluation.requests] == ["fine"]
    [letter] = evaluation.dead_letters
    assert letter.stage == "condition"
    assert letter.reason == "condition threw: TypeError: cannot read property 'code' of undefined"
    assert letter.handler == "broken"
    assert letter.action is None
    assert letter.actionIndex is None
    assert letter.integration == "local"
    assert letter.value == base64.b64encode(raw).decode()
    assert letter.source["offset"] == 7


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"state": "FOO"},
            "ilert_event.eventType rendered to 'FOO'; expected one of ALERT, ACCEPT, RESOLVE, "
            "COMMENT (add it to eventTypeMap)",
        ),
        ({"sev": 9}, "ilert_event.severity rendered to 9; use 1 to 5"),
        ({"sev": "high"}, "ilert_event.severity rendered to 'high'; use 1 to 5"),
        ({"prio": "urgent"}, "ilert_event.priority rendered to 'URGENT'; use HIGH or LOW"),
    ],
)
def test_invalid_rendered_ilert_event_is_a_template_dead_letter(
    change: dict[str, Any], reason: str
) -> None:
    event = {
        "action": "ilert_event",
        "ilert_event": {
            **ILAGENT_EVENT["ilert_event"],
            "severity": "${sev}",
            "priority": "${prio}",
        },
    }
    raw = orjson.dumps({**ALARM, **change})
    hook = {"action": "webhook", "webhook": {"url": "x"}}
    handlers = compiled(handler("alarms", event), handler("other", hook))

    evaluation = route(handlers, record(raw))

    [letter] = evaluation.dead_letters
    assert (letter.stage, letter.reason) == ("template", reason)
    assert (letter.handler, letter.action, letter.actionIndex) == ("alarms", "ilert_event", 0)
    assert letter.value == base64.b64encode(raw).decode()
    assert [r.handler for r in evaluation.requests] == ["other"]


def test_non_utf8_value_is_a_decode_dead_letter_with_the_original_bytes() -> None:
    raw = b'\xff\xfe{"type": "ALARM"}'
    handlers = compiled(handler("alarms", ILAGENT_EVENT))

    evaluation = route(handlers, record(raw))

    assert evaluation.requests == []
    [letter] = evaluation.dead_letters
    assert letter.stage == "decode"
    assert letter.reason == 'value is not UTF-8 text (byte 0): b\'\\xff\\xfe{"type": "ALARM"}\''
    assert letter.handler is None
    assert base64.b64decode(letter.value or "") == raw
    assert letter.source["key"] == base64.b64encode(b"M-1").decode()


def test_route_without_handlers_does_nothing() -> None:
    evaluation = route([], record(b"\xff"))

    assert (evaluation.requests, evaluation.dead_letters, evaluation.skipped) == ([], [], [])


def test_handler_index_holds_only_active_handlers_by_integration_and_topic() -> None:
    inactive = {**handler("off", ILAGENT_EVENT), "active": False}
    other = {**handler("other", ILAGENT_EVENT), "event": "kafka:events"}
    index = HandlerIndex(compiled(handler("on", ILAGENT_EVENT), inactive, other))

    assert [h.name for h in index.for_topic("local", "alarms")] == ["on"]
    assert [h.name for h in index.for_topic("local", "events")] == ["other"]
    assert index.topics() == {("local", "alarms"), ("local", "events")}


# --------------------------------------------------------------------------- ilert mapping


def ilert_payload(params: dict[str, Any], message: Any, **cfg: Any) -> dict[str, Any]:
    action = {"action": "ilert_event", "ilert_event": params}
    handlers = compile_all(make_config(handler("h", action), **cfg), file=FILE)
    evaluation = route(handlers, record(message))
    assert evaluation.dead_letters == []
    [request] = evaluation.requests
    return request.payload


@pytest.mark.parametrize(
    ("state", "event_type"),
    [("SET", "ALERT"), ("ACK", "ACCEPT"), ("CLR", "RESOLVE"), ("clr", "RESOLVE"), (None, "ALERT")],
)
def test_ilagent_event_type_map(state: str | None, event_type: str) -> None:
    message = {"mCode": "M-1", "comment": "c"}
    if state is not None:
        message["state"] = state

    payload = ilert_payload(ILAGENT_EVENT["ilert_event"], message)

    assert payload["body"]["eventType"] == event_type


def test_ilert_alert_without_summary_gets_ilagents_default() -> None:
    payload = ilert_payload(ILAGENT_EVENT["ilert_event"], {"state": "SET", "mCode": 42})

    assert payload == {
        "path": "/api/events",
        "body": {"eventType": "ALERT", "summary": "New alert from alarms", "alertKey": "42"},
    }


def test_ilert_resolve_without_summary_gets_no_summary() -> None:
    payload = ilert_payload(ILAGENT_EVENT["ilert_event"], {"state": "CLR", "mCode": "M-1"})

    assert payload["body"] == {"eventType": "RESOLVE", "alertKey": "M-1"}


def test_ilert_full_body_with_integration_key_from_the_message() -> None:
    params = {
        "integrationKey": "${key}",
        "eventType": "ALERT",
        "summary": "${comment}",
        "details": "on ${host}",
        "alertKey": "${mCode}",
        "priority": "${prio}",
        "severity": "${sev}",
        "labels": {"host": "${host}"},
        "customDetails": "${$}",
        "links": [{"href": "https://x/${mCode}", "text": "runbook"}],
    }
    message = {
        "key": "il1-from-message",
        "comment": "disk full",
        "host": "db1",
        "mCode": "M-9",
        "prio": "low",
        "sev": "2",
    }

    payload = ilert_payload(params, message, targets=[])

    assert payload == {
        "path": "/api/events",
        "body": {
            "integrationKey": "il1-from-message",
            "eventType": "ALERT",
            "summary": "disk full",
            "details": "on db1",
            "alertKey": "M-9",
            "priority": "LOW",
            "severity": 2,
            "links": [{"href": "https://x/M-9", "text": "runbook"}],
            "labels": {"host": "db1"},
            "customDetails": message,
        },
    }
    assert IlertEventDelivery().redact(payload)["body"]["integrationKey"] == "***"
    assert IlertEventDelivery().redact(payload)["body"]["summary"] == "disk full"


def test_ilert_legacy_api_key_is_accepted_as_integration_key() -> None:
    payload = ilert_payload({"apiKey": "il1-legacy", "summary": "s"}, {}, targets=[])

    assert payload["body"] == {
        "integrationKey": "il1-legacy",
        "eventType": "ALERT",
        "summary": "s",
    }


def test_ilert_key_from_target_never_enters_the_request() -> None:
    handlers = compiled(handler("h", ILAGENT_EVENT))

    [request] = route(handlers, record(ALARM)).requests

    assert "integrationKey" not in request.payload["body"]
    assert ILERT_KEY.encode() not in request.to_bytes()
    assert ILERT_KEY not in str(IlertEventDelivery().redact(request.payload))


def test_ilert_without_any_integration_key_is_a_template_dead_letter() -> None:
    action = {"action": "ilert_event", "ilert_event": {"summary": "s"}}
    handlers = compile_all(make_config(handler("h", action), targets=[]), file=FILE)

    [letter] = route(handlers, record(ALARM)).dead_letters

    assert letter.stage == "template"
    assert letter.reason == (
        "ilert_event has no integrationKey: set it on the action or on the ilert target"
    )


# --------------------------------------------------------------------------- expandInlineJSON


INLINE = {"type": "ALARM", "data": '{"host": "db1", "sev": 4}'}


def inline_handlers() -> list[CompiledHandler]:
    def hook(expand: bool) -> dict[str, Any]:
        return {
            "action": "webhook",
            "expandInlineJSON": expand,
            "webhook": {"url": "x", "body": {"host": "${data.host}", "data": "${data}"}},
        }

    return compiled(handler("h", hook(False), hook(True), condition="$.data.sev > 3"))


def test_condition_sees_expanded_payload_actions_only_when_they_ask() -> None:
    """Conductor: conditions run on `JsonUtils.expand(payload)`; an action gets the payload
    expanded only with `expandInlineJSON: true` (DefaultEventProcessor, SimpleActionProcessor)."""
    envelope = record(INLINE)

    evaluation = route(inline_handlers(), envelope)

    assert evaluation.dead_letters == []
    plain, expanded = evaluation.requests
    assert plain.payload["body"] == {"host": None, "data": '{"host": "db1", "sev": 4}'}
    assert expanded.payload["body"] == {"host": "db1", "data": {"host": "db1", "sev": 4}}


def test_condition_sees_a_json_string_message_parsed_as_conductor_does() -> None:
    """A message that is a JSON string holding JSON: Conductor's `expand` parses the string for
    the condition, while an action without `expandInlineJSON` still gets the string."""
    raw = orjson.dumps(orjson.dumps({"a": 1}).decode())
    hook = {"action": "webhook", "webhook": {"url": "x", "body": {"m": "${$}"}}}

    evaluation = route(compiled(handler("h", hook, condition="$.a == 1")), record(raw))

    assert evaluation.skipped == []
    [request] = evaluation.requests
    assert request.payload["body"] == {"m": '{"a":1}'}


def test_expansion_happens_at_most_once_and_only_when_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []
    real = handlers_module.expand_inline_json

    def counting(value: Any) -> Any:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(handlers_module, "expand_inline_json", counting)
    plain = {"action": "webhook", "webhook": {"url": "x"}}
    expand = {"action": "webhook", "expandInlineJSON": True, "webhook": {"url": "x"}}

    route(compiled(handler("a", plain), handler("b", plain)), record(INLINE))
    assert calls == []  # no condition, no action asking for it

    route(
        compiled(
            handler("a", expand, expand, condition="$.data.sev > 3"),
            handler("b", expand, condition="$.type == 'ALARM'"),
        ),
        record(INLINE),
    )
    assert calls == [INLINE]

    calls.clear()
    route(compiled(handler("a", plain, expand), handler("b", expand)), record(INLINE))
    assert calls == [INLINE]


def test_evaluate_does_not_modify_the_message() -> None:
    value = {"type": "ALARM", "data": '{"sev": 5}'}
    envelope = Envelope(value=value, topic="alarms", partition=0, offset=1, integration="local")

    evaluate(inline_handlers(), envelope)

    assert value == {"type": "ALARM", "data": '{"sev": 5}'}


def test_message_too_deep_to_expand_is_dead_lettered_not_raised() -> None:
    depth = 600
    raw = b'{"a":' * depth + b"1" + b"}" * depth
    plain = {"action": "webhook", "webhook": {"url": "x"}}
    handlers = compiled(
        handler("cond", plain, condition="$.a != null"),
        handler("expand", {**plain, "expandInlineJSON": True}),
        handler("plain", plain),
    )

    evaluation = route(handlers, record(raw))

    reason = "message is nested too deeply to expand inline JSON"
    assert [(d.stage, d.handler, d.reason) for d in evaluation.dead_letters] == [
        ("condition", "cond", reason),
        ("template", "expand", reason),
    ]
    assert [r.handler for r in evaluation.requests] == ["plain"]


# --------------------------------------------------------------------------- compile problems

WHERE = f"{FILE}: eventHandlers[0](name=h)"


def test_compile_unknown_action() -> None:
    assert problems_of(handler("h", {"action": "send_sms", "send_sms": {}})) == [
        f"{WHERE}.actions[0].action: unknown action 'send_sms'; use one of complete_task, "
        "fail_task, ilert_event, ilert_heartbeat, publish, start_workflow, terminate_workflow, "
        "update_workflow_variables, webhook"
    ]


def test_compile_unknown_param_field_and_stray_action_field() -> None:
    action = {"action": "webhook", "webhok": {}, "webhook": {"url": "x", "boddy": 1}}

    assert problems_of(handler("h", action)) == [
        f"{WHERE}.actions[0].webhok: unknown field 'webhok'; parameters of this action go "
        "under 'webhook'",
        f"{WHERE}.actions[0].webhook.boddy: unknown field 'boddy'; remove it or check its spelling",
    ]


def test_compile_missing_required_param() -> None:
    assert problems_of(handler("h", {"action": "publish", "publish": {}})) == [
        f"{WHERE}.actions[0].publish.to: field required; set it"
    ]


def test_compile_unknown_target() -> None:
    action = {"action": "ilert_event", "ilert_event": {"target": "ilert-prod"}}

    assert problems_of(handler("h", action)) == [
        f"{WHERE}.actions[0].ilert_event.target: no target named 'ilert-prod'; define it "
        "under targets"
    ]


def test_compile_target_of_wrong_type() -> None:
    action = {"action": "webhook", "webhook": {"target": "ilert"}}

    assert problems_of(handler("h", action)) == [
        f"{WHERE}.actions[0].webhook.target: target 'ilert' has type ilert; webhook needs "
        "a target of type webhook"
    ]


def test_compile_unnamed_target_with_several_candidates_is_an_error() -> None:
    config = {
        "integrations": [{"name": "local", "bootstrapServers": "localhost:9092"}],
        "targets": [
            {"name": "a", "type": "webhook", "url": "http://a/"},
            {"name": "b", "type": "webhook", "url": "http://b/"},
        ],
        "eventHandlers": [],
    }
    spec = EventHandler.model_validate(
        {"name": "h", "event": "kafka:t", "actions": [{"action": "webhook", "webhook": {}}]}
    )
    with pytest.raises(ConfigError) as caught:
        compile_handler(spec, HeraldConfig.model_validate(config), "eventHandlers[0]", file="f")
    assert caught.value.problems == [
        "f: eventHandlers[0].actions[0].webhook.target: there are several webhook targets "
        "(a, b); name one with target"
    ]


def test_compile_bad_condition() -> None:
    assert problems_of(handler("h", ILAGENT_EVENT, condition="$.type == ")) == [
        f"{WHERE}.condition: condition '$.type == ' does not parse at line 1, column 10 "
        "(end of condition): the condition is incomplete; fix the expression"
    ]


def test_compile_bad_templates_name_their_field() -> None:
    actions = [
        {"action": "webhook", "webhook": {"url": "x", "body": {"a": "${unclosed"}}},
        {"action": "webhook", "orderingKey": "${", "webhook": {"url": "x"}},
        {"action": "webhook", "dedupe": {"key": "k-${a"}, "webhook": {"url": "x"}},
    ]

    assert problems_of(handler("h", *actions)) == [
        f"{WHERE}.actions[0].webhook: template error: $.body.a: unclosed '${{' at position 0 "
        "in '${unclosed'",
        f"{WHERE}.actions[1].orderingKey: template error: $: unclosed '${{' at position 0 in '${{'",
        f"{WHERE}.actions[2].dedupe.key: template error: $: unclosed '${{' at position 2 "
        "in 'k-${a'",
    ]


def test_compile_reports_every_problem_of_every_handler() -> None:
    problems = problems_of(
        handler("h", {"action": "nope"}, {"action": "webhook", "webhook": {"target": "x"}}),
        handler("g", ILAGENT_EVENT, condition="("),
    )

    assert [p.split(": ")[1] for p in problems] == [
        "eventHandlers[0](name=h).actions[0].action",
        "eventHandlers[0](name=h).actions[1].webhook.target",
        "eventHandlers[1](name=g).condition",
    ]


def test_round_trip_through_the_actions_topic_keeps_the_request() -> None:
    [request] = route(compiled(handler("h", ILAGENT_EVENT)), record(ALARM)).requests

    assert ActionRequest.from_bytes(request.to_bytes()) == request
    assert not isinstance(request, DeadLetter)
