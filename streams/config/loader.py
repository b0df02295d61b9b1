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

This module reads the file and runs the checks in order; each concern has its own module:
`references` (`${env:}`/`${file:}` and masking), `messages` (pydantic errors in words),
`crosschecks` (what spans sections, and compiling the handlers) and `findings` (problems and
their locations). `checked.load_checked` adds what a worker checks before it starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from streams import secrets
from streams.config import crosschecks
from streams.config.findings import NAMED_SECTIONS, Findings
from streams.config.messages import clean_loc, error_message, kind_of
from streams.config.models import EventHandler, HeraldConfig, Strict
from streams.config.references import REFERENCE as _REFERENCE_TEXT
from streams.config.references import SECRET_FIELDS, References, mask
from streams.errors import ConfigError
from streams.handlers import CompiledHandler
from streams.secrets import MASK

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "MASK",
    "NAMED_SECTIONS",
    "SECRET_FIELDS",
    "config_path_from_env",
    "error_message",
    "load_compiled",
    "load_config",
    "load_handlers",
]

CONFIG_ENV = "HERALD_CONFIG"
DEFAULT_CONFIG_PATH = "config/herald.yaml"

_OPTIONAL_SECTIONS = ("herald", "targets", "eventHandlers")

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
    return load_compiled(path, environ=environ)[0]


def load_compiled(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> tuple[HeraldConfig, list[CompiledHandler]]:
    """`load_config`, with the handlers compiled to check them (in configuration order): the
    ones to run, so a caller need not compile them again."""
    file = os.fspath(path)
    data, repeated_keys = _read_document(file)
    for section in _OPTIONAL_SECTIONS:  # a section whose entries are all commented out
        if section in data and data[section] is None:
            del data[section]
    run = _Run(file, References(file, os.environ if environ is None else environ))
    run.problems.extend((None, line) for line in repeated_keys)
    run.resolve(data)
    config = run.validated(HeraldConfig)
    crosschecks.cross_check(run)
    handlers = crosschecks.compile_handlers(run, config)
    if run.problems:
        raise ConfigError(run.finished_problems())
    assert config is not None  # no problems means validation succeeded
    # Every exit (logs, dead letters, execution records, web answers) masks these by value.
    secrets.register_config(config, run.references.secrets)
    return config, handlers


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
    run = _Run(file, References(file, os.environ if environ is None else environ))
    run.problems.extend((None, line) for line in repeated_keys)
    return _checked_handlers(run, data, config, file)


def check_handler_data(data: Any, config: HeraldConfig, source: str) -> list[EventHandler]:
    """Handlers sent to the admin API (parsed JSON: one handler or a list), checked as
    `load_handlers` checks a file, in the same words (`SOURCE: [0](name=h).field: ...`).

    `${env:}` and `${file:}` references are refused, not resolved: a handler author is less
    trusted than the operator, and a reference would copy a worker's environment or files
    into a request sent elsewhere."""
    found: list[tuple[str, str]] = []
    _find_references(data, "", found)
    if found:
        raise ConfigError(
            [
                f"{source}: {where or 'the handler'}: {text!r} is a reference to the "
                "environment or a file, which the API does not resolve; the operator puts "
                "such values in the configuration (targets, integrations)"
                for where, text in found
            ]
        )
    run = _Run(source, References(source, {}))
    return _checked_handlers(run, data, config, source)


def _find_references(value: Any, where: str, found: list[tuple[str, str]]) -> None:
    if isinstance(value, str):
        match = _REFERENCE_TEXT.search(value)
        if match:
            found.append((where.lstrip("."), match.group(0)))
    elif isinstance(value, dict):
        for key, item in value.items():
            _find_references(item, f"{where}.{key}", found)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _find_references(item, f"{where}[{i}]", found)


def _checked_handlers(run: _Run, data: Any, config: HeraldConfig, file: str) -> list[EventHandler]:
    run.resolve({"eventHandlers": data if isinstance(data, list) else [data]})
    handlers = run.validated(_Handlers)
    crosschecks.check_unique(run, "eventHandlers", "handler")
    crosschecks.check_handler_references(
        run, [integration.name for integration in config.integrations]
    )
    crosschecks.compile_handlers(run, config, list(crosschecks.valid_handlers(run)))
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
                f"{file}: the top level is {kind_of(data)}, not a mapping; write the sections "
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


class _Run(Findings):
    """One load: the findings, plus the references resolved in the data and which problems
    are about a reference (a value that did not resolve) rather than a follow-up of one."""

    def __init__(self, file: str, references: References) -> None:
        super().__init__(file, referenced=references.resolved)
        self.references = references
        self.reference_problems: set[int] = set()  # indexes into `problems`

    def resolve(self, data: dict[str, Any]) -> None:
        """Resolve every reference in `data`, which becomes the data checked from here on."""
        self.data = self.references.resolve(data, ())
        start = len(self.problems)
        self.problems.extend(self.references.problems)
        self.reference_problems.update(range(start, len(self.problems)))

    def validated(self, model: type[M]) -> M | None:
        """The data validated as `model`, or None after adding one line per pydantic error."""
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc = clean_loc(error["loc"])
                related = self.references.related_values(loc)
                secret_field = any(part in SECRET_FIELDS for part in loc)
                message = error_message(error, model, show_input=not (related or secret_field))
                self.add(loc, mask(message, set(related), min_length=1))
            return None

    def finished_problems(self) -> list[str]:
        """Problems without follow-ups of unresolved references, deduplicated, secrets masked."""
        failed = tuple(self.where(loc) for loc in self.references.failed)
        seen: set[str] = set()
        lines: list[str] = []
        for index, (loc, message) in enumerate(self.problems):
            line = message if loc is None else f"{self.where(loc)}: {message}"
            follow_up = index not in self.reference_problems and _is_within(line, failed)
            line = self.references.mask_line(line)
            if follow_up or line in seen:
                continue
            seen.add(line)
            lines.append(line)
        return lines


def _is_within(line: str, locations: tuple[str, ...]) -> bool:
    """Whether a problem line is about one of `locations` or something inside it."""
    return any(
        line.startswith(where) and line[len(where) : len(where) + 1] in (":", ".", "[", "(")
        for where in locations
    )
