"""The configuration is checked once: `load_checked` does the whole check a worker makes and
keeps the handlers it compiled, `load_or_exit` refuses an invalid file in one way for every
command, and the rules set runs the configuration's compiled handlers without compiling them
again."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

import streams.config.crosschecks
from agents import rules as rules_module
from agents.configuration import load_or_exit
from agents.rules import RuleSet, blob_hash, handler_blob
from streams.config.checked import Checked, load_checked
from streams.errors import ConfigError

CONFIG = """\
integrations:
  - name: local
    bootstrapServers: localhost:9092
eventHandlers:
  - name: first
    event: kafka:local:alarms
    condition: "$.type == 'ALARM'"
    actions:
      - action: publish
        publish:
          to: kafka:local:copies
  - name: second
    event: kafka:local:alarms
    actions:
      - action: publish
        publish:
          to: kafka:local:all
"""

# Valid as a file, but this version of Herald does not consume from another cluster.
ELSEWHERE = """\
integrations:
  - name: local
    bootstrapServers: localhost:9092
  - name: remote
    bootstrapServers: remote:9092
eventHandlers:
  - name: far
    event: kafka:remote:alarms
    active: true
    actions:
      - action: publish
        publish:
          to: kafka:local:copies
"""

INVALID = """\
integrations:
  - name: local
    bootstrapServers: localhost:9092
    bootstrapServer: typo:9092
"""


def write(tmp_path: Path, text: str, name: str = "herald.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_load_checked_keeps_the_handlers_it_compiled(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)

    checked = load_checked(path)

    assert checked.path == path
    assert [h.name for h in checked.config.eventHandlers] == ["first", "second"]
    assert [h.name for h in checked.handlers] == ["first", "second"]
    assert [h.spec for h in checked.handlers] == checked.config.eventHandlers
    assert [a.name for a in checked.handlers[0].actions] == ["publish"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        checked.path = "other.yaml"  # type: ignore[misc]


def test_load_checked_compiles_each_handler_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    compile_handler = streams.config.crosschecks.compile_handler

    def counting(handler: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(handler.name)
        return compile_handler(handler, *args, **kwargs)

    monkeypatch.setattr(streams.config.crosschecks, "compile_handler", counting)

    load_checked(write(tmp_path, CONFIG))

    assert calls == ["first", "second"]


def test_load_checked_reports_the_loaders_problems(tmp_path: Path) -> None:
    path = write(tmp_path, INVALID)

    with pytest.raises(ConfigError) as caught:
        load_checked(path)

    (problem,) = caught.value.problems
    assert problem.startswith(
        f"{path}: integrations[0](name=local).bootstrapServer: unknown field "
        "'bootstrapServer'; remove it or use one of: name, bootstrapServers, "
    )


def test_load_checked_accepts_a_handler_on_another_cluster(tmp_path: Path) -> None:
    path = write(tmp_path, ELSEWHERE)

    checked = load_checked(path)

    assert [(h.integration, h.topic) for h in checked.handlers] == [("remote", "alarms")]


def test_load_checked_refuses_two_integrations_in_one_group_on_one_cluster(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, ELSEWHERE.replace("remote:9092", "localhost:9092"))

    with pytest.raises(ConfigError) as caught:
        load_checked(path)

    assert caught.value.problems == [
        f"{path}: integrations[1](name=remote).consumerGroupId: integration 'remote' is "
        "consumed on the same cluster as integration 'local' (localhost:9092) in the same "
        "consumer group 'herald'; the two would take each other's partitions: give 'remote' "
        "a consumerGroupId of its own"
    ]
    fixed = ELSEWHERE.replace("remote:9092", "localhost:9092\n    consumerGroupId: far")
    assert load_checked(write(tmp_path, fixed, "fixed.yaml")).handlers


def test_load_checked_resolves_from_the_given_environment(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG.replace("localhost:9092", "${env:SERVERS}"))

    checked = load_checked(path, {"SERVERS": "broker:9092"})

    assert checked.config.home.bootstrapServers == "broker:9092"


def test_load_or_exit_returns_the_checked_configuration(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)

    checked = load_or_exit(path)

    assert isinstance(checked, Checked)
    assert [h.name for h in checked.handlers] == ["first", "second"]


def test_load_or_exit_prints_every_problem_then_the_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, ELSEWHERE.replace("remote:9092", "localhost:9092"))

    with pytest.raises(SystemExit) as caught:
        load_or_exit(path, verb="; not starting")

    assert caught.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"{path}: integrations[1](name=remote).consumerGroupId: ")
    assert lines[1:] == [f"herald: configuration {path} is invalid; not starting"]


def test_load_or_exit_reads_herald_config_and_the_given_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CONFIG.replace("localhost:9092", "${env:SERVERS}"))
    monkeypatch.setenv("HERALD_CONFIG", path)
    monkeypatch.delenv("SERVERS", raising=False)

    assert load_or_exit(environ={"SERVERS": "b:9092"}).config.home.bootstrapServers == "b:9092"
    with pytest.raises(SystemExit):
        load_or_exit()
    assert capsys.readouterr().err.splitlines()[-1] == f"herald: configuration {path} is invalid"


def test_load_or_exit_final_line_can_be_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        load_or_exit(write(tmp_path, INVALID), final="herald ilagent: invalid; not starting")

    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "herald ilagent: invalid; not starting"


class _Table(dict):
    """The part of the rules table RuleSet reads."""

    version = 1


def test_rule_set_runs_the_configurations_compiled_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = load_checked(write(tmp_path, CONFIG))
    first, second = checked.config.eventHandlers
    table = _Table({b"first": handler_blob(first), b"second": handler_blob(second)})

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a configuration handler was compiled again")

    monkeypatch.setattr(rules_module, "compile_handler", refuse)
    rules = RuleSet(checked.config, table, "rules", compiled=checked.handlers)  # type: ignore[arg-type]

    assert rules.index().handlers == list(checked.handlers)


def test_rule_set_compiles_a_changed_handler(tmp_path: Path) -> None:
    checked = load_checked(write(tmp_path, CONFIG))
    first = checked.config.eventHandlers[0]
    changed = first.model_copy(update={"condition": "$.type == 'OTHER'"})
    table = _Table({b"first": handler_blob(changed)})

    rules = RuleSet(checked.config, table, "rules", compiled=checked.handlers)  # type: ignore[arg-type]

    (handler,) = rules.index().handlers
    assert handler not in checked.handlers
    assert handler.spec.condition == "$.type == 'OTHER'"
    assert blob_hash(handler_blob(changed)) in rules._compiled  # noqa: SLF001


def test_rule_set_without_compiled_handlers_compiles_the_table(tmp_path: Path) -> None:
    checked = load_checked(write(tmp_path, CONFIG))
    table = _Table({b"first": handler_blob(checked.config.eventHandlers[0])})

    rules = RuleSet(checked.config, table, "rules")  # type: ignore[arg-type]

    assert [h.name for h in rules.index().handlers] == ["first"]
