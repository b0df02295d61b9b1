"""Run real Herald workers in tests: write a configuration, create its topics, start workers.

A `HeraldDeployment` is one configuration (one consumer group, one topic prefix) and any
number of worker processes running it, as an operator would deploy Herald. Tests talk to the
workers only through Kafka, HTTP and the workers' own web endpoints.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agents.embedded.broker import create_topics
from agents.embedded.worker import WorkerProcess
from tests.support.brokers import is_tansu

FAST_SETTINGS: dict[str, Any] = {
    # Short sessions, so a killed worker's partitions move within seconds (the test broker
    # allows sessions from 1 s: group.min.session.timeout.ms).
    "sessionTimeoutSeconds": 3.0,
    "commitIntervalSeconds": 0.5,
    "actionPartitions": 4,
    "maxInFlight": 16,
}

#: What tansu needs on top (tests.support.brokers decides which broker a deployment is on).
TANSU_SETTINGS: dict[str, Any] = {
    "fetchMaxWaitMs": 10,  # tansu holds every fetch to its deadline
    # tansu 0.6 sets a partition's high watermark to the last batch's base offset + 1, so after
    # a multi-record batch Faust's recovery check sees its own acknowledged writes "beyond"
    # the changelog and refuses to restart (ConsistencyError). Real Kafka does not.
    "recoveryConsistencyCheck": False,
}

FAST_RETRY: dict[str, Any] = {
    "maxAttempts": 5,
    "initialBackoffMs": 100,
    "maxBackoffMs": 1000,
    "multiplier": 2.0,
    "jitter": 0.1,
    "maxElapsedSeconds": 30,
}


class HeraldDeployment:
    """One Herald configuration on the test broker, with its workers."""

    def __init__(
        self,
        tmp_path: Path,
        bootstrap: str,
        *,
        handlers: list[dict[str, Any]],
        targets: list[dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
        source_partitions: int = 3,
        extra_topics: dict[str, int] | None = None,
        integration: dict[str, Any] | None = None,
        integrations: list[dict[str, Any]] | None = None,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """``integration``: extra fields of the home integration `local` (security, Avro);
        ``integrations``: more integrations; ``client_kwargs``: aiokafka settings the harness
        uses to create topics on a secured broker."""
        self.tmp_path = tmp_path
        self.bootstrap = bootstrap
        run = uuid.uuid4().hex[:8]
        self.group = f"herald-{run}"
        self.prefix = f"h{run}"
        broker_settings = TANSU_SETTINGS if is_tansu(bootstrap) else {}
        herald = {
            **FAST_SETTINGS,
            **broker_settings,
            "topicPrefix": self.prefix,
            **(settings or {}),
        }
        self.config: dict[str, Any] = {
            "herald": herald,
            "integrations": [
                {
                    "name": "local",
                    "bootstrapServers": bootstrap,
                    "consumerGroupId": self.group,
                    **(integration or {}),
                },
                *(integrations or []),
            ],
            "targets": targets or [],
            "eventHandlers": handlers,
        }
        self.config_path = tmp_path / f"herald-{run}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        topics = {h["event"].rsplit(":", 1)[-1]: source_partitions for h in handlers}
        topics.update(extra_topics or {})
        self.client_kwargs = dict(client_kwargs or {})
        create_topics(bootstrap, topics, client_kwargs=self.client_kwargs)
        self.workers: list[WorkerProcess] = []

    @property
    def dlq_topic(self) -> str:
        return f"{self.prefix}-dlq-local"

    @property
    def executions_topic(self) -> str:
        return f"{self.prefix}-executions"

    @property
    def rules_topic(self) -> str:
        return f"{self.group}-rules-changelog"

    def worker(self, index: int | None = None) -> WorkerProcess:
        """A new worker process for this deployment (not started)."""
        workdir = self.tmp_path / f"worker-{len(self.workers) if index is None else index}"
        env = {
            "HERALD_CONFIG": str(self.config_path),
            "HERALD_DATA_DIR": str(workdir / "data"),
        }
        worker = WorkerProcess(env=env, workdir=workdir)
        self.workers.append(worker)
        return worker

    def start_worker(self, worker: WorkerProcess | None = None, timeout: float = 60.0):
        worker = worker or self.worker()
        worker.start()
        worker.wait_ready(timeout)
        worker.wait_http_ready(timeout)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            if worker.running:
                worker.stop()


def deploy(
    deployments: list[HeraldDeployment], tmp_path: Path, broker: Any, **kwargs: Any
) -> HeraldDeployment:
    """A new deployment on `broker`, registered with the `deployments` fixture for cleanup."""
    deployment = HeraldDeployment(tmp_path, broker.bootstrap, **kwargs)
    deployments.append(deployment)
    return deployment


def stats(worker: WorkerProcess) -> dict[str, int]:
    with urllib.request.urlopen(f"{worker.web_url}/herald/stats", timeout=5) as response:
        return json.loads(response.read())


def ilert_target(receiver_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "ilert",
        "type": "ilert",
        "baseUrl": receiver_url,
        "integrationKey": "il1test-key",
        "timeoutSeconds": 2,
        "retry": FAST_RETRY,
        **extra,
    }


def webhook_target(receiver_url: str, name: str = "hooks", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "webhook",
        "url": f"{receiver_url}/hooks/",
        "timeoutSeconds": 2,
        "retry": FAST_RETRY,
        **extra,
    }


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """`check()`'s first truthy value, polling every 0.2 s; AssertionError after `timeout`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout:.0f}s")


def herald_check_connect(config_path: Path | str) -> subprocess.CompletedProcess[str]:
    """`herald check --config PATH --connect` as an operator runs it, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", "check", "--config", str(config_path), "--connect"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def put_rule(deployment: HeraldDeployment, tmp_path: Path, rule: dict[str, Any]) -> None:
    """`herald rules put FILE` with one handler, as an operator runs it."""
    from agents.cli import main as herald

    path = tmp_path / f"{rule['name']}.json"
    path.write_text(json.dumps(rule))
    assert herald(["rules", "--config", str(deployment.config_path), "put", str(path)]) == 0
