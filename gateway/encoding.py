"""Content-Encoding of webhook bodies: which codings the gateway takes, and decoding them
within the body limit.

The gateway reads a body as it came over the wire, at most the limit, and decodes it
here, stopping at the limit: compressed or not, a body costs at most the limit's worth
of reading and of decoding. (aiohttp's own decoding reads on while a coding yields
nothing, e.g. gigabytes of empty deflate blocks, until the body timeout.)
"""

from __future__ import annotations

from aiohttp.compression_utils import (
    HAS_BROTLI,
    HAS_ZSTD,
    BrotliDecompressor,
    DecompressionBaseHandler,
    ZLibDecompressor,
    ZSTDDecompressor,
)

# Brotli and zstd only when their modules are installed.
DECODABLE = frozenset(
    {"identity", "gzip", "x-gzip", "deflate"}
    | ({"br"} if HAS_BROTLI else set())
    | ({"zstd"} if HAS_ZSTD else set())
)


class BodyTooLarge(Exception):
    """The body decodes to more bytes than the limit."""


class UndecodableBody(Exception):
    """The body is not in the coding its Content-Encoding names."""


def codings_of(content_encoding: str) -> list[str]:
    """The codings a Content-Encoding header lists, in the order they were applied."""
    return [part.strip().lower() for part in content_encoding.split(",") if part.strip()]


def unsupported(content_encoding: str) -> str | None:
    """Why a body in this Content-Encoding cannot be read, or None when it can."""
    unknown = [coding for coding in codings_of(content_encoding) if coding not in DECODABLE]
    if not unknown:
        return None
    return (
        f"Content-Encoding {unknown[0][:40]!r} cannot be decoded here; "
        f"send one of {', '.join(sorted(DECODABLE))}"
    )


def decode(body: bytes, content_encoding: str, limit: int) -> bytes:
    """`body` with every coding undone, the last applied first.

    Raises:
        BodyTooLarge: a coding yields more than `limit` bytes (decoding stops there).
        UndecodableBody: the body is not in a coding it names.
    """
    for coding in reversed(codings_of(content_encoding)):
        if coding != "identity":
            body = _decode_one(coding, body, limit)
    return body


def _decode_one(coding: str, body: bytes, limit: int) -> bytes:
    try:
        decoded = _decompressor(coding, body).decompress_sync(body, max_length=limit + 1)
    except Exception as error:  # zlib, brotli and zstd errors share no base class
        raise UndecodableBody(coding) from error
    if len(decoded) > limit:
        raise BodyTooLarge(coding)
    return decoded


def _decompressor(coding: str, body: bytes) -> DecompressionBaseHandler:
    if coding == "br":
        return BrotliDecompressor()
    if coding == "zstd":
        return ZSTDDecompressor()
    if coding == "deflate":
        # Senders often mean raw deflate (no zlib header); a zlib stream's first byte
        # names method 8 in its low bits.
        return ZLibDecompressor(
            "deflate", suppress_deflate_header=body[:1] != b"" and body[0] & 0x0F != 8
        )
    return ZLibDecompressor("gzip")
