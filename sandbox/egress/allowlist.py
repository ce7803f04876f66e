"""A tool's network allowlist: `host:port` patterns, and the destinations they admit.

    network = ["api.weather.test:443", "*.weather.test:443", "203.0.113.7:8080"]

A host is a DNS name (lower-cased, one trailing dot dropped), `*.` and a name (any
name below it, never the name itself), an IPv4 address, or an IPv6 address in
brackets; a port is a number, or `*` for any. Names are compared as text and IP
addresses as addresses, never one through the other: `127.0.0.2:80` is not admitted
by `api.weather.test:80` even when that name resolves there.

A destination a tool asks for is read with the same rules, so anything that is not a
plain name or address (a user part, a percent sign, a name ending in a number, which
the C resolver would read as an address: `2130706433`, `127.1`) is refused before any
lookup.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")


class Destination(NamedTuple):
    """Where a tool asked to connect: a checked name or an address, and a port."""

    host: str
    """A lower-case DNS name, or an address in its compressed form."""
    port: int
    address: IPAddress | None
    """The address when `host` is one (no lookup is made for it)."""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Pattern(NamedTuple):
    host: str
    """A name (for a wildcard: the name below which any matches) or an address."""
    wildcard: bool
    port: int | None
    """None: any port."""
    address: IPAddress | None

    def admits(self, dest: Destination) -> bool:
        if self.port is not None and self.port != dest.port:
            return False
        if self.address is not None or dest.address is not None:
            return self.address == dest.address
        if self.wildcard:
            return dest.host.endswith("." + self.host)
        return dest.host == self.host

    def __str__(self) -> str:
        host = f"*.{self.host}" if self.wildcard else self.host
        if self.address is not None and self.address.version == 6:
            host = f"[{host}]"
        return f"{host}:{'*' if self.port is None else self.port}"


class NotAllowed(ValueError):
    """A destination or a pattern that is not one; the message says why."""


def host_name(text: str) -> str:
    """`text` as a lower-case DNS name; NotAllowed says why it is not one."""
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        raise NotAllowed(f"{text!r} is not a host name (1 to 253 characters)")
    if not name.isascii():
        raise NotAllowed(f"{text!r} is not ASCII: write an international name in its xn-- form")
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise NotAllowed(
            f"{text!r} is not a host name (dot-separated labels of letters, digits, '-' and '_')"
        )
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        raise NotAllowed(f"{text!r} ends in a number: write an address as a.b.c.d")
    return name


def _address(text: str, bracketed: bool) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if bracketed:
            raise NotAllowed(f"[{text}] is not an IPv6 address") from None
        return None
    if address.version == 6 and not bracketed:
        raise NotAllowed(f"write an IPv6 address in brackets: [{text}]")
    if address.version == 4 and bracketed:
        raise NotAllowed(f"[{text}]: only IPv6 addresses go in brackets")
    if address.version == 6 and address.scope_id:
        raise NotAllowed(f"[{text}]: an address with a zone is not accepted")
    return address


def _split(text: str) -> tuple[str, bool, str]:
    """`host:port` → (host, bracketed, port text)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise NotAllowed(f"{text!r} is not [IPv6]:port")
        return host, True, rest[1:]
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise NotAllowed(f"{text!r} has no port: write host:port (port * for any)")
    if ":" in host:
        raise NotAllowed(f"{text!r}: write an IPv6 address in brackets, [address]:port")
    return host, False, port


def _port(text: str, *, star: bool) -> int | None:
    if star and text == "*":
        return None
    if not _PORT.match(text) or not 1 <= int(text) <= 65535:
        accepted = "1 to 65535, or * for any" if star else "1 to 65535"
        raise NotAllowed(f"port {text!r} is not a port ({accepted})")
    return int(text)


def parse_pattern(text: str) -> Pattern:
    """One policy entry; NotAllowed says what is wrong and what is accepted."""
    if not isinstance(text, str):
        raise NotAllowed(f"{text!r} is not a string")
    host, bracketed, port_text = _split(text.strip())
    port = _port(port_text, star=True)
    address = _address(host, bracketed)
    if address is not None:
        return Pattern(address.compressed, False, port, address)
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if "*" in host:
        raise NotAllowed(f"{text!r}: a wildcard is only accepted as the first label, *.name")
    return Pattern(host_name(host), wildcard, port, None)


def destination(host: str, port: int | str) -> Destination:
    """What a tool asked for (from a CONNECT line, a URL or a SOCKS request)."""
    if isinstance(port, str):
        port = _port(port, star=False) or 0
    if not 1 <= port <= 65535:
        raise NotAllowed(f"port {port} is not a port (1 to 65535)")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    address = _address(host, bracketed or ":" in host)
    if address is not None:
        return Destination(address.compressed, port, address)
    return Destination(host_name(host), port, None)


def parse_authority(text: str, default_port: int | None = None) -> Destination:
    """`host:port` (or `[v6]:port`) as a CONNECT line or a URL names it."""
    if default_port is not None and not text.endswith("]") and ":" not in text.lstrip("["):
        return destination(text, default_port)
    if default_port is not None and text.startswith("[") and text.endswith("]"):
        return destination(text, default_port)
    host, bracketed, port = _split(text)
    return destination(f"[{host}]" if bracketed else host, port)


def allowed(patterns: tuple[Pattern, ...], dest: Destination) -> bool:
    return any(p.admits(dest) for p in patterns)
