"""Many server-streaming gRPC calls read over one HTTP/2 connection, at a few µs a message.

The benchmark's subscribers must not be what limits delivery: a grpc.aio (or sync grpc)
client spends ~25 µs of CPU on every message it receives, so one core of them reads at
most ~40,000 messages/s, fewer than a bare grpc.aio server sends to 100 streams at 1,000
events/s. This client does only what reading needs: the HTTP/2 frames of its own calls
(no priorities, no push, no header decoding: response headers are skipped), flow-control
windows returned as it consumes, PING and SETTINGS acknowledged, and gRPC's 5-byte
message framing. It hands each complete message to a callback with the time its bytes
arrived.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _SETTINGS, _PING, _WINDOW_UPDATE = 0, 1, 4, 6, 8
_END_STREAM, _ACK, _END_HEADERS, _PADDED = 0x1, 0x1, 0x4, 0x8
_STREAM_WINDOW = 1 << 20  # bytes each call may have in flight, as announced in SETTINGS
_CONNECTION_WINDOW = 64 << 20
_RETURN_AT = 256 << 10  # consumed bytes after which a window is given back

OnMessage = Callable[[int, bytes, int], None]
"""Called with the call's index, one response message, and the arrival time (ns)."""


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _hpack_string(value: bytes) -> bytes:
    """An HPACK string literal (no Huffman coding): 7-bit prefixed length, then bytes."""
    length, out = len(value), bytearray()
    if length < 127:
        out.append(length)
    else:
        out.append(127)
        length -= 127
        while length >= 128:
            out.append(length % 128 + 128)
            length //= 128
        out.append(length)
    return bytes(out) + value


def _request_headers(authority: str, path: str) -> bytes:
    """HPACK header block of a gRPC call: literals without indexing, nothing to decode."""
    fields = [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
        (b":authority", authority.encode()), (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]  # fmt: skip
    return b"".join(b"\x00" + _hpack_string(name) + _hpack_string(value) for name, value in fields)


class StreamingCalls(asyncio.Protocol):
    """`count` calls of one server-streaming method with the same request, on one
    connection (a call the server ends simply stops getting messages)."""

    def __init__(
        self, authority: str, path: str, request: bytes, count: int, on_message: OnMessage
    ) -> None:
        self._authority, self._path, self._request = authority, path, request
        self.count = count
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self._pending = b""
        self._messages = [bytearray() for _ in range(count)]
        self._consumed = [0] * count
        self._connection_consumed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Sends the preface, our settings, a larger connection window, then every call."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        settings = (2).to_bytes(2, "big") + (0).to_bytes(4, "big")  # no server push
        settings += (4).to_bytes(2, "big") + _STREAM_WINDOW.to_bytes(4, "big")
        out = [_PREFACE, _frame(_SETTINGS, 0, 0, settings)]
        increment = _CONNECTION_WINDOW - 65_535
        out.append(_frame(_WINDOW_UPDATE, 0, 0, increment.to_bytes(4, "big")))
        headers = _request_headers(self._authority, self._path)
        message = b"\x00" + len(self._request).to_bytes(4, "big") + self._request
        for index in range(self.count):
            stream = 2 * index + 1
            out.append(_frame(_HEADERS, _END_HEADERS, stream, headers))
            out.append(_frame(_DATA, _END_STREAM, stream, message))
        self._transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        """Parses every complete frame; messages get the arrival time of these bytes."""
        now = time.time_ns()
        buffer = self._pending + data if self._pending else data
        offset, end = 0, len(buffer)
        replies: list[bytes] = []
        while end - offset >= 9:
            length = int.from_bytes(buffer[offset : offset + 3], "big")
            if end - offset < 9 + length:
                break
            kind, flags = buffer[offset + 3], buffer[offset + 4]
            stream = int.from_bytes(buffer[offset + 5 : offset + 9], "big") & 0x7FFF_FFFF
            payload = buffer[offset + 9 : offset + 9 + length]
            offset += 9 + length
            if kind == _DATA:
                self._data(stream, flags, payload, now, replies)
            elif kind == _SETTINGS and not flags & _ACK:
                replies.append(_frame(_SETTINGS, _ACK, 0))
            elif kind == _PING and not flags & _ACK:
                replies.append(_frame(_PING, _ACK, 0, payload))
        self._pending = buffer[offset:]
        if replies and self._transport is not None:
            self._transport.write(b"".join(replies))

    def _data(
        self, stream: int, flags: int, payload: bytes, now: int, replies: list[bytes]
    ) -> None:
        index = (stream - 1) // 2
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        message = self._messages[index]
        message += payload
        while len(message) >= 5:
            size = int.from_bytes(message[1:5], "big")
            if len(message) < 5 + size:
                break
            self._on_message(index, bytes(message[5 : 5 + size]), now)
            del message[: 5 + size]
        self._consumed[index] += len(payload)
        self._connection_consumed += len(payload)
        if self._consumed[index] >= _RETURN_AT:
            increment = self._consumed[index].to_bytes(4, "big")
            replies.append(_frame(_WINDOW_UPDATE, 0, stream, increment))
            self._consumed[index] = 0
        if self._connection_consumed >= _RETURN_AT:
            increment = self._connection_consumed.to_bytes(4, "big")
            replies.append(_frame(_WINDOW_UPDATE, 0, 0, increment))
            self._connection_consumed = 0

    def close(self) -> None:
        """Closes the connection (which ends every call)."""
        if self._transport is not None:
            self._transport.close()


async def open_calls(
    target: str, path: str, request: bytes, count: int, on_message: OnMessage
) -> StreamingCalls:
    """Connects to `target` (host:port) and starts `count` calls."""
    host, port = target.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    _, calls = await loop.create_connection(
        lambda: StreamingCalls(target, path, request, count, on_message), host, int(port)
    )
    return calls
