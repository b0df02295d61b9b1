"""A Kafka SASL authenticator in front of tansu, for tests.

tansu cannot authenticate (no users in memory storage, PLAIN not compiled in), so this gateway
does what a Kafka broker's SASL listener does, then relays the connection to tansu unchanged:

1. `ApiVersions` before authentication is relayed to tansu and its answer returned (tansu lists
   SaslHandshake v0-1 and SaslAuthenticate v0-2, so clients negotiate those).
2. `SaslHandshake` (v1) is answered here: error 33 UNSUPPORTED_SASL_MECHANISM and the enabled
   mechanisms when the client asks for another one.
3. `SaslAuthenticate` (v0-v2, v2 with flexible headers) runs the mechanism: PLAIN (RFC 4616)
   against the user table, or SCRAM-SHA-256/512 with `scramp`'s server implementation (RFC 5802:
   salted, iterated, the client's proof checked, the server signature sent). A failure is
   answered with error 58 SASL_AUTHENTICATION_FAILED and Kafka's message, then the connection is
   closed, as Kafka does.
4. Any other request before authentication closes the connection (Kafka does the same).
5. After success every byte is relayed both ways.

tansu is started advertising the gateway's address (or the TLS terminator's in front of it), so
metadata sends clients back through the gateway and nothing needs rewriting.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scramp import ScramException, ScramMechanism

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58

ALL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_FAILED = (
    "Authentication failed during authentication due to invalid credentials with SASL "
    "mechanism {mechanism}"
)
PLAIN_FAILED = "Authentication failed: Invalid username or password"


@dataclass
class GatewayStats:
    authenticated: list[tuple[str, str]] = field(default_factory=list)  # (mechanism, user)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rejected_mechanisms: list[str] = field(default_factory=list)


class _Closed(Exception):
    pass


class SaslGateway:
    """Listen on 127.0.0.1:`port`, authenticate, relay to `backend` (host, port)."""

    def __init__(
        self,
        backend: tuple[str, int],
        users: Mapping[str, str],
        *,
        mechanisms: Iterable[str] = ALL_MECHANISMS,
        port: int | None = None,
        iterations: int = 4096,
    ) -> None:
        self.backend = backend
        self.mechanisms = tuple(mechanisms)
        self.port = port or 0
        self.stats = GatewayStats()
        self._users = dict(users)
        self._scram = {
            name: ScramMechanism(name) for name in self.mechanisms if name.startswith("SCRAM")
        }
        # What a broker stores for SCRAM: salt, stored key, server key, iterations; never the
        # password itself.
        self._scram_credentials = {
            (name, user): mech.make_auth_info(password, iteration_count=iterations)
            for name, mech in self._scram.items()
            for user, password in self._users.items()
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> SaslGateway:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, "127.0.0.1", self.port)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="sasl-gateway", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    # ------------------------------------------------------------------ one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        backend: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            backend = await self._authenticate(reader, writer)
            if backend is not None:
                await self._relay(reader, writer, *backend)
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            if backend is not None:
                backend[1].close()

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        backend: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        mechanism: str | None = None
        scram_server = None
        scram_user = ""
        while True:
            frame = await _read_frame(reader)
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            if api_key == API_VERSIONS:
                if backend is None:
                    backend = await asyncio.open_connection(*self.backend)
                backend[1].write(struct.pack(">i", len(frame)) + frame)
                await backend[1].drain()
                writer.write(_framed(await _read_frame(backend[0])))
                await writer.drain()
                continue
            if api_key == SASL_HANDSHAKE:
                offset = _header_end(frame, flexible=False)
                requested, _ = _read_string(frame, offset)
                if requested in self.mechanisms:
                    mechanism, error = requested, 0
                    if requested in self._scram:
                        scram_server = self._scram[requested].make_server(
                            lambda user, m=requested: self._scram_credentials[(m, user)]
                        )
                else:
                    self.stats.rejected_mechanisms.append(requested or "")
                    error = UNSUPPORTED_SASL_MECHANISM
                body = struct.pack(">ih", correlation, error) + struct.pack(
                    ">i", len(self.mechanisms)
                )
                for name in self.mechanisms:
                    body += _string(name)
                writer.write(_framed(body))
                await writer.drain()
                continue
            if api_key == SASL_AUTHENTICATE:
                flexible = version >= 2
                offset = _header_end(frame, flexible=flexible)
                token = _read_auth_bytes(frame, offset, flexible)
                if mechanism is None:
                    await self._auth_reply(
                        writer,
                        correlation,
                        version,
                        ILLEGAL_SASL_STATE,
                        "SaslAuthenticate before SaslHandshake",
                        b"",
                    )
                    raise _Closed
                if mechanism == "PLAIN":
                    parts = token.split(b"\0")
                    user = parts[1].decode(errors="replace") if len(parts) == 3 else ""
                    ok = len(parts) == 3 and self._users.get(user) == parts[2].decode(
                        errors="replace"
                    )
                    if not ok:
                        self.stats.failed.append((mechanism, user))
                        await self._auth_reply(
                            writer,
                            correlation,
                            version,
                            SASL_AUTHENTICATION_FAILED,
                            PLAIN_FAILED,
                            b"",
                        )
                        raise _Closed
                    self.stats.authenticated.append((mechanism, user))
                    await self._auth_reply(writer, correlation, version, 0, None, b"")
                    break
                assert scram_server is not None
                text = token.decode(errors="replace")
                try:
                    if scram_server.stage is None:
                        scram_user = _scram_user(text) or ""
                        scram_server.set_client_first(text)
                        reply = scram_server.get_server_first()
                        await self._auth_reply(
                            writer, correlation, version, 0, None, reply.encode()
                        )
                        continue
                    scram_server.set_client_final(text)
                    reply = scram_server.get_server_final()
                except (ScramException, KeyError, ValueError):
                    self.stats.failed.append((mechanism, scram_user or _scram_user(text) or ""))
                    await self._auth_reply(
                        writer,
                        correlation,
                        version,
                        SASL_AUTHENTICATION_FAILED,
                        SCRAM_FAILED.format(mechanism=mechanism),
                        b"",
                    )
                    raise _Closed from None
                self.stats.authenticated.append((mechanism, scram_user))
                await self._auth_reply(writer, correlation, version, 0, None, reply.encode())
                break
            raise _Closed  # any other request before authentication: close, as Kafka does
        if backend is None:
            backend = await asyncio.open_connection(*self.backend)
        return backend

    async def _auth_reply(
        self,
        writer: asyncio.StreamWriter,
        correlation: int,
        version: int,
        error: int,
        message: str | None,
        data: bytes,
    ) -> None:
        if version >= 2:  # flexible: response header v1 (tagged fields), compact types
            body = struct.pack(">i", correlation) + b"\x00"
            body += struct.pack(">h", error) + _compact_nullable_string(message)
            body += _uvarint(len(data) + 1) + data + struct.pack(">q", 0) + b"\x00"
        else:
            body = struct.pack(">ih", correlation, error) + _nullable_string(message)
            body += struct.pack(">i", len(data)) + data
            if version >= 1:
                body += struct.pack(">q", 0)  # session_lifetime_ms: no re-authentication
        writer.write(_framed(body))
        await writer.drain()

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        backend_reader: asyncio.StreamReader,
        backend_writer: asyncio.StreamWriter,
    ) -> None:
        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        up = asyncio.ensure_future(pipe(reader, backend_writer))
        down = asyncio.ensure_future(pipe(backend_reader, writer))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            down.cancel()


# ---------------------------------------------------------------------- Kafka wire helpers


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _framed(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def _header_end(frame: bytes, *, flexible: bool) -> int:
    """Offset of the request body: after api key, version, correlation id, client id and, for
    flexible versions (request header v2), the tagged fields."""
    offset = 8
    (length,) = struct.unpack_from(">h", frame, offset)
    offset += 2 + max(length, 0)
    if flexible:
        offset = _skip_tagged_fields(frame, offset)
    return offset


def _read_uvarint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7


def _skip_tagged_fields(data: bytes, offset: int) -> int:
    count, offset = _read_uvarint(data, offset)
    for _ in range(count):
        _, offset = _read_uvarint(data, offset)
        size, offset = _read_uvarint(data, offset)
        offset += size
    return offset


def _read_string(data: bytes, offset: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", data, offset)
    offset += 2
    if length < 0:
        return None, offset
    return data[offset : offset + length].decode(), offset + length


def _read_auth_bytes(data: bytes, offset: int, flexible: bool) -> bytes:
    if flexible:
        size, offset = _read_uvarint(data, offset)
        return data[offset : offset + size - 1]
    (size,) = struct.unpack_from(">i", data, offset)
    return data[offset + 4 : offset + 4 + size]


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _nullable_string(text: str | None) -> bytes:
    return struct.pack(">h", -1) if text is None else _string(text)


def _compact_nullable_string(text: str | None) -> bytes:
    if text is None:
        return b"\x00"
    raw = text.encode()
    return _uvarint(len(raw) + 1) + raw


def _scram_user(client_first: str) -> str | None:
    for part in client_first.split(","):
        if part.startswith("n=") and len(part) > 2:
            return part[2:].replace("=2C", ",").replace("=3D", "=")
    return None
