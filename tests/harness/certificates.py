"""A certificate authority, server and client certificates, made at test time."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certificates:
    """PEM files of a CA and of a server and a client certificate it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    ca_key: Path | None = None

    def mutual_tls(self) -> dict[str, Path]:
        """The service's settings of mutual TLS with these files."""
        return {
            "tls_cert_file": self.server_cert,
            "tls_key_file": self.server_key,
            "tls_client_ca_file": self.ca,
        }


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _issue(
    subject: str,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    alternative_names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    elif alternative_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternative_names), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(folder: Path) -> Certificates:
    """Creates a CA and a server (127.0.0.1, localhost) and a client certificate in `folder`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("stackone-connect test CA")
    ca = _issue("stackone-connect test CA", ca_name, ca_key, ca_key, is_ca=True)
    paths: dict[str, Path] = {"ca": folder / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["ca_key"] = _write_key(ca_key, folder / "ca-key.pem")
    for role, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _issue(f"test {role}", ca_name, ca_key, key, usage=usage)
        paths[f"{role}_cert"] = folder / f"{role}.pem"
        paths[f"{role}_cert"].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        paths[f"{role}_key"] = _write_key(key, folder / f"{role}-key.pem")
    return Certificates(**paths)


def client_certificate(
    certificates: Certificates,
    name: str,
    *,
    uri: str | None = None,
    dns: str | None = None,
    more_uris: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """A client certificate (PEM path, key path) of subject CN `name` signed by the test CA,
    with URI (`uri`, then `more_uris`) and/or DNS subject alternative names."""
    assert certificates.ca_key is not None, "made by make_certificates"
    ca_key = serialization.load_pem_private_key(certificates.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(certificates.ca.read_bytes())
    uris = (uri, *more_uris) if uri is not None else more_uris
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(each) for each in uris]
    if dns is not None:
        names.append(x509.DNSName(dns))
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _issue(
        name,
        ca.subject,
        ca_key,
        key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        alternative_names=names,
    )
    folder = certificates.ca.parent
    slug = "".join(c if c.isalnum() else "-" for c in name)
    cert_path = folder / f"client-{slug}.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, _write_key(key, folder / f"client-{slug}-key.pem")
