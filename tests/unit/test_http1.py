"""streams.http1 against real servers on loopback: aiohttp's, and a raw one scripted byte by
byte for the framings aiohttp's server never sends (chunk extensions, trailers, interim
responses, close-delimited bodies, HTTP/1.0)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from streams.http1 import Http1Client, HttpConnectionError, InvalidURL
from tests.support.tls import make_pki

Script = Callable[[bytes], list[bytes] | None]  # request bytes -> response pieces (None: hang)


class RawServer:
    """Answers each request on a connection from `script`, writing the pieces separately."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                pieces = self.script(request)
                if pieces is None:
                    await asyncio.sleep(3600)
                for piece in pieces:
                    if piece == b"<close>":
                        writer.close()
                        return
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.005)  # separate reads on the client
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[RawServer]:
    server = RawServer(script)
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    try:
        yield server
    finally:
        server.server.close()


def run(coro_fn: Callable[[], object]) -> object:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


OK = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"hello"]


def test_content_length_body_and_connection_reuse() -> None:
    async def go() -> None:
        async with raw_server(lambda _: OK) as server, Http1Client() as client:
            for _ in range(3):
                response = await client.request("POST", server.url + "/x", body=b"{}", timeout=5)
                assert (response.status, response.body) == (200, b"hello")
            assert server.connections == 1
            first = server.requests[0]
            assert first.startswith(b"POST /x HTTP/1.1\r\n")
            assert b"Content-Length: 2\r\n" in first and first.endswith(b"\r\n\r\n{}")

    run(go)


def test_chunked_body_split_across_reads_with_extensions_and_trailers() -> None:
    pieces = [
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"4;ext=1\r\nab",
        b"cd\r\n3\r\nefg\r\n",
        b"0\r\nX-Trailer: t\r\n\r\n",
    ]

    async def go() -> None:
        async with raw_server(lambda _: pieces) as server, Http1Client() as client:
            first = await client.request("POST", server.url, body=b"", timeout=5)
            second = await client.request("POST", server.url, body=b"", timeout=5)
            assert (first.status, first.body) == (202, b"abcdefg")
            assert second.body == b"abcdefg"
            assert server.connections == 1

    run(go)


def test_body_delimited_by_close_and_no_reuse() -> None:
    pieces = [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ", b"part two", b"<close>"]

    async def go() -> None:
        async with raw_server(lambda _: pieces) as server, Http1Client() as client:
            for _ in range(2):
                response = await client.request("GET", server.url, timeout=5)
                assert response.body == b"part one, part two"
            assert server.connections == 2

    run(go)


def test_http10_answer_is_not_reused_and_interim_responses_are_skipped() -> None:
    pieces = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.0 201 Created\r\nContent-Length: 2\r\nRetry-After: 3\r\n\r\nok",
    ]

    async def go() -> None:
        async with raw_server(lambda _: pieces) as server, Http1Client() as client:
            for _ in range(2):
                response = await client.request("PUT", server.url, body=b"x", timeout=5)
                assert (response.status, response.body) == (201, b"ok")
                assert response.headers["retry-after"] == "3"
            assert server.connections == 2

    run(go)


