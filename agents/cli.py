"""`herald`: the command line around the worker.

herald worker [faust worker options]   run a worker (same as `faust -A agents.app worker`)
herald check [--config FILE] [--connect]  validate the configuration and show what it will
                                       do; --connect also tries every active integration
herald demo                            embedded broker + ilert receiver + worker + samples
herald replay --integration NAME       re-submit dead letters
herald audit [--config FILE] [--json]  check, with an independent consumer, that nothing
                                       was committed before it was done
herald rules put FILE | delete NAME    change handlers at runtime via the rules topic
herald skip [--integration I] --topic T --partition P --offset O [--to END]
                                       skip an unreadable record batch that stopped a
                                       partition (recorded on the dead-letter topic)
herald import-handlers FILE|URL        Conductor's exported event handlers into the config
herald ilagent daemon [ilagent flags]  ilagent's Kafka mode, run on Herald's workers
herald try (--handler NAME | --topic T [--integration I]) MESSAGE_FILE [--key K]
          [--header NAME=VALUE ...] [--connect]
                                       dry run: the condition's result and the exact
                                       requests, with nothing delivered
"""

from __future__ import annotations

import argparse
import sys

from agents.configuration import load_or_exit
from streams.config.describe import describe
from streams.config.loader import config_path_from_env
from streams.config.models import HeraldConfig


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="configuration file (default: $HERALD_CONFIG or config/herald.yaml)",
    )


def _load(path: str | None) -> tuple[HeraldConfig, str]:
    """The checked configuration and its file; exit 2 with every problem when it is invalid."""
    checked = load_or_exit(path)
    return checked.config, checked.path


def cmd_worker(args: argparse.Namespace, rest: list[str]) -> int:
    """Faust's worker command in this process, on the app built from the configuration
    checked here (agents.app.run_worker): loaded and validated once."""
    from agents.app import run_worker

    run_worker(load_or_exit(args.config), rest)
    return 0


def cmd_check(args: argparse.Namespace, rest: list[str]) -> int:
    config, path = _load(args.config)
    print(f"{path}: OK")
    print(describe(config))
    if getattr(args, "connect", False):
        from agents.connectivity import check_connections

        ok, lines = check_connections(config, timeout=args.timeout)
        print("\nConnections:")
        for line in lines:
            print(f"  {line}")
        _print_live_handlers(config, args.timeout)
        return 0 if ok else 1
    return 0


def _print_live_handlers(config: HeraldConfig, timeout: float) -> None:
    """The handlers the workers run now (the rules topic), and where each came from."""
    import asyncio

    from agents.rulesctl import live_handler_lines, read_rules_topic

    print("\nLive handlers (the rules topic):")
    try:
        table = asyncio.run(read_rules_topic(config, timeout))
    except Exception as exc:  # not reachable, or no worker has created the topic yet
        print(f"  (could not read the rules topic: {exc!r})")
        return
    for line in live_handler_lines(config, table) or ["(none yet)"]:
        print(f"  {line}")


def cmd_demo(args: argparse.Namespace, rest: list[str]) -> int:
    from agents.demo import run_demo

    return run_demo(messages=args.messages, keep=args.keep)


def cmd_replay(args: argparse.Namespace, rest: list[str]) -> int:
    from agents.replay import replay

    checked = load_or_exit(args.config)
    return replay(checked, args.integration, limit=args.limit, dry_run=args.dry_run)


def cmd_audit(args: argparse.Namespace, rest: list[str]) -> int:
    from agents.audit import run

    return run(load_or_exit(args.config), args.json)


def cmd_skip(args: argparse.Namespace, rest: list[str]) -> int:
    import asyncio

    from agents.unreadable import publish_skip

    config, _path = _load(args.config)
    if args.to is not None and args.to <= args.offset:
        print("herald skip: --to must be greater than --offset", file=sys.stderr)
        return 2
    integration = args.integration or config.home.name
    try:
        config.integration(integration)
    except LookupError:
        names = ", ".join(i.name for i in config.integrations)
        print(
            f"herald skip: --integration {integration!r}: no such integration (the "
            f"configuration has {names})",
            file=sys.stderr,
        )
        return 2
    asyncio.run(publish_skip(config, args.topic, args.partition, args.offset, args.to, integration))
    end = f"..{args.to - 1}" if args.to is not None else " (to the end of its batch)"
    print(
        f"asked the workers to skip {args.topic}/{args.partition} offsets {args.offset}{end}; "
        "the worker that holds the partition records the range on the dead-letter topic "
        "and resumes it"
    )
    return 0


