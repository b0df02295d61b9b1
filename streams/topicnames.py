"""Names of Herald's internal topics, in one place for the worker, the CLI and `herald check`."""

from __future__ import annotations

from streams.config.models import HeraldConfig


def actions_name(config: HeraldConfig) -> str:
    return f"{config.herald.topicPrefix}-actions"


def rules_name(config: HeraldConfig) -> str:
    """The rules topic: the changelog Faust names for the `rules` table of app `groupId`."""
    return f"{config.home.consumerGroupId}-rules-changelog"


def executions_name(config: HeraldConfig) -> str:
    return f"{config.herald.topicPrefix}-executions"


def dlq_name(config: HeraldConfig, integration: str) -> str:
    return f"{config.herald.topicPrefix}-dlq-{integration}"


def audit_name(config: HeraldConfig) -> str:
    """The admin API's audit records (agents.admin.changes)."""
    return f"{config.herald.topicPrefix}-audit"
