"""Real Apache Kafka for tests: KRaft brokers run from Maven Central jars, with every listener.

tansu (agents/embedded/broker.py) starts in milliseconds but is not Kafka: no TLS, no SASL, no
idempotent producer, its own high-watermark rules. This module runs the real broker so tests
can check Herald against what operators run. It needs Java 17 and Maven; nothing else from
outside. `tests/kafka/pom.xml` names the jars; :func:`kafka_classpath` asks Maven once per
version and caches the classpath under ``~/.cache/herald/kafka-<version>/``.

A :class:`KafkaNode` is one JVM that is both broker and KRaft controller, listening on free
loopback ports:

============== ================ ================================================
listener       protocol         who connects
============== ================ ================================================
PLAINTEXT      PLAINTEXT        the harness and tests (principal ``ANONYMOUS``)
SSL            SSL              TLS, server cert from tests/support/tls.py's PKI
MTLS           SSL              TLS that requires a client certificate
SASL_PLAINTEXT SASL_PLAINTEXT   PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
SASL_SSL       SASL_SSL         the same mechanisms inside TLS
WRONGHOST      SSL              TLS with tls.py's ``wrong-host`` certificate: it names
                                ``kafka.example.invalid`` only, so reaching it as
                                127.0.0.1 is a host name mismatch
SCRAM512       SASL_PLAINTEXT   SCRAM-SHA-512 only (a client asking for PLAIN or
                                SCRAM-SHA-256 is told what the listener enables)
CONTROLLER     PLAINTEXT        KRaft only (not advertised)
============== ================ ================================================

Authorization: Kafka's authorizer is broker-wide, so it cannot be switched on for one listener.
The node runs ``StandardAuthorizer`` with ``super.users=User:ANONYMOUS;User:admin`` and
``allow.everyone.if.no.acl.found=true``: PLAINTEXT, SSL (no client certificate) and the
``admin`` user may do anything, and any resource without ACLs stays open to every user, so a
test that does not care about ACLs is unaffected on every listener. A test that wants a denial
adds an ACL to its own topic or group (:meth:`KafkaNode.add_acl`): from then on only the
principals named there may use it. An MTLS client's principal is its certificate's CN
(``User:herald-client`` for tls.py's client certificate).

Users: ``USERS`` below are PLAIN users (in the listeners' JAAS config, fixed at start) and
SCRAM users for both SHA-256 and SHA-512, written into the metadata at format time with
``--add-scram`` the way an operator bootstraps a cluster; :meth:`KafkaNode.add_scram_user` adds
more at run time through the Admin API.

:class:`KafkaCluster` is three such nodes (3 voters, replication factor 3,
``min.insync.replicas=2``), PLAINTEXT only, for failover tests.

The version comes from ``HERALD_KAFKA_VERSION`` (default :data:`DEFAULT_VERSION`); ``3.9.x``
selects the 3.x line. docs/apache-kafka.md records what was measured here.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from agents.embedded.broker import free_port, run_sync
from tests.support.tls import Pki, make_pki

__all__ = [
    "ADMIN",
    "DEFAULT_VERSION",
    "LISTENERS",
    "LISTENER_CERTIFICATES",
    "LISTENER_MECHANISMS",
    "MECHANISMS",
    "USERS",
    "KafkaCluster",
    "KafkaNode",
    "KafkaUnavailable",
    "kafka_classpath",
    "kafka_version",
    "unavailable_reason",
]

#: The newest 4.x whose broker resolved from Maven Central here (see docs/apache-kafka.md).
DEFAULT_VERSION = "4.4.0"
VERSION_ENV = "HERALD_KAFKA_VERSION"
POM = Path(__file__).resolve().parents[1] / "kafka" / "pom.xml"
CACHE_ROOT = Path(os.environ.get("HERALD_KAFKA_CACHE", "~/.cache/herald")).expanduser()

#: Listener name -> security protocol. Names are Kafka listener names (unique per node).
LISTENERS: dict[str, str] = {
    "PLAINTEXT": "PLAINTEXT",
    "SSL": "SSL",
    "MTLS": "SSL",
    "SASL_PLAINTEXT": "SASL_PLAINTEXT",
    "SASL_SSL": "SASL_SSL",
    "WRONGHOST": "SSL",
    "SCRAM512": "SASL_PLAINTEXT",
}
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Listeners that enable fewer SASL mechanisms than :data:`MECHANISMS` (the others enable all).
LISTENER_MECHANISMS: dict[str, tuple[str, ...]] = {"SCRAM512": ("SCRAM-SHA-512",)}
#: Listeners that present another certificate than tls.py's ``server`` one (the PKI's stem).
LISTENER_CERTIFICATES: dict[str, str] = {"WRONGHOST": "wrong-host"}
ADMIN = "admin"
#: User -> password, for PLAIN and both SCRAM mechanisms. The first two match
#: tests/support/secured.py so tests can move between tansu's gateway and real Kafka.
#: Passwords avoid ``,``, ``]`` and ``=``: ``--add-scram`` parses them out of ``[k=v,...]``.
USERS: dict[str, str] = {
    "herald": "herald-Secret-pw-7",
    "reader": "reader-Secret-pw-8",
    ADMIN: "admin-Secret-pw-9",
}
READY_TOPIC = "herald-harness-ready"

#: JVM processes started and not yet stopped: killed at interpreter exit so a crashed test run
#: does not leave a broker holding ports and half a gigabyte.
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        _signal_group(process, signal.SIGKILL)
        with contextlib.suppress(Exception):
            process.wait(timeout=5)
    _LIVE.clear()


class KafkaUnavailable(RuntimeError):
    """Java or Maven is missing, or Maven could not resolve the requested Kafka version."""


# --------------------------------------------------------------------------- java and maven


def kafka_version() -> str:
    """The Kafka version tests run against: ``HERALD_KAFKA_VERSION`` or the default."""
    return os.environ.get(VERSION_ENV, "").strip() or DEFAULT_VERSION


def _major(version: str) -> int:
    return int(version.split(".", 1)[0])


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise KafkaUnavailable("java is not installed (Kafka 4 needs Java 17+): apt-get install")
    return found


def _java_major(java: str) -> int:
    out = subprocess.run(
        [java, "-XshowSettings:properties", "-version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    for line in out.stderr.splitlines():
        if "java.specification.version" in line:
            value = line.split("=", 1)[1].strip().removeprefix("1.")
            return int(value.split(".")[0])
    return 0


def unavailable_reason(version: str | None = None) -> str | None:
    """Why real Kafka cannot run here (for ``pytest.skip``), or None when Java and mvn exist.

    Does not resolve the classpath: a cached one is enough, otherwise mvn must be present.
    """
    version = version or kafka_version()
    try:
        java = _java()
    except KafkaUnavailable as exc:
        return str(exc)
    major = _java_major(java)
    if _major(version) >= 4 and 0 < major < 17:
        return f"Kafka {version} needs Java 17+, {java} is Java {major}"
    if _classpath_file(version).exists():
        return None
    if shutil.which("mvn") is None:
        return f"mvn is not installed and no cached classpath at {_classpath_file(version)}"
    return None


def _classpath_file(version: str) -> Path:
    return CACHE_ROOT / f"kafka-{version}" / "classpath.txt"


def kafka_classpath(version: str | None = None) -> str:
    """The broker's classpath for `version`, resolved by Maven once and cached.

    The cache file is written only after a complete resolve (via a temporary name), and a
    lock file keeps two test processes from resolving the same version at once. A cached
    classpath whose jars were removed from ``~/.m2`` is resolved again.
    """
    version = version or kafka_version()
    target = _classpath_file(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            classpath = target.read_text().strip()
            if classpath and all(Path(p).exists() for p in classpath.split(os.pathsep)):
                return classpath
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaUnavailable("mvn is not installed: apt-get install maven")
        _java()
        partial = target.with_suffix(".tmp")
        started = time.monotonic()
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:build-classpath",
                f"-Dkafka.version={version}",
                f"-Dmdep.outputFile={partial}",
                "-Dmdep.includeScope=runtime",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0 or not partial.exists():
            output = (result.stdout + result.stderr).strip()[-3000:]
            raise KafkaUnavailable(
                f"mvn could not resolve org.apache.kafka:kafka_2.13:{version} "
                f"(exit {result.returncode}):\n{output}"
            )
        partial.replace(target)
        (target.parent / "resolve-seconds.txt").write_text(f"{time.monotonic() - started:.1f}\n")
        return target.read_text().strip()


# --------------------------------------------------------------------------- processes


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


def _cluster_id() -> str:
    """A Kafka cluster id: a random UUID in Kafka's URL-safe base64 form (22 characters).

    Kafka's own generator avoids a leading '-', which command-line parsers take for a flag.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _jaas_plain(users: Mapping[str, str]) -> str:
    entries = " ".join(f'user_{u}="{p}"' for u, p in users.items())
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{ADMIN}" password="{users[ADMIN]}" {entries};'
    )


