"""The execution history's index (streams.history) and its reader's record handling
(agents.history.History.take): bounded by count and by age, one entry per identity, queries by
handler, status, time and source record, and the per-handler answer for one source record."""

from __future__ import annotations

import gc
import random
from typing import Any

import orjson
import pytest

from agents.history import History
from agents.retention import mismatch, parse_retention
from streams.actions.base import ActionRequest
from streams.config.models import HeraldConfig
from streams.deadletter import DeadLetter
from streams.executions import record, to_bytes
from streams.history import (
    DEAD_LETTER,
    EXECUTION,
    NO_RECORD,
    Entry,
    HistoryIndex,
    audit_entry,
    execution_entry,
    handler_event_matches,
    letter_entry,
    parse_message_id,
    source_answer,
)

NOW = 1_700_000_000_000
HOUR = 3600 * 1000


def request(handler: str = "h1", offset: int = 5, index: int = 0, **extra: Any) -> ActionRequest:
    source = {
        "topic": "alarms",
        "partition": 0,
        "offset": offset,
        "timestamp": NOW - 10,
        "key": None,
        "headers": {},
        "messageId": f"local/alarms/0/{offset}",
    }
    return ActionRequest(
        id=f"{handler}-{offset}-{index}",
        handler=handler,
        event="kafka:local:alarms",
        action="webhook",
        index=index,
        payload={"url": "http://x"},
        ordering_key="k",
        source=source,
        integration="local",
        created_ms=NOW,
        **extra,
    )


def execution(status: str, at: int = NOW, attempts: int = 1, **fields: Any) -> dict[str, Any]:
    req = fields.pop("req", None) or request()
    rec = record(req, status, attempts=attempts, redacted_payload={"body": "x" * 100}, **fields)
    rec["at"] = at
    return orjson.loads(to_bytes(rec))


def letter(stage: str, offset: int = 5, handler: str | None = "h1", **extra: Any) -> dict:
    dead = DeadLetter(
        stage=stage,
        reason=f"{stage} failed",
        integration="local",
        source={"topic": "alarms", "partition": 0, "offset": offset, "timestamp": NOW, **extra},
        value="eyJ4IjogMX0=",
        handler=handler,
        failedAt=NOW,
    )
    return orjson.loads(dead.to_bytes())


def index(max_records: int = 100, retention_ms: int | None = HOUR) -> HistoryIndex:
    return HistoryIndex(max_records, retention_ms)


def add_execution(idx: HistoryIndex, data: dict[str, Any], now: int = NOW) -> bool:
    entry = execution_entry(data, now)
    assert entry is not None
    return idx.add(entry, now)


def test_an_execution_record_carries_its_source_and_reads_as_conductor_event_execution() -> None:
    data = execution("COMPLETED", result={"workflowId": "wf-1"})
    assert data["source"] == {
        "integration": "local",
        "topic": "alarms",
        "partition": 0,
        "offset": 5,
        "timestamp": NOW - 10,
    }
    entry = execution_entry(data, 0)
    assert entry is not None
    answer = entry.answer()
    conductor = {k: answer[k] for k in ("id", "messageId", "name", "event", "created", "status")}
    assert conductor == {
        "id": "h1-5-0",
        "messageId": "local/alarms/0/5",
        "name": "h1",
        "event": "kafka:local:alarms",
        "created": NOW,
        "status": "COMPLETED",
    }
    assert answer["action"] == "webhook"
    assert answer["output"] == {"workflowId": "wf-1"}  # Conductor's output is a map
    assert answer["attempts"] == 1 and answer["kind"] == EXECUTION
    assert "payload" not in answer  # kept small: the topic has the payload


def test_the_oldest_entries_go_first_past_the_size_bound() -> None:
    idx = index(max_records=3)
    for offset in range(5):
        add_execution(idx, execution("COMPLETED", req=request(offset=offset), at=NOW + offset))
    assert len(idx) == 3
    assert idx.evicted_by_size == 2
    kept = [e.message_id for e in idx.query(NOW + 10)]
    assert kept == ["local/alarms/0/4", "local/alarms/0/3", "local/alarms/0/2"]
    assert idx.for_source("local", "alarms", 0, 0, NOW + 10) == []  # its index entry went too


