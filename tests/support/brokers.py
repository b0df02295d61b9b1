"""Which broker a test talks to: Apache Kafka by default, tansu for the embedded tier.

The suite runs on Apache Kafka (`tests.support.apache_kafka`), the broker Herald's users run.
tansu, the embedded default of `herald demo`, keeps a small tier of its own so the embedded
default stays honest; `HERALD_TEST_BROKER=tansu` runs every test on it instead (quicker to
start, no Java; it deviates from Kafka where noted in tests/support/herald.py).

Deployments need to know which one a bootstrap address belongs to, because tansu needs
settings Kafka must not get (`TANSU_SETTINGS`).
"""

from __future__ import annotations

import os

#: Bootstrap addresses of tansu brokers started by this test session.
TANSU_BOOTSTRAPS: set[str] = set()


def default_kind() -> str:
    """`kafka` (Apache Kafka, the default) or `tansu`, from $HERALD_TEST_BROKER."""
    kind = os.environ.get("HERALD_TEST_BROKER", "kafka").strip().lower()
    if kind not in ("kafka", "tansu"):
        raise ValueError(f"HERALD_TEST_BROKER must be kafka or tansu, not {kind!r}")
    return kind


def is_tansu(bootstrap: str) -> bool:
    return bootstrap in TANSU_BOOTSTRAPS
