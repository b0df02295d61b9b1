"""A target's outage, a stop while it fails, and what a delivery dead letter holds (issue 10).

- With the default retry policy an endpoint down for a minute (503, then refusing
  connections) dead-letters nothing: every event is delivered once it is back.
- A SIGTERM while an endpoint fails ends the lanes cleanly: no unretrieved task exception, no
  produce into a stopped producer, a FAILED execution record for every attempt the endpoint
  answered, and the undelivered records are delivered by the next worker.
- A delivery dead letter's `value` is the source record's original bytes.
"""

from __future__ import annotations

import base64
import collections
import time
from pathlib import Path

from agents.embedded.broker import EmbeddedBroker
from agents.embedded.receiver import Receiver, Reply
from tests.integration.test_guarantees import messages, numbered_handler, wait_all
from tests.support.herald import HeraldDeployment, stats, webhook_target
from tests.support.kafka import consume, produce


def default_retry_target(receiver_url: str) -> dict:
    """The webhook target with no `retry`: the defaults are what is tested."""
    target = webhook_target(receiver_url)
    del target["retry"]
    return target


def test_a_target_down_for_a_minute_dead_letters_nothing_with_the_default_retry(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """Issue 10: with 8 attempts (about 25 s) a 60 s outage dead-lettered 100 of 3,000."""
    topic = unique_topic("outage")
    total = 200
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[numbered_handler(topic)],
        targets=[default_retry_target(receiver.url)],
    )
    try:
        worker = herald.start_worker()
        receiver.set_default(Reply(503, "down for maintenance"))
        produce(broker.bootstrap, topic, messages(total, keys=20))
        receiver.wait_for(1, timeout=60, path="/hooks/n")  # the lanes are retrying
        time.sleep(30.0)  # 503 for 30 s
        receiver.stop()  # then connections refused for 30 s
        time.sleep(30.0)
        receiver.set_default(Reply(202))
        receiver.start()  # the same port
        requests = wait_all(receiver, set(range(total)), timeout=120)
        counters = stats(worker)
        failed = [r for r in requests if r.status == 503]
        print(
            f"\noutage: {len(failed)} answers 503, {counters['retries']} retries, "
            f"{counters['delivered']} delivered, {counters['dead_lettered']} dead-lettered"
        )
        assert failed  # the endpoint was down while events were waiting
        assert counters["dead_lettered"] == 0
        assert counters["delivered"] == total
        assert consume(broker.bootstrap, herald.dlq_topic, 1, timeout=3) == []
    finally:
        herald.stop()


def test_sigterm_while_a_target_fails_ends_cleanly_and_keeps_every_record(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """Issue 10: a SIGTERM while retrying logged dozens of `Task exception was never
    retrieved ... SinkRunner._record() ... NotReady('Producer service not yet started')`, and
    the FAILED execution records of those attempts were lost."""
    topic = unique_topic("stopfail")
    total = 40
    # short waits, so lanes attempt again and again during the worker's shutdown; no attempt
    # limit, so every failed attempt is a FAILED record (never a dead letter)
    retry = {"initialBackoffMs": 50, "maxBackoffMs": 300, "jitter": 0.2, "maxElapsedSeconds": 600}
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[numbered_handler(topic)],
        targets=[webhook_target(receiver.url, retry=retry)],
    )
    try:
        worker = herald.start_worker()
        receiver.set_default(Reply(503, "failing"))
        produce(broker.bootstrap, topic, messages(total, keys=10))
        receiver.wait_for(100, timeout=60, path="/hooks/n")
        code = worker.stop()
        log = worker.log_text(current_run=True)
        attempts = receiver.requests
        assert code == 0, worker.log_tail()
        assert "Task exception was never retrieved" not in log
        assert "NotReady" not in log
        assert "Producer service not yet started" not in log

        # every attempt the endpoint answered has its FAILED execution record
        answered = collections.Counter(
            r.header("Idempotency-Key") for r in attempts if r.status == 503
        )
        records = consume(broker.bootstrap, herald.executions_topic, sum(answered.values()), 30)
        recorded = collections.Counter(
            r["json"]["id"] for r in records if r["json"]["status"] == "FAILED"
        )
        print(
            f"\nstop while failing: {sum(answered.values())} attempts answered 503, "
            f"{sum(recorded.values())} FAILED records"
        )
        assert recorded == answered
        assert not [r for r in records if r["json"]["status"] == "DEAD_LETTERED"]

        # nothing was committed past what was not delivered: the next worker delivers it all
        receiver.set_default(Reply(202))
        herald.start_worker(worker)
        wait_all(receiver, set(range(total)), timeout=90)
    finally:
        herald.stop()


def test_a_delivery_dead_letter_holds_the_original_bytes(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("dlqbytes")
    original = '{"n": 7,   "k": "k1", "note": "caf\u00e9 \u2603"}'.encode()  # spacing kept
    receiver.respond("/hooks/n", Reply(400, {"message": "rejected"}))
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[numbered_handler(topic)],
        targets=[webhook_target(receiver.url)],
    )
    try:
        herald.start_worker()
        [(partition, offset)] = produce(broker.bootstrap, topic, [{"key": "k1", "value": original}])
        [letter] = [r["json"] for r in consume(broker.bootstrap, herald.dlq_topic, 1, timeout=30)]
        assert letter["stage"] == "delivery"
        assert letter["reason"].startswith("HTTP 400")
        assert (letter["source"]["partition"], letter["source"]["offset"]) == (partition, offset)
        assert letter["request"] is not None  # still replayable as a request
        assert letter["valueMissing"] is None
        assert base64.b64decode(letter["value"]) == original
    finally:
        herald.stop()
