"""A handler author's condition cannot crash or stall a worker (issue 14).

One real worker on the real broker, with three handlers on one topic: `fine` (no condition, a
webhook per record), `hostile`, whose condition runs a regular expression that backtracks for
hours on some records (QuickJS's time limit does not reach inside a regular expression), and
`oom`, whose condition allocates until QuickJS's memory limit on some records (a pattern on
which QuickJS can crash on its out-of-memory path, depending on its heap). Conditions run in
the worker's evaluator process (agents.evaluator_process), so:

- every record reaches `fine`'s webhook, the hostile ones too;
- a crash of the evaluator process during an evaluation (the test sends it SIGSEGV while it is
  inside the regular expression, so the crash comes at a moment the test knows) is that
  record's `condition` dead letter, naming the signal;
- a stall is stopped at the deadline (10 times the 500 ms time limit) and is its record's dead
  letter;
- the out-of-memory pattern is its record's dead letter, as a crash or as the memory limit;
- after three crashes or stalls `hostile` is quarantined: its next records are dead-lettered at
  once, saying so (whether it would have matched them is not known);
- the worker process is the one that started, and it is still ready.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

from agents.embedded.broker import EmbeddedBroker
from agents.embedded.receiver import Receiver
from tests.support.herald import deploy, stats, wait_until, webhook_target
from tests.support.kafka import consume, produce

STALL = "$.stall ? /^(a+)+$/.test($.stall) : false"
OOM = "$.oom ? (function () { var a = []; for (;;) a.push(new Array(100).fill(1)); })() : false"
BACKTRACKING = "a" * 40 + "b"
OOM_REASONS = ("crashed the condition evaluator (signal SIGSEGV)", "exceeded its memory limit")


def evaluator_of(worker_pid: int) -> int | None:
    """The pid of the worker's evaluator process (`python -m streams.evaluator`), if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == worker_pid and b"streams.evaluator" in cmdline:
            return int(entry.name)
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_condition_that_crashes_or_stalls_stops_only_its_own_records(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("hostile")

    def handler(name: str, condition: str | None) -> dict:
        body = {"n": "${n}"}
        return {
            "name": name,
            "event": f"kafka:local:{topic}",
            "active": True,
            **({"condition": condition} if condition else {}),
            "actions": [{"action": "webhook", "webhook": {"url": name, "body": body}}],
        }

    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[handler("fine", None), handler("hostile", STALL), handler("oom", OOM)],
        targets=[webhook_target(receiver.url)],
        settings={"conditionMemoryLimitMb": 1, "conditionTimeLimitMs": 500},
        source_partitions=1,
    )
    worker = herald.start_worker()
    pid = worker.pid
    assert pid is not None

    def send(*records: dict) -> None:
        produce(broker.bootstrap, topic, [{"key": "k", "value": r} for r in records])

    send({"n": 0})
    receiver.wait_for(1, timeout=60, path="/hooks/fine")
    evaluator = wait_until(lambda: evaluator_of(pid), 10, "the worker's evaluator process")
    idle = cpu_seconds(evaluator)
    send({"n": 1, "stall": BACKTRACKING})
    wait_until(lambda: cpu_seconds(evaluator) > idle + 0.3, 30, "the evaluator to be busy")
    os.kill(evaluator, signal.SIGSEGV)  # a crash inside the regular expression of record 1
    consume(broker.bootstrap, herald.dlq_topic, 1, timeout=30)

    send(
        {"n": 2, "stall": BACKTRACKING},  # stopped at the deadline
        {"n": 3, "oom": True},
        {"n": 4, "stall": BACKTRACKING},  # stopped at the deadline: the third strike
        {"n": 5, "stall": BACKTRACKING},  # quarantined
        {"n": 6},  # quarantined too: whether `hostile` matches it is not known
    )
    hooks = receiver.wait_for(7, timeout=90, path="/hooks/fine")
    assert sorted(h.json["n"] for h in hooks) == list(range(7))
    letters = consume(broker.bootstrap, herald.dlq_topic, 6, timeout=60)
    by_offset = {r["json"]["source"]["offset"]: r["json"] for r in letters}
    assert sorted(by_offset) == [1, 2, 3, 4, 5, 6]
    assert {letter["stage"] for letter in by_offset.values()} == {"condition"}
    handlers = {offset: letter["handler"] for offset, letter in by_offset.items()}
    assert handlers == {
        1: "hostile",
        2: "hostile",
        3: "oom",
        4: "hostile",
        5: "hostile",
        6: "hostile",
    }
    assert "crashed the condition evaluator (signal SIGSEGV)" in by_offset[1]["reason"]
    assert "ran past its 5 s deadline" in by_offset[2]["reason"]
    assert any(reason in by_offset[3]["reason"] for reason in OOM_REASONS), by_offset[3]
    assert "ran past its 5 s deadline" in by_offset[4]["reason"]
    assert "quarantined" in by_offset[5]["reason"] and "quarantined" in by_offset[6]["reason"]
    assert not [r for r in receiver.requests if r.path in ("/hooks/hostile", "/hooks/oom")]

    assert worker.running and worker.pid == pid
    with urllib.request.urlopen(f"{worker.web_url}/ready", timeout=5) as response:
        assert response.status == 200
    counters = stats(worker)
    assert counters["consumed"] == 7
    assert counters["condition_crashes"] >= 3
