"""A minimal ilert-like HTTP endpoint for the benchmark: answers 202, counts, timestamps.

``agents.embedded.receiver.Receiver`` records every request in full (headers, body, parsed
JSON, a scripted answer built with ``json.dumps``) on aiohttp in a thread of the calling
process. That is right for tests but it would compete with the benchmark harness for the GIL
and with the worker for CPU on a 2-core machine. This receiver runs as its own process on a
bare ``asyncio.Protocol``: it reads HTTP/1.1 requests with a ``Content-Length`` body (what
aiohttp's client and ``http.client`` send), takes the arrival time, pulls ``"seq"``, ``"ts"``
and ``"kafkaTs"`` out of the body with a regular expression, and answers every ``POST`` with
``202`` and a small ilert-style JSON body, keeping the connection alive.

``--delay-ms D`` answers each request D ms after it arrived (a slow ilert), with a timer per
request: other requests and connections are not held up, and the arrival time recorded is
still the moment the request was read.

Control endpoints (``GET``, answered at once with ``Connection: close``)::

    /_bench/stats     {"requests", "unique", "first", "last", "connections", "delay_ms",
                       "loop"} (arrival times: epoch seconds; connections: opened by
                       clients posting events, to see whether they keep them alive)
    /_bench/samples   [[seq, ts_ms, kafka_ts_ms, arrival_s], ...] for every request

Run: ``python -m bench.receiver [--port P] [--delay-ms D]``; it prints ``listening on PORT``
when ready. It runs on uvloop when uvloop is importable (less CPU per request; the receiver
shares the machine with the worker and the broker), else on asyncio's default loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import Callable

# `seq` and `ts` of an event, in an ilert body or in the event itself (bench.workload reads
# the events with them too)
SEQ = re.compile(rb'"seq":\s*"?(\d+)')
TS = re.compile(rb'"ts":\s*"?([0-9.eE+-]+)')
_KTS = re.compile(rb'"kafkaTs":\s*"?([0-9.eE+-]+)')
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:", re.IGNORECASE)
_ACCEPTED_BODY = b'{"responseCode":"NEW_INCIDENT_CREATED","incidentKey":"bench"}'
_ACCEPTED = (
    b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_ACCEPTED_BODY)).encode()
    + b"\r\n\r\n"
    + _ACCEPTED_BODY
)
_NOT_IMPLEMENTED = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Recorder:
    """Everything the receiver saw: one sample per request, plus the distinct ``seq`` values."""

    def __init__(self, delay_ms: float, loop_name: str) -> None:
        self.samples: list[tuple[int | None, float | None, float | None, float]] = []
        self.seen: set[int] = set()
        self.connections = 0
        self.delay_ms = delay_ms
        self.loop_name = loop_name

    def record(self, body: bytes, arrival: float) -> None:
        seq = _number(SEQ, body, int)
        self.samples.append((seq, _number(TS, body, float), _number(_KTS, body, float), arrival))
        if seq is not None:
            self.seen.add(seq)

    def stats(self) -> dict[str, object]:
        return {
            "requests": len(self.samples),
            "unique": len(self.seen),
            "first": self.samples[0][3] if self.samples else None,
            "last": self.samples[-1][3] if self.samples else None,
            "connections": self.connections,
            "delay_ms": self.delay_ms,
            "loop": self.loop_name,
        }


def _number(
    pattern: re.Pattern[bytes], body: bytes, kind: Callable[[bytes], float]
) -> float | None:
    match = pattern.search(body)
    if match is None:
        return None
    try:
        return kind(match.group(1))
    except ValueError:
        return None


class _Http(asyncio.Protocol):
    """One connection: split the byte stream into requests, answer each one."""

    def __init__(self, recorder: Recorder, delay_s: float) -> None:
        self.recorder = recorder
        self.delay_s = delay_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.counted = False  # whether this connection carried an event (see Recorder)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[: end + 2]  # keep the last header's CRLF for the patterns
            if _CHUNKED.search(head):  # never sent by the clients the bench uses
                self._write(_NOT_IMPLEMENTED)
                self._close()
                return
            match = _CONTENT_LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._handle(head, body)

    def _handle(self, head: bytes, body: bytes) -> None:
        request_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
        method = request_line[0]
        path = request_line[1] if len(request_line) > 1 else b""
        if method == b"GET" and path.startswith(b"/_bench/"):
            self._control(path)
            return
        self.recorder.record(body, time.time())
        if not self.counted:
            self.counted = True
            self.recorder.connections += 1
        if self.delay_s > 0:
            # Every answer is the same bytes, so answers may leave in any order.
            asyncio.get_running_loop().call_later(self.delay_s, self._write, _ACCEPTED)
        else:
            self._write(_ACCEPTED)

    def _control(self, path: bytes) -> None:
        if path.startswith(b"/_bench/stats"):
            payload = json.dumps(self.recorder.stats()).encode()
        elif path.startswith(b"/_bench/samples"):
            payload = json.dumps(self.recorder.samples).encode()
        else:
            payload = b"{}"
        self._write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )
        self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, delay_ms: float, loop_name: str) -> None:
    """Listen until SIGINT/SIGTERM; print the bound port first (the harness reads it)."""
    recorder = Recorder(delay_ms, loop_name)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Http(recorder, delay_ms / 1000), host, port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on {bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="answer each request this much later"
    )
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use asyncio's default loop even with uvloop"
    )
    args = parser.parse_args(argv)
    runner: Callable[..., object] = asyncio.run
    loop_name = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            runner, loop_name = uvloop.run, "uvloop"
    runner(serve(args.host, args.port, args.delay_ms, loop_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
