"""The configuration model: frozen, validated, with Conductor's and Orkes' field names.

One YAML file holds four sections: `herald` (worker settings), `integrations` (named Kafka
connections, Orkes field names), `targets` (named delivery endpoints: ilert, webhooks,
Conductor; what each type needs is in its module under `streams.targets`) and
`eventHandlers` (Conductor EventHandler objects, pasteable from Conductor).

Unknown fields are errors (a typo must not silently do nothing), except the bookkeeping fields
Conductor adds when it exports a handler (`createdBy`, `createTime`, ...), which are accepted
and ignored so an export loads unchanged.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    field_validator,
    model_validator,
)

from streams.http1 import InvalidURL, check_url
from streams.targets import registry as target_types

EVENT_PATTERN = re.compile(r"^kafka:(?:(?P<integration>[^:]+):)?(?P<topic>[^:]+)$")
# Kafka's legal topic characters. Integration names and the topic prefix end up in topic names
# (`<prefix>-dlq-<integration>`), so they are held to the same rule.
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def topic_safe(value: str, what: str) -> str:
    """The value when it can be part of a Kafka topic name; ValueError naming `what` if not."""
    if not TOPIC_NAME.match(value):
        raise ValueError(
            f"{what} {value!r} may only use letters, digits, '.', '_' and '-' "
            "(it becomes part of a Kafka topic name)"
        )
    return value


def requestable_url(value: str) -> str:
    """The URL when delivery can request it (http1's rule); ValueError saying how to write it.

    For the URLs of targets and registries, which are never templates: a URL no request can
    use would otherwise fail every delivery, at 3 a.m. instead of at load.
    """
    try:
        check_url(value.strip())
    except InvalidURL:
        raise ValueError(
            "is not an absolute http(s) URL; write it as http(s)://host[:port][/path]"
        ) from None
    return value


class Strict(BaseModel):
    """Base of every section: frozen, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SendingProtocol(StrEnum):
    STRING = "STRING"
    AVRO = "AVRO"


class TruststoreType(StrEnum):
    NONE = "NONE"
    JKS = "JKS"
    PEM = "PEM"


class SchemaRegistryAuthType(StrEnum):
    NONE = "NONE"
    PASSWORD_IN_URL = "PASSWORD_IN_URL"
    USER_INFO = "USER_INFO"


# Orkes shows connection security as labels ("SASL_SSL / SCRAM-SHA-256 / JKS"); we keep the
# canonical protocol and mechanism apart and accept the labels as input.
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def parse_connection_security(label: str) -> tuple[str, str | None]:
    """Turn an Orkes label or enum name into (security protocol, SASL mechanism or None).

    Accepts `PLAINTEXT`, `PLAIN TEXT`, `SSL`, `SASL_PLAINTEXT / PLAIN`, `SASL_SSL / PLAIN`,
    `SASL_SSL / SCRAM-SHA-256 / JKS`, `SASL_SSL/SCRAM-SHA-512`, and `SASL_SSL_SCRAM_SHA_512`.
    The truststore part of a label is informational: `truststoreType` decides. Anything else
    is rejected, so a typo in the mechanism cannot silently pick a different one.
    """
    text = label.strip().upper().replace(" ", "")
    if text in ("PLAINTEXT", "PLAIN_TEXT"):
        return "PLAINTEXT", None
    if text == "SSL":
        return "SSL", None
    parts = [p for p in text.split("/") if p]
    if len(parts) == 1:  # enum style: SASL_SSL_SCRAM_SHA_256[_JKS]
        parts = _split_enum_label(parts[0])
    if not 2 <= len(parts) <= 3:
        raise ValueError(_security_help(label))
    proto, mech = parts[0], parts[1]
    if proto not in ("SASL_PLAINTEXT", "SASL_SSL") or mech not in SASL_MECHANISMS:
        raise ValueError(_security_help(label))
    if len(parts) == 3 and parts[2] not in TruststoreType.__members__:
        raise ValueError(_security_help(label))
    return proto, mech


def _split_enum_label(text: str) -> list[str]:
    """`SASL_SSL_SCRAM_SHA_256_JKS` → [SASL_SSL, SCRAM-SHA-256, JKS]; [] when it is not one."""
    for proto in ("SASL_PLAINTEXT", "SASL_SSL"):
        if not text.startswith(proto + "_"):
            continue
        rest = text[len(proto) + 1 :]
        for mech in SASL_MECHANISMS:
            enum_mech = mech.replace("-", "_")
            if rest == enum_mech:
                return [proto, mech]
            if rest.startswith(enum_mech + "_"):
                return [proto, mech, rest[len(enum_mech) + 1 :]]
    return []


def _security_help(label: str) -> str:
    return (
        f"unknown connectionSecurity {label!r}; use PLAINTEXT, SSL, or "
        "SASL_PLAINTEXT|SASL_SSL / PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 "
        "(for example 'SASL_SSL / SCRAM-SHA-512')"
    )


class SubjectNameStrategy(StrEnum):
    TOPIC = "TopicNameStrategy"
    RECORD = "RecordNameStrategy"
    TOPIC_RECORD = "TopicRecordNameStrategy"


class SchemaRegistry(Strict):
    url: str
    authType: SchemaRegistryAuthType = SchemaRegistryAuthType.NONE
    apiKey: SecretStr | None = None
    apiSecret: SecretStr | None = None
    valueSubjectNameStrategy: SubjectNameStrategy = SubjectNameStrategy.TOPIC
    autoRegisterSchemas: StrictBool = True

    @field_validator("url")
    @classmethod
    def _url_form(cls, value: str) -> str:
        return requestable_url(value)

    @field_validator("valueSubjectNameStrategy", mode="before")
    @classmethod
    def _short_strategy_name(cls, value: Any) -> Any:
        """Accept `io.confluent.kafka.serializers.subject.X` as well as `X`."""
        if isinstance(value, str):
            return value.rsplit(".", 1)[-1]
        return value

    @model_validator(mode="after")
    def _auth_complete(self) -> SchemaRegistry:
        """Fail at start rather than with a 401 on the first Avro message."""
        if self.authType is SchemaRegistryAuthType.USER_INFO and not (
            self.apiKey and self.apiSecret
        ):
            raise ValueError("schemaRegistry authType USER_INFO needs apiKey and apiSecret")
        if self.authType is SchemaRegistryAuthType.PASSWORD_IN_URL and "@" not in self.url:
            raise ValueError(
                "schemaRegistry authType PASSWORD_IN_URL needs the credentials in the url "
                "(https://key:${env:SECRET}@host)"
            )
        return self


class Integration(Strict):
    """A named Kafka connection with the Orkes integration field names."""

    @property
    def producer_compression(self) -> str | None:
        """compressionType as aiokafka and Faust take it (None: uncompressed)."""
        return None if self.compressionType == "none" else self.compressionType

    name: str = Field(min_length=1)
    bootstrapServers: str = Field(min_length=1)
    consumerGroupId: str = "herald"
    sendingProtocol: SendingProtocol = SendingProtocol.STRING
    connectionSecurity: str = "PLAINTEXT"
    username: str | None = None
    password: SecretStr | None = None
    truststoreType: TruststoreType = TruststoreType.NONE
    truststorePath: str | None = None
    truststorePassword: SecretStr | None = None
    # Mutual TLS (not an Orkes field): PEM client certificate and key, key password if any.
    sslClientCertificatePath: str | None = None
    sslClientKeyPath: str | None = None
    sslClientKeyPassword: SecretStr | None = None
    # TLS hostname verification; turning it off is logged as a warning.
    sslHostnameVerification: StrictBool = True
    schemaRegistry: SchemaRegistry | None = None
    # What Herald's producers on this cluster write (not Orkes fields): Kafka's producer
    # compression.type (none, gzip, snappy, lz4, zstd; default none, as Kafka's producer) and
    # max.request.size (default 1 MiB, as Kafka's). Records that would not fit are
    # dead-lettered with their coordinates instead (the topic's max.message.bytes counts too).
    compressionType: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    maxRequestSize: int = Field(default=1_048_576, ge=16_384, le=1_073_741_824)
    description: str = ""
    active: StrictBool = True

    @field_validator("name")
    @classmethod
    def _name_form(cls, value: str) -> str:
        return topic_safe(value, "integration name")

    @field_validator("connectionSecurity")
    @classmethod
    def _known_security(cls, value: str) -> str:
        parse_connection_security(value)
        return value

    @property
    def security_protocol(self) -> str:
        return parse_connection_security(self.connectionSecurity)[0]

    @property
    def sasl_mechanism(self) -> str | None:
        return parse_connection_security(self.connectionSecurity)[1]

    @model_validator(mode="after")
    def _credentials_present(self) -> Integration:
        if self.security_protocol.startswith("SASL") and not (self.username and self.password):
            raise ValueError(
                f"connectionSecurity {self.connectionSecurity!r} needs username and password "
                "(write the password as ${env:NAME})"
            )
        if self.truststoreType is not TruststoreType.NONE and not self.truststorePath:
            raise ValueError(f"truststoreType {self.truststoreType.value} needs truststorePath")
        if self.sendingProtocol is SendingProtocol.AVRO and self.schemaRegistry is None:
            raise ValueError("sendingProtocol AVRO needs schemaRegistry.url")
        return self


class RetryPolicy(Strict):
    """Exponential backoff with jitter for transient delivery failures, bounded by time.

    The defaults ride out a target's outage of many minutes (30 minutes of retries, any
    number of attempts) instead of dead-lettering: Kafka keeps the backlog meanwhile
    (streams.delivery says how each wait is computed)."""

    maxAttempts: int | None = Field(default=None, ge=1)  # None: only the time budget bounds
    initialBackoffMs: int = Field(default=200, ge=0)
    maxBackoffMs: int = Field(default=30_000, ge=0)
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    maxElapsedSeconds: float = Field(default=1800.0, gt=0)


# The `type:` of a target: every registered target type (streams.targets.registry).
TargetTypeName = Literal[target_types.names()]  # type: ignore[valid-type]


class Target(Strict):
    """A named delivery endpoint. `type` selects what it is for; the module of that type in
    `streams.targets` says which of these fields it needs."""

    name: str = Field(min_length=1)
    type: TargetTypeName
    # ilert: baseUrl and the default integrationKey; webhook: the base or full URL;
    # conductor: the server's baseUrl (https://host or https://host/api)
    baseUrl: str | None = None
    url: str | None = None
    integrationKey: SecretStr | None = None
    # conductor (Orkes): application access key; without one Herald talks to an open server
    keyId: SecretStr | None = None
    keySecret: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeoutSeconds: float = Field(default=10.0, gt=0)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @field_validator("baseUrl", "url")
    @classmethod
    def _url_form(cls, value: str | None) -> str | None:
        return None if value is None else requestable_url(value)

    @model_validator(mode="after")
    def _fits_its_type(self) -> Target:
        target_types.check(self)
        return self


class Dedupe(Strict):
    """Optional user-level deduplication: one delivery per rendered key within the window."""

    key: str
    windowSeconds: float = Field(default=3600.0, gt=0)


class Action(Strict):
    """A Conductor action object; `action` names the type and a field of that name its params."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    action: str
    expandInlineJSON: StrictBool = False
    dedupe: Dedupe | None = None
    orderingKey: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        extra = self.model_extra or {}
        value = extra.get(self.action)
        return dict(value) if isinstance(value, dict) else {}


# Fields Conductor adds to an exported handler; accepted and ignored.
CONDUCTOR_BOOKKEEPING = ("createdBy", "updatedBy", "createTime", "updateTime", "ownerApp", "orgId")


class EventHandler(Strict):
    """A Conductor EventHandler, exactly as Conductor accepts it."""

    name: str = Field(min_length=1)
    event: str
    condition: str | None = None
    evaluatorType: Literal["javascript", "graaljs", "value-param"] = "javascript"
    actions: list[Action] = Field(min_length=1)
    active: StrictBool = False
    description: str = ""
    tags: list[Any] = Field(default_factory=list)
    createdBy: str | None = None
    updatedBy: str | None = None
    createTime: int | None = None
    updateTime: int | None = None
    ownerApp: str | None = None
    orgId: str | None = None

    @field_validator("event")
    @classmethod
    def _event_form(cls, value: str) -> str:
        match = EVENT_PATTERN.match(value)
        if not match:
            raise ValueError(
                f"event {value!r} must be 'kafka:<integration>:<topic>' or 'kafka:<topic>'"
            )
        topic_safe(match.group("topic"), "topic")
        return value

    @property
    def integration_name(self) -> str | None:
        """The integration named in `event`, or None for the default integration."""
        match = EVENT_PATTERN.match(self.event)
        assert match is not None
        return match.group("integration")

    @property
    def topic(self) -> str:
        match = EVENT_PATTERN.match(self.event)
        assert match is not None
        return match.group("topic")


class HeartbeatPing(Strict):
    """An ilert heartbeat pinged at start and every `intervalSeconds` by the leader worker."""

    target: str  # an ilert target holding the heartbeat's integrationKey
    intervalSeconds: float = Field(default=30.0, gt=0)


class IlertProxy(Strict):
    """ilert's event API on Herald's web port, as ilagent serves it: `POST /api/events` writes
    the event to the actions topic (delivered by the sink agents to `target`),
    `GET /api/heartbeats/{key}` pings that heartbeat through `target`."""

    target: str  # an ilert target
    path: str = "/api/events"  # where accepted events are delivered


class AdminApi(Strict):
    """The admin API (Conductor's event-handler API, Orkes' access control) on the workers'
    web port: `POST /api/token` with this key is the first administrator's way in; it creates
    the applications, keys, groups and grants everyone else uses (agents/admin). The token
    signing key is derived from `keySecret`: every worker with the configuration verifies
    every worker's tokens, and changing the secret ends every token."""

    keyId: str = Field(min_length=1)
    keySecret: SecretStr
    tokenTtlSeconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    maxBodyBytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)

    @field_validator("keySecret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError(
                "the admin keySecret must be at least 16 characters (write it as "
                "${env:NAME}; `python -c 'import secrets; print(secrets.token_urlsafe(32))'` "
                "makes one)"
            )
        return value


