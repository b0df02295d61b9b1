"""Herald as the benchmark runs it: one configuration per case, one or more worker processes.

Every Herald case uses the same handler (condition ``$.type == 'ALARM'``, action
``ilert_event`` to the case's receiver) and the same ``herald:`` settings; the workloads differ
only in their events (1 % ALARM for F and S, all ALARM for A and L). A case has its own
consumer group (also its topic prefix), so no case sees another's offsets or internal topics.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.embedded.broker import create_topics
from agents.embedded.worker import WorkerProcess
from bench.broker import TANSU_HERALD_SETTINGS
from bench.harness import get_json

INTEGRATION_KEY = "il1bench00000000000000000000000"
CONDITION = "$.type == 'ALARM'"
#: Herald's default ``sessionTimeoutSeconds`` (streams/config/models.py), what the bare Faust
#: floor and the hand-written loops get on Kafka too, so every consumer joins alike.
DEFAULT_SESSION_TIMEOUT = 10.0


def session_timeout(*, tansu: bool) -> float:
    """The consumer-group session timeout of every consumer of a run (Herald's or not)."""
    if tansu:
        return float(TANSU_HERALD_SETTINGS["sessionTimeoutSeconds"])
    return DEFAULT_SESSION_TIMEOUT


def settings(*, partitions: int, max_in_flight: int, tansu: bool) -> dict[str, Any]:
    """The ``herald:`` block of every bench configuration (without per-worker fields).

    On Kafka only what the benchmark varies is set and everything else is Herald's default,
    as a user would run it; on tansu also :data:`~bench.broker.TANSU_HERALD_SETTINGS` (a short
    session, because tansu completes a first join after half of it; no recovery consistency
    check, because tansu reports a changelog's high watermark short of acknowledged writes).
    """
    block: dict[str, Any] = {
        "homeIntegration": "local",
        "actionPartitions": partitions,
        "maxInFlight": max_in_flight,
        "commitIntervalSeconds": 1.0,
    }
    if tansu:
        block.update(TANSU_HERALD_SETTINGS)
    return block


#: Set by ``python -m bench.run --status-page``: every Herald worker gets this admin key, so
#: its status page (``/status``, agents/web) can be opened while the case runs.
STATUS_PAGE_KEY: dict[str, str] | None = None


def config(
    *,
    name: str,
    bootstrap: str,
    topic: str,
    receiver_url: str,
    partitions: int,
    max_in_flight: int,
    tansu: bool,
) -> dict[str, Any]:
    """The configuration of one case: group and topic prefix ``name``, one handler on ``topic``.

    The ilert event's ``alertKey`` is the event's ``mCode`` (10,000 distinct values, also the
    record key), so it is the ordering key too: deliveries of different codes may run in
    parallel. ``customDetails`` carries ``seq``, ``ts`` and the Kafka timestamp so the receiver
    can match each delivery to its event and time it.
    """
    admin = {} if STATUS_PAGE_KEY is None else {"admin": dict(STATUS_PAGE_KEY)}
    return {
        "herald": {
            **settings(partitions=partitions, max_in_flight=max_in_flight, tansu=tansu),
            "topicPrefix": name,
            **admin,
        },
        "integrations": [
            {
                "name": "local",
                "bootstrapServers": bootstrap,
                "consumerGroupId": name,
                "connectionSecurity": "PLAINTEXT",
            }
        ],
        "targets": [
            {
                "name": "ilert",
                "type": "ilert",
                "baseUrl": receiver_url,
                "integrationKey": INTEGRATION_KEY,
                "timeoutSeconds": 10,
            }
        ],
        "eventHandlers": [
            {
                "name": f"{name}-to-ilert",
                "event": f"kafka:local:{topic}",
                "condition": CONDITION,
                "evaluatorType": "javascript",
                "active": True,
                "actions": [
                    {
                        "action": "ilert_event",
                        "ilert_event": {
                            "target": "ilert",
                            "eventType": "${state}",
                            "eventTypeMap": {"SET": "ALERT", "ACK": "ACCEPT", "CLR": "RESOLVE"},
                            "alertKey": "${mCode}",
                            "summary": "${mCode} at ${site}: ${comment}",
                            "severity": "${severity}",
                            "customDetails": {
                                "site": "${site}",
                                "value": "${value}",
                                "seq": "${seq}",
                                "ts": "${ts}",
                                "kafkaTs": "${_kafka.timestamp}",
                            },
                        },
                    }
                ],
            }
        ],
    }


def write_config(path: Path, content: dict[str, Any]) -> Path:
    """Write a configuration as YAML (``--keep`` keeps it) and create its actions topic.

    It creates the case's ``<prefix>-actions`` topic (``actionPartitions`` partitions, no
    configs: what the worker would create), so it is in the broker's metadata before any
    worker subscribes. On Kafka a worker that creates it itself can subscribe within tens of
    milliseconds of the creation, before the broker's metadata lists it; aiokafka then
    assigns the group without it ("Ignoring missing topic") and does not look again until
    its next metadata refresh (``metadata_max_age_ms``, 5 minutes), so the sink gets nothing
    and no event is delivered. That is a Herald start-up race (agents/, reported), not
    something the benchmark measures. :func:`missing_topics` checks that it did not happen.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    settings_block = content["herald"]
    bootstrap = content["integrations"][0]["bootstrapServers"]
    actions = f"{settings_block['topicPrefix']}-actions"
    create_topics(bootstrap, {actions: int(settings_block["actionPartitions"])})
    return path


_MISSING = re.compile(r"Ignoring missing topic: '([^']+)'")


def missing_topics(process: WorkerProcess) -> list[str]:
    """Topics the worker's group assignment left out because the broker did not list them
    yet (aiokafka's warning): their partitions are consumed by no one until a rebalance."""
    return sorted(set(_MISSING.findall(process.log_text(current_run=True))))


def missing_note(processes: list[WorkerProcess]) -> str | None:
    """A warning for the notes when any worker's assignment left a subscribed topic out."""
    missing = sorted({t for p in processes for t in missing_topics(p)})
    if not missing:
        return None
    return (
        f"a worker's group assignment left out {missing} (not yet in the broker's metadata "
        "when it subscribed): nothing was consumed from them until a rebalance"
    )


@dataclass(frozen=True)
class Tree:
    """The code a case's Herald workers run: the working tree, or a worktree of a revision.

    ``--before REV`` runs each Herald case once from each (bench/revision.py makes the
    worktree). A worker started with ``cwd=root`` has ``root`` first on its ``sys.path`` and
    ``PYTHONPATH`` (agents/embedded/worker.py), ahead of the editable install's finder (which
    is appended to ``sys.meta_path`` and points at the repository), so the revision's own
    ``agents`` and ``streams`` are imported.
    """

    rev: str | None = None  # short commit; None: the working tree
    root: Path | None = None  # the worktree; None: the repository itself

    @property
    def label(self) -> str:
        """Suffix of the measurement names and table rows: ``F@44ba04e``; none for the
        working tree."""
        return f"@{self.rev}" if self.rev else ""

    @property
    def slug(self) -> str:
        """Suffix of the case's topics, group, topic prefix and directory (Kafka topic names
        allow no ``@``): ``F-at-44ba04e``."""
        return f"-at-{self.rev}" if self.rev else ""


#: The working tree (the repository the benchmark runs from).
WORKING = Tree()


def worker(config_path: Path, workdir: Path, tree: Tree = WORKING) -> WorkerProcess:
    """A Herald worker on ``config_path`` with its own data directory, web port and log,
    running the code of ``tree``.

    Several workers may share one configuration (one consumer group): the data directory and
    web port come from the environment, which overrides the file.
    """
    process = WorkerProcess(app_module="agents.app", workdir=workdir, cwd=tree.root)
    process.env.update(
        HERALD_CONFIG=str(config_path),
        HERALD_DATA_DIR=str(process.datadir),
        HERALD_WEB_PORT=str(process.web_port),
    )
    if STATUS_PAGE_KEY is not None:
        print(
            f"  status page of {workdir.name}: {process.web_url}/status "
            f"(key {STATUS_PAGE_KEY['keyId']}, secret {STATUS_PAGE_KEY['keySecret']})",
            flush=True,
        )
    return process


def process_cwd(process: WorkerProcess) -> str | None:
    """The running worker's working directory, from /proc: the tree whose packages come first
    on its path (None once it exited)."""
    if process.pid is None or not process.running:
        return None
    try:
        return os.readlink(f"/proc/{process.pid}/cwd")
    except OSError:
        return None


def stats(process: WorkerProcess) -> dict[str, Any] | None:
    """The worker's ``/herald/stats`` counters (None while it does not answer)."""
    return get_json(f"{process.web_url}/herald/stats")


def consumed(processes: list[WorkerProcess]) -> int | None:
    """Records consumed by all ``processes`` together; None unless every one answers."""
    total = 0
    for process in processes:
        answer = stats(process)
        if answer is None or answer.get("consumed") is None:
            return None
        total += int(answer["consumed"])
    return total
