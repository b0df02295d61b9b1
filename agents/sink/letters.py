"""Dead letters of the sink: deliveries that failed for good, and unreadable action records.

A delivery dead letter carries the source record's original bytes, read back by the
request's coordinates when the letter is written (agents.readback): dead letters are rare,
so the hot path carries no copy of the value. A letter is published and acknowledged before
its record counts as finished; publishing is tried until it works, never dropped, and a
letter too large with the original value is written without it (`valueMissing` says why).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from agents.counters import Counters
from agents.producer import too_large
from agents.readback import SourceReader
from agents.sink.stopping import StopSignal
from streams.actions.base import ActionRequest
from streams.config.models import HeraldConfig
from streams.deadletter import DeadLetter, b64
from streams.secrets import SCRUBBER

log = logging.getLogger("herald.sink")


class SinkLetters:
    def __init__(
        self,
        config: HeraldConfig,
        dlq: Callable[[str], Any],
        counters: Counters,
        stop: StopSignal,
    ) -> None:
        self._home = config.home.name
        self._dlq = dlq  # integration name -> its dead-letter Faust topic
        self._counters = counters
        self._stop = stop
        self._reader = SourceReader(config)

    async def delivery_failed(self, request: ActionRequest, reason: str, attempts: int) -> None:
        """Dead-letter a request whose delivery failed for good (or can never be made)."""
        source = request.source
        value, missing = await self._original_value(request)
        letter = DeadLetter(
            stage="delivery",
            reason=reason,
            integration=request.integration,
            source={k: v for k, v in source.items() if k != "messageId"},
            value=b64(value),
            valueMissing=missing,
            handler=request.handler,
            action=request.action,
            actionIndex=request.index,
            attempts=attempts,
            failedAt=int(time.time() * 1000),
            request=orjson.loads(request.to_bytes()),
        )
        await self._publish(letter)
        log.warning(
            "dead-lettered %s %s after %d attempts: %s",
            request.action,
            request.id,
            attempts,
            reason,
        )
        self._counters.count_dead_letter(letter.integration, letter.stage)

    async def unreadable(self, record: Any, reason: str) -> None:
        """Dead-letter an action record that is not an action request at all."""
        letter = DeadLetter(
            stage="delivery",
            reason=reason,
            integration=self._home,
            source={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "key": b64(record.key),
                "headers": {},
            },
            value=b64(record.value),
            failedAt=int(time.time() * 1000),
        )
        await self._publish(letter)
        self._counters.count_dead_letter(letter.integration, letter.stage)

    async def close(self) -> None:
        await self._reader.close()

    async def _original_value(self, request: ActionRequest) -> tuple[bytes | None, str | None]:
        """The source record's value bytes, read back by the request's coordinates; or None
        and why (agents.readback)."""
        source = request.source
        try:
            topic, partition, offset = source["topic"], source["partition"], source["offset"]
        except KeyError as exc:
            return None, f"the action request does not say where its source record is ({exc})"
        value, missing = await self._reader.read(request.integration, topic, partition, offset)
        if missing is not None:
            log.warning("dead letter of %s without its value: %s", request.id, missing)
        return value, SCRUBBER.scrub_data(missing)

    async def _publish(self, letter: DeadLetter) -> None:
        """Publish a dead letter and wait for the broker; keep trying, never drop it. A stop
        ends the trying (`Stopping`): the record stays unfinished and is redone."""
        topic = self._dlq(letter.integration)
        delay = 0.5
        alone = False  # refused as too large in a batch: sent in a batch of its own since
        while True:
            try:
                if alone:  # agents.producer: the refusal may have been the batch's
                    fut = await topic.app.producer.send_alone(
                        topic.get_topic_name(),
                        letter.key,
                        letter.to_bytes(),
                        None,
                        None,
                        letter.headers(),
                    )
                else:
                    fut = await topic.send(
                        key=letter.key,
                        value=letter.to_bytes(),
                        headers=letter.headers(),
                        force=True,
                    )
                await fut
                return
            except Exception as exc:
                if too_large(exc) and not alone:
                    alone = True
                    continue
                if too_large(exc) and letter.value is not None:
                    letter = _without_value(letter, exc)
                    continue
                log.error("could not write dead letter (%s); retrying in %.1fs", exc, delay)
                await self._stop.sleep(delay)
                delay = min(delay * 2, 30.0)


def _without_value(letter: DeadLetter, error: Exception) -> DeadLetter:
    """The letter without the original value, which made it too large to be written."""
    assert letter.value is not None
    source = letter.source
    return replace(
        letter,
        value=None,
        valueMissing=f"the original value ({len(letter.value) * 3 // 4} bytes) is left out: "
        f"with it the dead letter is too large for the producer or the topic ({error!r}); "
        f"read it at {source.get('topic')}/{source.get('partition')}@{source.get('offset')}",
    )
