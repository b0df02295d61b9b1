"""The execution history: recent execution records, dead letters and audit records, in memory.

Every worker reads `<prefix>-executions`, the dead-letter topics and `<prefix>-audit` with a
consumer of its own (agents.history) and keeps what it read here, so any worker answers "what
happened to this message" from the same records. This module is the pure part: the bounded
index and the shapes of its answers, with no Kafka and no Faust.

Bounds: at most `max_records` entries (the oldest evicted first) and, with a retention, none
older than it (`created` before now - retention). An entry keeps a compact copy of its record,
not the record: no action payload, no dead letter's original value or request, long texts
cut. That is what makes the count a bound in bytes too (about 1 KiB an entry).

One entry per identity, so repeats collapse and every worker keeps the same entries whatever
it re-read: an execution record per delivery id (a FAILED attempt is replaced by the next
attempt and by the final status; a final status is not replaced by a late FAILED, nor a
COMPLETED by the SKIPPED of a redelivery), a dead letter per letter id, an audit record per
topic offset.

Answers follow Conductor's `EventExecution` (`id`, `messageId`, `name` — the handler —,
`event`, `created`, `status`, `action`, `output`) with Herald's fields next to them
(`actionIndex`, `attempts`, `error`, `reason`, `result`, `source`, and for a dead letter
`stage` and `valueMissing`). Herald's statuses are Conductor's COMPLETED, FAILED and SKIPPED,
plus DEAD_LETTERED.
"""

from __future__ import annotations

import heapq
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import orjson

from streams.executions import COMPLETED, DEAD_LETTERED, FAILED, SKIPPED

EXECUTION = "execution"
DEAD_LETTER = "deadLetter"
AUDIT = "audit"

STATUSES = (COMPLETED, FAILED, SKIPPED, DEAD_LETTERED)
FINAL = frozenset({COMPLETED, SKIPPED, DEAD_LETTERED})

#: Longest error or reason text kept; the topic has the whole of it.
MAX_TEXT = 2000
#: Largest action result kept (JSON bytes); a larger one is replaced by a note.
MAX_RESULT_BYTES = 4096

NO_RECORD = "no record: condition false or not processed yet"


class Entry(NamedTuple):
    """One indexed record: what queries filter on, and the compact JSON answered.

    A tuple of strings, numbers and bytes only, and the message index's values are tuples too:
    Python's collector stops tracking such tuples, so the 100,000 entries a worker may hold
    are not walked by every full collection (`HistoryIndex` keeps them as plain tuples)."""

    kind: str  # EXECUTION, DEAD_LETTER or AUDIT
    key: str  # the identity: delivery id, letter id, or topic/partition/offset
    created: int  # ms since the epoch
    handler: str | None
    status: str  # an execution's status; DEAD_LETTERED for a letter; the audit operation
    message_id: str | None  # integration/topic/partition/offset of the source record
    blob: bytes  # the answer, as JSON
    #: A fetch letter's skipped range: (integration, topic, partition, offset, end offset).
    span: tuple[str, str, int, int, int] | None = None
    #: A letter's integration and source topic (which handlers' readers may see it).
    topic: tuple[str, str] | None = None
    stage: str | None = None  # a letter's stage

    def answer(self) -> dict[str, Any]:
        return orjson.loads(self.blob)


def message_id(integration: str, topic: str, partition: int, offset: int) -> str:
    """The source record's id, as `streams.message.Envelope.message_id` makes it."""
    return f"{integration}/{topic}/{partition}/{offset}"


def parse_message_id(text: str) -> tuple[str, str, int, int] | None:
    """(integration, topic, partition, offset) of a message id; None when it is not one.
    Kafka topic names hold no '/', integration names neither."""
    parts = text.split("/")
    if len(parts) != 4 or not parts[0] or not parts[1]:
        return None
    try:
        partition, offset = int(parts[2]), int(parts[3])
    except ValueError:
        return None
    if partition < 0 or offset < 0:
        return None
    return parts[0], parts[1], partition, offset


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}... ({len(text)} characters; the topic has the whole text)"


