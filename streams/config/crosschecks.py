"""Checks that span a configuration's sections, and the handlers compiled to find problems.

Names are unique per section, the home integration and every integration a handler's event or
literal `publish.to` names exist, and every handler compiles. A handler is compiled even when
other parts of the file are invalid (against a stand-in built from whatever validated), so a
broken condition is reported in the same run as a typo elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from streams.config.findings import NAMED_SECTIONS, Findings
from streams.config.messages import clean_loc
from streams.config.models import (
    CONDUCTOR_BOOKKEEPING,
    EVENT_PATTERN,
    EventHandler,
    HeraldConfig,
    HeraldSettings,
    Integration,
    Target,
)
from streams.errors import ConfigError, HeraldError
from streams.handlers import CompiledHandler, compile_handler


def cross_check(found: Findings) -> None:
    """Checks that span sections: unique names, and names that must refer to something."""
    for section, kind in NAMED_SECTIONS.items():
        check_unique(found, section, kind)
    names = _integration_names(found)
    if names is None:
        return
    _check_home(found, names)
    check_handler_references(found, names)


def check_handler_references(found: Findings, names: list[str]) -> None:
    """The integrations handlers' events and literal publish destinations name exist."""
    for i, handler in found.items("eventHandlers"):
        _check_event(found, i, handler, names)
        _check_publish(found, i, handler, names)


def check_unique(found: Findings, section: str, kind: str) -> None:
    first: dict[str, int] = {}
    for i, item in found.items(section):
        name = item.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            found.add(
                (section, i, "name"),
                f"duplicate {kind} name {name!r} (also {section}[{first[name]}]); "
                f"give each {kind} a unique name",
            )
        else:
            first[name] = i


def _integration_names(found: Findings) -> list[str] | None:
    """Names of the configured integrations; None when the section is unusable."""
    if not isinstance(found.data.get("integrations"), list):
        return None
    names = [item.get("name") for _, item in found.items("integrations")]
    return [name for name in names if isinstance(name, str)] or None


def _check_home(found: Findings, names: list[str]) -> None:
    settings = found.data.get("herald")
    home = settings.get("homeIntegration") if isinstance(settings, dict) else None
    if isinstance(home, str) and home not in names:
        found.add(
            ("herald", "homeIntegration"),
            f"integration {home!r} is not defined; use one of: {_listing(names)}",
        )


def _check_event(found: Findings, i: int, handler: dict[str, Any], names: list[str]) -> None:
    event = handler.get("event")
    match = EVENT_PATTERN.match(event) if isinstance(event, str) else None
    integration = match.group("integration") if match else None
    if integration is not None and integration not in names:
        found.add(
            ("eventHandlers", i, "event"),
            f"event names integration {integration!r}, which is not defined; define it "
            f"under integrations or fix the event (defined: {_listing(names)})",
        )


def _check_publish(found: Findings, i: int, handler: dict[str, Any], names: list[str]) -> None:
    """A literal `publish.to` must name a defined integration (templated ones are checked
    when rendered)."""
    actions = handler.get("actions")
    for j, action in enumerate(actions if isinstance(actions, list) else []):
        if not isinstance(action, dict) or action.get("action") != "publish":
            continue
        params = action.get("publish")
        to = params.get("to") if isinstance(params, dict) else None
        match = EVENT_PATTERN.match(to) if isinstance(to, str) and "${" not in to else None
        integration = match.group("integration") if match else None
        if integration is not None and integration not in names:
            found.add(
                ("eventHandlers", i, "actions", j, "publish", "to"),
                f"names integration {integration!r}, which is not defined; define it "
                f"under integrations or fix the destination (defined: {_listing(names)})",
            )


def compile_handlers(
    found: Findings,
    config: HeraldConfig | None,
    handlers: list[tuple[int, EventHandler]] | None = None,
) -> list[CompiledHandler]:
    """Compile every structurally valid handler (conditions, templates, action params,
    targets), against the rest of the configuration as far as it is valid; `handlers`
    (default: the configuration's) are compiled against `config`. The handlers that
    compiled, in order: with no problems found, they are the ones a worker runs."""
    compiled: list[CompiledHandler] = []
    context = config or _partial_config(found)
    if handlers is None:
        handlers = list(enumerate(config.eventHandlers)) if config else list(valid_handlers(found))
    unusable = _unusable_targets(found)
    for i, handler in handlers:
        path = found.path(("eventHandlers", i))
        try:
            compiled.append(compile_handler(handler, context, path, file=found.file))
        except ConfigError as exc:
            found.problems.extend(
                (None, line) for line in exc.problems if not _about_target(line, unusable)
            )
        except HeraldError as exc:
            found.add(("eventHandlers", i), f"{exc}; fix the handler")
    return compiled


