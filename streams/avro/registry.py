"""An async client of the Confluent Schema Registry REST API, with the caches a serde needs.

Written on aiohttp rather than python-schema-registry-client because Herald must tell a
registry outage (retry, never dead-letter) from a schema that does not exist (dead-letter):
that library answers None for a 503 as for a 404 on subject lookups.

Authentication (`schemaRegistry.authType`): NONE; USER_INFO sends apiKey/apiSecret as HTTP
basic auth; PASSWORD_IN_URL takes `user:password@` from the URL (percent-decoded) and sends it
as HTTP basic auth, so the URL Herald logs never carries the password. HTTPS trusts the
integration's truststore when it has one, else the system CAs.

Errors: `RegistryError` with the HTTP status, Confluent's `error_code` and message.
`unavailable` is true for what retrying can fix: no connection, timeouts, 5xx, 429, 408.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp

from streams.avro.schemas import Schema, SchemaError, parse
from streams.config.models import Integration, SchemaRegistryAuthType
from streams.errors import HeraldError

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPT = (
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json; q=0.9, "
    "application/json; q=0.5"
)
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
LATEST_TTL = 60.0  # seconds a "latest version" answer is reused


class RegistryError(HeraldError):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: int | None = None,
        unavailable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.unavailable = unavailable

    @property
    def auth(self) -> bool:
        return self.status in (401, 403)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _credentials(integration: Integration) -> tuple[str, str | None]:
    """(URL without credentials, the Authorization header or None)."""
    registry = integration.schemaRegistry
    assert registry is not None
    parts = urlsplit(registry.url.strip())
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    auth = None
    if registry.authType is SchemaRegistryAuthType.USER_INFO:
        assert registry.apiKey is not None and registry.apiSecret is not None
        auth = _basic(registry.apiKey.get_secret_value(), registry.apiSecret.get_secret_value())
    elif registry.authType is SchemaRegistryAuthType.PASSWORD_IN_URL or parts.username:
        auth = _basic(unquote(parts.username or ""), unquote(parts.password or ""))
    return url, auth


class RegistryClient:
    """One registry, as one integration sees it (its auth, its TLS)."""

    def __init__(self, integration: Integration, *, timeout: float = 10.0) -> None:
        self.integration = integration.name
        self.url, self._auth = _credentials(integration)
        self._ssl: ssl.SSLContext | None = None
        if self.url.lower().startswith("https:"):
            from streams.security import registry_ssl_context

            self._ssl = registry_ssl_context(integration)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._by_id: dict[int, Schema] = {}
        self._ids: dict[tuple[str, str], int] = {}  # (subject, schema text) -> id
        self._versions: dict[tuple[str, int], tuple[int, Schema]] = {}
        self._latest: dict[str, tuple[float, int, Schema]] = {}
        self._locks: dict[Any, asyncio.Lock] = {}

    def where(self) -> str:
        return f"schema registry {self.url} (integration {self.integration!r})"

    # ------------------------------------------------------------------ API

    def cached(self, schema_id: int) -> Schema | None:
        return self._by_id.get(schema_id)

    async def schema_by_id(self, schema_id: int) -> Schema:
        """GET /schemas/ids/{id}: the writer schema of a message."""
        schema = self._by_id.get(schema_id)
        if schema is not None:
            return schema
        async with self._lock(("id", schema_id)):
            if schema_id not in self._by_id:
                body = await self._request("GET", f"/schemas/ids/{schema_id}")
                self._by_id[schema_id] = self._schema(body, f"schema id {schema_id}")
        return self._by_id[schema_id]

    async def register(self, subject: str, schema: Schema) -> int:
        """POST /subjects/{subject}/versions: the id (an already registered schema keeps its)."""
        key = (subject, schema.text)
        if key in self._ids:
            return self._ids[key]
        body = await self._request(
            "POST", f"/subjects/{quote(subject, safe='')}/versions", {"schema": schema.text}
        )
        return self._remember(key, schema, body)

    async def lookup(self, subject: str, schema: Schema) -> int:
        """POST /subjects/{subject}: the id of a schema already registered under the subject."""
        key = (subject, schema.text)
        if key in self._ids:
            return self._ids[key]
        body = await self._request(
            "POST", f"/subjects/{quote(subject, safe='')}", {"schema": schema.text}
        )
        return self._remember(key, schema, body)

    async def version(self, subject: str, version: int | str = "latest") -> tuple[int, Schema]:
        """GET /subjects/{subject}/versions/{version}: (id, schema)."""
        now = time.monotonic()
        if version == "latest":
            hit = self._latest.get(subject)
            if hit is not None and hit[0] > now:
                return hit[1], hit[2]
        elif (subject, int(version)) in self._versions:
            return self._versions[(subject, int(version))]
        body = await self._request(
            "GET", f"/subjects/{quote(subject, safe='')}/versions/{quote(str(version), safe='')}"
        )
        schema_id = int(body["id"])
        schema = self._by_id.get(schema_id) or self._schema(body, f"{subject} v{version}")
        self._by_id[schema_id] = schema
        if version == "latest":
            self._latest[subject] = (now + LATEST_TTL, schema_id, schema)
        else:
            self._versions[(subject, int(version))] = (schema_id, schema)
        return schema_id, schema

    async def schema_types(self) -> Any:
        """GET /schemas/types: a cheap authenticated call, for connection checks."""
        return await self._request("GET", "/schemas/types")

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    # ------------------------------------------------------------------ internals

    def _lock(self, key: Any) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _remember(self, key: tuple[str, str], schema: Schema, body: Any) -> int:
        schema_id = int(body["id"])
        self._ids[key] = schema_id
        self._by_id.setdefault(schema_id, schema)
        return schema_id

    def _schema(self, body: Any, what: str) -> Schema:
        schema_type = body.get("schemaType", "AVRO") if isinstance(body, dict) else None
        if schema_type != "AVRO":
            raise RegistryError(
                f"{self.where()}: {what} is a {schema_type} schema, not Avro", status=200
            )
        try:
            return parse(body["schema"])
        except (SchemaError, KeyError) as exc:
            raise RegistryError(
                f"{self.where()}: {what} is not a usable Avro schema: {exc}"
            ) from None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": ACCEPT}
            if self._auth:
                headers["Authorization"] = self._auth
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl else None),
                headers=headers,
            )
        return self._session

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        url = self.url + path
        kwargs: dict[str, Any] = {}
        if body is not None:
            import json

            kwargs["data"] = json.dumps(body)
            kwargs["headers"] = {"Content-Type": CONTENT_TYPE}
        try:
            async with self._client().request(method, url, **kwargs) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise RegistryError(
                f"{self.where()}: TLS certificate not trusted ({exc.certificate_error}); set the "
                "integration's truststore to the registry's CA",
                unavailable=False,
            ) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = str(exc) or exc.__class__.__name__
            raise RegistryError(
                f"{self.where()}: unreachable ({reason})", unavailable=True
            ) from None
        data: Any = None
        try:
            import json

            data = json.loads(text) if text else None
        except ValueError:
            data = None
        if 200 <= status < 300:
            return data
        code = data.get("error_code") if isinstance(data, dict) else None
        message = data.get("message") if isinstance(data, dict) else None
        message = message or (text[:200] if text else response.reason) or "no body"
        unavailable = status >= 500 or status in (408, 429)
        hint = ""
        if status in (401, 403):
            hint = "; check schemaRegistry.authType, apiKey and apiSecret"
        raise RegistryError(
            f"{self.where()}: {method} {path} answered {status}"
            + (f" (error {code})" if code else "")
            + f": {message}{hint}",
            status=status,
            error_code=code if isinstance(code, int) else None,
            unavailable=unavailable,
        )


async def probe_registry(integration: Integration, *, timeout: float = 10.0):  # noqa: ANN201
    """Connection check of the integration's registry: reachable, TLS trusted, auth accepted."""
    from streams.security import ProbeResult, Problem, redact

    client = RegistryClient(integration, timeout=timeout)
    try:
        await client.schema_types()
    except RegistryError as exc:
        if exc.status == 404:  # a registry older than /schemas/types: reachable all the same
            return ProbeResult(integration.name, True, f"{client.where()}: reachable")
        kind = "authentication" if exc.auth else ("unreachable" if exc.unavailable else "tls")
        problem = Problem(kind, redact(str(exc), integration))
        return ProbeResult(integration.name, False, problem.message, (problem,))
    finally:
        await client.close()
    return ProbeResult(integration.name, True, f"{client.where()}: reachable, credentials accepted")
