"""The worker's side of the evaluator process (`streams.evaluator`): conditions run there.

A JavaScript condition is handler authors' code, and the worker must survive it. In-process,
QuickJS contains loops, allocation and the built-ins `streams.conditions` hardens, but not a
regular expression that backtracks for hours nor a crash on its out-of-memory path. So every
worker evaluates its JavaScript conditions in one child process, a batch per round trip (the
source stage gathers a fetched batch's evaluations first: `streams.handlers.prepare`), and:

- **a stall is stopped**: while a batch is out, the worker reads the progress cell every
  `POLL_SECONDS`; an evaluation still under way after its deadline (`deadline_seconds`: the
  condition's time limit, which QuickJS enforces on everything but regular expressions, with
  ample room for a busy machine) has the process killed (SIGKILL);
- **a crash is survived**: the process dying (a signal, an abort) is seen as the end of its
  output;
- either way, the evaluation under way is known from the progress cell. Its message is
  dead-lettered with the reason (a `condition` dead letter, like a condition that throws, so
  `herald replay` can send it again once the handler is fixed), a fresh process starts, and
  the rest of the batch is evaluated again there (conditions are pure);
- **a condition that does it again is quarantined**: after `STRIKES` crashes or stalls, this
  worker stops running it; its evaluations are dead-lettered at once, saying why, until its
  handler's condition changes (a new source or limits is another condition) or the worker
  restarts. A message is never dropped, and one author's condition cannot take the
  throughput of everyone's;
- **the process itself failing is not the messages' fault**: when it cannot start, or dies
  before any evaluation, the batch waits and is tried again with backoff (logged), as when a
  broker is away: nothing is dead-lettered for it.

One process per worker, used by one batch at a time (a lock): QuickJS is single-threaded, the
machine's other core serves the worker, and the worker's event loop runs on while a batch is
out. Costs about 0.5 µs per evaluation for the pickling, against the ~2.6 µs the QuickJS call
itself no longer takes from the worker's core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import pickle
import signal
import sys
import tempfile
import time
from collections.abc import Sequence

from streams.conditions import ConditionJob, ConditionSpec
from streams.errors import ConditionError
from streams.evaluator import COMPILING, FRAME, PROGRESS

log = logging.getLogger("herald.conditions")

__all__ = ["EvaluatorProcess", "deadline_seconds"]

#: How often a batch's progress is read while it is out.
POLL_SECONDS = 0.05
#: Crashes or stalls after which a condition is quarantined on this worker.
STRIKES = 3
#: How long compiling a batch's new conditions may take (each is bounded; this is a backstop).
COMPILE_SECONDS = 30.0
#: Backoff between attempts when the process cannot start or dies outside any evaluation.
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


def deadline_seconds(spec: ConditionSpec) -> float:
    """How long (wall clock) one evaluation may run before its process is killed.

    QuickJS stops a condition at its time limit (CPU time of the evaluator) wherever it
    checks, which is everywhere but inside a regular expression; a deadline of 10 times that,
    and at least 2 s, is never met by a condition QuickJS stopped, however busy the machine.
    """
    return max(2.0, 10 * spec.time_limit_ms / 1000)


class _Process:
    """One running evaluator process and the conditions it has compiled."""

    def __init__(self, proc: asyncio.subprocess.Process, cell: mmap.mmap) -> None:
        self.proc = proc
        self.cell = cell
        self.known: set[int] = set()
        self.stalled = False  # killed by the watchdog, not crashed

    def progress(self) -> tuple[int, int]:
        seq, index = PROGRESS.unpack_from(self.cell, 0)
        return seq, index

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class EvaluatorProcess:
    """Evaluates ConditionJobs in a child process; see the module's docstring."""

    def __init__(self, python: str = sys.executable) -> None:
        self._python = python
        self._lock = asyncio.Lock()
        self._process: _Process | None = None
        self._keys: dict[ConditionSpec, int] = {}
        self._strikes: dict[ConditionSpec, list[str]] = {}
        self._seq = 0
        self._cell_path: str | None = None
        self._out: tuple[int, list[ConditionJob]] | None = None  # the batch out, for `evaluating`
        self.started = 0  # processes started, for /herald/stats and tests
        self.crashes = 0  # evaluations that crashed or stalled their process

    @property
    def pid(self) -> int | None:
        """The running evaluator process's pid, if one runs."""
        process = self._process
        return process.proc.pid if process is not None else None

    def evaluating(self) -> str | None:
        """The label of the evaluation under way in the process, if a batch is out."""
        process, out = self._process, self._out
        if process is None or out is None:
            return None
        seq, index = process.progress()
        return out[1][index].label if seq == out[0] and 0 <= index < len(out[1]) else None

    def quarantined(self, spec: ConditionSpec) -> bool:
        return len(self._strikes.get(spec, ())) >= STRIKES

    async def judge(self, jobs: Sequence[ConditionJob]) -> None:
        """Fill in every job's verdict. Returns only when each has one."""
        if not jobs:
            return
        async with self._lock:
            pending = [job for job in jobs if not self._refused(job)]
            failures = 0
            while pending:
                try:
                    pending = await self._round(pending)
                    failures = 0
                except _ProcessFailed as exc:
                    delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                    failures += 1
                    log.error(
                        "the condition evaluator process failed (%s); evaluating %d "
                        "condition(s) again in %.1f s",
                        exc,
                        len(pending),
                        delay,
                    )
                    await asyncio.sleep(delay)

    def _refused(self, job: ConditionJob) -> bool:
        if not self.quarantined(job.spec):
            return False
        strikes = self._strikes[job.spec]
        job.verdict = ConditionError(
            f"condition is quarantined on this worker: it crashed or stalled the condition "
            f"evaluator {len(strikes)} times (last: {strikes[-1]}); its messages are "
            "dead-lettered until the handler's condition changes or the worker restarts"
        )
        return True

    async def _round(self, jobs: list[ConditionJob]) -> list[ConditionJob]:
        """Send `jobs` as one batch; returns the jobs still to evaluate (empty when done)."""
        process = await self._ensure()
        self._seq += 1
        seq = self._seq
        defines = []
        items = []
        for job in jobs:
            key = self._key(job.spec)
            if key not in process.known:
                defines.append((key, job.spec))
                process.known.add(key)
            items.append((key, job.message_json, job.meta_json))
        payload = pickle.dumps((seq, defines, items), protocol=pickle.HIGHEST_PROTOCOL)
        self._out = (seq, jobs)
        try:
            answer = await self._exchange(process, seq, jobs, payload)
        finally:
            self._out = None
        if answer is not None:
            for job, verdict in zip(jobs, answer, strict=True):
                job.verdict = ConditionError(verdict) if isinstance(verdict, str) else verdict
            return []
        # The process is gone: blame the evaluation under way, evaluate the others again.
        # Those before it ran to completion in that process and only their answers were lost:
        # they go first, and even a condition quarantined by this very strike runs them again
        # (they are known to end). Those after it never ran: a quarantined condition's are
        # refused.
        self._process = None
        done_seq, index = process.progress()
        process.cell.close()
        if done_seq != seq or not 0 <= index < len(jobs):
            raise _ProcessFailed(f"it ended outside any evaluation ({_how(process)})")
        culprit = jobs[index]
        self._strike(culprit, process)
        return jobs[:index] + [job for job in jobs[index + 1 :] if not self._refused(job)]

    async def _exchange(
        self, process: _Process, seq: int, jobs: list[ConditionJob], payload: bytes
    ) -> list[bool | str] | None:
        """Write one batch and read its answer, watching the progress cell; None when the
        process died or was killed."""
        stdin = process.proc.stdin
        stdout = process.proc.stdout
        assert stdin is not None and stdout is not None
        reading = asyncio.ensure_future(_read_frame(stdout))
        try:
            stdin.write(FRAME.pack(len(payload)) + payload)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died: the read below ends too
        watched: tuple[int, int] | None = None
        since = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=POLL_SECONDS)
                if done:
                    break
                now = time.monotonic()
                where = process.progress()
                if where != watched:
                    watched, since = where, now
                    continue
                at_seq, index = where
                if at_seq != seq:
                    limit = COMPILE_SECONDS  # not started the batch yet
                elif index == COMPILING:
                    limit = COMPILE_SECONDS
                elif 0 <= index < len(jobs):
                    limit = deadline_seconds(jobs[index].spec)
                else:
                    limit = COMPILE_SECONDS  # writing its answer
                if now - since > limit:
                    log.error(
                        "a condition has run for %.1f s (%s); stopping the condition "
                        "evaluator process",
                        now - since,
                        jobs[index].label if at_seq == seq and 0 <= index < len(jobs) else "-",
                    )
                    process.kill()
                    process.stalled = True
                    since = float("inf")  # kill once; wait for the read to end
        except BaseException:
            reading.cancel()
            process.kill()
            self._process = None
            raise
        answer = reading.result()
        if answer is None:
            await process.proc.wait()
            return None
        answer_seq, verdicts = answer
        if answer_seq != seq or len(verdicts) != len(jobs):
            process.kill()
            raise _ProcessFailed(f"it answered batch {answer_seq} for batch {seq}")
        return verdicts

    def _strike(self, job: ConditionJob, process: _Process) -> None:
        self.crashes += 1
        how = (
            f"ran past its {deadline_seconds(job.spec):g} s deadline, so the evaluator was "
            "stopped (a regular expression that backtracks runs without the time limit)"
            if process.stalled
            else f"crashed the condition evaluator ({_how(process)})"
        )
        strikes = self._strikes.setdefault(job.spec, [])
        strikes.append(how)
        job.verdict = ConditionError(f"condition {how}")
        log.error(
            "%s: condition %s; the message is dead-lettered%s",
            job.label or "a record",
            how,
            " and the condition is quarantined on this worker" if len(strikes) >= STRIKES else "",
        )

    def _key(self, spec: ConditionSpec) -> int:
        key = self._keys.get(spec)
        if key is None:
            key = self._keys[spec] = len(self._keys) + 1
        return key

    async def _ensure(self) -> _Process:
        if self._process is not None:
            if self._process.proc.returncode is None:
                return self._process
            self._process.cell.close()
        self._process = None
        if self._cell_path is None:
            fd, self._cell_path = tempfile.mkstemp(prefix="herald-evaluator-")
            os.write(fd, bytes(PROGRESS.size))
            os.close(fd)
        with open(self._cell_path, "r+b") as cell_file:
            cell = mmap.mmap(cell_file.fileno(), PROGRESS.size)
        PROGRESS.pack_into(cell, 0, 0, COMPILING)
        try:
            proc = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                "streams.evaluator",
                self._cell_path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,  # a terminal's ^C goes to the worker, which ends it
            )
        except OSError as exc:
            cell.close()
            raise _ProcessFailed(f"it could not start: {exc}") from None
        self.started += 1
        self._process = _Process(proc, cell)
        return self._process

    async def close(self) -> None:
        """End the process (it exits at end of input) and remove the progress cell."""
        process, self._process = self._process, None
        if process is not None:
            stdin = process.proc.stdin
            if stdin is not None:
                stdin.close()
            try:
                await asyncio.wait_for(process.proc.wait(), 2.0)
            except TimeoutError:
                process.kill()
                await process.proc.wait()
            process.cell.close()
        if self._cell_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._cell_path)
            self._cell_path = None


class _ProcessFailed(Exception):
    pass


async def _read_frame(stream: asyncio.StreamReader) -> tuple[int, list[bool | str]] | None:
    try:
        header = await stream.readexactly(FRAME.size)
        (size,) = FRAME.unpack(header)
        payload = await stream.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
    answer: tuple[int, list[bool | str]] = pickle.loads(payload)
    return answer


def _how(process: _Process) -> str:
    code = process.proc.returncode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"
