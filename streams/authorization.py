"""What an integration's credentials may do on the broker, asked before the worker starts.

A principal without READ on a source topic or the consumer group, or without WRITE on one of
Herald's internal topics, does not fail at connect time: the Kafka clients connect, join, and
then fail deep inside a fetch, a join or a produce (TopicAuthorizationFailedError,
GroupAuthorizationFailedError), or wait for ever for a topic they may not DESCRIBE. So
`herald check --connect` and the worker's pre-flight ask the broker directly, with requests
that change nothing:

- Metadata v8 with ``include_topic_authorized_operations`` for every topic Herald uses: a
  topic the principal may not DESCRIBE comes back TOPIC_AUTHORIZATION_FAILED; otherwise the
  broker lists the operations the principal may perform on it (KIP-430).
- FindCoordinator and DescribeGroups v3 with ``include_authorized_operations`` for the
  consumer group: GROUP_AUTHORIZATION_FAILED without DESCRIBE, else the allowed operations.
- CreateTopics with ``validate_only`` for internal topics that do not exist yet: the broker
  checks CREATE (on the topic or the cluster) and creates nothing.

Only a broker's explicit answer is reported: a broker too old for these versions, or one that
does not fill in the operations (they then lack DESCRIBE, which the answer itself implies),
gives no finding rather than a false one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.protocol.admin import CreateTopicsRequest, DescribeGroupsResponse_v3
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.coordination import FindCoordinatorRequest
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from streams.config.models import HeraldConfig, Integration
from streams.topicnames import actions_name, audit_name, dlq_name, executions_name, rules_name

#: Kafka's AclOperation codes (org.apache.kafka.common.acl.AclOperation) that Herald needs.
OPERATION_CODES = {"READ": 3, "WRITE": 4, "CREATE": 5, "DESCRIBE": 8}
NO_ERROR = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_AUTHORIZATION_FAILED = 29
GROUP_AUTHORIZATION_FAILED = 30
CLUSTER_AUTHORIZATION_FAILED = 31
TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class Need:
    """Operations one integration's principal must be allowed on one resource."""

    resource: str  # "topic" or "group"
    name: str
    operations: tuple[str, ...]
    why: str  # shown to the operator: what Herald uses the resource for
    created_by_herald: bool = False  # a missing topic is created by the worker (needs CREATE)


@dataclass(frozen=True)
class Denial:
    """The broker said no: `missing` operations on `need`'s resource."""

    need: Need
    missing: tuple[str, ...]


def required_access(config: HeraldConfig) -> dict[str, list[Need]]:
    """Per integration name, what the worker does with each topic and group.

    The home integration carries Herald's internal topics (agents/topics.py and Faust's own
    changelogs and leader topic) and the consumer group; every other integration a handler
    consumes needs READ on its topics and its own consumer group; any integration named in
    a ``publish.to`` needs WRITE on that topic.
    """
    home = config.home
    group = home.consumerGroupId
    needs: dict[str, dict[tuple[str, str], Need]] = {i.name: {} for i in config.integrations}

    def add(integration: str, need: Need) -> None:
        known = needs.setdefault(integration, {})
        key = (need.resource, need.name)
        if key in known:
            old = known[key]
            ops = tuple(dict.fromkeys(old.operations + need.operations))
            need = Need(need.resource, need.name, ops, old.why, old.created_by_herald)
        known[key] = need

    for handler in config.eventHandlers:
        source = handler.integration_name or home.name
        why = f"source topic of handler {handler.name!r}"
        add(source, Need("topic", handler.topic, ("DESCRIBE", "READ"), why))
        if source != home.name:
            own = config.integration(source).consumerGroupId
            why = f"the consumer group of integration {source!r}"
            add(source, Need("group", own, ("READ",), why))
    for topic in config.herald.extraSourceTopics:
        add(home.name, Need("topic", topic, ("DESCRIBE", "READ"), "extraSourceTopics"))
    add(home.name, Need("group", group, ("READ",), "the workers' consumer group"))
    internal = [
        (actions_name(config), ("READ", "WRITE"), "Herald's actions topic"),
        (rules_name(config), ("READ", "WRITE"), "Herald's rules topic"),
        (f"{group}-dedupe-changelog", ("READ", "WRITE"), "the dedupe table's changelog"),
        (f"{group}-__assignor-__leader", ("READ", "WRITE"), "Faust's leader topic"),
        (executions_name(config), ("WRITE",), "Herald's executions topic"),
    ]
    internal += [
        (dlq_name(config, i.name), ("WRITE",), f"the dead-letter topic of {i.name!r}")
        for i in config.integrations
    ]
    if config.herald.admin is not None:
        internal.append((audit_name(config), ("WRITE",), "the admin API's audit records"))
        # Every worker reads them back into its execution history (agents.history).
        read_back = [executions_name(config), audit_name(config)]
        read_back += [dlq_name(config, i.name) for i in config.integrations]
        internal += [(topic, ("READ",), "the execution history") for topic in read_back]
    for topic, operations, why in internal:
        add(home.name, Need("topic", topic, ("DESCRIBE", *operations), why, True))
    for handler in config.eventHandlers:
        for action in handler.actions:
            target = action.params.get("to") if action.action == "publish" else None
            if not isinstance(target, str) or "${" in target:
                continue  # a templated destination is only known per message
            parts = target.split(":")
            if len(parts) not in (2, 3) or parts[0] != "kafka":
                continue
            integration = parts[1] if len(parts) == 3 else home.name
            why = f"publish target of handler {handler.name!r}"
            add(integration, Need("topic", parts[-1], ("DESCRIBE", "WRITE"), why))
    return {name: list(found.values()) for name, found in needs.items()}


