"""Where a Herald worker's time goes, by part: shares of a py-spy raw profile's samples.

    py-spy record -p PID -d 10 -r 250 --gil --format raw -o profile.txt
    python -m bench.categorize profile.txt

Each sample is counted for the part of its innermost frame that belongs to one of the parts
below (so time in aiokafka called from the sink counts as Kafka, not as the sink). ``--gil``
keeps only samples of the thread holding the GIL: without it, a thread waiting for the GIL is
counted wherever it stopped. bench/results/profile-A0-gil.txt is such a profile of A0.
"""

from __future__ import annotations

import collections
import re
import sys

PARTS = [
    ("HTTP client (streams/http1.py, delivery)", ("streams/http1.py", "streams/delivery.py")),
    (
        "Kafka produce (aiokafka producer, Faust producer/changelog)",
        (
            "aiokafka/producer",
            "transport/producer.py",
            "faust/topics.py",
            "faust/channels.py",
            "drivers/aiokafka.py:Producer",
            "tables/base.py",
            "partitioner.py",
            "tuples.py",
        ),
    ),
    ("RocksDB table (dedupe)", ("stores/", "tables/table.py", "utils/collections.py")),
    (
        "source: decode, condition, render (streams/)",
        (
            "streams/handlers.py",
            "streams/templating.py",
            "streams/conditions.py",
            "streams/routing.py",
            "streams/codecs.py",
            "streams/message.py",
            "actions/ilert.py",
            "actions/base.py",
        ),
    ),
    (
        "Kafka consume and client I/O (consumer thread, fetch, connections)",
        (
            "aiokafka/consumer",
            "aiokafka/protocol",
            "aiokafka/conn",
            "aiokafka/client",
            "mode/threads.py",
            "transport/consumer.py",
            "agents/transport.py",
            "agents/batches.py",
        ),
    ),
    ("Herald agents (sources.py, sink/)", ("agents/sources.py", "agents/sink/")),
    ("asyncio / uvloop", ("asyncio/", "mode/worker.py", "mode/services.py")),
]


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, keys in PARTS:
            if any(key in frame for key in keys):
                return name
    return "other"


def main(path: str) -> None:
    total = 0
    shares: collections.Counter[str] = collections.Counter()
    for line in open(path, errors="replace"):
        match = re.match(r"^(.*) (\d+)$", line.strip())
        if match is None:
            continue
        count = int(match.group(2))
        total += count
        shares[part_of(match.group(1).split(";"))] += count
    for name, count in shares.most_common():
        print(f"{100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
