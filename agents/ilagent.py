"""`herald ilagent daemon ...`: ilagent's Kafka mode, as a drop-in, on Herald's workers.

ilagent (iLert/ilagent) bridges Kafka to ilert: it consumes an event topic and a heartbeat
topic and sends ilert one request per message. This command accepts ilagent's daemon flags
with ilagent's names, meanings and defaults, compiles them into an ordinary Herald
configuration (`--print-config` prints it) and runs the normal Herald worker on it, so the
same messages produce the same ilert requests, with Herald's guarantees instead of ilagent's.

What ilagent does, and the configuration that does it here (ilagent's source: daemon flags in
`main.rs`, mapping in `models/event.rs` `parse_event_json`, `consumers/mod.rs`
`prepare_consumer_event`, `consumers/kafka.rs`):

- An event message is a JSON object with ilert's event fields (`integrationKey` or `apiKey`,
  `eventType`, `summary`, `details`, `alertKey`, `priority`, `images`, `links`, `customDetails`,
  `labels`, `severity`, `routingKey`). It is POSTed to `/api/v1/events/kafka/{integrationKey}`
  (the Kafka alert source endpoint), the key also in the body. → an `ilert_event` action with
  that `path`, each field templated from the message.
- `--event_key KEY` overwrites every event's key. → the ilert target's `integrationKey`, the
  action naming no key of its own.
- `--map_key_summary`, `--map_key_alert_key`, `--map_key_etype PATH` take the summary, alertKey
  and eventType from that message field (a dot path, `data.host`); a value that is missing or
  not text leaves the message's own field. → the field templated from PATH, the message's own
  field as its `defaults` entry.
- `--map_val_etype_alert|accept|resolve VALUE`: that value of the etype field means ALERT,
  ACCEPT, RESOLVE. → `eventTypeMap`.
- eventType defaults to ALERT; an ALERT without a summary gets `New alert from <topic>`
  (ilert_event's own defaults, the same).
- Without `customDetails` in the message, ilagent sends `{"messageKey": <record key or "">,
  "topic": <topic>}`, or with `--forward_message_payload` the whole message. → `defaults`
  of customDetails; records without a key get their own handler (`...-nokey`) because their
  `messageKey` is the empty string, which no template of the key can render.
- `--filter_key K [--filter_val V]`: only messages whose top-level K is present (and, with V,
  is the text V) are sent; the others are dropped. → the handler's condition (a skip).
- A heartbeat message `{"integrationKey"|"apiKey": KEY}` pings that heartbeat
  (`GET /api/heartbeats/{KEY}`). → an `ilert_heartbeat` handler.
- `-b KEY` pings KEY at start and every 30 s. → `herald.heartbeats` (leader worker only).
- `-p PORT` (default 8977; ilagent always serves it in Kafka mode): `POST /api/events`,
  `GET /api/heartbeats/{key}`, `GET /health`, `GET /ready`. → `herald.webPort` and
  `herald.ilertProxy` (events go through the actions topic: nothing is lost on a restart).
- `--kafka_group_id` (default `ilagent`): the consumer group, so Herald continues from the
  offsets ilagent committed. A group that has no offsets yet starts at the end of the topics,
  as ilagent (librdkafka's default) does, unless `--kafka_offset_reset earliest`.
- `-v` (repeatable): 0 or 1 warn, 2 info, 3 or more debug, as ilagent.

What differs, on purpose: a failed delivery is retried with backoff and then dead-lettered
(ilagent exits the process, or drops the event); messages ilagent drops silently (not JSON,
not an object, an event type ilert does not know) are dead-lettered with the reason; events
of different alerts are delivered in parallel (in order per alert), not one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("herald.ilagent")

DEFAULT_PORT = 8977  # ilagent's ILConfig.http_port
DEFAULT_GROUP = "ilagent"  # ilagent's --kafka_group_id default
HEARTBEAT_INTERVAL = 30.0  # ilagent's hbt.rs
KAFKA_EVENT_PATH = "/api/v1/events/kafka/{integrationKey}"  # build_event_api_path("kafka", key)
ILERT_URL = "https://api.ilert.com"
INTEGRATION = "ilagent"  # the integration: events are kafka:ilagent:<topic>

# Environment variables the compiled configuration reads its secrets from; `daemon` sets them
# for the worker from the flags, so neither the printed nor the written file holds a secret.
EVENT_KEY_ENV = "ILAGENT_EVENT_KEY"
HEARTBEAT_KEY_ENV = "ILAGENT_HEARTBEAT_KEY"
SASL_PASSWORD_ENV = "KAFKA_SASL_PASSWORD"

# ilagent daemon flags Herald's ilagent mode does not take (MQTT, policies, ...).
_OTHER_ILAGENT_FLAGS = (
    "-m",
    "--mqtt_host",
    "-q",
    "--mqtt_port",
    "-n",
    "--mqtt_name",
    "--mqtt_username",
    "--mqtt_password",
    "--mqtt_tls",
    "--mqtt_ca",
    "--mqtt_client_cert",
    "--mqtt_client_key",
    "--mqtt_qos",
    "--mqtt_buffer",
    "--mqtt_shared_group",
    "--policy_topic",
    "--policy_routing_keys",
    "--map_key_email",
    "--map_key_shift",
    "--shift_offset",
    "--max_retries",
)


class UsageError(Exception):
    """A command line Herald cannot run (exit code 2, like clap)."""


@dataclass
class DaemonOptions:
    """ilagent's daemon flags (names as ilagent spells them) plus Herald's extras."""

    kafka_brokers: str
    kafka_group_id: str = DEFAULT_GROUP
    event_topic: str | None = None
    heartbeat_topic: str | None = None
    port: int = DEFAULT_PORT
    heartbeat: str | None = None
    event_key: str | None = None
    map_key_summary: str | None = None
    map_key_alert_key: str | None = None
    map_key_etype: str | None = None
    map_val_etype_alert: str | None = None
    map_val_etype_accept: str | None = None
    map_val_etype_resolve: str | None = None
    filter_key: str | None = None
    filter_val: str | None = None
    forward_message_payload: bool = False
    verbosity: int = 0
    # Herald's extras
    ilert_base_url: str = ILERT_URL
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    data_dir: str = "./herald-data"
    topic_prefix: str | None = None
    offset_reset: str = "latest"
    print_config: bool = False
    argv: list[str] = field(default_factory=list)

    @property
    def loglevel(self) -> str:
        """Faust's log level for ilagent's -v count (main.rs: 0/1 warn, 2 info, 3+ debug)."""
        return "warn" if self.verbosity <= 1 else "info" if self.verbosity == 2 else "debug"

    def secrets(self) -> dict[str, str]:
        """The environment the compiled configuration's `${env:...}` references need."""
        env: dict[str, str] = {}
        if self.event_key is not None:
            env[EVENT_KEY_ENV] = self.event_key
        if self.heartbeat is not None:
            env[HEARTBEAT_KEY_ENV] = self.heartbeat
        if self.sasl_password is not None:
            env[SASL_PASSWORD_ENV] = self.sasl_password
        return env