def _result(value: Any) -> Any:
    if value is None:
        return None
    size = len(orjson.dumps(value))
    if size <= MAX_RESULT_BYTES:
        return value
    return {"truncated": f"the result is {size} bytes; the executions topic has it whole"}


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _source_of_execution(record: dict[str, Any]) -> dict[str, Any] | None:
    source = record.get("source")
    if isinstance(source, dict):
        return {
            k: source.get(k) for k in ("integration", "topic", "partition", "offset", "timestamp")
        }
    parsed = parse_message_id(str(record.get("messageId") or ""))
    if parsed is None:  # a record written before execution records carried a source
        return None
    integration, topic, partition, offset = parsed
    return {
        "integration": integration,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": None,
    }


def execution_entry(record: dict[str, Any], fallback_ms: int) -> Entry | None:
    """The entry of an execution record (`streams.executions.record`); None when the record
    is not one (no id or status)."""
    key, status = record.get("id"), record.get("status")
    if not isinstance(key, str) or not isinstance(status, str):
        return None
    result = _result(record.get("result"))
    created = _int(record.get("at"), fallback_ms)
    handler = record.get("handler") if isinstance(record.get("handler"), str) else None
    answer = {
        "id": key,
        "messageId": record.get("messageId"),
        "name": handler,
        "event": record.get("event"),
        "created": created,
        "status": status,
        "action": record.get("action"),
        # Conductor's output is a map: an action's result when it is one (start_workflow's
        # {"workflowId": ...}), else the result under "result".
        "output": result
        if isinstance(result, dict)
        else ({} if result is None else {"result": result}),
        "kind": EXECUTION,
        "actionIndex": record.get("actionIndex"),
        "attempts": _int(record.get("attempts")),
        "error": _text(record.get("error")),
        "reason": _text(record.get("reason")),
        "result": result,
        "source": _source_of_execution(record),
    }
    mid = record.get("messageId") if isinstance(record.get("messageId"), str) else None
    return Entry(EXECUTION, key, created, _intern(handler), sys.intern(status), mid, _blob(answer))


def letter_entry(letter: dict[str, Any], fallback_ms: int) -> Entry | None:
    """The entry of a dead letter (`streams.deadletter.DeadLetter`, as JSON); None when the
    record is not one."""
    key, stage = letter.get("id"), letter.get("stage")
    source = letter.get("source")
    integration = letter.get("integration")
    if not isinstance(key, str) or not isinstance(stage, str) or not isinstance(source, dict):
        return None
    if not isinstance(integration, str):
        return None
    topic, partition, offset = source.get("topic"), source.get("partition"), source.get("offset")
    if not isinstance(topic, str) or not isinstance(partition, int) or not isinstance(offset, int):
        return None
    handler = letter.get("handler") if isinstance(letter.get("handler"), str) else None
    created = _int(letter.get("failedAt"), fallback_ms)
    request = letter.get("request") if isinstance(letter.get("request"), dict) else {}
    mid = message_id(integration, topic, partition, offset)
    end = source.get("endOffset")
    answer = {
        "id": key,
        "messageId": request.get("source", {}).get("messageId") or mid,
        "name": handler,
        "event": request.get("event") or f"kafka:{integration}:{topic}",
        "created": created,
        "status": DEAD_LETTERED,
        "action": letter.get("action"),
        "output": {},
        "kind": DEAD_LETTER,
        "actionIndex": letter.get("actionIndex"),
        "attempts": _int(letter.get("attempts")),
        "error": _text(letter.get("reason")),
        "stage": stage,
        "reason": _text(letter.get("reason")),
        "deliveryId": request.get("id"),
        "valueMissing": _text(letter.get("valueMissing")),
        "source": {
            "integration": integration,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": source.get("timestamp"),
            **({"endOffset": end} if isinstance(end, int) else {}),
        },
    }
    span = (integration, topic, partition, offset, end) if isinstance(end, int) else None
    return Entry(
        DEAD_LETTER,
        key,
        created,
        _intern(handler),
        DEAD_LETTERED,
        None if span else mid,
        _blob(answer),
        span=span,
        topic=(integration, topic),
        stage=sys.intern(stage),
    )


