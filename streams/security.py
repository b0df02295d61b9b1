"""An integration's connection security, turned into client settings, and errors users can act on.

Every connection Herald makes for an integration (the Faust consumer and producer, the aiokafka
producers of `publish`, `herald replay`/`herald rules`, admin calls, `herald check --connect`)
takes its settings from `client_security(integration)`, so they cannot drift apart:

- `connectionSecurity` gives the Kafka security protocol and the SASL mechanism
  (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512).
- TLS (`SSL`, `SASL_SSL`) trusts, by `truststoreType`: NONE the system CAs; PEM the CA bundle
  at `truststorePath`; JKS the trusted certificates of the Java truststore at `truststorePath`
  (read directly with `truststorePassword`, no keytool step; a PKCS#12 truststore, what
  keytool writes by default since Java 9, is read as well). The truststore *replaces* the
  system CAs, as it does in Java.
- `sslClientCertificatePath`/`sslClientKeyPath` (PEM) add a client certificate (mutual TLS).
- Hostname verification is on unless `sslHostnameVerification: false`, which logs a warning.

`probe` connects to an integration's brokers the way the clients will, and `classify` turns
what went wrong into one line naming the integration and saying what to fix. No message built
here contains a password: they are made from Herald's own words, the host, the user name and
the broker's error text, and `redact` masks the integration's secrets in whatever is left.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.config.models import Integration, TruststoreType
from streams.errors import HeraldError
from streams.secrets import mask_secret, scrub

log = logging.getLogger("herald.security")


class SecurityError(HeraldError):
    """An integration's security settings cannot be used (truststore missing, wrong password,
    unreadable certificate). The message names the integration and the field to fix."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ClientSecurity:
    """What a Kafka client needs to connect to one integration."""

    integration: str
    protocol: str
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer/Consumer/AdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            kwargs["ssl_context"] = self.ssl_context
        if self.uses_sasl:
            kwargs["sasl_mechanism"] = self.mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password
        return kwargs

    def describe(self) -> str:
        text = self.protocol
        if self.mechanism:
            text += f" / {self.mechanism}"
        if self.username:
            text += f" as {self.username!r}"
        return text


def client_security(integration: Integration) -> ClientSecurity:
    """The settings every Kafka client of this integration uses; SecurityError when a
    truststore or certificate cannot be loaded."""
    protocol = integration.security_protocol
    context = build_ssl_context(integration) if protocol in ("SSL", "SASL_SSL") else None
    return ClientSecurity(
        integration=integration.name,
        protocol=protocol,
        mechanism=integration.sasl_mechanism,
        username=integration.username if protocol.startswith("SASL") else None,
        password=(
            integration.password.get_secret_value()
            if protocol.startswith("SASL") and integration.password
            else None
        ),
        ssl_context=context,
    )


def aiokafka_kwargs(integration: Integration) -> dict[str, Any]:
    """`bootstrap_servers` plus the security settings, for any aiokafka client."""
    return {
        "bootstrap_servers": integration.bootstrapServers,
        **client_security(integration).aiokafka_kwargs(),
    }


def build_ssl_context(integration: Integration, *, warn: bool = True) -> ssl.SSLContext:
    """A client TLS context for the integration: its trusted CAs, optional client certificate,
    hostname verification unless turned off (with a warning)."""
    cadata = load_truststore(integration)
    name = integration.name
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=cadata)
    except ssl.SSLError as exc:
        raise SecurityError(
            f"integration {name!r}: truststorePath {integration.truststorePath!r} holds no "
            f"usable CA certificate ({_ssl_reason(exc)}); export the CA certificate(s) again"
        ) from None
    if integration.sslClientCertificatePath or integration.sslClientKeyPath:
        _load_client_certificate(context, integration)
    if not integration.sslHostnameVerification:
        context.check_hostname = False
        if warn:
            log.warning(
                "integration %r: TLS hostname verification is OFF (sslHostnameVerification: "
                "false): any server with a certificate from a trusted CA is accepted",
                name,
            )
    return context


