"""`herald replay`: re-submit an integration's dead letters.

Delivery failures are re-submitted to the actions topic as they were (same delivery id, so an
action that did get through in the meantime is skipped by the dedupe table). Decode, condition,
template and internal failures are routed again from their original bytes with the current
configuration and the record's original identity. Progress is kept in the consumer group
`<consumerGroupId>-replay`, so a second run does not repeat the first; letters written while
replaying (those that fail again) are left for the next run.
"""

from __future__ import annotations

import asyncio
import dataclasses

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.topics import actions_name, dlq_name
from streams.actions.base import ActionRequest
from streams.avro.codecs import AvroCodecs, schemas_ready
from streams.config.checked import Checked
from streams.config.models import HeraldConfig
from streams.deadletter import DeadLetter, envelope_of
from streams.handlers import Evaluation, HandlerIndex
from streams.routing import route
from streams.security import aiokafka_kwargs


def replay(checked: Checked, integration: str, *, limit: int | None, dry_run: bool) -> int:
    return asyncio.run(_replay(checked, integration, limit, dry_run))


async def _replay(checked: Checked, integration: str, limit: int | None, dry_run: bool) -> int:
    config = checked.config
    home = config.home
    index = HandlerIndex(list(checked.handlers))
    topic = dlq_name(config, integration)
    consumer = AIOKafkaConsumer(
        group_id=f"{home.consumerGroupId}-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **aiokafka_kwargs(home),
    )
    producer = AIOKafkaProducer(acks="all", **aiokafka_kwargs(home))
    codecs = AvroCodecs(config)
    await consumer.start()
    await producer.start()
    counts = {"resubmitted": 0, "rerouted": 0, "dead_again": 0, "letters": 0, "unreadable": 0}
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            print(f"{topic}: no such topic, nothing to replay")
            return 0
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
        while await _behind(consumer, tps, ends):
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    if limit is not None and counts["letters"] >= limit:
                        break
                    counts["letters"] += 1
                    await _replay_one(
                        config, index, codecs, producer, record.value, counts, dry_run
                    )
            if not dry_run:
                await producer.flush()
                await consumer.commit()
            if limit is not None and counts["letters"] >= limit:
                break
    finally:
        await producer.stop()
        await consumer.stop()
        await codecs.close()
    verb = "would re-submit" if dry_run else "re-submitted"
    print(
        f"{topic}: {counts['letters']} dead letters read; {verb} {counts['resubmitted']} "
        f"action(s), re-routed {counts['rerouted']} record(s) "
        f"({counts['dead_again']} failed again and were dead-lettered again)"
        + (
            f"; {counts['unreadable']} skipped unreadable range(s) cannot be replayed "
            "(their records could not be read)"
            if counts["unreadable"]
            else ""
        )
    )
    return 0


async def _behind(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[TopicPartition, int]
) -> bool:
    """Whether any partition's position is still before the end seen when replay started."""
    for tp in tps:
        if await consumer.position(tp) < ends[tp]:
            return True
    return False


async def _replay_one(
    config: HeraldConfig,
    index: HandlerIndex,
    codecs: AvroCodecs,
    producer: AIOKafkaProducer,
    value: bytes,
    counts: dict[str, int],
    dry_run: bool,
) -> None:
    letter = DeadLetter.from_bytes(value)
    if letter.stage == "fetch":  # a skipped unreadable batch: no record to route again
        counts["unreadable"] += 1
        return
    if letter.stage == "delivery" and letter.request:
        request = ActionRequest(**letter.request)
        request.replayed += 1
        counts["resubmitted"] += 1
        if not dry_run:
            await producer.send(
                actions_name(config), request.to_bytes(), key=request.ordering_key.encode()
            )
        return
    envelope = envelope_of(letter, None)
    handlers = index.for_topic(envelope.integration, envelope.topic)
    if letter.handler:
        handlers = [h for h in handlers if h.name == letter.handler]
    codec = codecs.for_records(envelope.integration)
    if codec is not None and handlers:

        def waiting(error: Exception, delay: float) -> None:
            print(f"schema registry unavailable ({error}); retrying in {delay:.1f}s")

        await schemas_ready(codec, envelope, waiting)
    evaluation: Evaluation = route(handlers, envelope, codec)
    counts["rerouted"] += 1
    counts["resubmitted"] += len(evaluation.requests)
    counts["dead_again"] += len(evaluation.dead_letters)
    if dry_run:
        return
    for request in evaluation.requests:
        request = dataclasses.replace(request, replayed=request.replayed + 1)
        await producer.send(
            actions_name(config), request.to_bytes(), key=request.ordering_key.encode()
        )
    for again in evaluation.dead_letters:
        await producer.send(
            dlq_name(config, again.integration),
            again.to_bytes(),
            key=again.key,
            headers=again.headers(),
        )
