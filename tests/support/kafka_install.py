"""`python -m tests.support.kafka_install`: resolve the Apache Kafka versions the suite runs.

The test command (`./run-tests`) calls it before pytest, so the first test does not pay for
Maven and a missing artifact is reported once, up front. Versions: the 4.x default and the
3.x line the core of the suite also runs on (`CORE_3X_VERSION`), or those given.
"""

from __future__ import annotations

import sys
import time

from tests.support.apache_kafka import KafkaUnavailable, kafka_classpath, kafka_version

#: The 3.x line (what MSK and many self-managed clusters run) the core tests also run on.
CORE_3X_VERSION = "3.9.2"


def main(argv: list[str]) -> int:
    versions = argv or [kafka_version(), CORE_3X_VERSION]
    for version in versions:
        started = time.monotonic()
        try:
            classpath = kafka_classpath(version)
        except KafkaUnavailable as exc:
            print(f"Apache Kafka {version}: {exc}", file=sys.stderr)
            return 1
        jars = len(classpath.split(":"))
        print(f"Apache Kafka {version}: {jars} jars ready ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
