"""Reading a tool's request to the proxy: HTTP (CONNECT, or a plain `GET http://...`)
or SOCKS5, whichever the first byte says.

Everything here reads bytes a hostile tool wrote: each read is bounded (the stream's
limit is `MAX_HEAD_BYTES`, the caller holds a deadline), anything that is not exactly
the expected shape is `BadRequest`, and the only thing ever taken from a request is
a `Destination` that `allowlist` checked (and, for plain HTTP, a head rebuilt from
the parts that were checked).
"""

from __future__ import annotations

import asyncio
import re
import struct
from typing import Literal, NamedTuple

from .allowlist import Destination, NotAllowed, destination, parse_authority

Protocol = Literal["connect", "http", "socks5"]

_METHOD = re.compile(rb"^[A-Z]{1,20}$")
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
_TARGET = re.compile(rb"^[\x21-\x7e]{1,8000}$")
_DROPPED = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"host",
}
"""Headers the proxy does not pass on: its own, and Host (rebuilt from the URL)."""

SOCKS_VERSION = 5
SOCKS_REFUSED = 0x02  # connection not allowed by ruleset
SOCKS_UNREACHABLE = 0x04
SOCKS_CONN_REFUSED = 0x05
SOCKS_BAD_COMMAND = 0x07
SOCKS_BAD_ADDRESS = 0x08


class Request(NamedTuple):
    protocol: Protocol
    dest: Destination
    head: bytes = b""
    """Plain HTTP: the request head to send on, in origin form."""


class BadRequest(Exception):
    """Not a request the proxy serves; the message says why (and is shown to the tool)."""

    def __init__(
        self, message: str, protocol: Protocol | Literal["unknown"], host: str = ""
    ) -> None:
        super().__init__(message)
        self.protocol = protocol
        self.host = host


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
    first = await reader.readexactly(1)
    if first[0] == SOCKS_VERSION:
        return await _socks(reader, writer)
    return await _http(first, reader)


async def _http(first: bytes, reader: asyncio.StreamReader) -> Request:
    try:
        head = first + await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadRequest("the request head is too long", "unknown") from None
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _METHOD.match(parts[0]) or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest("not an HTTP/1.x request line", "unknown")
    method, target, version = parts
    if not _TARGET.match(target):
        raise BadRequest("the request target has characters a URL cannot hold", "unknown")
    headers = [_header(line) for line in lines[1:]]
    text = target.decode("ascii")
    if method == b"CONNECT":
        try:
            return Request("connect", parse_authority(text))
        except NotAllowed as exc:
            raise BadRequest(f"CONNECT {text[:200]}: {exc}", "connect", text[:200]) from None
    if not text[:7].lower() == "http://":
        raise BadRequest(
            "a plain request must name an http:// URL (use CONNECT for anything else)", "http"
        )
    rest = text[7:]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:] or "/"
    if path.startswith("?"):
        path = "/" + path
    if "@" in authority:
        raise BadRequest("a URL with a user part is not accepted", "http")
    try:
        dest = parse_authority(authority, default_port=80)
    except NotAllowed as exc:
        raise BadRequest(f"{authority[:200]}: {exc}", "http", authority[:200]) from None
    host = str(dest) if dest.port != 80 else str(dest).rsplit(":", 1)[0]
    rebuilt = [b"%s %s %s" % (method, path.encode("ascii"), version), b"Host: " + host.encode()]
    rebuilt += [b"%s: %s" % (n, v) for n, v in headers if n.lower() not in _DROPPED]
    rebuilt.append(b"Connection: close")
    return Request("http", dest, b"\r\n".join(rebuilt) + b"\r\n\r\n")


def _header(line: bytes) -> tuple[bytes, bytes]:
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.match(name) or not _VALUE.match(value):
        raise BadRequest("a header line is malformed", "unknown")
    return name, value.strip(b" \t")


async def _socks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
    (count,) = await reader.readexactly(1)
    methods = await reader.readexactly(count)
    if 0 not in methods:
        writer.write(b"\x05\xff")
        raise BadRequest("SOCKS5 without the no-authentication method", "socks5")
    writer.write(b"\x05\x00")
    version, command, _, kind = await reader.readexactly(4)
    if version != SOCKS_VERSION:
        raise BadRequest("not a SOCKS5 request", "socks5")
    if kind == 1:
        host = ".".join(str(b) for b in await reader.readexactly(4))
    elif kind == 3:
        (size,) = await reader.readexactly(1)
        raw = await reader.readexactly(size)
        host = raw.decode("ascii", "replace")
    elif kind == 4:
        raw = await reader.readexactly(16)
        host = "[" + ":".join(f"{a:x}" for a in struct.unpack("!8H", raw)) + "]"
    else:
        socks_reply(writer, SOCKS_BAD_ADDRESS)
        raise BadRequest("an unknown SOCKS5 address type", "socks5")
    (port,) = struct.unpack("!H", await reader.readexactly(2))
    if command != 1:
        socks_reply(writer, SOCKS_BAD_COMMAND)
        raise BadRequest("only SOCKS5 CONNECT is served (no BIND, no UDP)", "socks5", host)
    try:
        return Request("socks5", destination(host, port))
    except NotAllowed as exc:
        socks_reply(writer, SOCKS_REFUSED)
        raise BadRequest(str(exc), "socks5", host) from None


def socks_reply(writer: asyncio.StreamWriter, code: int) -> None:
    writer.write(bytes([SOCKS_VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0]))


def http_reply(status: int, text: str) -> bytes:
    """An error answer whose reason phrase says why: most clients show that phrase
    in the exception they raise (`Tunnel connection failed: 403 ...`)."""
    phrase = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)[:300]
    body = (phrase + "\n").encode()
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
