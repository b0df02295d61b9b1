"""What every action type is, and the record that carries one from source to sink.

The source side renders an action's templates against the message and produces an
`ActionRequest` onto the internal actions topic; a sink agent delivers it. Keeping rendering on
the source side means a template failure is dead-lettered with the original bytes at hand,
and the sink only ever does I/O.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict

from streams.config.models import Target
from streams.errors import TemplateError
from streams.http1 import Http1Client
from streams.message import Envelope
from streams.templating import compile_template


class ParamsModel(BaseModel):
    """Base of action parameter models: unknown fields are config errors.

    Values may be templates, so most fields are typed loosely here and checked again after
    rendering (`ActionType.finish`).
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


@dataclass(slots=True)
class ActionRequest:
    """One action to deliver, as written to the actions topic."""

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

    def to_bytes(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses itself, without copying

    @classmethod
    def from_bytes(cls, data: bytes) -> ActionRequest:
        return cls(**orjson.loads(data))


Headers = list[tuple[str, bytes]]
PublishFn = Callable[[str | None, str, bytes | None, bytes | None, Headers], Awaitable[dict]]


@dataclass(slots=True)
class DeliveryContext:
    """What a sink hands an action when it delivers it."""

    http: Http1Client  # the hot path: ilert events, webhooks
    session: aiohttp.ClientSession  # the rest: Conductor (its token flow), heartbeats
    targets: dict[str, Target]
    publish: PublishFn
    user_agent: str = "herald/0.1"


class ActionType(ABC):
    """One kind of action: parameters model, post-render check, delivery.

    Subclasses set `name` (the Conductor-style action name), `Params` and, when they talk to a
    named target, `target_type`. Register them in `streams.actions.registry`.
    """

    name: ClassVar[str]
    Params: ClassVar[type[ParamsModel]]
    target_type: ClassVar[str | None] = None
    # True: an active handler using this action without a target of `target_type` is a
    # configuration error (there is no default endpoint, as there is for ilert).
    requires_target: ClassVar[bool] = False

    def __init__(self, params: ParamsModel, target: Target | None) -> None:
        self.params = params
        self.target = target
        # The `event` of the handler this action belongs to (set when the handler is compiled),
        # for actions that pass it on, as Conductor does with `conductor.event.name`.
        self.event: str | None = None

    def template_source(self) -> dict[str, Any]:
        """The parts of the params that are templated (everything but the target name)."""
        data = self.params.model_dump(by_alias=True, exclude_none=True)
        data.pop("target", None)
        return data

    def finish(self, rendered: dict[str, Any], envelope: Envelope) -> dict[str, Any]:
        """Check and complete rendered params (defaults, value maps). Raise ActionInputError."""
        return rendered

    def ordering_key(self, payload: dict[str, Any], envelope: Envelope) -> str | None:
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

    @staticmethod
    def timeout(target: Target | None) -> float:
        return target.timeoutSeconds if target else 10.0

    @classmethod
    @abstractmethod
    async def deliver(
        cls, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        """Deliver once. Return a JSON-able result; raise DeliveryError on failure.

        A class method on purpose: the sink delivers from the request alone (everything the
        delivery needs is in `request.payload`), so a rule changed at runtime never changes
        how an action already on the actions topic is delivered.
        """

    @staticmethod
    def redact(payload: dict[str, Any]) -> dict[str, Any]:
        """The payload as it may appear in execution records and logs (no secrets)."""
        return payload
