"""`herald import-handlers FILE|URL`: Conductor's event handlers into Herald's configuration.

The input is what Conductor's `GET /api/event` answers (a JSON list of EventHandler; a single
handler object is accepted too), from a file (`-` for stdin) or fetched from a URL
(`https://host/api/event`; with `--key-id`/`--key-secret` or `$CONDUCTOR_AUTH_KEY`/
`$CONDUCTOR_AUTH_SECRET`, Orkes' token is fetched first, as the SDKs do). Only handlers whose
event is a Kafka event (`kafka:...`) are imported; the others are listed as skipped.

Each imported handler is written into the configuration's `eventHandlers` as it was exported
(unchanged: Herald accepts Conductor's fields, its bookkeeping fields included), replacing the
handler of the same name or appended after the last one. The rest of the file is left exactly
as it was, comments included: the handlers are edited in place in the YAML text.

The result is checked the way the worker's loader checks it (every field, every condition,
template and target) before anything is written; a configuration with problems is not written
and the problems are printed (exit code 2). `${env:NAME}` references that are not set where the
import runs are not counted as problems (they resolve where the worker runs).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import yaml

from streams.config.loader import load_config
from streams.config.models import Target
from streams.errors import ConfigError, DeliveryError

KEY_ENV = "CONDUCTOR_AUTH_KEY"
SECRET_ENV = "CONDUCTOR_AUTH_SECRET"


class ImportProblem(Exception):
    """Why the import cannot go ahead (one line per problem)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def import_handlers(
    source: str,
    config_path: str,
    output: str | None = None,
    *,
    key_id: str | None = None,
    key_secret: str | None = None,
    timeout: float = 30.0,
) -> int:
    """Run the command; the exit code (0 done, 2 nothing written)."""
    try:
        exported = read_export(source, key_id=key_id, key_secret=key_secret, timeout=timeout)
        handlers, skipped = kafka_handlers(exported)
        text = _read(config_path)
        merged, outcome = merge_handlers(text, handlers)
        check(merged, config_path)
    except (ImportProblem, ConfigError) as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        print("herald: nothing imported", file=sys.stderr)
        return 2
    destination = output or config_path
    _write(destination, merged, like=config_path)
    for name, how in outcome:
        print(f"{how}: {name}")
    for name, event in skipped:
        print(f"skipped (not a Kafka event): {name} ({event})")
    print(f"{len(outcome)} handler(s) written to {destination}")
    return 0


# --------------------------------------------------------------------------- input


def read_export(
    source: str, *, key_id: str | None, key_secret: str | None, timeout: float
) -> list[Any]:
    """The exported handlers: a JSON list (or one handler object) from a file, stdin or URL."""
    if source.startswith(("http://", "https://")):
        key_id = key_id or os.environ.get(KEY_ENV)
        key_secret = key_secret or os.environ.get(SECRET_ENV)
        raw = asyncio.run(_fetch(source, key_id, key_secret, timeout))
    elif source == "-":
        raw = sys.stdin.buffer.read()
    else:
        try:
            raw = Path(source).read_bytes()
        except OSError as exc:
            raise ImportProblem([f"{source}: cannot read it ({exc.strerror})"]) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ImportProblem(
            [f"{source}: not JSON ({exc}); give Conductor's GET /api/event"]
        ) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ImportProblem([f"{source}: expected a list of event handlers"])
    return data


