"""A small HTTP/1.1 client for the delivery hot path (ilert events, webhooks).

Why not aiohttp here: at thousands of alerts per second on one core the client's own CPU per
request decides the rate. Measured on the bench machine (keep-alive POST of ~300 bytes, 64 in
flight, client CPU per request): aiohttp 3.14 as Herald used it ~90 µs (~60 µs on uvloop,
tuned); httpx ~1.6 ms; aiosonic ~90 µs; curl-cffi ~160 µs; this client ~12-15 µs
(`python -m bench.http_client` repeats the aiohttp comparison). aiohttp stays
for the rare calls (Conductor, schema registry) where its breadth matters more.

What it does: one pool per origin (scheme, host, port) of kept-alive connections, at most
`limit` open each, one request in flight per connection; TLS through an `ssl.SSLContext`;
responses framed by Content-Length, chunked transfer coding or connection close; 1xx interim
responses skipped; `Connection: close` and HTTP/1.0 honoured. What it does not: proxies,
redirects, compression (it sends no Accept-Encoding, so servers do not compress), pipelining,
HTTP/2. A request's timeout covers waiting for a connection, connecting, sending and the whole
response.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

MAX_HEAD = 64 * 1024  # status line and headers of a response
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"
_FRAMING_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


class InvalidURL(ValueError):
    """A URL this client cannot request; the message is the URL."""


class HttpConnectionError(ConnectionError):
    """The connection failed or the response was not valid HTTP/1.1."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]
    host_header: str
    request_target: str