class HeraldSettings(Strict):
    """Worker settings. Internal topics live on the home integration's cluster."""

    homeIntegration: str | None = None  # default: the first integration
    topicPrefix: str = "herald"
    actionPartitions: int = Field(default=8, ge=1)
    maxInFlight: int = Field(default=64, ge=1)
    conditionTimeLimitMs: int = Field(default=100, ge=1)
    conditionMemoryLimitMb: int = Field(default=16, ge=1)
    dataDir: str = "./herald-data"
    webPort: int = Field(default=6066, ge=0, le=65535)
    # How long execution records are kept: the executions topic's retention.ms, and the age
    # past which the execution history (agents.history) forgets a record.
    executionRetentionSeconds: float = Field(default=7 * 24 * 3600, gt=0)
    # The most records (executions, dead letters, audit records) each worker's execution
    # history keeps in memory, about 1 KiB each; the oldest go first (streams.history).
    executionHistoryMaxRecords: int = Field(default=100_000, ge=100, le=10_000_000)
    # How long a delivery's dedupe mark is kept (agents.sink.expiry): a redelivery of an action
    # record up to this long after its delivery is skipped. It must be at least the source
    # topics' (and the actions topic's) retention.ms, the longest a record can be read again;
    # the default, 14 days, covers Kafka's default retention.ms (7 days) plus its default
    # segment.ms (7 days), since Kafka deletes whole segments.
    dedupeRetentionSeconds: float = 14 * 24 * 3600
    replicationFactor: int = Field(default=1, ge=1)  # of Herald's internal topics
    commitIntervalSeconds: float = Field(default=1.0, gt=0)
    sessionTimeoutSeconds: float = Field(default=10.0, gt=0)  # consumer group session timeout
    # How long a fetch may wait at the broker for records (Kafka's fetch.max.wait.ms). A broker
    # answers as soon as records arrive, so this bounds only idle polling (measured idle cost
    # at 10 ms: 6% of a core in the worker, 12% in tansu; at 100 ms: 1% and 3%). A broker that
    # holds the fetch to the deadline regardless (the embedded tansu) adds it to every hop's
    # latency: set 10 there (the tests and the benchmark do).
    fetchMaxWaitMs: int = Field(default=100, ge=1, le=60_000)
    # How long the producer waits to fill a batch (Kafka's linger.ms; 5 ms is Kafka 4's
    # default). Each delivery writes several records; batching them saves a request each.
    producerLingerMs: float = Field(default=5.0, ge=0, le=10_000)
    # The most a producer batch holds per partition (Kafka's batch.size), in bytes. A full
    # batch makes the next write wait until the batch is sent, so under load Java's 16 KB holds
    # every delivery's records behind the broker's round trip (bench A0: 16 KB 2,942
    # deliveries/s, 1 MB 3,766/s). 1,000,000 is librdkafka's default. Capped by
    # maxRequestSize and the broker's max.message.bytes of Herald's topics (agents.limits).
    producerBatchBytes: int = Field(default=1_000_000, ge=1024, le=100 * 1024 * 1024)
    # Faust's check at table recovery that the local RocksDB state is not ahead of its
    # changelog (it is, after topics were deleted and recreated). Only for brokers whose high
    # watermark lags acknowledged writes, such as the embedded tansu, set it to false.
    recoveryConsistencyCheck: StrictBool = True
    # consumed even while no active handler names them (agents.subscriptions)
    extraSourceTopics: list[str] = Field(default_factory=list)
    # A partition with records waiting and no progress for this long is reported as stalled:
    # an error in the log, `stalledPartitions` on /ready, `stalls` on /herald/stats.
    stallSeconds: float = Field(default=60.0, gt=0)
    # A fetched record batch that cannot be read (corrupt, unknown codec, a record over the
    # consumer's limits) stops its partition: `stop` waits for `herald skip`, `skip` skips
    # it at once. Either way the skipped offsets and the reason go to the dead-letter topic.
    unreadableBatches: Literal["stop", "skip"] = "stop"
    # Idempotent producers (enable.idempotence) where the broker has them. Off by default:
    # aiokafka cannot restart a partition's sequence after a batch the broker refused (too
    # large, invalid), so one refused record stops every later produce of the worker
    # (agents/idempotence.py). Without it a retried produce may be written twice, which the
    # dedupe table and the dead letters' ids absorb; order holds (one batch in flight per
    # partition).
    idempotentProducer: StrictBool = False
    # Ping ilert heartbeats from the leader worker (ilagent's -b), and serve ilert's event API
    # on the web port (ilagent's -p): see agents/heartbeats.py and agents/ilagent_api.py.
    heartbeats: list[HeartbeatPing] = Field(default_factory=list)
    ilertProxy: IlertProxy | None = None
    # The admin API (agents/admin): off unless configured.
    admin: AdminApi | None = None

    @field_validator("topicPrefix")
    @classmethod
    def _prefix_form(cls, value: str) -> str:
        return topic_safe(value, "topicPrefix")

    @field_validator("dedupeRetentionSeconds")
    @classmethod
    def _dedupe_retention(cls, value: float) -> float:
        if not value > 0 or value == float("inf"):
            raise ValueError(
                f"is {value:g}; a delivery's dedupe mark must be kept a finite, positive time, "
                "at least the source topics' retention.ms / 1000 (Kafka's default is 604800, "
                "7 days); set it to that or more (default 1209600, 14 days)"
            )
        return value


