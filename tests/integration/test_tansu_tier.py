"""The embedded tier: a few core scenarios on tansu, the broker `herald demo` embeds.

The suite runs on Apache Kafka; these keep the embedded default honest in the same run (CI
included): routing with an exact ilert body, publish read back, dead-lettering and replay, a
runtime rule change (the rules GlobalTable), and a SIGKILL mid-stream. `herald demo` itself
(tests/integration/test_cli.py) and the embedded broker's own tests (test_harness.py) run on
tansu too. Each delegates to the Kafka test of the same scenario with the `tansu` broker.
"""

from __future__ import annotations

from pathlib import Path

from agents.embedded.broker import EmbeddedBroker
from agents.embedded.receiver import Receiver
from tests.integration import test_guarantees as guarantees
from tests.integration import test_routing as routing


def test_routing_on_tansu(
    tansu: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path, deployments
) -> None:
    routing.test_alarm_becomes_exact_ilert_event_and_non_alarms_are_filtered(
        tansu, receiver, unique_topic, tmp_path, deployments
    )


def test_publish_on_tansu(tansu: EmbeddedBroker, unique_topic, tmp_path: Path, deployments) -> None:
    routing.test_publish_is_read_back_by_an_independent_consumer(
        tansu, unique_topic, tmp_path, deployments
    )


def test_dead_letter_and_replay_on_tansu(
    tansu: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path, deployments
) -> None:
    routing.test_permanent_failure_is_dead_lettered_and_replay_delivers_it(
        tansu, receiver, unique_topic, tmp_path, deployments
    )


def test_runtime_rule_change_on_tansu(
    tansu: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path, deployments
) -> None:
    routing.test_runtime_rule_change_reaches_the_worker_without_restart(
        tansu, receiver, unique_topic, tmp_path, deployments
    )


def test_sigkill_on_tansu(
    tansu: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    guarantees.test_sigkill_mid_stream_loses_nothing_and_repeats_only_in_flight(
        tansu, receiver, unique_topic, tmp_path
    )
