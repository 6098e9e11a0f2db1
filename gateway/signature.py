"""StackOne webhook signatures: pure functions over the raw body.

StackOne signs the raw request body with HMAC-SHA256 keyed by the signing secret and
sends the digest in `x-stackone-signature` as unpadded base64url (a padded value is
accepted too). There is no timestamp in the scheme. Every configured secret is tried, so
secrets can be rotated without dropping deliveries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

SIGNATURE_HEADER = "x-stackone-signature"


def sign(secret: str, body: bytes) -> str:
    """The signature StackOne sends for `body` under `secret`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def is_valid_signature(secrets: Iterable[str], body: bytes, signature: str | None) -> bool:
    """True when `signature` matches `body` under any of `secrets` (constant-time compare)."""
    if not signature:
        return False
    presented = signature.strip().rstrip("=").encode("ascii", "replace")
    matched = False
    for secret in secrets:
        # No early exit: the time taken does not reveal which secret matched.
        matched |= hmac.compare_digest(sign(secret, body).encode("ascii"), presented)
    return matched
