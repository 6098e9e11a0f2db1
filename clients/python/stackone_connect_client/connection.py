"""Where the service is and how to authenticate to it: the CLI's options, as one value."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

TARGET_VARIABLE = "STACKONE_CONNECT_TARGET"
TOKEN_VARIABLE = "STACKONE_CONNECT_TOKEN"  # noqa: S105 - a variable name, not a secret
DEFAULT_TARGET = "127.0.0.1:50051"
# gRPC's own reconnect backoff starts at 1 s and grows to 120 s; a subscriber waiting for
# a restarted server should notice it within a second or two, not minutes.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


@dataclass(frozen=True)
class Connection:
    """The service's address and credentials, as the CLI's `--target`, `--token`,
    `--ca-file`, `--cert-file` and `--key-file` give them.

    Attributes:
        target: `host:port`, or any gRPC target such as
            `ipv4:10.0.0.1:50051,10.0.0.2:50051` (the channel moves to the next address
            when one goes away).
        token: a bearer token sent with every call (clients with scopes), or None.
        ca_file: PEM CA that signed the server's certificate: TLS when set.
        cert_file: PEM client certificate, with `key_file`: mutual TLS.
        key_file: PEM key of `cert_file`.
    """

    target: str = DEFAULT_TARGET
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Connection:
        """`STACKONE_CONNECT_TARGET` and `STACKONE_CONNECT_TOKEN`, as the CLI reads them."""
        env = os.environ if environ is None else environ
        return cls(
            target=env.get(TARGET_VARIABLE, DEFAULT_TARGET), token=env.get(TOKEN_VARIABLE) or None
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the bearer token, if there is one."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> grpc.aio.Channel:
        """A TLS channel when a CA or a client certificate is given, else a plaintext one;
        `interceptors` wrap its calls (e.g. tracing's, which send the caller's trace)."""
        wrapped = list(interceptors) or None
        if not (self.ca_file or self.cert_file):
            return grpc.aio.insecure_channel(
                self.target, options=CHANNEL_OPTIONS, interceptors=wrapped
            )
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )
        return grpc.aio.secure_channel(
            self.target, credentials, options=CHANNEL_OPTIONS, interceptors=wrapped
        )


def _read(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