def cmd_rules(args: argparse.Namespace, rest: list[str]) -> int:
    from agents.rulesctl import delete_rule, put_rules

    config, path = _load(args.config)
    if args.rules_command == "put":
        return put_rules(config, path, args.file)
    return delete_rule(config, args.name)


def cmd_import_handlers(args: argparse.Namespace, rest: list[str]) -> int:
    from agents.import_handlers import import_handlers

    return import_handlers(
        args.source,
        args.config or config_path_from_env(),
        args.output,
        key_id=args.key_id,
        key_secret=args.key_secret,
    )


def cmd_try(args: argparse.Namespace, rest: list[str]) -> int:
    from agents.dryrun import run

    return run(load_or_exit(args.config), args)


def cmd_ilagent(args: argparse.Namespace, rest: list[str]) -> int:
    from agents.ilagent import main as ilagent_main

    return ilagent_main(args.ilagent_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herald", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a worker; extra options go to faust worker")
    _config_arg(worker)
    worker.set_defaults(func=cmd_worker)

    check = sub.add_parser("check", help="validate the configuration and print the plan")
    _config_arg(check)
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to every active integration (and schema registry); exit 1 on failure",
    )
    check.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per connection attempt (--connect)"
    )
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="run Herald end to end on an embedded broker")
    demo.add_argument("--messages", type=int, default=0, help="extra generated alarms")
    demo.add_argument("--keep", action="store_true", help="keep the demo's data directory")
    demo.set_defaults(func=cmd_demo)

    replay = sub.add_parser("replay", help="re-submit the dead letters of an integration")
    _config_arg(replay)
    replay.add_argument("--integration", required=True)
    replay.add_argument("--limit", type=int, default=None)
    replay.add_argument("--dry-run", action="store_true")
    replay.set_defaults(func=cmd_replay)

    audit = sub.add_parser(
        "audit",
        help="check with an independent consumer that nothing was committed without being done",
    )
    _config_arg(audit)
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.set_defaults(func=cmd_audit)

    skip = sub.add_parser(
        "skip", help="skip an unreadable record batch that stopped a partition (see /ready)"
    )
    _config_arg(skip)
    skip.add_argument(
        "--integration", default=None, help="whose topic it is (default: the home integration)"
    )
    skip.add_argument("--topic", required=True)
    skip.add_argument("--partition", type=int, required=True)
    skip.add_argument(
        "--offset", type=int, required=True, help="the first unreadable offset, as logged"
    )
    skip.add_argument(
        "--to",
        type=int,
        default=None,
        help="the offset to resume at (default: the end of the unreadable batch)",
    )
    skip.set_defaults(func=cmd_skip)

    rules = sub.add_parser("rules", help="change handlers at runtime")
    _config_arg(rules)
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    put = rules_sub.add_parser("put", help="validate and publish handlers from a JSON/YAML file")
    put.add_argument("file")
    delete = rules_sub.add_parser("delete", help="remove a handler by name")
    delete.add_argument("name")
    rules.set_defaults(func=cmd_rules)

    imports = sub.add_parser(
        "import-handlers", help="write Conductor's exported event handlers into the configuration"
    )
    imports.add_argument("source", help="JSON of GET /api/event: a file, - (stdin) or a URL")
    _config_arg(imports)
    imports.add_argument("--output", default=None, help="write here instead of --config")
    imports.add_argument("--key-id", default=None, help="Orkes key id (or $CONDUCTOR_AUTH_KEY)")
    imports.add_argument(
        "--key-secret", default=None, help="Orkes key secret (or $CONDUCTOR_AUTH_SECRET)"
    )
    imports.set_defaults(func=cmd_import_handlers)

    from agents.dryrun import add_arguments as try_arguments

    tryout = sub.add_parser(
        "try", help="dry run: what handlers would send for a message, with nothing delivered"
    )
    tryout.add_argument("-c", "--config", default=None, help="configuration file")
    try_arguments(tryout)
    tryout.set_defaults(func=cmd_try)

    ilagent = sub.add_parser(
        "ilagent", add_help=False, help="ilagent's command line (daemon, Kafka mode) on Herald"
    )
    ilagent.add_argument("ilagent_args", nargs=argparse.REMAINDER)
    ilagent.set_defaults(func=cmd_ilagent)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args, rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
