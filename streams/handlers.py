"""Event handlers, compiled once and evaluated per message.

`compile_handler` turns a configured EventHandler into a `CompiledHandler`: condition parsed,
templates compiled, action parameters validated, targets resolved. Every problem is reported
at once with its field path, so a broken configuration stops the worker before it consumes.

`evaluate` is the whole source stage for one message, pure and synchronous: for each handler
it runs the condition and renders the actions, and returns the action requests to produce and
the dead letters for whatever failed. A failure in one handler never affects another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from streams.actions import registry
from streams.actions.base import ActionRequest, Renderer
from streams.conditions import Condition, ConditionJob, compile_condition
from streams.config.messages import error_message
from streams.config.models import Action, EventHandler, HeraldConfig, Target
from streams.deadletter import DeadLetter, for_envelope
from streams.errors import ConditionError, ConfigError, TemplateError
from streams.message import Envelope
from streams.templating import Template, compile_template, expand_inline_json


@dataclass(slots=True)
class CompiledAction:
    index: int
    renderer: Renderer[Any]
    template: Template
    expand_inline_json: bool
    ordering_key: Template | None
    dedupe_key: Template | None
    dedupe_window: float | None

    @property
    def name(self) -> str:
        return self.renderer.name

    @property
    def target_name(self) -> str | None:
        return self.renderer.target.name if self.renderer.target else None


@dataclass(slots=True)
class CompiledHandler:
    spec: EventHandler
    integration: str
    topic: str
    condition: Condition
    actions: list[CompiledAction]

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(slots=True)
class Evaluation:
    """What the source stage produces for one message."""

    requests: list[ActionRequest] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def compile_handler(
    handler: EventHandler,
    config: HeraldConfig,
    path: str,
    *,
    file: str,
) -> CompiledHandler:
    """Compile one handler; raise ConfigError listing every problem found in it."""
    problems: list[str] = []
    where = f"{file}: {path}"
    integration = handler.integration_name or config.home.name
    condition: Condition | None = None
    try:
        condition = compile_condition(
            handler.condition,
            handler.evaluatorType,
            time_limit_ms=config.herald.conditionTimeLimitMs,
            memory_limit_bytes=config.herald.conditionMemoryLimitMb * 1024 * 1024,
        )
    except ConditionError as exc:
        problems.append(f"{where}.condition: {exc}; fix the expression")
    actions: list[CompiledAction] = []
    for index, action in enumerate(handler.actions):
        compiled = _compile_action(
            action, index, handler.event, config, f"{where}.actions[{index}]", problems
        )
        if compiled is None:
            continue
        action_cls = type(compiled.renderer)
        if handler.active and action_cls.requires_target and compiled.renderer.target is None:
            problems.append(
                f"{where}.actions[{index}].{action_cls.name}: needs a {action_cls.target_type} "
                f"target; define one under targets (type: {action_cls.target_type})"
            )
            continue
        actions.append(compiled)
    if problems or condition is None:
        raise ConfigError(problems)
    return CompiledHandler(handler, integration, handler.topic, condition, actions)


def _compile_action(
    action: Action, index: int, event: str, config: HeraldConfig, where: str, problems: list[str]
) -> CompiledAction | None:
    action_cls = registry.renderer(action.action)
    if action_cls is None:
        problems.append(
            f"{where}.action: unknown action {action.action!r}; use one of "
            f"{', '.join(registry.names())}"
        )
        return None
    extra = action.model_extra or {}
    stray = sorted(k for k in extra if k != action.action)
    for name in stray:
        problems.append(
            f"{where}.{name}: unknown field {name!r}; parameters of this action go under "
            f"{action.action!r}"
        )
    raw = extra.get(action.action)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}.{action.action}: must be a mapping of parameters")
        return None
    try:
        params = action_cls.Params.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            message = error_message(err, None, show_input=False)
            problems.append(f"{where}.{action.action}.{loc}: {message}")
        return None
    before_target = len(problems)
    target = _resolve_target(action_cls, getattr(params, "target", None), config, where, problems)
    renderer = action_cls(params, target, event)
    before = len(problems)
    template = _template(renderer.template_source(), f"{where}.{action.action}", problems)
    ordering = _template(action.orderingKey, f"{where}.orderingKey", problems)
    dedupe = (
        _template(action.dedupe.key, f"{where}.dedupe.key", problems) if action.dedupe else None
    )
    for name, problem in renderer.static_problems(target_resolved=before == before_target):
        problems.append(f"{where}.{action.action}.{name}: {problem}")
    if template is None or len(problems) > before:
        return None
    return CompiledAction(
        index=index,
        renderer=renderer,
        template=template,
        expand_inline_json=action.expandInlineJSON,
        ordering_key=ordering,
        dedupe_key=dedupe,
        dedupe_window=action.dedupe.windowSeconds if action.dedupe else None,
    )


def _template(source: Any, where: str, problems: list[str]) -> Template | None:
    """The compiled template of a non-empty source; None (and a problem noted) when invalid."""
    if source is None or source == "":
        return None
    try:
        return compile_template(source)
    except TemplateError as exc:
        problems.append(f"{where}: template error: {exc}")
        return None


def _resolve_target(
    action_cls: type[Renderer[Any]],
    name: str | None,
    config: HeraldConfig,
    where: str,
    problems: list[str],
) -> Target | None:
    """The named target, or the only target of the action's type when none is named."""
    if action_cls.target_type is None:
        return None
    if name is None:
        candidates = [t for t in config.targets if t.type == action_cls.target_type]
        if len(candidates) > 1:
            names = ", ".join(t.name for t in candidates)
            problems.append(
                f"{where}.{action_cls.name}.target: there are several {action_cls.target_type} "
                f"targets ({names}); name one with target"
            )
        return candidates[0] if len(candidates) == 1 else None
    try:
        target = config.target(name)
    except LookupError:
        problems.append(
            f"{where}.{action_cls.name}.target: no target named {name!r}; define it under targets"
        )
        return None
    if target.type != action_cls.target_type:
        problems.append(
            f"{where}.{action_cls.name}.target: target {name!r} has type {target.type}; "
            f"{action_cls.name} needs a target of type {action_cls.target_type}"
        )
        return None
    return target


