"""The configuration loader: every error class gives one exact, actionable line, all problems
come together, secrets stay out of messages and `describe()`, and pasted Conductor and Orkes
definitions load unchanged."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from streams.config.describe import describe, internal_topics
from streams.config.loader import config_path_from_env, load_config, load_handlers
from streams.config.models import HeraldConfig
from streams.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEMO_ENV = {
    "HERALD_BOOTSTRAP": "127.0.0.1:19092",
    "ILERT_BASE_URL": "http://127.0.0.1:18977",
    "ILERT_INTEGRATION_KEY": "il1-demo-integration-key-0042",
    "WEBHOOK_URL": "http://127.0.0.1:18977/hooks/alarms",
}
FILE = "herald.yaml"

# A small valid configuration; tests append to it or replace parts of it.
BASE = """\
integrations:
  - name: local
    bootstrapServers: localhost:9092
targets:
  - name: ilert
    type: ilert
    baseUrl: https://api.ilert.com
    integrationKey: il1-literal-key
eventHandlers:
  - name: alarms
    event: kafka:local:alarms
    condition: "$.type == 'ALARM'"
    active: true
    actions:
      - action: ilert_event
        ilert_event:
          target: ilert
          alertKey: ${mCode}
          summary: ${comment}
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Problem lines name the file as given; a relative name keeps expected lines short."""
    monkeypatch.chdir(tmp_path)


def write(text: str, name: str = FILE) -> str:
    Path(name).write_text(textwrap.dedent(text), encoding="utf-8")
    return name


def load(text: str, env: dict[str, str] | None = None) -> HeraldConfig:
    return load_config(write(text), environ=env or {})


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text, env)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --------------------------------------------------------------------------- what loads


def test_example_config_loads_with_the_demo_environment() -> None:
    config = load_config(REPO / "config" / "example.yaml", environ=DEMO_ENV)

    assert [i.name for i in config.integrations] == ["local"]
    assert config.home.bootstrapServers == "127.0.0.1:19092"
    ilert = config.target("ilert")
    assert ilert.baseUrl == DEMO_ENV["ILERT_BASE_URL"]
    assert ilert.integrationKey is not None
    assert ilert.integrationKey.get_secret_value() == DEMO_ENV["ILERT_INTEGRATION_KEY"]
    assert config.target("chat").url == DEMO_ENV["WEBHOOK_URL"]
    actions = {a.action for h in config.eventHandlers for a in h.actions}
    assert actions == {
        "ilert_event",
        "ilert_heartbeat",
        "webhook",
        "publish",
        "start_workflow",
        "complete_task",
        "update_workflow_variables",
    }
    active = [h for h in config.eventHandlers if h.active]
    assert {h.topic for h in active} == {"alarms"}
    assert {a.action for h in active for a in h.actions} == {"ilert_event", "webhook", "publish"}
    assert any(h.evaluatorType == "value-param" for h in config.eventHandlers)
    ilert_action = config.eventHandlers[0].actions[0]
    assert ilert_action.params["eventTypeMap"] == {
        "SET": "ALERT",
        "ACK": "ACCEPT",
        "CLR": "RESOLVE",
    }
    assert ilert_action.params["alertKey"] == "${mCode}"  # templates are left for rendering
    assert ilert_action.orderingKey == "ilert:${mCode}"
    assert any(a.dedupe for h in active for a in h.actions)
    assert DEMO_ENV["ILERT_INTEGRATION_KEY"] not in describe(config)


def test_default_config_loads_with_the_integration_key_from_the_environment() -> None:
    config = load_config(REPO / "config" / "herald.yaml", environ={"ILERT_INTEGRATION_KEY": "k"})
    assert config.home.bootstrapServers == "localhost:9092"
    assert config.target("ilert").baseUrl == "https://api.ilert.com"


def test_config_path_comes_from_herald_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HERALD_CONFIG", raising=False)
    assert config_path_from_env() == "config/herald.yaml"
    monkeypatch.setenv("HERALD_CONFIG", "/etc/herald/prod.yaml")
    assert config_path_from_env() == "/etc/herald/prod.yaml"


@pytest.mark.parametrize(
    ("label", "protocol", "mechanism"),
    [
        ("SASL_SSL / SCRAM-SHA-256 / JKS", "SASL_SSL", "SCRAM-SHA-256"),
        ("PLAIN TEXT", "PLAINTEXT", None),
        ("SASL_SSL/SCRAM-SHA-512", "SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_SSL / PLAIN", "SASL_SSL", "PLAIN"),
    ],
)
def test_orkes_connection_security_labels_parse(
    label: str, protocol: str, mechanism: str | None
) -> None:
    config = load(
        f"""\
        integrations:
          - name: secured
            bootstrapServers: broker:9096
            connectionSecurity: {label}
            username: herald
            password: ${{env:KAFKA_PASSWORD}}
        """,
        {"KAFKA_PASSWORD": "pw"},
    )
    assert config.home.security_protocol == protocol
    assert config.home.sasl_mechanism == mechanism


def test_subject_name_strategy_accepts_the_java_class_name() -> None:
    config = load(
        """\
        integrations:
          - name: confluent
            bootstrapServers: broker:9092
            sendingProtocol: AVRO
            schemaRegistry:
              url: https://registry.example.com
              authType: USER_INFO
              apiKey: key
              apiSecret: ${env:SR_SECRET}
              valueSubjectNameStrategy: io.confluent.kafka.serializers.subject.RecordNameStrategy
        """,
        {"SR_SECRET": "s"},
    )
    registry = config.home.schemaRegistry
    assert registry is not None
    assert registry.valueSubjectNameStrategy.value == "RecordNameStrategy"


def test_conductor_handler_pasted_from_orkes_docs_loads() -> None:
    # The sample JSON of Orkes' Kafka integration guide, pasted as is (JSON is YAML).
    config = load(
        """\
        integrations:
          - name: kafka-test
            bootstrapServers: localhost:9092
        eventHandlers:
          - {
             "name": "kafka-event-handler",
             "event": "kafka:kafka-test:topic-name",
             "condition": "true",
             "actions": [
               {
                 "action": "start_workflow",
                 "start_workflow": {
                   "name": "event-handler-test",
                   "version": 1
                 },
                 "expandInlineJSON": false
               }
             ],
             "active": false,
             "evaluatorType": "javascript",
             "createdBy": "devrel@orkes.io"
            }
        """
    )
    handler = config.eventHandlers[0]
    assert handler.name == "kafka-event-handler"
    assert handler.integration_name == "kafka-test"
    assert handler.topic == "topic-name"
    assert handler.active is False
    assert handler.createdBy == "devrel@orkes.io"
    assert handler.actions[0].params == {"name": "event-handler-test", "version": 1}


# --------------------------------------------------------------------------- references


def test_env_and_file_references_resolve_and_templates_are_left_alone() -> None:
    Path("secrets").mkdir()
    Path("secrets/ilert-key").write_text("  il1-from-file\n", encoding="utf-8")
    config = load(
        """\
        integrations:
          - name: local
            bootstrapServers: ${env:HOST}:${env:PORT},backup:9092
        targets:
          - name: ilert
            type: ilert
            baseUrl: https://api.ilert.com
            integrationKey: ${file:secrets/ilert-key}
        eventHandlers:
          - name: alarms
            event: kafka:local:alarms
            actions:
              - action: ilert_event
                ilert_event:
                  alertKey: ${alertKey}
                  summary: "literal $${env:HOST} and ${comment}"
        """,
        {"HOST": "kafka-1", "PORT": "9092"},
    )
    assert config.home.bootstrapServers == "kafka-1:9092,backup:9092"
    key = config.target("ilert").integrationKey
    assert key is not None and key.get_secret_value() == "il1-from-file"
    params = config.eventHandlers[0].actions[0].params
    assert params["alertKey"] == "${alertKey}"
    # `$${` is Conductor's escape: kept as written, the template engine renders `${env:HOST}`.
    assert params["summary"] == "literal $${env:HOST} and ${comment}"


def test_yaml_booleans_are_only_true_and_false() -> None:
    config = load(BASE.replace("summary: ${comment}", "eventTypeMap: {ON: ALERT, OFF: RESOLVE}"))
    assert config.eventHandlers[0].actions[0].params["eventTypeMap"] == {
        "ON": "ALERT",
        "OFF": "RESOLVE",
    }


# --------------------------------------------------------------------------- one line per error


def test_unknown_field_lists_the_allowed_ones() -> None:
    text = BASE.replace("bootstrapServers: localhost:9092", "bootstrapServer: localhost:9092")
    assert problems(text) == [
        "herald.yaml: integrations[0](name=local).bootstrapServers: field required; "
        "set it to host:port[,host:port]",
        "herald.yaml: integrations[0](name=local).bootstrapServer: unknown field "
        "'bootstrapServer'; remove it or use one of: name, bootstrapServers, consumerGroupId, "
        "sendingProtocol, connectionSecurity, username, password, truststoreType, "
        "truststorePath, truststorePassword, sslClientCertificatePath, sslClientKeyPath, "
        "sslClientKeyPassword, sslHostnameVerification, schemaRegistry, compressionType, "
        "maxRequestSize, description, active",
    ]


def test_unknown_action_parameter_names_the_full_path() -> None:
    text = BASE.replace("summary: ${comment}", "sevrity: 3")
    (line,) = problems(text)
    assert line.startswith(
        "herald.yaml: eventHandlers[0](name=alarms).actions[0].ilert_event.sevrity: "
        "unknown field 'sevrity'; "
    )


def test_wrong_type() -> None:
    text = BASE.replace("bootstrapServers: localhost:9092", "bootstrapServers: 9092")
    assert problems(text) == [
        "herald.yaml: integrations[0](name=local).bootstrapServers: expected text, got a "
        "number; write it in quotes"
    ]


def test_missing_required_field() -> None:
    text = BASE.replace("    bootstrapServers: localhost:9092\n", "")
    assert problems(text) == [
        "herald.yaml: integrations[0](name=local).bootstrapServers: field required; "
        "set it to host:port[,host:port]"
    ]


def test_empty_required_value_says_it_is_empty() -> None:
    text = BASE.replace("bootstrapServers: localhost:9092", "bootstrapServers:")
    assert problems(text) == [
        "herald.yaml: integrations[0](name=local).bootstrapServers: is empty; "
        "set it to host:port[,host:port]"
    ]


def test_unknown_choice_lists_the_allowed_values() -> None:
    text = BASE.replace("active: true", "active: true\n    evaluatorType: js")
    assert problems(text) == [
        "herald.yaml: eventHandlers[0](name=alarms).evaluatorType: unknown value 'js'; "
        "use one of: javascript, graaljs, value-param"
    ]


def test_event_naming_an_undefined_integration() -> None:
    text = BASE.replace("event: kafka:local:alarms", "event: kafka:prod:alarms")
    assert problems(text) == [
        "herald.yaml: eventHandlers[0](name=alarms).event: event names integration 'prod', "
        "which is not defined; define it under integrations or fix the event (defined: local)"
    ]


def test_bad_event_form() -> None:
    text = BASE.replace("event: kafka:local:alarms", "event: alarms")
    assert problems(text) == [
        "herald.yaml: eventHandlers[0](name=alarms).event: event 'alarms' must be "
        "'kafka:<integration>:<topic>' or 'kafka:<topic>'"
    ]


def test_duplicate_names() -> None:
    text = BASE + textwrap.indent(
        textwrap.dedent(
            """\
            - name: alarms
              event: kafka:local:alarms
              actions: [{action: ilert_event, ilert_event: {target: ilert}}]
            """
        ),
        "  ",
    )
    text = text.replace(
        "targets:\n",
        "targets:\n  - {name: ilert, type: ilert, baseUrl: 'https://ilert.example.com'}\n",
    ).replace(
        "integrations:\n",
        "integrations:\n  - {name: local, bootstrapServers: 'other:9092'}\n",
    )
    assert problems(text) == [
        "herald.yaml: integrations[1](name=local).name: duplicate integration name 'local' "
        "(also integrations[0]); give each integration a unique name",
        "herald.yaml: targets[1](name=ilert).name: duplicate target name 'ilert' "
        "(also targets[0]); give each target a unique name",
        "herald.yaml: eventHandlers[1](name=alarms).name: duplicate handler name 'alarms' "
        "(also eventHandlers[0]); give each handler a unique name",
    ]


def test_unknown_home_integration() -> None:
    assert problems("herald:\n  homeIntegration: prod\n" + BASE) == [
        "herald.yaml: herald.homeIntegration: integration 'prod' is not defined; use one of: local"
    ]


def test_unknown_target() -> None:
    (line,) = problems(BASE.replace("target: ilert", "target: pager"))
    assert line.startswith(
        "herald.yaml: eventHandlers[0](name=alarms).actions[0].ilert_event.target: "
    )
    assert "'pager'" in line


def test_publish_to_an_undefined_integration() -> None:
    text = BASE + textwrap.indent(
        textwrap.dedent(
            """\
            - name: forward
              event: kafka:local:alarms
              actions: [{action: publish, publish: {to: "kafka:archive:alarms-copy"}}]
            """
        ),
        "  ",
    )
    assert problems(text) == [
        "herald.yaml: eventHandlers[1](name=forward).actions[0].publish.to: names integration "
        "'archive', which is not defined; define it under integrations or fix the destination "
        "(defined: local)"
    ]


def test_bad_connection_security_label() -> None:
    text = BASE.replace(
        "bootstrapServers: localhost:9092",
        "bootstrapServers: localhost:9092\n    connectionSecurity: SASL_SSL / SCRAM-SHA-1",
    )
    assert problems(text) == [
        "herald.yaml: integrations[0](name=local).connectionSecurity: unknown "
        "connectionSecurity 'SASL_SSL / SCRAM-SHA-1'; use PLAINTEXT, SSL, or "
        "SASL_PLAINTEXT|SASL_SSL / PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 "
        "(for example 'SASL_SSL / SCRAM-SHA-512')"
    ]


def test_missing_environment_variable_names_field_and_variable_only() -> None:
    text = BASE.replace("localhost:9092", "${env:HERALD_BOOTSTRAP}")
    # One line: the unresolved value causes no follow-up problems of its own.
    assert problems(text) == [
        "herald.yaml: integrations[0](name=local).bootstrapServers: environment variable "
        "HERALD_BOOTSTRAP is not set; set it before starting Herald or replace "
        "${env:HERALD_BOOTSTRAP} with a value"
    ]


def test_missing_secret_file() -> None:
    text = BASE.replace("il1-literal-key", "${file:missing-key}")
    assert problems(text) == [
        "herald.yaml: targets[0](name=ilert).integrationKey: file 'missing-key' named by "
        "${file:missing-key} does not exist; create it or fix the path"
    ]


def test_yaml_syntax_error_names_line_and_column() -> None:
    text = BASE.replace("    condition:", "    condition: $.a: b\n    x:")
    assert problems(text) == [
        "herald.yaml: line 12, column 19: invalid YAML: mapping values are not allowed here; "
        "check the indentation, and quote values that contain ': '"
    ]


def test_tab_indentation() -> None:
    assert problems("integrations:\n\t- name: local\n") == [
        "herald.yaml: line 2, column 1: invalid YAML: found character '\\t' that cannot start "
        "any token; indent with spaces, not tabs"
    ]


def test_repeated_key() -> None:
    text = BASE.replace("    bootstrapServers:", "    name: local\n    bootstrapServers:")
    assert problems(text) == [
        "herald.yaml: line 3, column 5: key 'name' appears again (first at line 2); "
        "keep one of them"
    ]


def test_condition_that_does_not_parse() -> None:
    (line,) = problems(BASE.replace("$.type == 'ALARM'", "$.type == "))
    assert line.startswith("herald.yaml: eventHandlers[0](name=alarms).condition: ")
    assert "parse" in line


def test_template_with_a_syntax_error() -> None:
    (line,) = problems(BASE.replace("summary: ${comment}", "summary: ${comment"))
    assert line.startswith("herald.yaml: eventHandlers[0](name=alarms).actions[0].ilert_event")
    assert "${comment" in line


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("nowhere.yaml", environ={})
    assert caught.value.problems == [
        "nowhere.yaml: file not found; create it (config/example.yaml documents every field) "
        "or set HERALD_CONFIG"
    ]


def test_empty_file() -> None:
    assert problems("# nothing yet\n") == [
        "herald.yaml: the file is empty; define at least the integrations section "
        "(config/example.yaml documents every field)"
    ]


def test_top_level_that_is_not_a_mapping() -> None:
    assert problems("- name: local\n") == [
        "herald.yaml: the top level is a list, not a mapping; write the sections herald, "
        "integrations, targets and eventHandlers as top-level keys"
    ]


def test_unknown_top_level_section() -> None:
    assert problems(BASE + "handlers: []\n") == [
        "herald.yaml: handlers: unknown field 'handlers'; remove it or use one of: herald, "
        "integrations, targets, eventHandlers"
    ]


# --------------------------------------------------------------------------- all together


def test_sections_left_empty_count_as_absent() -> None:
    config = load(BASE.split("targets:")[0] + "herald:\ntargets:\neventHandlers:\n")
    assert config.targets == [] and config.eventHandlers == []


def test_an_action_naming_an_invalid_target_is_reported_once() -> None:
    text = BASE.replace("    type: ilert\n", "")
    assert problems(text) == [
        "herald.yaml: targets[0](name=ilert).type: field required; set it to one of: ilert, "
        "webhook, conductor"
    ]


def test_all_problems_are_reported_together() -> None:
    text = "herald:\n  actionPartitions: 0\n" + BASE.replace(
        "bootstrapServers: localhost:9092", "bootstrapServers: ${env:NOPE}"
    ).replace("active: true", "active: maybe").replace("$.type == 'ALARM'", "$.type ==").replace(
        "target: ilert", "target: pager"
    )
    lines = problems(text)
    assert lines[:3] == [
        "herald.yaml: integrations[0](name=local).bootstrapServers: environment variable NOPE "
        "is not set; set it before starting Herald or replace ${env:NOPE} with a value",
        "herald.yaml: herald.actionPartitions: must be at least 1; change the value",
        "herald.yaml: eventHandlers[0](name=alarms).active: expected true or false, got text; "
        "write true or false",
    ]
    # The handler is still compiled although `active` is invalid: its problems come too.
    rest = "\n".join(lines[3:])
    assert "eventHandlers[0](name=alarms).condition: " in rest
    assert "eventHandlers[0](name=alarms).actions[0].ilert_event.target: " in rest
    assert len(lines) == 5


# --------------------------------------------------------------------------- secrets


SECRETS = {
    "KAFKA_PASSWORD": "kafka-pw-5f1e9c",
    "SR_SECRET": "sr-secret-88aa01",
    "SECURITY": "SASL_SSL / SCRAM-SHA-9-secretish",
    "PROTOCOL": "protocol-secret-77b",
    "ILERT_KEY": "il1-secret-key-d00d",
    "TOKEN": "bearer-token-c0ffee",
}


def test_secrets_never_appear_in_problem_lines() -> None:
    text = """\
    integrations:
      - name: local
        bootstrapServers: localhost:9092
        connectionSecurity: ${env:SECURITY}
        sendingProtocol: ${env:PROTOCOL}
        username: herald
        password: ${env:KAFKA_PASSWORD}
        truststorePassword: literal-truststore-pw
        schemaRegistry:
          url: https://registry
          apiSecret: ${env:SR_SECRET}
          bogus: 1
    targets:
      - name: ilert
        type: ilert
        baseUrl: https://api.ilert.com
        integrationKey: ${env:ILERT_KEY}
        timeoutSeconds: ${env:TOKEN}
      - name: chat
        type: webhook
        url: https://hooks.example.com
        headers: {Authorization: "Bearer ${env:TOKEN}"}
    eventHandlers:
      - name: alarms
        event: kafka:local:alarms
        condition: "$.token == '${env:TOKEN}' &&"
        actions:
          - action: ilert_event
            ilert_event: {integrationKey: "${env:ILERT_KEY}", summary: "${env:TOKEN} ${x"}
          - action: ilert_heartbeat
            ilert_heartbeat: {integrationKey: "literal-heartbeat-key ${"}
    """
    with pytest.raises(ConfigError) as caught:
        load(text, SECRETS)
    output = str(caught.value)
    assert len(caught.value.problems) >= 5
    for secret in [*SECRETS.values(), "literal-truststore-pw", "SCRAM-SHA-9", "literal-heart"]:
        assert secret not in output
    assert "integrations[0](name=local).connectionSecurity: unknown connectionSecurity" in output


def test_describe_masks_secrets_and_shows_what_herald_will_do() -> None:
    text = """\
    integrations:
      - name: local
        bootstrapServers: localhost:9092
        connectionSecurity: SASL_SSL / SCRAM-SHA-512
        username: herald
        password: ${env:KAFKA_PASSWORD}
        truststoreType: PEM
        truststorePath: /etc/ca.pem
        truststorePassword: literal-truststore-pw
        sendingProtocol: AVRO
        schemaRegistry:
          url: https://sr-user:${env:SR_SECRET}@registry.example.com
          authType: PASSWORD_IN_URL
      - name: idle
        bootstrapServers: other:9092
    targets:
      - name: ilert
        type: ilert
        baseUrl: https://api.ilert.com
        integrationKey: ${env:ILERT_KEY}
      - name: chat
        type: webhook
        url: https://hooks.example.com/x
        headers: {Authorization: "Bearer ${env:TOKEN}"}
    eventHandlers:
      - name: alarms
        event: kafka:alarms
        condition: "$.type == 'ALARM'"
        active: true
        actions:
          - action: ilert_event
            ilert_event: {integrationKey: "${env:ILERT_KEY}", eventType: "${state}",
                           eventTypeMap: {SET: ALERT, CLR: RESOLVE}, alertKey: "${mCode}"}
            orderingKey: "${mCode}"
          - action: webhook
            webhook: {headers: {X-Token: "${env:TOKEN}"}, body: {text: "${comment}"}}
            dedupe: {key: "${mCode}", windowSeconds: 60}
      - name: dormant
        event: kafka:idle:audit
        active: false
        actions: [{action: publish, publish: {to: "kafka:local:copy"}}]
    """
    config = load(text, SECRETS)
    output = describe(config)

    for secret in [*SECRETS.values(), "literal-truststore-pw"]:
        assert secret not in output
    assert "password: ***" in output
    assert "https://sr-user:***@registry.example.com" in output
    assert "bootstrap: localhost:9092" in output
    assert "consumes: alarms" in output
    assert "consumes: (no active handler)" in output  # idle: its only handler is inactive
    assert "ilert_event -> ilert (the only ilert target): integrationKey=***" in output
    assert "eventTypeMap={SET->ALERT, CLR->RESOLVE}" in output
    assert "dedupe ${mCode} within 60 s" in output
    assert "dormant  [inactive]" in output
    assert internal_topics(config) == [
        "herald-actions",
        "herald-rules-changelog",
        "herald-executions",
        "herald-dlq-local",
    ]
    assert output.endswith(
        "Internal topics (on local):\n  herald-actions\n  herald-rules-changelog\n"
        "  herald-executions\n  herald-dlq-local"
    )


# ------------------------------------------------------------------ values delivery refuses

HOOKS = """\
  - name: chat
    type: webhook
    url: https://hooks.example.com/in/