def check_url(url: str) -> None:
    """Raise InvalidURL unless this client can request `url` (absolute http(s) with a host).

    The one rule for URLs: delivery applies it through `_parse_url`, and the configuration
    applies it to URLs written without templates, so a URL no request could use fails the
    load instead of every message.
    """
    _parse_url(url)


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidURL(url)
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise InvalidURL(url) from None
    default = port == (443 if scheme == "https" else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    # Percent-encode what may not appear raw (spaces, non-ASCII), keep existing escapes.
    target = quote(parts.path or "/", safe=_PATH_SAFE) + (
        f"?{quote(parts.query, safe=_PATH_SAFE)}" if parts.query else ""
    )
    return _Target((scheme, host, port), shown if default else f"{shown}:{port}", target)


class _Connection(asyncio.Protocol):
    """One kept-alive connection; parses the response to the request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._head_only = False
        self._reset_response()

    def _reset_response(self) -> None:
        self._status: int | None = None
        self._headers: dict[str, str] = {}
        self._length = -1  # Content-Length; -1: chunked or until close
        self._chunked = False
        self._chunks: list[bytes] = []
        self._keep_alive = True

    # ------------------------------------------------------------------ request

    def send(self, data: bytes, head_only: bool) -> asyncio.Future[Response]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._head_only = head_only
        self._reset_response()
        self.transport.write(data)
        return self._waiter

    def expire(self) -> None:
        """The request's deadline passed: fail it (the caller then drops the connection)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError("no complete response before the deadline"))

    def abort(self) -> None:
        self.closed = True
        self._waiter = None
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if self._status is not None and self._length < 0 and not self._chunked:
            waiter.set_result(Response(self._status, self._headers, bytes(self._buf)))
        else:
            reason = f": {exc}" if exc else ""
            waiter.set_exception(HttpConnectionError(f"server closed the connection{reason}"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection cannot be trusted
            self._fail("unexpected data from the server")
            return
        self._buf += data
        try:
            self._parse()
        except (ValueError, UnicodeDecodeError) as exc:
            self._fail(f"invalid HTTP response: {exc}")

    # ------------------------------------------------------------------ parsing

    def _parse(self) -> None:
        buf = self._buf
        while self._status is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ValueError("response head too large")
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            self._read_head(head)
        if self._chunked:
            self._read_chunks()
        elif self._length >= 0:
            if len(buf) >= self._length:
                body = bytes(buf[: self._length])
                del buf[: self._length]
                self._complete(body)
        # else: the body ends when the server closes (connection_lost)

    def _read_head(self, head: str) -> None:
        status_line, _, rest = head.partition("\r\n")
        version, _, code = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) < 3 or not code[:3].isdigit():
            raise ValueError(f"bad status line {status_line[:60]!r}")
        status = int(code[:3])
        headers: dict[str, str] = {}
        for line in rest.split("\r\n") if rest else ():
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            return  # interim (100 Continue, 103 Early Hints): the real answer follows
        connection = headers.get("connection", "").lower()
        self._keep_alive = (
            "close" not in connection if version != "HTTP/1.0" else "keep-alive" in connection
        )
        self._status, self._headers = status, headers
        if self._head_only or status in (204, 304):
            self._length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            self._length = int(headers["content-length"])
            if self._length < 0:
                raise ValueError("negative Content-Length")
        else:
            self._keep_alive = False  # delimited by close

    def _read_chunks(self) -> None:
        buf = self._buf
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(buf[:line_end]).split(b";", 1)[0].strip(), 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if buf[line_end : line_end + 4] == b"\r\n\r\n":
                    del buf[: line_end + 4]
                elif trailer_end >= 0:
                    del buf[: trailer_end + 4]
                else:
                    return
                self._complete(b"".join(self._chunks))
                return
            if len(buf) < line_end + 2 + size + 2:
                return
            self._chunks.append(bytes(buf[line_end + 2 : line_end + 2 + size]))
            del buf[: line_end + 2 + size + 2]

    def _complete(self, body: bytes) -> None:
        waiter, self._waiter = self._waiter, None
        if self._buf or not self._keep_alive:  # leftovers or a closing server: do not reuse
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        if waiter is not None and not waiter.done():
            assert self._status is not None
            waiter.set_result(Response(self._status, self._headers, body))

    def _fail(self, reason: str) -> None:
        waiter = self._waiter
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(HttpConnectionError(reason))


class _Pool:
    """Kept-alive connections to one origin, at most `limit` open; idle ones reused LIFO."""

    def __init__(self, origin: tuple[str, str, int], limit: int, ssl_context: ssl.SSLContext):
        self.scheme, self.host, self.port = origin
        self.limit = limit
        self.ssl = ssl_context if self.scheme == "https" else None
        self.idle: deque[_Connection] = deque()
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def idle_connection(self) -> _Connection | None:
        """A kept-alive connection ready for a request, without waiting (the common case)."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.open -= 1
        return None

    async def acquire(self) -> _Connection:
        while True:
            conn = self.idle_connection()
            if conn is not None:
                return conn
            if self.open < self.limit:
                break
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then timed out: pass the turn on
                raise
        self.open += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                _Connection,
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            )
        except BaseException:
            self.open -= 1
            self._wake()
            raise
        return conn

    def release(self, conn: _Connection) -> None:
        if conn.closed:
            self.open -= 1
        else:
            self.idle.append(conn)
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        while self.idle:
            self.idle.pop().abort()
            self.open -= 1


class Http1Client:
    """Pools of kept-alive HTTP/1.1 connections, one per origin."""

    def __init__(
        self,
        *,
        limit_per_origin: int = 100,
        user_agent: str = "herald",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limit = limit_per_origin
        self.user_agent = user_agent
        self._ssl = ssl_context or ssl.create_default_context()
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, _Target] = {}

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> Response:
        """One request. Raises ValueError for a request that cannot be sent (bad URL or
        header), TimeoutError, and OSError (HttpConnectionError among them) for the rest."""
        target = self._targets.get(url)
        if target is None:
            target = _parse_url(url)
            if len(self._targets) < 10_000:  # URLs are templated: bound the cache
                self._targets[url] = target
        method = method.upper()
        data = self._encode(method, target, body, headers)
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = self._pools[target.origin] = _Pool(target.origin, self.limit, self._ssl)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = pool.idle_connection()
        if conn is None:  # connecting, or waiting for one: rare, so asyncio's timeout is fine
            async with asyncio.timeout_at(deadline):
                conn = await pool.acquire()
        # A timer on the loop rather than asyncio.timeout() around the wait: the latter cost
        # ~10 µs a request in the deliver-everything profile.
        timer = loop.call_at(deadline, conn.expire)
        try:
            response = await conn.send(data, head_only=method == "HEAD")
        except BaseException:
            conn.abort()  # a late answer must not reach the next request
            pool.release(conn)
            raise
        finally:
            timer.cancel()
        pool.release(conn)
        return response

    def _encode(
        self, method: str, target: _Target, body: bytes | None, headers: dict[str, str] | None
    ) -> bytes:
        lines = [f"{method} {target.request_target} HTTP/1.1", f"Host: {target.host_header}"]
        has_agent = False
        for name, value in (headers or {}).items():
            if any(c in name for c in ":\r\n ") or "\r" in value or "\n" in value:
                raise ValueError(f"invalid header {name!r}")
            lower = name.lower()
            if lower in _FRAMING_HEADERS:
                continue  # framing is ours to set
            has_agent = has_agent or lower == "user-agent"
            lines.append(f"{name}: {value}")
        if not has_agent:
            lines.append(f"User-Agent: {self.user_agent}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body) if body else 0}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")  # as aiohttp does
        return head + body if body else head

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    async def __aenter__(self) -> Http1Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
