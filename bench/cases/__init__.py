"""The benchmark's cases. Each takes the run's :class:`Context` and returns measurements.

- ``floor``: a bare Faust agent on workload F's topic (and, with L, its one-hop latency)
- ``filter``: F (Herald at 1 %), F-confluent (hand-written loop), S (1 and 2 workers)
- ``alerts``: A0 and A20 (Herald delivering everything) with the sequential sender
- ``latency``: L (steady rate, produce-to-receiver latency)
- ``memory``: M (a worker holding a million dedupe keys: RSS, recovery and restart time)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from agents.embedded.broker import create_topics, run_sync
from bench import workload
from bench.broker import BenchBroker
from bench.harness import CpuSampler, Measurement
from bench.herald import WORKING, Tree

PARTITIONS = 8


@dataclass
class Context:
    """What the cases of one run share: the broker, the options, and what ran before."""

    broker: BenchBroker
    args: argparse.Namespace
    workdir: Path
    run_id: str  # distinguishes this run's topics and groups from an earlier run's
    results: dict[str, Measurement] = field(default_factory=dict)
    #: The broker process's CPU, sampled all run long (each measurement takes its window).
    broker_cpu: CpuSampler | None = None
    #: ``--before REV``: the revision's worktree, whose workers each Herald case runs too.
    before: Tree | None = None
    #: Per paired case, its measurement names in the order they ran (notes and JSON).
    order: dict[str, list[str]] = field(default_factory=dict)
    _filter_topic: str | None = None

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def tansu(self) -> bool:
        """Whether the run is on tansu, which needs its own settings and workarounds."""
        return self.broker.tansu

    def name(self, case: str) -> str:
        """Topic / consumer group / topic prefix of one case of this run."""
        return f"bench-{self.run_id}-{case}"

    def here(self, case: str) -> Path:
        """The case's own directory (logs, configs, data)."""
        path = self.workdir / case
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sides(self, case: str) -> tuple[Tree, ...]:
        """The trees a Herald case runs from, in the order they run.

        Without ``--before`` only the working tree. With it, the revision and the working
        tree, taking turns at going first from one paired case to the next (the first
        paired case starts with the revision): neither side systematically gets the broker
        after the other has warmed it further, or the page cache the other filled.
        """
        if self.before is None:
            return (WORKING,)
        pair = (self.before, WORKING) if len(self.order) % 2 == 0 else (WORKING, self.before)
        self.order[case] = [case + tree.label for tree in pair]
        return pair

    def filter_topic(self) -> str:
        """Workload F's topic, loaded on first use and then shared (read-only) by every case
        that drains it (floor, F, F-confluent, S), each in its own consumer group."""
        if self._filter_topic is None:
            topic = self.name("filter")
            seconds = self.load(topic, self.args.messages, alarm_every=100)
            print(
                f"  loaded {self.args.messages:,} events into {topic} in {seconds:.1f}s", flush=True
            )
            self._filter_topic = topic
        return self._filter_topic

    def load(self, topic: str, count: int, *, alarm_every: int) -> float:
        """Create ``topic`` (8 partitions) and produce ``count`` events; the seconds it took."""
        create_topics(self.bootstrap, {topic: PARTITIONS})
        return run_sync(lambda: workload.preload(self.bootstrap, topic, count, alarm_every))

    def record(self, *measurements: Measurement) -> None:
        for measurement in measurements:
            self.results[measurement.name] = measurement