# --------------------------------------------------------------------------- protocol


class _MetadataResponse_v8(Response):
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            Array(
                ("node_id", Int32),
                ("host", String("utf-8")),
                ("port", Int32),
                ("rack", String("utf-8")),
            ),
        ),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("topic", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition", Int32),
                        ("leader", Int32),
                        ("leader_epoch", Int32),
                        ("replicas", Array(Int32)),
                        ("isr", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("topic_authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequest_v8(RequestStruct):
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponse_v8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class AuthorizedMetadataRequest(Request[_MetadataRequest_v8]):
    """Metadata of `topics` with the operations the principal may perform (no auto-create).
    aiokafka 0.14 stops at Metadata v5, which has no such field."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataRequest_v8]) -> _MetadataRequest_v8:
        return request_struct_class(self._topics, False, True, True)


class _DescribeGroupsRequest_v3(RequestStruct):
    # aiokafka 0.14's own v3 parses the answer with the v2 schema, dropping the operations.
    API_KEY = 15
    API_VERSION = 3
    RESPONSE_TYPE = DescribeGroupsResponse_v3
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


class AuthorizedDescribeGroupsRequest(Request[_DescribeGroupsRequest_v3]):
    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(
        self, request_struct_class: type[_DescribeGroupsRequest_v3]
    ) -> _DescribeGroupsRequest_v3:
        return request_struct_class(self._groups, True)


def _allowed(bits: int) -> set[str] | None:
    """Operation names in a KIP-430 bit field; None when the broker did not fill it in (an
    answer without error implies DESCRIBE, so a field without it was not computed)."""
    if bits is None or bits < 0 or not bits & (1 << OPERATION_CODES["DESCRIBE"]):
        return None
    return {name for name, code in OPERATION_CODES.items() if bits & (1 << code)}


# --------------------------------------------------------------------------- the check


async def find_denials(
    integration: Integration,
    needs: Iterable[Need],
    connect: Any,
    timeout: float,
    *,
    partitions: int = 1,
    replication: int = 1,
) -> list[Denial]:
    """Ask the broker (through ``connect(host, port)``, an awaitable of an aiokafka
    connection with the integration's security) what of `needs` it refuses."""
    from streams.security import _servers

    needs = list(needs)
    topics = [n for n in needs if n.resource == "topic"]
    groups = [n for n in needs if n.resource == "group"]
    host, port = _servers(integration.bootstrapServers)[0]
    denials: list[Denial] = []
    conn = await connect(host, port)
    try:
        if topics:
            denials += await _topic_denials(conn, topics, timeout, partitions, replication)
        for need in groups:
            denials += await _group_denials(conn, need, connect, timeout)
    finally:
        conn.close()
    return denials


async def _topic_denials(
    conn: Any, needs: list[Need], timeout: float, partitions: int, replication: int
) -> list[Denial]:
    try:
        request = AuthorizedMetadataRequest([n.name for n in needs])
        response = await asyncio.wait_for(conn.send(request), timeout)
    except (NotImplementedError, ValueError):  # a broker without Metadata v8 (or not Kafka)
        return []
    found = {t[1]: (t[0], t[4]) for t in response.topics}
    denials: list[Denial] = []
    missing: list[Need] = []
    for need in needs:
        error, bits = found.get(need.name, (None, None))
        if error == TOPIC_AUTHORIZATION_FAILED:
            denials.append(Denial(need, need.operations))
        elif error == UNKNOWN_TOPIC_OR_PARTITION and need.created_by_herald:
            missing.append(need)
        elif error == NO_ERROR:
            allowed = _allowed(bits)
            if allowed is not None:
                lacking = tuple(op for op in need.operations if op not in allowed)
                if lacking:
                    denials.append(Denial(need, lacking))
    if missing:
        denials += await _create_denials(conn, missing, timeout, partitions, replication)
    return denials


async def _create_denials(
    conn: Any, needs: list[Need], timeout: float, partitions: int, replication: int
) -> list[Denial]:
    """CREATE on topics the worker will create: a validate-only CreateTopics."""
    request = CreateTopicsRequest(
        [(n.name, partitions, replication, [], []) for n in needs],
        int(timeout * 1000),
        True,
    )
    try:
        response = await asyncio.wait_for(conn.send(request), timeout)
    except (NotImplementedError, ValueError):
        return []
    refused = {
        entry[0]
        for entry in response.topic_errors
        if entry[1] in (TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED)
    }
    return [Denial(n, ("CREATE",)) for n in needs if n.name in refused]


async def _group_denials(conn: Any, need: Need, connect: Any, timeout: float) -> list[Denial]:
    try:
        found = await asyncio.wait_for(conn.send(FindCoordinatorRequest(need.name, 0)), timeout)
    except (NotImplementedError, ValueError):
        return []
    if found.error_code == GROUP_AUTHORIZATION_FAILED:
        return [Denial(need, ("DESCRIBE", *need.operations))]
    if found.error_code != NO_ERROR:
        return []  # no coordinator yet: nothing the broker said about rights
    coordinator = await connect(found.host, found.port)
    try:
        request = AuthorizedDescribeGroupsRequest([need.name])
        response = await asyncio.wait_for(coordinator.send(request), timeout)
    except (NotImplementedError, ValueError):
        return []
    finally:
        coordinator.close()
    for group in response.groups:
        error, bits = group[0], group[-1]
        if error == GROUP_AUTHORIZATION_FAILED:
            return [Denial(need, ("DESCRIBE", *need.operations))]
        allowed = _allowed(bits) if error == NO_ERROR else None
        if allowed is not None:
            lacking = tuple(op for op in need.operations if op not in allowed)
            if lacking:
                return [Denial(need, lacking)]
    return []


def describe_denial(denial: Denial, integration: Integration) -> str:
    """One line naming the integration, the resource, what is missing and how to grant it."""
    need = denial.need
    principal = _principal(integration)
    who = f"user {integration.username!r}" if principal.startswith("User:") else principal
    ops = " and ".join(denial.missing)
    flag = "--topic" if need.resource == "topic" else "--group"
    grant = " ".join(f"--operation {op.capitalize()}" for op in denial.missing)
    hint = (
        f"; grant it, e.g. kafka-acls --add --allow-principal {principal} {grant} "
        f"{flag} {need.name}"
        if principal.startswith("User:")
        else f"; grant {ops} on {need.resource} {need.name!r} to the integration's principal"
    )
    created = (
        " (Herald creates it: CREATE on it or on the cluster)"
        if denial.missing == ("CREATE",)
        else ""
    )
    return (
        f"integration {integration.name!r}: not authorized: {who} lacks {ops} on "
        f"{need.resource} {need.name!r} ({need.why}){created}{hint}"
    )


def _principal(integration: Integration) -> str:
    protocol = integration.security_protocol
    if protocol.startswith("SASL") and integration.username:
        return f"User:{integration.username}"
    if protocol == "SSL" and integration.sslClientCertificatePath:
        return "the principal of its client certificate"
    return "User:ANONYMOUS"