def test_entries_older_than_the_retention_are_evicted_and_never_answered() -> None:
    idx = index(retention_ms=HOUR)
    assert not add_execution(idx, execution("COMPLETED", at=NOW - 2 * HOUR))  # too old to keep
    add_execution(idx, execution("COMPLETED", req=request(offset=1), at=NOW - HOUR // 2))
    add_execution(idx, execution("COMPLETED", req=request(offset=2), at=NOW))
    assert len(idx) == 2
    later = NOW + HOUR // 2 + 1
    # Not yet expired from the front, but no answer shows what is past the retention.
    assert [e.message_id for e in idx.query(later)] == ["local/alarms/0/2"]
    assert idx.expire(later) == 1
    assert len(idx) == 1 and idx.evicted_by_age == 1
    assert idx.for_source("local", "alarms", 0, 1, later) == []


def test_one_entry_per_delivery_the_final_status_wins() -> None:
    idx = index()
    add_execution(idx, execution("FAILED", attempts=1, error="HTTP 503"))
    add_execution(idx, execution("FAILED", attempts=2, error="HTTP 503", at=NOW + 1))
    (only,) = idx.query(NOW + 5)
    assert (only.status, only.answer()["attempts"]) == ("FAILED", 2)
    add_execution(idx, execution("COMPLETED", attempts=3, at=NOW + 2))
    # A late FAILED record and a redelivery's SKIPPED do not replace the final COMPLETED.
    assert not add_execution(idx, execution("FAILED", attempts=2, at=NOW + 3))
    assert not add_execution(idx, execution("SKIPPED", attempts=0, at=NOW + 4))
    (only,) = idx.query(NOW + 5)
    assert (only.status, only.answer()["attempts"]) == ("COMPLETED", 3)
    assert len(idx) == 1


def test_queries_by_handler_status_and_time_newest_first() -> None:
    idx = index()
    add_execution(idx, execution("COMPLETED", req=request("h1", 1), at=NOW + 1))
    add_execution(idx, execution("DEAD_LETTERED", req=request("h2", 2), at=NOW + 2))
    add_execution(idx, execution("COMPLETED", req=request("h2", 3), at=NOW + 3))
    add_execution(idx, execution("FAILED", req=request("h1", 4), at=NOW + 4))
    later = NOW + 10

    def ids(**kw: Any) -> list[str]:
        return [e.key for e in idx.query(later, **kw)]

    assert ids() == ["h1-4-0", "h2-3-0", "h2-2-0", "h1-1-0"]
    assert ids(handler="h2") == ["h2-3-0", "h2-2-0"]
    assert ids(status="COMPLETED") == ["h2-3-0", "h1-1-0"]
    assert ids(since=NOW + 2, until=NOW + 3) == ["h2-3-0", "h2-2-0"]
    assert ids(limit=1) == ["h1-4-0"]
    assert ids(visible=lambda e: e.handler == "h1") == ["h1-4-0", "h1-1-0"]


def test_a_limited_query_answers_the_newest_by_time_whatever_order_they_were_read_in() -> None:
    # Read out of time order (records of several partitions), and two with the same time.
    idx = index()
    add_execution(idx, execution("COMPLETED", req=request("h1", 1), at=NOW + 3))
    add_execution(idx, execution("COMPLETED", req=request("h2", 2), at=NOW + 3))
    add_execution(idx, execution("COMPLETED", req=request("h1", 3), at=NOW + 1))
    add_execution(idx, execution("COMPLETED", req=request("h2", 4), at=NOW + 2))
    read_the_other_way = index()
    for entry in reversed(idx.query(NOW + 10)):
        read_the_other_way.add(entry, NOW + 10)

    def ids(idx: HistoryIndex, **kw: Any) -> list[str]:
        return [e.key for e in idx.query(NOW + 10, **kw)]

    everything = ids(idx)
    assert everything == ["h2-2-0", "h1-1-0", "h2-4-0", "h1-3-0"]  # ties: by identity
    assert ids(read_the_other_way) == everything
    for limit in range(1, 5):
        assert ids(idx, limit=limit) == everything[:limit]
        assert ids(read_the_other_way, limit=limit) == everything[:limit]
    assert ids(idx, since=NOW + 2, limit=2) == ["h2-2-0", "h1-1-0"]


@pytest.mark.parametrize("seed", range(20))
def test_a_limited_query_is_the_head_of_the_whole_answer_however_late_records_come(
    seed: int,
) -> None:
    # Records read up to 50 ms late, many with equal times, some superseded, the oldest read
    # evicted past the size bound: every limited query is the head of the whole sorted answer.
    rng = random.Random(seed)
    idx = index(max_records=150, retention_ms=None)
    for n in range(300):
        handler = rng.choice(["h1", "h2", "h3"])
        status = rng.choice(["COMPLETED", "DEAD_LETTERED", "FAILED"])
        at = NOW + n * 2 - rng.randrange(50)
        add_execution(idx, execution(status, req=request(handler, rng.randrange(200)), at=at))
    later = NOW + 10 * HOUR
    kept = [Entry._make(k[: len(Entry._fields)]) for k in idx._entries.values()]
    for filters in ({}, {"handler": "h2"}, {"status": "COMPLETED"}, {"since": NOW + 300}):
        every = [
            e
            for e in sorted(kept, key=lambda e: (e.created, e.kind, e.key), reverse=True)
            if all(
                (e.created >= v) if k == "since" else getattr(e, k) == v for k, v in filters.items()
            )
        ]
        for limit in (1, 2, 7, 40, 1000):
            assert idx.query(later, limit=limit, **filters) == every[:limit]


def test_dead_letters_are_listed_but_a_delivery_letter_only_through_its_execution() -> None:
    idx = index()
    for data in (letter("condition"), letter("delivery", offset=6), letter("decode", handler=None)):
        entry = letter_entry(data, NOW)
        assert entry is not None
        idx.add(entry, NOW)
    listed = idx.query(NOW)
    assert sorted(e.stage or "" for e in listed) == ["condition", "decode"]
    answer = next(e for e in listed if e.stage == "condition").answer()
    assert answer["status"] == "DEAD_LETTERED" and answer["kind"] == DEAD_LETTER
    assert answer["reason"] == "condition failed" and answer["error"] == "condition failed"
    assert "value" not in answer  # the original bytes stay on the topic
    assert [e.stage for e in idx.for_source("local", "alarms", 0, 6, NOW)] == ["delivery"]


def test_a_fetch_letter_is_found_for_every_offset_of_its_range() -> None:
    idx = index()
    entry = letter_entry(letter("fetch", offset=10, handler=None, endOffset=20), NOW)
    assert entry is not None
    idx.add(entry, NOW)
    assert [e.stage for e in idx.for_source("local", "alarms", 0, 10, NOW)] == ["fetch"]
    assert [e.stage for e in idx.for_source("local", "alarms", 0, 19, NOW)] == ["fetch"]
    assert idx.for_source("local", "alarms", 0, 20, NOW) == []
    assert idx.for_source("local", "alarms", 1, 15, NOW) == []


def test_the_answer_for_one_source_record_names_every_handler_of_its_topic() -> None:
    idx = index()
    add_execution(idx, execution("COMPLETED", req=request("h1", 5)))
    entry = letter_entry(letter("template", offset=5, handler="h2"), NOW)
    assert entry is not None
    idx.add(entry, NOW)
    handlers = [
        {"name": "h1", "event": "kafka:local:alarms", "active": True},
        {"name": "h2", "event": "kafka:alarms", "active": True},
        {"name": "h3", "event": "kafka:local:alarms", "active": True},
    ]
    counts = {"h3": {"matched": 0, "conditionFalse": 7, "scope": "this worker"}}
    answer = source_answer(
        ("local", "alarms", 0, 5),
        idx.for_source("local", "alarms", 0, 5, NOW),
        handlers,
        lambda name: counts.get(name, {}),
    )
    assert answer["messageId"] == "local/alarms/0/5"
    by_name = {h["name"]: h for h in answer["handlers"]}
    assert by_name["h1"]["outcome"] == "executed"
    assert [e["status"] for e in by_name["h1"]["executions"]] == ["COMPLETED"]
    assert by_name["h2"]["outcome"] == "dead-lettered"
    assert by_name["h2"]["deadLetters"][0]["stage"] == "template"
    assert by_name["h3"]["outcome"] == NO_RECORD
    assert by_name["h3"]["counts"]["conditionFalse"] == 7
    assert answer["deadLetters"] == []


def test_a_record_that_could_not_be_decoded_says_no_handler_ran() -> None:
    idx = index()
    entry = letter_entry(letter("decode", handler=None), NOW)
    assert entry is not None
    idx.add(entry, NOW)
    answer = source_answer(
        ("local", "alarms", 0, 5),
        idx.for_source("local", "alarms", 0, 5, NOW),
        [{"name": "h1", "event": "kafka:local:alarms", "active": True}],
        lambda name: {},
    )
    assert [letter["stage"] for letter in answer["deadLetters"]] == ["decode"]
    assert answer["handlers"][0]["outcome"].startswith("not evaluated")


def test_audit_entries_are_kept_by_offset_and_queried_by_time() -> None:
    idx = index(retention_ms=None)
    for offset in range(3):
        data = {"at": NOW + offset, "user": "app:x", "operation": "grant.add", "target": {}}
        entry = audit_entry(data, "h-audit", 0, offset)
        assert entry is not None
        idx.add(entry, NOW)
    found = idx.query(NOW, kinds=("audit",), since=NOW + 1)
    assert [e.answer()["id"] for e in found] == ["h-audit/0/2", "h-audit/0/1"]
    assert idx.query(NOW + 100 * HOUR, kinds=("audit",), limit=5)  # no age bound


def test_long_texts_and_large_results_are_cut() -> None:
    data = execution("FAILED", error="e" * 10_000, result={"blob": "r" * 10_000})
    entry = execution_entry(data, NOW)
    assert entry is not None
    assert len(entry.blob) < 5000
    answer = entry.answer()
    assert answer["error"].startswith("e" * 100) and "10000 characters" in answer["error"]
    assert "truncated" in answer["result"]


def test_message_ids_and_events() -> None:
    assert parse_message_id("local/alarms/2/17") == ("local", "alarms", 2, 17)
    assert parse_message_id("local/alarms/x/17") is None
    assert parse_message_id("local/alarms/2") is None
    assert parse_message_id("local/alarms/-1/3") is None
    assert handler_event_matches("kafka:local:alarms", "local", "alarms", "local")
    assert handler_event_matches("kafka:alarms", "local", "alarms", "local")
    assert not handler_event_matches("kafka:alarms", "cloud", "alarms", "local")
    assert not handler_event_matches("kafka:cloud:alarms", "local", "alarms", "local")


def test_the_reader_indexes_each_topic_by_its_shape_and_passes_over_the_rest() -> None:
    config = HeraldConfig.model_validate(
        {
            "herald": {"topicPrefix": "hx", "executionHistoryMaxRecords": 100},
            "integrations": [{"name": "local", "bootstrapServers": "k:9092"}],
        }
    )
    history = History(config, with_audit=True, clock=lambda: NOW)
    assert history.topics() == ["hx-executions", "hx-dlq-local", "hx-audit"]
    history.take("hx-executions", 0, 0, orjson.dumps(execution("COMPLETED")), NOW, NOW)
    history.take("hx-dlq-local", 0, 0, orjson.dumps(letter("condition")), NOW, NOW)
    audit = {"at": NOW, "user": "app:a", "operation": "application.create", "target": {}}
    history.take("hx-audit", 0, 0, orjson.dumps(audit), NOW, NOW)
    history.take("hx-executions", 0, 1, b"not json", NOW, NOW)
    history.take("hx-executions", 0, 2, None, NOW, NOW)
    history.take("hx-dlq-local", 0, 1, b'{"id": 3}', NOW, NOW)
    assert (len(history.records), len(history.audit), history.skipped) == (2, 1, 3)
    assert history.counts("h1")["scope"] == "not counted"  # no counters given


def test_the_size_bound_is_validated() -> None:
    base = {"integrations": [{"name": "local", "bootstrapServers": "k:9092"}]}
    assert HeraldConfig.model_validate(base).herald.executionHistoryMaxRecords == 100_000
    with pytest.raises(ValueError, match="executionHistoryMaxRecords"):
        HeraldConfig.model_validate({**base, "herald": {"executionHistoryMaxRecords": 0}})


class _Response:
    def __init__(self, resources: list[Any]) -> None:
        self.resources = resources


def test_a_topic_retention_other_than_the_configured_one_is_said_with_the_fix() -> None:
    entries = [("retention.ms", "86400000", False, 1, False, [])]
    responses = [_Response([(0, None, 2, "hx-executions", entries)])]
    assert parse_retention(responses, "hx-executions") == 86_400_000
    assert parse_retention(responses, "other") is None
    text = mismatch("hx-executions", 86_400_000, 604_800_000, "k:9092")
    assert text is not None
    assert "1 d" in text and "7 d" in text
    assert "--entity-name hx-executions --add-config retention.ms=604800000" in text
    assert mismatch("hx-executions", 5, 5, "k:9092") is None


def test_kept_entries_and_the_message_index_are_left_out_of_garbage_collections() -> None:
    """A worker holds up to 100,000 entries: as tuples of strings, numbers and bytes the
    collector stops tracking them, so full collections do not walk them (bench L's p99)."""
    index = HistoryIndex(1000, None)
    for i in range(1000):
        entry = Entry(EXECUTION, f"id{i}", 1, "h", "COMPLETED", f"local/t/0/{i % 500}", b"{}")
        index.add(entry, 1)
    gc.collect()
    assert not any(gc.is_tracked(kept) for kept in index._entries.values())
    assert not any(gc.is_tracked(idents) for idents in index._by_message.values())
    assert {e.key for e in index.for_message("local/t/0/7", 1)} == {"id7", "id507"}
