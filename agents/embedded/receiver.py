"""A loopback HTTP receiver that stands in for ilert or any webhook target.

Herald's deliveries are only as good as their behaviour against a misbehaving endpoint, so the
receiver records every request exactly as it arrived and answers from a programmable script:
errors, rate limits with ``Retry-After``, slow answers and answers that never come.

It runs its aiohttp server on its own event loop in a background thread, so synchronous pytest
tests, the ``herald demo`` command and worker subprocesses can all reach it, and a test can
block on :meth:`Receiver.wait_for` without starving the server.

Paths answered by default (a queued behaviour can override any of them):

- ``POST /api/events`` and ``POST /api/v1/events/kafka/{key}``: ilert's event endpoints,
- ``GET /api/heartbeats/{key}`` and ``GET /api/v1/heartbeats/{key}``: ilert heartbeats,
- anything else: a generic webhook.

All of them get 202 with an ilert-like JSON body unless told otherwise. The body's shape is
illustrative (ilert's real answer may carry other fields); clients must rely on the status.

Run ``python -m agents.embedded.receiver --port N`` to serve until killed, printing each
request as one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

__all__ = [
    "Behaviour",
    "Delay",
    "Hang",
    "ILERT_ACCEPTED",
    "Receiver",
    "RecordedRequest",
    "Reply",
    "main",
]

_log = logging.getLogger(__name__)

JsonBody = bytes | str | dict[str, Any] | list[Any] | None


@dataclass(frozen=True)
class Reply:
    """Answer with ``status``, ``headers`` and ``body`` (dict/list are sent as JSON).

    ``body=None`` sends an empty body, except for :data:`ILERT_ACCEPTED`, whose body is built
    per request.
    """

    status: int = 202
    body: JsonBody = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hang:
    """Do not answer for ``seconds`` (``None``: until the receiver stops), then drop the
    connection without any response: a server that accepted the request and went silent."""

    seconds: float | None = None


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds``, then answer with ``then``: a slow but working server."""

    seconds: float
    then: Reply = field(default_factory=lambda: ILERT_ACCEPTED)


Behaviour = Reply | Hang | Delay

#: The default answer: 202 and an ilert-like JSON body generated for each request.
ILERT_ACCEPTED = Reply(202)


@dataclass
class RecordedRequest:
    """One request as the receiver saw it. ``status`` is filled in once it was answered
    (``None`` while pending, and for requests that were hung up on)."""

    index: int
    method: str
    path: str
    query: dict[str, str]
    query_string: str
    headers: dict[str, str]
    body: bytes
    json: Any
    is_json: bool
    time: float
    status: int | None = None
    behaviour: str = ""
    answered_at: float | None = None

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (replacing invalid bytes)."""
        return self.body.decode("utf-8", errors="replace")

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header by case-insensitive name."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return default

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (body as text when it is UTF-8, else base64)."""
        try:
            body: str = self.body.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            body = base64.b64encode(self.body).decode("ascii")
            encoding = "base64"
        return {
            "index": self.index,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": body,
            "body_encoding": encoding,
            "json": self.json if self.is_json else None,
            "status": self.status,
            "behaviour": self.behaviour,
        }


def _parse_json(body: bytes) -> tuple[bool, Any]:
    if not body:
        return False, None
    try:
        return True, json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False, None


