"""Load Herald's configuration file: parse, resolve secrets, validate, cross-check, compile.

Herald refuses to start on a configuration it cannot fully check, so loading reports *every*
problem at once, one line each, in the form `FILE: FIELD.PATH: what is wrong; how to fix it`
(`config/herald.yaml: eventHandlers[0](name=orders).condition: ...`). A user fixes the whole
file in one pass instead of restarting once per typo.

References resolved in string values (anywhere in the string, any field):

- `${env:NAME}`: the environment variable NAME. A variable that is not set is a problem naming
  the field and the variable. An empty variable is used as the empty string.
- `${file:PATH}`: the content of the file, stripped of surrounding whitespace (Kubernetes and
  Docker secrets are mounted as files). A relative PATH is relative to the configuration
  file's directory, so the file means the same whatever directory Herald is started from.
- `$${env:NAME}` / `$${file:PATH}` are *not* resolved and are kept exactly as written.
  This is the same escape Conductor's templating uses: in a templated action parameter the
  template engine then renders `$${` as a literal `${`, so the text `${env:NAME}` arrives at
  the receiver. (In a field that is not templated the text stays `$${env:NAME}`.)
- Every other `${...}` (`${alertKey}`, `${$.a.b}`) is a Conductor template and is left alone.

Secrets never appear in a problem line: messages are built from the error kind and the field
name, never from pydantic's echo of the input; values that came from `${env:}`/`${file:}` and
the values of secret fields (password, apiKey, ...) are masked in any line that still holds
them (for example inside a validator's own message).

YAML is read with two deliberate differences from PyYAML's defaults: only `true`/`false` are
booleans (YAML 1.2; alarm states such as `ON`/`OFF`/`YES`/`NO` stay text, and boolean fields
are strict, so `active: yes`, `"true"` or `1` is a problem rather than a guess), and a key
repeated in one mapping is a problem instead of the last one silently winning.

`load_handlers` checks handlers put at runtime (`herald rules put`) the same way, against a
loaded configuration.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from streams import secrets
from streams.actions.registry import ACTIONS
from streams.config.models import (
    CONDUCTOR_BOOKKEEPING,
    EVENT_PATTERN,
    EventHandler,
    HeraldConfig,
    HeraldSettings,
    Integration,
    Strict,
    Target,
)
from streams.errors import ConfigError, HeraldError

CONFIG_ENV = "HERALD_CONFIG"
DEFAULT_CONFIG_PATH = "config/herald.yaml"
#: Fields whose values never appear in an error message or `herald check` (the scrubber's list).
SECRET_FIELDS = secrets.SECRET_FIELD_NAMES
MASK = "***"
NAMED_SECTIONS = {"integrations": "integration", "targets": "target", "eventHandlers": "handler"}

_OPTIONAL_SECTIONS = ("herald", "targets", "eventHandlers")

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class _Handlers(Strict):
    """What a file of runtime handlers is validated as: the eventHandlers section alone."""

    eventHandlers: list[EventHandler]


def config_path_from_env() -> str:
    """The configuration file to load: $HERALD_CONFIG, else `config/herald.yaml`."""
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> HeraldConfig:
    """Load and fully check a configuration file; raise ConfigError listing every problem.

    `environ` replaces `os.environ` for `${env:NAME}` (tests, and tools that check a file for
    another environment).
    """
    file = os.fspath(path)
    data, repeated_keys = _read_document(file)
    for section in _OPTIONAL_SECTIONS:  # a section whose entries are all commented out
        if section in data and data[section] is None:
            del data[section]
    run = _Run(file=file, environ=os.environ if environ is None else environ)
    run.problems.extend((None, line) for line in repeated_keys)
    run.data = run.resolve(data, ())
    config = run.validate()
    run.cross_check()
    run.compile_handlers(config)
    if run.problems:
        raise ConfigError(run.finished_problems())
    assert config is not None  # no problems means validation succeeded
    # Every exit (logs, dead letters, execution records, web answers) masks these by value.
    secrets.register_config(config, run.secrets)
    return config


def load_handlers(
    path: str | os.PathLike[str],
    config: HeraldConfig,
    *,
    environ: Mapping[str, str] | None = None,
) -> list[EventHandler]:
    """Load handlers to put at runtime (one handler or a list, YAML or JSON) and check them
    as `load_config` checks eventHandlers, against `config`'s integrations and targets; raise
    ConfigError listing every problem, in the same form (`FILE: [0](name=h).condition: ...`).

    One validation for both, so a rule the configuration would refuse never reaches the
    workers through the rules topic.
    """
    file = os.fspath(path)
    data, repeated_keys = _read_yaml(file)
    if data is None:
        raise ConfigError([f"{file}: the file is empty; write one handler or a list of them"])
    run = _Run(file=file, environ=os.environ if environ is None else environ)
    run.problems.extend((None, line) for line in repeated_keys)
    run.data = run.resolve({"eventHandlers": data if isinstance(data, list) else [data]}, ())
    handlers = run.validated(_Handlers)
    run._check_unique("eventHandlers", "handler")
    run.check_handler_references([integration.name for integration in config.integrations])
    run.compile_handlers(config, list(run._valid_handlers()))
    if run.problems:
        # The file has no eventHandlers key: its handlers are [0], [1], ...
        raise ConfigError(
            [
                line.replace(f"{file}: eventHandlers[", f"{file}: [", 1)
                for line in run.finished_problems()
            ]
        )
    assert handlers is not None  # no problems means validation succeeded
    return handlers.eventHandlers


# --------------------------------------------------------------------------- reading YAML


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans that records keys repeated within one mapping."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.repeated: list[tuple[int, int, str, int]] = []  # line, column, key, first line

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            mark = key_node.start_mark
            if key_node.value in first_line:
                self.repeated.append(
                    (mark.line + 1, mark.column + 1, key_node.value, first_line[key_node.value])
                )
            else:
                first_line[key_node.value] = mark.line + 1
        return super().construct_mapping(node, deep)


_BOOL_TAG = "tag:yaml.org,2002:bool"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _read_document(file: str) -> tuple[dict[str, Any], list[str]]:
    """The top-level mapping of the file and the problems of repeated keys; ConfigError when
    there is nothing to check further (unreadable, not YAML, empty, not a mapping)."""
    data, repeated = _read_yaml(file)
    if data is None:
        raise ConfigError(
            [
                f"{file}: the file is empty; define at least the integrations section "
                "(config/example.yaml documents every field)"
            ]
        )
    if not isinstance(data, dict):
        raise ConfigError(
            [
                f"{file}: the top level is {_kind(data)}, not a mapping; write the sections "
                "herald, integrations, targets and eventHandlers as top-level keys"
            ]
        )
    return data, repeated


def _read_yaml(file: str) -> tuple[Any, list[str]]:
    """The file's YAML data (YAML 1.2 booleans) and the problems of repeated keys;
    ConfigError when it cannot be read or is not YAML."""
    text = _read_text(file)
    loader = _YamlLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(file, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file}: invalid YAML: {exc}; save it as plain UTF-8 text"]) from None
    finally:
        loader.dispose()
    repeated = [
        f"{file}: line {line}, column {column}: key {key!r} appears again (first at line "
        f"{first}); keep one of them"
        for line, column, key, first in loader.repeated
    ]
    return data, repeated


def _read_text(file: str) -> str:
    try:
        return Path(file).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        hint = "create it (config/example.yaml documents every field)"
        raise ConfigError([f"{file}: file not found; {hint} or set {CONFIG_ENV}"]) from None
    except IsADirectoryError:
        raise ConfigError(
            [f"{file}: is a directory, not a file; give the path of the YAML file"]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [f"{file}: cannot read it ({exc.strerror}); check the path and permissions"]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{file}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"]
        ) from None


def _yaml_problem(file: str, exc: yaml.MarkedYAMLError) -> str:
    """One line for a YAML syntax error: where, what, and a hint. Never the source text."""
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    what = exc.problem or exc.context or "syntax error"
    if exc.context and exc.problem and exc.context_mark:
        what += f" ({exc.context} at line {exc.context_mark.line + 1})"
    if "\\t" in what:
        hint = "indent with spaces, not tabs"
    elif "mapping values are not allowed" in what:
        hint = "check the indentation, and quote values that contain ': '"
    else:
        hint = "check the indentation and the quoting around it"
    return f"{file}: {where}invalid YAML: {what}; {hint}"


# --------------------------------------------------------------------------- one load


_REFERENCE = re.compile(r"\$?\$\{(env|file):([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class _Run:
    """The state of one load: resolved data, where secrets went, and the problems found."""

    file: str
    environ: Mapping[str, str]
    data: dict[str, Any] = field(default_factory=dict)
    # (location, message), rendered at the end so paths can show names resolved later;
    # a location of None means the message is already a whole line (from compile_handler).
    problems: list[tuple[Loc | None, str]] = field(default_factory=list)
    # location → the values substituted there from ${env:}/${file:}
    resolved: dict[Loc, list[str]] = field(default_factory=dict)
    failed: set[Loc] = field(default_factory=set)  # values whose reference did not resolve
    secrets: set[str] = field(default_factory=set)
    reference_problems: set[int] = field(default_factory=set)  # indexes into `problems`

    # ---- locations

    def where(self, loc: Loc) -> str:
        """`FILE: a.b[0](name=x).c` for a location in the data."""
        return f"{self.file}: {self.path(loc)}" if loc else self.file

    def path(self, loc: Loc) -> str:
        """`eventHandlers[0](name=orders).condition`: indexes, plus the item's name if known."""
        text = ""
        for depth, part in enumerate(loc):
            if isinstance(part, int):
                text += f"[{part}]"
                if depth == 1:
                    text += self._name_suffix(loc[0], part)
            else:
                text += f".{part}" if text else str(part)
        return text

    def _name_suffix(self, section: Any, index: int) -> str:
        items = self.data.get(section) if section in NAMED_SECTIONS else None
        if not isinstance(items, list) or not 0 <= index < len(items):
            return ""
        item = items[index]
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name or (section, index, "name") in self.resolved:
            return ""
        return f"(name={name})"

    def add(self, loc: Loc, message: str) -> None:
        self.problems.append((loc, message))

    # ---- ${env:} and ${file:}

    def resolve(self, value: Any, loc: Loc) -> Any:
        """The data with every `${env:}`/`${file:}` reference replaced, recursively; the values
        of secret fields are noted so no problem line can show them."""
        if isinstance(value, dict):
            resolved = {key: self.resolve(item, (*loc, key)) for key, item in value.items()}
            self.secrets.update(
                item
                for key, item in resolved.items()
                if key in SECRET_FIELDS and _text(item) and (*loc, key) not in self.failed
            )
            return resolved
        if isinstance(value, list):
            return [self.resolve(item, (*loc, i)) for i, item in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return _REFERENCE.sub(lambda match: self._replace(match, loc), value)
        return value

    def _replace(self, match: re.Match[str], loc: Loc) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)
        kind, ref = match.group(1), match.group(2)
        value = self._lookup_env(ref, loc) if kind == "env" else self._read_file(ref, loc)
        if value is None:
            self.failed.add(loc)
            return match.group(0)
        self.resolved.setdefault(loc, []).append(value)
        if value:
            self.secrets.add(value)
        return value

    def _lookup_env(self, name: str, loc: Loc) -> str | None:
        if not _ENV_NAME.match(name):
            self._add_reference_problem(
                loc,
                f"${{env:{name}}} is not a valid reference; write ${{env:NAME}} with letters, "
                "digits and _ only",
            )
            return None
        if name not in self.environ:
            self._add_reference_problem(
                loc,
                f"environment variable {name} is not set; set it before starting Herald or "
                f"replace ${{env:{name}}} with a value",
            )
            return None
        return self.environ[name]

    def _read_file(self, name: str, loc: Loc) -> str | None:
        if not name.strip():
            self._add_reference_problem(loc, "${file:} names no file; write ${file:PATH}")
            return None
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = Path(self.file).parent / path
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            self._add_reference_problem(
                loc,
                f"file {str(path)!r} named by ${{file:{name}}} does not exist; create it or "
                "fix the path",
            )
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            self._add_reference_problem(
                loc,
                f"cannot read file {str(path)!r} named by ${{file:{name}}} ({reason}); fix "
                "the path or the file",
            )
        return None

    def _add_reference_problem(self, loc: Loc, message: str) -> None:
        self.reference_problems.add(len(self.problems))
        self.add(loc, message)

    # ---- validation

    def validate(self) -> HeraldConfig | None:
        """The validated configuration, or None after adding one line per pydantic error."""
        return self.validated(HeraldConfig)

    def validated(self, model: type[M]) -> M | None:
        """The data validated as `model`, or None after adding one line per pydantic error."""
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc = _clean_loc(error["loc"])
                related = self._related_values(loc)
                secret_field = any(part in SECRET_FIELDS for part in loc)
                message = error_message(error, model, show_input=not (related or secret_field))
                self.add(loc, _mask(message, set(related), min_length=1))
            return None

    def _related_values(self, loc: Loc) -> list[str]:
        """Values from ${env:}/${file:} an error at `loc` may echo: those at, inside or
        containing `loc` (a model-level validator sees every field of its model)."""
        return [
            value
            for where, values in self.resolved.items()
            if where[: len(loc)] == loc or loc[: len(where)] == where
            for value in values
            if value
        ]

    # ---- cross-checks

    def cross_check(self) -> None:
        """Checks that span sections: unique names, and names that must refer to something."""
        for section, kind in NAMED_SECTIONS.items():
            self._check_unique(section, kind)
        names = self._integration_names()
        if names is None:
            return
        self._check_home(names)
        self.check_handler_references(names)

    def check_handler_references(self, names: list[str]) -> None:
        """The integrations handlers' events and literal publish destinations name exist."""
        for i, handler in self._items("eventHandlers"):
            self._check_event(i, handler, names)
            self._check_publish(i, handler, names)

    def _items(self, section: str) -> Iterator[tuple[int, dict[str, Any]]]:
        items = self.data.get(section)
        if isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    yield i, item

    def _check_unique(self, section: str, kind: str) -> None:
        first: dict[str, int] = {}
        for i, item in self._items(section):
            name = item.get("name")
            if not isinstance(name, str):
                continue
            if name in first:
                self.add(
                    (section, i, "name"),
                    f"duplicate {kind} name {name!r} (also {section}[{first[name]}]); "
                    f"give each {kind} a unique name",
                )
            else:
                first[name] = i

    def _integration_names(self) -> list[str] | None:
        """Names of the configured integrations; None when the section is unusable."""
        if not isinstance(self.data.get("integrations"), list):
            return None
        names = [item.get("name") for _, item in self._items("integrations")]
        return [name for name in names if isinstance(name, str)] or None

    def _check_home(self, names: list[str]) -> None:
        settings = self.data.get("herald")
        home = settings.get("homeIntegration") if isinstance(settings, dict) else None
        if isinstance(home, str) and home not in names:
            self.add(
                ("herald", "homeIntegration"),
                f"integration {home!r} is not defined; use one of: {_listing(names)}",
            )

    def _check_event(self, i: int, handler: dict[str, Any], names: list[str]) -> None:
        event = handler.get("event")
        match = EVENT_PATTERN.match(event) if isinstance(event, str) else None
        integration = match.group("integration") if match else None
        if integration is not None and integration not in names:
            self.add(
                ("eventHandlers", i, "event"),
                f"event names integration {integration!r}, which is not defined; define it "
                f"under integrations or fix the event (defined: {_listing(names)})",
            )

    def _check_publish(self, i: int, handler: dict[str, Any], names: list[str]) -> None:
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
                self.add(
                    ("eventHandlers", i, "actions", j, "publish", "to"),
                    f"names integration {integration!r}, which is not defined; define it "
                    f"under integrations or fix the destination (defined: {_listing(names)})",
                )

    # ---- handler compilation

    def compile_handlers(
        self,
        config: HeraldConfig | None,
        handlers: list[tuple[int, EventHandler]] | None = None,
    ) -> None:
        """Compile every structurally valid handler (conditions, templates, action params,
        targets), against the rest of the configuration as far as it is valid; `handlers`
        (default: the configuration's) are compiled against `config`."""
        # Imported here: handlers pulls in the condition sandbox and the template engine, and
        # may itself use this module's error formatting; importing on use avoids the cycle.
        from streams.handlers import compile_handler

        context = config or self._partial_config()
        if handlers is None:
            handlers = (
                list(enumerate(config.eventHandlers)) if config else list(self._valid_handlers())
            )
        unusable = self._unusable_targets()
        for i, handler in handlers:
            path = self.path(("eventHandlers", i))
            try:
                compile_handler(handler, context, path, file=self.file)
            except ConfigError as exc:
                self.problems.extend(
                    (None, line) for line in exc.problems if not _about_target(line, unusable)
                )
            except HeraldError as exc:
                self.add(("eventHandlers", i), f"{exc}; fix the handler")

    def _valid_handlers(self) -> Iterator[tuple[int, EventHandler]]:
        """Handlers that validate, or that do once fields compiling does not read are set
        aside, so `active: maybe` does not hide a broken condition until the next run."""
        for i, item in self._items("eventHandlers"):
            try:
                yield i, EventHandler.model_validate(item)
            except ValidationError as exc:
                repaired = _set_aside(item, [_clean_loc(error["loc"]) for error in exc.errors()])
                handler = _valid(EventHandler, repaired) if repaired is not None else None
                if handler is not None:
                    yield i, handler

    def _unusable_targets(self) -> set[str]:
        """Targets without a valid type: what an action says about them would only repeat
        the problem already reported on the target."""
        kinds = get_args(Target.model_fields["type"].annotation)
        return {
            item["name"]
            for _, item in self._items("targets")
            if isinstance(item.get("name"), str) and item.get("type") not in kinds
        }

    def _partial_config(self) -> HeraldConfig:
        """A stand-in configuration built from whatever validated, so handlers can still be
        compiled (and their problems reported) while other sections have errors. Invalid
        integrations and targets are kept as name-only placeholders so a handler that names
        one is not also reported as naming an unknown one."""
        integrations = [
            _valid(Integration, item) or Integration.model_construct(name=item.get("name"))
            for _, item in self._items("integrations")
        ] or [Integration.model_construct(name="default")]
        targets = [
            _valid(Target, item)
            or Target.model_construct(name=item.get("name"), type=item.get("type"))
            for _, item in self._items("targets")
        ]
        raw_settings = self.data.get("herald")
        settings = _valid(HeraldSettings, raw_settings) or HeraldSettings()
        if settings.homeIntegration not in {None, *(i.name for i in integrations)}:
            settings = settings.model_copy(update={"homeIntegration": None})
        return HeraldConfig.model_construct(
            herald=settings, integrations=integrations, targets=targets, eventHandlers=[]
        )

    # ---- result

    def finished_problems(self) -> list[str]:
        """Problems without follow-ups of unresolved references, deduplicated, secrets masked."""
        failed = tuple(self.where(loc) for loc in self.failed)
        seen: set[str] = set()
        lines: list[str] = []
        for index, (loc, message) in enumerate(self.problems):
            line = message if loc is None else f"{self.where(loc)}: {message}"
            follow_up = index not in self.reference_problems and _is_within(line, failed)
            line = self._mask_line(line)
            if follow_up or line in seen:
                continue
            seen.add(line)
            lines.append(line)
        return lines

    def _mask_line(self, line: str) -> str:
        """Mask every resolved value in a line (the file name aside, which holds none); values
        that cannot be secrets (numbers, booleans) and very short ones are left, since masking
        them everywhere would garble lines ("expected *** or false")."""
        head = f"{self.file}: "
        prefix, rest = (head, line[len(head) :]) if line.startswith(head) else ("", line)
        secrets = {value for value in self.secrets if not _PLAIN_VALUE.match(value)}
        return prefix + _mask(rest, secrets, min_length=4)


