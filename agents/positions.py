"""Seeking an aiokafka consumer to where the ledger says its batch partitions must start.

Shared by Herald's Faust consumer (the home integration, agents.transport) and the consumer of
every other integration (agents.integration_source): both anchor a newly assigned partition at
the group's committed offset, or the log start when nothing was committed (Herald reads from
the earliest), and seek a partition back to its next offset after a batch was dropped.
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from faust.types import TP


async def reposition(
    consumer: Any, anchor: list[TP], seek: dict[TP, int]
) -> tuple[dict[TP, int], dict[TP, int]]:
    """Seek each partition of `anchor` to its committed offset (the log start when none) and
    each of `seek` to its offset, on a started aiokafka consumer. Returns what was done;
    partitions no longer assigned are left out (their revocation replaces their progress)."""
    assigned = consumer.assignment()
    anchored: dict[TP, int] = {}
    sought: dict[TP, int] = {}
    for tp in anchor:
        ktp = TopicPartition(tp.topic, tp.partition)
        if ktp not in assigned:
            continue
        offset = await consumer.committed(ktp)
        if offset is None or offset < 0:
            offset = (await consumer.beginning_offsets([ktp]))[ktp]
        if ktp in consumer.assignment():
            consumer.seek(ktp, offset)
            anchored[tp] = offset
    for tp, offset in seek.items():
        ktp = TopicPartition(tp.topic, tp.partition)
        if ktp in consumer.assignment():
            consumer.seek(ktp, offset)
            sought[tp] = offset
    return anchored, sought
