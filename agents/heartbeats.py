"""Periodic ilert heartbeat pings (`herald.heartbeats`; ilagent's `-b KEY`).

ilagent pings its heartbeat when it starts and every 30 s after (hbt.rs). Herald does the same
from the leader worker only, so a deployment of several workers pings once per interval, and
a new leader takes over when the old one goes. A ping starts once the worker is running
(partitions assigned, rules loaded): the heartbeat then says "Herald is up", not just "the
process exists". A failed ping is retried with the target's policy within its interval, then
logged; the next interval pings again (a missed heartbeat is what ilert is there to notice).
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust

from agents.runtime import Runtime
from streams.actions.ilert import IlertHeartbeatDelivery, heartbeat_request
from streams.config.models import HeartbeatPing
from streams.delivery import run_with_retry

log = logging.getLogger("herald.heartbeats")


def register_heartbeats(app: faust.App, runtime: Runtime) -> None:
    pings = list(runtime.config.herald.heartbeats)
    if not pings:
        return

    @app.task
    async def ping_heartbeats() -> None:
        await runtime.rules.ready.wait()
        due = [0.0] * len(pings)
        running: set[asyncio.Task] = set()
        while not app.should_stop:
            if app.is_leader():
                now = time.monotonic()
                for i, ping in enumerate(pings):
                    if now >= due[i]:
                        due[i] = now + ping.intervalSeconds
                        task = asyncio.ensure_future(_ping(runtime, ping))
                        running.add(task)
                        task.add_done_callback(running.discard)
            else:
                due = [0.0] * len(pings)  # on becoming the leader, ping at once
            await app.sleep(min(1.0, *(p.intervalSeconds for p in pings)))


async def _ping(runtime: Runtime, ping: HeartbeatPing) -> None:
    target = runtime.targets[ping.target]
    request = heartbeat_request(  # the key is the target's
        id=f"heartbeat-{int(time.time() * 1000)}",
        handler="herald.heartbeats",
        event="timer",
        integration=runtime.home,
        target=target.name,
    )
    policy = target.retry.model_copy(
        update={"maxElapsedSeconds": min(target.retry.maxElapsedSeconds, ping.intervalSeconds)}
    )
    ctx = runtime.delivery_context()
    delivery = IlertHeartbeatDelivery()
    outcome = await run_with_retry(lambda: delivery.deliver(request, ctx, target), policy)
    if outcome.ok:
        log.info("heartbeat %s pinged", target.name)
    else:
        log.error("heartbeat %s not pinged: %s", target.name, outcome.error)