def registry_ssl_context(integration: Integration) -> ssl.SSLContext:
    """TLS context for the integration's schema registry: the integration's truststore when it
    has one (and its client certificate), else the system CAs."""
    return build_ssl_context(integration, warn=False)


def load_truststore(integration: Integration) -> str | None:
    """The trusted CA certificates as PEM text; None for NONE (system CAs)."""
    kind = integration.truststoreType
    if kind is TruststoreType.NONE:
        return None
    name = integration.name
    path = Path(integration.truststorePath or "").expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SecurityError(
            f"integration {name!r}: truststorePath {str(path)!r} does not exist; fix the path "
            "or mount the truststore file"
        ) from None
    except IsADirectoryError:
        raise SecurityError(
            f"integration {name!r}: truststorePath {str(path)!r} is a directory; name the "
            "truststore file"
        ) from None
    except OSError as exc:
        raise SecurityError(
            f"integration {name!r}: cannot read truststorePath {str(path)!r} "
            f"({exc.strerror}); check the path and its permissions"
        ) from None
    if kind is TruststoreType.PEM:
        text = data.decode("ascii", errors="replace")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise SecurityError(
                f"integration {name!r}: truststorePath {str(path)!r} is not a PEM file with "
                "certificates (no '-----BEGIN CERTIFICATE-----'); use truststoreType JKS for "
                "a Java truststore, or export the CA as PEM"
            )
        return text
    password = (
        integration.truststorePassword.get_secret_value()
        if integration.truststorePassword
        else None
    )
    certificates = _read_java_truststore(data, password, name, str(path))
    if not certificates:
        raise SecurityError(
            f"integration {name!r}: the truststore {str(path)!r} holds no trusted certificate; "
            "import the CA with keytool -importcert"
        )
    return "".join(ssl.DER_cert_to_PEM_cert(der) for der in certificates)


def _read_java_truststore(data: bytes, password: str | None, name: str, path: str) -> list[bytes]:
    """DER certificates of a JKS/JCEKS (pyjks) or PKCS#12 (cryptography) truststore."""
    if data[:4] in (b"\xfe\xed\xfe\xed", b"\xce\xce\xce\xce"):
        import jks  # pyjks: reads JKS/JCEKS keystores without a JVM

        if password is None:
            raise SecurityError(
                f"integration {name!r}: truststoreType JKS needs truststorePassword (the "
                f"password of {path!r})"
            )
        try:
            store = jks.KeyStore.loads(data, password)
        except jks.util.KeystoreSignatureException:
            raise SecurityError(
                f"integration {name!r}: wrong truststorePassword for {path!r} (the "
                "truststore's integrity check failed); set the password it was created with"
            ) from None
        except Exception as exc:  # truncated or corrupt file
            raise SecurityError(
                f"integration {name!r}: {path!r} is not a readable JKS truststore "
                f"({exc.__class__.__name__}); export it again with keytool"
            ) from None
        certificates = [entry.cert for entry in store.certs.values()]
        for entry in store.private_keys.values():  # a keystore used as truststore
            certificates.extend(cert[1] for cert in entry.cert_chain[-1:])
        return certificates
    if data[:1] == b"\x30":  # DER SEQUENCE: PKCS#12
        from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

        try:
            bundle = pkcs12.load_pkcs12(data, password.encode() if password else None)
        except ValueError:
            raise SecurityError(
                f"integration {name!r}: wrong truststorePassword for {path!r}, or the file is "
                "not a PKCS#12/JKS truststore; set the password it was created with"
            ) from None
        certs = list(bundle.additional_certs)
        if bundle.cert is not None:
            certs.append(bundle.cert)
        return [c.certificate.public_bytes(Encoding.DER) for c in certs]
    raise SecurityError(
        f"integration {name!r}: {path!r} is not a Java truststore (JKS, JCEKS or PKCS#12); "
        "for a PEM CA file use truststoreType PEM"
    )


