"""A loopback HTTP server speaking the Confluent Schema Registry REST API, for tests.

It follows Confluent's documented API (status codes, `error_code`s, bodies, the
`application/vnd.schemaregistry.v1+json` content type) for what Herald and Confluent's clients
use, so a test against it says something about a real registry:

    GET  /schemas/ids/{id}                       {"schema": "..."}; 404 40403 "Schema not found"
    GET  /schemas/ids/{id}/versions              [{"subject", "version"}]
    GET  /schemas/types                          ["JSON", "PROTOBUF", "AVRO"]
    GET  /subjects                               ["s1", ...]
    GET  /subjects/{s}/versions                  [1, 2]; 404 40401
    GET  /subjects/{s}/versions/{v|latest|-1}    {"subject", "id", "version", "schema"};
                                                 404 40401 / 40402; 422 42202 invalid version
    GET  /subjects/{s}/versions/{v}/schema       the schema text itself
    POST /subjects/{s}/versions                  {"id": N}; 422 42201 invalid schema;
                                                 the same schema again keeps its id, and the
                                                 same schema under another subject its global id
    POST /subjects/{s}                           lookup: {"subject", "id", "version", "schema"};
                                                 404 40401 subject / 40403 schema not found
    GET  /config                                 {"compatibilityLevel": "BACKWARD"}

Compatibility is not checked (every new schema is a new version). With `users` set, every
request needs HTTP basic auth (401 `{"error_code": 401, "message": "Unauthorized"}`). Setting
`unavailable = True` answers 503 (error 50003) to everything, for outage tests; `tls` serves
HTTPS with the given certificate. Schema types other than AVRO are refused with 42201.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
from collections.abc import Mapping
from typing import Any

from aiohttp import web

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _canonical(schema_text: str) -> str:
    return json.dumps(json.loads(schema_text), separators=(",", ":"))


class SchemaRegistryServer:
    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.users = dict(users or {})
        self.tls = tls
        self.unavailable = False
        self.port = 0
        self.schemas: dict[int, str] = {}  # id -> canonical schema text
        self.subjects: dict[str, list[int]] = {}  # subject -> schema id per version
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ direct access

    def register(self, subject: str, schema: Any) -> int:
        """Register without HTTP (test setup); returns the id."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        with self._lock:
            return self._register(subject, _canonical(text))

    def _register(self, subject: str, canonical: str) -> int:
        schema_id = next((i for i, s in self.schemas.items() if s == canonical), None)
        if schema_id is None:
            schema_id = max(self.schemas, default=0) + 1
            self.schemas[schema_id] = canonical
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> SchemaRegistryServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())  # type: ignore[union-attr]
            loop.close()

        self._thread = threading.Thread(target=run, name="schema-registry", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        if failure:
            raise failure[0]
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = None
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop = None

    # ------------------------------------------------------------------ HTTP

    @staticmethod
    def _json(status: int, body: Any) -> web.Response:
        return web.Response(
            status=status, body=json.dumps(body).encode(), headers={"Content-Type": CONTENT_TYPE}
        )

    def _error(self, status: int, code: int, message: str) -> web.Response:
        return self._json(status, {"error_code": code, "message": message})

    def _authorized(self, request: web.Request) -> bool:
        if not self.users:
            return True
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return self.users.get(user) == password

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        if self.unavailable:
            return self._error(503, 50003, "Error while forwarding the request to the leader")
        if not self._authorized(request):
            return self._error(401, 401, "Unauthorized")
        parts = [p for p in request.path.split("/") if p]
        body: Any = None
        if request.method == "POST":
            try:
                body = json.loads(await request.text())
            except ValueError:
                return self._error(400, 400, "Unexpected character: malformed JSON")
        with self._lock:
            return self._route(request.method, parts, body)

    def _route(self, method: str, parts: list[str], body: Any) -> web.Response:
        match method, parts:
            case "GET", ["schemas", "types"]:
                return self._json(200, ["JSON", "PROTOBUF", "AVRO"])
            case "GET", ["config"]:
                return self._json(200, {"compatibilityLevel": "BACKWARD"})
            case "GET", ["schemas", "ids", ident]:
                schema = self.schemas.get(int(ident)) if ident.isdigit() else None
                if schema is None:
                    return self._error(404, 40403, "Schema not found")
                return self._json(200, {"schema": schema})
            case "GET", ["schemas", "ids", ident, "versions"]:
                if not ident.isdigit() or int(ident) not in self.schemas:
                    return self._error(404, 40403, "Schema not found")
                return self._json(
                    200,
                    [
                        {"subject": s, "version": v.index(int(ident)) + 1}
                        for s, v in self.subjects.items()
                        if int(ident) in v
                    ],
                )
            case "GET", ["subjects"]:
                return self._json(200, sorted(self.subjects))
            case "GET", ["subjects", subject, "versions"]:
                if subject not in self.subjects:
                    return self._error(404, 40401, f"Subject '{subject}' not found.")
                return self._json(200, list(range(1, len(self.subjects[subject]) + 1)))
            case "GET", ["subjects", subject, "versions", version, *rest] if rest in (
                [],
                ["schema"],
            ):
                return self._version(subject, version, raw=bool(rest))
            case "POST", ["subjects", subject, "versions"]:
                return self._post_register(subject, body)
            case "POST", ["subjects", subject]:
                return self._post_lookup(subject, body)
        return self._error(404, 404, "HTTP 404 Not Found")

    def _version(self, subject: str, version: str, *, raw: bool) -> web.Response:
        if version in ("latest", "-1"):
            number = None
        elif version.isdigit() and int(version) >= 1:
            number = int(version)
        else:
            return self._error(
                422,
                42202,
                f"The specified version '{version}' is not a valid version id. Allowed values "
                'are between [1, 2^31-1] and the string "latest"',
            )
        versions = self.subjects.get(subject)
        if not versions:
            return self._error(404, 40401, f"Subject '{subject}' not found.")
        number = number or len(versions)
        if number > len(versions):
            return self._error(404, 40402, f"Version {number} not found.")
        schema_id = versions[number - 1]
        if raw:
            return web.Response(
                status=200,
                body=self.schemas[schema_id].encode(),
                headers={"Content-Type": CONTENT_TYPE},
            )
        return self._json(
            200,
            {
                "subject": subject,
                "version": number,
                "id": schema_id,
                "schema": self.schemas[schema_id],
            },
        )

    def _parse_schema(self, body: Any) -> str | web.Response:
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            return self._error(422, 42201, "Invalid schema: the body needs a schema string")
        if body.get("schemaType", "AVRO") != "AVRO":
            return self._error(422, 42201, f"Invalid schema type {body.get('schemaType')}")
        import fastavro

        try:
            fastavro.parse_schema(json.loads(body["schema"]))
        except Exception as exc:
            return self._error(422, 42201, f"Invalid schema {body['schema'][:100]}: {exc}")
        return _canonical(body["schema"])

    def _post_register(self, subject: str, body: Any) -> web.Response:
        canonical = self._parse_schema(body)
        if isinstance(canonical, web.Response):
            return canonical
        return self._json(200, {"id": self._register(subject, canonical)})

    def _post_lookup(self, subject: str, body: Any) -> web.Response:
        canonical = self._parse_schema(body)
        if isinstance(canonical, web.Response):
            return canonical
        versions = self.subjects.get(subject)
        if not versions:
            return self._error(404, 40401, f"Subject '{subject}' not found.")
        for index, schema_id in enumerate(versions):
            if self.schemas[schema_id] == canonical:
                return self._json(
                    200,
                    {
                        "subject": subject,
                        "id": schema_id,
                        "version": index + 1,
                        "schema": canonical,
                    },
                )
        return self._error(404, 40403, "Schema not found")
