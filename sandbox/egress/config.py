"""The proxy's settings, and what it records of each connection a tool attempts."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .addresses import Resolver
from .allowlist import NotAllowed, host_name

HEAD_TIMEOUT_S = 10.0
"""A tool has this long to send a whole request (CONNECT line and headers, or the
SOCKS greeting and request) once it connected: then the connection is closed."""
CONNECT_TIMEOUT_S = 10.0
"""How long the proxy waits for the destination to accept."""
MAX_HEAD_BYTES = 16 * 1024
"""Longest request head (request line and headers) the proxy reads."""


class EgressConfig(BaseModel):
    """`[egress]` of a policy: how the proxy resolves names, and what it refuses."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    resolve: dict[str, str] = Field(default_factory=dict)
    """Static answers, name → address, trusted as written (tests, split horizon)."""
    allow_private: bool = False
    """Accept a resolver's answers in private, loopback and link-local ranges."""
    resolver: Resolver | None = Field(None, exclude=True)
    """Asked for names `resolve` does not hold; None: the system's resolver."""
    head_timeout_s: float = Field(HEAD_TIMEOUT_S, gt=0)
    connect_timeout_s: float = Field(CONNECT_TIMEOUT_S, gt=0)

    @field_validator("resolve")
    @classmethod
    def _check_resolve(cls, value: dict[str, str]) -> dict[str, str]:
        checked = {}
        for name, address in value.items():
            try:
                key = host_name(name)
            except NotAllowed as exc:
                raise ValueError(f"resolve: {exc}") from None
            try:
                checked[key] = ipaddress.ip_address(address).compressed
            except ValueError:
                raise ValueError(
                    f"resolve: {name} = {address!r} is not an IPv4 or IPv6 address"
                ) from None
        return checked


class Connection(BaseModel):
    """One connection attempt of a tool, as the proxy saw it."""

    model_config = ConfigDict(frozen=True)

    host: str
    """As the tool asked (a name or an address); empty when it never said."""
    port: int
    address: str | None = None
    """Where the proxy connected (or would have): its own resolution."""
    allowed: bool
    reason: str
    """Why refused; for an allowed one, how it ended (`closed`, or a cap)."""
    cut: bool = False
    """An allowed connection the proxy cut short (`max_egress_mb`)."""
    protocol: Literal["connect", "http", "socks5", "unknown"] = "unknown"
    bytes_out: int = 0
    """From the tool to the destination."""
    bytes_in: int = 0
    duration_ms: float = 0.0