def _load_client_certificate(context: ssl.SSLContext, integration: Integration) -> None:
    name = integration.name
    cert, key = integration.sslClientCertificatePath, integration.sslClientKeyPath
    if not cert:
        raise SecurityError(
            f"integration {name!r}: sslClientKeyPath needs sslClientCertificatePath"
        )
    for field_name, path in (("sslClientCertificatePath", cert), ("sslClientKeyPath", key)):
        if path and not os.path.isfile(path):
            raise SecurityError(
                f"integration {name!r}: {field_name} {path!r} does not exist; fix the path"
            )
    password = (
        integration.sslClientKeyPassword.get_secret_value()
        if integration.sslClientKeyPassword
        else None
    )
    try:
        context.load_cert_chain(cert, key or None, password=password)
    except ssl.SSLError as exc:
        raise SecurityError(
            f"integration {name!r}: cannot use the client certificate {cert!r} with its key "
            f"({_ssl_reason(exc)}); check sslClientCertificatePath, sslClientKeyPath and "
            "sslClientKeyPassword"
        ) from None


# --------------------------------------------------------------------------- problems


#: Kinds of connection problems. The permanent ones will not go away by retrying: a worker
#: refuses to start on them instead of hanging.
PERMANENT = frozenset(
    {
        "authentication",
        "mechanism",
        "untrusted-certificate",
        "hostname-mismatch",
        "client-certificate",
        "tls",
        "config",
    }
)
#: Missing ACLs: permanent for `herald check`, but a worker waits for them to be granted
#: instead of exiting (an operator fixes ACLs on a running cluster; a restart loop helps no one).
AUTHORIZATION = "authorization"


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str

    @property
    def permanent(self) -> bool:
        return self.kind in PERMANENT


def classify(exc: BaseException, integration: Integration, address: str) -> Problem:
    """One actionable line (naming the integration) for an error connecting to `address`."""
    from aiokafka import errors as kafka_errors

    name = integration.name
    prefix = f"integration {name!r}: {address}"
    mechanism = integration.sasl_mechanism
    user = integration.username
    if isinstance(exc, SecurityError):
        return Problem("config", redact(str(exc), integration))
    refused = _refused_client_certificate(exc)
    if refused:
        cert = integration.sslClientCertificatePath
        if not cert:
            return Problem(
                "client-certificate",
                f"{prefix}: the broker requires a TLS client certificate (mutual TLS) and the "
                f"integration presents none ({refused}); set sslClientCertificatePath and "
                "sslClientKeyPath",
            )
        return Problem(
            "client-certificate",
            f"{prefix}: the broker refused the TLS client certificate {cert!r} ({refused}); "
            "use a certificate signed by a CA the broker's truststore holds",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or _ssl_reason(exc)
        if "mismatch" in reason.lower() or exc.verify_code == 62:
            return Problem(
                "hostname-mismatch",
                f"{prefix}: the broker's TLS certificate is not valid for this host name "
                f"({reason}); connect with a name the certificate lists in bootstrapServers and "
                "the brokers' advertised listeners (turning sslHostnameVerification off is "
                "not recommended)",
            )
        if exc.verify_code == 10 or "expired" in reason.lower():
            return Problem(
                "untrusted-certificate",
                f"{prefix}: the broker's TLS certificate has expired ({reason}); renew it",
            )
        trust = (
            "the system CAs (truststoreType NONE)"
            if integration.truststoreType is TruststoreType.NONE
            else f"the {integration.truststoreType.value} truststore {integration.truststorePath!r}"
        )
        return Problem(
            "untrusted-certificate",
            f"{prefix}: the broker's TLS certificate is not trusted by {trust} ({reason}); "
            "set truststoreType/truststorePath to the CA that signed the broker certificate",
        )
    if isinstance(exc, ssl.SSLError):
        return Problem(
            "tls",
            f"{prefix}: TLS handshake failed ({_ssl_reason(exc)}); check that this port serves "
            f"TLS and that connectionSecurity ({integration.connectionSecurity}) matches the "
            "listener",
        )
    if isinstance(exc, kafka_errors.UnsupportedSaslMechanismError):
        offered = _offered_mechanisms(str(exc))
        return Problem(
            "mechanism",
            f"{prefix}: the broker does not accept SASL mechanism {mechanism}"
            + (f" (it offers {offered})" if offered else "")
            + "; choose a connectionSecurity with a mechanism the broker enables",
        )
    if isinstance(
        exc,
        kafka_errors.SaslAuthenticationFailed
        | kafka_errors.AuthenticationFailedError
        | kafka_errors.IllegalSaslStateError,
    ):
        said = _broker_text(exc)
        return Problem(
            "authentication",
            f"{prefix}: authentication as {user!r} with {mechanism} failed: wrong username or "
            "password, or the user does not exist for this mechanism"
            + (f" (broker: {said})" if said else "")
            + "; check username and password",
        )
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        hint = ""
        if not integration.security_protocol.endswith("SSL"):
            hint = " (a TLS listener waits silently for a TLS handshake: SSL or SASL_SSL?)"
        return Problem("timeout", f"{prefix}: no answer in time{hint}; check the address")
    if isinstance(exc, socket.gaierror):
        return Problem("unreachable", f"{prefix}: unknown host ({exc.strerror}); check the name")
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    ):
        return Problem(
            "unreachable",
            f"{prefix}: connection refused; is the broker running and is the port right?",
        )
    if isinstance(
        exc,
        ConnectionError
        | asyncio.IncompleteReadError
        | kafka_errors.KafkaConnectionError
        | kafka_errors.CorrelationIdError,
    ):
        return Problem(
            "closed",
            f"{prefix}: the connection was closed during the handshake; does the listener "
            f"expect another connectionSecurity than {integration.connectionSecurity} "
            "(TLS or SASL)?",
        )
    return Problem(
        "error",
        redact(f"{prefix}: {exc.__class__.__name__}: {exc}", integration),
    )


