"""Run a Faust worker as a real subprocess, the way it runs in production.

Used by the tests, the benchmark and `herald demo`.

At-least-once behaviour only shows across process boundaries: a SIGKILL mid-batch, a restart
that must recover a RocksDB table from its changelog, two workers sharing a group. So tests
start ``python -m faust -A <module> worker`` exactly as an operator would, with the
environment and config path they choose, and observe it through its log.

Faust CLI facts this relies on (faust-streaming 0.15.3):

- ``-A/--app`` and ``-D/--datadir`` are options of the root command, before ``worker``;
  ``-l/--loglevel``, ``-p/--web-port``, ``-b/--web-bind`` and ``-h/--web-host`` belong to
  ``worker``. ``--web-bind`` is the listen address (default 0.0.0.0), ``--web-host`` only the
  advertised name.
- ``--datadir`` works with a module-level ``app`` (its settings are resolved lazily, after the
  CLI set ``F_DATADIR``); ``F_DATADIR`` is also put in the environment so the directory holds
  even for an app that reads its settings early. An app passing ``datadir=`` explicitly, or an
  ``APP_DATADIR`` variable, still wins.
- Faust reads many settings from unprefixed environment variables (``BROKER_URL``,
  ``WEB_PORT``, ``TOPIC_PARTITIONS``, ``APP_DATADIR``, ...) and they override the values the
  app passes in code; keep such names out of ``env`` unless that is the point.
- With the log going to a file (not a TTY) the worker logs ``[^Worker]: Ready`` once every
  agent, table and recovery finished starting.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from agents.embedded.broker import free_port

__all__ = ["READY_PATTERN", "REPO_ROOT", "WorkerError", "WorkerProcess"]

#: The line faust-streaming 0.15.3 logs (at INFO) when a worker is fully started.
READY_PATTERN = r"\[\^Worker\]: Ready"
#: The repository root: the default working directory, so ``agents.app`` is importable.
REPO_ROOT = Path(__file__).resolve().parents[2]


#: Worker processes started and not yet reaped: killed at interpreter exit, so a test that
#: fails between start() and stop() cannot leave a worker consuming from the next run's topics.
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
    _LIVE.clear()


class WorkerError(RuntimeError):
    """The worker exited or did not log what was awaited; the message quotes its log."""


class WorkerProcess:
    """One Faust worker subprocess with its own data directory, web port and log file.

    ``env`` is added to (or, with ``inherit_env=False``, replaces) this process's environment;
    pass the app's configuration there (``HERALD_CONFIG=...``). The object can be started
    again after :meth:`stop`/:meth:`kill`, keeping its data directory, to test restarts.
    """

    def __init__(
        self,
        *,
        app_module: str = "agents.app",
        env: Mapping[str, str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        web_port: int | None = None,
        loglevel: str = "info",
        cwd: str | os.PathLike[str] | None = None,
        pythonpath: Sequence[str | os.PathLike[str]] = (),
        inherit_env: bool = True,
        extra_args: Sequence[str] = (),
        ready_pattern: str = READY_PATTERN,
    ) -> None:
        """Configure, without starting.

        ``workdir`` holds ``data/`` (the Faust datadir) and ``worker.log``; a temporary
        directory (removed by :meth:`cleanup`) when not given. ``pythonpath`` entries are put
        in front of ``PYTHONPATH`` (for app modules that live outside the repository).
        ``extra_args`` are appended after ``worker``.
        """
        self.app_module = app_module
        self.env = dict(env or {})
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="herald-worker-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "worker.log"
        self.web_port = web_port or free_port()
        self.loglevel = loglevel
        self.cwd = Path(cwd) if cwd is not None else REPO_ROOT
        self.pythonpath = [str(p) for p in pythonpath]
        self.inherit_env = inherit_env
        self.extra_args = list(extra_args)
        self.ready_pattern = ready_pattern
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.started_at: float | None = None
        self.ready_at: float | None = None

    # ------------------------------------------------------------------ properties

    @property
    def command(self) -> list[str]:
        """The exact command line the worker is started with."""
        return [
            sys.executable,
            "-m",
            "faust",
            "-A",
            self.app_module,
            "--datadir",
            str(self.datadir),
            "worker",
            "-l",
            self.loglevel,
            "--web-port",
            str(self.web_port),
            "--web-bind",
            "127.0.0.1",
            "--web-host",
            "127.0.0.1",
            *self.extra_args,
        ]

    @property
    def web_url(self) -> str:
        """Base URL of the worker's web server (health, readiness views)."""
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def pid(self) -> int | None:
        """Process id of the current (or last) run."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the worker process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit code of the last run (negative: killed by that signal), ``None`` if running."""
        return self._process.poll() if self._process is not None else None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ) if self.inherit_env else {"PATH": os.environ.get("PATH", "")}
        env.update(self.env)
        paths = [*self.pythonpath, str(self.cwd)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.setdefault("F_DATADIR", str(self.datadir))
        env["PYTHONUNBUFFERED"] = "1"  # prints and logs reach the file as they happen
        return env

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Launch the worker (non-blocking); follow with :meth:`wait_ready`."""
        if self.running:
            raise WorkerError(f"worker already running (pid {self.pid})")
        self.datadir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- starting: {' '.join(self.command)} ---\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE.add(self._process)
        self.started_at = time.monotonic()
        self.ready_at = None
        return self

    def wait_ready(self, timeout: float = 60.0, pattern: str | None = None) -> re.Match[str]:
        """Block until this run logged ``pattern`` (default: Faust's ready line)."""
        match = self.wait_for_log(pattern or self.ready_pattern, timeout)
        self.ready_at = time.monotonic()
        return match

    def wait_http_ready(self, timeout: float = 60.0, path: str = "/ready") -> None:
        """Block until the worker's web server answers 200 on ``path``.

        Herald's ``/ready`` says rules are loaded and partitions assigned, which comes after
        Faust's ready line. Raises :class:`WorkerError` with the last answer and the log tail.
        """
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.running:
                raise WorkerError(
                    f"worker exited with code {self.returncode}; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.web_url}{path}", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise WorkerError(
            f"worker not ready within {timeout}s ({last}); log {self.log_path}:\n{self.log_tail()}"
        )

    @property
    def startup_seconds(self) -> float | None:
        """Seconds from :meth:`start` to the ready line, once :meth:`wait_ready` saw it."""
        if self.started_at is None or self.ready_at is None:
            return None
        return self.ready_at - self.started_at

    def wait_for_log(self, pattern: str, timeout: float = 30.0, *, count: int = 1) -> re.Match[str]:
        """Block until this run's log matches ``pattern`` ``count`` times; return the last match.

        Raises :class:`WorkerError` with the log tail if the process exits first or
        ``timeout`` passes.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            matches = list(regex.finditer(self.log_text(current_run=True)))
            if len(matches) >= count:
                return matches[count - 1]
            if not self.running:
                raise WorkerError(
                    f"worker exited with code {self.returncode} before logging {pattern!r}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise WorkerError(
                    f"worker did not log {pattern!r} ({count}x) within {timeout}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the worker: no shutdown, no commit, no flush (a crash)."""
        if self._process is None:
            return
        self._signal(signal.SIGKILL)
        self._process.wait(timeout=10)
        _LIVE.discard(self._process)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (Faust's graceful shutdown), then SIGKILL after ``timeout``; return the code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._process.wait(timeout=10)
        _LIVE.discard(self._process)
        return self._process.returncode

    def _signal(self, signum: int) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            return
        try:
            os.killpg(self._process.pid, signum)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)

    def cleanup(self) -> None:
        """Stop the worker and delete the work directory if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited({self.returncode})"
        return f"<WorkerProcess {self.app_module} pid={self.pid} {state} log={self.log_path}>"

    # ------------------------------------------------------------------ log

    def log_text(self, *, current_run: bool = False) -> str:
        """The whole log file, or with ``current_run=True`` only what the latest start wrote."""
        try:
            with open(self.log_path, "rb") as log:
                if current_run:
                    log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of this run's log, for failure messages."""
        return "\n".join(self.log_text(current_run=True).splitlines()[-lines:])