def test_head_and_204_have_no_body() -> None:
    def script(request: bytes) -> list[bytes]:
        if request.startswith(b"HEAD"):
            return [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"]
        return [b"HTTP/1.1 204 No Content\r\n\r\n"]

    async def go() -> None:
        async with raw_server(script) as server, Http1Client() as client:
            head = await client.request("HEAD", server.url, timeout=5)
            empty = await client.request("DELETE", server.url, timeout=5)
            assert (head.status, head.body, empty.status, empty.body) == (200, b"", 204, b"")
            assert server.connections == 1

    run(go)


def test_a_request_that_gets_no_answer_times_out_and_its_connection_is_dropped() -> None:
    answers = iter([None, OK])

    async def go() -> None:
        async with raw_server(lambda _: next(answers)) as server, Http1Client() as client:
            with pytest.raises(TimeoutError):
                await client.request("POST", server.url, body=b"1", timeout=0.2)
            response = await client.request("POST", server.url, body=b"2", timeout=5)
            assert response.status == 200
            assert server.connections == 2  # the hung connection was not reused

    run(go)


def test_a_server_closing_an_idle_connection_costs_nothing() -> None:
    pieces = [*OK, b"<close>"]

    async def go() -> None:
        async with raw_server(lambda _: pieces) as server, Http1Client() as client:
            await client.request("POST", server.url, timeout=5)
            await asyncio.sleep(0.05)  # the close reaches the client while idle
            response = await client.request("POST", server.url, timeout=5)
            assert response.body == b"hello"
            assert server.connections == 2

    run(go)


def test_garbage_is_a_connection_error_and_refused_is_an_os_error() -> None:
    async def go() -> None:
        async with raw_server(lambda _: [b"SMTP ready\r\n\r\n"]) as server, Http1Client() as c:
            with pytest.raises(HttpConnectionError, match="bad status line"):
                await c.request("POST", server.url, timeout=5)
            port = server.server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with Http1Client() as client:
            with pytest.raises(OSError):
                await client.request("POST", f"http://127.0.0.1:{port}/", timeout=5)

    run(go)


def test_bad_urls_and_header_injection_are_refused_before_sending() -> None:
    async def go() -> None:
        async with Http1Client() as client:
            for url in ("http://", "ftp://example.com/", "http://host:99999/"):
                with pytest.raises(InvalidURL):
                    await client.request("GET", url, timeout=1)
            with pytest.raises(ValueError, match="invalid header"):
                await client.request(
                    "GET", "http://127.0.0.1:9/", headers={"X": "a\r\nEvil: 1"}, timeout=1
                )

    run(go)


def test_framing_headers_are_ours_and_paths_are_percent_encoded() -> None:
    async def go() -> None:
        async with raw_server(lambda _: OK) as server, Http1Client() as client:
            await client.request(
                "POST",
                server.url + "/a b/ü?q=1 2&x=%41",
                body=b"abc",
                headers={"Content-Length": "999", "Host": "evil", "X-Custom": "v"},
                timeout=5,
            )
            request = server.requests[0]
            assert request.startswith(b"POST /a%20b/%C3%BC?q=1%202&x=%41 HTTP/1.1\r\n")
            assert b"Content-Length: 3\r\n" in request and b"999" not in request
            assert b"evil" not in request and b"X-Custom: v\r\n" in request

    run(go)


def test_the_pool_opens_at_most_its_limit_and_serves_everyone() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.json_response({"n": (await request.json())["n"]}, status=202)

    async def go() -> None:
        app = web.Application()
        app.router.add_post("/api/events", slow)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        peers: set[int] = set()
        try:
            async with Http1Client(limit_per_origin=3) as client:

                async def one(n: int) -> int:
                    response = await client.request(
                        "POST",
                        f"http://127.0.0.1:{port}/api/events",
                        body=b'{"n": %d}' % n,
                        headers={"Content-Type": "application/json"},
                        timeout=5,
                    )
                    assert response.status == 202
                    return int(response.body.split(b":")[1].strip(b" }"))

                results = await asyncio.gather(*(one(n) for n in range(20)))
                pool = next(iter(client._pools.values()))
                peers = {id(c) for c in pool.idle}
                assert pool.open <= 3
        finally:
            await runner.cleanup()
        assert results == list(range(20))
        assert 1 <= len(peers) <= 3

    run(go)


def test_https_with_a_private_ca(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")

    async def go() -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(pki.path("server.pem"), pki.path("server.key"))

        async def answer(request: web.Request) -> web.Response:
            return web.Response(status=202, text="tls")

        app = web.Application()
        app.router.add_post("/", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            trusting = ssl.create_default_context(cafile=pki.ca)
            async with Http1Client(ssl_context=trusting) as client:
                response = await client.request("POST", f"https://localhost:{port}/", timeout=5)
                assert (response.status, response.body) == (202, b"tls")
            async with Http1Client() as untrusting:  # the system CAs do not know ours
                with pytest.raises(ssl.SSLCertVerificationError):
                    await untrusting.request("POST", f"https://localhost:{port}/", timeout=5)
        finally:
            await runner.cleanup()

    run(go)