class Receiver:
    """An HTTP server on ``127.0.0.1`` recording requests and answering from a script.

    ``respond(prefix, *behaviours)`` queues behaviours for requests whose path starts with
    ``prefix`` (``None``: any path); each request consumes the next behaviour of the most
    specific non-empty queue, and once every matching queue is empty it gets the default
    (:data:`ILERT_ACCEPTED` unless ``default`` says otherwise).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        default: Behaviour = ILERT_ACCEPTED,
        on_request: Callable[[RecordedRequest], None] | None = None,
    ) -> None:
        """Configure, without starting. ``port=0`` lets the OS choose (see :attr:`url`).

        ``on_request`` is called (in the server thread) after each request was answered.
        """
        self.host = host
        self.port = port
        self._default: Behaviour = default
        self._on_request = on_request
        self._rules: list[tuple[str | None, deque[Behaviour]]] = []
        self._requests: list[RecordedRequest] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None
        self._incident_ids = itertools.count(1)

    # ------------------------------------------------------------------ scripting

    def respond(self, path_prefix: str | None, *behaviours: Behaviour) -> Self:
        """Queue ``behaviours`` for paths starting with ``path_prefix`` (``None``: all)."""
        for behaviour in behaviours:
            if not isinstance(behaviour, Reply | Hang | Delay):
                raise TypeError(f"not a behaviour: {behaviour!r}")
        with self._cond:
            for prefix, queue in self._rules:
                if prefix == path_prefix:
                    queue.extend(behaviours)
                    break
            else:
                self._rules.append((path_prefix, deque(behaviours)))
        return self

    def set_default(self, behaviour: Behaviour) -> Self:
        """Change what requests get once the queues are empty."""
        with self._cond:
            self._default = behaviour
        return self

    def reset(self) -> None:
        """Forget recorded requests and queued behaviours (the default stays)."""
        with self._cond:
            self._requests.clear()
            self._rules.clear()

    def _next_behaviour(self, path: str) -> Behaviour:
        with self._cond:
            best: deque[Behaviour] | None = None
            best_len = -1
            for prefix, queue in self._rules:
                if not queue:
                    continue
                if prefix is None or path.startswith(prefix):
                    length = len(prefix) if prefix is not None else 0
                    if length > best_len:
                        best, best_len = queue, length
            if best is not None:
                return best.popleft()
            return self._default

    # ------------------------------------------------------------------ observing

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (valid once started)."""
        if not self.port:
            raise RuntimeError("receiver not started: no port yet")
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._cond:
            return list(self._requests)

    def wait_for(
        self,
        count: int,
        timeout: float = 10.0,
        *,
        path: str | None = None,
        predicate: Callable[[RecordedRequest], bool] | None = None,
        answered: bool = False,
    ) -> list[RecordedRequest]:
        """Block until at least ``count`` matching requests arrived; return all matching ones.

        ``path`` matches as a prefix. With ``answered=True`` only requests whose answer was sent
        (or hung up on) count, so their ``status`` is final. Raises ``TimeoutError`` listing
        what did arrive when ``timeout`` passes first.
        """

        def matching() -> list[RecordedRequest]:
            return [
                r
                for r in self._requests
                if (path is None or r.path.startswith(path))
                and (predicate is None or predicate(r))
                and (not answered or r.answered_at is not None)
            ]

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = matching()
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = ", ".join(f"{r.method} {r.path} -> {r.status}" for r in self._requests)
                    raise TimeoutError(
                        f"expected {count} request(s) matching path={path!r}, got "
                        f"{len(found)} within {timeout}s; all received: [{seen}]"
                    )
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> Self:
        """Start serving in a background thread; return once the port is bound."""
        if self.running:
            return self
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve_start())
            except BaseException as exc:  # reported to start()'s caller
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._serve_stop())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"receiver-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"receiver did not start within {timeout}s")
        if errors:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"receiver could not listen on {self.host}:{self.port}") from (
                errors[0]
            )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: pending :class:`Hang` requests are dropped, the thread joined."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Receiver {self.host}:{self.port} {state} requests={len(self._requests)}>"

    async def _serve_start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that gives up must not keep a Hang/Delay task alive.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=0.5,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def _serve_stop(self) -> None:
        if self._release is not None:
            self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        is_json, parsed = _parse_json(body)
        record = RecordedRequest(
            index=next(self._counter),
            method=request.method,
            path=request.path,
            query=dict(request.query),
            query_string=request.query_string,
            headers=dict(request.headers),
            body=body,
            json=parsed,
            is_json=is_json,
            time=time.time(),
        )
        behaviour = self._next_behaviour(request.path)
        record.behaviour = repr(behaviour)
        with self._cond:
            self._requests.append(record)
            self._cond.notify_all()
        try:
            if isinstance(behaviour, Hang):
                await self._hang(behaviour.seconds)
                self._finish(record, None)
                assert request.transport is not None
                request.transport.close()
                # The connection is gone; aiohttp discards whatever is returned now.
                return web.Response(status=499)
            if isinstance(behaviour, Delay):
                await asyncio.sleep(behaviour.seconds)
                behaviour = behaviour.then
            response = self._build(behaviour, record)
            self._finish(record, response.status)
            return response
        except asyncio.CancelledError:
            self._finish(record, None)
            raise

    async def _hang(self, seconds: float | None) -> None:
        assert self._release is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), seconds)

    def _finish(self, record: RecordedRequest, status: int | None) -> None:
        with self._cond:
            record.status = status
            record.answered_at = time.time()
            self._cond.notify_all()
        if self._on_request is not None:
            try:
                self._on_request(record)
            except Exception:  # a broken observer must not turn answers into 500s
                _log.exception("receiver on_request callback failed")

    def _build(self, reply: Reply, record: RecordedRequest) -> web.Response:
        headers = dict(reply.headers)
        body = reply.body
        if reply is ILERT_ACCEPTED:
            body = self._ilert_body(record)
        if isinstance(body, dict | list):
            headers.setdefault("Content-Type", "application/json")
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
            data = body.encode()
        else:
            data = body or b""
        return web.Response(status=reply.status, body=data, headers=headers)

    def _ilert_body(self, record: RecordedRequest) -> dict[str, Any]:
        payload = record.json if isinstance(record.json, dict) else {}
        number = next(self._incident_ids)
        key = payload.get("alertKey") or payload.get("incidentKey") or f"alert-{number}"
        return {
            "responseCode": "NEW_INCIDENT_CREATED",
            "incidentKey": key,
            "alertKey": key,
            "incidentUrl": f"{self.url}/incident/{number}",
        }


def _print_request(record: RecordedRequest) -> None:
    sys.stdout.write(json.dumps(record.to_dict()) + "\n")
    sys.stdout.flush()


def main(argv: Iterable[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM, printing one JSON line per request (for demo, benchmarks)."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.embedded.receiver", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument(
        "--status", type=int, default=202, help="status of every answer (default 202)"
    )
    parser.add_argument("--quiet", action="store_true", help="do not print requests")
    args = parser.parse_args(list(argv) if argv is not None else None)

    default: Behaviour = ILERT_ACCEPTED if args.status == 202 else Reply(args.status)
    receiver = Receiver(
        args.port,
        host=args.host,
        default=default,
        on_request=None if args.quiet else _print_request,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with receiver:
        print(f"listening on {receiver.url}", file=sys.stderr, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