def audit_entry(record: dict[str, Any], topic: str, partition: int, offset: int) -> Entry | None:
    """The entry of an audit record (agents.admin.changes); None when it is not one."""
    operation = record.get("operation")
    if not isinstance(operation, str):
        return None
    created = _int(record.get("at"))
    answer = {"id": f"{topic}/{partition}/{offset}", **record}
    key = f"{partition}/{offset}"
    return Entry(AUDIT, key, created, None, operation, None, _blob(answer))


def _blob(answer: dict[str, Any]) -> bytes:
    """The answer's JSON in a bytes object of its own size: orjson's result keeps the buffer
    it was written in (4 KiB and more), ten times what a kept entry needs."""
    return bytes(memoryview(orjson.dumps(answer)))


def _intern(text: str | None) -> str | None:
    return None if text is None else sys.intern(text)


def _supersedes(new: Entry, old: Entry) -> bool:
    """Whether a repeat of an execution replaces the entry kept: the later record, except a
    late FAILED attempt after the final status, or a redelivery's SKIPPED after COMPLETED."""
    if new.kind != EXECUTION:
        return True
    if old.status in FINAL and new.status == FAILED:
        return False
    return not (old.status == COMPLETED and new.status == SKIPPED)


#: Positions of `Entry`'s fields in the plain tuples `HistoryIndex` keeps.
_KIND, _KEY, _CREATED, _HANDLER, _STATUS, _STAGE = (
    Entry._fields.index(name) for name in ("kind", "key", "created", "handler", "status", "stage")
)
#: Past them, the newest `created` read up to and including that entry.
_READ_BEFORE = len(Entry._fields)


def _entry(kept: tuple[Any, ...]) -> Entry:
    """The `Entry` of a kept tuple."""
    return Entry._make(kept[:_READ_BEFORE])


def _time_order(entry: tuple[Any, ...]) -> tuple[int, str, str]:
    """The order answers list entries in (an `Entry` or a kept tuple): by `created`, ties
    by identity, so every worker and every page of a query agree."""
    return (entry[_CREATED], entry[_KIND], entry[_KEY])


