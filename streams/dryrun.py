"""A dry run of event handlers: what they would do with one message, with nothing delivered.

An operator pastes a message and asks "what would this handler send?". The answer must be
what the worker would really do, so nothing here re-implements a stage:

- the message is decoded as the source decodes a STRING integration's record and the selected
  handlers go through the source stage itself (`streams.routing.prepare`, the conditions
  judged, `streams.handlers.finish`): each condition's result (or the dead letter its error
  would write), then each action's `ActionRequest` (or its template's dead letter), with the
  delivery id, ordering key and dedupe key the sink would use;
- each request is then handed to its action type's real delivery side (`Delivery.deliver`,
  `streams.actions.registry`) with a `DeliveryContext` whose HTTP clients and producer record
  what they are asked and send nothing. So the method, URL, headers and body shown are the
  ones the sink would build, with the target's headers, ilert's key from the target, the
  `Idempotency-Key`, Conductor's paths and bodies.

Nothing leaves the process: no request, no record, no token fetch. A Conductor target with an
access key is shown with its `X-Authorization` header masked, from a token cache of the dry
run's own (the worker's cache is never touched). A Conductor delivery that first reads from the
server (a task found by id, variables appended to) is shown up to that read: what follows
depends on the server's answer, which a dry run does not ask for.

Secrets are masked (`***`) in everything returned: credential headers (`Authorization`,
`X-Api-Key`, ...), the values of secret fields (`integrationKey`, `keySecret`, ...), the
target's secret values wherever they appear (an ilert key in a heartbeat URL), and every value
registered in `streams.secrets`.

Pure apart from one thing: the deliveries run on an event loop of their own, on a short-lived
thread, so that a dry run asked for inside a worker's loop (the admin API) neither shares the
worker's token cache nor needs to be a coroutine. The conditions are judged between `start`
and `report`: in this process by `dry_run` (the command line), by the worker's evaluator
process in the admin API (`agents.admin.dryrun`), as the source stage judges them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from yarl import URL

from streams import codecs, routing
from streams import secrets as secret_values
from streams.actions import registry
from streams.actions.base import ActionRequest, DeliveryContext
from streams.conditions import ConditionJob
from streams.conductor_auth import TokenCache, _Entry, token_cache
from streams.config.models import Target
from streams.deadletter import DeadLetter
from streams.errors import DeliveryError
from streams.handlers import (
    CompiledHandler,
    Evaluation,
    Prepared,
    finish,
    judge_here,
    local_jobs,
)
from streams.http1 import Response
from streams.message import Envelope
from streams.secrets import MASK, SECRET_FIELD_NAMES, Scrubber, is_credential_header

T = TypeVar("T")

#: What the recording transports answer: a success, so each delivery goes on to its end.
_ANSWER = "(dry run: not sent)"


class UnknownSelection(LookupError):
    """No handler is selected by a name or topic; the message names what there is."""


@dataclass(frozen=True, slots=True)
class Message:
    """A record as it would arrive on the topic: the value's bytes (None: a tombstone), the key
    as text, headers, and the coordinates `_kafka` shows (timestamp None: now)."""

    value: bytes | None
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    partition: int = 0
    offset: int = 0
    timestamp: int | None = None


def select(
    handlers: Sequence[CompiledHandler],
    *,
    home: str,
    handler: str | None = None,
    topic: str | None = None,
    integration: str | None = None,
) -> list[CompiledHandler]:
    """One handler by name (active or not), or the handlers a worker runs for a topic of an
    integration (the home one by default): the active ones. UnknownSelection when there is
    none; ValueError unless exactly one of `handler` and `topic` is given."""
    if (handler is None) == (topic is None):
        raise ValueError("name a handler or a topic (not both)")
    if handler is not None:
        for compiled in handlers:
            if compiled.name == handler:
                return [compiled]
        names = ", ".join(sorted(h.name for h in handlers)) or "none"
        raise UnknownSelection(f"no handler named {handler!r}; the handlers are: {names}")
    where = integration or home
    found = [h for h in handlers if h.spec.active and (h.integration, h.topic) == (where, topic)]
    if not found:
        topics = sorted({f"{h.integration}:{h.topic}" for h in handlers if h.spec.active})
        raise UnknownSelection(
            f"no active handler consumes {where}:{topic}; topics with active handlers: "
            f"{', '.join(topics) or 'none'}"
        )
    return found


@dataclass(slots=True)
class Pending:
    """A dry run whose conditions are still to be judged: `jobs` (JavaScript conditions, as
    the source stage prepares them), judged in this process (`dry_run`) or by a worker's
    evaluator process (the admin API), then `report`."""

    handlers: list[CompiledHandler]
    envelope: Envelope
    ready: Prepared | Evaluation  # an Evaluation already when the message does not decode

    @property
    def jobs(self) -> list[ConditionJob]:
        return self.ready.jobs if isinstance(self.ready, Prepared) else []


def start(handlers: Sequence[CompiledHandler], message: Message) -> Pending:
    """Step one: decode `message` (as a STRING integration's record) and prepare `handlers`
    (all of one integration's topic, as `select` gives them), as the source stage does."""
    if not handlers:
        raise ValueError("no handler to run")
    integration, topic = handlers[0].integration, handlers[0].topic
    if any((h.integration, h.topic) != (integration, topic) for h in handlers):
        raise ValueError("the handlers of one dry run consume the same topic")
    envelope = _envelope(message, integration, topic)
    return Pending(list(handlers), envelope, routing.prepare(list(handlers), envelope))


def report(pending: Pending, *, home: str) -> dict[str, Any]:
    """Step two, once every job has its verdict: each handler's condition result and each
    action's requests, built by the sink's own code with nothing sent. A JSON-able report,
    secrets masked; `home` is the home integration's name (a publish without one goes
    there)."""
    ready = pending.ready
    out: dict[str, Any] = {
        "delivered": False,
        "message": {**pending.envelope.meta(), "value": None},
        "handlers": [_handler_entry(h) for h in pending.handlers],
    }
    if isinstance(ready, Evaluation):  # the message did not decode: no handler ran
        out["deadLetter"] = _letter(ready.dead_letters[0])
        return secret_values.scrub_data(out)
    out["message"]["value"] = ready.envelope.value
    evaluation = finish(ready)
    by_name = {h.name: h for h in pending.handlers}
    captured = _isolated(
        lambda: _capture_all([(by_name[r.handler], r) for r in evaluation.requests], home)
    )
    for handler, entry in zip(pending.handlers, out["handlers"], strict=True):
        letters = [d for d in evaluation.dead_letters if d.handler == handler.name]
        condition = [d for d in letters if d.stage == "condition"]
        if handler.name in evaluation.skipped:
            entry["matched"] = False
        elif condition:
            entry["deadLetter"] = _letter(condition[0])
        else:
            entry["matched"] = True
            requests = [r for r in evaluation.requests if r.handler == handler.name]
            entry["actions"] = _actions(handler, requests, letters)
            for action in entry["actions"]:
                request = action.pop("_request", None)
                if request is not None:
                    action.update(captured[id(request)])
    return secret_values.scrub_data(out)


def dry_run(handlers: Sequence[CompiledHandler], message: Message, *, home: str) -> dict[str, Any]:
    """`start`, the conditions judged in this process, `report`: for the command line and
    tests (a worker judges them in its evaluator process instead)."""
    pending = start(handlers, message)
    if isinstance(pending.ready, Prepared):
        judge_here(local_jobs(pending.ready))
    return report(pending, home=home)


# --------------------------------------------------------------------------- the source side


def _envelope(message: Message, integration: str, topic: str) -> Envelope:
    """The record as the source agent builds it from what was consumed (agents.sources)."""
    raw_key = None if message.key is None else message.key.encode()
    return Envelope(
        value=None,
        topic=topic,
        partition=message.partition,
        offset=message.offset,
        integration=integration,
        key=codecs.decode_key(raw_key),
        headers={str(k): str(v) for k, v in message.headers.items()},
        timestamp=int(time.time() * 1000) if message.timestamp is None else message.timestamp,
        raw_value=message.value,
        raw_key=raw_key,
    )


def _handler_entry(handler: CompiledHandler) -> dict[str, Any]:
    """A handler's entry; `matched` stays None (not evaluated) until its condition ran."""
    return {
        "name": handler.name,
        "integration": handler.integration,
        "topic": handler.topic,
        "active": handler.spec.active,
        "matched": None,
        "actions": [],
    }


def _letter(letter: DeadLetter) -> dict[str, Any]:
    """What a dead letter says of a failure (its record would also carry the message)."""
    return {"stage": letter.stage, "reason": letter.reason}


def _actions(
    handler: CompiledHandler, requests: list[ActionRequest], letters: list[DeadLetter]
) -> list[dict[str, Any]]:
    """One entry per action of a matched handler, in the handler's order."""
    by_index: dict[int, dict[str, Any]] = {}
    for request in requests:
        by_index[request.index] = {
            "index": request.index,
            "action": request.action,
            "target": request.target,
            "deliveryId": request.id,
            "orderingKey": request.ordering_key,
            "dedupe": (
                {"key": request.dedupe_key, "windowSeconds": request.dedupe_window_s}
                if request.dedupe_key is not None
                else None
            ),
            "_request": request,
        }
    for letter in letters:
        index = letter.actionIndex if letter.actionIndex is not None else -1
        by_index[index] = {
            "index": index,
            "action": letter.action,
            "target": _target_name(handler, index),
            "deadLetter": _letter(letter),
        }
    return [by_index[i] for i in sorted(by_index)]


def _target_name(handler: CompiledHandler, index: int) -> str | None:
    for action in handler.actions:
        if action.index == index:
            return action.target_name
    return None


def _target_of(handler: CompiledHandler, request: ActionRequest) -> Target | None:
    """The target the sink would look up by the request's name: the one the handler resolved."""
    for action in handler.actions:
        if action.index == request.index:
            return action.renderer.target
    return None


# --------------------------------------------------------------------------- the sink side


class _NeedsAnswer(Exception):
    """A delivery read from its server (GET) and would go on from the answer."""


@dataclass(slots=True)
class _Recording:
    """What one delivery asked its transports for."""

    http: list[dict[str, Any]] = field(default_factory=list)
    publish: dict[str, Any] | None = None


class _RecordingHttp1:
    """Stands in for `Http1Client` (ilert, webhooks): records the call, answers 200."""

    def __init__(self, recording: _Recording) -> None:
        self.recording = recording

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> Response:
        self.recording.http.append(_sent(method, url, headers or {}, body))
        return Response(200, {}, _ANSWER.encode())


class _RecordingSession:
    """Stands in for the aiohttp session (Conductor): records each call; answers a write with
    200 and stops at a read (`_NeedsAnswer`), whose answer the dry run cannot know."""

    closed = False

    def __init__(self, recording: _Recording) -> None:
        self.recording = recording

    def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        **_: Any,
    ) -> _Answer:
        if params:  # as aiohttp sends them
            url = str(URL(url).extend_query(params))
        self.recording.http.append(_sent(method, url, dict(headers or {}), data))
        if method.upper() == "GET":
            raise _NeedsAnswer(f"{method} {url}")
        return _Answer()


class _Answer:
    status = 200
    headers: Mapping[str, str] = {"Content-Type": "text/plain"}

    async def __aenter__(self) -> _Answer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def text(self, errors: str = "strict") -> str:
        return _ANSWER


def _sent(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> dict[str, Any]:
    return {"method": method.upper(), "url": url, "headers": dict(headers), "body": body}


async def _capture_all(
    requests: list[tuple[CompiledHandler, ActionRequest]], home: str
) -> dict[int, dict[str, Any]]:
    """Each request's delivery, recorded (keyed by the request's id())."""
    return {id(request): await _capture(handler, request, home) for handler, request in requests}


async def _capture(handler: CompiledHandler, request: ActionRequest, home: str) -> dict[str, Any]:
    delivery = registry.delivery(request.action)
    target = _target_of(handler, request)
    recording = _Recording()

    async def publish(
        integration: str | None,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        *,
        avro: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        recording.publish = {
            "integration": integration,
            "topic": topic,
            "key": key,
            "value": value,
            "headers": headers,
            "avro": avro,
        }
        return {}

    ctx = DeliveryContext(
        http=_RecordingHttp1(recording),  # type: ignore[arg-type]
        session=_RecordingSession(recording),  # type: ignore[arg-type]
        targets={target.name: target} if target is not None else {},
        publish=publish,
    )
    _masked_token(target)
    entry: dict[str, Any] = {}
    secrets = _secrets_of(target, request.payload)
    if delivery is not None:
        entry["payload"] = _masked(secrets.scrub_data(delivery.redact(request.payload)))
    try:
        if delivery is None:
            raise DeliveryError(f"unknown action {request.action!r}", retryable=False)
        await delivery.deliver(request, ctx, target)
    except DeliveryError as exc:
        entry["deadLetter"] = {"stage": "delivery", "reason": secrets.scrub(str(exc))}
    except _NeedsAnswer as exc:
        entry["incomplete"] = (
            f"the delivery reads {secrets.scrub(str(exc))} first and goes on from the server's "
            "answer; the requests after it are not known without asking the server"
        )
    entry["requests"] = [_shown_http(sent, secrets) for sent in recording.http]
    if recording.publish is not None:
        entry["publish"] = _shown_publish(recording.publish, request.payload, secrets, home)
    return entry


def _masked_token(target: Target | None) -> None:
    """A Conductor target with an access key: the dry run's own token cache holds `***` as its
    token, so the delivery sends it as `X-Authorization` without a token request."""
    if target is None or not (target.keyId and target.keySecret):
        return
    cache = token_cache()  # the dry run's loop's cache, never a worker's
    cache.entries[TokenCache._key(target)] = _Entry(token=MASK, renew_at=math.inf)


def _isolated(run: Callable[[], Awaitable[T]]) -> T:
    """`run()` on an event loop of its own, so the recording transports and token caches it
    builds share nothing with a worker's. The caller is off any loop: a worker's API calls
    `report` through `asyncio.to_thread` (agents.admin.dryrun), the command line has none.
    The recording transports never wait, so this is as quick as building the requests."""

    async def go() -> T:
        return await run()

    return asyncio.run(go())


# --------------------------------------------------------------------------- masking


def _secrets_of(target: Target | None, payload: Any) -> Scrubber:
    """A scrubber of this delivery's own secrets: the target's (its secret fields, credential
    headers, URL passwords) and those the rendered payload carries (an `integrationKey` from
    the message, a credential header of the action), which the process's scrubber may not
    know."""
    scrubber = Scrubber()
    if target is not None:
        scrubber.register_config(target)
    for value, header in _payload_secrets(payload, None):
        if header:
            scrubber.register_header(value)
        else:
            scrubber.register(value)
    return scrubber


def _payload_secrets(value: Any, name: str | None) -> Iterator[tuple[str, bool]]:
    """(secret, is a header value) for each secret-named field and credential header."""
    if isinstance(value, dict):
        for key, item in value.items():
            if name == "headers" and isinstance(item, str) and is_credential_header(str(key)):
                yield item, True
            else:
                yield from _payload_secrets(item, str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _payload_secrets(item, name)
    elif isinstance(value, str) and name in SECRET_FIELD_NAMES:
        yield value, False


def _masked(value: Any) -> Any:
    """`value` with the values of secret-named fields masked, at any depth."""
    if isinstance(value, dict):
        return {
            k: MASK if k in SECRET_FIELD_NAMES and v is not None else _masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _headers(headers: Mapping[str, str], secrets: Scrubber) -> dict[str, str]:
    return {
        name: MASK if is_credential_header(name) else secrets.scrub(str(value))
        for name, value in headers.items()
    }


def _shown_http(sent: dict[str, Any], secrets: Scrubber) -> dict[str, Any]:
    """One HTTP request as it would be sent, secrets masked; a JSON body shown as JSON."""
    headers = sent["headers"]
    body: bytes | None = sent["body"]
    shown: Any = None
    if body is not None:
        content_type = next((str(v) for k, v in headers.items() if k.lower() == "content-type"), "")
        text = body.decode("utf-8", errors="replace")
        shown = text
        if "json" in content_type:
            try:
                shown = orjson.loads(body)
            except orjson.JSONDecodeError:
                pass
    return {
        "method": sent["method"],
        "url": secrets.scrub(sent["url"]),
        "headers": _headers(headers, secrets),
        "body": _masked(secrets.scrub_data(shown)),
    }


def _shown_publish(
    sent: dict[str, Any], payload: dict[str, Any], secrets: Scrubber, home: str
) -> dict[str, Any]:
    """The record a publish would produce: destination (no integration: the home one), key,
    headers and value (text, or JSON as rendered); `avro` when it may be written as Avro at
    delivery."""
    key, value = sent["key"], sent["value"]
    as_text = "text" in (payload.get("value") or {})
    shown: Any = None
    if value is not None:
        shown = value.decode("utf-8", errors="replace") if as_text else orjson.loads(value)
    out: dict[str, Any] = {
        "integration": sent["integration"] or home,
        "topic": sent["topic"],
        "key": None if key is None else key.decode("utf-8", errors="replace"),
        "headers": _headers(
            {k: v.decode("utf-8", errors="replace") for k, v in sent["headers"]}, secrets
        ),
        "format": "text" if as_text else "json",
        "value": _masked(secrets.scrub_data(shown)),
    }
    avro = sent["avro"]
    if avro is not None:
        out["avro"] = {k: avro.get(k) for k in ("format", "subject", "version")}
    return out