_PLAIN_VALUE = re.compile(r"^(?:true|false|yes|no|on|off|[-+]?\d+(?:\.\d+)?)$", re.IGNORECASE)


def _about_target(line: str, names: set[str]) -> bool:
    return ".target: " in line and any(repr(name) in line for name in names)


def _is_within(line: str, locations: tuple[str, ...]) -> bool:
    """Whether a problem line is about one of `locations` or something inside it."""
    return any(
        line.startswith(where) and line[len(where) : len(where) + 1] in (":", ".", "[", "(")
        for where in locations
    )


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


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _listing(names: list[str]) -> str:
    return ", ".join(dict.fromkeys(names))


def _mask(text: str, secrets: set[str], *, min_length: int) -> str:
    """Replace each secret value (longest first) with ***. Very short values are only masked
    where the error concerns them, since masking "1" everywhere would garble every line."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= min_length:
            text = text.replace(secret, MASK)
    return text


# --------------------------------------------------------------------------- pydantic errors

_TYPE_ERRORS: dict[str, tuple[str, str]] = {
    "string_type": ("text", "write it in quotes"),
    "int_type": ("a whole number", "write a number such as 8"),
    "int_parsing": ("a whole number", "write a number such as 8"),
    "int_from_float": ("a whole number", "drop the fraction"),
    "float_type": ("a number", "write a number such as 2.5"),
    "float_parsing": ("a number", "write a number such as 2.5"),
    "bool_type": ("true or false", "write true or false"),
    "bool_parsing": ("true or false", "write true or false"),
    "dict_type": ("a mapping", "write 'key: value' lines under it"),
    "model_type": ("a mapping", "write 'key: value' lines under it"),
    "model_attributes_type": ("a mapping", "write 'key: value' lines under it"),
    "list_type": ("a list", "write one '- item' line per entry"),
}
_BOUNDS = {
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("greater than", "gt"),
    "less_than_equal": ("at most", "le"),
    "less_than": ("less than", "lt"),
}
_FIELD_HINTS = {
    "bootstrapServers": "set it to host:port[,host:port]",
    "name": "set it to a unique name",
    "event": "set it to kafka:<integration>:<topic>",
    "to": "set it to kafka:<integration>:<topic>",
    "actions": "add at least one action",
    "integrations": "define at least one Kafka integration (name, bootstrapServers)",
    "url": "set it to the URL",
    "key": "set it to a template such as ${alertKey}",
}


def error_message(error: ErrorDetails, model: type[BaseModel], *, show_input: bool = True) -> str:
    """`what is wrong; how to fix it` for one pydantic error, without its location.

    Built from the error kind, the field's declared type and pydantic's short message, never
    from pydantic's full text (which echoes the input value). The input itself is shown only
    for an unknown choice, and only when `show_input` (not a secret, not from the environment).
    `model` is the model validated, so allowed fields and choices can be listed.
    """
    kind = error["type"]
    loc = _clean_loc(error["loc"])
    value = error.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        fix = f"remove it or use one of: {', '.join(allowed)}" if allowed else "remove it"
        return f"unknown field {loc[-1]!r}; {fix}"
    if kind == "missing":
        return f"field required; {_set_hint(model, loc)}"
    if kind in ("literal_error", "enum"):
        choices = _choices(_field_type(model, loc)) or _quoted(
            str(error.get("ctx", {}).get("expected", ""))
        )
        shown = f" {value!r}" if show_input and isinstance(value, str | int) else ""
        return f"unknown value{shown}; use one of: {', '.join(choices)}"
    if kind in _TYPE_ERRORS:
        if value is None:
            return f"is empty; {_set_hint(model, loc)}"
        expected, fix = _TYPE_ERRORS[kind]
        return f"expected {expected}, got {_kind(value)}; {fix}"
    if kind in ("too_short", "string_too_short"):
        if kind == "string_too_short" or error.get("ctx", {}).get("actual_length") == 0:
            return f"is empty; {_set_hint(model, loc)}"
        return f"{error['msg']}; add more"
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        return f"must be {words} {error.get('ctx', {}).get(key)}; change the value"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind in ("value_error", "assertion_error"):
        return message  # Herald's own validators already say how to fix it
    return f"{message}; fix the value"


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    """The data path of an error, without pydantic's internal steps (`function-after[...]`)."""
    return tuple(
        part for part in loc if isinstance(part, int) or ("[" not in part and "(" not in part)
    )


