"""A minimal ilert-like HTTP endpoint for the benchmark: answers 202, counts, timestamps.

``agents.embedded.receiver.Receiver`` records every request in full (headers, body, parsed
JSON, a scripted answer built with ``json.dumps``) on aiohttp in a thread of the calling
process. That is right for tests but it would compete with the benchmark harness for the GIL
and with the worker for CPU on a 2-core machine. This receiver runs as its own process on a
bare ``asyncio.Protocol``: it reads HTTP/1.1 requests with a ``Content-Length`` body (what
aiohttp's client sends), takes the arrival time, pulls ``"seq"``, ``"ts"`` and ``"kafkaTs"``
out of the body with a regular expression, and answers every ``POST`` with ``202`` and a small
ilert-style JSON body, keeping the connection alive.

Control endpoints (``GET``, answered with ``Connection: close``)::

    /_bench/stats     {"requests", "unique", "first", "last"}  (arrival times: epoch seconds)
    /_bench/samples   [[seq, ts_ms, kafka_ts_ms, arrival_s], ...] for every request

Run: ``python -m bench.receiver [--port P]``; it prints ``listening on PORT`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time

_SEQ = re.compile(rb'"seq":\s*(\d+)')
_TS = re.compile(rb'"ts":\s*([0-9.eE+-]+)')
_KTS = re.compile(rb'"kafkaTs":\s*([0-9.eE+-]+)')
_ACCEPTED_BODY = b'{"responseCode":"NEW_INCIDENT_CREATED","incidentKey":"bench"}'
_ACCEPTED = (
    b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_ACCEPTED_BODY)).encode()
    + b"\r\n\r\n"
    + _ACCEPTED_BODY
)


class Recorder:
    """Everything the receiver saw: one sample per request, plus the distinct ``seq`` values."""

    def __init__(self) -> None:
        self.samples: list[tuple[int | None, float | None, float | None, float]] = []
        self.seen: set[int] = set()

    def record(self, body: bytes, arrival: float) -> None:
        seq = _number(_SEQ, body, int)
        self.samples.append((seq, _number(_TS, body, float), _number(_KTS, body, float), arrival))
        if seq is not None:
            self.seen.add(seq)

    def stats(self) -> dict[str, object]:
        return {
            "requests": len(self.samples),
            "unique": len(self.seen),
            "first": self.samples[0][3] if self.samples else None,
            "last": self.samples[-1][3] if self.samples else None,
        }


def _number(pattern: re.Pattern[bytes], body: bytes, kind: type) -> int | float | None:
    match = pattern.search(body)
    if match is None:
        return None
    try:
        return kind(match.group(1))
    except ValueError:
        return None


class _Http(asyncio.Protocol):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                elif name.strip().lower() == "transfer-encoding":
                    self._reply(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
                    assert self.transport is not None
                    self.transport.close()
                    return
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._handle(head.split(" ", 2), body)

    def _handle(self, request_line: list[str], body: bytes) -> None:
        method = request_line[0] if request_line else ""
        path = request_line[1] if len(request_line) > 1 else ""
        if method == "GET" and path.startswith("/_bench/"):
            if path.startswith("/_bench/stats"):
                payload = json.dumps(self.recorder.stats()).encode()
            elif path.startswith("/_bench/samples"):
                payload = json.dumps(self.recorder.samples).encode()
            else:
                payload = b"{}"
            self._reply(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
            )
            assert self.transport is not None
            self.transport.close()
            return
        self.recorder.record(body, time.time())
        self._reply(_ACCEPTED)

    def _reply(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def serve(host: str, port: int) -> None:
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(recorder), host, port, backlog=1024)
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
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