#: TLS alerts a server sends when it wants a client certificate it did not get, or does not
#: trust the one it got. They arrive after the client's side of the handshake (TLS 1.3), so
#: aiokafka reports a closed connection caused by the alert.
_CLIENT_CERTIFICATE_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA")


def _refused_client_certificate(exc: BaseException) -> str:
    """The alert's name when `exc` (or what caused it) is a server refusing the client's
    certificate, else ''."""
    seen: BaseException | None = exc
    for _ in range(3):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, ssl.SSLCertVerificationError):
            reason = _ssl_reason(seen)
            if any(alert in reason.upper() for alert in _CLIENT_CERTIFICATE_ALERTS):
                return reason
        seen = seen.__cause__ or seen.__context__
    return ""


def _ssl_reason(exc: ssl.SSLError) -> str:
    return exc.reason or exc.strerror or str(exc) or exc.__class__.__name__


def _offered_mechanisms(text: str) -> str:
    if "Enabled mechanisms are:" in text:
        return text.split("Enabled mechanisms are:", 1)[1].strip().strip("[]").replace("'", "")
    return ""


def _broker_text(exc: BaseException) -> str:
    text = str(exc)
    for prefix in ("[Error 58] SaslAuthenticationFailed: ", "[Error 34] "):
        text = text.replace(prefix, "")
    return text.strip()


def redact(text: str, integration: Integration) -> str:
    """Mask every secret of the integration that appears in `text`, then every other secret
    value the process registered (`streams.secrets`): the integration's own secrets are
    masked here even when it was built without the loader (tests, tools)."""
    secrets = [
        integration.password,
        integration.truststorePassword,
        integration.sslClientKeyPassword,
    ]
    registry = integration.schemaRegistry
    if registry is not None:
        secrets += [registry.apiKey, registry.apiSecret]
    for secret in secrets:
        value = secret.get_secret_value() if secret is not None else ""
        if len(value) >= 3:
            text = mask_secret(text, value)
    return scrub(text)


# --------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class ProbeResult:
    """What connecting to an integration's brokers showed."""

    integration: str
    ok: bool
    summary: str
    problems: tuple[Problem, ...] = ()

    @property
    def permanent(self) -> bool:
        return any(problem.permanent for problem in self.problems)


