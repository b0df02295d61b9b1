"""Herald's topics: the sources users configure, and its own internal topics.

Internal topics live on the home integration's cluster: `<prefix>-actions` (keyed by ordering
key; partitions = actionPartitions), `<groupId>-rules-changelog` (handler definitions: the
changelog of the rules table), `<prefix>-executions` (execution records, kept
`executionRetentionSeconds`) and `<prefix>-dlq-<integration>` (dead letters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faust
from faust.types import TopicT

from streams.config.models import HeraldConfig
from streams.topicnames import actions_name, audit_name, dlq_name, executions_name, rules_name

__all__ = ["Topics", "declare_topics", "actions_name", "dlq_name", "executions_name", "rules_name"]

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


@dataclass
class Topics:
    actions: TopicT
    rules: TopicT
    executions: TopicT
    dead_letters: dict[str, TopicT] = field(default_factory=dict)
    audit: TopicT | None = None  # with the admin API only

    def dlq(self, integration: str) -> TopicT:
        return self.dead_letters[integration]


def declare_topics(app: faust.App, config: HeraldConfig) -> Topics:
    """Declare Herald's internal topics. Source topics are the user's, never created here;
    the source agent subscribes to them as the handlers say (agents.subscriptions)."""
    partitions = config.herald.actionPartitions
    actions = app.topic(actions_name(config), partitions=partitions, internal=True, **RAW)
    rules = app.topic(rules_name(config), partitions=1, internal=True, **RAW)
    # Created with retention.ms = executionRetentionSeconds; an existing topic keeps its own,
    # and agents.retention says so when they differ.
    executions = app.topic(
        executions_name(config),
        partitions=partitions,
        internal=True,
        retention=config.herald.executionRetentionSeconds,
        **RAW,
    )
    dead_letters = {
        integration.name: app.topic(
            dlq_name(config, integration.name), partitions=1, internal=True, **RAW
        )
        for integration in config.integrations
    }
    audit = (
        app.topic(audit_name(config), partitions=1, internal=True, **RAW)
        if config.herald.admin is not None
        else None
    )
    return Topics(actions, rules, executions, dead_letters, audit)
