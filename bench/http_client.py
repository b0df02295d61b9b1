"""Client CPU per HTTP call: Herald's HTTP/1.1 client against aiohttp, in one run.

    python -m bench.http_client [--lanes 64] [--requests 300]

Starts the bench receiver (its own process, answers 202 at once, keep-alive), then for each
client sends ``--lanes`` concurrent lanes of ``--requests`` POSTs of an ilert-sized JSON body,
three times, and prints the client process's CPU time per request (user + system) and the
rate. aiohttp is used as Herald used it before streams/http1.py (one session, a ClientTimeout
per call, the body as bytes). Both run on the event loop the worker uses (uvloop when
installed). Run on an idle machine: the receiver shares the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp

from agents.embedded.broker import free_port
from streams.http1 import Http1Client

BODY = (
    b'{"integrationKey":"il1bench","eventType":"ALERT","alertKey":"M-1","summary":"M-1 at '
    b'plant-4: Pump 3 discharge pressure reading within configured band","severity":1,'
    b'"customDetails":{"site":"plant-4","value":18.62,"seq":12345,"ts":1712345678901.424}}'
)
HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "0123456789abcdef"}

Send = Callable[[], Awaitable[None]]


async def measure(send: Send, lanes: int, requests: int) -> list[tuple[float, float]]:
    """[(CPU µs per request, requests/s)] for three runs after a warm-up."""

    async def lane(n: int) -> None:
        for _ in range(n):
            await send()

    await asyncio.gather(*(lane(50) for _ in range(lanes)))
    runs = []
    for _ in range(3):
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(lane(requests) for _ in range(lanes)))
        total = lanes * requests
        runs.append(
            ((time.process_time() - cpu) / total * 1e6, total / (time.perf_counter() - wall))
        )
    return runs


async def run(url: str, lanes: int, requests: int) -> None:
    async with Http1Client(limit_per_origin=lanes) as client:

        async def http1() -> None:
            response = await client.request("POST", url, body=BODY, headers=HEADERS, timeout=10)
            assert response.status == 202

        report("streams/http1.py", await measure(http1, lanes, requests))

    connector = aiohttp.TCPConnector(limit=lanes)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def aio() -> None:
            async with session.post(
                url, data=BODY, headers=HEADERS, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                await response.text()
                assert response.status == 202

        report("aiohttp (baseline)", await measure(aio, lanes, requests))


def report(name: str, runs: list[tuple[float, float]]) -> None:
    cpu = "/".join(f"{c:.1f}" for c, _ in runs)
    rate = "/".join(f"{r:,.0f}" for _, r in runs)
    print(f"{name:20}  client CPU {cpu} µs per request   rate {rate} requests/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, default=64)
    parser.add_argument("--requests", type=int, default=300, help="per lane and run")
    args = parser.parse_args(argv)
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "bench.receiver", "--port", str(port)], stdout=subprocess.PIPE
    )
    try:
        assert receiver.stdout is not None
        receiver.stdout.readline()  # "listening on PORT"
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
        asyncio.run(run(f"http://127.0.0.1:{port}/api/events", args.lanes, args.requests))
    finally:
        receiver.terminate()
        receiver.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