# --------------------------------------------------------------------------- parsing


def _global_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herald ilagent",
        description="ilagent's command line (daemon, Kafka mode) on Herald's workers",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-f", "--file", default=None, help="ilagent's SQLite file: not needed")
    parser.add_argument("command", choices=["daemon", "event", "heartbeat", "cleanup"])
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _daemon_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="herald ilagent daemon",
        description="ilagent's daemon flags (Kafka); Herald's extra flags are marked [herald]",
    )
    p.add_argument(
        "-p", "--port", type=int, default=None, help=f"HTTP port (default {DEFAULT_PORT})"
    )
    p.add_argument("-b", "--heartbeat", default=None, help="heartbeat key pinged every 30 s")
    p.add_argument("--kafka_brokers", default=None, help="bootstrap servers")
    p.add_argument("--kafka_group_id", default=DEFAULT_GROUP, help="consumer group (ilagent)")
    p.add_argument("-e", "--event_topic", default=None)
    p.add_argument("-r", "--heartbeat_topic", default=None)
    p.add_argument("--event_key", default=None, help="overwrite every event's integration key")
    p.add_argument("--map_key_etype", default=None)
    p.add_argument("--map_key_alert_key", default=None)
    p.add_argument("--map_key_summary", default=None)
    p.add_argument("--map_val_etype_alert", default=None)
    p.add_argument("--map_val_etype_accept", default=None)
    p.add_argument("--map_val_etype_resolve", default=None)
    p.add_argument("--filter_key", default=None)
    p.add_argument("--filter_val", default=None)
    p.add_argument("--forward_message_payload", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-f", "--file", default=None, help="ilagent's SQLite file: not needed")
    herald = p.add_argument_group("[herald] extra flags (each also read from the environment)")
    herald.add_argument(
        "--ilert_base_url", default=env("ILERT_BASE_URL", ILERT_URL), help="$ILERT_BASE_URL"
    )
    herald.add_argument(
        "--kafka_security_protocol",
        default=env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        type=str.upper,
        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        help="$KAFKA_SECURITY_PROTOCOL",
    )
    herald.add_argument(
        "--kafka_sasl_mechanism",
        default=env("KAFKA_SASL_MECHANISM"),
        type=str.upper,
        choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        help="$KAFKA_SASL_MECHANISM (default PLAIN)",
    )
    herald.add_argument(
        "--kafka_sasl_username", default=env("KAFKA_SASL_USERNAME"), help="$KAFKA_SASL_USERNAME"
    )
    herald.add_argument(
        "--kafka_sasl_password", default=env(SASL_PASSWORD_ENV), help=f"${SASL_PASSWORD_ENV}"
    )
    herald.add_argument(
        "--kafka_ssl_ca_location",
        default=env("KAFKA_SSL_CA_LOCATION"),
        help="PEM file of the CA(s) to trust; $KAFKA_SSL_CA_LOCATION",
    )
    herald.add_argument(
        "--data_dir", default=env("HERALD_DATA_DIR", "./herald-data"), help="$HERALD_DATA_DIR"
    )
    herald.add_argument("--topic_prefix", default=None, help="Herald's topics (default: group)")
    herald.add_argument(
        "--kafka_offset_reset",
        choices=["latest", "earliest"],
        default="latest",
        help="where a group without offsets starts (ilagent: latest)",
    )
    herald.add_argument(
        "--print-config", "--print_config", action="store_true", dest="print_config"
    )
    return p


def parse(argv: list[str]) -> DaemonOptions:
    """ilagent's command line → DaemonOptions; UsageError for what Herald cannot run."""
    top = _global_parser().parse_args(argv)
    if top.command != "daemon":
        raise UsageError(
            f"herald ilagent runs ilagent's daemon (Kafka mode); for '{top.command}' use ilagent"
        )
    for arg in top.rest:
        name = arg.split("=", 1)[0]
        if name in _OTHER_ILAGENT_FLAGS or name.startswith("--mqtt_"):
            raise UsageError(
                f"{name}: ilagent's MQTT and policy modes are not part of Herald's ilagent mode "
                "(Kafka only); run ilagent for those"
            )
    args = _daemon_parser().parse_args(top.rest)
    if not args.kafka_brokers:
        raise UsageError("herald ilagent daemon needs --kafka_brokers (Herald runs the Kafka mode)")
    if args.kafka_security_protocol.startswith("SASL") and not (
        args.kafka_sasl_username and args.kafka_sasl_password
    ):
        raise UsageError(
            f"--kafka_security_protocol {args.kafka_security_protocol} needs "
            f"--kafka_sasl_username and --kafka_sasl_password (or ${SASL_PASSWORD_ENV})"
        )
    for name in ("map_key_summary", "map_key_alert_key", "map_key_etype"):
        value = getattr(args, name)
        if value is not None and ("}" in value or "${" in value):
            raise UsageError(f"--{name} {value!r}: '}}' and '${{' cannot be used in a key path")
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError(f"-p {args.port}: not a port number")
    return DaemonOptions(
        kafka_brokers=args.kafka_brokers,
        kafka_group_id=args.kafka_group_id,
        event_topic=args.event_topic or None,
        heartbeat_topic=args.heartbeat_topic or None,
        port=args.port if args.port is not None else DEFAULT_PORT,
        heartbeat=args.heartbeat,
        event_key=args.event_key,
        map_key_summary=args.map_key_summary,
        map_key_alert_key=args.map_key_alert_key,
        map_key_etype=args.map_key_etype,
        map_val_etype_alert=args.map_val_etype_alert,
        map_val_etype_accept=args.map_val_etype_accept,
        map_val_etype_resolve=args.map_val_etype_resolve,
        filter_key=args.filter_key,
        filter_val=args.filter_val,
        forward_message_payload=args.forward_message_payload,
        verbosity=top.verbose + args.verbose,
        ilert_base_url=args.ilert_base_url,
        security_protocol=args.kafka_security_protocol,
        sasl_mechanism=args.kafka_sasl_mechanism,
        sasl_username=args.kafka_sasl_username,
        sasl_password=args.kafka_sasl_password,
        ssl_ca_location=args.kafka_ssl_ca_location,
        data_dir=args.data_dir,
        topic_prefix=args.topic_prefix,
        offset_reset=args.kafka_offset_reset,
        print_config=args.print_config,
        argv=list(argv),
    )


# --------------------------------------------------------------------------- compiling


def compile_config(options: DaemonOptions) -> dict[str, Any]:
    """The Herald configuration (as YAML-ready data) that does what ilagent does."""
    targets: list[dict[str, Any]] = [
        {"name": "ilert", "type": "ilert", "baseUrl": options.ilert_base_url}
    ]
    if options.event_key is not None:
        targets.append(
            {
                "name": "ilert-event-key",
                "type": "ilert",
                "baseUrl": options.ilert_base_url,
                "integrationKey": f"${{env:{EVENT_KEY_ENV}}}",
            }
        )
    settings: dict[str, Any] = {
        "topicPrefix": options.topic_prefix or _topic_safe(options.kafka_group_id),
        "webPort": options.port,
        "dataDir": options.data_dir,
        "ilertProxy": {"target": "ilert", "path": "/api/events"},
    }
    if options.heartbeat is not None:
        targets.append(
            {
                "name": "ilert-heartbeat",
                "type": "ilert",
                "baseUrl": options.ilert_base_url,
                "integrationKey": f"${{env:{HEARTBEAT_KEY_ENV}}}",
            }
        )
        settings["heartbeats"] = [
            {"target": "ilert-heartbeat", "intervalSeconds": HEARTBEAT_INTERVAL}
        ]
    handlers: list[dict[str, Any]] = []
    if options.event_topic:
        handlers += event_handlers(options)
    if options.heartbeat_topic and options.heartbeat_topic != options.event_topic:
        handlers.append(heartbeat_handler(options))
    return {
        "herald": settings,
        "integrations": [_integration(options)],
        "targets": targets,
        "eventHandlers": handlers,
    }


def _integration(options: DaemonOptions) -> dict[str, Any]:
    integration: dict[str, Any] = {
        "name": INTEGRATION,
        "bootstrapServers": options.kafka_brokers,
        "consumerGroupId": options.kafka_group_id,
        "description": "compiled from ilagent's flags",
    }
    protocol = options.security_protocol
    if protocol.startswith("SASL"):
        mechanism = options.sasl_mechanism or "PLAIN"
        integration["connectionSecurity"] = f"{protocol} / {mechanism}"
        integration["username"] = options.sasl_username
        integration["password"] = f"${{env:{SASL_PASSWORD_ENV}}}"
    else:
        integration["connectionSecurity"] = protocol
    if options.ssl_ca_location:
        integration["truststoreType"] = "PEM"
        integration["truststorePath"] = options.ssl_ca_location
    return integration


def _topic_safe(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", name).strip("-") or "ilagent"
    return safe[:200]


def _path(key_path: str) -> str:
    """A template reading ilagent's dot path (`data.host`: key `data`, then key `host`)."""
    steps = "".join(
        "['" + part.replace("\\", "\\\\").replace("'", "\\'") + "']" for part in key_path.split(".")
    )
    return "${$" + steps + "}"


_OBJECT_GUARD = """\
  if ($ === null || typeof $ !== 'object' || Array.isArray($))
    throw new TypeError('{what}: the message is not a JSON object (ilagent drops it)');"""


def _filter(options: DaemonOptions) -> str:
    """ilagent's --filter_key/--filter_val on the top-level field (a skip when it fails)."""
    if options.filter_key is None:
        return "true"
    key = json.dumps(options.filter_key)
    test = f"Object.prototype.hasOwnProperty.call($, {key})"
    if options.filter_val is not None:
        test += f" && $[{key}] === {json.dumps(options.filter_val)}"
    return test


def _event_condition(options: DaemonOptions, *, keyed: bool) -> str:
    other = "_kafka.key === null" if keyed else "_kafka.key !== null"
    return "\n".join(
        [
            "(function () {",
            f"  if ({other}) return false;  // records {'without' if keyed else 'with'} a key: "
            "the other handler",
            _OBJECT_GUARD.format(what="ilagent event"),
            f"  return {_filter(options)};  // --filter_key / --filter_val",
            "})()",
        ]
    )


def event_handlers(options: DaemonOptions) -> list[dict[str, Any]]:
    """The two handlers of the event topic: records with a key, and records without one."""
    handlers = []
    for keyed in (True, False):
        name = "ilagent-events" if keyed else "ilagent-events-nokey"
        if options.forward_message_payload:
            details: Any = "${$}"
        else:
            key = "${_kafka.key}" if keyed else ""
            details = {"messageKey": key, "topic": "${_kafka.topic}"}
        handlers.append(
            {
                "name": name,
                "event": f"kafka:{INTEGRATION}:{options.event_topic}",
                "description": "ilagent --event_topic: one ilert event per message"
                + ("" if keyed else " (records without a key: messageKey is empty)"),
                "condition": _event_condition(options, keyed=keyed),
                "evaluatorType": "javascript",
                "active": True,
                "actions": [
                    {"action": "ilert_event", "ilert_event": _event_params(options, details)}
                ],
            }
        )
    return handlers


def _event_params(options: DaemonOptions, details: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"target": "ilert", "path": KAFKA_EVENT_PATH}
    if options.event_key is not None:
        params["target"] = "ilert-event-key"  # the key of every event: the target's
    else:
        params["integrationKey"] = "${integrationKey}"
        params["apiKey"] = "${apiKey}"
    defaults: dict[str, Any] = {}
    mapped = {
        "eventType": options.map_key_etype,
        "summary": options.map_key_summary,
        "alertKey": options.map_key_alert_key,
    }
    for name, key_path in mapped.items():
        if key_path is None:
            params[name] = "${" + name + "}"
        else:
            params[name] = _path(key_path)
            defaults[name] = "${" + name + "}"  # the message's own field when not mapped
    if options.map_key_etype is not None:
        values = {
            options.map_val_etype_alert: "ALERT",
            options.map_val_etype_accept: "ACCEPT",
            options.map_val_etype_resolve: "RESOLVE",
        }
        type_map = {value: kind for value, kind in values.items() if value is not None}
        if type_map:
            params["eventTypeMap"] = type_map
    for name in ("details", "priority", "images", "links", "labels", "severity", "routingKey"):
        params[name] = "${" + name + "}"
    params["customDetails"] = "${customDetails}"
    defaults["customDetails"] = details
    params["defaults"] = defaults
    return params


def heartbeat_handler(options: DaemonOptions) -> dict[str, Any]:
    condition = "\n".join(
        [
            "(function () {",
            _OBJECT_GUARD.format(what="ilagent heartbeat"),
            "  var key = $['integrationKey'] === undefined ? $['apiKey'] : $['integrationKey'];",
            "  if (typeof key === 'string') return true;",
            "  throw new TypeError('a heartbeat message needs integrationKey or apiKey (text)');",
            "})()",
        ]
    )
    return {
        "name": "ilagent-heartbeats",
        "event": f"kafka:{INTEGRATION}:{options.heartbeat_topic}",
        "description": "ilagent --heartbeat_topic: each message pings its heartbeat",
        "condition": condition,
        "evaluatorType": "javascript",
        "active": True,
        "actions": [
            {
                "action": "ilert_heartbeat",
                "ilert_heartbeat": {
                    "target": "ilert",
                    "integrationKey": "${integrationKey}",
                    "apiKey": "${apiKey}",
                },
            }
        ],
    }


class _Dumper(yaml.SafeDumper):
    """Block lists under their key, and multi-line text (conditions) as literal blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render_config(options: DaemonOptions) -> str:
    """The compiled configuration as YAML, with a header saying where it came from."""
    shown = _masked(options.argv)
    env = sorted(options.secrets())
    lines = [
        "# Herald configuration compiled from:",
        f"#   herald ilagent {shown}",
        "# Run it with `herald worker --config FILE` (what `herald ilagent daemon` does).",
    ]
    if env:
        lines.append(
            "# Secrets come from the environment: "
            + ", ".join(env)
            + " (herald ilagent daemon sets them from its flags)."
        )
    if options.offset_reset == "latest":
        lines.append(
            "# A consumer group without offsets starts at the end of its topics, as ilagent "
            "does (herald ilagent daemon commits those offsets before the worker starts)."
        )
    body = yaml.dump(
        compile_config(options), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
    )
    return "\n".join(lines) + "\n" + body


def _masked(argv: list[str]) -> str:
    """The command line as printed in the compiled configuration, secret flags' values masked
    with Herald's one mask."""
    from streams.secrets import MASK

    secret = {"--event_key", "-b", "--heartbeat", "--kafka_sasl_password"}
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if arg in ("--print-config", "--print_config"):
            continue
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        if name in secret:
            out.append(f"{name}={MASK}" if eq else arg)
            hide_next = not eq
        else:
            out.append(arg)
    return shlex.join(out)


# --------------------------------------------------------------------------- running


def start_new_group_at_end(config_data: dict[str, Any], topics: list[str]) -> list[str]:
    """Commit the end offsets of `topics` for partitions the group has no offset for, so a new
    group starts at the end as ilagent's does; the partitions it set, as `topic/partition`."""
    from streams.config.models import Integration

    integration = Integration.model_validate(_resolved(config_data["integrations"][0]))
    return asyncio.run(_commit_ends(integration, topics))


def _resolved(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    if isinstance(out.get("password"), str) and out["password"].startswith("${env:"):
        out["password"] = os.environ.get(SASL_PASSWORD_ENV, "")
    return out


async def _commit_ends(integration: Any, topics: list[str]) -> list[str]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from streams.security import aiokafka_kwargs

    consumer = AIOKafkaConsumer(
        group_id=integration.consumerGroupId,
        enable_auto_commit=False,
        **aiokafka_kwargs(integration),
    )
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - no public call
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(cluster.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        missing = [tp for tp in partitions if await consumer.committed(tp) is None]
        if not missing:
            return []
        ends = await consumer.end_offsets(missing)
        await consumer.commit({tp: OffsetAndMetadata(ends[tp], "") for tp in missing})
        return [f"{tp.topic}/{tp.partition}" for tp in missing]
    finally:
        await consumer.stop()


def run_daemon(options: DaemonOptions) -> int:
    """Check the compiled configuration, set up the group's offsets, run the Herald worker.

    An invalid compiled configuration exits with code 2 (SystemExit), naming every problem."""
    from agents.configuration import load_or_exit

    data_dir = Path(options.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = (data_dir / f"ilagent-{_topic_safe(options.kafka_group_id)}.yaml").resolve()
    path.write_text(render_config(options), encoding="utf-8")
    env = {**os.environ, **options.secrets()}
    checked = load_or_exit(
        str(path),
        environ=env,
        final="herald ilagent: the compiled configuration is invalid; not starting",
    )
    topics = [t for t in (options.event_topic, options.heartbeat_topic) if t]
    if options.offset_reset == "latest" and topics:
        os.environ.update(options.secrets())
        try:
            started = start_new_group_at_end(compile_config(options), topics)
        except Exception as exc:  # the worker's own preflight says what is wrong, in words
            print(f"herald ilagent: could not read the group's offsets: {exc}", file=sys.stderr)
        else:
            if started:
                print(
                    f"herald ilagent: group {options.kafka_group_id!r} is new: starting at the "
                    f"end of {', '.join(started)}, as ilagent does",
                    file=sys.stderr,
                )
    env.update(
        {
            "HERALD_CONFIG": str(path),
            "HERALD_DATA_DIR": str(data_dir.resolve()),
            "HERALD_WEB_PORT": str(options.port),
        }
    )
    os.environ.update(env)
    from agents.app import run_worker

    # The worker runs in this process on the configuration checked above: nothing is loaded
    # a second time.
    run_worker(checked, ["-l", options.loglevel])
    return 0


def main(argv: list[str]) -> int:
    try:
        options = parse(argv)
    except UsageError as exc:
        print(f"herald ilagent: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse already printed the problem
        return int(exc.code or 0)
    if options.print_config:
        sys.stdout.write(render_config(options))
        return 0
    return run_daemon(options)
