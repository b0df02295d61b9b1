"""The command line as a user runs it: config errors stop the worker, check, and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agents.embedded.worker import REPO_ROOT

EXAMPLE_ENV = {
    "HERALD_BOOTSTRAP": "127.0.0.1:9092",
    "ILERT_BASE_URL": "http://127.0.0.1:9",
    "ILERT_INTEGRATION_KEY": "il1-secret-do-not-print",
    "WEBHOOK_URL": "http://127.0.0.1:9/hook",
}


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_invalid_configuration_stops_the_worker_with_exit_code_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "integrations:\n"
        "  - name: local\n"
        "    bootstrapServers: 127.0.0.1:9\n"
        "    bootstrapServer: typo\n"
        "eventHandlers:\n"
        "  - name: h\n"
        "    event: kafka:nowhere:alarms\n"
        '    condition: "$.type == "\n'
        "    actions: [{action: webhook, webhook: {url: 'http://x/${unclosed'}}]\n"
    )
    result = run(
        [sys.executable, "-m", "faust", "-A", "agents.app", "worker", "-l", "info"],
        {"HERALD_CONFIG": str(config)},
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(config))]
    assert any("integrations[0](name=local).bootstrapServer: unknown field" in x for x in lines)
    assert any("eventHandlers[0](name=h).event" in x and "nowhere" in x for x in lines)
    assert any("eventHandlers[0](name=h).condition" in x for x in lines)
    assert any("actions[0].webhook" in x and "unclosed" in x for x in lines)
    assert "not starting" in result.stderr
    assert "Starting..." not in result.stdout + result.stderr  # nothing was started


def test_herald_check_refuses_values_every_message_would_fail_on(tmp_path: Path) -> None:
    config = tmp_path / "static.yaml"
    config.write_text(
        "integrations:\n"
        "  - name: local\n"
        "    bootstrapServers: 127.0.0.1:9\n"
        "targets:\n"
        "  - {name: ilert, type: ilert, baseUrl: 'https://api.ilert.com', integrationKey: k}\n"
        "eventHandlers:\n"
        "  - name: h\n"
        "    event: kafka:local:alarms\n"
        "    active: yes\n"
        '    condition: "$.type == "\n'
        "    actions: [{action: ilert_event, ilert_event: {eventType: FOO}}]\n"
    )
    result = run(["herald", "check", "--config", str(config)], {})
    assert result.returncode == 2, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(config))]
    where = f"{config}: eventHandlers[0](name=h)"
    assert f"{where}.active: expected true or false, got text; write true or false" in lines
    assert any(x.startswith(f"{where}.actions[0].ilert_event.eventType: is 'FOO'") for x in lines)
    assert any(x.startswith(f"{where}.condition:") and "(end of condition)" in x for x in lines)
    assert len(lines) == 3
    assert "OK" not in result.stdout


def test_herald_check_prints_the_plan_without_secrets() -> None:
    result = run(["herald", "check", "--config", "config/example.yaml"], EXAMPLE_ENV)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("config/example.yaml: OK")
    for expected in (
        "local",
        "alarms",
        "alarms-to-ilert",
        "ilert_event",
        "webhook",
        "publish",
        "herald-actions",
        "herald-dlq-local",
        "herald-rules-changelog",
    ):
        assert expected in out, expected
    assert "il1-secret-do-not-print" not in out


def test_demo_runs_end_to_end_on_an_embedded_broker() -> None:
    result = run(["herald", "demo"], {}, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK: 4 ilert events delivered (expected 4)" in result.stdout
    assert '"eventType": "RESOLVE"' in result.stdout
    assert "dead letters (herald-dlq-local): 1" in result.stdout
    assert "worker stopped" in result.stdout
