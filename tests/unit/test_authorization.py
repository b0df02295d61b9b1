"""What Herald asks the broker to allow (streams.authorization), without a broker: which
resources each integration needs, and how a refusal reads."""

from __future__ import annotations

from streams.authorization import Denial, Need, _allowed, describe_denial, required_access
from streams.config.models import HeraldConfig, Integration


def config() -> HeraldConfig:
    return HeraldConfig(
        herald={"topicPrefix": "hp"},
        integrations=[
            {"name": "local", "bootstrapServers": "k:9092", "consumerGroupId": "g1"},
            {"name": "out", "bootstrapServers": "o:9092"},
        ],
        eventHandlers=[
            {
                "name": "h",
                "event": "kafka:local:alarms",
                "active": True,
                "actions": [
                    {"action": "publish", "publish": {"to": "kafka:out:sink"}},
                    {"action": "publish", "publish": {"to": "kafka:out:${topic}"}},
                ],
            }
        ],
    )


def test_home_needs_sources_group_and_internal_topics_others_their_publish_targets() -> None:
    needs = required_access(config())
    home = {(n.resource, n.name): n for n in needs["local"]}
    assert home[("topic", "alarms")].operations == ("DESCRIBE", "READ")
    assert not home[("topic", "alarms")].created_by_herald
    assert home[("group", "g1")].operations == ("READ",)
    assert home[("topic", "hp-actions")].operations == ("DESCRIBE", "READ", "WRITE")
    assert home[("topic", "hp-actions")].created_by_herald
    for topic in ("hp-executions", "hp-dlq-local", "hp-dlq-out"):
        assert "WRITE" in home[("topic", topic)].operations
    assert ("topic", "g1-rules-changelog") in home
    # A templated destination is only known per message: not asked for.
    assert [(n.name, n.operations) for n in needs["out"]] == [("sink", ("DESCRIBE", "WRITE"))]


def test_a_refusal_names_integration_resource_permission_and_the_grant() -> None:
    integration = Integration(
        name="local",
        bootstrapServers="k:9093",
        connectionSecurity="SASL_SSL / SCRAM-SHA-512",
        username="svc",
        password="pw-123456",
    )
    need = Need("group", "g1", ("READ",), "the workers' consumer group")
    text = describe_denial(Denial(need, ("DESCRIBE", "READ")), integration)
    assert text.startswith("integration 'local': not authorized: user 'svc' lacks DESCRIBE and")
    assert "READ on group 'g1' (the workers' consumer group)" in text
    assert "--allow-principal User:svc --operation Describe --operation Read --group g1" in text
    assert "pw-123456" not in text


def test_operations_the_broker_did_not_fill_in_are_unknown_not_refused() -> None:
    assert _allowed(-(2**31)) is None  # Kafka's "not requested" marker
    assert _allowed(0) is None  # no DESCRIBE bit: not computed (an answer implies DESCRIBE)
    assert _allowed((1 << 8) | (1 << 3)) == {"DESCRIBE", "READ"}