def _set_hint(model: type[BaseModel], loc: Loc) -> str:
    name = loc[-1] if loc else None
    if isinstance(name, str) and name in _FIELD_HINTS:
        return _FIELD_HINTS[name]
    if name == "action":
        return f"set it to one of: {', '.join(sorted(ACTIONS))}"
    choices = _choices(_field_type(model, loc))
    return f"set it to one of: {', '.join(choices)}" if choices else "set it"


def _field_type(model: type[BaseModel], loc: Loc) -> Any:
    """The declared type at `loc`, following fields, list items and dict values; None if the
    path leaves the declared schema (e.g. inside an action's free-form parameters)."""
    current: Any = model
    for part in loc:
        current = _unwrap_optional(current)
        origin, args = get_origin(current), get_args(current)
        if isinstance(part, int) and origin in (list, tuple, set) and args:
            current = args[0]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            if part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
        elif origin is dict and len(args) == 2:
            current = args[1]
        else:
            return None
    return _unwrap_optional(current)


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _allowed_fields(model: type[BaseModel], loc: Loc) -> list[str]:
    owner = _field_type(model, loc)
    if not (isinstance(owner, type) and issubclass(owner, BaseModel)):
        return []
    return [name for name in owner.model_fields if name not in CONDUCTOR_BOOKKEEPING]


def _choices(annotation: Any) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(arg) for arg in get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    return []


def _quoted(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def _kind(value: Any) -> str:
    """What a value is, in YAML words, without showing it."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
