"""`herald try`: the dry run of handlers (streams.dryrun) from the command line.

The handlers are the configuration's, compiled by the configuration check the worker makes;
with `--connect` the live handlers of the rules topic are added (compiled as each worker
compiles them, `agents.rules.RuleSet`), so a handler put through the admin API or `herald
rules put` can be tried too, and a configuration handler changed at runtime is tried as the
workers run it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from streams.config.checked import Checked
from streams.dryrun import Message, UnknownSelection, dry_run, select
from streams.handlers import CompiledHandler

#: Exit code of a refused command (configuration, unknown handler or topic, bad arguments).
INVALID = 2


def run(checked: Checked, args: argparse.Namespace) -> int:
    """Print the dry run's report as JSON; 0 when it ran, whatever the conditions said."""
    config = checked.config
    try:
        headers = _headers(args.header or [])
        value = _read(args.message_file)
    except ValueError as exc:
        return _refuse(str(exc))
    if args.integration is not None and args.topic is None:
        return _refuse("--integration goes with --topic (a handler's name says its integration)")
    if args.integration is not None and args.integration not in {
        i.name for i in config.integrations
    }:
        names = ", ".join(i.name for i in config.integrations)
        return _refuse(
            f"--integration {args.integration!r}: no such integration; use one of {names}"
        )
    handlers: Sequence[CompiledHandler] = checked.handlers
    if args.connect:
        try:
            handlers = live_handlers(checked, args.timeout)
        except Exception as exc:  # not reachable, or no worker created the rules topic yet
            print(f"herald try: could not read the rules topic: {exc!r}", file=sys.stderr)
            return 1
    try:
        selected = select(
            handlers,
            home=config.home.name,
            handler=args.handler,
            topic=args.topic,
            integration=args.integration,
        )
    except UnknownSelection as exc:
        hint = "" if args.connect else " (--connect also tries the live handlers of the workers)"
        return _refuse(f"{exc}{hint}")
    message = Message(
        value=value,
        key=args.key,
        headers=headers,
        partition=args.partition,
        offset=args.offset,
        timestamp=args.timestamp,
    )
    report = dry_run(selected, message, home=config.home.name)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def live_handlers(checked: Checked, timeout: float) -> list[CompiledHandler]:
    """The configuration's handlers, then the rules topic's over them by name, as a worker
    runs them: a configuration handler changed at runtime in its changed form, one deleted at
    runtime (its seed marker left, its record gone) not at all."""
    from agents.rules import RuleSet
    from agents.rulesctl import read_rules_topic
    from agents.tables import SEED_PREFIX
    from agents.topics import rules_name

    config = checked.config
    table = asyncio.run(read_rules_topic(config, timeout))
    rules = RuleSet(config, table, rules_name(config), compiled=checked.handlers)
    handlers = {h.name: h for h in checked.handlers}
    for key in table:
        if key.startswith(SEED_PREFIX) and key[len(SEED_PREFIX) :] not in table:
            handlers.pop(key[len(SEED_PREFIX) :].decode(errors="replace"), None)
    for compiled in rules.index().handlers:
        handlers[compiled.name] = compiled
    return list(handlers.values())


def _read(path: str) -> bytes:
    """The message's bytes exactly as the file (or stdin, `-`) holds them."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ValueError(f"cannot read the message file {path!r}: {exc.strerror}") from None


def _headers(pairs: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--header {pair!r}: write it NAME=VALUE")
        headers[name] = value
    return headers


def _refuse(message: str) -> int:
    print(f"herald try: {message}", file=sys.stderr)
    return INVALID


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`herald try`'s arguments (besides --config)."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--handler", help="the handler to try, by name (active or not)")
    which.add_argument("--topic", help="try every active handler of this topic")
    parser.add_argument(
        "--integration", default=None, help="the topic's integration (default: the home one)"
    )
    parser.add_argument(
        "message_file",
        metavar="MESSAGE_FILE",
        help="the record's value, its bytes as they would arrive (JSON or text); - for stdin",
    )
    parser.add_argument("--key", default=None, help="the record's key")
    parser.add_argument(
        "--header",
        action="append",
        metavar="NAME=VALUE",
        help="a record header (repeat for more)",
    )
    parser.add_argument("--partition", type=int, default=0, help="for _kafka (default 0)")
    parser.add_argument("--offset", type=int, default=0, help="for _kafka (default 0)")
    parser.add_argument(
        "--timestamp", type=int, default=None, help="for _kafka, ms since the epoch (default now)"
    )
    parser.add_argument(
        "--connect",
        action="store_true",
        help="also the live handlers of the rules topic (what the workers run now)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to read the rules topic (--connect)"
    )
