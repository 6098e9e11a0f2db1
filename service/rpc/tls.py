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

from service.config import ENV_PREFIX, Settings
from service.reloading import ReloadedFiles, Reported, read_file


class TlsFileError(ValueError):
    """A TLS file of the gRPC server cannot be used; the message names its setting."""


def _read(path: Path, setting: str) -> bytes:
    return read_file(path, lambda why: TlsFileError(f"{ENV_PREFIX}{setting}: {why}"))


def _check_certificates(pem: bytes, path: Path, setting: str) -> None:
    """Refuses a file holding no PEM certificate (or a damaged one)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=pem.decode())
    except (ValueError, ssl.SSLError) as error:  # UnicodeDecodeError is a ValueError
        raise TlsFileError(
            f"{ENV_PREFIX}{setting}: {path} is not a PEM certificate file"
        ) from error


def _check_key(cert: Path, key: Path) -> None:
    """Refuses a key that is not an unencrypted PEM key, or not the certificate's."""
    try:
        # An empty password: an encrypted key fails here instead of prompting on a terminal.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as error:
        problem = (
            f"is not the private key of the certificate in {ENV_PREFIX}TLS_CERT_FILE ({cert})"
            if error.reason == "KEY_VALUES_MISMATCH"
            else "is not an unencrypted PEM private key"
        )
        raise TlsFileError(f"{ENV_PREFIX}TLS_KEY_FILE: {key} {problem}") from error


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


def read_tls_files(cert: Path, key: Path, client_ca: Path | None) -> TlsFiles:
    """The TLS files, checked as grpc would use them.

    Raises:
        TlsFileError: a file is unreadable or not PEM, or the key is not the certificate's
            (grpc would only fail to bind, blaming the address), or the files changed
            while they were being checked.
    """
    files = _read_all(cert, key, client_ca)
    _check_certificates(files.cert, cert, "TLS_CERT_FILE")
    _check_key(cert, key)  # reads the files again: the same ones if nothing changed since
    if files.client_ca is not None and client_ca is not None:
        _check_certificates(files.client_ca, client_ca, "TLS_CLIENT_CA_FILE")
    if _read_all(cert, key, client_ca) != files:
        raise TlsFileError(f"{ENV_PREFIX}TLS_CERT_FILE: {cert} changed while being read")
    return files


def _read_all(cert: Path, key: Path, client_ca: Path | None) -> TlsFiles:
    return TlsFiles(
        _read(cert, "TLS_CERT_FILE"),
        _read(key, "TLS_KEY_FILE"),
        None if client_ca is None else _read(client_ca, "TLS_CLIENT_CA_FILE"),
    )


class ServerCertificates:
    """The server's TLS credentials, handed to grpc again whenever their files change.

    `fetch` is grpc's certificate configuration fetcher: it runs on a grpc thread at each
    new connection, so it only reads the files once a second and never blocks on more.
    """

    def __init__(
        self, cert: Path, key: Path, client_ca: Path | None, *, reported: Reported | None = None
    ) -> None:
        self._requires_client_certificates = client_ca is not None
        self._files = ReloadedFiles(
            "TLS credentials",
            read=lambda: _read_all(cert, key, client_ca).digest,
            # Checked as a set, read again: what was just fingerprinted may be half-written.
            load=lambda _digest: read_tls_files(cert, key, client_ca),
            describe=lambda _files: f"new TLS credentials from {cert}",
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
    settings: Settings, reported: Reported | None = None
) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials from the configured PEM files, if any, re-read when
    they change.

    Raises:
        TlsFileError: a file cannot be used (see `read_tls_files`).
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    certificates = ServerCertificates(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file,
        reported=reported,
    )  # fmt: skip
    return certificates.credentials()
