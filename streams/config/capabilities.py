"""What this version of Herald can run: checked at start so a worker refuses clearly.

Every integration field is parsed and validated by the models; this module checks what needs
more than the model: that truststores and client certificates can be loaded (file present,
password right), and refuses what is not implemented, naming the field, instead of misbehaving
at runtime. It never connects anywhere (`herald check --connect` does that).
"""

from __future__ import annotations

from streams.config.models import (
    EVENT_PATTERN,
    HeraldConfig,
    Integration,
    SendingProtocol,
    SubjectNameStrategy,
    TruststoreType,
)
from streams.errors import ConfigError


def check_supported(config: HeraldConfig, file: str) -> None:
    """Raise ConfigError listing every problem, each naming the file and the field."""
    from streams.security import SecurityError, build_ssl_context

    problems = []
    for i, integration in enumerate(config.integrations):
        where = f"{file}: integrations[{i}](name={integration.name})"
        needs_tls = integration.security_protocol in ("SSL", "SASL_SSL")
        registry = integration.schemaRegistry
        registry_tls = registry is not None and registry.url.lower().startswith("https:")
        if needs_tls or registry_tls or integration.truststoreType is not TruststoreType.NONE:
            try:
                build_ssl_context(integration, warn=False)
            except SecurityError as exc:
                problems.append(f"{where}: {exc}")
    for i, handler in enumerate(config.eventHandlers):
        for j, action in enumerate(handler.actions):
            if action.action == "publish":
                where = f"{file}: eventHandlers[{i}](name={handler.name}).actions[{j}].publish"
                problems.extend(_avro_publish_problems(config, action.params, where))
    # Inactive handlers count: a `herald rules put` can activate them.
    consumed = {config.integration(h.integration_name).name for h in config.eventHandlers}
    for name, problem in sorted(group_conflicts(config, consumed).items()):
        i = next(i for i, x in enumerate(config.integrations) if x.name == name)
        problems.append(f"{file}: integrations[{i}](name={name}).consumerGroupId: {problem}")
    if problems:
        raise ConfigError(problems)


def same_cluster(a: Integration, b: Integration) -> bool:
    """Two integrations name the same brokers (compared as sets of host:port)."""
    return _servers(a) & _servers(b) != set()


def _servers(integration: Integration) -> set[str]:
    return {s.strip().lower() for s in integration.bootstrapServers.split(",") if s.strip()}


def group_conflicts(config: HeraldConfig, consumed: set[str]) -> dict[str, str]:
    """Integrations that would consume in a consumer group another consumed integration of
    the same cluster already uses (the home integration's consumer always runs: it reads the
    actions topic), each with the fix. Every integration is consumed by a consumer of its
    own (agents.integration_source), so two of them in one group on one cluster would take
    each other's partitions."""
    home = config.home
    taken = [home]
    conflicts: dict[str, str] = {}
    for integration in sorted(config.integrations, key=lambda x: x.name):
        if integration.name == home.name or integration.name not in consumed:
            continue
        if not integration.active:
            continue
        for other in taken:
            if other.consumerGroupId == integration.consumerGroupId and same_cluster(
                other, integration
            ):
                conflicts[integration.name] = (
                    f"integration {integration.name!r} is consumed on the same cluster as "
                    f"integration {other.name!r} ({other.bootstrapServers}) in the same "
                    f"consumer group {integration.consumerGroupId!r}; the two would take each "
                    f"other's partitions: give {integration.name!r} a consumerGroupId of its own"
                )
                break
        else:
            taken.append(integration)
    return conflicts


def _avro_publish_problems(config: HeraldConfig, params: dict, where: str) -> list[str]:
    """A publish that will be written as Avro needs a registry and a way to find its schema.
    Only checked when the destination is not a template."""
    match = EVENT_PATTERN.match(str(params.get("to") or ""))
    if not match or "${" in (match.group("integration") or ""):
        return []
    try:
        integration = config.integration(match.group("integration"))
    except LookupError:
        return [f"{where}.to: no integration named {match.group('integration')!r}"]
    fmt = params.get("format", "auto")
    explicit = fmt == "avro" or params.get("schema") is not None or params.get("schemaSubject")
    avro = explicit or (fmt == "auto" and integration.sendingProtocol is SendingProtocol.AVRO)
    if not avro:
        return []
    registry = integration.schemaRegistry
    if registry is None:
        return [
            f"{where}: writing Avro to integration {integration.name!r} needs its "
            "schemaRegistry; configure it, or set format: json"
        ]
    if (
        params.get("schema") is None
        and not params.get("schemaSubject")
        and registry.valueSubjectNameStrategy is not SubjectNameStrategy.TOPIC
    ):
        return [
            f"{where}: integration {integration.name!r} names subjects with "
            f"{registry.valueSubjectNameStrategy.value}, which needs the record's name; set "
            "schema (or schemaSubject)"
        ]
    return []
