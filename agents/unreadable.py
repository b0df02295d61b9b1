"""Skipping unreadable record batches: the operator's `herald skip`, or the setting.

A partition stopped at a batch that cannot be read (agents.fetchguard, agents.ledger) waits
for a decision. `herald skip --topic T --partition P --offset O [--to END]` publishes one to
the rules topic (key `\\x00skip:<integration>:<topic>:<partition>:<offset>`), which every
worker holds as a GlobalTable: so it reaches whichever worker owns the partition now or
later, and it still applies when the batch is met again after a crash before the commit.
With `herald.unreadableBatches: skip` every unreadable batch is skipped at once.

A skip is at-least-once like everything else: the range becomes a ticket of the ledger, done
only once its dead letter (stage `fetch`: the offsets, the reason, no value) is
acknowledged, so the committed offset never passes an unrecorded range.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.types import TP

from agents.fetchguard import Unreadable
from agents.runtime import Runtime
from agents.tables import SKIP_PREFIX
from streams.config.models import HeraldConfig
from streams.deadletter import DeadLetter
from streams.offsets import Ticket

log = logging.getLogger("herald.unreadable")


def skip_key(integration: str, topic: str, partition: int, offset: int) -> bytes:
    return SKIP_PREFIX + f"{integration}:{topic}:{partition}:{offset}".encode()


@dataclass(frozen=True, slots=True)
class SkipRequest:
    """An operator's decision to skip the unreadable range starting at an offset."""

    to: int | None  # the end of the range; None: the end the batch's header gives
    requested_at: int  # ms

    def to_bytes(self) -> bytes:
        return orjson.dumps({"to": self.to, "requestedAt": self.requested_at})

    @classmethod
    def from_bytes(cls, data: bytes) -> SkipRequest | None:
        try:
            body = orjson.loads(data)
            to = body.get("to")
            return cls(to=int(to) if to is not None else None, requested_at=body["requestedAt"])
        except Exception:
            return None


def dead_letter(integration: str, unreadable: Unreadable, end: int, how: str) -> DeadLetter:
    """The record of a skipped range: where it is, how far it goes, and why."""
    return DeadLetter(
        stage="fetch",
        reason=(
            f"record batch unreadable, offsets {unreadable.offset}..{end - 1} skipped ({how}): "
            f"{unreadable.reason}"
        ),
        integration=integration,
        source={
            "topic": unreadable.topic,
            "partition": unreadable.partition,
            "offset": unreadable.offset,
            "endOffset": end,
            "timestamp": None,
            "key": None,
            "headers": {},
        },
        value=None,
        failedAt=int(unreadable.seen_at * 1000) or int(time.time() * 1000),
    )


class Skipper:
    """Applies skip decisions to the partitions the consumer stopped."""

    def __init__(self, app: faust.App, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self.automatic = runtime.config.herald.unreadableBatches == "skip"

    def request_for(self, integration: str, tp: TP, offset: int) -> SkipRequest | None:
        blob = self.runtime.tables.rules.get(skip_key(integration, tp.topic, tp.partition, offset))
        return SkipRequest.from_bytes(blob) if blob else None

    async def tend(self) -> None:
        """Every integration's stopped partitions: the home one's (Faust's consumer) and each
        other integration's (agents.integration_source), which skip alike."""
        consumers: list[tuple[str, Any]] = [(self.runtime.home, self.app.consumer)]
        consumers += sorted(self.runtime.sources.items())
        for integration, consumer in consumers:
            ledger = getattr(consumer, "ledger", None)
            if ledger is not None:
                self._tend(integration, consumer, ledger)

    def _tend(self, integration: str, consumer: Any, ledger: Any) -> None:
        for tp, unreadable in ledger.stopped().items():
            if not ledger.caught_up(tp):
                continue
            request = self.request_for(integration, tp, unreadable.offset)
            if request is None and not self.automatic:
                continue
            end = request.to if request is not None and request.to else unreadable.skip_to
            how = "herald skip" if request is not None else "herald.unreadableBatches: skip"
            ticket = consumer.skip_unreadable(tp, unreadable.offset, end)
            if ticket is None:
                continue
            letter = dead_letter(integration, unreadable, end, how)
            log.warning(
                "skipping %s %s/%s offsets %d..%d (%s); recorded on the dead-letter topic",
                integration,
                tp.topic,
                tp.partition,
                unreadable.offset,
                end - 1,
                how,
            )
            asyncio.ensure_future(self._record(letter, ticket))

    async def _record(self, letter: DeadLetter, ticket: Ticket) -> None:
        """Produce the skip's dead letter until the broker takes it; then the range may be
        committed. Revoked meanwhile: its next owner meets the batch and skips it again."""
        delay = 0.5
        topic = self.runtime.topics.dlq(letter.integration)
        while not ticket.stale:
            try:
                fut = await topic.send(
                    key=None, value=letter.to_bytes(), headers=letter.headers(), force=True
                )
                await fut
            except Exception as exc:
                log.error("could not record a skipped range (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.runtime.counters.count_dead_letter(letter.integration, letter.stage)
            ticket.done()
            return


def register_skipper(app: faust.App, runtime: Runtime) -> Skipper:
    skipper = Skipper(app, runtime)

    @app.timer(interval=1.0)
    async def tend_unreadable() -> None:
        await skipper.tend()

    return skipper


async def publish_skip(
    config: HeraldConfig,
    topic: str,
    partition: int,
    offset: int,
    to: int | None,
    integration: str | None = None,
) -> bytes:
    """Publish a skip request to the rules topic (for `herald skip`); returns its key."""
    from agents.rulesctl import publish_to_rules_topic

    key = skip_key(integration or config.home.name, topic, partition, offset)
    request = SkipRequest(to=to, requested_at=int(time.time() * 1000))
    await publish_to_rules_topic(config, [(key, request.to_bytes())])
    return key
