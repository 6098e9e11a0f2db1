"""Sealed `ListAccounts` page tokens: opaque to the caller, usable by it alone.

A page token names a position in a listing (`service.rpc.validation`'s plain tokens:
StackOne's page number, the registry's cursor and last account, or where a scoped scan of
StackOne goes on). Sealed, it is that position encrypted and authenticated with AES-GCM
(the `cryptography` package) under a server key, the client it was given to as the
associated data:

    token = base64url(version | nonce | AES-GCM(key, nonce, position, version | client))

So a caller can neither read a position (which would tell how many accounts of other
customers precede its own) nor write one, nor use another client's.

The key: `STACKONE_CONNECT_PAGE_TOKEN_KEY` when set; else derived from the StackOne API
key, which every replica of a deployment shares, so a token from one replica is taken by
another and after a restart; with the emulator (no API key), a random key per process.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.rpc.limits import MAX_REGISTRY_TOKEN_CHARS
from service.rpc.validation import FieldViolation, InvalidRequest

_VERSION = b"\x02"  # 1: an HMAC keystream of our own, before AES-GCM
_NONCE_BYTES = 12
_TAG_BYTES = 16
MAX_TOKEN_CHARS = 4 * -(-(1 + _NONCE_BYTES + MAX_REGISTRY_TOKEN_CHARS + _TAG_BYTES) // 3)
"""A sealed token's characters: the longest plain one (a registry token) sealed."""
# The words of a plain token that is not one (`validation`): forged, changed, another
# client's or sealed by another key, a token is refused the same way.
_NOT_OURS = "is not a next_page_token this service returned"


def page_token_key(configured: str | None, shared_api_key: str | None) -> bytes:
    """The key that seals page tokens (see the module docstring for which): the configured
    one, else one derived from the StackOne API key every replica shares, else a random one."""
    if configured is not None:
        return configured.encode()
    if shared_api_key is not None:
        return hmac.digest(shared_api_key.encode(), b"stackone-connect page tokens", "sha256")
    return secrets.token_bytes(32)


class PageTokens:
    """Seals positions into page tokens and opens them again, for one client at a time."""

    def __init__(self, key: bytes) -> None:
        # Whatever the key's length, AES-256 takes a key derived from it.
        self._aead = AESGCM(hmac.digest(key, b"page-token encryption", "sha256"))

    def seal(self, client: str, position: str) -> str:
        """The token of `position` for `client` (a fresh nonce each time)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        plain = position.encode(errors="surrogatepass")
        sealed = self._aead.encrypt(nonce, plain, _associated(client))
        return _encode(_VERSION + nonce + sealed)

    def open(self, client: str, token: str) -> str:
        """The position `token` seals for `client`.

        Raises:
            InvalidRequest: the token was not sealed by this key for this client (forged,
                changed, another client's, or from a deployment with another key).
        """
        raw = _decode(token) if len(token) <= MAX_TOKEN_CHARS else None
        if raw is None or len(raw) < 1 + _NONCE_BYTES + _TAG_BYTES or raw[:1] != _VERSION:
            raise not_ours()
        nonce, sealed = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, sealed, _associated(client))
        except InvalidTag:
            raise not_ours() from None
        return plain.decode(errors="surrogatepass")


def _associated(client: str) -> bytes:
    """The data a token is bound to: its format's version and the client's name."""
    return _VERSION + client.encode(errors="surrogatepass")


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        return None


_SCAN = "scan:"


def scan_position(index: int) -> str:
    """The position of a scoped scan of StackOne's listing, at its `index`th account."""
    return f"{_SCAN}{index}"


def scan_start(position: str) -> int | None:
    """The index a scan position names; None when `position` is not a scan's."""
    number = position.removeprefix(_SCAN)
    if number == position or not number.isascii() or not number.isdigit() or len(number) > 12:
        return None
    return int(number)


def not_ours() -> InvalidRequest:
    """The refusal of a token this service did not give the caller for this listing."""
    return InvalidRequest([FieldViolation("page_token", _NOT_OURS)])
