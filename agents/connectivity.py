"""Connection checks: `herald check --connect`, and the worker's pre-flight at start.

Each active integration is tried the way the worker's clients will connect (TLS, SASL, the
advertised brokers) and, when it has one, its schema registry. A wrong password, a mechanism the
broker does not enable, an untrusted certificate or a host name mismatch is reported in one
line naming the integration, within seconds, and the worker refuses to start on it: the Kafka
client libraries would otherwise retry forever or fail with a stack trace. A broker that is
merely unreachable is only a warning at start (it may come up later; the clients retry).

Once connected, the broker is asked what the integration's principal may do
(streams.authorization): a missing READ on a source topic or the consumer group, or WRITE on
an internal topic, is one line naming the integration, the resource and the permission. A
worker does not exit on it: it says so and waits, consuming nothing, until the permission is
granted, then starts (an operator fixes ACLs on a live cluster; a restart loop would only hide
the message in a back-off).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import faust

from streams.authorization import Need, describe_denial, find_denials, required_access
from streams.config.models import HeraldConfig, Integration
from streams.security import (
    AUTHORIZATION,
    ProbeResult,
    Problem,
    classify,
    client_security,
    connector,
    probe,
)

log = logging.getLogger("herald.connect")
_T = TypeVar("_T")

#: How often a waiting worker asks the broker again whether the missing ACLs were granted.
ACCESS_RECHECK_SECONDS = 3.0
#: A waiting worker repeats what it waits for this often even when nothing changed.
ACCESS_REMIND_SECONDS = 60.0


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
    access: ProbeResult | None = None  # None: not asked (the connection failed, or no needs)

    @property
    def ok(self) -> bool:
        return (
            self.kafka.ok
            and (self.registry is None or self.registry.ok)
            and (self.access is None or self.access.ok)
        )

    @property
    def permanent(self) -> bool:
        return self.kafka.permanent or (self.registry is not None and self.registry.permanent)

    def lines(self) -> list[str]:
        results = [self.kafka] + ([self.registry] if self.registry is not None else [])
        lines = [("OK    " if r.ok else "FAIL  ") + r.summary for r in results]
        if self.access is not None:
            if self.access.ok:
                lines.append("OK    " + self.access.summary)
            lines += ["FAIL  " + problem.message for problem in self.access.problems]
        return lines

    @property
    def denials(self) -> list[str]:
        """The missing permissions, one line each (empty when all were granted)."""
        return [p.message for p in self.access.problems] if self.access is not None else []


async def check_integration(
    integration: Integration,
    timeout: float = 10.0,
    needs: list[Need] | None = None,
    config: HeraldConfig | None = None,
) -> IntegrationCheck:
    """Connect (and reach the registry); then, when connected, ask for `needs`."""
    kafka, registry = await asyncio.gather(
        probe(integration, timeout=timeout), _probe_registry(integration, timeout)
    )
    access = None
    if kafka.ok and needs:
        access = await check_access(integration, needs, timeout, config)
    return IntegrationCheck(integration.name, kafka, registry, access)


async def check_access(
    integration: Integration,
    needs: list[Need],
    timeout: float = 10.0,
    config: HeraldConfig | None = None,
) -> ProbeResult:
    """What of `needs` the broker refuses the integration's principal: one Problem each.

    A failure to ask (the broker went away in between) is not reported as a denial: the
    connection probe speaks for that."""
    settings = client_security(integration)
    herald = config.herald if config is not None else None
    try:
        denials = await find_denials(
            integration,
            needs,
            connector(settings, timeout),
            timeout,
            partitions=herald.actionPartitions if herald else 1,
            replication=herald.replicationFactor if herald else 1,
        )
    except Exception as exc:
        problem = classify(exc, integration, integration.bootstrapServers)
        log.warning("%s (while checking permissions)", problem.message)
        return ProbeResult(integration.name, True, _granted(integration, needs))
    if not denials:
        return ProbeResult(integration.name, True, _granted(integration, needs))
    problems = tuple(Problem(AUTHORIZATION, describe_denial(d, integration)) for d in denials)
    return ProbeResult(integration.name, False, problems[0].message, problems)


def _granted(integration: Integration, needs: list[Need]) -> str:
    topics = sum(1 for n in needs if n.resource == "topic")
    groups = sum(1 for n in needs if n.resource == "group")
    # "None refused", not "all granted": a broker that cannot say (too old, not Kafka) is
    # not reported as refusing.
    return (
        f"integration {integration.name!r}: the broker refused none of the permissions it "
        f"needs on {topics} topic(s) and {groups} group(s)"
    )


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
    needs = required_access(config)
    return list(
        await asyncio.gather(
            *(check_integration(i, timeout, needs.get(i.name), config) for i in active)
        )
    )


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


def preflight(
    config: HeraldConfig,
    timeout: float = 10.0,
    *,
    recheck_seconds: float = ACCESS_RECHECK_SECONDS,
) -> list[str]:
    """Problems that must stop the worker (one line each); transient ones are logged only.

    Missing permissions do not stop it: they are printed, and this waits (nothing consumed,
    no web server, so /ready does not answer) until the broker grants them all, then
    returns so the worker starts."""
    fatal: list[str] = []
    home = config.home.name
    checks = run_in_thread(lambda: check_all(config, timeout))
    for check in checks:
        for result in (check.kafka, check.registry):
            if result is None or result.ok:
                continue
            if result.permanent and check.integration == home:
                fatal.append(result.summary)
            elif result.permanent:
                # Another cluster: only its own handlers wait (agents.integration_source
                # retries and /ready shows the error); the rest of the worker starts.
                _say(
                    f"herald: {result.summary} (integration {check.integration!r} is not "
                    "consumed until this is fixed; the other integrations start)"
                )
            else:
                log.warning("%s (starting anyway; the clients keep retrying)", result.summary)
    if not fatal:
        home_checks = [check for check in checks if check.integration == home]
        for check in checks:
            if check.integration != home:
                for line in check.denials:
                    _say(f"herald: {line} (integration {check.integration!r} waits for it)")
        _wait_for_access(config, home_checks, timeout, recheck_seconds)
    return fatal


def _wait_for_access(
    config: HeraldConfig, checks: list[IntegrationCheck], timeout: float, recheck: float
) -> None:
    """Until no check has a denial: print them when they change (and every minute)."""
    by_name = {i.name: i for i in config.integrations}
    needs = required_access(config)
    waiting = {c.integration: c.denials for c in checks if c.denials}
    shown: list[str] = []
    shown_at = 0.0
    while waiting:
        lines = [line for denials in waiting.values() for line in denials]
        if lines != shown or time.monotonic() - shown_at > ACCESS_REMIND_SECONDS:
            for line in lines:
                _say(f"herald: {line}")
            _say(
                f"herald: waiting for {len(lines)} missing permission(s) to be granted; "
                f"nothing is consumed until then (checking every {recheck:g} s)"
            )
            shown, shown_at = lines, time.monotonic()
        time.sleep(recheck)
        for name in list(waiting):
            integration = by_name[name]
            result = run_in_thread(
                lambda integration=integration: check_access(
                    integration, needs[integration.name], timeout, config
                )
            )
            if result.ok:
                del waiting[name]
            else:
                waiting[name] = [p.message for p in result.problems]
    if shown:
        _say("herald: the missing permissions were granted; starting")


def _say(line: str) -> None:
    """To stderr at once: this runs before Faust configures logging."""
    print(line, file=sys.stderr, flush=True)