class HistoryIndex:
    """Entries in the order they were read, bounded by count and age, with an index by
    source record. Reading follows the topics' order, so every worker holds the same."""

    def __init__(self, max_records: int, retention_ms: int | None) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.max_records = max_records
        self.retention_ms = retention_ms
        # Plain tuples (`tuple(entry)` and the newest `created` read up to it; `_entry` when
        # read): only an exact tuple of untracked values leaves the garbage collector's care,
        # a NamedTuple does not. That newest `created` bounds every entry read before it, so
        # a query walking back from the last read knows when no older read can be newer.
        self._entries: OrderedDict[tuple[str, str], tuple[Any, ...]] = OrderedDict()
        self._newest_created = 0
        # a tuple, not a set or list: most records have one or two entries (a set costs 216
        # bytes), and tuples of strings are not tracked by the garbage collector
        self._by_message: dict[str, tuple[tuple[str, str], ...]] = {}
        self._spans: dict[tuple[str, str], Entry] = {}
        self.evicted_by_size = 0
        self.evicted_by_age = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: Entry, now_ms: int) -> bool:
        """Index `entry` (replacing its identity's earlier entry when it supersedes it);
        False when it was not kept (older than the retention, or superseded already)."""
        if self._expired(entry, now_ms):
            return False
        ident = (entry.kind, entry.key)
        kept = self._entries.get(ident)
        old = None if kept is None else _entry(kept)
        if old is not None:
            if not _supersedes(entry, old):
                return False
            self._forget(ident, old)
        self._newest_created = max(self._newest_created, entry.created)
        self._entries[ident] = (*entry, self._newest_created)
        if entry.message_id is not None:
            mid = entry.message_id
            self._by_message[mid] = (*self._by_message.get(mid, ()), ident)
        if entry.span is not None:
            self._spans[ident] = entry
        while len(self._entries) > self.max_records:
            oldest, evicted = self._entries.popitem(last=False)
            self._unindex(oldest, _entry(evicted))
            self.evicted_by_size += 1
        return True

    def expire(self, now_ms: int) -> int:
        """Evict the entries older than the retention from the front (the oldest read); an
        entry read out of time order goes when it reaches the front, and no answer shows it
        meanwhile. How many were evicted."""
        count = 0
        while self._entries:
            ident, kept = next(iter(self._entries.items()))
            entry = _entry(kept)
            if not self._expired(entry, now_ms):
                break
            self._entries.popitem(last=False)
            self._unindex(ident, entry)
            count += 1
        self.evicted_by_age += count
        return count

    def _oldest(self, now_ms: int) -> int | None:
        """The earliest `created` still within the retention (None: no retention)."""
        return None if self.retention_ms is None else now_ms - self.retention_ms

    def _expired(self, entry: Entry, now_ms: int) -> bool:
        oldest = self._oldest(now_ms)
        return oldest is not None and entry.created < oldest

    def _forget(self, ident: tuple[str, str], entry: Entry) -> None:
        del self._entries[ident]
        self._unindex(ident, entry)

    def _unindex(self, ident: tuple[str, str], entry: Entry) -> None:
        if entry.message_id is not None:
            found = self._by_message.get(entry.message_id)
            if found is not None and ident in found:
                rest = tuple(other for other in found if other != ident)
                if rest:
                    self._by_message[entry.message_id] = rest
                else:
                    del self._by_message[entry.message_id]
        if entry.span is not None:
            self._spans.pop(ident, None)

    def _newest(self, now_ms: int) -> Iterator[tuple[Any, ...]]:
        """Every kept tuple within the retention, the last read first."""
        oldest = self._oldest(now_ms)
        for kept in reversed(self._entries.values()):
            if oldest is None or kept[_CREATED] >= oldest:
                yield kept

    def query(
        self,
        now_ms: int,
        *,
        kinds: Iterable[str] = (EXECUTION, DEAD_LETTER),
        handler: str | None = None,
        status: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
        visible: Callable[[Entry], bool] = lambda entry: True,
        exclude_stages: frozenset[str] = frozenset({"delivery"}),
    ) -> list[Entry]:
        """Entries matching every filter given, newest first, at most `limit`. A delivery
        dead letter is left out by default: its execution record (DEAD_LETTERED) is listed.

        "Newest" is by `created`, then by identity: records arrive out of time order (several
        partitions, several writers), so the last `limit` read are not the newest `limit`,
        and equal times need a tie-break every worker and every page agrees on."""
        wanted = frozenset(kinds)
        newest: list[tuple[tuple[int, str, str], Entry]] = []  # a min-heap of `limit`
        for kept in self._newest(now_ms):
            if len(newest) >= limit and kept[_READ_BEFORE] < newest[0][0][0]:
                break  # nothing read this early is as new as the `limit` found
            if kept[_KIND] not in wanted:
                continue
            if handler is not None and kept[_HANDLER] != handler:
                continue
            if status is not None and kept[_STATUS] != status:
                continue
            if since is not None and kept[_CREATED] < since:
                continue
            if until is not None and kept[_CREATED] > until:
                continue
            if kept[_STAGE] is not None and kept[_STAGE] in exclude_stages:
                continue
            order = _time_order(kept)
            if len(newest) >= limit and order < newest[0][0]:
                continue
            entry = _entry(kept)  # only a candidate becomes an Entry
            if not visible(entry):
                continue
            if len(newest) < limit:
                heapq.heappush(newest, (order, entry))
            else:
                heapq.heapreplace(newest, (order, entry))
        return [entry for _, entry in sorted(newest, reverse=True)]

    def for_source(
        self, integration: str, topic: str, partition: int, offset: int, now_ms: int
    ) -> list[Entry]:
        """Every entry of one source record: its executions and dead letters, and the fetch
        letters whose skipped range holds its offset; oldest first."""
        found = self.for_message(message_id(integration, topic, partition, offset), now_ms)
        for entry in self._spans.values():
            span = entry.span
            assert span is not None
            if span[:3] == (integration, topic, partition) and span[3] <= offset < span[4]:
                if not self._expired(entry, now_ms):
                    found.append(entry)
        found.sort(key=_time_order)
        return found

    def for_message(self, mid: str, now_ms: int) -> list[Entry]:
        """The entries whose source record has the message id `mid`, oldest first."""
        found = [_entry(self._entries[ident]) for ident in self._by_message.get(mid, ())]
        found = [entry for entry in found if not self._expired(entry, now_ms)]
        found.sort(key=_time_order)
        return found