_SCRAM_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


class KafkaNode:
    """One KRaft node (broker and controller in one JVM) on free loopback ports.

    Configure, then :meth:`start`. Ports and the data directory are fixed at construction, so
    :meth:`restart` (or :meth:`kill` then :meth:`start`) brings the same node back on the
    same addresses with its data.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        version: str | None = None,
        pki: Pki | None = None,
        listeners: Sequence[str] = tuple(LISTENERS),
        node_id: int = 1,
        cluster_id: str | None = None,
        voters: str | None = None,
        controller_port: int | None = None,
        replication: int = 1,
        auto_create_topics: bool = True,
        heap: str = "512m",
        users: Mapping[str, str] = USERS,
        extra_config: Mapping[str, str] | None = None,
        jvm_options: Sequence[str] = (),
        request_log: bool = False,
    ) -> None:
        """``voters``/``cluster_id``/``controller_port`` are set by :class:`KafkaCluster`;
        a lone node makes its own. ``replication`` is the replication factor of internal
        topics and the default one (1 alone, 3 in a cluster). ``auto_create_topics`` is
        Kafka's default (on); pass False to check that code creates what it uses.
        ``request_log`` logs every request with its API version (``kafka.request.logger`` at
        debug), to see which protocol versions a client really sends."""
        unknown = set(listeners) - set(LISTENERS)
        if unknown or "PLAINTEXT" not in listeners:
            raise ValueError(f"listeners must include PLAINTEXT and be among {list(LISTENERS)}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.version = version or kafka_version()
        self.node_id = node_id
        self.cluster_id = cluster_id or _cluster_id()
        self.controller_port = controller_port or free_port()
        self.voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.replication = replication
        self.auto_create_topics = auto_create_topics
        self.heap = heap
        self.users = dict(users)
        self.extra_config = dict(extra_config or {})
        self.jvm_options = list(jvm_options)
        if request_log:
            self.jvm_options.append("-Dorg.slf4j.simpleLogger.log.kafka.request.logger=debug")
        self.ports: dict[str, int] = {name: free_port() for name in listeners}
        needs_tls = any(LISTENERS[name].endswith("SSL") for name in listeners)
        self.pki = pki if pki is not None or not needs_tls else make_pki(self.workdir / "pki")
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "server.properties"
        self.log_path = self.workdir / "kafka.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._classpath: str | None = None
        #: Seconds of the last :meth:`start`: classpath (Maven, first time only), format
        #: (first start only) and ready (JVM start to a produce and a consume that worked).
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------- addresses

    def address(self, listener: str = "PLAINTEXT") -> str:
        """``127.0.0.1:port`` of one listener."""
        if listener not in self.ports:
            raise KeyError(f"node has no {listener} listener (has {sorted(self.ports)})")
        return f"127.0.0.1:{self.ports[listener]}"

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT address: the harness's own, with super-user rights."""
        return self.address("PLAINTEXT")

    @property
    def ssl_bootstrap(self) -> str:
        return self.address("SSL")

    @property
    def mtls_bootstrap(self) -> str:
        return self.address("MTLS")

    @property
    def sasl_plaintext_bootstrap(self) -> str:
        return self.address("SASL_PLAINTEXT")

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return self.address("SASL_SSL")

    @property
    def url(self) -> str:
        """The PLAINTEXT address in Faust's ``kafka://host:port`` form."""
        return f"kafka://{self.bootstrap}"

    def client_kwargs(
        self,
        listener: str = "PLAINTEXT",
        *,
        user: str = "herald",
        mechanism: str = "SCRAM-SHA-512",
        password: str | None = None,
        bootstrap: bool = False,
    ) -> dict[str, Any]:
        """aiokafka keyword arguments for `listener` (security only, unless ``bootstrap``).

        Without ``bootstrap_servers`` by default, like SecuredCluster.client_kwargs, so the
        result can go to tests/support/herald.py's ``client_kwargs`` as it is. `password`
        overrides the user's real one (to test a wrong password).
        """
        protocol = LISTENERS[listener]
        self.address(listener)
        kwargs: dict[str, Any] = {"security_protocol": protocol}
        if bootstrap:
            kwargs["bootstrap_servers"] = self.address(listener)
        if protocol.endswith("SSL"):
            assert self.pki is not None
            context = ssl.create_default_context(cafile=self.pki.ca)
            if listener == "MTLS":
                context.load_cert_chain(self.pki.path("client.pem"), self.pki.path("client.key"))
            kwargs["ssl_context"] = context
        if protocol.startswith("SASL"):
            enabled = LISTENER_MECHANISMS.get(listener, MECHANISMS)
            if mechanism not in enabled:
                raise ValueError(f"{listener} enables only {enabled}")
            kwargs.update(
                sasl_mechanism=mechanism,
                sasl_plain_username=user,
                sasl_plain_password=password if password is not None else self.users[user],
            )
        return kwargs

    def integration(
        self,
        listener: str = "PLAINTEXT",
        *,
        user: str = "herald",
        mechanism: str = "SCRAM-SHA-256",
        **overrides: Any,
    ) -> dict[str, Any]:
        """Herald integration fields that connect to `listener` (PEM truststore; on MTLS
        also tls.py's client certificate, so the principal is ``User:herald-client``)."""
        protocol = LISTENERS[listener]
        fields: dict[str, Any] = {"bootstrapServers": self.address(listener)}
        if protocol.startswith("SASL"):
            fields.update(
                connectionSecurity=f"{protocol} / {mechanism}",
                username=user,
                password=self.users[user],
            )
        else:
            fields["connectionSecurity"] = protocol
        if protocol.endswith("SSL"):
            assert self.pki is not None
            fields.update(truststoreType="PEM", truststorePath=self.pki.ca)
        if listener == "MTLS":
            assert self.pki is not None
            fields.update(
                sslClientCertificatePath=self.pki.path("client.pem"),
                sslClientKeyPath=self.pki.path("client.key"),
            )
        fields.update(overrides)
        return fields

    # ----------------------------------------------------------------- configuration

    def _keystore(self, stem: str = "server") -> Path:
        """A key and its certificate chain in one PEM file, as Kafka's PEM keystore wants
        (`stem` names the PKI's key pair: ``server`` or ``wrong-host``)."""
        assert self.pki is not None
        path = self.workdir / f"{stem}-keystore.pem"
        path.write_text(
            Path(self.pki.path(f"{stem}.key")).read_text()
            + Path(self.pki.path(f"{stem}.pem")).read_text()
            + Path(self.pki.ca).read_text()
        )
        return path

    def properties(self) -> dict[str, str]:
        """The node's server.properties, as a dict (written by :meth:`start`)."""
        names = [*self.ports, "CONTROLLER"]
        protocol_map = {**{n: LISTENERS[n] for n in self.ports}, "CONTROLLER": "PLAINTEXT"}
        r = str(self.replication)
        min_isr = str(min(2, self.replication))
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(
                f"{n}://127.0.0.1:{self.ports.get(n, self.controller_port)}" for n in names
            ),
            "advertised.listeners": ",".join(f"{n}://127.0.0.1:{p}" for n, p in self.ports.items()),
            "listener.security.protocol.map": ",".join(f"{n}:{p}" for n, p in protocol_map.items()),
            "log.dirs": str(self.data_dir),
            # Tests: no first-join wait, internal topics that fit the node count.
            "group.initial.rebalance.delay.ms": "0",
            # The tests' workers use 3 s sessions, so a killed worker's partitions move fast.
            "group.min.session.timeout.ms": "1000",
            "offsets.topic.replication.factor": r,
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": r,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.replication.factor": r,
            "share.coordinator.state.topic.min.isr": min_isr,
            "default.replication.factor": r,
            "min.insync.replicas": min_isr,
            "num.partitions": "1",
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            # Small segments so retention/compaction tests see rolled segments.
            "log.segment.bytes": str(1024 * 1024),
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            # Two cores shared with other test runs: few threads.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.replica.fetchers": "1",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            # Fail over within seconds when a cluster node is killed.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "4000",
            "replica.lag.time.max.ms": "5000",
            # Authorization (see the module docstring for why it is broker-wide and open).
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:ANONYMOUS;User:{ADMIN}",
            "allow.everyone.if.no.acl.found": "true",
        }
        if any(LISTENERS[n].startswith("SASL") for n in self.ports):
            props["sasl.enabled.mechanisms"] = ",".join(MECHANISMS)
            for name in (n for n in self.ports if LISTENERS[n].startswith("SASL")):
                prefix = f"listener.name.{name.lower()}"
                props[f"{prefix}.plain.sasl.jaas.config"] = _jaas_plain(self.users)
                props[f"{prefix}.scram-sha-256.sasl.jaas.config"] = _SCRAM_JAAS
                props[f"{prefix}.scram-sha-512.sasl.jaas.config"] = _SCRAM_JAAS
                if name in LISTENER_MECHANISMS:
                    props[f"{prefix}.sasl.enabled.mechanisms"] = ",".join(LISTENER_MECHANISMS[name])
        if self.pki is not None and any(LISTENERS[n].endswith("SSL") for n in self.ports):
            for name in (n for n in self.ports if LISTENERS[n].endswith("SSL")):
                prefix = f"listener.name.{name.lower()}"
                keystore = self._keystore(LISTENER_CERTIFICATES.get(name, "server"))
                props[f"{prefix}.ssl.keystore.type"] = "PEM"
                props[f"{prefix}.ssl.keystore.location"] = str(keystore)
                props[f"{prefix}.ssl.truststore.type"] = "PEM"
                props[f"{prefix}.ssl.truststore.location"] = self.pki.ca
                props[f"{prefix}.ssl.client.auth"] = "required" if name == "MTLS" else "none"
            # A client certificate's principal is its CN: User:herald-client.
            props["ssl.principal.mapping.rules"] = "RULE:^CN=([^,]*).*$/$1/,DEFAULT"
        props.update(self.extra_config)
        return props

    def _write_config(self) -> None:
        lines = [f"{key}={value}" for key, value in self.properties().items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    # ----------------------------------------------------------------- lifecycle

    @property
    def classpath(self) -> str:
        if self._classpath is None:
            self._classpath = kafka_classpath(self.version)
        return self._classpath

    def _jvm(self, *, heap: str) -> list[str]:
        return [
            _java(),
            f"-Xmx{heap}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # C1 only: a faster start, slower peak (fine for tests)
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.logFile=System.out",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.common.config=warn",
            "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn",
            *self.jvm_options,
            "-cp",
            self.classpath,
        ]

    @property
    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").exists()

    def format(self) -> None:
        """``kafka-storage format`` with SCRAM users, once (a restart keeps the data)."""
        self._write_config()
        scram: list[str] = []
        for user, password in self.users.items():
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                scram += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
        result = subprocess.run(
            [
                *self._jvm(heap="256m"),
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                self.cluster_id,
                "--config",
                str(self.config_path),
                *scram,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        with open(self.log_path, "a") as log:
            log.write(f"--- format (exit {result.returncode})\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise RuntimeError(
                f"kafka-storage format failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-3000:]}"
            )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def spawn(self) -> None:
        """Format if needed and start the JVM, without waiting (a cluster starts all first)."""
        if self.running:
            raise RuntimeError(f"node {self.node_id} is already running")
        started = time.monotonic()
        _ = self.classpath  # resolved first, so its time is not counted as format's
        self.timings = {"classpath": time.monotonic() - started}
        started = time.monotonic()
        if not self.formatted:
            self.format()
        else:
            self._write_config()
        self.timings["format"] = time.monotonic() - started
        self._spawned_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start node {self.node_id} (Kafka {self.version})\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [*self._jvm(heap=self.heap), "kafka.Kafka", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        _LIVE.add(self._process)

    def wait_serving(self, timeout: float = 120.0) -> None:
        """Until this node answers metadata on PLAINTEXT and lists itself as an alive broker."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            # A TCP connect first: aiokafka logs every refused connection of a probe.
            if _listening(self.ports["PLAINTEXT"]) and run_sync(
                lambda: _serves(self.bootstrap, self.node_id)
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Kafka node {self.node_id} not serving after {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def _check_alive(self) -> None:
        if self._process is None or self._process.poll() is not None:
            code = None if self._process is None else self._process.returncode
            raise RuntimeError(f"Kafka node {self.node_id} exited ({code}):\n{self.log_tail()}")

    def start(self, timeout: float = 120.0) -> Self:
        """Start (formatting on first start) and return once a produce and a consume work.

        Prints how long it took, because JVM start time is the cost of these tests.
        """
        self.spawn()
        try:
            self.wait_serving(timeout)
            run_sync(lambda: _produce_consume(self.bootstrap, self.replication, timeout))
        except BaseException:
            self.kill()
            raise
        self.timings["ready"] = time.monotonic() - self._spawned_at
        print(
            f"Kafka {self.version} node {self.node_id}: classpath "
            f"{self.timings['classpath']:.1f}s, format {self.timings['format']:.1f}s, "
            f"start to produce/consume {self.timings['ready']:.1f}s"
        )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown (SIGTERM: Kafka's controlled shutdown), SIGKILL after `timeout`."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
                    process.wait(timeout=10)
        finally:
            _LIVE.discard(process)

    def kill(self) -> None:
        """SIGKILL: a crash, no controlled shutdown, no flush."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                _signal_group(process, signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            _LIVE.discard(process)

    def restart(self, *, kill: bool = False, timeout: float = 120.0) -> Self:
        """Stop (or ``kill``) and start again: same ports, same data directory."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        """Everything the node (format and every start) wrote, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ----------------------------------------------------------------- admin

    def _confluent_admin(self) -> Any:
        """A confluent-kafka AdminClient on PLAINTEXT (super user): aiokafka 0.14's admin
        client has no ACL or SCRAM calls, librdkafka's has both."""
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})

    def add_acl(
        self,
        principal: str,
        resource_type: str,
        name: str,
        operation: str,
        *,
        permission: str = "ALLOW",
        pattern: str = "LITERAL",
        host: str = "*",
        timeout: float = 20.0,
    ) -> None:
        """Add one ACL, e.g. ``add_acl("User:herald", "TOPIC", t, "READ")``, and wait until
        this node's authorizer has it.

        `principal` is ``User:<name>`` (SASL user name, or an MTLS certificate's CN). Once a
        resource has any ACL, principals without a matching ALLOW are refused on it
        (``allow.everyone.if.no.acl.found`` only covers resources with no ACLs at all).
        """
        from confluent_kafka.admin import (
            AclBinding,
            AclBindingFilter,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )

        binding = AclBinding(
            ResourceType[resource_type.upper()],
            name,
            ResourcePatternType[pattern.upper()],
            principal,
            host,
            AclOperation[operation.upper()],
            AclPermissionType[permission.upper()],
        )
        admin = self._confluent_admin()
        for future in admin.create_acls([binding], request_timeout=timeout).values():
            future.result(timeout)
        match = AclBindingFilter(
            binding.restype,
            name,
            binding.resource_pattern_type,
            principal,
            host,
            binding.operation,
            binding.permission_type,
        )
        deadline = time.monotonic() + timeout
        while not admin.describe_acls(match, request_timeout=timeout).result(timeout):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ACL not visible after {timeout}s: {binding}")
            time.sleep(0.1)

    def add_scram_user(
        self,
        user: str,
        password: str,
        mechanisms: Iterable[str] = ("SCRAM-SHA-256", "SCRAM-SHA-512"),
        timeout: float = 20.0,
    ) -> None:
        """Create or change a SCRAM user at run time (AlterUserScramCredentials).

        Only SCRAM: PLAIN users live in the JAAS config and are fixed when the node starts.
        """
        from confluent_kafka.admin import (
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        admin = self._confluent_admin()
        # One mechanism per request: Kafka refuses to alter one user twice in a request.
        for mechanism in mechanisms:
            upsert = UserScramCredentialUpsertion(
                user,
                ScramCredentialInfo(ScramMechanism[mechanism.replace("-", "_")], 4096),
                password.encode(),
            )
            futures = admin.alter_user_scram_credentials([upsert], request_timeout=timeout)
            for future in futures.values():
                future.result(timeout)
        self.users[user] = password

    def run_tool(self, main_class: str, *args: str, timeout: float = 120.0) -> str:
        """Run one of Kafka's command-line tools (its main class) against PLAINTEXT as an
        operator would, e.g. ``run_tool(node.acl_command_class, "--list")``; its output."""
        result = subprocess.run(
            [*self._jvm(heap="256m"), main_class, "--bootstrap-server", self.bootstrap, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{main_class} {' '.join(args)} failed ({result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-3000:]}"
            )
        return result.stdout

    @property
    def acl_command_class(self) -> str:
        """``kafka-acls``: moved from core (Scala) to the tools module in 4.0."""
        return (
            "org.apache.kafka.tools.AclCommand"
            if _major(self.version) >= 4
            else "kafka.admin.AclCommand"
        )

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"KafkaNode(id={self.node_id}, {self.version}, {self.bootstrap}, {state})"


class KafkaCluster:
    """Three KRaft nodes in combined mode: 3 voters, replication 3, ``min.insync.replicas=2``.

    PLAINTEXT only (security is the single node's job); every node is reachable by its id
    (1..size) for :meth:`kill`, :meth:`restart` and :meth:`leader_of`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        size: int = 3,
        version: str | None = None,
        heap: str = "384m",
        auto_create_topics: bool = True,
        extra_config: Mapping[str, str] | None = None,
    ) -> None:
        """``heap`` per node: three JVMs share the machine with other test runs."""
        cluster_id = _cluster_id()
        controller_ports = {i: free_port() for i in range(1, size + 1)}
        voters = ",".join(f"{i}@127.0.0.1:{p}" for i, p in controller_ports.items())
        self.version = version or kafka_version()
        self.nodes: dict[int, KafkaNode] = {
            i: KafkaNode(
                Path(workdir) / f"node-{i}",
                version=self.version,
                listeners=("PLAINTEXT",),
                node_id=i,
                cluster_id=cluster_id,
                voters=voters,
                controller_port=port,
                replication=min(3, size),
                auto_create_topics=auto_create_topics,
                heap=heap,
                extra_config=extra_config,
            )
            for i, port in controller_ports.items()
        }
        self.timings: dict[str, float] = {}

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id]

    @property
    def bootstrap(self) -> str:
        """Every node's PLAINTEXT address, comma-separated (clients skip the dead ones)."""
        return ",".join(n.bootstrap for n in self.nodes.values())

    @property
    def url(self) -> str:
        return "kafka://" + ";".join(n.bootstrap for n in self.nodes.values())

    def start(self, timeout: float = 180.0) -> Self:
        """Start every node at once (a quorum needs a majority), then produce/consume with
        ``acks=all`` on a replicated topic."""
        started = time.monotonic()
        try:
            for node in self.nodes.values():
                node.spawn()
            for node in self.nodes.values():
                node.wait_serving(timeout)
            run_sync(lambda: _produce_consume(self.bootstrap, len(self.nodes), timeout))
        except BaseException:
            self.kill_all()
            raise
        self.timings["ready"] = time.monotonic() - started
        print(
            f"Kafka {self.version} cluster of {len(self.nodes)}: start to produce/consume "
            f"{self.timings['ready']:.1f}s"
        )
        return self

    def kill(self, node_id: int) -> None:
        """SIGKILL one node."""
        self.nodes[node_id].kill()

    def stop_node(self, node_id: int) -> None:
        """Gracefully stop one node (controlled shutdown moves its leaderships first)."""
        self.nodes[node_id].stop()

    def restart(self, node_id: int, timeout: float = 120.0) -> None:
        """Start a stopped or killed node again (same ports and data); stop it first if it
        runs. Returns when it serves as an alive broker again."""
        node = self.nodes[node_id]
        if node.running:
            node.stop()
        node.spawn()
        node.wait_serving(timeout)

    def leader_of(self, topic: str, partition: int = 0, timeout: float = 30.0) -> int:
        """The node id that leads `topic`/`partition` now, as the live nodes report it."""
        live = ",".join(n.bootstrap for n in self.nodes.values() if n.running)
        return run_sync(lambda: _leader_of(live, topic, partition, timeout))

    def stop(self) -> None:
        """Stop every node, gracefully and concurrently enough that no node waits for a
        controller quorum that is already gone: signal all, then wait."""
        running = [n for n in self.nodes.values() if n.running]
        for node in running:
            assert node._process is not None
            _signal_group(node._process, signal.SIGTERM)
        for node in running:
            node.stop(timeout=30)

    def kill_all(self) -> None:
        for node in self.nodes.values():
            node.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- probes


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


async def _serves(bootstrap: str, node_id: int) -> bool:
    """Whether the broker at `bootstrap` answers metadata listing `node_id` as alive (KRaft
    leaves fenced brokers out of metadata)."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), 5)
        return any(b.nodeId == node_id for b in client.cluster.brokers())
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def _produce_consume(bootstrap: str, replication: int, timeout: float) -> None:
    """Create the readiness topic, write one record with ``acks=all`` and read it back."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from agents.embedded.broker import create_topics_async

    await create_topics_async(
        bootstrap, {READY_TOPIC: 1}, replication_factor=replication, timeout=timeout
    )
    deadline = time.monotonic() + timeout
    while True:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        try:
            await producer.start()
            meta = await asyncio.wait_for(producer.send_and_wait(READY_TOPIC, b"ready"), timeout=10)
            break
        except Exception:
            # Right after start a leader election or ISR change can refuse the first write.
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
        finally:
            await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(READY_TOPIC, 0)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        record = await asyncio.wait_for(consumer.getone(), timeout)
        if record.value != b"ready":
            raise RuntimeError(f"readiness read back {record.value!r}")
    finally:
        await consumer.stop()


async def _leader_of(bootstrap: str, topic: str, partition: int, timeout: float) -> int:
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    deadline = time.monotonic() + timeout
    try:
        await client.bootstrap()
        client.add_topic(topic)
        while True:
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(_tp(topic, partition))
            if leader is not None and leader >= 0:
                return int(leader)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no leader for {topic}/{partition} after {timeout}s")
            await asyncio.sleep(0.2)
    finally:
        await client.close()


def _tp(topic: str, partition: int) -> Any:
    from aiokafka import TopicPartition

    return TopicPartition(topic, partition)
