"""Make the compose lab's certificates; a one-shot job (run as root), safe to run on every ``up``.

One throwaway CA for the lab and a certificate per server: every service (its compose name, and
``localhost`` for the ports published on the lab machine), Kafka and PostgreSQL. Files go to the
``certs`` volume, mounted read-only everywhere else at /certs: ``ca.crt``, ``<name>.crt`` and
``<name>.key`` (PKCS#8), ``kafka.pem`` (key and certificate, Kafka's PEM keystore). Each key is readable
by the user its server runs as only. Existing files are kept: the CA outlives ``up``s (``docker compose
down -v`` makes a new one). Production gets certificates from the organisation's PKI (deploy/k8s uses
cert-manager); docs/security.md.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OUT = Path(os.environ.get("CERTS_DIR", "/certs"))
APP_UID = 10001  # the trialroute image's user
SERVERS = {  # name -> the uid that must read its key
    "auth": APP_UID,
    "intake": APP_UID,
    "eligibility": APP_UID,
    "site_router": APP_UID,
    "notifier": APP_UID,
    "insights": APP_UID,
    "kafka": 1000,  # apache/kafka's appuser
    "postgres": 999,  # the postgres image's postgres user
}
VALID = datetime.timedelta(days=825)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_file, key_file = OUT / "ca.crt", OUT / "ca.key"
    if cert_file.exists() and key_file.exists():
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_file.read_bytes()), key
    key, now = _key(), datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("trialroute compose lab CA"))
        .issuer_name(_name("trialroute compose lab CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    key_file.write_bytes(_pem(key))
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    cert_file.chmod(0o644)
    return cert, key


def _issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str, uid: int) -> None:
    cert_file, key_file = OUT / f"{name}.crt", OUT / f"{name}.key"
    if cert_file.exists() and key_file.exists():
        return
    key, now = _key(), datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName("localhost")]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM)
    cert_file.write_bytes(chain)
    cert_file.chmod(0o644)
    key_file.write_bytes(_pem(key))
    os.chown(key_file, uid, uid)
    key_file.chmod(0o600)
    if name == "kafka":
        pem = OUT / "kafka.pem"
        pem.write_bytes(_pem(key) + chain)
        os.chown(pem, uid, uid)
        pem.chmod(0o600)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca()
    for name, uid in SERVERS.items():
        _issue(ca, ca_key, name, uid)
    print(f"certificates in {OUT}: {', '.join(SERVERS)} (CA {OUT / 'ca.crt'})")


if __name__ == "__main__":
    main()