async def probe(integration: Integration, *, timeout: float = 10.0) -> ProbeResult:
    """Connect to the bootstrap servers as a client would (TLS, SASL), read the cluster's
    metadata, then connect to every advertised broker. Never raises."""
    from aiokafka.protocol.metadata import MetadataRequest

    name = integration.name
    try:
        settings = client_security(integration)
    except SecurityError as exc:
        problem = classify(exc, integration, "truststore")
        return ProbeResult(name, False, problem.message, (problem,))
    connect = connector(settings, timeout)

    problems: list[Problem] = []
    brokers: list[tuple[int, str, int]] = []
    for server in _servers(integration.bootstrapServers):
        host, port = server
        address = f"{host}:{port}"
        try:
            conn = await connect(host, port)
            try:
                metadata = await asyncio.wait_for(conn.send(MetadataRequest([])), timeout)
            finally:
                conn.close()
        except Exception as exc:
            problem = classify(exc, integration, address)
            if problem.kind == "mechanism" and "it offers" not in problem.message:
                offered = await _enabled_mechanisms(host, port, settings, timeout)
                if offered:
                    problem = Problem(
                        problem.kind,
                        problem.message.replace(
                            f"mechanism {integration.sasl_mechanism};",
                            f"mechanism {integration.sasl_mechanism} (it offers {offered});",
                        ),
                    )
            problems.append(problem)
            continue
        brokers = [(b[0], b[1], b[2]) for b in metadata.brokers]
        break
    if not brokers:
        first = next((p for p in problems if p.permanent), problems[0] if problems else None)
        message = first.message if first else f"integration {name!r}: no broker answered"
        return ProbeResult(name, False, message, tuple(problems))
    seen = set(_servers(integration.bootstrapServers))
    advertised: list[Problem] = []
    for node_id, host, port in brokers:
        if (host, port) in seen:
            continue
        try:
            conn = await connect(host, port)
            conn.close()
        except Exception as exc:
            problem = classify(exc, integration, f"{host}:{port}")
            where = f"broker {node_id} advertised as {host}:{port}"
            advertised.append(
                Problem(problem.kind, problem.message.replace(f"{host}:{port}", where, 1))
            )
    if advertised:
        return ProbeResult(name, False, advertised[0].message, tuple(problems + advertised))
    summary = (
        f"integration {name!r}: connected ({settings.describe()}); "
        f"{len(brokers)} broker(s): " + ", ".join(f"{h}:{p}" for _, h, p in brokers)
    )
    return ProbeResult(name, True, summary, tuple(problems))


def connector(settings: ClientSecurity, timeout: float) -> Callable[[str, int], Awaitable[Any]]:
    """``connect(host, port)``: one aiokafka connection with the integration's TLS and SASL,
    authenticated, or the error a client would get (for `probe` and the access check)."""
    from aiokafka.conn import create_conn

    kwargs = settings.aiokafka_kwargs()
    kwargs.pop("security_protocol")

    async def connect(host: str, port: int) -> Any:
        return await asyncio.wait_for(
            create_conn(
                host,
                port,
                client_id="herald-check",
                request_timeout_ms=int(timeout * 1000),
                security_protocol=settings.protocol,
                **kwargs,
            ),
            timeout,
        )

    return connect


async def _enabled_mechanisms(
    host: str, port: int, settings: ClientSecurity, timeout: float
) -> str:
    """The SASL mechanisms a listener enables (from a SaslHandshake), '' if unknown."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.admin import SaslHandShakeRequest

    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                port,
                client_id="herald-check",
                security_protocol="SSL" if settings.uses_tls else "PLAINTEXT",
                ssl_context=settings.ssl_context,
                request_timeout_ms=int(timeout * 1000),
            ),
            timeout,
        )
        try:
            response = await asyncio.wait_for(
                conn.send(SaslHandShakeRequest(settings.mechanism or "PLAIN")), timeout
            )
        finally:
            conn.close()
    except Exception:
        return ""
    return ", ".join(response.enabled_mechanisms)


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    servers = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, port = item[1:].partition("]:")
        else:
            host, _, port = item.rpartition(":")
        servers.append((host, int(port) if port.isdigit() else 9092))
    return servers
