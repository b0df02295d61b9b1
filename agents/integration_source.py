"""Consuming an integration on its own cluster: one consumer per integration, per worker.

Faust's consumer reads the home integration's cluster, where Herald's internal topics live
(actions, executions, rules, the tables' changelogs, dead letters). Every other active
integration gets an `IntegrationSource` in every worker: an aiokafka consumer with the
integration's own bootstrapServers, security settings and consumerGroupId, subscribed to the
integration's topics with an active handler (and following them, as the home consumer does:
agents.subscriptions). Its records go through the same path as the home integration's:

- an `OffsetLedger` of its own admits fetched batches and decides what may be committed
  (anchored at the group's committed offset on assignment, no holes, agents.ledger);
- a `SourceRunner` for the integration evaluates them with its codecs (its own schema
  registry) and produces the action requests to the actions topic on the home cluster, and
  dead letters to the integration's dead-letter topic (also on the home cluster);
- an offset is committed on the integration's cluster only once every record before it has
  had all it produced acknowledged by the home cluster. From there the actions are delivered
  as any other, the actions topic committed only after delivery.

So a crash (SIGKILL) repeats at most what was in flight, and adding workers scales every
integration: each worker joins each integration's group.

Isolation: nothing here raises into the worker. A cluster that is down, refuses the
credentials or has no leader leaves this source retrying with backoff (up to
`RETRY_MAX_SECONDS`) and reporting its state (`status()`, on /ready); every other integration
goes on. Back, it resumes from its committed offsets, so its backlog is delivered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalStateError, RecordTooLargeError
from faust.types import TP

from agents import fetchguard, positions
from agents.batches import BatchChannel
from agents.fetchguard import Unreadable
from agents.ledger import OffsetLedger, Stall
from agents.runtime import Runtime
from agents.sources import SourceRunner
from streams.config.models import Integration
from streams.offsets import Ticket
from streams.security import aiokafka_kwargs, classify, probe, redact

log = logging.getLogger("herald.integration")

#: The longest wait between two attempts to connect (doubling from one second).
RETRY_MAX_SECONDS = 30.0
#: How often the cluster is asked for the assigned partitions' end offsets: the lag on
#: /ready, stalls, and whether the cluster answers at all.
PROBE_SECONDS = 5.0
#: How long a commit, an offset lookup or a probe may take before it counts as failed.
REQUEST_TIMEOUT_SECONDS = 10.0
#: Each getmany waits at most this long, so subscription changes and commits are not late.
POLL_MS = 500


class IntegrationSource:
    """The consumer, ledger and source runner of one integration on its own cluster."""

    def __init__(
        self,
        runtime: Runtime,
        integration: Integration,
        wanted: Callable[[], set[str]],
        conflict: Callable[[], str | None] = lambda: None,
        metadata_max_age_ms: int = 10_000,
    ) -> None:
        self.runtime = runtime
        self.integration = integration
        self.name = integration.name
        self._wanted = wanted
        self._conflict = conflict
        self._metadata_max_age_ms = metadata_max_age_ms
        settings = runtime.config.herald
        self._settings = settings
        self.ledger = OffsetLedger()
        self.channel = BatchChannel(
            set(), settings.maxInFlight * 16, pause=self._pause, resume=self._resume
        )
        self.ledger.on_revoke(self.channel.revoke)
        self.runner = SourceRunner(runtime, self.channel, integration.name)
        self._consumer: AIOKafkaConsumer | None = None
        self._subscribed: frozenset[str] = frozenset()
        self._generation = 0
        self._committed: dict[TP, int] = {}
        self._committed_at = 0.0
        self._reports: collections.deque[tuple[Any, Unreadable]] = collections.deque()
        self._highwater: dict[TP, int] = {}
        self._probed_at = 0.0
        self._logged: dict[str, float] = {}
        self._stopping = False
        self.stalls: list[Stall] = []
        #: idle (no active handler), connecting, consuming, error.
        self.state = "idle"
        self.error: str | None = None
        self.since = time.time()

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume while the integration has active handlers; never raises (but cancelled)."""
        await self.runtime.rules.ready.wait()
        delay = 1.0
        wanted: frozenset[str] = frozenset()
        conflict: str | None = None
        looked_at = 0.0
        while not self._stopping:
            try:
                if time.monotonic() - looked_at >= 1.0:  # the handlers, once a second
                    wanted, conflict = frozenset(self._wanted()), self._conflict()
                    looked_at = time.monotonic()
                if not wanted:
                    if self._consumer is not None:  # the last handler went: keep what is done
                        await self._commit(force=True)
                    await self._close()
                    self._set("idle")
                    await asyncio.sleep(1.0)
                    continue
                if conflict:
                    await self._close()
                    self._fail(conflict)
                    await asyncio.sleep(5.0)
                    continue
                if self._consumer is None:
                    self._set("connecting")
                    await self._open()
                if wanted != self._subscribed:
                    self._subscribe(wanted)
                await self._reposition()
                fetched = await self._fetch()
                await self._probe()
                await self._commit()
                if fetched and self.state != "consuming":
                    self._set("consuming")
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except ConsumerStoppedError:
                if self._stopping:
                    return
                await self._close()
            except Exception as exc:
                self._fail(await self._diagnose(exc))
                await self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def stop(self) -> None:
        """Commit what is done and leave the group (the worker stops)."""
        self._stopping = True
        if self._consumer is not None:
            await self._commit(force=True)
        await self._close()

    # -- connecting and subscribing ----------------------------------------------------

    async def _open(self) -> None:
        settings = self._settings
        consumer = AIOKafkaConsumer(
            group_id=self.integration.consumerGroupId,
            client_id=f"herald-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.fetchMaxWaitMs,
            metadata_max_age_ms=self._metadata_max_age_ms,
            session_timeout_ms=int(settings.sessionTimeoutSeconds * 1000),
            heartbeat_interval_ms=int(min(3.0, settings.sessionTimeoutSeconds / 4) * 1000),
            **aiokafka_kwargs(self.integration),
        )
        try:
            await consumer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise
        fetchguard.install(consumer, self._reports)
        self._consumer = consumer
        self._subscribed = frozenset()
        log.info(
            "integration %s: connected to %s as group %s",
            self.name,
            self.integration.bootstrapServers,
            self.integration.consumerGroupId,
        )

    def _subscribe(self, topics: frozenset[str]) -> None:
        assert self._consumer is not None
        self._consumer.subscribe(sorted(topics), listener=_Rebalance(self))
        log.info("integration %s: consuming %s", self.name, ", ".join(sorted(topics)))
        self._subscribed = topics

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._subscribed = frozenset()
        if consumer is None:
            return
        with contextlib.suppress(Exception):
            await consumer.stop()
        # Leaving the group revokes everything (aiokafka calls the listener on stop only when
        # it can reach the coordinator): nothing of the old assignment may be committed.
        self.ledger.revoke(self.ledger.assigned())
        self._highwater.clear()

    # -- rebalances ----------------------------------------------------------------------

    async def revoked(self, tps: set[TP]) -> None:
        """Partitions leave this worker: commit what is done of them, then let them go."""
        await self._commit(tps, force=True)
        self.ledger.revoke(tps)
        for tp in tps:
            self._committed.pop(tp, None)
            self._highwater.pop(tp, None)

    def assigned(self, tps: set[TP]) -> None:
        """A new assignment: each partition is anchored at its committed offset before the
        ledger takes anything of it (`_reposition`, in the loop)."""
        self._generation += 1
        self.ledger.assign(tps, self._generation)
        for tp in tps:
            self._committed.pop(tp, None)
        if tps:
            log.info(
                "integration %s: assigned %s",
                self.name,
                ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(tps)),
            )

    async def _reposition(self) -> None:
        anchor, seek = self.ledger.repositions()
        if not anchor and not seek:
            return
        assert self._consumer is not None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                anchored, sought = await positions.reposition(self._consumer, list(anchor), seek)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the coordinator or a leader is away: the next turn retries
            self._log_once(
                "reposition",
                logging.WARNING,
                "integration %s: could not seek %d partition(s) to their offsets (%r); "
                "nothing of them is taken until it can",
                self.name,
                len(anchor) + len(seek),
                exc,
            )
            return
        for tp, offset in anchored.items():
            self.ledger.anchored(tp, anchor[tp], offset)
        for tp, offset in sought.items():
            self.ledger.sought(tp, offset)

    # -- fetching ------------------------------------------------------------------------

    async def _fetch(self) -> bool:
        """One getmany; its batches go to the ledger, then the runner. True when the
        cluster answered with records or nothing failed."""
        consumer = self._consumer
        assert consumer is not None
        generation = self._generation
        try:
            records = await consumer.getmany(timeout_ms=POLL_MS)
        except RecordTooLargeError as exc:
            found = fetchguard.record_too_large(exc)
            if found is None:
                raise
            tp, offset = found
            unreadable = Unreadable(
                tp.topic, tp.partition, offset, offset + 1, repr(exc)[:1000], time.time()
            )
            self._reports.append((tp, unreadable))
            records = {}
        # None: a rebalance came during the fetch; its batches are not taken (agents.ledger).
        fetched_in = generation if generation == self._generation else None
        for ktp, batch_records in records.items():
            if not batch_records:
                continue
            batch = self.ledger.admit(TP(ktp.topic, ktp.partition), batch_records, fetched_in, True)
            if batch is not None:
                self.channel.put(batch)
        self._take_reports()
        return True

    def _take_reports(self) -> None:
        while self._reports:
            fetched_tp, unreadable = self._reports.popleft()
            tp = TP(fetched_tp.topic, fetched_tp.partition)
            if self.ledger.stop(tp, unreadable):
                fetchguard.log_stopped(
                    self.name, unreadable, fetchguard.skip_command(unreadable, self.name)
                )
        for tp in self.ledger.stopped():
            if self.ledger.caught_up(tp):
                self._pause(tp)

    def skip_unreadable(self, tp: TP, offset: int, end: int) -> Ticket | None:
        """As `HeraldConsumer.skip_unreadable`: the range becomes a ticket, the partition is
        sought past it before the next fetch and flows again."""
        ticket = self.ledger.skip(tp, offset, end)
        if ticket is not None:
            self._resume(tp)
        return ticket

    def _pause(self, tp: TP) -> None:
        if self._consumer is not None:
            with contextlib.suppress(IllegalStateError):
                self._consumer.pause(TopicPartition(tp.topic, tp.partition))

    def _resume(self, tp: TP) -> None:
        if self._consumer is not None and tp not in self.ledger.stopped():
            with contextlib.suppress(IllegalStateError):
                self._consumer.resume(TopicPartition(tp.topic, tp.partition))

    # -- commits -------------------------------------------------------------------------

    async def _commit(self, tps: Iterable[TP] | None = None, force: bool = False) -> None:
        """Commit the ledger's committable offsets that moved (every commitIntervalSeconds,
        or now when `force`). A failed commit is logged and tried again next time."""
        consumer = self._consumer
        now = time.monotonic()
        if consumer is None or (
            not force and now - self._committed_at < self._settings.commitIntervalSeconds
        ):
            return
        self._committed_at = now
        offsets: dict[TopicPartition, int] = {}
        for tp in self.ledger.committable_tps(None if tps is None else set(tps)):
            offset = self.ledger.committable(tp)
            if offset is not None and self._committed.get(tp) != offset:
                offsets[TopicPartition(tp.topic, tp.partition)] = offset
        if not offsets:
            return
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                await consumer.commit(offsets)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a rebalance or an outage: the next commit tries again
            self._log_once(
                "commit",
                logging.WARNING,
                "integration %s: could not commit offsets (%r); trying again",
                self.name,
                exc,
            )
            return
        for ktp, offset in offsets.items():
            self._committed[TP(ktp.topic, ktp.partition)] = offset

    # -- health --------------------------------------------------------------------------

    async def _probe(self) -> None:
        """Every PROBE_SECONDS: the assigned partitions' end offsets (lag, stalls), which
        also tells whether the cluster answers at all; getmany does not say."""
        now = time.monotonic()
        if now - self._probed_at < PROBE_SECONDS:
            return
        self._probed_at = now
        consumer = self._consumer
        assert consumer is not None
        tps = sorted(consumer.assignment())
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                if tps:
                    ends = await consumer.end_offsets(tps)
                else:
                    await consumer.topics()
                    ends = {}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(self._describe(exc))
            return
        self._highwater = {TP(t.topic, t.partition): end for t, end in ends.items()}
        self.stalls = self.ledger.stalls(self._highwater.get, self._settings.stallSeconds)
        if self.state != "consuming":
            self._set("consuming")

    def lag(self) -> dict[str, int]:
        """Records not yet done per assigned partition (as of the last probe)."""
        return {f"{tp.topic}/{tp.partition}": lag for tp, lag in self.lag_by_partition().items()}

    def lag_by_partition(self) -> dict[TP, int]:
        """The end offset of the last probe minus the offset before which every record is
        done (agents.ledger), per assigned partition; /ready and /metrics show it."""
        out: dict[TP, int] = {}
        for tp, end in sorted(self._highwater.items()):
            progress = self.ledger.position(tp)
            if progress is not None:
                out[tp] = max(end - progress, 0)
        return out

    def status(self) -> dict[str, Any]:
        """What /ready says of this integration."""
        by_topic: dict[str, list[int]] = {}
        for tp in self.ledger.assigned():
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        return {
            "state": self.state,
            "error": self.error,
            "since": int(self.since * 1000),
            "group": self.integration.consumerGroupId,
            "topics": sorted(self._wanted()) if self.runtime.rules.ready.is_set() else [],
            "assignment": {topic: sorted(parts) for topic, parts in sorted(by_topic.items())},
            "lag": self.lag(),
            "stalledPartitions": [stall.describe() for stall in self.stalls],
        }

    def _set(self, state: str) -> None:
        if state != self.state:
            if state == "consuming" and self.state == "error":
                log.warning("integration %s: the cluster answers again; consuming", self.name)
            self.state, self.since = state, time.time()
        if state != "error":
            self.error = None

    def _fail(self, message: str) -> None:
        if self.state != "error" or self.error != message:
            log.error("%s (other integrations are not affected; retrying)", message)
            self.since = time.time()
        self.state, self.error = "error", message

    async def _diagnose(self, exc: BaseException) -> str:
        """Why the consumer failed, in the words `herald check --connect` uses: aiokafka's
        start reports a refused login as a closed connection, so the cluster is probed as the
        check does (TLS, SASL, metadata) and its finding is said when it has one."""
        found = await probe(self.integration, timeout=REQUEST_TIMEOUT_SECONDS)
        if not found.ok:
            return redact(found.summary, self.integration)
        return self._describe(exc)

    def _describe(self, exc: BaseException) -> str:
        """One line naming the integration, without any secret of it."""
        problem = classify(exc, self.integration, self.integration.bootstrapServers)
        text = problem.message
        if not text.startswith(f"integration {self.name!r}"):
            text = f"integration {self.name!r}: {text}"
        return redact(text, self.integration)

    def _log_once(self, key: str, level: int, message: str, *args: Any) -> None:
        """At most every 10 s per kind: an outage must not flood the log."""
        now = time.monotonic()
        if now - self._logged.get(key, 0.0) >= 10.0:
            self._logged[key] = now
            log.log(level, message, *args)


class _Rebalance(ConsumerRebalanceListener):
    """aiokafka's rebalance callbacks, in aiokafka's partition type, to the source."""

    def __init__(self, source: IntegrationSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._source.revoked({TP(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._source.assigned({TP(tp.topic, tp.partition) for tp in assigned})
