"""Run a hand-written baseline (``bench/handwritten.py``) as its own process and read its result."""

from __future__ import annotations

import json
import subprocess
import sys

from agents.embedded.worker import REPO_ROOT
from bench.cases import Context
from bench.harness import Measurement, Receiver, broker_cpu
from bench.herald import session_timeout


def run_handwritten(
    ctx: Context,
    m: Measurement,
    *,
    mode: str,
    topic: str,
    receiver: Receiver,
    messages: int | None = None,
    seconds: float = 0.0,
) -> None:
    """Run ``python -m bench.handwritten MODE`` on ``topic`` in a new consumer group.

    Sets ``m.value`` to the records it finished per second between its first record consumed
    and its last record finished (timed inside its process), its CPU per record, and the
    broker's CPU over the same window (its ends are epoch times, so the run-long sampler
    covers them).
    """
    group = ctx.name(m.name)
    argv = [
        sys.executable,
        "-m",
        "bench.handwritten",
        mode,
        "--bootstrap",
        ctx.bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--url",
        receiver.events_url,
        "--seconds",
        str(seconds),
        "--session-timeout-ms",
        str(int(session_timeout(tansu=ctx.tansu) * 1000)),
    ]
    if messages is not None:
        argv += ["--messages", str(messages)]
    log = ctx.here(m.name) / f"{mode}.log"
    limit = 120.0 + (seconds or (messages or 0) / 1000)
    with open(log, "wb") as stderr:
        try:
            done = subprocess.run(
                argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, timeout=limit
            )
        except subprocess.TimeoutExpired:
            m.error = f"did not finish within {limit:.0f}s; see {log}"
            return
    try:
        outcome = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        m.error = f"no result (exit code {done.returncode}); see {log}"
        return
    m.details.update(outcome)
    if outcome.get("error"):
        m.error = outcome["error"]
    first, last, count = outcome.get("first"), outcome.get("last"), outcome.get("consumed") or 0
    if first is None or last is None or last <= first:
        m.error = m.error or "no measurement window"
        return
    seconds_taken = last - first
    m.value = count / seconds_taken
    m.details["seconds"] = round(seconds_taken, 3)
    cpu = outcome.get("cpu_seconds")
    if cpu is not None and count:
        m.details["worker_cpu_cores"] = round(cpu / seconds_taken, 2)
        m.details["worker_cpu_us_per_message"] = round(cpu / count * 1e6, 1)
    broker_cpu(m.details, ctx.broker_cpu, first, last, count)
