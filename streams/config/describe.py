"""What `herald check` prints: the plan a configuration describes, without secrets.

Integrations, the topics Herald will consume, targets, handlers with their actions, and
Herald's internal topics. Secret fields print as ***, URL passwords and header values are
masked.
"""

from __future__ import annotations

import re
from typing import Any

from streams.actions import registry
from streams.config.loader import SECRET_FIELDS
from streams.config.models import Action, HeraldConfig, Integration, Target
from streams.secrets import MASK


def consumed_topics(config: HeraldConfig) -> dict[str, list[str]]:
    """Integration name → the topics its active handlers consume, in configuration order."""
    topics: dict[str, list[str]] = {}
    for handler in config.eventHandlers:
        if handler.active:
            integration = handler.integration_name or config.home.name
            names = topics.setdefault(integration, [])
            if handler.topic not in names:
                names.append(handler.topic)
    return topics


def internal_topics(config: HeraldConfig) -> list[str]:
    """Herald's own topics (on the home integration's cluster), dead-letter topics only for
    integrations that have active handlers."""
    from streams.topicnames import actions_name, dlq_name, executions_name, rules_name

    fixed = [actions_name(config), rules_name(config), executions_name(config)]
    return fixed + [dlq_name(config, name) for name in consumed_topics(config)]


def describe(config: HeraldConfig) -> str:
    """What `herald check` prints: what Herald will connect to, consume and do. No secrets:
    secret fields print as ***, URL passwords and header values are masked."""
    sections = [
        _describe_settings(config),
        _describe_integrations(config),
        _describe_targets(config),
        _describe_handlers(config),
        [f"Internal topics (on {config.home.name}):"]
        + [f"  {topic}" for topic in internal_topics(config)],
    ]
    return "\n\n".join("\n".join(lines) for lines in sections)


def _describe_settings(config: HeraldConfig) -> list[str]:
    s = config.herald
    return [
        "Herald:",
        f"  home integration: {config.home.name}",
        f"  topic prefix: {s.topicPrefix}",
        f"  action partitions: {s.actionPartitions}, max in flight: {s.maxInFlight}",
        f"  condition limits: {s.conditionTimeLimitMs} ms, {s.conditionMemoryLimitMb} MB",
        f"  data dir: {s.dataDir}, web port: {s.webPort}",
        f"  execution retention: {s.executionRetentionSeconds:g} s",
        *(
            f"  heartbeat: {ping.target} every {ping.intervalSeconds:g} s (leader worker)"
            for ping in s.heartbeats
        ),
        *(
            [f"  ilert event API (ilagent's): POST /api/events -> {s.ilertProxy.target}"]
            if s.ilertProxy
            else []
        ),
        *(
            [
                "  admin API: /api/event, /api/applications, /api/groups, "
                f"/api/auth/authorization (admin key {MASK}, tokens for "
                f"{s.admin.tokenTtlSeconds} s)"
            ]
            if s.admin
            else []
        ),
    ]


def _describe_integrations(config: HeraldConfig) -> list[str]:
    from streams.topicnames import actions_name, dlq_name

    consumed = consumed_topics(config)
    home = config.home.name
    lines = [f"Integrations ({len(config.integrations)}):"]
    for integ in config.integrations:
        security = integ.security_protocol
        if integ.sasl_mechanism:
            security += f" / {integ.sasl_mechanism}"
        lines += [
            f"  {integ.name}" + (f"  ({integ.description})" if integ.description else ""),
            f"    bootstrap: {_mask_url(integ.bootstrapServers)}",
            f"    security: {security}",
            f"    protocol: {integ.sendingProtocol.value}",
            f"    group: {integ.consumerGroupId}",
            f"    active: {_yes(integ.active)}",
        ]
        if integ.username:
            lines.append(f"    username: {integ.username}")
        if integ.password:
            lines.append(f"    password: {MASK}")
        if integ.truststoreType.value != "NONE":
            stored = f", password: {MASK}" if integ.truststorePassword else ""
            lines.append(
                f"    truststore: {integ.truststoreType.value} {integ.truststorePath}" + stored
            )
        if integ.sslClientCertificatePath:
            lines.append(f"    client certificate: {integ.sslClientCertificatePath}")
        if not integ.sslHostnameVerification:
            lines.append("    TLS hostname verification: OFF (not recommended)")
        if integ.schemaRegistry is not None:
            lines.append(f"    schema registry: {_describe_registry(integ)}")
        topics = consumed.get(integ.name)
        lines.append(f"    consumes: {', '.join(topics) if topics else '(no active handler)'}")
        if topics:
            where = "" if integ.name == home else f" (both on {home}, the home integration)"
            lines.append(
                f"    actions go to: {actions_name(config)}, dead letters to "
                f"{dlq_name(config, integ.name)}{where}"
            )
    return lines


