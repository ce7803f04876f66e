"""Which addresses the proxy connects to, and how it finds them.

The proxy resolves every name itself, once, and connects to the address it checked:
a tool never picks the address, so no DNS answer can rebind it into the LAN, the
host's loopback or a cloud metadata service. What the policy itself writes (a name in
`[egress] resolve`, an address in a tool's list) is trusted as written; what a
resolver answers is refused when it is not a global address (private, loopback,
link-local, shared, reserved, ...), unless `allow_private`. Some addresses are never
connected to from an answer: the unspecified address (which Linux takes for its own
loopback), multicast and broadcast, and the metadata services.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping

from .allowlist import IPAddress

Resolver = Callable[[str], list[str]]
"""A name → its addresses as text (the default asks the system's resolver)."""

METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
"""Cloud instance metadata (AWS, GCP, Azure, ECS task, Alibaba): credentials live there."""

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LAST_32 = (
    _NAT64,
    ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated; a sit tunnel routes it)
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT)
)
_NOT_GLOBAL_V6 = (
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64: the LAN's gateway
    ipaddress.ip_network("fec0::/10"),  # site-local (deprecated, still the site's)
)


def _embedded_v4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, translated, compatible, 6to4,
    well-known NAT64), else itself: a gateway may take it there."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if int(address) > 1 and any(address in net for net in _LAST_32):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def never(address: IPAddress) -> str | None:
    """Why no connection goes to `address` even when the policy names it."""
    address = _embedded_v4(address)
    if address.is_unspecified:
        return "the unspecified address (the proxy's own host)"
    if address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        return "a multicast or broadcast address"
    return None


def refused(address: IPAddress, allow_private: bool) -> str | None:
    """Why a resolver's answer `address` is not connected to; None: it may be."""
    why = never(address)
    if why:
        return why
    inner = _embedded_v4(address)
    if address in METADATA or inner in METADATA:
        return "a cloud metadata address"
    if allow_private:
        return None
    # Ours first, so the reason is the same on every Python (3.11.2 calls 64:ff9b:1::/48
    # private, 3.11.7 global).
    if any(address in net for net in _NOT_GLOBAL_V6 if address.version == 6):
        return "not a global address"
    if inner.is_loopback:
        return "a loopback address"
    if inner.is_link_local:
        return "a link-local address"
    if inner.is_private:
        return "a private address"
    if not inner.is_global:
        return "not a global address"
    return None


def system_resolver(name: str) -> list[str]:
    """The system's answers for `name` (its resolver, /etc/hosts, nsswitch)."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for *_, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.append(str(sockaddr[0]))
    return seen


def answers(name: str, resolver: Resolver) -> list[IPAddress]:
    """The resolver's answers, as addresses; OSError when it has none."""
    found = []
    for text in resolver(name):
        try:
            found.append(ipaddress.ip_address(text.split("%", 1)[0]))
        except ValueError:
            continue
    if not found:
        raise OSError(f"{name} has no address")
    return found


def static(resolve: Mapping[str, str], name: str) -> IPAddress | None:
    text = resolve.get(name)
    return ipaddress.ip_address(text) if text is not None else None