def compile_all(config: HeraldConfig, *, file: str) -> list[CompiledHandler]:
    """Compile every handler of a configuration, collecting all problems."""
    problems: list[str] = []
    compiled: list[CompiledHandler] = []
    for i, handler in enumerate(config.eventHandlers):
        try:
            compiled.append(
                compile_handler(
                    handler, config, f"eventHandlers[{i}](name={handler.name})", file=file
                )
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return compiled


_UNSET: Any = object()


class _Message:
    """The message as Conductor hands it to conditions and actions.

    Conductor (`DefaultEventProcessor.executeEvent`) evaluates every non-empty condition
    against the payload after `JsonUtils.expand`, and gives each action the payload as parsed,
    expanded only when the action says `expandInlineJSON` (`SimpleActionProcessor.execute`).
    The expansion is computed at most once per message, and only when something needs it.
    (Conductor's `expand` works in place, so from its second handler on a condition sees the
    payload expanded again; Herald gives every condition the once-expanded payload.)
    """

    __slots__ = ("value", "_expanded", "_failure")

    def __init__(self, value: Any, flat: bool = False) -> None:
        """`flat`: the value is known to need no expansion (`Envelope.flat`)."""
        self.value = value
        self._expanded: Any = value if flat else _UNSET
        self._failure: str | None = None

    def expanded(self) -> Any:
        """The value with inline JSON expanded; TemplateError if the message is too deep."""
        if self._expanded is _UNSET and self._failure is None:
            try:
                self._expanded = expand_inline_json(self.value)
            except RecursionError:
                self._failure = "message is nested too deeply to expand inline JSON"
        if self._failure is not None:
            raise TemplateError(self._failure)
        return self._expanded

    def for_action(self, action: CompiledAction) -> Any:
        return self.expanded() if action.expand_inline_json else self.value


@dataclass(slots=True)
class Prepared:
    """One message's handlers, with their JavaScript conditions still to run.

    The source stage evaluates in two steps so that a fetched batch's JavaScript conditions
    go to the evaluator process (`agents.evaluator_process`) in one round trip: `prepare`
    each record (decode, expand, serialise what each condition needs into a `ConditionJob`),
    have every job judged at once, then `finish` each record. `verdicts` holds, per handler,
    True for an empty condition, None for one evaluated in `finish` (value-param, cheap and
    Herald's own code), the job of a JavaScript condition, or the error that dead-letters it.
    """

    handlers: list[CompiledHandler]
    envelope: Envelope
    #: `envelope.meta()` once something needed it: most records of a filter are decided
    #: without it and match nothing, so it is built only for a job, a value-param condition
    #: or an action to render (`meta_of`).
    meta: dict[str, Any] | None
    message: _Message
    verdicts: list[bool | ConditionJob | ConditionError | TemplateError | None]
    jobs: list[ConditionJob]

    def meta_of(self) -> dict[str, Any]:
        meta = self.meta
        if meta is None:
            meta = self.meta = self.envelope.meta()
        return meta


def prepare(handlers: Sequence[CompiledHandler], envelope: Envelope) -> Prepared:
    """Step one of `evaluate`: everything but running the JavaScript conditions."""
    meta: dict[str, Any] | None = None
    message = _Message(envelope.value, envelope.flat)
    verdicts: list[bool | ConditionJob | ConditionError | TemplateError | None] = []
    jobs: list[ConditionJob] = []
    for handler in handlers:
        condition = handler.condition
        if condition.always_true:
            verdicts.append(True)
        elif not condition.isolated:
            verdicts.append(None)
        else:
            try:
                expanded = message.expanded()
                decided = condition.decide(expanded)
                if decided is not None:
                    verdicts.append(decided)
                else:
                    if meta is None:
                        meta = envelope.meta()
                    job = condition.job(expanded, meta, handler.name, envelope)
                    verdicts.append(job)
                    jobs.append(job)
            except (ConditionError, TemplateError) as exc:
                verdicts.append(exc)
    return Prepared(list(handlers), envelope, meta, message, verdicts, jobs)


def judge_here(jobs: Iterable[tuple[Condition, ConditionJob]]) -> None:
    """Run jobs in this process: for callers without an evaluator process (`herald replay`,
    `herald audit`, tests), which run the operator's own command, not a worker."""
    for condition, job in jobs:
        try:
            job.verdict = condition.evaluate_json(job.message_json, job.meta_json)
        except ConditionError as exc:
            job.verdict = exc


def local_jobs(prepared: Prepared) -> list[tuple[Condition, ConditionJob]]:
    """The prepared jobs with the conditions that can run them here (`judge_here`)."""
    return [
        (handler.condition, verdict)
        for handler, verdict in zip(prepared.handlers, prepared.verdicts, strict=True)
        if isinstance(verdict, ConditionJob)
    ]


def finish(prepared: Prepared) -> Evaluation:
    """Step two of `evaluate`: the conditions' verdicts in, the actions rendered."""
    result = Evaluation()
    envelope, message = prepared.envelope, prepared.message
    for handler, verdict in zip(prepared.handlers, prepared.verdicts, strict=True):
        if isinstance(verdict, ConditionJob):
            verdict = verdict.verdict
            if verdict is None:  # a caller's bug: never dead-letter as if the condition said so
                raise RuntimeError(f"condition of handler {handler.name!r} was never judged")
        if verdict is None:
            try:
                verdict = handler.condition.evaluate(message.expanded(), prepared.meta_of())
            except (ConditionError, TemplateError) as exc:
                verdict = exc
        if isinstance(verdict, ConditionError | TemplateError):
            result.dead_letters.append(
                for_envelope(envelope, "condition", str(verdict), handler=handler.name)
            )
            continue
        if not verdict:
            result.skipped.append(handler.name)
            continue
        for action in handler.actions:
            outcome = render_action(handler, action, envelope, prepared.meta_of(), message=message)
            if isinstance(outcome, DeadLetter):
                result.dead_letters.append(outcome)
            else:
                result.requests.append(outcome)
    return result


def evaluate(handlers: Sequence[CompiledHandler], envelope: Envelope) -> Evaluation:
    """Run every handler against one message, all in this process. Never raises for bad data.

    A worker does not use this for its source records: it runs JavaScript conditions in its
    evaluator process (`prepare`, then the jobs, then `finish`)."""
    prepared = prepare(handlers, envelope)
    judge_here(local_jobs(prepared))
    return finish(prepared)


def render_action(
    handler: CompiledHandler,
    action: CompiledAction,
    envelope: Envelope,
    meta: dict[str, Any],
    *,
    message: _Message | None = None,
) -> ActionRequest | DeadLetter:
    """Render one action against a message: an ActionRequest, or a dead letter saying why."""
    try:
        value = (message or _Message(envelope.value)).for_action(action)
        rendered = action.template.render(value, meta)
        payload = action.renderer.finish(rendered, envelope)
        dedupe_key = _render_text(action.dedupe_key, value, meta)
        ordering = (
            _render_text(action.ordering_key, value, meta)
            or dedupe_key
            or action.renderer.ordering_key(payload, envelope)
            or envelope.key
            or f"{envelope.topic}/{envelope.partition}"
        )
    except TemplateError as exc:
        return for_envelope(
            envelope,
            "template",
            str(exc),
            handler=handler.name,
            action=action.name,
            index=action.index,
        )
    return ActionRequest.create(
        origin=envelope,
        handler=handler.name,
        event=handler.spec.event,
        action=action.name,
        index=action.index,
        payload=payload,
        ordering_key=ordering,
        target=action.target_name,
        dedupe_key=dedupe_key,
        dedupe_window_s=action.dedupe_window,
    )


def _render_text(template: Template | None, value: Any, meta: dict[str, Any]) -> str | None:
    if template is None:
        return None
    rendered = template.render(value, meta)
    return None if rendered is None or rendered == "" else str(rendered)


class HandlerIndex:
    """Active handlers by (integration, topic), for the source agent's lookup per message."""

    def __init__(self, handlers: Sequence[CompiledHandler]) -> None:
        self.handlers = list(handlers)
        self._by_topic: dict[tuple[str, str], list[CompiledHandler]] = {}
        for handler in handlers:
            if handler.spec.active:
                self._by_topic.setdefault((handler.integration, handler.topic), []).append(handler)

    def for_topic(self, integration: str, topic: str) -> list[CompiledHandler]:
        return self._by_topic.get((integration, topic), [])

    def topics(self) -> set[tuple[str, str]]:
        return set(self._by_topic)
