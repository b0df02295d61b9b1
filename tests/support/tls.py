"""TLS for tests: a throw-away PKI made at test time, and truststores.

The Apache Kafka test broker (tests/support/apache_kafka.py) serves TLS with it: the `server`
certificate on its SSL, MTLS and SASL_SSL listeners, `wrong-host` on WRONGHOST. The schema
registry stand-in and the HTTP client tests use it too.

`make_pki` writes, into one directory:

- `ca.pem`/`ca.key`: the test CA; `server.pem`/`server.key`: a broker certificate for
  `localhost` and `127.0.0.1`, signed by it;
- `wrong-host.pem`/`wrong-host.key`: signed by the same CA, but for `kafka.example.invalid` only
  (a hostname mismatch when reached as 127.0.0.1);
- `other-ca.pem`: an unrelated CA (a truststore that does not trust the broker);
- `client.pem`/`client.key`: a client certificate for mutual TLS;
- `truststore.jks` (JKS, written with pyjks) and `truststore.p12` (PKCS#12) holding the CA,
  both with the password `TRUSTSTORE_PASSWORD`.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TRUSTSTORE_PASSWORD = "trust-me-not-42"


@dataclass(frozen=True)
class Pki:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.pem")

    @property
    def other_ca(self) -> str:
        return self.path("other-ca.pem")

    @property
    def jks(self) -> str:
        return self.path("truststore.jks")

    @property
    def p12(self) -> str:
        return self.path("truststore.p12")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    names: Sequence[str],
    *,
    client: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    usage = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """Write the test PKI (see the module docstring) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("Herald Test CA")
    _write_cert(directory / "ca.pem", ca)
    _write_key(directory / "ca.key", ca_key)
    other, _ = _ca("Some Other CA")
    _write_cert(directory / "other-ca.pem", other)
    for stem, common_name, names, client in (
        ("server", "localhost", ["localhost", "127.0.0.1"], False),
        ("wrong-host", "kafka.example.invalid", ["kafka.example.invalid"], False),
        ("client", "herald-client", [], True),
    ):
        cert, key = _leaf(ca, ca_key, common_name, names, client=client)
        _write_cert(directory / f"{stem}.pem", cert)
        _write_key(directory / f"{stem}.key", key)
    write_jks(directory / "truststore.jks", [ca], TRUSTSTORE_PASSWORD)
    write_p12(directory / "truststore.p12", [ca], TRUSTSTORE_PASSWORD)
    return Pki(directory)


def write_jks(path: Path, certs: Sequence[x509.Certificate], password: str) -> None:
    """A JKS truststore with `certs` as trusted certificate entries (pyjks writes real JKS)."""
    import jks

    entries = [
        jks.TrustedCertEntry.new(f"ca{i}", cert.public_bytes(serialization.Encoding.DER))
        for i, cert in enumerate(certs)
    ]
    jks.KeyStore.new("jks", entries).save(str(path), password)


def write_p12(path: Path, certs: Sequence[x509.Certificate], password: str) -> None:
    """A PKCS#12 truststore (what keytool writes by default since Java 9)."""
    from cryptography.hazmat.primitives.serialization import pkcs12

    data = pkcs12.serialize_key_and_certificates(
        b"truststore",
        None,
        None,
        list(certs),
        serialization.BestAvailableEncryption(password.encode()),
    )
    path.write_bytes(data)


def keytool_jks(pki: Pki, path: Path, password: str) -> bool:
    """Let Java's own keytool write a JKS truststore with the CA, when keytool is installed."""
    keytool = shutil.which("keytool")
    if keytool is None:
        return False
    subprocess.run(
        [
            keytool,
            "-importcert",
            "-noprompt",
            "-alias",
            "herald-test-ca",
            "-file",
            pki.ca,
            "-keystore",
            str(path),
            "-storetype",
            "JKS",
            "-storepass",
            password,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return True