"""
HANDLER = "herald.yaml: eventHandlers[0](name=alarms).actions[0]"


def with_params(params: str, action: str = "ilert_event") -> str:
    """BASE with its action's parameters replaced (one `key: value` per line)."""
    head = BASE.replace("targets:\n", "targets:\n" + HOOKS).split("      - action: ")[0]
    lines = "".join(f"          {line}\n" for line in params.splitlines())
    return f"{head}      - action: {action}\n        {action}:\n{lines}"


@pytest.mark.parametrize(
    ("action", "params", "problem"),
    [
        (
            "ilert_event",
            "eventType: FOO",
            "ilert_event.eventType: is 'FOO'; expected one of ALERT, ACCEPT, RESOLVE, COMMENT "
            "(add it to eventTypeMap)",
        ),
        (
            "ilert_event",
            "eventType: SET\neventTypeMap: {SET: ALRT}",
            "ilert_event.eventType: 'SET' maps to 'ALRT'; expected one of ALERT, ACCEPT, "
            "RESOLVE, COMMENT (add it to eventTypeMap)",
        ),
        ("ilert_event", "severity: 7", "ilert_event.severity: is 7; use 1 to 5"),
        ("ilert_event", "severity: high", "ilert_event.severity: is 'high'; use 1 to 5"),
        ("ilert_event", "priority: MEDIUM", "ilert_event.priority: is 'MEDIUM'; use HIGH or LOW"),
        (
            "ilert_event",
            "severity: ${sev}\ndefaults: {severity: 0}",
            "ilert_event.defaults.severity: is 0; use 1 to 5",
        ),
        (
            "webhook",
            "method: FETCH",
            "webhook.method: 'FETCH' is not supported; use one of GET, POST, PUT, PATCH, DELETE",
        ),
        (
            "webhook",
            "url: ftp://files.example.com/in",
            "webhook.url: 'ftp://files.example.com/in' is not an absolute http(s) URL; write "
            "http(s)://host/path, or a path joined to the url of a webhook target",
        ),
        (
            "publish",
            "to: out",
            "publish.to: 'out' must be 'kafka:<integration>:<topic>' (or 'kafka:<topic>' for "
            "the home integration)",
        ),
    ],
)
def test_a_value_delivery_would_refuse_fails_the_load(
    action: str, params: str, problem: str
) -> None:
    assert problems(with_params(params, action)) == [f"{HANDLER}.{problem}"]