def _describe_registry(integ: Integration) -> str:
    reg = integ.schemaRegistry
    assert reg is not None
    parts = [_mask_url(reg.url), f"auth {reg.authType.value}"]
    parts += [f"{name}: {MASK}" for name in ("apiKey", "apiSecret") if getattr(reg, name)]
    parts.append(f"subjects {reg.valueSubjectNameStrategy.value}")
    parts.append(f"auto-register {_yes(reg.autoRegisterSchemas)}")
    return ", ".join(parts)


def _describe_targets(config: HeraldConfig) -> list[str]:
    lines = [f"Targets ({len(config.targets)}):"]
    for target in config.targets:
        address = _mask_url(target.url or target.baseUrl or "")
        extras = [f"timeout {target.timeoutSeconds:g} s", _describe_retry(target)]
        if target.integrationKey:
            extras.append(f"integrationKey: {MASK}")
        if target.keyId:
            extras.append(f"Orkes key: {MASK} (token from /api/token)")
        if target.headers:
            extras.append(f"headers: {', '.join(target.headers)} (values hidden)")
        lines.append(f"  {target.name}: {target.type} {address}; {'; '.join(extras)}")
    return lines


def _describe_retry(target: Target) -> str:
    r = target.retry
    attempts = "" if r.maxAttempts is None else f"{r.maxAttempts} attempts, "
    return (
        f"retry {attempts}{r.initialBackoffMs}..{r.maxBackoffMs} ms "
        f"x{r.multiplier:g}, at most {r.maxElapsedSeconds:g} s"
    )


def _describe_handlers(config: HeraldConfig) -> list[str]:
    lines = [f"Handlers ({len(config.eventHandlers)}):"]
    for handler in config.eventHandlers:
        integration = handler.integration_name or f"{config.home.name} (home)"
        lines += [
            f"  {handler.name}  [{'active' if handler.active else 'inactive'}]",
            f"    event: {handler.event}  (integration {integration}, topic {handler.topic})",
            f"    condition: {handler.condition or '(none: every message)'}  "
            f"[{handler.evaluatorType}]",
            "    actions:",
        ]
        for index, action in enumerate(handler.actions):
            lines.append(f"      {index + 1}. {_describe_action(action, config)}")
    return lines


def _describe_action(action: Action, config: HeraldConfig) -> str:
    params = action.params
    text = action.action
    target = _target_of(action.action, params, config)
    if target:
        text += f" -> {target}"
    summary = ", ".join(
        f"{key}={_summarize(key, value)}" for key, value in params.items() if key != "target"
    )
    if summary:
        text += f": {_shorten(summary, 200)}"
    if action.orderingKey:
        text += f"; orderingKey {action.orderingKey}"
    if action.dedupe:
        text += f"; dedupe {action.dedupe.key} within {action.dedupe.windowSeconds:g} s"
    if action.expandInlineJSON:
        text += "; expandInlineJSON"
    return text


def _target_of(action: str, params: dict[str, Any], config: HeraldConfig) -> str | None:
    """The target named in the params, or the only one of the action's type (as compiled)."""
    if isinstance(params.get("target"), str):
        return params["target"]
    renderer = registry.renderer(action)
    wanted = renderer.target_type if renderer else None
    candidates = [t.name for t in config.targets if wanted and t.type == wanted]
    return f"{candidates[0]} (the only {wanted} target)" if len(candidates) == 1 else None


def _summarize(key: str, value: Any) -> str:
    if key in SECRET_FIELDS:
        return MASK
    if isinstance(value, dict):
        if key == "headers":
            return "{" + ", ".join(f"{name}: {MASK}" for name in value) + "}"
        if key.endswith("Map") and all(not isinstance(v, dict | list) for v in value.values()):
            return "{" + ", ".join(f"{k}->{v}" for k, v in value.items()) + "}"
        return "{" + ", ".join(str(k) for k in value) + "}"
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, str):
        return _shorten(_mask_url(value), 60)
    return str(value)


def _mask_url(text: str) -> str:
    """`https://user:secret@host` → `https://user:***@host`."""
    return re.sub(r"(\w+://[^/\s:@]*):[^/\s@]*@", rf"\1:{MASK}@", text)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