class HeraldConfig(Strict):
    """The whole configuration file."""

    herald: HeraldSettings = Field(default_factory=HeraldSettings)
    integrations: list[Integration] = Field(min_length=1)
    targets: list[Target] = Field(default_factory=list)
    eventHandlers: list[EventHandler] = Field(default_factory=list)

    @model_validator(mode="after")
    def _settings_name_ilert_targets(self) -> HeraldConfig:
        """herald.heartbeats and herald.ilertProxy must name ilert targets."""
        uses = [(f"heartbeats[{i}]", ping.target) for i, ping in enumerate(self.herald.heartbeats)]
        if self.herald.ilertProxy is not None:
            uses.append(("ilertProxy", self.herald.ilertProxy.target))
        kinds = {t.name: t for t in self.targets}
        for where, name in uses:
            target = kinds.get(name)
            if target is None or target.type != "ilert":
                raise ValueError(
                    f"herald.{where}.target: {name!r} is not an ilert target; define it under "
                    "targets with type ilert"
                )
            if where.startswith("heartbeats") and not target.integrationKey:
                raise ValueError(
                    f"herald.{where}.target: target {name!r} has no integrationKey (the "
                    "heartbeat's key); set it"
                )
        return self

    @property
    def home(self) -> Integration:
        name = self.herald.homeIntegration
        for integration in self.integrations:
            if name is None or integration.name == name:
                return integration
        raise LookupError(name)

    def integration(self, name: str | None) -> Integration:
        """The integration by name; None means the default (home) integration."""
        if name is None:
            return self.home
        for integration in self.integrations:
            if integration.name == name:
                return integration
        raise LookupError(name)

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise LookupError(name)
