"""Connection checks: `herald check --connect`, and the worker's pre-flight at start.

Each active integration is tried the way the worker's clients will connect (TLS, SASL, the
advertised brokers) and, when it has one, its schema registry. A wrong password, a mechanism the
broker does not enable, an untrusted certificate or a host name mismatch is reported in one
line naming the integration, within seconds, and the worker refuses to start on it: the Kafka
client libraries would otherwise retry forever or fail with a stack trace. A broker that is
merely unreachable is only a warning at start (it may come up later; the clients retry).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import faust

from streams.config.models import HeraldConfig, Integration
from streams.security import ProbeResult, client_security, probe

log = logging.getLogger("herald.connect")
_T = TypeVar("_T")


def broker_credentials(integration: Integration) -> faust.types.auth.CredentialsT | None:
    """Faust's credentials for an integration: its consumer, producer and topic admin use
    them (faust passes them to aiokafka as security_protocol, ssl_context and sasl_*)."""
    security = client_security(integration)
    if security.uses_sasl:
        return faust.SASLCredentials(
            username=security.username,
            password=security.password,
            ssl_context=security.ssl_context,
            mechanism=security.mechanism,
        )
    if security.uses_tls:
        return faust.SSLCredentials(security.ssl_context)
    return None


@dataclass(frozen=True)
class IntegrationCheck:
    integration: str
    kafka: ProbeResult
    registry: ProbeResult | None = None

    @property
    def ok(self) -> bool:
        return self.kafka.ok and (self.registry is None or self.registry.ok)

    @property
    def permanent(self) -> bool:
        return self.kafka.permanent or (self.registry is not None and self.registry.permanent)

    def lines(self) -> list[str]:
        results = [self.kafka] + ([self.registry] if self.registry is not None else [])
        return [("OK    " if r.ok else "FAIL  ") + r.summary for r in results]


async def check_integration(integration: Integration, timeout: float = 10.0) -> IntegrationCheck:
    kafka, registry = await asyncio.gather(
        probe(integration, timeout=timeout), _probe_registry(integration, timeout)
    )
    return IntegrationCheck(integration.name, kafka, registry)


async def _probe_registry(integration: Integration, timeout: float) -> ProbeResult | None:
    if integration.schemaRegistry is None:
        return None
    try:
        from streams.avro.registry import probe_registry
    except ImportError:  # pragma: no cover - registry support not installed
        return None
    return await probe_registry(integration, timeout=timeout)


async def check_all(config: HeraldConfig, timeout: float = 10.0) -> list[IntegrationCheck]:
    """Every active integration, in parallel."""
    active = [i for i in config.integrations if i.active]
    return list(await asyncio.gather(*(check_integration(i, timeout) for i in active)))


def run_in_thread(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine on a fresh event loop in a helper thread.

    Used before Faust starts: `asyncio.run` in the main thread would leave it without a
    current event loop, which Faust's worker then fails to find.
    """
    result: list[_T] = []
    error: list[BaseException] = []

    async def main() -> _T:
        return await factory()

    def target() -> None:
        try:
            result.append(asyncio.run(main()))
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="herald-connect", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def check_connections(config: HeraldConfig, timeout: float = 10.0) -> tuple[bool, list[str]]:
    """What `herald check --connect` prints: (all ok, one line per integration and registry)."""
    checks = run_in_thread(lambda: check_all(config, timeout))
    lines = [line for check in checks for line in check.lines()]
    if not checks:
        lines.append("no active integration to check")
    return all(check.ok for check in checks), lines


def preflight(config: HeraldConfig, timeout: float = 10.0) -> list[str]:
    """Problems that must stop the worker (one line each); transient ones are logged only."""
    fatal: list[str] = []
    for check in run_in_thread(lambda: check_all(config, timeout)):
        for result in (check.kafka, check.registry):
            if result is None or result.ok:
                continue
            if result.permanent:
                fatal.append(result.summary)
            else:
                log.warning("%s (starting anyway; the clients keep retrying)", result.summary)
    return fatal
