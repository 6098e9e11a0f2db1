"""Sealed `ListAccounts` page tokens: opaque to the caller, usable by it alone.

A page token names a position in a listing (`service.rpc.validation`'s plain tokens:
StackOne's page number, the registry's cursor and last account, or where a scoped scan of
StackOne goes on). Sealed, it is that position encrypted and authenticated with a server
key and bound to the client it was given to:

    token = base64url(version | nonce | position XOR keystream | tag)
    keystream = HMAC-SHA256(encryption key, nonce | block number), block after block
    tag = HMAC-SHA256(authentication key, version | client | nonce | ciphertext)[:16]

(encrypt-then-MAC over HMAC as a pseudo-random function, keys derived from the one key
with separate labels). So a caller can neither read a position (which would tell how many
accounts of other customers precede its own) nor write one, nor use another client's.

The key: `STACKONE_CONNECT_PAGE_TOKEN_KEY` when set; else derived from the StackOne API
key, which every replica of a deployment shares, so a token from one replica is taken by
another and after a restart; with the emulator (no API key), a random key per process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from service.config import Settings
from service.rpc.limits import MAX_REGISTRY_TOKEN_CHARS
from service.rpc.validation import FieldViolation, InvalidRequest

_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_BLOCK_BYTES = hashlib.sha256().digest_size
MAX_TOKEN_CHARS = 4 * -(-(1 + _NONCE_BYTES + MAX_REGISTRY_TOKEN_CHARS + _TAG_BYTES) // 3)
"""A sealed token's characters: the longest plain one (a registry token) sealed."""
# The words of a plain token that is not one (`validation`): forged, changed, another
# client's or sealed by another key, a token is refused the same way.
_NOT_OURS = "is not a next_page_token this service returned"


def page_token_key(settings: Settings) -> bytes:
    """The key that seals page tokens (see the module docstring for which)."""
    if settings.page_token_key is not None:
        return settings.page_token_key.get_secret_value().encode()
    if not settings.uses_emulator and settings.api_key is not None:
        api_key = settings.api_key.get_secret_value().encode()
        return hmac.digest(api_key, b"stackone-connect page tokens", "sha256")
    return secrets.token_bytes(32)


class PageTokens:
    """Seals positions into page tokens and opens them again, for one client at a time."""

    def __init__(self, key: bytes) -> None:
        self._encryption_key = hmac.digest(key, b"page-token encryption", "sha256")
        self._authentication_key = hmac.digest(key, b"page-token authentication", "sha256")

    def seal(self, client: str, position: str) -> str:
        """The token of `position` for `client` (a fresh nonce each time)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        plain = position.encode(errors="surrogatepass")
        ciphertext = bytes(
            a ^ b for a, b in zip(plain, self._keystream(nonce, len(plain)), strict=True)
        )
        raw = _VERSION + nonce + ciphertext
        return _encode(raw + self._tag(client, raw))

    def open(self, client: str, token: str) -> str:
        """The position `token` seals for `client`.

        Raises:
            InvalidRequest: the token was not sealed by this key for this client (forged,
                changed, another client's, or from a deployment with another key).
        """
        raw = _decode(token) if len(token) <= MAX_TOKEN_CHARS else None
        if raw is None or len(raw) < 1 + _NONCE_BYTES + _TAG_BYTES or raw[:1] != _VERSION:
            raise not_ours()
        sealed, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(client, sealed)):
            raise not_ours()
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        plain = bytes(
            a ^ b for a, b in zip(ciphertext, self._keystream(nonce, len(ciphertext)), strict=True)
        )
        return plain.decode(errors="surrogatepass")

    def _keystream(self, nonce: bytes, size: int) -> bytes:
        blocks = -(-size // _BLOCK_BYTES)
        return b"".join(
            hmac.digest(self._encryption_key, nonce + n.to_bytes(4, "big"), "sha256")
            for n in range(blocks)
        )[:size]

    def _tag(self, client: str, sealed: bytes) -> bytes:
        # The client's name is length-prefixed, so no name and nonce run into each other.
        name = client.encode(errors="surrogatepass")
        message = len(name).to_bytes(4, "big") + name + sealed
        return hmac.digest(self._authentication_key, message, "sha256")[:_TAG_BYTES]


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