def test_a_webhook_without_any_url_fails_the_load() -> None:
    text = with_params("body: {text: hi}", "webhook").replace(HOOKS, "")
    assert problems(text) == [
        f"{HANDLER}.webhook.url: is not set; set it, or name a webhook target that has a url"
    ]


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("ilert_event", "eventType: ${state}\nseverity: ${sev}\npriority: ${prio}"),
        # as delivery sends them: in any case, a severity as text
        ("ilert_event", "eventType: resolve\nseverity: '5'\npriority: low"),
        ("ilert_event", "eventType: SET\neventTypeMap: {SET: ALERT}"),
        ("ilert_event", "priority: urgent\nvalueMaps: {priority: {urgent: HIGH}}"),
        ("webhook", "method: ${verb}\nurl: ${callback}"),
        ("webhook", "method: patch\nurl: alarms/${mCode}"),  # joined to the target's url
        ("publish", "to: kafka:${site}:alarms"),
        ("publish", "to: kafka:alarms-copy"),
    ],
)
def test_templated_and_acceptable_values_load(action: str, params: str) -> None:
    load(with_params(params, action))


def test_a_target_url_that_is_not_absolute_fails_the_load() -> None:
    text = BASE.replace("baseUrl: https://api.ilert.com", "baseUrl: api.ilert.com")
    assert problems(text) == [
        "herald.yaml: targets[0](name=ilert).baseUrl: is not an absolute http(s) URL; write it "
        "as http(s)://host[:port][/path]"
    ]


