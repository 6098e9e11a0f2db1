"""The gRPC server's TLS credentials, re-read when their files change.

The certificate chain, key and (mutual TLS) client CA bundle are read at start-up, where a
file that cannot be used stops the server with a line naming its setting. After that, grpc
asks for the credentials on each new connection (`grpc.dynamic_ssl_server_credentials`),
and `ServerCertificates` re-reads the files at most once a second: a changed set that
checks out serves the connections made from then on (open ones keep theirs), and one that
does not (not PEM, a key that is not the certificate's, a file half-written) is logged and
the previous credentials stay in force. Rotate by replacing the files (key first, or both
atomically with `mv`): a mismatched pair seen in between is refused, and the next check
after both are in place loads them.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from service.reloading import ReloadedFiles, Reported, read_file


class TlsFileError(ValueError):
    """A TLS file of the gRPC server cannot be used; the message names its setting."""


@dataclass(frozen=True, slots=True)
class PemFile:
    """A PEM file and the setting naming it, which every message about the file names."""

    path: Path
    setting: str


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Where the server's TLS credentials are read from; with `client_ca`, mutual TLS."""

    cert: PemFile
    key: PemFile
    client_ca: PemFile | None = None


def _read(file: PemFile) -> bytes:
    return read_file(file.path, lambda why: TlsFileError(f"{file.setting}: {why}"))


def _check_certificates(pem: bytes, file: PemFile) -> None:
    """Refuses a file holding no PEM certificate (or a damaged one)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=pem.decode())
    except (ValueError, ssl.SSLError) as error:  # UnicodeDecodeError is a ValueError
        raise TlsFileError(f"{file.setting}: {file.path} is not a PEM certificate file") from error


def _check_key(cert: PemFile, key: PemFile) -> None:
    """Refuses a key that is not an unencrypted PEM key, or not the certificate's."""
    try:
        # An empty password: an encrypted key fails here instead of prompting on a terminal.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert.path, key.path, password=b"")
    except ssl.SSLError as error:
        problem = (
            f"is not the private key of the certificate in {cert.setting} ({cert.path})"
            if error.reason == "KEY_VALUES_MISMATCH"
            else "is not an unencrypted PEM private key"
        )
        raise TlsFileError(f"{key.setting}: {key.path} {problem}") from error


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The contents of the TLS files, as one version."""

    cert: bytes
    key: bytes
    client_ca: bytes | None

    @property
    def digest(self) -> bytes:
        """What identifies this version (the files' contents)."""
        parts = (self.cert, self.key, self.client_ca or b"")
        return hashlib.sha256(b"\0".join(hashlib.sha256(part).digest() for part in parts)).digest()

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """grpc's form of these credentials."""
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.cert)], root_certificates=self.client_ca
        )


def read_tls_files(material: TlsMaterial) -> TlsFiles:
    """The TLS files, checked as grpc would use them.

    Raises:
        TlsFileError: a file is unreadable or not PEM, or the key is not the certificate's
            (grpc would only fail to bind, blaming the address), or the files changed
            while they were being checked.
    """
    files = _read_all(material)
    _check_certificates(files.cert, material.cert)
    _check_key(material.cert, material.key)  # reads them again: the same if unchanged since
    if files.client_ca is not None and material.client_ca is not None:
        _check_certificates(files.client_ca, material.client_ca)
    if _read_all(material) != files:
        cert = material.cert
        raise TlsFileError(f"{cert.setting}: {cert.path} changed while being read")
    return files


def _read_all(material: TlsMaterial) -> TlsFiles:
    client_ca = material.client_ca
    return TlsFiles(
        _read(material.cert), _read(material.key), None if client_ca is None else _read(client_ca)
    )


class ServerCertificates:
    """The server's TLS credentials, handed to grpc again whenever their files change.

    `fetch` is grpc's certificate configuration fetcher: it runs on a grpc thread at each
    new connection, so it only reads the files once a second and never blocks on more.
    """

    def __init__(self, material: TlsMaterial, *, reported: Reported | None = None) -> None:
        self._requires_client_certificates = material.client_ca is not None
        self._files = ReloadedFiles(
            "TLS credentials",
            read=lambda: _read_all(material).digest,
            # Checked as a set, read again: what was just fingerprinted may be half-written.
            load=lambda _digest: read_tls_files(material),
            describe=lambda _files: f"new TLS credentials from {material.cert.path}",
            errors=TlsFileError,
            reported=reported,
        )

    @property
    def loaded(self) -> TlsFiles:
        """The credentials in force."""
        return self._files.current

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up new versions of the files (mutual TLS when a
        client CA is configured)."""
        return grpc.dynamic_ssl_server_credentials(
            self.loaded.configuration(),
            self.fetch,  # type: ignore[arg-type]  # grpc documents None: keep the current
            require_client_authentication=self._requires_client_certificates,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed and check out; None keeps the current."""
        return self.loaded.configuration() if self._files.refresh() else None


def server_credentials(
    material: TlsMaterial | None, reported: Reported | None = None
) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials from `material`'s PEM files (None: plaintext),
    re-read when they change.

    Raises:
        TlsFileError: a file cannot be used (see `read_tls_files`).
    """
    if material is None:
        return None
    return ServerCertificates(material, reported=reported).credentials()