def valid_handlers(found: Findings) -> Iterator[tuple[int, EventHandler]]:
    """Handlers that validate, or that do once fields compiling does not read are set
    aside, so `active: maybe` does not hide a broken condition until the next run."""
    for i, item in found.items("eventHandlers"):
        try:
            yield i, EventHandler.model_validate(item)
        except ValidationError as exc:
            repaired = _set_aside(item, [clean_loc(error["loc"]) for error in exc.errors()])
            handler = _valid(EventHandler, repaired) if repaired is not None else None
            if handler is not None:
                yield i, handler


def _unusable_targets(found: Findings) -> set[str]:
    """Targets without a valid type: what an action says about them would only repeat
    the problem already reported on the target."""
    kinds = get_args(Target.model_fields["type"].annotation)
    return {
        item["name"]
        for _, item in found.items("targets")
        if isinstance(item.get("name"), str) and item.get("type") not in kinds
    }


def _partial_config(found: Findings) -> HeraldConfig:
    """A stand-in configuration built from whatever validated, so handlers can still be
    compiled (and their problems reported) while other sections have errors. Invalid
    integrations and targets are kept as name-only placeholders so a handler that names
    one is not also reported as naming an unknown one."""
    integrations = [
        _valid(Integration, item) or Integration.model_construct(name=item.get("name"))
        for _, item in found.items("integrations")
    ] or [Integration.model_construct(name="default")]
    targets = [
        _valid(Target, item) or Target.model_construct(name=item.get("name"), type=item.get("type"))
        for _, item in found.items("targets")
    ]
    raw_settings = found.data.get("herald")
    settings = _valid(HeraldSettings, raw_settings) or HeraldSettings()
    if settings.homeIntegration not in {None, *(i.name for i in integrations)}:
        settings = settings.model_copy(update={"homeIntegration": None})
    return HeraldConfig.model_construct(
        herald=settings, integrations=integrations, targets=targets, eventHandlers=[]
    )


def _about_target(line: str, names: set[str]) -> bool:
    return ".target: " in line and any(repr(name) in line for name in names)


# Handler fields compiling does not read, and what replaces an invalid one (None: drop it).
_HANDLER_STAND_INS: dict[str, str | None] = {
    "name": "invalid",
    "event": "kafka:invalid",
    "active": None,
    "description": None,
    "tags": None,
    **{name: None for name in CONDUCTOR_BOOKKEEPING},
}
_ACTION_OPTIONAL = ("dedupe", "orderingKey", "expandInlineJSON")


def _set_aside(item: dict[str, Any], locs: list[tuple[Any, ...]]) -> dict[str, Any] | None:
    """A copy of a raw handler with its invalid, compile-irrelevant fields replaced or dropped;
    None when an error is in something compiling needs (condition, evaluator, action types)."""
    fixed = dict(item)
    actions = [dict(a) if isinstance(a, dict) else a for a in fixed.get("actions") or []]
    for loc in locs:
        head = loc[0] if loc else None
        if head in _HANDLER_STAND_INS or (head not in EventHandler.model_fields and head):
            stand_in = _HANDLER_STAND_INS.get(str(head))
            if stand_in is None:
                fixed.pop(head, None)
            else:
                fixed[head] = stand_in
        elif (
            head == "actions"
            and len(loc) >= 3
            and loc[2] in _ACTION_OPTIONAL
            and isinstance(loc[1], int)
            and isinstance(actions[loc[1]], dict)
        ):
            actions[loc[1]].pop(loc[2], None)
        else:
            return None
    if "actions" in fixed:
        fixed["actions"] = actions
    return fixed


def _valid(model: type[BaseModel], data: Any) -> Any:
    """The validated model, or None; used only where the errors are reported elsewhere."""
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def _listing(names: list[str]) -> str:
    return ", ".join(dict.fromkeys(names))