@pytest.mark.parametrize("written", ["yes", "on", '"true"', "1", "True"])
def test_booleans_are_only_true_and_false(written: str) -> None:
    text = BASE.replace("    active: true\n", f"    active: {written}\n")
    if written == "True":  # YAML's own spelling of true: a boolean, accepted
        assert load(text).eventHandlers[0].active is True
        return
    got = "a number" if written == "1" else "text"
    assert problems(text) == [
        f"herald.yaml: eventHandlers[0](name=alarms).active: expected true or false, got {got}; "
        "write true or false"
    ]


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("integrations[0](name=local).active", BASE.replace(":9092\n", ":9092\n    active: on\n")),
        (
            "eventHandlers[0](name=alarms).actions[0].expandInlineJSON",
            BASE.replace(
                "      - action: ilert_event\n",
                "      - action: ilert_event\n        expandInlineJSON: yes\n",
            ),
        ),
        ("herald.recoveryConsistencyCheck", "herald:\n  recoveryConsistencyCheck: no\n" + BASE),
    ],
)
def test_every_boolean_field_is_strict(where: str, text: str) -> None:
    assert problems(text) == [
        f"herald.yaml: {where}: expected true or false, got text; write true or false"
    ]


# ------------------------------------------------------------------ handlers put at runtime


