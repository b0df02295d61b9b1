"""The Faust app: `faust -A agents.app worker` finds `app` here.

Importing this module does no work. `app` is built on first access (a module `__getattr__`):
from the configuration `HERALD_CONFIG` names, checked once (`agents.configuration`), then the
brokers are asked whether the credentials work (`agents.connectivity.preflight`). An invalid
configuration prints one line per problem and exits with code 2 before anything is consumed.
`herald worker` builds the app from the configuration it checked itself (`run_worker`), so
nothing is loaded twice.

`create_app` wires one worker: the offset ledger (on the app, agents.transport), the topics and
tables, the source agent, the sink agent and their batch channels, the timers and web views.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence

import faust
from faust.types import TP

from agents.admin.api import register_admin_api
from agents.batches import BatchChannel
from agents.configuration import load_or_exit
from agents.connectivity import broker_credentials
from agents.heap import freeze_startup_heap
from agents.heartbeats import register_heartbeats
from agents.history import register_history
from agents.idempotence import IdempotentHeraldApp
from agents.integration_source import IntegrationSource
from agents.limits import batch_limit, record_limit, topic_limits
from agents.metrics import worker_registry
from agents.monitor import HeraldMonitor
from agents.rules import RuleSet
from agents.runtime import Runtime
from agents.sink import SinkRunner
from agents.sink.expiry import register_expiry
from agents.sources import SourceRunner
from agents.subscriptions import SourceTopics, home_topics, integration_topics
from agents.tables import DurableTable, RulesTable, declare_tables
from agents.topics import declare_topics, rules_name
from agents.unreadable import register_skipper
from agents.views import register_views
from streams.config.capabilities import group_conflicts
from streams.config.checked import Checked
from streams.config.models import Integration
from streams.handlers import HandlerIndex

log = logging.getLogger("herald")

#: How often the consumer refreshes the cluster's metadata (aiokafka's metadata_max_age_ms).
METADATA_REFRESH_MS = 10_000


def remote_sources(runtime: Runtime, checked: Checked) -> dict[str, IntegrationSource]:
    """A source for every active integration but the home one, each consuming its own
    cluster while it has active handlers (agents.integration_source)."""
    config, rules = runtime.config, runtime.rules
    home = config.home.name

    def wanted(name: str) -> Callable[[], set[str]]:
        return lambda: integration_topics(rules.index(), name)

    def consumed() -> set[str]:
        return {name for name, _ in rules.index().topics()}

    def conflict(name: str) -> Callable[[], str | None]:
        return lambda: group_conflicts(config, consumed()).get(name)

    return {
        integration.name: IntegrationSource(
            runtime,
            integration,
            wanted(integration.name),
            conflict(integration.name),
            metadata_max_age_ms=METADATA_REFRESH_MS,
        )
        for integration in config.integrations
        if integration.active and integration.name != home
    }


def batch_channel(app: faust.App, max_records: int) -> BatchChannel:
    """A hand-over of fetched batches to one agent; topics join it with
    `app.topics.add_batch_channel` (which also has the ledger tell it of revocations)."""
    return BatchChannel(
        set(),
        max_records,
        pause=lambda tp: app.consumer.on_buffer_full(tp),
        resume=lambda tp: app.consumer.on_buffer_drop(tp),
    )


def create_app(checked: Checked) -> faust.App:
    """Build the Faust app, its topics, tables, agents and views from a checked
    configuration. Connects nowhere: Faust does that when the worker starts."""
    config, config_file = checked.config, checked.path
    home = config.home
    settings = config.herald
    # Idempotent producers where the broker has them (agents.idempotence): a retried produce
    # can neither duplicate nor reorder an action request.
    app = IdempotentHeraldApp(
        home.consumerGroupId,
        broker=[f"kafka://{server.strip()}" for server in home.bootstrapServers.split(",")],
        broker_credentials=broker_credentials(config.home),
        store="rocksdb://",
        datadir=os.environ.get("HERALD_DATA_DIR", settings.dataDir),
        web_port=int(os.environ.get("HERALD_WEB_PORT", settings.webPort)),
        topic_partitions=settings.actionPartitions,
        topic_replication_factor=settings.replicationFactor,
        Table=DurableTable,
        Monitor=HeraldMonitor,
        GlobalTable=RulesTable,
        stream_wait_empty=False,
        producer_acks=-1,
        producer_linger=settings.producerLingerMs / 1000.0,
        producer_compression_type=home.producer_compression,
        producer_max_request_size=home.maxRequestSize,
        producer_max_batch_size=batch_limit(settings.producerBatchBytes, home.maxRequestSize),
        broker_commit_interval=settings.commitIntervalSeconds,
        broker_session_timeout=settings.sessionTimeoutSeconds,
        recovery_consistency_check=settings.recoveryConsistencyCheck,
        broker_heartbeat_interval=min(3.0, settings.sessionTimeoutSeconds / 4),
        consumer_auto_offset_reset="earliest",
        # A topic subscribed before it exists (a handler put at runtime, agents.subscriptions)
        # is seen at the consumer's next metadata refresh: 10 s instead of aiokafka's 5 min.
        consumer_metadata_max_age_ms=METADATA_REFRESH_MS,
        autodiscover=False,
    )
    app.fetch_max_wait_ms = settings.fetchMaxWaitMs
    topics = declare_topics(app, config)
    tables = declare_tables(app, config)
    rules = RuleSet(config, tables.rules, rules_name(config), compiled=checked.handlers)
    runtime = Runtime(app, config, config_file, topics, tables, rules)
    app.herald = runtime  # type: ignore[attr-defined]

    buffered = settings.maxInFlight * 16
    source_channel = batch_channel(app, buffered)
    source = SourceRunner(runtime, source_channel)
    sources = SourceTopics(
        app,
        source_channel,
        lambda: home_topics(rules.index(), config),
        home_topics(HandlerIndex(checked.handlers), config),
    )

    @app.task
    async def route() -> None:
        await source.run()

    @app.timer(interval=1.0)
    async def follow_handlers() -> None:
        if not rules.ready.is_set():
            return
        try:
            sources.sync()
        except Exception:  # never let the timer end the worker; the next second tries again
            log.exception("could not update the source topics from the handlers")

    @app.task
    async def read_topic_limits() -> None:
        await fit_to_topic_limits(
            app,
            source,
            home,
            [topics.actions, *topics.dead_letters.values()],
            [topics.executions, tables.dedupe.changelog_topic, tables.rules.changelog_topic],
            settings.producerBatchBytes,
        )

    sink = SinkRunner(runtime, batch_channel(app, buffered))
    app.topics.add_batch_channel(topics.actions, sink.channel)  # type: ignore[attr-defined]

    @app.task
    async def deliver() -> None:
        await sink.run()

    @app.task
    async def seed_rules() -> None:
        # Topics Herald only produces to are not declared by Faust; create them with the
        # configured partitions now rather than let a broker auto-create them on first use.
        for topic in (topics.executions, *topics.dead_letters.values()):
            await topic.maybe_declare()
        if topics.audit is not None:
            await topics.audit.maybe_declare()
        await app.tables.recovery.completed.wait()

        async def send(key: bytes, value: bytes | None) -> None:
            fut = await topics.rules.send(key=key, value=value, partition=0, force=True)
            await fut

        await rules.seed(send)
        log.info("handlers loaded: %s", ", ".join(h.name for h in rules.index().handlers))
        # The worker is up, its tables recovered: what exists now lives as long as it does.
        freeze_startup_heap()

    app.ledger.on_revoke(sink.revoke)  # after the channels: the one revoke fan-out

    # Every other integration: its own consumer, ledger and source runner, producing to the
    # actions topic here (agents.integration_source).
    runtime.sources = remote_sources(runtime, checked)
    for remote in runtime.sources.values():
        app.task(remote.run)
        app.task(remote.runner.run)
    runtime.metrics = worker_registry(app, runtime, source, sink)  # read when /metrics is

    # The lanes end first in a stop, while the consumer, the tables and the producer still
    # run (Faust's own on_stop stops the consumer and the tables, and its on_before_shutdown
    # comes after that): otherwise lanes retrying a failing target go on producing into a
    # stopped producer, and the execution records of their attempts are lost.
    faust_on_stop = app.on_stop

    async def on_stop() -> None:
        await sink.stop()
        for remote in runtime.sources.values():  # commit what is done while producing works
            await remote.stop()
        await faust_on_stop()

    app.on_stop = on_stop  # type: ignore[method-assign]

    stall_after = settings.stallSeconds

    @app.timer(interval=min(5.0, stall_after / 2))
    async def watch_stalls() -> None:
        consumer = app.consumer
        runtime.stalls = consumer.ledger.stalls(_highwater(consumer), stall_after)

    @app.on_before_shutdown.connect
    async def on_shutdown(app: faust.App, **kwargs: object) -> None:
        await runtime.close()

    register_history(app, runtime)  # before the admin API, which serves it
    register_skipper(app, runtime)
    register_expiry(app, tables.dedupe, settings.dedupeRetentionSeconds)
    register_views(app, runtime)
    if settings.admin is not None:
        register_admin_api(app, runtime, settings.admin)
    register_heartbeats(app, runtime)
    return app


async def fit_to_topic_limits(
    app: faust.App,
    source: SourceRunner,
    home: Integration,
    topics: list[faust.TopicT],
    others: list[faust.TopicT],
    batch_bytes: int,
) -> None:
    """Lower the source agent's record limit to the max.message.bytes of the topics it writes,
    and the producer's batch size to that of every topic Herald writes, where the broker says
    it (agents.limits)."""
    names = [topic.get_topic_name() for topic in topics]
    other_names = [topic.get_topic_name() for topic in others]
    limits = await topic_limits(home, names + other_names)
    if not limits:
        return
    source.max_record_bytes = record_limit(
        home.maxRequestSize, [v for k, v in limits.items() if k in names]
    )
    log.info(
        "records to %s fitted under %d bytes (maxRequestSize %d, max.message.bytes %s)",
        ", ".join(names),
        source.max_record_bytes,
        home.maxRequestSize,
        limits,
    )
    batch = batch_limit(batch_bytes, home.maxRequestSize, limits.values())
    lower = getattr(app.producer, "lower_batch_size", None)
    if lower is not None and batch < app.conf.producer_max_batch_size:
        lower(batch)


def _highwater(consumer: faust.types.ConsumerT) -> Callable[[TP], int | None]:
    def highwater(tp: TP) -> int | None:
        try:
            return consumer.highwater(tp)
        except Exception:  # not fetched yet, or the consumer is restarting
            return None

    return highwater


def _prefer_uvloop() -> None:
    """Run the worker on uvloop when it is installed and no loop was chosen (`faust -L`,
    FAUST_LOOP): its I/O costs less per call (aiohttp measured ~90 µs per request on asyncio's
    default loop during this project's HTTP client comparison, ~66 µs on uvloop with
    `python -m bench.http_client`). Set FAUST_LOOP=aio to keep asyncio's."""
    if os.environ.get("FAUST_LOOP") or os.environ.get("F_LOOP"):
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _preflight(checked: Checked) -> None:
    """Wrong credentials or an untrusted certificate: say so now and exit 2, instead of a
    client retrying for ever."""
    from agents.connectivity import preflight

    fatal = preflight(checked.config)
    if fatal:
        for line in fatal:
            print(f"herald: {line}", file=sys.stderr)
        print(
            f"herald: cannot connect with configuration {checked.path}; not starting",
            file=sys.stderr,
        )
        raise SystemExit(2)


def build(checked: Checked) -> faust.App:
    """The worker's app, once the brokers accepted the configuration's credentials."""
    _prefer_uvloop()
    app = create_app(checked)
    _preflight(checked)
    return app


_app: faust.App | None = None


def __getattr__(name: str) -> faust.App:
    """`agents.app.app`, built on first access from `HERALD_CONFIG` (PEP 562)."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = build(load_or_exit(verb="; not starting"))
    return _app


def run_worker(checked: Checked, faust_args: Sequence[str]) -> None:
    """Run Faust's worker command (as `faust -A agents.app worker`) in this process, on the
    app built from `checked`: the configuration is loaded and checked once."""
    from faust.cli.faust import cli

    global _app
    _app = build(checked)
    os.environ["HERALD_CONFIG"] = checked.path  # for anything the worker starts itself
    cli.main(args=["-A", __name__, "worker", "-l", "info", *faust_args], prog_name="herald worker")
