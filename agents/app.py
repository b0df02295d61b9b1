"""The Faust app: `faust -A agents.app worker` finds `app` here.

`create_app` builds an app from a validated configuration (tests build their own); the module
global `app` is built from `HERALD_CONFIG` on import. An invalid configuration prints one line
per problem and exits with code 2 before anything is consumed.
"""

from __future__ import annotations

import logging
import os
import sys

import faust

from agents.connectivity import broker_credentials
from agents.heartbeats import register_heartbeats
from agents.rules import RuleSet
from agents.runtime import Runtime
from agents.sinks import SinkRunner
from agents.sources import SourceRunner
from agents.tables import DurableTable, RulesTable, declare_tables
from agents.topics import declare_topics, rules_name
from agents.views import register_views
from streams.config.capabilities import check_supported
from streams.config.loader import config_path_from_env, load_config
from streams.config.models import HeraldConfig
from streams.errors import ConfigError
from streams.handlers import compile_all

log = logging.getLogger("herald")


def source_topics(config: HeraldConfig) -> list[str]:
    """Topics the source agent consumes: those of handlers on the home integration."""
    home = config.home.name
    names = {h.topic for h in config.eventHandlers if (h.integration_name or home) == home}
    return sorted(names | set(config.herald.extraSourceTopics))


def create_app(config: HeraldConfig, config_file: str) -> faust.App:
    """Build the Faust app, its topics, tables, agents and views from a configuration."""
    compile_all(config, file=config_file)  # every handler must compile before we start
    check_supported(config, config_file)
    home = config.home
    settings = config.herald
    app = faust.App(
        home.consumerGroupId,
        broker=[f"kafka://{server.strip()}" for server in home.bootstrapServers.split(",")],
        broker_credentials=broker_credentials(config.home),
        store="rocksdb://",
        datadir=os.environ.get("HERALD_DATA_DIR", settings.dataDir),
        web_port=int(os.environ.get("HERALD_WEB_PORT", settings.webPort)),
        topic_partitions=settings.actionPartitions,
        topic_replication_factor=settings.replicationFactor,
        Table=DurableTable,
        GlobalTable=RulesTable,
        stream_wait_empty=False,
        producer_acks=-1,
        broker_commit_interval=settings.commitIntervalSeconds,
        broker_session_timeout=settings.sessionTimeoutSeconds,
        recovery_consistency_check=settings.recoveryConsistencyCheck,
        broker_heartbeat_interval=min(3.0, settings.sessionTimeoutSeconds / 4),
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
    )
    topics = declare_topics(app, config, source_topics(config))
    tables = declare_tables(app, config)
    rules = RuleSet(config, tables.rules, rules_name(config))
    runtime = Runtime(app, config, config_file, topics, tables, rules)
    app.herald = runtime  # type: ignore[attr-defined]

    if topics.sources is not None:
        source = SourceRunner(runtime)

        @app.agent(topics.sources, name="herald.source")
        async def route(stream: faust.StreamT) -> None:
            await source.run(stream)

    sink = SinkRunner(runtime)

    @app.agent(topics.actions, name="herald.sink")
    async def deliver(stream: faust.StreamT) -> None:
        await sink.run(stream)

    @app.task
    async def seed_rules() -> None:
        # Topics Herald only produces to are not declared by Faust; create them with the
        # configured partitions now rather than let a broker auto-create them on first use.
        for topic in (topics.executions, *topics.dead_letters.values()):
            await topic.maybe_declare()
        await app.tables.recovery.completed.wait()

        async def send(key: bytes, value: bytes | None) -> None:
            fut = await topics.rules.send(key=key, value=value, partition=0, force=True)
            await fut

        await rules.seed(send)
        log.info("handlers loaded: %s", ", ".join(h.name for h in rules.index().handlers))

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
        sink.revoke(revoked)

    @app.on_before_shutdown.connect
    async def on_shutdown(app: faust.App, **kwargs: object) -> None:
        await runtime.close()

    register_views(app, runtime)
    register_heartbeats(app, runtime)
    return app


def _app_from_environment() -> faust.App:
    from agents.connectivity import preflight

    path = config_path_from_env()
    try:
        config = load_config(path)
        app = create_app(config, path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        print(f"herald: configuration {path} is invalid; not starting", file=sys.stderr)
        raise SystemExit(2) from None
    # Wrong credentials or an untrusted certificate: say so now, instead of a client retrying.
    fatal = preflight(config)
    if fatal:
        for line in fatal:
            print(f"herald: {line}", file=sys.stderr)
        print(f"herald: cannot connect with configuration {path}; not starting", file=sys.stderr)
        raise SystemExit(2)
    return app


app = _app_from_environment()
