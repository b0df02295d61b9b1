"""What every action type is, and the record that carries one from source to sink.

An action type has two halves, as a Redpanda Connect component has a spec, a constructor and
a writer:

- a `Renderer` (source side): the typed parameter model, the checks of values written without
  a template (`static_problems`), and `finish`, which turns the rendered templates into the
  payload of an `ActionRequest` produced onto the internal actions topic;
- a `Delivery` (sink side): sends one request (`deliver`) and says what of its payload may be
  recorded (`redact`).

Keeping rendering on the source side means a template failure is dead-lettered with the
original bytes at hand, and the sink only ever does I/O. The two halves meet only in the
request, so a rule changed at runtime never changes how a request already on the topic is
delivered. `streams.actions.registry` maps each action name to both.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict

from streams.config.models import Target
from streams.deadletter import source_of
from streams.errors import TemplateError
from streams.http1 import Http1Client
from streams.message import Envelope
from streams.templating import compile_template


class ParamsModel(BaseModel):
    """Base of action parameter models: unknown fields are config errors.

    Values may be templates, so most fields are typed loosely here and checked again after
    rendering (`Renderer.finish`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ActionInputError(TemplateError):
    """A rendered action is not valid (e.g. eventType FOO): dead-lettered at the source."""


# What `static_value` returns for a value that holds a template.
TEMPLATED: Any = object()


def static_value(value: Any) -> Any:
    """`value` as every message renders it when it holds no `${...}` template, else TEMPLATED.

    A value without a template renders the same for every message, so what delivery would
    refuse in it can be refused at load. A template that does not compile counts as templated:
    it is reported as a template error of its own.
    """
    try:
        template = compile_template(value)
    except TemplateError:
        return TEMPLATED
    return template.render(None) if template.is_constant else TEMPLATED


def delivery_id(message_id: str, handler: str, index: int) -> str:
    """Stable identity of one action of one message; the same after any redelivery.

    Sent as `Idempotency-Key` so a receiver can recognise a repeat, and used as the dedupe key.
    """
    digest = hashlib.sha256(f"{message_id}|{handler}|{index}".encode()).hexdigest()
    return digest[:32]


class Origin(Protocol):
    """Where the message an action is rendered from came from, as renderers and requests
    read it: a consumed record (`Envelope`) or an HTTP request (`HttpOrigin`)."""

    @property
    def topic(self) -> str: ...

    @property
    def integration(self) -> str: ...

    @property
    def message_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class HttpOrigin:
    """A message received over HTTP (ilagent's `POST /api/events`) rather than from Kafka.

    `message_id` must be stable for a repeated request (the client's `Idempotency-Key`), so a
    repeat gets the same delivery id. Its `topic` is `http:<path>`, as requests record it.
    """

    path: str
    integration: str
    message_id: str
    received_ms: int

    @property
    def topic(self) -> str:
        return f"http:{self.path}"

    def source(self) -> dict[str, Any]:
        """The request's `source`, in the shape of a record's coordinates."""
        return {
            "topic": self.topic,
            "partition": 0,
            "offset": 0,
            "timestamp": self.received_ms,
            "key": None,
            "headers": {},
            "messageId": self.message_id,
        }


def _source(origin: Envelope | HttpOrigin) -> dict[str, Any]:
    if isinstance(origin, HttpOrigin):
        return origin.source()
    return {**source_of(origin), "messageId": origin.message_id}


@dataclass(slots=True)
class ActionRequest:
    """One action to deliver, as written to the actions topic. Build one with `create`."""

    id: str
    handler: str
    event: str
    action: str
    index: int
    payload: dict[str, Any]
    ordering_key: str
    source: dict[str, Any]
    integration: str
    created_ms: int
    target: str | None = None
    dedupe_key: str | None = None
    dedupe_window_s: float | None = None
    replayed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        *,
        handler: str,
        event: str,
        action: str,
        payload: dict[str, Any],
        ordering_key: str,
        origin: Envelope | HttpOrigin | None = None,
        index: int = 0,
        target: str | None = None,
        dedupe_key: str | None = None,
        dedupe_window_s: float | None = None,
        integration: str | None = None,
        id: str | None = None,
    ) -> ActionRequest:
        """A new request, stamped now.

        From a message (`origin`): its id is `delivery_id` of the message, the handler and the
        action's index (the same after any redelivery), its source the message's coordinates
        and its integration the message's. Without an origin (Herald's own requests, such as
        heartbeat pings, delivered at once and never produced): `id` and `integration` are
        given and the source is empty.
        """
        if origin is not None:
            id = id or delivery_id(origin.message_id, handler, index)
            integration = integration or origin.integration
            source = _source(origin)
        else:
            source = {}
        if id is None or integration is None:
            raise ValueError("a request without an origin needs an id and an integration")
        return cls(
            id=id,
            handler=handler,
            event=event,
            action=action,
            index=index,
            payload=payload,
            ordering_key=ordering_key,
            source=source,
            integration=integration,
            created_ms=int(time.time() * 1000),
            target=target,
            dedupe_key=dedupe_key,
            dedupe_window_s=dedupe_window_s,
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses itself, without copying

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionRequest:
        """A request as written (`to_bytes`), e.g. kept in a dead letter."""
        return cls(**data)

    @classmethod
    def from_bytes(cls, data: bytes) -> ActionRequest:
        return cls.from_dict(orjson.loads(data))


Headers = list[tuple[str, bytes]]


class PublishFn(Protocol):
    """Produce one record and wait for the broker's acknowledgement (the worker's producer).

    `avro`: the value as data and how to write it, when it may be written as Avro."""

    def __call__(
        self,
        integration: str | None,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        *,
        avro: dict[str, Any] | None = None,
    ) -> Awaitable[dict[str, Any]]: ...


@dataclass(slots=True)
class DeliveryContext:
    """What a sink hands an action when it delivers it."""

    http: Http1Client  # the hot path: ilert events, webhooks
    session: aiohttp.ClientSession  # the rest: Conductor (its token flow), heartbeats
    targets: dict[str, Target]
    publish: PublishFn
    user_agent: str = "herald/0.1"


P = TypeVar("P", bound=ParamsModel)


class Renderer(ABC, Generic[P]):
    """The source side of one kind of action: its parameters, as configured in one handler.

    Subclasses set `name` (the Conductor-style action name), `Params` (the model `P`) and, when
    they talk to a named target, `target_type`; they are built once per configured action with
    the validated params, the resolved target and the handler's `event`.
    """

    name: ClassVar[str]
    Params: ClassVar[type[ParamsModel]]
    target_type: ClassVar[str | None] = None
    # True: an active handler using this action without a target of `target_type` is a
    # configuration error (there is no default endpoint, as there is for ilert).
    requires_target: ClassVar[bool] = False

    def __init__(self, params: P, target: Target | None, event: str | None = None) -> None:
        self.params = params
        self.target = target
        # The `event` of the handler this action belongs to, for actions that pass it on, as
        # Conductor does with `conductor.event.name`.
        self.event = event

    def template_source(self) -> dict[str, Any]:
        """The parts of the params that are templated (everything but the target name)."""
        data = self.params.model_dump(by_alias=True, exclude_none=True)
        data.pop("target", None)
        return data

    def finish(self, rendered: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """Check and complete rendered params (defaults, value maps) into the request's
        payload. Raise ActionInputError."""
        return rendered

    def ordering_key(self, payload: dict[str, Any], origin: Origin) -> str | None:
        """Actions with the same ordering key are delivered in order. None: use the record key."""
        return None

    def static_problems(self, *, target_resolved: bool = True) -> Iterator[tuple[str, str]]:
        """(parameter, problem) for each parameter without a template that `finish` would
        refuse. Such a value fails every message, so the configuration is refused instead;
        action types check with the rules `finish` uses, so load and runtime cannot disagree.
        Templated values are left to `finish`, per message. `target_resolved` is False when
        the target could not be resolved: checks that depend on it stay quiet, since that
        problem is reported already."""
        return iter(())


class Delivery(ABC):
    """The sink side of one kind of action: delivers requests, whatever rule rendered them.

    Stateless, and built once: everything a delivery needs is in `request.payload` and the
    target, so a request is delivered as it was rendered.
    """

    @abstractmethod
    async def deliver(
        self, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        """Deliver once. Return a JSON-able result; raise DeliveryError on failure."""

    def redact(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload as it may appear in execution records and logs (no secrets)."""
        return payload

    @staticmethod
    def timeout(target: Target | None) -> float:
        return target.timeoutSeconds if target else 10.0