def test_rules_put_checks_handlers_as_the_configuration_is_checked() -> None:
    config = load(BASE)
    Path("rules.yaml").write_text(
        textwrap.dedent(
            """\
            - name: h
              event: kafka:local:alarms
              active: yes
              condition: "$.type == "
              actions:
                - action: publish
                  publish: {to: "kafka:archive:copy"}
                - action: ilert_event
                  ilert_event: {eventType: FOO}
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_handlers("rules.yaml", config, environ={})
    assert caught.value.problems == [
        "rules.yaml: [0](name=h).active: expected true or false, got text; write true or false",
        "rules.yaml: [0](name=h).actions[0].publish.to: names integration 'archive', which is "
        "not defined; define it under integrations or fix the destination (defined: local)",
        "rules.yaml: [0](name=h).condition: condition '$.type == ' does not parse at line 1, "
        "column 10 (end of condition): the condition is incomplete; fix the expression",
        "rules.yaml: [0](name=h).actions[1].ilert_event.eventType: is 'FOO'; expected one of "
        "ALERT, ACCEPT, RESOLVE, COMMENT (add it to eventTypeMap)",
    ]


def test_rules_put_returns_the_handlers_that_pass() -> None:
    config = load(BASE)
    Path("rule.json").write_text(
        '{"name": "h", "event": "kafka:alarms", "active": true,'
        ' "actions": [{"action": "ilert_event", "ilert_event": {"eventType": "RESOLVE"}}]}',
        encoding="utf-8",
    )
    [handler] = load_handlers("rule.json", config, environ={})
    assert handler.name == "h" and handler.active is True


def test_describe_says_where_each_integrations_actions_go() -> None:
    config = load(
        """
        herald: {homeIntegration: plant}
        integrations:
          - {name: plant, bootstrapServers: "kafka.plant:9092"}
          - {name: cloud, bootstrapServers: "cloud:9092", consumerGroupId: herald-cloud}
        targets: [{name: hooks, type: webhook, url: "https://hooks.example.com/x"}]
        eventHandlers:
          - {name: here, event: "kafka:plant:alarms", active: true,
             actions: [{action: webhook, webhook: {body: {}}}]}
          - {name: there, event: "kafka:cloud:orders", active: true,
             actions: [{action: webhook, webhook: {body: {}}}]}
        """
    )
    lines = [line.strip() for line in describe(config).splitlines()]

    cloud = lines.index("cloud")
    assert "group: herald-cloud" in lines[cloud:]
    assert "consumes: orders" in lines[cloud:]
    assert (
        "actions go to: herald-actions, dead letters to herald-dlq-cloud (both on plant, the "
        "home integration)"
    ) in lines[cloud:]
    assert "actions go to: herald-actions, dead letters to herald-dlq-plant" in lines[:cloud]
