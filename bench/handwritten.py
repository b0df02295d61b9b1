"""The baselines a user would write by hand, without Herald: synchronous confluent-kafka loops.

    python -m bench.handwritten filter --bootstrap B --topic T --group G --messages N --url U
    python -m bench.handwritten sequential --bootstrap B --topic T --group G --seconds S --url U

``filter`` is workload F's work written directly: poll records one at a time with
``confluent_kafka.Consumer``, decode them with orjson, test ``event.get("type") == "ALARM"``
in Python and POST an ilert event for each match on one kept-alive ``http.client``
connection, waiting for the answer. It stops after ``--messages`` records.

``sequential`` is ilagent's delivery model: every record becomes an ilert event, POSTed and
answered before the next record is taken. It stops after ``--seconds`` (counted from the first
record) or ``--messages``.

Both run in their own process (so the harness can compare them with a Herald worker process),
use the broker's default partition assignment and auto-commit, and print one JSON line when
done: counts, the epoch times of the first record consumed and of the last record finished,
and the process CPU seconds between them. The ilert event carries the same fields as the
benchmark's Herald handler (``bench/herald.py``), so the receiver parses both alike.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from confluent_kafka import Consumer, Message

INTEGRATION_KEY = "il1bench00000000000000000000000"
EVENT_TYPES = {"SET": "ALERT", "ACK": "ACCEPT", "CLR": "RESOLVE"}
IDLE_TIMEOUT = 60.0  # seconds without a record before giving up (the topic is pre-loaded)


@dataclass
class Outcome:
    """What one run did; printed as JSON for the harness."""

    consumed: int = 0
    delivered: int = 0
    first: float | None = None  # epoch s: first record consumed
    last: float | None = None  # epoch s: last record finished (consumed, and answered if sent)
    cpu_seconds: float | None = None  # process CPU (all threads) from first to last
    error: str | None = None


class Poster:
    """POST JSON to one URL over a kept-alive connection, reconnecting once when it drops."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, body: bytes) -> int:
        """Send one request and read the whole answer; return its status."""
        for attempt in (1, 2):
            try:
                self.connection.request(
                    "POST", self.path, body, {"Content-Type": "application/json"}
                )
                response = self.connection.getresponse()
                response.read()
                return response.status
            except (ConnectionError, http.client.HTTPException):
                self.connection.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def ilert_event(event: dict[str, Any], message: Message) -> bytes:
    """The ilert event the bench's Herald handler renders for ``event``."""
    code = event.get("mCode")
    return orjson.dumps(
        {
            "integrationKey": INTEGRATION_KEY,
            "eventType": EVENT_TYPES.get(event.get("state"), event.get("state")),
            "alertKey": code,
            "summary": f"{code} at {event.get('site')}: {event.get('comment')}",
            "severity": event.get("severity"),
            "customDetails": {
                "site": event.get("site"),
                "value": event.get("value"),
                "seq": event.get("seq"),
                "ts": event.get("ts"),
                "kafkaTs": message.timestamp()[1],
            },
        }
    )


def consumer(bootstrap: str, topic: str, group: str, session_timeout_ms: int) -> Consumer:
    """A plain consumer with the run's session timeout (Herald's default on Kafka; shorter on
    tansu, which completes a group's first join only after half of it)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
        }
    )
    c.subscribe([topic])
    return c


def run(args: argparse.Namespace) -> Outcome:
    """The loop of either mode: poll, decode, (filter,) POST, until done."""
    outcome = Outcome()
    poster = Poster(args.url)
    kafka = consumer(args.bootstrap, args.topic, args.group, args.session_timeout_ms)
    deliver_all = args.mode == "sequential"
    cpu_first = 0.0
    stop_at = float("inf")  # epoch s; set from --seconds at the first record
    idle_since = time.monotonic()
    try:
        while outcome.consumed < args.messages and time.time() < stop_at:
            message = kafka.poll(1.0)
            if message is None:
                if time.monotonic() - idle_since > IDLE_TIMEOUT:
                    outcome.error = f"no record for {IDLE_TIMEOUT:.0f}s"
                    break
                continue
            if message.error():
                continue  # e.g. partition EOF; a user's loop logs and goes on
            idle_since = time.monotonic()
            if outcome.first is None:
                outcome.first = time.time()
                cpu_first = time.process_time()
                if args.seconds > 0:
                    stop_at = outcome.first + args.seconds
            outcome.consumed += 1
            event = orjson.loads(message.value())
            if deliver_all or event.get("type") == "ALARM":
                status = poster.post(ilert_event(event, message))
                if status != 202:
                    outcome.error = f"receiver answered {status}"
                    break
                outcome.delivered += 1
            outcome.last = time.time()
        if outcome.first is not None:
            outcome.cpu_seconds = time.process_time() - cpu_first
    finally:
        kafka.close()
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handwritten", description=__doc__)
    parser.add_argument("mode", choices=["filter", "sequential"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--url", required=True, help="where ilert events go (…/api/events)")
    parser.add_argument("--messages", type=int, default=sys.maxsize, help="stop after N")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after S (0: never)")
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    args = parser.parse_args(argv)
    outcome = run(args)
    print(orjson.dumps(asdict(outcome)).decode(), flush=True)
    return 0 if outcome.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