def handler_event_matches(event: str, integration: str, topic: str, home: str) -> bool:
    """Whether a handler's event (`kafka:<integration>:<topic>`, or `kafka:<topic>` on the
    home integration) consumes `topic` of `integration`."""
    parts = event.split(":")
    if len(parts) == 3 and parts[0] == "kafka":
        return parts[1] == integration and parts[2] == topic
    if len(parts) == 2 and parts[0] == "kafka":
        return integration == home and parts[1] == topic
    return False


def source_answer(
    where: tuple[str, str, int, int],
    entries: list[Entry],
    handlers: list[dict[str, Any]],
    counts: Callable[[str], dict[str, Any]],
) -> dict[str, Any]:
    """What happened to one source record, handler by handler.

    `handlers` are the handlers of the record's topic the caller may see (their events),
    `entries` the record's history entries the caller may see. Each handler lists its
    actions' executions and its dead letters; one with neither says `NO_RECORD` with its
    counts. Dead letters of no handler (the record could not be decoded, an internal error, a
    batch that could not be read) are listed apart: no handler ran for the record then.
    """
    integration, topic, partition, offset = where
    by_handler: dict[str, dict[str, Any]] = {}

    def slot(name: str, event: str | None, current: bool) -> dict[str, Any]:
        if name not in by_handler:
            by_handler[name] = {
                "name": name,
                "event": event,
                "current": current,
                "executions": [],
                "deadLetters": [],
            }
        return by_handler[name]

    for handler in handlers:
        slot(str(handler.get("name")), handler.get("event"), True)["active"] = bool(
            handler.get("active")
        )
    unhandled: list[dict[str, Any]] = []
    for entry in entries:
        answer = entry.answer()
        if entry.handler is None:
            unhandled.append(answer)
            continue
        group = slot(entry.handler, answer.get("event"), False)
        group["executions" if entry.kind == EXECUTION else "deadLetters"].append(answer)
    for name, group in by_handler.items():
        if group["executions"]:
            group["outcome"] = "executed"
        elif group["deadLetters"]:
            group["outcome"] = "dead-lettered"
        elif unhandled:
            stages = ", ".join(sorted({str(a.get("stage")) for a in unhandled}))
            group["outcome"] = f"not evaluated: the record was dead-lettered (stage {stages})"
        else:
            group["outcome"] = NO_RECORD
        group["counts"] = counts(name)
    return {
        "messageId": message_id(integration, topic, partition, offset),
        "integration": integration,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "handlers": [by_handler[name] for name in sorted(by_handler)],
        "deadLetters": unhandled,
    }