async def _fetch(url: str, key_id: str | None, key_secret: str | None, timeout: float) -> bytes:
    from streams.conductor_auth import token_cache

    parts = urlsplit(url)
    api = parts.path[: parts.path.find("/api/") + 4] if "/api/" in parts.path else "/api"
    base = urlunsplit((parts.scheme, parts.netloc, api, "", ""))
    target = Target(
        name="import",
        type="conductor",
        baseUrl=base,
        keyId=key_id or None,
        keySecret=key_secret or None,
        timeoutSeconds=timeout,
    )
    tokens = token_cache()
    async with aiohttp.ClientSession() as session:
        try:
            auth = await tokens.headers(session, target)
            for attempt in (1, 2):
                async with session.get(
                    url,
                    headers={"Accept": "application/json", **auth},
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as response:
                    body = await response.read()
                    if response.status in (401, 403) and auth and attempt == 1:
                        auth = await tokens.renew(session, target, auth.get("X-Authorization"))
                        continue
                    if response.status != 200:
                        snippet = body[:300].decode(errors="replace")
                        raise ImportProblem([f"{url}: HTTP {response.status}: {snippet}"])
                    return body
        except DeliveryError as exc:
            raise ImportProblem([f"{url}: {exc}"]) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ImportProblem([f"{url}: {exc.__class__.__name__}: {exc}"]) from None
    raise ImportProblem([f"{url}: unauthorized"])  # pragma: no cover - loop always returns


def kafka_handlers(exported: list[Any]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(handlers with a Kafka event, [(name, event)] of the others)."""
    kept: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    problems: list[str] = []
    names: set[str] = set()
    for i, handler in enumerate(exported):
        if not isinstance(handler, dict) or not isinstance(handler.get("name"), str):
            problems.append(f"handler [{i}]: not an event handler object with a name")
            continue
        name, event = handler["name"], handler.get("event")
        if name in names:
            problems.append(f"handler [{i}]: the name {name!r} appears twice in the export")
            continue
        names.add(name)
        if isinstance(event, str) and event.startswith("kafka:"):
            kept.append(handler)
        else:
            skipped.append((name, str(event)))
    if problems:
        raise ImportProblem(problems)
    return kept, skipped


# --------------------------------------------------------------------------- YAML editing


def merge_handlers(text: str, handlers: list[dict[str, Any]]) -> tuple[str, list[tuple[str, str]]]:
    """The configuration text with `handlers` written into `eventHandlers`: a handler of the
    same name is replaced where it stands, the others are appended. Everything else, comments
    included, is kept as it was."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text) if root is not None else None
    except yaml.YAMLError as exc:
        raise ImportProblem([f"the configuration is not valid YAML: {exc}"]) from None
    if root is not None and not isinstance(root, yaml.MappingNode):
        raise ImportProblem(["the configuration's top level is not a mapping"])
    section = _section(root)
    existing = data.get("eventHandlers") if isinstance(data, dict) else None
    existing = existing if isinstance(existing, list) else []
    by_name = {item.get("name"): i for i, item in enumerate(existing) if isinstance(item, dict)}
    outcome = [(h["name"], "replaced" if h["name"] in by_name else "added") for h in handlers]
    if section is None:  # no eventHandlers key at all
        body = text if text.endswith("\n") or not text else text + "\n"
        items = "\n".join(_render(h, 2) for h in handlers)
        return body + "eventHandlers:\n" + items + "\n", outcome
    key, value = section
    if isinstance(value, yaml.SequenceNode) and not value.flow_style:
        return _edit_block(text, value, handlers, by_name), outcome
    # null (every entry commented out) or a flow list: write the whole list as a block
    items = [*existing]
    for handler in handlers:
        if handler["name"] in by_name:
            items[by_name[handler["name"]]] = handler
        else:
            items.append(handler)
    indent = key.start_mark.column + 2
    rendered = "\n" + "\n".join(_render(h, indent) for h in items)
    start, end = value.start_mark.index, value.end_mark.index
    while start > 0 and text[start - 1] == " ":
        start -= 1
    if isinstance(value, yaml.ScalarNode):  # null: put the list right after the key's line
        start = end = _line_end(text, key.end_mark.index)
    return text[:start] + rendered + text[end:], outcome


def _section(root: yaml.Node | None) -> tuple[yaml.Node, yaml.Node] | None:
    if root is None:
        return None
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "eventHandlers":
            return key, value
    return None


def _edit_block(
    text: str,
    sequence: yaml.SequenceNode,
    handlers: list[dict[str, Any]],
    by_name: dict[Any, int],
) -> str:
    items = sequence.value
    dash = _dash_index(text, items[0].start_mark.index) if items else None
    column = dash - text.rfind("\n", 0, dash) - 1 if dash is not None else 2
    edits: list[tuple[int, int, str]] = []
    appended: list[str] = []
    for handler in handlers:
        index = by_name.get(handler["name"])
        if index is None:
            appended.append(_render(handler, column))
            continue
        node = items[index]
        start = _dash_index(text, node.start_mark.index)
        end = _line_end(text, _last_index(text, node))
        edits.append((start - column, end, " " * column + _render(handler, column).lstrip(" ")))
    if appended:
        at = _line_end(text, _last_index(text, items[-1]))
        edits.append((at, at, "\n" + "\n".join(appended)))
    for start, end, new in sorted(edits, key=lambda e: e[0], reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _dash_index(text: str, index: int) -> int:
    """The index of the `-` that opens the sequence item whose content starts at `index`."""
    i = index - 1
    while i >= 0 and text[i] in " \t\r\n":
        i -= 1
    if i < 0 or text[i] != "-":
        raise ImportProblem(["could not find the eventHandlers entries in the configuration"])
    return i


def _last_index(text: str, node: yaml.Node) -> int:
    """Index just after the last character that belongs to `node` (not the whitespace or
    comments that PyYAML's end mark of a block collection runs on to)."""
    if isinstance(node, yaml.ScalarNode) or getattr(node, "flow_style", False):
        end = node.end_mark.index
    elif isinstance(node, yaml.MappingNode):
        end = max(_last_index(text, part) for pair in node.value for part in pair)
    elif isinstance(node, yaml.SequenceNode) and node.value:
        end = max(_last_index(text, item) for item in node.value)
    else:
        end = node.end_mark.index
    while end > 0 and text[end - 1] in " \t\r\n":  # block scalars end after their line break
        end -= 1
    return end


def _line_end(text: str, index: int) -> int:
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline


class _Dumper(yaml.SafeDumper):
    """Lists indented under their key (`actions:` then `  - action: ...`), as in example.yaml."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _render(handler: dict[str, Any], column: int) -> str:
    """One sequence item at `column`: `- name: ...` and the rest indented under it."""
    dumped = yaml.dump(
        handler,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    ).rstrip("\n")
    pad = " " * column
    lines = dumped.split("\n")
    return "\n".join(
        [pad + "- " + lines[0], *(pad + "  " + line if line else line for line in lines[1:])]
    )


# --------------------------------------------------------------------------- checking, writing


class _PermissiveEnviron(Mapping[str, str]):
    """os.environ, with a stand-in for variables not set where the import runs."""

    def __getitem__(self, name: str) -> str:
        return os.environ.get(name, "set-where-the-worker-runs")

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


def check(text: str, config_path: str) -> None:
    """Load the merged text as the worker would; ConfigError listing the problems if any."""
    directory = Path(config_path).resolve().parent
    with tempfile.NamedTemporaryFile(
        "w", suffix=".yaml", dir=directory, delete=False, encoding="utf-8"
    ) as tmp:
        tmp.write(text)
    try:
        load_config(tmp.name, environ=_PermissiveEnviron())
    except ConfigError as exc:
        raise ConfigError([line.replace(tmp.name, config_path) for line in exc.problems]) from None
    finally:
        os.unlink(tmp.name)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ImportProblem(
            [f"{path}: file not found; give the configuration with --config"]
        ) from None
    except OSError as exc:
        raise ImportProblem([f"{path}: cannot read it ({exc.strerror})"]) from None


def _write(path: str, text: str, *, like: str) -> None:
    destination = Path(path)
    with tempfile.NamedTemporaryFile(
        "w", dir=destination.resolve().parent, delete=False, encoding="utf-8", suffix=".tmp"
    ) as tmp:
        tmp.write(text)
    try:
        mode = Path(like).stat().st_mode & 0o777
        os.chmod(tmp.name, mode)
    except OSError:
        pass
    os.replace(tmp.name, destination)
