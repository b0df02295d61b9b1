"""What every case uses: results, HTTP polling, /proc readings, the receiver, py-spy, drains.

Nothing here knows about a particular workload; ``bench/cases/`` composes these pieces.
"""

from __future__ import annotations

import bisect
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from agents.embedded.worker import READY_PATTERN, REPO_ROOT, WorkerError, WorkerProcess
from tests.support.kafka import committed_lag

RESULTS = Path(__file__).resolve().parent / "results"
POLL_INTERVAL = 0.05

# Proxies from the environment must not see loopback requests.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------- results


@dataclass
class Measurement:
    """One measured thing (a Herald case or a baseline): a headline figure plus details.

    The report pairs measurements into table rows (e.g. ``F`` with ``floor``); ``details``
    holds everything else worth keeping, and all of it goes to the JSON file.
    """

    name: str
    description: str
    value: float | None = None
    unit: str = ""
    how: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def fail(self, exc: BaseException) -> None:
        """Keep the first line of an error (the log tail stays in the JSON details)."""
        text = str(exc) or exc.__class__.__name__
        self.error = text.splitlines()[0]
        self.details["error_full"] = text[-4000:]
        print(f"[{self.name}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- small helpers


def get_json(url: str, timeout: float = 2.0) -> Any:
    """GET a JSON document; None when the server does not answer (yet) or answers an error."""
    try:
        with _http.open(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        with _http.open(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation: always a value that was measured)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def since(moment: float | None, start: float | None) -> float | None:
    """``moment - start`` rounded to ms, or None when either is unknown."""
    if moment is None or start is None:
        return None
    return round(moment - start, 3)


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> float | None:
    """Poll ``check`` until it is true; the epoch time it first was, None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.time()
        time.sleep(interval)
    return None


# ---------------------------------------------------------------------------- /proc


def _stat_ticks(pid: int | None, fields_at: tuple[int, ...]) -> float | None:
    """The sum of `/proc/<pid>/stat` fields (numbered after the command's closing
    parenthesis) in seconds, or None when the process cannot be read."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(fields[i]) for i in fields_at) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process (all its threads) used so far, from /proc."""
    return _stat_ticks(pid, (11, 12))


def tree_cpu(pid: int | None) -> float | None:
    """CPU seconds of a worker with its child processes (its condition evaluator,
    agents/evaluator_process.py): its own, its reaped children's (cutime + cstime: an
    evaluator that was replaced) and its live children's. A worker's cost includes its
    evaluator's, which runs on the other core."""
    own = _stat_ticks(pid, (11, 12, 13, 14))
    if own is None or pid is None:
        return own
    live = [cpu_seconds(child) for child in children(pid)]
    return own + sum(c for c in live if c is not None)


def total_cpu(pids: Sequence[int | None]) -> float | None:
    """CPU seconds of several workers together, each with its child processes (`tree_cpu`);
    None if any cannot be read."""
    readings = [tree_cpu(pid) for pid in pids]
    if any(r is None for r in readings):
        return None
    return sum(r for r in readings if r is not None)


class CpuSampler:
    """One process's CPU seconds, read from /proc every ``interval`` in a daemon thread.

    For the broker: it runs for the whole benchmark, and each measurement wants its share of
    one window whose ends are known only afterwards (a hand-written baseline times itself in
    its own process), so readings are kept with their times and :meth:`between` picks them.
    A reading costs one small /proc read, 20 a second.
    """

    def __init__(self, pid: int | None, interval: float = POLL_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self._times: list[float] = []  # epoch s of each reading, increasing
        self._cpu: list[float] = []  # CPU seconds at that time
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def start(self) -> CpuSampler:
        if self.pid is not None:
            self.sample()  # so a window opening right away has a reading before it
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Take one reading now (also called at a window's ends, for a tighter bound)."""
        value = cpu_seconds(self.pid)
        if value is None:
            return
        with self._lock:
            self._times.append(time.time())
            self._cpu.append(value)

    def between(self, start: float | None, end: float | None) -> tuple[float, float] | None:
        """(CPU seconds, wall seconds) from the last reading at or before ``start`` to the
        first at or after ``end`` (epoch s): rounded outwards, like the drain windows, so the
        CPU is at worst slightly high and the wall time slightly long. None when either end
        is not covered."""
        if start is None or end is None or end < start:
            return None
        with self._lock:
            first = bisect.bisect_right(self._times, start) - 1
            last = bisect.bisect_left(self._times, end)
            if first < 0 or last >= len(self._times):
                return None
            return self._cpu[last] - self._cpu[first], self._times[last] - self._times[first]


def broker_cpu(
    details: dict[str, Any],
    sampler: CpuSampler | None,
    start: float | None,
    end: float | None,
    count: int,
    per: str = "message",
) -> None:
    """Add the broker's CPU over ``start``..``end`` (epoch s) to a measurement's details:
    seconds, microseconds per ``per`` (message or delivery: ``count`` of them in the window)
    and percent of one core (100 % = one core busy the whole window)."""
    if sampler is None:
        return
    if end is not None:
        sampler.sample()  # the window just closed: a reading right after it
    used = sampler.between(start, end)
    if used is None or used[1] <= 0:
        return
    cpu, wall = used
    details.update(
        broker_cpu_seconds=round(cpu, 2),
        broker_cpu_core_pct=round(100 * cpu / wall, 1),
        broker_cpu_per=per,
    )
    if count:
        details["broker_cpu_us_per_message"] = round(cpu / count * 1e6, 1)


def memory_mb(pid: int | None) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process in MB (1024 * 1024 B)."""
    found: dict[str, float] = {}
    if pid is None:
        return found
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = round(int(value.split()[0]) / 1024, 1)  # kB
    except (OSError, ValueError):
        pass
    return found


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (a launcher might run the real worker as a child)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg prints them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_info(broker: str) -> dict[str, Any]:
    """CPU, versions and commit, for the notes and the JSON file (``broker``: its description)."""
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
        "confluent-kafka": version("confluent-kafka"),
        "broker": broker,
        "platform": platform.platform(),
        "loadavg_at_start": loadavg(),
    }


# ---------------------------------------------------------------------------- processes


class Receiver:
    """bench/receiver.py in its own process (ilert stand-in answering 202 after a delay)."""

    def __init__(self, log: Path, delay_ms: float = 0.0) -> None:
        self.delay_ms = delay_ms
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.receiver", "--delay-ms", str(delay_ms)],
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

    @property
    def events_url(self) -> str:
        """Where an ilert client posts events (ilert's path)."""
        return f"{self.url}/api/events"

    def stats(self) -> dict[str, Any]:
        return get_json(f"{self.url}/_bench/stats") or {}

    def unique(self) -> int:
        """Distinct ``seq`` values received so far."""
        return int(self.stats().get("unique") or 0)

    def samples(self) -> list[list[Any]]:
        """``[seq, ts_ms, kafka_ts_ms, arrival_s]`` for every request, in arrival order."""
        return get_json(f"{self.url}/_bench/samples", timeout=60.0) or []

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.process.pid)

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
    """py-spy recording one process (collapsed stacks), from construction until stop()."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self.process = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "100"]
            + ["-o", str(output)],
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


# ---------------------------------------------------------------------------- drains


@dataclass
class Drain:
    """What polling workers' consumed counters saw while they drained a loaded topic."""

    started_process: float  # epoch s: the workers were started
    start: float | None = None  # epoch s: last poll (request sent) that still saw 0 consumed
    end: float | None = None  # epoch s: first poll (answer received) that saw the target
    ready: float | None = None  # epoch s: every worker logged Ready (and /ready answered 200)
    start_exact: bool = True  # False if the first answer already saw consumption
    extra: dict[str, float] = field(default_factory=dict)  # epoch s each `also` became true
    cpu_start: float | None = None  # workers' CPU seconds (user + system) at start
    cpu_end: float | None = None  # ... at end
    cpu_extra: dict[str, float] = field(default_factory=dict)  # ... at each `also`

    def window(self, end: float | None = None) -> float | None:
        """Seconds from the first consumption to ``end`` (default: the last consumption)."""
        finish = end if end is not None else self.end
        if self.start is None or finish is None:
            return None
        return finish - self.start

    def cpu_used(self, name: str | None = None) -> float | None:
        """Workers' CPU seconds from the start to the end (or to the ``also`` named)."""
        finish = self.cpu_extra.get(name) if name is not None else self.cpu_end
        if self.cpu_start is None or finish is None:
            return None
        return finish - self.cpu_start

    def facts(self) -> dict[str, Any]:
        """Startup figures for the JSON details (startup is never in the measured window)."""
        return {
            "startup_to_first_consumption_s": since(self.start, self.started_process),
            "ready_after_start_s": since(self.ready, self.started_process),
            "window_start_exact": self.start_exact,
        }


def watch_drain(
    workers: Sequence[WorkerProcess],
    counter: Callable[[], int | None],
    target: int,
    timeout: float,
    *,
    ready_path: str | None = None,
    also: dict[str, Callable[[], bool]] | None = None,
    on_first: Callable[[], None] | None = None,
    progress: Callable[[], Any] | None = None,
    stall_after: float = 60.0,
) -> Drain:
    """Poll ``counter`` every 50 ms from the workers' start until it reaches ``target``.

    The window is conservative: it opens at the last poll that still saw 0 (sent before the
    answer) and closes at the first answer that saw ``target``, so it is at most two poll
    intervals (plus two request round trips) longer than the true one, and a rate is at worst
    slightly low. ``also`` names more conditions to wait for (e.g. the last delivery arriving);
    the time each became true is stored in ``extra``. ``on_first`` runs once consumption began
    (to start py-spy only then). ``progress`` returns the counters that show work being done
    (consumed, delivered, ...): once consumption began, if they stay the same for
    ``stall_after`` seconds the drain stopped progressing, and it fails at once with them
    instead of waiting out ``timeout`` (issue 9: a stalled drain hung the benchmark).
    """
    drain = Drain(started_process=time.time())
    last_seen: Any = None
    last_change = time.monotonic()
    pending = dict(also or {})
    pids = [w.pid for w in workers]
    deadline = time.monotonic() + timeout
    logged_ready: set[int] = set()
    while time.monotonic() < deadline:
        for worker in workers:
            if not worker.running:
                raise WorkerError(f"worker exited ({worker.returncode}):\n{worker.log_tail()}")
        cpu = total_cpu(pids)
        sent = time.time()
        value = counter()
        answered = time.time()
        if value is not None:
            if value == 0:
                drain.start, drain.cpu_start = sent, cpu
            else:
                if drain.start is None:  # consumption began before the counter answered
                    drain.start, drain.cpu_start = sent, cpu
                    drain.start_exact = False
                if on_first is not None:
                    on_first()
                    on_first = None
            if value >= target and drain.end is None:
                drain.end, drain.cpu_end = answered, total_cpu(pids)
        if drain.ready is None:
            drain.ready = _all_ready(workers, logged_ready, ready_path)
        for name, check in list(pending.items()):
            if check():
                drain.extra[name] = time.time()
                cpu_now = total_cpu(pids)
                if cpu_now is not None:
                    drain.cpu_extra[name] = cpu_now
                del pending[name]
        if drain.end is not None and not pending and drain.ready is not None:
            return drain
        if progress is not None and drain.start is not None and value:
            seen = (value, progress())
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
            elif time.monotonic() - last_change > stall_after:
                raise TimeoutError(
                    f"the drain stopped progressing: no change for {stall_after:.0f}s at "
                    f"counter {value} of {target}, progress {seen[1]!r}, waiting for "
                    f"{sorted(pending)}; worker logs {[str(w.log_path) for w in workers]}"
                )
        time.sleep(POLL_INTERVAL)
    raise TimeoutError(
        f"not done within {timeout:.0f}s: counter target {target}, end={drain.end}, "
        f"waiting for {sorted(pending)}; worker logs {[str(w.log_path) for w in workers]}"
    )


def _all_ready(
    workers: Sequence[WorkerProcess], logged: set[int], ready_path: str | None
) -> float | None:
    """Now, if every worker logged Faust's ready line and answers 200 on ``ready_path``."""
    for index, worker in enumerate(workers):
        if index not in logged:
            if not re.search(READY_PATTERN, worker.log_text(current_run=True)):
                return None
            logged.add(index)
    if ready_path is not None and not all(http_ok(w.web_url + ready_path) for w in workers):
        return None
    return time.time()


def wait_committed(bootstrap: str, group: str, topic: str, timeout: float = 30.0) -> float | None:
    """Epoch time at which ``group`` had committed every record of ``topic`` (None: never)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lag = committed_lag(bootstrap, group, topic)
        if lag == 0:
            return time.time()
        time.sleep(0.25)
    return None


def throughput(
    measurement: Measurement,
    drain: Drain,
    count: int,
    end: float | None = None,
    cpu_at: str | None = None,
    broker: CpuSampler | None = None,
    per: str = "message",
) -> None:
    """Set ``count / window`` as the figure, with the workers' and the broker's CPU over the
    same window.

    ``end`` closes the window somewhere else than the last consumption (the last delivery),
    ``cpu_at`` names the ``also`` condition whose CPU reading goes with it. ``broker`` samples
    the broker process; ``per`` is what ``count`` counts (message or delivery).
    """
    seconds = drain.window(end)
    if seconds is None or seconds <= 0:
        measurement.error = "no measurement window"
        return
    measurement.value = count / seconds
    measurement.details.update(drain.facts(), count=count, seconds=round(seconds, 3))
    used = drain.cpu_used(cpu_at)
    if used is not None:
        measurement.details.update(
            worker_cpu_seconds=round(used, 2),
            worker_cpu_cores=round(used / seconds, 2),
            worker_cpu_us_per_message=round(used / count * 1e6, 1),
        )
    broker_cpu(measurement.details, broker, drain.start, end or drain.end, count, per)
    if not drain.start_exact:
        measurement.details["warning"] = (
            "the worker had consumed before its counter first answered: the window is too "
            "short and the rate too high"
        )
